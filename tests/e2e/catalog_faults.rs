//! The catalog when its file fails: a full state directory, a damaged file, a missing file in
//! front of a backend full of volumes, and a catalog that lost its last commit. Real daemon,
//! real redb file, real file systems.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use volcache::backend::Backend;
use volcache::cache::recover::QUARANTINE_PROJECT;
use volcache::cache::{CacheService, FailureClass};
use volcache::catalog::{Catalog, Intent};
use volcache::policy::PolicySet;

use crate::backend::LoopFs;
use crate::cache_core::{limits, request, Core};
use crate::daemon::{request_json, TOKEN};
use crate::fixtures::{cloud_like_raw, MIB};

struct Daemon {
    child: std::process::Child,
    addr: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(root: &Path) -> PathBuf {
    let path = root.join("volcache.toml");
    let toml =
        format!("state_dir = \"{}\"\nimage_source_dirs = [\"{}\"]\n", root.join("state").display(), root.display());
    std::fs::write(&path, toml).unwrap();
    path
}

fn serve(config: &Path) -> Command {
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let mut cmd = crate::fixtures::volcache_cmd();
    cmd.args(["serve", "--config", config.to_str().unwrap(), "--listen", &addr])
        .env("VOLCACHE_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "error")
        .env_remove(volcache::fault::ENV);
    cmd
}

fn start(config: &Path) -> Daemon {
    let mut cmd = serve(config);
    let addr = cmd.get_args().nth(4).unwrap().to_string_lossy().into_owned();
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    while request_json(&addr, "GET", "/healthz", None).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "daemon exited during start-up");
        assert!(started.elapsed() < Duration::from_secs(60), "daemon did not come up");
        std::thread::sleep(Duration::from_millis(30));
    }
    Daemon { child, addr }
}

impl Daemon {
    fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> (u16, serde_json::Value) {
        request_json(&self.addr, method, path, body).unwrap()
    }
}

/// A daemon with one image and one user volume made from it; returns the volume's JSON.
fn populated(root: &Path) -> (PathBuf, serde_json::Value) {
    let image = root.join("img.raw");
    cloud_like_raw(&image, 16 * MIB);
    let cfg = config(root);
    let d = start(&cfg);
    let body = serde_json::json!({"id": "img", "name": "img", "source": image, "disk_format": "raw"});
    assert_eq!(d.call("POST", "/v1/images", Some(body)).0, 201);
    let (status, v) = d.call("POST", "/v1/volumes", Some(serde_json::json!({"image_id": "img", "size": 1})));
    assert_eq!(status, 201, "{v}");
    drop(d);
    (cfg, v)
}

fn refused(config: &Path) -> String {
    crate::fixtures::refused_start(serve(config))
}

#[test]
fn a_damaged_catalog_is_one_line_naming_the_file_and_the_way_out() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = populated(dir.path());
    let catalog = dir.path().join("state/catalog.redb");
    // Damage everything after the file header: redb panics on this kind of damage.
    let mut bytes = std::fs::read(&catalog).unwrap();
    for b in &mut bytes[4096..] {
        *b ^= 0x5a;
    }
    std::fs::write(&catalog, &bytes).unwrap();
    let stderr = refused(&cfg);
    let line = stderr.lines().last().unwrap();
    assert!(line.contains(&catalog.display().to_string()) && line.contains("damaged"), "{stderr}");
    assert!(line.contains("volcache catalog rebuild"), "the message says what to do: {line}");

    // The rebuild sets the damaged file aside and adopts the user's volume.
    let out = crate::fixtures::volcache_cmd()
        .args(["catalog", "rebuild", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let aside = std::fs::read_dir(dir.path().join("state"))
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("catalog.redb.damaged-"));
    assert!(aside, "the damaged catalog is kept aside");
    let d = start(&cfg);
    let (_, volumes) = d.call("GET", "/v1/volumes?all_tenants=1", None);
    assert_eq!(volumes.as_array().unwrap().len(), 1, "{volumes}");
}

