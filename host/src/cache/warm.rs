//! Warm-up: fill an image's cache entry ahead of the first create, without a user volume.
//!
//! A warm-up is a fill like a miss's, in the same single flight (a create of the same image
//! at the same time waits for it; a warm-up that finds a fill of the image running ends at
//! once as `joined`, holding no thread while it runs), under the same policies:
//! admission, capacity and eviction decide, and a refusal says why. It counts as a fill, not
//! as a miss (no one asked for a volume). Its progress and its end are events
//! (`image_volume_cache.progress`, `image_volume_cache.warm`).
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use super::events::{self, WarmResult};
use super::fill::FillOutcome;
use super::flight::{Filled, Role};
use super::{CacheError, CacheEvent, CacheService, EvictReason};

/// How a warm-up ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Warmed {
    /// A new entry was filled.
    Filled(u64),
    /// A fresh entry was there already (or another request's fill made one meanwhile).
    AlreadyCached(u64),
    /// The policies or the internal tenant's quota said no, and why.
    Refused(String),
    /// Another request (a create that missed, another warm-up, a refresh) is filling the image
    /// right now; this warm-up adds nothing and does not wait for it.
    Joined,
}

/// Warm-ups since start, by how they ended.
#[derive(Debug, Default)]
pub struct WarmCounts {
    /// The last warm-up id handed out.
    pub last_id: AtomicU64,
    pub filled: AtomicU64,
    pub already_cached: AtomicU64,
    pub joined: AtomicU64,
    pub refused: AtomicU64,
    pub failed: AtomicU64,
}

impl WarmCounts {
    /// `(result, count)` for the metrics.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        [
            ("filled", &self.filled),
            ("already_cached", &self.already_cached),
            ("joined", &self.joined),
            ("refused", &self.refused),
            ("failed", &self.failed),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.load(Ordering::Relaxed)))
        .collect()
    }
}

impl CacheService {
    /// Checks that a warm-up of `image_id` can start: the image exists and the cache is on.
    pub fn can_warm(&self, image_id: &str) -> Result<(), CacheError> {
        self.catalog.read(|r| r.image(image_id))?.ok_or_else(|| CacheError::ImageNotFound(image_id.to_string()))?;
        if !self.config.enabled {
            return Err(CacheError::Forbidden("the image-volume cache is disabled on this backend".into()));
        }
        Ok(())
    }

    /// Checks that a warm-up of `image_id` can start and numbers it; [`CacheService::warm`]
    /// then runs it (in the background) and its end event carries the number.
    pub fn begin_warm(&self, image_id: &str) -> Result<u64, CacheError> {
        self.can_warm(image_id)?;
        Ok(self.warm_counts.last_id.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Fills `image_id`'s entry unless a fresh one exists; publishes how it ended
    /// (`image_volume_cache.warm` with `warm_id`).
    pub fn warm(&self, image_id: &str, warm_id: u64) -> Result<Warmed, CacheError> {
        let result = self.warm_inner(image_id);
        let counts = &self.warm_counts;
        let (counter, status, entry_id, detail) = match &result {
            Ok(Warmed::Filled(id)) => (&counts.filled, "filled", Some(*id), None),
            Ok(Warmed::AlreadyCached(id)) => (&counts.already_cached, "already-cached", Some(*id), None),
            Ok(Warmed::Refused(why)) => (&counts.refused, "refused", None, Some(why.clone())),
            Ok(Warmed::Joined) => (
                &counts.joined,
                "joined",
                None,
                Some("another request is filling this image now; its entry appears when that fill ends".into()),
            ),
            Err(e) => (&counts.failed, "failed", None, Some(e.failure().message)),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::info!(image_id, status, ?entry_id, ?detail, "warm-up done");
        let _ = self.work_events.send(CacheEvent {
            event_type: events::WARM,
            image_id: image_id.to_string(),
            host: self.config.host.clone(),
            serving_host: self.config.host.clone(),
            volume_id: String::new(),
            size: 0,
            reason: None,
            progress: None,
            warm: Some(WarmResult { warm_id, status, entry_id, detail }),
        });
        result
    }

    fn warm_inner(&self, image_id: &str) -> Result<Warmed, CacheError> {
        self.can_warm(image_id)?;
        self.finish_deferred_removals();
        let scope = self.config.scope().to_string();
        let key = format!("{scope}\0{image_id}");
        let image =
            self.catalog.read(|r| r.image(image_id))?.ok_or_else(|| CacheError::ImageNotFound(image_id.to_string()))?;
        let fresh = |entry: &crate::catalog::EntryRecord| entry.image_updated_at == image.updated_at;
        if let Some(entry) = self.catalog.read(|r| r.entry_for(&scope, image_id))?.filter(fresh) {
            return Ok(Warmed::AlreadyCached(entry.id));
        }
        let leader = match self.flights.join(&key) {
            Role::Leader(leader) => leader,
            // Someone is filling it already: nothing to add, and nothing to wait for (a warm-up
            // holds no thread while another request's fill runs; its progress is on the stream).
            Role::Follower(_) => return Ok(Warmed::Joined),
        };
        // Inside the flight: another fill may have just finished, or the entry is stale.
        if let Some(entry) = self.catalog.read(|r| r.entry_for(&scope, image_id))? {
            if fresh(&entry) {
                leader.publish(Filled::Entry(entry.id));
                return Ok(Warmed::AlreadyCached(entry.id));
            }
            self.evict(&entry, EvictReason::Stale)?;
        }
        match self.fill(&image) {
            Ok(FillOutcome::Filled(entry, lease)) => {
                leader.publish(Filled::Entry(entry.id));
                drop(lease);
                self.finish_deferred_removals();
                Ok(Warmed::Filled(entry.id))
            }
            Ok(FillOutcome::Skipped(reason)) => {
                leader.publish(Filled::NotCached(reason.clone()));
                Ok(Warmed::Refused(reason))
            }
            Err(e) => {
                tracing::warn!(image_id, error = %e, "warm-up fill failed; nothing was evicted");
                self.fill_failures.record(e.class());
                leader.publish(Filled::Failed(e.failure()));
                Err(e)
            }
        }
    }
}
