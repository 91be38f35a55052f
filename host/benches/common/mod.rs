//! What the create-from-image benchmarks (`cache`, `rbd`) share: test images, a cache service
//! over a given backend, image records and medians.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use volcache::backend::Backend;
use volcache::cache::{timestamp, CacheConfig, CacheService, CreateVolume};
use volcache::catalog::{CacheOutcome, Catalog, ImageRecord};
use volcache::image::DiskFormat;
use volcache::policy::{CinderLimits, EngineOptions, PolicyEngine, PolicySet};

mod files;
#[allow(unused_imports, reason = "not every bench uses them")]
pub use files::{real_images, run, same_bytes};

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// A raw image of `size` with `extents` data extents of 4 MiB spread evenly, each followed by
/// `zeros` bytes of explicitly written zeros (which a thin writer must not write).
pub fn image(path: &Path, size: u64, extents: u64, zeros: u64) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    let block: Vec<u8> = (0..4 * MIB).map(|i| (i % 251) as u8 + 1).collect();
    let zero_block = vec![0u8; zeros as usize];
    let stride = size / extents;
    for i in 0..extents {
        f.write_all_at(&block, i * stride).unwrap();
        f.write_all_at(&zero_block, i * stride + 4 * MIB).unwrap();
    }
    f.sync_all().unwrap();
}

/// The cache service with built-in policies and no limits, spooling under `spool_dir`.
pub fn cache_service(catalog: Arc<Catalog>, backend: Arc<dyn Backend>, spool_dir: &Path) -> CacheService {
    let policies =
        Arc::new(PolicySet::new(PolicyEngine::new(EngineOptions::default()).unwrap(), CinderLimits::default()));
    let config = CacheConfig::new("bench", spool_dir.to_path_buf());
    CacheService::new(catalog, backend, policies, config)
}

/// Records the raw image at `path` as `id` and returns a create request for a volume 1 GiB
/// larger than it.
#[allow(dead_code, reason = "not every bench uses it")]
pub fn register_image(catalog: &Catalog, id: &str, path: &Path, size: u64) -> CreateVolume {
    let stamp = timestamp();
    let record = ImageRecord {
        id: id.to_string(),
        name: id.to_string(),
        source: path.display().to_string(),
        disk_format: DiskFormat::Raw,
        checksum: None,
        virtual_size: size,
        updated_at: stamp.clone(),
        created_at: stamp,
        refresh_interval_seconds: None,
        source_version: None,
    };
    catalog.write(|w| w.put_image(&record)).unwrap();
    CreateVolume { image_id: id.to_string(), size: size.div_ceil(GIB) + 1, project_id: "p".into(), user_id: "u".into() }
}

#[allow(dead_code, reason = "not every bench uses it")]
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Prints a create-from-image latency table: (image size, data extents, miss, hit) per row.
#[allow(dead_code, reason = "not every bench uses it")]
pub fn print_latency_table(title: &str, rows: &[(u64, u64, Duration, Duration)]) {
    println!("{title}");
    println!("{:>8} | {:>8} | {:>10} | {:>10} | {:>9}", "image", "extents", "miss", "hit", "miss/hit");
    for &(size, extents, miss, hit) in rows {
        println!(
            "{:>6} G | {extents:>8} | {:>8.2} s | {:>7.2} ms | {:>8.0}x",
            size / GIB,
            miss.as_secs_f64(),
            hit.as_secs_f64() * 1e3,
            miss.as_secs_f64() / hit.as_secs_f64()
        );
    }
}

/// Runs `requests` at once (one thread each); returns the wall time and the outcomes.
#[allow(dead_code, reason = "the storm and rbd benches use it, the cache bench does not")]
pub fn storm(cache: &Arc<CacheService>, requests: Vec<CreateVolume>) -> (Duration, Vec<CacheOutcome>) {
    let barrier = Arc::new(Barrier::new(requests.len() + 1));
    let threads: Vec<_> = requests
        .into_iter()
        .map(|req| {
            let (cache, barrier) = (cache.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                cache.create_volume(&req).unwrap().volume.cache.unwrap()
            })
        })
        .collect();
    barrier.wait();
    let t = Instant::now();
    let outcomes: Vec<CacheOutcome> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    (t.elapsed(), outcomes)
}

/// A loop-mounted XFS with reflink under target/, unmounted on drop (retried while busy,
/// then detached lazily).
#[allow(dead_code, reason = "the storm and cache benches use it, the rbd bench does not")]
pub struct Xfs {
    _dir: tempfile::TempDir,
    pub mnt: PathBuf,
}

#[allow(dead_code, reason = "the storm and cache benches use it, the rbd bench does not")]
impl Xfs {
    pub fn new(size: u64) -> Xfs {
        let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
        std::fs::create_dir_all(&base).unwrap();
        let dir = tempfile::tempdir_in(base).unwrap();
        let (img, mnt) = (dir.path().join("xfs.img"), dir.path().join("mnt"));
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&img).unwrap().set_len(size).unwrap();
        run("mkfs.xfs", &["-q", "-m", "reflink=1", img.to_str().unwrap()]);
        run("mount", &["-o", "loop", img.to_str().unwrap(), mnt.to_str().unwrap()]);
        Xfs { _dir: dir, mnt }
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        for _ in 0..50 {
            if Command::new("umount").arg(&self.mnt).status().is_ok_and(|s| s.success()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

#[allow(dead_code, reason = "not every bench uses it")]
/// Serves one file, with Range requests, optionally paced to `rate` bytes per second.
pub struct RangeServer {
    addr: String,
}

#[allow(dead_code, reason = "not every bench uses it")]
impl RangeServer {
    pub fn start(body: Arc<Vec<u8>>, rate: Option<u64>) -> RangeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let body = body.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    let _ = reader.read_line(&mut line);
                    let mut range = None;
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) <= 2 {
                            break;
                        }
                        if let Some(spec) =
                            header.strip_prefix("Range: bytes=").or(header.strip_prefix("range: bytes="))
                        {
                            let (a, b) = spec.trim().split_once('-').unwrap();
                            range = Some((a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()));
                        }
                    }
                    let (status, part) = match range {
                        Some((a, b)) => ("206 Partial Content", &body[a..=b]),
                        None => ("200 OK", &body[..]),
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
                        part.len()
                    );
                    if stream.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    let started = Instant::now();
                    let mut sent = 0u64;
                    for piece in part.chunks(256 << 10) {
                        if stream.write_all(piece).is_err() {
                            return;
                        }
                        sent += piece.len() as u64;
                        if let Some(rate) = rate {
                            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                            if let Some(wait) = due.checked_sub(started.elapsed()) {
                                std::thread::sleep(wait);
                            }
                        }
                    }
                });
            }
        });
        RangeServer { addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}/image.qcow2", self.addr)
    }
}
