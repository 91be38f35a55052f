//! The HTTP daemon (axum): health, and policy inspection and swapping behind a bearer token.
//!
//! Errors reach clients as `{"error": {"code", "message"}}`; internals are logged, not sent.
//! Policy swaps compile wasm, so they run on the blocking pool, never on the async workers.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::policy::{LoadError, PolicyEngine, PolicySet, PolicySource, PolicySpec, Slot};

/// Largest component accepted by `PUT /v1/policies/{slot}`.
pub const MAX_PLUGIN_BYTES: usize = 16 << 20;

/// Shared state of the HTTP handlers.
#[derive(Clone, Debug)]
pub struct AppState {
    pub policies: Arc<PolicySet>,
    token_digest: [u8; 32],
}

impl AppState {
    pub fn new(policies: Arc<PolicySet>, token: &str) -> Self {
        AppState { policies, token_digest: Sha256::digest(token.as_bytes()).into() }
    }

    /// Compares digests so the time taken says nothing about the token's bytes or length.
    fn token_matches(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        presented.iter().zip(self.token_digest.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// An error as clients see it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<LoadError> for ApiError {
    fn from(e: LoadError) -> Self {
        let code = match &e {
            LoadError::Engine(_) | LoadError::Cache { .. } => {
                tracing::error!(error = %e, "policy engine failure");
                return ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the daemon's log",
                );
            }
            LoadError::Read { .. } => "plugin_unreadable",
            LoadError::UnknownBuiltin(_) => "unknown_builtin",
            LoadError::WrongSlot { .. } | LoadError::BuiltinWrongSlot { .. } => "wrong_slot",
            LoadError::ForbiddenImport(_) => "forbidden_import",
            _ => "plugin_rejected",
        };
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, e.to_string())
    }
}

/// The routes; tests drive this directly or through a real listener.
pub fn app(state: AppState) -> Router {
    let admin = Router::new()
        .route("/v1/policies", get(list_policies))
        .route("/v1/policies/{slot}", get(show_policy).put(put_policy))
        .layer(DefaultBodyLimit::max(MAX_PLUGIN_BYTES))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { Json(serde_json::json!({"status": "ok"})) }))
        .merge(admin)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
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

fn parse_slot(slot: &str) -> Result<Slot, ApiError> {
    slot.parse().map_err(|e: String| ApiError::new(StatusCode::NOT_FOUND, "unknown_slot", e))
}

async fn list_policies(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!(state.policies.status()))
}

async fn show_policy(
    State(state): State<AppState>,
    UrlPath(slot): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let slot = parse_slot(&slot)?;
    let status = state.policies.status().into_iter().find(|s| s.slot == slot);
    Ok(Json(serde_json::json!(status)))
}

/// `PUT /v1/policies/{slot}` as JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutPolicy {
    builtin: Option<String>,
    plugin: Option<String>,
    #[serde(default)]
    params: BTreeMap<String, String>,
}

/// Swaps a slot: JSON `{"builtin"|"plugin", "params"}`, or a component uploaded as
/// `application/wasm` with its parameters in the query string.
async fn put_policy(
    State(state): State<AppState>,
    UrlPath(slot): UrlPath<String>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let slot = parse_slot(&slot)?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let spec = if content_type.starts_with("application/wasm") {
        PolicySpec { source: PolicySource::Bytes(body.to_vec()), params: query.into_iter().collect() }
    } else if content_type.starts_with("application/json") {
        let put: PutPolicy = serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("invalid JSON body: {e}")))?;
        let source = match (put.builtin, put.plugin) {
            (Some(b), None) => PolicySource::Builtin(b.parse()?),
            (None, Some(p)) => PolicySource::File(p.into()),
            _ => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "bad_request",
                    "give exactly one of `builtin` and `plugin`",
                ))
            }
        };
        PolicySpec { source, params: put.params.into_iter().collect() }
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send application/json or application/wasm",
        ));
    };
    let policies = state.policies.clone();
    let status = tokio::task::spawn_blocking(move || policies.swap(slot, spec)).await.map_err(|e| {
        tracing::error!(error = %e, "policy swap task failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the daemon's log")
    })??;
    Ok(Json(serde_json::json!(status)))
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
pub fn serve(config: Config) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    std::fs::create_dir_all(&config.state_dir)?;
    let token = admin_token(&config)?;
    let engine = PolicyEngine::new(config.engine.clone())?;
    let policies = Arc::new(PolicySet::new(engine, config.limits));
    for (slot, spec) in &config.slots {
        policies.swap(*slot, spec.clone()).map_err(|e| anyhow::anyhow!("policy.slots.{slot}: {e}"))?;
    }
    let state = AppState::new(policies, &token);
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
