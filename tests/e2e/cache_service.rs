//! The image-volume cache through its service, on real parts: the redb catalog, the file
//! backend on a loop-mounted XFS with reflink, the built-in (and wasm) policies, file and HTTP
//! image sources. Cinder's semantics: miss then hit, limits and LRU eviction, invalidation,
//! not admitted, disabled, internal tenant quota, single-flight, events exactly once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use volcache::backend::file::FileBackend;
use volcache::backend::Backend;
use volcache::cache::{CacheConfig, CacheError, CacheEvent, CacheService, CreateVolume, InternalTenant, GIB};
use volcache::catalog::{CacheOutcome, Catalog, ImageRecord, Intent};
use volcache::image::convert::probe;
use volcache::image::source::Location;
use volcache::policy::{CinderLimits, PolicySet, SizeBasis};
use volcache::sparse::WriteMode;

use crate::backend::LoopFs;
use crate::fixtures::{cloud_like_raw, engine, MIB};

/// Fields drop in order: the service (and its open catalog) before the file system unmounts.
pub struct Harness {
    pub cache: Arc<CacheService>,
    pub events: tokio::sync::broadcast::Receiver<CacheEvent>,
    pub images: PathBuf,
    pub fs: LoopFs,
}

pub fn config(spool: &Path) -> CacheConfig {
    CacheConfig {
        enabled: true,
        host: "host-a".into(),
        cluster_name: None,
        write_mode: WriteMode::Thin,
        min_sparse: 4096,
        internal: InternalTenant {
            project_id: "internal-project".into(),
            user_id: "internal-user".into(),
            quota_gigabytes: 0,
            quota_volumes: 0,
        },
        spool_dir: spool.to_path_buf(),
        fill_wait: volcache::cache::DEFAULT_FILL_WAIT,
        file_sources: volcache::image::source::FileSources::Any,
        source_limits: Default::default(),
        url_sources: volcache::image::source::UrlSources::Any,
    }
}

impl Harness {
    pub fn new(limits: CinderLimits, tweak: impl FnOnce(&mut CacheConfig)) -> Harness {
        let fs = LoopFs::xfs();
        let images = fs.mnt.join("images");
        std::fs::create_dir_all(&images).unwrap();
        let catalog = Arc::new(Catalog::open(&fs.mnt.join("catalog.redb")).unwrap());
        let backend: Arc<dyn Backend> = Arc::new(FileBackend::new(fs.mnt.join("volumes")).unwrap());
        let policies = Arc::new(PolicySet::new(engine(), limits));
        let mut cfg = config(&fs.mnt);
        tweak(&mut cfg);
        let cache = Arc::new(CacheService::new(catalog, backend, policies, cfg));
        let events = cache.subscribe();
        Harness { cache, events, images, fs }
    }

    /// Registers a raw image of `size` bytes (sparse, a few MiB of data) as `id`.
    pub fn image(&self, id: &str, size: u64) -> ImageRecord {
        let path = self.images.join(format!("{id}.raw"));
        cloud_like_raw(&path, size);
        self.register(id, &path.display().to_string())
    }

    pub fn register(&self, id: &str, source: &str) -> ImageRecord {
        let (disk_format, virtual_size) =
            probe(&Location::parse(source).unwrap(), None, None, &Default::default()).unwrap();
        let stamp = volcache::cache::timestamp();
        let image = ImageRecord {
            id: id.into(),
            name: id.into(),
            source: source.into(),
            disk_format,
            checksum: None,
            virtual_size,
            updated_at: stamp.clone(),
            created_at: stamp,
            refresh_interval_seconds: None,
            source_version: None,
        };
        self.cache.catalog().write(|w| w.put_image(&image)).unwrap();
        image
    }

    pub fn create(&self, image: &str, size: u64) -> Result<volcache::cache::Created, CacheError> {
        self.cache.create_volume(&CreateVolume {
            image_id: image.into(),
            size,
            project_id: "project-1".into(),
            user_id: "user-1".into(),
        })
    }

    /// Events since the last call, as (type, image) pairs.
    pub fn drain(&mut self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            out.push((e.event_type.to_string(), e.image_id));
        }
        out
    }

    pub fn read_volume(&self, backend_name: &str) -> Vec<u8> {
        std::fs::read(self.fs.mnt.join("volumes").join(backend_name)).unwrap()
    }

    pub fn image_bytes(&self, id: &str) -> Vec<u8> {
        std::fs::read(self.images.join(format!("{id}.raw"))).unwrap()
    }

    pub fn backend_volumes(&self) -> Vec<String> {
        self.cache.backend().list().unwrap()
    }
}

