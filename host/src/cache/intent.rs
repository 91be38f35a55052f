//! One type for the intent lifecycle of every change that makes a backend volume (fill, clone,
//! direct write): record the intent, do the work, then **commit** the result and clear the
//! intent in one transaction. Dropped without a commit (an error, a panic), the guard undoes the
//! work: it removes the volume it was making and clears the intent. A crash leaves the intent
//! for [`super::reconcile`].
//!
//! A clone's intent is committed lazily (no fsync of its own): the result's commit, which is
//! durable, makes it durable too, so a hit waits for the disk once. A power cut can lose such an
//! intent after its volume reached the disk; reconciliation finds the volume anyway, because it
//! lists the backend: a `volume-*` volume no record names is set aside like one whose intent
//! survived. Fills and direct writes (seconds of download, where one flush is nothing) keep
//! durable intents: the first fill of a new catalog must not look like a lost catalog at the
//! next start (see [`super::recover::check_catalog_matches`]).
#![forbid(unsafe_code)]

use super::{now_ms, CacheError, CacheService};
use crate::catalog::CatalogError;
use crate::catalog::{Intent, Writer};

#[derive(Debug)]
pub struct IntentGuard<'a> {
    service: &'a CacheService,
    id: u64,
    /// The backend volume this change makes, removed on undo.
    volume: String,
    done: bool,
}

impl<'a> IntentGuard<'a> {
    /// Records `intent`, which makes backend volume `volume`, durably.
    pub fn begin(service: &'a CacheService, intent: Intent, volume: &str) -> Result<Self, CacheError> {
        let id = service.catalog().write(|w| w.begin(intent, now_ms()))?;
        Ok(IntentGuard { service, id, volume: volume.to_string(), done: false })
    }

    /// Records `intent` without waiting for the disk: only for a change whose volume
    /// reconciliation finds without it (a `volume-*` clone of an existing entry).
    pub fn begin_lazily(service: &'a CacheService, intent: Intent, volume: &str) -> Result<Self, CacheError> {
        let id = service.catalog().write_lazily(|w| w.begin(intent, now_ms()))?;
        Ok(IntentGuard { service, id, volume: volume.to_string(), done: false })
    }

    /// Runs `f` and clears the intent in one transaction. `f` answering `None` aborts the
    /// transaction, and the guard (dropped) undoes the work.
    pub fn commit<R>(
        mut self,
        f: impl FnOnce(&mut Writer<'_>) -> Result<Option<R>, CatalogError>,
    ) -> Result<Option<R>, CacheError> {
        let id = self.id;
        let result = self.service.catalog().write_or_abort(|w| {
            let Some(r) = f(w)? else { return Ok(None) };
            w.end(id)?;
            Ok(Some(r))
        })?;
        self.done = result.is_some();
        Ok(result)
    }
}

impl Drop for IntentGuard<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Err(e) = self.service.backend().remove(&self.volume) {
            // The intent stays: reconciliation removes the volume at the next start.
            tracing::error!(volume = %self.volume, error = %e, "could not remove a half-made volume; left for start-up reconciliation");
            return;
        }
        if let Err(e) = self.service.catalog().write_lazily(|w| w.end(self.id)) {
            tracing::error!(intent = self.id, error = %e, "could not clear an undone intent; start-up reconciliation will");
        }
    }
}
