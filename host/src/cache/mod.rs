//! The image-volume cache: create volumes from images, Cinder's way, without Cinder's defects.
//!
//! A create looks up the image's entry in this cache scope. On a **hit** the request takes a
//! lease on the entry ([`ledger`]), clones its volume (copy-on-write) and grows it. On a
//! **miss** the request joins the single flight for the image ([`flight`]); its leader evicts a
//! stale entry, asks the policies over a view that counts every fill in progress, **reserves**
//! its size and slot, writes the image thin into a new cache volume owned by the internal
//! tenant, and commits the entry together with the removal of its victims ([`fill`]). Waiting
//! requests then clone from it (they count as hits; only the leader is the miss). When the
//! image is not admitted, or the internal tenant has no room, the volume is written directly
//! (**uncached**). A failed fill releases its reservation and evicts nothing.
//!
//! Files: [`create`] (the request flow: hit, miss, direct), [`fill`] (reservations and the fill
//! commit), [`evict`] (eviction, deletes, deferred removals), [`images`] (image records),
//! [`intent`] (the intent lifecycle), [`reconcile`] (start-up repair), [`stats`].
//! The design, with the entry state machine and the crash model, is in docs/ARCHITECTURE.md.
//!
//! Every multi-step change is an intent in the catalog before it starts and is cleared in the
//! same transaction that records its result. Cache housekeeping only ever removes cache
//! volumes, never a user's.
#![forbid(unsafe_code)]

pub mod create;
pub mod events;
pub mod evict;
pub mod expire;
pub mod fill;
pub mod flight;
pub mod images;
pub mod intent;
pub mod ledger;
pub mod reconcile;
pub mod recover;
pub mod refresh;
pub mod stats;
pub mod warm;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

use crate::backend::{Backend, BackendError};
use crate::catalog::{Catalog, CatalogError, EntryRecord, ImageRecord, VolumeRecord};
use crate::image::convert::ConvertOptions;
use crate::image::ImageError;
use crate::policy::{Entry, PolicySet, View};
use crate::sparse::WriteMode;
pub use events::{CacheEvent, EvictReason};
use flight::Flights;
pub use flight::{Cancel, Failure, FailureClass};
use ledger::Ledger;
pub use stats::{FillSnapshot, Stats};

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
    /// How long a request waits for another request's fill of the same image.
    pub fill_wait: Duration,
    /// Which local files may be image sources (`image_source_dirs`).
    pub file_sources: crate::image::source::FileSources,
    /// Bounds on downloads (`[sources]`).
    pub source_limits: crate::image::source::SourceLimits,
    /// Which URLs may be image sources (`image_source_urls`).
    pub url_sources: crate::image::source::UrlSources,
}

/// The default of [`CacheConfig::fill_wait`].
pub const DEFAULT_FILL_WAIT: Duration = Duration::from_secs(30 * 60);

impl CacheConfig {
    /// A cache with the daemon's defaults (enabled, thin, 4 KiB zero detection, the internal
    /// tenant `volcache-internal` without quota) that reads any source: for benchmarks, fuzz
    /// targets and embedding. The daemon builds its own from the validated configuration.
    pub fn new(host: &str, spool_dir: PathBuf) -> CacheConfig {
        CacheConfig {
            enabled: true,
            host: host.to_string(),
            cluster_name: None,
            write_mode: WriteMode::Thin,
            min_sparse: crate::sparse::DEFAULT_MIN_SPARSE,
            internal: InternalTenant {
                project_id: "volcache-internal".into(),
                user_id: "volcache-internal".into(),
                quota_gigabytes: 0,
                quota_volumes: 0,
            },
            spool_dir,
            fill_wait: DEFAULT_FILL_WAIT,
            file_sources: crate::image::source::FileSources::Any,
            source_limits: Default::default(),
            url_sources: crate::image::source::UrlSources::Any,
        }
    }

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
    #[error("{0}")]
    Conflict(String),
    /// Not allowed for this caller, whatever the state.
    #[error("{0}")]
    Forbidden(String),
    #[error("image {image_id}: {source}")]
    Image { image_id: String, source: ImageError },
    #[error("the fill of image {image_id} that this request waited for failed: {}", failure.message)]
    FillFailed { image_id: String, failure: Failure },
    #[error("image {image_id} was deleted while this request was creating a volume from it")]
    ImageGone { image_id: String },
    #[error("gave up waiting {waited_s} s for another request's fill of image {image_id}; retry later")]
    WaitTimedOut { image_id: String, waited_s: u64 },
    #[error("the client went away")]
    Cancelled,
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

impl CacheError {
    /// How this failure should be reported: whose fault, retryable or not.
    pub fn class(&self) -> FailureClass {
        // EFBIG: the file system cannot hold a file that large (a 16 TiB volume on ext4).
        let no_space = |e: &std::io::Error| matches!(e.raw_os_error(), Some(code) if code == libc::ENOSPC || code == libc::EDQUOT || code == libc::EFBIG);
        match self {
            CacheError::Image { source: ImageError::Write(e), .. } if no_space(e) => FailureClass::NoSpace,
            CacheError::Image { source: ImageError::Write(_), .. } => FailureClass::Unavailable,
            CacheError::Image { .. } => FailureClass::Source,
            CacheError::FillFailed { failure, .. } => failure.class,
            CacheError::ImageGone { .. } => FailureClass::ImageGone,
            CacheError::Backend(BackendError::Io { source, .. }) if no_space(source) => FailureClass::NoSpace,
            CacheError::Catalog(CatalogError::Io(m)) if m.contains("No space left") => FailureClass::NoSpace,
            _ => FailureClass::Unavailable,
        }
    }

