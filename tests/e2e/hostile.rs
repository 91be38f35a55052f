//! Careless and hostile clients: every error is JSON (including axum's own rejections), 401
//! says how to authenticate, short or empty tokens are refused at start, and SIGTERM stops the
//! daemon even with event clients connected and a fill stuck on a stalled source.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;
use volcache::config::ApiOptions;
use volcache::server::{app, AppState};

use crate::cache_core::{limits, Core};
use crate::daemon::{request_json, Daemon, TOKEN};
use crate::overlap_http::StallingServer;

async fn raw_call(core: &Core, request: Request<Body>) -> (u16, axum::http::HeaderMap, serde_json::Value) {
    let api = ApiOptions::default();
    let state = AppState::new(core.cache.clone(), TOKEN, core.dir.path().join("plugins"), api);
    let response = app(state).oneshot(request).await.unwrap();
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("status {status}: not JSON: {:?}", String::from_utf8_lossy(&bytes)));
    (status, headers, body)
}

fn authed(method: &str, uri: &str, body: Body) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(body)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_json() {
    let core = Core::new(limits(0, 0));
    let big = vec![b'x'; volcache::policy::DEFAULT_MAX_COMPONENT_BYTES + 1];
    let (status, _, body) = raw_call(&core, authed("PUT", "/v1/policies/eviction", Body::from(big))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("payload_too_large")), "{body}");

    let (status, headers, body) = raw_call(&core, authed("POST", "/v1/cache/stats", Body::empty())).await;
    assert_eq!((status, body["error"]["code"].as_str()), (405, Some("method_not_allowed")), "{body}");
    assert!(headers.get("allow").is_some_and(|a| a.to_str().unwrap().contains("GET")), "{headers:?}");

    let (status, _, body) = raw_call(&core, authed("GET", "/v1/images/%FF%FE", Body::empty())).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_request")), "{body}");

    let unauthenticated = Request::builder().uri("/v1/policies").body(Body::empty()).unwrap();
    let (status, headers, body) = raw_call(&core, unauthenticated).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "{body}");
    assert!(headers.get("www-authenticate").is_some_and(|v| v.to_str().unwrap().starts_with("Bearer")));
}

/// `volcache serve` in `dir` that must refuse to start; its stderr.
fn refused(dir: &std::path::Path, token: Option<&str>) -> String {
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let mut cmd = crate::fixtures::volcache_cmd();
    cmd.args(["serve", "--listen", &addr]).current_dir(dir).env_remove("VOLCACHE_ADMIN_TOKEN");
    if let Some(t) = token {
        cmd.env("VOLCACHE_ADMIN_TOKEN", t);
    }
    crate::fixtures::refused_start(cmd)
}

#[test]
fn short_or_empty_tokens_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = refused(dir.path(), Some("short"));
    assert!(stderr.contains("VOLCACHE_ADMIN_TOKEN is 5 characters") && stderr.contains("at least 16"), "{stderr}");
    std::fs::create_dir_all(dir.path().join("var")).unwrap();
    std::fs::write(dir.path().join("var/admin-token"), " \n").unwrap();
    let stderr = refused(dir.path(), None);
    assert!(stderr.contains("admin-token") && stderr.contains("delete it"), "{stderr}");
}

#[test]
fn sigterm_stops_the_daemon_with_event_clients_and_a_stuck_fill() {
    let dir = tempfile::tempdir().unwrap();
    let mut image = vec![0u8; 4 << 20];
    image[..4096].fill(0x5a);
    let server = StallingServer::start(image);
    let config = format!("shutdown_grace_seconds = 1\nimage_source_urls = [\"http://{}/\"]\n", server.addr);
    std::fs::write(dir.path().join("volcache.toml"), config).unwrap();
    let mut d = Daemon::start_in(dir);
    let source = format!("http://{}/img.raw", server.addr);
    let body = serde_json::json!({"id": "img", "name": "img", "source": source, "disk_format": "raw"});
    assert_eq!(request_json(&d.addr, "POST", "/v1/images", Some(body)).unwrap().0, 201);

    // An event client that stays connected, and a create whose download stalls.
    let mut events = TcpStream::connect(&d.addr).unwrap();
    write!(events, "GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").unwrap();
    let addr = d.addr.clone();
    let _create = std::thread::spawn(move || {
        request_json(&addr, "POST", "/v1/volumes", Some(serde_json::json!({"image_id": "img", "size": 1})))
    });
    let started = Instant::now();
    while request_json(&d.addr, "GET", "/healthz", None).unwrap().1["fills_in_progress"] != 1 {
        assert!(started.elapsed() < Duration::from_secs(20), "the fill did not start");
        std::thread::sleep(Duration::from_millis(20));
    }

    let status = d.terminate_within(Duration::from_secs(30)).expect("the daemon did not stop after SIGTERM");
    assert!(status.success(), "{status}");
    // The event stream was ended by the daemon, not left hanging.
    events.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    let ended = events.read_to_end(&mut rest).is_ok();
    assert!(ended, "the event stream was not closed");

    // The stalled fill is finished by reconciliation at the next start; the image works.
    server.release();
    let d = d.restart_stopped();
    let (status, v) =
        request_json(&d.addr, "POST", "/v1/volumes", Some(serde_json::json!({"image_id": "img", "size": 1}))).unwrap();
    assert_eq!((status, v["cache"].as_str()), (201, Some("miss")), "{v}");
}

