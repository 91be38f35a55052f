//! One loaded policy component: its type-checked exports, and the live instance calls go to.
//!
//! Every call runs in a fresh-or-healthy instance with a memory cap and an epoch deadline. A
//! trap, timeout or memory overrun becomes a [`CallError`]; the instance is then dropped (a
//! trapped instance refuses further calls anyway) and the next call instantiates and configures
//! a new one from the pre-linked `InstancePre` (~0.1 ms).
//!
//! A plugin has one live instance; concurrent decisions on it take turns (one decision over
//! 10,000 entries takes about 0.3 ms, and cache fills are rare next to it). A pool of instances
//! is the next step if that ever shows up in latency.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;

use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{ResourceLimiter, Store, Trap};

use wasmtime_wasi::{WasiCtxView, WasiView};

use super::bindings::{self, admission, capacity, events, eviction, expiry, packed_eviction, plugin, Level};
use super::engine::PolicyEngine;
use super::wasi::{self, Sandbox};
use super::{CallError, LoadError, Slot};

/// Longest log line a plugin may write, and how many lines one instance may write per call.
const LOG_LINE_MAX: usize = 1024;
const LOG_LINES_PER_CALL: u32 = 16;

/// What a plugin reports about itself.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub summary: String,
}

/// Store data of one instance: its limiter and its log budget.
pub(crate) struct HostState {
    limiter: MemoryCap,
    log_budget: u32,
    log_dropped: u64,
    label: String,
    sandbox: Sandbox,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.sandbox.view()
    }
}

impl HostState {
    /// Writes what the plugin printed on stdout/stderr during the call as its log lines.
    fn flush_output(&mut self) {
        let (lines, dropped) = self.sandbox.take_output();
        for line in lines {
            bindings::volcache::policy::host::Host::log(self, Level::Info, line);
        }
        if dropped > 0 {
            tracing::warn!(plugin = %self.label, bytes = dropped, "plugin output dropped (limit 8 KiB per call)");
        }
    }
}

/// Enforces the memory cap and remembers that it did, so a trap can be reported as such.
struct MemoryCap {
    limit: usize,
    exceeded: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.exceeded = true;
            return Err(wasmtime::format_err!("memory cap of {} bytes reached", self.limit));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Tables of 8-byte slots count against the same cap.
        if desired.saturating_mul(8) > self.limit {
            self.exceeded = true;
            return Err(wasmtime::format_err!("table cap of {} entries reached", self.limit / 8));
        }
        Ok(true)
    }
}

impl bindings::volcache::policy::types::Host for HostState {}

impl bindings::volcache::policy::host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        if self.log_budget == 0 {
            self.log_dropped += 1;
            return;
        }
        self.log_budget -= 1;
        let mut message = message;
        if message.len() > LOG_LINE_MAX {
            let mut cut = LOG_LINE_MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let plugin = self.label.as_str();
        match level {
            Level::Error => tracing::error!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Trace => tracing::trace!(plugin, "{message}"),
        }
    }
}

/// The export handles of the interfaces a component has; a missing optional one is `None`.
#[derive(Clone)]
struct Exports {
    plugin: plugin::GuestIndices,
    admission: Option<admission::GuestIndices>,
    capacity: Option<capacity::GuestIndices>,
    eviction: Option<eviction::GuestIndices>,
    packed_eviction: Option<packed_eviction::GuestIndices>,
    events: Option<events::GuestIndices>,
    expiry: Option<expiry::GuestIndices>,
}

struct Live {
    store: Store<HostState>,
    plugin: plugin::Guest,
    admission: Option<admission::Guest>,
    capacity: Option<capacity::Guest>,
    eviction: Option<eviction::Guest>,
    packed_eviction: Option<packed_eviction::Guest>,
    events: Option<events::Guest>,
    expiry: Option<expiry::Guest>,
}

/// A loaded, configured policy component that fills one slot.
pub struct WasmPlugin {
    engine: PolicyEngine,
    pre: InstancePre<HostState>,
    exports: Exports,
    params: Vec<(String, String)>,
    slot: Slot,
    pub(crate) info: PluginInfo,
    pub(crate) digest: String,
    live: Mutex<Option<Live>>,
    hooks: HookHealth,
    /// This plugin's own counters, from its load (the slot's survive swaps).
    stats: super::stats::SlotStats,
    /// The component's own export names, to name its interfaces as it does in messages.
    exported: Vec<String>,
}

