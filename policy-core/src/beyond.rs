//! Policies beyond Cinder's, shared by their wasm plugins (`plugins/gdsf`, `plugins/second-hit`,
//! `plugins/ttl`) and tested here on the host.
//!
//! - [`Gdsf`] (eviction): Greedy-Dual-Size-Frequency. An entry's value is
//!   `L + frequency x cost / size`, with cost = `fixed_cost` + size (a refill costs a fixed
//!   overhead plus its bytes); the lowest value goes first, and `L` rises to each victim's value,
//!   so entries that stop being used age out. Keeps images that are popular per byte and
//!   expensive to refill. Stateful: values are set when an entry is filled or hit (events).
//! - [`SecondHit`] (admission): an image is cached only when it is requested again within a
//!   window; a one-off request (a scan) never displaces anything.
//! - [`ttl_victims`] (eviction): entries unused for longer than a TTL go first, oldest first;
//!   then least recently used, as Cinder does. [`ttl_expired`] names the expired ones for the
//!   periodic `expiry` call (WIT 0.1.1), so they go even without pressure.
//! - [`Frequent`] (admission): after TinyLFU, for byte hit ratio: once the cache is full, an
//!   image displaces entries only when it is requested more often than they are; [`rate_victims`]
//!   (eviction) evicts by the same measure, the fewest requests per unit of age first.
//! - [`Sieve`] (eviction): SIEVE. Entries in fill order; a hand sweeps from the oldest towards
//!   the newest, sparing (and unmarking) entries used since it last passed, evicting the first
//!   unmarked one. One-off fills are evicted at their first sweep, so a scan does not flush the
//!   popular entries. Stateful: hits mark entries (events).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec::Vec;

use crate::{covers, CinderLimits, Entries, Need};

/// GDSF's state: the inflation value `L` and each entry's value and frequency.
#[derive(Clone, Debug)]
pub struct Gdsf {
    inflation: f64,
    fixed_cost: f64,
    /// Per entry: value, frequency, size in bytes.
    values: BTreeMap<u64, (f64, u64, u64)>,
}

impl Gdsf {
    /// `fixed_cost_bytes`: what a refill costs beyond its bytes (connection, conversion start).
    pub fn new(fixed_cost_bytes: u64) -> Gdsf {
        Gdsf { inflation: 0.0, fixed_cost: fixed_cost_bytes as f64, values: BTreeMap::new() }
    }

    fn value(&self, frequency: u64, size_bytes: u64) -> f64 {
        let size = size_bytes.max(1) as f64;
        self.inflation + frequency as f64 * (self.fixed_cost + size) / size
    }

    /// An entry was filled.
    pub fn on_insert(&mut self, id: u64, size_bytes: u64) {
        let value = self.value(1, size_bytes);
        self.values.insert(id, (value, 1, size_bytes));
    }

    /// An entry was used. One not seen filled (after a restart) is valued from the view later.
    pub fn on_hit(&mut self, id: u64) {
        if let Some(&(_, frequency, size)) = self.values.get(&id) {
            let value = self.value(frequency + 1, size);
            self.values.insert(id, (value, frequency + 1, size));
        }
    }

    pub fn on_evict(&mut self, id: u64) {
        self.values.remove(&id);
    }

    /// The entries to evict: lowest value first (ties: less recently used, then lower id), just
    /// enough to cover `need`. An entry with no recorded value (after a restart) is valued from
    /// the view's hit count. `sizes_bytes[row]` is each row's size in bytes.
    pub fn victims<E: Entries + ?Sized>(
        &mut self,
        need: Need,
        entries: &E,
        hits: &[u64],
        sizes_bytes: &[u64],
    ) -> Vec<u64> {
        if need.is_zero() {
            return Vec::new();
        }
        let mut rows: Vec<(f64, u64, u64, usize)> = (0..entries.len())
            .filter(|&row| !entries.pinned(row))
            .map(|row| {
                let id = entries.id(row);
                let size = sizes_bytes.get(row).copied().unwrap_or(0);
                let value = match self.values.get(&id) {
                    Some(&(value, _, _)) => value,
                    None => self.value(hits.get(row).copied().unwrap_or(0) + 1, size),
                };
                (value, entries.last_used_ms(row), id, row)
            })
            .collect();
        rows.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let mut freed = 0u64;
        let mut victims = Vec::new();
        for (value, _, id, row) in rows {
            if covers(freed, victims.len(), need) {
                break;
            }
            freed = freed.saturating_add(entries.size_in(row, need.basis));
            victims.push(id);
            self.inflation = self.inflation.max(value);
            self.values.remove(&id);
        }
        victims
    }
}

