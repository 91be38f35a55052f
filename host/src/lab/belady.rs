//! The offline reference: Belady's rule with bypass, size-oblivious. On a miss, while the new
//! image does not fit (count or size), the cached entry whose next request is farthest in the
//! future goes; if that entry is needed sooner than the new image, or the new image is never
//! requested again, the new image is not cached at all. With variable sizes this is not the
//! exact optimum (that problem is NP-hard), but it is the standard bound the policies are
//! measured against: a policy that closes the gap to it is doing well.
#![forbid(unsafe_code)]

use std::collections::{BTreeSet, HashMap};

use super::sim::Outcome;
use super::trace::{Op, Record};
use crate::policy::{CinderLimits, SizeBasis};

const GIB: u64 = 1 << 30;
const NEVER: usize = usize::MAX;

/// Replays `trace` with perfect knowledge of the future at the capacity `limits` gives.
pub fn belady(trace: &[Record], limits: CinderLimits) -> Outcome {
    let mut out = Outcome {
        policy: "belady".into(),
        max_size_gb: limits.max_size_gb,
        max_count: limits.max_count,
        ..Outcome::default()
    };
    // Requests only, each with the position of the next request of the same image version.
    let requests: Vec<&Record> = trace.iter().filter(|r| r.op == Op::Request).collect();
    let mut keys: HashMap<(&str, u32), usize> = HashMap::new();
    let key_of: Vec<usize> = requests
        .iter()
        .map(|r| {
            let next = keys.len();
            *keys.entry((r.image.as_str(), r.version)).or_insert(next)
        })
        .collect();
    let mut next_use = vec![NEVER; requests.len()];
    let mut seen: Vec<usize> = vec![NEVER; keys.len()];
    for i in (0..requests.len()).rev() {
        next_use[i] = seen[key_of[i]];
        seen[key_of[i]] = i;
    }
    let size_of = |r: &Record| match limits.basis {
        SizeBasis::Provisioned => r.size_bytes.div_ceil(GIB).max(1),
        SizeBasis::Allocated => r.size_bytes,
    };
    let limit = limits.size_limit();
    // Cached keys: their size, and their next use (also ordered in `by_next`).
    let mut cached: HashMap<usize, (u64, usize)> = HashMap::new();
    let mut by_next: BTreeSet<(usize, usize)> = BTreeSet::new();
    let mut used = 0u64;
    for (i, r) in requests.iter().enumerate() {
        let key = key_of[i];
        out.requests += 1;
        out.bytes_requested += r.size_bytes;
        if let Some((_, next)) = cached.get_mut(&key) {
            by_next.remove(&(*next, key));
            *next = next_use[i];
            by_next.insert((*next, key));
            out.hits += 1;
            out.bytes_hit += r.size_bytes;
            continue;
        }
        let size = size_of(r);
        let never_again = next_use[i] == NEVER;
        if never_again || limit.is_some_and(|l| size > l) {
            out.uncached += 1;
            continue;
        }
        let fits = |used: u64, count: usize| {
            limit.is_none_or(|l| used + size <= l) && (limits.max_count == 0 || (count as u64) < limits.max_count)
        };
        // Choose the victims first; evict only when the candidate wins against all of them.
        let mut victims = Vec::new();
        let (mut freed, mut gone) = (0u64, 0usize);
        let mut admit = true;
        for &(next, victim) in by_next.iter().rev() {
            if fits(used - freed, cached.len() - gone) {
                break;
            }
            if next < next_use[i] {
                admit = false;
                break;
            }
            victims.push((next, victim));
            freed += cached[&victim].0;
            gone += 1;
        }
        if !admit || !fits(used - freed, cached.len() - gone) {
            out.uncached += 1;
            continue;
        }
        for (next, victim) in victims {
            by_next.remove(&(next, victim));
            cached.remove(&victim);
            out.evictions += 1;
        }
        used -= freed;
        used += size;
        cached.insert(key, (size, next_use[i]));
        by_next.insert((next_use[i], key));
        out.fills += 1;
        out.bytes_written += r.size_bytes;
    }
    out.finish();
    out
}
