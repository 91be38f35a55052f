//! `volcache image|volume|cache ...`: a client of a running daemon's HTTP API (the connection
//! and requests every command shares; `policy ...` lives in [`super::policy`]).
//!
//! The address comes from `--url` or `VOLCACHE_URL` (default `http://127.0.0.1:8470`), the
//! token from `VOLCACHE_ADMIN_TOKEN` or the daemon's token file (`--token-file`, default
//! `./var/admin-token`, else the installed daemon's `/var/lib/volcache/admin-token`). Output is a table, or the API's JSON with `--json`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::progress;
use super::table::{details, show};

/// Where the daemon is and how to talk to it.
#[derive(Debug, Args)]
pub struct Connection {
    /// The daemon's address.
    #[arg(long, env = "VOLCACHE_URL", default_value = "http://127.0.0.1:8470", global = true)]
    pub url: String,
    /// Token file written by the daemon (used when VOLCACHE_ADMIN_TOKEN is unset) [default:
    /// ./var/admin-token, else the installed daemon's /var/lib/volcache/admin-token].
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `--limit N [--marker ID]` of a list command.
#[derive(Debug, Args)]
pub struct PageArgs {
    /// At most this many rows; a full page says how to ask for the next one.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    /// The rows after this id (the last one of the previous page).
    #[arg(long)]
    marker: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List images by id, all or a page at a time.
    List {
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one image.
    Show {
        /// The image's id.
        id: String,
    },
    /// Register an image: a path, http(s):// URL or glance+http(s)://.../v2/images/ID.
    Create {
        /// Where the image is: a file under image_source_dirs, or a URL under image_source_urls.
        source: String,
        /// A name to show [default: the source's last path component].
        #[arg(long)]
        name: Option<String>,
        /// The image's id (Glance's) [default: a new UUID].
        #[arg(long)]
        id: Option<String>,
        /// The declared format; the image's header must agree.
        #[arg(long, default_value = "raw", value_parser = ["raw", "qcow2"])]
        disk_format: String,
        /// Expected md5.
        #[arg(long)]
        checksum: Option<String>,
        /// Check the source this often (e.g. 1h, 30m, 3600) and refill the cache entry when
        /// it changed (ETag / Last-Modified, Glance's updated_at and checksum).
        #[arg(long, value_parser = parse_interval)]
        refresh_interval: Option<u64>,
    },
    /// Change an image (its updated_at changes, so its cache entry becomes stale).
    Update {
        /// The image's id.
        id: String,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        /// A new source (probed again).
        #[arg(long)]
        source: Option<String>,
        /// A new refresh interval (e.g. 1h); 0 turns refresh off. Changing only this keeps the
        /// cache entry.
        #[arg(long, value_parser = parse_interval)]
        refresh_interval: Option<u64>,
    },
    /// Delete an image and evict its cache entries.
    Delete {
        /// The image's id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// List volumes by id (with --all-tenants, the cache's own too), all or a page at a time.
    List {
        /// Also the cache's own volumes (the internal tenant's).
        #[arg(long)]
        all_tenants: bool,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one volume: where its data came from (cache entry and clone mode, or why not).
    Show {
        /// The volume's id.
        id: String,
    },
    /// Create a volume from an image; says whether the cache served it.
    Create {
        /// The image's id.
        #[arg(long)]
        image: String,
        /// Size in GiB.
        #[arg(long)]
        size: u64,
    },
    /// Delete a volume (a user's; a cache volume is evicted with `cache evict`).
    Delete {
        /// The volume's id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List cache entries by id, all or a page at a time.
    Entries {
        #[command(flatten)]
        page: PageArgs,
    },
    /// Evict one entry.
    Evict {
        /// The entry's id (`cache entries`).
        id: u64,
    },
    /// Pin an entry: it is never evicted to make room.
    Pin {
        /// The entry's id (`cache entries`).
        id: u64,
    },
    /// Unpin an entry.
    Unpin {
        /// The entry's id (`cache entries`).
        id: u64,
    },
    /// Hits, misses, evictions and sizes.
    Stats,
    /// Fill an image's cache entry now, without creating a volume, under the policies: shows
    /// the write's progress and how it ended (exit 1 when refused or failed).
    Warm {
        /// The image's id.
        image: String,
        /// Start it and return at once; follow it on `GET /v1/events`.
        #[arg(long)]
        no_wait: bool,
    },
}

/// `3600`, `90s`, `30m`, `1h`, `1d` -> seconds.
fn parse_interval(text: &str) -> Result<u64, String> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(seconds);
    }
    humantime::parse_duration(text)
        .map(|d| d.as_secs())
        .map_err(|e| format!("{text:?}: {e} (give seconds, or e.g. 90s, 30m, 1h, 1d)"))
}

/// Where the token is looked for without `--token-file`: a daemon started in this directory,
/// then the installed service's state directory.
const DEFAULT_TOKEN_FILES: [&str; 2] = ["var/admin-token", "/var/lib/volcache/admin-token"];

pub(super) struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Client {
    pub(super) fn new(conn: &Connection) -> anyhow::Result<Client> {
        let token = match std::env::var("VOLCACHE_ADMIN_TOKEN").ok().filter(|t| !t.trim().is_empty()) {
            Some(t) => t.trim().to_string(),
            None => {
                let file = match &conn.token_file {
                    Some(file) => file.clone(),
                    None => DEFAULT_TOKEN_FILES
                        .iter()
                        .map(PathBuf::from)
                        .find(|p| p.exists())
                        .unwrap_or_else(|| PathBuf::from(DEFAULT_TOKEN_FILES[0])),
                };
                std::fs::read_to_string(&file)
                    .with_context(|| {
                        format!(
                            "no VOLCACHE_ADMIN_TOKEN and cannot read the token file {} (set --token-file, or run as a user who may read it)",
                            file.display()
                        )
                    })?
                    .trim()
                    .to_string()
            }
        };
        let agent = ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(5)).build();
        Ok(Client { base: conn.url.trim_end_matches('/').to_string(), token, agent })
    }

    /// The daemon's event stream, from now on.
    fn events(&self) -> anyhow::Result<progress::Events> {
        progress::Events::open(&self.agent, &self.base, &self.token)
    }

    pub(super) fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let req = self.agent.request(method, &url).set("Authorization", &format!("Bearer {}", self.token));
        let res = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        Self::answer(&url, res)
    }

