//! Refresh: an image with a refresh interval is checked at its HTTP source (ETag), and a
//! changed image is refilled in the background and swapped in atomically: no miss window, the
//! old entry evicted as `refreshed`, user volumes untouched, a change meanwhile wins.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use volcache::cache::images::{ImagePatch, NewImage};
use volcache::cache::refresh::Refreshed;
use volcache::cache::{CacheError, EvictReason};
use volcache::catalog::CacheOutcome;
use volcache::image::DiskFormat;

use crate::cache_core::{limits, request, Core};
use crate::daemon::{Daemon, TOKEN};

/// What the source serves now.
struct Current {
    body: Vec<u8>,
    etag: Option<String>,
    /// Whether HEAD answers carry ETag and Content-Length (GET always has its length).
    head_headers: bool,
    status: u16,
    /// Glance's `updated_at` for the image, served at `/v2/images/img`.
    glance_updated_at: String,
}

/// An HTTP image source whose body and ETag a test can change; answers GET and HEAD.
struct Source {
    addr: String,
    current: Arc<Mutex<Current>>,
    gets: Arc<AtomicUsize>,
}

impl Source {
    fn start(body: Vec<u8>, etag: &str) -> Source {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let current = Arc::new(Mutex::new(Current {
            body,
            etag: Some(etag.into()),
            head_headers: true,
            status: 200,
            glance_updated_at: "2026-01-01T00:00:00Z".into(),
        }));
        let gets = Arc::new(AtomicUsize::new(0));
        let (state, counter) = (current.clone(), gets.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (state, counter) = (state.clone(), counter.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() {
                        return;
                    }
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                            break;
                        }
                    }
                    let head_only = line.starts_with("HEAD ");
                    // Glance v2: the image's metadata, then its data at /file.
                    if line.split_whitespace().nth(1) == Some("/v2/images/img") {
                        let updated = state.lock().unwrap().glance_updated_at.clone();
                        let meta =
                            json!({"id": "img", "status": "active", "disk_format": "raw", "updated_at": updated})
                                .to_string();
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{meta}",
                            meta.len()
                        );
                        let _ = stream.write_all(reply.as_bytes());
                        return;
                    }
                    if !head_only {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    let (status, body, etag, length) = {
                        let c = state.lock().unwrap();
                        (c.status, c.body.clone(), c.etag.clone(), c.head_headers || !head_only)
                    };
                    let mut head = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
                    if length {
                        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
                    }
                    if let Some(etag) = etag.filter(|_| length) {
                        head.push_str(&format!("ETag: \"{etag}\"\r\n"));
                    }
                    head.push_str("\r\n");
                    let _ = stream.write_all(head.as_bytes());
                    if !head_only {
                        let _ = stream.write_all(&body);
                    }
                });
            }
        });
        Source { addr, current, gets }
    }

    fn url(&self) -> String {
        format!("http://{}/image.raw", self.addr)
    }

    fn serve(&self, body: Vec<u8>, etag: &str) {
        let mut c = self.current.lock().unwrap();
        c.body = body;
        c.etag = Some(etag.into());
    }
}

/// A raw image of `mib` MiB: the first 64 KiB a pattern naming `version`, the rest zeros.
fn body(version: u8, mib: usize) -> Vec<u8> {
    let mut body = vec![0u8; mib << 20];
    for (i, b) in body[..64 << 10].iter_mut().enumerate() {
        *b = version.wrapping_mul(31).wrapping_add(i as u8) | 1;
    }
    body
}

fn register(core: &Core, source: &Source, refresh: Option<u64>) -> Result<(), CacheError> {
    core.cache
        .register_image(NewImage {
            id: Some("img".into()),
            name: "img".into(),
            source: source.url(),
            disk_format: DiskFormat::Raw,
            checksum: None,
            refresh_interval_seconds: refresh,
        })
        .map(drop)
}

