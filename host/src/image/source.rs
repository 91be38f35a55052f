//! Where image bytes come from: a local file, an HTTP(S) URL, or a Glance v2 image
//! (`glance+http(s)://HOST[:PORT][/PREFIX]/v2/images/ID`: metadata, then `/file`). Checksums are
//! verified on the bytes as they stream: md5 (Glance's `checksum`) and `os_hash_algo` /
//! `os_hash_value` (sha256, sha512).
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::Md5;
use sha2::{Digest, Sha256, Sha512};

use super::{DiskFormat, ImageError};

/// Where an image is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    File(PathBuf),
    Url(String),
    /// A Glance v2 image: the API endpoint (scheme, host, optional path prefix) and the id.
    Glance {
        endpoint: String,
        image_id: String,
    },
}

impl Location {
    /// A path, an `http(s)://` URL, or a `glance+http(s)://.../v2/images/ID` URL.
    pub fn parse(s: &str) -> Result<Location, ImageError> {
        if let Some(rest) = s.strip_prefix("glance+") {
            if !(rest.starts_with("http://") || rest.starts_with("https://")) {
                return Err(ImageError::Unsupported(format!("{s}: expected glance+http:// or glance+https://")));
            }
            let (endpoint, image_id) = rest
                .trim_end_matches('/')
                .rsplit_once("/v2/images/")
                .filter(|(_, id)| !id.is_empty() && !id.contains('/'))
                .ok_or_else(|| ImageError::Unsupported(format!("{s}: expected .../v2/images/IMAGE_ID")))?;
            return Ok(Location::Glance { endpoint: endpoint.to_string(), image_id: image_id.to_string() });
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            return Ok(Location::Url(s.to_string()));
        }
        if s.contains("://") {
            return Err(ImageError::Unsupported(format!(
                "{s}: only files, http(s):// and glance+http(s):// are supported"
            )));
        }
        Ok(Location::File(PathBuf::from(s)))
    }
}

/// Hash algorithms Glance uses for `os_hash_algo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashAlgo {
    Sha256,
    Sha512,
}

impl std::str::FromStr for HashAlgo {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, ImageError> {
        match s {
            "sha256" => Ok(HashAlgo::Sha256),
            "sha512" => Ok(HashAlgo::Sha512),
            other => Err(ImageError::Unsupported(format!("os_hash_algo {other:?}: expected sha256 or sha512"))),
        }
    }
}

/// The checksums an image must have.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expected {
    /// Lower-case hex md5 (Glance's `checksum`).
    pub md5: Option<String>,
    /// `os_hash_algo` and lower-case hex `os_hash_value`.
    pub hash: Option<(HashAlgo, String)>,
}

impl Expected {
    pub fn is_empty(&self) -> bool {
        self.md5.is_none() && self.hash.is_none()
    }
}

/// Hashes bytes as they pass and compares at the end.
#[derive(Debug, Default)]
pub struct Checker {
    expected: Expected,
    md5: Option<Md5>,
    sha256: Option<Sha256>,
    sha512: Option<Sha512>,
}

impl Checker {
    pub fn new(expected: Expected) -> Self {
        Checker {
            md5: expected.md5.as_ref().map(|_| Md5::new()),
            sha256: matches!(expected.hash, Some((HashAlgo::Sha256, _))).then(Sha256::new),
            sha512: matches!(expected.hash, Some((HashAlgo::Sha512, _))).then(Sha512::new),
            expected,
        }
    }

    pub fn is_active(&self) -> bool {
        !self.expected.is_empty()
    }

    pub fn update(&mut self, data: &[u8]) {
        if let Some(h) = &mut self.md5 {
            h.update(data);
        }
        if let Some(h) = &mut self.sha256 {
            h.update(data);
        }
        if let Some(h) = &mut self.sha512 {
            h.update(data);
        }
    }

    /// Hashes `len` zero bytes (a hole that was never read).
    pub fn update_zeros(&mut self, len: u64) {
        if !self.is_active() {
            return;
        }
        let zeros = [0u8; 64 << 10];
        let mut left = len;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            self.update(&zeros[..n]);
            left -= n as u64;
        }
    }

    pub fn finish(self) -> Result<(), ImageError> {
        let check = |algorithm: &str, expected: &str, actual: String| {
            if expected.eq_ignore_ascii_case(&actual) {
                Ok(())
            } else {
                Err(ImageError::Checksum { algorithm: algorithm.into(), expected: expected.into(), actual })
            }
        };
        if let (Some(h), Some(want)) = (self.md5, &self.expected.md5) {
            check("md5", want, hex::encode(h.finalize()))?;
        }
        if let (Some(h), Some((_, want))) = (self.sha256, &self.expected.hash) {
            check("sha256", want, hex::encode(h.finalize()))?;
        }
        if let (Some(h), Some((_, want))) = (self.sha512, &self.expected.hash) {
            check("sha512", want, hex::encode(h.finalize()))?;
        }
        Ok(())
    }
}

