//! `volcache policy ...`: the policy slots of a running daemon (list, swap, shadow).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};

use super::client::{Client, Connection};
use super::table::show;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Show each slot: its policy, when it was loaded, and that plugin's calls, failures and
    /// fallbacks since (`--json`: also the slot's counters across swaps, and latencies).
    List,
    /// Fill a slot with a built-in (`--builtin lru`) or a component (`--plugin FILE`, uploaded).
    Set {
        /// The slot to fill.
        #[arg(value_parser = ["admission", "capacity", "eviction"])]
        slot: String,
        /// A built-in policy: max-size (admission), quota (capacity), lru (eviction).
        #[arg(long, conflicts_with = "plugin", value_parser = ["max-size", "quota", "lru"])]
        builtin: Option<String>,
        /// A policy component (.wasm), uploaded to the daemon.
        #[arg(long)]
        plugin: Option<PathBuf>,
        /// KEY=VALUE, repeatable. Built-ins take image_volume_cache_max_size_gb,
        /// image_volume_cache_max_count and size_basis; a plugin its own (`plugin inspect`).
        #[arg(long = "param")]
        params: Vec<String>,
        /// Attach it as the slot's shadow instead: it sees the same requests on a simulated
        /// copy of the cache and never changes a live decision (`policy list` compares them).
        #[arg(long)]
        shadow: bool,
    },
    /// Detach a slot's shadow.
    Unshadow {
        /// The slot whose shadow goes.
        #[arg(value_parser = ["admission", "capacity", "eviction"])]
        slot: String,
    },
}

const POLICY_FIELDS: &[&str] =
    &["slot", "kind", "name", "version", "source", "loaded_at", "calls", "failures", "fallbacks"];

/// The counters of the plugin now in each slot (since it was loaded) as columns of its own;
/// a built-in's decisions are not counted.
fn plugin_counts(mut slots: Value) -> Value {
    for slot in slots.as_array_mut().into_iter().flatten() {
        for key in ["calls", "failures", "fallbacks"] {
            let count = slot["since_loaded"][key].clone();
            slot[key] = if count.is_null() { json!("-") } else { count };
        }
    }
    slots
}

pub fn policy(conn: &Connection, cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    let c = Client::new(conn)?;
    let value = match cmd {
        PolicyCommand::List => {
            let slots = c.call("GET", "/v1/policies", None)?;
            if conn.json {
                slots
            } else {
                plugin_counts(slots)
            }
        }
        PolicyCommand::Unshadow { slot } => {
            c.call("DELETE", &format!("/v1/policies/{slot}/shadow"), None)?;
            println!("detached the {slot} slot's shadow");
            return Ok(ExitCode::SUCCESS);
        }
        PolicyCommand::Set { slot, builtin, plugin, params, shadow } => {
            let route = if shadow { format!("/v1/policies/{slot}/shadow") } else { format!("/v1/policies/{slot}") };
            let mut pairs = Vec::new();
            for p in &params {
                let (k, v) = p.split_once('=').with_context(|| format!("--param {p:?}: expected KEY=VALUE"))?;
                pairs.push((k.to_string(), v.to_string()));
            }
            match (builtin, plugin) {
                (Some(b), None) => {
                    let params: serde_json::Map<String, Value> =
                        pairs.into_iter().map(|(k, v)| (k, json!(v))).collect();
                    c.call("PUT", &route, Some(json!({"builtin": b, "params": params})))?
                }
                (None, Some(file)) => {
                    let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                    // Values may hold '&', '=', '+', '%' or spaces: encode them for the query.
                    let query = serde_urlencoded::to_string(&pairs).context("encoding --param")?;
                    let path = if query.is_empty() { route } else { format!("{route}?{query}") };
                    c.upload(&path, &bytes)?
                }
                _ => bail!("give --builtin NAME or --plugin FILE"),
            }
        }
    };
    show(conn.json, &value, POLICY_FIELDS)
}
