//! Replaying a trace through a policy set in a simulated cache: no backend, no data, only the
//! entries' sizes and times. Decisions go through [`PolicySet::plan`], the daemon's own code path
//! (sandbox, answer validation, fallback to the built-in), so a plugin that misbehaves here
//! misbehaves in production too, and is contained and counted the same way.
//!
//! The simulated cache follows the daemon: a request for an image whose cached copy is of an
//! older version drops that copy (an invalidation) and misses; a miss asks admission, capacity
//! and eviction, evicts the victims and fills the entry, or leaves the image uncached. An
//! entry's allocated bytes are taken to be the image's virtual size.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::time::Instant;

use super::trace::{Op, Record};
use crate::policy::{Candidate, Entry, Plan, PolicyEvent, PolicySet, View};

const GIB: u64 = 1 << 30;

/// What one policy set did on one trace at one capacity.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Outcome {
    pub policy: String,
    pub max_size_gb: u64,
    pub max_count: u64,
    pub requests: u64,
    pub hits: u64,
    pub hit_ratio: f64,
    pub bytes_requested: u64,
    /// Bytes served from the cache (not downloaded).
    pub bytes_hit: u64,
    pub byte_hit_ratio: f64,
    pub byte_miss_ratio: f64,
    pub fills: u64,
    pub evictions: u64,
    /// Entries dropped because their image changed or was deleted.
    pub invalidations: u64,
    /// Misses the policies chose not to cache.
    pub uncached: u64,
    /// Bytes written into the cache by fills.
    pub bytes_written: u64,
    pub decision_p50_us: f64,
    pub decision_p99_us: f64,
    /// Plugin failures and the decisions the built-ins made instead.
    pub failures: u64,
    pub fallbacks: u64,
}

impl Outcome {
    pub(crate) fn finish(&mut self) {
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        self.hit_ratio = ratio(self.hits, self.requests);
        self.byte_hit_ratio = ratio(self.bytes_hit, self.bytes_requested);
        self.byte_miss_ratio = if self.bytes_requested == 0 { 0.0 } else { 1.0 - self.byte_hit_ratio };
    }
}

struct Cached {
    entry: Entry,
    version: u32,
    image: String,
}

/// Replays `trace` through `set` (whose limits are the simulated cache's capacity).
pub fn simulate(name: &str, trace: &[Record], set: &PolicySet) -> Outcome {
    let limits = set.limits();
    let mut out = Outcome {
        policy: name.to_string(),
        max_size_gb: limits.max_size_gb,
        max_count: limits.max_count,
        ..Outcome::default()
    };
    let hooks = set.status().iter().any(|s| s.events);
    let notify = |event: PolicyEvent| {
        if hooks {
            // Inline, so the replay is deterministic: the plugin sees each event before the
            // next decision.
            set.deliver_now(&event);
        }
    };
    let mut by_image: HashMap<String, u64> = HashMap::new();
    let mut cache: HashMap<u64, Cached> = HashMap::new();
    let mut next_id = 1u64;
    let mut latencies: Vec<u64> = Vec::new();
    for r in trace {
        match r.op {
            Op::Delete => {
                if let Some(id) = by_image.remove(&r.image) {
                    cache.remove(&id);
                    out.invalidations += 1;
                    notify(PolicyEvent::Evict { id });
                }
                continue;
            }
            // A new version shows in the requests that name it; recorded evictions were another
            // policy's decisions.
            Op::Register | Op::Update | Op::Evict => continue,
            Op::Request => {}
        }
        out.requests += 1;
        out.bytes_requested += r.size_bytes;
        if let Some(&id) = by_image.get(&r.image) {
            let cached = cache.get_mut(&id).expect("indexed entries are cached");
            if cached.version == r.version {
                out.hits += 1;
                out.bytes_hit += r.size_bytes;
                cached.entry.last_used_ms = r.time_ms;
                cached.entry.hits += 1;
                notify(PolicyEvent::Hit { id, now_ms: r.time_ms });
                continue;
            }
            cache.remove(&id);
            by_image.remove(&r.image);
            out.invalidations += 1;
            notify(PolicyEvent::Evict { id });
        }
        let size_gib = r.size_bytes.div_ceil(GIB).max(1);
        let candidate = Candidate {
            image_id: r.image.clone(),
            size_gib,
            virtual_size_bytes: r.size_bytes,
            allocated_bytes: r.size_bytes,
        };
        let view = View::new(cache.values().map(|c| c.entry).collect(), r.time_ms);
        let started = Instant::now();
        let plan = set.plan(&candidate, &view);
        latencies.push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
        match plan {
            Plan::Cache { victims, .. } => {
                for victim in victims {
                    if let Some(gone) = cache.remove(&victim) {
                        by_image.remove(&gone.image);
                        out.evictions += 1;
                        notify(PolicyEvent::Evict { id: victim });
                    }
                }
                let entry = Entry {
                    id: next_id,
                    size_gib,
                    allocated_bytes: r.size_bytes,
                    last_used_ms: r.time_ms,
                    created_ms: r.time_ms,
                    hits: 0,
                    pinned: false,
                };
                next_id += 1;
                notify(PolicyEvent::Insert(entry));
                by_image.insert(r.image.clone(), entry.id);
                cache.insert(entry.id, Cached { entry, version: r.version, image: r.image.clone() });
                out.fills += 1;
                out.bytes_written += r.size_bytes;
            }
            Plan::Skip { .. } => out.uncached += 1,
        }
    }
    latencies.sort_unstable();
    let pct = |p: usize| {
        latencies
            .get((latencies.len() * p / 100).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |&ns| ns as f64 / 1e3)
    };
    out.decision_p50_us = pct(50);
    out.decision_p99_us = pct(99);
    for status in set.status() {
        out.failures += status.stats.failures;
        out.fallbacks += status.stats.fallbacks;
    }
    out.finish();
    out
}
