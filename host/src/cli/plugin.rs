//! `volcache plugin ...`: tools for plugin authors that need no daemon.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, Subcommand};

use super::parse_param;
use crate::policy::{self, EngineOptions, PolicyEngine, PolicySet, PolicySource, PolicySpec, Slot};

/// The policy contract this binary speaks, embedded so that a plugin project outside the
/// repository can be built against exactly it.
pub const WIT: &str = include_str!("../../../wit/policy.wit");

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Show a component's WIT package, exports, imports and the slots it can fill; exit 1 when
    /// it reports a problem.
    Inspect {
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Load a component into a slot as the daemon would (compile, type-check, configure,
    /// smoke-test); exit 0 when it passes.
    Check(CheckArgs),
    /// Print the policy WIT this volcache speaks (to build a plugin against).
    Wit,
}

/// Engine settings shared by the plugin commands.
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Largest component accepted, in MiB (the daemon's `policy.max_plugin_mib`).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub max_mib: u64,
    /// Where compiled components are kept between runs (default: $XDG_CACHE_HOME/volcache/plugin-cache,
    /// else ~/.cache/volcache/plugin-cache).
    #[arg(long, conflicts_with = "no_cache")]
    pub cache_dir: Option<PathBuf>,
    /// Compile every time; keep nothing on disk.
    #[arg(long)]
    pub no_cache: bool,
}

impl EngineArgs {
    fn options(&self) -> EngineOptions {
        let cache_dir = if self.no_cache { None } else { self.cache_dir.clone().or_else(default_cache_dir) };
        EngineOptions {
            cache_dir,
            max_component_bytes: usize::try_from(self.max_mib << 20).unwrap_or(usize::MAX),
            ..EngineOptions::default()
        }
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("volcache").join("plugin-cache"))
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    pub file: PathBuf,
    /// The slot to fill: admission, capacity or eviction.
    #[arg(long)]
    pub slot: Slot,
    /// A configuration parameter KEY=VALUE (repeatable), e.g. image_volume_cache_max_size_gb=10.
    #[arg(long = "param", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// Memory cap of the plugin instance, in MiB.
    #[arg(long, default_value_t = 64)]
    pub memory_mib: usize,
    /// Deadline of one call, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub deadline_ms: u64,
    #[command(flatten)]
    pub engine: EngineArgs,
}

pub fn run(cmd: PluginCommand) -> anyhow::Result<ExitCode> {
    // What a plugin logs or prints (and why a call failed) goes to stderr, as the daemon logs it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_target(false)
        .try_init();
    match cmd {
        PluginCommand::Inspect { file, json, engine } => inspect(&file, json, &engine),
        PluginCommand::Check(args) => check(args),
        PluginCommand::Wit => {
            print!("{WIT}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn inspect(file: &Path, json: bool, engine: &EngineArgs) -> anyhow::Result<ExitCode> {
    let options = engine.options();
    let bytes = policy::read_plugin_file(file, options.max_component_bytes)?;
    let engine = PolicyEngine::new(options)?;
    let found = policy::inspect(&engine, &bytes)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&found)?);
    } else {
        let list = |items: &[String]| if items.is_empty() { "(none)".to_string() } else { items.join("\n           ") };
        println!("file       {} ({} bytes)", file.display(), found.size_bytes);
        println!("sha256     {}", found.digest);
        println!("package    {}", list(&found.packages));
        if let Some(info) = &found.info {
            println!("plugin     {} {}: {}", info.name, info.version, info.summary);
        }
        println!("exports    {}", list(&found.exports));
        println!("imports    {}", list(&found.imports));
        let slots: Vec<String> = found.slots.iter().map(Slot::to_string).collect();
        println!("slots      {}", list(&slots));
        println!("events     {}", if found.events { "yes" } else { "no" });
        if let Some(problem) = &found.problem {
            println!("problem    {problem}");
        }
    }
    Ok(if found.problem.is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    if args.memory_mib == 0 || args.deadline_ms == 0 {
        bail!("--memory-mib and --deadline-ms must be at least 1");
    }
    let options = EngineOptions {
        memory_limit_bytes: args.memory_mib << 20,
        call_deadline: Duration::from_millis(args.deadline_ms),
        ..args.engine.options()
    };
    let engine = PolicyEngine::new(options)?;
    let set = PolicySet::new(engine, policy::CinderLimits::default());
    let started = Instant::now();
    let spec = PolicySpec { source: PolicySource::File(args.file.clone()), params: args.params };
    match set.check(args.slot, spec) {
        Ok(status) => {
            println!(
                "ok: {} {} fills the {} slot (sha256 {}), loaded and smoke-tested in {:.1} ms",
                status.name,
                status.version,
                args.slot,
                status.digest.as_deref().unwrap_or("-"),
                started.elapsed().as_secs_f64() * 1e3
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("volcache: check failed for {}: {e}", args.file.display());
            Ok(ExitCode::FAILURE)
        }
    }
}
