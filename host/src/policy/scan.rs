//! Reading a component's outer interface (its imports and exports) straight from its bytes,
//! before anything is compiled: a Python component is ~40 MiB and takes Cranelift many seconds,
//! while its import list is known after reading a few kilobytes. Refusals name every forbidden
//! import at once, and a component built against another version of the policy WIT is told
//! which versions this host speaks.
#![forbid(unsafe_code)]

use wasmparser::{Chunk, Parser, Payload};

use super::{wasi, LoadError, WIT_VERSION};

/// The top-level import and export names of a component.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Outline {
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

/// Lists the top-level imports and exports without descending into nested modules.
pub(crate) fn outline(bytes: &[u8]) -> Result<Outline, LoadError> {
    let mut outline = Outline::default();
    let mut parser = Parser::new(0);
    let mut pos = 0usize;
    let bad = |e: wasmparser::BinaryReaderError| LoadError::NotAComponent(format!("malformed component: {e}"));
    loop {
        let rest = bytes.get(pos..).unwrap_or_default();
        let (consumed, payload) = match parser.parse(rest, true).map_err(bad)? {
            Chunk::Parsed { consumed, payload } => (consumed, payload),
            Chunk::NeedMoreData(_) => return Err(LoadError::NotAComponent("the component is truncated".into())),
        };
        pos += consumed;
        match payload {
            Payload::ComponentImportSection(reader) => {
                for import in reader {
                    outline.imports.push(import.map_err(bad)?.name.name.to_owned());
                }
            }
            Payload::ComponentExportSection(reader) => {
                for export in reader {
                    outline.exports.push(export.map_err(bad)?.name.name.to_owned());
                }
            }
            // The nested parser is not followed: the outer one already counts the section.
            Payload::ModuleSection { unchecked_range, .. } | Payload::ComponentSection { unchecked_range, .. } => {
                pos = unchecked_range.end;
            }
            Payload::End(_) => return Ok(outline),
            _ => {}
        }
    }
}

/// The policy package's interfaces a component may import.
const POLICY_IMPORTS: [&str; 2] = ["host", "types"];

/// The `volcache:policy` version named by an import or export, if it names one.
fn policy_version(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("volcache:policy/")?;
    rest.split_once('@').map(|(_, v)| v)
}

/// Whether `version` is one this host speaks: the same major.minor (see the versioning note in
/// `wit/policy.wit`).
fn speaks(version: &str) -> bool {
    let ours = WIT_VERSION.rsplit_once('.').map(|(mm, _)| mm).unwrap_or(WIT_VERSION);
    version.rsplit_once('.').is_some_and(|(mm, _)| mm == ours)
}

/// Whether `exports` holds the policy interface `interface` in a version this host speaks (a
/// 0.1.0 plugin's `volcache:policy/eviction@0.1.0` in a 0.1.1 host, say).
pub(crate) fn exports_interface(exports: &[String], interface: &str) -> bool {
    exports.iter().any(|name| {
        name.strip_prefix("volcache:policy/")
            .and_then(|rest| rest.split_once('@'))
            .is_some_and(|(i, version)| i == interface && speaks(version))
    })
}

/// Refuses a component that imports anything the sandbox does not provide (listing every such
/// import), or that speaks another version of the policy WIT.
pub(crate) fn check(outline: &Outline) -> Result<(), LoadError> {
    let foreign: Vec<&str> = outline
        .imports
        .iter()
        .chain(&outline.exports)
        .filter_map(|name| policy_version(name))
        .filter(|v| !speaks(v))
        .collect();
    if let Some(version) = foreign.first() {
        return Err(LoadError::WitVersion { found: (*version).to_owned(), speaks: host_speaks() });
    }
    let forbidden: Vec<String> = outline
        .imports
        .iter()
        .filter(|name| {
            let policy = name
                .strip_prefix("volcache:policy/")
                .and_then(|rest| rest.split_once('@'))
                .is_some_and(|(interface, _)| POLICY_IMPORTS.contains(&interface));
            !policy && !wasi::is_linked_wasi(name)
        })
        .cloned()
        .collect();
    if !forbidden.is_empty() {
        return Err(LoadError::ForbiddenImport(forbidden));
    }
    Ok(())
}

/// The policy WIT versions this host accepts, as said to people.
pub fn host_speaks() -> String {
    let mm = WIT_VERSION.rsplit_once('.').map(|(mm, _)| mm).unwrap_or(WIT_VERSION);
    format!("volcache:policy@{mm}.x (built from {WIT_VERSION})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outline(imports: &[&str], exports: &[&str]) -> Outline {
        Outline {
            imports: imports.iter().map(|s| s.to_string()).collect(),
            exports: exports.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn every_forbidden_import_is_named() {
        let o = outline(
            &["volcache:policy/host@0.1.0", "wasi:keyvalue/store@0.2.0", "wasi:io/streams@0.2.0", "evil:net/raw"],
            &["volcache:policy/eviction@0.1.0"],
        );
        match check(&o) {
            Err(LoadError::ForbiddenImport(names)) => {
                assert_eq!(names, vec!["wasi:keyvalue/store@0.2.0".to_string(), "evil:net/raw".to_string()])
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn another_wit_version_is_named_with_ours() {
        let o = outline(&["volcache:policy/host@0.2.0"], &["volcache:policy/eviction@0.2.0"]);
        let err = check(&o).unwrap_err().to_string();
        assert!(err.contains("0.2.0") && err.contains("0.1.x"), "{err}");
        assert!(check(&outline(&["volcache:policy/types@0.1.0"], &["volcache:policy/eviction@0.1.0"])).is_ok());
    }

    #[test]
    fn exports_of_every_0_1_version_are_recognised() {
        let exports = ["volcache:policy/plugin@0.1.0".to_string(), "volcache:policy/eviction@0.1.0".to_string()];
        assert!(exports_interface(&exports, "eviction"));
        assert!(!exports_interface(&exports, "expiry") && !exports_interface(&exports, "evict"));
        assert!(!exports_interface(&["volcache:policy/eviction@0.2.0".to_string()], "eviction"));
    }

    #[test]
    fn the_host_version_is_the_wit_files() {
        let wit = include_str!("../../../wit/policy.wit");
        assert!(
            wit.contains(&format!("package volcache:policy@{WIT_VERSION};")),
            "WIT_VERSION differs from wit/policy.wit"
        );
    }
}
