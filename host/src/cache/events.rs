//! Cinder's cache notifications, published on an in-process broadcast channel that the API
//! streams to clients. Each create emits exactly one hit or miss; each eviction one evict.
#![forbid(unsafe_code)]

use serde::Serialize;

/// Why an entry left the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvictReason {
    /// Chosen by the eviction policy to make room.
    Capacity,
    /// Its image changed (`updated_at` differs).
    Stale,
    /// Its image was deleted.
    ImageDeleted,
    /// An operator evicted it, or deleted its cache volume.
    Operator,
    /// Its backend volume was gone at start-up.
    Lost,
    /// Its image's source changed and a refresh filled the new version in its place.
    Refreshed,
    /// The eviction policy let it go without pressure (`expiry`, e.g. a time-to-live).
    Expired,
}

/// One notification, with Cinder's payload (`image_id`, `host`, `volume_id`, `size`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CacheEvent {
    /// `image_volume_cache.hit`, `.miss` or `.evict`.
    pub event_type: &'static str,
    pub image_id: String,
    /// The host that filled the entry (Cinder's `host` of the cache entry).
    pub host: String,
    /// The host that served this request or made this eviction.
    pub serving_host: String,
    /// The user's volume for hit and miss; the cache volume for evict.
    pub volume_id: String,
    /// Size in GiB.
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<EvictReason>,
    /// `image_volume_cache.progress` only: how far an image's write has come.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// `image_volume_cache.warm` only: how a warm-up ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warm: Option<WarmResult>,
}

/// How far the write of an image into a volume has come. Sent at most twice a second per
/// write, and once at the end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// The backend volume written (`cache-<entry>` for a fill, `volume-<id>` for a direct write).
    pub target: String,
    /// Bytes of the image's virtual disk read, converted and written (holes skipped count).
    pub done_bytes: u64,
    /// The image's virtual size (0 while unknown, e.g. a stream without a length).
    pub total_bytes: u64,
    /// Bytes actually written into the volume so far (zero runs and holes are not written).
    pub written_bytes: u64,
    /// `done_bytes` of `total_bytes`, 0 to 100 (0 while the total is unknown).
    pub percent: u32,
    /// Virtual bytes per second since the write began.
    pub bytes_per_second: u64,
    pub elapsed_ms: u64,
    /// True for the last report of the write.
    pub done: bool,
}

/// Turns a write's progress callbacks into at most two reports a second, plus the last one.
#[derive(Debug)]
pub struct ProgressTicker {
    target: String,
    started: std::time::Instant,
    last: Option<std::time::Instant>,
}

impl ProgressTicker {
    pub const INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

    pub fn new(target: &str) -> Self {
        ProgressTicker { target: target.to_string(), started: std::time::Instant::now(), last: None }
    }

    /// A report for `done` of `total` bytes, `written` of them written, if one is due (always
    /// when `last`).
    pub fn tick(&mut self, done: u64, total: u64, written: u64, last: bool) -> Option<Progress> {
        let now = std::time::Instant::now();
        if !last && self.last.is_some_and(|t| now.duration_since(t) < Self::INTERVAL) {
            return None;
        }
        self.last = Some(now);
        let elapsed = now.duration_since(self.started);
        let percent = if total == 0 { 0 } else { (done.min(total) as u128 * 100 / total as u128) as u32 };
        Some(Progress {
            target: self.target.clone(),
            done_bytes: done,
            total_bytes: total,
            written_bytes: written,
            percent: if last { 100 } else { percent },
            bytes_per_second: (done as f64 / elapsed.as_secs_f64().max(1e-3)) as u64,
            elapsed_ms: elapsed.as_millis() as u64,
            done: last,
        })
    }
}

/// How a warm-up ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WarmResult {
    /// The number `POST /v1/cache/warm` answered with.
    pub warm_id: u64,
    /// `filled`, `already-cached`, `refused` (a policy or the quota said no) or `failed`.
    pub status: &'static str,
    /// The entry, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry_id: Option<u64>,
    /// Why it was refused or failed, safe to show.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

pub const HIT: &str = "image_volume_cache.hit";
pub const MISS: &str = "image_volume_cache.miss";
pub const EVICT: &str = "image_volume_cache.evict";
pub const PROGRESS: &str = "image_volume_cache.progress";
pub const WARM: &str = "image_volume_cache.warm";
