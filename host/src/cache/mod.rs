//! The image-volume cache: create volumes from images, Cinder's way, without Cinder's defects.
//!
//! A create looks up the image's entry in this cache scope. On a **hit** the entry's volume is
//! cloned (copy-on-write) and grown. On a **miss** the request joins the single flight for the
//! image; its leader asks the policies (admission, capacity, eviction), evicts what they chose,
//! writes the image thin into a new cache volume owned by the internal tenant, records the
//! entry, and every waiting request then clones from it (they count as hits; only the leader is
//! the miss). When the image is not admitted, or the internal tenant has no room, the volume is
//! written directly (**uncached**). An entry whose image changed (`updated_at`) is evicted and
//! the request is a miss.
//!
//! Every multi-step change is an intent in the catalog before it starts and is cleared in the
//! same transaction that records its result; [`reconcile`] finishes or undoes what a crash left.
//! Cache housekeeping only ever removes cache volumes, never a user's.
#![forbid(unsafe_code)]

pub mod events;
pub mod flight;
pub mod reconcile;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

use crate::backend::{Backend, BackendError};
use crate::catalog::{CacheOutcome, Catalog, CatalogError, EntryRecord, ImageRecord, Intent, VolumeRecord, Writer};
use crate::fault;
use crate::image::convert::{write_image, ConvertOptions};
use crate::image::source::Location;
use crate::image::ImageError;
use crate::policy::{Candidate, Entry, Plan, PolicyEvent, PolicySet, View};
use crate::sparse::{Target, WriteMode};
pub use events::{CacheEvent, EvictReason};
use flight::{Filled, Flights, Role};

pub const GIB: u64 = 1 << 30;

/// The internal tenant that owns cache volumes, and its quota (0 = unlimited).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InternalTenant {
    pub project_id: String,
    pub user_id: String,
    pub quota_gigabytes: u64,
    pub quota_volumes: u64,
}

/// How one backend's cache behaves (Cinder's per-backend options).
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// `image_volume_cache_enabled`.
    pub enabled: bool,
    pub host: String,
    /// Hosts sharing a backend share one cache scope, named by their cluster.
    pub cluster_name: Option<String>,
    /// `filesystem_thin_provisioning` / `rbd_thin_provisioning`.
    pub write_mode: WriteMode,
    pub min_sparse: u64,
    pub internal: InternalTenant,
    /// Where qcow2 downloads are spooled.
    pub spool_dir: PathBuf,
}

impl CacheConfig {
    /// The cache scope: the cluster when there is one, else the host.
    pub fn scope(&self) -> &str {
        self.cluster_name.as_deref().unwrap_or(&self.host)
    }
}

/// A create request (Cinder's `POST /volumes` with `imageRef`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateVolume {
    pub image_id: String,
    /// GiB.
    pub size: u64,
    pub project_id: String,
    pub user_id: String,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("image {0} not found")]
    ImageNotFound(String),
    #[error("volume {0} not found")]
    VolumeNotFound(String),
    #[error("cache entry {0} not found")]
    EntryNotFound(u64),
    #[error("a volume of {size} GiB cannot hold image {image_id}, whose virtual size is {virtual_size} bytes")]
    TooSmall { image_id: String, size: u64, virtual_size: u64 },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("image {image_id}: {source}")]
    Image { image_id: String, source: ImageError },
    #[error("the fill of image {image_id} that this request waited for failed: {message}")]
    FillFailed { image_id: String, message: String },
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// What a create did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Created {
    pub volume: VolumeRecord,
    /// Why the volume was not cached, when it was not.
    pub uncached_reason: Option<String>,
}

