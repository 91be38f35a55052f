//! Decision latency of the eviction slot: the wasm `lru` plugin (target/plugins/lru.wasm) vs the
//! very same LRU code compiled natively (the built-in policy), side by side in one run, plus the
//! LRU that `volcache plugin new` writes in Python and in JavaScript (target/polyglot/, built by
//! `make polyglot-plugins`; their columns are left out when they are not built).
//!
//! All go through `PolicySet::victims`, so all pay for answer validation; the wasm columns also
//! pay for copying the view into the component and the sandbox's deadline and memory checks.
//! Native and Rust wasm calls alternate, so drift during the run weighs on both alike.
//! `cargo bench --bench policy` (or `make bench`) prints the table; under `cargo test` this runs
//! a few iterations only, to check that all answer the same.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use volcache::policy::{
    CinderLimits, DecidedBy, EngineOptions, Entry, Need, PolicyEngine, PolicySet, PolicySource, PolicySpec, SizeBasis,
    Slot, View,
};

fn lru_wasm() -> PathBuf {
    let dir = std::env::var_os("VOLCACHE_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"));
    let path = dir.join("lru.wasm");
    assert!(path.is_file(), "{} is missing: run `make plugins` first", path.display());
    path
}

/// `n` entries with distinct pseudo-random last-used times and sizes of 1..=20 GiB.
fn view(n: u64) -> View {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let entries = (1..=n)
        .map(|id| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Entry { id, size_gib: 1 + x % 20, last_used_ms: x % 1_000_000_000, ..Entry::default() }
        })
        .collect();
    View::new(entries, 2_000_000_000)
}

/// Median and 99th percentile of `iterations` timed runs of `f`.
fn measure(iterations: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    for _ in 0..iterations.div_ceil(10) {
        f();
    }
    let mut times: Vec<Duration> = (0..iterations)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort_unstable();
    (times[times.len() / 2], times[(times.len() * 99 / 100).min(times.len() - 1)])
}

