//! `ttl`: entries unused for longer than the TTL are evicted first, oldest first; then the
//! least recently used, as Cinder does (see `volcache_policy_core::ttl_victims`). They also go
//! without pressure: the host calls `expiry.expire` (WIT 0.1.1) periodically, and this plugin
//! names every unpinned entry unused for longer than the TTL (`ttl_expired`).
//!
//! Slot *eviction*. Parameters: `ttl_days` (default 7), or `ttl_seconds` for a finer TTL (the
//! later key wins). A TTL of 0 makes it Cinder's LRU that expires nothing.
#![no_std]

extern crate alloc;

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use volcache_policy_core as cinder;

wit_bindgen::generate!({ path: "../../wit", world: "expiring-eviction-policy" });

use exports::volcache::policy::{eviction, expiry, plugin};
use volcache::policy::types::{Need, SizeBasis, View};

static TTL_MS: AtomicU64 = AtomicU64::new(7 * 86_400_000);

struct Policy;

impl plugin::Guest for Policy {
    fn info() -> plugin::PluginInfo {
        plugin::PluginInfo {
            name: "ttl".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            summary: "expires entries unused for the TTL, and evicts them first, then least-recently-used".to_string(),
        }
    }

    fn configure(params: Vec<(String, String)>) -> Result<(), String> {
        for (key, value) in &params {
            match key.as_str() {
                "ttl_days" => TTL_MS.store(cinder::whole_number(key, value)?.saturating_mul(86_400_000), Ordering::Relaxed),
                "ttl_seconds" => TTL_MS.store(cinder::whole_number(key, value)?.saturating_mul(1_000), Ordering::Relaxed),
                _ => {}
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

impl expiry::Guest for Policy {
    fn expire(view: View) -> Vec<u64> {
        let entries = cinder::columns!(view);
        cinder::ttl_expired(&entries, view.now_ms, TTL_MS.load(Ordering::Relaxed))
    }
}

export!(Policy);

#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
