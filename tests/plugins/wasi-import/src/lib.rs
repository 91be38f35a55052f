//! `wasi-import`: a correct eviction policy that also imports a WASI interface (randomness).
//! Policies get no WASI; the host must refuse to load it and say which import is the problem.
#![no_std]

extern crate alloc;

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

wit_bindgen::generate!({
    inline: r#"
        package test:wasi-import;

        world random-lru {
            include volcache:policy/eviction-policy@0.1.0;
            import wasi:random/random@0.2.0;
        }

        package wasi:random@0.2.0 {
            interface random {
                get-random-u64: func() -> u64;
            }
        }
    "#,
    path: "../../../wit",
    world: "random-lru",
    generate_all,
});

use exports::volcache::policy::{eviction, plugin};
use volcache::policy::types::{Need, View};

struct RandomLru;

impl plugin::Guest for RandomLru {
    fn info() -> plugin::PluginInfo {
        plugin::PluginInfo { name: "wasi-import".to_string(), version: "0.0.1".to_string(), summary: String::new() }
    }
    fn configure(_params: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }
}

impl eviction::Guest for RandomLru {
    fn victims(_need: Need, view: View) -> Vec<u64> {
        let pick = wasi::random::random::get_random_u64() as usize % view.ids.len().max(1);
        view.ids.get(pick).map(|&id| vec![id]).unwrap_or_default()
    }
}

export!(RandomLru);

#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
