//! Configuration: a TOML file read into [`RawConfig`] (serde, Cinder option names where they
//! exist), then validated into [`Config`] before anything starts. Every error names its key.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::image::source::FileSources;

use crate::cache::{CacheConfig, InternalTenant};
use crate::policy::{Builtin, CinderLimits, EngineOptions, PolicySource, PolicySpec, SizeBasis, Slot};
use crate::sparse::WriteMode;

/// The address `volcache serve` listens on unless told otherwise: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8470";

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.into() }
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub admin_token: Option<String>,
    /// This host's name in cache entries (default: the system's host name).
    pub host: Option<String>,
    /// Hosts sharing one backend share one cache scope: their cluster.
    pub cluster_name: Option<String>,
    /// After SIGTERM, how long requests in flight may finish (default 10).
    pub shutdown_grace_seconds: Option<u64>,
    /// Directories whose files may be image sources (default: none; URLs and Glance work).
    #[serde(default)]
    pub image_source_dirs: Vec<PathBuf>,
    /// URLs (scheme, host, port, path prefix) images may be downloaded from, Glance endpoints
    /// included (default: none).
    #[serde(default)]
    pub image_source_urls: Vec<String>,
    /// Directories whose files may be named as plugins (default: none; uploads work).
    #[serde(default)]
    pub plugin_dirs: Vec<PathBuf>,
    #[serde(default)]
    pub sources: RawSources,
    #[serde(default)]
    pub api: RawApi,
    #[serde(default)]
    pub backend: RawBackend,
    #[serde(default)]
    pub internal_tenant: RawInternalTenant,
    #[serde(default)]
    pub cache: RawCache,
    #[serde(default)]
    pub policy: RawPolicy,
    #[serde(default)]
    pub trace: RawTrace,
}

/// `[trace]`: the workload trace the policy lab replays.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrace {
    /// Most MiB of trace kept on disk (two rotating files); 0 records nothing (default 64).
    pub max_mib: Option<u64>,
}

/// `[api]`: which routes need no token.
/// `[sources]`: bounds on image downloads.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSources {
    /// No byte for this long fails the download (default 60).
    pub idle_timeout_seconds: Option<u64>,
    /// Slower than this, averaged over 30 s, fails the download (default 65536; 0: off).
    pub min_bytes_per_second: Option<u64>,
    /// The longest a download may take (default 21600, six hours; 0: no limit).
    pub deadline_seconds: Option<u64>,
    /// The window over which the minimum rate is measured (default 30).
    pub window_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    /// `GET /healthz` without a token (default true).
    pub public_health: Option<bool>,
    /// `GET /metrics` without a token (default true).
    pub public_metrics: Option<bool>,
    /// Seconds a client has to send a request's headers; also closes idle keep-alive
    /// connections (default 10).
    pub header_read_timeout_seconds: Option<u64>,
    /// Open connections at most (default 16384; fewer if the file descriptor limit is lower).
    pub max_connections: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    /// `file` (default) or `rbd` (a build with the `rbd` feature).
    pub kind: Option<String>,
    /// Directory of the file backend's volumes (default: `<state_dir>/volumes`).
    pub path: Option<PathBuf>,
    pub filesystem_thin_provisioning: Option<bool>,
    /// RBD: pool (default `rbd`).
    pub rbd_pool: Option<String>,
    /// RBD: ceph.conf path (default: librados' own search, `CEPH_CONF` first).
    pub rbd_ceph_conf: Option<PathBuf>,
    /// RBD: rados user without `client.` (default `admin`).
    pub rbd_user: Option<String>,
    /// RBD: keyring path (default: the one ceph.conf names).
    pub rbd_keyring_conf: Option<PathBuf>,
    /// RBD: clones deeper than this are flattened in the background (default 5).
    pub rbd_max_clone_depth: Option<u32>,
    pub rbd_thin_provisioning: Option<bool>,
    /// RBD: images are named `<prefix><volume>` (default `volcache-`).
    pub rbd_image_prefix: Option<String>,
}

