//! The HTTP API (axum): routes, auth, errors, SSE, metrics. It only translates: every request
//! becomes one call of the cache service (`crate::cache`) or the policy set, run on the blocking
//! pool; the daemon is assembled in `crate::daemon`.
//!
//! Errors reach clients as `{"error": {"code", "message"}}`; internals are logged, not sent.
//! Policy swaps compile wasm, so they run on the blocking pool, never on the async workers.
#![forbid(unsafe_code)]

mod cache;
mod error;
mod listen;
mod observe;
mod paging;
pub(crate) mod policies;
mod trace;
mod ui;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use crate::cache::CacheService;
use crate::policy::PolicySet;
pub use error::ApiError;
pub use listen::{serve as serve_http, HttpLimits};

/// The API description, kept in sync with the routes below by a test.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Shared state of the HTTP handlers.
#[derive(Clone, Debug)]
pub struct AppState {
    pub cache: Arc<CacheService>,
    /// Policy swaps, for `/v1/events`.
    pub policy_events: tokio::sync::broadcast::Sender<crate::policy::SlotStatus>,
    /// Where uploaded components are kept so a swap survives a restart.
    pub plugin_dir: std::path::PathBuf,
    pub api: crate::config::ApiOptions,
    token_digest: [u8; 32],
    /// Set when the daemon stops: event streams end.
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
    /// Which plugin files a client may name in a swap (`plugin_dirs`; none by default).
    pub plugin_sources: crate::image::source::FileSources,
}

impl AppState {
    pub fn new(
        cache: Arc<CacheService>,
        token: &str,
        plugin_dir: std::path::PathBuf,
        api: crate::config::ApiOptions,
    ) -> Self {
        let (policy_events, _) = tokio::sync::broadcast::channel(64);
        let token_digest = Sha256::digest(token.as_bytes()).into();
        let stopping = Arc::new(tokio::sync::watch::channel(false).0);
        let plugin_sources =
            crate::image::source::FileSources::Within { key: "plugin_dirs", dirs: Vec::new(), except: Vec::new() };
        AppState { cache, policy_events, plugin_dir, api, token_digest, stopping, plugin_sources }
    }

    /// Allows clients to name plugin files under these directories.
    pub fn with_plugin_sources(mut self, sources: crate::image::source::FileSources) -> Self {
        self.plugin_sources = sources;
        self
    }

    /// Set it to end every event stream (the daemon is stopping).
    pub fn stopping(&self) -> Arc<tokio::sync::watch::Sender<bool>> {
        self.stopping.clone()
    }

    pub fn policies(&self) -> &Arc<PolicySet> {
        self.cache.policies()
    }

    /// Compares digests so the time taken says nothing about the token's bytes or length.
    fn token_matches(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        presented.iter().zip(self.token_digest.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// The routes; tests drive this directly or through a real listener.
pub fn app(state: AppState) -> Router {
    // Largest component accepted by `PUT /v1/policies/{slot}` (`policy.max_plugin_mib`).
    let max_body = state.cache.policies().engine().options().max_component_bytes;
    let admin = Router::new()
        .route("/v1/policies", get(policies::list_policies))
        .route("/v1/policies/{slot}", get(policies::show_policy).put(policies::put_policy))
        .route("/v1/policies/{slot}/shadow", axum::routing::put(policies::put_shadow).delete(policies::delete_shadow))
        .route("/v1/images", get(cache::list_images).post(cache::create_image))
        .route("/v1/images/{id}", get(cache::show_image).patch(cache::patch_image).delete(cache::delete_image))
        .route("/v1/volumes", get(cache::list_volumes).post(cache::create_volume))
        .route("/v1/volumes/{id}", get(cache::show_volume).delete(cache::delete_volume))
        .route("/v1/cache/entries", get(cache::list_entries))
        .route("/v1/cache/entries/{id}", axum::routing::delete(cache::evict_entry))
        .route("/v1/cache/entries/{id}/pin", axum::routing::post(cache::pin_entry).delete(cache::unpin_entry))
        .route("/v1/cache/stats", get(cache::stats))
        .route("/v1/cache/warm", axum::routing::post(cache::warm))
        .route("/v1/events", get(observe::events))
        .route("/v1/trace", get(trace::get_trace))
        .layer(DefaultBodyLimit::max(max_body))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    // Health and metrics are public unless the configuration says otherwise.
    let guarded = |public: bool, router: Router<AppState>| {
        if public {
            router
        } else {
            router.route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        }
    };
    let health = Router::new().route("/healthz", get(observe::health));
    let metrics = Router::new().route("/metrics", get(observe::metrics));
    Router::new()
        .merge(guarded(state.api.public_health, health))
        .merge(guarded(state.api.public_metrics, metrics))
        .route("/v1/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .merge(ui::routes())
        .merge(admin)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        // Rejections made by axum itself (body limit, method, path decoding) become JSON too.
        .layer(middleware::map_response(move |r| error::json_errors(r, max_body)))
        // A span per request: method and path, then status and latency when it ends.
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(tower_http::trace::DefaultMakeSpan::new().level(tracing::Level::INFO))
                .on_response(tower_http::trace::DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .with_state(state)
}

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let message = match presented {
        Some(token) if state.token_matches(token.trim()) => return next.run(request).await,
        Some(_) => "the bearer token is wrong",
        None => "this route needs `Authorization: Bearer <token>`",
    };
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer realm=\"volcache\""));
    response
}
