//! The RBD backend on a real single-node cluster, side by side in one run:
//! 1. thin import of a raw image into a new RBD image (volcache's thin writer, async writes) vs
//!    `rbd import` of the same file: time and `rbd du` used bytes;
//! 2. create-from-image latency through the cache service, miss vs hit (snapshot clone +
//!    resize), for a 1 GiB and a 4 GiB image.
//!
//! `make bench` starts a bluestore cluster for it (scripts/ceph-cluster.sh) and passes its
//! ceph.conf in `VOLCACHE_TEST_CEPH_CONF`. Under `cargo test` it runs one small round.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{image, median, GIB, MIB};
use volcache::backend::rbd::RbdBackend;
use volcache::backend::{Backend, RbdOptions};
use volcache::catalog::{CacheOutcome, Catalog};
use volcache::image::convert::{write_image, ConvertOptions};
use volcache::image::source::Location;
use volcache::sparse::Target;

fn ceph_conf() -> PathBuf {
    std::env::var_os("VOLCACHE_TEST_CEPH_CONF").map(PathBuf::from).filter(|p| p.is_file()).unwrap_or_else(|| {
        panic!("the RBD benchmark needs a Ceph cluster: run `make bench`, or set VOLCACHE_TEST_CEPH_CONF")
    })
}