    /// What waiting requests are told of a leader's failure: the image's own problem in full,
    /// a storage problem without internals.
    pub(crate) fn failure(&self) -> Failure {
        let class = self.class();
        let message = match class {
            FailureClass::Source | FailureClass::ImageGone => self.to_string(),
            FailureClass::NoSpace => "the backend has no space left for the cache entry".into(),
            FailureClass::Unavailable => "the backend or the catalog failed while filling the cache entry".into(),
        };
        Failure { class, message }
    }
}

/// What a create did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Created {
    pub volume: VolumeRecord,
    /// Why the volume was not cached, when it was not.
    pub uncached_reason: Option<String>,
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

/// The cache of one backend.
#[derive(Debug)]
pub struct CacheService {
    catalog: Arc<Catalog>,
    backend: Arc<dyn Backend>,
    policies: Arc<PolicySet>,
    config: CacheConfig,
    events: broadcast::Sender<CacheEvent>,
    /// Progress reports and warm-up ends: apart from Cinder's events, so a flood of reports
    /// never makes a subscriber miss a hit, miss or evict.
    work_events: broadcast::Sender<CacheEvent>,
    flights: Flights,
    ledger: Arc<Ledger>,
    /// The last use time handed out; see [`CacheService::use_time`].
    last_use: std::sync::atomic::AtomicU64,
    fill_seconds: stats::FillHistogram,
    fill_failures: stats::FillFailures,
    /// Creates waiting for another request's fill right now.
    waiting: std::sync::atomic::AtomicU64,
    /// Warm-ups by how they ended.
    warm_counts: warm::WarmCounts,
    /// Clones of entries by mode.
    clone_modes: stats::CloneModes,
    /// Refresh checks: when each image was last checked, and results.
    refresh: refresh::RefreshState,
    /// What the last start-up reconciliation found (for the metrics).
    reconciled: std::sync::Mutex<Option<reconcile::Reconciled>>,
    /// The workload: the trace (when the daemon records one) and the shadow policies.
    workload: Arc<crate::lab::record::Workload>,
}

impl CacheService {
    pub fn new(
        catalog: Arc<Catalog>,
        backend: Arc<dyn Backend>,
        policies: Arc<PolicySet>,
        config: CacheConfig,
    ) -> Self {
        let (events, _) = broadcast::channel(1024);
        let (work_events, _) = broadcast::channel(1024);
        CacheService {
            catalog,
            backend,
            policies,
            config,
            events,
            work_events,
            flights: Flights::default(),
            ledger: Arc::default(),
            last_use: Default::default(),
            fill_seconds: Default::default(),
            fill_failures: Default::default(),
            waiting: Default::default(),
            warm_counts: Default::default(),
            clone_modes: Default::default(),
            refresh: Default::default(),
            reconciled: Default::default(),
            workload: Arc::default(),
        }
    }

    /// Failed fills since start by reason (`source`, `no_space`, `unavailable`, `image_gone`).
    pub fn fill_failures(&self) -> Vec<(&'static str, u64)> {
        self.fill_failures.snapshot()
    }

    /// Volumes cloned from entries since start, by mode (`reflink`, `sparse-copy`,
    /// `snapshot-clone`).
    pub fn clone_modes(&self) -> Vec<(&'static str, u64)> {
        self.clone_modes.snapshot()
    }

    /// Warm-ups since start by how they ended.
    pub fn warm_counts(&self) -> Vec<(&'static str, u64)> {
        self.warm_counts.snapshot()
    }

