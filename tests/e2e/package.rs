//! The Debian package as an operator gets it: `scripts/build-deb.sh` packages this build's
//! binary and plugins, `dpkg -i` installs it (user, directories, conffile), the unit passes
//! `systemd-analyze verify`, the daemon started from the unit's own `ExecStart` line, as the
//! unit's user, tells systemd it is ready and serves, and a purge keeps the state directory.
//!
//! It installs into this machine (the tests run as root in CI), replacing any installed
//! volcache package, and purges it at the end.

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of `key=` in the unit's [Service] section.
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the unit has no {key}="))
        .to_string()
}

/// Purges the package even when the test fails halfway.
struct Installed;
impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "volcache"]).stdout(Stdio::null()).status();
        let _ = std::fs::remove_dir_all("/var/lib/volcache");
    }
}

#[test]
fn the_debian_package_installs_and_its_unit_starts_a_serving_daemon() {
    assert!(nix_is_root(), "the package test installs a .deb: run the tests as root (CI does)");
    let out = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let plugins = std::env::var("VOLCACHE_PLUGIN_DIR").expect("VOLCACHE_PLUGIN_DIR (make test sets it)");
    let deb = run(Command::new(repo.join("scripts/build-deb.sh"))
        .arg(env!("CARGO_BIN_EXE_volcache"))
        .arg(&plugins)
        .arg(out.path()));
    let deb = deb.trim();
    let info = run(Command::new("dpkg-deb").args(["-I", deb]));
    assert!(info.contains("Package: volcache"), "{info}");
    if cfg!(feature = "rbd") {
        assert!(info.contains("librbd1"), "an RBD build depends on librbd1: {info}");
    }
    assert!(run(Command::new("dpkg-deb").args(["-f", deb, "Depends"])).contains("passwd"));
    let conffiles =
        run(Command::new("sh").arg("-c").arg(format!("dpkg-deb --ctrl-tarfile {deb} | tar -xO ./conffiles")));
    assert_eq!(conffiles.trim(), "/etc/volcache/volcache.toml");

    // A previous run that died halfway may have left it installed; a purge keeps nothing of it.
    let _ = Command::new("dpkg").args(["--purge", "volcache"]).stdout(Stdio::null()).status();
    let _ = std::fs::remove_dir_all("/var/lib/volcache");
    let _installed = Installed;
    run(Command::new("dpkg").args(["-i", deb]));

    // On PATH, naming its backends; the user, the directories and the plugins are there.
    let version = run(Command::new("/usr/bin/volcache").arg("--version"));
    assert!(version.contains("volcache"), "{version}");
    run(Command::new("getent").args(["passwd", "volcache"]));
    let state = std::fs::metadata("/var/lib/volcache").unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(state.permissions().mode() & 0o777, 0o750);
    let uid: u32 = run(Command::new("id").args(["-u", "volcache"])).trim().parse().unwrap();
    assert_eq!(state.uid(), uid, "/var/lib/volcache belongs to the service user");
    assert_eq!(std::fs::metadata("/var/lib/volcache/volumes").unwrap().uid(), uid);
    assert!(Path::new("/usr/lib/volcache/plugins/lru.wasm").exists());

    // The unit is valid and hardened.
    let unit_path = "/lib/systemd/system/volcache.service";
    let verify = Command::new("systemd-analyze").args(["verify", unit_path]).output().unwrap();
    let complaints = String::from_utf8_lossy(&verify.stderr).to_string();
    assert!(verify.status.success(), "systemd-analyze verify: {complaints}");
    assert!(!complaints.contains("volcache.service"), "systemd-analyze verify complains: {complaints}");
    let unit = std::fs::read_to_string(unit_path).unwrap();
    for directive in
        ["Type=notify", "Restart=on-failure", "ProtectSystem=strict", "NoNewPrivileges=yes", "User=volcache"]
    {
        assert!(unit.lines().any(|l| l == directive), "the unit lacks {directive}");
    }
    assert!(unit_value(&unit, "ReadWritePaths").contains("/var/lib/volcache"));

    // The operator's one edit for this test: another port, so a real volcache on 8470 is safe.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = std::fs::read_to_string("/etc/volcache/volcache.toml").unwrap();
    assert!(config.contains("listen = \"127.0.0.1:8470\""));
    std::fs::write("/etc/volcache/volcache.toml", config.replace("127.0.0.1:8470", &format!("127.0.0.1:{port}")))
        .unwrap();

    // Start the unit's ExecStart, as its User, in its WorkingDirectory, with a notify socket.
    let notify_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(notify_dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket_path = notify_dir.path().join("notify");
    let notify = UnixDatagram::bind(&socket_path).unwrap();
    std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o777)).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let exec: Vec<String> = unit_value(&unit, "ExecStart").split_whitespace().map(String::from).collect();
    let user = unit_value(&unit, "User");
    let mut child = Command::new("setpriv")
        .args([format!("--reuid={user}"), format!("--regid={user}"), "--init-groups".into(), "--".into()])
        .args(&exec)
        .current_dir(unit_value(&unit, "WorkingDirectory"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).unwrap_or_else(|e| {
        let _ = child.kill();
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        panic!("no readiness from the daemon ({e}): {err}")
    });
    let ready = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    assert!(ready.contains(&format!("127.0.0.1:{port}")), "{ready}");

    // Trace the serving daemon's system calls, for the unit's SystemCallFilter.
    let trace = out.path().join("syscalls.txt");
    let mut strace = Command::new("strace")
        .args(["-f", "-c", "-o"])
        .arg(&trace)
        .args(["-p", &child.id().to_string()])
        .stderr(Stdio::null())
        .spawn()
        .expect("strace (make deps installs it)");
    std::thread::sleep(Duration::from_millis(500));

    // It serves, and root's client finds the installed daemon's token by itself.
    let addr = format!("127.0.0.1:{port}");
    let (status, _) = crate::daemon::request(&addr, "GET", "/healthz", None, None).unwrap();
    assert_eq!(status, 200);
    let token = std::fs::metadata("/var/lib/volcache/admin-token").unwrap();
    assert_eq!(token.uid(), uid);
    assert_eq!(token.permissions().mode() & 0o777, 0o600);
    let stats = run(Command::new("/usr/bin/volcache")
        .args(["cache", "stats", "--json", "--url", &format!("http://{addr}")])
        .current_dir(out.path())
        .env_remove("VOLCACHE_ADMIN_TOKEN"));
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert!(stats.get("entries").is_some(), "{stats}");

    // A shipped plugin compiles and takes a slot (wasmtime's code generation under the filter).
    let set = run(Command::new("/usr/bin/volcache")
        .args(["policy", "set", "eviction", "--plugin", "/usr/lib/volcache/plugins/sieve.wasm", "--json"])
        .args(["--url", &format!("http://{addr}")])
        .current_dir(out.path())
        .env_remove("VOLCACHE_ADMIN_TOKEN"));
    assert!(set.contains("sieve"), "{set}");
    let (status, _) = crate::daemon::request(&addr, "GET", "/metrics", None, None).unwrap();
    assert_eq!(status, 200);
    run(Command::new("kill").args(["-INT", &strace.id().to_string()]));
    // strace reports the interrupt in its exit status; the summary is what counts.
    let _ = strace.wait();
    let used = syscalls_in(&std::fs::read_to_string(&trace).unwrap());
    assert!(used.len() > 20 && used.contains("accept4"), "strace saw too little: {used:?}");
    let allowed = syscall_group("@system-service");
    let denied: std::collections::BTreeSet<_> =
        syscall_group("@privileged").union(&syscall_group("@resources")).cloned().collect();
    let refused: Vec<_> = used.iter().filter(|c| !allowed.contains(*c) || denied.contains(*c)).collect();
    assert!(refused.is_empty(), "the unit's SystemCallFilter would refuse {refused:?}");

    // SIGTERM: systemd hears STOPPING=1 and the daemon exits cleanly.
    run(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    let n = notify.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("STOPPING=1"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the daemon did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");

    // A purge removes the configuration and keeps the catalog and the volumes.
    let purge = Command::new("dpkg").args(["--purge", "volcache"]).output().unwrap();
    assert!(purge.status.success());
    assert!(String::from_utf8_lossy(&purge.stderr).contains("kept /var/lib/volcache"));
    assert!(!Path::new("/etc/volcache/volcache.toml").exists());
    assert!(!Path::new("/usr/bin/volcache").exists());
    assert!(Path::new("/var/lib/volcache/catalog.redb").exists(), "a purge must keep the catalog");
}

/// The system calls in `strace -c` output.
fn syscalls_in(summary: &str) -> std::collections::BTreeSet<String> {
    summary
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|name| name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
        .filter(|name| *name != "total" && *name != "syscall")
        .map(String::from)
        .collect()
}

/// The system calls in a systemd syscall group, nested groups expanded.
fn syscall_group(group: &str) -> std::collections::BTreeSet<String> {
    let listing = run(Command::new("systemd-analyze").arg("syscall-filter"));
    let mut groups = std::collections::BTreeMap::<String, Vec<String>>::new();
    let mut current = None;
    for line in listing.lines() {
        if line.starts_with('@') {
            current = Some(line.trim().to_string());
            groups.entry(line.trim().to_string()).or_default();
        } else if let Some(g) = &current {
            let item = line.trim();
            if !item.is_empty() && !item.starts_with('#') {
                groups.get_mut(g).unwrap().push(item.to_string());
            }
        }
    }
    fn expand(
        g: &str,
        groups: &std::collections::BTreeMap<String, Vec<String>>,
        into: &mut std::collections::BTreeSet<String>,
    ) {
        for item in groups.get(g).into_iter().flatten() {
            if item.starts_with('@') {
                expand(item, groups, into);
            } else {
                into.insert(item.clone());
            }
        }
    }
    let mut set = std::collections::BTreeSet::new();
    expand(group, &groups, &mut set);
    assert!(!set.is_empty(), "systemd-analyze knows no group {group}");
    set
}

fn nix_is_root() -> bool {
    run(Command::new("id").arg("-u")).trim() == "0"
}

#[test]
fn make_install_fills_in_the_paths_and_keeps_an_edited_configuration() {
    let dest = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let plugins = std::env::var("VOLCACHE_PLUGIN_DIR").expect("VOLCACHE_PLUGIN_DIR (make test sets it)");
    let install = || {
        run(Command::new(repo.join("scripts/install.sh"))
            .arg(env!("CARGO_BIN_EXE_volcache"))
            .arg(&plugins)
            .env("DESTDIR", dest.path())
            .env("PREFIX", "/opt/vc")
            .env("STATEDIR", "/srv/vc-state"))
    };
    install();
    let root = dest.path();
    assert!(root.join("opt/vc/bin/volcache").is_file());
    assert!(root.join("opt/vc/lib/volcache/plugins/lru.wasm").is_file());
    let unit = std::fs::read_to_string(root.join("opt/vc/lib/systemd/system/volcache.service")).unwrap();
    assert_eq!(unit_value(&unit, "ExecStart"), "/opt/vc/bin/volcache serve --config /etc/volcache/volcache.toml");
    assert_eq!(unit_value(&unit, "ReadWritePaths"), "/srv/vc-state");
    let conf_path = root.join("etc/volcache/volcache.toml");
    let conf = std::fs::read_to_string(&conf_path).unwrap();
    assert!(!conf.contains('@'), "a placeholder was left: {conf}");
    assert!(conf.contains("plugin_dirs = [\"/opt/vc/lib/volcache/plugins\"]") && conf.contains("/srv/vc-state"));
    // The configuration parses (paths that do not exist here aside).
    let parsed: toml::Value = toml::from_str(&conf).unwrap();
    assert_eq!(parsed["backend"]["kind"].as_str(), Some("file"));

    // An operator's edit survives a reinstall; the new default goes beside it.
    std::fs::write(&conf_path, format!("{conf}\n# edited\n")).unwrap();
    install();
    assert!(std::fs::read_to_string(&conf_path).unwrap().ends_with("# edited\n"));
    assert_eq!(std::fs::read_to_string(root.join("etc/volcache/volcache.toml.new")).unwrap(), conf);
}
