//! Cache policies: sandboxed WebAssembly components (or their built-in native twins) that decide
//! what is cached and what is evicted.
//!
//! Data flow for one cache fill: the cache service builds a [`Candidate`] and a [`View`] of its
//! scope and asks [`PolicySet::plan`], which calls the three slots in order (admission ->
//! capacity -> eviction), validates every answer, and answers with a [`Plan`]. A slot holds
//! either a built-in policy ([`Builtin`]) or a [`WasmPlugin`]; any plugin failure (trap, timeout,
//! memory cap, invalid answer) is counted and that request is decided by the built-in policy of
//! the same slot, i.e. by Cinder's semantics. Slots are swapped atomically at run time
//! ([`PolicySet::swap`]) after the candidate plugin has been compiled, type-checked, configured
//! and smoke-tested; in-flight decisions finish on the plugin they started with.

mod bindings;
mod builtin;
mod checks;
mod engine;
mod hooks;
mod inspect;
mod plugin;
mod scan;
mod slots;
mod stats;
pub mod testkit;
mod wasi;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

pub use builtin::Builtin;
pub(crate) use checks::read_plugin_file;
pub use engine::{Compiled, EngineOptions, PolicyEngine, DEFAULT_MAX_COMPONENT_BYTES};
pub use inspect::{inspect, Inspection};
pub use plugin::{interface_name, PluginInfo, WasmPlugin};
pub use scan::host_speaks;
pub use slots::{Decided, DecidedBy, Plan, PolicySet, PolicySource, PolicySpec, SlotStatus};
pub use stats::SlotStats;
pub use volcache_policy_core::{CinderLimits, Entry, Need, SizeBasis};

/// The WIT package version this host implements.
pub const WIT_VERSION: &str = "0.1.1";

/// The three policy slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Slot {
    Admission,
    Capacity,
    Eviction,
}

impl Slot {
    pub const ALL: [Slot; 3] = [Slot::Admission, Slot::Capacity, Slot::Eviction];

    /// The WIT interface that fills this slot.
    pub fn interface(self) -> &'static str {
        match self {
            Slot::Admission => "admission",
            Slot::Capacity => "capacity",
            Slot::Eviction => "eviction",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.interface())
    }
}

impl FromStr for Slot {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Slot::ALL
            .into_iter()
            .find(|slot| slot.interface() == s)
            .ok_or_else(|| format!("unknown policy slot {s:?}: expected admission, capacity or eviction"))
    }
}

/// The image a request would cache, as policies see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub image_id: String,
    pub size_gib: u64,
    pub virtual_size_bytes: u64,
    pub allocated_bytes: u64,
}

impl Candidate {
    /// The candidate as the WIT record a plugin receives.
    pub(crate) fn wire(&self) -> bindings::Candidate {
        bindings::Candidate {
            image_id: self.image_id.clone(),
            size_gib: self.size_gib,
            virtual_size_bytes: self.virtual_size_bytes,
            allocated_bytes: self.allocated_bytes,
        }
    }

    pub(crate) fn size(&self) -> volcache_policy_core::CandidateSize {
        volcache_policy_core::CandidateSize { size_gib: self.size_gib, allocated_bytes: self.allocated_bytes }
    }
}

/// A snapshot of one cache scope, held as the WIT `view` columns sorted by id: native and wasm
/// policies read the same columns, a plugin call copies each column into the sandbox in one go,
/// and answers are checked by binary search without building a map.
#[derive(Clone, Debug)]
pub struct View {
    columns: bindings::View,
}

impl View {
    pub fn new(mut entries: Vec<Entry>, now_ms: u64) -> Self {
        entries.sort_unstable_by_key(|e| e.id);
        entries.dedup_by_key(|e| e.id);
        let column = |f: fn(&Entry) -> u64| entries.iter().map(f).collect::<Vec<u64>>();
        View {
            columns: bindings::View {
                ids: column(|e| e.id),
                size_gib: column(|e| e.size_gib),
                allocated_bytes: column(|e| e.allocated_bytes),
                last_used_ms: column(|e| e.last_used_ms),
                created_ms: column(|e| e.created_ms),
                hits: column(|e| e.hits),
                pinned: entries.iter().filter(|e| e.pinned).map(|e| e.id).collect(),
                now_ms,
            },
        }
    }

    pub fn len(&self) -> usize {
        self.columns.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.columns.ids.is_empty()
    }

