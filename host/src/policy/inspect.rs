//! `volcache plugin inspect`: what a component is, read without trusting it.
#![forbid(unsafe_code)]

use super::engine::PolicyEngine;
use super::plugin::{PluginInfo, WasmPlugin};
use super::scan::exports_interface;
use super::{LoadError, Slot};

/// What a component is, as `volcache plugin inspect` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Inspection {
    pub size_bytes: usize,
    pub digest: String,
    /// WIT packages of the exported interfaces, e.g. `volcache:policy@0.1.1`.
    pub packages: Vec<String>,
    pub exports: Vec<String>,
    pub imports: Vec<String>,
    /// Slots the component can fill.
    pub slots: Vec<Slot>,
    pub events: bool,
    /// Whether it lets entries go without pressure (`expiry`, WIT 0.1.1).
    pub expiry: bool,
    /// What the plugin says of itself (`None` when it cannot be instantiated).
    pub info: Option<PluginInfo>,
    /// Why the component cannot be used as a policy, if it cannot.
    pub problem: Option<String>,
}

/// Reads a component's interface without trusting it: lists its imports and exports from its
/// bytes, and only when the sandbox could load it, compiles it and (when it fills a slot) asks
/// it for its `info` inside the sandbox.
pub fn inspect(engine: &PolicyEngine, bytes: &[u8]) -> Result<Inspection, LoadError> {
    super::engine::check_component_preamble(bytes)?;
    let outline = super::scan::outline(bytes)?;
    let packages = {
        let mut packages: Vec<String> = outline
            .exports
            .iter()
            .filter_map(|name| {
                let (package, rest) = name.split_once('/')?;
                let version = rest.split_once('@').map(|(_, v)| format!("@{v}")).unwrap_or_default();
                Some(format!("{package}{version}"))
            })
            .collect();
        packages.dedup();
        packages
    };
    let slots: Vec<Slot> = Slot::ALL
        .into_iter()
        .filter(|s| s.interfaces().iter().any(|i| exports_interface(&outline.exports, i)))
        .collect();
    let events = exports_interface(&outline.exports, "events");
    let expiry = exports_interface(&outline.exports, "expiry");
    let mut found = Inspection {
        size_bytes: bytes.len(),
        digest: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes)),
        packages,
        exports: outline.exports.clone(),
        imports: outline.imports.clone(),
        slots: slots.clone(),
        events,
        expiry,
        info: None,
        problem: None,
    };
    if let Err(e) = super::scan::check(&outline) {
        found.problem = Some(e.to_string());
        return Ok(found);
    }
    let Some(&slot) = slots.first() else {
        found.problem = Some(format!("exports none of {}", Slot::ALL.map(|s| s.wanted()).join(", ")));
        return Ok(found);
    };
    let compiled = engine.compile(bytes)?;
    match WasmPlugin::new(engine, &compiled.component, compiled.digest, slot, Vec::new()) {
        Ok(p) => found.info = Some(p.info.clone()),
        Err(e) => found.problem = Some(e.to_string()),
    }
    Ok(found)
}
