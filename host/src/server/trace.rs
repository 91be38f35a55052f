//! `GET /v1/trace`: the workload trace the daemon recorded, for the policy lab.
#![forbid(unsafe_code)]

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::ApiError;
use super::AppState;
use crate::lab::trace;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceQuery {
    /// csv (default), jsonl, or libcachesim.
    format: Option<String>,
}

pub async fn get_trace(State(state): State<AppState>, Query(q): Query<TraceQuery>) -> Result<Response, ApiError> {
    let format = q.format.unwrap_or_else(|| "csv".into());
    if !["csv", "jsonl", "libcachesim"].contains(&format.as_str()) {
        return Err(ApiError::bad_request(format!("format {format:?}: expected csv, jsonl or libcachesim")));
    }
    if state.cache.workload().recorder().is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "trace_disabled",
            "this daemon records no workload trace (trace.max_mib = 0 in its configuration)",
        ));
    }
    let cache = state.cache.clone();
    let body = tokio::task::spawn_blocking(move || -> std::io::Result<(Vec<u8>, &'static str)> {
        let records = cache.workload().recorder().map(|r| r.export()).transpose()?.unwrap_or_default();
        let mut out = Vec::new();
        let content_type = match format.as_str() {
            "jsonl" => {
                for r in &records {
                    serde_json::to_writer(&mut out, &r.json())?;
                    out.push(b'\n');
                }
                "application/x-ndjson"
            }
            "libcachesim" => {
                trace::write_libcachesim(&records, &mut out)?;
                "text/csv"
            }
            _ => {
                out.extend_from_slice(trace::HEADER.as_bytes());
                out.push(b'\n');
                for r in &records {
                    r.write_csv(&mut out)?;
                }
                "text/csv"
            }
        };
        Ok((out, content_type))
    })
    .await
    .map_err(|e| ApiError::internal(&e))?
    .map_err(|e| ApiError::internal(&e))?;
    Ok(([(header::CONTENT_TYPE, body.1)], body.0).into_response())
}