/// Second-hit admission's memory: when each image was last requested (bounded).
#[derive(Clone, Debug)]
pub struct SecondHit {
    window_ms: u64,
    capacity: usize,
    seen: BTreeMap<String, u64>,
}

impl SecondHit {
    /// Remembers up to `capacity` images for `window_ms`.
    pub fn new(window_ms: u64, capacity: usize) -> SecondHit {
        SecondHit { window_ms, capacity: capacity.max(1), seen: BTreeMap::new() }
    }

    /// Whether to cache `image` requested at `now_ms`: only when it was requested before within
    /// the window. Either way the request is remembered.
    pub fn admit(&mut self, image: &str, now_ms: u64) -> bool {
        let again = self.seen.get(image).is_some_and(|&t| now_ms.saturating_sub(t) <= self.window_ms);
        if !self.seen.contains_key(image) && self.seen.len() >= self.capacity {
            // Forget the image seen longest ago.
            if let Some(oldest) = self.seen.iter().min_by_key(|(_, &t)| t).map(|(k, _)| k.clone()) {
                self.seen.remove(&oldest);
            }
        }
        self.seen.insert(String::from(image), now_ms);
        again
    }
}

/// One cache entry as [`Frequent`] weighs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Weighed {
    pub size_gib: u64,
    pub allocated_bytes: u64,
    pub hits: u64,
    pub created_ms: u64,
    pub pinned: bool,
}

/// The rows of a WIT `view`'s columns as [`Weighed`] (see [`weighed!`](crate::weighed)); a
/// column shorter than `ids` reads as zeros past its end.
pub fn weighed_rows(
    ids: &[u64],
    size_gib: &[u64],
    allocated_bytes: &[u64],
    hits: &[u64],
    created_ms: &[u64],
    pinned: &[u64],
) -> Vec<Weighed> {
    let cell = |column: &[u64], row: usize| column.get(row).copied().unwrap_or(0);
    (0..ids.len())
        .map(|row| Weighed {
            size_gib: cell(size_gib, row),
            allocated_bytes: cell(allocated_bytes, row),
            hits: cell(hits, row),
            created_ms: cell(created_ms, row),
            pinned: pinned.binary_search(&ids[row]).is_ok(),
        })
        .collect()
}

/// Frequency admission (after TinyLFU), for byte hit ratio: an image is worth its room in
/// proportion to how often it is requested, whatever its size (every byte of a hit is a byte not
/// downloaded). While the cache has room, everything is admitted (nothing is displaced). Once it
/// is full, a candidate is admitted only when it was requested before (second-hit) and its
/// request rate is at least twice that of the entries it would displace: the unpinned entries of
/// lowest rate whose sizes cover it. A candidate's rate is its count of requests seen here
/// (misses), halved every half-life; an entry's is (hits + 1) over its age.
#[derive(Clone, Debug)]
pub struct Frequent {
    half_life_ms: u64,
    capacity: usize,
    /// Image -> (count, the half-life period it was last counted in, when).
    counts: BTreeMap<String, (u32, u64, u64)>,
}

impl Frequent {
    pub fn new(half_life_ms: u64, capacity: usize) -> Frequent {
        Frequent { half_life_ms: half_life_ms.max(1), capacity: capacity.max(1), counts: BTreeMap::new() }
    }

