//! `rate`: eviction by request rate (see `volcache_policy_core::rate_victims`): the entries
//! requested least often per unit of age go first. Pairs with the `frequent` admission, which
//! weighs entries the same way.
//!
//! Slot *eviction*. Parameter: `min_age_hours` (default 6): a younger entry counts as that old,
//! so a new entry's one fill does not read as a flood of requests.
#![no_std]

extern crate alloc;

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use volcache_policy_core as cinder;

wit_bindgen::generate!({ path: "../../wit", world: "eviction-policy" });

use exports::volcache::policy::{eviction, plugin};
use volcache::policy::types::{Need, SizeBasis, View};

static MIN_AGE_MS: AtomicU64 = AtomicU64::new(6 * 3_600_000);

struct Policy;

impl plugin::Guest for Policy {
    fn info() -> plugin::PluginInfo {
        plugin::PluginInfo {
            name: "rate".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            summary: "evicts the entries requested least often per unit of age first".to_string(),
        }
    }

    fn configure(params: Vec<(String, String)>) -> Result<(), String> {
        for (key, value) in &params {
            if key == "min_age_hours" {
                let hours = cinder::whole_number(key, value)?;
                MIN_AGE_MS.store(hours.saturating_mul(3_600_000), Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

impl eviction::Guest for Policy {
    fn victims(need: Need, view: View) -> Vec<u64> {
        let need = cinder::need!(need, SizeBasis);
        let entries = cinder::weighed!(view);
        cinder::rate_victims(need, &entries, &view.ids, view.now_ms, MIN_AGE_MS.load(Ordering::Relaxed))
    }
}

export!(Policy);

#[global_allocator]
static ALLOC: volcache_plugin_arena::CallArena = volcache_plugin_arena::CallArena::new();

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
