//! Cinder's image-volume cache policy semantics, as plain `no_std` Rust.
//!
//! This crate is the single source of truth for what the built-in policies decide:
//!
//! - [`admit`] (slot *admission*, plugin `max-size`): an image larger than
//!   `image_volume_cache_max_size_gb` is never cached.
//! - [`shortfall`] (slot *capacity*, plugin `quota`): what must be freed so that after inserting
//!   the candidate the cache holds at most `image_volume_cache_max_size_gb` and at most
//!   `image_volume_cache_max_count` entries (each `0` = unlimited).
//! - [`lru_victims`] (slot *eviction*, plugin `lru`): least-recently-used entries, ties broken by
//!   id, just enough to cover the shortfall; pinned entries never.
//!
//! The same functions are compiled into the wasm plugins in `plugins/` and into the host, which
//! uses them as the fallback whenever a plugin traps, times out or answers nonsense. They read
//! the cache through [`Entries`], implemented both for a slice of [`Entry`] (the host) and for
//! [`Columns`] borrowed from the WIT `view` record (the plugins), so no plugin copies 10,000
//! entries into another type first.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::collections::BinaryHeap;
use alloc::vec::Vec;
use core::cmp::Reverse;
use core::fmt;

mod beyond;
mod params;

pub use beyond::{rate_victims, ttl_expired, ttl_victims, weighed_rows, Frequent, Gdsf, SecondHit, Sieve, Weighed};

pub use params::{
    whole_number, AtomicLimits, CinderLimits, ParamError, KEY_MAX_COUNT, KEY_MAX_SIZE_GB, KEY_SIZE_BASIS,
};

/// Bytes in one GiB, Cinder's size unit.
pub const GIB: u64 = 1 << 30;

/// Which size a capacity decision is counted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SizeBasis {
    /// Provisioned size in whole GiB (Cinder's `size` column).
    #[default]
    Provisioned,
    /// Bytes allocated on the backend.
    Allocated,
}

/// Read access to one cache entry, implemented by the host's and by each plugin's entry type.
pub trait EntryView {
    fn id(&self) -> u64;
    fn size_gib(&self) -> u64;
    fn allocated_bytes(&self) -> u64;
    fn last_used_ms(&self) -> u64;
    fn pinned(&self) -> bool;

    /// The entry's size counted in `basis` units (GiB or bytes).
    fn size_in(&self, basis: SizeBasis) -> u64 {
        match basis {
            SizeBasis::Provisioned => self.size_gib(),
            SizeBasis::Allocated => self.allocated_bytes(),
        }
    }
}

/// A cache entry as the host holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Entry {
    pub id: u64,
    pub size_gib: u64,
    pub allocated_bytes: u64,
    pub last_used_ms: u64,
    pub created_ms: u64,
    pub hits: u64,
    pub pinned: bool,
}

impl EntryView for Entry {
    fn id(&self) -> u64 {
        self.id
    }
    fn size_gib(&self) -> u64 {
        self.size_gib
    }
    fn allocated_bytes(&self) -> u64 {
        self.allocated_bytes
    }
    fn last_used_ms(&self) -> u64 {
        self.last_used_ms
    }
    fn pinned(&self) -> bool {
        self.pinned
    }
}

/// The entries of one cache scope, read row by row: implemented for slices of [`EntryView`] and
/// for [`Columns`].
pub trait Entries {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn id(&self, row: usize) -> u64;
    fn size_in(&self, row: usize, basis: SizeBasis) -> u64;
    fn last_used_ms(&self, row: usize) -> u64;
    fn pinned(&self, row: usize) -> bool;
}

impl<E: EntryView> Entries for [E] {
    fn len(&self) -> usize {
        <[E]>::len(self)
    }
    fn id(&self, row: usize) -> u64 {
        self[row].id()
    }
    fn size_in(&self, row: usize, basis: SizeBasis) -> u64 {
        self[row].size_in(basis)
    }
    fn last_used_ms(&self, row: usize) -> u64 {
        self[row].last_used_ms()
    }
    fn pinned(&self, row: usize) -> bool {
        self[row].pinned()
    }
}

/// The WIT `view` record's columns, borrowed. Row `i` is entry `ids[i]`; a column shorter than
/// `ids` reads as zeros past its end, so a malformed view cannot make a policy panic.
#[derive(Clone, Copy, Debug, Default)]
pub struct Columns<'a> {
    pub ids: &'a [u64],
    pub size_gib: &'a [u64],
    pub allocated_bytes: &'a [u64],
    pub last_used_ms: &'a [u64],
    /// Pinned ids, ascending.
    pub pinned: &'a [u64],
}

