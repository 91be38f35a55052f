//! One type for the intent lifecycle of every change that makes a backend volume (fill, clone,
//! direct write): record the intent, do the work, then **commit** the result and clear the
//! intent in one transaction. Dropped without a commit (an error, a panic), the guard undoes the
//! work: it removes the volume it was making and clears the intent. A crash leaves the intent
//! for [`super::reconcile`].
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
    /// Records `intent`, which makes backend volume `volume`.
    pub fn begin(service: &'a CacheService, intent: Intent, volume: &str) -> Result<Self, CacheError> {
        let id = service.catalog().write(|w| w.begin(intent, now_ms()))?;
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
        if let Err(e) = self.service.catalog().write(|w| w.end(self.id)) {
            tracing::error!(intent = self.id, error = %e, "could not clear an undone intent; start-up reconciliation will");
        }
    }
}
