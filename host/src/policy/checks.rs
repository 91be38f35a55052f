//! The host's checks of plugins: answer validation (every eviction answer, in the daemon and the
//! simulator alike), the smoke test a plugin passes before it may serve, and reading a plugin
//! file safely.
#![forbid(unsafe_code)]

use volcache_policy_core as cinder;

use super::plugin::WasmPlugin;
use super::{unit, CallError, Candidate, Entry, LoadError, Need, Slot, View};

/// A victim list is valid when every id is a distinct, unpinned entry of the view and together
/// they cover `need`.
pub(crate) fn check_victims(need: Need, view: &View, ids: &[u64]) -> Result<(), CallError> {
    let invalid = |msg: String| Err(CallError::InvalidAnswer(msg));
    if ids.len() > view.entries().len() {
        return invalid(format!(
            "{} victims named, but the cache has only {} entries",
            ids.len(),
            view.entries().len()
        ));
    }
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return invalid(format!("entry {} named twice", w[0]));
    }
    let mut freed = 0u64;
    for &id in ids {
        let entry = match view.get(id) {
            Some(e) => e,
            None => return invalid(format!("entry {id} is not in the cache")),
        };
        if entry.pinned {
            return invalid(format!("entry {id} is pinned"));
        }
        freed = freed.saturating_add(cinder::EntryView::size_in(&entry, need.basis));
    }
    if !cinder::covers(freed, ids.len(), need) {
        return invalid(format!(
            "victims free {freed} {} and {} entries; {} {} and {} entries are needed",
            unit(need.basis),
            ids.len(),
            need.amount,
            unit(need.basis),
            need.entries
        ));
    }
    Ok(())
}

/// Whether any answer can cover `need`: all the unpinned entries together do.
pub(crate) fn coverable(need: Need, view: &View) -> bool {
    let (freed, count) = view.entries().filter(|e| !e.pinned).fold((0u64, 0usize), |(freed, count), e| {
        (freed.saturating_add(cinder::EntryView::size_in(&e, need.basis)), count + 1)
    });
    cinder::covers(freed, count, need)
}

/// An eviction answer as the host takes it (the WIT's rules): `Ok(true)` when it passes
/// [`check_victims`]; `Ok(false)` when no answer could cover `need` and this one is a best effort
/// of distinct, unpinned entries of the view (nothing is then evicted and the candidate is not
/// cached); an error otherwise.
pub(crate) fn check_answer(need: Need, view: &View, ids: &[u64]) -> Result<bool, CallError> {
    match check_victims(need, view, ids) {
        Ok(()) => Ok(true),
        Err(_) if !coverable(need, view) => {
            check_victims(Need { amount: 0, basis: need.basis, entries: 0 }, view, ids).map(|()| false)
        }
        Err(e) => Err(e),
    }
}

/// Decisions on small made-up caches, each answered validly, before a plugin may serve: needs
/// counted in GiB and in bytes, a need of entries only, a pinned entry, and an empty cache. A
/// policy that ignores `need.amount` or pins fails here, not on the first real eviction.
pub(super) fn smoke_test(slot: Slot, plugin: &WasmPlugin) -> Result<(), CallError> {
    const MIB: u64 = 1 << 20;
    let entries = (1..=4u64)
        .map(|i| Entry {
            id: i,
            size_gib: i,
            allocated_bytes: 300 * MIB * i,
            last_used_ms: 1_000 * i,
            created_ms: 500 * i,
            hits: i,
            pinned: i == 2,
        })
        .collect();
    let view = View::new(entries, 20_000);
    let empty = View::new(Vec::new(), 20_000);
    let candidate = Candidate {
        image_id: "volcache-smoke-test".into(),
        size_gib: 1,
        virtual_size_bytes: 1 << 30,
        allocated_bytes: 1 << 29,
    };
    let case = |what: &str, e: CallError| match e {
        CallError::InvalidAnswer(m) => CallError::InvalidAnswer(format!("{what}: {m}")),
        other => other,
    };
    match slot {
        Slot::Admission => {
            for (what, v) in [("a cache with a pinned entry", &view), ("an empty cache", &empty)] {
                // Either answer is fine; the call must return.
                let _admitted = plugin.admit(&candidate.wire(), v.wire()).map_err(|e| case(what, e))?;
            }
        }
        Slot::Capacity => {
            for (what, v) in [("a cache with a pinned entry", &view), ("an empty cache", &empty)] {
                let _need = plugin.shortfall(&candidate.wire(), v.wire()).map_err(|e| case(what, e))?;
            }
        }
        Slot::Eviction => {
            let needs = [
                ("1 entry", Need { amount: 0, basis: cinder::SizeBasis::Provisioned, entries: 1 }),
                ("4 GiB", Need { amount: 4, basis: cinder::SizeBasis::Provisioned, entries: 0 }),
                ("700 MiB allocated", Need { amount: 700 * MIB, basis: cinder::SizeBasis::Allocated, entries: 0 }),
            ];
            for (what, need) in needs {
                let what = format!("need {what} of 4 entries (entry 2 pinned)");
                let ids = plugin.victims(need.into(), &view).map_err(|e| case(&what, e))?;
                check_victims(need, &view, &ids).map_err(|e| case(&what, e))?;
            }
            let need = Need { amount: 1, basis: cinder::SizeBasis::Provisioned, entries: 1 };
            let ids = plugin.victims(need.into(), &empty).map_err(|e| case("an empty cache", e))?;
            if !ids.is_empty() {
                return Err(CallError::InvalidAnswer(format!("an empty cache: named {} entries", ids.len())));
            }
            if plugin.has_expiry() {
                for (what, v) in
                    [("expire on a cache with a pinned entry", &view), ("expire on an empty cache", &empty)]
                {
                    let ids = plugin.expire(v.wire()).map_err(|e| case(what, e))?;
                    check_victims(Need::default(), v, &ids).map_err(|e| case(what, e))?;
                }
            }
        }
    }
    Ok(())
}

/// Reads a plugin file: a regular file only (a FIFO or `/dev/zero` is refused at once, never
/// read), and at most `max` bytes.
pub(crate) fn read_plugin_file(path: &std::path::Path, max: usize) -> Result<Vec<u8>, LoadError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let read_error = |source| LoadError::Read { path: path.to_path_buf(), source };
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    if !meta.is_file() {
        let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file");
        return Err(read_error(e));
    }
    if meta.len() > max as u64 {
        let e = std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{} bytes; plugins may be at most {max} bytes (raise policy.max_plugin_mib to allow larger ones)",
                meta.len()
            ),
        );
        return Err(read_error(e));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max as u64 + 1).read_to_end(&mut bytes).map_err(read_error)?;
    Ok(bytes)
}