#[test]
fn a_missing_catalog_over_a_populated_backend_refuses_to_start_until_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, volume) = populated(dir.path());
    let volumes_dir = dir.path().join("state/volumes");
    let name = volume["backend_name"].as_str().unwrap();
    let before = std::fs::read(volumes_dir.join(name)).unwrap();
    std::fs::remove_file(dir.path().join("state/catalog.redb")).unwrap();

    let stderr = refused(&cfg);
    assert!(stderr.contains("records no volume") && stderr.contains("volcache catalog rebuild"), "{stderr}");
    assert!(volumes_dir.join(name).exists(), "nothing was removed");

    let out = crate::fixtures::volcache_cmd()
        .args(["catalog", "rebuild", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("adopted 1 volumes"));
    let d = start(&cfg);
    let (status, adopted) = d.call("GET", &format!("/v1/volumes/{}", volume["id"].as_str().unwrap()), None);
    assert_eq!((status, adopted["project_id"].as_str()), (200, Some(QUARANTINE_PROJECT)), "{adopted}");
    assert_eq!(std::fs::read(volumes_dir.join(name)).unwrap(), before, "the user's data is intact");
    // The cache volume the lost catalog knew was removed at start-up; the image works again.
    let cache_volumes = std::fs::read_dir(&volumes_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("cache-"))
        .count();
    assert_eq!(cache_volumes, 0);
}

#[test]
fn reconciliation_sets_aside_a_volume_whose_create_did_not_complete() {
    // The catalog fell back to the commit before the create's record: only the intent is left.
    let c = Core::new(limits(0, 0));
    c.register("img", 1);
    let handed_out = c.create("img", 1).unwrap().volume;
    c.cache
        .catalog()
        .write(|w| {
            w.delete_volume(&handed_out.id)?;
            w.begin(
                Intent::Create { volume_id: handed_out.id.clone(), backend_name: handed_out.backend_name.clone() },
                0,
            )
        })
        .unwrap();
    let done = c.cache.reconcile().unwrap();
    assert_eq!(done.quarantined, vec![handed_out.id.clone()]);
    assert!(c.memory.exists(&handed_out.backend_name).unwrap(), "never deleted");
    let record = c.cache.catalog().read(|r| r.volume(&handed_out.id)).unwrap().unwrap();
    assert_eq!(record.project_id, QUARANTINE_PROJECT);
    assert!(c.cache.catalog().read(|r| r.intents()).unwrap().is_empty());
}

#[test]
fn a_full_state_directory_is_not_sticky() {
    let fs = LoopFs::tmpfs(8 * MIB);
    let catalog = Arc::new(Catalog::open(&fs.mnt.join("catalog.redb")).unwrap());
    let core = Core::new(limits(0, 0));
    core.register("img", 1);
    let image = core.cache.catalog().read(|r| r.image("img")).unwrap().unwrap();
    catalog.write(|w| w.put_image(&image)).unwrap();
    let backend: Arc<dyn Backend> = Arc::new(core.memory.clone());
    let policies = Arc::new(PolicySet::new(crate::fixtures::engine(), limits(0, 0)));
    let cfg = crate::cache_service::config(&fs.mnt.join("spool"));
    let cache = CacheService::new(catalog, backend, policies, cfg);
    cache.create_volume(&request("img", 1)).unwrap();

    // Fill the file system, then create until the catalog's commit fails.
    let filler = fs.mnt.join("filler");
    let _ = std::fs::write(&filler, vec![1u8; 16 * MIB as usize]);
    let mut failed = None;
    for _ in 0..50 {
        if let Err(e) = cache.create_volume(&request("img", 1)) {
            failed = Some(e);
            break;
        }
    }
    let err = failed.expect("a create fails once the state directory is full");
    assert_eq!(err.class(), FailureClass::NoSpace, "{err}");
    // Health tells the truth over HTTP: 503 with the reason while full, 200 after.
    let cache = Arc::new(cache);
    let (status, body) = health(&cache, &fs.mnt);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unhealthy");
    assert!(body["catalog"].as_str().is_some_and(|c| c.contains("free")), "{body}");
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(cache.catalog().health(), None, "healthy again once the catalog can write");
    let (status, body) = health(&cache, &fs.mnt);
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")), "{body}");
    cache.create_volume(&request("img", 1)).expect("creates work again without a restart");
}

/// `GET /healthz` through the HTTP layer (no socket).
fn health(cache: &Arc<CacheService>, dir: &Path) -> (u16, serde_json::Value) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let state = volcache::server::AppState::new(
        cache.clone(),
        TOKEN,
        dir.join("plugins"),
        volcache::config::ApiOptions::default(),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    runtime.block_on(async {
        let request = axum::http::Request::builder().uri("/healthz").body(axum::body::Body::empty()).unwrap();
        let response = volcache::server::app(state).oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    })
}
