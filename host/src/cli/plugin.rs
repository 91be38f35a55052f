//! `volcache plugin ...`: tools for plugin authors that need no daemon.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use super::parse_param;
use crate::policy::{self, EngineOptions, PolicyEngine, PolicySet, PolicySource, PolicySpec, Slot};

use super::scaffold::WIT;

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Show a component's WIT package, exports, imports and the slots it can fill; exit 1 when
    /// it reports a problem.
    Inspect {
        /// The component (.wasm).
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
    /// Write a new plugin project (policy, WIT, build script, README, test cases) into a new
    /// directory, by default ./NAME.
    New {
        /// The plugin's name: lower-case letters, digits and dashes.
        name: String,
        /// The language to write it in.
        #[arg(long, value_enum)]
        lang: super::scaffold::Lang,
        /// The slot it fills: admission, capacity or eviction.
        #[arg(long, default_value = "eviction")]
        slot: Slot,
        /// Where to write it (must not exist or be empty; default ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run a component's answers against test cases, then check properties on random caches
    /// (valid ids, covers the need, respects pins, no duplicates); exit 1 on any failure.
    Test(TestArgs),
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The component (.wasm).
    pub file: PathBuf,
    /// The slot to test: admission, capacity or eviction.
    #[arg(long)]
    pub slot: Slot,
    /// A JSON file of cases (see the cases.json that `plugin new` writes).
    #[arg(long)]
    pub cases: Option<PathBuf>,
    /// Random caches to check properties on.
    #[arg(long, default_value_t = 200)]
    pub random: u32,
    /// Seed of the random caches (a failure prints the one that replays it).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// A configuration parameter KEY=VALUE (repeatable); added after the cases file's `params`.
    #[arg(long = "param", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// Deadline of one call, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub deadline_ms: u64,
    /// Also replay this workload trace (recorded or synthetic) through the simulator, with the
    /// plugin in its slot and with the built-ins, and fail if the plugin failed on any decision.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Cache size of the replay, GiB.
    #[arg(long, default_value_t = 100, requires = "trace")]
    pub max_size_gb: u64,
    #[command(flatten)]
    pub engine: EngineArgs,
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
    pub(crate) fn options(&self) -> EngineOptions {
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
    /// The component (.wasm).
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
        PluginCommand::New { name, lang, slot, dir } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let files = super::scaffold::write(&name, lang, slot, &dir)?;
            println!("wrote {} files into {}; next: cd {} && ./build.sh", files.len(), dir.display(), dir.display());
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Test(args) => test(args),
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
        println!("expiry     {}", if found.expiry { "yes (lets entries go without pressure)" } else { "no" });
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

fn test(args: TestArgs) -> anyhow::Result<ExitCode> {
    use crate::policy::testkit;
    if args.deadline_ms == 0 {
        bail!("--deadline-ms must be at least 1");
    }
    let cases: Option<testkit::Cases> = match &args.cases {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            Some(serde_json::from_str(&text).with_context(|| format!("{}: not a cases file", path.display()))?)
        }
        None => None,
    };
    let mut params: Vec<(String, String)> =
        cases.iter().flat_map(|c| c.params.iter().map(|(k, v)| (k.clone(), v.clone()))).collect();
    params.extend(args.params.iter().cloned());
    let deadline = Duration::from_millis(args.deadline_ms);
    let options = EngineOptions { call_deadline: deadline, event_deadline: deadline, ..args.engine.options() };
    let bytes = policy::read_plugin_file(&args.file, options.max_component_bytes)?;
    let engine = PolicyEngine::new(options)?;
    let plugin = testkit::load(&engine, &bytes, args.slot, params.clone())?;
    let mut failed = 0usize;
    let mut passed = 0usize;
    for case in cases.iter().flat_map(|c| &c.cases) {
        match testkit::run_case(&plugin, args.slot, case) {
            Ok(()) => {
                passed += 1;
                println!("ok    {}", case.name);
            }
            Err(why) => {
                failed += 1;
                println!("FAIL  {}: {why}", case.name);
            }
        }
    }
    let random = testkit::random_properties(&plugin, args.slot, args.random, args.seed);
    for failure in &random {
        println!("FAIL  {failure}");
    }
    let mut replay_failed = false;
    if let Some(path) = &args.trace {
        use crate::lab::{sim, trace};
        let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        let records = trace::read(std::io::BufReader::new(file)).with_context(|| path.display().to_string())?;
        let limits = policy::CinderLimits { max_size_gb: args.max_size_gb, ..Default::default() };
        let builtin = sim::simulate("built-in", &records, &PolicySet::new(engine.clone(), limits));
        let set = PolicySet::new(engine.clone(), limits);
        set.swap(args.slot, PolicySpec { source: PolicySource::Bytes(bytes.clone()), params: params.clone() })?;
        let mine = sim::simulate("plugin", &records, &set);
        for o in [&builtin, &mine] {
            println!(
                "replay {:<9} {} requests at {} GiB: hit {:.2}%, byte hit {:.2}%, {} evictions, {} failures",
                o.policy,
                o.requests,
                args.max_size_gb,
                o.hit_ratio * 100.0,
                o.byte_hit_ratio * 100.0,
                o.evictions,
                o.failures
            );
        }
        replay_failed = mine.failures > 0;
    }
    let random_ok = if random.is_empty() { args.random } else { 0 };
    println!(
        "{passed} cases passed, {failed} failed; {} random caches {}",
        args.random,
        if random.is_empty() { format!("passed ({random_ok} checked)") } else { "found a problem".to_string() }
    );
    Ok(if failed == 0 && random.is_empty() && !replay_failed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
