//! The HTTP daemon (axum): health, and policy inspection and swapping behind a bearer token.
//!
//! Errors reach clients as `{"error": {"code", "message"}}`; internals are logged, not sent.
//! Policy swaps compile wasm, so they run on the blocking pool, never on the async workers.
#![forbid(unsafe_code)]

mod cache;
mod error;
mod observe;
mod policies;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use sha2::{Digest, Sha256};

use crate::backend::file::FileBackend;
use crate::backend::Backend;
use crate::cache::CacheService;
use crate::catalog::Catalog;
use crate::config::BackendConfig;
use crate::config::Config;
use crate::policy::{PolicyEngine, PolicySet};
pub use error::ApiError;

/// The API description, kept in sync with the routes below by a test.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Largest component accepted by `PUT /v1/policies/{slot}`.
pub const MAX_PLUGIN_BYTES: usize = 16 << 20;

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
}

impl AppState {
    pub fn new(
        cache: Arc<CacheService>,
        token: &str,
        plugin_dir: std::path::PathBuf,
        api: crate::config::ApiOptions,
    ) -> Self {
        let (policy_events, _) = tokio::sync::broadcast::channel(64);
        AppState { cache, policy_events, plugin_dir, api, token_digest: Sha256::digest(token.as_bytes()).into() }
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
    let admin = Router::new()
        .route("/v1/policies", get(policies::list_policies))
        .route("/v1/policies/{slot}", get(policies::show_policy).put(policies::put_policy))
        .route("/v1/images", get(cache::list_images).post(cache::create_image))
        .route("/v1/images/{id}", get(cache::show_image).patch(cache::patch_image).delete(cache::delete_image))
        .route("/v1/volumes", get(cache::list_volumes).post(cache::create_volume))
        .route("/v1/volumes/{id}", get(cache::show_volume).delete(cache::delete_volume))
        .route("/v1/cache/entries", get(cache::list_entries))
        .route("/v1/cache/entries/{id}", axum::routing::delete(cache::evict_entry))
        .route("/v1/cache/stats", get(cache::stats))
        .route("/v1/events", get(observe::events))
        .layer(DefaultBodyLimit::max(MAX_PLUGIN_BYTES))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    // Health and metrics are public unless the configuration says otherwise.
    let guarded = |public: bool, router: Router<AppState>| {
        if public {
            router
        } else {
            router.route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        }
    };
    let health = Router::new().route("/healthz", get(|| async { Json(serde_json::json!({"status": "ok"})) }));
    let metrics = Router::new().route("/metrics", get(observe::metrics));
    Router::new()
        .merge(guarded(state.api.public_health, health))
        .merge(guarded(state.api.public_metrics, metrics))
        .route("/v1/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .merge(admin)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
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
    match presented {
        Some(token) if state.token_matches(token.trim()) => next.run(request).await,
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the bearer token is wrong").into_response(),
        None => {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "this route needs `Authorization: Bearer <token>`")
                .into_response()
        }
    }
}

/// The admin token: from the config, else `VOLCACHE_ADMIN_TOKEN`, else a token file under the
/// state directory, created 0600 with a random token on first start.
pub fn admin_token(config: &Config) -> anyhow::Result<String> {
    if let Some(token) = &config.admin_token {
        return Ok(token.clone());
    }
    if let Ok(token) = std::env::var("VOLCACHE_ADMIN_TOKEN") {
        if !token.trim().is_empty() {
            return Ok(token.trim().to_string());
        }
    }
    let path = config.state_dir.join("admin-token");
    token_file(&path)
}

fn token_file(path: &Path) -> anyhow::Result<String> {
    if let Ok(token) = std::fs::read_to_string(path) {
        return Ok(token.trim().to_string());
    }
    let mut raw = [0u8; 24];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut raw)?;
    let token = hex::encode(raw);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    writeln!(file, "{token}")?;
    eprintln!("volcache: admin token written to {}", path.display());
    Ok(token)
}

/// Starts the daemon and serves until SIGINT or SIGTERM.
/// Opens the configured backend; errors name the config key.
pub fn open_backend(config: &BackendConfig) -> anyhow::Result<Arc<dyn Backend>> {
    match config {
        BackendConfig::File { dir } => {
            Ok(Arc::new(FileBackend::new(dir).map_err(|e| anyhow::anyhow!("backend.path {}: {e}", dir.display()))?))
        }
        #[cfg(feature = "rbd")]
        BackendConfig::Rbd(options) => {
            let backend = crate::backend::rbd::RbdBackend::connect(options.clone())
                .map_err(|e| anyhow::anyhow!("backend (rbd pool {:?}): {e}", options.pool))?;
            tracing::info!(pool = %options.pool, prefix = %options.prefix, "RBD backend connected");
            Ok(Arc::new(backend))
        }
        #[cfg(not(feature = "rbd"))]
        BackendConfig::Rbd(_) => anyhow::bail!("backend.kind: this volcache was built without RBD support"),
    }
}

pub fn serve(config: Config) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    std::fs::create_dir_all(&config.state_dir)?;
    std::fs::create_dir_all(&config.cache.spool_dir)?;
    let token = admin_token(&config)?;
    let engine = PolicyEngine::new(config.engine.clone())?;
    let policies = Arc::new(PolicySet::new(engine, config.limits));
    for (slot, spec) in &config.slots {
        policies.swap(*slot, spec.clone()).map_err(|e| anyhow::anyhow!("policy.slots.{slot}: {e}"))?;
    }
    let catalog = Arc::new(Catalog::open(&config.state_dir.join("catalog.redb"))?);
    let backend = open_backend(&config.backend)?;
    // This daemon: its host and its state directory (one catalog, one owner of the volumes).
    let state_dir = std::fs::canonicalize(&config.state_dir).unwrap_or_else(|_| config.state_dir.clone());
    let owner = format!("volcache on {} with state {}", config.cache.host, state_dir.display());
    backend.claim(&owner).map_err(|e| anyhow::anyhow!("backend: {e}"))?;
    let plugin_dir = config.state_dir.join("plugins");
    // Slots swapped at run time win over the configuration file; one that no longer loads is
    // reported and the configured policy keeps the slot.
    for (slot, choice) in catalog.read(|r| r.policy_choices())? {
        let Ok(slot) = slot.parse::<crate::policy::Slot>() else { continue };
        match self::policies::stored_spec(&plugin_dir, &choice)
            .and_then(|spec| policies.swap(slot, spec).map_err(|e| e.to_string()))
        {
            Ok(status) => tracing::info!(%slot, policy = %status.name, "restored the policy chosen at run time"),
            Err(e) => {
                tracing::error!(%slot, error = %e, "could not restore the policy chosen at run time; using the configured one")
            }
        }
    }
    let cache = Arc::new(CacheService::new(catalog, backend, policies, config.cache.clone()));
    let reconciled = cache.reconcile()?;
    tracing::info!(?reconciled, "start-up reconciliation done");
    let state = AppState::new(cache, &token, plugin_dir, config.api);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        tracing::info!(listen = %listener.local_addr()?, "volcache serving");
        axum::serve(listener, app(state)).with_graceful_shutdown(shutdown_signal()).await?;
        tracing::info!("volcache stopped");
        anyhow::Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
