//! Eviction and deletes. An eviction deletes the entry's row, its volume's row and records an
//! `Evict` intent in one transaction (with the `evictions` counter); the cache volume goes
//! afterwards, at once or, if a hit holds a lease on the entry, when the last lease ends
//! ([`super::ledger`]). Only the request whose transaction deleted the row emits the event, so
//! an entry is evicted once however many requests race to evict it.
#![forbid(unsafe_code)]

use super::ledger::PendingRemoval;
use super::{events, now_ms, CacheError, CacheService, EvictReason};
use crate::catalog::CatalogError;
use crate::catalog::{EntryRecord, Intent, Writer};
use crate::lab::trace::Op as TraceOp;
use crate::policy::PolicyEvent;

/// Whether an entry is pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pin {
    Pinned,
    Unpinned,
}

impl CacheService {
    /// Evicts `entry` if it is still in the catalog; `false` when another request already did.
    pub fn evict(&self, entry: &EntryRecord, reason: EvictReason) -> Result<bool, CacheError> {
        let scope = self.config.scope().to_string();
        let removal = self.catalog.write(|w| evict_rows(w, &scope, entry.id))?;
        let Some((entry, removal)) = removal else { return Ok(false) };
        self.after_eviction(&entry, removal, reason);
        Ok(true)
    }

    /// What follows an eviction's commit: the volume's removal (now or after the last lease),
    /// the policy hook and the event.
    pub(super) fn after_eviction(&self, entry: &EntryRecord, removal: PendingRemoval, reason: EvictReason) {
        crate::fault::point("evict:after-catalog");
        if let Some(now) = self.ledger.close(removal) {
            self.remove_evicted(&now);
        }
        self.policies.notify(&PolicyEvent::Evict { id: entry.id });
        self.record(TraceOp::Evict, &entry.image_id, &entry.image_updated_at, entry.size.saturating_mul(super::GIB));
        self.emit(events::EVICT, &entry.image_id, &entry.host, (&entry.volume_id, entry.size), Some(reason));
    }

    /// Removes an evicted entry's volume and clears its intent. A failure leaves the intent for
    /// start-up reconciliation (the entry is already out of the cache).
    fn remove_evicted(&self, removal: &PendingRemoval) {
        match self.backend.remove(&removal.backend_name) {
            Ok(()) => {
                // Lazily: lost by a crash, the removal is done again (and finds nothing).
                if let Err(e) = self.catalog.write_lazily(|w| w.end(removal.intent_id)) {
                    tracing::error!(intent = removal.intent_id, error = %e, "could not clear an eviction's intent");
                }
            }
            Err(e) => tracing::error!(
                volume = %removal.backend_name, error = %e,
                "could not remove an evicted cache volume; start-up reconciliation will retry"
            ),
        }
    }

    /// Carries out removals whose last lease has ended.
    pub(super) fn finish_deferred_removals(&self) {
        for removal in self.ledger.take_ready() {
            self.remove_evicted(&removal);
        }
    }

    /// Evicts entry `id` by hand.
    pub fn evict_entry(&self, id: u64) -> Result<EntryRecord, CacheError> {
        let entry = self.catalog.read(|r| r.entry(id))?.ok_or(CacheError::EntryNotFound(id))?;
        if !self.evict(&entry, EvictReason::Operator)? {
            return Err(CacheError::EntryNotFound(id));
        }
        Ok(entry)
    }

    /// Pins or unpins entry `id`. A pinned entry is never chosen as a victim to make room (the
    /// host ignores pinned ids in every eviction policy's answer); an operator's evict, a
    /// change of its image and a lost volume still remove it.
    pub fn pin_entry(&self, id: u64, pin: Pin) -> Result<EntryRecord, CacheError> {
        let scope = self.config.scope().to_string();
        // Under the ledger's lock, as a fill chooses its victims: either the fill sees the pin,
        // or the pin sees that a fill in progress has already chosen this entry.
        let ledger = self.ledger.lock();
        if pin == Pin::Pinned && ledger.is_doomed(id) {
            return Err(CacheError::Conflict(format!(
                "cache entry {id} is being evicted to make room for a fill in progress; retry once it ends"
            )));
        }
        let entry = self.catalog.write(|w| {
            let Some(mut entry) = w.entry(id)? else { return Ok(None) };
            entry.pinned = pin == Pin::Pinned;
            w.put_entry(&scope, &entry)?;
            Ok(Some(entry))
        })?;
        drop(ledger);
        let entry = entry.ok_or(CacheError::EntryNotFound(id))?;
        tracing::info!(entry = id, image_id = %entry.image_id, pinned = entry.pinned, "cache entry pin changed");
        Ok(entry)
    }

    /// Deletes a volume. Deleting a cache volume evicts its entry; deleting a user's volume never
    /// touches the cache entry it was cloned from.
    pub fn delete_volume(&self, id: &str) -> Result<(), CacheError> {
        let volume = self.catalog.read(|r| r.volume(id))?.ok_or_else(|| CacheError::VolumeNotFound(id.into()))?;
        if let Some(entry_id) = volume.cache_entry {
            if let Some(entry) = self.catalog.read(|r| r.entry(entry_id))? {
                if self.evict(&entry, EvictReason::Operator)? {
                    return Ok(());
                }
            }
            return Err(CacheError::VolumeNotFound(id.into()));
        }
        let intent = Intent::Delete { volume_id: volume.id.clone(), backend_name: volume.backend_name.clone() };
        let intent_id = self.catalog.write(|w| {
            if !w.delete_volume(&volume.id)? {
                return Ok(None);
            }
            w.begin(intent, now_ms()).map(Some)
        })?;
        let Some(intent_id) = intent_id else { return Err(CacheError::VolumeNotFound(id.into())) };
        self.backend.remove(&volume.backend_name)?;
        // Lazily: lost by a crash, the removal is done again (and finds nothing).
        self.catalog.write_lazily(|w| w.end(intent_id))?;
        Ok(())
    }

    /// Deletes an image, then evicts its entries. The record goes first: a fill of the image
    /// that commits later finds it gone and keeps nothing.
    pub fn delete_image(&self, id: &str) -> Result<(), CacheError> {
        if !self.catalog.write(|w| w.delete_image(id))? {
            return Err(CacheError::ImageNotFound(id.into()));
        }
        self.record(TraceOp::Delete, id, "", 0);
        for entry in self.scope_entries()?.into_iter().filter(|e| e.image_id == id) {
            self.evict(&entry, EvictReason::ImageDeleted)?;
        }
        Ok(())
    }
}

/// Deletes entry `id`'s rows and records the intent to remove its volume, counting the
/// eviction; `None` if the entry is already gone.
pub(super) fn evict_rows(
    w: &mut Writer<'_>,
    scope: &str,
    id: u64,
) -> Result<Option<(EntryRecord, PendingRemoval)>, CatalogError> {
    let Some(entry) = w.delete_entry(scope, id)? else { return Ok(None) };
    let backend_name = w.volume(&entry.volume_id)?.map(|v| v.backend_name).unwrap_or_else(|| format!("cache-{id}"));
    w.delete_volume(&entry.volume_id)?;
    let intent =
        Intent::Evict { entry_id: entry.id, volume_id: entry.volume_id.clone(), backend_name: backend_name.clone() };
    let intent_id = w.begin(intent, now_ms())?;
    w.add("evictions", 1)?;
    Ok(Some((entry, PendingRemoval { entry_id: id, backend_name, intent_id })))
}