#[test]
fn image_sources_are_confined_to_the_allowed_directories() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("volcache.toml"), "image_source_dirs = [\".\"]\n").unwrap();
    let root = dir.path().to_path_buf();
    crate::fixtures::cloud_like_raw(&root.join("ok.raw"), 8 << 20);
    std::os::unix::fs::symlink("/etc/passwd", root.join("passwd-link")).unwrap();
    crate::fixtures::run("mkfifo", &[root.join("fifo").to_str().unwrap()]);
    let d = Daemon::start_in(dir);
    std::fs::write(root.join("var/secret.key"), b"the daemon's own secret").unwrap();
    let register = |id: &str, source: &std::path::Path| {
        let body = serde_json::json!({"id": id, "name": id, "source": source, "disk_format": "raw"});
        request_json(&d.addr, "POST", "/v1/images", Some(body)).unwrap()
    };
    for (id, source) in [
        ("shadow", std::path::PathBuf::from("/etc/shadow")),
        ("link", root.join("passwd-link")),
        ("catalog", root.join("var/catalog.redb")),
        ("key", root.join("var/secret.key")),
    ] {
        let (status, body) = register(id, &source);
        assert_eq!((status, body["error"]["code"].as_str()), (403, Some("source_not_allowed")), "{id}: {body}");
    }
    // A FIFO is refused at once, not read (which would block until a writer came).
    let (status, body) = register("fifo", &root.join("fifo"));
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("FIFO"), "{body}");

    // Allowed at registration, then swapped for a link out of the allowed directory: the fill
    // checks again.
    assert_eq!(register("ok", &root.join("ok.raw")).0, 201);
    std::fs::remove_file(root.join("ok.raw")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("ok.raw")).unwrap();
    let (status, body) =
        request_json(&d.addr, "POST", "/v1/volumes", Some(serde_json::json!({"image_id": "ok", "size": 1}))).unwrap();
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("source_not_allowed")), "{body}");

    // `volcache convert` reads what its caller names, but only regular files.
    let out = crate::fixtures::volcache(&["convert", "/dev/zero", root.join("zero.raw").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("character device"), "{:?}", out);
}

#[test]
fn without_image_source_dirs_file_sources_are_refused_with_the_way_to_allow_them() {
    let d = Daemon::start_in(tempfile::tempdir().unwrap());
    let image = d._dir.path().join("img.raw");
    crate::fixtures::cloud_like_raw(&image, 8 << 20);
    let body = serde_json::json!({"id": "img", "name": "img", "source": image, "disk_format": "raw"});
    let (status, body) = request_json(&d.addr, "POST", "/v1/images", Some(body)).unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("image_source_dirs"), "{body}");
}

/// A server that announces 8 MiB and sends 64 bytes every 50 ms (about 1.3 KB/s).
fn trickling_server() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8388608\r\nConnection: close\r\n\r\n");
                for _ in 0..2000 {
                    if stream.write_all(&[0x5a; 64]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        }
    });
    addr
}

#[test]
fn a_trickling_source_fails_at_the_minimum_rate_or_the_deadline() {
    let addr = trickling_server();
    for (config, expect) in [
        ("[sources]\nmin_bytes_per_second = 100000\nwindow_seconds = 1\n", "below the minimum"),
        ("[sources]\nmin_bytes_per_second = 0\ndeadline_seconds = 1\n", "longer than 1 s"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = format!("image_source_urls = [\"http://{addr}/\"]\n{config}");
        std::fs::write(dir.path().join("volcache.toml"), config).unwrap();
        let d = Daemon::start_in(dir);
        let body = serde_json::json!({"id": "slow", "name": "slow", "source": format!("http://{addr}/slow.raw"), "disk_format": "raw"});
        let (status, body) = request_json(&d.addr, "POST", "/v1/images", Some(body)).unwrap();
        assert_eq!(status, 422, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(expect), "{expect}: {body}");
        assert_eq!(request_json(&d.addr, "GET", "/healthz", None).unwrap().0, 200, "the daemon keeps serving");
    }
}

#[test]
fn plugin_files_are_confined_to_plugin_dirs_and_must_be_regular() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins-ok");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::write(dir.path().join("volcache.toml"), format!("plugin_dirs = [{:?}]\n", plugins)).unwrap();
    std::fs::copy(crate::fixtures::plugin("lru"), plugins.join("lru.wasm")).unwrap();
    crate::fixtures::run("mkfifo", &[plugins.join("fifo.wasm").to_str().unwrap()]);
    std::os::unix::fs::symlink("/dev/zero", plugins.join("zero.wasm")).unwrap();
    let d = Daemon::start_in(dir);
    let put = |path: &std::path::Path| {
        let body = serde_json::json!({"plugin": path});
        request_json(&d.addr, "PUT", "/v1/policies/eviction", Some(body)).unwrap()
    };
    let (status, body) = put(std::path::Path::new("/etc/passwd"));
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("source_not_allowed")), "{body}");
    let (status, body) = put(&plugins.join("zero.wasm"));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("source_not_allowed")),
        "/dev/zero via a link: {body}"
    );
    // A FIFO is refused at once, and the swap lock is not held: the next swap works.
    let (status, body) = put(&plugins.join("fifo.wasm"));
    assert_eq!(status, 422, "{body}");
    let (status, body) = put(&plugins.join("lru.wasm"));
    assert_eq!(status, 200, "{body}");
}

