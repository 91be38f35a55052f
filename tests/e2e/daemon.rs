//! The real daemon over real HTTP on 127.0.0.1: health, bearer auth, policy listing, swapping a
//! slot with an uploaded component, JSON errors, and a clean exit on SIGTERM.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::fixtures::{plugin, test_plugin};

pub const TOKEN: &str = "test-token-0123456789abcdef";

/// A JSON request with the admin token; `Err` when the connection fails (e.g. the daemon died).
pub fn request_json(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> std::io::Result<(u16, serde_json::Value)> {
    let payload = body.map(|b| serde_json::to_vec(&b).unwrap());
    let (status, bytes) =
        request(addr, method, path, Some(TOKEN), payload.as_deref().map(|p| ("application/json", p)))?;
    Ok((status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)))
}

pub struct Daemon {
    child: Child,
    pub addr: String,
    pub _dir: tempfile::TempDir,
}

impl Daemon {
    /// A daemon in a new directory, whose files may be image sources (its state directory,
    /// `var`, never is).
    fn start() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("volcache.toml"), "image_source_dirs = [\".\"]\n").unwrap();
        Daemon::start_in(dir)
    }

    /// Stops the daemon with SIGTERM and starts a new one on the same state directory.
    pub fn restart(self) -> Daemon {
        self.restart_after(|| {})
    }

    /// Stops the daemon with SIGTERM, runs `meanwhile`, and starts a new one on the same state
    /// directory.
    pub fn restart_after(mut self, meanwhile: impl FnOnce()) -> Daemon {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        assert!(self.child.wait().unwrap().success());
        meanwhile();
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().unwrap());
        Daemon::start_in(dir)
    }

    /// Sends SIGTERM and waits up to `limit` for the daemon to exit.
    pub fn terminate_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Starts a new daemon on the state directory of this one, which has stopped.
    pub fn restart_stopped(mut self) -> Daemon {
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().unwrap());
        Daemon::start_in(dir)
    }

    pub fn start_in(dir: tempfile::TempDir) -> Daemon {
        // Ask the kernel for a free port, then hand it to the daemon.
        let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        // A volcache.toml in the directory is the daemon's configuration.
        let mut args = vec!["serve".to_string(), "--listen".to_string(), addr.clone()];
        if dir.path().join("volcache.toml").exists() {
            args.extend(["--config".to_string(), "volcache.toml".to_string()]);
        }
        let child = crate::fixtures::volcache_cmd()
            .args(&args)
            .current_dir(dir.path())
            .env("VOLCACHE_ADMIN_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let daemon = Daemon { child, addr, _dir: dir };
        let started = Instant::now();
        while request(&daemon.addr, "GET", "/healthz", None, None).is_err() {
            assert!(started.elapsed() < Duration::from_secs(60), "daemon did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, &[u8])>,
    ) -> (u16, serde_json::Value) {
        let (status, body) = request(&self.addr, method, path, token, body).expect("request");
        (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
    }
}

impl Daemon {
    /// A daemon whose cache keeps at most `max_count` entries, with a raw image (8 MiB, sparse)
    /// of each of `images` in its directory, registered under that id.
    pub fn with_images(max_count: u64, images: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let config = format!("image_source_dirs = [\".\"]\n[cache]\nimage_volume_cache_max_count = {max_count}\n");
        std::fs::write(dir.path().join("volcache.toml"), config).unwrap();
        for image in images {
            crate::fixtures::cloud_like_raw(&dir.path().join(format!("{image}.raw")), 8 << 20);
        }
        let d = Daemon::start_in(dir);
        for image in images {
            let source = d._dir.path().join(format!("{image}.raw"));
            let body = serde_json::json!({"id": image, "name": image, "source": source, "disk_format": "raw"});
            let (status, reply) =
                d.call("POST", "/v1/images", Some(TOKEN), Some(("application/json", body.to_string().as_bytes())));
            assert_eq!(status, 201, "{reply}");
        }
        d
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 client: one request per connection.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let (content_type, payload) = body.unwrap_or(("application/json", b""));
    head.push_str(&format!("Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n", payload.len()));
    stream.write_all(head.as_bytes())?;
    if let Err(e) = stream.write_all(payload) {
        // The server may answer early (413 for an oversized body) and close without reading the
        // rest: the write then fails, and the answer is still there to read.
        if !matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset) {
            return Err(e);
        }
    }
    let mut response = Vec::new();
    if let Err(e) = stream.read_to_end(&mut response) {
        // A reset after the answer arrived (the unread body above) still leaves the answer.
        if response.is_empty() {
            return Err(e);
        }
    }
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").ok_or(std::io::ErrorKind::InvalidData)?;
    let status_line = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or(std::io::ErrorKind::InvalidData)?;
    let mut body = response[split + 4..].to_vec();
    if status_line.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Ok((status, body))
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&data[..eol]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
    out
}

#[test]
fn daemon_serves_health_and_guards_policies_with_the_token() {
    let d = Daemon::start();
    let (status, body) = d.call("GET", "/healthz", None, None);
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));

    let (status, body) = d.call("GET", "/v1/policies", None, None);
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _) = d.call("GET", "/v1/policies", Some("wrong-token-wrong-token"), None);
    assert_eq!(status, 401);

    let (status, body) = d.call("GET", "/v1/policies", Some(TOKEN), None);
    assert_eq!(status, 200);
    let names: Vec<_> = body.as_array().unwrap().iter().map(|s| (s["slot"].clone(), s["name"].clone())).collect();
    assert_eq!(
        names,
        vec![
            ("admission".into(), "max-size".into()),
            ("capacity".into(), "quota".into()),
            ("eviction".into(), "lru".into())
        ]
    );

    let (status, body) = d.call("GET", "/v1/nothing-here", None, None);
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
}

