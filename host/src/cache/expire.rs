//! Expiry: entries the eviction policy lets go without pressure (WIT 0.1.1 `expiry.expire`, e.g.
//! the `ttl` plugin's time-to-live). A thread asks every `policy.expire_interval_seconds`.
//!
//! The policy decides and the named entries leave the catalog under the ledger's lock, the lock
//! a fill chooses its victims under and a pin is checked under: an entry a fill in progress has
//! chosen stays that fill's to evict, and an entry pinned in the meantime is never expired. The
//! rows go in one transaction; each volume goes at once or when the last clone from it ends, as
//! for any eviction, and each expired entry is one `evict` event with the reason `expired`.
#![forbid(unsafe_code)]

use std::time::Duration;

use super::evict::evict_rows;
use super::{now_ms, policy_entry, CacheError, CacheService, EvictReason};
use crate::policy::View;

/// What one expiry round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expired {
    /// Entries evicted, by id.
    pub evicted: Vec<u64>,
    /// Why nothing was asked (no expiry rule in the eviction slot) or the answer was refused.
    pub skipped: Option<String>,
}

impl CacheService {
    /// Asks the eviction slot's policy which entries to let go now, and evicts them.
    pub fn expire(&self) -> Result<Expired, CacheError> {
        let no_rule =
            || Expired { evicted: Vec::new(), skipped: Some("the eviction policy has no expiry rule".into()) };
        if !self.policies.has_expiry() {
            // Checked before the catalog is read: most daemons ask this every minute for nothing.
            return Ok(no_rule());
        }
        let scope = self.config.scope().to_string();
        let ledger = self.ledger.lock();
        let mut entries: Vec<_> = self.scope_entries()?.iter().map(policy_entry).collect();
        for e in &mut entries {
            // A fill in progress evicts these itself; they are not the policy's to expire.
            e.pinned |= ledger.is_doomed(e.id);
        }
        let view = View::new(entries, now_ms());
        // Swapped out meanwhile: nothing to ask.
        let expiring = match self.policies.expire(&view) {
            None => return Ok(no_rule()),
            Some(Err(error)) => {
                return Ok(Expired {
                    evicted: Vec::new(),
                    skipped: Some(format!("the eviction policy failed: {error}")),
                })
            }
            Some(Ok(ids)) => ids,
        };
        if expiring.is_empty() {
            return Ok(Expired::default());
        }
        let removed = self.catalog.write(|w| {
            let mut removed = Vec::new();
            // A pin cannot have come in meanwhile (pins take the ledger's lock); an operator's
            // evict may have, and then the row is gone and `evict_rows` answers None.
            for &id in &expiring {
                removed.extend(evict_rows(w, &scope, id)?);
            }
            Ok(removed)
        })?;
        drop(ledger);
        let evicted = removed.iter().map(|(e, _)| e.id).collect();
        for (entry, removal) in removed {
            tracing::info!(entry = entry.id, image_id = %entry.image_id, "cache entry expired by the eviction policy");
            self.after_eviction(&entry, removal, EvictReason::Expired);
        }
        Ok(Expired { evicted, skipped: None })
    }

    /// Runs [`CacheService::expire`] every `interval` on a thread of its own, for as long as the
    /// service lives (`Duration::ZERO`: never).
    pub fn spawn_expirer(self: &std::sync::Arc<Self>, interval: Duration) {
        if interval.is_zero() {
            return;
        }
        self.every("volcache-expire", interval, |cache| match cache.expire() {
            Ok(Expired { evicted, .. }) if !evicted.is_empty() => {
                tracing::info!(count = evicted.len(), "expired cache entries evicted");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "expiry round failed; the next one tries again"),
        });
    }
}
