//! The cache core when requests overlap and fail, on the in-memory backend behind the
//! fault-injecting wrapper (milliseconds a case, no root). Each regression test is named after
//! the defect it guards against; `concurrent_model` runs thousands of random concurrent cases.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use volcache::backend::faulty::{Fault, FaultyBackend, Op};
use volcache::backend::memory::MemoryBackend;
use volcache::backend::Backend;
use volcache::cache::images::{ImagePatch, NewImage};
use volcache::cache::recover::QUARANTINE_PROJECT;
use volcache::cache::{
    CacheConfig, CacheError, CacheEvent, CacheService, Cancel, CreateVolume, Created, FailureClass, GIB,
};
use volcache::catalog::{CacheOutcome, Catalog};
use volcache::image::DiskFormat;
use volcache::policy::{CinderLimits, PolicySet, SizeBasis};

/// One engine for every case: built-in policies need no compilation, and making a wasm engine
/// costs more than a whole case.
fn engine() -> volcache::policy::PolicyEngine {
    static ENGINE: std::sync::OnceLock<volcache::policy::PolicyEngine> = std::sync::OnceLock::new();
    ENGINE.get_or_init(crate::fixtures::engine).clone()
}

/// Bytes of data at the start of every test image; the rest is a hole.
const DATA: usize = 64 * 1024;

pub struct Core {
    pub cache: Arc<CacheService>,
    pub faulty: FaultyBackend,
    pub memory: MemoryBackend,
    pub events: tokio::sync::broadcast::Receiver<CacheEvent>,
    pub dir: tempfile::TempDir,
}

/// A temporary directory in memory when there is one: catalog commits then cost no fsync.
fn fast_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}

pub fn limits(max_size_gb: u64, max_count: u64) -> CinderLimits {
    CinderLimits { max_size_gb, max_count, basis: SizeBasis::Provisioned }
}

impl Core {
    pub fn new(limits: CinderLimits) -> Core {
        Core::with(limits, |_| {})
    }

    pub fn with(limits: CinderLimits, tweak: impl FnOnce(&mut CacheConfig)) -> Core {
        Core::build(limits, tweak, engine())
    }

    pub fn build(
        limits: CinderLimits,
        tweak: impl FnOnce(&mut CacheConfig),
        engine: volcache::policy::PolicyEngine,
    ) -> Core {
        let dir = fast_tempdir();
        let memory = MemoryBackend::new();
        let faulty = FaultyBackend::new(Arc::new(memory.clone()));
        let catalog = Arc::new(Catalog::open(&dir.path().join("catalog.redb")).unwrap());
        std::fs::create_dir_all(dir.path().join("images")).unwrap();
        let mut cfg = crate::cache_service::config(&dir.path().join("spool"));
        tweak(&mut cfg);
        let policies = Arc::new(PolicySet::new(engine, limits));
        let cache = Arc::new(CacheService::new(catalog, Arc::new(faulty.clone()), policies, cfg));
        let events = cache.subscribe();
        Core { cache, faulty, memory, events, dir }
    }

    /// Writes version `version` of image `id`: `gib` GiB provisioned (virtual size just over
    /// `gib - 1` GiB), DATA bytes of a pattern naming the image and version, the rest a hole.
    pub fn image_file(&self, id: &str, version: u32, gib: u64) -> PathBuf {
        let path = self.dir.path().join("images").join(format!("{id}.v{version}.raw"));
        // Written aside and renamed into place: a fill reading the path never sees it half made.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let tmp = path.with_extension(format!("tmp{}", N.fetch_add(1, Ordering::SeqCst)));
        let file = std::fs::File::create(&tmp).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &pattern(id, version), 0).unwrap();
        file.set_len((gib - 1) * GIB + DATA as u64).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }

    pub fn register(&self, id: &str, gib: u64) {
        let path = self.image_file(id, 0, gib);
        self.cache
            .register_image(NewImage {
                id: Some(id.into()),
                name: id.into(),
                source: path.display().to_string(),
                disk_format: DiskFormat::Raw,
                checksum: None,
                refresh_interval_seconds: None,
            })
            .unwrap();
    }

    pub fn create(&self, image: &str, size: u64) -> Result<Created, CacheError> {
        self.cache.create_volume(&request(image, size))
    }

    pub fn drain(&mut self) -> Vec<CacheEvent> {
        let mut out = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            out.push(e);
        }
        out
    }

    pub fn entry_images(&self) -> Vec<String> {
        let mut v: Vec<String> = self.cache.scope_entries().unwrap().into_iter().map(|e| e.image_id).collect();
        v.sort();
        v
    }

    /// The first DATA bytes of a backend volume.
    pub fn head(&self, backend_name: &str) -> Vec<u8> {
        let dev = self.memory.open(backend_name).unwrap();
        let mut buf = vec![0u8; DATA];
        dev.read_exact_at(&mut buf, 0).unwrap();
        buf
    }
}