    pub fn now_ms(&self) -> u64 {
        self.columns.now_ms
    }

    fn row(&self, row: usize) -> Entry {
        let c = &self.columns;
        Entry {
            id: c.ids[row],
            size_gib: c.size_gib[row],
            allocated_bytes: c.allocated_bytes[row],
            last_used_ms: c.last_used_ms[row],
            created_ms: c.created_ms[row],
            hits: c.hits[row],
            pinned: c.pinned.binary_search(&c.ids[row]).is_ok(),
        }
    }

    /// The entries, by ascending id.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = Entry> + '_ {
        (0..self.len()).map(|row| self.row(row))
    }

    pub fn get(&self, id: u64) -> Option<Entry> {
        self.columns.ids.binary_search(&id).ok().map(|row| self.row(row))
    }

    pub(crate) fn columns(&self) -> volcache_policy_core::Columns<'_> {
        let c = &self.columns;
        volcache_policy_core::Columns {
            ids: &c.ids,
            size_gib: &c.size_gib,
            allocated_bytes: &c.allocated_bytes,
            last_used_ms: &c.last_used_ms,
            pinned: &c.pinned,
        }
    }

    pub(crate) fn wire(&self) -> &bindings::View {
        &self.columns
    }
}

impl Default for View {
    fn default() -> Self {
        View::new(Vec::new(), 0)
    }
}

/// The unit a need is counted in, for messages.
pub(crate) fn unit(basis: SizeBasis) -> &'static str {
    match basis {
        SizeBasis::Provisioned => "GiB",
        SizeBasis::Allocated => "bytes",
    }
}

/// Something that happened to the cache, for plugins that export `events`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyEvent {
    Hit { id: u64, now_ms: u64 },
    Insert(Entry),
    Evict { id: u64 },
}

/// Why a plugin could not be loaded into a slot. The old plugin, if any, keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("could not set up the wasm engine: {0:#}")]
    Engine(#[source] wasmtime::Error),
    #[error("plugin cache {path}: {source}")]
    Cache { path: PathBuf, source: std::io::Error },
    #[error("reading plugin {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("not a policy component: {0}")]
    NotAComponent(String),
    #[error("invalid component: {0:#}")]
    Compile(#[source] wasmtime::Error),
    #[error("plugin imports {}, which volcache does not provide: a policy may import volcache:policy/host and WASI 0.2 (cli, io, clocks, random, filesystem, sockets, http; all deny-all)", .0.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "))]
    ForbiddenImport(Vec<String>),
    #[error("plugin was built against volcache:policy@{found}; this host speaks {speaks}: rebuild it against the WIT this daemon ships (`volcache plugin wit`)")]
    WitVersion { found: String, speaks: String },
    #[error("cannot link plugin: {0:#}")]
    Link(#[source] wasmtime::Error),
    #[error("plugin cannot fill the {slot} slot: {detail}")]
    WrongSlot { slot: Slot, detail: String },
    #[error("built-in policy {name:?} cannot fill the {slot} slot (it fills {fills})")]
    BuiltinWrongSlot { name: &'static str, slot: Slot, fills: Slot },
    #[error("unknown built-in policy {0:?}: expected max-size, quota or lru")]
    UnknownBuiltin(String),
    #[error("plugin failed to start: {0}")]
    Instantiate(#[source] CallError),
    #[error("plugin rejected its configuration: {0}")]
    Configure(String),
    #[error("invalid parameters for the built-in policy: {0}")]
    BuiltinParams(String),
    #[error("smoke test failed: {0}")]
    Smoke(#[source] CallError),
}

/// Why one call into a plugin gave no usable answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("deadline exceeded (the call ran too long and was interrupted)")]
    Timeout,
    #[error("memory cap exceeded")]
    MemoryLimit,
    #[error("trapped: {0}")]
    Trap(String),
    #[error("invalid answer: {0}")]
    InvalidAnswer(String),
    #[error("exports do not match the contract: {0}")]
    Incompatible(String),
    #[error("rejected its configuration: {0}")]
    Rejected(String),
}

impl CallError {
    /// A short stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Timeout => "timeout",
            CallError::MemoryLimit => "memory",
            CallError::Trap(_) => "trap",
            CallError::InvalidAnswer(_) => "invalid-answer",
            CallError::Incompatible(_) => "incompatible",
            CallError::Rejected(_) => "config",
        }
    }
}
