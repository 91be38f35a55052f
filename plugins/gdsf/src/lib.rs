//! `gdsf`: Greedy-Dual-Size-Frequency eviction (see `volcache_policy_core::Gdsf`).
//!
//! Slot *eviction*, world `stateful-eviction-policy`: the `events` hooks keep each entry's value
//! (`L + frequency x (fixed_cost + size) / size`); `victims` evicts the lowest values first.
//! Parameter `fixed_cost_mib` (default 0): what a refill costs beyond its bytes; 0 values every
//! byte alike (frequency with aging, best for the bytes downloaded), a larger value keeps small
//! images longer (fewer refills).
#![no_std]

extern crate alloc;

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;

use volcache_policy_core as cinder;

wit_bindgen::generate!({ path: "../../wit", world: "stateful-eviction-policy" });

use exports::volcache::policy::{events, eviction, plugin};
use volcache::policy::types::{Entry, Need, SizeBasis, View};

/// The policy's state. A component instance runs on one thread (wasm32 without threads), and
/// the host calls one export at a time.
struct State(RefCell<Option<cinder::Gdsf>>);

// SAFETY: wasm32-unknown-unknown without the atomics feature has exactly one thread, so the
// RefCell is never reached from two threads.
unsafe impl Sync for State {}

static STATE: State = State(RefCell::new(None));

fn with<R>(f: impl FnOnce(&mut cinder::Gdsf) -> R) -> R {
    let mut state = STATE.0.borrow_mut();
    f(state.get_or_insert_with(|| cinder::Gdsf::new(0)))
}

struct Policy;

impl plugin::Guest for Policy {
    fn info() -> plugin::PluginInfo {
        plugin::PluginInfo {
            name: "gdsf".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            summary: "keeps images that are popular per byte and costly to refill (Greedy-Dual-Size-Frequency)"
                .to_string(),
        }
    }

    fn configure(params: Vec<(String, String)>) -> Result<(), String> {
        let mut fixed = 0u64;
        for (key, value) in &params {
            if key == "fixed_cost_mib" {
                fixed = cinder::whole_number(key, value)?;
            }
        }
        *STATE.0.borrow_mut() = Some(cinder::Gdsf::new(fixed.saturating_mul(1 << 20)));
        Ok(())
    }
}

fn bytes(size_gib: u64, allocated: u64) -> u64 {
    if allocated > 0 {
        allocated
    } else {
        size_gib << 30
    }
}

impl eviction::Guest for Policy {
    fn victims(need: Need, view: View) -> Vec<u64> {
        let need = cinder::need!(need, SizeBasis);
        let sizes: Vec<u64> =
            view.size_gib.iter().zip(&view.allocated_bytes).map(|(&gib, &allocated)| bytes(gib, allocated)).collect();
        let entries = cinder::columns!(view);
        with(|g| g.victims(need, &entries, &view.hits, &sizes))
    }
}

impl events::Guest for Policy {
    fn on_hit(id: u64, _now_ms: u64) {
        with(|g| g.on_hit(id));
    }
    fn on_insert(entry: Entry) {
        with(|g| g.on_insert(entry.id, bytes(entry.size_gib, entry.allocated_bytes)));
    }
    fn on_evict(id: u64) {
        with(|g| g.on_evict(id));
    }
}

export!(Policy);

#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
