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
    Stream { reader: Box<dyn Read + Send>, len: Option<u64> },
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Opened::File(file) => f.debug_tuple("File").field(file).finish(),
            Opened::Stream { len, .. } => f.debug_struct("Stream").field("len", len).finish_non_exhaustive(),
        }
    }
}

/// What a source says about the image before its bytes arrive (Glance's metadata).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    pub disk_format: Option<DiskFormat>,
    pub expected: Expected,
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(10)).timeout_read(Duration::from_secs(60)).build()
}

fn http_error(url: &str, e: ureq::Error) -> ImageError {
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

fn stream(url: &str, token: Option<&str>) -> Result<Opened, ImageError> {
    let mut request = agent().get(url);
    if let Some(token) = token {
        request = request.set("X-Auth-Token", token);
    }
    let response = request.call().map_err(|e| http_error(url, e))?;
    let len = response.header("Content-Length").and_then(|v| v.trim().parse().ok());
    Ok(Opened::Stream { reader: Box::new(response.into_reader()), len })
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
    /// state directory: its catalog, keys and tokens).
    Within { dirs: Vec<PathBuf>, except: Vec<PathBuf> },
}

impl FileSources {
    /// The location to read: for a file, its canonical path once it passed the check, so a
    /// symlink swapped in later is not followed out of the allowed directories.
    pub fn confine(&self, location: Location) -> Result<Location, ImageError> {
        let (Location::File(path), FileSources::Within { dirs, except }) = (&location, self) else {
            return Ok(location);
        };
        if dirs.is_empty() {
            return Err(ImageError::Forbidden(format!(
                "{}: file sources are disabled; list the directories images may come from in image_source_dirs",
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
                "{} (resolved to {}) is outside image_source_dirs ({}); add its directory there to allow it",
                path.display(),
                real.display(),
                allowed.join(", ")
            )));
        }
        Ok(Location::File(real))
    }
}

/// Opens `location`; for Glance, also returns the image's metadata. `token` is sent to Glance
/// as `X-Auth-Token`.
pub fn open(location: &Location, token: Option<&str>) -> Result<(Opened, Metadata), ImageError> {
    match location {
        Location::File(path) => Ok((Opened::File(open_regular(path)?), Metadata::default())),
        Location::Url(url) => Ok((stream(url, None)?, Metadata::default())),
        Location::Glance { endpoint, image_id } => {
            let url = format!("{endpoint}/v2/images/{image_id}");
            let mut request = agent().get(&url);
            if let Some(token) = token {
                request = request.set("X-Auth-Token", token);
            }
            let response = request.call().map_err(|e| http_error(&url, e))?;
            // Metadata is small; a bound keeps a hostile endpoint from feeding us gigabytes.
            let meta: serde_json::Value = serde_json::from_reader(response.into_reader().take(1 << 20))
                .map_err(|e| ImageError::Download(format!("{url}: invalid image metadata: {e}")))?;
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
            let opened = stream(&format!("{url}/file"), token)?;
            Ok((opened, Metadata { disk_format, expected }))
        }
    }
}
