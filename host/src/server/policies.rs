//! `/v1/policies`: show each slot, and swap one (JSON reference or an uploaded component).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;

use super::error::ApiError;
use super::AppState;
use crate::policy::{PolicySource, PolicySpec, Slot};

fn parse_slot(slot: &str) -> Result<Slot, ApiError> {
    slot.parse().map_err(|e: String| ApiError::new(StatusCode::NOT_FOUND, "unknown_slot", e))
}

pub async fn list_policies(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!(state.policies().status()))
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
    let policies = state.policies().clone();
    let status =
        tokio::task::spawn_blocking(move || policies.swap(slot, spec)).await.map_err(|e| ApiError::internal(&e))??;
    let _ = state.policy_events.send(status.clone());
    Ok(Json(serde_json::json!(status)))
}
