//! Reproducible synthetic traces of the shapes an image cache sees (`volcache trace synth`).
//!
//! - `zipf`: `images` images whose popularity follows Zipf(`alpha`) (rank r is requested in
//!   proportion to 1/r^alpha), sizes lognormal (median `size_median_gib`, shape `size_sigma`);
//! - `releases`: zipf, plus the `release_images` most popular images getting a new version every
//!   `release_every_hours` (their updates spread over that period): the old version fades;
//! - `scan`: zipf, plus every `scan_every` requests a one-off burst of `scan_len` requests for
//!   images never seen before or after (a batch job walking a catalog);
//! - `mix`: zipf with releases and scans.
//!
//! Requests are spread evenly over `days`. The same parameters and `seed` give the same trace.
#![forbid(unsafe_code)]

use super::trace::{Op, Record};

const GIB: f64 = (1u64 << 30) as f64;

/// The shapes [`generate`] makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    Zipf,
    Releases,
    Scan,
    Mix,
}

/// Parameters of a synthetic trace (documented in the module header and the README).
#[derive(Clone, Debug, clap::Args)]
pub struct Params {
    /// Which workload shape.
    #[arg(long, value_enum, default_value = "mix")]
    pub shape: Shape,
    /// Distinct (popular) images.
    #[arg(long, default_value_t = 1_000)]
    pub images: u32,
    /// Volume creations in the trace (scan bursts included).
    #[arg(long, default_value_t = 100_000)]
    pub requests: u64,
    /// Zipf exponent of image popularity.
    #[arg(long, default_value_t = 0.9)]
    pub alpha: f64,
    /// Median image size, GiB.
    #[arg(long, default_value_t = 4.0)]
    pub size_median_gib: f64,
    /// Lognormal shape of image sizes (0: all the median).
    #[arg(long, default_value_t = 0.8)]
    pub size_sigma: f64,
    /// How many of the most popular images get new versions (releases, mix).
    #[arg(long, default_value_t = 20)]
    pub release_images: u32,
    /// Period of new versions, hours (releases, mix).
    #[arg(long, default_value_t = 24.0)]
    pub release_every_hours: f64,
    /// A scan burst every this many requests (scan, mix).
    #[arg(long, default_value_t = 10_000)]
    pub scan_every: u64,
    /// Requests in one scan burst (scan, mix).
    #[arg(long, default_value_t = 500)]
    pub scan_len: u64,
    /// Time the trace spans, days.
    #[arg(long, default_value_t = 30.0)]
    pub days: f64,
    /// Seed of the generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// splitmix64 then xorshift*: small, seeded, good enough for workloads.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in (0, 1).
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        (-2.0 * self.unit().ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos()
    }
}

fn check(p: &Params) -> Result<(), String> {
    let bad = |what: &str| Err(format!("--{what} is out of range"));
    if p.images == 0 || p.images > 10_000_000 {
        return bad("images");
    }
    if p.requests == 0 || p.requests > 1_000_000_000 {
        return bad("requests");
    }
    if !(0.0..=5.0).contains(&p.alpha) {
        return bad("alpha");
    }
    if !(p.size_median_gib > 0.0 && p.size_median_gib <= 65_536.0) {
        return bad("size-median-gib");
    }
    if !(0.0..=4.0).contains(&p.size_sigma) {
        return bad("size-sigma");
    }
    if !(p.days > 0.0 && p.days <= 3650.0) {
        return bad("days");
    }
    if p.release_every_hours.is_nan() || p.release_every_hours <= 0.0 {
        return bad("release-every-hours");
    }
    if p.scan_every == 0 {
        return bad("scan-every");
    }
    Ok(())
}

