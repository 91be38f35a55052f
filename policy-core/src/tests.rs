extern crate std;

use alloc::vec;
use alloc::vec::Vec;

use proptest::prelude::*;

use super::*;

fn entry(id: u64, size_gib: u64, last_used_ms: u64) -> Entry {
    Entry { id, size_gib, allocated_bytes: size_gib * GIB / 2, last_used_ms, ..Entry::default() }
}

fn limits(max_size_gb: u64, max_count: u64) -> CinderLimits {
    CinderLimits { max_size_gb, max_count, basis: SizeBasis::Provisioned }
}

fn cand(size_gib: u64) -> CandidateSize {
    CandidateSize { size_gib, allocated_bytes: size_gib * GIB / 2 }
}

#[test]
fn max_size_zero_means_unlimited() {
    assert_eq!(admit(&limits(0, 0), cand(10_000)), Ok(()));
}

#[test]
fn max_size_admits_equal_and_rejects_larger() {
    assert_eq!(admit(&limits(10, 0), cand(10)), Ok(()));
    assert!(matches!(admit(&limits(10, 0), cand(11)), Err(Rejection::LargerThanCache { size: 11, limit: 10, .. })));
}

#[test]
fn shortfall_counts_bytes_and_entries_like_cinder() {
    let entries = [entry(1, 3, 10), entry(2, 4, 20)];
    // 3 + 4 + 5 = 12 GiB against 10: free 2 GiB; 2 + 1 entries against 2: free one.
    let need = shortfall(&limits(10, 2), cand(5), &entries[..]).unwrap();
    assert_eq!(need, Need { amount: 2, basis: SizeBasis::Provisioned, entries: 1 });
    assert!(shortfall(&limits(0, 0), cand(5), &entries[..]).unwrap().is_zero());
}

#[test]
fn shortfall_rejects_a_candidate_larger_than_the_cache() {
    assert!(shortfall(&limits(4, 0), cand(5), &[] as &[Entry]).is_err());
}

#[test]
fn allocated_basis_counts_bytes() {
    let l = CinderLimits { max_size_gb: 1, max_count: 0, basis: SizeBasis::Allocated };
    let entries = [entry(1, 2, 1)]; // allocates 1 GiB
    let need = shortfall(&l, CandidateSize { size_gib: 8, allocated_bytes: 4096 }, &entries[..]).unwrap();
    assert_eq!(need, Need { amount: 4096, basis: SizeBasis::Allocated, entries: 0 });
}

#[test]
fn lru_takes_oldest_first_breaks_ties_by_id_and_skips_pinned() {
    let mut pinned = entry(1, 1, 0);
    pinned.pinned = true;
    let entries = [pinned, entry(5, 1, 50), entry(3, 1, 30), entry(4, 1, 30), entry(2, 1, 90)];
    let need = Need { amount: 3, basis: SizeBasis::Provisioned, entries: 0 };
    assert_eq!(lru_victims(need, &entries[..]), vec![3, 4, 5]);
}

#[test]
fn lru_returns_nothing_for_zero_need_and_everything_unpinned_when_short() {
    let entries = [entry(1, 1, 1), entry(2, 1, 2)];
    assert!(lru_victims(Need::default(), &entries[..]).is_empty());
    let huge = Need { amount: 100, basis: SizeBasis::Provisioned, entries: 0 };
    assert_eq!(lru_victims(huge, &entries[..]), vec![1, 2]);
}

#[test]
fn params_parse_cinder_names_and_name_the_bad_key() {
    let l = CinderLimits::from_params([
        (KEY_MAX_SIZE_GB, "10"),
        ("unrelated", "x"),
        (KEY_MAX_COUNT, " 3 "),
        (KEY_SIZE_BASIS, "allocated"),
    ])
    .unwrap();
    assert_eq!(l, CinderLimits { max_size_gb: 10, max_count: 3, basis: SizeBasis::Allocated });
    let err = CinderLimits::from_params([(KEY_MAX_COUNT, "-1")]).unwrap_err();
    assert!(std::format!("{err}").contains(KEY_MAX_COUNT));
    assert!(CinderLimits::from_params([(KEY_SIZE_BASIS, "gb")]).is_err());
}

