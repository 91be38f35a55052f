//! Shadow policies: a candidate attached to a slot sees the daemon's requests as they happen, on
//! its own simulated copy of the cache taken at attach time, and never changes a live decision
//! or adds latency to a request. A request only offers its record to a bounded queue (dropped
//! and counted when full); one thread per shadow replays the records through the candidate's
//! policy set (the simulator's [`SimCache`]), and counts what the live cache really did with
//! the same requests. A shadow's plugin fails like any plugin: contained, counted, decided by
//! the built-in. Promoting a shadow is an ordinary swap.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use super::sim::{Outcome, SimCache};
use super::trace::{Op, Record};
use crate::catalog::CacheOutcome;
use crate::policy::{Entry, LoadError, PolicyEngine, PolicySet, PolicySpec, Slot};

/// Records waiting for a shadow at most; more are dropped (and counted).
const QUEUE_LEN: usize = 4096;

struct State {
    set: PolicySet,
    sim: SimCache,
    /// What the live cache did with the same requests since attach.
    live: Outcome,
}

/// One attached shadow.
pub struct Shadow {
    slot: Slot,
    name: String,
    source: String,
    attached_at_ms: u64,
    tx: SyncSender<(Record, Option<CacheOutcome>)>,
    dropped: AtomicU64,
    state: Arc<Mutex<State>>,
    /// Set when the shadow is detached (or dropped): its thread stops at the next record instead
    /// of replaying what is still queued (up to 4,096 decisions of a plugin that may be slow).
    closed: Arc<AtomicBool>,
}

impl Drop for Shadow {
    fn drop(&mut self) {
        self.close();
    }
}

impl std::fmt::Debug for Shadow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shadow").field("slot", &self.slot).field("name", &self.name).finish_non_exhaustive()
    }
}

fn live_account(live: &mut Outcome, r: &Record, outcome: Option<CacheOutcome>) {
    match (r.op, outcome) {
        (Op::Request, Some(outcome)) => {
            live.requests += 1;
            live.bytes_requested += r.size_bytes;
            match outcome {
                CacheOutcome::Hit => {
                    live.hits += 1;
                    live.bytes_hit += r.size_bytes;
                }
                CacheOutcome::Miss => {
                    live.fills += 1;
                    live.bytes_written += r.size_bytes;
                }
                CacheOutcome::Uncached => live.uncached += 1,
            }
        }
        (Op::Evict, _) => live.evictions += 1,
        _ => {}
    }
}

impl Shadow {
    /// Loads `spec` into `slot` of a fresh policy set (built-ins elsewhere, the daemon's limits),
    /// smoke-tests it, copies `entries` as the starting cache, and starts its thread.
    pub fn attach(
        engine: &PolicyEngine,
        limits: crate::policy::CinderLimits,
        slot: Slot,
        spec: PolicySpec,
        source: String,
        entries: Vec<(String, u32, Entry)>,
    ) -> Result<Arc<Shadow>, LoadError> {
        let set = PolicySet::new(engine.clone(), limits);
        let status = set.swap(slot, spec)?;
        let mut sim = SimCache::new(&status.name, &set);
        sim.seed(entries);
        let state = Arc::new(Mutex::new(State { set, sim, live: Outcome::default() }));
        let (tx, rx) = mpsc::sync_channel::<(Record, Option<CacheOutcome>)>(QUEUE_LEN);
        let worker = state.clone();
        let closed = Arc::new(AtomicBool::new(false));
        let stop = closed.clone();
        std::thread::Builder::new()
            .name(format!("shadow-{slot}"))
            .spawn(move || {
                for (record, outcome) in rx {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    let state = &mut *worker.lock().unwrap_or_else(|p| p.into_inner());
                    live_account(&mut state.live, &record, outcome);
                    state.sim.apply(&state.set, &record);
                }
            })
            .map_err(|e| LoadError::Engine(e.into()))?;
        Ok(Arc::new(Shadow {
            slot,
            name: status.name,
            source,
            attached_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            tx,
            dropped: AtomicU64::new(0),
            state,
            closed,
        }))
    }

    /// Stops the shadow's thread at its next record (the decision under way finishes).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Offers a record, never waiting.
    pub fn feed(&self, record: &Record, outcome: Option<CacheOutcome>) {
        match self.tx.try_send((record.clone(), outcome)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Live and shadow since attach, for `GET /v1/policies`.
    pub fn status(&self) -> serde_json::Value {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut live = state.live.clone();
        live.finish();
        let shadow = state.sim.outcome(&state.set);
        let side = |o: &Outcome| {
            serde_json::json!({
                "requests": o.requests, "hits": o.hits, "hit_ratio": o.hit_ratio,
                "byte_hit_ratio": o.byte_hit_ratio, "bytes_downloaded": o.bytes_requested - o.bytes_hit,
                "fills": o.fills, "evictions": o.evictions,
            })
        };
        let mut shadow_side = side(&shadow);
        shadow_side["failures"] = shadow.failures.into();
        shadow_side["fallbacks"] = shadow.fallbacks.into();
        shadow_side["decision_p50_us"] = shadow.decision_p50_us.into();
        shadow_side["decision_p99_us"] = shadow.decision_p99_us.into();
        serde_json::json!({
            "name": self.name, "source": self.source, "attached_at_ms": self.attached_at_ms,
            "dropped_records": self.dropped.load(Ordering::Relaxed),
            "live": side(&live), "shadow": shadow_side,
        })
    }
}

/// The shadows of a daemon: at most one per slot.
#[derive(Debug, Default)]
pub struct Shadows {
    attached: Mutex<Vec<Arc<Shadow>>>,
}

impl Shadows {
    /// Attaches `shadow`, replacing the slot's previous one.
    pub fn put(&self, shadow: Arc<Shadow>) {
        let mut attached = self.attached.lock().unwrap_or_else(|p| p.into_inner());
        for old in attached.iter().filter(|s| s.slot == shadow.slot) {
            old.close();
        }
        attached.retain(|s| s.slot != shadow.slot);
        attached.push(shadow);
    }

    /// Detaches the slot's shadow; `false` when it had none.
    pub fn remove(&self, slot: Slot) -> bool {
        let mut attached = self.attached.lock().unwrap_or_else(|p| p.into_inner());
        let before = attached.len();
        for old in attached.iter().filter(|s| s.slot == slot) {
            old.close();
        }
        attached.retain(|s| s.slot != slot);
        attached.len() != before
    }

    pub fn get(&self, slot: Slot) -> Option<Arc<Shadow>> {
        self.attached.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|s| s.slot == slot).cloned()
    }

    /// Offers `record` to every shadow.
    pub fn feed(&self, record: &Record, outcome: Option<CacheOutcome>) {
        let attached = self.attached.lock().unwrap_or_else(|p| p.into_inner());
        for shadow in attached.iter() {
            shadow.feed(record, outcome);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.attached.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }
}
