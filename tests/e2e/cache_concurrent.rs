//! The concurrent model test of the cache core. Each case: four threads issue random creates,
//! volume deletes, evictions, image changes, image deletes, re-registrations and limit changes
//! (policy swaps) against the
//! in-memory backend, which fails random operations (EIO, ENOSPC) from the case's seed, while an
//! observer checks the limits at every instant it can see. At the end:
//! - the limits hold, and every entry has its volume record and its backend volume;
//! - no backend volume is unaccounted for: each is a recorded volume or awaits an intent, and
//!   after the faults heal, reconciliation leaves exactly the recorded volumes and no intent;
//! - every user volume reads the bytes of a version of its image that existed during its create;
//! - events are exactly once: as many hit, miss and evict events as the counters say, one hit or
//!   miss per successful cached create, no entry evicted twice, none of the final entries evicted.
//!
//! `VOLCACHE_MODEL_SEED=N` replays one case's operations; `VOLCACHE_MODEL_CASES` and
//! `VOLCACHE_MODEL_SECONDS` bound the run (defaults: 2,000 cases or 60 s, whichever comes
//! first). A failure names its seed, and writes the order in which the threads' operations began
//! and ended to `target/test-artifacts/concurrent-model-<seed>.log`: the seed fixes the
//! operations, not how the threads interleaved, so a race may not replay by seed alone.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use volcache::backend::faulty::{Fault, Op};
use volcache::backend::Backend;
use volcache::cache::images::{ImagePatch, NewImage};
use volcache::cache::CacheError;
use volcache::catalog::Intent;
use volcache::image::DiskFormat;
use volcache::policy::{Builtin, PolicySource, PolicySpec, Slot};

use crate::cache_core::{limits, request, Core};
use crate::fixtures::Rng;

const IMAGES: [(&str, u64); 5] = [("i0", 1), ("i1", 1), ("i2", 2), ("i3", 1), ("i4", 3)];
const THREADS: usize = 4;
const OPS: usize = 24;

/// What the workers learned, for the final checks.
#[derive(Default)]
struct Log {
    /// User volume id -> (image index, first and last index into the image's version history
    /// that may have been current during its create).
    volumes: BTreeMap<String, (usize, usize, usize)>,
    deleted: HashSet<String>,
    /// Successful creates, each a hit or a miss.
    cached_or_missed: u64,
}

/// Every operation's start and end, in the order they happened, for a failure's report.
#[derive(Default)]
struct Journal(Mutex<Vec<String>>);

impl Journal {
    fn note(&self, thread: u64, what: std::fmt::Arguments<'_>) {
        let mut lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = lines.len();
        lines.push(format!("{n:>5} t{thread} {what}"));
    }

    /// Writes the journal beside the other test artifacts; returns where.
    fn save(&self, seed: u64) -> std::path::PathBuf {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
        let path = dir.join(format!("concurrent-model-{seed}.log"));
        let lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let _ = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, lines.join("\n") + "\n"));
        path
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn concurrent_model() {
    if let Ok(seed) = std::env::var("VOLCACHE_MODEL_SEED") {
        run_case(seed.parse().expect("VOLCACHE_MODEL_SEED is a number"));
        return;
    }
    let first = crate::cache_core::fresh_seed();
    let (cases, budget) = (env_u64("VOLCACHE_MODEL_CASES", 2000), env_u64("VOLCACHE_MODEL_SECONDS", 60));
    let started = Instant::now();
    let mut ran = 0;
    for seed in first..first + cases {
        if started.elapsed() > Duration::from_secs(budget) {
            break;
        }
        run_case(seed);
        ran += 1;
    }
    eprintln!("concurrent model: {ran} cases from seed {first} in {:.1} s", started.elapsed().as_secs_f64());
    assert!(ran >= 50, "only {ran} cases ran in {budget} s");
}

