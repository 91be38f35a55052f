//! Catalog errors, and how redb's errors become them: an I/O failure is kept apart
//! ([`CatalogError::Io`]) because the catalog must reopen its file after one.
#![forbid(unsafe_code)]

use super::schema::SCHEMA_VERSION;

/// A catalog failure.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog {path} cannot be opened: {detail}")]
    Open { path: String, detail: String },
    #[error(
        "another volcache owns this state directory: its catalog {path} is open in another process; stop that \
         daemon first, or give this one a state_dir of its own"
    )]
    InUse { path: String },
    #[error(
        "catalog {path} is damaged ({detail}); move it aside and restore a backup, or rebuild it from the \
         backend with `volcache catalog rebuild` (README: Recovering the catalog)"
    )]
    Damaged { path: String, detail: String },
    #[error("catalog {path} has schema version {found}; this volcache reads version {SCHEMA_VERSION}")]
    Version { path: String, found: u64 },
    #[error("catalog: {0}")]
    Storage(String),
    /// The catalog's file failed (ENOSPC, EIO); the catalog reopens itself on the next call.
    #[error("catalog: {0}")]
    Io(String),
    #[error("catalog row {table}/{key} is unreadable: {source}")]
    Decode { table: &'static str, key: String, source: serde_json::Error },
}

impl From<redb::StorageError> for CatalogError {
    fn from(e: redb::StorageError) -> Self {
        match e {
            redb::StorageError::Io(_) | redb::StorageError::PreviousIo => CatalogError::Io(e.to_string()),
            e => CatalogError::Storage(e.to_string()),
        }
    }
}

impl From<redb::TransactionError> for CatalogError {
    fn from(e: redb::TransactionError) -> Self {
        match e {
            redb::TransactionError::Storage(s) => s.into(),
            e => CatalogError::Storage(e.to_string()),
        }
    }
}

impl From<redb::CommitError> for CatalogError {
    fn from(e: redb::CommitError) -> Self {
        match e {
            redb::CommitError::Storage(s) => s.into(),
            e => CatalogError::Storage(e.to_string()),
        }
    }
}

impl From<redb::TableError> for CatalogError {
    fn from(e: redb::TableError) -> Self {
        match e {
            redb::TableError::Storage(s) => s.into(),
            e => CatalogError::Storage(e.to_string()),
        }
    }
}
