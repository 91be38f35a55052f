//! Creating a volume from an image: hit, miss or uncached.
//!
//! A request tries a few times: the entry it found may be evicted before it can lease it, its
//! cache volume may turn out to be lost, or the fill it waited for may be abandoned. Each of
//! those turns the next attempt into a fresh lookup (hit, or a miss that joins or leads a
//! flight); only when every attempt lost such a race is the volume written directly.
#![forbid(unsafe_code)]

use crate::lab::trace::Op as TraceOp;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::fill::FillOutcome;
use super::flight::{Cancel, Filled, Role, WaitError};
use super::intent::IntentGuard;
use super::ledger::Lease;
use super::{events, timestamp, CacheError, CacheService, CreateVolume, Created, EvictReason, GIB};
use crate::backend::BackendError;
use crate::catalog::{CacheOutcome, CatalogError, EntryRecord, ImageRecord, Intent, VolumeRecord, Writer};
use crate::fault;
use crate::image::convert::write_image;
use crate::image::source::Location;
use crate::policy::PolicyEvent;
use crate::sparse::{BlockDevice, Target};

/// Lookups a request makes before it gives up on the cache and writes directly.
const ATTEMPTS: usize = 4;

/// Whether a direct write counts as the request's miss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Count {
    Miss,
    NotCounted,
}

impl CacheService {
    /// Creates a volume from an image: hit, miss or uncached, as the module docs say.
    pub fn create_volume(&self, req: &CreateVolume) -> Result<Created, CacheError> {
        self.create_volume_with(req, &Cancel::new())
    }

    /// [`CacheService::create_volume`] for a client that may go away: a wait for another
    /// request's fill ends when `cancel` is set.
    pub fn create_volume_with(&self, req: &CreateVolume, cancel: &Cancel) -> Result<Created, CacheError> {
        let image = self.image_for(req)?;
        self.record(TraceOp::Request, &image.id, &image.updated_at, image.virtual_size);
        let (id, updated_at, size) = (image.id.clone(), image.updated_at.clone(), image.virtual_size);
        let result = self.create_from(req, image, cancel);
        if let Ok(created) = &result {
            // Shadow policies learn the request and what the live cache did with it.
            self.workload.request_done(&id, &updated_at, size, created.volume.cache);
        }
        result
    }

    fn create_from(&self, req: &CreateVolume, mut image: ImageRecord, cancel: &Cancel) -> Result<Created, CacheError> {
        let span = tracing::info_span!("create_volume", image_id = %image.id, size = req.size);
        let _enter = span.enter();
        self.finish_deferred_removals();
        if !self.config.enabled {
            let reason = "the image-volume cache is disabled on this backend".to_string();
            return self.direct(req, &image, reason, Count::NotCounted);
        }
        let scope = self.config.scope().to_string();
        let key = format!("{scope}\0{}", image.id);
        for attempt in 0..ATTEMPTS {
            if cancel.is_cancelled() {
                return Err(CacheError::Cancelled);
            }
            // Each further attempt follows a lost race: the image may have changed meanwhile.
            if attempt > 0 {
                image = self.image_for(req)?;
            }
            if let Some(entry) = self.catalog.read(|r| r.entry_for(&scope, &image.id))? {
                if entry.image_updated_at == image.updated_at {
                    if let Some(created) = self.hit(req, &image, &entry)? {
                        return Ok(created);
                    }
                    continue;
                }
            }
            match self.flights.join(&key) {
                Role::Leader(leader) => return self.lead(req, leader),
                Role::Follower(flight) => {
                    let deadline = Instant::now() + self.config.fill_wait;
                    self.waiting.fetch_add(1, Ordering::SeqCst);
                    let waited = flight.wait(deadline, cancel);
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    match waited {
                        Ok(Filled::Entry(id)) => {
                            // Filled from an older version of the image than this request saw:
                            // look again (the next leader evicts it as stale).
                            let entry = self.catalog.read(|r| r.entry(id))?;
                            if let Some(entry) = entry.filter(|e| e.image_updated_at == image.updated_at) {
                                if let Some(created) = self.hit(req, &image, &entry)? {
                                    return Ok(created);
                                }
                            }
                        }
                        Ok(Filled::NotCached(reason)) => return self.direct(req, &image, reason, Count::Miss),
                        Ok(Filled::Failed(failure)) => {
                            return Err(CacheError::FillFailed { image_id: image.id.clone(), failure })
                        }
                        Ok(Filled::Abandoned) => {}
                        Err(WaitError::Cancelled) => return Err(CacheError::Cancelled),
                        Err(WaitError::TimedOut) => {
                            return Err(CacheError::WaitTimedOut {
                                image_id: image.id.clone(),
                                waited_s: self.config.fill_wait.as_secs(),
                            })
                        }
                    }
                }
            }
        }
        let reason = "the image's cache entry kept being evicted under this request".to_string();
        self.direct(req, &image, reason, Count::Miss)
    }

