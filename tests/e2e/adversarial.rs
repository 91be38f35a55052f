//! Misbehaving plugins (tests/plugins/evil and friends) are contained: every failure is typed and
//! counted, the request is decided by the built-in policy exactly as Cinder would, and the next
//! request is served again by a fresh instance of the plugin.

use std::time::Duration;

use volcache::policy::{
    CallError, CinderLimits, DecidedBy, LoadError, Need, PolicyEvent, PolicySet, PolicySource, PolicySpec, SizeBasis,
    Slot,
};

use crate::fixtures::{candidate, engine_with_deadline, policy_set, test_plugin, view, GENEROUS_DEADLINE};

/// Views this big trigger the evil behaviour; the smoke test's 3 entries do not.
const TRIGGER: usize = 10;

fn limits() -> CinderLimits {
    CinderLimits { max_size_gb: 100, max_count: 12, basis: SizeBasis::Provisioned }
}

/// Only an endless loop may time out; every other behaviour is judged on what it does, not on
/// how fast a loaded machine runs it.
fn set_for(behaviour: &str) -> PolicySet {
    let deadline = if behaviour == "loop" { Duration::from_millis(100) } else { GENEROUS_DEADLINE };
    PolicySet::new(engine_with_deadline(deadline), limits())
}

fn evil(slot: Slot, mode: &str) -> PolicySet {
    let set = set_for(mode);
    let spec = PolicySpec {
        source: PolicySource::File(test_plugin("evil")),
        params: vec![("mode".into(), mode.into()), ("trigger".into(), TRIGGER.to_string())],
    };
    set.swap(slot, spec).unwrap_or_else(|e| panic!("evil {mode} should pass its smoke test: {e}"));
    set
}

fn fallback_kind(by: &DecidedBy) -> &'static str {
    match by {
        DecidedBy::Fallback(e) => e.kind(),
        other => panic!("expected a fallback, got {other:?}"),
    }
}

fn failures(set: &PolicySet, slot: Slot) -> (u64, u64) {
    let s = set.status().into_iter().find(|s| s.slot == slot).unwrap().stats;
    (s.failures, s.fallbacks)
}

/// The failing call falls back to Cinder's answer; the next (small) call is the plugin's again.
fn assert_contained(set: &PolicySet, slot: Slot, expect_kind: &str) {
    let cinder = policy_set(limits());
    let big = view(2 * TRIGGER, 5, true);
    let small = view(TRIGGER - 1, 6, false);
    let cand = candidate(30);
    let need = Need { amount: 25, basis: SizeBasis::Provisioned, entries: 2 };
    for round in 0..2u64 {
        match slot {
            Slot::Admission => {
                let d = set.admit(&cand, &big);
                assert_eq!(fallback_kind(&d.by), expect_kind);
                assert_eq!(d.value, cinder.admit(&cand, &big).value);
                assert_eq!(set.admit(&cand, &small).by, DecidedBy::Plugin);
            }
            Slot::Capacity => {
                let d = set.shortfall(&cand, &big);
                assert_eq!(fallback_kind(&d.by), expect_kind);
                assert_eq!(d.value, cinder.shortfall(&cand, &big).value);
                assert_eq!(set.shortfall(&cand, &small).by, DecidedBy::Plugin);
            }
            Slot::Eviction => {
                let d = set.victims(need, &big);
                assert_eq!(fallback_kind(&d.by), expect_kind);
                assert_eq!(d.value, cinder.victims(need, &big).value);
                assert!(d.value.is_some(), "Cinder's LRU covers this need");
                assert_eq!(set.victims(need, &small).by, DecidedBy::Plugin);
            }
        }
        assert_eq!(failures(set, slot), (round + 1, round + 1), "failure and fallback counted once each");
    }
}

#[test]
fn endless_loop_is_interrupted_in_every_slot() {
    for slot in Slot::ALL {
        assert_contained(&evil(slot, "loop"), slot, "timeout");
    }
}

#[test]
fn gigabyte_allocation_hits_the_memory_cap_in_every_slot() {
    for slot in Slot::ALL {
        assert_contained(&evil(slot, "alloc"), slot, "memory");
    }
}

#[test]
fn panic_traps_in_every_slot() {
    for slot in Slot::ALL {
        assert_contained(&evil(slot, "panic"), slot, "trap");
    }
}

#[test]
fn stack_overflow_traps() {
    assert_contained(&evil(Slot::Eviction, "recurse"), Slot::Eviction, "trap");
}

#[test]
fn nonsense_victim_lists_are_rejected_and_answered_by_lru() {
    for mode in ["unknown-ids", "duplicate-ids", "pinned-ids", "too-few", "huge"] {
        let set = evil(Slot::Eviction, mode);
        assert_contained(&set, Slot::Eviction, "invalid-answer");
    }
}

#[test]
fn the_invalid_answer_is_explained() {
    let set = evil(Slot::Eviction, "unknown-ids");
    let need = Need { amount: 1, basis: SizeBasis::Provisioned, entries: 0 };
    let d = set.victims(need, &view(2 * TRIGGER, 1, false));
    assert!(
        matches!(&d.by, DecidedBy::Fallback(CallError::InvalidAnswer(m)) if m.contains("not in the cache")),
        "{:?}",
        d.by
    );
}

