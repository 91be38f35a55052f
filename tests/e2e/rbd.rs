//! The RBD backend against a real single-node Ceph cluster (scripts/ceph-cluster.sh, started
//! and stopped by `make test`, which passes its ceph.conf in `VOLCACHE_TEST_CEPH_CONF`).
//!
//! Every test works under its own image-name prefix in the shared pool, so they run in
//! parallel without seeing each other; the backend only ever lists or touches its prefix.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use volcache::backend::rbd::{RbdBackend, SEAL};
use volcache::backend::{Backend, BackendError, CloneMode, Held, RbdOptions};
use volcache::image::convert::{write_image, ConvertOptions};
use volcache::image::source::Location;
use volcache::sparse::Target;

use crate::backend::{conformance, fill, read};
use crate::fixtures::{cloud_like_raw, MIB};

/// The test cluster's ceph.conf; there is no RBD test without a real cluster.
fn ceph_conf() -> PathBuf {
    match std::env::var_os("VOLCACHE_TEST_CEPH_CONF") {
        Some(conf) if Path::new(&conf).is_file() => PathBuf::from(conf),
        _ => panic!(
            "the RBD tests need a real Ceph cluster: run `make test`, or \
             `scripts/ceph-cluster.sh run /tmp/c env VOLCACHE_TEST_CEPH_CONF=/tmp/c/ceph.conf \
             cargo test -p volcache --features rbd --test e2e rbd`"
        ),
    }
}

