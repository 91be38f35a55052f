//! `max-size`: Cinder's admission policy as a volcache plugin.
//!
//! Slot *admission*: an image whose cache volume would be larger than
//! `image_volume_cache_max_size_gb` (0 = unlimited) is never cached; its volume is written
//! directly instead. With `size_basis = allocated` the image's data bytes are compared instead of
//! its provisioned GiB.
#![no_std]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use volcache_policy_core as cinder;

wit_bindgen::generate!({ path: "../../wit", world: "admission-policy" });

use exports::volcache::policy::{admission, plugin};
use volcache::policy::types::{Candidate, View};

static LIMITS: cinder::AtomicLimits = cinder::AtomicLimits::new();

struct MaxSize;

impl plugin::Guest for MaxSize {
    fn info() -> plugin::PluginInfo {
        plugin::PluginInfo {
            name: "max-size".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            summary: "never caches an image larger than image_volume_cache_max_size_gb (Cinder)".to_string(),
        }
    }

    fn configure(params: Vec<(String, String)>) -> Result<(), String> {
        let limits = cinder::CinderLimits::from_params(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|e| format!("{e}"))?;
        LIMITS.store(limits);
        Ok(())
    }
}

impl admission::Guest for MaxSize {
    fn admit(candidate: Candidate, _view: View) -> Result<(), String> {
        let size = cinder::CandidateSize { size_gib: candidate.size_gib, allocated_bytes: candidate.allocated_bytes };
        cinder::admit(&LIMITS.load(), size).map_err(|r| format!("{r}"))
    }
}

export!(MaxSize);

#[global_allocator]
static ALLOC: volcache_plugin_arena::CallArena = volcache_plugin_arena::CallArena::new();

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