#[test]
fn a_changed_source_is_refilled_and_swapped_in_without_a_miss_window() {
    let source = Source::start(body(1, 8), "v1");
    let mut core = Core::new(limits(0, 1));
    register(&core, &source, Some(3600)).unwrap();
    let first = core.cache.create_volume(&request("img", 1)).unwrap();
    assert_eq!(first.volume.cache, Some(CacheOutcome::Miss));
    let old = core.cache.scope_entries().unwrap()[0].clone();
    assert_eq!(core.cache.refresh_image("img").unwrap(), Refreshed::Unchanged);

    // A new version, bigger. Its refill is sealed slowly; creates meanwhile are served at once
    // by the old entry (they neither miss nor wait for the refill).
    source.serve(body(2, 12), "v2");
    core.faulty.slow(volcache::backend::faulty::Op::Seal, Duration::from_millis(500));
    let refreshing = {
        let cache = core.cache.clone();
        std::thread::spawn(move || cache.refresh_image("img"))
    };
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..5 {
        let during = core.cache.create_volume(&request("img", 1)).unwrap().volume;
        assert_eq!((during.cache, during.cloned_from), (Some(CacheOutcome::Hit), Some(old.id)));
    }
    assert!(!refreshing.is_finished(), "the creates above waited for the refill");
    let refreshed = refreshing.join().unwrap().unwrap();
    core.faulty.heal();
    let Refreshed::Refilled(new_id) = refreshed else { panic!("not refilled: {refreshed:?}") };
    let entries = core.cache.scope_entries().unwrap();
    assert_eq!(
        entries.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![new_id],
        "the old entry is gone, max_count holds"
    );
    let image = core.cache.catalog().read(|r| r.image("img")).unwrap().unwrap();
    assert_eq!(image.virtual_size, 12 << 20);
    assert_eq!(image.source_version.as_deref(), Some("etag \"v2\""));
    assert_eq!(entries[0].image_updated_at, image.updated_at);
    let evicted: Vec<_> = core.drain().into_iter().filter(|e| e.event_type.ends_with(".evict")).collect();
    assert_eq!(evicted.len(), 1);
    assert_eq!(
        (evicted[0].volume_id.as_str(), evicted[0].reason),
        (old.volume_id.as_str(), Some(EvictReason::Refreshed))
    );

    // New volumes hold the new version; the user's volume from before still holds the old.
    let after = core.cache.create_volume(&request("img", 1)).unwrap();
    assert_eq!(after.volume.cache, Some(CacheOutcome::Hit));
    let new_bytes = core.memory.read_all(&after.volume.backend_name).unwrap();
    assert_eq!(&new_bytes[..64 << 10], &body(2, 12)[..64 << 10]);
    let old_bytes = core.memory.read_all(&first.volume.backend_name).unwrap();
    assert_eq!(&old_bytes[..64 << 10], &body(1, 8)[..64 << 10]);
    let stats = core.cache.stats().unwrap();
    assert_eq!(stats.misses, 1, "only the very first create missed");
}

#[test]
fn a_change_without_an_entry_only_updates_the_image() {
    let source = Source::start(body(1, 8), "v1");
    let core = Core::new(limits(0, 0));
    register(&core, &source, Some(3600)).unwrap();
    let before = core.cache.catalog().read(|r| r.image("img")).unwrap().unwrap();
    let gets = source.gets.load(Ordering::SeqCst);
    source.serve(body(2, 4), "v2");
    assert_eq!(core.cache.refresh_image("img").unwrap(), Refreshed::Updated);
    let after = core.cache.catalog().read(|r| r.image("img")).unwrap().unwrap();
    assert!(after.updated_at > before.updated_at);
    assert_eq!(after.virtual_size, 4 << 20);
    assert_eq!(core.cache.stats().unwrap().fills, 0, "nothing was cached, nothing is filled");
    assert_eq!(source.gets.load(Ordering::SeqCst), gets + 1, "one GET: the probe of the new version");
}

