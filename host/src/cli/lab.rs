//! `volcache trace ...` and `volcache simulate`: the policy lab from the command line.
#![forbid(unsafe_code)]

use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use super::plugin::EngineArgs;
use crate::lab::{belady, plot, sim, synth, trace};
use crate::policy::{CinderLimits, EngineOptions, PolicyEngine, PolicySet, PolicySource, PolicySpec, SizeBasis, Slot};

#[derive(Debug, Subcommand)]
pub enum TraceCommand {
    /// Write a reproducible synthetic trace (see the README for the shapes and parameters).
    Synth {
        /// Where to write the trace (CSV).
        #[arg(short, long)]
        out: PathBuf,
        #[command(flatten)]
        params: synth::Params,
    },
    /// Fetch the workload trace a running daemon recorded (GET /v1/trace).
    Export {
        #[command(flatten)]
        conn: super::client::Connection,
        /// Where to write it.
        #[arg(short, long)]
        out: PathBuf,
        /// csv (the trace format), jsonl, or libcachesim.
        #[arg(long, default_value = "csv")]
        format: String,
    },
    /// Convert a trace to JSON lines, or to libCacheSim's CSV (requests only: time,obj_id,obj_size).
    Convert {
        /// The trace (CSV: time_ms,op,image,version,size_bytes).
        input: PathBuf,
        /// Where to write the converted trace.
        #[arg(short, long)]
        out: PathBuf,
        /// The output: JSON lines, or libCacheSim's CSV.
        #[arg(long, value_enum)]
        format: Format,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    Jsonl,
    Libcachesim,
}

#[derive(Debug, Args)]
pub struct SimArgs {
    /// The trace to replay (CSV: time_ms,op,image,version,size_bytes).
    #[arg(long)]
    pub trace: PathBuf,
    /// A policy set to compare (repeatable): `cinder` (the built-ins), a built-in name (`lru`,
    /// `quota`, `max-size`) or a .wasm file for the eviction slot, or `SLOT=SOURCE[,SLOT=SOURCE]`
    /// with SOURCE a built-in name or a .wasm file; `+KEY=VALUE` after a source adds a parameter
    /// (e.g. `admission=second-hit.wasm+window_hours=24`).
    #[arg(long = "policy", default_value = "cinder")]
    pub policies: Vec<String>,
    /// Cache sizes to simulate, GiB (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    pub max_size_gb: Vec<u64>,
    /// Entry limits to simulate (comma-separated; 0 = none).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub max_count: Vec<u64>,
    /// What sizes count: provisioned (GiB) or allocated (bytes).
    #[arg(long, default_value = "provisioned")]
    pub size_basis: String,
    /// Deadline of one plugin call, in milliseconds (the daemon's policy.call_deadline_ms).
    #[arg(long, default_value_t = 100)]
    pub deadline_ms: u64,
    /// Leave out the Belady reference rows.
    #[arg(long)]
    pub no_belady: bool,
    /// Write results.csv, results.json and miss-ratio.svg here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

pub fn trace(cmd: TraceCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TraceCommand::Synth { out, params } => {
            let records = synth::generate(&params).map_err(anyhow::Error::msg)?;
            let mut file = BufWriter::new(create(&out)?);
            writeln!(file, "{}", trace::HEADER)?;
            for r in &records {
                r.write_csv(&mut file)?;
            }
            file.flush()?;
            let requests = records.iter().filter(|r| r.op == trace::Op::Request).count();
            println!("wrote {} ({} lines, {requests} requests)", out.display(), records.len());
        }
        TraceCommand::Export { conn, out, format } => {
            let body = super::client::get_text(&conn, &format!("/v1/trace?format={format}"))?;
            std::fs::write(&out, &body).with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {} ({} lines)", out.display(), body.lines().count());
        }
        TraceCommand::Convert { input, out, format } => {
            let records = read_trace(&input)?;
            let mut file = BufWriter::new(create(&out)?);
            match format {
                Format::Libcachesim => trace::write_libcachesim(&records, &mut file)?,
                Format::Jsonl => {
                    for r in &records {
                        writeln!(file, "{}", r.json())?;
                    }
                }
            }
            file.flush()?;
            println!("wrote {}", out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn create(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))
}

fn read_trace(path: &Path) -> anyhow::Result<Vec<trace::Record>> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    trace::read(BufReader::new(file)).with_context(|| path.display().to_string())
}

/// A spec as a row label: file names instead of paths.
fn label(spec: &str) -> String {
    let short = |s: &str| Path::new(s).file_name().map_or(s.to_string(), |f| f.to_string_lossy().into_owned());
    spec.split(',')
        .map(|part| match part.split_once('=') {
            Some((slot, rest)) if slot.parse::<Slot>().is_ok() => format!("{slot}={}", short(rest)),
            _ => short(part),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A policy set from a `--policy` spec.
fn specs(spec: &str) -> anyhow::Result<Vec<(Slot, PolicySpec)>> {
    if spec == "cinder" {
        return Ok(Vec::new());
    }
    let source = |s: &str| -> anyhow::Result<PolicySource> {
        if s.ends_with(".wasm") {
            return Ok(PolicySource::File(PathBuf::from(s)));
        }
        Ok(PolicySource::Builtin(s.parse().map_err(|e| anyhow::anyhow!("--policy {spec:?}: {e}"))?))
    };
    let mut out = Vec::new();
    for part in spec.split(',') {
        let mut pieces = part.split('+');
        let part = pieces.next().unwrap_or_default();
        let params = pieces
            .map(|p| {
                p.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or_else(|| anyhow::anyhow!("--policy {spec:?}: expected +KEY=VALUE, got +{p}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (slot, src) = match part.split_once('=') {
            Some((slot, src)) => {
                (slot.parse::<Slot>().map_err(|e| anyhow::anyhow!("--policy {spec:?}: {e}"))?, source(src)?)
            }
            None => match source(part)? {
                PolicySource::Builtin(b) => (b.slot(), PolicySource::Builtin(b)),
                file => (Slot::Eviction, file),
            },
        };
        out.push((slot, PolicySpec { source: src, params }));
    }
    Ok(out)
}

pub fn simulate(args: SimArgs) -> anyhow::Result<ExitCode> {
    let basis = match args.size_basis.as_str() {
        "provisioned" => SizeBasis::Provisioned,
        "allocated" => SizeBasis::Allocated,
        other => bail!("--size-basis: expected provisioned or allocated, got {other:?}"),
    };
    if args.deadline_ms == 0 {
        bail!("--deadline-ms must be at least 1");
    }
    let records = read_trace(&args.trace)?;
    let sets: Vec<(String, Vec<(Slot, PolicySpec)>)> =
        args.policies.iter().map(|p| Ok((label(p), specs(p)?))).collect::<anyhow::Result<_>>()?;
    // Event hooks get the decisions' budget here, not the daemon's short one: a replay has no
    // request to keep fast, and a hook that times out on a busy machine would reset a stateful
    // plugin and make the results depend on the machine's load.
    let deadline = Duration::from_millis(args.deadline_ms);
    let options = EngineOptions { call_deadline: deadline, event_deadline: deadline, ..args.engine.options() };
    let engine = PolicyEngine::new(options)?;
    let mut outcomes = Vec::new();
    println!(
        "{:<28} {:>7} {:>6} {:>9} {:>7} {:>8} {:>8} {:>9} {:>10} {:>8} {:>8} {:>6} {:>8}",
        "policy",
        "GiB",
        "count",
        "requests",
        "hit %",
        "bytehit%",
        "fills",
        "evictions",
        "GiB wrote",
        "p50 us",
        "p99 us",
        "fails",
        "replay s"
    );
    for &max_count in &args.max_count {
        for &max_size_gb in &args.max_size_gb {
            let limits = CinderLimits { max_size_gb, max_count, basis };
            for (name, slots) in &sets {
                let set = PolicySet::new(engine.clone(), limits);
                for (slot, spec) in slots {
                    set.swap(*slot, spec.clone()).with_context(|| format!("--policy {name}: {slot}"))?;
                }
                let started = Instant::now();
                let outcome = sim::simulate(name, &records, &set);
                print_row(&outcome, started.elapsed());
                outcomes.push(outcome);
            }
            if !args.no_belady {
                let started = Instant::now();
                let outcome = belady::belady(&records, limits);
                print_row(&outcome, started.elapsed());
                outcomes.push(outcome);
            }
        }
    }
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut csv = BufWriter::new(create(&dir.join("results.csv"))?);
        writeln!(csv, "policy,max_size_gb,max_count,requests,hits,hit_ratio,bytes_requested,bytes_hit,byte_hit_ratio,byte_miss_ratio,fills,evictions,invalidations,uncached,bytes_written,decision_p50_us,decision_p99_us,failures,fallbacks")?;
        for o in &outcomes {
            writeln!(
                csv,
                "{},{},{},{},{},{:.6},{},{},{:.6},{:.6},{},{},{},{},{},{:.3},{:.3},{},{}",
                csv_field(&o.policy),
                o.max_size_gb,
                o.max_count,
                o.requests,
                o.hits,
                o.hit_ratio,
                o.bytes_requested,
                o.bytes_hit,
                o.byte_hit_ratio,
                o.byte_miss_ratio,
                o.fills,
                o.evictions,
                o.invalidations,
                o.uncached,
                o.bytes_written,
                o.decision_p50_us,
                o.decision_p99_us,
                o.failures,
                o.fallbacks
            )?;
        }
        csv.flush()?;
        std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&outcomes)?)?;
        let title = format!("{} ({} requests)", args.trace.display(), outcomes.first().map_or(0, |o| o.requests));
        for &max_count in &args.max_count {
            let rows: Vec<sim::Outcome> = outcomes.iter().filter(|o| o.max_count == max_count).cloned().collect();
            let name = if args.max_count.len() == 1 {
                "miss-ratio".to_string()
            } else {
                format!("miss-ratio-count-{max_count}")
            };
            let svg = plot::miss_ratio_svg(&title, &rows);
            std::fs::write(dir.join(format!("{name}.svg")), &svg)?;
            match plot::svg_to_png(&svg) {
                Ok(png) => std::fs::write(dir.join(format!("{name}.png")), png)?,
                Err(e) => eprintln!("volcache: no PNG plot: {e}"),
            }
        }
        println!("wrote results.csv, results.json and the miss-ratio plots (SVG, PNG) into {}", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// A CSV field: quoted when it holds a comma, a quote or a line break (a policy set such as
/// `admission=second-hit.wasm,eviction=gdsf.wasm` does), quotes doubled (RFC 4180).
fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

fn print_row(o: &sim::Outcome, took: Duration) {
    println!(
        "{:<28} {:>7} {:>6} {:>9} {:>6.2}% {:>7.2}% {:>8} {:>9} {:>10.1} {:>8.1} {:>8.1} {:>6} {:>8.2}",
        o.policy,
        o.max_size_gb,
        o.max_count,
        o.requests,
        o.hit_ratio * 100.0,
        o.byte_hit_ratio * 100.0,
        o.fills,
        o.evictions,
        o.bytes_written as f64 / (1u64 << 30) as f64,
        o.decision_p50_us,
        o.decision_p99_us,
        o.failures,
        took.as_secs_f64()
    );
}
