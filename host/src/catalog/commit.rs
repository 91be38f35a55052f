//! How transactions reach the disk: reads, and writes with group commit. A writer alone commits
//! durably, one transaction and one fsync. Writers that overlap each commit without waiting for
//! the disk; then one fsync'd commit covers every commit finished before it took the write lock,
//! so they share a flush. Records whose loss reconciliation covers may skip the flush altogether
//! ([`Catalog::write_lazily`]).

use std::sync::atomic::Ordering;

use redb::{Database, ReadableDatabase, WriteTransaction};

use super::{Catalog, CatalogError, Reader, Writer};

/// How long a durable commit waits for writers already under way to commit first, so that one
/// flush covers them too. Nobody waits when nobody else writes.
const GROUP_WAIT: std::time::Duration = std::time::Duration::from_micros(500);

/// One writer counted in [`Catalog::writing`] until dropped.
struct Writing<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Catalog {
    pub fn read<R>(&self, f: impl FnOnce(&Reader<'_>) -> Result<R, CatalogError>) -> Result<R, CatalogError> {
        let db = self.handle()?;
        let result = (|| {
            let txn = db.begin_read()?;
            f(&Reader { txn: &txn })
        })();
        self.track(result, false)
    }

    /// Runs `f` in a write transaction and commits it; an error aborts everything `f` did.
    /// Durable when it returns.
    pub fn write<R>(&self, f: impl FnOnce(&mut Writer<'_>) -> Result<R, CatalogError>) -> Result<R, CatalogError> {
        let committed = self.write_or_abort(|w| f(w).map(Some))?;
        Ok(committed.expect("a transaction that answers Some is committed"))
    }

    /// Like [`Catalog::write`], but commits only when `f` answers `Some`; `None` aborts
    /// everything `f` did.
    pub fn write_or_abort<R>(
        &self,
        f: impl FnOnce(&mut Writer<'_>) -> Result<Option<R>, CatalogError>,
    ) -> Result<Option<R>, CatalogError> {
        let db = self.handle()?;
        let result = (|| {
            let (seq, result) = {
                let _writing = self.writing();
                let txn = db.begin_write()?;
                let mut writer = Writer::new(&txn);
                let Some(result) = f(&mut writer)? else {
                    txn.abort()?;
                    return Ok(None);
                };
                let touched = writer.touched_images;
                if self.writing.load(Ordering::SeqCst) == 1 {
                    // Nobody to share a flush with: this commit is the flush, and no second
                    // transaction is needed to make it durable.
                    writer.add_meta("durable_commits", 1)?;
                    self.commit_durably(txn, touched)?;
                    return Ok(Some(result));
                }
                (self.commit_lazily(txn, touched)?, result)
            };
            self.make_durable(&db, seq)?;
            Ok(Some(result))
        })();
        self.track(result, true)
    }

    /// Runs `f` in a write transaction and commits it **without waiting for the disk**: it
    /// becomes durable with the next durable commit (any [`Catalog::write`]), and a crash or a
    /// power cut before that loses it. For records whose loss start-up reconciliation already
    /// covers: an intent that only says where a change might leave a volume (a volume left
    /// without record is found by listing the backend), or the end of an intent whose work is
    /// done (done again, it changes nothing).
    pub fn write_lazily<R>(
        &self,
        f: impl FnOnce(&mut Writer<'_>) -> Result<R, CatalogError>,
    ) -> Result<R, CatalogError> {
        let db = self.handle()?;
        let result = (|| {
            let _writing = self.writing();
            let txn = db.begin_write()?;
            let mut writer = Writer::new(&txn);
            let result = f(&mut writer)?;
            let touched = writer.touched_images;
            self.commit_lazily(txn, touched)?;
            Ok(result)
        })();
        // A commit that did not reach the disk proves nothing about the disk: it does not clear
        // a failure (see [`Catalog::health`]).
        self.track(result, false)
    }

    fn writing(&self) -> Writing<'_> {
        self.writing.fetch_add(1, Ordering::SeqCst);
        Writing(&self.writing)
    }

    /// Group commit, step 1: commits without waiting for the disk and returns the commit's
    /// sequence number. Concurrent writers each commit this way, then share one fsync.
    fn commit_lazily(&self, mut txn: WriteTransaction, touched_images: bool) -> Result<u64, CatalogError> {
        txn.set_durability(redb::Durability::None).map_err(|e| CatalogError::Storage(e.to_string()))?;
        txn.commit()?;
        Ok(self.committed_one(touched_images))
    }

    /// Commits `txn` and waits for the disk: it covers every commit counted so far, which
    /// [`Catalog::make_durable`] then need not flush again.
    fn commit_durably(&self, txn: WriteTransaction, touched_images: bool) -> Result<(), CatalogError> {
        // Read with the write lock held: every commit counted so far has finished.
        let covered = self.committed.load(Ordering::SeqCst);
        #[cfg(test)]
        std::thread::sleep(*self.slow_flush.lock().unwrap_or_else(|p| p.into_inner()));
        txn.commit()?;
        self.committed_one(touched_images);
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.durable.fetch_max(covered, Ordering::SeqCst);
        Ok(())
    }

    /// Counts a commit that returned; answers its sequence number.
    fn committed_one(&self, touched_images: bool) -> u64 {
        if touched_images {
            self.images_version.fetch_add(1, Ordering::SeqCst);
        }
        // Counted only once committed: a durable commit that reads the counter covers it.
        self.committed.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Group commit, step 2: returns once commit `seq` is on disk. The first writer to get here
    /// makes every commit so far durable with one fsync'd commit; those waiting behind it find
    /// theirs covered and return without another.
    ///
    /// If the durable commit fails, every writer it was to cover fails too (each tries its own,
    /// which fails the same way). An I/O failure marks the catalog for reopening, and a reopened
    /// redb file holds only durable commits: the lazy ones vanish with it, so a write that
    /// answered an error left nothing behind.
    fn make_durable(&self, db: &Database, seq: u64) -> Result<(), CatalogError> {
        let _flushing = self.flushing.lock().unwrap_or_else(|p| p.into_inner());
        if self.durable.load(Ordering::SeqCst) >= seq {
            return Ok(());
        }
        // Writers already under way commit first (briefly), so that this flush covers them.
        let started = std::time::Instant::now();
        while self.writing.load(Ordering::SeqCst) > 0 && started.elapsed() < GROUP_WAIT {
            std::thread::yield_now();
        }
        let txn = db.begin_write()?;
        // A writer that committed durably while this one waited for the lock may have covered it.
        if self.durable.load(Ordering::SeqCst) >= seq {
            txn.abort()?;
            return Ok(());
        }
        // Every commit counted so far has finished (a writer counts its commit after it
        // returns), so this commit covers them all, including those that committed while the
        // previous durable commit was on its way to the disk and now wait behind this one.
        // Counted before the lock, they would each wait for a disk flush of their own.
        Writer::new(&txn).add_meta("durable_commits", 1)?;
        self.commit_durably(txn, false)
    }
}
