//! The miss, end to end: a qcow2 image served over HTTP on 127.0.0.1 becomes a volume on the
//! file backend (XFS with reflink). volcache's fill (converted while it downloads, written thin,
//! then cloned) against Cinder's pipeline (download to a file, then `qemu-img convert -O raw`
//! into the volume, then fsync), on the same server, unthrottled and throttled to ~1 Gbit/s.
//! Paired rounds, page cache dropped, medians and spread.
//!
//! `cargo bench --bench miss` (root: it mounts a loop XFS) uses the real Debian image
//! (scripts/real-image.sh) when it can be built, else a synthetic one. Under `cargo test` it
//! runs one small round and checks that both pipelines produced the same bytes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{run, same_bytes, RangeServer as Server, Xfs, GIB, MIB};
use volcache::backend::file::FileBackend;
use volcache::cache::images::NewImage;
use volcache::cache::{CacheService, CreateVolume};
use volcache::catalog::{CacheOutcome, Catalog};
use volcache::image::DiskFormat;

fn drop_caches() {
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Cinder's pipeline: download the image to a file, convert it into the volume, fsync.
fn cinder_pipeline(url: &str, tmp: &Path, volume: &Path) -> Duration {
    let started = Instant::now();
    let response = ureq::get(url).call().unwrap();
    let mut file = std::fs::File::create(tmp).unwrap();
    std::io::copy(&mut response.into_reader(), &mut file).unwrap();
    file.sync_all().unwrap();
    run("qemu-img", &["convert", "-f", "qcow2", "-O", "raw", tmp.to_str().unwrap(), volume.to_str().unwrap()]);
    std::fs::File::open(volume).unwrap().sync_all().unwrap();
    let took = started.elapsed();
    std::fs::remove_file(tmp).unwrap();
    took
}

/// The source image: the real Debian qcow2 (full runs), else a synthetic cloud-like one.
fn source_image(dir: &Path, full: bool) -> (PathBuf, PathBuf, &'static str) {
    if let Some(real) = common::real_images(full) {
        return (real.join("debian.qcow2"), real.join("debian.raw"), "Debian 12 on ext4, 4 GiB disk");
    }
    let raw = dir.join("synthetic.raw");
    let size = if full { 4 * GIB } else { 64 * MIB };
    common::image(&raw, size, size / (64 * MIB), 64 << 10);
    let qcow2 = dir.join("synthetic.qcow2");
    run("qemu-img", &["convert", "-f", "raw", "-O", "qcow2", raw.to_str().unwrap(), qcow2.to_str().unwrap()]);
    (qcow2, raw, "synthetic")
}

fn spread(v: &[Duration]) -> (f64, f64, f64) {
    let mut s: Vec<f64> = v.iter().map(Duration::as_secs_f64).collect();
    s.sort_by(f64::total_cmp);
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    std::fs::create_dir_all(&base).unwrap();
    let work = tempfile::tempdir_in(&base).unwrap();
    let (qcow2, raw, what) = source_image(work.path(), full);
    let body = Arc::new(std::fs::read(&qcow2).unwrap());
    let xfs = Xfs::new(if full { 24 * GIB } else { 2 * GIB });
    let volumes = xfs.mnt.join("volumes");
    std::fs::create_dir_all(&volumes).unwrap();
    let backend = Arc::new(FileBackend::new(&volumes).unwrap());
    let catalog = Arc::new(Catalog::open(&xfs.mnt.join("catalog.redb")).unwrap());
    let cache: CacheService = common::cache_service(catalog, backend, &xfs.mnt.join("spool"));
    let rounds = if full { 5 } else { 1 };
    let rates: Vec<(&str, Option<u64>)> =
        if full { vec![("unthrottled", None), ("1 Gbit/s", Some(125_000_000))] } else { vec![("unthrottled", None)] };
    println!(
        "the miss end to end: {what} ({:.0} MiB qcow2) over HTTP on 127.0.0.1 -> a volume on XFS; {rounds} paired rounds, page cache dropped",
        body.len() as f64 / MIB as f64
    );
    println!(
        "{:<14} | {:>26} | {:>26} | {:>8}",
        "", "volcache miss (median, min-max)", "Cinder: download, convert", "ratio"
    );
    for (i, (label, rate)) in rates.iter().enumerate() {
        let server = Server::start(body.clone(), *rate);
        let id = format!("img{i}");
        let image = cache
            .register_image(NewImage {
                id: Some(id.clone()),
                name: id.clone(),
                source: server.url(),
                disk_format: DiskFormat::Qcow2,
                checksum: None,
                refresh_interval_seconds: None,
            })
            .unwrap();
        let size = image.virtual_size.div_ceil(GIB);
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            drop_caches();
            let request =
                CreateVolume { image_id: id.clone(), size, project_id: "bench".into(), user_id: "bench".into() };
            let started = Instant::now();
            let created = cache.create_volume(&request).unwrap();
            ours.push(started.elapsed());
            assert_eq!(created.volume.cache, Some(CacheOutcome::Miss));
            let ours_path = volumes.join(&created.volume.backend_name);
            drop_caches();
            let cinder_volume = volumes.join("cinder-volume.raw");
            theirs.push(cinder_pipeline(&server.url(), &xfs.mnt.join("download.qcow2"), &cinder_volume));
            assert!(same_bytes(&ours_path, &cinder_volume, image.virtual_size), "the volumes differ");
            assert!(same_bytes(&cinder_volume, &raw, image.virtual_size), "the volume differs from the image");
            // Next round: a miss again.
            std::fs::remove_file(&cinder_volume).unwrap();
            cache.delete_volume(&created.volume.id).unwrap();
            for entry in cache.scope_entries().unwrap() {
                cache.evict_entry(entry.id).unwrap();
            }
        }
        let (a, b) = (spread(&ours), spread(&theirs));
        println!(
            "{label:<14} | {:>8.2} s ({:.2}-{:.2}) | {:>8.2} s ({:.2}-{:.2}) | {:>7.2}x",
            a.0,
            a.1,
            a.2,
            b.0,
            b.1,
            b.2,
            a.0 / b.0
        );
    }
}
