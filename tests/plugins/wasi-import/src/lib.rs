//! `wasi-import`: a correct eviction policy that also imports two interfaces the sandbox does not
//! provide (WASI key-value storage and a made-up raw socket). The host must refuse to load it
//! before compiling it, and name both imports.
#![no_std]

extern crate alloc;

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

wit_bindgen::generate!({
    inline: r#"
        package test:wasi-import;

        world random-lru {
            include volcache:policy/eviction-policy@0.1.2;
            import wasi:keyvalue/store@0.2.0;
            import test:escape/raw-socket@0.1.0;
        }

        package wasi:keyvalue@0.2.0 {
            interface store {
                get-u64: func(key: string) -> u64;
            }
        }

        package test:escape@0.1.0 {
            interface raw-socket {
                connect: func(host: string) -> u64;
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
        let pick = wasi::keyvalue::store::get_u64("pick") as usize % view.ids.len().max(1);
        let _ = test::escape::raw_socket::connect("127.0.0.1:22");
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