/// A seed for a fresh run: from the clock, so each run tries new cases; printed on failure.
pub fn fresh_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 % 1_000_000_007
}

pub fn request(image: &str, size: u64) -> CreateVolume {
    CreateVolume { image_id: image.into(), size, project_id: "p".into(), user_id: "u".into() }
}

/// Distinct bytes for each image and version: a 4 KiB block from their seed, repeated (every
/// 4 KiB block holds data, so none is skipped as zeros).
pub fn pattern(id: &str, version: u32) -> Vec<u8> {
    let mut seed = version as u64 + 1;
    for b in id.bytes() {
        seed = seed.wrapping_mul(31).wrapping_add(b as u64);
    }
    let mut rng = crate::fixtures::Rng::new(seed);
    let block: Vec<u8> = (0..4096 / 8).flat_map(|_| rng.next().to_le_bytes()).map(|b| b | 1).collect();
    block.repeat(DATA / block.len())
}

fn kinds(events: &[CacheEvent]) -> Vec<(&str, &str)> {
    events.iter().map(|e| (e.event_type.trim_start_matches("image_volume_cache."), e.image_id.as_str())).collect()
}

/// A hit is one catalog transaction, and waits for the disk once: no intent is recorded for its
/// clone (reconciliation finds a clone without a record by listing the backend), and a writer
/// alone commits durably itself instead of adding a flush transaction (group commit counts
/// every fsync'd commit in `meta`).
#[test]
fn a_hit_is_one_catalog_transaction_and_one_flush() {
    let c = Core::new(limits(0, 0));
    c.register("a", 1);
    c.create("a", 1).unwrap();
    let catalog = c.cache.catalog();
    let durable = || catalog.read(|r| r.meta("durable_commits")).unwrap();
    let (flushes, commits) = (durable(), catalog.commits());
    let hit = c.create("a", 1).unwrap();
    assert_eq!(hit.volume.cache, Some(CacheOutcome::Hit));
    assert_eq!((catalog.commits() - commits, durable() - flushes), (1, 1), "(transactions, flushes) for one hit");
    c.cache.delete_volume(&hit.volume.id).unwrap();
    assert_eq!(durable() - flushes, 2, "and one flush for its delete");
}

/// A clone whose undo cannot remove it (the hit failed after the clone, then so did the
/// removal) is recorded as a `Create` intent then, so the leftover is accounted for while the
/// daemon runs, and reconciliation sets it aside; it is never removed.
#[test]
fn a_clone_whose_undo_fails_is_recorded_and_set_aside() {
    let c = Core::new(limits(0, 0));
    c.register("a", 1);
    c.create("a", 1).unwrap();
    let before: HashSet<String> = c.memory.list().unwrap().into_iter().collect();
    c.faulty.inject(Fault { op: Op::Resize, prefix: "volume-".into(), after: 0, times: 1, errno: libc::EIO });
    c.faulty.inject(Fault { op: Op::Remove, prefix: "volume-".into(), after: 0, times: 1, errno: libc::EIO });
    c.create("a", 2).unwrap_err();
    let left: Vec<String> = c.memory.list().unwrap().into_iter().filter(|n| !before.contains(n)).collect();
    assert_eq!(left.len(), 1, "the clone stays: its removal failed");
    let intents = c.cache.catalog().read(|r| r.intents()).unwrap();
    let pending: Vec<&str> = intents.iter().map(|i| i.intent.backend_name()).collect();
    assert_eq!(pending, vec![left[0].as_str()], "recorded once its undo failed");
    let done = c.cache.reconcile().unwrap();
    assert_eq!(done.quarantined.len(), 1, "{done:?}");
    assert!(c.memory.exists(&left[0]).unwrap(), "set aside, never removed");
    assert!(c.cache.catalog().read(|r| r.intents()).unwrap().is_empty());
}

