//! Shared fixtures: where the built components are, engines, and reproducible cache views.

use std::path::{Path, PathBuf};
use std::time::Duration;

use volcache::policy::{Candidate, CinderLimits, EngineOptions, Entry, PolicyEngine, PolicySet, View};

fn artifact(var: &str, default_dir: &str, name: &str, make_target: &str) -> PathBuf {
    let dir = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(default_dir));
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: these tests load real components; run `make {make_target}` first (`make test` does)",
        path.display()
    );
    path
}

/// A component built from plugins/<name>.
pub fn plugin(name: &str) -> PathBuf {
    artifact("VOLCACHE_PLUGIN_DIR", "target/plugins", name, "plugins")
}

/// A component built from tests/plugins/<name>.
pub fn test_plugin(name: &str) -> PathBuf {
    artifact("VOLCACHE_TEST_PLUGIN_DIR", "target/test-plugins", name, "test-plugins")
}

/// Engines of one test run share an artifact cache, so each component is compiled once.
fn shared_cache() -> Option<PathBuf> {
    Some(run_dir("artifacts"))
}

/// A scratch directory for this test process (`$TMPDIR/volcache-e2e-<what>-<pid>`), for what
/// outlives one test (statics are never dropped). It is removed when the process exits, and
/// those of test processes that died before they could are removed on first use.
pub fn run_dir(what: &str) -> PathBuf {
    static SWEPT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let prefix = format!("volcache-e2e-{what}-");
    let mut swept = SWEPT.lock().unwrap_or_else(|p| p.into_inner());
    if swept.is_empty() {
        // SAFETY: registers a plain function; the test harness ends with `exit`, which runs it.
        unsafe { libc::atexit(remove_run_dirs) };
    }
    if !swept.contains(&prefix) {
        swept.push(prefix.clone());
        for entry in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else { continue };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    std::env::temp_dir().join(format!("{prefix}{}", std::process::id()))
}

/// At exit: removes this process's [`run_dir`]s.
extern "C" fn remove_run_dirs() {
    let suffix = format!("-{}", std::process::id());
    for entry in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("volcache-e2e-") && name.ends_with(&suffix) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Deadline of test engines: long enough that a busy CI machine never turns a slow but finite
/// call into a timeout. Only tests about endless loops use a short one.
pub const GENEROUS_DEADLINE: Duration = Duration::from_secs(30);

pub fn engine() -> PolicyEngine {
    engine_with_deadline(GENEROUS_DEADLINE)
}

pub fn engine_with_deadline(deadline: Duration) -> PolicyEngine {
    PolicyEngine::new(EngineOptions { call_deadline: deadline, cache_dir: shared_cache(), ..EngineOptions::default() })
        .expect("engine")
}

pub fn policy_set(limits: CinderLimits) -> PolicySet {
    PolicySet::new(engine(), limits)
}

/// A small deterministic generator, so a failing case can be reproduced from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// `n` entries with ids 1..=n, sizes 1..=20 GiB, random last-used times (with ties), and every
/// 7th entry pinned when `pinned` says so.
pub fn view(n: usize, seed: u64, pinned: bool) -> View {
    let mut rng = Rng::new(seed);
    let entries = (1..=n as u64)
        .map(|id| {
            let size_gib = 1 + rng.below(20);
            Entry {
                id,
                size_gib,
                allocated_bytes: size_gib * (1 << 30) / (1 + rng.below(4)),
                last_used_ms: 1_000 * rng.below(n as u64 / 2 + 1),
                created_ms: id,
                hits: rng.below(100),
                pinned: pinned && id % 7 == 0,
            }
        })
        .collect();
    View::new(entries, 10_000_000)
}

pub fn candidate(size_gib: u64) -> Candidate {
    Candidate {
        image_id: format!("image-{size_gib}"),
        size_gib,
        virtual_size_bytes: size_gib << 30,
        allocated_bytes: size_gib << 29,
    }
}

/// Runs a tool the tests depend on (qemu-img, qemu-io, mkfs.xfs, ...), failing loudly with what
/// to install when it is missing.
pub fn run(tool: &str, args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {tool} ({e}): these tests need it; `make test` installs it (scripts/install-deps.sh)")
    });
    assert!(out.status.success(), "{tool} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The `volcache` binary under test.
pub fn volcache(args: &[&str]) -> std::process::Output {
    volcache_cmd().args(args).output().expect("run volcache")
}

/// The volcache binary, with this test process's own cache directory (`plugin check` and
/// `plugin inspect` keep compiled components under `$XDG_CACHE_HOME`), so tests leave nothing
/// in the user's home.
pub fn volcache_cmd() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_volcache"));
    cmd.env("XDG_CACHE_HOME", run_dir("xdg-cache"));
    cmd
}

pub const MIB: u64 = 1 << 20;

/// A raw image laid out like a small cloud image, scaled to `size` (at least 1 MiB): a boot
/// area, explicitly written zeros, a large extent, many small extents at odd 512-byte-aligned
/// offsets, holes between them, and a tail block; `size` need not be a multiple of anything.
pub fn cloud_like_raw(path: &std::path::Path, size: u64) {
    assert!(size >= MIB, "cloud_like_raw needs at least 1 MiB");
    let p = path.to_str().unwrap();
    run("qemu-img", &["create", "-q", "-f", "raw", p, &size.to_string()]);
    let align = |x: u64| x / 512 * 512;
    let mut cmds: Vec<String> = vec![
        // Data amounts are capped: a large virtual disk stays a few MiB of data.
        format!("write -P 0x5a 0 {}", align((2 * MIB).min(size / 8))), // boot area
        format!("write -P 0x00 {} {}", align(size / 8), align((6 * MIB).min(size / 16))), // explicit zeros
        format!("write -P 0x33 {} {}", align(size / 4), align((12 * MIB).min(size / 8))), // a large extent
        format!("write -P 0x44 {} {}", align(size / 2), align((3 * MIB).min(size / 32))),
    ];
    for i in 0..48u64 {
        let at = align(size * 5 / 8 + i * (size / 256)) + (i % 7) * 512;
        cmds.push(format!("write -P {} {at} {}", 1 + i % 250, 512 * (1 + i % 9)));
    }
    cmds.push(format!("write -P 0x77 {} 4k", align(size - 4096 - 1024)));
    let mut args = vec!["-f", "raw"];
    for c in &cmds {
        args.extend(["-c", c.as_str()]);
    }
    args.push(p);
    run("qemu-io", &args);
}

/// Bytes allocated on disk.
pub fn allocated(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Data extents of a file (SEEK_DATA/SEEK_HOLE).
pub fn extents(path: &std::path::Path) -> usize {
    let file = std::fs::File::open(path).unwrap();
    let len = file.metadata().unwrap().len();
    volcache::sparse::DataExtents::new(&file, len).count()
}

/// Asserts that two files hold the same bytes, pointing at the first difference.
pub fn assert_same_bytes(a: &std::path::Path, b: &std::path::Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert_eq!(x.len(), y.len(), "{} and {} differ in size", a.display(), b.display());
    if let Some(at) = x.iter().zip(&y).position(|(p, q)| p != q) {
        panic!("{} and {} differ at byte {at}", a.display(), b.display());
    }
}

/// Runs `volcache serve` that must refuse to start: it exits 1 within 30 s with a message, not a
/// panic. Returns its standard error.
pub fn refused_start(mut serve: std::process::Command) -> String {
    use std::process::Stdio;
    let mut child = serve.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the daemon started where it must refuse to");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "the daemon must exit 1 with a message: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
    stderr
}
