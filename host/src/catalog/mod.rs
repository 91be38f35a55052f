//! The catalog: volcache's metadata in one redb file (images, volumes, cache entries, intents,
//! counters; every table in [`schema`]).
//!
//! All access goes through [`Catalog::read`] and [`Catalog::write`], each one redb transaction:
//! a multi-table change (insert an entry, record its volume, clear the intent) is atomic and
//! durable when `write` returns. redb is synchronous; async callers use `spawn_blocking`.
#![forbid(unsafe_code)]

mod commit;
mod error;
mod rows;
pub mod schema;

pub use error::CatalogError;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use redb::{Database, ReadTransaction, ReadableTable, WriteTransaction};

use schema::*;
pub use schema::{
    CacheOutcome, EntryRecord, ImageRecord, Intent, IntentRecord, PolicyChoice, StoredSource, VolumeRecord,
};

/// Below this much free space in its directory, a catalog whose last write failed is unhealthy.
const LOW_SPACE: u64 = 4 << 20;

/// The metadata store. After an I/O failure redb refuses every later transaction until it is
/// reopened ("Previous I/O error"); the catalog then reopens its file on the next call, so a
/// full disk that gets space back needs no restart.
#[derive(Debug)]
pub struct Catalog {
    path: PathBuf,
    db: RwLock<Arc<Database>>,
    /// An I/O error happened: reopen before the next transaction.
    failed: AtomicBool,
    /// The last write failed with this; cleared by the next successful write.
    last_failure: std::sync::Mutex<Option<String>>,
    /// Group commit: commits made so far, and how many of them are known to be on disk.
    committed: std::sync::atomic::AtomicU64,
    durable: std::sync::atomic::AtomicU64,
    /// Durable commits made since the catalog was opened: each one waited for the disk.
    flushes: std::sync::atomic::AtomicU64,
    /// Held by the writer that flushes for the others (see [`Catalog::make_durable`]).
    flushing: std::sync::Mutex<()>,
    /// Writers between asking for the write lock and committing (see [`Catalog::make_durable`]).
    writing: std::sync::atomic::AtomicUsize,
    /// Changes with every commit that wrote the images table, and with every reopen (which may
    /// lose lazy commits): see [`Catalog::images_version`].
    images_version: std::sync::atomic::AtomicU64,
    /// Tests only: how long a durable commit takes beyond the disk's own time (a slow disk).
    #[cfg(test)]
    slow_flush: std::sync::Mutex<std::time::Duration>,
}

/// Typed reads inside one read transaction.
#[expect(missing_debug_implementations, reason = "a transaction handle has nothing to show")]
pub struct Reader<'t> {
    txn: &'t ReadTransaction,
}

/// Typed reads and writes inside one write transaction.
#[expect(missing_debug_implementations, reason = "a transaction handle has nothing to show")]
pub struct Writer<'t> {
    txn: &'t WriteTransaction,
    /// This transaction wrote the images table.
    touched_images: bool,
}

impl<'t> Writer<'t> {
    fn new(txn: &'t WriteTransaction) -> Self {
        Writer { txn, touched_images: false }
    }
}

/// The message of a caught panic.
fn panic_text(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "the storage engine panicked".into())
}

impl Catalog {
    /// Opens (or creates) the catalog at `path`, creating every table, checking the version and
    /// reading every row once: a damaged file is [`CatalogError::Damaged`], never a panic.
    pub fn open(path: &Path) -> Result<Catalog, CatalogError> {
        let shown = path.display().to_string();
        let opened = std::panic::catch_unwind(|| Catalog::open_unchecked(path));
        match opened {
            Ok(Err(CatalogError::Storage(detail))) if detail.contains("orrupt") => {
                Err(CatalogError::Damaged { path: shown, detail })
            }
            Ok(result) => result,
            Err(panic) => Err(CatalogError::Damaged { path: shown, detail: panic_text(panic) }),
        }
    }

    fn create(path: &Path) -> Result<Database, CatalogError> {
        Database::create(path).map_err(|e| {
            let detail = e.to_string();
            let shown = path.display().to_string();
            match e {
                redb::DatabaseError::Storage(redb::StorageError::Corrupted(_)) => {
                    CatalogError::Damaged { path: shown, detail }
                }
                redb::DatabaseError::DatabaseAlreadyOpen => CatalogError::InUse { path: shown },
                _ if detail.contains("Not a redb database") => CatalogError::Damaged { path: shown, detail },
                _ => CatalogError::Open { path: shown, detail },
            }
        })
    }

