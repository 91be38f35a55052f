//! `frequent`: frequency admission for byte hit ratio (after TinyLFU; see
//! `volcache_policy_core::Frequent`). While the cache has room everything is cached; once it is
//! full, an image displaces entries only when it was requested before and more often, per
//! half-life, than the entries of lowest request rate it would displace.
//!
//! Slot *admission*. Parameters: `half_life_hours` (default 24), `remember` (images counted at
//! most, default 10000), and the Cinder limits (`image_volume_cache_max_size_gb`,
//! `image_volume_cache_max_count`), which tell it when the cache is full.
#![no_std]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;

use volcache_policy_core as cinder;

wit_bindgen::generate!({ path: "../../wit", world: "admission-policy" });

use exports::volcache::policy::{admission, plugin};
use volcache::policy::types::{Candidate, View};

struct State(RefCell<Option<(cinder::Frequent, cinder::CinderLimits)>>);

// SAFETY: wasm32-unknown-unknown without the atomics feature has exactly one thread, so the
// RefCell is never reached from two threads.
unsafe impl Sync for State {}

static STATE: State = State(RefCell::new(None));

struct Policy;

impl plugin::Guest for Policy {
    fn info() -> plugin::PluginInfo {
        plugin::PluginInfo {
            name: "frequent".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            summary: "caches an image over entries only when it is requested more often than they are".to_string(),
        }
    }

    fn configure(params: Vec<(String, String)>) -> Result<(), String> {
        let (mut hours, mut remember) = (24u64, 10_000u64);
        for (key, value) in &params {
            match key.as_str() {
                "half_life_hours" => hours = cinder::whole_number(key, value)?.max(1),
                "remember" => remember = cinder::whole_number(key, value)?.max(1),
                _ => {}
            }
        }
        let limits = cinder::CinderLimits::from_params(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|e| format!("{e}"))?;
        *STATE.0.borrow_mut() = Some((cinder::Frequent::new(hours.saturating_mul(3_600_000), remember as usize), limits));
        Ok(())
    }
}

impl admission::Guest for Policy {
    fn admit(candidate: Candidate, view: View) -> Result<(), String> {
        let mut state = STATE.0.borrow_mut();
        let (memory, limits) =
            state.get_or_insert_with(|| (cinder::Frequent::new(86_400_000, 10_000), Default::default()));
        let size = cinder::CandidateSize { size_gib: candidate.size_gib, allocated_bytes: candidate.allocated_bytes };
        cinder::admit(limits, size).map_err(|r| format!("{r}"))?;
        let entries = cinder::weighed!(view);
        if memory.admit(&candidate.image_id, candidate.size_gib, limits, &entries, view.now_ms) {
            Ok(())
        } else {
            Err("requested less often than the entries it would displace".to_string())
        }
    }
}

export!(Policy);

#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
