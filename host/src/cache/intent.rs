//! One type for the intent lifecycle of every change that makes a backend volume (fill, clone,
//! direct write): record the intent, do the work, then **commit** the result and clear the
//! intent in one transaction. Dropped without a commit (an error, a panic), the guard undoes the
//! work: it removes the volume it was making and clears the intent. A crash leaves the intent
//! for [`super::reconcile`].
//!
//! A clone's intent is not written at all unless its undo fails: a crash between the clone and
//! its record leaves a `volume-*` volume that no record names, which reconciliation finds by
//! listing the backend and sets aside exactly as it would for a recorded `Create` intent. So a
//! hit is one catalog transaction, not three. An undo that cannot remove the clone records the
//! intent then, so the leftover is accounted for while the daemon runs too. Fills and direct
//! writes (seconds of download, where one flush is nothing) keep durable intents: the first fill
//! of a new catalog must not look like a lost catalog at the next start (see
//! [`super::recover::check_catalog_matches`]).
#![forbid(unsafe_code)]

use super::{now_ms, CacheError, CacheService};
use crate::catalog::CatalogError;
use crate::catalog::{Intent, Writer};

/// Where a guard's intent is: a row in the catalog, or (an unrecorded clone) only here.
#[derive(Debug)]
enum Row {
    Recorded(u64),
    Unrecorded(Intent),
}

#[derive(Debug)]
pub struct IntentGuard<'a> {
    service: &'a CacheService,
    row: Row,
    /// The backend volume this change makes (the intent's), removed on undo.
    volume: String,
    done: bool,
}

impl<'a> IntentGuard<'a> {
    /// Records `intent` durably.
    pub fn begin(service: &'a CacheService, intent: Intent) -> Result<Self, CacheError> {
        let volume = intent.backend_name().to_string();
        let id = service.catalog().write(|w| w.begin(intent, now_ms()))?;
        Ok(IntentGuard { service, row: Row::Recorded(id), volume, done: false })
    }

    /// Guards `intent` without recording it: only for a change whose volume reconciliation
    /// finds and treats the same without it (a `volume-*` clone of an existing entry). The
    /// intent is recorded only if the undo cannot remove the volume.
    pub fn unrecorded(service: &'a CacheService, intent: Intent) -> Self {
        let volume = intent.backend_name().to_string();
        IntentGuard { service, row: Row::Unrecorded(intent), volume, done: false }
    }

    /// Runs `f` and clears the intent in one transaction. `f` answering `None` aborts the
    /// transaction, and the guard (dropped) undoes the work.
    pub fn commit<R>(
        mut self,
        f: impl FnOnce(&mut Writer<'_>) -> Result<Option<R>, CatalogError>,
    ) -> Result<Option<R>, CacheError> {
        let id = match self.row {
            Row::Recorded(id) => Some(id),
            Row::Unrecorded(_) => None,
        };
        let result = self.service.catalog().write_or_abort(|w| {
            let Some(r) = f(w)? else { return Ok(None) };
            if let Some(id) = id {
                w.end(id)?;
            }
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
        let catalog = self.service.catalog();
        if let Err(e) = self.service.backend().remove(&self.volume) {
            // The intent stays (recorded now if it was not): reconciliation resolves it at the
            // next start.
            tracing::error!(volume = %self.volume, error = %e, "could not remove a half-made volume; left for start-up reconciliation");
            if let Row::Unrecorded(intent) = &self.row {
                if let Err(e) = catalog.write(|w| w.begin(intent.clone(), now_ms())) {
                    tracing::error!(volume = %self.volume, error = %e, "could not record the half-made volume either; start-up reconciliation will find it on the backend");
                }
            }
            return;
        }
        if let Row::Recorded(id) = self.row {
            if let Err(e) = catalog.write_lazily(|w| w.end(id)) {
                tracing::error!(intent = id, error = %e, "could not clear an undone intent; start-up reconciliation will");
            }
        }
    }
}