impl std::fmt::Debug for WasmPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmPlugin")
            .field("slot", &self.slot)
            .field("info", &self.info)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

/// Interface names as a component exports them, e.g. `volcache:policy/eviction@0.1.0`.
pub fn interface_name(interface: &str) -> String {
    format!("volcache:policy/{interface}@{}", super::WIT_VERSION)
}

/// Checks that a component only imports what the host provides: the policy `host` and `types`
/// interfaces and the deny-all WASI. `compile` already checked the bytes; this checks what
/// wasmtime actually compiled, so a parser disagreement cannot let an import through.
pub(crate) fn check_imports(engine: &PolicyEngine, component: &Component) -> Result<(), LoadError> {
    let ty = component.component_type();
    let outline = super::scan::Outline {
        imports: ty.imports(engine.engine()).map(|(name, _)| name.to_string()).collect(),
        exports: ty.exports(engine.engine()).map(|(name, _)| name.to_string()).collect(),
    };
    super::scan::check(&outline)
}

impl WasmPlugin {
    /// Links, instantiates and configures `component` for `slot`, type-checking every export the
    /// slot needs. `label` names the plugin in logs.
    pub(crate) fn new(
        engine: &PolicyEngine,
        component: &Component,
        digest: String,
        slot: Slot,
        params: Vec<(String, String)>,
    ) -> Result<Self, LoadError> {
        check_imports(engine, component)?;
        let mut linker: Linker<HostState> = Linker::new(engine.engine());
        bindings::AnyPolicy::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(LoadError::Link)?;
        wasi::add_to_linker(&mut linker, |s: &mut HostState| s.sandbox.view().table).map_err(LoadError::Link)?;
        wasi::trap_http(&mut linker, engine.engine(), component).map_err(LoadError::Link)?;
        let pre = linker.instantiate_pre(component).map_err(LoadError::Link)?;
        let missing = |interface: &str, e: wasmtime::Error| LoadError::WrongSlot {
            slot,
            detail: format!("{} ({e:#})", interface_name(interface)),
        };
        let exports = Exports {
            plugin: plugin::GuestIndices::new(&pre).map_err(|e| missing("plugin", e))?,
            admission: admission::GuestIndices::new(&pre).ok(),
            capacity: capacity::GuestIndices::new(&pre).ok(),
            eviction: eviction::GuestIndices::new(&pre).ok(),
            packed_eviction: packed_eviction::GuestIndices::new(&pre).ok(),
            events: events::GuestIndices::new(&pre).ok(),
            expiry: expiry::GuestIndices::new(&pre).ok(),
        };
        let has_slot = match slot {
            Slot::Admission => exports.admission.is_some(),
            Slot::Capacity => exports.capacity.is_some(),
            Slot::Eviction => exports.eviction.is_some() || exports.packed_eviction.is_some(),
        };
        if !has_slot {
            return Err(LoadError::WrongSlot {
                slot,
                detail: format!("the component does not export {}", slot.wanted()),
            });
        }
        let mut plugin = WasmPlugin {
            engine: engine.clone(),
            pre,
            exports,
            params,
            slot,
            info: PluginInfo { name: String::new(), version: String::new(), summary: String::new() },
            digest,
            live: Mutex::new(None),
            hooks: HookHealth::default(),
            stats: Default::default(),
            exported: component.component_type().exports(engine.engine()).map(|(name, _)| name.to_string()).collect(),
        };
        let mut live = plugin.instantiate().map_err(|e| match e {
            CallError::Rejected(reason) => LoadError::Configure(reason),
            CallError::Incompatible(detail) => LoadError::WrongSlot { slot, detail },
            other => LoadError::Instantiate(other),
        })?;
        let info =
            plugin.guarded(&mut live, |live| live.plugin.call_info(&mut live.store)).map_err(LoadError::Instantiate)?;
        plugin.info = PluginInfo { name: info.name, version: info.version, summary: info.summary };
        live.store.data_mut().label = format!("{}:{}", slot, plugin.info.name);
        *plugin.live.get_mut().unwrap_or_else(|p| p.into_inner()) = Some(live);
        Ok(plugin)
    }

