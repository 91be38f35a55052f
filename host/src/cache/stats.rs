//! Counters and histograms of the cache, for `GET /v1/cache/stats` and `/metrics`. Counters
//! live in the catalog and commit with the change they count, so they survive a crash exactly.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use super::{CacheError, CacheService};

/// Counters since the catalog was created.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub entries: u64,
    /// Entries an operator pinned (never evicted to make room).
    pub pinned_entries: u64,
    pub cache_bytes_allocated: u64,
    pub cache_gigabytes: u64,
    /// Image bytes not downloaded thanks to hits.
    pub bytes_not_downloaded: u64,
    /// Bytes not written thanks to hits.
    pub bytes_not_written: u64,
    pub fills: u64,
    pub fill_ms_total: u64,
    pub uncached: u64,
    /// Fills in progress and the GiB they have reserved.
    pub fills_in_progress: u64,
    pub reserved_gigabytes: u64,
    /// Evicted cache volumes whose storage is still held because volumes cloned from them
    /// live (RBD trash), and the bytes they hold. Freed with their last clone.
    pub evicted_volumes_held: u64,
    pub evicted_bytes_held: u64,
}

/// Upper bounds (seconds) of the fill duration histogram's buckets.
const FILL_BUCKETS: [f64; 10] = [0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, f64::INFINITY];

/// Fill durations since start, for `/metrics`.
#[derive(Debug, Default)]
pub(super) struct FillHistogram {
    counts: [AtomicU64; FILL_BUCKETS.len()],
    sum_ms: AtomicU64,
}

impl FillHistogram {
    pub(super) fn observe(&self, ms: u64) {
        let seconds = ms as f64 / 1e3;
        let bucket = FILL_BUCKETS.iter().position(|le| seconds <= *le).unwrap_or(FILL_BUCKETS.len() - 1);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

/// Failed fills since start, by class.
#[derive(Debug, Default)]
pub(super) struct FillFailures([AtomicU64; 4]);

const CLASSES: [(super::FailureClass, &str); 4] = [
    (super::FailureClass::Source, "source"),
    (super::FailureClass::NoSpace, "no_space"),
    (super::FailureClass::Unavailable, "unavailable"),
    (super::FailureClass::ImageGone, "image_gone"),
];

impl FillFailures {
    pub(super) fn record(&self, class: super::FailureClass) {
        if let Some(i) = CLASSES.iter().position(|(c, _)| *c == class) {
            self.0[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (reason label, count) for every class, zeros included.
    pub(super) fn snapshot(&self) -> Vec<(&'static str, u64)> {
        CLASSES.iter().zip(&self.0).map(|((_, label), n)| (*label, n.load(Ordering::Relaxed))).collect()
    }
}

/// Clones of cache entries since start, by how the backend made them.
#[derive(Debug, Default)]
pub(super) struct CloneModes([AtomicU64; 3]);

const MODES: [(crate::backend::CloneMode, &str); 3] = [
    (crate::backend::CloneMode::Reflink, "reflink"),
    (crate::backend::CloneMode::SparseCopy, "sparse-copy"),
    (crate::backend::CloneMode::SnapshotClone, "snapshot-clone"),
];

impl CloneModes {
    pub(super) fn record(&self, mode: crate::backend::CloneMode) {
        if let Some(i) = MODES.iter().position(|(m, _)| *m == mode) {
            self.0[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (mode label, count) for every mode, zeros included.
    pub(super) fn snapshot(&self) -> Vec<(&'static str, u64)> {
        MODES.iter().zip(&self.0).map(|((_, label), n)| (*label, n.load(Ordering::Relaxed))).collect()
    }
}

/// A copy of the fill histogram: (upper bound in seconds, count in that bucket alone).
#[derive(Clone, Debug, PartialEq)]
pub struct FillSnapshot {
    pub buckets: Vec<(f64, u64)>,
    pub sum_seconds: f64,
}

impl CacheService {
    /// Fill durations since this process started.
    pub fn fill_histogram(&self) -> FillSnapshot {
        let h = &self.fill_seconds;
        FillSnapshot {
            buckets: FILL_BUCKETS.iter().zip(&h.counts).map(|(le, c)| (*le, c.load(Ordering::Relaxed))).collect(),
            sum_seconds: h.sum_ms.load(Ordering::Relaxed) as f64 / 1e3,
        }
    }

    pub fn stats(&self) -> Result<Stats, CacheError> {
        let entries = self.scope_entries()?;
        let held = self.backend.held()?;
        let reserved = self.ledger.reserved();
        Ok(self.catalog.read(|r| {
            Ok(Stats {
                hits: r.counter("hits")?,
                misses: r.counter("misses")?,
                evictions: r.counter("evictions")?,
                entries: entries.len() as u64,
                pinned_entries: entries.iter().filter(|e| e.pinned).count() as u64,
                cache_bytes_allocated: entries.iter().map(|e| e.allocated_bytes).sum(),
                cache_gigabytes: entries.iter().map(|e| e.size).sum(),
                bytes_not_downloaded: r.counter("bytes_not_downloaded")?,
                bytes_not_written: r.counter("bytes_not_written")?,
                fills: r.counter("fills")?,
                fill_ms_total: r.counter("fill_ms_total")?,
                uncached: r.counter("uncached")?,
                fills_in_progress: reserved.len() as u64,
                reserved_gigabytes: reserved.iter().map(|(_, r)| r.size_gib).sum(),
                evicted_volumes_held: held.volumes,
                evicted_bytes_held: held.bytes,
            })
        })?)
    }
}