    pub(super) fn upload(&self, path: &str, bytes: &[u8]) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let req = self
            .agent
            .request("PUT", &url)
            .set("Authorization", &format!("Bearer {}", self.token))
            .set("Content-Type", "application/wasm");
        Self::answer(&url, req.send_bytes(bytes))
    }

    fn answer(url: &str, res: Result<ureq::Response, ureq::Error>) -> anyhow::Result<Value> {
        match res {
            Ok(r) if r.status() == 204 => Ok(Value::Null),
            Ok(r) => Ok(r.into_json().unwrap_or(Value::Null)),
            Err(ureq::Error::Status(code, r)) => {
                let body: Value = r.into_json().unwrap_or(Value::Null);
                match body["error"]["message"].as_str() {
                    Some(m) => bail!("{m} (HTTP {code}, {})", body["error"]["code"].as_str().unwrap_or("error")),
                    None => bail!("{url}: HTTP {code}"),
                }
            }
            Err(e) => bail!("cannot reach the daemon at {url}: {e}"),
        }
    }
}

/// GETs `path` and answers the body as text (errors as one line, like every command).
pub(super) fn get_text(conn: &Connection, path: &str) -> anyhow::Result<String> {
    let client = Client::new(conn)?;
    let url = format!("{}{path}", client.base);
    let res = client.agent.get(&url).set("Authorization", &format!("Bearer {}", client.token)).call();
    match res {
        Ok(r) => r.into_string().with_context(|| format!("reading the answer of {url}")),
        Err(e) => Client::answer(&url, Err(e)).map(|_| String::new()),
    }
}

