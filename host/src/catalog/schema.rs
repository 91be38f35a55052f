//! Every table of the catalog, in one place. Keys are fixed-width integers or strings; values
//! are JSON records carrying a version tag `v`, so a later schema can read older rows.
//!
//! | table                        | key                      | value                    |
//! |------------------------------|--------------------------|--------------------------|
//! | `meta`                       | name                     | u64 (schema version, id counters) |
//! | `images`                     | image id                 | [`ImageRecord`]          |
//! | `volumes`                    | volume id                | [`VolumeRecord`]         |
//! | `image_volume_cache_entries` | entry id (u64)           | [`EntryRecord`]          |
//! | `cache_index`                | `scope \0 image id`      | entry id                 |
//! | `intents`                    | intent id (u64)          | [`IntentRecord`]         |
//! | `counters`                   | name                     | u64                      |
//! | `policy_slots`               | slot name                | [`PolicyChoice`]         |
#![forbid(unsafe_code)]

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use crate::image::DiskFormat;

/// Bumped when a table's meaning changes; a catalog of another version is refused at open.
pub const SCHEMA_VERSION: u64 = 1;

pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
pub const VOLUMES: TableDefinition<&str, &[u8]> = TableDefinition::new("volumes");
pub const CACHE_ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("image_volume_cache_entries");
pub const CACHE_INDEX: TableDefinition<&str, u64> = TableDefinition::new("cache_index");
pub const INTENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("intents");
pub const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
pub const POLICY_SLOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("policy_slots");

/// What an operator put into a policy slot at run time; it survives restarts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyChoice {
    pub source: StoredSource,
    pub params: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StoredSource {
    Builtin {
        name: String,
    },
    File {
        path: String,
    },
    /// An uploaded component, kept by the daemon as `<state_dir>/plugins/<sha256>.wasm`.
    Upload {
        sha256: String,
    },
}

/// A registered image (Glance's view of it, plus what volcache learned by probing it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub id: String,
    pub name: String,
    /// A path, `http(s)://` URL or `glance+http(s)://.../v2/images/ID`.
    pub source: String,
    pub disk_format: DiskFormat,
    /// Expected md5 (Glance's `checksum`), lower-case hex.
    pub checksum: Option<String>,
    /// Virtual (raw) size in bytes, read from the image when it was registered.
    pub virtual_size: u64,
    /// RFC 3339, milliseconds; changing it invalidates cache entries of the image.
    pub updated_at: String,
    pub created_at: String,
    /// Check the source this often and refill the entry when it changed (`None`: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_interval_seconds: Option<u64>,
    /// The source's version when it was last read (see `image::version`), for refresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_version: Option<String>,
}

/// How a volume got its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheOutcome {
    /// Cloned from an existing cache entry.
    Hit,
    /// Filled the cache entry it was then cloned from.
    Miss,
    /// Written directly: cache disabled, not admitted, or no room.
    Uncached,
}

/// A volume: a user's, or a cache entry's (owned by the internal tenant).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub id: String,
    /// The volume's name on the backend.
    pub backend_name: String,
    /// Size in GiB (Cinder's unit).
    pub size: u64,
    pub image_id: Option<String>,
    pub project_id: String,
    pub user_id: String,
    /// `None` for cache volumes themselves.
    pub cache: Option<CacheOutcome>,
    /// The cache entry this volume is (cache volumes only).
    pub cache_entry: Option<u64>,
    pub created_at: String,
    /// The cache entry this user volume was cloned from (hit or miss).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloned_from: Option<u64>,
    /// How it was cloned: `reflink`, `sparse-copy` or `snapshot-clone` (RBD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_mode: Option<String>,
    /// Why it was written without the cache (uncached only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncached_reason: Option<String>,
}

/// A row of `image_volume_cache_entries`, Cinder's fields first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRecord {
    pub id: u64,
    pub host: String,
    pub cluster_name: Option<String>,
    pub image_id: String,
    pub image_updated_at: String,
    pub volume_id: String,
    /// Provisioned size in GiB.
    pub size: u64,
    /// RFC 3339.
    pub last_used: String,
    pub last_used_ms: u64,
    pub created_ms: u64,
    pub allocated_bytes: u64,
    /// Bytes read from the image's source to fill the entry: what each hit does not download.
    #[serde(default)]
    pub source_bytes: u64,
    pub hit_count: u64,
    pub pinned: bool,
}

/// A multi-step change in progress; see `cache::reconcile`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Intent {
    /// Filling cache entry `entry_id` into backend volume `backend_name`.
    Fill { entry_id: u64, volume_id: String, backend_name: String },
    /// Evicting an entry: catalog row and backend volume both go.
    Evict { entry_id: u64, volume_id: String, backend_name: String },
    /// Creating user volume `volume_id` (clone or direct write) as `backend_name`.
    Create { volume_id: String, backend_name: String },
    /// Deleting user volume `volume_id`.
    Delete { volume_id: String, backend_name: String },
}

impl Intent {
    /// The backend volume the change makes or removes.
    pub fn backend_name(&self) -> &str {
        match self {
            Intent::Fill { backend_name, .. }
            | Intent::Evict { backend_name, .. }
            | Intent::Create { backend_name, .. }
            | Intent::Delete { backend_name, .. } => backend_name,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentRecord {
    pub id: u64,
    pub started_ms: u64,
    #[serde(flatten)]
    pub intent: Intent,
}

/// JSON with a version tag around a record.
#[derive(Serialize, Deserialize)]
struct Tagged<T> {
    v: u32,
    #[serde(flatten)]
    record: T,
}

pub(crate) fn encode<T: Serialize + Clone>(record: &T) -> Vec<u8> {
    serde_json::to_vec(&Tagged { v: 1, record: record.clone() }).expect("records always serialize")
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice::<Tagged<T>>(bytes).map(|t| t.record)
}