#[test]
fn log_flood_is_rate_limited_and_the_answer_still_counts() {
    let set = evil(Slot::Eviction, "log-flood");
    let need = Need { amount: 3, basis: SizeBasis::Provisioned, entries: 0 };
    let big = view(2 * TRIGGER, 2, false);
    let d = set.victims(need, &big);
    assert_eq!(d.by, DecidedBy::Plugin, "100,000 log calls fit in the deadline once the host drops them");
    assert_eq!(d.value, policy_set(limits()).victims(need, &big).value);
}

#[test]
fn event_hooks_reach_stateful_plugins() {
    let set = evil(Slot::Eviction, "last-hit");
    let cache = view(2 * TRIGGER, 3, false);
    let need = Need { amount: 0, basis: SizeBasis::Provisioned, entries: 1 };
    set.notify(&PolicyEvent::Hit { id: 17, now_ms: 1 });
    set.flush_events();
    let d = set.victims(need, &cache);
    assert_eq!((d.by, d.value), (DecidedBy::Plugin, Some(vec![17])));
}

#[test]
fn a_trapping_event_hook_is_counted_and_decisions_go_on() {
    let set = evil(Slot::Eviction, "hook-panic");
    set.notify(&PolicyEvent::Evict { id: 1 });
    set.notify(&PolicyEvent::Hit { id: 2, now_ms: 5 });
    set.flush_events();
    assert_eq!(failures(&set, Slot::Eviction).0, 2);
    let stats = set.status().into_iter().find(|s| s.slot == Slot::Eviction).unwrap().stats;
    assert_eq!((stats.events_failed, stats.events_delivered), (2, 0));
    let need = Need { amount: 1, basis: SizeBasis::Provisioned, entries: 0 };
    assert_eq!(set.victims(need, &view(3, 1, false)).by, DecidedBy::Plugin);
}

#[test]
fn configuration_that_fails_or_hangs_refuses_the_plugin() {
    let load = |configure: &str| {
        let set = set_for(configure);
        let result = set.swap(
            Slot::Admission,
            PolicySpec {
                source: PolicySource::File(test_plugin("evil")),
                params: vec![("configure".into(), configure.into())],
            },
        );
        let status = &set.status()[0];
        assert_eq!((status.kind, status.name.as_str()), ("builtin", "max-size"), "the old policy keeps serving");
        result
    };
    assert!(matches!(load("fail"), Err(LoadError::Configure(m)) if m.contains("refuses")));
    assert!(matches!(load("loop"), Err(LoadError::Instantiate(CallError::Timeout))));
}

#[test]
fn plugins_misbehaving_from_the_first_call_never_get_a_slot() {
    for (mode, kind) in [("loop", "timeout"), ("alloc", "memory"), ("panic", "trap"), ("too-few", "invalid-answer")] {
        let set = set_for(mode);
        let spec =
            PolicySpec { source: PolicySource::File(test_plugin("evil")), params: vec![("mode".into(), mode.into())] };
        match set.swap(Slot::Eviction, spec) {
            Err(LoadError::Smoke(e)) => assert_eq!(e.kind(), kind, "{mode}"),
            other => panic!("{mode}: expected a failed smoke test, got {other:?}"),
        }
        assert_eq!(set.status()[2].kind, "builtin");
    }
}

#[test]
fn pinned_entries_are_never_victims_even_when_they_would_cover_the_need() {
    let set = evil(Slot::Eviction, "pinned-ids");
    // One entry must go; the plugin names pinned entries, which would cover it by count.
    let need = Need { amount: 0, basis: SizeBasis::Provisioned, entries: 1 };
    let cache = view(2 * TRIGGER, 4, true);
    let d = set.victims(need, &cache);
    assert!(matches!(&d.by, DecidedBy::Fallback(CallError::InvalidAnswer(m)) if m.contains("pinned")), "{:?}", d.by);
    let victims = d.value.expect("LRU finds an unpinned victim");
    assert!(victims.iter().all(|id| !cache.get(*id).unwrap().pinned));
}

#[test]
fn a_hook_that_keeps_failing_is_switched_off_and_decisions_go_on() {
    let set = evil(Slot::Eviction, "hook-loop");
    // More events than the queue holds arrive while the first hooks loop: the excess is dropped
    // and counted, and the caller never waits.
    for id in 0..5_000 {
        set.notify(&PolicyEvent::Hit { id, now_ms: id });
    }
    set.flush_events();
    let status = set.status().into_iter().find(|s| s.slot == Slot::Eviction).unwrap();
    assert!(status.events && status.events_disabled, "{status:?}");
    assert_eq!(status.stats.events_failed, 5, "switched off after 5 failures in a row; later events never ran");
    assert_eq!(status.stats.timeouts, 5, "each hook was stopped at its budget");
    assert!(status.stats.events_dropped > 0, "a full queue drops: {status:?}");
    let need = Need { amount: 1, basis: SizeBasis::Provisioned, entries: 0 };
    assert_eq!(set.victims(need, &view(3, 1, false)).by, DecidedBy::Plugin, "the plugin still decides");
}

