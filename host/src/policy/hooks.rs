//! Event hooks (`events.on-hit`, `on-insert`, `on-evict`) off the request path.
//!
//! A request only puts its event on a bounded queue (never waits: when the queue is full the
//! event is dropped and counted). One thread delivers the events in order, each within the
//! short event budget (`EngineOptions::event_deadline`). A plugin whose hooks fail
//! [`FAILURES_TO_DISABLE`] times in a row gets no more events (logged once, counted, shown in
//! `GET /v1/policies`); its decisions go on, and a swap brings a fresh plugin with hooks enabled.
//! Events still queued for a plugin that was swapped out are skipped.
#![forbid(unsafe_code)]

use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;

use super::plugin::{WasmPlugin, FAILURES_TO_DISABLE};
use super::stats::SlotStats;
use super::{PolicyEvent, Slot};

/// Events waiting for delivery at most; more are dropped (and counted).
pub(crate) const QUEUE_LEN: usize = 4096;

enum Job {
    Deliver { slot: Slot, plugin: Arc<WasmPlugin>, event: PolicyEvent },
    Flush(SyncSender<()>),
}

/// The queue and its delivery thread; the thread ends when the queue is dropped.
#[derive(Debug)]
pub(crate) struct HookQueue {
    tx: SyncSender<Job>,
}

impl HookQueue {
    pub(crate) fn start(stats: Arc<[SlotStats; 3]>) -> Self {
        let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE_LEN);
        let spawned = std::thread::Builder::new().name("policy-events".into()).spawn(move || {
            for job in rx {
                match job {
                    Job::Deliver { slot, plugin, event } => deliver(slot, &plugin, &event, &stats[slot.index()]),
                    Job::Flush(ack) => {
                        let _ = ack.send(());
                    }
                }
            }
        });
        if let Err(e) = spawned {
            // Without the thread every event is dropped (and counted); decisions are unaffected.
            tracing::error!(error = %e, "could not start the policy event thread; event hooks will not run");
        }
        HookQueue { tx }
    }

    /// Queues `event` for `plugin`, never waiting.
    pub(crate) fn push(&self, slot: Slot, plugin: Arc<WasmPlugin>, event: PolicyEvent, stats: &SlotStats) {
        if plugin.hooks().skipped() {
            return;
        }
        match self.tx.try_send(Job::Deliver { slot, plugin, event }) {
            Ok(()) => {}
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                stats.record_event_dropped();
                if let Job::Deliver { plugin, .. } = job {
                    plugin.stats().record_event_dropped();
                }
            }
        }
    }

    /// Waits until every event queued before this call has been delivered.
    pub(crate) fn flush(&self) {
        let (ack, done) = mpsc::sync_channel(1);
        if self.tx.send(Job::Flush(ack)).is_ok() {
            let _ = done.recv();
        }
    }
}

pub(crate) fn deliver(slot: Slot, plugin: &WasmPlugin, event: &PolicyEvent, stats: &SlotStats) {
    // Switched off, or swapped out since the event was queued: a plugin that left its slot
    // does not keep the thread busy with what was queued for it.
    if plugin.hooks().skipped() {
        return;
    }
    let result = plugin.notify(event);
    for stats in [stats, plugin.stats()] {
        stats.record_event(result.is_ok());
        if let Err(error) = &result {
            stats.record_failure(error);
        }
    }
    if let Err(error) = &result {
        tracing::warn!(%slot, plugin = %plugin.info.name, kind = error.kind(), %error, "policy plugin failed on an event hook");
    }
    if plugin.hooks().record(result.is_ok()) {
        tracing::error!(%slot, plugin = %plugin.info.name,
            "event hooks disabled after {FAILURES_TO_DISABLE} failures in a row; the plugin keeps deciding (swap it to re-enable)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::plugin::HookHealth;

    #[test]
    fn hooks_switch_off_after_failures_in_a_row_only() {
        let h = HookHealth::default();
        for _ in 0..FAILURES_TO_DISABLE - 1 {
            assert!(!h.record(false));
        }
        assert!(!h.record(true), "a success resets the count");
        for _ in 0..FAILURES_TO_DISABLE - 1 {
            assert!(!h.record(false));
        }
        assert!(!h.disabled());
        assert!(h.record(false), "the fifth failure in a row switches them off, once");
        assert!(h.disabled() && !h.record(false));
    }
}