    /// Records this cache's workload (requests, image changes, evictions) into `recorder`.
    pub fn with_trace(mut self, recorder: crate::lab::record::Recorder) -> Self {
        self.workload = Arc::new(crate::lab::record::Workload::new(Some(recorder)));
        self
    }

    /// The workload: the recorded trace and the shadow policies.
    pub fn workload(&self) -> &Arc<crate::lab::record::Workload> {
        &self.workload
    }

    fn record(&self, op: crate::lab::trace::Op, image: &str, updated_at: &str, size_bytes: u64) {
        self.workload.record(op, image, updated_at, size_bytes);
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

    /// The scope's reservations and leases.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Creates waiting for another request's fill right now.
    pub fn waiting(&self) -> u64 {
        self.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Fills in progress in this process.
    pub fn fills_in_progress(&self) -> usize {
        self.flights.len()
    }

    /// Notifications: every hit, miss and eviction from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<CacheEvent> {
        self.events.subscribe()
    }

    /// Work in progress: `image_volume_cache.progress` and `image_volume_cache.warm`, in order.
    pub fn subscribe_work(&self) -> broadcast::Receiver<CacheEvent> {
        self.work_events.subscribe()
    }

    /// Publishes one notification. `entry_host` is the host that filled the entry (Cinder's
    /// `host`); the serving host is this one.
    fn emit(
        &self,
        event_type: &'static str,
        image_id: &str,
        entry_host: &str,
        volume: (&str, u64),
        reason: Option<EvictReason>,
    ) {
        let (volume_id, size) = volume;
        tracing::info!(event = event_type, image_id, volume_id, size, ?reason, "cache event");
        let _ = self.events.send(CacheEvent {
            event_type,
            image_id: image_id.to_string(),
            host: entry_host.to_string(),
            serving_host: self.config.host.clone(),
            volume_id: volume_id.to_string(),
            size,
            reason,
            progress: None,
            warm: None,
        });
    }

    /// Publishes a write's progress (`image_volume_cache.progress`).
    fn publish_progress(&self, image: &ImageRecord, progress: events::Progress) {
        let _ = self.work_events.send(CacheEvent {
            event_type: events::PROGRESS,
            image_id: image.id.clone(),
            host: self.config.host.clone(),
            serving_host: self.config.host.clone(),
            volume_id: String::new(),
            size: image.virtual_size.div_ceil(GIB),
            reason: None,
            progress: Some(progress),
            warm: None,
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
            limits: self.config.source_limits,
        }
    }

    /// The policy view of this scope: its entries, without reservations.
    pub fn view(&self) -> Result<View, CacheError> {
        let entries = self.scope_entries()?.iter().map(policy_entry).collect();
        Ok(View::new(entries, now_ms()))
    }

    /// Entries of this cache scope.
    /// Runs `round` every `every` on a thread named `name`, for as long as the service lives
    /// (the thread holds only a weak reference between rounds).
    pub(super) fn every(self: &Arc<Self>, name: &str, every: std::time::Duration, round: fn(&CacheService)) {
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || loop {
                std::thread::sleep(every);
                let Some(cache) = weak.upgrade() else { return };
                round(&cache);
            })
            .unwrap_or_else(|e| panic!("spawning the {name} thread: {e}"));
    }

    pub fn scope_entries(&self) -> Result<Vec<EntryRecord>, CacheError> {
        self.scope_entries_page(None, usize::MAX)
    }

    /// Up to `limit` of the scope's entries by ascending id, after entry `after`.
    pub fn scope_entries_page(&self, after: Option<u64>, limit: usize) -> Result<Vec<EntryRecord>, CacheError> {
        let scope = self.config.scope();
        let in_scope = |e: &EntryRecord| e.cluster_name.as_deref().unwrap_or(&e.host) == scope;
        Ok(self.catalog.read(|r| r.entries_page(after, limit, in_scope))?)
    }
}

/// An entry as policies see it.
impl CacheService {
    /// The scope's entries as a shadow policy's starting cache: (image, version, entry).
    pub fn shadow_seed(&self) -> Result<Vec<(String, u32, Entry)>, CacheError> {
        Ok(self
            .scope_entries()?
            .iter()
            .map(|e| (e.image_id.clone(), self.workload.version(&e.image_id, &e.image_updated_at), policy_entry(e)))
            .collect())
    }
}

fn policy_entry(e: &EntryRecord) -> Entry {
    Entry {
        id: e.id,
        size_gib: e.size,
        allocated_bytes: e.allocated_bytes,
        last_used_ms: e.last_used_ms,
        created_ms: e.created_ms,
        hits: e.hit_count,
        pinned: e.pinned,
    }
}