    /// Counts a request for `image` at `now_ms` and returns its count.
    fn count(&mut self, image: &str, now_ms: u64) -> u32 {
        let period = now_ms / self.half_life_ms;
        if !self.counts.contains_key(image) && self.counts.len() >= self.capacity {
            // Forget the image counted longest ago.
            if let Some(oldest) = self.counts.iter().min_by_key(|(_, v)| v.2).map(|(k, _)| k.clone()) {
                self.counts.remove(&oldest);
            }
        }
        let c = self.counts.entry(String::from(image)).or_insert((0, period, now_ms));
        let halvings = period.saturating_sub(c.1).min(31) as u32;
        *c = ((c.0 >> halvings).saturating_add(1), period, now_ms);
        c.0
    }

    /// Whether to cache `image` (`size_gib`) requested at `now_ms` into a cache holding `entries`
    /// under `limits`.
    pub fn admit(
        &mut self,
        image: &str,
        size_gib: u64,
        limits: &CinderLimits,
        entries: &[Weighed],
        now_ms: u64,
    ) -> bool {
        let count = self.count(image, now_ms);
        let used: u64 = entries.iter().map(|e| e.size_gib).sum();
        let room_size = limits.max_size_gb == 0 || used.saturating_add(size_gib) <= limits.max_size_gb;
        let room_count = limits.max_count == 0 || (entries.len() as u64) < limits.max_count;
        if room_size && room_count {
            return true;
        }
        if count < 2 {
            return false;
        }
        // Requests per half-life: an entry's observed rate, at least a quarter half-life old so a
        // new entry's single fill does not read as a flood.
        let h = self.half_life_ms as f64;
        let rate = |e: &Weighed| (e.hits + 1) as f64 * h / (now_ms.saturating_sub(e.created_ms) as f64).max(h / 4.0);
        let mut rates: Vec<(f64, u64)> = entries.iter().filter(|e| !e.pinned).map(|e| (rate(e), e.size_gib)).collect();
        rates.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        let need_size = if room_size { 0 } else { used.saturating_add(size_gib).saturating_sub(limits.max_size_gb) };
        let need_count = if room_count { 0 } else { 1 };
        let (mut freed, mut displaced, mut weighed) = (0u64, 0u64, 0.0f64);
        for (r, size) in rates {
            if freed >= need_size && displaced >= need_count {
                break;
            }
            freed += size;
            displaced += 1;
            weighed += r * size as f64;
        }
        if freed < need_size || displaced < need_count {
            return false;
        }
        // A count halved each half-life is about 1.5 half-lives' worth of requests; and a
        // candidate must be requested twice as often as what it displaces, as a fill costs a whole
        // download (on the zipf reference trace this raised the byte hit ratio by 0.2-0.6 points
        // over demanding as often; demanding four times as often lowered it again).
        let candidate = f64::from(count) / 3.0;
        candidate > weighed / (freed.max(1) as f64)
    }
}

/// Eviction by request rate, [`Frequent`]'s measure: the unpinned entries with the fewest
/// requests per unit of age ((hits + 1) over age, an age of at least `min_age_ms`), fewest first,
/// ties by id, just enough to cover `need`.
pub fn rate_victims(need: Need, entries: &[Weighed], ids: &[u64], now_ms: u64, min_age_ms: u64) -> Vec<u64> {
    if need.is_zero() {
        return Vec::new();
    }
    let rate = |e: &Weighed| (e.hits + 1) as f64 / (now_ms.saturating_sub(e.created_ms).max(min_age_ms).max(1) as f64);
    let mut rows: Vec<(f64, u64, usize)> = entries
        .iter()
        .zip(ids)
        .enumerate()
        .filter(|(_, (e, _))| !e.pinned)
        .map(|(row, (e, &id))| (rate(e), id, row))
        .collect();
    rows.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut freed = 0u64;
    let mut victims = Vec::new();
    for (_, id, row) in rows {
        if covers(freed, victims.len(), need) {
            break;
        }
        freed = freed.saturating_add(match need.basis {
            crate::SizeBasis::Provisioned => entries[row].size_gib,
            crate::SizeBasis::Allocated => entries[row].allocated_bytes,
        });
        victims.push(id);
    }
    victims
}

