//! Crash safety of the real daemon: for every crash point in fill, evict, clone and direct
//! write, the daemon is killed with SIGKILL in the middle of a request, restarted, and then
//! checked from outside: no orphan backend volume, no record or entry without its volume, every
//! user volume that existed before intact, limits held, and the daemon serving again.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::backend::LoopFs;
use crate::daemon::{request_json, TOKEN};
use crate::fixtures::{cloud_like_raw, MIB};

struct Daemon {
    child: Child,
    addr: String,
}

fn start(config: &Path, crash_at: Option<&str>) -> Daemon {
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let mut cmd = crate::fixtures::volcache_cmd();
    cmd.args(["serve", "--config", config.to_str().unwrap(), "--listen", &addr])
        .env("VOLCACHE_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "error")
        .env_remove(volcache::fault::ENV)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(point) = crash_at {
        cmd.env(volcache::fault::ENV, point);
    }
    let mut child = cmd.spawn().unwrap();
    let started = Instant::now();
    while request_json(&addr, "GET", "/healthz", None).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("daemon exited during start-up: {status}");
        }
        assert!(started.elapsed() < Duration::from_secs(60), "daemon did not come up");
        std::thread::sleep(Duration::from_millis(30));
    }
    Daemon { child, addr }
}

/// A daemon left running by a failed assertion would keep the test file system busy.
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> Option<(u16, serde_json::Value)> {
        request_json(&self.addr, method, path, body).ok()
    }

    fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "daemon did not stop cleanly: {status}");
    }
}

fn sha(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// The daemon's volumes seen from outside, on one backend.
pub trait Volumes {
    /// The configuration's `[backend]` section for a daemon rooted at `root`.
    fn backend_toml(&mut self, root: &Path) -> String;
    /// Every volume on the backend, sorted.
    fn names(&self) -> Vec<String>;
    /// A digest of one volume's bytes.
    fn digest(&self, name: &str) -> String;
}

/// The file backend under `<root>/volumes`.
#[derive(Default)]
struct FileVolumes {
    dir: PathBuf,
}

impl Volumes for FileVolumes {
    fn backend_toml(&mut self, root: &Path) -> String {
        self.dir = root.join("volumes");
        std::fs::create_dir_all(&self.dir).unwrap();
        format!("[backend]\npath = \"{}\"\n", self.dir.display())
    }
    fn names(&self) -> Vec<String> {
        // Everything in the directory but the daemon's lock file must be a volume.
        names_in(&self.dir).into_iter().filter(|n| n != ".volcache.lock").collect()
    }
    fn digest(&self, name: &str) -> String {
        sha(&self.dir.join(name))
    }
}

#[test]
fn sigkill_at_every_crash_point_leaves_a_consistent_cache() {
    let fs = LoopFs::xfs();
    crash_suite(&fs.mnt, &mut FileVolumes::default());
}

/// For every crash point: set up a cache with a user volume to protect, kill the daemon with
/// SIGKILL at that point in the middle of a request, restart it, and check it from outside.
pub fn crash_suite(base: &Path, volumes: &mut dyn Volumes) {
    let images = base.join("images");
    std::fs::create_dir_all(&images).unwrap();
    for (name, size) in [("a", 24 * MIB), ("b", 24 * MIB), ("c", 5 * (1u64 << 30) / 2)] {
        cloud_like_raw(&images.join(format!("{name}.raw")), size);
    }
    for point in volcache::fault::POINTS {
        let root: PathBuf = base.join(point.replace(':', "-"));
        let config = root.join("volcache.toml");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(
            &config,
            format!(
                "state_dir = \"{}\"\nimage_source_dirs = [\"{}\"]\n{}[cache]\nimage_volume_cache_max_count = 1\nimage_volume_cache_max_size_gb = 2\n",
                root.join("state").display(),
                images.display(),
                volumes.backend_toml(&root)
            ),
        )
        .unwrap();

        // Before the crash: three images, one user volume to protect.
        let d = start(&config, None);
        for name in ["a", "b", "c"] {
            let body = serde_json::json!({"id": name, "name": name, "source": images.join(format!("{name}.raw")), "disk_format": "raw"});
            assert_eq!(d.call("POST", "/v1/images", Some(body)).unwrap().0, 201);
        }
        let (status, v0) =
            d.call("POST", "/v1/volumes", Some(serde_json::json!({"image_id": "a", "size": 1}))).unwrap();
        assert_eq!((status, v0["cache"].as_str()), (201, Some("miss")), "{v0}");
        let v0_name = v0["backend_name"].as_str().unwrap().to_string();
        let v0_digest = volumes.digest(&v0_name);
        d.stop();

        // The crash: requests that pass through every point; the one that reaches ours dies.
        let mut d = start(&config, Some(point));
        let steps = [("a", 1), ("c", 3), ("b", 1)]; // hit (clone), not admitted (direct), miss with eviction (evict, fill, clone)
        for (image, size) in steps {
            if d.call("POST", "/v1/volumes", Some(serde_json::json!({"image_id": image, "size": size}))).is_none() {
                break;
            }
        }
        let status = d.child.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "{point}: the daemon should have been killed there, but {status}");

        // After the restart, reconciliation has run.
        let d = start(&config, None);
        let (_, all) = d.call("GET", "/v1/volumes?all_tenants=1", None).unwrap();
        let (_, entries) = d.call("GET", "/v1/cache/entries", None).unwrap();
        let records: Vec<String> =
            all.as_array().unwrap().iter().map(|v| v["backend_name"].as_str().unwrap().to_string()).collect();
        let mut sorted = records.clone();
        sorted.sort();
        assert_eq!(volumes.names(), sorted, "{point}: backend volumes and catalog records differ");
        for entry in entries.as_array().unwrap() {
            let id = entry["volume_id"].as_str().unwrap();
            assert!(all.as_array().unwrap().iter().any(|v| v["id"] == id), "{point}: entry {entry} has no volume");
        }
        assert!(entries.as_array().unwrap().len() <= 1, "{point}: max_count broken");
        assert_eq!(volumes.digest(&v0_name), v0_digest, "{point}: a user volume changed");
        let leftovers: Vec<String> = names_in(&root.join("state").join("spool"));
        assert!(leftovers.is_empty(), "{point}: spool files left: {leftovers:?}");

        // And it serves again: the image whose fill may have died fills now.
        let (status, v) = d.call("POST", "/v1/volumes", Some(serde_json::json!({"image_id": "b", "size": 1}))).unwrap();
        assert_eq!(status, 201, "{point}: {v}");
        d.stop();
    }
}
