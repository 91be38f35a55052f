//! Any bytes as the body of any JSON route of the admin API, through the real router and cache
//! service (in-memory backend, built-in policies): every answer is a JSON status below 500 (or
//! 507, insufficient storage), never a panic. The daemon state here may read files only in its
//! own temporary directory and fetch no URL, so generated sources reach nothing.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;
use volcache::backend::memory::MemoryBackend;
use volcache::cache::images::NewImage;
use volcache::cache::{CacheConfig, CacheService};
use volcache::catalog::Catalog;
use volcache::config::ApiOptions;
use volcache::image::source::{FileSources, UrlSources};
use volcache::image::DiskFormat;
use volcache::policy::{CinderLimits, EngineOptions, PolicyEngine, PolicySet};
use volcache::server::{app, AppState};

const TOKEN: &str = "fuzz-token-0123456789abcdef";

/// The routes that take a body, and their content type.
const ROUTES: [(&str, &str); 6] = [
    ("POST", "/v1/images"),
    ("PATCH", "/v1/images/img"),
    ("POST", "/v1/volumes"),
    ("PUT", "/v1/policies/eviction"),
    ("PUT", "/v1/policies/capacity"),
    ("PUT", "/v1/policies/admission"),
];

struct World {
    runtime: tokio::runtime::Runtime,
    router: Router,
    /// Kept for the whole run (and reachable, so the leak checker is content).
    _dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let images = dir.path().join("images");
        std::fs::create_dir_all(&images).unwrap();
        std::fs::write(images.join("img.raw"), vec![0x5a; 1 << 20]).unwrap();
        let catalog = Arc::new(Catalog::open(&dir.path().join("catalog.redb")).unwrap());
        let policies =
            Arc::new(PolicySet::new(PolicyEngine::new(EngineOptions::default()).unwrap(), CinderLimits::default()));
        let config = CacheConfig {
            file_sources: FileSources::Within { key: "image_source_dirs", dirs: vec![images.clone()], except: vec![] },
            url_sources: UrlSources::Within(Vec::new()),
            ..CacheConfig::new("fuzz", dir.path().join("spool"))
        };
        let cache = Arc::new(CacheService::new(catalog, Arc::new(MemoryBackend::new()), policies, config));
        cache
            .register_image(NewImage {
                id: Some("img".into()),
                name: "img".into(),
                source: images.join("img.raw").display().to_string(),
                disk_format: DiskFormat::Raw,
                checksum: None,
                refresh_interval_seconds: None,
            })
            .unwrap();
        let state = AppState::new(cache, TOKEN, dir.path().join("plugins"), ApiOptions::default());
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        World { runtime, router: app(state), _dir: dir }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else { return };
    let (method, path) = ROUTES[pick as usize % ROUTES.len()];
    let w = world();
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_vec()))
        .unwrap();
    let response = w.runtime.block_on(w.router.clone().oneshot(request)).unwrap();
    let status = response.status().as_u16();
    assert!(status < 500 || status == 507, "{method} {path}: {status}");
    let json = response.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    assert!(json, "{method} {path}: {status} is not JSON");
});
