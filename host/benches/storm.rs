//! Boot storm: 100 creates at once from one uncached image (and from 10 uncached images), on the
//! file backend on XFS with reflink, the image served over HTTP on 127.0.0.1 by a server that
//! counts downloads. Reported against one miss (one fill + one clone) measured in the same run,
//! plus hit throughput with 1 and 4 clients.
//!
//! `cargo bench --bench storm` prints the table (needs root: it mounts a loop XFS). Under
//! `cargo test` it runs a small storm and checks one download per image.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{GIB, MIB};
use volcache::backend::file::FileBackend;
use volcache::backend::Backend;
use volcache::cache::images::NewImage;
use volcache::cache::{CacheService, CreateVolume};
use volcache::catalog::{CacheOutcome, Catalog};
use volcache::image::DiskFormat;

/// Serves one image body under many paths and counts the GETs of each.
struct Server {
    addr: String,
    gets: Arc<Mutex<HashMap<String, usize>>>,
}

impl Server {
    fn start(body: Vec<u8>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let gets: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let (counts, body) = (gets.clone(), Arc::new(body));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (counts, body) = (counts.clone(), body.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    let _ = reader.read_line(&mut line);
                    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let mut header = String::new();
                    while reader.read_line(&mut header).unwrap_or(0) > 2 {
                        header.clear();
                    }
                    *counts.lock().unwrap().entry(path).or_insert(0) += 1;
                    let head =
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                    let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&body));
                });
            }
        });
        Server { addr, gets }
    }

    fn gets(&self, path: &str) -> usize {
        self.gets.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// Registers `/id.raw` on the server as image `id`.
fn register(catalog: &Catalog, server: &Server, id: &str, size: u64) -> CreateVolume {
    let url = PathBuf::from(format!("http://{}/{id}.raw", server.addr));
    let mut req = common::register_image(catalog, id, &url, size);
    req.size = size.div_ceil(GIB);
    req
}

/// Hits per second with `clients` threads for `for_`.
fn hits_per_second(cache: &Arc<CacheService>, req: &CreateVolume, clients: usize, for_: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (cache, req, stop) = (cache.clone(), req.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let v = cache.create_volume(&req).unwrap();
                    cache.delete_volume(&v.volume.id).unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let t = Instant::now();
    std::thread::sleep(for_);
    stop.store(true, Ordering::SeqCst);
    let n: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    n as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (size, extents, storm_size) = if full { (GIB, 64, 100) } else { (64 * MIB, 4, 8) };
    let xfs = common::Xfs::new(if full { 24 * GIB } else { 2 * GIB });
    let raw = xfs.mnt.join("image.raw");
    common::image(&raw, size, extents, 0);
    let server = Server::start(std::fs::read(&raw).unwrap());
    let catalog = Arc::new(Catalog::open(&xfs.mnt.join("catalog.redb")).unwrap());
    let backend: Arc<dyn Backend> = Arc::new(FileBackend::new(xfs.mnt.join("volumes")).unwrap());
    let cache = Arc::new(common::cache_service(catalog.clone(), backend, &xfs.mnt));

    // The reference: one miss (one download and fill, one clone), then a hit.
    let one = register(&catalog, &server, "reference", size);
    let t = Instant::now();
    assert_eq!(cache.create_volume(&one).unwrap().volume.cache, Some(CacheOutcome::Miss));
    let miss = t.elapsed();

    // One image, `storm_size` creates at once.
    let storm_one = register(&catalog, &server, "storm", size);
    let (one_image, outcomes) = common::storm(&cache, vec![storm_one.clone(); storm_size]);
    assert_eq!(server.gets("/storm.raw"), 1, "one download for the whole storm");
    assert_eq!(outcomes.iter().filter(|o| **o == CacheOutcome::Miss).count(), 1);

    // Ten images, `storm_size / 10` creates each, all at once.
    let per = (storm_size / 10).max(1);
    let ten: Vec<CreateVolume> = (0..10).map(|i| register(&catalog, &server, &format!("ten-{i}"), size)).collect();
    let (ten_images, outcomes) = common::storm(&cache, ten.iter().flat_map(|r| vec![r.clone(); per]).collect());
    for i in 0..10 {
        assert_eq!(server.gets(&format!("/ten-{i}.raw")), 1, "one download per image");
    }
    assert_eq!(outcomes.iter().filter(|o| **o == CacheOutcome::Miss).count(), 10);
    if !full {
        return;
    }
    let hit = common::median(
        (0..20)
            .map(|_| {
                let t = Instant::now();
                let v = cache.create_volume(&one).unwrap();
                let took = t.elapsed();
                cache.delete_volume(&v.volume.id).unwrap();
                took
            })
            .collect(),
    );
    common::print_latency_table("the reference create, alone (hit: median of 20)", &[(size, extents, miss, hit)]);
    let single = hits_per_second(&cache, &one, 1, Duration::from_secs(5));
    let four = hits_per_second(&cache, &one, 4, Duration::from_secs(5));
    println!(
        "boot storm, file backend on XFS with reflink, {} MiB image ({extents} data extents) over HTTP",
        size / MIB
    );
    println!("{:<40} | {:>9} | {:>14}", "", "time", "vs one miss");
    println!("{:<40} | {:>7.2} s | {:>13.2}x", "one miss (fill + clone)", miss.as_secs_f64(), 1.0);
    let row = |label: &str, d: Duration| {
        println!("{label:<40} | {:>7.2} s | {:>13.2}x", d.as_secs_f64(), d.as_secs_f64() / miss.as_secs_f64());
    };
    row(&format!("{storm_size} creates, one image (1 download)"), one_image);
    row(&format!("{storm_size} creates, 10 images (10 downloads)"), ten_images);
    println!(
        "10 images vs 10 misses one after another: {:.2}x",
        ten_images.as_secs_f64() / (10.0 * miss.as_secs_f64())
    );
    println!("hits/s (create + delete of a hit): 1 client {single:.0}/s, 4 clients {four:.0}/s");
    if let Some(dir) = common::real_images(full) {
        let (miss, storm) = real_storm(&cache, &dir.join("debian.qcow2"), storm_size);
        println!(
            "real image, Debian 12 qcow2 ({} MiB) over HTTP without ranges (spooled): one miss {:.2} s, {storm_size} creates at once {:.2} s = {:.2}x (1 download)",
            std::fs::metadata(dir.join("debian.qcow2")).map_or(0, |m| m.len()) / MIB,
            miss.as_secs_f64(),
            storm.as_secs_f64(),
            storm.as_secs_f64() / miss.as_secs_f64()
        );
    }
}

/// One miss, then a storm of `storm_size` creates from another registration, of the qcow2 at
/// `qcow2` served over HTTP (volumes the image's size); checks one download for the storm.
fn real_storm(cache: &Arc<CacheService>, qcow2: &std::path::Path, storm_size: usize) -> (Duration, Duration) {
    let server = Server::start(std::fs::read(qcow2).unwrap());
    let register = |id: &str| {
        let image = cache
            .register_image(NewImage {
                id: Some(id.into()),
                name: id.into(),
                source: format!("http://{}/{id}.qcow2", server.addr),
                disk_format: DiskFormat::Qcow2,
                checksum: None,
                refresh_interval_seconds: None,
            })
            .unwrap();
        CreateVolume {
            image_id: id.into(),
            size: image.virtual_size.div_ceil(GIB),
            project_id: "bench".into(),
            user_id: "bench".into(),
        }
    };
    let one = register("real-one");
    // Both start with no dirty pages of the rows before to write back.
    let settle = || assert!(std::process::Command::new("sync").status().unwrap().success());
    settle();
    let t = Instant::now();
    assert_eq!(cache.create_volume(&one).unwrap().volume.cache, Some(CacheOutcome::Miss));
    let miss = t.elapsed();
    let storm = register("real-storm");
    let before = server.gets("/real-storm.qcow2");
    settle();
    let (took, outcomes) = common::storm(cache, vec![storm; storm_size]);
    assert_eq!(server.gets("/real-storm.qcow2") - before, 1, "one download for the whole storm");
    assert_eq!(outcomes.iter().filter(|o| **o == CacheOutcome::Miss).count(), 1);
    (miss, took)
}
