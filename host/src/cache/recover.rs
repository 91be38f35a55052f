//! When the catalog and the backend disagree wholesale: a missing, emptied or damaged catalog
//! in front of a backend full of volumes. The daemon refuses to start on such a pair (the
//! volumes would silently vanish from the API and their cache volumes be swept as orphans);
//! `volcache catalog rebuild` adopts the backend's user volumes into the catalog instead.
#![forbid(unsafe_code)]

use crate::backend::Backend;
use crate::catalog::{Catalog, VolumeRecord};

use super::{timestamp, CacheError, GIB};

/// The project that owns volumes whose owner the catalog no longer knows: adopted by a
/// rebuild, or set aside by reconciliation (a create that never completed, or one whose record
/// was lost). An operator looks at them and deletes them or hands them back.
pub const QUARANTINE_PROJECT: &str = "volcache-quarantine";

/// Why the daemon will not start on this catalog.
#[derive(Debug, thiserror::Error)]
#[error(
    "catalog {catalog} records no volume, but the backend holds {count} volcache volumes (e.g. {example}): \
     the catalog was lost or replaced. Stop here and restore the catalog from a backup, or adopt the \
     volumes with `volcache catalog rebuild` (README: Recovering the catalog)"
)]
pub struct CatalogMismatch {
    pub catalog: String,
    pub count: usize,
    pub example: String,
}

fn is_ours(name: &str) -> bool {
    name.starts_with("volume-") || name.starts_with("cache-")
}

/// Refuses a catalog that records no volume in front of a backend holding volcache volumes.
pub fn check_catalog_matches(catalog: &Catalog, backend: &dyn Backend) -> Result<(), anyhow::Error> {
    if !catalog.read(|r| r.volumes())?.is_empty() {
        return Ok(());
    }
    // Volumes an interrupted change is making or removing are accounted for by its intent
    // (a daemon stopped during its very first fill, say); reconciliation resolves them.
    let pending: std::collections::HashSet<String> =
        catalog.read(|r| r.intents())?.into_iter().map(|i| i.intent.backend_name().to_string()).collect();
    let ours: Vec<String> = backend.list()?.into_iter().filter(|n| is_ours(n) && !pending.contains(n)).collect();
    if let Some(example) = ours.first() {
        return Err(CatalogMismatch {
            catalog: catalog.path().display().to_string(),
            count: ours.len(),
            example: example.clone(),
        }
        .into());
    }
    Ok(())
}

/// What a rebuild did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Rebuilt {
    /// User volumes the catalog did not know, now recorded under [`QUARANTINE_PROJECT`].
    pub adopted: Vec<String>,
    /// Cache volumes the catalog did not know: the daemon removes them at start-up (their
    /// images are unknown, so they cannot become entries again); clones of them stay intact.
    pub unknown_cache_volumes: Vec<String>,
}

/// A record for a volume found on the backend that the catalog does not know.
pub fn adopted_record(backend: &dyn Backend, volume_id: &str, backend_name: &str) -> Result<VolumeRecord, CacheError> {
    let size = backend.size(backend_name)?.div_ceil(GIB).max(1);
    Ok(VolumeRecord {
        id: volume_id.to_string(),
        backend_name: backend_name.to_string(),
        size,
        image_id: None,
        project_id: QUARANTINE_PROJECT.into(),
        user_id: QUARANTINE_PROJECT.into(),
        cache: None,
        cache_entry: None,
        created_at: timestamp(),
        cloned_from: None,
        clone_mode: None,
        uncached_reason: None,
    })
}

/// Adopts every `volume-<id>` the catalog does not record, and moves the entry id sequence past
/// every `cache-<n>` on the backend so no new entry reuses a name.
pub fn rebuild(catalog: &Catalog, backend: &dyn Backend) -> Result<Rebuilt, CacheError> {
    let known: std::collections::HashSet<String> =
        catalog.read(|r| r.volumes())?.into_iter().map(|v| v.backend_name).collect();
    let mut done = Rebuilt::default();
    let mut highest_entry = 0;
    for name in backend.list()? {
        if known.contains(&name) {
            continue;
        }
        if let Some(id) = name.strip_prefix("volume-") {
            let record = adopted_record(backend, id, &name)?;
            catalog.write(|w| w.put_volume(&record))?;
            done.adopted.push(record.id);
        } else if let Some(n) = name.strip_prefix("cache-") {
            highest_entry = highest_entry.max(n.parse::<u64>().unwrap_or(0));
            done.unknown_cache_volumes.push(name);
        }
    }
    catalog.write(|w| w.skip_ids("entry", highest_entry))?;
    Ok(done)
}