/// An opened source: a seekable file, or a stream with its announced length.
pub enum Opened {
    File(File),
    /// A download; `ranged` when the server accepts Range requests for it.
    Stream {
        reader: Box<dyn Read + Send>,
        len: Option<u64>,
        ranged: Option<Ranged>,
    },
}

/// How to fetch parts of a download again (its server said `Accept-Ranges: bytes`).
#[derive(Clone, Debug)]
pub struct Ranged {
    pub url: String,
    pub token: Option<String>,
    pub limits: SourceLimits,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Opened::File(file) => f.debug_tuple("File").field(file).finish(),
            Opened::Stream { len, ranged, .. } => {
                f.debug_struct("Stream").field("len", len).field("ranged", &ranged.is_some()).finish_non_exhaustive()
            }
        }
    }
}

/// What a source says about the image before its bytes arrive (Glance's metadata).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    pub disk_format: Option<DiskFormat>,
    pub expected: Expected,
}

/// Bounds on a download, so a source that stalls or trickles cannot hold a registration or a
/// fill (and every request waiting for it) for hours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceLimits {
    /// No byte for this long: the download fails.
    pub idle: Duration,
    /// Fewer bytes than this per second, averaged over `window`: the download fails (0: off).
    pub min_bytes_per_second: u64,
    pub window: Duration,
    /// The whole download, from the request to the last byte.
    pub deadline: Option<Duration>,
    /// Follow HTTP redirects. Off where URL sources are confined: a redirect could lead
    /// anywhere.
    pub redirects: Redirects,
}

/// Whether a download follows HTTP redirects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Redirects {
    Follow,
    Refuse,
}

impl Default for SourceLimits {
    fn default() -> Self {
        SourceLimits {
            idle: Duration::from_secs(60),
            min_bytes_per_second: 0,
            window: Duration::from_secs(30),
            deadline: None,
            redirects: Redirects::Follow,
        }
    }
}

/// A download reader that enforces [`SourceLimits`] (the idle timeout is the socket's).
struct Paced<R> {
    inner: R,
    url: String,
    limits: SourceLimits,
    started: std::time::Instant,
    window_start: std::time::Instant,
    window_bytes: u64,
}

impl<R: Read> Read for Paced<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let too_slow = |message: String| std::io::Error::new(std::io::ErrorKind::TimedOut, message);
        if let Some(deadline) = self.limits.deadline {
            if self.started.elapsed() > deadline {
                return Err(too_slow(format!(
                    "{}: the download took longer than {} s (source_deadline_seconds)",
                    self.url,
                    deadline.as_secs()
                )));
            }
        }
        let n = self.inner.read(buf)?;
        self.window_bytes += n as u64;
        let window = self.window_start.elapsed();
        if window >= self.limits.window {
            let wanted = self.limits.min_bytes_per_second.saturating_mul(window.as_secs());
            if self.window_bytes < wanted {
                return Err(too_slow(format!(
                    "{}: {} bytes in the last {} s, below the minimum of {} bytes/s (source_min_bytes_per_second)",
                    self.url,
                    self.window_bytes,
                    window.as_secs(),
                    self.limits.min_bytes_per_second
                )));
            }
            self.window_start = std::time::Instant::now();
            self.window_bytes = 0;
        }
        Ok(n)
    }
}

pub(super) fn agent(limits: &SourceLimits) -> ureq::Agent {
    let redirects = match limits.redirects {
        Redirects::Follow => 5,
        Redirects::Refuse => 0,
    };
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .timeout_read(limits.idle)
        .redirects(redirects)
        .build()
}

/// A response that is a redirect the agent did not follow.
pub(super) fn refuse_redirect(url: &str, response: &ureq::Response) -> Result<(), ImageError> {
    if (300..400).contains(&response.status()) {
        let to = response.header("Location").unwrap_or("?");
        return Err(ImageError::Forbidden(format!(
            "{url} redirected to {to}; confined sources are not followed through redirects: register the final URL"
        )));
    }
    Ok(())
}

