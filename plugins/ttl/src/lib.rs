//! `ttl`: entries unused for longer than `ttl_days` are evicted first, oldest first; then the
//! least recently used, as Cinder does (see `volcache_policy_core::ttl_victims`).
//!
//! Slot *eviction*. Parameter `ttl_days` (default 7; 0 makes it Cinder's LRU). Entries are only
//! evicted to make room: cleaning up expired entries without pressure needs a periodic call the
//! WIT does not have yet.
#![no_std]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use volcache_policy_core as cinder;

wit_bindgen::generate!({ path: "../../wit", world: "eviction-policy" });

use exports::volcache::policy::{eviction, plugin};
use volcache::policy::types::{Need, SizeBasis, View};

static TTL_MS: AtomicU64 = AtomicU64::new(7 * 86_400_000);

struct Policy;

impl plugin::Guest for Policy {
    fn info() -> plugin::PluginInfo {
        plugin::PluginInfo {
            name: "ttl".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            summary: "evicts entries unused for ttl_days first, then least-recently-used".to_string(),
        }
    }

    fn configure(params: Vec<(String, String)>) -> Result<(), String> {
        for (key, value) in &params {
            if key == "ttl_days" {
                let days: u64 = value.parse().map_err(|_| format!("ttl_days: {value:?} is not a whole number"))?;
                TTL_MS.store(days.saturating_mul(86_400_000), Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

impl eviction::Guest for Policy {
    fn victims(need: Need, view: View) -> Vec<u64> {
        let need = cinder::need!(need, SizeBasis);
        let entries = cinder::columns!(view);
        cinder::ttl_victims(need, &entries, view.now_ms, TTL_MS.load(Ordering::Relaxed))
    }
}

export!(Policy);

#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
