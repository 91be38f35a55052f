//! The policy lab from the command line: synthetic traces, the simulator with built-in and wasm
//! policies side by side, the Belady bound, contained plugin failures, and the output files.

use std::path::Path;
use std::process::Output;

use crate::fixtures::{plugin, test_plugin};

fn volcache(args: &[&str]) -> Output {
    let out = crate::fixtures::volcache_cmd().args(args).output().expect("run volcache");
    assert!(
        out.status.success(),
        "volcache {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn synth(dir: &Path, args: &[&str]) -> String {
    let trace = dir.join("trace.csv").display().to_string();
    let mut all = vec!["trace", "synth", "-o", &trace];
    all.extend_from_slice(args);
    volcache(&all);
    trace
}

fn results(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("results.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap().as_array().unwrap().clone()
}

fn row<'a>(rows: &'a [serde_json::Value], policy: &str, gb: u64) -> &'a serde_json::Value {
    rows.iter()
        .find(|r| r["policy"] == policy && r["max_size_gb"] == gb)
        .unwrap_or_else(|| panic!("no row for {policy} at {gb} GiB"))
}

#[test]
fn wasm_and_native_lru_replay_identically_and_belady_bounds_them() {
    let dir = tempfile::tempdir().unwrap();
    let trace =
        synth(dir.path(), &["--shape", "mix", "--requests", "20000", "--images", "300", "--scan-every", "5000"]);
    let lru = plugin("lru").display().to_string();
    let out = dir.path().join("out").display().to_string();
    let printed = volcache(&[
        "simulate",
        "--trace",
        &trace,
        "--policy",
        "cinder",
        "--policy",
        &lru,
        "--max-size-gb",
        "40,160",
        "--out",
        &out,
    ]);
    let stdout = String::from_utf8_lossy(&printed.stdout);
    assert_eq!(stdout.lines().filter(|l| l.starts_with("belady")).count(), 2, "{stdout}");
    let rows = results(Path::new(&out));
    assert_eq!(rows.len(), 6, "2 policy sets and Belady, at 2 sizes");
    for gb in [40, 160] {
        let (native, wasm, best) = (row(&rows, "cinder", gb), row(&rows, "lru.wasm", gb), row(&rows, "belady", gb));
        for field in ["hits", "fills", "evictions", "invalidations", "uncached", "bytes_hit"] {
            assert_eq!(native[field], wasm[field], "{field} at {gb} GiB: the same code decides");
        }
        assert_eq!((wasm["failures"].as_u64(), wasm["fallbacks"].as_u64()), (Some(0), Some(0)));
        assert_eq!(native["requests"], 20000);
        let ratio = |r: &serde_json::Value| r["byte_hit_ratio"].as_f64().unwrap();
        assert!(ratio(best) >= ratio(native), "Belady is the bound at {gb} GiB: {best} vs {native}");
        assert!(native["evictions"].as_u64().unwrap() > 0, "the cache was under pressure at {gb} GiB");
    }
    let ratio = |gb| row(&rows, "cinder", gb)["byte_hit_ratio"].as_f64().unwrap();
    assert!(ratio(160) > ratio(40), "a bigger cache hits more");
    let csv = std::fs::read_to_string(Path::new(&out).join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 7, "a header and a line per row");
    let svg = std::fs::read_to_string(Path::new(&out).join("miss-ratio.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.matches("<polyline").count() == 3, "a line per policy set");
    check_png(&Path::new(&out).join("miss-ratio.png"), &svg);
}

/// The PNG is the SVG drawn at twice its size: the lines in the policies' colours, and the text
/// (title, axes, legend) in black, which only a font could have drawn.
fn check_png(path: &Path, svg: &str) {
    use resvg::tiny_skia::Pixmap;
    let png = Pixmap::load_png(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!((png.width(), png.height()), (1440, 840));
    let count = |r: u8, g: u8, b: u8, rows: std::ops::Range<u32>| {
        png.pixels()
            .iter()
            .enumerate()
            .filter(|(i, _)| rows.contains(&(*i as u32 / png.width())))
            .filter(|(_, p)| (p.red(), p.green(), p.blue(), p.alpha()) == (r, g, b, 255))
            .count()
    };
    // The first two policy colours of the SVG, in full strength somewhere in the picture.
    for color in ["#1f77b4", "#d62728"] {
        assert!(svg.contains(color));
        let rgb = |i: usize| u8::from_str_radix(&color[i..i + 2], 16).unwrap();
        assert!(count(rgb(1), rgb(3), rgb(5), 0..840) > 100, "no {color} line in the PNG");
    }
    // The title line (y 22 in the SVG, about rows 20-50 at twice the size) holds black glyphs.
    assert!(count(0, 0, 0, 20..50) > 200, "the title was not drawn: no font?");
}

#[test]
fn a_misbehaving_plugin_in_the_simulator_is_contained_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let trace = synth(dir.path(), &["--shape", "zipf", "--requests", "1500", "--images", "200"]);
    let evil = test_plugin("evil").display().to_string();
    let out = dir.path().join("out").display().to_string();
    // Invalid answers (unknown ids) once the cache holds 10 entries, and a loop at 8 entries
    // (the smoke test has 4): each failing decision is made by the built-in instead.
    let invalid = format!("eviction={evil}+mode=unknown-ids+trigger=10");
    let looping = format!("eviction={evil}+mode=loop+trigger=8");
    volcache(&[
        "simulate",
        "--trace",
        &trace,
        "--policy",
        "cinder",
        "--policy",
        &invalid,
        "--policy",
        &looping,
        "--max-size-gb",
        "60",
        "--max-count",
        "40",
        "--deadline-ms",
        "5",
        "--no-belady",
        "--out",
        &out,
    ]);
    let rows = results(Path::new(&out));
    let (cinder, invalid, looping) = (&rows[0], &rows[1], &rows[2]);
    for (name, bad) in [("invalid", invalid), ("loop", looping)] {
        // Every failed decision is made by the built-in (a fallback); the outcome below equal
        // to Cinder's proves it. Other calls with nothing to decide instead (an expiry round, an
        // event hook) may fail too when a loaded machine stretches them past the 5 ms deadline,
        // so failures may exceed fallbacks, never the other way.
        let (failures, fallbacks) = (bad["failures"].as_u64().unwrap(), bad["fallbacks"].as_u64().unwrap());
        assert!(fallbacks > 0 && failures >= fallbacks, "{name}: {bad}");
        for field in ["hits", "fills", "evictions", "bytes_hit"] {
            assert_eq!(bad[field], cinder[field], "{name}: {field}: the fallback is Cinder's rule");
        }
    }
}

#[test]
fn a_daemon_records_its_workload_and_the_simulator_replays_it() {
    use crate::daemon::{Daemon, TOKEN};
    let d = Daemon::with_images(1, &["a", "b"]);
    let call = |method: &str, path: &str, body: serde_json::Value| {
        let bytes = body.to_string().into_bytes();
        let (status, reply) = d.call(method, path, Some(TOKEN), Some(("application/json", &bytes)));
        assert!(status < 300, "{method} {path}: {status} {reply}");
    };
    for image in ["a", "a", "b"] {
        call("POST", "/v1/volumes", serde_json::json!({"image_id": image, "size": 1}));
    }
    call("PATCH", "/v1/images/b", serde_json::json!({"name": "b2"}));
    call("POST", "/v1/volumes", serde_json::json!({"image_id": "b", "size": 1}));

    let trace = d._dir.path().join("exported.csv");
    let out = crate::fixtures::volcache_cmd()
        .args(["trace", "export", "--url", &format!("http://{}", d.addr), "-o", trace.to_str().unwrap()])
        .env("VOLCACHE_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&trace).unwrap();
    let ops: Vec<(String, String, String)> = text
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[1].to_string(), f[2].to_string(), f[3].to_string())
        })
        .collect();
    let want = [
        ("register", "a", "0"),
        ("register", "b", "0"),
        ("request", "a", "0"),
        ("request", "a", "0"),
        ("request", "b", "0"),
        ("evict", "a", "0"),
        ("update", "b", "1"),
        ("request", "b", "1"),
        ("evict", "b", "0"),
    ];
    let got: Vec<(&str, &str, &str)> = ops.iter().map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str())).collect();
    assert_eq!(got, want, "{text}");
    assert!(!text.contains(".raw") && !text.contains(TOKEN), "only ids and sizes: {text}");

    let sim = volcache(&["simulate", "--trace", trace.to_str().unwrap(), "--max-size-gb", "0", "--max-count", "1"]);
    let stdout = String::from_utf8_lossy(&sim.stdout);
    let cinder = stdout.lines().find(|l| l.starts_with("cinder")).unwrap();
    assert!(cinder.contains(" 4 ") && cinder.contains("25.00%"), "4 requests, 1 hit, as the daemon saw: {stdout}");
}