/// Which URLs may be image sources: the daemon fetches only from origins its operator allowed,
/// so a client cannot make it reach other hosts (SSRF).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UrlSources {
    /// Any URL (the `volcache convert` command: the caller chose it).
    Any,
    /// URLs under these (scheme, host, port and path prefix).
    Within(Vec<url::Url>),
}

impl UrlSources {
    pub fn check(&self, location: &Location) -> Result<(), ImageError> {
        let UrlSources::Within(allowed) = self else { return Ok(()) };
        let text = match location {
            Location::File(_) => return Ok(()),
            Location::Url(url) => url.clone(),
            Location::Glance { endpoint, image_id } => format!("{endpoint}/v2/images/{image_id}"),
        };
        let url = url::Url::parse(&text).map_err(|e| ImageError::Unsupported(format!("{text}: {e}")))?;
        let under = |a: &url::Url| {
            let prefix = a.path().trim_end_matches('/');
            a.scheme() == url.scheme()
                && a.host_str().map(str::to_ascii_lowercase) == url.host_str().map(str::to_ascii_lowercase)
                && a.port_or_known_default() == url.port_or_known_default()
                && (prefix.is_empty() || url.path() == prefix || url.path().starts_with(&format!("{prefix}/")))
        };
        if allowed.iter().any(under) {
            return Ok(());
        }
        if allowed.is_empty() {
            return Err(ImageError::Forbidden(format!(
                "{text}: URL sources are not allowed here; list the URLs images may come from in image_source_urls"
            )));
        }
        let list: Vec<&str> = allowed.iter().map(url::Url::as_str).collect();
        Err(ImageError::Forbidden(format!(
            "{text} is not under image_source_urls ({}); add it there to allow it",
            list.join(", ")
        )))
    }
}

pub(super) fn http_error(url: &str, e: ureq::Error) -> ImageError {
    match e {
        ureq::Error::Status(code, _) => ImageError::Download(format!("{url}: HTTP {code}")),
        ureq::Error::Transport(t) => {
            // ureq's own text repeats the URL; name it once (or where a redirect led).
            let mut text = match t.url().map(|u| u.as_str()) {
                Some(at) if at != url => format!("{url}: redirected to {at}: {}", t.kind()),
                _ => format!("{url}: {}", t.kind()),
            };
            if let Some(message) = t.message() {
                text.push_str(&format!(": {message}"));
            }
            if let Some(source) = std::error::Error::source(&t) {
                text.push_str(&format!(": {source}"));
            }
            if text.contains("invalid peer certificate") {
                text.push_str(
                    " (server certificates are checked against the system's trust store: add the \
                     issuing CA there with update-ca-certificates, or point SSL_CERT_FILE at a PEM bundle)",
                );
            }
            ImageError::Download(text)
        }
    }
}

fn stream(url: &str, token: Option<&str>, limits: &SourceLimits) -> Result<Opened, ImageError> {
    let started = std::time::Instant::now();
    let mut request = agent(limits).get(url);
    if let Some(token) = token {
        request = request.set("X-Auth-Token", token);
    }
    let response = request.call().map_err(|e| http_error(url, e))?;
    refuse_redirect(url, &response)?;
    let len = response.header("Content-Length").and_then(|v| v.trim().parse().ok());
    let accepts_ranges = response.header("Accept-Ranges").is_some_and(|v| v.trim().eq_ignore_ascii_case("bytes"));
    let ranged =
        accepts_ranges.then(|| Ranged { url: url.to_string(), token: token.map(str::to_string), limits: *limits });
    let reader = Paced {
        inner: response.into_reader(),
        url: url.to_string(),
        limits: *limits,
        started,
        window_start: std::time::Instant::now(),
        window_bytes: 0,
    };
    Ok(Opened::Stream { reader: Box::new(reader), len, ranged })
}

/// Opens a file that must be a regular file. It is opened without blocking (a FIFO would
/// otherwise block the open until a writer comes) and checked with `fstat` before any read, so
/// FIFOs, devices (`/dev/zero`), sockets and directories are refused at once.
pub fn open_regular(path: &Path) -> Result<File, ImageError> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| ImageError::io(&format!("opening {}", path.display()), e))?;
    let kind = file.metadata().map_err(|e| ImageError::io(&format!("examining {}", path.display()), e))?.file_type();
    let what = if kind.is_file() {
        return Ok(file);
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    };
    Err(ImageError::Unsupported(format!("{} is {what}; image sources must be regular files", path.display())))
}

