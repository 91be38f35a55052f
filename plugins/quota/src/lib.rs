//! `quota`: Cinder's capacity policy as a volcache plugin.
//!
//! Slot *capacity*: how much must be evicted so that, with the candidate inserted, the cache holds
//! at most `image_volume_cache_max_size_gb` GiB and at most `image_volume_cache_max_count` entries
//! (each 0 = unlimited). A candidate larger than the whole cache is refused outright.
#![no_std]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use volcache_policy_core as cinder;

wit_bindgen::generate!({ path: "../../wit", world: "capacity-policy" });

use exports::volcache::policy::{capacity, plugin};
use volcache::policy::types::{Candidate, Need, SizeBasis, View};

static LIMITS: cinder::AtomicLimits = cinder::AtomicLimits::new();

struct Quota;

impl plugin::Guest for Quota {
    fn info() -> plugin::PluginInfo {
        plugin::PluginInfo {
            name: "quota".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            summary: "keeps the cache within image_volume_cache_max_size_gb and _max_count (Cinder)".to_string(),
        }
    }

    fn configure(params: Vec<(String, String)>) -> Result<(), String> {
        let limits = cinder::CinderLimits::from_params(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|e| format!("{e}"))?;
        LIMITS.store(limits);
        Ok(())
    }
}

impl capacity::Guest for Quota {
    fn shortfall(candidate: Candidate, view: View) -> Result<Need, String> {
        let size = cinder::CandidateSize { size_gib: candidate.size_gib, allocated_bytes: candidate.allocated_bytes };
        let entries = cinder::columns!(view);
        let need = cinder::shortfall(&LIMITS.load(), size, &entries).map_err(|r| format!("{r}"))?;
        Ok(Need {
            amount: need.amount,
            basis: match need.basis {
                cinder::SizeBasis::Provisioned => SizeBasis::Provisioned,
                cinder::SizeBasis::Allocated => SizeBasis::Allocated,
            },
            entries: need.entries,
        })
    }
}

export!(Quota);

#[global_allocator]
static ALLOC: volcache_plugin_arena::CallArena = volcache_plugin_arena::CallArena::new();

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