#[test]
fn a_source_that_cannot_say_its_version_cannot_be_watched() {
    let source = Source::start(body(1, 8), "v1");
    {
        let mut c = source.current.lock().unwrap();
        c.etag = None;
        c.head_headers = false;
    }
    let core = Core::new(limits(0, 0));
    let e = register(&core, &source, Some(60)).unwrap_err().to_string();
    assert!(e.contains("no ETag, Last-Modified or Content-Length"), "{e}");
    assert!(core.cache.catalog().read(|r| r.image("img")).unwrap().is_none());
}

#[test]
fn a_failing_source_keeps_the_entry_and_a_patch_of_only_the_interval_keeps_it_fresh() {
    let source = Source::start(body(1, 8), "v1");
    let core = Core::new(limits(0, 0));
    register(&core, &source, Some(3600)).unwrap();
    core.cache.create_volume(&request("img", 1)).unwrap();
    let entry = core.cache.scope_entries().unwrap()[0].id;
    source.current.lock().unwrap().status = 503;
    let e = core.cache.refresh_image("img").unwrap_err().to_string();
    assert!(e.contains("HTTP 503"), "{e}");
    assert_eq!(core.cache.scope_entries().unwrap()[0].id, entry);

    // Changing only the interval keeps updated_at: the entry stays fresh (a hit).
    source.current.lock().unwrap().status = 200;
    let before = core.cache.catalog().read(|r| r.image("img")).unwrap().unwrap();
    let patch = ImagePatch { refresh_interval_seconds: Some(600), ..Default::default() };
    let patched = core.cache.patch_image("img", patch).unwrap();
    assert_eq!(
        (patched.updated_at.as_str(), patched.refresh_interval_seconds),
        (before.updated_at.as_str(), Some(600))
    );
    assert_eq!(core.cache.create_volume(&request("img", 1)).unwrap().volume.cache, Some(CacheOutcome::Hit));
    let off =
        core.cache.patch_image("img", ImagePatch { refresh_interval_seconds: Some(0), ..Default::default() }).unwrap();
    assert_eq!((off.refresh_interval_seconds, off.source_version), (None, None));
    let e =
        core.cache.patch_image("img", ImagePatch { refresh_interval_seconds: Some(u64::MAX), ..Default::default() });
    assert!(e.unwrap_err().to_string().contains("refresh_interval_seconds"));
}

#[test]
fn the_daemon_refreshes_an_image_by_itself() {
    let source = Source::start(body(1, 8), "v1");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("volcache.toml"), format!("image_source_urls = [\"http://{}/\"]\n", source.addr))
        .unwrap();
    let d = Daemon::start_in(dir);
    let call = |method: &str, path: &str, body: serde_json::Value| {
        let payload = body.to_string();
        d.call(method, path, Some(TOKEN), Some(("application/json", payload.as_bytes())))
    };
    let (status, image) = call(
        "POST",
        "/v1/images",
        json!({"id": "img", "name": "img", "source": source.url(), "disk_format": "raw", "refresh_interval_seconds": 1}),
    );
    assert_eq!(status, 201, "{image}");
    assert_eq!(image["refresh_interval_seconds"], 1);
    let (status, _) = call("POST", "/v1/volumes", json!({"image_id": "img", "size": 1}));
    assert_eq!(status, 201);
    let (_, entries) = d.call("GET", "/v1/cache/entries", Some(TOKEN), None);
    let old = entries[0]["id"].clone();

    source.serve(body(2, 8), "v2");
    let started = Instant::now();
    loop {
        let (_, entries) = d.call("GET", "/v1/cache/entries", Some(TOKEN), None);
        if entries.as_array().is_some_and(|e| e.len() == 1 && e[0]["id"] != old) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "not refreshed: {entries}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, metrics) = crate::daemon::request(&d.addr, "GET", "/metrics", None, None).unwrap();
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(metrics.contains("volcache_image_refreshes_total{result=\"refilled\"} 1"), "{metrics}");
    let (status, volume) = call("POST", "/v1/volumes", json!({"image_id": "img", "size": 1}));
    assert_eq!((status, volume["cache"].as_str()), (201, Some("hit")));
}

