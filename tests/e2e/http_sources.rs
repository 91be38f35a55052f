//! Image sources over real HTTP on 127.0.0.1: a plain URL and a Glance v2 API (image metadata,
//! then `/file`), served by a small server in the test. Checksums are verified while streaming;
//! a mismatch or a short download is an error and leaves nothing behind.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::fixtures::{assert_same_bytes, cloud_like_raw, run, volcache, MIB};

/// What the server answers for a path.
#[derive(Clone)]
struct Reply {
    status: u16,
    body: Arc<Vec<u8>>,
    /// Announce the full length but close after this many body bytes.
    cut_at: Option<usize>,
}

struct Server {
    addr: String,
    tokens: Arc<Mutex<Vec<String>>>,
    paths: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(routes: HashMap<String, Reply>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let tokens = Arc::new(Mutex::new(Vec::new()));
        let seen = tokens.clone();
        let paths = Arc::new(Mutex::new(Vec::new()));
        let requested = paths.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                requested.lock().unwrap().push(path.clone());
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                        break;
                    }
                    if let Some((name, value)) = header.split_once(':') {
                        if name.eq_ignore_ascii_case("x-auth-token") {
                            seen.lock().unwrap().push(value.trim().to_string());
                        }
                    }
                }
                let reply = routes.get(&path).cloned().unwrap_or(Reply {
                    status: 404,
                    body: Arc::new(b"{}".to_vec()),
                    cut_at: None,
                });
                let head = format!(
                    "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    reply.status,
                    reply.body.len()
                );
                let end = reply.cut_at.unwrap_or(reply.body.len());
                let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&reply.body[..end]));
            }
        });
        Server { addr, tokens, paths }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// A server of fixed bodies that counts the requests for each path.
pub struct CountingServer(Server);

impl CountingServer {
    pub fn start(bodies: HashMap<String, Vec<u8>>) -> CountingServer {
        CountingServer(Server::start(bodies.into_iter().map(|(k, v)| (k, ok(v))).collect()))
    }

    pub fn url(&self, path: &str) -> String {
        self.0.url(path)
    }

    pub fn hits(&self, path: &str) -> usize {
        self.0.paths.lock().unwrap().iter().filter(|p| *p == path).count()
    }
}

fn ok(body: Vec<u8>) -> Reply {
    Reply { status: 200, body: Arc::new(body), cut_at: None }
}

struct Images {
    dir: tempfile::TempDir,
    raw: PathBuf,
    qcow2: PathBuf,
}

fn images() -> Images {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("image.raw");
    cloud_like_raw(&raw, 40 * MIB);
    let qcow2 = dir.path().join("image.qcow2");
    run("qemu-img", &["convert", "-c", "-f", "raw", "-O", "qcow2", raw.to_str().unwrap(), qcow2.to_str().unwrap()]);
    Images { dir, raw, qcow2 }
}

