//! `volcache plugin new`: a self-contained plugin project outside the repository, in Rust,
//! Python or JavaScript, for one slot: the WIT this binary speaks, the policy, a build script, a
//! README and example test cases.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::policy::Slot;

/// The policy contract this binary speaks, embedded so that a plugin project outside the
/// repository can be built against exactly it.
pub const WIT: &str = include_str!("../../../wit/policy.wit");

/// A plugin author's language.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

/// One file of a project: its path and its template.
struct File {
    path: String,
    template: &'static str,
    executable: bool,
}

/// Templates by slot, in the order admission, capacity, eviction.
type PerSlot = [&'static str; 3];

const CASES: PerSlot = [
    include_str!("templates/cases_admission.json"),
    include_str!("templates/cases_capacity.json"),
    include_str!("templates/cases_eviction.json"),
];
const RUST: PerSlot = [
    include_str!("templates/lib_admission.rs"),
    include_str!("templates/lib_capacity.rs"),
    include_str!("templates/lib_eviction.rs"),
];
const PYTHON: PerSlot = [
    include_str!("templates/app_admission.py"),
    include_str!("templates/app_capacity.py"),
    include_str!("templates/app_eviction.py"),
];
const JS: PerSlot = [
    include_str!("templates/app_admission.js"),
    include_str!("templates/app_capacity.js"),
    include_str!("templates/app_eviction.js"),
];

fn templates(lang: Lang, slot: Slot) -> Vec<File> {
    let file = |path: &str, template: &'static str| File { path: path.into(), template, executable: false };
    let script = |template: &'static str| File { path: "build.sh".into(), template, executable: true };
    let pick = |set: PerSlot| set[slot.index()];
    let mut files = vec![
        file("wit/policy.wit", WIT),
        file("README.md", include_str!("templates/README.md.tmpl")),
        file("cases.json", pick(CASES)),
    ];
    files.extend(match lang {
        Lang::Rust => [
            file("Cargo.toml", include_str!("templates/Cargo.toml.tmpl")),
            file("src/lib.rs", pick(RUST)),
            script(include_str!("templates/build-rust.sh")),
            file(".gitignore", "/target\n*.wasm\n"),
        ],
        Lang::Python => [
            file("app.py", pick(PYTHON)),
            file("requirements.txt", "componentize-py\n"),
            script(include_str!("templates/build-python.sh")),
            file(".gitignore", ".venv/\nwit_world/\n__pycache__/\n*.wasm\n"),
        ],
        Lang::Js => [
            file("app.js", pick(JS)),
            file("package.json", include_str!("templates/package.json.tmpl")),
            script(include_str!("templates/build-js.sh")),
            file(".gitignore", "node_modules/\n*.wasm\n"),
        ],
    });
    files
}

/// A plugin name: lower-case letters, digits and dashes, starting with a letter (it becomes a
/// crate, package and file name).
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !ok {
        bail!("plugin name {name:?}: use 1 to 64 lower-case letters, digits and dashes, starting with a letter");
    }
    Ok(())
}

/// Writes the project into `dir` (which must not exist, or be empty) and answers the files
/// written.
pub fn write(name: &str, lang: Lang, slot: Slot, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    check_name(name)?;
    if dir.exists() && dir.read_dir().with_context(|| format!("reading {}", dir.display()))?.next().is_some() {
        bail!("{} already exists and is not empty: choose another --dir or name", dir.display());
    }
    let (language, build_note) = match lang {
        Lang::Rust => ("Rust", "Needs Rust with the `wasm32-unknown-unknown` target (`rustup target add wasm32-unknown-unknown`)."),
        Lang::Python => ("Python", "Needs componentize-py: `python3 -m venv .venv && .venv/bin/pip install componentize-py`. A Python component is about 18 MiB (the daemon accepts up to `policy.max_plugin_mib`, 64 by default)."),
        Lang::Js => ("JavaScript", "Needs Node.js and npm; `./build.sh` runs `npm install` for componentize-js the first time. A JavaScript component is about 12 MiB."),
    };
    let lang_word = match lang {
        Lang::Rust => "rust",
        Lang::Python => "python",
        Lang::Js => "js",
    };
    let vars = [
        ("{{name}}", name.to_string()),
        ("{{crate}}", name.replace('-', "_")),
        ("{{slot}}", slot.to_string()),
        ("{{world}}", format!("{slot}-policy")),
        ("{{lang}}", lang_word.to_string()),
        ("{{language}}", language.to_string()),
        ("{{build_note}}", build_note.to_string()),
        ("{{wit_version}}", crate::policy::WIT_VERSION.to_string()),
    ];
    let mut written = Vec::new();
    for file in templates(lang, slot) {
        let mut text = file.template.to_string();
        if file.path != "wit/policy.wit" {
            for (key, value) in &vars {
                text = text.replace(key, value);
            }
        }
        let path = dir.join(&file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        if file.executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_is_filled_in() {
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            for slot in Slot::ALL {
                let dir = tempfile::tempdir().unwrap();
                let root = dir.path().join("p");
                for path in write("my-policy", lang, slot, &root).unwrap() {
                    let text = std::fs::read_to_string(&path).unwrap();
                    assert!(!text.contains("{{"), "{} keeps a placeholder", path.display());
                }
                assert!(write("my-policy", lang, slot, &root).is_err(), "never overwrites");
            }
        }
        assert!(check_name("Bad_Name").is_err() && check_name("-x").is_err() && check_name("lru-2").is_ok());
    }
}
