//! Warm-up (`POST /v1/cache/warm`, `volcache cache warm`): an entry filled ahead of the first
//! create, without a user volume, under the policies, with progress on the event stream.

use serde_json::{json, Value};

use crate::daemon::{sse_until, Daemon, TOKEN};

fn post_json(d: &Daemon, path: &str, body: Value) -> (u16, Value) {
    d.call("POST", path, Some(TOKEN), Some(("application/json", body.to_string().as_bytes())))
}

/// Events until a warm-up ends; subscribed before the warm-up starts, so none is missed.
fn until_warm_ends(d: &Daemon) -> std::thread::JoinHandle<Vec<(String, Value)>> {
    sse_until(&d.addr, |name, _| name == "image_volume_cache.warm")
}

fn cli(d: &Daemon, args: &[&str]) -> std::process::Output {
    crate::fixtures::volcache_cmd()
        .args(args)
        .args(["--url", &format!("http://{}", d.addr)])
        .env("VOLCACHE_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap()
}

#[test]
fn a_warm_up_fills_an_entry_without_a_volume_and_reports_progress() {
    let d = Daemon::with_images(0, &["cirros"]);
    let events = until_warm_ends(&d);
    let (status, started) = post_json(&d, "/v1/cache/warm", json!({"image_id": "cirros"}));
    assert_eq!(status, 202, "{started}");
    let warm_id = started["warm_id"].as_u64().unwrap();
    let events = events.join().unwrap();

    let (last, progress) = events.split_last().unwrap();
    assert_eq!(last.0, "image_volume_cache.warm");
    assert_eq!(last.1["warm"]["warm_id"], warm_id);
    assert_eq!(last.1["warm"]["status"], "filled", "{}", last.1);
    let entry_id = last.1["warm"]["entry_id"].as_u64().unwrap();
    let reports: Vec<&Value> =
        progress.iter().filter(|(n, _)| n == "image_volume_cache.progress").map(|(_, v)| &v["progress"]).collect();
    assert!(!reports.is_empty(), "no progress before the end: {events:?}");
    let done: Vec<u64> = reports.iter().map(|p| p["done_bytes"].as_u64().unwrap()).collect();
    assert!(done.windows(2).all(|w| w[0] <= w[1]), "progress goes backwards: {done:?}");
    let final_report = reports.last().unwrap();
    assert_eq!(final_report["done"], true);
    assert_eq!(final_report["percent"], 100);
    assert_eq!(final_report["total_bytes"], 8 << 20);
    assert_eq!(final_report["done_bytes"], 8 << 20);
    // Thin: some bytes were written, fewer than the virtual size (the image has holes).
    let written = final_report["written_bytes"].as_u64().unwrap();
    assert!(written > 0 && written < 8 << 20, "written {written}");
    assert_eq!(final_report["target"], format!("cache-{entry_id}"));

    // An entry, no volume, a fill and no miss; the next create is a hit.
    let (_, entries) = d.call("GET", "/v1/cache/entries", Some(TOKEN), None);
    assert_eq!(entries.as_array().unwrap().len(), 1);
    assert_eq!(entries[0]["id"], entry_id);
    let (_, volumes) = d.call("GET", "/v1/volumes", Some(TOKEN), None);
    assert_eq!(volumes, json!([]));
    let (_, stats) = d.call("GET", "/v1/cache/stats", Some(TOKEN), None);
    assert_eq!((stats["fills"].as_u64(), stats["misses"].as_u64()), (Some(1), Some(0)), "{stats}");
    let (status, volume) = post_json(&d, "/v1/volumes", json!({"image_id": "cirros", "size": 1}));
    assert_eq!(status, 201);
    assert_eq!(volume["cache"], "hit");

    // Again: already cached, nothing filled.
    let events = until_warm_ends(&d);
    let (status, _) = post_json(&d, "/v1/cache/warm", json!({"image_id": "cirros"}));
    assert_eq!(status, 202);
    let end = events.join().unwrap().pop().unwrap();
    assert_eq!(end.1["warm"]["status"], "already-cached");
    assert_eq!(end.1["warm"]["entry_id"], entry_id);
    let (_, text) = crate::daemon::request(&d.addr, "GET", "/metrics", None, None).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("volcache_cache_warmups_total{result=\"filled\"} 1"), "{text}");
    assert!(text.contains("volcache_cache_warmups_total{result=\"already_cached\"} 1"), "{text}");
    // The hit's clone is counted under the mode the volume records.
    let mode = volume["clone_mode"].as_str().unwrap();
    assert!(text.contains(&format!("volcache_clones_total{{mode=\"{mode}\"}} 1")), "{mode}: {text}");
}