/// Reads until the server closes the connection; `true` if it did within `limit`.
fn closed_by_server(stream: &mut TcpStream, limit: Duration) -> bool {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn idle_and_slow_header_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("volcache.toml"), "[api]\nheader_read_timeout_seconds = 1\n").unwrap();
    let d = Daemon::start_in(dir);
    let mut idle = TcpStream::connect(&d.addr).unwrap();
    let mut slow = TcpStream::connect(&d.addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
    // A kept-alive connection after its request, idle from then on.
    let mut kept = TcpStream::connect(&d.addr).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    for (what, s) in [("idle", &mut idle), ("slow headers", &mut slow), ("idle keep-alive", &mut kept)] {
        assert!(closed_by_server(s, Duration::from_secs(20)), "the {what} connection was left open");
    }
    assert_eq!(request_json(&d.addr, "GET", "/healthz", None).unwrap().0, 200);
}

#[test]
fn connections_over_the_cap_are_closed_and_the_daemon_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[api]\nmax_connections = 4\nheader_read_timeout_seconds = 3\n";
    std::fs::write(dir.path().join("volcache.toml"), config).unwrap();
    let d = Daemon::start_in(dir);
    // Let the start-up probe's connection go away first.
    std::thread::sleep(Duration::from_millis(300));
    let held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(&d.addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut over = TcpStream::connect(&d.addr).unwrap();
    assert!(closed_by_server(&mut over, Duration::from_secs(2)), "a connection over the cap was kept");
    // The held ones time out (header read timeout), and the daemon answers again.
    drop(held);
    let started = Instant::now();
    while request_json(&d.addr, "GET", "/healthz", None).map(|r| r.0).unwrap_or(0) != 200 {
        assert!(started.elapsed() < Duration::from_secs(20), "the daemon did not serve again");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Serves `/images/a.raw` (an image) and `/images/moved` (a redirect to `elsewhere`).
fn redirecting_server(elsewhere: String) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let reply = if head.starts_with("GET /images/moved") {
                format!("HTTP/1.1 302 Found\r\nLocation: {elsewhere}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .into_bytes()
            } else {
                let mut r = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\nConnection: close\r\n\r\n".to_vec();
                r.extend(vec![0x5a; 1 << 20]);
                r
            };
            let _ = stream.write_all(&reply);
        }
    });
    addr
}

#[test]
fn url_sources_are_confined_to_image_source_urls_and_redirects_are_not_followed() {
    let other = redirecting_server(String::new());
    let addr = redirecting_server(format!("http://{other}/images/a.raw"));
    let register = |d: &Daemon, id: &str, url: String| {
        let body = serde_json::json!({"id": id, "name": id, "source": url, "disk_format": "raw"});
        request_json(&d.addr, "POST", "/v1/images", Some(body)).unwrap()
    };
    // No image_source_urls: no URL at all.
    let d = Daemon::start_in(tempfile::tempdir().unwrap());
    let (status, body) = register(&d, "a", format!("http://{addr}/images/a.raw"));
    assert_eq!(status, 403, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("image_source_urls"), "{body}");
    drop(d);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("volcache.toml"), format!("image_source_urls = [\"http://{addr}/images/\"]\n"))
        .unwrap();
    let d = Daemon::start_in(dir);
    assert_eq!(register(&d, "a", format!("http://{addr}/images/a.raw")).0, 201);
    for (id, url) in [
        ("path", format!("http://{addr}/imagesX/a.raw")),
        ("port", format!("http://{other}/images/a.raw")),
        ("userinfo", format!("http://{addr}@127.0.0.2:9/images/a.raw")),
        ("glance", format!("glance+http://{other}/v2/images/abc")),
        ("redirect", format!("http://{addr}/images/moved")),
    ] {
        let (status, body) = register(&d, id, url);
        assert_eq!((status, body["error"]["code"].as_str()), (403, Some("source_not_allowed")), "{id}: {body}");
    }
}