fn ev(kind: &str, image: &str) -> (String, String) {
    (format!("image_volume_cache.{kind}"), image.to_string())
}

fn unlimited() -> CinderLimits {
    CinderLimits::default()
}

#[test]
fn miss_then_hit_clones_the_entry_and_the_user_volume_is_its_child() {
    let mut h = Harness::new(unlimited(), |_| {});
    h.image("cirros", 40 * MIB);
    let a = h.create("cirros", 1).unwrap();
    assert_eq!(a.volume.cache, Some(CacheOutcome::Miss));
    let b = h.create("cirros", 2).unwrap();
    assert_eq!(b.volume.cache, Some(CacheOutcome::Hit));
    assert_eq!(h.drain(), vec![ev("miss", "cirros"), ev("hit", "cirros")]);

    let entries = h.cache.scope_entries().unwrap();
    assert_eq!(entries.len(), 1);
    let cache_volume = h.cache.catalog().read(|r| r.volume(&entries[0].volume_id)).unwrap().unwrap();
    assert_eq!(cache_volume.project_id, "internal-project", "cache volumes belong to the internal tenant");
    assert_eq!(cache_volume.cache_entry, Some(entries[0].id));
    assert_eq!(entries[0].hit_count, 1);
    // The hit saved the download the fill made: its data, not the holes it skipped.
    let source_bytes = entries[0].source_bytes;
    assert!(source_bytes > 0 && source_bytes < 40 * MIB, "the fill read {source_bytes} bytes");
    assert_eq!(h.cache.stats().unwrap().bytes_not_downloaded, source_bytes);
    assert_eq!(h.cache.stats().unwrap().bytes_not_written, entries[0].allocated_bytes);

    // Both user volumes hold the image, grown to their size.
    let image = h.image_bytes("cirros");
    for (v, gib) in [(&a.volume, 1), (&b.volume, 2)] {
        let data = h.read_volume(&v.backend_name);
        assert_eq!(data.len() as u64, gib * GIB);
        assert_eq!(&data[..image.len()], &image[..]);
        assert!(data[image.len()..].iter().all(|&x| x == 0));
    }
    // Deleting a user volume leaves the entry; deleting the cache volume evicts the entry and
    // leaves the user's volumes whole.
    h.cache.delete_volume(&a.volume.id).unwrap();
    assert_eq!(h.cache.scope_entries().unwrap().len(), 1);
    h.cache.delete_volume(&cache_volume.id).unwrap();
    assert!(h.cache.scope_entries().unwrap().is_empty());
    assert_eq!(h.drain(), vec![ev("evict", "cirros")]);
    assert_eq!(&h.read_volume(&b.volume.backend_name)[..image.len()], &image[..]);
    let stats = h.cache.stats().unwrap();
    assert_eq!((stats.hits, stats.misses, stats.evictions, stats.entries), (1, 1, 1, 0));
}

#[test]
fn a_volume_smaller_than_the_image_is_refused_and_creates_nothing() {
    let mut h = Harness::new(unlimited(), |_| {});
    h.image("big", 3 * GIB / 2);
    let before = h.backend_volumes();
    assert!(matches!(h.create("big", 1), Err(CacheError::TooSmall { .. })));
    assert!(matches!(h.create("nope", 1), Err(CacheError::ImageNotFound(_))));
    assert_eq!(h.backend_volumes(), before);
    assert!(h.cache.catalog().read(|r| r.volumes()).unwrap().is_empty());
    assert!(h.drain().is_empty(), "a refused request is neither a hit nor a miss");
}

#[test]
fn lru_eviction_keeps_max_count_and_emits_one_evict_per_entry() {
    let limits = CinderLimits { max_size_gb: 0, max_count: 2, basis: SizeBasis::Provisioned };
    let mut h = Harness::new(limits, |_| {});
    for id in ["a", "b", "c"] {
        h.image(id, 16 * MIB);
    }
    h.create("a", 1).unwrap();
    h.create("b", 1).unwrap();
    h.create("a", 1).unwrap(); // a is now more recent than b
    h.create("c", 1).unwrap();
    let images: Vec<String> = h.cache.scope_entries().unwrap().into_iter().map(|e| e.image_id).collect();
    assert_eq!(images, vec!["a", "c"], "b was least recently used");
    assert_eq!(h.drain(), vec![ev("miss", "a"), ev("miss", "b"), ev("hit", "a"), ev("evict", "b"), ev("miss", "c")]);
    assert!(!h.backend_volumes().iter().any(|n| n == "cache-2"), "b's cache volume was removed");
}