/// Counters since the catalog was created.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub entries: u64,
    pub cache_bytes_allocated: u64,
    pub cache_gigabytes: u64,
    /// Image bytes not downloaded thanks to hits.
    pub bytes_not_downloaded: u64,
    /// Bytes not written thanks to hits.
    pub bytes_not_written: u64,
    pub fills: u64,
    pub fill_ms_total: u64,
    pub uncached: u64,
    /// Evicted cache volumes whose storage is still held because volumes cloned from them
    /// live (RBD trash), and the bytes they hold. Freed with their last clone.
    pub evicted_volumes_held: u64,
    pub evicted_bytes_held: u64,
}

/// What a leader's fill did.
enum FillOutcome {
    Filled(EntryRecord),
    /// Not cached, and why.
    Skipped(String),
}

/// The cache of one backend.
#[derive(Debug)]
pub struct CacheService {
    catalog: Arc<Catalog>,
    backend: Arc<dyn Backend>,
    policies: Arc<PolicySet>,
    config: CacheConfig,
    events: broadcast::Sender<CacheEvent>,
    flights: Flights,
    /// The last use time handed out; see [`CacheService::use_time`].
    last_use: std::sync::atomic::AtomicU64,
    fill_seconds: FillHistogram,
}

/// Upper bounds (seconds) of the fill duration histogram's buckets.
const FILL_BUCKETS: [f64; 10] = [0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, f64::INFINITY];

/// Fill durations since start, for `/metrics`.
#[derive(Debug, Default)]
struct FillHistogram {
    counts: [std::sync::atomic::AtomicU64; FILL_BUCKETS.len()],
    sum_ms: std::sync::atomic::AtomicU64,
}

