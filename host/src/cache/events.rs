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
}

pub const HIT: &str = "image_volume_cache.hit";
pub const MISS: &str = "image_volume_cache.miss";
pub const EVICT: &str = "image_volume_cache.evict";
