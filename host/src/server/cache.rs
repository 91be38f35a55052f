//! `/v1/images`, `/v1/volumes` and `/v1/cache`: the cache service over HTTP. Creates and
//! deletes touch the backend and the catalog, so they run on the blocking pool.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::paging::Paging;
use super::AppState;
use crate::cache::evict::Pin;
use crate::cache::{images, CacheError, Cancel, CreateVolume};
use crate::catalog::VolumeRecord;
use crate::image::DiskFormat;

/// Runs blocking cache work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CacheError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(&e))?.map_err(ApiError::from)
}

fn body<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewImage {
    id: Option<String>,
    name: String,
    source: String,
    disk_format: String,
    checksum: Option<String>,
    refresh_interval_seconds: Option<u64>,
}

pub async fn create_image(
    State(state): State<AppState>,
    raw: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: NewImage = body(&raw)?;
    let disk_format: DiskFormat = req.disk_format.parse().map_err(ApiError::bad_request)?;
    let new = images::NewImage {
        id: req.id,
        name: req.name,
        source: req.source,
        disk_format,
        checksum: req.checksum,
        refresh_interval_seconds: req.refresh_interval_seconds,
    };
    let cache = state.cache.clone();
    let image = blocking(move || cache.register_image(new)).await?;
    Ok((StatusCode::CREATED, Json(json!(image))))
}