#[test]
fn size_limit_in_gib_evicts_until_the_new_image_fits() {
    let limits = CinderLimits { max_size_gb: 3, max_count: 0, basis: SizeBasis::Provisioned };
    let mut h = Harness::new(limits, |_| {});
    h.image("one", 16 * MIB); // 1 GiB provisioned
    h.image("two", 3 * GIB / 2); // 2 GiB provisioned
    h.image("three", 5 * GIB / 2); // 3 GiB provisioned
    h.create("one", 1).unwrap();
    h.create("two", 2).unwrap();
    h.create("three", 3).unwrap();
    let entries = h.cache.scope_entries().unwrap();
    assert_eq!(entries.iter().map(|e| e.size).sum::<u64>(), 3);
    assert_eq!(entries.len(), 1);
    h.drain();
}

#[test]
fn an_image_larger_than_max_size_is_written_uncached() {
    let limits = CinderLimits { max_size_gb: 2, max_count: 0, basis: SizeBasis::Provisioned };
    let mut h = Harness::new(limits, |_| {});
    h.image("huge", 5 * GIB / 2);
    let v = h.create("huge", 3).unwrap();
    assert_eq!(v.volume.cache, Some(CacheOutcome::Uncached));
    assert!(v.uncached_reason.unwrap().contains("admission"));
    assert!(h.cache.scope_entries().unwrap().is_empty());
    assert_eq!(h.drain(), vec![ev("miss", "huge")]);
    let image = h.image_bytes("huge");
    assert_eq!(&h.read_volume(&v.volume.backend_name)[..image.len()], &image[..]);
}

#[test]
fn a_changed_image_evicts_its_entry_and_the_request_is_a_miss() {
    let mut h = Harness::new(unlimited(), |_| {});
    let mut image = h.image("img", 16 * MIB);
    h.create("img", 1).unwrap();
    image.updated_at = "2099-01-01T00:00:00.000Z".into();
    h.cache.catalog().write(|w| w.put_image(&image)).unwrap();
    let v = h.create("img", 1).unwrap();
    assert_eq!(v.volume.cache, Some(CacheOutcome::Miss));
    assert_eq!(h.drain(), vec![ev("miss", "img"), ev("evict", "img"), ev("miss", "img")]);
    let entries = h.cache.scope_entries().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].image_updated_at, image.updated_at);
    // Deleting the image evicts its entry.
    h.cache.delete_image("img").unwrap();
    assert!(h.cache.scope_entries().unwrap().is_empty());
    assert_eq!(h.drain(), vec![ev("evict", "img")]);
}

#[test]
fn disabled_cache_writes_directly_and_emits_nothing() {
    let mut h = Harness::new(unlimited(), |c| c.enabled = false);
    h.image("img", 16 * MIB);
    let v = h.create("img", 1).unwrap();
    assert_eq!(v.volume.cache, Some(CacheOutcome::Uncached));
    assert!(h.drain().is_empty());
    assert!(h.cache.scope_entries().unwrap().is_empty());
    // Written at the volume's size: the image, then zeros to 1 GiB.
    let (volume, image) = (h.read_volume(&v.volume.backend_name), h.image_bytes("img"));
    assert_eq!(volume.len() as u64, GIB);
    assert_eq!(&volume[..image.len()], &image[..]);
    assert!(volume[image.len()..].iter().all(|&b| b == 0));

    // The source grew past the volume since it was registered: an error, and no volume left.
    cloud_like_raw(&h.images.join("img.raw"), 3 * GIB / 2);
    let before = h.backend_volumes();
    let err = h.create("img", 1).unwrap_err().to_string();
    assert!(err.contains("does not fit"), "{err}");
    assert_eq!(h.backend_volumes(), before, "the half-written volume was removed");
}