fn arb_entries() -> impl Strategy<Value = Vec<Entry>> {
    prop::collection::vec((1u64..20, 0u64..50, any::<bool>()), 0..40).prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (size, used, pin))| Entry {
                id: i as u64 + 1,
                size_gib: size,
                allocated_bytes: size * 1000,
                last_used_ms: used,
                pinned: pin && i % 5 == 0,
                ..Entry::default()
            })
            .collect()
    })
}

proptest! {
    /// After evicting what LRU chose and inserting the candidate, both limits hold, or else no
    /// choice at all could have made them hold; and the choice is minimal and least-recent first.
    #[test]
    fn quota_plus_lru_keeps_limits(entries in arb_entries(), max_size in 0u64..120,
                                    max_count in 0u64..30, size in 1u64..25) {
        let l = limits(max_size, max_count);
        let Ok(need) = shortfall(&l, cand(size), &entries[..]) else {
            prop_assert!(max_size > 0 && size > max_size);
            return Ok(());
        };
        let victims = lru_victims(need, &entries[..]);
        let freed: u64 = entries.iter().filter(|e| victims.contains(&e.id)).map(|e| e.size_gib).sum();
        let unpinned: Vec<&Entry> = entries.iter().filter(|e| !e.pinned).collect();
        prop_assert!(victims.iter().all(|v| unpinned.iter().any(|e| e.id == *v)));
        if covers(freed, victims.len(), need) {
            let left: Vec<&Entry> = entries.iter().filter(|e| !victims.contains(&e.id)).collect();
            let total: u64 = left.iter().map(|e| e.size_gib).sum::<u64>() + size;
            prop_assert!(max_size == 0 || total <= max_size);
            prop_assert!(max_count == 0 || (left.len() as u64) < max_count, "count limit");
            if let Some((last, rest)) = victims.split_last() {
                let without: u64 = freed - entries.iter().find(|e| e.id == *last).unwrap().size_gib;
                prop_assert!(!covers(without, rest.len(), need), "victim list is not minimal");
            }
        } else {
            prop_assert_eq!(victims.len(), unpinned.len(), "gave up while entries were left");
        }
        // Every victim was used no later than every unpinned survivor.
        let newest_victim = entries.iter().filter(|e| victims.contains(&e.id)).map(|e| (e.last_used_ms, e.id)).max();
        let oldest_survivor = unpinned.iter().filter(|e| !victims.contains(&e.id)).map(|e| (e.last_used_ms, e.id)).min();
        if let (Some(v), Some(s)) = (newest_victim, oldest_survivor) {
            prop_assert!(v < s);
        }
    }
}

/// ids, size_gib, allocated_bytes, last_used_ms and pinned ids, as owned columns.
type OwnedColumns = (Vec<u64>, Vec<u64>, Vec<u64>, Vec<u64>, Vec<u64>);

fn columns_of(entries: &[Entry]) -> OwnedColumns {
    let mut pinned: Vec<u64> = entries.iter().filter(|e| e.pinned).map(|e| e.id).collect();
    pinned.sort_unstable();
    (
        entries.iter().map(|e| e.id).collect(),
        entries.iter().map(|e| e.size_gib).collect(),
        entries.iter().map(|e| e.allocated_bytes).collect(),
        entries.iter().map(|e| e.last_used_ms).collect(),
        pinned,
    )
}

#[test]
fn short_columns_read_as_zero_instead_of_panicking() {
    let ids = [1, 2, 3];
    let cols = Columns { ids: &ids, size_gib: &[5], ..Columns::default() };
    assert_eq!(cols.size_in(2, SizeBasis::Provisioned), 0);
    let need = Need { amount: 5, basis: SizeBasis::Provisioned, entries: 0 };
    assert_eq!(lru_victims(need, &cols), vec![1]);
}

proptest! {
    /// The plugins read columns, the host reads rows: both must decide the same.
    #[test]
    fn columns_and_rows_decide_alike(entries in arb_entries(), amount in 0u64..100, count in 0u32..10,
                                      max_size in 0u64..120, max_count in 0u64..30) {
        let (ids, size_gib, allocated_bytes, last_used_ms, pinned) = columns_of(&entries);
        let cols = Columns { ids: &ids, size_gib: &size_gib, allocated_bytes: &allocated_bytes,
                             last_used_ms: &last_used_ms, pinned: &pinned };
        for basis in [SizeBasis::Provisioned, SizeBasis::Allocated] {
            let need = Need { amount, basis, entries: count };
            prop_assert_eq!(lru_victims(need, &cols), lru_victims(need, &entries[..]));
            let l = CinderLimits { max_size_gb: max_size, max_count, basis };
            prop_assert_eq!(shortfall(&l, cand(3), &cols), shortfall(&l, cand(3), &entries[..]));
        }
    }
}

