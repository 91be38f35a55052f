//! {{name}}: a volcache eviction policy in Rust.
//!
//! Least-recently-used entries go first, ties broken by the lower id (Cinder's rule), skipping
//! pinned entries, until the need is covered. Edit `victims` to decide differently.

wit_bindgen::generate!({ path: "wit", world: "{{world}}" });

use exports::volcache::policy::{eviction, plugin};
use volcache::policy::types::{Need, SizeBasis, View};

struct Policy;

impl plugin::Guest for Policy {
    fn info() -> plugin::PluginInfo {
        plugin::PluginInfo {
            name: "{{name}}".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            summary: "evicts least-recently-used entries first".to_string(),
        }
    }

    fn configure(_params: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }
}

impl eviction::Guest for Policy {
    fn victims(need: Need, view: View) -> Vec<u64> {
        let sizes = match need.basis {
            SizeBasis::Provisioned => &view.size_gib,
            SizeBasis::Allocated => &view.allocated_bytes,
        };
        let mut rows: Vec<usize> = (0..view.ids.len()).filter(|&i| view.pinned.binary_search(&view.ids[i]).is_err()).collect();
        rows.sort_by_key(|&i| (view.last_used_ms[i], view.ids[i]));
        let (mut chosen, mut freed) = (Vec::new(), 0u64);
        for i in rows {
            if freed >= need.amount && chosen.len() as u64 >= u64::from(need.entries) {
                break;
            }
            chosen.push(view.ids[i]);
            freed = freed.saturating_add(sizes[i]);
        }
        chosen
    }
}

export!(Policy);