    /// The image, checked against the request.
    fn image_for(&self, req: &CreateVolume) -> Result<ImageRecord, CacheError> {
        if req.project_id == self.config.internal.project_id {
            return Err(CacheError::Forbidden(format!(
                "project_id: {} is the cache's internal tenant; user volumes cannot be created in it",
                req.project_id
            )));
        }
        let image = self
            .catalog
            .read(|r| r.image(&req.image_id))?
            .ok_or_else(|| CacheError::ImageNotFound(req.image_id.clone()))?;
        if req.size == 0 || req.size.saturating_mul(GIB) < image.virtual_size {
            return Err(CacheError::TooSmall { image_id: image.id, size: req.size, virtual_size: image.virtual_size });
        }
        Ok(image)
    }

    /// The leader of the image's flight: inside the flight it looks again (another flight may
    /// have just filled it, or the entry may be stale), then fills and publishes the result.
    fn lead(&self, req: &CreateVolume, leader: super::flight::Leader<'_>) -> Result<Created, CacheError> {
        let scope = self.config.scope().to_string();
        let image = self.image_for(req)?;
        if let Some(entry) = self.catalog.read(|r| r.entry_for(&scope, &image.id))? {
            if entry.image_updated_at == image.updated_at {
                leader.publish(Filled::Entry(entry.id));
                // Lost in the meantime: the next request fills it.
                return match self.hit(req, &image, &entry)? {
                    Some(created) => Ok(created),
                    None => self.direct(req, &image, "the cache entry was evicted".into(), Count::Miss),
                };
            }
            self.evict(&entry, EvictReason::Stale)?;
        }
        let result = self.fill(&image);
        match result {
            Ok(FillOutcome::Filled(entry, lease)) => {
                leader.publish(Filled::Entry(entry.id));
                let outcome = CacheOutcome::Miss;
                let created = self.clone_from(req, &entry, &lease, outcome, count_miss)?;
                drop(lease);
                self.finish_deferred_removals();
                self.emit(events::MISS, &image.id, &entry.host, (&created.volume.id, created.volume.size), None);
                Ok(created)
            }
            Ok(FillOutcome::Skipped(reason)) => {
                leader.publish(Filled::NotCached(reason.clone()));
                self.direct(req, &image, reason, Count::Miss)
            }
            Err(e) => {
                tracing::warn!(image_id = %image.id, error = %e, "cache fill failed; nothing was evicted");
                self.fill_failures.record(e.class());
                leader.publish(Filled::Failed(e.failure()));
                Err(e)
            }
        }
    }