#[test]
fn a_glance_image_is_refreshed_when_its_updated_at_changes() {
    let source = Source::start(body(1, 8), "v1");
    let mut core = Core::new(limits(0, 0));
    let glance = format!("glance+http://{}/v2/images/img", source.addr);
    core.cache
        .register_image(NewImage {
            id: Some("img".into()),
            name: "img".into(),
            source: glance,
            disk_format: DiskFormat::Raw,
            checksum: None,
            refresh_interval_seconds: Some(3600),
        })
        .unwrap();
    core.cache.create_volume(&request("img", 1)).unwrap();
    // The data changes but Glance's metadata does not: nothing to do (Glance's word counts).
    source.serve(body(2, 8), "v2");
    assert_eq!(core.cache.refresh_image("img").unwrap(), Refreshed::Unchanged);
    source.current.lock().unwrap().glance_updated_at = "2026-02-02T00:00:00Z".into();
    let Refreshed::Refilled(_) = core.cache.refresh_image("img").unwrap() else { panic!("not refilled") };
    let image = core.cache.catalog().read(|r| r.image("img")).unwrap().unwrap();
    assert!(image.source_version.unwrap().contains("updated_at=2026-02-02T00:00:00Z"));
    let after = core.cache.create_volume(&request("img", 1)).unwrap();
    assert_eq!(after.volume.cache, Some(CacheOutcome::Hit));
    let bytes = core.memory.read_all(&after.volume.backend_name).unwrap();
    assert_eq!(&bytes[..64 << 10], &body(2, 8)[..64 << 10]);
    assert!(core.drain().iter().any(|e| e.reason == Some(EvictReason::Refreshed)));
}

#[test]
fn a_change_made_during_the_refill_wins_and_the_refill_leaves_nothing() {
    use volcache::backend::faulty::Op;
    use volcache::backend::Backend;

    let source = Source::start(body(1, 8), "v1");
    let core = Core::new(limits(0, 0));
    register(&core, &source, Some(3600)).unwrap();
    core.cache.create_volume(&request("img", 1)).unwrap();
    let old = core.cache.scope_entries().unwrap()[0].id;
    source.serve(body(2, 8), "v2");
    // The refill's volume is sealed slowly: an operator's PATCH lands in between.
    core.faulty.slow(Op::Seal, Duration::from_millis(400));
    let refresh = {
        let cache = core.cache.clone();
        std::thread::spawn(move || cache.refresh_image("img"))
    };
    std::thread::sleep(Duration::from_millis(150));
    let patched =
        core.cache.patch_image("img", ImagePatch { name: Some("renamed".into()), ..Default::default() }).unwrap();
    let result = refresh.join().unwrap().unwrap();
    core.faulty.heal();
    assert!(matches!(&result, Refreshed::Deferred(why) if why.contains("changed")), "{result:?}");
    let image = core.cache.catalog().read(|r| r.image("img")).unwrap().unwrap();
    assert_eq!((image.name.as_str(), image.updated_at.as_str()), ("renamed", patched.updated_at.as_str()));
    assert_eq!(core.cache.scope_entries().unwrap().iter().map(|e| e.id).collect::<Vec<_>>(), vec![old]);
    let cache_volumes: Vec<String> =
        core.memory.list().unwrap().into_iter().filter(|n| n.starts_with("cache-")).collect();
    assert_eq!(cache_volumes, vec![format!("cache-{old}")], "the dropped refill's volume is gone");
    // The next create sees the PATCH: the old entry is stale, a miss fills the current bytes.
    let next = core.cache.create_volume(&request("img", 1)).unwrap();
    assert_eq!(next.volume.cache, Some(CacheOutcome::Miss));
}

