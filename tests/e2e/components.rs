//! `make plugins` output, checked from the outside: component bytes, `plugin inspect`,
//! `plugin check` on the right and the wrong slots.

use std::process::Output;

use crate::fixtures::{plugin, test_plugin};

const WIT: &str = volcache::policy::WIT_VERSION;

const BUILTINS: [(&str, &str); 3] = [("lru", "eviction"), ("quota", "capacity"), ("max-size", "admission")];

fn volcache(args: &[&str]) -> Output {
    crate::fixtures::volcache_cmd().args(args).output().expect("run volcache")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn make_plugins_builds_components_not_core_modules() {
    for (name, _) in BUILTINS {
        let bytes = std::fs::read(plugin(name)).unwrap();
        // \0asm, then version 0x0d and layer 1: a component (a core module has 1, 0, 0, 0).
        assert_eq!(&bytes[..8], b"\0asm\x0d\x00\x01\x00", "{name}.wasm is not a component");
    }
}

#[test]
fn inspect_shows_package_version_exports_and_slot() {
    for (name, slot) in BUILTINS {
        let path = plugin(name);
        let out = volcache(&["plugin", "inspect", path.to_str().unwrap(), "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let found: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(found["packages"], serde_json::json!([format!("volcache:policy@{WIT}")]));
        assert_eq!(found["slots"], serde_json::json!([slot]));
        assert_eq!(found["info"]["name"], name);
        let exports = found["exports"].as_array().unwrap();
        // The built-in LRU takes the packed view (0.1.2), which fills the eviction slot too.
        let interface = if name == "lru" { "packed-eviction" } else { slot };
        assert!(exports.contains(&serde_json::json!(format!("volcache:policy/{interface}@{WIT}"))), "{exports:?}");
        // No WASI, nothing but the contract's own types.
        assert_eq!(found["imports"], serde_json::json!([format!("volcache:policy/types@{WIT}")]));
        assert!(found["problem"].is_null());

        let human = text(&volcache(&["plugin", "inspect", path.to_str().unwrap()]).stdout);
        assert!(human.contains(&format!("volcache:policy@{WIT}")) && human.contains(slot), "{human}");
    }
}

#[test]
fn check_passes_on_its_slot_and_fails_on_the_others() {
    for (name, slot) in BUILTINS {
        let path = plugin(name);
        let out = volcache(&["plugin", "check", path.to_str().unwrap(), "--slot", slot]);
        assert!(out.status.success(), "{name} in {slot}: {}", text(&out.stderr));
        assert!(text(&out.stdout).starts_with("ok: "));
        for (_, other) in BUILTINS.iter().filter(|(_, s)| *s != slot) {
            let out = volcache(&["plugin", "check", path.to_str().unwrap(), "--slot", other]);
            assert!(!out.status.success(), "{name} must not fill {other}");
            let err = text(&out.stderr);
            assert!(err.contains(&format!("does not export volcache:policy/{other}@{WIT}")), "{err}");
        }
    }
}

#[test]
fn check_reports_bad_parameters_by_key() {
    let path = plugin("quota");
    let out = volcache(&[
        "plugin",
        "check",
        path.to_str().unwrap(),
        "--slot",
        "capacity",
        "--param",
        "image_volume_cache_max_count=-3",
    ]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("image_volume_cache_max_count"), "{}", text(&out.stderr));
    // A plugin's own parameters too, each named (the shipped plugins share one parser).
    for (name, slot, key) in [("ttl", "eviction", "ttl_seconds"), ("frequent", "admission", "half_life_hours")] {
        let param = format!("{key}=soon");
        let out = volcache(&["plugin", "check", plugin(name).to_str().unwrap(), "--slot", slot, "--param", &param]);
        assert!(!out.status.success(), "{name} took {param}");
        assert!(text(&out.stderr).contains(&format!("{key}: \"soon\" is not a whole number")), "{}", text(&out.stderr));
    }
}

#[test]
fn check_refuses_a_core_module_and_garbage_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("module.wasm");
    std::fs::write(&module, b"\0asm\x01\x00\x00\x00").unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"#!/bin/sh\necho not wasm\n").unwrap();
    for (file, expect) in [(&module, "core WebAssembly module"), (&garbage, "no WebAssembly component header")] {
        let out = volcache(&["plugin", "check", file.to_str().unwrap(), "--slot", "eviction"]);
        assert!(!out.status.success());
        assert!(text(&out.stderr).contains(expect), "{}", text(&out.stderr));
    }
}

#[test]
fn check_refuses_wasi_imports_and_wrong_signatures_by_name() {
    let out = volcache(&["plugin", "check", test_plugin("wasi-import").to_str().unwrap(), "--slot", "eviction"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "imports `wasi:keyvalue/store@0.2.0`, `test:escape/raw-socket@0.1.0`, which volcache does not provide"
        ),
        "{err}"
    );

    let out = volcache(&["plugin", "check", test_plugin("wrong-world").to_str().unwrap(), "--slot", "eviction"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    // Named as the component exports it (it claims 0.1.0), not as this host would.
    assert!(err.contains("volcache:policy/eviction@0.1.0") && err.contains("type mismatch"), "{err}");
}

#[test]
fn check_fails_a_policy_that_ignores_the_amount_needed() {
    let evil = test_plugin("evil");
    let out =
        volcache(&["plugin", "check", evil.to_str().unwrap(), "--slot", "eviction", "--param", "mode=ignore-amount"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("smoke test failed") && err.contains("need 4 GiB"), "{err}");

    let out =
        volcache(&["plugin", "check", evil.to_str().unwrap(), "--slot", "eviction", "--param", "mode=pinned-ids"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("is pinned"), "{}", text(&out.stderr));

    let out =
        volcache(&["plugin", "check", evil.to_str().unwrap(), "--slot", "eviction", "--param", "mode=unknown-ids"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("an empty cache") || text(&out.stderr).contains("not in the cache"));

    let out = volcache(&["plugin", "check", plugin("lru").to_str().unwrap(), "--slot", "eviction"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn inspect_exits_1_when_it_reports_a_problem() {
    let out = volcache(&["plugin", "inspect", test_plugin("wasi-import").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("problem") && stdout.contains("test:escape/raw-socket@0.1.0"), "{stdout}");
}

#[test]
fn check_keeps_the_compiled_component_for_the_next_check() {
    use std::os::unix::fs::MetadataExt;
    let cache = tempfile::tempdir().unwrap();
    let lru = plugin("lru");
    let check = || {
        let out = volcache(&[
            "plugin",
            "check",
            lru.to_str().unwrap(),
            "--slot",
            "eviction",
            "--cache-dir",
            cache.path().to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let artifacts: Vec<_> = std::fs::read_dir(cache.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
            .collect();
        assert_eq!(artifacts.len(), 1);
        artifacts[0].metadata().unwrap().ino()
    };
    // A compile stores a new file (a new inode); a cache hit only reads it.
    assert_eq!(check(), check(), "the second check loaded the first one's artifact");
}

#[test]
fn version_names_the_backends_and_the_policy_wit() {
    let out = volcache(&["--version"]);
    assert!(out.status.success());
    let text = text(&out.stdout);
    assert!(text.contains(volcache::policy::WIT_VERSION) && text.contains("volcache:policy@0.1.x"), "{text}");
    // The tests build with the rbd feature (`make test`); a build without it says so.
    let rbd = if cfg!(feature = "rbd") { "rbd (librbd)" } else { "built without rbd" };
    assert!(text.contains(rbd), "{text}");
}

/// The stateless built-ins allocate from a per-call arena (`policy-arena`) that starts over when
/// nothing is live: if a call left one block behind, every later call's columns would pile up
/// (~100 KiB a call here) until the 64 MiB cap trapped the instance, and the host fell back.
#[test]
fn arena_plugins_answer_thousands_of_calls_without_growing() {
    use volcache::policy::{
        Candidate, CinderLimits, DecidedBy, Entry, Need, PolicySet, PolicySource, PolicySpec, SizeBasis, Slot, View,
    };
    let set = PolicySet::new(
        crate::fixtures::engine(),
        CinderLimits { max_size_gb: 100, max_count: 0, ..Default::default() },
    );
    for (name, slot) in [("lru", Slot::Eviction), ("quota", Slot::Capacity), ("max-size", Slot::Admission)] {
        set.swap(slot, PolicySpec { source: PolicySource::File(plugin(name)), params: vec![] }).unwrap();
    }
    let entries: Vec<Entry> = (1..=2000)
        .map(|id| Entry { id, size_gib: 1 + id % 7, last_used_ms: id * 7919 % 10_007, ..Entry::default() })
        .collect();
    let view = View::new(entries, 1_000_000);
    let candidate =
        Candidate { image_id: "i".into(), size_gib: 3, virtual_size_bytes: 3 << 30, allocated_bytes: 1 << 30 };
    let need = Need { amount: 50, basis: SizeBasis::Provisioned, entries: 0 };
    for _ in 0..1500 {
        assert!(set.admit(&candidate, &view).value.is_ok());
        assert_eq!(set.shortfall(&candidate, &view).by, DecidedBy::Plugin);
        let victims = set.victims(need, &view);
        assert_eq!(victims.by, DecidedBy::Plugin);
        assert!(!victims.value.unwrap().is_empty());
    }
    for status in set.status() {
        assert_eq!((status.stats.failures, status.stats.fallbacks), (0, 0), "{:?}", status.slot);
    }
}

/// `lru.wasm` exports only `packed-eviction` (0.1.2): over random views with pinned entries, in
/// both size bases and with needs from nothing to more than the cache holds, it answers exactly
/// as the built-in LRU, and never through the fallback.
#[test]
fn the_packed_lru_decides_like_the_built_in() {
    use volcache::policy::{CinderLimits, DecidedBy, Need, PolicySet, PolicySource, PolicySpec, SizeBasis, Slot};
    let native = PolicySet::new(crate::fixtures::engine(), CinderLimits::default());
    let wasm = PolicySet::new(crate::fixtures::engine(), CinderLimits::default());
    wasm.swap(Slot::Eviction, PolicySpec { source: PolicySource::File(plugin("lru")), params: vec![] }).unwrap();
    let mut rng = crate::fixtures::Rng::new(0x9ac4ed);
    let mut covered = 0;
    for case in 0..300u64 {
        let n = rng.below(60) as usize;
        let view = crate::fixtures::view(n, case, case % 2 == 0);
        let basis = if rng.below(2) == 0 { SizeBasis::Provisioned } else { SizeBasis::Allocated };
        let total: u64 =
            view.entries().map(|e| if basis == SizeBasis::Provisioned { e.size_gib } else { e.allocated_bytes }).sum();
        let need = Need { amount: rng.below(total + 2), basis, entries: rng.below(n as u64 + 2) as u32 };
        let (a, b) = (native.victims(need, &view), wasm.victims(need, &view));
        assert_eq!(b.value, a.value, "case {case}: {need:?} over {n} entries");
        // Every non-zero need is the plugin's, also one nothing can cover (`None`: not cached).
        if (need.amount, need.entries) != (0, 0) {
            assert_eq!(b.by, DecidedBy::Plugin, "case {case}: {need:?} over {n} entries");
            covered += usize::from(a.value.is_some());
        }
    }
    assert!(covered > 150, "only {covered} of 300 needs could be covered");
    let stats = wasm.status().into_iter().find(|s| s.slot == Slot::Eviction).unwrap().stats;
    assert_eq!((stats.failures, stats.fallbacks), (0, 0));
}

/// A component that exports both eviction interfaces is asked through `packed-eviction`: evil's
/// `plain-panics` mode panics in `eviction.victims`, so one call there would be a fallback.
#[test]
fn a_component_with_both_eviction_interfaces_is_asked_through_the_packed_one() {
    use volcache::policy::{CinderLimits, DecidedBy, Need, PolicySet, PolicySource, PolicySpec, SizeBasis, Slot};
    let set = PolicySet::new(crate::fixtures::engine(), CinderLimits::default());
    let spec = PolicySpec {
        source: PolicySource::File(test_plugin("evil")),
        params: vec![("mode".into(), "plain-panics".into())],
    };
    set.swap(Slot::Eviction, spec).expect("the smoke test goes through packed-eviction too");
    let native = PolicySet::new(crate::fixtures::engine(), CinderLimits::default());
    let view = crate::fixtures::view(40, 3, true);
    let need = Need { amount: 30, basis: SizeBasis::Provisioned, entries: 2 };
    let d = set.victims(need, &view);
    assert_eq!(d.by, DecidedBy::Plugin);
    assert_eq!(d.value, native.victims(need, &view).value);
    let stats = set.status().into_iter().find(|s| s.slot == Slot::Eviction).unwrap().stats;
    assert_eq!((stats.failures, stats.fallbacks), (0, 0));
}
