//! Replaying a trace through a policy set in a simulated cache: no backend, no data, only the
//! entries' sizes and times. Decisions go through [`PolicySet::plan`], the daemon's own code path
//! (sandbox, answer validation, fallback to the built-in), so a plugin that misbehaves here
//! misbehaves in production too, and is contained and counted the same way.
//!
//! The simulated cache follows the daemon: a request for an image whose cached copy is of an
//! older version drops that copy (an invalidation) and misses; a miss asks admission, capacity
//! and eviction, evicts the victims and fills the entry, or leaves the image uncached. An
//! entry's allocated bytes are taken to be the image's virtual size. An eviction policy with an
//! expiry rule (WIT 0.1.1 `expiry`) is asked every simulated minute, as the daemon asks it by
//! default, and the entries it names count as evictions.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::time::Instant;

use super::trace::{Op, Record};
use crate::policy::{Candidate, Entry, Plan, PolicyEvent, PolicySet, Slot, View};

const GIB: u64 = 1 << 30;

/// How often an expiry rule is asked, in trace time: the daemon's default
/// `policy.expire_interval_seconds`.
pub const EXPIRE_EVERY_MS: u64 = 60_000;

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
    /// Entries evicted to make room, or expired by the eviction policy's expiry rule.
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

#[derive(Debug)]
struct Cached {
    entry: Entry,
    version: u32,
    image: String,
}

/// A simulated cache driven by a policy set, one trace record at a time (the simulator replays
/// a whole trace through one; a shadow policy is fed the daemon's records as they happen).
#[derive(Debug)]
pub struct SimCache {
    out: Outcome,
    hooks: bool,
    by_image: HashMap<String, u64>,
    cache: HashMap<u64, Cached>,
    next_id: u64,
    latencies: Vec<u64>,
    /// The next expiry call, when the eviction policy has an expiry rule.
    next_expire_ms: Option<u64>,
    expiry: bool,
}

/// Decision latencies kept for the percentiles at most (the first ones: a shadow's first hours
/// are as telling as its last).
const MAX_LATENCIES: usize = 1 << 20;

impl SimCache {
    /// An empty cache named `name`, sized by `set`'s limits.
    pub fn new(name: &str, set: &PolicySet) -> SimCache {
        let limits = set.limits();
        SimCache {
            out: Outcome {
                policy: name.to_string(),
                max_size_gb: limits.max_size_gb,
                max_count: limits.max_count,
                ..Outcome::default()
            },
            hooks: set.status().iter().any(|s| s.events),
            by_image: HashMap::new(),
            cache: HashMap::new(),
            next_id: 1,
            latencies: Vec::new(),
            next_expire_ms: None,
            expiry: set.status().iter().any(|s| s.slot == Slot::Eviction && s.expiry),
        }
    }

    /// Asks the expiry rule at the last whole interval up to `now_ms`. Between two records
    /// nothing is used, so what expires by then is what expires at the last interval: one call
    /// covers any idle stretch.
    fn expire_until(&mut self, set: &PolicySet, now_ms: u64) {
        if !self.expiry {
            return;
        }
        let next = *self.next_expire_ms.get_or_insert(now_ms + EXPIRE_EVERY_MS);
        if next > now_ms {
            return;
        }
        let at = next + (now_ms - next) / EXPIRE_EVERY_MS * EXPIRE_EVERY_MS;
        self.next_expire_ms = Some(at + EXPIRE_EVERY_MS);
        let view = View::new(self.cache.values().map(|c| c.entry).collect(), at);
        // A failed call was counted by the set, and expires nothing.
        let Some(Ok(expiring)) = set.expire(&view) else { return };
        for id in expiring {
            if let Some(gone) = self.cache.remove(&id) {
                self.by_image.remove(&gone.image);
                self.out.evictions += 1;
                self.notify(set, PolicyEvent::Evict { id });
            }
        }
    }

