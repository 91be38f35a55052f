//! The three policy slots of one cache scope: what fills each, how a decision is made, checked
//! and, when a plugin fails, made again by the built-in policy.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use volcache_policy_core as cinder;

use super::builtin::{self, Builtin};
use super::checks::{check_answer, check_victims, read_plugin_file, smoke_test};
use super::engine::PolicyEngine;
use super::hooks::HookQueue;
use super::plugin::{PluginInfo, WasmPlugin};
use super::stats::{SlotStats, StatsSnapshot};
use super::{unit, CallError, Candidate, CinderLimits, LoadError, Need, PolicyEvent, Slot, View};

/// Where a slot's policy comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicySource {
    Builtin(Builtin),
    File(PathBuf),
    /// Component bytes, e.g. uploaded through the API.
    Bytes(Vec<u8>),
}

/// What to load into a slot: the policy and its own parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySpec {
    pub source: PolicySource,
    /// Slot parameters, passed to the plugin after the backend's Cinder options.
    pub params: Vec<(String, String)>,
}

impl PolicySpec {
    pub fn builtin(b: Builtin) -> Self {
        PolicySpec { source: PolicySource::Builtin(b), params: Vec::new() }
    }
}

/// Who made a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecidedBy {
    /// The slot holds a built-in policy.
    Builtin,
    /// The slot's plugin answered and its answer was valid.
    Plugin,
    /// The plugin failed; the built-in policy decided instead.
    Fallback(CallError),
}

/// A decision and who made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decided<T> {
    pub value: T,
    pub by: DecidedBy,
}

/// The outcome of asking all three slots about one candidate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Cache it, after evicting `victims` (possibly none).
    Cache { need: Need, victims: Vec<u64> },
    /// Do not cache it; `slot` said so for `reason`.
    Skip { slot: Slot, reason: String },
}

/// What fills one slot right now.
enum Filler {
    Builtin(Builtin),
    Wasm(Arc<WasmPlugin>),
}

struct Filled {
    filler: Filler,
    source: String,
    params: Vec<(String, String)>,
    /// Limits used by this slot's built-in policy, and by the fallback when a plugin fails.
    limits: CinderLimits,
    /// When this filled the slot (RFC 3339).
    loaded_at: String,
}

/// One slot's state for operators.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SlotStatus {
    pub slot: Slot,
    /// "builtin" or "wasm".
    pub kind: &'static str,
    pub name: String,
    pub version: String,
    pub summary: String,
    /// sha256 of the component, for wasm plugins.
    pub digest: Option<String>,
    /// "builtin", the file path, or "upload".
    pub source: String,
    pub params: Vec<(String, String)>,
    /// Whether the plugin exports `events`, and whether its hooks were switched off after
    /// failing again and again.
    pub events: bool,
    pub events_disabled: bool,
    /// Whether the plugin lets entries go without pressure (`expiry`, WIT 0.1.1).
    pub expiry: bool,
    /// The slot's counters, across every plugin that filled it since the daemon started.
    pub stats: StatsSnapshot,
    /// When the policy now in the slot was loaded (RFC 3339), and its own counters since then
    /// (`None` for a built-in, whose decisions are not counted).
    pub loaded_at: String,
    pub since_loaded: Option<StatsSnapshot>,
}

/// The policy slots of one cache scope.
#[derive(Debug)]
pub struct PolicySet {
    engine: PolicyEngine,
    base_params: Vec<(String, String)>,
    base_limits: CinderLimits,
    slots: [RwLock<Arc<Filled>>; 3],
    stats: Arc<[SlotStats; 3]>,
    hooks: HookQueue,
    swapping: Mutex<()>,
}

impl std::fmt::Debug for Filled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filled").field("source", &self.source).finish_non_exhaustive()
    }
}

/// The parameters the built-ins read; any other key is a typo, refused with the list.
const BUILTIN_KEYS: [&str; 3] = [cinder::KEY_MAX_SIZE_GB, cinder::KEY_MAX_COUNT, cinder::KEY_SIZE_BASIS];

