//! `second-hit`: cache an image only when it is requested again within a window (see
//! `volcache_policy_core::SecondHit`). A one-off request, such as a batch job walking the whole
//! catalog, is written uncached and never displaces an entry.
//!
//! Slot *admission*. Parameters: `window_hours` (default 24), `remember` (images remembered at
//! most, default 10000), and the Cinder `image_volume_cache_max_size_gb` (an image larger than
//! the cache is refused as by `max-size`).
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

struct State(RefCell<Option<(cinder::SecondHit, cinder::CinderLimits)>>);

// SAFETY: wasm32-unknown-unknown without the atomics feature has exactly one thread, so the
// RefCell is never reached from two threads.
unsafe impl Sync for State {}

static STATE: State = State(RefCell::new(None));

struct Policy;

impl plugin::Guest for Policy {
    fn info() -> plugin::PluginInfo {
        plugin::PluginInfo {
            name: "second-hit".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            summary: "caches an image only when it is requested again within a window".to_string(),
        }
    }

    fn configure(params: Vec<(String, String)>) -> Result<(), String> {
        let (mut hours, mut remember) = (24u64, 10_000u64);
        for (key, value) in &params {
            match key.as_str() {
                "window_hours" => hours = cinder::whole_number(key, value)?,
                "remember" => remember = cinder::whole_number(key, value)?.max(1),
                _ => {}
            }
        }
        let limits = cinder::CinderLimits::from_params(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|e| format!("{e}"))?;
        let memory = cinder::SecondHit::new(hours.saturating_mul(3_600_000), remember as usize);
        *STATE.0.borrow_mut() = Some((memory, limits));
        Ok(())
    }
}

impl admission::Guest for Policy {
    fn admit(candidate: Candidate, view: View) -> Result<(), String> {
        let mut state = STATE.0.borrow_mut();
        let (memory, limits) =
            state.get_or_insert_with(|| (cinder::SecondHit::new(86_400_000, 10_000), Default::default()));
        let size = cinder::CandidateSize { size_gib: candidate.size_gib, allocated_bytes: candidate.allocated_bytes };
        cinder::admit(limits, size).map_err(|r| format!("{r}"))?;
        if memory.admit(&candidate.image_id, view.now_ms) {
            Ok(())
        } else {
            Err("first request within the window: cached when requested again".to_string())
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
