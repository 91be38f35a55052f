//! The wasm plugins built from plugins/ decide exactly as the built-in policies, which are
//! Cinder's semantics: same admission, same shortfall, same victims, on many random caches.

use volcache::policy::{CinderLimits, DecidedBy, Plan, PolicySource, PolicySpec, SizeBasis, Slot};

use crate::fixtures::{candidate, plugin, policy_set, view, Rng};

fn wasm_everywhere(limits: CinderLimits) -> volcache::policy::PolicySet {
    let set = policy_set(limits);
    for (slot, name) in [(Slot::Admission, "max-size"), (Slot::Capacity, "quota"), (Slot::Eviction, "lru")] {
        set.swap(slot, PolicySpec { source: PolicySource::File(plugin(name)), params: vec![] })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    set
}

#[test]
fn wasm_plugins_and_builtins_agree_on_random_caches() {
    let mut rng = Rng::new(42);
    for basis in [SizeBasis::Provisioned, SizeBasis::Allocated] {
        for round in 0..40 {
            let limits = CinderLimits { max_size_gb: rng.below(300), max_count: rng.below(60), basis };
            let (wasm, native) = (wasm_everywhere(limits), policy_set(limits));
            let cache = view(rng.below(80) as usize, round, round % 3 == 0);
            let cand = candidate(1 + rng.below(40));

            let w = wasm.admit(&cand, &cache);
            assert_eq!(w.by, DecidedBy::Plugin);
            assert_eq!(w.value, native.admit(&cand, &cache).value, "admission, round {round} {limits:?}");

            let w = wasm.shortfall(&cand, &cache);
            assert_eq!(w.by, DecidedBy::Plugin);
            let need = native.shortfall(&cand, &cache).value;
            assert_eq!(w.value, need, "capacity, round {round} {limits:?}");

            if let Ok(need) = need {
                let w = wasm.victims(need, &cache);
                assert_eq!(w.value, native.victims(need, &cache).value, "eviction, round {round} {limits:?}");
            }
            assert_eq!(wasm.plan(&cand, &cache), native.plan(&cand, &cache), "plan, round {round}");
        }
    }
}

#[test]
fn a_full_cache_evicts_least_recently_used_until_both_limits_hold() {
    let set = wasm_everywhere(CinderLimits { max_size_gb: 50, max_count: 10, basis: SizeBasis::Provisioned });
    let cache = view(10, 7, false);
    let Plan::Cache { victims, need } = set.plan(&candidate(8), &cache) else { panic!("should cache") };
    assert!(need.entries >= 1);
    let freed: u64 = victims.iter().map(|id| cache.get(*id).unwrap().size_gib).sum();
    let used: u64 = cache.entries().map(|e| e.size_gib).sum();
    assert!(used - freed + 8 <= 50, "size limit broken");
    assert!(cache.len() - victims.len() < 10, "count limit broken");
    let survivors = cache.entries().filter(|e| !victims.contains(&e.id));
    let oldest_survivor = survivors.map(|e| (e.last_used_ms, e.id)).min().unwrap();
    for id in &victims {
        let e = cache.get(*id).unwrap();
        assert!((e.last_used_ms, e.id) < oldest_survivor, "victim {id} is newer than a survivor");
    }
}

#[test]
fn an_image_larger_than_the_cache_is_not_cached() {
    let set = wasm_everywhere(CinderLimits { max_size_gb: 10, max_count: 0, basis: SizeBasis::Provisioned });
    match set.plan(&candidate(11), &view(3, 1, false)) {
        Plan::Skip { slot: Slot::Admission, reason } => {
            assert!(reason.contains("image_volume_cache_max_size_gb"), "{reason}")
        }
        other => panic!("expected admission to refuse, got {other:?}"),
    }
}

#[test]
fn when_everything_left_is_pinned_nothing_is_evicted_and_nothing_cached() {
    let set = wasm_everywhere(CinderLimits { max_size_gb: 0, max_count: 2, basis: SizeBasis::Provisioned });
    let mut entries: Vec<_> = view(3, 9, false).entries().collect();
    entries.iter_mut().for_each(|e| e.pinned = true);
    let cache = volcache::policy::View::new(entries, 1);
    assert!(matches!(set.plan(&candidate(1), &cache), Plan::Skip { slot: Slot::Eviction, .. }));
}