/// Median and 99th percentile of `a` and of `b`, timed alternately (a b, b a, a b, ...) so that
/// whatever drifts during the run (frequency, the page cache, a neighbour) weighs on both alike.
fn measure_pair(iterations: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> Pair {
    for _ in 0..iterations.div_ceil(10) {
        a();
        b();
    }
    let (mut ta, mut tb) = (Vec::with_capacity(iterations), Vec::with_capacity(iterations));
    let time = |f: &mut dyn FnMut(), into: &mut Vec<Duration>| {
        let t = Instant::now();
        f();
        into.push(t.elapsed());
    };
    for i in 0..iterations {
        if i % 2 == 0 {
            time(&mut a, &mut ta);
            time(&mut b, &mut tb);
        } else {
            time(&mut b, &mut tb);
            time(&mut a, &mut ta);
        }
    }
    let stats = |mut t: Vec<Duration>| {
        t.sort_unstable();
        (t[t.len() / 2], t[(t.len() * 99 / 100).min(t.len() - 1)])
    };
    (stats(ta), stats(tb))
}

/// The median and p99 of native calls, then of wasm calls ([`measure_pair`]).
type Pair = ((Duration, Duration), (Duration, Duration));

/// Rounds of alternating native and wasm calls per size; the table gives the median round and
/// the range of the rounds' ratios.
const ROUNDS: usize = 5;

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The Python and JavaScript LRUs, when `make polyglot-plugins` built them.
fn polyglot() -> Vec<(&'static str, PathBuf)> {
    let Some(dir) = std::env::var_os("VOLCACHE_POLYGLOT_DIR").map(PathBuf::from) else { return Vec::new() };
    [("python", "lru-py.wasm"), ("js", "lru-js.wasm")]
        .into_iter()
        .map(|(lang, file)| (lang, dir.join(file)))
        .filter(|(_, path)| path.is_file())
        .collect()
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    // An interpreter over 10,000 entries may take more than the daemon's default 100 ms: this
    // measures it rather than timing it out.
    let options = EngineOptions { call_deadline: Duration::from_secs(5), ..EngineOptions::default() };
    let engine = PolicyEngine::new(options).expect("engine");
    let native = PolicySet::new(engine.clone(), CinderLimits::default());
    let wasm = PolicySet::new(engine.clone(), CinderLimits::default());
    wasm.swap(Slot::Eviction, PolicySpec { source: PolicySource::File(lru_wasm()), params: vec![] })
        .expect("load lru.wasm");
    let others: Vec<(&str, PolicySet)> = polyglot()
        .into_iter()
        .map(|(lang, path)| {
            let set = PolicySet::new(engine.clone(), CinderLimits::default());
            set.swap(Slot::Eviction, PolicySpec { source: PolicySource::File(path.clone()), params: vec![] })
                .unwrap_or_else(|e| panic!("load {}: {e}", path.display()));
            (lang, set)
        })
        .collect();

    if full {
        println!("eviction decision latency: LRU choosing ~10% of the cache, median (p99) of repeated calls; wasm/native: the median of {ROUNDS} rounds (their range)");
        print!("{:>8} | {:>20} | {:>20} | {:>18}", "entries", "native LRU", "wasm LRU (Rust)", "wasm/native");
        for (lang, _) in &others {
            print!(" | {:>20} | {:>8}", format!("{lang} LRU"), "/native");
        }
        println!();
    }
    // One entry measures a sandboxed call's fixed cost; the others, how it grows with the cache.
    for n in [1u64, 100, 1_000, 10_000] {
        let cache = view(n);
        // Free about a tenth of the cache by size and by count (at least one entry).
        let total: u64 = cache.entries().map(|e| e.size_gib).sum();
        let need = Need { amount: total / 10, basis: SizeBasis::Provisioned, entries: (n / 10).max(1) as u32 };

        let a = native.victims(need, &cache);
        let b = wasm.victims(need, &cache);
        assert_eq!(a.by, DecidedBy::Builtin);
        assert_eq!(b.by, DecidedBy::Plugin, "the wasm plugin must answer, not the fallback");
        assert_eq!(a.value, b.value, "wasm and native LRU disagree at {n} entries");
        for (lang, set) in &others {
            let c = set.victims(need, &cache);
            assert_eq!((&c.by, &c.value), (&DecidedBy::Plugin, &a.value), "{lang} LRU disagrees at {n} entries");
        }
        if !full {
            continue;
        }
        let iterations = (2_000_000 / n as usize).clamp(200, 5_000);
        // Several rounds, each alternating native and wasm calls: the ratio of each round's
        // medians, so that the spread of the ratio within one run shows too.
        let rounds: Vec<_> = (0..ROUNDS)
            .map(|_| {
                measure_pair(
                    iterations,
                    || {
                        std::hint::black_box(native.victims(need, &cache));
                    },
                    || {
                        std::hint::black_box(wasm.victims(need, &cache));
                    },
                )
            })
            .collect();
        let mid = |pick: fn(&Pair) -> Duration| {
            let mut v: Vec<Duration> = rounds.iter().map(pick).collect();
            v.sort_unstable();
            v[v.len() / 2]
        };
        let (n50, n99, w50, w99) = (mid(|r| r.0 .0), mid(|r| r.0 .1), mid(|r| r.1 .0), mid(|r| r.1 .1));
        let mut ratios: Vec<f64> = rounds.iter().map(|((n, _), (w, _))| us(*w) / us(*n)).collect();
        ratios.sort_by(f64::total_cmp);
        print!(
            "{n:>8} | {:>9.2} us ({:>6.2}) | {:>9.2} us ({:>6.2}) | {:>5.2}x ({:.2}-{:.2})",
            us(n50),
            us(n99),
            us(w50),
            us(w99),
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1]
        );
        for (_, set) in &others {
            let (p50, p99) = measure((200_000 / n as usize).clamp(20, 500), || {
                std::hint::black_box(set.victims(need, &cache));
            });
            print!(" | {:>9.2} us ({:>6.2}) | {:>7.1}x", us(p50), us(p99), us(p50) / us(n50));
        }
        println!();
    }
    if full {
        let s = &wasm.status()[2].stats;
        println!("wasm slot: {} calls, {} failures, {} fallbacks", s.calls, s.failures, s.fallbacks);
    }
}