/// Which local files may be image sources: the daemon reads only what its operator allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileSources {
    /// Any file the process can read (the `volcache convert` command: the caller chose it).
    Any,
    /// Files under `dirs` (after resolving symlinks), and never under `except` (the daemon's
    /// state directory: its catalog, keys and tokens). `key` is the setting that lists `dirs`.
    Within { key: &'static str, dirs: Vec<PathBuf>, except: Vec<PathBuf> },
}

impl FileSources {
    /// The location to read: for a file, its canonical path once it passed the check, so a
    /// symlink swapped in later is not followed out of the allowed directories.
    pub fn confine(&self, location: Location) -> Result<Location, ImageError> {
        let Location::File(path) = &location else { return Ok(location) };
        self.confine_path(path).map(Location::File)
    }

    /// A local path's canonical form, if this policy allows it.
    pub fn confine_path(&self, path: &Path) -> Result<PathBuf, ImageError> {
        let FileSources::Within { key, dirs, except } = self else { return Ok(path.to_path_buf()) };
        if dirs.is_empty() {
            return Err(ImageError::Forbidden(format!(
                "{}: files are not allowed here; list the directories they may come from in {key}",
                path.display()
            )));
        }
        let real =
            std::fs::canonicalize(path).map_err(|e| ImageError::io(&format!("resolving {}", path.display()), e))?;
        if except.iter().any(|d| real.starts_with(d)) {
            return Err(ImageError::Forbidden(format!(
                "{} is inside the daemon's state directory; it cannot be an image source",
                path.display()
            )));
        }
        if !dirs.iter().any(|d| real.starts_with(d)) {
            let allowed: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            return Err(ImageError::Forbidden(format!(
                "{} (resolved to {}) is outside {key} ({}); add its directory there to allow it",
                path.display(),
                real.display(),
                allowed.join(", ")
            )));
        }
        Ok(real)
    }
}

/// A Glance v2 image's metadata (`GET {endpoint}/v2/images/{id}`), and that URL.
pub(super) fn glance_metadata(
    endpoint: &str,
    image_id: &str,
    token: Option<&str>,
    limits: &SourceLimits,
) -> Result<(String, serde_json::Value), ImageError> {
    let url = format!("{endpoint}/v2/images/{image_id}");
    let mut request = agent(limits).get(&url);
    if let Some(token) = token {
        request = request.set("X-Auth-Token", token);
    }
    let response = request.call().map_err(|e| http_error(&url, e))?;
    refuse_redirect(&url, &response)?;
    // Metadata is small; a bound keeps a hostile endpoint from feeding us gigabytes.
    let meta = serde_json::from_reader(response.into_reader().take(1 << 20))
        .map_err(|e| ImageError::Download(format!("{url}: invalid image metadata: {e}")))?;
    Ok((url, meta))
}

/// Opens `location`; for Glance, also returns the image's metadata. `token` is sent to Glance
/// as `X-Auth-Token`.
pub fn open(location: &Location, token: Option<&str>, limits: &SourceLimits) -> Result<(Opened, Metadata), ImageError> {
    match location {
        Location::File(path) => Ok((Opened::File(open_regular(path)?), Metadata::default())),
        Location::Url(url) => Ok((stream(url, None, limits)?, Metadata::default())),
        Location::Glance { endpoint, image_id } => {
            let (url, meta) = glance_metadata(endpoint, image_id, token, limits)?;
            let field = |name: &str| meta.get(name).and_then(|v| v.as_str()).filter(|s| !s.is_empty());
            match field("status") {
                Some("active") | None => {}
                Some(status) => return Err(ImageError::Download(format!("{url}: image is {status}, not active"))),
            }
            let disk_format = field("disk_format").map(str::parse).transpose().map_err(ImageError::Unsupported)?;
            let hash = match (field("os_hash_algo"), field("os_hash_value")) {
                (Some(algo), Some(value)) => Some((algo.parse()?, value.to_ascii_lowercase())),
                _ => None,
            };
            let expected = Expected { md5: field("checksum").map(str::to_ascii_lowercase), hash };
            let opened = stream(&format!("{url}/file"), token, limits)?;
            Ok((opened, Metadata { disk_format, expected }))
        }
    }
}
