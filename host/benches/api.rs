//! Load on the real daemon over HTTP on 127.0.0.1: sustained volume creates that hit the cache,
//! and `GET /v1/cache/entries` with 200 entries, from 1 and 4 client threads.
//!
//! `cargo bench --bench api` prints the table, for the file backend in the temporary directory
//! (whatever file system it is on) and on a loop-mounted XFS with reflink (root): five rounds of
//! the four loads, alternating; the median rate, the rounds' range, and for hits the catalog's
//! write transactions and disk flushes per request (from `/metrics`). Under `cargo test` it
//! runs a few requests only.

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
    exchange(addr, method, path, body).0
}

/// One request on a new connection: the status and the response's body.
fn exchange(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    let status = text.get(..12).unwrap_or("").split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The catalog's write transactions and flushes so far, from `/metrics`.
fn catalog_counts(addr: &str) -> (u64, u64) {
    let (status, text) = exchange(addr, "GET", "/metrics", b"");
    assert_eq!(status, 200);
    let value = |name: &str| -> u64 {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} missing"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    (value("volcache_catalog_commits_total{"), value("volcache_catalog_flushes_total{"))
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `total` requests from `threads` clients; returns requests per second, p50/p99 latency
/// and the ids of the volumes created (a POST's answers).
fn load(
    addr: &str,
    threads: usize,
    total: usize,
    method: &'static str,
    path: &'static str,
    body: &'static [u8],
) -> ((f64, Duration, Duration), Vec<String>) {
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let addr = addr.to_string();
            std::thread::spawn(move || {
                (0..total / threads)
                    .map(|_| {
                        let t = Instant::now();
                        let (status, answer) = exchange(&addr, method, path, body);
                        assert!((200..300).contains(&status), "{method} {path}: HTTP {status}");
                        let id = (method == "POST").then(|| volume_id(&answer));
                        (t.elapsed(), id)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let (mut latencies, ids): (Vec<Duration>, Vec<Option<String>>) =
        handles.into_iter().flat_map(|h| h.join().unwrap()).unzip();
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    ((latencies.len() as f64 / elapsed.as_secs_f64(), pct(50), pct(99)), ids.into_iter().flatten().collect())
}

/// The `id` of a created volume, from its JSON.
fn volume_id(answer: &str) -> String {
    let rest = answer.split_once(r#""id":""#).map(|(_, r)| r).unwrap_or_else(|| panic!("no id in {answer}"));
    rest.split('"').next().unwrap().to_string()
}

/// Deletes volumes (untimed, between rounds), so that every round starts from the same disk:
/// on a file system without reflinks each hit writes a copy of its entry's data.
fn delete_all(addr: &str, ids: Vec<String>) {
    let chunks: Vec<Vec<String>> = ids.chunks(ids.len().div_ceil(4).max(1)).map(<[String]>::to_vec).collect();
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let addr = addr.to_string();
            std::thread::spawn(move || {
                for id in chunk {
                    let status = request(&addr, "DELETE", &format!("/v1/volumes/{id}"), b"");
                    assert!((200..300).contains(&status), "DELETE {id}: HTTP {status}");
                }
            })
        })
        .collect();
    handles.into_iter().for_each(|h| h.join().unwrap());
}

/// A load: (row name, clients, requests, method, path, body).
type Load = (&'static str, usize, usize, &'static str, &'static str, &'static [u8]);

/// One row of the table: rounds of (req/s, p50, p99), and for hits the catalog's transactions
/// and flushes per request over all rounds.
struct Row {
    name: &'static str,
    clients: usize,
    rounds: Vec<(f64, Duration, Duration)>,
    catalog: Option<(f64, f64)>,
}

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
    // Rounds alternate the four loads, so that the disk's and the machine's drift weighs on
    // all of them alike.
    let (rounds, n) = if full { (5, 1000) } else { (1, 4) };
    let hit: &[u8] = br#"{"image_id": "img1", "size": 1}"#;
    let loads: [Load; 4] = [
        ("POST /v1/volumes (hits)", 1, n, "POST", "/v1/volumes", hit),
        ("POST /v1/volumes (hits)", 4, 2 * n, "POST", "/v1/volumes", hit),
        ("GET /v1/cache/entries", 1, 2 * n, "GET", "/v1/cache/entries", b""),
        ("GET /v1/cache/entries", 4, 4 * n, "GET", "/v1/cache/entries", b""),
    ];
    let mut rows: Vec<Row> =
        loads.iter().map(|l| Row { name: l.0, clients: l.1, rounds: Vec::new(), catalog: None }).collect();
    let mut catalog = [(0u64, 0u64); 4];
    for _ in 0..rounds {
        for (i, &(_, clients, total, method, path, body)) in loads.iter().enumerate() {
            let before = catalog_counts(&addr);
            let (measured, created) = load(&addr, clients, total, method, path, body);
            rows[i].rounds.push(measured);
            let after = catalog_counts(&addr);
            catalog[i].0 += after.0 - before.0;
            catalog[i].1 += after.1 - before.1;
            delete_all(&addr, created);
        }
    }
    for (i, row) in rows.iter_mut().enumerate().filter(|(_, r)| r.name.starts_with("POST")) {
        let requests = (loads[i].2 / loads[i].1 * loads[i].1 * rounds) as f64;
        row.catalog = Some((catalog[i].0 as f64 / requests, catalog[i].1 as f64 / requests));
    }
    (images, rows)
}

/// The type of the file system `dir` is on, as `findmnt` names it (`ext4`, `xfs`, `tmpfs`).
fn fs_type(dir: &Path) -> String {
    let out = Command::new("findmnt").args(["-n", "-o", "FSTYPE", "-T"]).arg(dir).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The median of some numbers (the upper one of an even count).
fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn print(title: &str, rows: &[Row]) {
    println!("{title}");
    println!(
        "{:<26} | {:>7} | {:>9} | {:>13} | {:>9} | {:>9} | {:>18}",
        "request", "clients", "req/s", "rounds", "p50", "p99", "catalog txn/flush"
    );
    for row in rows {
        let rates: Vec<f64> = row.rounds.iter().map(|r| r.0).collect();
        let (low, high) = (rates.iter().copied().fold(f64::MAX, f64::min), rates.iter().copied().fold(0.0, f64::max));
        let p50 = median(row.rounds.iter().map(|r| r.1).collect());
        let p99 = median(row.rounds.iter().map(|r| r.2).collect());
        let catalog = row.catalog.map(|(t, f)| format!("{t:.2} / {f:.2}")).unwrap_or_else(|| "-".into());
        println!(
            "{:<26} | {:>7} | {:>9.0} | {:>13} | {:>6.2} ms | {:>6.2} ms | {:>18}",
            row.name,
            row.clients,
            median(rates),
            format!("{low:.0}-{high:.0}"),
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            catalog
        );
    }
    // The cache-core issue's reference: 641 hits/s with 4 clients, file backend on ext4.
    if let Some(row) = rows.iter().find(|r| r.name.starts_with("POST") && r.clients == 4) {
        let rate = median(row.rounds.iter().map(|r| r.0).collect());
        println!("4-client hits: {:.2}x the 641/s measured before the cache-core redesign", rate / 641.0);
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
