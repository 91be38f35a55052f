//! {{name}}: a volcache capacity policy in Rust.
//!
//! Cinder's quota rule in GiB: after adding the candidate, at most
//! `image_volume_cache_max_size_gb` GiB and `image_volume_cache_max_count` entries (0 means no
//! limit). Edit `shortfall` to decide differently.

use std::sync::atomic::{AtomicU64, Ordering};

wit_bindgen::generate!({ path: "wit", world: "{{world}}" });

use exports::volcache::policy::{capacity, plugin};
use volcache::policy::types::{Candidate, Need, SizeBasis, View};

static MAX_SIZE_GB: AtomicU64 = AtomicU64::new(0);
static MAX_COUNT: AtomicU64 = AtomicU64::new(0);

struct Policy;

impl plugin::Guest for Policy {
    fn info() -> plugin::PluginInfo {
        plugin::PluginInfo {
            name: "{{name}}".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            summary: "keeps the cache within its size and count".to_string(),
        }
    }

    fn configure(params: Vec<(String, String)>) -> Result<(), String> {
        for (key, value) in params {
            let limit = match key.as_str() {
                "image_volume_cache_max_size_gb" => &MAX_SIZE_GB,
                "image_volume_cache_max_count" => &MAX_COUNT,
                _ => continue,
            };
            limit.store(value.parse().map_err(|_| format!("{key} must be a whole number, not {value:?}"))?, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl capacity::Guest for Policy {
    fn shortfall(candidate: Candidate, view: View) -> Result<Need, String> {
        let (max_size, max_count) = (MAX_SIZE_GB.load(Ordering::Relaxed), MAX_COUNT.load(Ordering::Relaxed));
        if max_size > 0 && candidate.size_gib > max_size {
            return Err(format!("image of {} GiB can never fit a cache of {max_size} GiB", candidate.size_gib));
        }
        let used: u64 = view.size_gib.iter().sum();
        let amount = if max_size > 0 { (used + candidate.size_gib).saturating_sub(max_size) } else { 0 };
        let entries = if max_count > 0 { (view.ids.len() as u64 + 1).saturating_sub(max_count) } else { 0 };
        Ok(Need { amount, basis: SizeBasis::Provisioned, entries: u32::try_from(entries).unwrap_or(u32::MAX) })
    }
}

export!(Policy);
