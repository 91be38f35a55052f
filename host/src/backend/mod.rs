//! Storage backends: where volumes live and how they are cloned. A backend is a small trait of
//! single-purpose methods; the cache service only ever talks to `dyn Backend`.
//!
//! Backends: [`file::FileBackend`] (always) and, with the `rbd` cargo feature, the Ceph RBD
//! backend `rbd::RbdBackend`. Only `rbd::ffi` holds `unsafe` code. For tests of the cache core:
//! [`memory::MemoryBackend`] and the fault-injecting wrapper [`faulty::FaultyBackend`].

pub mod faulty;
pub mod file;
pub mod memory;
#[cfg(feature = "rbd")]
pub mod rbd;

use std::path::PathBuf;

use std::io;

use crate::sparse::BlockDevice;

/// How a clone was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CloneMode {
    /// Copy-on-write: the clone shares all of the source's blocks (XFS/btrfs reflink).
    Reflink,
    /// Only the source's data extents were copied (SEEK_DATA + copy_file_range).
    SparseCopy,
    /// Copy-on-write clone of the source's protected snapshot (RBD).
    SnapshotClone,
}

/// Settings of the RBD backend (Cinder's option names in the config file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RbdOptions {
    /// `rbd_pool`.
    pub pool: String,
    /// `rbd_ceph_conf`; none: librados' defaults (`CEPH_CONF`, /etc/ceph/ceph.conf).
    pub ceph_conf: Option<PathBuf>,
    /// `rbd_user`: the rados id without `client.`.
    pub user: String,
    /// `rbd_keyring_conf`.
    pub keyring: Option<PathBuf>,
    /// `rbd_max_clone_depth`: a clone deeper than this is flattened in the background.
    pub max_clone_depth: u32,
    /// Images are named `<prefix><volume name>`; only those are ever touched.
    pub prefix: String,
    /// Asynchronous writes in flight per volume being written.
    pub write_depth: usize,
}

impl Default for RbdOptions {
    fn default() -> Self {
        RbdOptions {
            pool: "rbd".into(),
            ceph_conf: None,
            user: "admin".into(),
            keyring: None,
            max_clone_depth: 5,
            prefix: "volcache-".into(),
            write_depth: 8,
        }
    }
}

/// Volume names every backend accepts: letters, digits, `-`, `_`, `.`, not starting with `.`.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
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
    #[error("{what} is already used by another volcache daemon ({owner}); {remedy}")]
    Claimed { what: String, owner: String, remedy: String },
}

/// Storage still occupied by volumes that were removed while clones of them live (RBD images
/// in the trash); it is freed when their last clone is removed or flattened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Held {
    pub volumes: u64,
    pub bytes: u64,
}

/// A volume store.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Creates an empty (sparse, all zeros) volume of `size` bytes.
    fn create(&self, name: &str, size: u64) -> Result<(), BackendError>;
    /// Opens a volume for reading and writing its contents (e.g. thin, through a `ThinWriter`).
    fn open(&self, name: &str) -> Result<Box<dyn BlockDevice>, BackendError>;
    /// Seals a volume that is about to become a cache entry, so that clones can be taken
    /// from it (on RBD: a protected snapshot). Sealing twice is not an error.
    fn seal(&self, _name: &str) -> Result<(), BackendError> {
        Ok(())
    }
    /// Makes `dst` a copy of `src` sharing as much storage as the backend can; durable when it
    /// returns.
    fn clone_volume(&self, src: &str, dst: &str) -> Result<CloneMode, BackendError>;
    /// [`Backend::clone_volume`], then grows the clone to `size` bytes when one is given
    /// ([`Backend::resize`]); durable when it returns. A backend that can make both one durable
    /// change overrides it (the file backend: one flush instead of two). On an error the clone
    /// may exist: the caller removes it.
    fn clone_grown(&self, src: &str, dst: &str, size: Option<u64>) -> Result<CloneMode, BackendError> {
        let mode = self.clone_volume(src, dst)?;
        if let Some(size) = size {
            self.resize(dst, size)?;
        }
        Ok(mode)
    }
    /// Grows a volume to `size` bytes (new space reads as zeros); shrinking is refused. Durable
    /// when it returns.
    fn resize(&self, name: &str, size: u64) -> Result<(), BackendError>;
    /// Removes a volume; removing one that does not exist is not an error. A volume that
    /// still has clones leaves the listing at once; its storage is freed with its last clone
    /// (see [`Backend::held`]).
    fn remove(&self, name: &str) -> Result<(), BackendError>;
    /// Provisioned size in bytes.
    fn size(&self, name: &str) -> Result<u64, BackendError>;
    /// Bytes actually allocated for this volume.
    fn allocated_bytes(&self, name: &str) -> Result<u64, BackendError>;
    fn exists(&self, name: &str) -> Result<bool, BackendError>;
    /// Every volume's name, for reconciliation.
    fn list(&self) -> Result<Vec<String>, BackendError>;
    /// Claims the backend's volumes for one daemon, named by `owner`, before it serves. Two
    /// daemons sharing a backend would take each other's volumes for orphans and remove them,
    /// so a second claimant gets [`BackendError::Claimed`]. Claiming again as the same owner
    /// (a restart) succeeds.
    fn claim(&self, _owner: &str) -> Result<(), BackendError> {
        Ok(())
    }
    /// Storage held by removed volumes whose clones still live.
    fn held(&self) -> Result<Held, BackendError> {
        Ok(Held::default())
    }
    /// Frees what removed volumes hold once nothing depends on it any more; returns how many
    /// were freed. Reconciliation calls it; backends also do it as clones go.
    fn collect_garbage(&self) -> Result<u64, BackendError> {
        Ok(0)
    }
}