    /// Starts from existing entries: `(image, version, entry)`, e.g. the daemon's cache at the
    /// moment a shadow is attached. Entry ids are kept; new ones follow the largest.
    pub fn seed(&mut self, entries: impl IntoIterator<Item = (String, u32, Entry)>) {
        for (image, version, entry) in entries {
            self.next_id = self.next_id.max(entry.id + 1);
            self.by_image.insert(image.clone(), entry.id);
            self.cache.insert(entry.id, Cached { entry, version, image });
        }
    }

    fn notify(&self, set: &PolicySet, event: PolicyEvent) {
        if self.hooks {
            // Inline, so the replay is deterministic: the plugin sees each event before the
            // next decision.
            set.deliver_now(&event);
        }
    }

    /// Applies one record.
    pub fn apply(&mut self, set: &PolicySet, r: &Record) {
        self.expire_until(set, r.time_ms);
        match r.op {
            Op::Delete => {
                if let Some(id) = self.by_image.remove(&r.image) {
                    self.cache.remove(&id);
                    self.out.invalidations += 1;
                    self.notify(set, PolicyEvent::Evict { id });
                }
                return;
            }
            // A new version shows in the requests that name it; recorded evictions were another
            // policy's decisions.
            Op::Register | Op::Update | Op::Evict => return,
            Op::Request => {}
        }
        self.out.requests += 1;
        self.out.bytes_requested += r.size_bytes;
        if let Some(&id) = self.by_image.get(&r.image) {
            let cached = self.cache.get_mut(&id).expect("indexed entries are cached");
            if cached.version == r.version {
                self.out.hits += 1;
                self.out.bytes_hit += r.size_bytes;
                cached.entry.last_used_ms = r.time_ms;
                cached.entry.hits += 1;
                self.notify(set, PolicyEvent::Hit { id, now_ms: r.time_ms });
                return;
            }
            self.cache.remove(&id);
            self.by_image.remove(&r.image);
            self.out.invalidations += 1;
            self.notify(set, PolicyEvent::Evict { id });
        }
        let size_gib = r.size_bytes.div_ceil(GIB).max(1);
        let candidate = Candidate {
            image_id: r.image.clone(),
            size_gib,
            virtual_size_bytes: r.size_bytes,
            allocated_bytes: r.size_bytes,
        };
        let view = View::new(self.cache.values().map(|c| c.entry).collect(), r.time_ms);
        let started = Instant::now();
        let plan = set.plan(&candidate, &view);
        if self.latencies.len() < MAX_LATENCIES {
            self.latencies.push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
        match plan {
            Plan::Cache { victims, .. } => {
                for victim in victims {
                    if let Some(gone) = self.cache.remove(&victim) {
                        self.by_image.remove(&gone.image);
                        self.out.evictions += 1;
                        self.notify(set, PolicyEvent::Evict { id: victim });
                    }
                }
                let entry = Entry {
                    id: self.next_id,
                    size_gib,
                    allocated_bytes: r.size_bytes,
                    last_used_ms: r.time_ms,
                    created_ms: r.time_ms,
                    hits: 0,
                    pinned: false,
                };
                self.next_id += 1;
                self.notify(set, PolicyEvent::Insert(entry));
                self.by_image.insert(r.image.clone(), entry.id);
                self.cache.insert(entry.id, Cached { entry, version: r.version, image: r.image.clone() });
                self.out.fills += 1;
                self.out.bytes_written += r.size_bytes;
            }
            Plan::Skip { .. } => self.out.uncached += 1,
        }
    }

    /// The outcome so far (failures as `set` counted them).
    pub fn outcome(&self, set: &PolicySet) -> Outcome {
        let mut out = self.out.clone();
        let mut latencies = self.latencies.clone();
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
}

/// Replays `trace` through `set` (whose limits are the simulated cache's capacity).
pub fn simulate(name: &str, trace: &[Record], set: &PolicySet) -> Outcome {
    let mut cache = SimCache::new(name, set);
    for r in trace {
        cache.apply(set, r);
    }
    cache.outcome(set)
}
