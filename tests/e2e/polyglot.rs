//! Plugins in Python and JavaScript, built for real: componentize-py (PyPI) and componentize-js
//! (npm), installed by `make plugin-tools`, build the projects that `volcache plugin new` writes
//! (and cargo the Rust one, outside any workspace); the components pass their own tests, decide
//! exactly like the built-in LRU, load into a live daemon over HTTP, and a Python plugin that
//! tries to leave its sandbox finds nothing outside it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use volcache::policy::{CallError, DecidedBy, LoadError, Need, PolicySource, PolicySpec, SizeBasis, Slot};

use crate::daemon::{Daemon, TOKEN};
use crate::fixtures::{policy_set, view, Rng};

/// A tool that `make plugin-tools` installs, named by an environment variable.
fn tool(var: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from);
    match path {
        Some(p) if p.is_file() => p,
        _ => panic!("{var} does not name an installed tool: run `make plugin-tools` (`make test` does)"),
    }
}

struct Built {
    dir: PathBuf,
    py: PathBuf,
    js: PathBuf,
    rust: PathBuf,
    escape: PathBuf,
}

/// Scaffolds, builds (once per test run) and returns the Python and JavaScript LRU plugins and
/// the escaping Python plugin.
fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let py_tool = tool("VOLCACHE_COMPONENTIZE_PY");
        let js_tool = tool("VOLCACHE_COMPONENTIZE_JS");
        // A static is never dropped: the directory is one per test process, swept by the next.
        let dir = crate::fixtures::run_dir("polyglot");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut out = Vec::new();
        for (name, lang) in [("lru-py", "python"), ("lru-js", "js"), ("lru-rs", "rust")] {
            let project = dir.join(name);
            let new = crate::fixtures::volcache_cmd()
                .args(["plugin", "new", name, "--lang", lang, "--slot", "eviction", "--dir"])
                .arg(&project)
                .output()
                .unwrap();
            assert!(new.status.success(), "plugin new: {}", String::from_utf8_lossy(&new.stderr));
            // The Rust project builds in a target directory of its own (kept between runs).
            let build = Command::new(project.join("build.sh"))
                .env("CARGO_TARGET_DIR", Path::new(env!("CARGO_TARGET_TMPDIR")).join("scaffold-target"))
                .env("COMPONENTIZE_PY", &py_tool)
                .env("COMPONENTIZE_JS", &js_tool)
                .output()
                .unwrap();
            assert!(
                build.status.success(),
                "{name}/build.sh failed:\n{}{}",
                String::from_utf8_lossy(&build.stdout),
                String::from_utf8_lossy(&build.stderr)
            );
            out.push(project.join(format!("{name}.wasm")));
        }
        let escape = dir.join("escape.wasm");
        // Built from a copy: componentize-py leaves __pycache__ beside the module it compiles.
        let source = dir.join("escape-src");
        std::fs::create_dir_all(&source).unwrap();
        let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/polyglot/escape/app.py");
        std::fs::copy(&app, source.join("app.py")).unwrap();
        let wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        let build = Command::new(&py_tool)
            .args(["-d"])
            .arg(&wit)
            .args(["-w", "eviction-policy", "componentize", "-p"])
            .arg(&source)
            .args(["app", "-o"])
            .arg(&escape)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(build.status.success(), "escape: {}", String::from_utf8_lossy(&build.stderr));
        let rust = out.pop().unwrap();
        let js = out.pop().unwrap();
        let py = out.pop().unwrap();
        Built { dir, py, js, rust, escape }
    })
}