    fn open_unchecked(path: &Path) -> Result<Catalog, CatalogError> {
        let db = Catalog::create(path)?;
        let catalog = Catalog {
            path: path.to_path_buf(),
            db: RwLock::new(Arc::new(db)),
            failed: AtomicBool::new(false),
            last_failure: Default::default(),
            committed: Default::default(),
            durable: Default::default(),
            flushes: Default::default(),
            flushing: Default::default(),
            writing: Default::default(),
            images_version: Default::default(),
            #[cfg(test)]
            slow_flush: Default::default(),
        };
        catalog.write(|w| {
            for table in [IMAGES, VOLUMES] {
                w.txn.open_table(table)?;
            }
            w.txn.open_table(CACHE_ENTRIES)?;
            w.txn.open_table(CACHE_INDEX)?;
            w.txn.open_table(INTENTS)?;
            w.txn.open_table(COUNTERS)?;
            w.txn.open_table(POLICY_SLOTS)?;
            let mut meta = w.txn.open_table(META)?;
            let found = meta.get("schema_version")?.map(|v| v.value());
            match found {
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION)?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(found) => return Err(CatalogError::Version { path: path.display().to_string(), found }),
            }
            Ok(())
        })?;
        // Every row once: damage surfaces here, at start-up, not in a request.
        catalog.read(|r| {
            r.images()?;
            r.volumes()?;
            r.entries()?;
            r.intents()?;
            r.policy_choices()?;
            r.index_len()?;
            Ok(())
        })?;
        Ok(catalog)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `None` when the catalog works; else why not. After a failed write the catalog is
    /// unhealthy until a write succeeds again, so this tries one small write then.
    pub fn health(&self) -> Option<String> {
        let failure = self.last_failure.lock().unwrap_or_else(|p| p.into_inner()).clone()?;
        // A write failed and the directory is (nearly) full: small writes may still fit in the
        // file's free pages, but the next create's will not.
        let dir = self.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if let Ok(st) = rustix::fs::statvfs(dir) {
            let free = st.f_bavail.saturating_mul(st.f_frsize);
            if free < LOW_SPACE {
                return Some(format!("{failure}; {} has {} KiB free", dir.display(), free / 1024));
            }
        }
        match self.write(|w| w.add_meta("health_probes", 1)) {
            Ok(_) => None,
            Err(e) => Some(format!("{failure} (still failing: {e})")),
        }
    }

    /// Reopens the file after an I/O failure; a no-op when nothing failed.
    fn recover(&self) -> Result<(), CatalogError> {
        if !self.failed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
        if !self.failed.load(Ordering::SeqCst) {
            return Ok(());
        }
        // redb allows one open handle per file: the old one must close first. A transaction
        // still holding it (they fail at once after an I/O error) makes this attempt fail; the
        // next call tries again.
        let old = std::mem::replace(&mut *db, Arc::new(Catalog::reopen_placeholder()?));
        drop(old);
        *db = Arc::new(Catalog::create(&self.path)?);
        self.images_version.fetch_add(1, Ordering::SeqCst);
        self.failed.store(false, Ordering::SeqCst);
        tracing::warn!(catalog = %self.path.display(), "catalog reopened after an I/O failure");
        Ok(())
    }

    /// An empty in-memory database that holds the slot while the file is reopened.
    fn reopen_placeholder() -> Result<Database, CatalogError> {
        Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| CatalogError::Storage(e.to_string()))
    }

    fn track<R>(&self, result: Result<R, CatalogError>, writing: bool) -> Result<R, CatalogError> {
        match &result {
            Err(CatalogError::Io(e)) => {
                *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("catalog: {e}"));
                if !self.failed.swap(true, Ordering::SeqCst) {
                    tracing::error!(catalog = %self.path.display(), error = %e, "catalog I/O failed; it reopens on the next call");
                }
            }
            Ok(_) if writing => {
                self.last_failure.lock().unwrap_or_else(|p| p.into_inner()).take();
            }
            _ => {}
        }
        result
    }

    /// A number that changes whenever the images table may have changed (a commit that wrote
    /// it, a reopen): a reader that cached something derived from the images rereads them only
    /// when it moved. Equal numbers mean nothing changed; the value itself means nothing.
    pub fn images_version(&self) -> u64 {
        self.images_version.load(Ordering::SeqCst)
    }

    /// Write transactions committed since this catalog was opened, durable or not (group
    /// commit's own flushes included): what a request costs the catalog.
    pub fn commits(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }

    /// Durable commits (disk flushes) since this catalog was opened: with
    /// [`Catalog::commits`], how much group commit shares.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }

    fn handle(&self) -> Result<Arc<Database>, CatalogError> {
        self.recover()?;
        Ok(Arc::clone(&self.db.read().unwrap_or_else(|p| p.into_inner())))
    }
}

#[cfg(test)]
mod tests;
