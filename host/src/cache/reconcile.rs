//! Start-up reconciliation: finish or undo what a crash left half done, so that no backend
//! volume is orphaned, no entry points at nothing, and no user's data is touched.
//!
//! Each intent is resolved by what is already durable:
//! - `Fill`: the entry, its volume record and the intent's removal commit together, so a
//!   leftover `Fill` means the entry never made it: its cache volume is removed.
//! - `Create`: a user volume whose record never committed is **set aside**, never removed: it
//!   is recorded under the quarantine project for an operator to delete or hand back (its id may
//!   have been handed out if the catalog lost its last commit).
//! - `Evict` / `Delete`: the catalog rows are already gone; the backend volume is removed.
//!
//! Then sweeps over the backend's listing: cache volumes (`cache-*`) no entry refers to are
//! removed, entries whose volume is missing are dropped, and user volumes (`volume-*`) no
//! record names are set aside under the quarantine project like those of a `Create` intent
//! (intents are committed lazily, so a power cut can lose one whose volume reached the disk).
//! Volumes named `volume-*` are never removed except through their own `Delete` intent, and a
//! user volume whose record remains but whose volume is gone is reported (logged, and in
//! [`Reconciled::user_volumes_missing`]), its record kept. Last,
//! the backend frees what removed volumes still held if their clones are gone (RBD trash).
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};

use super::{recover, CacheError, CacheService, EvictReason};
use crate::catalog::{Intent, VolumeRecord};

/// What reconciliation did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reconciled {
    pub intents_resolved: u64,
    /// Volumes whose create did not complete, recorded under the quarantine project.
    pub quarantined: Vec<String>,
    pub orphan_cache_volumes_removed: Vec<String>,
    pub entries_without_volume_dropped: Vec<u64>,
    /// Removed volumes whose held storage was freed (their last clone was gone).
    pub held_volumes_freed: u64,
    /// Partial downloads a crash left in the spool directory.
    pub spool_files_removed: u64,
    /// User volumes whose record stays but whose backend volume is gone (removed behind
    /// volcache's back, or its name lost in a power cut): reported, never dropped.
    pub user_volumes_missing: Vec<String>,
}