/// Entries unused for more than `ttl_ms` at `now_ms` first, oldest first; then least recently
/// used; ties by id; just enough to cover `need`. With a TTL of 0 this is Cinder's LRU.
pub fn ttl_victims<E: Entries + ?Sized>(need: Need, entries: &E, now_ms: u64, ttl_ms: u64) -> Vec<u64> {
    if need.is_zero() {
        return Vec::new();
    }
    let mut rows: Vec<(bool, u64, u64, usize)> = (0..entries.len())
        .filter(|&row| !entries.pinned(row))
        .map(|row| {
            let used = entries.last_used_ms(row);
            let fresh = ttl_ms == 0 || now_ms.saturating_sub(used) <= ttl_ms;
            (fresh, used, entries.id(row), row)
        })
        .collect();
    rows.sort_unstable();
    let mut freed = 0u64;
    let mut victims = Vec::new();
    for (_, _, id, row) in rows {
        if covers(freed, victims.len(), need) {
            break;
        }
        freed = freed.saturating_add(entries.size_in(row, need.basis));
        victims.push(id);
    }
    victims
}

/// Entries unused for more than `ttl_ms` at `now_ms`, pinned ones never, longest unused first
/// (ties by id): what a TTL policy lets go without pressure. A TTL of 0 expires nothing.
pub fn ttl_expired<E: Entries + ?Sized>(entries: &E, now_ms: u64, ttl_ms: u64) -> Vec<u64> {
    if ttl_ms == 0 {
        return Vec::new();
    }
    let mut old: Vec<(u64, u64)> = (0..entries.len())
        .filter(|&row| !entries.pinned(row) && now_ms.saturating_sub(entries.last_used_ms(row)) > ttl_ms)
        .map(|row| (entries.last_used_ms(row), entries.id(row)))
        .collect();
    old.sort_unstable();
    old.into_iter().map(|(_, id)| id).collect()
}

/// SIEVE's state: which entries were used since the hand passed them, and where the hand is.
#[derive(Clone, Debug, Default)]
pub struct Sieve {
    visited: BTreeSet<u64>,
    /// (created_ms, id) of the last entry the hand passed.
    hand: Option<(u64, u64)>,
}

impl Sieve {
    /// No marks, the hand at the oldest entry (usable in a `static`).
    pub const EMPTY: Sieve = Sieve { visited: BTreeSet::new(), hand: None };

    pub fn new() -> Sieve {
        Sieve::EMPTY
    }

    pub fn on_hit(&mut self, id: u64) {
        self.visited.insert(id);
    }

    pub fn on_evict(&mut self, id: u64) {
        self.visited.remove(&id);
    }

    /// The entries to evict to cover `need`; `created_ms[row]` orders the entries by fill.
    pub fn victims<E: Entries + ?Sized>(&mut self, need: Need, entries: &E, created_ms: &[u64]) -> Vec<u64> {
        if need.is_zero() {
            return Vec::new();
        }
        let mut order: Vec<((u64, u64), usize)> = (0..entries.len())
            .filter(|&row| !entries.pinned(row))
            .map(|row| ((created_ms.get(row).copied().unwrap_or(0), entries.id(row)), row))
            .collect();
        order.sort_unstable();
        if order.is_empty() {
            return Vec::new();
        }
        // Start just after the hand, wrapping to the oldest.
        let mut at = self.hand.map_or(0, |hand| order.partition_point(|(key, _)| *key <= hand)) % order.len();
        let mut freed = 0u64;
        let mut victims = Vec::new();
        let mut taken = alloc::vec![false; order.len()];
        // Two passes at most: the first may only unmark.
        for _ in 0..2 * order.len() {
            if covers(freed, victims.len(), need) || victims.len() == order.len() {
                break;
            }
            let (key, row) = order[at];
            if !taken[at] {
                if self.visited.remove(&key.1) {
                    // Used since the hand last passed: spared this time.
                } else {
                    taken[at] = true;
                    freed = freed.saturating_add(entries.size_in(row, need.basis));
                    victims.push(key.1);
                }
                self.hand = Some(key);
            }
            at = (at + 1) % order.len();
        }
        victims
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Entry, SizeBasis};

    fn entry(id: u64, size_gib: u64, last_used_ms: u64) -> Entry {
        Entry { id, size_gib, allocated_bytes: size_gib << 30, last_used_ms, ..Entry::default() }
    }