const IMAGE_FIELDS: &[&str] = &["id", "name", "disk_format", "virtual_size", "updated_at", "source"];
const VOLUME_FIELDS: &[&str] = &["id", "size", "image_id", "cache", "project_id", "created_at"];
/// `volume show` and `volume create`: where the data came from, and how.
const VOLUME_DETAILS: &[&str] = &[
    "id",
    "size",
    "image_id",
    "cache",
    "cloned_from",
    "clone_mode",
    "uncached_reason",
    "project_id",
    "user_id",
    "backend_name",
    "created_at",
];
const ENTRY_FIELDS: &[&str] =
    &["id", "image_id", "size", "allocated_bytes", "hit_count", "last_used", "pinned", "host"];

pub fn image(conn: &Connection, cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    let c = Client::new(conn)?;
    let value = match cmd {
        ImageCommand::List { page } => list_page(&c, "/v1/images", Vec::new(), &page, "volcache image list")?,
        ImageCommand::Show { id } => c.call("GET", &format!("/v1/images/{id}"), None)?,
        ImageCommand::Create { source, name, id, disk_format, checksum, refresh_interval } => {
            let name = name.unwrap_or_else(|| source.rsplit('/').next().unwrap_or(&source).to_string());
            c.call(
                "POST",
                "/v1/images",
                Some(
                    json!({"id": id, "name": name, "source": source, "disk_format": disk_format, "checksum": checksum,
                           "refresh_interval_seconds": refresh_interval}),
                ),
            )?
        }
        ImageCommand::Update { id, name, source, refresh_interval } => c.call(
            "PATCH",
            &format!("/v1/images/{id}"),
            Some(json!({"name": name, "source": source, "refresh_interval_seconds": refresh_interval})),
        )?,
        ImageCommand::Delete { id } => c.call("DELETE", &format!("/v1/images/{id}"), None)?,
    };
    show(conn.json, &value, IMAGE_FIELDS)
}