/// A volume no record names, with no intent either (a crash between a clone and its record, as
/// clones record no intent, or a catalog that fell back a commit): reconciliation
/// sets it aside under the quarantine project; it never removes it.
#[test]
fn reconciliation_sets_aside_a_user_volume_no_record_names() {
    let c = Core::new(limits(0, 0));
    c.register("img", 1);
    let lost = c.create("img", 1).unwrap().volume;
    let kept = c.create("img", 1).unwrap().volume;
    c.cache.catalog().write(|w| w.delete_volume(&lost.id)).unwrap();
    let done = c.cache.reconcile().unwrap();
    assert_eq!(done.quarantined, vec![lost.id.clone()]);
    assert!(c.memory.exists(&lost.backend_name).unwrap(), "never deleted");
    let record = c.cache.catalog().read(|r| r.volume(&lost.id)).unwrap().unwrap();
    assert_eq!(
        (record.project_id.as_str(), record.backend_name.as_str()),
        (QUARANTINE_PROJECT, lost.backend_name.as_str())
    );
    assert_eq!(c.cache.catalog().read(|r| r.volume(&kept.id)).unwrap().unwrap().project_id, "p", "others untouched");
    assert!(c.cache.reconcile().unwrap().quarantined.is_empty(), "set aside once");
}

/// A user volume whose record stays but whose volume is gone (removed behind volcache's back,
/// or its name lost in a power cut): reported at every start, the record kept for the operator,
/// and deleting it through the service works and ends the reports.
#[test]
fn reconciliation_reports_a_user_volume_whose_volume_is_gone() {
    let c = Core::new(limits(0, 0));
    c.register("img", 1);
    let gone = c.create("img", 1).unwrap().volume;
    let kept = c.create("img", 1).unwrap().volume;
    c.memory.remove(&gone.backend_name).unwrap();
    let done = c.cache.reconcile().unwrap();
    assert_eq!(done.user_volumes_missing, vec![gone.id.clone()]);
    assert!(done.quarantined.is_empty() && done.entries_without_volume_dropped.is_empty(), "{done:?}");
    assert!(c.cache.catalog().read(|r| r.volume(&gone.id)).unwrap().is_some(), "the record stays");
    assert_eq!(c.cache.reconcile().unwrap().user_volumes_missing, vec![gone.id.clone()], "reported again");
    c.cache.delete_volume(&gone.id).unwrap();
    assert!(c.cache.reconcile().unwrap().user_volumes_missing.is_empty());
    assert!(c.memory.exists(&kept.backend_name).unwrap(), "the other volume untouched");
}

/// A clone as large as its entry is not resized (on RBD a resize opens the clone and its parent
/// and takes the exclusive lock: a third of a hit); a larger one is grown.
#[test]
fn a_hit_the_size_of_its_entry_is_not_resized() {
    let c = Core::new(limits(0, 0));
    c.register("a", 1);
    assert_eq!(c.create("a", 1).unwrap().volume.cache, Some(CacheOutcome::Miss));
    // Every resize of a user volume fails from here on: the same-size hit never asks for one.
    c.faulty.inject(Fault { op: Op::Resize, prefix: "volume-".into(), after: 0, times: 1, errno: libc::EIO });
    let hit = c.create("a", 1).unwrap();
    assert_eq!(hit.volume.cache, Some(CacheOutcome::Hit));
    assert_eq!(c.memory.size(&hit.volume.backend_name).unwrap(), GIB);
    let err = c.create("a", 2).unwrap_err();
    assert_eq!(err.class(), FailureClass::Unavailable, "a larger hit is resized and met the fault: {err}");
    let grown = c.create("a", 2).unwrap();
    assert_eq!(c.memory.size(&grown.volume.backend_name).unwrap(), 2 * GIB);
}