    fn need(amount: u64) -> Need {
        Need { amount, basis: SizeBasis::Provisioned, entries: 0 }
    }

    #[test]
    fn gdsf_keeps_the_popular_and_ages_out_the_idle() {
        let mut g = Gdsf::new(1 << 30);
        let cache = [entry(1, 4, 10), entry(2, 4, 20), entry(3, 4, 30)];
        for e in &cache {
            g.on_insert(e.id, e.allocated_bytes);
        }
        for _ in 0..5 {
            g.on_hit(1);
        }
        let sizes: Vec<u64> = cache.iter().map(|e| e.allocated_bytes).collect();
        // Entry 1 is the oldest by use but the most popular: 2 goes first (older than 3).
        assert_eq!(g.victims(need(4), &cache[..], &[0, 0, 0], &sizes), [2]);
        // The inflation rose to 2's value: a new entry now outranks the idle 3.
        g.on_insert(4, 4 << 30);
        let cache = [entry(1, 4, 10), entry(3, 4, 30), entry(4, 4, 40)];
        let sizes: Vec<u64> = cache.iter().map(|e| e.allocated_bytes).collect();
        assert_eq!(g.victims(need(4), &cache[..], &[0, 0, 0], &sizes), [3]);
    }

    #[test]
    fn gdsf_prefers_to_keep_small_images_at_equal_popularity() {
        let mut g = Gdsf::new(1 << 30);
        let cache = [entry(1, 1, 10), entry(2, 20, 20)];
        for e in &cache {
            g.on_insert(e.id, e.allocated_bytes);
        }
        let sizes: Vec<u64> = cache.iter().map(|e| e.allocated_bytes).collect();
        assert_eq!(g.victims(need(1), &cache[..], &[0, 0], &sizes), [2], "a large image costs less per byte to refill");
    }

    #[test]
    fn gdsf_never_names_a_pinned_entry_and_covers_the_need() {
        let mut g = Gdsf::new(0);
        let mut cache = [entry(1, 2, 10), entry(2, 3, 20), entry(3, 5, 30)];
        cache[0].pinned = true;
        let sizes: Vec<u64> = cache.iter().map(|e| e.allocated_bytes).collect();
        let victims = g.victims(need(6), &cache[..], &[9, 0, 0], &sizes);
        assert!(!victims.contains(&1));
        assert_eq!(victims.len(), 2);
    }

    #[test]
    fn second_hit_admits_the_second_request_within_the_window_only() {
        let mut s = SecondHit::new(1_000, 2);
        assert!(!s.admit("a", 0));
        assert!(s.admit("a", 500));
        assert!(!s.admit("b", 600));
        assert!(!s.admit("b", 5_000), "too late: a new first request");
        assert!(!s.admit("c", 5_100));
        assert!(!s.admit("d", 5_200), "a was forgotten to make room");
        assert!(!s.admit("a", 5_300));
    }

    #[test]
    fn ttl_evicts_the_expired_first_then_lru() {
        let cache = [entry(1, 1, 9_000), entry(2, 1, 100), entry(3, 1, 8_000), entry(4, 1, 50)];
        assert_eq!(ttl_victims(need(3), &cache[..], 10_000, 5_000), [4, 2, 3]);
        assert_eq!(ttl_victims(need(1), &cache[..], 10_000, 0), [4], "TTL 0 is LRU");
    }

    fn weighed(size_gib: u64, hits: u64, created_ms: u64) -> Weighed {
        Weighed { size_gib, allocated_bytes: size_gib << 30, hits, created_ms, pinned: false }
    }

