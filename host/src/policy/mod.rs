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
use std::sync::OnceLock;

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
pub const WIT_VERSION: &str = "0.1.2";

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

    /// The WIT interface that fills this slot (and names it).
    pub fn interface(self) -> &'static str {
        self.interfaces()[0]
    }

    /// Every WIT interface that fills this slot: a component exports one or more of them
    /// (`packed-eviction` since 0.1.2).
    pub fn interfaces(self) -> &'static [&'static str] {
        match self {
            Slot::Admission => &["admission"],
            Slot::Capacity => &["capacity"],
            Slot::Eviction => &["eviction", "packed-eviction"],
        }
    }

    /// The interfaces that fill this slot as a component names them, for messages.
    pub(crate) fn wanted(self) -> String {
        self.interfaces().iter().map(|i| plugin::interface_name(i)).collect::<Vec<_>>().join(" or ")
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

/// A snapshot of one cache scope, held as the WIT `packed-view` (six columns sorted by id, then
/// the pinned ids): native and wasm policies read the same columns, a plugin call copies the
/// whole view into the sandbox in one go, and answers are checked by binary search without
/// building a map. The seven-list `view` that 0.1.0 and 0.1.1 interfaces take is built from it
/// once, on first use.
#[derive(Clone, Debug)]
pub struct View {
    packed: bindings::PackedView,
    plain: OnceLock<bindings::View>,
}

impl View {
    pub fn new(mut entries: Vec<Entry>, now_ms: u64) -> Self {
        entries.sort_unstable_by_key(|e| e.id);
        entries.dedup_by_key(|e| e.id);
        let rows = entries.len();
        let pinned = entries.iter().filter(|e| e.pinned).count();
        let mut list = Vec::with_capacity(rows * volcache_policy_core::packed::COLUMNS + pinned);
        let fields: [fn(&Entry) -> u64; volcache_policy_core::packed::COLUMNS] =
            [|e| e.id, |e| e.size_gib, |e| e.allocated_bytes, |e| e.last_used_ms, |e| e.created_ms, |e| e.hits];
        for field in fields {
            list.extend(entries.iter().map(field));
        }
        list.extend(entries.iter().filter(|e| e.pinned).map(|e| e.id));
        // A view is one cache scope's entries: far fewer than u32::MAX.
        let rows = u32::try_from(rows).expect("a view holds fewer than 2^32 entries");
        View { packed: bindings::PackedView { rows, columns: list, now_ms }, plain: OnceLock::new() }
    }

    fn layout(&self) -> volcache_policy_core::Packed<'_> {
        volcache_policy_core::Packed::new(self.packed.rows, &self.packed.columns)
    }

    fn column(&self, k: usize) -> &[u64] {
        self.layout().column(k)
    }

    pub fn len(&self) -> usize {
        self.packed.rows as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn now_ms(&self) -> u64 {
        self.packed.now_ms
    }

    fn row(&self, row: usize) -> Entry {
        use volcache_policy_core::packed::*;
        let id = self.column(IDS)[row];
        Entry {
            id,
            size_gib: self.column(SIZE_GIB)[row],
            allocated_bytes: self.column(ALLOCATED_BYTES)[row],
            last_used_ms: self.column(LAST_USED_MS)[row],
            created_ms: self.column(CREATED_MS)[row],
            hits: self.column(HITS)[row],
            pinned: self.layout().pinned().binary_search(&id).is_ok(),
        }
    }

    /// The entries, by ascending id.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = Entry> + '_ {
        (0..self.len()).map(|row| self.row(row))
    }

    pub fn get(&self, id: u64) -> Option<Entry> {
        self.column(volcache_policy_core::packed::IDS).binary_search(&id).ok().map(|row| self.row(row))
    }

    pub(crate) fn columns(&self) -> volcache_policy_core::Columns<'_> {
        self.layout().columns()
    }

    /// The view as the WIT 0.1.2 `packed-view`.
    pub(crate) fn packed(&self) -> &bindings::PackedView {
        &self.packed
    }

    /// The view as the WIT `view` record (seven lists), built on first use.
    pub(crate) fn wire(&self) -> &bindings::View {
        use volcache_policy_core::packed::*;
        self.plain.get_or_init(|| bindings::View {
            ids: self.column(IDS).to_vec(),
            size_gib: self.column(SIZE_GIB).to_vec(),
            allocated_bytes: self.column(ALLOCATED_BYTES).to_vec(),
            last_used_ms: self.column(LAST_USED_MS).to_vec(),
            created_ms: self.column(CREATED_MS).to_vec(),
            hits: self.column(HITS).to_vec(),
            pinned: self.layout().pinned().to_vec(),
            now_ms: self.packed.now_ms,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The packed list follows the WIT's layout, and the entries, lookups, native columns and
    /// the seven-list `view` all read back what went in (sorted by id, one row per id).
    #[test]
    fn a_view_reads_back_its_entries_through_every_shape() {
        let entry = |id: u64, pinned: bool| Entry {
            id,
            size_gib: id + 1,
            allocated_bytes: id * 1000,
            last_used_ms: 50 - id,
            created_ms: id * 3,
            hits: id % 4,
            pinned,
        };
        let given = vec![entry(9, true), entry(2, false), entry(5, true), entry(2, false)];
        let view = View::new(given, 77);
        let expected = vec![entry(2, false), entry(5, true), entry(9, true)];
        assert_eq!(view.entries().collect::<Vec<_>>(), expected);
        assert_eq!((view.len(), view.now_ms(), view.get(5), view.get(3)), (3, 77, Some(expected[1]), None));

        let packed = view.packed();
        assert_eq!((packed.rows, packed.now_ms), (3, 77));
        for (i, e) in expected.iter().enumerate() {
            let fields = [e.id, e.size_gib, e.allocated_bytes, e.last_used_ms, e.created_ms, e.hits];
            for (k, value) in fields.into_iter().enumerate() {
                assert_eq!(packed.columns[k * 3 + i], value, "column {k} of row {i}");
            }
        }
        assert_eq!(&packed.columns[6 * 3..], &[5, 9]);

        let plain = view.wire();
        assert_eq!((plain.ids.as_slice(), plain.last_used_ms.as_slice()), (&[2, 5, 9][..], &[48, 45, 41][..]));
        assert_eq!((plain.hits.as_slice(), plain.pinned.as_slice(), plain.now_ms), (&[2, 1, 1][..], &[5, 9][..], 77));
        let native = view.columns();
        assert_eq!((native.size_gib, native.allocated_bytes), (&[3, 6, 10][..], &[2000, 5000, 9000][..]));
    }
}