#[test]
fn a_warm_up_the_policies_refuse_says_why_and_evicts_nothing() {
    // One entry at most, and it is pinned: the capacity policy cannot make room.
    let d = Daemon::with_images(1, &["a", "b"]);
    let out = cli(&d, &["cache", "warm", "a"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, entries) = d.call("GET", "/v1/cache/entries", Some(TOKEN), None);
    let a = entries[0]["id"].as_u64().unwrap();
    let (status, _) = d.call("POST", &format!("/v1/cache/entries/{a}/pin"), Some(TOKEN), None);
    assert_eq!(status, 200);

    let out = cli(&d, &["cache", "warm", "b"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("image b was not cached: "), "{stderr}");
    assert_eq!(stderr.matches("volcache:").count(), 1, "one error line: {stderr}");
    let (_, entries) = d.call("GET", "/v1/cache/entries", Some(TOKEN), None);
    assert_eq!(entries.as_array().unwrap().len(), 1);
    assert_eq!(entries[0]["id"], a, "the pinned entry stays");
}

#[test]
fn a_warm_up_of_an_unknown_image_or_a_bad_body_is_refused_at_once() {
    let d = Daemon::with_images(0, &["cirros"]);
    let (status, body) = post_json(&d, "/v1/cache/warm", json!({"image_id": "nope"}));
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "image_not_found");
    let (status, body) = post_json(&d, "/v1/cache/warm", json!({"image": "cirros"}));
    assert_eq!(status, 400, "{body}");
    let (status, _) = d.call("POST", "/v1/cache/warm", None, None);
    assert_eq!(status, 401);
    let out = cli(&d, &["cache", "warm", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("image nope not found"));
}

#[test]
fn warm_ups_and_creates_of_one_image_at_once_fill_it_once() {
    let d = Daemon::with_images(0, &["cirros"]);
    let addr = d.addr.clone();
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let (path, body) = if i % 2 == 0 {
                    ("/v1/cache/warm", json!({"image_id": "cirros"}))
                } else {
                    ("/v1/volumes", json!({"image_id": "cirros", "size": 1}))
                };
                let payload = body.to_string();
                crate::daemon::request(&addr, "POST", path, Some(TOKEN), Some(("application/json", payload.as_bytes())))
                    .unwrap()
                    .0
            })
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(statuses, vec![202, 201, 202, 201, 202, 201]);
    // The warm-ups run in the background: wait until all three have ended.
    let started = std::time::Instant::now();
    loop {
        let (_, text) = crate::daemon::request(&d.addr, "GET", "/metrics", None, None).unwrap();
        let text = String::from_utf8(text).unwrap();
        let ended: f64 = text
            .lines()
            .filter(|l| l.starts_with("volcache_cache_warmups_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if ended == 3.0 {
            assert!(text.contains("volcache_cache_warmups_total{result=\"failed\"} 0"), "{text}");
            break;
        }
        assert!(started.elapsed().as_secs() < 60, "warm-ups did not end: {text}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (_, stats) = d.call("GET", "/v1/cache/stats", Some(TOKEN), None);
    assert_eq!(stats["fills"], 1, "one fill for six requests: {stats}");
    let (_, entries) = d.call("GET", "/v1/cache/entries", Some(TOKEN), None);
    assert_eq!(entries.as_array().unwrap().len(), 1);
}

#[test]
fn the_cli_shows_progress_for_a_warm_up_and_for_a_create_that_misses() {
    let d = Daemon::with_images(0, &["a", "b"]);
    let out = cli(&d, &["cache", "warm", "a"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.starts_with("image a cached: entry "), "{stdout}");
    assert!(stderr.contains("warming a  100%  8.0 MiB of 8.0 MiB"), "{stderr}");

    let out = cli(&d, &["volume", "create", "--image", "b", "--size", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("writing image b  100%"), "a miss shows the write: {stderr}");
    // A hit writes nothing, so it shows no progress.
    let out = cli(&d, &["volume", "create", "--image", "b", "--size", "1"]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains('%'), "{}", String::from_utf8_lossy(&out.stderr));
}