#[test]
fn daemon_swaps_a_slot_with_an_uploaded_component_and_refuses_bad_ones() {
    let d = Daemon::start();
    let lru = std::fs::read(plugin("lru")).unwrap();
    let (status, body) = d.call("PUT", "/v1/policies/eviction", Some(TOKEN), Some(("application/wasm", &lru)));
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["kind"].as_str(), body["name"].as_str()), (Some("wasm"), Some("lru")));

    let quota = std::fs::read(plugin("quota")).unwrap();
    let (status, body) = d.call("PUT", "/v1/policies/eviction", Some(TOKEN), Some(("application/wasm", &quota)));
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("wrong_slot")), "{body}");

    let wasi = std::fs::read(test_plugin("wasi-import")).unwrap();
    let (status, body) = d.call("PUT", "/v1/policies/eviction", Some(TOKEN), Some(("application/wasm", &wasi)));
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("forbidden_import")), "{body}");

    let (status, body) =
        d.call("PUT", "/v1/policies/eviction", Some(TOKEN), Some(("application/json", b"{\"builtin\": ")));
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_request")), "{body}");

    let (status, _) =
        d.call("PUT", "/v1/policies/sideways", Some(TOKEN), Some(("application/json", b"{\"builtin\": \"lru\"}")));
    assert_eq!(status, 404);

    // The slot still holds the uploaded lru after the refusals; then back to the built-in.
    let (_, body) = d.call("GET", "/v1/policies/eviction", Some(TOKEN), None);
    assert_eq!(body["kind"], "wasm");
    let (status, body) =
        d.call("PUT", "/v1/policies/eviction", Some(TOKEN), Some(("application/json", b"{\"builtin\": \"lru\"}")));
    assert_eq!((status, body["kind"].as_str()), (200, Some("builtin")));
}

