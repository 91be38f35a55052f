//! Create-from-image latency on the file backend with reflink (a loop-mounted XFS): the miss
//! (download, thin write, clone) vs the hit (clone + grow), for a 1 GiB and an 8 GiB image, side
//! by side in one run. A hit must not grow with the image's size.
//!
//! `cargo bench --bench cache` (or `make bench`) prints the table; it needs root (mount). Under
//! `cargo test` it runs one small round and checks miss then hit.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{GIB, MIB};
use volcache::backend::file::FileBackend;
use volcache::backend::Backend;
use volcache::catalog::{CacheOutcome, Catalog};

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    // (virtual size, data extents): the same layout at two sizes separates size from layout;
    // the last row has data in proportion to its size, like a bigger real image.
    let sizes: &[(u64, u64)] =
        if full { &[(GIB, 32), (8 * GIB, 32), (8 * GIB, 256)] } else { &[(64 * MIB, 4), (512 * MIB, 4)] };
    let hits_per_size = if full { 40 } else { 2 };
    let xfs = common::Xfs::new(if full { 12 * GIB } else { GIB });
    let images = xfs.mnt.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let catalog = Arc::new(Catalog::open(&xfs.mnt.join("catalog.redb")).unwrap());
    let backend: Arc<dyn Backend> = Arc::new(FileBackend::new(xfs.mnt.join("volumes")).unwrap());
    let cache = common::cache_service(catalog.clone(), backend, &xfs.mnt);

    // Misses first, then hits interleaved round-robin across the images, so that drift on a
    // noisy machine affects every image alike.
    let mut requests = Vec::new();
    let mut misses = Vec::new();
    for &(size, extents) in sizes {
        let id = format!("img-{}m-{extents}", size / MIB);
        let path = images.join(format!("{id}.raw"));
        common::image(&path, size, extents, 0);
        let req = common::register_image(&catalog, &id, &path, size);
        let _ = Command::new("sh").args(["-c", "sync; echo 3 > /proc/sys/vm/drop_caches"]).status();
        let t = Instant::now();
        let miss = cache.create_volume(&req).unwrap();
        misses.push(t.elapsed());
        assert_eq!(miss.volume.cache, Some(CacheOutcome::Miss));
        requests.push(req);
    }
    let mut hits: Vec<Vec<Duration>> = vec![Vec::new(); requests.len()];
    for _ in 0..hits_per_size {
        for (i, req) in requests.iter().enumerate() {
            let t = Instant::now();
            let hit = cache.create_volume(req).unwrap();
            hits[i].push(t.elapsed());
            assert_eq!(hit.volume.cache, Some(CacheOutcome::Hit));
        }
    }
    let rows: Vec<_> = sizes
        .iter()
        .zip(misses)
        .zip(hits)
        .map(|((&(size, extents), miss), hits)| (size, extents, miss, common::median(hits)))
        .collect();
    if !full {
        return;
    }
    common::print_latency_table(
        &format!(
            "create-from-image latency, file backend on XFS with reflink (hit: median of {hits_per_size}, interleaved)"
        ),
        &rows,
    );
    if let [(_, e1, _, small), (_, e2, _, big), ..] = rows[..] {
        if e1 == e2 {
            println!(
                "hit at 8x the size, same extents: {:.2}x the time (1.0x = independent of size)",
                big.as_secs_f64() / small.as_secs_f64()
            );
        }
    }
}
