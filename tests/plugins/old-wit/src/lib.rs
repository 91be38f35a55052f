//! `old-wit`: an LRU eviction policy with event hooks, built against the policy WIT exactly as it
//! was released at 0.1.0 (`wit/policy.wit` beside this file, never edited). The host speaks newer
//! 0.1.x versions and must keep loading it unchanged and asking it the same questions.
#![no_std]

extern crate alloc;

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use volcache_policy_core as cinder;

wit_bindgen::generate!({ path: "wit", world: "stateful-eviction-policy" });

use exports::volcache::policy::{eviction, events, plugin};
use volcache::policy::types::{Entry, Need, SizeBasis, View};

/// Events seen, reported in the log so a test can tell the hooks ran.
static EVENTS: AtomicU64 = AtomicU64::new(0);

struct Old;

impl plugin::Guest for Old {
    fn info() -> plugin::PluginInfo {
        plugin::PluginInfo {
            name: "old-wit".to_string(),
            version: "0.1.0".to_string(),
            summary: "LRU built against volcache:policy@0.1.0".to_string(),
        }
    }

    fn configure(_params: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }
}

impl eviction::Guest for Old {
    fn victims(need: Need, view: View) -> Vec<u64> {
        let need = cinder::need!(need, SizeBasis);
        let entries = cinder::columns!(view);
        cinder::lru_victims(need, &entries)
    }
}

impl events::Guest for Old {
    fn on_hit(_id: u64, _now_ms: u64) {
        EVENTS.fetch_add(1, Ordering::Relaxed);
    }
    fn on_insert(_entry: Entry) {
        EVENTS.fetch_add(1, Ordering::Relaxed);
    }
    fn on_evict(_id: u64) {
        let n = EVENTS.fetch_add(1, Ordering::Relaxed) + 1;
        volcache::policy::host::log(volcache::policy::host::Level::Info, &alloc::format!("old-wit: {n} events"));
    }
}

export!(Old);

#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
