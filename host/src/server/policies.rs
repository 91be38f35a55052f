//! `/v1/policies`: show each slot, and swap one (JSON reference or an uploaded component).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;

use std::path::Path;

use super::error::ApiError;
use super::AppState;
use crate::cache::CacheService;
use crate::catalog::{PolicyChoice, StoredSource};
use crate::policy::{LoadError, PolicySource, PolicySpec, Slot, SlotStatus};

fn parse_slot(slot: &str) -> Result<Slot, ApiError> {
    slot.parse().map_err(|e: String| ApiError::new(StatusCode::NOT_FOUND, "unknown_slot", e))
}

pub async fn list_policies(State(state): State<AppState>) -> Json<serde_json::Value> {
    let shadows = state.cache.workload().shadows();
    let slots: Vec<serde_json::Value> = state
        .policies()
        .status()
        .into_iter()
        .map(|status| {
            let shadow = shadows.get(status.slot).map(|s| s.status());
            let mut value = serde_json::json!(status);
            value["shadow"] = shadow.unwrap_or(serde_json::Value::Null);
            value
        })
        .collect();
    Json(serde_json::Value::Array(slots))
}

/// `PUT /v1/policies/{slot}/shadow`: attach a candidate as the slot's shadow (replacing one).
pub async fn put_shadow(
    State(state): State<AppState>,
    UrlPath(slot): UrlPath<String>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let slot = parse_slot(&slot)?;
    let spec = spec_from(&state, query, &headers, &body)?;
    let source = match &spec.source {
        PolicySource::Builtin(_) => "builtin".to_string(),
        PolicySource::File(path) => path.display().to_string(),
        PolicySource::Bytes(_) => "upload".to_string(),
    };
    let cache = state.cache.clone();
    let status = tokio::task::spawn_blocking(move || -> Result<serde_json::Value, ApiError> {
        let entries = cache.shadow_seed()?;
        let policies = cache.policies();
        let shadow =
            crate::lab::shadow::Shadow::attach(policies.engine(), policies.limits(), slot, spec, source, entries)?;
        let status = shadow.status();
        cache.workload().shadows().put(shadow);
        tracing::info!(%slot, shadow = %status["name"], "shadow policy attached");
        Ok(status)
    })
    .await
    .map_err(|e| ApiError::internal(&e))??;
    Ok(Json(status))
}

/// `DELETE /v1/policies/{slot}/shadow`.
pub async fn delete_shadow(
    State(state): State<AppState>,
    UrlPath(slot): UrlPath<String>,
) -> Result<StatusCode, ApiError> {
    let slot = parse_slot(&slot)?;
    if state.cache.workload().shadows().remove(slot) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "no_shadow", format!("the {slot} slot has no shadow")))
    }
}

pub async fn show_policy(
    State(state): State<AppState>,
    UrlPath(slot): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let slot = parse_slot(&slot)?;
    let status = state.policies().status().into_iter().find(|s| s.slot == slot);
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

/// The policy a `PUT` names: JSON `{builtin|plugin, params}` or an uploaded component (params in
/// the query).
fn spec_from(
    state: &AppState,
    query: BTreeMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<PolicySpec, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let spec = if content_type.starts_with("application/wasm") {
        PolicySpec { source: PolicySource::Bytes(body.to_vec()), params: query.into_iter().collect() }
    } else if content_type.starts_with("application/json") {
        let put: PutPolicy =
            serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
        let source = match (put.builtin, put.plugin) {
            (Some(b), None) => PolicySource::Builtin(b.parse()?),
            (None, Some(p)) => {
                let path = state.plugin_sources.confine_path(std::path::Path::new(&p)).map_err(|e| {
                    let status = match e {
                        crate::image::ImageError::Forbidden(_) => StatusCode::FORBIDDEN,
                        _ => StatusCode::UNPROCESSABLE_ENTITY,
                    };
                    let code = if status == StatusCode::FORBIDDEN { "source_not_allowed" } else { "plugin_unreadable" };
                    ApiError::new(status, code, e.to_string())
                })?;
                PolicySource::File(path)
            }
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
    Ok(spec)
}

/// Swaps a slot: JSON `{"builtin"|"plugin", "params"}`, or a component uploaded as
/// `application/wasm` with its parameters in the query string.
pub async fn put_policy(
    State(state): State<AppState>,
    UrlPath(slot): UrlPath<String>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let slot = parse_slot(&slot)?;
    let spec = spec_from(&state, query, &headers, &body)?;
    let cache = state.cache.clone();
    let plugin_dir = state.plugin_dir.clone();
    let status = tokio::task::spawn_blocking(move || -> Result<SlotStatus, ApiError> {
        let status = cache.policies().swap(slot, spec.clone())?;
        remember(&cache, &plugin_dir, slot, &spec, &status)?;
        Ok(status)
    })
    .await
    .map_err(|e| ApiError::internal(&e))??;
    let _ = state.policy_events.send(status.clone());
    Ok(Json(serde_json::json!(status)))
}

/// Records the slot's new policy in the catalog (an upload is kept as
/// `<plugin_dir>/<sha256>.wasm`), so the choice survives a restart.
fn remember(
    cache: &CacheService,
    plugin_dir: &Path,
    slot: Slot,
    spec: &PolicySpec,
    status: &SlotStatus,
) -> Result<(), ApiError> {
    let source = match &spec.source {
        PolicySource::Builtin(b) => StoredSource::Builtin { name: b.name().to_string() },
        PolicySource::File(path) => StoredSource::File { path: path.display().to_string() },
        PolicySource::Bytes(bytes) => {
            let sha256 = status.digest.clone().unwrap_or_default();
            std::fs::create_dir_all(plugin_dir).map_err(|e| ApiError::internal(&e))?;
            let tmp = plugin_dir.join(format!(".{sha256}.tmp"));
            std::fs::write(&tmp, bytes)
                .and_then(|()| std::fs::rename(&tmp, plugin_dir.join(format!("{sha256}.wasm"))))
                .map_err(|e| ApiError::internal(&e))?;
            StoredSource::Upload { sha256 }
        }
    };
    let choice = PolicyChoice { source, params: spec.params.clone() };
    cache.catalog().write(|w| w.put_policy_choice(&slot.to_string(), &choice)).map_err(|e| ApiError::internal(&e))
}

/// The policy spec a stored choice stands for. A plugin file named by a client must still be
/// allowed by `plugin_dirs`.
pub fn stored_spec(
    plugin_dir: &Path,
    allowed: &crate::image::source::FileSources,
    choice: &PolicyChoice,
) -> Result<PolicySpec, String> {
    let source = match &choice.source {
        StoredSource::Builtin { name } => PolicySource::Builtin(name.parse().map_err(|e: LoadError| e.to_string())?),
        StoredSource::File { path } => {
            PolicySource::File(allowed.confine_path(Path::new(path)).map_err(|e| e.to_string())?)
        }
        StoredSource::Upload { sha256 } => PolicySource::File(plugin_dir.join(format!("{sha256}.wasm"))),
    };
    Ok(PolicySpec { source, params: choice.params.clone() })
}
