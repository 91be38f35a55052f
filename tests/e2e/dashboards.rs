//! The operator's dashboards in `deploy/`: the Prometheus alert rules and every Grafana query
//! pass `promtool check rules`, and they only name metrics the daemon exports.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use crate::daemon::Daemon;

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(path)
}

/// `volcache_*` names in `text`, histogram series folded onto the names /metrics shows.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("volcache_") {
        let start = i + at;
        let preceded = start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end =
            text[start..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(text.len(), |n| start + n);
        if !preceded {
            names.insert(text[start..end].to_string());
        }
        i = end;
    }
    names
}

fn promtool(rules: &std::path::Path) {
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(rules)
        .output()
        .unwrap_or_else(|e| panic!("promtool: {e}: run `make deps` (Debian package prometheus); `make test` does"));
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn alert_rules_and_dashboard_queries_are_valid_and_use_exported_metrics() {
    let d = Daemon::start_in({
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("volcache.toml"), "").unwrap();
        dir
    });
    let (status, body) = crate::daemon::request(&d.addr, "GET", "/metrics", None, None).unwrap();
    assert_eq!(status, 200);
    let exported = metric_names(&String::from_utf8_lossy(&body));
    assert!(exported.contains("volcache_cache_hits_total"), "{exported:?}");

    let alerts = deploy("prometheus/volcache-alerts.yml");
    promtool(&alerts);
    let alert_text = std::fs::read_to_string(&alerts).unwrap();

    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/volcache-dashboard.json")).unwrap()).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_string()))
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    // Each query as a recording rule: promtool parses the PromQL.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let expr = expr.replace("$instance", ".*");
        rules.push_str(&format!(
            "      - record: volcache:dashboard:query_{i}\n        expr: {}\n",
            serde_json::json!(expr)
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&file, rules).unwrap();
    promtool(&file);

    let used: BTreeSet<String> =
        metric_names(&alert_text).into_iter().chain(exprs.iter().flat_map(|e| metric_names(e))).collect();
    let unknown: Vec<&String> = used.iter().filter(|m| !exported.contains(*m)).collect();
    assert!(unknown.is_empty(), "queries name metrics /metrics does not export: {unknown:?}");
    assert!(used.len() >= 12, "the dashboards cover the cache and the policies: {used:?}");
}