#[test]
fn a_failed_fill_evicts_nothing() {
    let mut c = Core::new(limits(0, 1));
    c.register("a", 1);
    c.register("gone", 1);
    c.register("nospace", 1);
    c.create("a", 1).unwrap();
    c.drain();
    // The source is gone: the image's fault.
    let gone = c.cache.catalog().read(|r| r.image("gone")).unwrap().unwrap();
    std::fs::remove_file(&gone.source).unwrap();
    let err = c.create("gone", 1).unwrap_err();
    assert_eq!(err.class(), FailureClass::Source, "{err}");
    // The backend fills up half way through the write: the storage's fault.
    c.faulty.inject(Fault { op: Op::Write, prefix: "cache-".into(), after: 0, times: 1, errno: libc::ENOSPC });
    let err = c.create("nospace", 1).unwrap_err();
    assert_eq!(err.class(), FailureClass::NoSpace, "{err}");
    assert_eq!(c.entry_images(), vec!["a"], "the failed fills evicted nothing");
    assert!(c.drain().is_empty(), "no evict, no miss: {:?}", c.drain());
    assert!(c.cache.ledger().reserved().is_empty(), "the reservations were released");
    let cache_volumes: Vec<String> = c.memory.list().unwrap().into_iter().filter(|n| n.starts_with("cache-")).collect();
    assert_eq!(cache_volumes.len(), 1, "the half-written cache volumes were removed: {cache_volumes:?}");
    assert!(c.cache.catalog().read(|r| r.intents()).unwrap().is_empty());
}

#[test]
fn limits_hold_when_fills_overlap() {
    let c = Arc::new(Core::new(limits(0, 2)));
    for i in 0..4 {
        c.register(&format!("img{i}"), 1);
    }
    // Slow writes make the four fills overlap.
    c.faulty.slow(Op::Seal, Duration::from_millis(30));
    let stop = Arc::new(AtomicBool::new(false));
    let observer = {
        let (c, stop) = (c.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut max_seen = 0;
            while !stop.load(Ordering::SeqCst) {
                max_seen = max_seen.max(c.cache.scope_entries().unwrap().len());
            }
            max_seen
        })
    };
    let barrier = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let (c, barrier) = (c.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                c.create(&format!("img{i}"), 1).unwrap().volume.cache.unwrap()
            })
        })
        .collect();
    let outcomes: Vec<CacheOutcome> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    stop.store(true, Ordering::SeqCst);
    assert!(observer.join().unwrap() <= 2, "an observer saw more than max_count entries");
    assert!(c.cache.scope_entries().unwrap().len() <= 2);
    assert!(outcomes.iter().all(|o| *o != CacheOutcome::Hit), "{outcomes:?}");
}