    pub fn has_events(&self) -> bool {
        self.exports.events.is_some()
    }

    /// Whether the plugin lets entries go without pressure (`expiry`, WIT 0.1.1).
    pub fn has_expiry(&self) -> bool {
        self.exports.expiry.is_some()
    }

    pub(crate) fn hooks(&self) -> &HookHealth {
        &self.hooks
    }

    /// This plugin's counters since it was loaded.
    pub(crate) fn stats(&self) -> &super::stats::SlotStats {
        &self.stats
    }

    /// `interface` as the component names it (`volcache:policy/eviction@0.1.0` for a 0.1.0
    /// plugin), or as this host does when the component does not export it.
    fn export_name(&self, interface: &str) -> String {
        let prefix = format!("volcache:policy/{interface}@");
        self.exported.iter().find(|n| n.starts_with(&prefix)).cloned().unwrap_or_else(|| interface_name(interface))
    }

    /// A new instance, type-checked and configured.
    fn instantiate(&self) -> Result<Live, CallError> {
        let options = self.engine.options();
        let state = HostState {
            limiter: MemoryCap { limit: options.memory_limit_bytes, exceeded: false },
            log_budget: LOG_LINES_PER_CALL,
            log_dropped: 0,
            label: format!("{}:{}", self.slot, self.info.name),
            sandbox: Sandbox::new(),
        };
        let mut store = Store::new(self.engine.engine(), state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(self.engine.deadline_ticks());
        let instance = self.pre.instantiate(&mut store).map_err(|e| classify(&store, e))?;
        // `load` type-checks each exported function against the contract.
        let load = |interface: &'static str| {
            let name = self.export_name(interface);
            move |e: wasmtime::Error| CallError::Incompatible(format!("{name}: {e:#}"))
        };
        // An optional interface: loaded when the component exports it.
        macro_rules! optional {
            ($field:ident) => {
                optional!($field, stringify!($field))
            };
            ($field:ident, $interface:expr) => {
                self.exports
                    .$field
                    .as_ref()
                    .map(|i| i.load(&mut store, &instance))
                    .transpose()
                    .map_err(load($interface))?
            };
        }
        let mut live = Live {
            plugin: self.exports.plugin.load(&mut store, &instance).map_err(load("plugin"))?,
            admission: optional!(admission),
            capacity: optional!(capacity),
            eviction: optional!(eviction),
            packed_eviction: optional!(packed_eviction, "packed-eviction"),
            events: optional!(events),
            expiry: optional!(expiry),
            store,
        };
        let params = self.params.clone();
        self.guarded(&mut live, |live| live.plugin.call_configure(&mut live.store, &params))?
            .map_err(CallError::Rejected)?;
        Ok(live)
    }

    /// Runs `f` against a live instance under a fresh deadline and log budget, classifying any
    /// failure.
    fn guarded<R>(&self, live: &mut Live, f: impl FnOnce(&mut Live) -> wasmtime::Result<R>) -> Result<R, CallError> {
        self.guarded_for(self.engine.deadline_ticks(), live, f)
    }

    fn guarded_for<R>(
        &self,
        ticks: u64,
        live: &mut Live,
        f: impl FnOnce(&mut Live) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        live.store.set_epoch_deadline(ticks);
        live.store.data_mut().log_budget = LOG_LINES_PER_CALL;
        let result = f(live);
        live.store.data_mut().flush_output();
        let dropped = std::mem::take(&mut live.store.data_mut().log_dropped);
        if dropped > 0 {
            tracing::warn!(plugin = %live.store.data().label, dropped, "plugin log lines dropped (limit {LOG_LINES_PER_CALL} per call)");
        }
        result.map_err(|e| classify(&live.store, e))
    }

    /// Calls into the live instance (creating one if needed); on any failure the instance is
    /// discarded so the next call starts clean.
    fn call<R>(&self, f: impl FnOnce(&mut Live) -> wasmtime::Result<R>) -> Result<R, CallError> {
        self.call_for(self.engine.deadline_ticks(), f)
    }