/// `text` as a URL query value: unreserved characters as they are, every other byte %-encoded.
fn query_value(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One page of the list at `path` (all of it without `--limit`); a full page prints on stderr
/// the `command` that shows the next one.
fn list_page(c: &Client, path: &str, mut query: Vec<String>, page: &PageArgs, command: &str) -> anyhow::Result<Value> {
    if let Some(limit) = page.limit {
        query.push(format!("limit={limit}"));
    }
    if let Some(marker) = &page.marker {
        query.push(format!("marker={}", query_value(marker)));
    }
    let path = if query.is_empty() { path.to_string() } else { format!("{path}?{}", query.join("&")) };
    let rows = c.call("GET", &path, None)?;
    let shown = rows.as_array().map_or(0, Vec::len) as u64;
    if let (Some(limit), Some(last)) = (page.limit, rows.as_array().and_then(|p| p.last())) {
        if shown == limit {
            // Volume and image ids are strings, entry ids numbers.
            let id = match &last["id"] {
                Value::String(id) => id.clone(),
                other => other.to_string(),
            };
            eprintln!("more may follow: {command} --limit {limit} --marker {id}");
        }
    }
    Ok(rows)
}

pub fn volume(conn: &Connection, cmd: VolumeCommand) -> anyhow::Result<ExitCode> {
    let c = Client::new(conn)?;
    let value = match cmd {
        VolumeCommand::List { all_tenants, page } => {
            let (filters, command) = if all_tenants {
                (vec!["all_tenants=1".to_string()], "volcache volume list --all-tenants")
            } else {
                (Vec::new(), "volcache volume list")
            };
            list_page(&c, "/v1/volumes", filters, &page, command)?
        }
        VolumeCommand::Show { id } => {
            return details(conn.json, &c.call("GET", &format!("/v1/volumes/{id}"), None)?, VOLUME_DETAILS)
        }
        VolumeCommand::Create { image, size } => {
            let body = json!({"image_id": image, "size": size});
            // A miss may take minutes: show the write's progress, from the event stream opened
            // before the request (a hit shows nothing).
            let watcher =
                if conn.json { None } else { c.events().ok() }.map(|e| progress::WriteWatcher::start(e, image));
            let result = c.call("POST", "/v1/volumes", Some(body));
            if let Some(watcher) = watcher {
                // A miss or an uncached create wrote the image: its last report may be on the way.
                watcher.end(result.as_ref().is_ok_and(|v| v["cache"] != "hit"));
            }
            return details(conn.json, &result?, VOLUME_DETAILS);
        }
        VolumeCommand::Delete { id } => c.call("DELETE", &format!("/v1/volumes/{id}"), None)?,
    };
    show(conn.json, &value, VOLUME_FIELDS)
}

pub fn cache(conn: &Connection, cmd: CacheCommand) -> anyhow::Result<ExitCode> {
    let c = Client::new(conn)?;
    match cmd {
        CacheCommand::Entries { page } => show(
            conn.json,
            &list_page(&c, "/v1/cache/entries", Vec::new(), &page, "volcache cache entries")?,
            ENTRY_FIELDS,
        ),
        CacheCommand::Evict { id } => {
            show(conn.json, &c.call("DELETE", &format!("/v1/cache/entries/{id}"), None)?, ENTRY_FIELDS)
        }
        CacheCommand::Pin { id } => {
            show(conn.json, &c.call("POST", &format!("/v1/cache/entries/{id}/pin"), None)?, ENTRY_FIELDS)
        }
        CacheCommand::Unpin { id } => {
            show(conn.json, &c.call("DELETE", &format!("/v1/cache/entries/{id}/pin"), None)?, ENTRY_FIELDS)
        }
        CacheCommand::Warm { image, no_wait } => warm(conn, &c, &image, no_wait),
        CacheCommand::Stats => {
            let stats = c.call("GET", "/v1/cache/stats", None)?;
            if conn.json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else if let Some(map) = stats.as_object() {
                for (k, v) in map {
                    println!("{k:<22} {v}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `cache warm`: start the warm-up with the event stream already open, then follow it.
fn warm(conn: &Connection, c: &Client, image: &str, no_wait: bool) -> anyhow::Result<ExitCode> {
    let events = if no_wait { None } else { Some(c.events()?) };
    let started = c.call("POST", "/v1/cache/warm", Some(json!({"image_id": image})))?;
    let Some(events) = events else {
        return show(conn.json, &started, &["warm_id", "image_id", "status"]);
    };
    let warm_id = started["warm_id"].as_u64().context("the daemon answered no warm_id")?;
    let mut bar = progress::Bar::new(format!("warming {image}"));
    let end = loop {
        let event = events.next(Duration::from_secs(3600)).map_err(|_| {
            anyhow::anyhow!(
                "lost the daemon's event stream; the warm-up {warm_id} goes on: see `volcache cache entries`"
            )
        })?;
        match event.kind.as_str() {
            "image_volume_cache.progress" if event.data["image_id"] == image => bar.show(&event.data["progress"]),
            "image_volume_cache.warm" if event.data["warm"]["warm_id"] == warm_id => break event.data,
            _ => {}
        }
    };
    bar.finish();
    let warm = &end["warm"];
    if conn.json {
        println!("{}", serde_json::to_string_pretty(warm)?);
    }
    let status = warm["status"].as_str().unwrap_or("?");
    let detail = warm["detail"].as_str().unwrap_or("");
    match status {
        "filled" | "already-cached" => {
            if !conn.json {
                let how = if status == "filled" { "cached" } else { "was already cached" };
                println!("image {image} {how}: entry {}", warm["entry_id"]);
            }
            Ok(ExitCode::SUCCESS)
        }
        "joined" => {
            if !conn.json {
                println!("image {image} is being filled by another request: {detail}");
            }
            Ok(ExitCode::SUCCESS)
        }
        "refused" => bail!("image {image} was not cached: {detail}"),
        _ => bail!("warming image {image} failed: {detail}"),
    }
}
