//! Refresh: images that carry a refresh interval are checked at their source (ETag,
//! Last-Modified, Glance's `updated_at` and checksum: `image::version`), and a changed image is
//! refilled in the background and swapped in atomically.
//!
//! The swap has no miss window: while the new version is written, creates keep hitting the old
//! entry (the image record still names the old version); one transaction then records the new
//! version on the image, removes the old entry and brings the new one, under the policies
//! (the old entry's room counts as free, as it goes in that same transaction). The old entry's
//! volume goes when its last lease ends. A change to the image meanwhile (a PATCH, a delete)
//! wins: the refill is dropped. An image with no entry only has its record updated.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::fill::{FillOutcome, Replace};
use super::flight::{Filled, Role};
use super::{CacheError, CacheService};
use crate::catalog::ImageRecord;
use crate::image::source::Location;
use crate::lab::trace::Op as TraceOp;

/// What one check of an image found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refreshed {
    /// The source holds the version last read.
    Unchanged,
    /// Changed; no entry to refill, so only the image record was updated (its version, size).
    Updated,
    /// Changed; the new version's entry replaced the old one.
    Refilled(u64),
    /// Changed, but not refilled now, and why (a fill of the image is running, the policies
    /// said no); the old entry stays and the next check tries again.
    Deferred(String),
}

/// The images that carry a refresh interval: (id, seconds).
type Schedule = Arc<Vec<(String, u64)>>;

/// When each image was last checked, and counts by result, for the metrics.
#[derive(Debug, Default)]
pub struct RefreshState {
    checked: Mutex<HashMap<String, Instant>>,
    /// The images that carry a refresh interval (id, seconds), as of a catalog images version:
    /// a tick reads the images again only when they may have changed.
    schedule: Mutex<Option<(u64, Schedule)>>,
    /// How many times the images were read to build the schedule.
    pub scans: AtomicU64,
    pub unchanged: AtomicU64,
    pub updated: AtomicU64,
    pub refilled: AtomicU64,
    pub deferred: AtomicU64,
    pub failed: AtomicU64,
}

impl RefreshState {
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        [
            ("unchanged", &self.unchanged),
            ("updated", &self.updated),
            ("refilled", &self.refilled),
            ("deferred", &self.deferred),
            ("failed", &self.failed),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.load(Ordering::Relaxed)))
        .collect()
    }
}

impl CacheService {
    /// The source's version now.
    pub(super) fn source_version(&self, image_id: &str, source: &str) -> Result<String, CacheError> {
        let image_error = |source| CacheError::Image { image_id: image_id.to_string(), source };
        let location = Location::parse(source).and_then(|l| self.confine(l)).map_err(image_error)?;
        let token = std::env::var("OS_AUTH_TOKEN").ok().filter(|t| !t.is_empty());
        crate::image::version::version(&location, token.as_deref(), &self.config.source_limits).map_err(image_error)
    }

    /// Checks every image whose refresh interval has passed since its last check (or since
    /// start); returns what each check did. Failures are logged and counted, never fatal.
    pub fn refresh_due(&self) -> Vec<(String, Result<Refreshed, CacheError>)> {
        let Some(schedule) = self.refresh_schedule() else { return Vec::new() };
        let now = Instant::now();
        let due: Vec<String> = {
            let mut checked = self.refresh.checked.lock().unwrap_or_else(|p| p.into_inner());
            let ids: std::collections::HashSet<&str> = schedule.iter().map(|(id, _)| id.as_str()).collect();
            checked.retain(|id, _| ids.contains(id.as_str()));
            schedule
                .iter()
                .filter(|(id, every)| {
                    let last = checked.entry(id.clone()).or_insert(now);
                    if *last == now || now.duration_since(*last) >= Duration::from_secs(*every) {
                        *last = now;
                        true
                    } else {
                        false
                    }
                })
                .map(|(id, _)| id.clone())
                .collect()
        };
        due.into_iter()
            .map(|image_id| {
                let result = self.refresh_image(&image_id);
                let counter = match &result {
                    Ok(Refreshed::Unchanged) => &self.refresh.unchanged,
                    Ok(Refreshed::Updated) => &self.refresh.updated,
                    Ok(Refreshed::Refilled(_)) => &self.refresh.refilled,
                    Ok(Refreshed::Deferred(_)) => &self.refresh.deferred,
                    Err(e) => {
                        tracing::warn!(image_id = %image_id, error = %e, "refresh check failed; the entry stays as it is");
                        &self.refresh.failed
                    }
                };
                counter.fetch_add(1, Ordering::Relaxed);
                (image_id, result)
            })
            .collect()
    }