/// Generates the trace: `register` lines for every image first, then requests in time order,
/// with `update` lines where an image gets a new version.
pub fn generate(p: &Params) -> Result<Vec<Record>, String> {
    check(p)?;
    let mut rng = Rng::new(p.seed);
    let n = p.images as usize;
    let size = |rng: &mut Rng| {
        let gib = p.size_median_gib * (p.size_sigma * rng.normal()).exp();
        // Whole MiB, at least 64 MiB.
        ((gib * GIB) as u64 / (1 << 20)).max(64) << 20
    };
    let sizes: Vec<u64> = (0..n).map(|_| size(&mut rng)).collect();
    // Popularity: rank r (0-based) has weight 1/(r+1)^alpha; sample by binary search of the CDF.
    let mut cdf = Vec::with_capacity(n);
    let mut total = 0.0;
    for r in 0..n {
        total += 1.0 / ((r + 1) as f64).powf(p.alpha);
        cdf.push(total);
    }
    let name = |i: usize| format!("img-{i:06}");
    let mut out: Vec<Record> = (0..n)
        .map(|i| Record { time_ms: 0, op: Op::Register, image: name(i), version: 0, size_bytes: sizes[i] })
        .collect();
    let span_ms = p.days * 86_400_000.0;
    let step = span_ms / p.requests as f64;
    let releases = matches!(p.shape, Shape::Releases | Shape::Mix);
    let scans = matches!(p.shape, Shape::Scan | Shape::Mix);
    let release_ms = p.release_every_hours * 3_600_000.0;
    let released = (p.release_images as usize).min(n);
    let mut versions = vec![0u32; n];
    let mut scan_no = 0u64;
    let mut i = 0u64;
    while i < p.requests {
        let t = (i as f64 * step) as u64;
        if releases {
            // Image k of the released ones gets version v at (v + k/released) * period.
            for (k, version) in versions.iter_mut().enumerate().take(released) {
                let due = ((t as f64 / release_ms) - k as f64 / released as f64).floor();
                if due >= 1.0 && due as u32 > *version {
                    *version = due as u32;
                    out.push(Record {
                        time_ms: t,
                        op: Op::Update,
                        image: name(k),
                        version: *version,
                        size_bytes: sizes[k],
                    });
                }
            }
        }
        if scans && i > 0 && i.is_multiple_of(p.scan_every) {
            scan_no += 1;
            for j in 0..p.scan_len.min(p.requests - i) {
                let image = format!("scan-{scan_no:04}-{j:05}");
                let size_bytes = size(&mut rng);
                let time_ms = ((i + j) as f64 * step) as u64;
                out.push(Record { time_ms, op: Op::Register, image: image.clone(), version: 0, size_bytes });
                out.push(Record { time_ms, op: Op::Request, image, version: 0, size_bytes });
            }
            i += p.scan_len;
            continue;
        }
        let u = rng.unit() * total;
        let k = cdf.partition_point(|&c| c < u).min(n - 1);
        out.push(Record { time_ms: t, op: Op::Request, image: name(k), version: versions[k], size_bytes: sizes[k] });
        i += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        p: Params,
    }

    fn params(args: &[&str]) -> Params {
        Cli::parse_from(std::iter::once("synth").chain(args.iter().copied())).p
    }

    #[test]
    fn the_same_seed_gives_the_same_trace_and_another_seed_another() {
        let p = params(&["--requests", "5000", "--images", "200"]);
        let a = generate(&p).unwrap();
        assert_eq!(a, generate(&p).unwrap());
        let b = generate(&params(&["--requests", "5000", "--images", "200", "--seed", "2"])).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.iter().filter(|r| r.op == Op::Request).count(), 5000);
    }

    #[test]
    fn popularity_follows_zipf_and_releases_bump_versions() {
        let p = params(&["--shape", "releases", "--requests", "50000", "--images", "100", "--alpha", "1.0"]);
        let t = generate(&p).unwrap();
        let count = |image: &str| t.iter().filter(|r| r.op == Op::Request && r.image == image).count();
        let (first, tenth) = (count("img-000000"), count("img-000009"));
        // Zipf(1): rank 1 is requested about 10 times as often as rank 10.
        assert!((6..=15).contains(&(first / tenth.max(1))), "{first} vs {tenth}");
        let updates = t.iter().filter(|r| r.op == Op::Update && r.image == "img-000000").count();
        assert!((28..=30).contains(&updates), "30 days of daily releases: {updates}");
        let last = t.iter().rev().find(|r| r.op == Op::Request && r.image == "img-000000").unwrap();
        assert!(last.version >= 28, "requests follow the newest version");
    }

    #[test]
    fn scans_request_one_off_images() {
        let t = generate(&params(&[
            "--shape",
            "scan",
            "--requests",
            "30000",
            "--scan-every",
            "10000",
            "--scan-len",
            "100",
        ]))
        .unwrap();
        let scanned: Vec<&Record> = t.iter().filter(|r| r.op == Op::Request && r.image.starts_with("scan-")).collect();
        assert_eq!(scanned.len(), 200);
        let mut ids: Vec<&str> = scanned.iter().map(|r| r.image.as_str()).collect();
        ids.dedup();
        assert_eq!(ids.len(), 200, "each scanned image is requested once");
        assert!(params(&["--alpha", "9"]).alpha > 5.0 && generate(&params(&["--alpha", "9"])).is_err());
    }
}