#[test]
fn plugin_test_replays_a_trace_and_fails_a_plugin_that_fails_there() {
    let dir = tempfile::tempdir().unwrap();
    let trace = synth(dir.path(), &["--shape", "zipf", "--requests", "2000", "--images", "200"]);
    let lru = plugin("lru").display().to_string();
    let out = volcache(&[
        "plugin",
        "test",
        &lru,
        "--slot",
        "eviction",
        "--random",
        "10",
        "--trace",
        &trace,
        "--max-size-gb",
        "60",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let replay: Vec<&str> = stdout.lines().filter(|l| l.starts_with("replay")).collect();
    assert_eq!(replay.len(), 2, "{stdout}");
    let numbers = |l: &str| l.split_once("GiB:").unwrap().1.to_string();
    assert_eq!(numbers(replay[0]), numbers(replay[1]), "the wasm LRU replays like the built-in: {stdout}");

    let evil = test_plugin("evil").display().to_string();
    let out = crate::fixtures::volcache_cmd()
        .args([
            "plugin",
            "test",
            &evil,
            "--slot",
            "eviction",
            "--random",
            "0",
            "--trace",
            &trace,
            "--max-size-gb",
            "60",
        ])
        .args(["--param", "mode=unknown-ids", "--param", "trigger=10"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn sieve_gdsf_second_hit_and_frequent_download_less_than_lru_on_a_trace_with_scans() {
    let dir = tempfile::tempdir().unwrap();
    let trace =
        synth(dir.path(), &["--shape", "scan", "--requests", "20000", "--images", "500", "--scan-every", "4000"]);
    let gdsf = plugin("gdsf").display().to_string();
    let second = format!("admission={},eviction={gdsf}", plugin("second-hit").display());
    let out = dir.path().join("out").display().to_string();
    let sieve = plugin("sieve").display().to_string();
    let frequent = format!("admission={},eviction={}", plugin("frequent").display(), plugin("rate").display());
    volcache(&[
        "simulate",
        "--trace",
        &trace,
        "--policy",
        "cinder",
        "--policy",
        &gdsf,
        "--policy",
        &second,
        "--policy",
        &sieve,
        "--policy",
        &frequent,
        "--max-size-gb",
        "150",
        "--out",
        &out,
    ]);
    let rows = results(Path::new(&out));
    let miss = |policy: &str| row(&rows, policy, 150)["byte_miss_ratio"].as_f64().unwrap();
    let (lru, g, s, best) =
        (miss("cinder"), miss("gdsf.wasm"), miss("admission=second-hit.wasm,eviction=gdsf.wasm"), miss("belady"));
    assert!(g < lru && s < g && best < s, "LRU {lru:.3} > gdsf {g:.3} > second-hit+gdsf {s:.3} > Belady {best:.3}");
    let v = miss("sieve.wasm");
    assert!(v < lru && best < v, "LRU {lru:.3} > sieve {v:.3} > Belady {best:.3}");
    // A policy set with a comma in its name is one quoted CSV field.
    let csv = std::fs::read_to_string(Path::new(&out).join("results.csv")).unwrap();
    assert!(csv.contains("\n\"admission=second-hit.wasm,eviction=gdsf.wasm\",150,0,20000,"), "{csv}");
    let f = miss("admission=frequent.wasm,eviction=rate.wasm");
    assert!(f < s && best < f, "second-hit+gdsf {s:.3} > frequent+rate {f:.3} > Belady {best:.3}");
    let fills = |policy: &str| row(&rows, policy, 150)["fills"].as_u64().unwrap();
    assert!(
        fills("admission=second-hit.wasm,eviction=gdsf.wasm") < fills("gdsf.wasm"),
        "one-off images are not cached"
    );
    for p in [
        "gdsf.wasm",
        "admission=second-hit.wasm,eviction=gdsf.wasm",
        "sieve.wasm",
        "admission=frequent.wasm,eviction=rate.wasm",
    ] {
        assert_eq!(row(&rows, p, 150)["failures"], 0);
    }
}

#[test]
fn a_shadow_sees_the_live_requests_compares_them_and_is_detached() {
    use crate::daemon::{Daemon, TOKEN};
    let d = Daemon::with_images(2, &["a", "b", "c"]);
    let call = |method: &str, path: &str, body: Option<(&str, Vec<u8>)>| {
        let (status, reply) = d.call(method, path, Some(TOKEN), body.as_ref().map(|(t, b)| (*t, b.as_slice())));
        (status, reply)
    };
    let json = |v: serde_json::Value| Some(("application/json", v.to_string().into_bytes()));
    let (status, body) = call("DELETE", "/v1/policies/eviction/shadow", None);
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("no_shadow")));
    let gdsf = std::fs::read(plugin("gdsf")).unwrap();
    let (status, body) = call("PUT", "/v1/policies/eviction/shadow", Some(("application/wasm", gdsf)));
    assert_eq!((status, body["name"].as_str()), (200, Some("gdsf")), "{body}");

    let mut outcomes = Vec::new();
    for image in ["a", "a", "a", "b", "c", "a", "b", "c", "a"] {
        let (status, reply) = call("POST", "/v1/volumes", json(serde_json::json!({"image_id": image, "size": 1})));
        assert_eq!(status, 201, "{reply}");
        outcomes.push(reply["cache"].as_str().unwrap().to_string());
    }
    let live_hits = outcomes.iter().filter(|o| *o == "hit").count() as u64;
    // The shadow replays off the request path: wait for it to catch up.
    let started = std::time::Instant::now();
    let shadow = loop {
        let (_, policies) = call("GET", "/v1/policies", None);
        let slot = policies.as_array().unwrap().iter().find(|p| p["slot"] == "eviction").unwrap().clone();
        assert_eq!(slot["name"], "lru", "the live policy is unchanged");
        if slot["shadow"]["shadow"]["requests"] == 9 || started.elapsed() > std::time::Duration::from_secs(20) {
            break slot["shadow"].clone();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(shadow["live"]["requests"], 9, "{shadow}");
    assert_eq!(shadow["live"]["hits"].as_u64(), Some(live_hits), "{shadow}");
    assert_eq!(shadow["shadow"]["requests"], 9, "{shadow}");
    // gdsf keeps the popular `a` where LRU evicted it: it hits more on this sequence.
    assert!(shadow["shadow"]["hits"].as_u64().unwrap() > live_hits, "{shadow}");
    assert_eq!((shadow["dropped_records"].as_u64(), shadow["shadow"]["failures"].as_u64()), (Some(0), Some(0)));

    let (status, _) = call("DELETE", "/v1/policies/eviction/shadow", None);
    assert_eq!(status, 204);
    let (_, policies) = call("GET", "/v1/policies", None);
    assert!(policies.as_array().unwrap().iter().all(|p| p["shadow"].is_null()));
}

/// The simulator asks an expiry rule every simulated minute, as the daemon does: `ttl` lets an
/// image idle for longer than its TTL go although the cache has room, and the next request for
/// it misses; LRU, which has no expiry rule, keeps it.
#[test]
fn the_simulator_replays_expiry_like_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let day = 86_400_000u64;
    let mut trace =
        String::from("time_ms,op,image,version,size_bytes\n0,register,a,0,1073741824\n0,register,b,0,1073741824\n");
    // a: used at 0 and after three idle days; b: used every 12 hours.
    trace.push_str("0,request,a,0,1073741824\n");
    for i in 0..=6 {
        trace.push_str(&format!("{},request,b,0,1073741824\n", i * day / 2 + 1));
    }
    trace.push_str(&format!("{},request,a,0,1073741824\n", 3 * day + 2));
    let path = dir.path().join("idle.csv");
    std::fs::write(&path, trace).unwrap();
    let ttl = format!("{}+ttl_seconds=86400", plugin("ttl").display());
    let out = dir.path().join("out").display().to_string();
    let printed = volcache(&[
        "simulate",
        "--trace",
        path.to_str().unwrap(),
        "--policy",
        "cinder",
        "--policy",
        &ttl,
        "--max-size-gb",
        "100",
        "--out",
        &out,
    ]);
    assert!(printed.status.success(), "{}", String::from_utf8_lossy(&printed.stderr));
    let rows = results(Path::new(&out));
    let lru = row(&rows, "cinder", 100);
    let ttl = row(&rows, "ttl.wasm+ttl_seconds=86400", 100);
    assert_eq!((lru["hits"].as_u64(), lru["evictions"].as_u64()), (Some(7), Some(0)), "{lru}");
    // b (hit every 12 hours) stays; a expired after a day idle and missed again.
    assert_eq!(
        (ttl["hits"].as_u64(), ttl["evictions"].as_u64(), ttl["fills"].as_u64()),
        (Some(6), Some(1), Some(3)),
        "{ttl}"
    );
    assert_eq!(ttl["failures"], 0);
}

/// On a machine without any font the PNG cannot show its text: it is left out with one line
/// saying what to install, and the SVG, the CSV and the JSON are still written.
#[test]
fn without_a_font_the_png_is_left_out_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let trace = synth(dir.path(), &["--shape", "zipf", "--requests", "500", "--images", "50"]);
    // A fontconfig that lists one empty directory: no system font is found.
    let empty = dir.path().join("no-fonts");
    std::fs::create_dir(&empty).unwrap();
    let conf = dir.path().join("fonts.conf");
    std::fs::write(
        &conf,
        format!("<?xml version=\"1.0\"?>\n<fontconfig><dir>{}</dir></fontconfig>\n", empty.display()),
    )
    .unwrap();
    let out = dir.path().join("out");
    let run = crate::fixtures::volcache_cmd()
        .args(["simulate", "--trace", &trace, "--max-size-gb", "20", "--out", out.to_str().unwrap()])
        .env("FONTCONFIG_FILE", &conf)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("no PNG plot") && stderr.contains("fonts-dejavu-core"), "{stderr}");
    assert!(!out.join("miss-ratio.png").exists());
    for file in ["miss-ratio.svg", "results.csv", "results.json"] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
}