fn check_builtin_keys(params: &[(String, String)]) -> Result<(), String> {
    for (key, _) in params {
        if !BUILTIN_KEYS.contains(&key.as_str()) {
            let near = BUILTIN_KEYS.iter().min_by_key(|k| edit_distance(k, key)).filter(|k| edit_distance(k, key) <= 3);
            let hint = near.map(|k| format!("did you mean {k}? ")).unwrap_or_default();
            return Err(format!("unknown parameter {key:?}: {hint}built-in policies take {}", BUILTIN_KEYS.join(", ")));
        }
    }
    Ok(())
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(row[j + 1] + 1);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// The Cinder options as plugin parameters.
fn limit_params(limits: &CinderLimits) -> Vec<(String, String)> {
    let basis = match limits.basis {
        cinder::SizeBasis::Provisioned => "provisioned",
        cinder::SizeBasis::Allocated => "allocated",
    };
    vec![
        (cinder::KEY_MAX_SIZE_GB.to_string(), limits.max_size_gb.to_string()),
        (cinder::KEY_MAX_COUNT.to_string(), limits.max_count.to_string()),
        (cinder::KEY_SIZE_BASIS.to_string(), basis.to_string()),
    ]
}

impl PolicySet {
    /// Built-in policies in every slot, with the backend's Cinder limits.
    pub fn new(engine: PolicyEngine, limits: CinderLimits) -> Self {
        let filled = |slot: Slot| {
            RwLock::new(Arc::new(Filled {
                filler: Filler::Builtin(Builtin::for_slot(slot)),
                source: "builtin".into(),
                params: Vec::new(),
                limits,
                loaded_at: now_rfc3339(),
            }))
        };
        let stats: Arc<[SlotStats; 3]> = Arc::default();
        PolicySet {
            engine,
            base_params: limit_params(&limits),
            base_limits: limits,
            slots: Slot::ALL.map(filled),
            hooks: HookQueue::start(stats.clone()),
            stats,
            swapping: Mutex::new(()),
        }
    }

    pub fn engine(&self) -> &PolicyEngine {
        &self.engine
    }

    pub fn limits(&self) -> CinderLimits {
        self.base_limits
    }

    fn current(&self, slot: Slot) -> Arc<Filled> {
        self.slots[slot.index()].read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Loads, configures and smoke-tests `spec` for `slot` without installing it.
    fn prepare(&self, slot: Slot, spec: PolicySpec) -> Result<Filled, LoadError> {
        let mut params = self.base_params.clone();
        params.extend(spec.params.iter().cloned());
        let merged = || CinderLimits::from_params(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let (filler, source) = match spec.source {
            PolicySource::Builtin(b) => {
                b.check_slot(slot)?;
                check_builtin_keys(&spec.params).map_err(LoadError::BuiltinParams)?;
                merged().map_err(|e| LoadError::BuiltinParams(e.to_string()))?;
                (Filler::Builtin(b), "builtin".to_string())
            }
            PolicySource::File(path) => {
                let bytes = read_plugin_file(&path, self.engine.options().max_component_bytes)?;
                (Filler::Wasm(self.load_wasm(slot, &bytes, params.clone())?), path.display().to_string())
            }
            PolicySource::Bytes(bytes) => {
                (Filler::Wasm(self.load_wasm(slot, &bytes, params.clone())?), "upload".to_string())
            }
        };
        // A plugin's own parameters need not make sense to the built-in; its fallback then keeps
        // the backend's limits.
        let limits = merged().unwrap_or(self.base_limits);
        let filled = Filled { filler, source, params: spec.params, limits, loaded_at: now_rfc3339() };
        if let Filler::Wasm(plugin) = &filled.filler {
            smoke_test(slot, plugin).map_err(LoadError::Smoke)?;
        }
        Ok(filled)
    }

    fn load_wasm(&self, slot: Slot, bytes: &[u8], params: Vec<(String, String)>) -> Result<Arc<WasmPlugin>, LoadError> {
        let compiled = self.engine.compile(bytes)?;
        WasmPlugin::new(&self.engine, &compiled.component, compiled.digest, slot, params).map(Arc::new)
    }

    /// Checks `spec` the way a swap would (compile, type-check, configure, smoke test) without
    /// installing it.
    pub fn check(&self, slot: Slot, spec: PolicySpec) -> Result<SlotStatus, LoadError> {
        let filled = self.prepare(slot, spec)?;
        Ok(status_of(slot, &filled, StatsSnapshot::default()))
    }

    /// Replaces what fills `slot`. The candidate is fully prepared first; a failure leaves the
    /// old policy serving. Decisions already running finish on the old policy.
    pub fn swap(&self, slot: Slot, spec: PolicySpec) -> Result<SlotStatus, LoadError> {
        let _one_swap_at_a_time = self.swapping.lock().unwrap_or_else(|p| p.into_inner());
        let filled = Arc::new(self.prepare(slot, spec)?);
        let status = status_of(slot, &filled, self.stats[slot.index()].snapshot());
        let old = std::mem::replace(&mut *self.slots[slot.index()].write().unwrap_or_else(|p| p.into_inner()), filled);
        if let Filler::Wasm(plugin) = &old.filler {
            plugin.hooks().retire();
        }
        tracing::info!(%slot, policy = %status.name, version = %status.version, source = %status.source, "policy slot swapped");
        Ok(status)
    }

    pub fn status(&self) -> Vec<SlotStatus> {
        Slot::ALL
            .iter()
            .map(|&slot| status_of(slot, &self.current(slot), self.stats[slot.index()].snapshot()))
            .collect()
    }

    /// Runs a decision's plugin call with timing, failure counting and logging; a failed
    /// decision is made by the built-in policy (counted as a fallback).
    fn timed<T>(
        &self,
        slot: Slot,
        plugin: &WasmPlugin,
        call: impl FnOnce() -> Result<T, CallError>,
    ) -> Result<T, CallError> {
        self.counted(slot, plugin, true, call)
    }

    fn counted<T>(
        &self,
        slot: Slot,
        plugin: &WasmPlugin,
        falls_back: bool,
        call: impl FnOnce() -> Result<T, CallError>,
    ) -> Result<T, CallError> {
        let started = Instant::now();
        let result = call();
        let elapsed = started.elapsed();
        for stats in [&self.stats[slot.index()], plugin.stats()] {
            stats.record_call(elapsed);
            if let Err(error) = &result {
                stats.record_failure(error);
                if falls_back {
                    stats.record_fallback();
                }
            }
        }
        if let Err(error) = &result {
            if falls_back {
                tracing::warn!(%slot, plugin = %plugin.info.name, kind = error.kind(), %error,
                    "policy plugin failed; this request is decided by the built-in policy");
            } else {
                tracing::warn!(%slot, plugin = %plugin.info.name, kind = error.kind(), %error,
                    "policy plugin's expiry call failed; nothing expires this round");
            }
        }
        result
    }

    /// Slot *admission*: `Ok` caches, `Err(reason)` does not.
    pub fn admit(&self, candidate: &Candidate, view: &View) -> Decided<Result<(), String>> {
        let filled = self.current(Slot::Admission);
        let plugin = match &filled.filler {
            Filler::Builtin(_) => {
                return Decided { value: builtin::admit(&filled.limits, candidate), by: DecidedBy::Builtin }
            }
            Filler::Wasm(plugin) => plugin,
        };
        match self.timed(Slot::Admission, plugin, || plugin.admit(&candidate.wire(), view.wire())) {
            Ok(value) => Decided { value: value.map_err(bounded), by: DecidedBy::Plugin },
            Err(e) => Decided { value: builtin::admit(&filled.limits, candidate), by: DecidedBy::Fallback(e) },
        }
    }

    /// Slot *capacity*: what must be freed first, or `Err(reason)` when it can never fit.
    pub fn shortfall(&self, candidate: &Candidate, view: &View) -> Decided<Result<Need, String>> {
        let filled = self.current(Slot::Capacity);
        let fallback = || builtin::shortfall(&filled.limits, candidate, view);
        let plugin = match &filled.filler {
            Filler::Builtin(_) => return Decided { value: fallback(), by: DecidedBy::Builtin },
            Filler::Wasm(plugin) => plugin,
        };
        match self.timed(Slot::Capacity, plugin, || plugin.shortfall(&candidate.wire(), view.wire())) {
            Ok(value) => Decided { value: value.map(Need::from).map_err(bounded), by: DecidedBy::Plugin },
            Err(e) => Decided { value: fallback(), by: DecidedBy::Fallback(e) },
        }
    }

    /// Slot *eviction*: the entries to evict to cover `need`, or `None` when nothing can (every
    /// candidate victim is pinned): then the image is not cached and nothing is evicted.
    pub fn victims(&self, need: Need, view: &View) -> Decided<Option<Vec<u64>>> {
        let fallback = || {
            let ids = builtin::victims(need, view);
            check_victims(need, view, &ids).ok().map(|()| ids)
        };
        if need.is_zero() {
            return Decided { value: Some(Vec::new()), by: DecidedBy::Builtin };
        }
        let filled = self.current(Slot::Eviction);
        let plugin = match &filled.filler {
            Filler::Builtin(_) => return Decided { value: fallback(), by: DecidedBy::Builtin },
            Filler::Wasm(plugin) => plugin,
        };
        // A best effort when nothing can cover the need is the plugin's answer too (`None`).
        let answer = self.timed(Slot::Eviction, plugin, || {
            let ids = plugin.victims(need.into(), view)?;
            Ok(check_answer(need, view, &ids)?.then_some(ids))
        });
        match answer {
            Ok(value) => Decided { value, by: DecidedBy::Plugin },
            Err(e) => Decided { value: fallback(), by: DecidedBy::Fallback(e) },
        }
    }

    /// Whether the eviction slot's policy has an expiry rule (`expiry`, WIT 0.1.1): the built-ins
    /// and 0.1.0 plugins have none. [`PolicySet::expire`] then answers `None`; otherwise the
    /// entries the plugin lets go without pressure. A failed call or an invalid answer is
    /// counted like a failed decision and expires nothing.
    pub fn has_expiry(&self) -> bool {
        matches!(&self.current(Slot::Eviction).filler, Filler::Wasm(p) if p.has_expiry())
    }

    /// See [`PolicySet::has_expiry`]; asks the eviction slot's plugin which entries expire.
    pub fn expire(&self, view: &View) -> Option<Result<Vec<u64>, CallError>> {
        let filled = self.current(Slot::Eviction);
        let Filler::Wasm(plugin) = &filled.filler else { return None };
        if !plugin.has_expiry() {
            return None;
        }
        // No built-in decides instead: a failed call is counted, not a fallback.
        Some(self.counted(Slot::Eviction, plugin, false, || {
            let ids = plugin.expire(view.wire())?;
            check_victims(Need::default(), view, &ids).map(|()| ids)
        }))
    }

    /// Asks admission, then capacity, then (only if something must go) eviction.
    pub fn plan(&self, candidate: &Candidate, view: &View) -> Plan {
        if let Err(reason) = self.admit(candidate, view).value {
            return Plan::Skip { slot: Slot::Admission, reason };
        }
        let need = match self.shortfall(candidate, view).value {
            Ok(need) => need,
            Err(reason) => return Plan::Skip { slot: Slot::Capacity, reason },
        };
        match self.victims(need, view).value {
            Some(victims) => Plan::Cache { need, victims },
            None => Plan::Skip {
                slot: Slot::Eviction,
                reason: format!(
                    "no eviction frees enough: need {} {} and {} entries, and the rest is pinned",
                    need.amount,
                    unit(need.basis),
                    need.entries
                ),
            },
        }
    }

    /// Tells every plugin that exports `events` what happened, off the request path: the event
    /// is queued (never waited for) and delivered in order by the event thread.
    pub fn notify(&self, event: &PolicyEvent) {
        for slot in Slot::ALL {
            let filled = self.current(slot);
            let Filler::Wasm(plugin) = &filled.filler else { continue };
            if plugin.has_events() {
                self.hooks.push(slot, plugin.clone(), event.clone(), &self.stats[slot.index()]);
            }
        }
    }

    /// Waits until every event queued so far has reached the plugins (tests, shutdown).
    pub fn flush_events(&self) {
        self.hooks.flush();
    }

    /// Delivers `event` to the plugins on the caller's thread, with the same budget and failure
    /// accounting as the event thread: for the simulator, whose replay must be deterministic
    /// and has no request to keep fast.
    pub fn deliver_now(&self, event: &PolicyEvent) {
        for slot in Slot::ALL {
            let filled = self.current(slot);
            let Filler::Wasm(plugin) = &filled.filler else { continue };
            if plugin.has_events() {
                super::hooks::deliver(slot, plugin, event, &self.stats[slot.index()]);
            }
        }
    }
}

/// A reason string from a plugin, cut to a length fit for logs and API answers.
fn bounded(mut reason: String) -> String {
    const MAX: usize = 512;
    if reason.len() > MAX {
        let mut cut = MAX;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push('…');
    }
    reason
}

fn status_of(slot: Slot, filled: &Filled, stats: StatsSnapshot) -> SlotStatus {
    let (kind, info, digest) = match &filled.filler {
        Filler::Builtin(b) => (
            "builtin",
            PluginInfo {
                name: b.name().to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                summary: format!("built-in {} policy (Cinder semantics)", b.slot()),
            },
            None,
        ),
        Filler::Wasm(p) => ("wasm", p.info.clone(), Some(p.digest.clone())),
    };
    let (events, events_disabled) = match &filled.filler {
        Filler::Wasm(p) => (p.has_events(), p.hooks().disabled()),
        Filler::Builtin(_) => (false, false),
    };
    SlotStatus {
        slot,
        kind,
        name: info.name,
        version: info.version,
        summary: info.summary,
        digest,
        source: filled.source.clone(),
        params: filled.params.clone(),
        events,
        events_disabled,
        expiry: matches!(&filled.filler, Filler::Wasm(p) if p.has_expiry()),
        stats,
        loaded_at: filled.loaded_at.clone(),
        since_loaded: match &filled.filler {
            Filler::Wasm(p) => Some(p.stats().snapshot()),
            Filler::Builtin(_) => None,
        },
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
