//! Load on the real daemon over HTTP on 127.0.0.1: sustained volume creates that hit the cache,
//! and `GET /v1/cache/entries` with 200 entries, from 1 and 4 client threads.
//!
//! `cargo bench --bench api` prints the table, for the file backend in the temporary directory
//! (whatever file system it is on) and on a loop-mounted XFS with reflink (root). Under
//! `cargo test` it runs a few requests only.

#[allow(dead_code, reason = "this bench takes only the loop XFS from what the benches share")]
mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-token-0123456789abcdef";

fn request(addr: &str, method: &str, path: &str, body: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out[..12.min(out.len())]).split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `total` requests from `threads` clients; returns requests per second and p50/p99 latency.
fn load(
    addr: &str,
    threads: usize,
    total: usize,
    method: &'static str,
    path: &'static str,
    body: &'static [u8],
) -> (f64, Duration, Duration) {
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let addr = addr.to_string();
            std::thread::spawn(move || {
                (0..total / threads)
                    .map(|_| {
                        let t = Instant::now();
                        let status = request(&addr, method, path, body);
                        assert!((200..300).contains(&status), "{method} {path}: HTTP {status}");
                        t.elapsed()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    (latencies.len() as f64 / elapsed.as_secs_f64(), pct(50), pct(99))
}

type Row = (&'static str, usize, (f64, Duration, Duration));

/// Starts the daemon in `dir` (its state and volumes there), fills its cache and measures it.
fn measure_in(dir: &Path, full: bool) -> (usize, Vec<Row>) {
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    // The images are files in the daemon's directory, which it must be allowed to read.
    std::fs::write(dir.join("volcache.toml"), "image_source_dirs = [\".\"]\n").unwrap();
    let _daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_volcache"))
            .args(["serve", "--config", "volcache.toml", "--listen", &addr])
            .current_dir(dir)
            .env("VOLCACHE_ADMIN_TOKEN", TOKEN)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while TcpStream::connect(&addr).is_err() {
        assert!(started.elapsed() < Duration::from_secs(60), "daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Images of 16 MiB with 1 MiB of data; 200 of them fill 200 cache entries.
    let images = if full { 200 } else { 3 };
    for i in 0..images {
        let path = dir.join(format!("img{i}.raw"));
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(16 << 20).unwrap();
        f.write_all_at(&vec![i as u8 + 1; 1 << 20], 4 << 20).unwrap();
        let body =
            format!(r#"{{"id": "img{i}", "name": "img{i}", "source": "{}", "disk_format": "raw"}}"#, path.display());
        assert_eq!(request(&addr, "POST", "/v1/images", body.as_bytes()), 201);
        assert_eq!(
            request(&addr, "POST", "/v1/volumes", format!(r#"{{"image_id": "img{i}", "size": 1}}"#).as_bytes()),
            201
        );
    }
    let n = if full { 400 } else { 4 };
    let rows = vec![
        ("POST /v1/volumes (hits)", 1, load(&addr, 1, n, "POST", "/v1/volumes", br#"{"image_id": "img0", "size": 1}"#)),
        ("POST /v1/volumes (hits)", 4, load(&addr, 4, n, "POST", "/v1/volumes", br#"{"image_id": "img1", "size": 1}"#)),
        ("GET /v1/cache/entries", 1, load(&addr, 1, n * 5, "GET", "/v1/cache/entries", b"")),
        ("GET /v1/cache/entries", 4, load(&addr, 4, n * 5, "GET", "/v1/cache/entries", b"")),
    ];
    (images, rows)
}

/// The type of the file system `dir` is on, as `findmnt` names it (`ext4`, `xfs`, `tmpfs`).
fn fs_type(dir: &Path) -> String {
    let out = Command::new("findmnt").args(["-n", "-o", "FSTYPE", "-T"]).arg(dir).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn print(title: &str, rows: &[Row]) {
    println!("{title}");
    println!("{:<26} | {:>7} | {:>9} | {:>9} | {:>9}", "request", "clients", "req/s", "p50", "p99");
    for (name, clients, (rate, p50, p99)) in rows {
        println!(
            "{name:<26} | {clients:>7} | {rate:>9.0} | {:>6.2} ms | {:>6.2} ms",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let dir = tempfile::tempdir().unwrap();
    let (images, rows) = measure_in(dir.path(), full);
    if !full {
        return;
    }
    let kind = fs_type(dir.path());
    let clone = if kind == "xfs" || kind == "btrfs" { "a reflink" } else { "an extent copy of 1 MiB" };
    print(&format!("load on the daemon over HTTP on 127.0.0.1 ({images} cache entries, file backend on {kind}: each hit {clone})"), &rows);
    // The same on XFS with reflink (a loop device; needs root), where a hit copies no data.
    println!();
    let xfs = common::Xfs::new(8 << 30);
    let (images, rows) = measure_in(&xfs.mnt, full);
    print(&format!("the same on XFS with reflink, a loop device ({images} cache entries, each hit a reflink)"), &rows);
}