    /// A hit: lease the entry, clone it, grow it, record the volume and bump the entry in one
    /// transaction. `None` when the entry went away first (evicted, or its volume lost): the
    /// caller looks again.
    fn hit(&self, req: &CreateVolume, image: &ImageRecord, entry: &EntryRecord) -> Result<Option<Created>, CacheError> {
        let Some(lease) = self.ledger.lease(entry.id) else { return Ok(None) };
        // Leased, and the row is still there: any eviction now waits for this lease.
        if self.catalog.read(|r| r.entry(entry.id))?.is_none() {
            return Ok(None);
        }
        let now = self.use_time();
        let scope = self.config.scope().to_string();
        let result = self.clone_from(req, entry, &lease, CacheOutcome::Hit, |w| {
            if let Some(mut e) = w.entry(entry.id)? {
                e.last_used_ms = now;
                e.last_used = timestamp();
                e.hit_count += 1;
                w.put_entry(&scope, &e)?;
            }
            w.add("hits", 1)?;
            w.add("bytes_not_downloaded", entry.source_bytes)?;
            w.add("bytes_not_written", entry.allocated_bytes).map(drop)
        });
        drop(lease);
        self.finish_deferred_removals();
        let created = match result {
            Ok(created) => created,
            Err(CacheError::Backend(BackendError::NotFound(name))) if name.starts_with("cache-") => {
                tracing::error!(image_id = %image.id, entry = entry.id, volume = %name, "cache volume lost: dropping its entry");
                self.evict(entry, EvictReason::Lost)?;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        self.policies.notify(&PolicyEvent::Hit { id: entry.id, now_ms: now });
        self.emit(events::HIT, &image.id, &entry.host, (&created.volume.id, created.volume.size), None);
        Ok(Some(created))
    }

    fn user_volume(&self, req: &CreateVolume, outcome: CacheOutcome) -> VolumeRecord {
        let id = super::new_uuid();
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
            cloned_from: None,
            clone_mode: None,
            uncached_reason: None,
        }
    }

    /// Clones the user's volume from a leased cache entry: the user's volume is the child,
    /// never the parent. `also` runs in the transaction that records the volume, the hit's
    /// only catalog transaction (no intent is recorded: see [`IntentGuard::unrecorded`]).
    fn clone_from(
        &self,
        req: &CreateVolume,
        entry: &EntryRecord,
        _lease: &Lease,
        outcome: CacheOutcome,
        also: impl FnOnce(&mut Writer<'_>) -> Result<(), CatalogError>,
    ) -> Result<Created, CacheError> {
        let mut volume = self.user_volume(req, outcome);
        // The cache volume's record gives its provisioned size, so a clone already as large as
        // asked for is not resized (on RBD a resize is an open of the clone and its parent, the
        // exclusive lock, and a close: a third of a hit).
        let (source, source_gib) = self
            .catalog
            .read(|r| r.volume(&entry.volume_id))?
            .map(|v| (v.backend_name, Some(v.size)))
            .unwrap_or_else(|| (format!("cache-{}", entry.id), None));
        let intent = Intent::Create { volume_id: volume.id.clone(), backend_name: volume.backend_name.clone() };
        let guard = IntentGuard::unrecorded(self, intent);
        fault::point("clone:after-intent");
        let grow = source_gib.is_none_or(|gib| volume.size > gib).then_some(volume.size * GIB);
        let mode = self.backend.clone_grown(&source, &volume.backend_name, grow)?;
        fault::point("clone:after-clone");
        volume.cloned_from = Some(entry.id);
        volume.clone_mode = serde_json::to_value(mode).ok().and_then(|v| v.as_str().map(String::from));
        guard.commit(|w| {
            w.put_volume(&volume)?;
            also(w)?;
            Ok(Some(()))
        })?;
        self.clone_modes.record(mode);
        tracing::info!(volume_id = %volume.id, entry = entry.id, ?mode, "volume cloned from the cache");
        Ok(Created { volume, uncached_reason: None })
    }

    /// Writes the image straight into a new user volume (cache disabled or not admitted).
    fn direct(
        &self,
        req: &CreateVolume,
        image: &ImageRecord,
        reason: String,
        count: Count,
    ) -> Result<Created, CacheError> {
        let mut volume = self.user_volume(req, CacheOutcome::Uncached);
        volume.uncached_reason = Some(reason.clone());
        let intent = Intent::Create { volume_id: volume.id.clone(), backend_name: volume.backend_name.clone() };
        let guard = IntentGuard::begin(self, intent)?;
        self.backend.create(&volume.backend_name, volume.size * GIB)?;
        // Written at the volume's size: the bytes past the image stay zeros, nothing is resized.
        self.write_into(image, &volume.backend_name, Some(volume.size * GIB))?;
        fault::point("direct:after-write");
        guard.commit(|w| {
            w.put_volume(&volume)?;
            w.add("uncached", 1)?;
            if count == Count::Miss {
                count_miss(w)?;
            }
            Ok(Some(()))
        })?;
        if count == Count::Miss {
            self.emit(events::MISS, &image.id, &self.config.host, (&volume.id, volume.size), None);
        }
        tracing::info!(volume_id = %volume.id, %reason, "volume written without the cache");
        Ok(Created { volume, uncached_reason: Some(reason) })
    }

    /// Writes the image into a backend volume, which ends `length` bytes long (default: the
    /// image's virtual size); returns the bytes read from its source.
    pub(super) fn write_into(
        &self,
        image: &ImageRecord,
        backend_name: &str,
        length: Option<u64>,
    ) -> Result<u64, CacheError> {
        let device = crate::sparse::CountingDevice::new(self.backend.open(backend_name)?);
        // Confined again at every fill: the file may have become a symlink since registration.
        let location = Location::parse(&image.source)
            .and_then(|l| self.confine(l))
            .map_err(|source| CacheError::Image { image_id: image.id.clone(), source })?;
        let options = crate::image::convert::ConvertOptions { length, ..self.options(image) };
        // Progress on the event stream, for `cache warm` and a create that misses.
        let mut ticker = events::ProgressTicker::new(backend_name);
        let mut total_seen = 0;
        let mut report_progress = |done: u64, total: u64| {
            total_seen = total;
            if let Some(p) = ticker.tick(done, total, device.written(), false) {
                self.publish_progress(image, p);
            }
        };
        let report =
            write_image(&location, &device, Target::Fresh, &self.config.spool_dir, &options, &mut report_progress)
                .map_err(|source| CacheError::Image { image_id: image.id.clone(), source })?;
        device.sync_all().map_err(|e| BackendError::Io { op: "sync", name: backend_name.into(), source: e })?;
        let written = device.written();
        if let Some(p) = ticker.tick(report.virtual_size, report.virtual_size.max(total_seen), written, true) {
            self.publish_progress(image, p);
        }
        Ok(report.bytes_read)
    }
}

fn count_miss(w: &mut Writer<'_>) -> Result<(), CatalogError> {
    w.add("misses", 1).map(drop)
}
