//! How fast the simulator replays a trace: 1M requests over 10,000 images (the `mix` shape),
//! with the built-in policies and with the wasm LRU in the eviction slot, and Belady, side by
//! side in one run. `cargo bench --bench lab` prints the table; under `cargo test` it replays
//! 20,000 requests only, to check that wasm and native agree.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use volcache::lab::{belady, sim, synth};
use volcache::policy::{
    CinderLimits, EngineOptions, PolicyEngine, PolicySet, PolicySource, PolicySpec, SizeBasis, Slot,
};

#[derive(Parser)]
struct Synth {
    #[command(flatten)]
    params: synth::Params,
}

fn lru_wasm() -> PathBuf {
    let dir = std::env::var_os("VOLCACHE_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"));
    let path = dir.join("lru.wasm");
    assert!(path.is_file(), "{} is missing: run `make plugins` first", path.display());
    path
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let requests = if full { "1000000" } else { "20000" };
    let params =
        Synth::parse_from(["synth", "--shape", "mix", "--images", "10000", "--requests", requests, "--seed", "7"])
            .params;
    let started = Instant::now();
    let trace = synth::generate(&params).expect("trace");
    let synth_s = started.elapsed().as_secs_f64();
    let limits = CinderLimits { max_size_gb: 2_000, max_count: 0, basis: SizeBasis::Provisioned };
    let engine = PolicyEngine::new(EngineOptions::default()).expect("engine");
    let native = PolicySet::new(engine.clone(), limits);
    let wasm = PolicySet::new(engine, limits);
    wasm.swap(Slot::Eviction, PolicySpec { source: PolicySource::File(lru_wasm()), params: vec![] }).expect("lru.wasm");

    let time = |f: &dyn Fn() -> sim::Outcome| {
        let started = Instant::now();
        let outcome = f();
        (outcome, started.elapsed().as_secs_f64())
    };
    let (a, native_s) = time(&|| sim::simulate("built-in", &trace, &native));
    let (b, wasm_s) = time(&|| sim::simulate("wasm lru", &trace, &wasm));
    let (c, belady_s) = time(&|| belady::belady(&trace, limits));
    assert_eq!((a.hits, a.evictions, a.fills), (b.hits, b.evictions, b.fills), "wasm and native LRU disagree");
    assert_eq!(b.fallbacks, 0);
    if !full {
        return;
    }
    println!(
        "simulator: {} requests over 10,000 images (mix), 2,000 GiB cache; trace made in {synth_s:.2} s",
        a.requests
    );
    println!(
        "{:<10} | {:>9} | {:>11} | {:>9} | {:>10} | {:>9}",
        "policy", "replay s", "requests/s", "hit %", "byte hit %", "decisions"
    );
    for (o, s) in [(&a, native_s), (&b, wasm_s), (&c, belady_s)] {
        println!(
            "{:<10} | {:>9.2} | {:>11.0} | {:>8.2}% | {:>9.2}% | {:>9}",
            o.policy,
            s,
            o.requests as f64 / s,
            o.hit_ratio * 100.0,
            o.byte_hit_ratio * 100.0,
            o.requests - o.hits
        );
    }
    println!("wasm / built-in replay time: {:.2}x", wasm_s / native_s);
}
