//! Thin conversion, side by side in one run: `volcache convert` vs `qemu-img convert -O raw` vs
//! `cp --sparse=always`, on an 8 GiB raw image holding about 1 GiB of data laid out like a cloud
//! image (a few large extents, many small ones, explicit zero blocks), and on the same image as
//! qcow2 (plain and compressed). Then a 100 GiB sparse raw with 1 GiB of data: reading its data
//! through extents vs reading the whole file.
//!
//! `cargo bench --bench convert` (or `make bench`) runs the full sizes and prints the tables;
//! the work directory is `VOLCACHE_BENCH_DIR` or a temporary directory under `target/`. Under
//! `cargo test` it runs a 64 MiB version and only checks that every tool produced the same bytes.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use volcache::sparse::DataExtents;

#[path = "common/files.rs"]
mod files;
use files::{real_images, run, same_bytes};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Deterministic, moderately compressible bytes (like binaries and text, not like noise).
fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let word = (x % 64).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

/// A raw image of `size` with about `data` bytes of data: 60% in 4 large extents, 35% in many
/// 4-256 KiB extents, and 5% written as explicit zeros.
fn make_cloud_image(path: &Path, size: u64, data: u64) {
    let file = File::create(path).unwrap();
    file.set_len(size).unwrap();
    let mut buf = vec![0u8; 8 * MIB as usize];
    let large = data * 60 / 100 / 4;
    for i in 0..4u64 {
        let at = i * (size / 4) + MIB;
        let mut done = 0;
        while done < large {
            let n = (large - done).min(buf.len() as u64) as usize;
            fill(&mut buf[..n], at + done);
            file.write_all_at(&buf[..n], at + done).unwrap();
            done += n as u64;
        }
    }
    let small_total = data * 35 / 100;
    let (mut written, mut k) = (0u64, 0u64);
    while written < small_total {
        let len = 4096 * (1 + (k * 7919) % 64);
        let at = ((k * 104_729 * 4096) % (size - 2 * MIB)) / 4096 * 4096;
        fill(&mut buf[..len as usize], k);
        file.write_all_at(&buf[..len as usize], at).unwrap();
        written += len;
        k += 1;
    }
    let zeros = vec![0u8; MIB as usize];
    let mut z = 0;
    while z < data * 5 / 100 {
        file.write_all_at(&zeros, size / 3 + z * 3).unwrap();
        z += MIB;
    }
    file.sync_all().unwrap();
}

fn allocated(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

/// Removes the last output (freeing an 8 GiB file's extents takes ext4 a good part of a second,
/// and must not be timed as part of any tool), then empties the page cache.
fn fresh_start(out: &Path) {
    let _ = fs::remove_file(out);
    drop_caches();
}

fn drop_caches() {
    let _ = Command::new("sync").status();
    // Root only; without it results include the page cache for every tool alike.
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Time until `out` is durable: volcache fsyncs before renaming its output into place, so every
/// tool is timed up to the same point.
fn timed(out: &Path, f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    File::open(out).and_then(|f| f.sync_all()).unwrap();
    t.elapsed()
}

/// Rounds per tool and image in a full run.
const ROUNDS: usize = 5;

/// The median and the fastest of a tool's rounds.
#[derive(Clone, Copy, Default)]
struct Timing {
    median: Duration,
    min: Duration,
}

impl Timing {
    fn of(runs: &[Duration]) -> Timing {
        if runs.is_empty() {
            return Timing::default();
        }
        let mut sorted = runs.to_vec();
        sorted.sort();
        Timing { median: sorted[sorted.len() / 2], min: sorted[0] }
    }
}

struct Row {
    name: String,
    time: Timing,
    allocated: u64,
}

/// The `volcache convert` command, run as a process like the other tools.
fn volcache_convert(src: &Path, dst: &Path) {
    run(env!("CARGO_BIN_EXE_volcache"), &["convert", src.to_str().unwrap(), dst.to_str().unwrap()]);
}

fn compare(dir: &Path, label: &str, src: &Path, reference: &Path, with_cp: bool, full: bool) -> Vec<Row> {
    let mut rows = Vec::new();
    let ours = dir.join("out-volcache.raw");
    let qemu = dir.join("out-qemu.raw");
    let cp = dir.join("out-cp.raw");
    // Several rounds for each tool, alternating, so drift hits all alike.
    let rounds = if full { ROUNDS } else { 1 };
    let mut times: [Vec<Duration>; 3] = Default::default();
    for _ in 0..rounds {
        fresh_start(&ours);
        times[0].push(timed(&ours, || volcache_convert(src, &ours)));
        fresh_start(&qemu);
        times[1].push(timed(&qemu, || {
            run("qemu-img", &["convert", "-O", "raw", src.to_str().unwrap(), qemu.to_str().unwrap()])
        }));
        if with_cp {
            fresh_start(&cp);
            times[2].push(timed(&cp, || run("cp", &["--sparse=always", src.to_str().unwrap(), cp.to_str().unwrap()])));
        }
    }
    let [t_ours, t_qemu, t_cp] = times.map(|t| Timing::of(&t));
    assert!(same_bytes(&ours, reference, u64::MAX), "{label}: volcache output differs");
    assert!(same_bytes(&qemu, reference, u64::MAX), "{label}: qemu-img output differs");
    rows.push(Row { name: format!("{label}: volcache convert"), time: t_ours, allocated: allocated(&ours) });
    rows.push(Row { name: format!("{label}: qemu-img convert"), time: t_qemu, allocated: allocated(&qemu) });
    if with_cp {
        assert!(same_bytes(&cp, reference, u64::MAX), "{label}: cp output differs");
        rows.push(Row { name: format!("{label}: cp --sparse=always"), time: t_cp, allocated: allocated(&cp) });
    }
    rows
}

fn read_extents(path: &Path) -> u64 {
    let file = File::open(path).unwrap();
    let size = file.metadata().unwrap().len();
    let mut buf = vec![0u8; 8 * MIB as usize];
    let mut read = 0;
    for e in DataExtents::new(&file, size) {
        let e = e.unwrap();
        let mut at = e.offset;
        while at < e.offset + e.len {
            let n = (e.offset + e.len - at).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..n], at).unwrap();
            read += n as u64;
            at += n as u64;
        }
    }
    read
}