    /// The images with a refresh interval, read from the catalog only when its images changed
    /// since the last read (a daemon with 10,000 images decoded them all every second).
    /// `None` when the catalog cannot be read (logged).
    fn refresh_schedule(&self) -> Option<Schedule> {
        // Read before the images: a change committed meanwhile moves it again, so the next tick
        // reads once more rather than keep a stale schedule.
        let version = self.catalog.images_version();
        let mut cached = self.refresh.schedule.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, schedule)) = cached.as_ref() {
            if *at == version {
                return Some(Arc::clone(schedule));
            }
        }
        let images = match self.catalog.read(|r| r.images()) {
            Ok(images) => images,
            Err(e) => {
                tracing::warn!(error = %e, "refresh: cannot list images");
                return None;
            }
        };
        self.refresh.scans.fetch_add(1, Ordering::Relaxed);
        let schedule: Schedule =
            Arc::new(images.into_iter().filter_map(|i| Some((i.id, i.refresh_interval_seconds?))).collect());
        *cached = Some((version, Arc::clone(&schedule)));
        Some(schedule)
    }

    /// How many times the refresh loop has read the images (it does when they changed).
    pub fn refresh_scans(&self) -> u64 {
        self.refresh.scans.load(Ordering::Relaxed)
    }

    /// Refresh counts since start, by result.
    pub fn refresh_counts(&self) -> Vec<(&'static str, u64)> {
        self.refresh.snapshot()
    }

    /// Checks one image's source now and refills its entry if the source changed.
    pub fn refresh_image(&self, image_id: &str) -> Result<Refreshed, CacheError> {
        let image =
            self.catalog.read(|r| r.image(image_id))?.ok_or_else(|| CacheError::ImageNotFound(image_id.to_string()))?;
        let version = self.source_version(image_id, &image.source)?;
        if image.source_version.as_deref() == Some(version.as_str()) {
            return Ok(Refreshed::Unchanged);
        }
        tracing::info!(image_id, old = ?image.source_version, new = %version, "image source changed");
        // The new version's format and size, before anything is written.
        let location = Location::parse(&image.source)
            .and_then(|l| self.confine(l))
            .map_err(|source| CacheError::Image { image_id: image_id.to_string(), source })?;
        let (_, virtual_size) =
            crate::image::convert::probe(&location, Some(image.disk_format), None, &self.config.source_limits)
                .map_err(|source| CacheError::Image { image_id: image_id.to_string(), source })?;
        let new = ImageRecord {
            virtual_size,
            source_version: Some(version),
            updated_at: super::images::version_stamp(Some(&image.updated_at)),
            ..image.clone()
        };
        let scope = self.config.scope().to_string();
        let key = format!("{scope}\0{image_id}");
        let leader = match self.flights.join(&key) {
            Role::Leader(leader) => leader,
            Role::Follower(_) => return Ok(Refreshed::Deferred("a fill of this image is running".into())),
        };
        let entry = self.catalog.read(|r| r.entry_for(&scope, image_id))?;
        let Some(old) = entry.filter(|e| e.image_updated_at == image.updated_at) else {
            // Nothing cached of the current version: record the new version; the next create
            // fills it (a stale entry is evicted then, as always).
            let updated = self.catalog.write(|w| match w.image(image_id)? {
                Some(current) if current.updated_at == image.updated_at => w.put_image(&new).map(|()| true),
                _ => Ok(false),
            })?;
            drop(leader);
            if !updated {
                return Ok(Refreshed::Deferred("the image changed meanwhile".into()));
            }
            self.record(TraceOp::Update, &new.id, &new.updated_at, new.virtual_size);
            return Ok(Refreshed::Updated);
        };
        let replace = Replace { old_entry: old.id, updated_before: image.updated_at.clone() };
        match self.fill_replacing(&new, Some(&replace)) {
            Ok(FillOutcome::Filled(entry, lease)) => {
                leader.publish(Filled::Entry(entry.id));
                drop(lease);
                self.finish_deferred_removals();
                self.record(TraceOp::Update, &new.id, &new.updated_at, new.virtual_size);
                tracing::info!(
                    image_id,
                    old_entry = old.id,
                    entry = entry.id,
                    "refreshed: the new version replaced the entry"
                );
                Ok(Refreshed::Refilled(entry.id))
            }
            Ok(FillOutcome::Skipped(reason)) => {
                leader.publish(Filled::NotCached(reason.clone()));
                Ok(Refreshed::Deferred(reason))
            }
            Err(CacheError::ImageGone { .. }) => {
                drop(leader);
                Ok(Refreshed::Deferred("the image changed or was deleted during the refill".into()))
            }
            Err(e) => {
                self.fill_failures.record(e.class());
                leader.publish(Filled::Failed(e.failure()));
                Err(e)
            }
        }
    }

    /// Checks due images every `tick` on a thread of its own, for as long as the service lives.
    pub fn spawn_refresher(self: &std::sync::Arc<Self>, tick: Duration) {
        self.every("volcache-refresh", tick, |cache| {
            cache.refresh_due();
        });
    }
}
