//! The `volcache` command line: arguments parsed into validated commands, then run.
#![forbid(unsafe_code)]

mod client;
mod lab;
mod plugin;
mod policy;
mod progress;
mod scaffold;
mod table;

pub use plugin::{CheckArgs, PluginCommand};

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::Config;

/// `volcache --version`: the build's backends and the policy WIT it speaks.
#[cfg(feature = "rbd")]
const BACKENDS: &str = "file (reflink or sparse copy), rbd (librbd)";
#[cfg(not(feature = "rbd"))]
const BACKENDS: &str = "file (reflink or sparse copy); built without rbd (cargo feature `rbd`)";

fn long_version() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        format!(
            "{}\nbackends: {BACKENDS}\npolicy WIT: {} (plugins may import WASI 0.2, linked deny-all)\nwasm runtime: wasmtime 48",
            env!("CARGO_PKG_VERSION"),
            crate::policy::host_speaks(),
        )
    })
}

#[derive(Debug, Parser)]
#[command(
    name = "volcache",
    version,
    long_version = long_version(),
    about = "Image-volume cache: thin image conversion, copy-on-write clones, wasm policies"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve {
        /// TOML configuration file; without it, state lives under ./var.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (default 127.0.0.1:8470).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Convert an image (raw or qcow2; a path, http(s):// URL or glance+http(s)://.../v2/images/ID)
    /// into a thin raw file, like `qemu-img convert -O raw`.
    Convert(ConvertArgs),
    /// Inspect, check, test and start policy plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Workload traces for the policy lab: synthetic ones, and conversions.
    #[command(subcommand)]
    Trace(lab::TraceCommand),
    /// Replay a trace through policy sets at several cache sizes, next to the Belady bound.
    Simulate(lab::SimArgs),
    /// Images of a running daemon.
    Image {
        #[command(flatten)]
        conn: client::Connection,
        #[command(subcommand)]
        cmd: client::ImageCommand,
    },
    /// Volumes of a running daemon.
    Volume {
        #[command(flatten)]
        conn: client::Connection,
        #[command(subcommand)]
        cmd: client::VolumeCommand,
    },
    /// The image-volume cache of a running daemon.
    Cache {
        #[command(flatten)]
        conn: client::Connection,
        #[command(subcommand)]
        cmd: client::CacheCommand,
    },
    /// Repair the daemon's catalog (run with the daemon stopped).
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Policy slots of a running daemon.
    Policy {
        #[command(flatten)]
        conn: client::Connection,
        #[command(subcommand)]
        cmd: policy::PolicyCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Rebuild the catalog from the backend: a damaged catalog is moved aside, and every user
    /// volume the catalog does not record is adopted under the quarantine project. Images and
    /// cache entries are not recoverable: register the images again; the cache refills.
    Rebuild {
        /// The daemon's TOML configuration file (default: state under ./var).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The image: a path, http(s):// URL or glance+http(s)://.../v2/images/ID.
    pub src: String,
    /// The raw output: a new file (written beside it, then renamed), or a block device.
    pub dst: PathBuf,
    /// The source's format; `auto` detects it (a declared format must match the detected one).
    #[arg(long, default_value = "auto")]
    pub format: String,
    /// Zero-detection granularity in bytes: aligned all-zero blocks this big are not written.
    #[arg(long, default_value_t = crate::sparse::DEFAULT_MIN_SPARSE)]
    pub min_sparse: u64,
    /// Write every byte, zeros included (thin provisioning off).
    #[arg(long)]
    pub dense: bool,
    /// Expected md5 of the source image (Glance's `checksum`).
    #[arg(long)]
    pub md5: Option<String>,
    /// Expected sha256 of the source image.
    #[arg(long, conflicts_with = "sha512")]
    pub sha256: Option<String>,
    /// Expected sha512 of the source image.
    #[arg(long)]
    pub sha512: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(crate) fn parse_param(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// Runs a parsed command; errors are printed by `main` as one line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config, listen } => {
            let mut config = Config::load(config.as_deref())?;
            if let Some(listen) = listen {
                config.listen = listen.parse().with_context(|| format!("--listen: {listen:?} is not an address"))?;
            }
            crate::daemon::serve(config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Convert(args) => convert(args),
        Command::Catalog(CatalogCommand::Rebuild { config }) => {
            let config = Config::load(config.as_deref())?;
            let done = crate::daemon::rebuild_catalog(&config)?;
            println!(
                "catalog {}: adopted {} volumes under project {}; {} unknown cache volumes will be removed when the daemon starts",
                config.state_dir.join("catalog.redb").display(),
                done.adopted.len(),
                crate::cache::recover::QUARANTINE_PROJECT,
                done.unknown_cache_volumes.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Image { conn, cmd } => client::image(&conn, cmd),
        Command::Volume { conn, cmd } => client::volume(&conn, cmd),
        Command::Cache { conn, cmd } => client::cache(&conn, cmd),
        Command::Policy { conn, cmd } => policy::policy(&conn, cmd),
        Command::Plugin(cmd) => plugin::run(cmd),
        Command::Trace(cmd) => lab::trace(cmd),
        Command::Simulate(args) => lab::simulate(args),
    }
}

fn convert(args: ConvertArgs) -> anyhow::Result<ExitCode> {
    use crate::image::convert::{convert, ConvertOptions, HolesFrom};
    use crate::image::source::{Expected, HashAlgo, Location};
    use std::io::IsTerminal;

    let format = match args.format.as_str() {
        "auto" => None,
        other => Some(other.parse().map_err(|e: String| anyhow::anyhow!("--format: {e}"))?),
    };
    let hash = match (args.sha256, args.sha512) {
        (Some(h), _) => Some((HashAlgo::Sha256, h.to_ascii_lowercase())),
        (_, Some(h)) => Some((HashAlgo::Sha512, h.to_ascii_lowercase())),
        _ => None,
    };
    let options = ConvertOptions {
        format,
        min_sparse: args.min_sparse,
        mode: if args.dense { crate::sparse::WriteMode::Dense } else { crate::sparse::WriteMode::Thin },
        expected: Expected { md5: args.md5.map(|m| m.to_ascii_lowercase()), hash },
        token: std::env::var("OS_AUTH_TOKEN").ok().filter(|t| !t.is_empty()),
        length: None,
        // A person at a terminal sees the progress and can stop a slow download; only the idle
        // timeout applies.
        limits: Default::default(),
    };
    let location = Location::parse(&args.src)?;
    let show = !args.json && std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last = Instant::now();
    let mut progress = |done: u64, total: u64| {
        if show && last.elapsed() >= Duration::from_millis(200) {
            last = Instant::now();
            let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3) / (1 << 20) as f64;
            match total {
                0 => eprint!("\r  downloading... {:>8.0} MiB/s", rate),
                _ => {
                    eprint!("\r  {:>5.1}% of {}  {:>8.0} MiB/s", done as f64 * 100.0 / total as f64, human(total), rate)
                }
            }
        }
    };
    let report = convert(&location, &args.dst, &options, &mut progress)?;
    if show {
        eprint!("\r{:60}\r", "");
    }
    let text = if args.json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        let how = match report.holes_from {
            HolesFrom::SeekData => "found with SEEK_DATA, never read",
            HolesFrom::Qcow2Tables => "from the qcow2 tables, never read",
            HolesFrom::None => "the source was read in full",
        };
        [
            format!("converted {} to thin raw: {}", report.format, args.dst.display()),
            format!("  virtual size   {}", human(report.virtual_size)),
            format!("  read           {}", human(report.bytes_read)),
            format!("  data written   {}", human(report.write.data_bytes_written)),
            format!("  zeros skipped  {}", human(report.write.zero_bytes_skipped)),
            format!("  holes skipped  {} ({how})", human(report.write.hole_bytes_skipped)),
            format!("  elapsed        {:.2} s ({:.0} MiB/s)", report.elapsed_seconds, report.throughput_mib_s),
        ]
        .join("\n")
            + "\n"
    };
    // The conversion succeeded; a reader that stopped reading (`| head -1`) changes nothing.
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// Bytes in binary units, e.g. "1.50 GiB".
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every subcommand and every argument says what it is in `--help`.
    #[test]
    fn every_command_and_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} <{id}>"));
                }
            }
            for sub in cmd.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(name.clone());
                }
                walk(sub, &name, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "volcache", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:#?}");
    }
}
