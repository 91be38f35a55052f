//! Per-slot counters: calls, failures by kind, fallbacks, and recent call latency.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::CallError;

/// Latencies kept for the percentiles: the most recent calls.
const WINDOW: usize = 1024;

/// Counters of one slot; they survive swaps so an operator sees the slot's whole history.
#[derive(Debug, Default)]
pub struct SlotStats {
    calls: AtomicU64,
    failures: AtomicU64,
    timeouts: AtomicU64,
    memory: AtomicU64,
    traps: AtomicU64,
    invalid: AtomicU64,
    fallbacks: AtomicU64,
    events_delivered: AtomicU64,
    events_failed: AtomicU64,
    events_dropped: AtomicU64,
    recent_ns: Mutex<VecDeque<u64>>,
}

/// A point-in-time copy of [`SlotStats`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    pub calls: u64,
    pub failures: u64,
    pub timeouts: u64,
    pub memory_limit: u64,
    pub traps: u64,
    pub invalid_answers: u64,
    pub fallbacks: u64,
    /// Event hook calls that returned, that failed, and events dropped because the queue was
    /// full (hooks run off the request path).
    pub events_delivered: u64,
    pub events_failed: u64,
    pub events_dropped: u64,
    /// Median and 99th percentile of the last calls, in microseconds.
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
}

impl SlotStats {
    pub(crate) fn record_call(&self, elapsed: Duration) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut recent = self.recent_ns.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == WINDOW {
            recent.pop_front();
        }
        recent.push_back(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }

    pub(crate) fn record_failure(&self, error: &CallError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let counter = match error {
            CallError::Timeout => &self.timeouts,
            CallError::MemoryLimit => &self.memory,
            CallError::InvalidAnswer(_) => &self.invalid,
            CallError::Trap(_) | CallError::Incompatible(_) | CallError::Rejected(_) => &self.traps,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_event(&self, ok: bool) {
        let counter = if ok { &self.events_delivered } else { &self.events_failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_event_dropped(&self) {
        self.events_dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_fallback(&self) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let mut recent: Vec<u64> = self.recent_ns.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
        recent.sort_unstable();
        let pct = |p: usize| {
            recent.get((recent.len() * p / 100).min(recent.len().saturating_sub(1))).map_or(0, |ns| ns / 1000)
        };
        StatsSnapshot {
            calls: self.calls.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            memory_limit: self.memory.load(Ordering::Relaxed),
            traps: self.traps.load(Ordering::Relaxed),
            invalid_answers: self.invalid.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            events_delivered: self.events_delivered.load(Ordering::Relaxed),
            events_failed: self.events_failed.load(Ordering::Relaxed),
            events_dropped: self.events_dropped.load(Ordering::Relaxed),
            latency_p50_us: pct(50),
            latency_p99_us: pct(99),
        }
    }
}
