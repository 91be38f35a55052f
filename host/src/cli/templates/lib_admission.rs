//! {{name}}: a volcache admission policy in Rust.
//!
//! Admits an image unless it alone is larger than `image_volume_cache_max_size_gb` (Cinder's
//! max-size rule, in GiB; 0 means no limit). Edit `admit` to decide differently.

use std::sync::atomic::{AtomicU64, Ordering};

wit_bindgen::generate!({ path: "wit", world: "{{world}}" });

use exports::volcache::policy::{admission, plugin};
use volcache::policy::types::{Candidate, View};

static MAX_SIZE_GB: AtomicU64 = AtomicU64::new(0);

struct Policy;

impl plugin::Guest for Policy {
    fn info() -> plugin::PluginInfo {
        plugin::PluginInfo {
            name: "{{name}}".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            summary: "admits images that fit the cache".to_string(),
        }
    }

    fn configure(params: Vec<(String, String)>) -> Result<(), String> {
        for (key, value) in params {
            if key == "image_volume_cache_max_size_gb" {
                let gb = value.parse().map_err(|_| format!("{key} must be a whole number, not {value:?}"))?;
                MAX_SIZE_GB.store(gb, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

impl admission::Guest for Policy {
    fn admit(candidate: Candidate, _view: View) -> Result<(), String> {
        let max = MAX_SIZE_GB.load(Ordering::Relaxed);
        if max > 0 && candidate.size_gib > max {
            return Err(format!("image of {} GiB is larger than the cache ({max} GiB)", candidate.size_gib));
        }
        Ok(())
    }
}

export!(Policy);