fn spec(path: &Path, params: &[(&str, &str)]) -> PolicySpec {
    PolicySpec {
        source: PolicySource::File(path.to_path_buf()),
        params: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

#[test]
fn python_javascript_and_scaffolded_rust_lru_decide_exactly_like_the_built_in() {
    let b = built();
    let native = policy_set(Default::default());
    for (lang, path) in [("python", &b.py), ("js", &b.js), ("rust", &b.rust)] {
        let set = policy_set(Default::default());
        set.swap(Slot::Eviction, spec(path, &[])).unwrap_or_else(|e| panic!("{lang}: {e}"));
        let mut rng = Rng::new(7);
        for case in 0..120u64 {
            let v = view(rng.below(60) as usize, case, case % 3 == 0);
            let basis = if case % 2 == 0 { SizeBasis::Provisioned } else { SizeBasis::Allocated };
            let unit = if basis == SizeBasis::Provisioned { 1 } else { 1 << 30 };
            let need = Need { amount: rng.below(80) * unit, basis, entries: rng.below(4) as u32 };
            let want = native.victims(need, &v);
            let got = set.victims(need, &v);
            if need.is_zero() {
                continue;
            }
            // Also when no answer can cover the need: the plugin's best effort is its answer
            // (`None`: not cached), not a failure.
            assert_eq!(got.by, DecidedBy::Plugin, "{lang} case {case}: need {need:?}");
            assert_eq!(got.value, want.value, "{lang} case {case}: need {need:?} over {} entries", v.len());
        }
        let status = set.status().into_iter().find(|s| s.slot == Slot::Eviction).unwrap();
        assert_eq!((status.stats.failures, status.stats.fallbacks), (0, 0), "{lang}: {status:?}");
    }
}

#[test]
fn scaffolded_projects_pass_their_own_cases_and_random_checks() {
    let b = built();
    for (path, project) in [(&b.py, "lru-py"), (&b.js, "lru-js"), (&b.rust, "lru-rs")] {
        let out = crate::fixtures::volcache_cmd()
            .args(["plugin", "test"])
            .arg(path)
            .args(["--slot", "eviction", "--random", "100", "--cases"])
            .arg(b.dir.join(project).join("cases.json"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{project}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("3 cases passed, 0 failed") && stdout.contains("100 random caches passed"), "{stdout}");
    }
}

#[test]
fn python_and_javascript_plugins_load_into_a_live_daemon_and_evict_lru() {
    let b = built();
    let d = Daemon::with_images(2, &["a", "b", "c", "d"]);
    let json = |v: serde_json::Value| v.to_string().into_bytes();
    let create = |image: &str| {
        let body = json(serde_json::json!({"image_id": image, "size": 1}));
        let (status, reply) = d.call("POST", "/v1/volumes", Some(TOKEN), Some(("application/json", &body)));
        assert_eq!(status, 201, "{reply}");
        reply["cache"].as_str().unwrap_or_default().to_string()
    };
    let cached = || {
        let (_, entries) = d.call("GET", "/v1/cache/entries", Some(TOKEN), None);
        let mut images: Vec<String> =
            entries.as_array().unwrap().iter().map(|e| e["image_id"].as_str().unwrap().to_string()).collect();
        images.sort();
        images
    };
    let eviction = || {
        let (_, policies) = d.call("GET", "/v1/policies", Some(TOKEN), None);
        policies.as_array().unwrap().iter().find(|p| p["slot"] == "eviction").unwrap().clone()
    };

    let python = std::fs::read(&b.py).unwrap();
    assert!(python.len() > 16 << 20, "a Python component is larger than the old 16 MiB limit");
    // Compiling it takes seconds; other requests are served meanwhile.
    let (status, reply, served_meanwhile) = std::thread::scope(|s| {
        let upload =
            s.spawn(|| d.call("PUT", "/v1/policies/eviction", Some(TOKEN), Some(("application/wasm", &python))));
        let mut served = 0;
        while !upload.is_finished() {
            let (status, _) = d.call("GET", "/v1/cache/stats", Some(TOKEN), None);
            assert_eq!(status, 200);
            if !upload.is_finished() {
                served += 1;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let (status, reply) = upload.join().unwrap();
        (status, reply, served)
    });
    assert_eq!((status, reply["name"].as_str()), (200, Some("lru-py")), "{reply}");
    assert!(served_meanwhile >= 3, "only {served_meanwhile} requests answered while the plugin compiled");
    assert_eq!((create("a"), create("b"), create("a")), ("miss".into(), "miss".into(), "hit".into()));
    assert_eq!(create("c"), "miss");
    assert_eq!(cached(), ["a", "c"], "the Python LRU evicted b, the least recently used");
    let status = eviction();
    assert_eq!((status["name"].as_str(), status["stats"]["calls"].as_u64()), (Some("lru-py"), Some(1)), "{status}");
    assert_eq!(status["stats"]["fallbacks"], 0, "{status}");

    let js = std::fs::read(&b.js).unwrap();
    let (status, reply) = d.call("PUT", "/v1/policies/eviction", Some(TOKEN), Some(("application/wasm", &js)));
    assert_eq!((status, reply["name"].as_str()), (200, Some("lru-js")), "{reply}");
    assert_eq!(create("c"), "hit");
    assert_eq!(create("d"), "miss");
    assert_eq!(cached(), ["c", "d"], "the JavaScript LRU evicted a");
    let status = eviction();
    assert_eq!((status["stats"]["calls"].as_u64(), status["stats"]["fallbacks"].as_u64()), (Some(2), Some(0)));
}

#[test]
fn a_python_plugin_trying_to_escape_gets_nothing_and_decides_normally() {
    let b = built();
    // A real listener: a connection that got through would be seen here.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();

    let set = policy_set(Default::default());
    let report = match set.swap(Slot::Eviction, spec(&b.escape, &[("report", "1"), ("port", &port)])) {
        Err(LoadError::Configure(report)) => report,
        other => panic!("expected the report as a configuration error, got {other:?}"),
    };
    for expected in [
        "passwd: refused",
        "listdir: refused",
        "connect: refused",
        "lookup: refused",
        "environ: 0 variables",
        "argv: []",
        "stdin: 0 bytes",
        "sleep(60) took 0.000 s",
        "time.time() = 0.0",
    ] {
        assert!(report.contains(expected), "{expected:?} missing from: {report}");
    }
    assert!(!report.contains("ESCAPED"), "{report}");
    assert!(listener.accept().is_err(), "nothing connected to the listener");

    set.swap(Slot::Eviction, spec(&b.escape, &[("port", &port)])).unwrap();
    let need = Need { amount: 5, basis: SizeBasis::Provisioned, entries: 0 };
    let v = view(20, 3, true);
    let d = set.victims(need, &v);
    assert_eq!(d.by, DecidedBy::Plugin, "every attempt failed inside a real decision too");
    assert_eq!(d.value, policy_set(Default::default()).victims(need, &v).value);

    set.swap(Slot::Eviction, spec(&b.escape, &[("mode", "exit")])).unwrap();
    let d = set.victims(need, &v);
    assert!(matches!(&d.by, DecidedBy::Fallback(CallError::Trap(m)) if m.contains("exit")), "{:?}", d.by);
}