fn rbd(args: &[&str]) -> String {
    let out = Command::new("rbd").args(args).env("CEPH_CONF", ceph_conf()).output().expect("rbd (ceph-common)");
    assert!(out.status.success(), "rbd {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn rbd_used(image: &str) -> u64 {
    let du: serde_json::Value =
        serde_json::from_str(&rbd(&["du", &format!("rbd/{image}"), "--format", "json"])).unwrap();
    du["images"].as_array().unwrap().iter().find(|i| i["name"] == image).unwrap()["used_size"].as_u64().unwrap()
}

fn drop_caches() {
    let _ = Command::new("sh").args(["-c", "sync; echo 3 > /proc/sys/vm/drop_caches"]).status();
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let prefix = format!("bench{}-", std::process::id());
    let options = RbdOptions { ceph_conf: Some(ceph_conf()), prefix: prefix.clone(), ..RbdOptions::default() };
    let backend = Arc::new(RbdBackend::connect(options).unwrap());
    let work = tempfile::tempdir_in(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")).unwrap();

    // 1. Thin import vs `rbd import`.
    let (size, extents) = if full { (4 * GIB, 128) } else { (64 * MIB, 4) };
    let rounds = if full { 3 } else { 1 };
    let raw = work.path().join("import.raw");
    image(&raw, size, extents, MIB);
    let location = Location::parse(raw.to_str().unwrap()).unwrap();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let name = format!("import-{round}");
        drop_caches();
        let t = Instant::now();
        backend.create(&name, size).unwrap();
        let dev = backend.open(&name).unwrap();
        write_image(&location, &*dev, Target::Fresh, work.path(), &ConvertOptions::default(), &mut |_, _| {}).unwrap();
        dev.sync_all().unwrap();
        drop(dev);
        ours.push(t.elapsed());

        let reference = format!("{prefix}rbd-import-{round}");
        drop_caches();
        let t = Instant::now();
        rbd(&["import", "--no-progress", raw.to_str().unwrap(), &format!("rbd/{reference}")]);
        theirs.push(t.elapsed());
    }
    let (used_ours, used_theirs) = (rbd_used(&format!("{prefix}import-0")), rbd_used(&format!("{prefix}rbd-import-0")));
    for round in 0..rounds {
        backend.remove(&format!("import-{round}")).unwrap();
        rbd(&["rm", "--no-progress", &format!("rbd/{prefix}rbd-import-{round}")]);
    }
    let (t_ours, t_theirs) = (median(ours), median(theirs));
    assert!(used_ours.abs_diff(used_theirs) * 100 <= used_theirs, "used {used_ours} vs rbd import {used_theirs}");

    // 2. Miss vs hit through the cache service.
    let sizes: &[(u64, u64)] = if full { &[(GIB, 32), (4 * GIB, 32), (4 * GIB, 128)] } else { &[(64 * MIB, 4)] };
    let hits_per_size = if full { 20 } else { 2 };
    let catalog = Arc::new(Catalog::open(&work.path().join("catalog.redb")).unwrap());
    let cache = common::cache_service(catalog.clone(), backend.clone(), work.path());
    let mut rows = Vec::new();
    let mut created = Vec::new();
    for &(size, extents) in sizes {
        let id = format!("img-{}m-{extents}", size / MIB);
        let path = work.path().join(format!("{id}.raw"));
        image(&path, size, extents, MIB);
        let req = common::register_image(&catalog, &id, &path, size);
        drop_caches();
        let t = Instant::now();
        let miss = cache.create_volume(&req).unwrap();
        let miss_time = t.elapsed();
        assert_eq!(miss.volume.cache, Some(CacheOutcome::Miss));
        created.push(miss.volume.id.clone());
        let hits: Vec<Duration> = (0..hits_per_size)
            .map(|_| {
                let t = Instant::now();
                let hit = cache.create_volume(&req).unwrap();
                let elapsed = t.elapsed();
                assert_eq!(hit.volume.cache, Some(CacheOutcome::Hit));
                created.push(hit.volume.id.clone());
                elapsed
            })
            .collect();
        rows.push((size, extents, miss_time, median(hits)));
    }
    // A hit against what it is made of: a bare clone of the same entry's snapshot + resize,
    // through the backend alone (no catalog, lease or intent), alternating with hits.
    let (first_size, first_extents) = sizes[0];
    let first_req = common::register_image(
        &catalog,
        "bare",
        &work.path().join(format!("img-{}m-{first_extents}.raw", first_size / MIB)),
        first_size,
    );
    let miss = cache.create_volume(&first_req).unwrap();
    created.push(miss.volume.id.clone());
    let entry = catalog.read(|r| r.entries()).unwrap().into_iter().find(|e| e.image_id == "bare").unwrap();
    let entry_volume = catalog.read(|r| r.volume(&entry.volume_id)).unwrap().unwrap().backend_name;
    let (mut hit_times, mut bare_times) = (Vec::new(), Vec::new());
    for round in 0..hits_per_size {
        let t = Instant::now();
        let hit = cache.create_volume(&first_req).unwrap();
        hit_times.push(t.elapsed());
        created.push(hit.volume.id.clone());
        let bare = format!("bare-{round}");
        let t = Instant::now();
        backend.clone_volume(&entry_volume, &bare).unwrap();
        backend.resize(&bare, first_req.size * GIB).unwrap();
        bare_times.push(t.elapsed());
        backend.remove(&bare).unwrap();
    }
    let (hit_median, bare_median) = (median(hit_times), median(bare_times));
    // What a storm's clones cost without volcache: as many bare clones (+ resizes) of the same
    // snapshot at once, through the backend alone. A storm cannot beat one miss plus this.
    let storm_size = if full { 100 } else { 4 };
    let bare_storm = bare_clones_at_once(&backend, &entry_volume, storm_size, Some(first_req.size * GIB));
    let bare_storm_same = bare_clones_at_once(&backend, &entry_volume, storm_size, None);
    // Boot storm: many creates at once from one uncached image, against the first row's miss.
    let path = work.path().join(format!("img-{}m-{first_extents}.raw", first_size / MIB));
    let req = common::register_image(&catalog, "storm", &path, first_size);
    drop_caches();
    let cache = Arc::new(cache);
    let (storm_time, outcomes) = common::storm(&cache, vec![req; storm_size]);
    assert_eq!(outcomes.iter().filter(|o| **o == CacheOutcome::Miss).count(), 1);
    // The same storm asking for volumes the image's size: no clone is resized.
    let mut same = common::register_image(&catalog, "storm-same", &path, first_size);
    same.size = first_size.div_ceil(GIB);
    drop_caches();
    let (same_time, outcomes) = common::storm(&cache, vec![same; storm_size]);
    assert_eq!(outcomes.iter().filter(|o| **o == CacheOutcome::Miss).count(), 1);
    for v in catalog.read(|r| r.volumes()).unwrap().into_iter() {
        if v.image_id.as_deref().is_some_and(|i| i.starts_with("storm")) && v.cache_entry.is_none() {
            created.push(v.id);
        }
    }
    // 4. The miss end to end on RBD: a qcow2 over HTTP (Range support) -> a volume, volcache's
    // fill vs Cinder's RBD pipeline (download to a file, `qemu-img convert -O raw` to a file,
    // `rbd import`). The real Debian image when scripts/real-image.sh has built it.
    let real = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
        .join(".cache/volcache-bench/debian.qcow2");
    let (qcow2, what) = if full && real.is_file() {
        (real, "Debian 12 disk")
    } else {
        let raw = work.path().join(format!("img-{}m-{first_extents}.raw", first_size / MIB));
        let q = work.path().join("miss.qcow2");
        common::run("qemu-img", &["convert", "-f", "raw", "-O", "qcow2", raw.to_str().unwrap(), q.to_str().unwrap()]);
        (q, "synthetic")
    };
    let server = common::RangeServer::start(Arc::new(std::fs::read(&qcow2).unwrap()), None);
    // The served qcow2, registered as image `id`.
    let register_http = |id: &str| {
        cache
            .register_image(volcache::cache::images::NewImage {
                id: Some(id.into()),
                name: id.into(),
                source: server.url(),
                disk_format: volcache::image::DiskFormat::Qcow2,
                checksum: None,
                refresh_interval_seconds: None,
            })
            .unwrap()
    };
    let image = register_http("http");
    let http_req = volcache::cache::CreateVolume {
        image_id: "http".into(),
        size: image.virtual_size.div_ceil(GIB),
        project_id: "bench".into(),
        user_id: "bench".into(),
    };
    let (mut miss_ours, mut miss_cinder) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        drop_caches();
        let t = Instant::now();
        let miss = cache.create_volume(&http_req).unwrap();
        miss_ours.push(t.elapsed());
        assert_eq!(miss.volume.cache, Some(CacheOutcome::Miss));
        cache.delete_volume(&miss.volume.id).unwrap();
        for entry in catalog.read(|r| r.entries()).unwrap().into_iter().filter(|e| e.image_id == "http") {
            cache.evict_entry(entry.id).unwrap();
        }
        drop_caches();
        let (download, converted) = (work.path().join("download.qcow2"), work.path().join("converted.raw"));
        let t = Instant::now();
        let mut file = std::fs::File::create(&download).unwrap();
        std::io::copy(&mut ureq::get(&server.url()).call().unwrap().into_reader(), &mut file).unwrap();
        file.sync_all().unwrap();
        common::run(
            "qemu-img",
            &["convert", "-f", "qcow2", "-O", "raw", download.to_str().unwrap(), converted.to_str().unwrap()],
        );
        let name = format!("{prefix}cinder-{round}");
        rbd(&["import", "--no-progress", converted.to_str().unwrap(), &format!("rbd/{name}")]);
        miss_cinder.push(t.elapsed());
        rbd(&["rm", "--no-progress", &format!("rbd/{name}")]);
        let _ = std::fs::remove_file(&download);
        let _ = std::fs::remove_file(&converted);
    }
    let (miss_ours, miss_cinder) = (median(miss_ours), median(miss_cinder));
    // The boot storm again, from this qcow2 over HTTP (the real image in full runs), against
    // its miss just measured: volumes the image's size, as that miss.
    let storm_image = register_http("http-storm");
    let storm_req = volcache::cache::CreateVolume { image_id: storm_image.id.clone(), ..http_req.clone() };
    drop_caches();
    let (http_storm_time, outcomes) = common::storm(&cache, vec![storm_req; storm_size]);
    assert_eq!(outcomes.iter().filter(|o| **o == CacheOutcome::Miss).count(), 1);
    for v in catalog.read(|r| r.volumes()).unwrap().into_iter() {
        if v.image_id.as_deref() == Some("http-storm") && v.cache_entry.is_none() {
            created.push(v.id);
        }
    }
    for id in &created {
        cache.delete_volume(id).unwrap();
    }
    for entry in catalog.read(|r| r.entries()).unwrap() {
        cache.evict_entry(entry.id).unwrap();
    }
    assert!(backend.list().unwrap().is_empty(), "the benchmark left images: {:?}", backend.list().unwrap());
    if !full {
        return;
    }
    let data = extents * 4 * MIB;
    println!(
        "thin import into RBD, {} GiB raw with {} MiB of data (+ {} MiB of written zeros), median of {rounds}",
        size / GIB,
        data / MIB,
        extents
    );
    println!("{:>14} | {:>8} | {:>12}", "", "time", "rbd du used");
    println!("{:>14} | {:>6.2} s | {:>8} MiB", "volcache", t_ours.as_secs_f64(), used_ours / MIB);
    println!("{:>14} | {:>6.2} s | {:>8} MiB", "rbd import", t_theirs.as_secs_f64(), used_theirs / MIB);
    println!("volcache / rbd import time: {:.2}x", t_ours.as_secs_f64() / t_theirs.as_secs_f64());
    println!();
    common::print_latency_table(
        &format!("create-from-image latency on RBD (hit: snapshot clone + resize, median of {hits_per_size})"),
        &rows,
    );
    println!(
        "hit vs a bare clone + resize of the same snapshot (median of {hits_per_size}, alternating): {:.1} ms vs {:.1} ms = {:.2}x",
        hit_median.as_secs_f64() * 1e3,
        bare_median.as_secs_f64() * 1e3,
        hit_median.as_secs_f64() / bare_median.as_secs_f64()
    );
    println!(
        "the miss end to end on RBD ({what}, {:.0} MiB qcow2 over HTTP, median of {rounds}): volcache {:.2} s vs Cinder's download + convert + rbd import {:.2} s = {:.2}x",
        std::fs::metadata(&qcow2).map(|m| m.len()).unwrap_or(0) as f64 / MIB as f64,
        miss_ours.as_secs_f64(),
        miss_cinder.as_secs_f64(),
        miss_ours.as_secs_f64() / miss_cinder.as_secs_f64()
    );
    let one_miss = rows[0].2;
    println!(
        "boot storm on RBD: {storm_size} creates at once from one uncached {} GiB image: {:.2} s, {:.2}x one miss ({:.2} s)",
        first_size / GIB,
        storm_time.as_secs_f64(),
        storm_time.as_secs_f64() / one_miss.as_secs_f64(),
        one_miss.as_secs_f64()
    );
    println!(
        "  the same, volumes the image's size (no resize): {:.2} s, {:.2}x",
        same_time.as_secs_f64(),
        same_time.as_secs_f64() / one_miss.as_secs_f64()
    );
    println!(
        "  its floor: {storm_size} bare clones + resizes of one snapshot at once through librbd alone take {:.2} s ({:.2} s without resizes): the storm is {:.2}x (no resize: {:.2}x) one miss + those",
        bare_storm.as_secs_f64(),
        bare_storm_same.as_secs_f64(),
        storm_time.as_secs_f64() / (one_miss + bare_storm).as_secs_f64(),
        same_time.as_secs_f64() / (one_miss + bare_storm_same).as_secs_f64()
    );
    println!(
        "  the same from the {what} qcow2 over HTTP, volumes its size: {:.2} s, {:.2}x its miss ({:.2} s)",
        http_storm_time.as_secs_f64(),
        http_storm_time.as_secs_f64() / miss_ours.as_secs_f64(),
        miss_ours.as_secs_f64()
    );
}

/// `n` clones of `source` (grown to `size` when given) made at once from as many threads through
/// the backend alone, then removed; the time until the last is made.
fn bare_clones_at_once(backend: &Arc<RbdBackend>, source: &str, n: usize, size: Option<u64>) -> Duration {
    let barrier = Arc::new(std::sync::Barrier::new(n + 1));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (backend, barrier, source) = (backend.clone(), barrier.clone(), source.to_string());
            std::thread::spawn(move || {
                barrier.wait();
                backend.clone_grown(&source, &format!("bare-storm-{i}"), size).unwrap();
            })
        })
        .collect();
    barrier.wait();
    let t = Instant::now();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let elapsed = t.elapsed();
    for i in 0..n {
        backend.remove(&format!("bare-storm-{i}")).unwrap();
    }
    elapsed
}
