//! Storage backends: where volumes live and how they are cloned. A backend is a small trait of
//! single-purpose methods; the cache service only ever talks to `dyn Backend`.
#![forbid(unsafe_code)]

pub mod file;

use std::fs::File;
use std::io;

/// How a clone was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CloneMode {
    /// Copy-on-write: the clone shares all of the source's blocks (XFS/btrfs reflink).
    Reflink,
    /// Only the source's data extents were copied (SEEK_DATA + copy_file_range).
    SparseCopy,
}

/// A backend operation that failed, with the volume it concerned.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("volume {0:?} does not exist")]
    NotFound(String),
    #[error("volume {0:?} already exists")]
    Exists(String),
    #[error("invalid volume name {0:?}: use letters, digits, '-', '_' and '.', not starting with '.'")]
    BadName(String),
    #[error("volume {name:?} is {size} bytes; it cannot shrink to {requested}")]
    Shrink { name: String, size: u64, requested: u64 },
    #[error("{op} of volume {name:?}: {source}")]
    Io { op: &'static str, name: String, source: io::Error },
}

/// A volume store.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Creates an empty (sparse, all zeros) volume of `size` bytes.
    fn create(&self, name: &str, size: u64) -> Result<(), BackendError>;
    /// Opens a volume for writing its contents (e.g. thin, through a `ThinWriter`).
    fn open_write(&self, name: &str) -> Result<File, BackendError>;
    /// Makes `dst` a copy of `src` sharing as much storage as the backend can.
    fn clone_volume(&self, src: &str, dst: &str) -> Result<CloneMode, BackendError>;
    /// Grows a volume to `size` bytes (new space reads as zeros); shrinking is refused.
    fn resize(&self, name: &str, size: u64) -> Result<(), BackendError>;
    /// Removes a volume; removing one that does not exist is not an error.
    fn remove(&self, name: &str) -> Result<(), BackendError>;
    /// Provisioned size in bytes.
    fn size(&self, name: &str) -> Result<u64, BackendError>;
    /// Bytes actually allocated for this volume.
    fn allocated_bytes(&self, name: &str) -> Result<u64, BackendError>;
    fn exists(&self, name: &str) -> Result<bool, BackendError>;
    /// Every volume's name, for reconciliation.
    fn list(&self) -> Result<Vec<String>, BackendError>;
}
