//! `sieve`: SIEVE eviction (see `volcache_policy_core::Sieve`): entries in fill order, a hand
//! that spares entries used since it last passed and evicts the first one that was not. Resists
//! one-off scans: an image filled once and never used again goes at the hand's next pass.
//!
//! Slot *eviction*, world `stateful-eviction-policy` (`on-hit` marks an entry). No parameters.
#![no_std]

extern crate alloc;

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;

use volcache_policy_core as cinder;

wit_bindgen::generate!({ path: "../../wit", world: "stateful-eviction-policy" });

use exports::volcache::policy::{events, eviction, plugin};
use volcache::policy::types::{Entry, Need, SizeBasis, View};

struct State(RefCell<cinder::Sieve>);

// SAFETY: wasm32-unknown-unknown without the atomics feature has exactly one thread, so the
// RefCell is never reached from two threads.
unsafe impl Sync for State {}

static STATE: State = State(RefCell::new(cinder::Sieve::EMPTY));

struct Policy;

impl plugin::Guest for Policy {
    fn info() -> plugin::PluginInfo {
        plugin::PluginInfo {
            name: "sieve".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            summary: "SIEVE: spares entries used since the hand last passed; resists one-off scans".to_string(),
        }
    }

    fn configure(_params: Vec<(String, String)>) -> Result<(), String> {
        *STATE.0.borrow_mut() = cinder::Sieve::new();
        Ok(())
    }
}

impl eviction::Guest for Policy {
    fn victims(need: Need, view: View) -> Vec<u64> {
        let need = cinder::need!(need, SizeBasis);
        let entries = cinder::columns!(view);
        STATE.0.borrow_mut().victims(need, &entries, &view.created_ms)
    }
}

impl events::Guest for Policy {
    fn on_hit(id: u64, _now_ms: u64) {
        STATE.0.borrow_mut().on_hit(id);
    }
    fn on_insert(_entry: Entry) {}
    fn on_evict(id: u64) {
        STATE.0.borrow_mut().on_evict(id);
    }
}

export!(Policy);

#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
