//! Shared fixtures: where the built components are, engines, and reproducible cache views.

use std::path::PathBuf;
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
    Some(std::env::temp_dir().join(format!("volcache-e2e-{}", std::process::id())))
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
