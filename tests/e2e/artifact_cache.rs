//! Precompiled components are cached on disk and reused, but only bytes this daemon wrote (their
//! HMAC checks out under its key) are ever deserialized.

use std::fs;

use volcache::policy::{EngineOptions, PolicyEngine};

use crate::fixtures::plugin;

fn engine(dir: &std::path::Path) -> PolicyEngine {
    PolicyEngine::new(EngineOptions { cache_dir: Some(dir.to_path_buf()), ..EngineOptions::default() }).unwrap()
}

fn artifacts(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect()
}

#[test]
fn a_second_engine_reuses_the_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = fs::read(plugin("lru")).unwrap();
    assert!(!engine(dir.path()).compile(&bytes).unwrap().from_cache);
    assert!(engine(dir.path()).compile(&bytes).unwrap().from_cache);
    let key = dir.path().join("cache.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
}

#[test]
fn a_tampered_artifact_is_recompiled_not_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = fs::read(plugin("lru")).unwrap();
    engine(dir.path()).compile(&bytes).unwrap();
    let list = artifacts(dir.path());
    assert_eq!(list.len(), 1, "one artifact expected");
    let artifact = &list[0];
    let mut data = fs::read(artifact).unwrap();
    let middle = data.len() / 2;
    data[middle] ^= 0xff;
    fs::write(artifact, &data).unwrap();
    let again = engine(dir.path()).compile(&bytes).unwrap();
    assert!(!again.from_cache, "a modified artifact must not be deserialized");
}

#[test]
fn an_artifact_written_under_another_key_is_not_loaded() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let bytes = fs::read(plugin("quota")).unwrap();
    engine(a.path()).compile(&bytes).unwrap();
    engine(b.path()).compile(&bytes).unwrap();
    // Plant a's artifact (valid wasmtime output, but a's MAC) in b's cache.
    let (from_a, in_b) = (artifacts(a.path()), artifacts(b.path()));
    assert_eq!((from_a.len(), in_b.len()), (1, 1));
    fs::copy(&from_a[0], &in_b[0]).unwrap();
    assert!(!engine(b.path()).compile(&bytes).unwrap().from_cache);
}

#[test]
fn the_cache_keeps_the_most_recently_used_artifacts_and_sweeps_the_unusable() {
    let dir = tempfile::tempdir().unwrap();
    let small = |dir: &std::path::Path| {
        PolicyEngine::new(EngineOptions {
            cache_dir: Some(dir.to_path_buf()),
            cache_max_artifacts: 2,
            ..EngineOptions::default()
        })
        .unwrap()
    };
    let [lru, quota, max_size] = ["lru", "quota", "max-size"].map(|p| fs::read(plugin(p)).unwrap());
    let e = small(dir.path());
    for bytes in [&lru, &quota] {
        assert!(!e.compile(bytes).unwrap().from_cache);
    }
    assert_eq!(artifacts(dir.path()).len(), 2);
    // Using lru makes quota the least recently used; a third plugin pushes quota out.
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(e.compile(&lru).unwrap().from_cache);
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(!e.compile(&max_size).unwrap().from_cache);
    assert_eq!(artifacts(dir.path()).len(), 2);
    assert!(e.compile(&lru).unwrap().from_cache, "the recently used artifact was kept");
    assert!(e.compile(&max_size).unwrap().from_cache);
    assert!(!e.compile(&quota).unwrap().from_cache, "the least recently used artifact was pruned");

    // Files no build of this daemon can use: another wasmtime's artifact, a dead writer's temp.
    let foreign = dir.path().join(format!("{}-0123456789abcdef.cwasm", "ab".repeat(32)));
    fs::write(&foreign, b"old engine").unwrap();
    let temp = dir.path().join("x.tmp.1.0");
    fs::write(&temp, b"half").unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 3600);
    fs::File::options().write(true).open(&temp).unwrap().set_modified(old).unwrap();
    let fresh_temp = dir.path().join("y.tmp.2.0");
    fs::write(&fresh_temp, b"being written").unwrap();
    drop(e);
    let e = small(dir.path());
    assert!(!foreign.exists(), "another build's artifact is removed at start-up");
    assert!(!temp.exists(), "a dead writer's temporary file is removed");
    assert!(fresh_temp.exists(), "a temporary file that may still be written is left alone");
    assert_eq!(artifacts(dir.path()).len(), 2);
    assert!(e.compile(&quota).unwrap().from_cache);
}