fn read_whole(path: &Path) -> u64 {
    let mut file = File::open(path).unwrap();
    let mut buf = vec![0u8; 8 * MIB as usize];
    let mut read = 0;
    loop {
        match file.read(&mut buf).unwrap() {
            0 => return read,
            n => read += n as u64,
        }
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (size, data, huge) = if full { (8 * GIB, GIB, 100 * GIB) } else { (64 * MIB, 8 * MIB, GIB) };
    let base = std::env::var_os("VOLCACHE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    if std::env::var_os("VOLCACHE_BENCH_KEEP").is_some() {
        eprintln!("keeping the images in {}", dir.path().display());
    }
    let raw = dir.path().join("cloud.raw");
    make_cloud_image(&raw, size, data);
    let qcow2 = dir.path().join("cloud.qcow2");
    let compressed = dir.path().join("cloud-compressed.qcow2");
    run("qemu-img", &["convert", "-f", "raw", "-O", "qcow2", raw.to_str().unwrap(), qcow2.to_str().unwrap()]);
    run(
        "qemu-img",
        &["convert", "-c", "-f", "raw", "-O", "qcow2", raw.to_str().unwrap(), compressed.to_str().unwrap()],
    );

    let mut rows = compare(dir.path(), "raw", &raw, &raw, true, full);
    rows.extend(compare(dir.path(), "qcow2", &qcow2, &raw, false, full));
    rows.extend(compare(dir.path(), "qcow2 -c", &compressed, &raw, false, full));
    // A real disk: Debian 12 on ext4 in a 4 GiB GPT disk (scripts/real-image.sh, built once and
    // cached outside the clone). Full runs only: building it takes a minute and a mirror.
    let real = real_images(full);
    if let Some(real_dir) = &real {
        let disk = real_dir.join("debian.raw");
        rows.extend(compare(dir.path(), "debian raw", &disk, &disk, true, full));
        for (label, file) in [
            ("debian qcow2", "debian.qcow2"),
            ("debian qcow2 -c", "debian-c.qcow2"),
            ("debian qcow2 zstd", "debian-zstd.qcow2"),
        ] {
            rows.extend(compare(dir.path(), label, &real_dir.join(file), &disk, false, full));
        }
    }

    // A 100 GiB disk with 1 GiB of data: extents vs everything.
    let sparse = dir.path().join("huge.raw");
    {
        let f = File::create(&sparse).unwrap();
        f.set_len(huge).unwrap();
        let mut buf = vec![0u8; 8 * MIB as usize];
        fill(&mut buf, 99);
        for i in 0..(data / buf.len() as u64) {
            f.write_all_at(&buf, i * (huge / (data / buf.len() as u64))).unwrap();
        }
    }
    drop_caches();
    let t = Instant::now();
    let by_extents = read_extents(&sparse);
    let t_ext = t.elapsed();
    drop_caches();
    let t = Instant::now();
    let whole = read_whole(&sparse);
    let t_all = t.elapsed();
    assert_eq!(whole, huge);
    assert!(by_extents >= data && by_extents < data + 64 * MIB);

    if std::env::var_os("VOLCACHE_BENCH_KEEP").is_some() {
        let _ = fs::remove_file(&sparse);
        let _ = dir.keep();
    }
    if !full {
        return;
    }
    println!(
        "thin conversion of an {} GiB image with {} GiB of data ({ROUNDS} rounds alternating, page cache dropped, \
         timed until the output is fsynced; ratios of medians, best run in brackets)",
        size / GIB,
        data / GIB
    );
    println!(
        "{:<36} | {:>9} | {:>9} | {:>14} | {:>20} | {:>12}",
        "", "median", "best", "allocated", "time vs qemu", "alloc vs qemu"
    );
    for row in &rows {
        let label = |name: &str| name.split(':').next().unwrap_or("").to_string();
        let qemu = rows.iter().find(|r| label(&r.name) == label(&row.name) && r.name.contains("qemu-img")).unwrap();
        let ratio = |ours: Duration, theirs: Duration| ours.as_secs_f64() / theirs.as_secs_f64();
        println!(
            "{:<36} | {:>7.2} s | {:>7.2} s | {:>10.1} MiB | {:>9.2}x  ({:>5.2}x) | {:>11.4}x",
            row.name,
            row.time.median.as_secs_f64(),
            row.time.min.as_secs_f64(),
            row.allocated as f64 / MIB as f64,
            ratio(row.time.median, qemu.time.median),
            ratio(row.time.min, qemu.time.min),
            row.allocated as f64 / qemu.allocated as f64
        );
    }
    println!();
    println!("reading a {} GiB sparse raw holding {} GiB of data", huge / GIB, data / GIB);
    println!(
        "  by extents (SEEK_DATA)  {:>8.2} s  {:>8.1} MiB read",
        t_ext.as_secs_f64(),
        by_extents as f64 / MIB as f64
    );
    println!("  whole file              {:>8.2} s  {:>8.1} MiB read", t_all.as_secs_f64(), whole as f64 / MIB as f64);
    println!("  extents are {:.1}x faster", t_all.as_secs_f64() / t_ext.as_secs_f64());
}
