//! What version of an image its source holds now, without downloading it: for refresh.
//!
//! - a file: its size and modification time;
//! - a URL: `HEAD`'s `ETag`, else `Last-Modified`, else `Content-Length` (a server that sends
//!   none of them cannot be watched: an error says so);
//! - Glance v2: the image's `updated_at` and checksum from its metadata.
//!
//! Two versions are only compared for equality; their text is for logs.
#![forbid(unsafe_code)]

use super::source::{agent, glance_metadata, http_error, open_regular, refuse_redirect, Location, SourceLimits};
use super::ImageError;

/// The version the source holds now.
pub fn version(location: &Location, token: Option<&str>, limits: &SourceLimits) -> Result<String, ImageError> {
    match location {
        Location::File(path) => {
            let meta = open_regular(path)?.metadata().map_err(|e| ImageError::io("reading the image's metadata", e))?;
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            Ok(format!("file size={} mtime_ns={modified}", meta.len()))
        }
        Location::Url(url) => {
            let mut request = agent(limits).head(url);
            if let Some(token) = token {
                request = request.set("X-Auth-Token", token);
            }
            let response = request.call().map_err(|e| http_error(url, e))?;
            refuse_redirect(url, &response)?;
            let header = |name: &str| response.header(name).map(str::trim).filter(|v| !v.is_empty());
            if let Some(etag) = header("ETag") {
                return Ok(format!("etag {etag}"));
            }
            if let Some(modified) = header("Last-Modified") {
                return Ok(format!("last-modified {modified}"));
            }
            if let Some(len) = header("Content-Length") {
                return Ok(format!("content-length {len}"));
            }
            Err(ImageError::Download(format!(
                "{url}: the server sends no ETag, Last-Modified or Content-Length, so changes cannot be seen"
            )))
        }
        Location::Glance { endpoint, image_id } => {
            let (url, meta) = glance_metadata(endpoint, image_id, token, limits)?;
            let field = |name: &str| meta.get(name).and_then(|v| v.as_str()).unwrap_or("").to_string();
            if field("updated_at").is_empty() && field("checksum").is_empty() && field("os_hash_value").is_empty() {
                return Err(ImageError::Download(format!("{url}: the metadata has no updated_at or checksum")));
            }
            Ok(format!(
                "glance updated_at={} checksum={} hash={}",
                field("updated_at"),
                field("checksum"),
                field("os_hash_value")
            ))
        }
    }
}
