//! A fill: reserve, write, then commit the entry and remove its victims, in that order.
//!
//! 1. Under the ledger's lock, the policies see the scope's entries **and every reservation of
//!    a fill in progress** (as pinned entries, so they count but cannot be chosen), and the
//!    victims other fills have already chosen (pinned too). If admitted, the fill records its
//!    reservation and victims before the lock is released: concurrent fills never overshoot a
//!    limit or choose the same victims.
//! 2. The image is written thin into a new cache volume under a `Fill` intent.
//! 3. One transaction records the entry and its volume, deletes the victims' rows (each with an
//!    `Evict` intent), counts the fill and the evictions, and clears the `Fill` intent. An
//!    observer of the catalog never sees the limits exceeded. The victims' volumes go after.
//! 4. On any failure the reservation is released and nothing was evicted.
#![forbid(unsafe_code)]

use std::time::Instant;

use super::evict::evict_rows;
use super::intent::IntentGuard;
use super::ledger::{Lease, Reservation};
use super::{now_ms, policy_entry, timestamp, CacheError, CacheService, EvictReason, GIB};
use crate::catalog::{EntryRecord, ImageRecord, Intent, VolumeRecord};
use crate::fault;
use crate::policy::{Candidate, Entry, Plan, PolicyEvent, View};

/// What a leader's fill did.
#[derive(Debug)]
pub(super) enum FillOutcome {
    /// The entry, with a lease the leader's own clone uses.
    Filled(EntryRecord, Lease),
    /// Not cached, and why.
    Skipped(String),
}

/// A refresh's fill: the new entry replaces `old_entry` and the image record becomes `image`,
/// in the transaction that commits the entry, if the image is still at `updated_before`.
#[derive(Debug)]
pub(super) struct Replace {
    pub old_entry: u64,
    pub updated_before: String,
}

/// Ends a reservation however the fill ends.
struct Reserved<'a> {
    service: &'a CacheService,
    entry_id: u64,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        self.service.ledger.release(self.entry_id);
    }
}

impl CacheService {
    pub(super) fn candidate(image: &ImageRecord) -> Candidate {
        Candidate {
            image_id: image.id.clone(),
            size_gib: image.virtual_size.div_ceil(GIB).max(1),
            virtual_size_bytes: image.virtual_size,
            allocated_bytes: image.virtual_size,
        }
    }

    /// Fills a cache entry for `image`, unless the policies or the internal tenant's quota
    /// say no.
    pub(super) fn fill(&self, image: &ImageRecord) -> Result<FillOutcome, CacheError> {
        self.fill_replacing(image, None)
    }

    /// [`CacheService::fill`], or a refresh's fill when `replace` is given: the replaced entry
    /// is left out of the policies' view (it goes in the commit that brings the new one).
    pub(super) fn fill_replacing(
        &self,
        image: &ImageRecord,
        replace: Option<&Replace>,
    ) -> Result<FillOutcome, CacheError> {
        let started = Instant::now();
        let candidate = Self::candidate(image);
        let entry_id = self.catalog.write(|w| w.next_id("entry"))?;
        let victims = {
            let mut ledger = self.ledger.lock();
            let replaced = replace.map(|r| r.old_entry);
            let mut entries: Vec<Entry> =
                self.scope_entries()?.iter().filter(|e| Some(e.id) != replaced).map(policy_entry).collect();
            for e in &mut entries {
                // Chosen by a fill in progress: counted until it goes, never chosen twice.
                e.pinned |= ledger.is_doomed(e.id);
            }
            let present: std::collections::HashSet<u64> = entries.iter().map(|e| e.id).collect();
            for (id, r) in ledger.reservations().filter(|(id, _)| !present.contains(id)) {
                entries.push(Entry {
                    id,
                    size_gib: r.size_gib,
                    allocated_bytes: r.allocated_bytes,
                    last_used_ms: r.created_ms,
                    created_ms: r.created_ms,
                    hits: 0,
                    pinned: true,
                });
            }
            let view = View::new(entries, now_ms());
            let victims = match self.policies.plan(&candidate, &view) {
                Plan::Skip { slot, reason } => {
                    tracing::info!(image_id = %image.id, %slot, %reason, "image not admitted to the cache");
                    return Ok(FillOutcome::Skipped(format!("{slot} policy: {reason}")));
                }
                Plan::Cache { victims, .. } => victims,
            };
            if let Some(reason) = self.over_quota(&view, &victims, &candidate) {
                return Ok(FillOutcome::Skipped(reason));
            }
            let reservation = Reservation {
                image_id: image.id.clone(),
                size_gib: candidate.size_gib,
                allocated_bytes: candidate.allocated_bytes,
                created_ms: now_ms(),
            };
            ledger.reserve(entry_id, reservation, &victims);
            victims
        };
        let _reserved = Reserved { service: self, entry_id };
        let lease = self.ledger.lease(entry_id).expect("a new entry id is never closing");
        let entry = self.fill_entry(image, &candidate, entry_id, &victims, replace, started)?;
        Ok(FillOutcome::Filled(entry, lease))
    }