#[test]
fn a_packed_view_reads_as_its_columns_and_a_short_one_reads_as_zeros() {
    // Two rows: ids 7 and 3, then sizes, allocated, last used, created, hits; then pinned 7.
    let list = [7, 3, 10, 20, 100, 200, 5, 1, 50, 60, 2, 4, 7];
    let packed = Packed::new(2, &list);
    assert_eq!(packed.column(packed::IDS), &[7, 3]);
    assert_eq!(packed.column(packed::LAST_USED_MS), &[5, 1]);
    assert_eq!(packed.column(packed::HITS), &[2, 4]);
    assert_eq!(packed.pinned(), &[7]);
    let columns = packed.columns();
    assert_eq!((columns.len(), columns.id(1), columns.size_in(1, SizeBasis::Allocated)), (2, 3, 200));
    assert!(columns.pinned(0) && !columns.pinned(1));
    // Cinder's LRU over the packed view: 3 (used at 1) goes; 7 is pinned anyway.
    let need = Need { amount: 1, basis: SizeBasis::Provisioned, entries: 0 };
    assert_eq!(lru_victims(need, &columns), vec![3]);

    // A list shorter than `rows` promises: short columns, nothing pinned, no panic.
    let short = Packed::new(4, &list[..9]);
    assert_eq!(short.column(packed::IDS), &[7, 3, 10, 20]);
    assert_eq!(short.column(packed::SIZE_GIB), &[100, 200, 5, 1]);
    assert_eq!(short.column(packed::ALLOCATED_BYTES), &[50]);
    assert!(short.column(packed::LAST_USED_MS).is_empty() && short.pinned().is_empty());
    assert_eq!((short.columns().size_in(1, SizeBasis::Allocated), short.columns().last_used_ms(3)), (0, 0));
    // Rows beyond any memory: every column empty.
    let huge = Packed::new(u32::MAX, &list);
    assert_eq!(huge.column(packed::IDS).len(), list.len());
    assert!(huge.column(packed::HITS).is_empty() && huge.pinned().is_empty());
}

proptest! {
    /// LRU names exactly what sorting every unpinned entry by (last use, id) and taking them until
    /// the need is covered would, whatever the rows' order, the basis, or how many must go.
    #[test]
    fn lru_is_the_sorted_prefix_that_covers_the_need(
        raw in prop::collection::vec((1u64..20, 0u64..30, any::<bool>()), 0..300),
        amount in 0u64..3000, entries_needed in 0u32..320, allocated in any::<bool>(), turn in 0usize..300,
    ) {
        let mut entries: Vec<Entry> = raw
            .iter()
            .enumerate()
            .map(|(i, &(size, used, pin))| Entry {
                // Distinct ids in no particular order (7919 is invertible modulo the prime).
                id: (i as u64 * 7919) % 100_003 + 1,
                size_gib: size,
                allocated_bytes: size * 3 + used,
                last_used_ms: used,
                pinned: pin && i % 4 == 0,
                ..Entry::default()
            })
            .collect();
        if !entries.is_empty() {
            let n = entries.len();
            entries.rotate_left(turn % n);
        }
        let basis = if allocated { SizeBasis::Allocated } else { SizeBasis::Provisioned };
        let need = Need { amount, basis, entries: entries_needed };
        let mut order: Vec<&Entry> = entries.iter().filter(|e| !e.pinned).collect();
        order.sort_by_key(|e| (e.last_used_ms, e.id));
        let (mut expected, mut freed) = (Vec::new(), 0u64);
        for e in order {
            if need.is_zero() || covers(freed, expected.len(), need) {
                break;
            }
            freed += if allocated { e.allocated_bytes } else { e.size_gib };
            expected.push(e.id);
        }
        prop_assert_eq!(lru_victims(need, &entries[..]), expected);
    }
}