fn run_case(seed: u64) {
    let mut rng = Rng::new(seed);
    let (max_size, max_count) = (rng.below(6), rng.below(4));
    let core = Arc::new(Core::new(limits(max_size, max_count)));
    for (id, gib) in IMAGES {
        core.register(id, gib);
    }
    let versions =
        Arc::new(Versions { history: IMAGES.iter().map(|_| Mutex::new(vec![0])).collect(), next: AtomicU32::new(1) });
    core.faulty.random(20_000, seed);
    if rng.below(3) == 0 {
        // A grown clone whose resize fails and whose removal then fails too: the undo must
        // leave it accounted for (an intent), like every other leftover.
        for op in [Op::Resize, Op::Remove] {
            core.faulty.inject(Fault { op, prefix: "volume-".into(), after: 0, times: 1, errno: libc::EIO });
        }
    }
    let log = Arc::new(Mutex::new(Log::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let observer = {
        let (core, stop) = (core.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let entries = core.cache.scope_entries().unwrap();
                let gib: u64 = entries.iter().map(|e| e.size).sum();
                assert!(max_count == 0 || entries.len() as u64 <= max_count, "seed {seed}: {} entries", entries.len());
                assert!(max_size == 0 || gib <= max_size, "seed {seed}: {gib} GiB cached");
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    let journal = Arc::new(Journal::default());
    let workers: Vec<_> = (0..THREADS as u64)
        .map(|t| {
            let (core, log, versions, journal) = (core.clone(), log.clone(), versions.clone(), journal.clone());
            let mut rng = Rng::new(seed ^ (t + 1).wrapping_mul(0x1234_5678_9abc_def1));
            std::thread::spawn(move || {
                for _ in 0..OPS {
                    let i = rng.below(IMAGES.len() as u64) as usize;
                    let op = rng.below(13);
                    journal.note(t, format_args!("begin op {op} on {}", IMAGES[i].0));
                    let result = step(&core, &log, &versions, &(max_size, max_count), &mut rng, seed, i, op);
                    journal.note(t, format_args!("end op {op} on {}: {result}", IMAGES[i].0));
                }
            })
        })
        .collect();
    let failed = |panic: Box<dyn std::any::Any + Send>| -> ! {
        eprintln!("seed {seed}: the threads' operations in order: {}", journal.save(seed).display());
        std::panic::resume_unwind(panic)
    };
    for w in workers {
        if let Err(panic) = w.join() {
            stop.store(true, Ordering::SeqCst);
            failed(panic);
        }
    }
    stop.store(true, Ordering::SeqCst);
    observer.join().unwrap_or_else(|p| failed(p));
    let log = log.lock().unwrap();
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(core, &log, &versions, seed)));
    checked.unwrap_or_else(|p| failed(p));
}

/// Each image's versions in the order they were committed (a change is made and logged under
/// the image's lock), so the version a create used is one of those current from its start to its
/// end.
struct Versions {
    history: Vec<Mutex<Vec<u32>>>,
    next: AtomicU32,
}

impl Versions {
    fn len(&self, i: usize) -> usize {
        self.history[i].lock().unwrap().len()
    }

    /// Makes a new version of image `i` with `change`, logging it if the change succeeded.
    fn change(&self, i: usize, change: impl FnOnce(u32) -> bool) {
        let mut history = self.history[i].lock().unwrap();
        let v = self.next.fetch_add(1, Ordering::SeqCst);
        if change(v) {
            history.push(v);
        }
    }
}

/// Operation `op` on image `i`; says what it did, for the journal.
#[allow(clippy::too_many_arguments)]
fn step(
    core: &Core,
    log: &Mutex<Log>,
    versions: &Versions,
    limits: &(u64, u64),
    rng: &mut Rng,
    seed: u64,
    i: usize,
    op: u64,
) -> String {
    let (id, gib) = IMAGES[i];
    match op {
        12 => {
            // An operator tightens the limits while requests run (a policy swap racing the
            // fills' decisions). Limits bind new inserts, as in Cinder, so the observer checks
            // the case's first, largest limits.
            let (size, count) = *limits;
            let (size, count) =
                (if size == 0 { 0 } else { 1 + rng.below(size) }, if count == 0 { 0 } else { 1 + rng.below(count) });
            let params = vec![
                ("image_volume_cache_max_size_gb".to_string(), size.to_string()),
                ("image_volume_cache_max_count".to_string(), count.to_string()),
            ];
            for (slot, builtin) in [(Slot::Admission, Builtin::MaxSize), (Slot::Capacity, Builtin::Quota)] {
                let spec = PolicySpec { source: PolicySource::Builtin(builtin), params: params.clone() };
                core.cache.policies().swap(slot, spec).unwrap();
            }
            format!("limits {size} GiB, {count} entries")
        }
        0..=6 => {
            let low = versions.len(i) - 1;
            // Sometimes larger than the image: the hit's clone is grown.
            match core.cache.create_volume(&request(id, gib + rng.below(2))) {
                Ok(created) => {
                    // One more: a change committed but not yet logged when the create ended.
                    let high = versions.len(i);
                    let mut log = log.lock().unwrap();
                    log.volumes.insert(created.volume.id.clone(), (i, low, high));
                    // The cache is enabled: every create is a hit or a miss (uncached ones too).
                    log.cached_or_missed += 1;
                    let v = &created.volume;
                    format!("created {} ({:?}, from entry {:?}), history {low}..={high}", v.id, v.cache, v.cloned_from)
                }
                Err(CacheError::ImageNotFound(_)) => "create: image not found".into(),
                Err(e) => {
                    assert!(allowed(&e), "seed {seed}: create {id}: unexpected error {e:?}");
                    format!("create failed: {e}")
                }
            }
        }
        7 => {
            let victim = log.lock().unwrap().volumes.keys().nth(rng.below(8) as usize).cloned();
            let Some(v) = victim else { return "no volume to delete".into() };
            match core.cache.delete_volume(&v) {
                Ok(()) => {
                    log.lock().unwrap().deleted.insert(v.clone());
                    format!("deleted volume {v}")
                }
                Err(CacheError::VolumeNotFound(_)) => format!("volume {v} already gone"),
                Err(e) => {
                    assert!(allowed(&e), "seed {seed}: delete {v}: {e:?}");
                    format!("delete {v} failed: {e}")
                }
            }
        }
        8 => {
            let Some(e) = core.cache.scope_entries().unwrap().first().cloned() else { return "no entry".into() };
            match core.cache.evict_entry(e.id) {
                Ok(_) => format!("evicted entry {} of {}", e.id, e.image_id),
                Err(CacheError::EntryNotFound(_)) => format!("entry {} already gone", e.id),
                Err(err) => panic!("seed {seed}: evict: {err:?}"),
            }
        }
        9 | 10 => {
            // A new version of the image: a new source file, then the change.
            let mut said = String::new();
            versions.change(i, |v| {
                let path = core.image_file(id, v, gib);
                let patch = ImagePatch { source: Some(path.display().to_string()), ..Default::default() };
                let changed = core.cache.patch_image(id, patch);
                said = match &changed {
                    Ok(image) => format!("changed to v{v} at {}", image.updated_at),
                    Err(e) => format!("change to v{v} failed: {e}"),
                };
                changed.is_ok()
            });
            said
        }
        _ => {
            if rng.below(2) == 0 {
                format!("delete image: {:?}", core.cache.delete_image(id).map(drop))
            } else {
                // Registered again (after a delete) as a new version, as after a re-upload.
                let mut said = String::new();
                versions.change(i, |v| {
                    let path = core.image_file(id, v, gib);
                    let new = NewImage {
                        id: Some(id.into()),
                        name: id.into(),
                        source: path.display().to_string(),
                        disk_format: DiskFormat::Raw,
                        checksum: None,
                        refresh_interval_seconds: None,
                    };
                    let registered = core.cache.register_image(new);
                    said = match &registered {
                        Ok(image) => format!("registered as v{v} at {}", image.updated_at),
                        Err(e) => format!("register as v{v} failed: {e}"),
                    };
                    registered.is_ok()
                });
                said
            }
        }
    }
}

/// Errors an injected fault or a deleted image may cause; never a 500-class surprise.
fn allowed(e: &CacheError) -> bool {
    use volcache::cache::FailureClass::*;
    matches!(e.class(), NoSpace | Unavailable | ImageGone)
        && !matches!(e, CacheError::WaitTimedOut { .. } | CacheError::Cancelled)
}

fn check(core: Arc<Core>, log: &Log, versions: &Versions, seed: u64) {
    let mut core = Arc::into_inner(core).expect("every thread is done");
    let entries = core.cache.scope_entries().unwrap();
    let records = core.cache.catalog().read(|r| r.volumes()).unwrap();
    let on_backend: HashSet<String> = core.memory.list().unwrap().into_iter().collect();
    let recorded: HashSet<String> = records.iter().map(|v| v.backend_name.clone()).collect();
    for e in &entries {
        let v = records.iter().find(|v| v.id == e.volume_id);
        let v = v.unwrap_or_else(|| panic!("seed {seed}: entry {} has no volume record", e.id));
        assert!(on_backend.contains(&v.backend_name), "seed {seed}: entry {} has no backend volume", e.id);
    }
    let pending: HashSet<String> = core
        .cache
        .catalog()
        .read(|r| r.intents())
        .unwrap()
        .into_iter()
        .map(|i| match i.intent {
            Intent::Fill { backend_name, .. }
            | Intent::Evict { backend_name, .. }
            | Intent::Create { backend_name, .. }
            | Intent::Delete { backend_name, .. } => backend_name,
        })
        .collect();
    for name in &on_backend {
        assert!(recorded.contains(name) || pending.contains(name), "seed {seed}: orphan volume {name}");
    }
    // Every user volume still recorded holds a version of its image current during its create.
    for v in records.iter().filter(|v| v.cache_entry.is_none()) {
        let (i, low, high) = log.volumes[&v.id];
        let history = versions.history[i].lock().unwrap();
        let allowed = &history[low..=high.min(history.len() - 1)];
        let head = core.head(&v.backend_name);
        let holds = |ver: &&u32| head == crate::cache_core::pattern(IMAGES[i].0, **ver);
        let ok = allowed.iter().any(|ver| holds(&ver));
        assert!(
            ok,
            "seed {seed}: volume {} ({:?}) of {} holds v{:?}, not one of {allowed:?}",
            v.id,
            v.cache,
            IMAGES[i].0,
            history.iter().find(holds)
        );
    }
    assert!(records.iter().filter(|v| v.cache_entry.is_none()).all(|v| !log.deleted.contains(&v.id)));
    // Events exactly once, and as the counters say.
    let events = core.drain();
    let count = |kind: &str| events.iter().filter(|e| e.event_type.ends_with(kind)).count() as u64;
    let stats = core.cache.stats().unwrap();
    assert_eq!(
        (count(".hit"), count(".miss"), count(".evict")),
        (stats.hits, stats.misses, stats.evictions),
        "seed {seed}"
    );
    assert_eq!(stats.hits + stats.misses, log.cached_or_missed, "seed {seed}: one hit or miss per create");
    let mut evicted = HashSet::new();
    for e in events.iter().filter(|e| e.event_type.ends_with(".evict")) {
        assert!(evicted.insert(e.volume_id.clone()), "seed {seed}: entry volume {} evicted twice", e.volume_id);
    }
    assert!(entries.iter().all(|e| !evicted.contains(&e.volume_id)), "seed {seed}: a live entry was evicted");
    // With the faults healed, reconciliation leaves exactly what the catalog records.
    core.faulty.heal();
    core.cache.reconcile().unwrap();
    let left: HashSet<String> = core.memory.list().unwrap().into_iter().collect();
    let recorded: HashSet<String> =
        core.cache.catalog().read(|r| r.volumes()).unwrap().into_iter().map(|v| v.backend_name).collect();
    assert_eq!(left, recorded, "seed {seed}: after reconciliation");
    assert!(core.cache.catalog().read(|r| r.intents()).unwrap().is_empty(), "seed {seed}");
}