/// Borrows the [`Columns`] of a WIT `view` record (any value with the contract's field names):
/// `let entries = volcache_policy_core::columns!(view);`
#[macro_export]
macro_rules! columns {
    ($view:expr) => {
        $crate::Columns {
            ids: &$view.ids,
            size_gib: &$view.size_gib,
            allocated_bytes: &$view.allocated_bytes,
            last_used_ms: &$view.last_used_ms,
            pinned: &$view.pinned,
        }
    };
}

/// The layout of the WIT `packed-view` record (0.1.2): six columns of `rows` values each, in
/// this order, then the pinned ids (ascending).
pub mod packed {
    pub const IDS: usize = 0;
    pub const SIZE_GIB: usize = 1;
    pub const ALLOCATED_BYTES: usize = 2;
    pub const LAST_USED_MS: usize = 3;
    pub const CREATED_MS: usize = 4;
    pub const HITS: usize = 5;
    /// Columns before the pinned ids.
    pub const COLUMNS: usize = 6;
}

/// A WIT `packed-view`'s list, read by column. A list shorter than its `rows` promise yields
/// shorter columns (read as zeros, like [`Columns`]), so a malformed view cannot make a policy
/// panic.
#[derive(Clone, Copy, Debug, Default)]
pub struct Packed<'a> {
    rows: usize,
    list: &'a [u64],
}

impl<'a> Packed<'a> {
    #[inline]
    pub fn new(rows: u32, list: &'a [u64]) -> Self {
        Packed { rows: rows as usize, list }
    }

    /// Column `k` (see [`packed`]).
    #[inline]
    pub fn column(&self, k: usize) -> &'a [u64] {
        let start = k.saturating_mul(self.rows).min(self.list.len());
        let end = (k + 1).saturating_mul(self.rows).min(self.list.len());
        &self.list[start..end]
    }

    /// The pinned ids, ascending.
    #[inline]
    pub fn pinned(&self) -> &'a [u64] {
        &self.list[packed::COLUMNS.saturating_mul(self.rows).min(self.list.len())..]
    }

    #[inline]
    pub fn columns(&self) -> Columns<'a> {
        Columns {
            ids: self.column(packed::IDS),
            size_gib: self.column(packed::SIZE_GIB),
            allocated_bytes: self.column(packed::ALLOCATED_BYTES),
            last_used_ms: self.column(packed::LAST_USED_MS),
            pinned: self.pinned(),
        }
    }
}

/// Borrows the [`Columns`] of a WIT `packed-view` record (0.1.2):
/// `let entries = volcache_policy_core::packed!(view);`
#[macro_export]
macro_rules! packed {
    ($view:expr) => {
        $crate::Packed::new($view.rows, &$view.columns).columns()
    };
}

/// The WIT `view` record's rows as [`Weighed`] entries, for [`Frequent`] and [`rate_victims`]:
/// `let entries = volcache_policy_core::weighed!(view);`
#[macro_export]
macro_rules! weighed {
    ($view:expr) => {
        $crate::weighed_rows(
            &$view.ids,
            &$view.size_gib,
            &$view.allocated_bytes,
            &$view.hits,
            &$view.created_ms,
            &$view.pinned,
        )
    };
}

/// Converts a WIT `need` record (any value with the contract's field names, and a `basis` of the
/// plugin's generated `SizeBasis` type, named as the second argument) into a [`Need`]:
/// `let need = volcache_policy_core::need!(need, SizeBasis);`
#[macro_export]
macro_rules! need {
    ($need:expr, $basis:ident) => {
        $crate::Need {
            amount: $need.amount,
            basis: match $need.basis {
                $basis::Provisioned => $crate::SizeBasis::Provisioned,
                $basis::Allocated => $crate::SizeBasis::Allocated,
            },
            entries: $need.entries,
        }
    };
}

fn cell(column: &[u64], row: usize) -> u64 {
    column.get(row).copied().unwrap_or(0)
}

impl Entries for Columns<'_> {
    fn len(&self) -> usize {
        self.ids.len()
    }
    fn id(&self, row: usize) -> u64 {
        self.ids[row]
    }
    fn size_in(&self, row: usize, basis: SizeBasis) -> u64 {
        match basis {
            SizeBasis::Provisioned => cell(self.size_gib, row),
            SizeBasis::Allocated => cell(self.allocated_bytes, row),
        }
    }
    fn last_used_ms(&self, row: usize) -> u64 {
        cell(self.last_used_ms, row)
    }
    fn pinned(&self, row: usize) -> bool {
        !self.pinned.is_empty() && self.pinned.binary_search(&self.ids[row]).is_ok()
    }
}