/// `GET /v1/images[?limit=N][&marker=ID]`: images by ascending id, a page at a time with
/// `limit` (see [`Paging`]).
pub async fn list_images(
    State(state): State<AppState>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<(HeaderMap, Json<Value>), ApiError> {
    let paging = Paging::from_query(&query, "image")?;
    let cache = state.cache.clone();
    let (after, rows) = (paging.marker.clone(), paging.rows());
    let images = blocking(move || Ok(cache.catalog().read(|r| r.images_page(after.as_deref(), rows))?)).await?;
    let headers = paging.next_link("/v1/images?", images.len(), images.last().map(|i| i.id.as_str()));
    Ok((headers, Json(json!(images))))
}

pub async fn show_image(State(state): State<AppState>, UrlPath(id): UrlPath<String>) -> Result<Json<Value>, ApiError> {
    let cache = state.cache.clone();
    let image = blocking(move || cache.catalog().read(|r| r.image(&id))?.ok_or(CacheError::ImageNotFound(id))).await?;
    Ok(Json(json!(image)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImagePatch {
    name: Option<String>,
    source: Option<String>,
    checksum: Option<String>,
    refresh_interval_seconds: Option<u64>,
}

/// Changes an image's metadata and its `updated_at`: its cache entries are then stale.
pub async fn patch_image(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
    raw: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let patch: ImagePatch = body(&raw)?;
    let patch = images::ImagePatch {
        name: patch.name,
        source: patch.source,
        checksum: patch.checksum,
        refresh_interval_seconds: patch.refresh_interval_seconds,
    };
    let cache = state.cache.clone();
    let image = blocking(move || cache.patch_image(&id, patch)).await?;
    Ok(Json(json!(image)))
}

pub async fn delete_image(State(state): State<AppState>, UrlPath(id): UrlPath<String>) -> Result<StatusCode, ApiError> {
    let cache = state.cache.clone();
    blocking(move || cache.delete_image(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewVolume {
    image_id: String,
    /// GiB.
    size: u64,
    project_id: Option<String>,
    user_id: Option<String>,
}

fn volume_json(v: &VolumeRecord) -> Value {
    json!(v)
}

pub async fn create_volume(
    State(state): State<AppState>,
    raw: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: NewVolume = body(&raw)?;
    if req.size == 0 || req.size > 64 * 1024 {
        return Err(ApiError::bad_request("size: expected 1 to 65536 GiB"));
    }
    let cache = state.cache.clone();
    // The server drops this handler when its client disconnects: the guard then cancels a
    // wait for another request's fill, which frees the blocking thread.
    let cancel = Cancel::new();
    let on_disconnect = cancel.on_drop();
    let created = blocking(move || {
        let req = CreateVolume {
            image_id: req.image_id,
            size: req.size,
            project_id: req.project_id.unwrap_or_else(|| "admin".into()),
            user_id: req.user_id.unwrap_or_else(|| "admin".into()),
        };
        cache.create_volume_with(&req, &cancel)
    })
    .await;
    on_disconnect.disarm();
    let created = created?;
    Ok((StatusCode::CREATED, Json(volume_json(&created.volume))))
}

/// Lists volumes; the internal tenant's cache volumes only with `all_tenants=1`.
/// `GET /v1/volumes[?all_tenants=1][&limit=N][&marker=ID]`: volumes by ascending id. With
/// `limit`, a full page carries `Link: <...&marker=LAST>; rel="next"` for the next one.
pub async fn list_volumes(
    State(state): State<AppState>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<(HeaderMap, Json<Value>), ApiError> {
    let all = match query.get("all_tenants").map(String::as_str) {
        None | Some("0" | "false") => false,
        Some("1" | "true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!("all_tenants: expected 1, true, 0 or false, got {other:?}")))
        }
    };
    let paging = Paging::from_query(&query, "volume")?;
    let cache = state.cache.clone();
    let internal = cache.config().internal.project_id.clone();
    let (after, rows) = (paging.marker.clone(), paging.rows());
    let volumes = blocking(move || {
        let keep = |v: &VolumeRecord| all || v.project_id != internal;
        Ok(cache.catalog().read(|r| r.volumes_page(after.as_deref(), rows, keep))?)
    })
    .await?;
    let path = if all { "/v1/volumes?all_tenants=1&" } else { "/v1/volumes?" };
    let headers = paging.next_link(path, volumes.len(), volumes.last().map(|v| v.id.as_str()));
    Ok((headers, Json(json!(volumes.iter().map(volume_json).collect::<Vec<_>>()))))
}

pub async fn show_volume(State(state): State<AppState>, UrlPath(id): UrlPath<String>) -> Result<Json<Value>, ApiError> {
    let cache = state.cache.clone();
    let volume =
        blocking(move || cache.catalog().read(|r| r.volume(&id))?.ok_or(CacheError::VolumeNotFound(id))).await?;
    Ok(Json(volume_json(&volume)))
}

pub async fn delete_volume(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> Result<StatusCode, ApiError> {
    let cache = state.cache.clone();
    blocking(move || cache.delete_volume(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/cache/entries[?limit=N][&marker=ID]`: the scope's entries by ascending id, a page
/// at a time with `limit` (see [`Paging`]).
pub async fn list_entries(
    State(state): State<AppState>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<(HeaderMap, Json<Value>), ApiError> {
    let paging = Paging::from_query(&query, "entry")?;
    let after = match &paging.marker {
        None => None,
        Some(text) => Some(text.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!(
                "marker: expected the id of the last entry of the previous page (a whole number), got {text:?}"
            ))
        })?),
    };
    let cache = state.cache.clone();
    let rows = paging.rows();
    let entries = blocking(move || cache.scope_entries_page(after, rows)).await?;
    let last = entries.last().map(|e| e.id.to_string());
    let headers = paging.next_link("/v1/cache/entries?", entries.len(), last.as_deref());
    Ok((headers, Json(json!(entries))))
}

pub async fn evict_entry(State(state): State<AppState>, UrlPath(id): UrlPath<String>) -> Result<StatusCode, ApiError> {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "entry_not_found", format!("cache entry {id} not found")))?;
    let cache = state.cache.clone();
    blocking(move || cache.evict_entry(id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn stats(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let cache = state.cache.clone();
    let stats = blocking(move || cache.stats()).await?;
    Ok(Json(json!(stats)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WarmRequest {
    image_id: String,
}

/// `POST /v1/cache/warm`: fills the image's cache entry in the background, under the policies,
/// without creating a volume. 202 with a `warm_id`; progress and the end are events
/// (`image_volume_cache.progress`, `image_volume_cache.warm` with that `warm_id`). The warm-up
/// goes on if the client goes away.
pub async fn warm(
    State(state): State<AppState>,
    raw: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: WarmRequest = body(&raw)?;
    let cache = state.cache.clone();
    let image_id = req.image_id.clone();
    let warm_id = blocking(move || cache.begin_warm(&image_id)).await?;
    let cache = state.cache.clone();
    let image_id = req.image_id.clone();
    tokio::task::spawn_blocking(move || {
        // The outcome is logged and published as an event by `warm` itself.
        let _ = cache.warm(&image_id, warm_id);
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"warm_id": warm_id, "image_id": req.image_id, "status": "started", "events": "/v1/events"})),
    ))
}

fn entry_id(id: &str) -> Result<u64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "entry_not_found", format!("cache entry {id} not found")))
}

/// `POST /v1/cache/entries/{id}/pin`: the entry is never evicted to make room.
pub async fn pin_entry(State(state): State<AppState>, UrlPath(id): UrlPath<String>) -> Result<Json<Value>, ApiError> {
    let id = entry_id(&id)?;
    let cache = state.cache.clone();
    let entry = blocking(move || cache.pin_entry(id, Pin::Pinned)).await?;
    Ok(Json(json!(entry)))
}

/// `DELETE /v1/cache/entries/{id}/pin`.
pub async fn unpin_entry(State(state): State<AppState>, UrlPath(id): UrlPath<String>) -> Result<Json<Value>, ApiError> {
    let id = entry_id(&id)?;
    let cache = state.cache.clone();
    let entry = blocking(move || cache.pin_entry(id, Pin::Unpinned)).await?;
    Ok(Json(json!(entry)))
}
