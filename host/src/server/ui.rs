//! `/ui`: the web console, one page and its script and style, embedded in the binary.
//!
//! The page holds no data: it asks for the admin token once (kept in the tab's session
//! storage) and calls the same admin API as the CLI, so these routes need no token. A strict
//! Content-Security-Policy allows only this daemon's own script, style and API.
#![forbid(unsafe_code)]

use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use super::AppState;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/console.js");
const STYLE: &str = include_str!("ui/console.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The console's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
        .route("/ui/console.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/ui/console.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
}