impl CacheService {
    /// Removes partial downloads left by a crash (`.volcache-download.*` in the spool
    /// directory; this daemon owns its state directory, so none is in use).
    fn clear_spool(&self) -> u64 {
        let Ok(dir) = std::fs::read_dir(&self.config().spool_dir) else { return 0 };
        let mut removed = 0;
        for entry in dir.flatten() {
            let name = entry.file_name();
            if !name.to_string_lossy().starts_with(".volcache-download.") {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "could not remove a partial download")
                }
            }
        }
        if removed > 0 {
            tracing::warn!(removed, "removed partial downloads left by a crash");
        }
        removed
    }

    /// Records a user volume whose create did not complete under the quarantine project, for
    /// an operator to delete or hand back; never removes it.
    fn set_aside(&self, volume_id: &str, name: &str, done: &mut Reconciled) -> Result<VolumeRecord, CacheError> {
        let record = recover::adopted_record(self.backend(), volume_id, name)?;
        self.catalog().write(|w| w.put_volume(&record))?;
        tracing::warn!(
            volume_id, volume = %name, project = recover::QUARANTINE_PROJECT,
            "a volume whose create did not complete was set aside; delete it or hand it back"
        );
        done.quarantined.push(volume_id.to_string());
        Ok(record)
    }

    /// Runs reconciliation; call it before serving.
    pub fn reconcile(&self) -> Result<Reconciled, CacheError> {
        let mut done = Reconciled::default();
        for record in self.catalog().read(|r| r.intents())? {
            match &record.intent {
                Intent::Fill { entry_id, volume_id, backend_name } => {
                    let committed = self.catalog().read(|r| r.entry(*entry_id))?.is_some();
                    if !committed {
                        self.backend().remove(backend_name)?;
                        self.catalog().write(|w| w.delete_volume(volume_id).map(drop))?;
                    }
                }
                Intent::Create { volume_id, backend_name } => {
                    // Never removed: the create may have answered its client before the crash
                    // (a catalog that fell back to an older commit forgets that). Set aside.
                    let recorded = self.catalog().read(|r| r.volume(volume_id))?.is_some();
                    if !recorded && self.backend().exists(backend_name)? {
                        self.set_aside(volume_id, backend_name, &mut done)?;
                    }
                }
                Intent::Evict { entry_id, volume_id, backend_name } => {
                    let scope = self.config().scope().to_string();
                    self.catalog().write(|w| {
                        w.delete_entry(&scope, *entry_id)?;
                        w.delete_volume(volume_id).map(drop)
                    })?;
                    self.backend().remove(backend_name)?;
                }
                Intent::Delete { volume_id, backend_name } => {
                    self.catalog().write(|w| w.delete_volume(volume_id).map(drop))?;
                    self.backend().remove(backend_name)?;
                }
            }
            tracing::warn!(intent = ?record.intent, "finished an operation interrupted by a crash");
            self.catalog().write(|w| w.end(record.id))?;
            done.intents_resolved += 1;
        }

        // Sets and maps, not nested scans: a backend can hold tens of thousands of volumes.
        let mut volumes = self.catalog().read(|r| r.volumes())?;
        let entries = self.catalog().read(|r| r.entries())?;
        let on_backend = self.backend().list()?;
        let recorded: HashSet<String> = volumes.iter().map(|v| v.backend_name.clone()).collect();
        for name in &on_backend {
            let Some(volume_id) = name.strip_prefix("volume-") else { continue };
            if !recorded.contains(name) {
                volumes.push(self.set_aside(volume_id, name, &mut done)?);
            }
        }
        let cache_volumes: HashSet<&str> =
            volumes.iter().filter(|v| v.cache_entry.is_some()).map(|v| v.backend_name.as_str()).collect();
        for name in on_backend.iter().filter(|n| n.starts_with("cache-")) {
            if !cache_volumes.contains(name.as_str()) {
                tracing::warn!(volume = %name, "removing a cache volume no entry refers to");
                self.backend().remove(name)?;
                done.orphan_cache_volumes_removed.push(name.clone());
            }
        }
        let listed: HashSet<&str> = on_backend.iter().map(String::as_str).collect();
        let by_id: HashMap<&str, &str> = volumes.iter().map(|v| (v.id.as_str(), v.backend_name.as_str())).collect();
        for entry in entries {
            let present = by_id.get(entry.volume_id.as_str()).is_some_and(|name| listed.contains(name));
            if !present {
                tracing::warn!(entry = entry.id, image_id = %entry.image_id, "dropping a cache entry whose volume is gone");
                self.evict(&entry, EvictReason::Lost)?;
                done.entries_without_volume_dropped.push(entry.id);
            }
        }
        // A user's volume is never forgotten silently: one whose volume is gone is reported, and
        // its record stays for the operator (deleting it through the API removes the record).
        for volume in volumes.iter().filter(|v| v.cache_entry.is_none() && !listed.contains(v.backend_name.as_str())) {
            tracing::error!(
                volume_id = %volume.id, volume = %volume.backend_name, project = %volume.project_id,
                "a user volume is recorded but missing from the backend; its data is lost: tell its owner, then delete it"
            );
            done.user_volumes_missing.push(volume.id.clone());
        }
        done.held_volumes_freed = self.backend().collect_garbage()?;
        done.spool_files_removed = self.clear_spool();
        *self.reconciled.lock().unwrap_or_else(|p| p.into_inner()) = Some(done.clone());
        Ok(done)
    }

    /// What the last reconciliation found; `None` before the first.
    pub fn last_reconciled(&self) -> Option<Reconciled> {
        self.reconciled.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Of the volumes the last reconciliation reported (missing from the backend, set aside),
    /// how many are still recorded (a record still under the quarantine project for the
    /// latter): each drops out once an operator deletes or hands it back.
    pub fn awaiting_operator(&self) -> Result<(usize, usize), CacheError> {
        let Some(done) = self.last_reconciled() else { return Ok((0, 0)) };
        // One read transaction for all of them: after a catalog rebuild there may be thousands.
        Ok(self.catalog().read(|r| {
            let mut missing = 0;
            for id in &done.user_volumes_missing {
                missing += usize::from(r.volume(id)?.is_some());
            }
            let mut aside = 0;
            for id in &done.quarantined {
                aside += usize::from(r.volume(id)?.is_some_and(|v| v.project_id == recover::QUARANTINE_PROJECT));
            }
            Ok((missing, aside))
        })?)
    }
}
