//! What the conversion benchmarks (`convert`, `miss`) share: running a tool, comparing
//! outputs, the real Debian images. Apart from `common/mod.rs` so that `convert` takes only this.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `cmd` and fails the benchmark, with its stderr, if it fails.
#[allow(dead_code, reason = "not every bench runs tools")]
pub fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Whether the first `len` bytes of `a` and `b` are the same (and both end at the same place
/// within them).
#[allow(dead_code, reason = "the convert and miss benches use it, the others do not")]
pub fn same_bytes(a: &Path, b: &Path, len: u64) -> bool {
    let open = |p: &Path| std::fs::File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).take(len);
    let (mut fa, mut fb) = (open(a), open(b));
    let (mut x, mut y) = (vec![0u8; 8 << 20], vec![0u8; 8 << 20]);
    loop {
        let (n, m) = (read_full(&mut fa, &mut x), read_full(&mut fb, &mut y));
        if n != m || x[..n] != y[..m] {
            return false;
        }
        if n == 0 {
            return true;
        }
    }
}

/// Reads until `buf` is full or the input ends (a short read is not the end).
#[allow(dead_code, reason = "with same_bytes")]
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    n
}

/// The real Debian images (scripts/real-image.sh) in `VOLCACHE_REAL_IMAGES` or
/// ~/.cache/volcache-bench, built when missing; `None` (said on stderr) when they cannot be.
#[allow(dead_code, reason = "not every bench uses real images")]
pub fn real_images(full: bool) -> Option<PathBuf> {
    if !full {
        return None;
    }
    let dir = std::env::var_os("VOLCACHE_REAL_IMAGES").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/volcache-bench")
    });
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/real-image.sh");
    let built = Command::new(&script).arg(&dir).status().is_ok_and(|s| s.success());
    if !built {
        eprintln!("no real Debian image ({} failed): its rows are left out", script.display());
        return None;
    }
    Some(dir)
}