#[test]
fn a_warm_up_racing_the_images_delete_keeps_nothing() {
    use volcache::backend::faulty::Op;
    use volcache::backend::Backend;

    let source = Source::start(body(1, 8), "v1");
    let core = Core::new(limits(0, 0));
    register(&core, &source, None).unwrap();
    core.faulty.slow(Op::Seal, Duration::from_millis(400));
    let warm = {
        let cache = core.cache.clone();
        std::thread::spawn(move || cache.warm("img", 1))
    };
    std::thread::sleep(Duration::from_millis(150));
    core.cache.delete_image("img").unwrap();
    let result = warm.join().unwrap();
    core.faulty.heal();
    assert!(matches!(result, Err(CacheError::ImageGone { .. })), "{result:?}");
    assert!(core.cache.scope_entries().unwrap().is_empty());
    assert!(core.memory.list().unwrap().is_empty(), "nothing left on the backend");
    assert_eq!(core.cache.warm_counts().into_iter().find(|(k, _)| *k == "failed").unwrap().1, 1);
}

#[test]
fn a_warm_up_during_another_fill_of_the_image_ends_at_once_as_joined() {
    use volcache::backend::faulty::Op;
    use volcache::cache::warm::Warmed;

    let source = Source::start(body(1, 8), "v1");
    let core = Core::new(limits(0, 0));
    register(&core, &source, None).unwrap();
    core.faulty.slow(Op::Seal, Duration::from_millis(500));
    let creating = {
        let cache = core.cache.clone();
        std::thread::spawn(move || cache.create_volume(&request("img", 1)))
    };
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(core.cache.warm("img", 7).unwrap(), Warmed::Joined);
    assert!(!creating.is_finished(), "the warm-up waited for the create's fill");
    assert_eq!(creating.join().unwrap().unwrap().volume.cache, Some(CacheOutcome::Miss));
    core.faulty.heal();
    assert_eq!(core.cache.stats().unwrap().fills, 1);
    assert_eq!(core.cache.warm_counts().into_iter().find(|(k, _)| *k == "joined").unwrap().1, 1);
}

#[test]
fn the_refresh_loop_reads_the_images_only_when_they_changed() {
    let source = Source::start(body(1, 8), "v1");
    let core = Core::new(limits(0, 0));
    register(&core, &source, Some(3600)).unwrap();
    core.register("plain", 1);
    let ids =
        |done: Vec<(String, Result<Refreshed, CacheError>)>| done.into_iter().map(|(id, _)| id).collect::<Vec<_>>();

    // First sight: the image with an interval is checked; the next ticks find nothing due and
    // do not read the images again (an unchanged source writes nothing).
    assert_eq!(ids(core.cache.refresh_due()), ["img"]);
    let scans = core.cache.refresh_scans();
    for _ in 0..3 {
        assert!(core.cache.refresh_due().is_empty());
    }
    assert_eq!(core.cache.refresh_scans(), scans, "ticks with no change read the images again");

    // Any change to the images is seen at the next tick: an interval given to another image
    // makes it due at once; a deleted one leaves the schedule.
    let patch = |interval| ImagePatch { refresh_interval_seconds: Some(interval), ..ImagePatch::default() };
    core.cache.patch_image("plain", patch(60)).unwrap();
    assert_eq!(ids(core.cache.refresh_due()), ["plain"]);
    assert_eq!(core.cache.refresh_scans(), scans + 1);
    core.cache.delete_image("plain").unwrap();
    assert!(core.cache.refresh_due().is_empty());
    assert_eq!(core.cache.refresh_scans(), scans + 2);
    assert!(core.cache.refresh_due().is_empty());
    assert_eq!(core.cache.refresh_scans(), scans + 2);
}