#[test]
fn daemon_exits_cleanly_on_sigterm() {
    let mut d = Daemon::start();
    let pid = d.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let started = Instant::now();
    loop {
        if let Some(status) = d.child.try_wait().unwrap() {
            assert!(status.success(), "daemon exited with {status}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "daemon ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads server-sent events from `/v1/events` on a thread until `want` events other than
/// progress reports arrived; progress reports are left out.
fn sse_collector(addr: &str, want: usize) -> std::thread::JoinHandle<Vec<(String, serde_json::Value)>> {
    let mut seen = 0;
    let events = sse_until(addr, move |name, _| {
        seen += usize::from(name != "image_volume_cache.progress");
        seen >= want
    });
    std::thread::spawn(move || {
        events.join().unwrap().into_iter().filter(|(name, _)| name != "image_volume_cache.progress").collect()
    })
}

/// Subscribes to `/v1/events` (the daemon has subscribed when this returns) and collects
/// `(event, data)` on a thread until `stop` says so, the stream ends, or 60 s pass.
pub fn sse_until(
    addr: &str,
    mut stop: impl FnMut(&str, &serde_json::Value) -> bool + Send + 'static,
) -> std::thread::JoinHandle<Vec<(String, serde_json::Value)>> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let req = format!("GET /v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    stream.write_all(req.as_bytes()).unwrap();
    let mut reader = std::io::BufReader::new(stream);
    let mut status = String::new();
    std::io::BufRead::read_line(&mut reader, &mut status).unwrap();
    assert!(status.contains(" 200 "), "GET /v1/events: {status}");
    std::thread::spawn(move || {
        let mut events = Vec::new();
        let mut name = String::new();
        // Keep-alive comments arrive every 15 s, so also stop at a deadline: a missing event
        // then fails the assertions instead of hanging the test.
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let mut line = String::new();
            if std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) == 0 {
                break;
            }
            // Chunked transfer framing lines are skipped; SSE lines start with a field name.
            if let Some(n) = line.strip_prefix("event: ").or_else(|| line.strip_prefix("event:")) {
                name = n.trim().to_string();
            } else if let Some(data) = line.strip_prefix("data: ").or_else(|| line.strip_prefix("data:")) {
                let data = serde_json::from_str(data.trim()).unwrap_or(serde_json::Value::Null);
                let done = stop(&name, &data);
                events.push((name.clone(), data));
                if done {
                    break;
                }
            }
        }
        events
    })
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing from:\n{text}"))
}

#[test]
fn operator_story_events_and_metrics() {
    let d = Daemon::start();
    let image = d._dir.path().join("cirros.raw");
    crate::fixtures::cloud_like_raw(&image, 24 << 20);
    let (status, _) = d.call("GET", "/v1/events", None, None);
    assert_eq!(status, 401, "the event stream needs the token");
    let events = sse_collector(&d.addr, 4);
    std::thread::sleep(Duration::from_millis(200)); // let the stream subscribe

    let body = serde_json::json!({"id": "cirros", "name": "cirros", "source": image, "disk_format": "raw"}).to_string();
    let (status, img) = d.call("POST", "/v1/images", Some(TOKEN), Some(("application/json", body.as_bytes())));
    assert_eq!(status, 201, "{img}");
    assert!(img["updated_at"].is_string());
    let create = br#"{"image_id": "cirros", "size": 1}"#;
    let (status, first) = d.call("POST", "/v1/volumes", Some(TOKEN), Some(("application/json", create)));
    assert_eq!((status, first["cache"].as_str()), (201, Some("miss")), "{first}");
    let (_, second) = d.call("POST", "/v1/volumes", Some(TOKEN), Some(("application/json", create)));
    assert_eq!(second["cache"], "hit");
    assert_eq!(second["size"], 1);

    let lru = std::fs::read(plugin("lru")).unwrap();
    let (status, _) = d.call("PUT", "/v1/policies/eviction", Some(TOKEN), Some(("application/wasm", &lru)));
    assert_eq!(status, 200);

    let (_, entries) = d.call("GET", "/v1/cache/entries", Some(TOKEN), None);
    let entry = &entries.as_array().unwrap()[0];
    for field in ["id", "host", "cluster_name", "image_id", "image_updated_at", "volume_id", "size", "last_used"] {
        assert!(entry.get(field).is_some(), "entry lacks Cinder's field {field}: {entry}");
    }
    // Cache volumes are hidden from the volume list unless all_tenants=1.
    let (_, listed) = d.call("GET", "/v1/volumes", Some(TOKEN), None);
    let (_, all) = d.call("GET", "/v1/volumes?all_tenants=1", Some(TOKEN), None);
    assert_eq!((listed.as_array().unwrap().len(), all.as_array().unwrap().len()), (2, 3));

    let (status, _) = d.call("DELETE", &format!("/v1/cache/entries/{}", entry["id"]), Some(TOKEN), None);
    assert_eq!(status, 204);
    let (status, _) = d.call("GET", "/v1/volumes/nope", Some(TOKEN), None);
    assert_eq!(status, 404);

    let events = events.join().unwrap();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["image_volume_cache.miss", "image_volume_cache.hit", "policy.changed", "image_volume_cache.evict"]
    );
    assert_eq!(events[0].1["image_id"], "cirros");
    assert_eq!(events[0].1["volume_id"], first["id"]);

    let (status, text) = request(&d.addr, "GET", "/metrics", None, None).unwrap();
    assert_eq!(status, 200, "metrics are public by default");
    let text = String::from_utf8(text).unwrap();
    assert_eq!(metric(&text, "volcache_cache_hits_total"), 1.0);
    assert_eq!(metric(&text, "volcache_cache_misses_total"), 1.0);
    assert_eq!(metric(&text, "volcache_cache_evictions_total"), 1.0);
    assert_eq!(metric(&text, "volcache_cache_entries"), 0.0);
    assert_eq!(metric(&text, "volcache_cache_fill_seconds_count"), 1.0);
    assert!(text.contains("volcache_policy_calls_total{slot=\"eviction\""));
}

#[test]
fn malformed_and_oversized_requests_get_4xx_not_500() {
    let d = Daemon::start();
    let cases: [(&str, &str, &[u8], u16); 6] = [
        ("POST", "/v1/images", b"{not json", 400),
        ("POST", "/v1/images", br#"{"name": "x", "source": "/nonexistent", "disk_format": "vmdk"}"#, 400),
        ("POST", "/v1/images", br#"{"name": "x", "source": "/nonexistent.raw", "disk_format": "raw"}"#, 422),
        ("POST", "/v1/volumes", br#"{"image_id": "none", "size": 1}"#, 404),
        ("POST", "/v1/volumes", br#"{"image_id": "none", "size": 0}"#, 400),
        ("POST", "/v1/volumes", br#"{"image_id": "x", "size": 1, "extra": true}"#, 400),
    ];
    for (method, path, body, want) in cases {
        let (status, reply) = d.call(method, path, Some(TOKEN), Some(("application/json", body)));
        assert_eq!(status, want, "{method} {path} {}: {reply}", String::from_utf8_lossy(body));
        assert!(reply["error"]["code"].is_string() && reply["error"]["message"].is_string(), "{reply}");
    }
    let huge = vec![b'a'; volcache::policy::DEFAULT_MAX_COMPONENT_BYTES + 1];
    let (status, _) = d.call("PUT", "/v1/policies/eviction", Some(TOKEN), Some(("application/wasm", &huge)));
    assert_eq!(status, 413);
}

fn cli(d: &Daemon, token: &str, args: &[&str]) -> std::process::Output {
    crate::fixtures::volcache_cmd()
        .args(args)
        .env("VOLCACHE_URL", format!("http://{}", d.addr))
        .env("VOLCACHE_ADMIN_TOKEN", token)
        .output()
        .unwrap()
}

#[test]
fn cli_shows_units_and_where_a_volume_came_from_and_refuses_a_misspelled_param() {
    let d = Daemon::with_images(1, &["img", "other"]);
    // A miss names the entry it was cloned from and how; sizes read in units.
    let out = cli(&d, TOKEN, &["volume", "create", "--image", "img", "--size", "2"]);
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = |field: &str| shown.lines().find(|l| l.starts_with(field)).map(|l| l[field.len()..].trim().to_string());
    assert_eq!(line("cache").as_deref(), Some("miss"), "{shown}");
    assert_eq!(line("cloned_from").as_deref(), Some("1"), "{shown}");
    assert!(matches!(line("clone_mode").as_deref(), Some("reflink" | "sparse-copy")), "{shown}");
    assert_eq!(line("size").as_deref(), Some("2 GiB"), "{shown}");
    let id = line("id").unwrap();
    let out = cli(&d, TOKEN, &["volume", "show", &id, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["size"].as_u64(), v["cloned_from"].as_u64()), (Some(2), Some(1)), "--json keeps numbers: {v}");
    let out = cli(&d, TOKEN, &["cache", "entries"]);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(table.contains("1 GiB") && table.contains(" MiB"), "{table}");

    // Not cached (the only slot is pinned): the volume says why.
    let out = cli(&d, TOKEN, &["cache", "pin", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(&d, TOKEN, &["volume", "create", "--image", "other", "--size", "1"]);
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    let line = |field: &str| shown.lines().find(|l| l.starts_with(field)).map(|l| l[field.len()..].trim().to_string());
    assert_eq!(line("cache").as_deref(), Some("uncached"), "{shown}");
    assert!(line("uncached_reason").is_some_and(|r| r.contains("policy")), "{shown}");
    assert_eq!(line("cloned_from"), None, "{shown}");

    // A misspelled parameter of a built-in is refused, with the right name suggested.
    let out = cli(
        &d,
        TOKEN,
        &["policy", "set", "capacity", "--builtin", "quota", "--param", "image_volume_cache_max_cont=3"],
    );
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert!(
        err.contains("unknown parameter \"image_volume_cache_max_cont\": did you mean image_volume_cache_max_count?"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    // Slots and built-ins are listed by the CLI itself.
    let out = cli(&d, TOKEN, &["policy", "set", "evction", "--builtin", "lru"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("[possible values: admission, capacity, eviction]"), "{err}");
}

/// `volume list --limit N` shows a page and says on stderr how to ask for the next one, which
/// `--marker` then gives; the last page says nothing more.
#[test]
fn cli_lists_volumes_images_and_entries_a_page_at_a_time() {
    let d = Daemon::with_images(1, &["img", "img-b", "img-c"]);
    for _ in 0..3 {
        let out = cli(&d, TOKEN, &["volume", "create", "--image", "img", "--size", "1"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let ids = |out: &std::process::Output| -> Vec<String> {
        let page: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        page.as_array().unwrap().iter().map(|v| v["id"].as_str().unwrap().to_string()).collect()
    };
    let all = ids(&cli(&d, TOKEN, &["volume", "list", "--json"]));
    assert_eq!(all.len(), 3);

    let out = cli(&d, TOKEN, &["volume", "list", "--limit", "2", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(ids(&out), all[..2].to_vec());
    let hint = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(hint.contains(&format!("volcache volume list --limit 2 --marker {}", all[1])), "{hint}");

    let out = cli(&d, TOKEN, &["volume", "list", "--limit", "2", "--marker", &all[1], "--json"]);
    assert_eq!(ids(&out), all[2..].to_vec());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("may follow"), "the last page");

    let out = cli(&d, TOKEN, &["volume", "list", "--limit", "0"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--limit"));

    // Images page the same way, by id.
    let out = cli(&d, TOKEN, &["image", "list", "--limit", "2", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(ids(&out), ["img", "img-b"]);
    let hint = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(hint.contains("volcache image list --limit 2 --marker img-b"), "{hint}");
    let out = cli(&d, TOKEN, &["image", "list", "--limit", "2", "--marker", "img-b", "--json"]);
    assert_eq!(ids(&out), ["img-c"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("may follow"), "the last page");
    let out = cli(&d, TOKEN, &["image", "list"]);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(["img", "img-b", "img-c"].iter().all(|i| table.contains(i)), "{table}");

    // And cache entries (one here: max_count is 1), by their numeric id.
    let out = cli(&d, TOKEN, &["cache", "entries", "--limit", "1", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = page[0]["id"].as_u64().unwrap();
    let hint = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(hint.contains(&format!("volcache cache entries --limit 1 --marker {entry}")), "{hint}");
    let out = cli(&d, TOKEN, &["cache", "entries", "--limit", "1", "--marker", &entry.to_string(), "--json"]);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(), serde_json::json!([]));
}

#[test]
fn cli_client_drives_the_daemon() {
    let d = Daemon::start();
    let image = d._dir.path().join("img.raw");
    crate::fixtures::cloud_like_raw(&image, 8 << 20);
    let out = cli(&d, TOKEN, &["image", "create", image.to_str().unwrap(), "--id", "img", "--disk-format", "raw"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(table.starts_with("ID") && table.contains("img"), "{table}");

    let out = cli(&d, TOKEN, &["volume", "create", "--image", "img", "--size", "1"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("miss"), "{}", String::from_utf8_lossy(&out.stdout));
    let out = cli(&d, TOKEN, &["volume", "create", "--image", "img", "--size", "1", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cache"], "hit");

    let out = cli(&d, TOKEN, &["cache", "stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (stats["hits"].as_u64(), stats["misses"].as_u64(), stats["entries"].as_u64()),
        (Some(1), Some(1), Some(1))
    );

    let out = cli(
        &d,
        TOKEN,
        &["policy", "set", "capacity", "--builtin", "quota", "--param", "image_volume_cache_max_count=3"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A parameter value holding query syntax reaches the plugin unchanged.
    let odd = "a&b=c +d%20e";
    let out = cli(
        &d,
        TOKEN,
        &[
            "policy",
            "set",
            "capacity",
            "--plugin",
            plugin("quota").to_str().unwrap(),
            "--param",
            "image_volume_cache_max_count=4",
            "--param",
            &format!("note={odd}"),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(&d, TOKEN, &["policy", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let capacity = list.as_array().unwrap().iter().find(|s| s["slot"] == "capacity").unwrap();
    let params = capacity["params"].as_array().unwrap();
    assert!(params.contains(&serde_json::json!(["note", odd])), "{capacity}");
    assert!(params.contains(&serde_json::json!(["image_volume_cache_max_count", "4"])), "{capacity}");
    assert!(!params.iter().any(|p| p[0] == "b" || p[0] == "d"), "{capacity}");
    // The table gives the plugin now in each slot its own counts, a built-in none.
    let out = cli(&d, TOKEN, &["policy", "list"]);
    let table = String::from_utf8_lossy(&out.stdout);
    let header = table.lines().next().unwrap_or_default();
    assert!(
        ["LOADED_AT", "CALLS", "FAILURES", "FALLBACKS"].iter().all(|c| header.to_uppercase().contains(c)),
        "{table}"
    );
    let row = |slot: &str| table.lines().find(|l| l.trim_start().starts_with(slot)).unwrap_or_default().to_string();
    assert!(row("capacity").split_whitespace().rev().take(3).all(|c| c.parse::<u64>().is_ok()), "{table}");
    assert!(row("eviction").split_whitespace().rev().take(3).all(|c| c == "-"), "{table}");
    let out = cli(&d, TOKEN, &["policy", "set", "eviction", "--plugin", plugin("quota").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong_slot"), "{}", String::from_utf8_lossy(&out.stderr));

    let out = cli(&d, "not-the-token-at-all", &["volume", "list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 401"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Routes as the router source declares them: (path, methods).
fn routes_in_source() -> Vec<(String, Vec<String>)> {
    let src = include_str!("../../host/src/server/mod.rs");
    let mut routes = Vec::new();
    for chunk in src.split(".route(\"").skip(1) {
        let path = chunk.split('"').next().unwrap().to_string();
        let handlers = &chunk[path.len()..chunk.find(")\n").unwrap_or(chunk.len())];
        let methods = ["get", "post", "put", "patch", "delete"]
            .iter()
            .filter(|m| handlers.contains(&format!("{m}(")) || handlers.contains(&format!(".{m}(")))
            .map(|m| m.to_string())
            .collect();
        routes.push((path, methods));
    }
    routes
}

#[test]
fn openapi_document_matches_the_routes() {
    let doc: serde_json::Value = serde_json::from_str(volcache::server::OPENAPI).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let routes = routes_in_source();
    assert!(routes.len() >= 12, "found only {routes:?}");
    for (path, methods) in &routes {
        let documented = paths.get(path).unwrap_or_else(|| panic!("route {path} is not in openapi.json"));
        for m in methods {
            assert!(documented.get(m).is_some(), "{} {path} is not in openapi.json", m.to_uppercase());
        }
    }
    // Every documented operation reaches a handler on the real server (not the 404 fallback,
    // not 405).
    let d = Daemon::start();
    for (path, ops) in paths {
        let concrete = path.replace("{id}", "nothing").replace("{slot}", "eviction");
        for method in ops.as_object().unwrap().keys() {
            let m = method.to_uppercase();
            if concrete == "/v1/events" {
                continue; // a stream; exercised by operator_story_events_and_metrics
            }
            let (status, body) =
                request(&d.addr, &m, &concrete, Some(TOKEN), Some(("application/json", b"{}"))).unwrap();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            assert_ne!(status, 405, "{m} {path}");
            assert!(!(status == 404 && body["error"]["code"] == "not_found"), "{m} {path} reached no route");
        }
    }
    let (status, _) = request(&d.addr, "GET", "/v1/openapi.json", None, None).unwrap();
    assert_eq!(status, 200);
}

#[test]
fn a_policy_swapped_over_http_survives_a_restart() {
    let d = Daemon::start();
    let lru = std::fs::read(plugin("lru")).unwrap();
    let (status, _) = d.call("PUT", "/v1/policies/eviction", Some(TOKEN), Some(("application/wasm", &lru)));
    assert_eq!(status, 200);
    let quota = br#"{"builtin": "quota", "params": {"image_volume_cache_max_count": "7"}}"#;
    let (status, _) = d.call("PUT", "/v1/policies/capacity", Some(TOKEN), Some(("application/json", quota)));
    assert_eq!(status, 200);
    let d = d.restart();
    let (_, slots) = d.call("GET", "/v1/policies", Some(TOKEN), None);
    let slot = |name: &str| slots.as_array().unwrap().iter().find(|s| s["slot"] == name).unwrap().clone();
    assert_eq!((slot("eviction")["kind"].as_str(), slot("eviction")["name"].as_str()), (Some("wasm"), Some("lru")));
    assert_eq!(slot("capacity")["params"], serde_json::json!([["image_volume_cache_max_count", "7"]]));
    assert_eq!(slot("admission")["kind"], "builtin", "untouched slots keep the configured policy");
}

#[test]
fn metrics_and_health_can_require_the_token() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("volcache.toml"), "[api]\npublic_metrics = false\n").unwrap();
    let d = Daemon::start_in(dir);
    let (status, _) = request(&d.addr, "GET", "/metrics", None, None).unwrap();
    assert_eq!(status, 401);
    let (status, _) = request(&d.addr, "GET", "/metrics", Some(TOKEN), None).unwrap();
    assert_eq!(status, 200);
    let (status, _) = request(&d.addr, "GET", "/healthz", None, None).unwrap();
    assert_eq!(status, 200, "health stays public unless public_health = false");
}

#[test]
fn swapping_the_eviction_plugin_under_concurrent_creates_fails_no_request() {
    let d = Daemon::start();
    let image = d._dir.path().join("img.raw");
    crate::fixtures::cloud_like_raw(&image, 8 << 20);
    let body = serde_json::json!({"id": "img", "name": "img", "source": image, "disk_format": "raw"}).to_string();
    assert_eq!(d.call("POST", "/v1/images", Some(TOKEN), Some(("application/json", body.as_bytes()))).0, 201);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (addr, stop) = (d.addr.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut done = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || done < 5 {
                    let body = br#"{"image_id": "img", "size": 1}"#;
                    let (status, reply) =
                        request(&addr, "POST", "/v1/volumes", Some(TOKEN), Some(("application/json", body))).unwrap();
                    assert_eq!(status, 201, "a create failed during a swap: {}", String::from_utf8_lossy(&reply));
                    done += 1;
                }
                done
            })
        })
        .collect();
    let lru = std::fs::read(plugin("lru")).unwrap();
    for i in 0..12 {
        let (status, reply) = if i % 2 == 0 {
            d.call("PUT", "/v1/policies/eviction", Some(TOKEN), Some(("application/wasm", &lru)))
        } else {
            d.call("PUT", "/v1/policies/eviction", Some(TOKEN), Some(("application/json", br#"{"builtin": "lru"}"#)))
        };
        assert_eq!(status, 200, "{reply}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let created: u32 = clients.into_iter().map(|c| c.join().expect("a client thread failed")).sum();
    let (_, stats) = d.call("GET", "/v1/cache/stats", Some(TOKEN), None);
    assert_eq!(stats["hits"].as_u64().unwrap() + stats["misses"].as_u64().unwrap(), u64::from(created));
}

#[test]
fn without_a_configured_token_the_daemon_writes_one_to_a_0600_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let mut child = crate::fixtures::volcache_cmd()
        .args(["serve", "--listen", &addr])
        .current_dir(dir.path())
        .env_remove("VOLCACHE_ADMIN_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while request(&addr, "GET", "/healthz", None, None).is_err() {
        assert!(started.elapsed() < Duration::from_secs(60), "daemon did not come up");
        std::thread::sleep(Duration::from_millis(30));
    }
    let path = dir.path().join("var/admin-token");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let token = std::fs::read_to_string(&path).unwrap();
    let (status, _) = request(&addr, "GET", "/v1/policies", Some(token.trim()), None).unwrap();
    assert_eq!(status, 200);
    let _ = child.kill();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let _ = child.wait();
    assert!(stderr.contains("admin token written to"), "the path is printed: {stderr}");
}

/// Two daemons on one backend directory would take each other's cache volumes for orphans:
/// the second is refused at start-up, naming the first; once the first is gone (even killed),
/// the directory can be served again.
#[test]
fn a_second_daemon_on_the_same_backend_is_refused() {
    let shared = tempfile::tempdir().unwrap();
    std::fs::create_dir(shared.path().join("volumes")).unwrap();
    let config = |dir: &tempfile::TempDir| {
        std::fs::write(
            dir.path().join("volcache.toml"),
            format!("[backend]\npath = \"{}\"\n", shared.path().join("volumes").display()),
        )
        .unwrap();
    };
    let first_dir = tempfile::tempdir().unwrap();
    config(&first_dir);
    let first_state = std::fs::canonicalize(first_dir.path()).unwrap().join("var");
    let mut first = Daemon::start_in(first_dir);

    let second_dir = tempfile::tempdir().unwrap();
    config(&second_dir);
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let out = crate::fixtures::volcache_cmd()
        .args(["serve", "--listen", &addr, "--config", "volcache.toml"])
        .current_dir(second_dir.path())
        .env("VOLCACHE_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already used by another volcache daemon"), "{err}");
    assert!(err.contains(&first_state.display().to_string()), "the owner is named: {err}");

    // SIGKILL: the kernel drops the lock with the process.
    let _ = first.child.kill();
    let _ = first.child.wait();
    let second = Daemon::start_in(second_dir);
    let (status, _) = second.call("GET", "/v1/volumes", Some(TOKEN), None);
    assert_eq!(status, 200);
}

/// A port in use, or a backend directory that does not exist, stops the daemon with one line
/// saying so, before it creates any state (a typo must not put volumes on the root disk).
#[test]
fn a_busy_port_or_a_missing_backend_path_is_refused_before_any_state_is_created() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let serve = |dir: &Path, listen: &str| {
        let mut cmd = crate::fixtures::volcache_cmd();
        cmd.args(["serve", "--listen", listen]).current_dir(dir).env("VOLCACHE_ADMIN_TOKEN", TOKEN);
        if dir.join("volcache.toml").exists() {
            cmd.args(["--config", "volcache.toml"]);
        }
        cmd
    };
    let err = crate::fixtures::refused_start(serve(dir.path(), &addr));
    assert!(err.contains(&format!("cannot listen on {addr}")) && err.contains("--listen"), "{err}");
    assert!(!dir.path().join("var").exists(), "no state directory was created");

    let missing = dir.path().join("no-such-disk").join("volumes");
    std::fs::write(dir.path().join("volcache.toml"), format!("[backend]\npath = \"{}\"\n", missing.display())).unwrap();
    let free = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let err = crate::fixtures::refused_start(serve(dir.path(), &free));
    assert!(err.contains("backend.path") && err.contains("not an existing directory"), "{err}");
    assert!(!missing.exists() && !dir.path().join("var").exists(), "nothing was created");
}

#[test]
fn a_second_daemon_on_the_same_state_directory_is_told_so_in_those_words() {
    let first = Daemon::start();
    let free = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let mut second = crate::fixtures::volcache_cmd();
    second
        .args(["serve", "--listen", &free, "--config", "volcache.toml"])
        .current_dir(first._dir.path())
        .env("VOLCACHE_ADMIN_TOKEN", TOKEN);
    let err = crate::fixtures::refused_start(second);
    assert!(err.contains("another volcache owns this state directory"), "{err}");
    let (status, _) = first.call("GET", "/healthz", None, None);
    assert_eq!(status, 200, "the first daemon keeps serving");
}
