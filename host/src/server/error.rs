//! The one error shape clients see: `{"error": {"code", "message"}}`, mapped from each
//! module's errors in one place. Internal failures are logged and reported without details.
#![forbid(unsafe_code)]

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::cache::{CacheError, FailureClass};
use crate::policy::LoadError;

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

    /// 400 `bad_request`: the request itself is wrong; `message` names what and how.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
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
            LoadError::WitVersion { .. } => "wit_version",
            _ => "plugin_rejected",
        };
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, e.to_string())
    }
}

impl ApiError {
    pub fn internal(what: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %what, "internal error");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the daemon's log")
    }
}

impl From<CacheError> for ApiError {
    fn from(e: CacheError) -> Self {
        let (status, code) = match &e {
            CacheError::ImageNotFound(_) | CacheError::ImageGone { .. } => (StatusCode::NOT_FOUND, "image_not_found"),
            CacheError::VolumeNotFound(_) => (StatusCode::NOT_FOUND, "volume_not_found"),
            CacheError::EntryNotFound(_) => (StatusCode::NOT_FOUND, "entry_not_found"),
            CacheError::TooSmall { .. } => (StatusCode::BAD_REQUEST, "volume_too_small"),
            CacheError::Invalid(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            CacheError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            CacheError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            CacheError::Image { source: crate::image::ImageError::Forbidden(_), .. } => {
                (StatusCode::FORBIDDEN, "source_not_allowed")
            }
            CacheError::WaitTimedOut { .. } => (StatusCode::SERVICE_UNAVAILABLE, "fill_wait_timeout"),
            // Nobody reads this answer; a status that says so, for the access log.
            CacheError::Cancelled => (StatusCode::REQUEST_TIMEOUT, "client_gone"),
            _ => return storage_or_source(e),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// A fill's or a write's failure: the image's fault (422, with the reason) or the storage's
/// (507 or 503, retryable, the details only in the log).
fn storage_or_source(e: CacheError) -> ApiError {
    match e.class() {
        FailureClass::Source => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "image_unusable", e.to_string()),
        FailureClass::ImageGone => ApiError::new(StatusCode::NOT_FOUND, "image_not_found", e.to_string()),
        FailureClass::NoSpace => {
            tracing::error!(error = %e, "out of space");
            ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                "the backend or the state directory is out of space (or cannot hold a volume this large); free space, then retry",
            )
        }
        FailureClass::Unavailable => {
            tracing::error!(error = %e, "storage failure");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "the backend or the catalog failed; retry later (details in the daemon's log)",
            )
        }
    }
}

/// Rewrites an error response that is not JSON (axum's own rejections: 413 body too large, 405
/// method not allowed, 400 for an undecodable path, 415) into the one error shape, keeping its
/// status and headers such as `Allow`.
pub async fn json_errors(response: axum::response::Response, max_body: usize) -> axum::response::Response {
    use axum::http::header;
    let status = response.status();
    let is_json = response.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes().starts_with(b"application/json") || v.as_bytes().starts_with(b"text/event-stream")
    });
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let (code, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ("payload_too_large", format!(
                "the request body is over the limit of {max_body} bytes (raise policy.max_plugin_mib for larger plugins)"
            ))
        }
        StatusCode::METHOD_NOT_ALLOWED => {
            let allow = parts.headers.get(header::ALLOW).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            ("method_not_allowed", format!("this route takes {allow}"))
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", text),
        s if s.is_server_error() => ("internal", "internal error; see the daemon's log".to_string()),
        _ => ("bad_request", if text.is_empty() { "bad request".to_string() } else { text }),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    let mut out = (status, Json(body)).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}