/// Where volumes live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    File { dir: PathBuf },
    Rbd(crate::backend::RbdOptions),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInternalTenant {
    /// Cinder's `cinder_internal_tenant_project_id`.
    pub project_id: Option<String>,
    /// Cinder's `cinder_internal_tenant_user_id`.
    pub user_id: Option<String>,
    /// Quota of the internal tenant (0 = unlimited).
    pub quota_gigabytes: Option<u64>,
    pub quota_volumes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub image_volume_cache_enabled: Option<bool>,
    pub image_volume_cache_max_size_gb: Option<u64>,
    pub image_volume_cache_max_count: Option<u64>,
    pub size_basis: Option<String>,
    /// How long a create waits for another create's fill of the same image (default 1800).
    pub fill_wait_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub memory_limit_mib: Option<u64>,
    /// Largest plugin component accepted, from a file or an upload (default 64).
    pub max_plugin_mib: Option<u64>,
    pub call_deadline_ms: Option<u64>,
    /// How often the eviction policy is asked which entries expire (default 60; 0: never).
    pub expire_interval_seconds: Option<u64>,
    #[serde(default)]
    pub slots: BTreeMap<String, RawSlot>,
}

/// `[policy.slots.<slot>]`: exactly one of `builtin` and `plugin`, plus `params`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlot {
    pub builtin: Option<String>,
    pub plugin: Option<PathBuf>,
    #[serde(default)]
    pub params: BTreeMap<String, toml::Value>,
}

/// Limits of the HTTP server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// A client must send a request's headers within this long, and a kept-alive connection
    /// with no request for this long is closed.
    pub header_read_timeout: Duration,
    /// Open connections at most; further ones are closed at once, with a log line.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits { header_read_timeout: Duration::from_secs(10), max_connections: 16384 }
    }
}

/// Which routes are public.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiOptions {
    pub public_health: bool,
    pub public_metrics: bool,
    /// Timeouts and the connection cap of the HTTP server.
    pub http: HttpLimits,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions { public_health: true, public_metrics: true, http: HttpLimits::default() }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub api: ApiOptions,
    pub state_dir: PathBuf,
    pub admin_token: Option<String>,
    pub backend: BackendConfig,
    pub cache: CacheConfig,
    pub limits: CinderLimits,
    pub engine: EngineOptions,
    pub slots: Vec<(Slot, PolicySpec)>,
    /// After SIGTERM, how long requests in flight may finish before the daemon exits anyway.
    pub shutdown_grace: std::time::Duration,
    /// Which plugin files a client may name (`plugin_dirs`).
    pub plugin_sources: FileSources,
    /// Most bytes of workload trace kept under `<state>/trace`; 0 records none.
    pub trace_max_bytes: u64,
    /// How often the eviction policy's expiry rule runs (`policy.expire_interval_seconds`);
    /// zero: never.
    pub expire_interval: std::time::Duration,
}

impl Config {
    /// Reads and validates `path`, or the defaults when `None` (state under ./var).
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let raw = match path {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
                toml::from_str(&text)
                    .map_err(|source| ConfigError::Parse { path: path.into(), source: Box::new(source) })?
            }
            None => RawConfig::default(),
        };
        raw.validate()
    }
}