    #[test]
    fn frequent_admits_while_there_is_room_then_only_what_is_requested_more_often() {
        const H: u64 = 3_600_000;
        let limits = CinderLimits { max_size_gb: 10, max_count: 0, ..CinderLimits::default() };
        let mut f = Frequent::new(H, 100);
        // Room for 4 GiB more: even a first request is cached, displacing nothing.
        let cache = [weighed(3, 0, 0), weighed(3, 0, 0)];
        assert!(f.admit("new", 4, &limits, &cache, 10 * H));
        // Full: a first request never displaces anything.
        let full = [weighed(5, 0, 0), weighed(5, 40, 0)];
        assert!(!f.admit("rare", 2, &limits, &full, 10 * H));
        // Seen twice in 10 hours beats an entry hit never in 10 hours...
        assert!(f.admit("rare", 2, &limits, &full, 10 * H + 1));
        // ...but not one hit 40 times, which is all that could make room once the idle one is pinned.
        let mut hot = full;
        hot[0].pinned = true;
        assert!(!f.admit("rare", 2, &limits, &hot, 10 * H + 2));
        // Counts halve every half-life: requests long ago weigh nothing.
        let mut g = Frequent::new(H, 100);
        for i in 0..3 {
            g.count("old", i);
        }
        assert_eq!(g.count("old", 40 * H), 1);
        // A count limit binds like a size limit.
        let by_count = CinderLimits { max_size_gb: 0, max_count: 2, ..CinderLimits::default() };
        assert!(!Frequent::new(H, 100).admit("x", 1, &by_count, &full, 10 * H));
    }

    #[test]
    fn rate_evicts_the_least_requested_per_unit_of_age_first() {
        // Rates: 1 per 10 s (id 1), 11 per 10 s (2), 1 per 1 s at the minimum age (3), 2 per 10 s (4).
        let mut cache = [weighed(1, 0, 0), weighed(1, 10, 0), weighed(1, 0, 9_500), weighed(1, 1, 0)];
        let ids = [1, 2, 3, 4];
        assert_eq!(rate_victims(need(2), &cache, &ids, 10_000, 1_000), [1, 4]);
        cache[0].pinned = true;
        assert_eq!(rate_victims(need(2), &cache, &ids, 10_000, 1_000), [4, 3]);
        assert!(rate_victims(need(0), &cache, &ids, 10_000, 1_000).is_empty());
    }

    #[test]
    fn ttl_expires_only_the_unpinned_entries_unused_for_longer_than_the_ttl() {
        let mut cache = [entry(1, 1, 9_000), entry(2, 1, 100), entry(3, 1, 5_000), entry(4, 1, 50), entry(5, 1, 10)];
        cache[4].pinned = true;
        // 3 was used exactly 5 s ago: not expired yet.
        assert_eq!(ttl_expired(&cache[..], 10_000, 5_000), [4, 2]);
        assert!(ttl_expired(&cache[..], 10_000, 0).is_empty(), "TTL 0 expires nothing");
        assert!(ttl_expired(&cache[..], 10_000, 20_000).is_empty());
    }

    #[test]
    fn sieve_spares_the_used_and_evicts_one_off_fills_first() {
        let mut s = Sieve::new();
        let cache = [entry(1, 1, 0), entry(2, 1, 0), entry(3, 1, 0), entry(4, 1, 0)];
        let created = [10, 20, 30, 40];
        s.on_hit(1);
        s.on_hit(3);
        // The hand starts at the oldest: 1 was used (spared, unmarked), 2 was not (evicted).
        assert_eq!(s.victims(need(1), &cache[..], &created), [2]);
        // It goes on from there: 3 spared, 4 evicted.
        let cache = [entry(1, 1, 0), entry(3, 1, 0), entry(4, 1, 0)];
        assert_eq!(s.victims(need(1), &cache[..], &[10, 30, 40]), [4]);
        // Wrapping round: 1 and 3 lost their marks on the way, so 1 goes now.
        assert_eq!(s.victims(need(1), &cache[..2], &[10, 30]), [1]);
    }

    #[test]
    fn sieve_covers_the_need_even_when_everything_was_used() {
        let mut s = Sieve::new();
        let mut cache = [entry(1, 2, 0), entry(2, 2, 0), entry(3, 2, 0)];
        cache[2].pinned = true;
        for id in 1..=3 {
            s.on_hit(id);
        }
        let victims = s.victims(need(4), &cache[..], &[1, 2, 3]);
        assert_eq!(victims.len(), 2, "{victims:?}");
        assert!(!victims.contains(&3), "pinned");
    }
}
