//! `wrong-world`: claims `volcache:policy/eviction@0.1.0`, but with a `victims` of the wrong
//! type. The host must refuse it by name, not crash or misread its answers.
#![no_std]

extern crate alloc;

use alloc::string::{String, ToString};
use alloc::vec::Vec;

wit_bindgen::generate!({
    inline: r#"
        package volcache:policy@0.1.0;

        interface plugin {
            record plugin-info { name: string, version: string, summary: string }
            info: func() -> plugin-info;
            configure: func(params: list<tuple<string, string>>) -> result<_, string>;
        }

        interface eviction {
            victims: func(count: u32) -> string;
        }

        world wrong {
            export plugin;
            export eviction;
        }
    "#,
    world: "wrong",
});

use exports::volcache::policy::{eviction, plugin};

struct Wrong;

impl plugin::Guest for Wrong {
    fn info() -> plugin::PluginInfo {
        plugin::PluginInfo { name: "wrong-world".to_string(), version: "0.0.1".to_string(), summary: String::new() }
    }
    fn configure(_params: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }
}

impl eviction::Guest for Wrong {
    fn victims(count: u32) -> String {
        alloc::format!("{count}")
    }
}

export!(Wrong);

#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
