//! The scope's live accounting that the catalog does not hold: **reservations** of fills in
//! progress, the **victims** they have chosen, **leases** of hits on entries, and removals of
//! evicted cache volumes that wait for their last lease.
//!
//! An entry's life, as this ledger and the catalog see it together:
//!
//! ```text
//!   reserved (fill running, counted in every view, pinned) --fill fails--> gone (nothing evicted)
//!      | fill commits: entry row + victims' removal in one transaction
//!      v
//!   ready (row in the catalog) --lease--> leased (a hit is cloning; count > 0)
//!      | evicted: row deleted, intent recorded          | last lease ends
//!      v                                                v
//!   closing (no new lease) --no lease left--> volume removed, intent cleared --> gone
//! ```
//!
//! A hit takes a lease (under the lease lock, which never waits for a fill's decision), then
//! re-reads the entry's row: a row that is still there means any eviction will see the lease
//! and leave the volume until it ends. A fill holds the planning lock while it builds the policy
//! view and records its reservation, so two fills never decide on the same free space or the
//! same victims.
//!
//! Everything here is in memory: one daemon owns a backend (see `Backend::claim`), and a crash
//! loses no accounting that matters, because every reservation and lease ends with its
//! request. Shared across hosts, the same records would live in RADOS omap under a `cls_lock`.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// Space and a slot held by a fill in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub image_id: String,
    pub size_gib: u64,
    pub allocated_bytes: u64,
    pub created_ms: u64,
}

/// An evicted cache volume whose removal waits for the last lease on its entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingRemoval {
    pub entry_id: u64,
    pub backend_name: String,
    /// The `Evict` intent to clear once the volume is gone.
    pub intent_id: u64,
}

/// What fills plan with: reservations and chosen victims.
#[derive(Debug, Default)]
pub struct State {
    reservations: BTreeMap<u64, Reservation>,
    /// Victim entry id -> the reserving entry that chose it.
    doomed: BTreeMap<u64, u64>,
}

/// What hits and evictions meet in: leases and removals waiting for them. Its own lock, so a
/// hit never waits for a fill's policy decision.
#[derive(Debug, Default)]
struct Leases {
    leases: HashMap<u64, u32>,
    /// Entries whose row is gone: no new lease; their removal, if deferred.
    closing: HashMap<u64, Option<PendingRemoval>>,
    /// Removals whose last lease has ended, to be carried out by the next caller.
    ready: Vec<PendingRemoval>,
}

impl State {
    pub fn reservations(&self) -> impl Iterator<Item = (u64, &Reservation)> {
        self.reservations.iter().map(|(id, r)| (*id, r))
    }

    pub fn is_doomed(&self, entry_id: u64) -> bool {
        self.doomed.contains_key(&entry_id)
    }

    /// Records a fill's reservation and the victims it will remove when it commits.
    pub fn reserve(&mut self, entry_id: u64, reservation: Reservation, victims: &[u64]) {
        self.reservations.insert(entry_id, reservation);
        for v in victims {
            self.doomed.insert(*v, entry_id);
        }
    }
}

/// The ledger of one cache scope.
#[derive(Debug, Default)]
pub struct Ledger {
    state: Mutex<State>,
    leased: Mutex<Leases>,
}

impl Ledger {
    /// Holds the planning state: a fill builds its view and reserves under this guard.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn leased(&self) -> MutexGuard<'_, Leases> {
        self.leased.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends a reservation (the fill committed or failed) and frees its victims.
    pub fn release(&self, entry_id: u64) {
        let mut s = self.lock();
        s.reservations.remove(&entry_id);
        s.doomed.retain(|_, by| *by != entry_id);
    }

    /// A lease on `entry_id`, unless it is being evicted. The caller must then check that the
    /// entry's row still exists.
    pub fn lease(self: &Arc<Self>, entry_id: u64) -> Option<Lease> {
        let mut s = self.leased();
        if s.closing.contains_key(&entry_id) {
            return None;
        }
        *s.leases.entry(entry_id).or_insert(0) += 1;
        Some(Lease { ledger: self.clone(), entry_id })
    }

    pub fn leases(&self, entry_id: u64) -> u32 {
        self.leased().leases.get(&entry_id).copied().unwrap_or(0)
    }

    /// The entry's row is gone: refuses new leases. Returns the removal if it can happen now,
    /// or keeps it until the last lease ends.
    pub fn close(&self, removal: PendingRemoval) -> Option<PendingRemoval> {
        let mut s = self.leased();
        let id = removal.entry_id;
        if s.leases.get(&id).copied().unwrap_or(0) == 0 {
            s.closing.remove(&id);
            return Some(removal);
        }
        tracing::info!(entry = id, "evicted entry is being cloned: its volume goes when the clone ends");
        s.closing.insert(id, Some(removal));
        None
    }

    /// Removals whose last lease has ended since the last call.
    pub fn take_ready(&self) -> Vec<PendingRemoval> {
        std::mem::take(&mut self.leased().ready)
    }

    /// Reservations in progress (for stats and tests).
    pub fn reserved(&self) -> Vec<(u64, Reservation)> {
        self.lock().reservations.iter().map(|(id, r)| (*id, r.clone())).collect()
    }
}

/// A hit's hold on an entry: eviction leaves its volume in place until every lease ends.
#[derive(Debug)]
pub struct Lease {
    ledger: Arc<Ledger>,
    entry_id: u64,
}

impl Lease {
    pub fn entry_id(&self) -> u64 {
        self.entry_id
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut s = self.ledger.leased();
        let left = match s.leases.get_mut(&self.entry_id) {
            Some(n) => {
                *n -= 1;
                *n
            }
            None => 0,
        };
        if left == 0 {
            s.leases.remove(&self.entry_id);
            if let Some(Some(removal)) = s.closing.remove(&self.entry_id) {
                s.ready.push(removal);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn removal(id: u64) -> PendingRemoval {
        PendingRemoval { entry_id: id, backend_name: format!("cache-{id}"), intent_id: 100 + id }
    }

    #[test]
    fn an_unleased_entry_is_removed_at_once() {
        let l = Arc::new(Ledger::default());
        assert_eq!(l.close(removal(1)), Some(removal(1)));
        assert!(l.take_ready().is_empty());
    }

    #[test]
    fn a_leased_entry_is_removed_when_its_last_lease_ends() {
        let l = Arc::new(Ledger::default());
        let a = l.lease(1).unwrap();
        let b = l.lease(1).unwrap();
        assert_eq!(l.close(removal(1)), None, "leased: the removal waits");
        assert!(l.lease(1).is_none(), "a closing entry takes no new lease");
        drop(a);
        assert!(l.take_ready().is_empty(), "one lease still holds it");
        drop(b);
        assert_eq!(l.take_ready(), vec![removal(1)]);
        assert_eq!(l.leases(1), 0);
    }

    #[test]
    fn a_released_reservation_frees_its_victims_and_only_its_own() {
        let l = Ledger::default();
        let r = Reservation { image_id: "i".into(), size_gib: 1, allocated_bytes: 1, created_ms: 0 };
        l.lock().reserve(10, r.clone(), &[1, 2]);
        l.lock().reserve(11, r, &[3]);
        assert!(l.lock().is_doomed(1) && l.lock().is_doomed(3));
        l.release(10);
        assert!(!l.lock().is_doomed(1) && !l.lock().is_doomed(2));
        assert!(l.lock().is_doomed(3));
        assert_eq!(l.reserved().len(), 1);
    }
}