#[test]
fn hits_racing_evictions_never_fail() {
    let c = Arc::new(Core::new(limits(0, 0)));
    c.register("img", 1);
    c.create("img", 1).unwrap();
    c.faulty.slow(Op::Clone, Duration::from_millis(2));
    let stop = Arc::new(AtomicBool::new(false));
    let evictor = {
        let (c, stop) = (c.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut evicted = 0;
            while !stop.load(Ordering::SeqCst) {
                for e in c.cache.scope_entries().unwrap() {
                    if c.cache.evict_entry(e.id).is_ok() {
                        evicted += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            evicted
        })
    };
    let creators: Vec<_> = (0..2)
        .map(|_| {
            let c = c.clone();
            std::thread::spawn(move || {
                for _ in 0..40 {
                    let v = c.create("img", 1).expect("a create racing an eviction must succeed");
                    assert_eq!(c.head(&v.volume.backend_name), pattern("img", 0));
                }
            })
        })
        .collect();
    for t in creators {
        t.join().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    assert!(evictor.join().unwrap() > 0, "the race was exercised");
    // Every evicted volume is gone once no clone holds it.
    let entries = c.cache.scope_entries().unwrap();
    let cache_volumes = c.memory.list().unwrap().into_iter().filter(|n| n.starts_with("cache-")).count();
    assert_eq!(cache_volumes, entries.len());
}

#[test]
fn a_lost_cache_volume_is_dropped_and_the_request_misses() {
    let mut c = Core::new(limits(0, 0));
    c.register("img", 1);
    c.create("img", 1).unwrap();
    let entry = c.cache.scope_entries().unwrap().remove(0);
    c.memory.remove(&format!("cache-{}", entry.id)).unwrap();
    c.drain();
    let v = c.create("img", 2).unwrap();
    assert_eq!(v.volume.cache, Some(CacheOutcome::Miss));
    let events = c.drain();
    assert_eq!(kinds(&events), vec![("evict", "img"), ("miss", "img")]);
    assert_eq!(events[0].reason, Some(volcache::cache::EvictReason::Lost));
    assert_eq!(c.head(&v.volume.backend_name), pattern("img", 0));
    assert_eq!(c.create("img", 1).unwrap().volume.cache, Some(CacheOutcome::Hit), "the image works again");
}

#[test]
fn followers_of_a_stuck_fill_give_up_when_cancelled_or_timed_out() {
    let c = Arc::new(Core::with(limits(0, 0), |cfg| cfg.fill_wait = Duration::from_millis(300)));
    c.register("img", 1);
    c.faulty.slow(Op::Seal, Duration::from_millis(1500));
    let leader = {
        let c = c.clone();
        std::thread::spawn(move || c.create("img", 1))
    };
    std::thread::sleep(Duration::from_millis(100));
    let cancel = Cancel::new();
    let follower = {
        let (c, cancel) = (c.clone(), cancel.clone());
        std::thread::spawn(move || c.cache.create_volume_with(&request("img", 1), &cancel))
    };
    std::thread::sleep(Duration::from_millis(50));
    let cancelled_at = std::time::Instant::now();
    cancel.cancel();
    assert!(matches!(follower.join().unwrap(), Err(CacheError::Cancelled)));
    assert!(cancelled_at.elapsed() < Duration::from_millis(1000), "the follower left before the fill ended");
    assert!(matches!(c.create("img", 1), Err(CacheError::WaitTimedOut { .. })));
    assert_eq!(leader.join().unwrap().unwrap().volume.cache, Some(CacheOutcome::Miss));
}

#[test]
fn image_records_do_not_race() {
    let c = Arc::new(Core::new(limits(0, 0)));
    let path = c.image_file("dup", 0, 1).display().to_string();
    let new = move || NewImage {
        id: Some("dup".into()),
        name: "dup".into(),
        source: path.clone(),
        disk_format: DiskFormat::Raw,
        checksum: None,
        refresh_interval_seconds: None,
    };
    let results: Vec<_> = (0..4)
        .map(|_| {
            let (c, new) = (c.clone(), new.clone());
            std::thread::spawn(move || c.cache.register_image(new()))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "one registration wins");
    assert!(results.iter().filter_map(|r| r.as_ref().err()).all(|e| matches!(e, CacheError::Conflict(_))));

    // Two concurrent changes both land.
    let a = {
        let c = c.clone();
        std::thread::spawn(move || {
            c.cache.patch_image("dup", ImagePatch { name: Some("renamed".into()), ..Default::default() })
        })
    };
    let sum = "0123456789abcdef0123456789ABCDEF".to_string();
    let b = {
        let (c, sum) = (c.clone(), sum.clone());
        std::thread::spawn(move || c.cache.patch_image("dup", ImagePatch { checksum: Some(sum), ..Default::default() }))
    };
    a.join().unwrap().unwrap();
    b.join().unwrap().unwrap();
    let image = c.cache.catalog().read(|r| r.image("dup")).unwrap().unwrap();
    assert_eq!((image.name.as_str(), image.checksum.as_deref()), ("renamed", Some(sum.to_lowercase().as_str())));
    let bad = c.cache.patch_image("dup", ImagePatch { checksum: Some("xyz".into()), ..Default::default() });
    assert!(matches!(bad, Err(CacheError::Invalid(_))), "PATCH validates checksum like POST");

    // A change after a delete does not bring the image back.
    c.cache.delete_image("dup").unwrap();
    let late = c.cache.patch_image("dup", ImagePatch { name: Some("zombie".into()), ..Default::default() });
    assert!(matches!(late, Err(CacheError::ImageNotFound(_))));
    assert!(c.cache.catalog().read(|r| r.image("dup")).unwrap().is_none());
}

#[test]
fn a_delete_during_the_fill_leaves_no_entry() {
    let c = Arc::new(Core::new(limits(0, 0)));
    c.register("img", 1);
    c.faulty.slow(Op::Seal, Duration::from_millis(300));
    let create = {
        let c = c.clone();
        std::thread::spawn(move || c.create("img", 1))
    };
    std::thread::sleep(Duration::from_millis(100));
    c.cache.delete_image("img").unwrap();
    let err = create.join().unwrap().unwrap_err();
    assert_eq!(err.class(), FailureClass::ImageGone, "{err}");
    assert!(c.cache.scope_entries().unwrap().is_empty(), "no entry for a deleted image");
    assert!(c.memory.list().unwrap().is_empty(), "its cache volume was removed");
}

/// Seen by `concurrent_model` (seed 521456468): an image deleted and registered again within
/// one millisecond got the old version's `updated_at`, so a fill of the old version committed
/// after the registration was served as a hit of the new one.
#[test]
fn an_image_registered_again_never_gets_its_old_versions_stamp() {
    let c = Arc::new(Core::new(limits(0, 0)));
    let mut seen = std::collections::HashSet::new();
    for v in 0..200 {
        let path = c.image_file("again", v, 1).display().to_string();
        let image = c
            .cache
            .register_image(NewImage {
                id: Some("again".into()),
                name: "again".into(),
                source: path,
                disk_format: DiskFormat::Raw,
                checksum: None,
                refresh_interval_seconds: None,
            })
            .unwrap();
        assert!(seen.insert(image.updated_at.clone()), "version {v} reused the stamp {}", image.updated_at);
        let changed = c.cache.patch_image("again", ImagePatch { name: Some("x".into()), ..Default::default() });
        assert!(seen.insert(changed.unwrap().updated_at), "a change reused a stamp");
        c.cache.delete_image("again").unwrap();
    }

    // The whole story: a fill of v0 outlives the image, which comes back as v1 meanwhile.
    c.register("story", 1);
    c.faulty.slow(Op::Seal, Duration::from_millis(300));
    let create = {
        let c = c.clone();
        std::thread::spawn(move || c.create("story", 1))
    };
    std::thread::sleep(Duration::from_millis(100));
    c.cache.delete_image("story").unwrap();
    let path = c.image_file("story", 1, 1).display().to_string();
    let new = NewImage {
        id: Some("story".into()),
        name: "story".into(),
        source: path,
        disk_format: DiskFormat::Raw,
        checksum: None,
        refresh_interval_seconds: None,
    };
    c.cache.register_image(new).unwrap();
    // The old create holds v0 (current when it began) or failed; the next one holds v1.
    if let Ok(old) = create.join().unwrap() {
        assert_eq!(c.head(&old.volume.backend_name), crate::cache_core::pattern("story", 0));
    }
    c.faulty.heal();
    let next = c.create("story", 1).unwrap();
    assert_eq!(c.head(&next.volume.backend_name), crate::cache_core::pattern("story", 1), "served the old version");
}

#[test]
fn followers_get_the_class_of_the_leaders_failure_without_its_internals() {
    let c = Arc::new(Core::new(limits(0, 0)));
    c.register("img", 1);
    c.faulty.slow(Op::Seal, Duration::from_millis(200));
    c.faulty.inject(Fault { op: Op::Seal, prefix: "cache-".into(), after: 0, times: 1, errno: libc::EIO });
    let leader = {
        let c = c.clone();
        std::thread::spawn(move || c.create("img", 1))
    };
    std::thread::sleep(Duration::from_millis(50));
    let follower = c.create("img", 1).unwrap_err();
    let leader = leader.join().unwrap().unwrap_err();
    assert_eq!(leader.class(), FailureClass::Unavailable);
    assert_eq!(follower.class(), FailureClass::Unavailable);
    let text = follower.to_string();
    assert!(!text.contains("Input/output") && !text.contains("os error"), "{text}");
}

#[test]
fn events_name_the_entry_host_and_the_serving_host() {
    let mut a = Core::with(limits(0, 0), |cfg| cfg.cluster_name = Some("ceph-a".into()));
    a.register("img", 1);
    a.create("img", 1).unwrap();
    let entry = a.cache.scope_entries().unwrap().remove(0);
    assert_eq!(a.memory.size(&format!("cache-{}", entry.id)).unwrap(), entry.size * GIB, "provisioned = record");
    // A second host of the same cluster, on the same catalog and backend.
    let mut cfg = crate::cache_service::config(&a.dir.path().join("spool"));
    cfg.host = "host-b".into();
    cfg.cluster_name = Some("ceph-a".into());
    let policies = Arc::new(PolicySet::new(engine(), limits(0, 0)));
    let shared: Arc<dyn Backend> = Arc::new(a.faulty.clone());
    // Its own copy of the catalog's rows (redb allows one opener per file).
    let catalog = Arc::new(Catalog::open(&a.dir.path().join("catalog-shared.redb")).unwrap());
    catalog
        .write(|w| {
            for image in a.cache.catalog().read(|r| r.images())? {
                w.put_image(&image)?;
            }
            for v in a.cache.catalog().read(|r| r.volumes())? {
                w.put_volume(&v)?;
            }
            w.put_entry("ceph-a", &entry)
        })
        .unwrap();
    let b = CacheService::new(catalog, shared, policies, cfg);
    let mut events = b.subscribe();
    b.create_volume(&request("img", 1)).unwrap();
    let hit = events.try_recv().unwrap();
    assert_eq!((hit.host.as_str(), hit.serving_host.as_str()), ("host-a", "host-b"));
    a.drain();
}

#[test]
fn spool_files_left_by_a_crash_are_removed_at_start_up() {
    let c = Core::new(limits(0, 0));
    let spool = c.cache.config().spool_dir.clone();
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::write(spool.join(".volcache-download.4242.0.qcow2"), b"partial").unwrap();
    std::fs::write(spool.join("keep-me"), b"not ours").unwrap();
    let done = c.cache.reconcile().unwrap();
    assert_eq!(done.spool_files_removed, 1);
    assert!(spool.join("keep-me").exists());
}

#[test]
fn a_pinned_entry_is_never_evicted_to_make_room() {
    use volcache::cache::evict::Pin;
    let mut c = Core::new(limits(0, 1));
    for id in ["a", "b", "c"] {
        c.register(id, 1);
    }
    c.create("a", 1).unwrap();
    let a = c.cache.scope_entries().unwrap().remove(0);
    assert!(c.cache.pin_entry(a.id, Pin::Pinned).unwrap().pinned);
    c.drain();
    // The cache is full and its only entry is pinned: b is written uncached, a stays.
    let b = c.create("b", 1).unwrap();
    assert_eq!(b.volume.cache, Some(CacheOutcome::Uncached));
    assert!(b.uncached_reason.unwrap().contains("pinned"), "the answer says why");
    assert_eq!(c.entry_images(), vec!["a"]);
    // A hit keeps the pin; stats count it.
    assert_eq!(c.create("a", 1).unwrap().volume.cache, Some(CacheOutcome::Hit));
    assert!(c.cache.scope_entries().unwrap()[0].pinned);
    assert_eq!(c.cache.stats().unwrap().pinned_entries, 1);
    // Unpinned, it is the victim again.
    assert!(!c.cache.pin_entry(a.id, Pin::Unpinned).unwrap().pinned);
    c.create("c", 1).unwrap();
    assert_eq!(c.entry_images(), vec!["c"]);
    assert!(matches!(c.cache.pin_entry(a.id, Pin::Pinned), Err(CacheError::EntryNotFound(_))));
}

#[test]
fn pinning_an_entry_a_fill_has_chosen_as_its_victim_is_a_conflict() {
    use volcache::cache::evict::Pin;
    let c = Arc::new(Core::new(limits(0, 1)));
    c.register("a", 1);
    c.register("b", 1);
    c.create("a", 1).unwrap();
    let a = c.cache.scope_entries().unwrap().remove(0);
    // b's fill chooses a as its victim, then writes slowly.
    c.faulty.slow(Op::Seal, Duration::from_millis(400));
    let fill = {
        let c = c.clone();
        std::thread::spawn(move || c.create("b", 1))
    };
    std::thread::sleep(Duration::from_millis(150));
    let pinned = c.cache.pin_entry(a.id, Pin::Pinned);
    assert!(matches!(pinned, Err(CacheError::Conflict(_))), "{pinned:?}");
    assert_eq!(fill.join().unwrap().unwrap().volume.cache, Some(CacheOutcome::Miss));
    assert_eq!(c.entry_images(), vec!["b"], "the fill's eviction went ahead");
}

/// Hit latency, median of `n` hits of `image`, in nanoseconds.
fn median_hit_ns(c: &Core, image: &str, n: usize) -> u128 {
    let mut times: Vec<u128> = (0..n)
        .map(|_| {
            let started = std::time::Instant::now();
            let created = c.create(image, 1).unwrap();
            assert_eq!(created.volume.cache, Some(CacheOutcome::Hit));
            started.elapsed().as_nanos()
        })
        .collect();
    times.sort_unstable();
    times[n / 2]
}

#[test]
fn event_hooks_run_off_the_request_path() {
    use volcache::policy::{EngineOptions, PolicyEngine, PolicySource, PolicySpec, Slot};
    // A long hook budget: inline hooks would add 300 ms to a hit (hundreds of times a hit, even
    // on a loaded machine), off-path ones only contend for the CPU.
    let options = EngineOptions {
        call_deadline: crate::fixtures::GENEROUS_DEADLINE,
        event_deadline: Duration::from_millis(300),
        ..EngineOptions::default()
    };
    let c = Core::build(limits(0, 0), |_| {}, PolicyEngine::new(options).unwrap());
    c.register("img", 1);
    c.create("img", 1).unwrap();
    let builtin = median_hit_ns(&c, "img", 15);
    let evil = PolicySpec {
        source: PolicySource::File(crate::fixtures::test_plugin("evil")),
        params: vec![("mode".into(), "hook-loop".into())],
    };
    c.cache.policies().swap(Slot::Eviction, evil).unwrap();
    // Five hits while the hooks are still on: each queues an on-hit that loops until its budget
    // is spent, on the event thread.
    let looping = median_hit_ns(&c, "img", 5);
    let ratio = looping as f64 / builtin as f64;
    println!("hit median: built-in {builtin} ns, looping on-hit {looping} ns, ratio {ratio:.2}");
    assert!(ratio < 20.0, "a looping on-hit slowed hits {ratio:.1}x");
    c.cache.policies().flush_events();
    let status = c.cache.policies().status().into_iter().find(|s| s.slot == Slot::Eviction).unwrap();
    assert_eq!((status.stats.events_failed, status.events_disabled), (5, true), "{status:?}");
}

#[test]
fn a_looping_shadow_policy_never_slows_live_hits() {
    use volcache::lab::shadow::Shadow;
    use volcache::policy::{EngineOptions, PolicyEngine, PolicySource, PolicySpec, Slot};
    let options = EngineOptions { call_deadline: Duration::from_millis(200), ..EngineOptions::default() };
    let engine = PolicyEngine::new(options).unwrap();
    let c = Core::build(limits(0, 6), |_| {}, engine.clone());
    for image in ["a", "b"] {
        c.register(image, 1);
        c.create(image, 1).unwrap();
    }
    let without = median_hit_ns(&c, "a", 15);
    // The shadow's eviction decisions loop until their 200 ms deadline once its view holds 5
    // entries or more (its smoke test has 4); at 6 entries its cache is full.
    let evil = PolicySpec {
        source: PolicySource::File(crate::fixtures::test_plugin("evil")),
        params: vec![("mode".into(), "loop".into()), ("trigger".into(), "5".into())],
    };
    let policies = c.cache.policies();
    let seed = c.cache.shadow_seed().unwrap();
    let shadow = Shadow::attach(&engine, policies.limits(), Slot::Eviction, evil, "test".into(), seed).unwrap();
    c.cache.workload().shadows().put(shadow.clone());
    // Requests for new images make the shadow's cache grow to the trigger and decide (loop).
    for i in 0..6 {
        let image = format!("new-{i}");
        c.register(&image, 1);
        c.create(&image, 1).unwrap();
    }
    c.create("a", 1).unwrap();
    let with = median_hit_ns(&c, "a", 15);
    let ratio = with as f64 / without as f64;
    println!("hit median: {without} ns without a shadow, {with} ns with a looping one, ratio {ratio:.2}");
    assert!(ratio < 20.0, "a looping shadow slowed live hits {ratio:.1}x");
    let started = std::time::Instant::now();
    while shadow.status()["shadow"]["failures"].as_u64() == Some(0) && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = shadow.status();
    assert!(status["shadow"]["failures"].as_u64().unwrap() > 0, "the shadow's timeouts are counted: {status}");
    assert_eq!(c.cache.policies().status()[2].stats.failures, 0, "the live policy never failed");

    // Records offered faster than the stuck shadow takes them: its queue (4,096) fills, and the
    // rest are dropped and counted (offering never waits: a waiting offer would drop nothing).
    let offered = 6_000u64;
    for i in 0..offered {
        let record = volcache::lab::trace::Record {
            time_ms: 1_000 + i,
            op: volcache::lab::trace::Op::Request,
            image: format!("flood-{i}"),
            version: 1,
            size_bytes: 1 << 30,
        };
        shadow.feed(&record, None);
    }
    let dropped = shadow.status()["dropped_records"].as_u64().unwrap();
    // Each of the shadow's decisions now loops for 200 ms: it takes a handful of records at most
    // meanwhile.
    assert!(dropped >= offered - 4_096 - 50, "{dropped} of {offered} dropped");

    // Detached, it stops replaying what is queued (4,096 decisions of 200 ms each otherwise):
    // once the decision under way ends, its count of requests no longer moves.
    assert!(c.cache.workload().shadows().remove(Slot::Eviction));
    let requests = || shadow.status()["shadow"]["requests"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let before = requests();
    std::thread::sleep(Duration::from_millis(1_000));
    assert_eq!(requests(), before, "a detached shadow went on replaying its queue");
}
