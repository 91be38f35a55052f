//! The HTTP layer without a socket: `app()` driven with `oneshot` over the cache service on the
//! in-memory backend. Checks how failures are classified for clients (status, code, no
//! internals) and the answers to racing image records.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use volcache::backend::faulty::{Fault, Op};
use volcache::backend::Backend;
use volcache::config::ApiOptions;
use volcache::server::{app, AppState};

use crate::cache_core::{limits, Core};
use crate::daemon::TOKEN;

fn state(core: &Core) -> AppState {
    let api = ApiOptions::default();
    AppState::new(core.cache.clone(), TOKEN, core.dir.path().join("plugins"), api)
}

async fn call(
    core: &Core,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty))
        .unwrap();
    let response = app(state(core)).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

fn create(image: &str) -> Option<serde_json::Value> {
    Some(serde_json::json!({"image_id": image, "size": 1}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_classified_and_leak_nothing() {
    let core = Core::new(limits(0, 0));
    for id in ["full", "broken", "bad"] {
        core.register(id, 1);
    }
    core.faulty.inject(Fault { op: Op::Write, prefix: String::new(), after: 0, times: 1, errno: libc::ENOSPC });
    let (status, full) = call(&core, "POST", "/v1/volumes", create("full")).await;
    assert_eq!((status.as_u16(), full["error"]["code"].as_str()), (507, Some("insufficient_storage")), "{full}");
    core.faulty.inject(Fault { op: Op::Seal, prefix: String::new(), after: 0, times: 1, errno: libc::EIO });
    let (status, body) = call(&core, "POST", "/v1/volumes", create("broken")).await;
    assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (503, Some("storage_unavailable")), "{body}");
    for body in [&full, &body] {
        let message = body["error"]["message"].as_str().unwrap();
        assert!(!message.contains("os error") && !message.contains("cache-"), "internals leaked: {message}");
    }
    // The image's own fault: its source is gone. The reason is the client's to see.
    let bad = core.cache.catalog().read(|r| r.image("bad")).unwrap().unwrap();
    std::fs::remove_file(&bad.source).unwrap();
    let (status, body) = call(&core, "POST", "/v1/volumes", create("bad")).await;
    assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (422, Some("image_unusable")), "{body}");
    // Nothing half-made is left, and the service still answers.
    assert!(core.memory.list().unwrap().is_empty(), "{:?}", core.memory.list());
    let (status, health) = call(&core, "GET", "/healthz", None).await;
    assert_eq!((status.as_u16(), health["status"].as_str()), (200, Some("ok")), "{health}");
    // Each failure is counted under its reason in /metrics.
    let text = metrics(&core).await;
    for reason in ["source", "no_space", "unavailable"] {
        let line = format!("volcache_cache_fill_failures_total{{reason=\"{reason}\"}} 1");
        assert!(text.contains(&line), "{line} missing from:\n{text}");
    }
    assert!(text.contains("volcache_cache_fill_failures_total{reason=\"image_gone\"} 0"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_registration_of_an_id_is_a_conflict_and_patch_checks_the_checksum() {
    let core = Core::new(limits(0, 0));
    let path = core.image_file("img", 0, 1).display().to_string();
    let body = serde_json::json!({"id": "img", "name": "img", "source": path, "disk_format": "raw"});
    let (first, second) = tokio::join!(
        call(&core, "POST", "/v1/images", Some(body.clone())),
        call(&core, "POST", "/v1/images", Some(body.clone()))
    );
    let mut statuses = [first.0.as_u16(), second.0.as_u16()];
    statuses.sort();
    assert_eq!(statuses, [201, 409], "{first:?} {second:?}");
    let (status, body) = call(&core, "PATCH", "/v1/images/img", Some(serde_json::json!({"checksum": "nope"}))).await;
    assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (400, Some("bad_request")), "{body}");
    let (status, _) = call(&core, "DELETE", "/v1/images/img", None).await;
    assert_eq!(status.as_u16(), 204);
    let (status, _) = call(&core, "PATCH", "/v1/images/img", Some(serde_json::json!({"name": "back"}))).await;
    assert_eq!(status.as_u16(), 404, "a change after a delete does not bring the image back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_daemon_cannot_honour_get_clear_4xx_or_507_and_count_nothing() {
    let core = Core::new(limits(0, 0));
    core.register("img", 1);
    let (status, body) = call(&core, "GET", "/v1/volumes?all_tenants=AAA", None).await;
    assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (400, Some("bad_request")), "{body}");
    let internal = core.cache.config().internal.project_id.clone();
    let req = serde_json::json!({"image_id": "img", "size": 1, "project_id": internal});
    let (status, body) = call(&core, "POST", "/v1/volumes", Some(req)).await;
    assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
    // A volume larger than the file system can hold (EFBIG on ext4 for 16 TiB): 507, no fill counted.
    core.faulty.inject(Fault { op: Op::Create, prefix: String::new(), after: 0, times: 1, errno: libc::EFBIG });
    let (status, body) = call(&core, "POST", "/v1/volumes", create("img")).await;
    assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (507, Some("insufficient_storage")), "{body}");
    let stats = core.cache.stats().unwrap();
    assert_eq!((stats.fills, stats.misses, stats.entries), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_pinned_and_unpinned_over_http_and_counted_in_metrics() {
    let core = Core::new(limits(0, 0));
    core.register("img", 1);
    assert_eq!(call(&core, "POST", "/v1/volumes", create("img")).await.0.as_u16(), 201);
    let (_, entries) = call(&core, "GET", "/v1/cache/entries", None).await;
    let id = entries[0]["id"].as_u64().unwrap();
    let (status, entry) = call(&core, "POST", &format!("/v1/cache/entries/{id}/pin"), None).await;
    assert_eq!((status.as_u16(), entry["pinned"].as_bool()), (200, Some(true)), "{entry}");
    let text = metrics(&core).await;
    assert!(text.lines().any(|l| l.starts_with("volcache_cache_pinned_entries") && l.ends_with(" 1")), "{text}");
    let (status, entry) = call(&core, "DELETE", &format!("/v1/cache/entries/{id}/pin"), None).await;
    assert_eq!((status.as_u16(), entry["pinned"].as_bool()), (200, Some(false)), "{entry}");
    let (status, body) = call(&core, "POST", "/v1/cache/entries/999/pin", None).await;
    assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (404, Some("entry_not_found")), "{body}");
}

#[tokio::test]
async fn entries_are_listed_in_pages_that_survive_an_evicted_marker() {
    let core = Core::new(limits(0, 0));
    for i in 0..5 {
        core.register(&format!("img-{i}"), 1);
        assert_eq!(call(&core, "POST", "/v1/volumes", create(&format!("img-{i}"))).await.0, StatusCode::CREATED);
    }
    let entry_ids = |v: &serde_json::Value| -> Vec<u64> {
        v.as_array().unwrap().iter().map(|e| e["id"].as_u64().unwrap()).collect()
    };
    let (status, link, all) = get_page(&core, "/v1/cache/entries").await;
    let mut every = entry_ids(&all);
    every.sort_unstable();
    assert_eq!((status, link, entry_ids(&all).len()), (StatusCode::OK, None, 5));
    assert_eq!(entry_ids(&all), every, "by ascending id");

    let (seen, pages) = walk_pages(&core, "/v1/cache/entries?limit=2", 5).await;
    assert_eq!((seen, pages), (every.iter().map(u64::to_string).collect(), 3));

    // The marker's entry is evicted: the next page is still the entries after it.
    let (status, _) = call(&core, "DELETE", &format!("/v1/cache/entries/{}", every[1]), None).await;
    assert!(status.is_success());
    let (_, _, after) = get_page(&core, &format!("/v1/cache/entries?limit=10&marker={}", every[1])).await;
    assert_eq!(entry_ids(&after), every[2..].to_vec());

    assert_bad_paging(&core, "/v1/cache/entries", &["limit=0", "marker=", "marker=first", "marker=-1"]).await;
}

/// What start-up reconciliation found that needs an operator shows in /metrics as gauges, until
/// the operator deals with it.
#[tokio::test]
async fn volumes_lost_or_set_aside_at_start_are_gauges_in_metrics() {
    let core = Core::new(limits(0, 0));
    core.register("img", 1);
    let ids = create_volumes(&core, "img", 3).await;
    let gauges = |text: &str| -> (String, String) {
        let value = |name: &str| text.lines().find(|l| l.starts_with(name)).unwrap_or_default().to_string();
        (value("volcache_start_user_volumes_missing{"), value("volcache_start_volumes_set_aside{"))
    };
    let (missing, aside) = gauges(&metrics(&core).await);
    assert!(missing.ends_with(" 0") && aside.ends_with(" 0"), "{missing} / {aside}");

    // One volume's backend volume gone, another's record gone: one of each at the next start.
    let record = |id: &str| core.cache.catalog().read(|r| r.volume(id)).unwrap().unwrap();
    core.memory.remove(&record(&ids[0]).backend_name).unwrap();
    core.cache.catalog().write(|w| w.delete_volume(&ids[1])).unwrap();
    core.cache.reconcile().unwrap();
    let (missing, aside) = gauges(&metrics(&core).await);
    assert!(missing.ends_with(" 1") && aside.ends_with(" 1"), "{missing} / {aside}");

    // Each drops out once the operator has dealt with it (here: deleted both); no restart.
    for id in &ids[..2] {
        let (status, body) = call(&core, "DELETE", &format!("/v1/volumes/{id}"), None).await;
        assert!(status.is_success(), "{body}");
    }
    let (missing, aside) = gauges(&metrics(&core).await);
    assert!(missing.ends_with(" 0") && aside.ends_with(" 0"), "{missing} / {aside}");
}

/// How much the catalog writes and flushes shows in /metrics (group commit's sharing is
/// tested in the catalog): a hit over HTTP is one transaction and one flush.
#[tokio::test]
async fn catalog_commits_and_flushes_are_counted_in_metrics() {
    let core = Core::new(limits(0, 0));
    core.register("img", 1);
    assert_eq!(call(&core, "POST", "/v1/volumes", create("img")).await.0, StatusCode::CREATED);
    let counts = |text: &str| -> (u64, u64) {
        let value = |name: &str| -> u64 {
            let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} in {text}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        (value("volcache_catalog_commits_total{"), value("volcache_catalog_flushes_total{"))
    };
    let (commits, flushes) = counts(&metrics(&core).await);
    assert!(commits >= flushes && flushes > 0, "{commits} commits, {flushes} flushes");
    assert_eq!(call(&core, "POST", "/v1/volumes", create("img")).await.0, StatusCode::CREATED);
    assert_eq!(counts(&metrics(&core).await), (commits + 1, flushes + 1), "one hit");
}

/// Creates `n` volumes from `image` over the API; their ids.
async fn create_volumes(core: &Core, image: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let (status, volume) = call(core, "POST", "/v1/volumes", create(image)).await;
        assert_eq!(status, StatusCode::CREATED, "{volume}");
        ids.push(volume["id"].as_str().unwrap().to_string());
    }
    ids
}

/// The text of `GET /metrics`.
async fn metrics(core: &Core) -> String {
    let request = Request::builder().uri("/metrics").body(Body::empty()).unwrap();
    let response = app(state(core)).oneshot(request).await.unwrap();
    String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

/// Like `call`, with the response's `Link` header.
async fn get_page(core: &Core, path: &str) -> (StatusCode, Option<String>, serde_json::Value) {
    let request =
        Request::builder().uri(path).header("authorization", format!("Bearer {TOKEN}")).body(Body::empty()).unwrap();
    let response = app(state(core)).oneshot(request).await.unwrap();
    let status = response.status();
    let link = response.headers().get("link").map(|v| v.to_str().unwrap().to_string());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, link, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

fn ids(page: &serde_json::Value) -> Vec<String> {
    page.as_array().unwrap().iter().map(|v| v["id"].as_str().unwrap().to_string()).collect()
}

/// Each of `params` on the list at `path` is a 400 `bad_request` whose message starts with the
/// parameter's name.
async fn assert_bad_paging(core: &Core, path: &str, params: &[&str]) {
    for bad in params {
        let (status, _, body) = get_page(core, &format!("{path}?{bad}")).await;
        assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")), "{bad}");
        assert!(body["error"]["message"].as_str().unwrap().starts_with(bad.split('=').next().unwrap()), "{body}");
    }
}

/// Follows `Link: rel="next"` from `first` (a list path ending in `?...limit=N`), checking that
/// each link names the page's last id: every id seen, in order, and how many pages it took.
async fn walk_pages(core: &Core, first: &str, max_pages: usize) -> (Vec<String>, usize) {
    let (mut path, mut seen, mut pages) = (first.to_string(), Vec::new(), 0);
    loop {
        assert!(pages < max_pages, "{first}: more than {max_pages} pages");
        let (status, link, page) = get_page(core, &path).await;
        assert_eq!(status, StatusCode::OK);
        // Volume and image ids are strings, entry ids numbers.
        let got: Vec<String> = page.as_array().unwrap().iter().map(|v| v["id"].to_string().replace('"', "")).collect();
        seen.extend(got.clone());
        pages += 1;
        let Some(link) = link else { return (seen, pages) };
        assert_eq!(link, format!("<{first}&marker={}>; rel=\"next\"", got.last().unwrap()));
        path = link.trim_start_matches('<').split('>').next().unwrap().to_string();
    }
}

/// `limit` and `marker` page through the volumes by id; a full page links to the next one, and
/// a page still follows when the volume it ended with was deleted meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_are_listed_in_pages_that_survive_a_deleted_marker() {
    let core = Core::new(limits(0, 0));
    core.register("img", 1);
    let mut created = create_volumes(&core, "img", 5).await;
    created.sort();

    let (status, link, all) = get_page(&core, "/v1/volumes").await;
    assert_eq!((status, link, ids(&all)), (StatusCode::OK, None, created.clone()));

    let (seen, pages) = walk_pages(&core, "/v1/volumes?limit=2", 5).await;
    assert_eq!((seen, pages), (created.clone(), 3));

    // The marker's volume is gone: the next page is still the volumes after it.
    let (status, _) = call(&core, "DELETE", &format!("/v1/volumes/{}", created[1]), None).await;
    assert!(status.is_success());
    let (_, _, after) = get_page(&core, &format!("/v1/volumes?limit=10&marker={}", created[1])).await;
    assert_eq!(ids(&after), created[2..].to_vec());

    // The internal tenant's cache volume only with all_tenants, and the link keeps the filter.
    let (_, link, page) = get_page(&core, "/v1/volumes?all_tenants=1&limit=1").await;
    assert_eq!(ids(&page).len(), 1);
    assert!(link.unwrap().starts_with("</v1/volumes?all_tenants=1&limit=1&marker="));
    let (_, _, everything) = get_page(&core, "/v1/volumes?all_tenants=1").await;
    assert_eq!(ids(&everything).len(), created.len() - 1 + 1, "four users' volumes and the cache volume");

    assert_bad_paging(&core, "/v1/volumes", &["limit=0", "limit=-1", "limit=many", "marker="]).await;
}

#[tokio::test]
async fn images_are_listed_in_pages_that_survive_a_deleted_marker() {
    let core = Core::new(limits(0, 0));
    let mut registered: Vec<String> = ["d", "a", "e", "c", "b"].iter().map(|i| format!("img-{i}")).collect();
    for id in &registered {
        core.register(id, 1);
    }
    registered.sort();

    let (status, link, all) = get_page(&core, "/v1/images").await;
    assert_eq!((status, link, ids(&all)), (StatusCode::OK, None, registered.clone()));

    let (seen, pages) = walk_pages(&core, "/v1/images?limit=2", 5).await;
    assert_eq!((seen, pages), (registered.clone(), 3));

    // The marker's image is gone: the next page is still the images after it.
    let (status, _) = call(&core, "DELETE", "/v1/images/img-b", None).await;
    assert!(status.is_success());
    let (_, _, after) = get_page(&core, "/v1/images?limit=10&marker=img-b").await;
    assert_eq!(ids(&after), registered[2..].to_vec());

    assert_bad_paging(&core, "/v1/images", &["limit=0", "limit=x", "marker="]).await;
}