/// When nothing can cover the need, a best effort of real, unpinned entries is the plugin's
/// answer (nothing is evicted and the candidate is not cached: the WIT's rule), not a failure
/// that alerts an operator; a best effort naming a pinned entry is still refused.
#[test]
fn a_best_effort_when_nothing_covers_is_an_answer_not_a_failure() {
    let cache = view(2 * TRIGGER, 4, true);
    let total: u64 = cache.entries().map(|e| e.size_gib).sum();
    let need = Need { amount: total + 1, basis: SizeBasis::Provisioned, entries: 0 };
    let honest = evil(Slot::Eviction, "none");
    let d = honest.victims(need, &cache);
    assert_eq!((d.by, d.value), (DecidedBy::Plugin, None));
    assert_eq!(failures(&honest, Slot::Eviction), (0, 0));

    let pinned = evil(Slot::Eviction, "pinned-ids");
    let d = pinned.victims(need, &cache);
    assert!(matches!(&d.by, DecidedBy::Fallback(CallError::InvalidAnswer(m)) if m.contains("pinned")), "{:?}", d.by);
    assert_eq!((d.value, failures(&pinned, Slot::Eviction)), (None, (1, 1)));
}

/// Events still queued for a plugin that was swapped out are skipped: the event thread does not
/// go on running the old plugin's hooks (up to the queue's 4,096, each up to its budget).
#[test]
fn events_queued_for_a_swapped_out_plugin_are_skipped() {
    use volcache::policy::{Builtin, EngineOptions, PolicyEngine};
    // A budget long enough that the swap below surely comes while the first hook still loops
    // (a hook's budget is at most the call deadline).
    let budget = Duration::from_secs(1);
    let options = EngineOptions { event_deadline: budget, call_deadline: budget, ..EngineOptions::default() };
    let set = PolicySet::new(PolicyEngine::new(options).unwrap(), limits());
    let spec = PolicySpec {
        source: PolicySource::File(test_plugin("evil")),
        params: vec![("mode".into(), "hook-loop".into())],
    };
    set.swap(Slot::Eviction, spec).unwrap();
    for id in 0..100 {
        set.notify(&PolicyEvent::Hit { id, now_ms: id });
    }
    set.swap(Slot::Eviction, PolicySpec { source: PolicySource::Builtin(Builtin::Lru), params: vec![] }).unwrap();
    set.flush_events();
    let stats = set.status().into_iter().find(|s| s.slot == Slot::Eviction).unwrap().stats;
    // The hook running at the swap, if one was, ends at its budget; none queued after it runs
    // (without the skip, 5 would fail before the hooks were switched off).
    assert!(stats.events_failed <= 1 && stats.events_delivered == 0, "{stats:?}");
}

/// A new plugin starts with counters of its own (`since_loaded`, from its `loaded_at`), so an
/// operator sees how the plugin now in the slot behaves; the slot's counters go on across swaps.
#[test]
fn a_swapped_in_plugin_counts_from_zero_and_the_slot_keeps_its_history() {
    let set = evil(Slot::Eviction, "panic");
    let need = Need { amount: 25, basis: SizeBasis::Provisioned, entries: 2 };
    let big = view(2 * TRIGGER, 5, true);
    assert!(matches!(set.victims(need, &big).by, DecidedBy::Fallback(_)));
    let status = || set.status().into_iter().find(|s| s.slot == Slot::Eviction).unwrap();
    let before = status();
    let mine = before.since_loaded.clone().expect("a plugin's own counters");
    assert_eq!((mine.calls, mine.failures, mine.fallbacks), (1, 1, 1), "{mine:?}");

    std::thread::sleep(Duration::from_millis(2));
    let spec =
        PolicySpec { source: PolicySource::File(test_plugin("evil")), params: vec![("mode".into(), "none".into())] };
    set.swap(Slot::Eviction, spec).unwrap();
    let fresh = status();
    assert_ne!(fresh.loaded_at, before.loaded_at, "loaded again");
    let mine = fresh.since_loaded.clone().unwrap();
    assert_eq!((mine.calls, mine.failures, mine.fallbacks), (0, 0, 0), "the new plugin starts at zero: {mine:?}");
    assert_eq!((fresh.stats.failures, fresh.stats.fallbacks), (1, 1), "the slot keeps its history");

    assert_eq!(set.victims(need, &big).by, DecidedBy::Plugin);
    let after = status();
    assert_eq!(after.since_loaded.unwrap().calls, 1);
    assert_eq!(after.stats.calls, before.stats.calls + 1);
    set.swap(
        Slot::Eviction,
        PolicySpec { source: PolicySource::Builtin(volcache::policy::Builtin::Lru), params: vec![] },
    )
    .unwrap();
    assert_eq!(status().since_loaded, None, "a built-in's decisions are not counted");
}