/// The sizes of an image that a request would cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CandidateSize {
    pub size_gib: u64,
    pub allocated_bytes: u64,
}

impl CandidateSize {
    pub fn size_in(&self, basis: SizeBasis) -> u64 {
        match basis {
            SizeBasis::Provisioned => self.size_gib,
            SizeBasis::Allocated => self.allocated_bytes,
        }
    }
}

/// What must be freed before a candidate fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Need {
    /// Size to free, in `basis` units.
    pub amount: u64,
    pub basis: SizeBasis,
    /// Entries to free.
    pub entries: u32,
}

impl Need {
    pub fn is_zero(&self) -> bool {
        self.amount == 0 && self.entries == 0
    }
}

/// Why a candidate is not cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The candidate alone is larger than the cache's size limit.
    LargerThanCache { size: u64, limit: u64, basis: SizeBasis },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Rejection::LargerThanCache { size, limit, basis: SizeBasis::Provisioned } => {
                write!(f, "image needs {size} GiB, more than image_volume_cache_max_size_gb = {limit}")
            }
            Rejection::LargerThanCache { size, limit, basis: SizeBasis::Allocated } => {
                write!(f, "image allocates {size} bytes, more than the cache limit of {limit} bytes")
            }
        }
    }
}

/// Slot *admission*, Cinder's max-size rule.
pub fn admit(limits: &CinderLimits, candidate: CandidateSize) -> Result<(), Rejection> {
    match limits.size_limit() {
        Some(limit) if candidate.size_in(limits.basis) > limit => {
            Err(Rejection::LargerThanCache { size: candidate.size_in(limits.basis), limit, basis: limits.basis })
        }
        _ => Ok(()),
    }
}

/// Slot *capacity*, Cinder's quota rule: the shortfall that eviction must cover so that, after
/// inserting `candidate`, both limits hold.
pub fn shortfall<E: Entries + ?Sized>(
    limits: &CinderLimits,
    candidate: CandidateSize,
    entries: &E,
) -> Result<Need, Rejection> {
    let basis = limits.basis;
    admit(limits, candidate)?;
    let amount = match limits.size_limit() {
        Some(limit) => {
            let used = (0..entries.len()).fold(0u64, |sum, row| sum.saturating_add(entries.size_in(row, basis)));
            used.saturating_add(candidate.size_in(basis)).saturating_sub(limit)
        }
        None => 0,
    };
    let excess = match limits.max_count {
        0 => 0,
        max => (entries.len() as u64 + 1).saturating_sub(max),
    };
    Ok(Need { amount, basis, entries: u32::try_from(excess).unwrap_or(u32::MAX) })
}

/// Slot *eviction*, Cinder's LRU rule: unpinned entries, least recently used first (ties broken by
/// the lower id, i.e. the older entry), just enough to cover `need`. When even every unpinned
/// entry would not cover it, returns all of them; the caller then decides not to cache.
///
/// A min-heap is built in O(n) and only the victims are popped (O(k log n)): a full sort would
/// cost O(n log n) although a cache usually gives up a few entries of thousands.
pub fn lru_victims<E: Entries + ?Sized>(need: Need, entries: &E) -> Vec<u64> {
    if need.is_zero() {
        return Vec::new();
    }
    let keys: Vec<Reverse<(u64, u64, u32)>> = (0..entries.len())
        .filter(|&row| !entries.pinned(row))
        .map(|row| Reverse((entries.last_used_ms(row), entries.id(row), row as u32)))
        .collect();
    let mut heap = BinaryHeap::from(keys);
    let mut freed = 0u64;
    let mut victims = Vec::new();
    while !covers(freed, victims.len(), need) {
        let Some(Reverse((_, id, row))) = heap.pop() else { break };
        freed = freed.saturating_add(entries.size_in(row as usize, need.basis));
        victims.push(id);
    }
    victims
}

/// Whether freeing `freed` size units and `count` entries satisfies `need`.
pub fn covers(freed: u64, count: usize, need: Need) -> bool {
    freed >= need.amount && count as u64 >= u64::from(need.entries)
}

#[cfg(test)]
mod tests;
