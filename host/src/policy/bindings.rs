//! Host-side bindings generated from `wit/policy.wit`, and conversions to the policy core's types.

use volcache_policy_core as cinder;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "any-policy",
});

pub use exports::volcache::policy::{admission, capacity, events, eviction, expiry, packed_eviction, plugin};
pub use volcache::policy::host::Level;
pub use volcache::policy::types::{Candidate, Entry, Need, PackedView, SizeBasis, View};

impl From<&cinder::Entry> for Entry {
    fn from(e: &cinder::Entry) -> Self {
        Entry {
            id: e.id,
            size_gib: e.size_gib,
            allocated_bytes: e.allocated_bytes,
            last_used_ms: e.last_used_ms,
            created_ms: e.created_ms,
            hits: e.hits,
            pinned: e.pinned,
        }
    }
}

impl From<cinder::SizeBasis> for SizeBasis {
    fn from(b: cinder::SizeBasis) -> Self {
        match b {
            cinder::SizeBasis::Provisioned => SizeBasis::Provisioned,
            cinder::SizeBasis::Allocated => SizeBasis::Allocated,
        }
    }
}

impl From<SizeBasis> for cinder::SizeBasis {
    fn from(b: SizeBasis) -> Self {
        match b {
            SizeBasis::Provisioned => cinder::SizeBasis::Provisioned,
            SizeBasis::Allocated => cinder::SizeBasis::Allocated,
        }
    }
}

impl From<cinder::Need> for Need {
    fn from(n: cinder::Need) -> Self {
        Need { amount: n.amount, basis: n.basis.into(), entries: n.entries }
    }
}

impl From<Need> for cinder::Need {
    fn from(n: Need) -> Self {
        cinder::Need { amount: n.amount, basis: n.basis.into(), entries: n.entries }
    }
}