/// A copy of the fill histogram: (upper bound in seconds, count in that bucket alone).
#[derive(Clone, Debug, PartialEq)]
pub struct FillSnapshot {
    pub buckets: Vec<(f64, u64)>,
    pub sum_seconds: f64,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// RFC 3339 UTC with milliseconds, like Cinder's timestamps.
pub fn timestamp() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// A random UUID (v4) for volume ids.
pub fn new_uuid() -> String {
    let mut b = [0u8; 16];
    if rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).is_err() {
        // Unique enough without entropy: time and a counter.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        b[..8].copy_from_slice(&now_ms().to_le_bytes());
        b[8..].copy_from_slice(&N.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_le_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

impl CacheService {
    pub fn new(
        catalog: Arc<Catalog>,
        backend: Arc<dyn Backend>,
        policies: Arc<PolicySet>,
        config: CacheConfig,
    ) -> Self {
        let (events, _) = broadcast::channel(1024);
        CacheService {
            catalog,
            backend,
            policies,
            config,
            events,
            flights: Flights::default(),
            last_use: Default::default(),
            fill_seconds: FillHistogram::default(),
        }
    }

    /// Fill durations since this process started.
    pub fn fill_histogram(&self) -> FillSnapshot {
        use std::sync::atomic::Ordering;
        let h = &self.fill_seconds;
        FillSnapshot {
            buckets: FILL_BUCKETS.iter().zip(&h.counts).map(|(le, c)| (*le, c.load(Ordering::Relaxed))).collect(),
            sum_seconds: h.sum_ms.load(Ordering::Relaxed) as f64 / 1e3,
        }
    }

    /// A use time in milliseconds that is later than every one handed out before: two uses in
    /// the same millisecond must still be ordered, or LRU would break the tie by id and could
    /// evict the entry used last.
    fn use_time(&self) -> u64 {
        use std::sync::atomic::Ordering;
        let now = now_ms();
        let prev = self.last_use.fetch_max(now, Ordering::SeqCst);
        if prev < now {
            return now;
        }
        self.last_use.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    pub fn policies(&self) -> &Arc<PolicySet> {
        &self.policies
    }

    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Notifications: every hit, miss and eviction from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<CacheEvent> {
        self.events.subscribe()
    }

    fn emit(&self, event_type: &'static str, image_id: &str, volume_id: &str, size: u64, reason: Option<EvictReason>) {
        tracing::info!(event = event_type, image_id, volume_id, size, ?reason, "cache event");
        let _ = self.events.send(CacheEvent {
            event_type,
            image_id: image_id.to_string(),
            host: self.config.host.clone(),
            volume_id: volume_id.to_string(),
            size,
            reason,
        });
    }

    fn options(&self, image: &ImageRecord) -> ConvertOptions {
        ConvertOptions {
            format: Some(image.disk_format),
            min_sparse: self.config.min_sparse,
            mode: self.config.write_mode,
            expected: crate::image::source::Expected { md5: image.checksum.clone(), hash: None },
            token: std::env::var("OS_AUTH_TOKEN").ok().filter(|t| !t.is_empty()),
            length: None,
        }
    }

    /// Creates a volume from an image: hit, miss or uncached, as the module docs say.
    pub fn create_volume(&self, req: &CreateVolume) -> Result<Created, CacheError> {
        let image = self
            .catalog
            .read(|r| r.image(&req.image_id))?
            .ok_or_else(|| CacheError::ImageNotFound(req.image_id.clone()))?;
        if req.size == 0 || req.size.saturating_mul(GIB) < image.virtual_size {
            return Err(CacheError::TooSmall { image_id: image.id, size: req.size, virtual_size: image.virtual_size });
        }
        let span = tracing::info_span!("create_volume", image_id = %image.id, size = req.size);
        let _enter = span.enter();
        if !self.config.enabled {
            return self.direct(req, &image, "the image-volume cache is disabled on this backend".into(), false);
        }
        let scope = self.config.scope().to_string();
        if let Some(entry) = self.catalog.read(|r| r.entry_for(&scope, &image.id))? {
            if entry.image_updated_at == image.updated_at {
                return self.hit(req, &image, &entry);
            }
            self.evict(&entry, EvictReason::Stale)?;
        }
        let key = format!("{scope}\0{}", image.id);
        match self.flights.join(&key) {
            Role::Leader(flight) => {
                let started = Instant::now();
                let result = self.fill(&image);
                let published = match &result {
                    Ok(FillOutcome::Filled(entry)) => Filled::Entry(entry.id),
                    Ok(FillOutcome::Skipped(reason)) => Filled::NotCached(reason.clone()),
                    Err(e) => Filled::Failed(e.to_string()),
                };
                self.flights.finish(&key, &flight, published);
                match result? {
                    FillOutcome::Filled(entry) => {
                        let ms = started.elapsed().as_millis() as u64;
                        let seconds = ms as f64 / 1e3;
                        let bucket =
                            FILL_BUCKETS.iter().position(|le| seconds <= *le).unwrap_or(FILL_BUCKETS.len() - 1);
                        self.fill_seconds.counts[bucket].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        self.fill_seconds.sum_ms.fetch_add(ms, std::sync::atomic::Ordering::Relaxed);
                        self.catalog.write(|w| {
                            w.add("fills", 1)?;
                            w.add("fill_ms_total", ms)
                        })?;
                        let created = self.clone_from(req, &entry, CacheOutcome::Miss, |_| Ok(()))?;
                        self.count_miss(&image, &created.volume)?;
                        Ok(created)
                    }
                    FillOutcome::Skipped(reason) => self.direct(req, &image, reason, true),
                }
            }
            Role::Follower(flight) => match flight.wait() {
                Filled::Entry(id) => match self.catalog.read(|r| r.entry(id))? {
                    Some(entry) => self.hit(req, &image, &entry),
                    // Evicted in the instant between the fill and this clone: write it directly.
                    None => {
                        self.direct(req, &image, "the entry was evicted before this request could use it".into(), true)
                    }
                },
                Filled::NotCached(reason) => self.direct(req, &image, reason, true),
                Filled::Failed(message) => Err(CacheError::FillFailed { image_id: image.id.clone(), message }),
            },
        }
    }

    fn count_miss(&self, image: &ImageRecord, volume: &VolumeRecord) -> Result<(), CacheError> {
        self.catalog.write(|w| w.add("misses", 1))?;
        self.emit(events::MISS, &image.id, &volume.id, volume.size, None);
        Ok(())
    }

    /// A hit: clone the entry, grow it, record the volume, bump the entry.
    fn hit(&self, req: &CreateVolume, image: &ImageRecord, entry: &EntryRecord) -> Result<Created, CacheError> {
        let now = self.use_time();
        let scope = self.config.scope().to_string();
        // Bumping the entry commits with the volume's record: one transaction, not two.
        let created = self.clone_from(req, entry, CacheOutcome::Hit, |w| {
            if let Some(mut e) = w.entry(entry.id)? {
                e.last_used_ms = now;
                e.last_used = timestamp();
                e.hit_count += 1;
                w.put_entry(&scope, &e)?;
            }
            w.add("hits", 1)?;
            w.add("bytes_not_downloaded", entry.source_bytes)?;
            w.add("bytes_not_written", entry.allocated_bytes).map(drop)
        })?;
        self.policies.notify(&PolicyEvent::Hit { id: entry.id, now_ms: now });
        self.emit(events::HIT, &image.id, &created.volume.id, created.volume.size, None);
        Ok(created)
    }

    fn user_volume(&self, req: &CreateVolume, outcome: CacheOutcome) -> VolumeRecord {
        let id = new_uuid();
        VolumeRecord {
            backend_name: format!("volume-{id}"),
            id,
            size: req.size,
            image_id: Some(req.image_id.clone()),
            project_id: req.project_id.clone(),
            user_id: req.user_id.clone(),
            cache: Some(outcome),
            cache_entry: None,
            created_at: timestamp(),
        }
    }

    /// Clones the user's volume from a cache entry: the user's volume is the child, never the
    /// parent. `also` runs in the transaction that records the volume.
    fn clone_from(
        &self,
        req: &CreateVolume,
        entry: &EntryRecord,
        outcome: CacheOutcome,
        also: impl FnOnce(&mut Writer<'_>) -> Result<(), CatalogError>,
    ) -> Result<Created, CacheError> {
        let volume = self.user_volume(req, outcome);
        let source = self
            .catalog
            .read(|r| r.volume(&entry.volume_id))?
            .ok_or_else(|| CacheError::VolumeNotFound(entry.volume_id.clone()))?;
        let intent = Intent::Create { volume_id: volume.id.clone(), backend_name: volume.backend_name.clone() };
        let intent_id = self.catalog.write(|w| w.begin(intent, now_ms()))?;
        fault::point("clone:after-intent");
        let undo = |e: CacheError| {
            let _ = self.backend.remove(&volume.backend_name);
            let _ = self.catalog.write(|w| w.end(intent_id));
            e
        };
        let mode = self.backend.clone_volume(&source.backend_name, &volume.backend_name).map_err(|e| undo(e.into()))?;
        fault::point("clone:after-clone");
        self.backend.resize(&volume.backend_name, volume.size * GIB).map_err(|e| undo(e.into()))?;
        fault::point("clone:after-resize");
        self.catalog
            .write(|w| {
                w.put_volume(&volume)?;
                also(w)?;
                w.end(intent_id)
            })
            .map_err(|e| undo(e.into()))?;
        tracing::info!(volume_id = %volume.id, entry = entry.id, ?mode, "volume cloned from the cache");
        Ok(Created { volume, uncached_reason: None })
    }

    /// Writes the image straight into a new user volume (cache disabled or not admitted).
    fn direct(
        &self,
        req: &CreateVolume,
        image: &ImageRecord,
        reason: String,
        was_miss: bool,
    ) -> Result<Created, CacheError> {
        let volume = self.user_volume(req, CacheOutcome::Uncached);
        let intent = Intent::Create { volume_id: volume.id.clone(), backend_name: volume.backend_name.clone() };
        let intent_id = self.catalog.write(|w| w.begin(intent, now_ms()))?;
        let undo = |e: CacheError| {
            let _ = self.backend.remove(&volume.backend_name);
            let _ = self.catalog.write(|w| w.end(intent_id));
            e
        };
        self.backend.create(&volume.backend_name, volume.size * GIB).map_err(|e| undo(e.into()))?;
        // Written at the volume's size: the bytes past the image stay zeros, nothing is resized.
        self.write_into(image, &volume.backend_name, Some(volume.size * GIB)).map_err(undo)?;
        fault::point("direct:after-write");
        self.catalog
            .write(|w| {
                w.put_volume(&volume)?;
                w.add("uncached", 1)?;
                w.end(intent_id)
            })
            .map_err(|e| undo(e.into()))?;
        if was_miss {
            self.count_miss(image, &volume)?;
        }
        tracing::info!(volume_id = %volume.id, %reason, "volume written without the cache");
        Ok(Created { volume, uncached_reason: Some(reason) })
    }

    /// Writes the image into a backend volume, which ends `length` bytes long (default: the
    /// image's virtual size); returns the bytes read from its source.
    fn write_into(&self, image: &ImageRecord, backend_name: &str, length: Option<u64>) -> Result<u64, CacheError> {
        let device = self.backend.open(backend_name)?;
        let location = Location::parse(&image.source)
            .map_err(|source| CacheError::Image { image_id: image.id.clone(), source })?;
        let report = write_image(
            &location,
            &*device,
            Target::Fresh,
            &self.config.spool_dir,
            &ConvertOptions { length, ..self.options(image) },
            &mut |_, _| {},
        )
        .map_err(|source| CacheError::Image { image_id: image.id.clone(), source })?;
        device.sync_all().map_err(|e| BackendError::Io { op: "sync", name: backend_name.into(), source: e })?;
        Ok(report.bytes_read)
    }

    /// The policy view of this scope.
    pub fn view(&self) -> Result<View, CacheError> {
        let entries = self.scope_entries()?;
        let entries = entries
            .iter()
            .map(|e| Entry {
                id: e.id,
                size_gib: e.size,
                allocated_bytes: e.allocated_bytes,
                last_used_ms: e.last_used_ms,
                created_ms: e.created_ms,
                hits: e.hit_count,
                pinned: e.pinned,
            })
            .collect();
        Ok(View::new(entries, now_ms()))
    }

    /// Entries of this cache scope.
    pub fn scope_entries(&self) -> Result<Vec<EntryRecord>, CacheError> {
        let scope = self.config.scope();
        Ok(self
            .catalog
            .read(|r| r.entries())?
            .into_iter()
            .filter(|e| e.cluster_name.as_deref().unwrap_or(&e.host) == scope)
            .collect())
    }

    fn candidate(image: &ImageRecord) -> Candidate {
        Candidate {
            image_id: image.id.clone(),
            size_gib: image.virtual_size.div_ceil(GIB).max(1),
            virtual_size_bytes: image.virtual_size,
            allocated_bytes: image.virtual_size,
        }
    }

    /// Fills a cache entry for `image`, unless the policies or the internal tenant's quota
    /// say no.
    fn fill(&self, image: &ImageRecord) -> Result<FillOutcome, CacheError> {
        let view = self.view()?;
        let candidate = Self::candidate(image);
        let victims = match self.policies.plan(&candidate, &view) {
            Plan::Skip { slot, reason } => {
                tracing::info!(image_id = %image.id, %slot, %reason, "image not admitted to the cache");
                return Ok(FillOutcome::Skipped(format!("{slot} policy: {reason}")));
            }
            Plan::Cache { victims, .. } => victims,
        };
        // The internal tenant's quota bounds the cache too, counted after the evictions.
        let q = &self.config.internal;
        let left: Vec<Entry> = view.entries().filter(|e| !victims.contains(&e.id)).collect();
        let gigabytes = left.iter().map(|e| e.size_gib).sum::<u64>() + candidate.size_gib;
        let over_gigabytes = q.quota_gigabytes > 0 && gigabytes > q.quota_gigabytes;
        let over_volumes = q.quota_volumes > 0 && left.len() as u64 + 1 > q.quota_volumes;
        if over_gigabytes || over_volumes {
            tracing::warn!(image_id = %image.id, "internal tenant quota exhausted: volume created uncached");
            return Ok(FillOutcome::Skipped(format!(
                "the internal tenant {} has no quota left ({} GiB / {} volumes allowed)",
                q.project_id, q.quota_gigabytes, q.quota_volumes
            )));
        }
        for id in victims {
            if let Some(entry) = self.catalog.read(|r| r.entry(id))? {
                self.evict(&entry, EvictReason::Capacity)?;
            }
        }
        self.fill_entry(image, &candidate).map(FillOutcome::Filled)
    }

    fn fill_entry(&self, image: &ImageRecord, candidate: &Candidate) -> Result<EntryRecord, CacheError> {
        let entry_id = self.catalog.write(|w| w.next_id("entry"))?;
        let volume_id = new_uuid();
        let backend_name = format!("cache-{entry_id}");
        let intent = Intent::Fill { entry_id, volume_id: volume_id.clone(), backend_name: backend_name.clone() };
        let intent_id = self.catalog.write(|w| w.begin(intent, now_ms()))?;
        fault::point("fill:after-intent");
        let undo = |e: CacheError| {
            let _ = self.backend.remove(&backend_name);
            let _ = self.catalog.write(|w| w.end(intent_id));
            e
        };
        self.backend.create(&backend_name, candidate.size_gib * GIB).map_err(|e| undo(e.into()))?;
        fault::point("fill:after-create");
        let source_bytes = self.write_into(image, &backend_name, None).map_err(undo)?;
        self.backend.seal(&backend_name).map_err(|e| undo(e.into()))?;
        fault::point("fill:after-write");
        let allocated = self.backend.allocated_bytes(&backend_name).map_err(|e| undo(e.into()))?;
        let (now, stamp) = (self.use_time(), timestamp());
        let q = &self.config.internal;
        let volume = VolumeRecord {
            id: volume_id.clone(),
            backend_name: backend_name.clone(),
            size: candidate.size_gib,
            image_id: Some(image.id.clone()),
            project_id: q.project_id.clone(),
            user_id: q.user_id.clone(),
            cache: None,
            cache_entry: Some(entry_id),
            created_at: stamp.clone(),
        };
        let entry = EntryRecord {
            id: entry_id,
            host: self.config.host.clone(),
            cluster_name: self.config.cluster_name.clone(),
            image_id: image.id.clone(),
            image_updated_at: image.updated_at.clone(),
            volume_id,
            size: candidate.size_gib,
            last_used: stamp,
            last_used_ms: now,
            created_ms: now,
            allocated_bytes: allocated,
            source_bytes,
            hit_count: 0,
            pinned: false,
        };
        let scope = self.config.scope().to_string();
        self.catalog
            .write(|w| {
                w.put_volume(&volume)?;
                w.put_entry(&scope, &entry)?;
                w.end(intent_id)
            })
            .map_err(|e| undo(e.into()))?;
        self.policies.notify(&PolicyEvent::Insert(Entry {
            id: entry.id,
            size_gib: entry.size,
            allocated_bytes: allocated,
            last_used_ms: now,
            created_ms: now,
            hits: 0,
            pinned: false,
        }));
        tracing::info!(image_id = %image.id, entry = entry_id, allocated, "cache entry filled");
        Ok(entry)
    }

    /// Removes an entry and its cache volume. The catalog row goes first, with an intent in the
    /// same transaction, so no request can clone from a volume that is being removed.
    pub fn evict(&self, entry: &EntryRecord, reason: EvictReason) -> Result<(), CacheError> {
        let scope = self.config.scope().to_string();
        let backend_name = self
            .catalog
            .read(|r| r.volume(&entry.volume_id))?
            .map(|v| v.backend_name)
            .unwrap_or_else(|| format!("cache-{}", entry.id));
        let intent = Intent::Evict {
            entry_id: entry.id,
            volume_id: entry.volume_id.clone(),
            backend_name: backend_name.clone(),
        };
        let intent_id = self.catalog.write(|w| {
            let id = w.begin(intent, now_ms())?;
            w.delete_entry(&scope, entry.id)?;
            w.delete_volume(&entry.volume_id)?;
            Ok(id)
        })?;
        fault::point("evict:after-catalog");
        self.backend.remove(&backend_name)?;
        self.catalog.write(|w| {
            w.add("evictions", 1)?;
            w.end(intent_id)
        })?;
        self.policies.notify(&PolicyEvent::Evict { id: entry.id });
        self.emit(events::EVICT, &entry.image_id, &entry.volume_id, entry.size, Some(reason));
        Ok(())
    }

    /// Evicts entry `id` by hand.
    pub fn evict_entry(&self, id: u64) -> Result<EntryRecord, CacheError> {
        let entry = self.catalog.read(|r| r.entry(id))?.ok_or(CacheError::EntryNotFound(id))?;
        self.evict(&entry, EvictReason::Operator)?;
        Ok(entry)
    }

    /// Deletes a volume. Deleting a cache volume evicts its entry; deleting a user's volume never
    /// touches the cache entry it was cloned from.
    pub fn delete_volume(&self, id: &str) -> Result<(), CacheError> {
        let volume = self.catalog.read(|r| r.volume(id))?.ok_or_else(|| CacheError::VolumeNotFound(id.into()))?;
        if let Some(entry_id) = volume.cache_entry {
            if let Some(entry) = self.catalog.read(|r| r.entry(entry_id))? {
                return self.evict(&entry, EvictReason::Operator);
            }
        }
        let intent = Intent::Delete { volume_id: volume.id.clone(), backend_name: volume.backend_name.clone() };
        let intent_id = self.catalog.write(|w| {
            let intent_id = w.begin(intent, now_ms())?;
            w.delete_volume(&volume.id)?;
            Ok(intent_id)
        })?;
        self.backend.remove(&volume.backend_name)?;
        self.catalog.write(|w| w.end(intent_id))?;
        Ok(())
    }

    /// Deletes an image and evicts its entries.
    pub fn delete_image(&self, id: &str) -> Result<(), CacheError> {
        for entry in self.scope_entries()?.into_iter().filter(|e| e.image_id == id) {
            self.evict(&entry, EvictReason::ImageDeleted)?;
        }
        if !self.catalog.write(|w| w.delete_image(id))? {
            return Err(CacheError::ImageNotFound(id.into()));
        }
        Ok(())
    }

    pub fn stats(&self) -> Result<Stats, CacheError> {
        let entries = self.scope_entries()?;
        let held = self.backend.held()?;
        Ok(self.catalog.read(|r| {
            Ok(Stats {
                hits: r.counter("hits")?,
                misses: r.counter("misses")?,
                evictions: r.counter("evictions")?,
                entries: entries.len() as u64,
                cache_bytes_allocated: entries.iter().map(|e| e.allocated_bytes).sum(),
                cache_gigabytes: entries.iter().map(|e| e.size).sum(),
                bytes_not_downloaded: r.counter("bytes_not_downloaded")?,
                bytes_not_written: r.counter("bytes_not_written")?,
                fills: r.counter("fills")?,
                fill_ms_total: r.counter("fill_ms_total")?,
                uncached: r.counter("uncached")?,
                evicted_volumes_held: held.volumes,
                evicted_bytes_held: held.bytes,
            })
        })?)
    }
}
