//! The web console (`/ui`) driven in a real headless browser: Debian's chromium through
//! chromedriver's WebDriver protocol. An operator's session: the token asked once (a wrong one
//! refused), the hit ratio and the live event stream following creates, an entry pinned and
//! evicted, a policy swapped by upload, a warm-up. A screenshot is kept in
//! `target/test-artifacts/console.png`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::daemon::{Daemon, TOKEN};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one headless chromium session.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    agent: ureq::Agent,
    /// chromium's profile and scratch files (it leaves `org.chromium.*` directories in its
    /// TMPDIR when killed): removed with the browser.
    scratch: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let scratch = tempfile::tempdir().unwrap();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .env("TMPDIR", scratch.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver: run `make deps` (Debian packages chromium and chromium-driver); `make test` does");
        let base = format!("http://127.0.0.1:{port}");
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
        let started = Instant::now();
        while agent.get(&format!("{base}/status")).call().is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1100",
                         format!("--user-data-dir={}", scratch.path().join("profile").display())]}}}});
        let reply: Value = agent.post(&format!("{base}/session")).send_json(caps).unwrap().into_json().unwrap();
        let session = reply["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {reply}")).to_string();
        Browser { driver, base, session, agent, scratch }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// A WebDriver command; `Err` with the driver's error (e.g. a stale element: the console
    /// redraws its tables every 2 s).
    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let req = self.agent.request(method, &url);
        let res = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match res {
            Ok(r) => Ok(r.into_json::<Value>().unwrap()["value"].take()),
            Err(ureq::Error::Status(code, r)) => Err(format!("{code} {}", r.into_string().unwrap_or_default())),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The text of the first element matching `css`, read in the page.
    fn read(&self, css: &str) -> Option<String> {
        let script = "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;";
        self.call("POST", "/execute/sync", Some(json!({"script": script, "args": [css]}))).as_str().map(String::from)
    }

    fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({"url": url})));
    }

    /// The first element matching `css`, if any.
    fn find(&self, css: &str) -> Option<String> {
        let found = self.call("POST", "/elements", Some(json!({"using": "css selector", "value": css})));
        found.as_array()?.first().map(|e| e[ELEMENT].as_str().unwrap().to_string())
    }

    /// Waits up to 20 s for `css`.
    fn wait(&self, css: &str) -> String {
        self.wait_for(&format!("an element {css}"), || self.find(css))
    }

    fn wait_for<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let started = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            if started.elapsed() > Duration::from_secs(20) {
                let page = self.call(
                    "POST",
                    "/execute/sync",
                    Some(json!({"script": "return document.body.innerText", "args": []})),
                );
                panic!("waited 20 s for {what}; the page shows:\n{}", page.as_str().unwrap_or(""));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn text(&self, css: &str) -> String {
        self.wait_for(&format!("an element {css}"), || self.read(css))
    }

    fn wait_text(&self, css: &str, want: &str) {
        self.wait_for(&format!("{css} to read {want:?}"), || self.read(css).filter(|t| t.contains(want)).map(drop))
    }

    /// A real click on `css`, found again if the page redrew it meanwhile.
    fn click(&self, css: &str) {
        self.wait_for(&format!("a click on {css}"), || {
            let id = self.find(css)?;
            self.try_call("POST", &format!("/element/{id}/click"), Some(json!({}))).ok().map(drop)
        })
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.wait(css);
        self.call("POST", &format!("/element/{id}/clear"), Some(json!({})));
        self.call("POST", &format!("/element/{id}/value"), Some(json!({"text": text})));
    }

    fn visible(&self, css: &str) -> bool {
        self.find(css).is_some_and(|id| self.call("GET", &format!("/element/{id}/displayed"), None) == json!(true))
    }

    fn screenshot(&self, path: &std::path::Path) {
        let b64 = self.call("GET", "/screenshot", None);
        let mut decode = Command::new("base64").arg("-d").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        std::io::Write::write_all(decode.stdin.as_mut().unwrap(), b64.as_str().unwrap().as_bytes()).unwrap();
        let png = decode.wait_with_output().unwrap().stdout;
        assert!(png.starts_with(b"\x89PNG"), "not a PNG screenshot");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.agent.delete(&format!("{}/session/{}", self.base, self.session)).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // chromium may still be closing its files: retried briefly, never a failing test.
        for _ in 0..20 {
            if std::fs::remove_dir_all(self.scratch.path()).is_ok() || !self.scratch.path().exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn api(d: &Daemon, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let payload = body.map(|b| b.to_string());
    d.call(method, path, Some(TOKEN), payload.as_deref().map(|p| ("application/json", p.as_bytes())))
}

fn entries(d: &Daemon) -> Vec<Value> {
    api(d, "GET", "/v1/cache/entries", None).1.as_array().unwrap().clone()
}

#[test]
fn an_operator_drives_the_console_in_a_headless_browser() {
    let d = Daemon::with_images(0, &["cirros", "debian"]);
    let (status, _) = api(&d, "POST", "/v1/volumes", Some(json!({"image_id": "cirros", "size": 1})));
    assert_eq!(status, 201);
    let entry = entries(&d)[0]["id"].as_u64().unwrap();

    let b = Browser::start();
    let console = format!("http://{}/ui", d.addr);
    b.goto(&console);

    // The token is asked for; a wrong one is refused and said so.
    assert!(b.visible("#login") && !b.visible("#console"));
    b.type_into("#token", "not-the-token-at-all");
    b.click("#login-button");
    b.wait_text("#login-error", "refused");
    assert!(!b.visible("#console"));
    b.type_into("#token", TOKEN);
    b.click("#login-button");
    b.wait(&format!("#entries tr[data-entry='{entry}']"));
    assert!(!b.visible("#login"));
    b.wait_text("#hit-ratio", "0.0 %");

    // A hit elsewhere shows up in the live event stream and moves the hit ratio.
    let (status, _) = api(&d, "POST", "/v1/volumes", Some(json!({"image_id": "cirros", "size": 2})));
    assert_eq!(status, 201);
    b.wait("#events li[data-event='image_volume_cache.hit']");
    b.wait_text("#hit-ratio", "50.0 %");
    b.wait_text("#bytes-saved", "MiB");

    // Pin, from the entry's row.
    b.click(&format!("#entries tr[data-entry='{entry}'] button.pin"));
    b.wait_for("the entry to be pinned", || {
        entries(&d).iter().any(|e| e["id"] == entry && e["pinned"] == true).then_some(())
    });
    b.wait_text(&format!("#entries tr[data-entry='{entry}'] td.pinned"), "yes");

    // Swap the eviction policy by uploading a component.
    let plugin = PathBuf::from(std::env::var("VOLCACHE_PLUGIN_DIR").expect("VOLCACHE_PLUGIN_DIR")).join("lru.wasm");
    b.type_into("#upload-file", plugin.to_str().unwrap());
    b.click("#upload-button");
    b.wait_text("#upload-result", "loaded");
    let (_, policies) = api(&d, "GET", "/v1/policies/eviction", None);
    assert_eq!(policies["kind"], "wasm", "{policies}");
    b.wait_text("#policies tr[data-slot='eviction'] td:nth-child(3)", "wasm");
    // Its own counts, from its load (none yet); a built-in's are not counted.
    let calls = |slot: &str| b.text(&format!("#policies tr[data-slot='{slot}'] td:nth-child(4)"));
    assert_eq!((calls("eviction").as_str(), calls("admission").as_str()), ("0", "-"));
    b.wait("#events li[data-event='policy.changed']");

    // The token is not asked again in this tab.
    b.call("POST", "/refresh", Some(json!({})));
    b.wait(&format!("#entries tr[data-entry='{entry}']"));
    assert!(!b.visible("#login"), "the token was asked again after a reload");

    // Warm up the other image.
    b.wait("#warm-image option[value='debian']");
    let select = b.wait("#warm-image");
    b.call("POST", &format!("/element/{select}/value"), Some(json!({"text": "debian"})));
    b.click("#warm-button");
    b.wait_for("debian's entry", || entries(&d).iter().any(|e| e["image_id"] == "debian").then_some(()));
    b.wait("#events li[data-event='image_volume_cache.warm']");
    b.wait("#entries tr td:nth-child(2)");
    b.wait_text("#entries", "debian");

    b.screenshot(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts/console.png"));

    // Evict, confirming the dialog.
    b.click(&format!("#entries tr[data-entry='{entry}'] button.evict"));
    b.call("POST", "/alert/accept", Some(json!({})));
    b.wait_for("the entry to be evicted", || (!entries(&d).iter().any(|e| e["id"] == entry)).then_some(()));
    b.wait("#events li[data-event='image_volume_cache.evict']");
    let status_line = b.text("#notice");
    assert!(status_line.contains(&format!("entry {entry} evicted")), "{status_line}");
}

#[test]
fn the_console_is_served_with_a_strict_content_security_policy() {
    let d = Daemon::with_images(0, &[]);
    for path in ["/ui", "/ui/console.js", "/ui/console.css"] {
        let mut stream = std::net::TcpStream::connect(&d.addr).unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        std::io::Write::write_all(&mut stream, req.as_bytes()).unwrap();
        let mut response = String::new();
        std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{path}: {response}");
        let lower = response.to_ascii_lowercase();
        assert!(lower.contains("content-security-policy: default-src 'none'; script-src 'self'"), "{path}");
        assert!(lower.contains("x-content-type-options: nosniff"), "{path}");
        // No third-party origin anywhere: the assets are embedded and the page loads nothing else.
        assert!(
            !lower.contains("http://") && !lower.contains("https://") || path != "/ui",
            "{path} names another origin"
        );
    }
}