fn digest(tool: &str, path: &Path) -> String {
    String::from_utf8(run(tool, &[path.to_str().unwrap()]).stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn out_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("volume.raw");
    (dir, out)
}

fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

#[test]
fn raw_and_qcow2_over_http_match_the_source() {
    let img = images();
    let mut routes = HashMap::new();
    routes.insert("/image.raw".to_string(), ok(std::fs::read(&img.raw).unwrap()));
    routes.insert("/image.qcow2".to_string(), ok(std::fs::read(&img.qcow2).unwrap()));
    let server = Server::start(routes);
    for path in ["/image.raw", "/image.qcow2"] {
        let (dir, out) = out_dir();
        let res = volcache(&["convert", &server.url(path), out.to_str().unwrap(), "--json"]);
        assert!(res.status.success(), "{path}: {}", String::from_utf8_lossy(&res.stderr));
        assert_same_bytes(&out, &img.raw);
        let report: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
        assert!(
            report["zero_bytes_skipped"].as_u64().unwrap() + report["hole_bytes_skipped"].as_u64().unwrap() > 20 * MIB
        );
        // Only the volume: no spool or partial file stays behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "{path}");
    }
}

#[test]
fn short_downloads_and_checksum_mismatches_leave_nothing() {
    let img = images();
    let body = std::fs::read(&img.qcow2).unwrap();
    let raw = std::fs::read(&img.raw).unwrap();
    let mut routes = HashMap::new();
    routes.insert(
        "/cut.qcow2".to_string(),
        Reply { status: 200, body: Arc::new(body.clone()), cut_at: Some(body.len() / 2) },
    );
    routes.insert(
        "/cut.raw".to_string(),
        Reply { status: 200, body: Arc::new(raw.clone()), cut_at: Some(raw.len() / 3) },
    );
    routes.insert("/image.qcow2".to_string(), ok(body));
    let server = Server::start(routes);
    let cases: [(&str, &[&str], &str); 4] = [
        ("/cut.qcow2", &[], "truncated"),
        ("/cut.raw", &[], "truncated"),
        ("/image.qcow2", &["--md5", "0123456789abcdef0123456789abcdef"], "md5 checksum mismatch"),
        ("/missing.qcow2", &[], "HTTP 404"),
    ];
    for (path, extra, expect) in cases {
        let (dir, out) = out_dir();
        let url = server.url(path);
        let mut args = vec!["convert", url.as_str(), out.to_str().unwrap()];
        args.extend_from_slice(extra);
        let res = volcache(&args);
        let err = String::from_utf8_lossy(&res.stderr);
        assert!(!res.status.success() && err.contains(expect), "{path}: expected {expect:?}, got {err}");
        assert!(is_empty(dir.path()), "{path}: files left behind");
    }
}

fn glance_routes(img: &Images, disk_format: &str, md5: &str, sha512: &str) -> HashMap<String, Reply> {
    let meta = serde_json::json!({
        "id": "c0ffee", "status": "active", "disk_format": disk_format, "container_format": "bare",
        "checksum": md5, "os_hash_algo": "sha512", "os_hash_value": sha512,
        "size": std::fs::metadata(&img.qcow2).unwrap().len(),
    });
    let mut routes = HashMap::new();
    routes.insert("/image/v2/images/c0ffee".to_string(), ok(serde_json::to_vec(&meta).unwrap()));
    routes.insert("/image/v2/images/c0ffee/file".to_string(), ok(std::fs::read(&img.qcow2).unwrap()));
    routes
}

fn glance_convert(server: &Server, out: &Path) -> std::process::Output {
    let url = format!("glance+http://{}/image/v2/images/c0ffee", server.addr);
    crate::fixtures::volcache_cmd()
        .args(["convert", &url, out.to_str().unwrap()])
        .env("OS_AUTH_TOKEN", "gAAAA-test-token")
        .output()
        .unwrap()
}

#[test]
fn glance_v2_image_is_fetched_with_the_token_and_verified() {
    let img = images();
    let (md5, sha512) = (digest("md5sum", &img.qcow2), digest("sha512sum", &img.qcow2));
    let server = Server::start(glance_routes(&img, "qcow2", &md5, &sha512));
    let (_dir, out) = out_dir();
    let res = glance_convert(&server, &out);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    assert_same_bytes(&out, &img.raw);
    let tokens = server.tokens.lock().unwrap().clone();
    assert_eq!(tokens, vec!["gAAAA-test-token".to_string(); 2], "metadata and file requests carry the token");
}

#[test]
fn glance_checksum_or_format_mismatch_is_refused() {
    let img = images();
    let (md5, sha512) = (digest("md5sum", &img.qcow2), digest("sha512sum", &img.qcow2));
    let bad_sha = "0".repeat(128);
    for (format, md5, sha, expect) in [
        ("qcow2", md5.as_str(), bad_sha.as_str(), "sha512 checksum mismatch"),
        ("qcow2", "ffffffffffffffffffffffffffffffff", sha512.as_str(), "md5 checksum mismatch"),
        ("raw", md5.as_str(), sha512.as_str(), "declared raw"),
    ] {
        let server = Server::start(glance_routes(&img, format, md5, sha));
        let (dir, out) = out_dir();
        let res = glance_convert(&server, &out);
        let err = String::from_utf8_lossy(&res.stderr);
        assert!(!res.status.success() && err.contains(expect), "expected {expect:?}, got {err}");
        assert!(is_empty(dir.path()));
    }
    let _ = img.dir;
}

/// `openssl s_server -WWW`: a real TLS server on 127.0.0.1 serving the files in `root`, with a
/// certificate for IP 127.0.0.1 issued by a CA made for the test (`ca.pem` in `pki`).
struct TlsServer {
    child: std::process::Child,
    port: u16,
}

impl TlsServer {
    fn start(pki: &Path, root: &Path) -> TlsServer {
        let p = |name: &str| pki.join(name).to_str().unwrap().to_string();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        let (ca_key, ca, key, csr, cert, ext) =
            (p("ca.key"), p("ca.pem"), p("srv.key"), p("srv.csr"), p("srv.pem"), p("ext.cnf"));
        args.extend(["-keyout", &ca_key, "-out", &ca, "-days", "2", "-subj", "/CN=volcache test CA"]);
        run("openssl", &args);
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=127.0.0.1"]);
        run("openssl", &args);
        std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
            .unwrap();
        run(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
        for _ in 0..20 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut child = std::process::Command::new("openssl")
                .args(["s_server", "-accept", &format!("127.0.0.1:{port}"), "-cert", &cert, "-key", &key])
                .args(["-WWW", "-quiet"])
                .current_dir(root)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("openssl (make test installs it)");
            for _ in 0..100 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return TlsServer { child, port };
                }
                if child.try_wait().unwrap().is_some() {
                    break; // the port was taken meanwhile: try another
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("openssl s_server did not start");
    }

    fn url(&self, file: &str) -> String {
        format!("https://127.0.0.1:{}/{file}", self.port)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HTTPS: the server's certificate is checked against the system's trust store, which
/// SSL_CERT_FILE can replace; an unknown issuer is refused with a way out, and nothing stays.
#[test]
fn https_trusts_the_system_store_or_ssl_cert_file_and_refuses_an_unknown_issuer() {
    let img = images();
    let pki = tempfile::tempdir().unwrap();
    let server = TlsServer::start(pki.path(), img.dir.path());
    let url = server.url("image.qcow2");

    let (dir, out) = out_dir();
    let res = crate::fixtures::volcache_cmd()
        .args(["convert", &url, out.to_str().unwrap()])
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .output()
        .unwrap();
    assert!(!res.status.success(), "a certificate from an unknown CA was accepted");
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("invalid peer certificate") && err.contains("SSL_CERT_FILE"), "{err}");
    assert_eq!(err.matches(&url).count(), 1, "the URL is named once: {err}");
    assert!(is_empty(dir.path()), "nothing stays after a refused download");

    let res = crate::fixtures::volcache_cmd()
        .args(["convert", &url, out.to_str().unwrap(), "--json"])
        .env("SSL_CERT_FILE", pki.path().join("ca.pem"))
        .output()
        .unwrap();
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    assert_same_bytes(&out, &img.raw);
    let report: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
    assert_eq!(report["format"], "qcow2", "{report}");
}
