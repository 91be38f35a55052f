//! `lru`: Cinder's eviction policy as a volcache plugin.
//!
//! Slot *eviction*: given what must be freed (`need`) and the cache's entries (`view`), name the
//! least-recently-used unpinned entries, oldest first, ties broken by the lower id, just enough to
//! cover the need. This file is the whole plugin; the rule itself is shared with the host's
//! built-in fallback through `volcache-policy-core`, so wasm and native decide identically.
#![no_std]

extern crate alloc;

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use volcache_policy_core as cinder;

// Generates Rust types and traits from the WIT contract, for the world this plugin fills.
// The packed world (WIT 0.1.2): the view arrives as one list, one allocation per call.
wit_bindgen::generate!({ path: "../../wit", world: "packed-eviction-policy" });

use exports::volcache::policy::{packed_eviction, plugin};
use volcache::policy::types::{Need, PackedView, SizeBasis};

struct Lru;

impl plugin::Guest for Lru {
    fn info() -> plugin::PluginInfo {
        plugin::PluginInfo {
            name: "lru".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            summary: "evicts least-recently-used entries first (Cinder)".to_string(),
        }
    }

    // LRU has no settings of its own; the Cinder limits are the capacity slot's business.
    fn configure(_params: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }
}

impl packed_eviction::Guest for Lru {
    fn victims(need: Need, view: PackedView) -> Vec<u64> {
        let need = cinder::need!(need, SizeBasis);
        // The policy core reads the view's columns in place: no copy of 10,000 entries.
        let entries = cinder::packed!(view);
        cinder::lru_victims(need, &entries)
    }
}

export!(Lru);

// A no_std component needs an allocator and a panic handler; a panic becomes a wasm trap, which
// the host contains and answers with its built-in policy. LRU keeps nothing between calls, so a
// per-call arena serves it (a pointer bump instead of dlmalloc's bookkeeping).
#[global_allocator]
static ALLOC: volcache_plugin_arena::CallArena = volcache_plugin_arena::CallArena::new();

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