#[test]
fn internal_tenant_quota_exhausted_still_creates_the_volume_uncached() {
    let mut h = Harness::new(unlimited(), |c| c.internal.quota_volumes = 1);
    h.image("a", 16 * MIB);
    h.image("b", 16 * MIB);
    h.create("a", 1).unwrap();
    let v = h.create("b", 1).unwrap();
    assert_eq!(v.volume.cache, Some(CacheOutcome::Uncached));
    assert!(v.uncached_reason.unwrap().contains("quota"), "the answer says why");
    assert_eq!(h.drain(), vec![ev("miss", "a"), ev("miss", "b")]);
}

#[test]
fn concurrent_creates_download_once_and_all_but_one_are_hits() {
    // An HTTP source that counts downloads.
    let mut h = Harness::new(unlimited(), |_| {});
    let raw = h.images.join("shared.raw");
    cloud_like_raw(&raw, 24 * MIB);
    let mut routes = HashMap::new();
    routes.insert("/shared.raw".to_string(), std::fs::read(&raw).unwrap());
    let server = crate::http_sources::CountingServer::start(routes);
    h.register("shared", &server.url("/shared.raw"));
    let downloads_before = server.hits("/shared.raw");

    let threads: Vec<_> = (0..6)
        .map(|_| {
            let cache = h.cache.clone();
            std::thread::spawn(move || {
                cache.create_volume(&CreateVolume {
                    image_id: "shared".into(),
                    size: 1,
                    project_id: "p".into(),
                    user_id: "u".into(),
                })
            })
        })
        .collect();
    let outcomes: Vec<CacheOutcome> =
        threads.into_iter().map(|t| t.join().unwrap().unwrap().volume.cache.unwrap()).collect();
    assert_eq!(server.hits("/shared.raw") - downloads_before, 1, "exactly one download");
    assert_eq!(outcomes.iter().filter(|o| **o == CacheOutcome::Miss).count(), 1);
    assert_eq!(outcomes.iter().filter(|o| **o == CacheOutcome::Hit).count(), 5);
    let events = h.drain();
    assert_eq!(events.iter().filter(|e| e.0.ends_with("miss")).count(), 1);
    assert_eq!(events.iter().filter(|e| e.0.ends_with("hit")).count(), 5);
    let stats = h.cache.stats().unwrap();
    assert_eq!((stats.fills, stats.misses, stats.hits, stats.entries), (1, 1, 5, 1));
}

#[test]
fn reconcile_removes_what_a_crash_left_and_never_a_users_volume() {
    let h = Harness::new(unlimited(), |_| {});
    h.image("img", 16 * MIB);
    let user = h.create("img", 1).unwrap();
    let backend = h.cache.backend();
    // A fill that died after creating its volume, a user create that died after cloning, an
    // orphan cache volume, and a user volume the catalog does not know (set aside, never
    // removed: a clone cut off before its record looks like this, as clones record no intent).
    backend.create("cache-77", MIB).unwrap();
    backend.create("volume-lost", MIB).unwrap();
    backend.create("cache-99", MIB).unwrap();
    backend.create("volume-foreign", MIB).unwrap();
    h.cache
        .catalog()
        .write(|w| {
            w.begin(Intent::Fill { entry_id: 77, volume_id: "v77".into(), backend_name: "cache-77".into() }, 0)?;
            w.begin(Intent::Create { volume_id: "lost".into(), backend_name: "volume-lost".into() }, 0)
        })
        .unwrap();
    let done = h.cache.reconcile().unwrap();
    assert_eq!(done.intents_resolved, 2);
    assert_eq!(done.orphan_cache_volumes_removed, vec!["cache-99".to_string()]);
    let left = h.backend_volumes();
    assert!(!left.contains(&"cache-77".to_string()));
    // The half-made user volumes are set aside under the quarantine project, never removed.
    assert_eq!(done.quarantined, vec!["lost".to_string(), "foreign".to_string()]);
    assert!(left.contains(&"volume-lost".to_string()));
    let lost = h.cache.catalog().read(|r| r.volume("lost")).unwrap().unwrap();
    assert_eq!(lost.project_id, volcache::cache::recover::QUARANTINE_PROJECT);
    assert!(left.contains(&"volume-foreign".to_string()), "an unknown user volume is never removed");
    let foreign = h.cache.catalog().read(|r| r.volume("foreign")).unwrap().unwrap();
    assert_eq!(foreign.project_id, volcache::cache::recover::QUARANTINE_PROJECT);
    assert!(left.contains(&user.volume.backend_name));
    assert_eq!(h.cache.scope_entries().unwrap().len(), 1);
    assert!(h.cache.catalog().read(|r| r.intents()).unwrap().is_empty());
}