fn unique_prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("t{}-{}-", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn options(max_clone_depth: u32) -> RbdOptions {
    RbdOptions { ceph_conf: Some(ceph_conf()), prefix: unique_prefix(), max_clone_depth, ..RbdOptions::default() }
}

fn backend() -> RbdBackend {
    RbdBackend::connect(options(5)).expect("connect to the test cluster")
}

/// Runs the `rbd` tool against the test cluster.
fn rbd(args: &[&str]) -> String {
    let out = std::process::Command::new("rbd")
        .args(args)
        .env("CEPH_CONF", ceph_conf())
        .output()
        .expect("the rbd tool (ceph-common) is needed; `make test` installs it");
    assert!(out.status.success(), "rbd {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn rbd_json(args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["--format", "json"]);
    serde_json::from_str(&rbd(&all)).unwrap()
}

/// `rbd du`'s used bytes of one image.
fn rbd_used(image: &str) -> u64 {
    let du = rbd_json(&["du", &format!("rbd/{image}")]);
    du["images"].as_array().unwrap().iter().find(|i| i["name"] == image).unwrap()["used_size"].as_u64().unwrap()
}

/// Names in the pool's trash.
fn trash_names() -> Vec<String> {
    let trash = rbd_json(&["trash", "ls", "rbd"]);
    trash.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn rbd_backend_passes_the_conformance_suite() {
    let b = backend();
    assert_eq!(conformance(&b), CloneMode::SnapshotClone);
}

#[test]
fn a_clone_is_a_child_of_the_sealed_snapshot_and_copies_no_data() {
    let b = backend();
    let prefix = b.options().prefix.clone();
    fill(&b, "entry");
    b.seal("entry").unwrap();
    b.clone_volume("entry", "user").unwrap();
    b.resize("user", 256 * MIB).unwrap();
    let info = rbd_json(&["info", &format!("rbd/{prefix}user")]);
    assert_eq!(info["parent"]["image"], format!("{prefix}entry"), "{info}");
    assert_eq!(info["parent"]["snapshot"], SEAL);
    assert_eq!(info["size"], 256 * MIB);
    assert_eq!(b.allocated_bytes("user").unwrap(), 0, "a fresh clone stores nothing of its own");
    assert_eq!(rbd_used(&format!("{prefix}user")), 0);
    b.remove("user").unwrap();
    b.remove("entry").unwrap();
}

/// A hit clones without opening its source (the backend remembers what the seal learned); when
/// the source changed behind it, the clone opens it, seals it again, and still succeeds, and a
/// source that is gone is named as the missing volume (the cache drops a lost entry by that).
#[test]
fn a_clone_relearns_a_source_that_changed_behind_the_backend() {
    let b = backend();
    let prefix = b.options().prefix.clone();
    fill(&b, "entry");
    let original = read(&b, "entry");
    b.seal("entry").unwrap();
    b.clone_volume("entry", "a").unwrap();
    b.remove("a").unwrap();

    // Another tool takes the seal away: the remembered source is stale.
    let snap = format!("rbd/{prefix}entry@{SEAL}");
    rbd(&["snap", "unprotect", &snap]);
    rbd(&["snap", "rm", &snap]);
    b.clone_volume("entry", "b").unwrap();
    let info = rbd_json(&["info", &format!("rbd/{prefix}b")]);
    assert_eq!(info["parent"]["snapshot"], SEAL, "sealed again: {info}");
    assert_eq!(read(&b, "b"), original);
    b.remove("b").unwrap();

    // And then removes the volume itself.
    rbd(&["snap", "unprotect", &snap]);
    rbd(&["snap", "rm", &snap]);
    rbd(&["rm", &format!("rbd/{prefix}entry")]);
    match b.clone_volume("entry", "c") {
        Err(BackendError::NotFound(name)) => assert_eq!(name, "entry"),
        other => panic!("a clone of a vanished source: {other:?}"),
    }
    assert!(b.list().unwrap().is_empty(), "{:?}", b.list());
}

#[test]
fn thin_import_uses_what_rbd_import_uses() {
    let b = backend();
    let prefix = b.options().prefix.clone();
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("cloud.raw");
    cloud_like_raw(&raw, 256 * MIB);

    b.create("thin", 256 * MIB).unwrap();
    let dev = b.open("thin").unwrap();
    let report = write_image(
        &Location::parse(raw.to_str().unwrap()).unwrap(),
        &*dev,
        Target::Fresh,
        dir.path(),
        &ConvertOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    dev.sync_all().unwrap();
    drop(dev);
    assert!(report.write.zero_bytes_skipped > 0, "the explicit zeros were not written");

    let reference = format!("rbd/{prefix}imported");
    rbd(&["import", "--no-progress", raw.to_str().unwrap(), &reference]);
    let (ours, theirs) = (rbd_used(&format!("{prefix}thin")), rbd_used(&format!("{prefix}imported")));
    assert!(ours > 0);
    let diff = ours.abs_diff(theirs) as f64 / theirs as f64;
    assert!(diff <= 0.01, "rbd du: volcache {ours} vs rbd import {theirs} ({:.2}%)", diff * 100.0);

    // Same bytes as the source.
    let exported = dir.path().join("exported.raw");
    rbd(&["export", "--no-progress", &format!("rbd/{prefix}thin"), exported.to_str().unwrap()]);
    crate::fixtures::assert_same_bytes(&raw, &exported);
    b.remove("thin").unwrap();
    rbd(&["rm", "--no-progress", &reference]);
}

#[test]
fn dense_mode_writes_every_byte_and_reads_back_the_same() {
    let b = backend();
    let prefix = b.options().prefix.clone();
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("cloud.raw");
    cloud_like_raw(&raw, 32 * MIB);
    b.create("dense", 32 * MIB).unwrap();
    let dev = b.open("dense").unwrap();
    let opts = ConvertOptions { mode: volcache::sparse::WriteMode::Dense, ..ConvertOptions::default() };
    let location = Location::parse(raw.to_str().unwrap()).unwrap();
    write_image(&location, &*dev, Target::Fresh, dir.path(), &opts, &mut |_, _| {}).unwrap();
    dev.sync_all().unwrap();
    drop(dev);
    // rbd_thin_provisioning = false: every object is written, zeros included.
    assert_eq!(rbd_used(&format!("{prefix}dense")), 32 * MIB);
    let exported = dir.path().join("exported.raw");
    rbd(&["export", "--no-progress", &format!("rbd/{prefix}dense"), exported.to_str().unwrap()]);
    crate::fixtures::assert_same_bytes(&raw, &exported);
    b.remove("dense").unwrap();
}

#[test]
fn clones_deeper_than_the_limit_are_flattened_in_the_background() {
    let b = RbdBackend::connect(options(2)).unwrap();
    let prefix = b.options().prefix.clone();
    fill(&b, "v0");
    let original = read(&b, "v0");
    for i in 1..=3 {
        b.clone_volume(&format!("v{}", i - 1), &format!("v{i}")).unwrap();
    }
    b.settle();
    for (i, parent) in [(1, Some("v0")), (2, Some("v1")), (3, None)] {
        let info = rbd_json(&["info", &format!("rbd/{prefix}v{i}")]);
        match parent {
            Some(p) => assert_eq!(info["parent"]["image"], format!("{prefix}{p}"), "v{i}: {info}"),
            None => assert!(info.get("parent").is_none(), "v{i} is 3 deep (limit 2) and was not flattened: {info}"),
        }
    }
    assert_eq!(read(&b, "v3"), original, "the flattened clone has its parent's bytes");
    assert!(b.allocated_bytes("v3").unwrap() >= 8 * MIB, "a flattened clone owns its data");
    for i in (0..=3).rev() {
        b.remove(&format!("v{i}")).unwrap();
    }
    assert_eq!(b.list().unwrap(), Vec::<String>::new());
    assert_eq!(b.held().unwrap(), Held::default());
}

#[test]
fn a_removed_volume_with_live_clones_waits_in_the_trash_and_is_freed_with_the_last_one() {
    let b = backend();
    let prefix = b.options().prefix.clone();
    fill(&b, "entry");
    let original = read(&b, "entry");
    b.clone_volume("entry", "a").unwrap();
    b.clone_volume("entry", "b").unwrap();

    b.remove("entry").unwrap();
    assert_eq!(b.list().unwrap(), vec!["a", "b"], "the removed volume left the listing at once");
    assert!(trash_names().contains(&format!("{prefix}entry")));
    let held = b.held().unwrap();
    assert_eq!(held.volumes, 1);
    assert!((8 * MIB..=12 * MIB).contains(&held.bytes), "held {held:?} (8 MiB of data in 4 MiB objects)");
    assert_eq!(read(&b, "a"), original, "clones keep reading their parent's data");

    // A second held volume adds to the figure; asking again (measured once, remembered) and
    // asking a fresh connection (measuring everything) agree.
    fill(&b, "entry2");
    b.clone_volume("entry2", "c").unwrap();
    b.remove("entry2").unwrap();
    let two = b.held().unwrap();
    assert_eq!(two.volumes, 2);
    assert!(two.bytes >= held.bytes + 8 * MIB, "{two:?} after {held:?}");
    assert_eq!(b.held().unwrap(), two);
    assert_eq!(RbdBackend::connect(b.options().clone()).unwrap().held().unwrap(), two);
    b.remove("c").unwrap();
    assert_eq!(b.held().unwrap(), held, "entry2 was freed with its clone");

    b.remove("a").unwrap();
    assert_eq!(b.held().unwrap().volumes, 1, "one clone still lives");
    b.remove("b").unwrap();
    assert_eq!(b.held().unwrap(), Held::default());
    assert!(!trash_names().iter().any(|n| n.starts_with(&prefix)), "trash still has {:?}", trash_names());
}

#[test]
fn a_removed_volume_is_freed_when_its_last_clone_is_flattened() {
    let b = backend();
    fill(&b, "entry");
    let original = read(&b, "entry");
    b.clone_volume("entry", "user").unwrap();
    b.remove("entry").unwrap();
    assert_eq!(b.held().unwrap().volumes, 1);
    b.flatten("user").unwrap();
    assert_eq!(b.held().unwrap(), Held::default(), "the flattened clone no longer needs its parent");
    assert_eq!(read(&b, "user"), original);
    b.remove("user").unwrap();
}

#[test]
fn garbage_left_by_clones_removed_elsewhere_is_collected() {
    let b = backend();
    let prefix = b.options().prefix.clone();
    fill(&b, "entry");
    b.clone_volume("entry", "user").unwrap();
    b.remove("entry").unwrap();
    // The clone disappears behind volcache's back (an operator, or a crash before the clean-up).
    rbd(&["rm", "--no-progress", &format!("rbd/{prefix}user")]);
    assert_eq!(b.held().unwrap().volumes, 1);
    assert_eq!(b.collect_garbage().unwrap(), 1);
    assert_eq!(b.held().unwrap(), Held::default());
    assert_eq!(b.collect_garbage().unwrap(), 0);
}

#[test]
fn images_outside_the_prefix_are_never_listed_or_touched() {
    let b = backend();
    let foreign = format!("{}-foreign", unique_prefix().trim_end_matches('-'));
    rbd(&["create", "--size", "4M", &format!("rbd/{foreign}")]);
    assert!(b.list().unwrap().is_empty());
    b.collect_garbage().unwrap();
    assert!(rbd(&["ls", "rbd"]).lines().any(|l| l == foreign));
    rbd(&["rm", "--no-progress", &format!("rbd/{foreign}")]);
}

/// Start-up reconciliation frees an evicted cache volume whose clones were removed while the
/// daemon was down.
#[test]
fn daemon_start_up_frees_evicted_volumes_whose_clones_went_while_it_was_down() {
    use crate::daemon::{Daemon, TOKEN};
    let prefix = unique_prefix();
    let dir = tempfile::tempdir().unwrap();
    cloud_like_raw(&dir.path().join("img.raw"), 8 * MIB);
    std::fs::write(
        dir.path().join("volcache.toml"),
        format!("image_source_dirs = [\".\"]\n[backend]\nkind = \"rbd\"\nrbd_ceph_conf = {:?}\nrbd_image_prefix = {prefix:?}\n", ceph_conf()),
    )
    .unwrap();
    let d = Daemon::start_in(dir);
    let source = d._dir.path().join("img.raw");
    let post = |d: &Daemon, path: &str, body: serde_json::Value| {
        let body = body.to_string();
        d.call("POST", path, Some(TOKEN), Some(("application/json", body.as_bytes())))
    };
    let (status, _) =
        post(&d, "/v1/images", serde_json::json!({"id": "img", "name": "img", "source": source, "disk_format": "raw"}));
    assert_eq!(status, 201);
    let (status, volume) = post(&d, "/v1/volumes", serde_json::json!({"image_id": "img", "size": 1}));
    assert_eq!(status, 201, "{volume}");
    let (_, entries) = d.call("GET", "/v1/cache/entries", Some(TOKEN), None);
    let (status, _) = d.call("DELETE", &format!("/v1/cache/entries/{}", entries[0]["id"]), Some(TOKEN), None);
    assert_eq!(status, 204);
    let (_, stats) = d.call("GET", "/v1/cache/stats", Some(TOKEN), None);
    assert_eq!(stats["evicted_volumes_held"], 1, "{stats}");

    // While the daemon is down, the clone goes behind its back.
    let user_image = format!("rbd/{prefix}{}", volume["backend_name"].as_str().unwrap());
    let d = d.restart_after(|| {
        rbd(&["rm", "--no-progress", &user_image]);
    });
    let (_, stats) = d.call("GET", "/v1/cache/stats", Some(TOKEN), None);
    assert_eq!(stats["evicted_volumes_held"], 0, "{stats}");
    assert!(!trash_names().iter().any(|n| n.starts_with(&prefix)), "trash still has {:?}", trash_names());
}

/// The daemon on RBD: miss, hit, the user's volume a child of the cache snapshot, eviction
/// while clones live, and nothing left once they are gone.
#[test]
fn daemon_on_rbd_serves_hits_as_snapshot_clones_and_frees_evicted_entries_with_their_last_clone() {
    use crate::daemon::{Daemon, TOKEN};
    let prefix = unique_prefix();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("cirros.raw");
    cloud_like_raw(&image, 40 * MIB);
    std::fs::write(
        dir.path().join("volcache.toml"),
        format!(
            "image_source_dirs = [\".\"]\n[backend]\nkind = \"rbd\"\nrbd_pool = \"rbd\"\nrbd_ceph_conf = {:?}\nrbd_image_prefix = {prefix:?}\n",
            ceph_conf()
        ),
    )
    .unwrap();
    let d = Daemon::start_in(dir);
    let image = d._dir.path().join("cirros.raw");
    let post = |path: &str, body: serde_json::Value| {
        let body = body.to_string();
        d.call("POST", path, Some(TOKEN), Some(("application/json", body.as_bytes())))
    };
    let (status, img) = post(
        "/v1/images",
        serde_json::json!({"id": "cirros", "name": "cirros", "source": image, "disk_format": "raw"}),
    );
    assert_eq!(status, 201, "{img}");
    let (status, first) = post("/v1/volumes", serde_json::json!({"image_id": "cirros", "size": 1}));
    assert_eq!((status, first["cache"].as_str()), (201, Some("miss")), "{first}");
    let (status, second) = post("/v1/volumes", serde_json::json!({"image_id": "cirros", "size": 2}));
    assert_eq!((status, second["cache"].as_str()), (201, Some("hit")), "{second}");

    let (_, entries) = d.call("GET", "/v1/cache/entries", Some(TOKEN), None);
    let entry = entries.as_array().unwrap()[0].clone();
    let (_, cache_volume) =
        d.call("GET", &format!("/v1/volumes/{}", entry["volume_id"].as_str().unwrap()), Some(TOKEN), None);
    let cache_image = format!("{prefix}{}", cache_volume["backend_name"].as_str().unwrap());
    for volume in [&first, &second] {
        let user_image = format!("{prefix}{}", volume["backend_name"].as_str().unwrap());
        let info = rbd_json(&["info", &format!("rbd/{user_image}")]);
        assert_eq!(info["parent"]["image"], cache_image, "{info}");
        assert_eq!(info["parent"]["snapshot"], SEAL);
        assert_eq!(info["size"], volume["size"].as_u64().unwrap() << 30);
        assert_eq!(rbd_used(&user_image), 0, "a hit copies no data");
    }

    // Evict while two clones live: the entry goes at once, the image waits in the trash.
    let (status, _) = d.call("DELETE", &format!("/v1/cache/entries/{}", entry["id"]), Some(TOKEN), None);
    assert_eq!(status, 204);
    let (_, stats) = d.call("GET", "/v1/cache/stats", Some(TOKEN), None);
    assert_eq!((stats["entries"].as_u64(), stats["evicted_volumes_held"].as_u64()), (Some(0), Some(1)), "{stats}");
    assert!(stats["evicted_bytes_held"].as_u64().unwrap() > 0, "{stats}");
    assert!(trash_names().contains(&cache_image));

    // The user's volume still reads the image's bytes.
    let exported = d._dir.path().join("exported.raw");
    let user_image = format!("rbd/{prefix}{}", first["backend_name"].as_str().unwrap());
    rbd(&["export", "--no-progress", &user_image, exported.to_str().unwrap()]);
    let (src, out) = (std::fs::read(&image).unwrap(), std::fs::read(&exported).unwrap());
    assert_eq!(&out[..src.len()], &src[..], "the user's volume lost the image's bytes");

    for volume in [&first, &second] {
        let (status, _) =
            d.call("DELETE", &format!("/v1/volumes/{}", volume["id"].as_str().unwrap()), Some(TOKEN), None);
        assert_eq!(status, 204);
    }
    let (_, stats) = d.call("GET", "/v1/cache/stats", Some(TOKEN), None);
    assert_eq!(stats["evicted_volumes_held"], 0, "{stats}");
    assert!(!trash_names().iter().any(|n| n.starts_with(&prefix)));
    assert!(!rbd(&["ls", "rbd"]).lines().any(|l| l.starts_with(&prefix)), "images left behind");
}

/// One daemon owns a prefix: another identity is refused with the owner's name and the way
/// out, the same identity (a restart) claims it again, and after an operator removes the
/// claim object another daemon may take it.
#[test]
fn one_daemon_owns_a_prefix() {
    let opts = options(5);
    let oid = format!("volcache.owner.{}", opts.prefix);
    let first = RbdBackend::connect(opts.clone()).unwrap();
    first.claim("volcache on host-a with state /srv/a").unwrap();
    first.claim("volcache on host-a with state /srv/a").unwrap();

    let second = RbdBackend::connect(opts.clone()).unwrap();
    let err = second.claim("volcache on host-b with state /srv/b").unwrap_err().to_string();
    assert!(err.contains("host-a") && err.contains("rbd_image_prefix") && err.contains(&oid), "{err}");
    // A different prefix in the same pool is a different owner's.
    let other = RbdBackend::connect(options(5)).unwrap();
    other.claim("volcache on host-b with state /srv/b").unwrap();
    // A restart of the first daemon (a new connection, the same identity) is welcome.
    drop(first);
    RbdBackend::connect(opts.clone()).unwrap().claim("volcache on host-a with state /srv/a").unwrap();

    let out = std::process::Command::new("rados")
        .args(["-p", &opts.pool, "rm", &oid])
        .env("CEPH_CONF", ceph_conf())
        .output()
        .expect("the rados tool (ceph-common)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    second.claim("volcache on host-b with state /srv/b").unwrap();
    assert!(RbdBackend::connect(opts).unwrap().claim("volcache on host-a with state /srv/a").is_err());
    // The claim object is not an image: the listing does not show it.
    assert!(second.list().unwrap().is_empty());
}

/// The daemon's volumes in one prefix of the test pool (a new prefix for each daemon).
#[derive(Default)]
struct RbdVolumes {
    backend: Option<RbdBackend>,
}

impl crate::crash::Volumes for RbdVolumes {
    fn backend_toml(&mut self, _root: &Path) -> String {
        let backend = backend();
        let section = format!(
            "[backend]\nkind = \"rbd\"\nrbd_ceph_conf = {:?}\nrbd_image_prefix = {:?}\n",
            ceph_conf(),
            backend.options().prefix
        );
        self.backend = Some(backend);
        section
    }
    fn names(&self) -> Vec<String> {
        self.backend.as_ref().unwrap().list().unwrap()
    }
    fn digest(&self, name: &str) -> String {
        use sha2::{Digest, Sha256};
        let backend = self.backend.as_ref().unwrap();
        let (size, dev) = (backend.size(name).unwrap(), backend.open(name).unwrap());
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 8 << 20];
        let mut at = 0;
        while at < size {
            let n = (size - at).min(buf.len() as u64) as usize;
            dev.read_exact_at(&mut buf[..n], at).unwrap();
            hash.update(&buf[..n]);
            at += n as u64;
        }
        hex::encode(hash.finalize())
    }
}

/// The crash suite on RBD: SIGKILL at every crash point (fill, clone, evict, direct write),
/// restart, and the pool matches the catalog, the earlier user volume reads the same, and the
/// daemon serves again.
#[test]
fn sigkill_at_every_crash_point_leaves_a_consistent_cache_on_rbd() {
    let dir = tempfile::tempdir().unwrap();
    crate::crash::crash_suite(dir.path(), &mut RbdVolumes::default());
}
