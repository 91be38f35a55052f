//! Expiry (WIT 0.1.1 `expiry.expire`): entries the eviction policy lets go without pressure,
//! here the shipped `ttl` plugin; plugins built against 0.1.0 load and decide unchanged.

use std::time::Duration;

use volcache::cache::EvictReason;
use volcache::policy::{
    CinderLimits, DecidedBy, EngineOptions, Entry, Need, PolicyEngine, PolicySource, PolicySpec, SizeBasis, Slot, View,
};

use crate::cache_core::{limits, Core};
use crate::daemon::{Daemon, TOKEN};
use crate::fixtures::{plugin, test_plugin};

fn spec(path: std::path::PathBuf, params: &[(&str, &str)]) -> PolicySpec {
    PolicySpec {
        source: PolicySource::File(path),
        params: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

#[test]
fn ttl_expires_idle_entries_without_pressure_never_pinned_or_recently_used_ones() {
    let mut c = Core::new(limits(0, 0));
    c.cache.policies().swap(Slot::Eviction, spec(plugin("ttl"), &[("ttl_seconds", "1")])).unwrap();
    let mut users = Vec::new();
    for image in ["a", "b", "c"] {
        c.register(image, 1);
        users.push(c.create(image, 1).unwrap().volume);
    }
    let entry = |image: &str| c.cache.scope_entries().unwrap().into_iter().find(|e| e.image_id == image).unwrap();
    let (a, b) = (entry("a"), entry("b"));
    c.cache.pin_entry(b.id, volcache::cache::evict::Pin::Pinned).unwrap();
    c.drain();

    // Nothing idle for a second yet: nothing goes, though the policy was asked.
    let round = c.cache.expire().unwrap();
    assert_eq!((round.evicted.len(), round.skipped), (0, None));
    std::thread::sleep(Duration::from_millis(1300));
    // c is used again (a hit): only a has been idle for longer than the TTL and is unpinned.
    c.create("c", 1).unwrap();
    let round = c.cache.expire().unwrap();
    assert_eq!(round.evicted, vec![a.id]);
    assert_eq!(c.entry_images(), ["b", "c"]);
    let evicts: Vec<_> = c.drain().into_iter().filter(|e| e.event_type.ends_with(".evict")).collect();
    assert_eq!(evicts.len(), 1, "{evicts:?}");
    assert_eq!((evicts[0].volume_id.as_str(), evicts[0].reason), (a.volume_id.as_str(), Some(EvictReason::Expired)));
    // User volumes are never touched: each still holds its image.
    for (user, image) in users.iter().zip(["a", "b", "c"]) {
        assert_eq!(c.head(&user.backend_name), crate::cache_core::pattern(image, 0), "{image}");
    }
    // The policy's calls are counted like decisions, none failed.
    let stats = &c.cache.policies().status()[2].stats;
    assert!(stats.calls >= 2 && stats.failures == 0, "{stats:?}");
}

#[test]
fn a_failing_or_lying_expiry_evicts_nothing_and_is_counted() {
    // A short deadline for the looping mode (the fixtures' default is generous).
    let options = EngineOptions { call_deadline: Duration::from_millis(200), ..EngineOptions::default() };
    let mut c = Core::build(limits(0, 0), |_| {}, PolicyEngine::new(options).unwrap());
    // Five entries: evil misbehaves from five on, so it passes the smoke test (four) first.
    let images = ["a", "b", "c", "d", "e"];
    for image in images {
        c.register(image, 1);
        c.create(image, 1).unwrap();
    }
    let b = c.cache.scope_entries().unwrap().into_iter().find(|e| e.image_id == "b").unwrap();
    c.cache.pin_entry(b.id, volcache::cache::evict::Pin::Pinned).unwrap();
    c.drain();
    let modes = [("expire-pinned", "pinned"), ("expire-unknown", "not in the cache"), ("expire-loop", "deadline")];
    for (failed, (mode, says)) in (1..).zip(modes) {
        let evil = spec(test_plugin("evil"), &[("mode", mode), ("trigger", "5")]);
        c.cache.policies().swap(Slot::Eviction, evil).unwrap();
        let round = c.cache.expire().unwrap();
        assert!(round.evicted.is_empty(), "{mode}");
        let skipped = round.skipped.unwrap_or_default();
        assert!(skipped.contains("failed") && skipped.contains(says), "{mode}: {skipped}");
        // A slot's counters run across swaps. No built-in expires instead: not a fallback.
        let stats = &c.cache.policies().status()[2].stats;
        assert_eq!((stats.failures, stats.fallbacks), (failed, 0), "{mode}");
        assert_eq!(c.entry_images(), images, "{mode}");
    }
    assert!(c.drain().iter().all(|e| !e.event_type.ends_with(".evict")));
    // The built-in LRU has no expiry rule: nothing is asked.
    c.cache.policies().swap(Slot::Eviction, PolicySpec::builtin(volcache::policy::Builtin::Lru)).unwrap();
    let round = c.cache.expire().unwrap();
    assert!(round.evicted.is_empty() && round.skipped.unwrap().contains("no expiry rule"));
}

/// `tests/plugins/old-wit` is built from the WIT as released at 0.1.0 and never edited.
#[test]
fn a_plugin_built_against_wit_0_1_0_loads_and_decides_unchanged() {
    let path = test_plugin("old-wit");
    let out = crate::fixtures::volcache(&["plugin", "inspect", path.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let found: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(found["packages"], serde_json::json!(["volcache:policy@0.1.0"]));
    assert_eq!(found["slots"], serde_json::json!(["eviction"]));
    assert_eq!((found["events"].as_bool(), found["expiry"].as_bool()), (Some(true), Some(false)));
    assert!(found["problem"].is_null(), "{found}");
    let out = crate::fixtures::volcache(&["plugin", "check", path.to_str().unwrap(), "--slot", "eviction"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let set = crate::fixtures::policy_set(CinderLimits::default());
    let status = set.swap(Slot::Eviction, spec(path, &[])).unwrap();
    assert!(status.events && !status.expiry);
    let entries: Vec<Entry> = (1..=50)
        .map(|id| Entry { id, size_gib: 1 + id % 3, last_used_ms: id * 37 % 101, ..Entry::default() })
        .collect();
    let view = View::new(entries, 1_000);
    let need = Need { amount: 9, basis: SizeBasis::Provisioned, entries: 2 };
    let decided = set.victims(need, &view);
    assert_eq!(decided.by, DecidedBy::Plugin);
    assert_eq!(
        decided.value.unwrap(),
        volcache_policy_core::lru_victims(need, &view.entries().collect::<Vec<_>>()[..])
    );
    assert!(set.expire(&view).is_none(), "a 0.1.0 plugin has no expiry rule");
}

#[test]
fn the_daemon_expires_idle_entries_on_its_own_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "image_source_dirs = [\".\"]\nplugin_dirs = [\"{}\"]\n[policy]\nexpire_interval_seconds = 1\n\
         [policy.slots.eviction]\nplugin = \"{}\"\nparams = {{ ttl_seconds = 2 }}\n",
        plugin("ttl").parent().unwrap().display(),
        plugin("ttl").display()
    );
    std::fs::write(dir.path().join("volcache.toml"), config).unwrap();
    crate::fixtures::cloud_like_raw(&dir.path().join("img.raw"), 8 << 20);
    let d = Daemon::start_in(dir);
    let source = d._dir.path().join("img.raw");
    let body = serde_json::json!({"id": "img", "name": "img", "source": source, "disk_format": "raw"});
    let (status, reply) =
        d.call("POST", "/v1/images", Some(TOKEN), Some(("application/json", body.to_string().as_bytes())));
    assert_eq!(status, 201, "{reply}");
    let (_, policies) = d.call("GET", "/v1/policies", Some(TOKEN), None);
    let eviction = policies.as_array().into_iter().flatten().find(|s| s["slot"] == "eviction").cloned();
    assert_eq!(
        eviction.as_ref().map(|s| (&s["name"], &s["expiry"])),
        Some((&"ttl".into(), &true.into())),
        "{policies}"
    );

    let events = crate::daemon::sse_until(&d.addr, |name, data| {
        name == "image_volume_cache.evict" && data["reason"] == "expired"
    });
    let body = serde_json::json!({"image_id": "img", "size": 1, "project_id": "p", "user_id": "u"});
    let (status, created) =
        d.call("POST", "/v1/volumes", Some(TOKEN), Some(("application/json", body.to_string().as_bytes())));
    assert_eq!((status, created["cache"].as_str()), (201, Some("miss")), "{created}");
    let events = events.join().unwrap();
    let evict = events.iter().find(|(n, _)| n == "image_volume_cache.evict").expect("an evict event within 60 s");
    assert_eq!(evict.1["reason"], "expired");
    let (_, entries) = d.call("GET", "/v1/cache/entries", Some(TOKEN), None);
    assert_eq!(entries.as_array().map(Vec::len), Some(0), "{entries}");
    // The user's volume stays.
    let (status, _) = d.call("GET", &format!("/v1/volumes/{}", created["id"].as_str().unwrap()), Some(TOKEN), None);
    assert_eq!(status, 200);
}

/// An entry a fill in progress has chosen as its victim is that fill's to evict: expiry leaves it
/// alone although it is idle past its TTL, and the fill evicts it (reason capacity, once).
#[test]
fn expiry_leaves_the_victim_of_a_fill_in_progress_to_that_fill() {
    use volcache::backend::faulty::Op;
    let c = std::sync::Arc::new(Core::new(limits(0, 1)));
    c.cache.policies().swap(Slot::Eviction, spec(plugin("ttl"), &[("ttl_seconds", "1")])).unwrap();
    c.register("a", 1);
    c.register("b", 1);
    c.create("a", 1).unwrap();
    std::thread::sleep(Duration::from_millis(1300));
    // b's fill chooses a (the cache holds one entry) and is held in its write.
    c.faulty.slow(Op::Seal, Duration::from_millis(600));
    let fill = {
        let c = c.clone();
        std::thread::spawn(move || c.create("b", 1))
    };
    std::thread::sleep(Duration::from_millis(200));
    let round = c.cache.expire().unwrap();
    assert_eq!((round.evicted.len(), round.skipped), (0, None), "a is the fill's victim");
    assert_eq!(fill.join().unwrap().unwrap().volume.cache, Some(volcache::catalog::CacheOutcome::Miss));
    let mut c = std::sync::Arc::into_inner(c).unwrap();
    let evicts: Vec<_> = c.drain().into_iter().filter(|e| e.event_type.ends_with(".evict")).collect();
    assert_eq!(
        evicts.iter().map(|e| (e.image_id.as_str(), e.reason)).collect::<Vec<_>>(),
        [("a", Some(EvictReason::Capacity))]
    );
}