impl RawConfig {
    pub fn validate(self) -> Result<Config, ConfigError> {
        let listen = self.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen: SocketAddr = listen
            .parse()
            .map_err(|_| invalid("listen", format!("{listen:?} is not an address such as {DEFAULT_LISTEN}")))?;
        let state_dir = self.state_dir.unwrap_or_else(|| PathBuf::from("var"));
        if let Some(token) = &self.admin_token {
            if token.len() < 16 {
                return Err(invalid("admin_token", "must be at least 16 characters"));
            }
        }
        let basis = match self.cache.size_basis.as_deref() {
            None | Some("provisioned") => SizeBasis::Provisioned,
            Some("allocated") => SizeBasis::Allocated,
            Some(other) => {
                return Err(invalid("cache.size_basis", format!("expected provisioned or allocated, got {other:?}")))
            }
        };
        let limits = CinderLimits {
            max_size_gb: self.cache.image_volume_cache_max_size_gb.unwrap_or(0),
            max_count: self.cache.image_volume_cache_max_count.unwrap_or(0),
            basis,
        };
        let mut engine = EngineOptions { cache_dir: Some(state_dir.join("plugin-cache")), ..EngineOptions::default() };
        if let Some(mib) = self.policy.memory_limit_mib {
            if !(1..=4096).contains(&mib) {
                return Err(invalid("policy.memory_limit_mib", "must be between 1 and 4096"));
            }
            engine.memory_limit_bytes =
                usize::try_from(mib << 20).map_err(|_| invalid("policy.memory_limit_mib", "too large"))?;
        }
        if let Some(mib) = self.policy.max_plugin_mib {
            if !(1..=1024).contains(&mib) {
                return Err(invalid("policy.max_plugin_mib", "must be between 1 and 1024"));
            }
            engine.max_component_bytes =
                usize::try_from(mib << 20).map_err(|_| invalid("policy.max_plugin_mib", "too large"))?;
        }
        if let Some(ms) = self.policy.call_deadline_ms {
            if !(1..=60_000).contains(&ms) {
                return Err(invalid("policy.call_deadline_ms", "must be between 1 and 60000"));
            }
            engine.call_deadline = Duration::from_millis(ms);
        }
        // The state directory may not exist yet; its absolute path is what matters.
        let state_abs = std::fs::canonicalize(&state_dir).unwrap_or_else(|_| {
            std::env::current_dir().map(|d| d.join(&state_dir)).unwrap_or_else(|_| state_dir.clone())
        });
        let allowed = |key: &'static str, list: &[PathBuf]| -> Result<FileSources, ConfigError> {
            let mut dirs = Vec::new();
            for (i, dir) in list.iter().enumerate() {
                let real = std::fs::canonicalize(dir)
                    .map_err(|e| invalid(format!("{key}[{i}]"), format!("{}: {e}", dir.display())))?;
                dirs.push(real);
            }
            Ok(FileSources::Within { key, dirs, except: vec![state_abs.clone()] })
        };
        let file_sources = allowed("image_source_dirs", &self.image_source_dirs)?;
        let plugin_sources = allowed("plugin_dirs", &self.plugin_dirs)?;
        let mut slots = Vec::new();
        for (name, raw) in self.policy.slots {
            let key = format!("policy.slots.{name}");
            let slot: Slot = name.parse().map_err(|e: String| invalid(&key, e))?;
            let source = match (raw.builtin, raw.plugin) {
                (Some(b), None) => PolicySource::Builtin(
                    b.parse::<Builtin>().map_err(|e| invalid(format!("{key}.builtin"), e.to_string()))?,
                ),
                (None, Some(path)) => PolicySource::File(
                    plugin_sources.confine_path(&path).map_err(|e| invalid(format!("{key}.plugin"), e.to_string()))?,
                ),
                _ => return Err(invalid(&key, "set exactly one of `builtin` and `plugin`")),
            };
            let params = raw
                .params
                .into_iter()
                .map(|(k, v)| {
                    let value = match v {
                        toml::Value::String(s) => s,
                        toml::Value::Integer(i) => i.to_string(),
                        toml::Value::Boolean(b) => b.to_string(),
                        toml::Value::Float(f) => f.to_string(),
                        _ => return Err(invalid(format!("{key}.params.{k}"), "must be a string, number or boolean")),
                    };
                    Ok((k, value))
                })
                .collect::<Result<_, _>>()?;
            slots.push((slot, PolicySpec { source, params }));
        }
        let b = &self.backend;
        let rbd_keys = [
            ("rbd_pool", b.rbd_pool.is_some()),
            ("rbd_ceph_conf", b.rbd_ceph_conf.is_some()),
            ("rbd_user", b.rbd_user.is_some()),
            ("rbd_keyring_conf", b.rbd_keyring_conf.is_some()),
            ("rbd_max_clone_depth", b.rbd_max_clone_depth.is_some()),
            ("rbd_thin_provisioning", b.rbd_thin_provisioning.is_some()),
            ("rbd_image_prefix", b.rbd_image_prefix.is_some()),
        ];
        let (backend, thin) = match b.kind.as_deref().unwrap_or("file") {
            "file" => {
                if let Some((key, _)) = rbd_keys.iter().find(|(_, set)| *set) {
                    return Err(invalid(format!("backend.{key}"), "only applies with kind = \"rbd\""));
                }
                // A configured directory must exist: a typo must not silently put volumes on
                // whatever disk holds the new path. The default, under the state directory, is
                // created.
                if let Some(path) = &b.path {
                    if !path.is_dir() {
                        return Err(invalid(
                            "backend.path",
                            format!(
                                "{} is not an existing directory: create it on the file system meant for volumes (XFS or btrfs for reflinks), or fix the path",
                                path.display()
                            ),
                        ));
                    }
                }
                let dir = b.path.clone().unwrap_or_else(|| state_dir.join("volumes"));
                (BackendConfig::File { dir }, b.filesystem_thin_provisioning.unwrap_or(true))
            }
            "rbd" => {
                if !cfg!(feature = "rbd") {
                    return Err(invalid(
                        "backend.kind",
                        "this volcache was built without RBD support (build with `--features rbd`)",
                    ));
                }
                for (key, set) in [
                    ("path", b.path.is_some()),
                    ("filesystem_thin_provisioning", b.filesystem_thin_provisioning.is_some()),
                ] {
                    if set {
                        return Err(invalid(format!("backend.{key}"), "only applies with kind = \"file\""));
                    }
                }
                let d = crate::backend::RbdOptions::default();
                let non_empty = |key: &str, v: &Option<String>, default: String| match v {
                    Some(v) if v.trim().is_empty() => Err(invalid(format!("backend.{key}"), "must not be empty")),
                    Some(v) => Ok(v.clone()),
                    None => Ok(default),
                };
                let prefix = non_empty("rbd_image_prefix", &b.rbd_image_prefix, d.prefix)?;
                if !crate::backend::valid_name(&prefix) {
                    return Err(invalid("backend.rbd_image_prefix", "use letters, digits, '-', '_' and '.'"));
                }
                let options = crate::backend::RbdOptions {
                    pool: non_empty("rbd_pool", &b.rbd_pool, d.pool)?,
                    ceph_conf: b.rbd_ceph_conf.clone(),
                    user: non_empty("rbd_user", &b.rbd_user, d.user)?,
                    keyring: b.rbd_keyring_conf.clone(),
                    max_clone_depth: match b.rbd_max_clone_depth {
                        Some(0) => return Err(invalid("backend.rbd_max_clone_depth", "must be at least 1")),
                        Some(n) => n,
                        None => d.max_clone_depth,
                    },
                    prefix,
                    write_depth: d.write_depth,
                };
                (BackendConfig::Rbd(options), b.rbd_thin_provisioning.unwrap_or(true))
            }
            other => {
                return Err(invalid("backend.kind", format!("{other:?} is not a backend (\"file\" or \"rbd\")")));
            }
        };
        let host = match self.host {
            Some(h) if h.trim().is_empty() => return Err(invalid("host", "must not be empty")),
            Some(h) => h,
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "localhost".into()),
        };
        let t = self.internal_tenant;
        let cache = CacheConfig {
            enabled: self.cache.image_volume_cache_enabled.unwrap_or(true),
            host,
            cluster_name: self.cluster_name.filter(|c| !c.is_empty()),
            write_mode: if thin { WriteMode::Thin } else { WriteMode::Dense },
            min_sparse: crate::sparse::DEFAULT_MIN_SPARSE,
            internal: InternalTenant {
                project_id: t.project_id.unwrap_or_else(|| "volcache-internal".into()),
                user_id: t.user_id.unwrap_or_else(|| "volcache-internal".into()),
                quota_gigabytes: t.quota_gigabytes.unwrap_or(0),
                quota_volumes: t.quota_volumes.unwrap_or(0),
            },
            spool_dir: state_dir.join("spool"),
            file_sources,
            url_sources: {
                let mut urls = Vec::new();
                for (i, u) in self.image_source_urls.iter().enumerate() {
                    let parsed = url::Url::parse(u)
                        .ok()
                        .filter(|p| matches!(p.scheme(), "http" | "https") && p.host_str().is_some())
                        .ok_or_else(|| {
                            invalid(
                                format!("image_source_urls[{i}]"),
                                format!("{u:?} is not an http(s) URL with a host"),
                            )
                        })?;
                    urls.push(parsed);
                }
                crate::image::source::UrlSources::Within(urls)
            },
            source_limits: crate::image::source::SourceLimits {
                idle: match self.sources.idle_timeout_seconds {
                    Some(0) => return Err(invalid("sources.idle_timeout_seconds", "must be at least 1")),
                    s => std::time::Duration::from_secs(s.unwrap_or(60)),
                },
                min_bytes_per_second: self.sources.min_bytes_per_second.unwrap_or(64 << 10),
                redirects: crate::image::source::Redirects::Refuse,
                window: match self.sources.window_seconds {
                    Some(0) => return Err(invalid("sources.window_seconds", "must be at least 1")),
                    s => std::time::Duration::from_secs(s.unwrap_or(30)),
                },
                deadline: match self.sources.deadline_seconds.unwrap_or(6 * 3600) {
                    0 => None,
                    s => Some(std::time::Duration::from_secs(s)),
                },
            },
            fill_wait: match self.cache.fill_wait_seconds {
                Some(0) => return Err(invalid("cache.fill_wait_seconds", "must be at least 1")),
                Some(s) => std::time::Duration::from_secs(s),
                None => crate::cache::DEFAULT_FILL_WAIT,
            },
        };
        let default_http = HttpLimits::default();
        let api = ApiOptions {
            public_health: self.api.public_health.unwrap_or(true),
            public_metrics: self.api.public_metrics.unwrap_or(true),
            http: HttpLimits {
                header_read_timeout: match self.api.header_read_timeout_seconds {
                    Some(0) => return Err(invalid("api.header_read_timeout_seconds", "must be at least 1")),
                    Some(s) => Duration::from_secs(s),
                    None => default_http.header_read_timeout,
                },
                max_connections: match self.api.max_connections {
                    Some(0) => return Err(invalid("api.max_connections", "must be at least 1")),
                    Some(n) => n,
                    None => default_http.max_connections,
                },
            },
        };
        let shutdown_grace = std::time::Duration::from_secs(self.shutdown_grace_seconds.unwrap_or(10));
        let expire_interval = match self.policy.expire_interval_seconds {
            None => std::time::Duration::from_secs(60),
            Some(s) if s <= 86_400 => std::time::Duration::from_secs(s),
            Some(_) => return Err(invalid("policy.expire_interval_seconds", "must be between 0 and 86400")),
        };
        Ok(Config {
            listen,
            api,
            state_dir,
            admin_token: self.admin_token,
            backend,
            cache,
            limits,
            engine,
            slots,
            shutdown_grace,
            trace_max_bytes: match self.trace.max_mib {
                None => 64 << 20,
                Some(mib) if mib <= 4096 => mib << 20,
                Some(_) => return Err(invalid("trace.max_mib", "must be between 0 and 4096")),
            },
            plugin_sources,
            expire_interval,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_serve_loopback_with_builtins() {
        let c = RawConfig::default().validate().unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert!(c.slots.is_empty());
        assert_eq!(c.limits, CinderLimits::default());
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("listen = \"nowhere\"", "listen"),
            ("[cache]\nsize_basis = \"gb\"", "cache.size_basis"),
            ("[policy]\ncall_deadline_ms = 0", "policy.call_deadline_ms"),
            ("[policy.slots.evict]\nbuiltin = \"lru\"", "policy.slots.evict"),
            ("[policy.slots.eviction]\nbuiltin = \"lfu\"", "policy.slots.eviction.builtin"),
            ("[policy.slots.eviction]\nbuiltin = \"lru\"\nplugin = \"x.wasm\"", "policy.slots.eviction"),
            ("[backend]\nkind = \"nfs\"", "backend.kind"),
            ("[backend]\npath = \"/nonexistent/volcache-volumes\"", "backend.path"),
            ("[backend]\nrbd_pool = \"rbd\"", "backend.rbd_pool"),
            (
                "[backend]\nkind = \"rbd\"\npath = \"/x\"",
                if cfg!(feature = "rbd") { "backend.path" } else { "backend.kind" },
            ),
            (
                "[backend]\nkind = \"rbd\"\nrbd_max_clone_depth = 0",
                if cfg!(feature = "rbd") { "backend.rbd_max_clone_depth" } else { "backend.kind" },
            ),
            ("host = \" \"", "host"),
        ];
        for (text, key) in cases {
            let err = toml::from_str::<RawConfig>(text).unwrap().validate().unwrap_err();
            assert!(err.to_string().starts_with(key), "{text:?} gave {err}");
        }
    }

    #[cfg(feature = "rbd")]
    #[test]
    fn rbd_backend_takes_cinder_option_names() {
        let c = toml::from_str::<RawConfig>(
            "[backend]\nkind = \"rbd\"\nrbd_pool = \"volumes\"\nrbd_user = \"cinder\"\n\
             rbd_ceph_conf = \"/etc/ceph/ceph.conf\"\nrbd_max_clone_depth = 3\nrbd_thin_provisioning = false",
        )
        .unwrap()
        .validate()
        .unwrap();
        let BackendConfig::Rbd(o) = c.backend else { panic!("not rbd: {:?}", c.backend) };
        assert_eq!((o.pool.as_str(), o.user.as_str(), o.max_clone_depth), ("volumes", "cinder", 3));
        assert_eq!(o.ceph_conf.as_deref(), Some(Path::new("/etc/ceph/ceph.conf")));
        assert_eq!(c.cache.write_mode, WriteMode::Dense);
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<RawConfig>("[cache]\nimage_volume_cache_max_sizegb = 3").is_err());
    }

    #[test]
    fn slot_params_become_strings() {
        let c = toml::from_str::<RawConfig>(
            "[policy.slots.capacity]\nbuiltin = \"quota\"\nparams = { image_volume_cache_max_count = 5 }",
        )
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(c.slots[0].1.params, vec![("image_volume_cache_max_count".to_string(), "5".to_string())]);
    }
}
