//! Swapping a slot while decisions run: no decision fails or falls back, every answer is valid,
//! and a swap that fails leaves the old plugin serving.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use volcache::policy::{Builtin, CinderLimits, DecidedBy, Need, PolicySource, PolicySpec, SizeBasis, Slot};

use crate::fixtures::{plugin, policy_set, test_plugin, view};

#[test]
fn swapping_eviction_under_load_drops_no_decision() {
    let set = Arc::new(policy_set(CinderLimits::default()));
    let lru = PolicySpec { source: PolicySource::File(plugin("lru")), params: vec![] };
    let honest_evil = PolicySpec { source: PolicySource::File(test_plugin("evil")), params: vec![] };
    set.swap(Slot::Eviction, lru.clone()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let cache = Arc::new(view(500, 11, true));
    let need = Need { amount: 40, basis: SizeBasis::Provisioned, entries: 3 };
    let expected = policy_set(CinderLimits::default()).victims(need, &cache).value;

    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (set, stop, cache, expected) = (set.clone(), stop.clone(), cache.clone(), expected.clone());
            thread::spawn(move || {
                let mut decided = 0u32;
                while !stop.load(Ordering::Relaxed) || decided < 50 {
                    let d = set.victims(need, &cache);
                    assert!(!matches!(d.by, DecidedBy::Fallback(_)), "a decision failed during a swap: {:?}", d.by);
                    assert_eq!(d.value, expected, "every policy swapped in is an LRU");
                    decided += 1;
                }
                decided
            })
        })
        .collect();
    for i in 0..30 {
        let spec = match i % 3 {
            0 => honest_evil.clone(),
            1 => PolicySpec::builtin(Builtin::Lru),
            _ => lru.clone(),
        };
        set.swap(Slot::Eviction, spec).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let decided: u32 = workers.into_iter().map(|w| w.join().expect("worker")).sum();
    assert!(decided >= 150);
    let stats = &set.status()[2].stats;
    assert_eq!((stats.failures, stats.fallbacks), (0, 0));
}

#[test]
fn a_failed_swap_keeps_the_old_plugin() {
    let set = policy_set(CinderLimits::default());
    set.swap(Slot::Eviction, PolicySpec { source: PolicySource::File(plugin("lru")), params: vec![] }).unwrap();
    let before = set.status()[2].digest.clone();
    assert!(before.is_some());
    for bad in [
        PolicySpec { source: PolicySource::File(test_plugin("wrong-world")), params: vec![] },
        PolicySpec { source: PolicySource::File(plugin("quota")), params: vec![] },
        PolicySpec { source: PolicySource::Bytes(b"not wasm".to_vec()), params: vec![] },
        PolicySpec { source: PolicySource::File("/nonexistent/plugin.wasm".into()), params: vec![] },
        PolicySpec::builtin(Builtin::Quota),
    ] {
        assert!(set.swap(Slot::Eviction, bad.clone()).is_err(), "{bad:?} should not fill eviction");
        assert_eq!(set.status()[2].digest, before);
    }
    let need = Need { amount: 1, basis: SizeBasis::Provisioned, entries: 0 };
    assert_eq!(set.victims(need, &view(5, 1, false)).by, DecidedBy::Plugin);
}

#[test]
fn uploaded_bytes_fill_a_slot_like_a_file() {
    let set = policy_set(CinderLimits { max_size_gb: 5, max_count: 0, basis: SizeBasis::Provisioned });
    let bytes = std::fs::read(plugin("max-size")).unwrap();
    let status = set.swap(Slot::Admission, PolicySpec { source: PolicySource::Bytes(bytes), params: vec![] }).unwrap();
    assert_eq!((status.name.as_str(), status.source.as_str()), ("max-size", "upload"));
    let d = set.admit(&crate::fixtures::candidate(6), &view(2, 1, false));
    assert_eq!(d.by, DecidedBy::Plugin);
    assert!(d.value.is_err(), "6 GiB exceeds image_volume_cache_max_size_gb = 5");
}
