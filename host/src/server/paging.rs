//! `?limit=N&marker=ID` on the lists that can grow large (volumes, images, cache entries): rows
//! by ascending id, a page at a time, and a `Link: <...>; rel="next"` header on a full page. A
//! marker whose row was deleted meanwhile still works: the next page starts after it.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use axum::http::header::LINK;
use axum::http::{HeaderMap, HeaderValue};

use super::error::ApiError;

/// A list request's page, checked.
#[derive(Debug)]
pub(super) struct Paging {
    /// Rows in this page; `None`: all of them.
    pub limit: Option<usize>,
    /// The id the previous page ended with.
    pub marker: Option<String>,
}

impl Paging {
    /// Reads `limit` and `marker`; `what` names the rows in the error for a bad marker
    /// ("volume", "image").
    pub fn from_query(query: &BTreeMap<String, String>, what: &str) -> Result<Self, ApiError> {
        let limit = match query.get("limit") {
            None => None,
            Some(text) => match text.parse::<usize>() {
                Ok(n) if n > 0 => Some(n),
                // More than any catalog holds: everything.
                Err(_) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => Some(usize::MAX),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "limit: expected a whole number of at least 1, got {text:?}"
                    )))
                }
            },
        };
        let marker = query.get("marker").cloned();
        if marker.as_deref() == Some("") {
            return Err(ApiError::bad_request(format!(
                "marker: expected the id of the last {what} of the previous page, got \"\""
            )));
        }
        Ok(Paging { limit, marker })
    }

    /// How many rows to read.
    pub fn rows(&self) -> usize {
        self.limit.unwrap_or(usize::MAX)
    }

    /// The `Link` header naming the next page, when a limited page came back full.
    /// `path` is the list's path with the filters to keep (`/v1/volumes?all_tenants=1&`, or
    /// `/v1/images?`); `last` is the page's last id.
    pub fn next_link(&self, path: &str, got: usize, last: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let (Some(limit), Some(last)) = (self.limit, last) {
            if got == limit {
                let next = format!("<{path}limit={limit}&marker={last}>; rel=\"next\"");
                if let Ok(value) = HeaderValue::from_str(&next) {
                    headers.insert(LINK, value);
                }
            }
        }
        headers
    }
}