    fn call_for<R>(&self, ticks: u64, f: impl FnOnce(&mut Live) -> wasmtime::Result<R>) -> Result<R, CallError> {
        let mut slot = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut live = match slot.take() {
            Some(live) => live,
            None => self.instantiate()?,
        };
        let result = self.guarded_for(ticks, &mut live, f);
        if result.is_ok() {
            *slot = Some(live);
        }
        result
    }

    pub(crate) fn admit(
        &self,
        candidate: &bindings::Candidate,
        view: &bindings::View,
    ) -> Result<Result<(), String>, CallError> {
        self.call(|live| match &live.admission {
            Some(g) => g.call_admit(&mut live.store, candidate, view),
            None => Err(wasmtime::format_err!("no admission export")),
        })
    }

    pub(crate) fn shortfall(
        &self,
        candidate: &bindings::Candidate,
        view: &bindings::View,
    ) -> Result<Result<bindings::Need, String>, CallError> {
        self.call(|live| match &live.capacity {
            Some(g) => g.call_shortfall(&mut live.store, candidate, view),
            None => Err(wasmtime::format_err!("no capacity export")),
        })
    }

    /// The plugin's victims for `need`; through `packed-eviction` (one list to copy in) when the
    /// component exports it.
    pub(crate) fn victims(&self, need: bindings::Need, view: &super::View) -> Result<Vec<u64>, CallError> {
        self.call(|live| match (&live.packed_eviction, &live.eviction) {
            (Some(g), _) => g.call_victims(&mut live.store, need, view.packed()),
            (None, Some(g)) => g.call_victims(&mut live.store, need, view.wire()),
            (None, None) => Err(wasmtime::format_err!("no eviction export")),
        })
    }

    /// The entries the plugin lets go now (`expiry.expire`).
    pub(crate) fn expire(&self, view: &bindings::View) -> Result<Vec<u64>, CallError> {
        self.call(|live| match &live.expiry {
            Some(g) => g.call_expire(&mut live.store, view),
            None => Err(wasmtime::format_err!("no expiry export")),
        })
    }

    /// Delivers an event to a plugin that exports `events` (others ignore it), within the short
    /// event budget.
    pub(crate) fn notify(&self, event: &super::PolicyEvent) -> Result<(), CallError> {
        if !self.has_events() {
            return Ok(());
        }
        self.call_for(self.engine.event_deadline_ticks(), |live| {
            let Some(g) = &live.events else { return Ok(()) };
            match event {
                super::PolicyEvent::Hit { id, now_ms } => g.call_on_hit(&mut live.store, *id, *now_ms),
                super::PolicyEvent::Insert(entry) => g.call_on_insert(&mut live.store, bindings::Entry::from(entry)),
                super::PolicyEvent::Evict { id } => g.call_on_evict(&mut live.store, *id),
            }
        })
    }
}

/// Turns a wasmtime error into what happened, in an operator's words.
fn classify(store: &Store<HostState>, error: wasmtime::Error) -> CallError {
    if store.data().limiter.exceeded {
        return CallError::MemoryLimit;
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallError::Timeout,
        Some(trap) => CallError::Trap(trap.to_string()),
        None => CallError::Trap(format!("{error:#}")),
    }
}

/// Hook failures in a row after which a plugin's hooks are switched off (`hooks.rs`).
pub(crate) const FAILURES_TO_DISABLE: u32 = 5;

/// Whether a plugin's hooks still run, and how many failed in a row.
#[derive(Debug, Default)]
pub(crate) struct HookHealth {
    failures_in_a_row: AtomicU32,
    disabled: AtomicBool,
    /// The plugin left its slot (a swap): events still queued for it are skipped.
    retired: AtomicBool,
}

impl HookHealth {
    pub(crate) fn disabled(&self) -> bool {
        self.disabled.load(Ordering::Relaxed)
    }

    /// Whether events for this plugin are skipped: its hooks were switched off, or it left its
    /// slot.
    pub(crate) fn skipped(&self) -> bool {
        self.disabled() || self.retired.load(Ordering::Relaxed)
    }

    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    /// Records one outcome; answers true exactly when this failure switched the hooks off.
    pub(crate) fn record(&self, ok: bool) -> bool {
        if ok {
            self.failures_in_a_row.store(0, Ordering::Relaxed);
            return false;
        }
        let n = self.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        n >= FAILURES_TO_DISABLE && !self.disabled.swap(true, Ordering::Relaxed)
    }
}