    /// The internal tenant's quota bounds the cache too, counted after the evictions.
    fn over_quota(&self, view: &View, victims: &[u64], candidate: &Candidate) -> Option<String> {
        let q = &self.config.internal;
        let left: Vec<Entry> = view.entries().filter(|e| !victims.contains(&e.id)).collect();
        let gigabytes = left.iter().map(|e| e.size_gib).sum::<u64>() + candidate.size_gib;
        let over_gigabytes = q.quota_gigabytes > 0 && gigabytes > q.quota_gigabytes;
        let over_volumes = q.quota_volumes > 0 && left.len() as u64 + 1 > q.quota_volumes;
        if !(over_gigabytes || over_volumes) {
            return None;
        }
        tracing::warn!(image_id = %candidate.image_id, "internal tenant quota exhausted: volume created uncached");
        Some(format!(
            "the internal tenant {} has no quota left ({} GiB / {} volumes allowed)",
            q.project_id, q.quota_gigabytes, q.quota_volumes
        ))
    }

    fn fill_entry(
        &self,
        image: &ImageRecord,
        candidate: &Candidate,
        entry_id: u64,
        victims: &[u64],
        replace: Option<&Replace>,
        started: Instant,
    ) -> Result<EntryRecord, CacheError> {
        let volume_id = super::new_uuid();
        let backend_name = format!("cache-{entry_id}");
        let intent = Intent::Fill { entry_id, volume_id: volume_id.clone(), backend_name: backend_name.clone() };
        let guard = IntentGuard::begin(self, intent)?;
        fault::point("fill:after-intent");
        let size = candidate.size_gib * GIB;
        self.backend.create(&backend_name, size)?;
        fault::point("fill:after-create");
        // Written at the entry's provisioned size, so the volume and its record agree.
        let source_bytes = self.write_into(image, &backend_name, Some(size))?;
        self.backend.seal(&backend_name)?;
        fault::point("fill:after-write");
        let allocated = self.backend.allocated_bytes(&backend_name)?;
        let (now, stamp) = (self.use_time(), timestamp());
        let q = &self.config.internal;
        let volume = VolumeRecord {
            id: volume_id.clone(),
            backend_name,
            size: candidate.size_gib,
            image_id: Some(image.id.clone()),
            project_id: q.project_id.clone(),
            user_id: q.user_id.clone(),
            cache: None,
            cache_entry: Some(entry_id),
            created_at: stamp.clone(),
            cloned_from: None,
            clone_mode: None,
            uncached_reason: None,
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
        let ms = started.elapsed().as_millis() as u64;
        let evicted = guard.commit(|w| {
            // Deleted while it was filled: keep nothing (the guard removes the volume).
            let Some(current) = w.image(&image.id)? else { return Ok(None) };
            let mut evicted = Vec::new();
            if let Some(r) = replace {
                // Changed by someone else during the refresh: theirs wins, this fill is dropped.
                if current.updated_at != r.updated_before {
                    return Ok(None);
                }
                w.put_image(image)?;
                evicted.extend(evict_rows(w, &scope, r.old_entry)?.map(|e| (e, EvictReason::Refreshed)));
            }
            for id in victims {
                evicted.extend(evict_rows(w, &scope, *id)?.map(|e| (e, EvictReason::Capacity)));
            }
            w.put_volume(&volume)?;
            w.put_entry(&scope, &entry)?;
            w.add("fills", 1)?;
            w.add("fill_ms_total", ms)?;
            Ok(Some(evicted))
        })?;
        let Some(evicted) = evicted else { return Err(CacheError::ImageGone { image_id: image.id.clone() }) };
        self.fill_seconds.observe(ms);
        for ((victim, removal), reason) in evicted {
            self.after_eviction(&victim, removal, reason);
        }
        self.policies.notify(&PolicyEvent::Insert(policy_entry(&entry)));
        tracing::info!(image_id = %image.id, entry = entry_id, allocated, "cache entry filled");
        Ok(entry)
    }
}
