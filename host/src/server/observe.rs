//! What operators watch: `GET /v1/events` (server-sent events: every hit, miss and eviction,
//! and every policy change) and `GET /metrics` (Prometheus text format).
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::fmt::Write as _;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};

use super::error::ApiError;
use super::AppState as HealthState;

/// `GET /healthz`: 200 when the daemon can serve creates, 503 with the reason when its catalog
/// failed and could not be reopened yet. Also says how many creates wait for another's fill.
pub async fn health(State(state): State<HealthState>) -> impl IntoResponse {
    let cache = state.cache.clone();
    let checked =
        tokio::task::spawn_blocking(move || (cache.catalog().health(), cache.waiting(), cache.fills_in_progress()))
            .await;
    let (catalog, waiting, fills) = match checked {
        Ok(found) => found,
        Err(e) => (Some(format!("health check failed: {e}")), 0, 0),
    };
    let body = |status: &str| {
        serde_json::json!({"status": status, "catalog": catalog.clone().unwrap_or_else(|| "ok".into()),
            "creates_waiting_for_a_fill": waiting, "fills_in_progress": fills})
    };
    match &catalog {
        None => (axum::http::StatusCode::OK, axum::Json(body("ok"))),
        Some(_) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, axum::Json(body("unhealthy"))),
    }
}
use super::AppState;

/// `GET /v1/events`: `event:` is `image_volume_cache.hit|miss|evict|progress|warm` or
/// `policy.changed`, `data:` the JSON payload. A client too slow to keep up is told how many events it missed.
pub async fn events(State(state): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let cache = BroadcastStream::new(state.cache.subscribe()).map(|item| match item {
        Ok(e) => Event::default().event(e.event_type).json_data(&e).unwrap_or_default(),
        Err(lagged) => Event::default().event("lagged").data(lagged.to_string()),
    });
    let work = BroadcastStream::new(state.cache.subscribe_work()).map(|item| match item {
        Ok(e) => Event::default().event(e.event_type).json_data(&e).unwrap_or_default(),
        Err(lagged) => Event::default().event("lagged").data(lagged.to_string()),
    });
    let policies = BroadcastStream::new(state.policy_events.subscribe()).map(|item| match item {
        Ok(status) => Event::default().event("policy.changed").json_data(&status).unwrap_or_default(),
        Err(lagged) => Event::default().event("lagged").data(lagged.to_string()),
    });
    // The daemon stopping ends the stream, so a connected client does not hold up the shutdown.
    let stopping =
        tokio_stream::wrappers::WatchStream::new(state.stopping().subscribe()).filter(|stop| *stop).map(|_| None);
    let events = cache
        .merge(work)
        .merge(policies)
        .map(Some)
        .merge(stopping)
        .take_while(Option::is_some)
        .map(|e| Ok(e.unwrap_or_default()));
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let cache = state.cache.clone();
    let (stats, fills, (missing, aside)) = tokio::task::spawn_blocking(move || {
        Ok::<_, crate::cache::CacheError>((cache.stats()?, cache.fill_histogram(), cache.awaiting_operator()?))
    })
    .await
    .map_err(|e| ApiError::internal(&e))??;
    let host = format!("{{host=\"{}\"}}", state.cache.config().host.replace('"', ""));
    let one = |v: u64| vec![(host.clone(), v as f64)];
    let mut out = String::new();
    metric(
        &mut out,
        "volcache_cache_hits_total",
        "counter",
        "Volumes created by cloning a cache entry.",
        &one(stats.hits),
    );
    metric(
        &mut out,
        "volcache_cache_misses_total",
        "counter",
        "Creates the cache could not serve.",
        &one(stats.misses),
    );
    metric(&mut out, "volcache_cache_evictions_total", "counter", "Cache entries evicted.", &one(stats.evictions));
    metric(
        &mut out,
        "volcache_cache_uncached_total",
        "counter",
        "Volumes written without the cache.",
        &one(stats.uncached),
    );
    metric(&mut out, "volcache_cache_entries", "gauge", "Cache entries in this scope.", &one(stats.entries));
    metric(
        &mut out,
        "volcache_cache_pinned_entries",
        "gauge",
        "Cache entries pinned by an operator.",
        &one(stats.pinned_entries),
    );
    metric(
        &mut out,
        "volcache_cache_allocated_bytes",
        "gauge",
        "Bytes allocated by cache entries.",
        &one(stats.cache_bytes_allocated),
    );
    metric(
        &mut out,
        "volcache_evicted_bytes_held",
        "gauge",
        "Bytes still held by evicted cache volumes whose clones live (freed with the last clone).",
        &one(stats.evicted_bytes_held),
    );
    metric(
        &mut out,
        "volcache_evicted_volumes_held",
        "gauge",
        "Evicted cache volumes still held by live clones.",
        &one(stats.evicted_volumes_held),
    );
    metric(
        &mut out,
        "volcache_cache_provisioned_gigabytes",
        "gauge",
        "Provisioned GiB of cache entries.",
        &one(stats.cache_gigabytes),
    );
    metric(
        &mut out,
        "volcache_bytes_not_downloaded_total",
        "counter",
        "Image bytes not downloaded thanks to hits.",
        &one(stats.bytes_not_downloaded),
    );
    metric(
        &mut out,
        "volcache_bytes_not_written_total",
        "counter",
        "Bytes not written thanks to hits.",
        &one(stats.bytes_not_written),
    );
    let catalog = state.cache.catalog();
    metric(
        &mut out,
        "volcache_catalog_commits_total",
        "counter",
        "Catalog write transactions committed since the daemon started.",
        &one(catalog.commits()),
    );
    metric(
        &mut out,
        "volcache_catalog_flushes_total",
        "counter",
        "Catalog commits that waited for the disk since the daemon started (overlapping writers share one).",
        &one(catalog.flushes()),
    );

    let _ = writeln!(
        out,
        "# HELP volcache_cache_fill_seconds Time to fill a cache entry.\n# TYPE volcache_cache_fill_seconds histogram"
    );
    let mut cumulative = 0;
    for (le, count) in fills.buckets {
        cumulative += count;
        let le = if le.is_infinite() { "+Inf".to_string() } else { le.to_string() };
        let _ = writeln!(out, "volcache_cache_fill_seconds_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(
        out,
        "volcache_cache_fill_seconds_sum {}\nvolcache_cache_fill_seconds_count {cumulative}",
        fills.sum_seconds
    );

    // What start-up found that an operator must act on, until they do.
    metric(
        &mut out,
        "volcache_start_user_volumes_missing",
        "gauge",
        "User volumes the last start found recorded but missing from the backend (their data is lost; see the log), still recorded.",
        &one(missing as u64),
    );
    metric(
        &mut out,
        "volcache_start_volumes_set_aside",
        "gauge",
        "Volumes the last start set aside under the quarantine project, still there (delete them or hand them back).",
        &one(aside as u64),
    );

    // Counters since start by one label, every value present (zeros included).
    let by = |label: &str, counts: Vec<(&'static str, u64)>| -> Vec<(String, f64)> {
        counts.into_iter().map(|(value, n)| (format!("{{{label}=\"{value}\"}}"), n as f64)).collect()
    };
    for (name, help, samples) in [
        (
            "volcache_cache_fill_failures_total",
            "Cache fills that failed since start, by reason: source (the image), no_space, unavailable (backend or catalog), image_gone.",
            by("reason", state.cache.fill_failures()),
        ),
        (
            "volcache_cache_warmups_total",
            "Warm-ups (POST /v1/cache/warm) since start, by result: filled, already_cached, joined (a fill of the image was running), refused, failed.",
            by("result", state.cache.warm_counts()),
        ),
        (
            "volcache_clones_total",
            "Volumes cloned from cache entries since start, by clone mode: reflink, sparse-copy (no reflink on this file system), snapshot-clone (RBD).",
            by("mode", state.cache.clone_modes()),
        ),
        (
            "volcache_image_refreshes_total",
            "Checks of images with a refresh interval since start, by result: unchanged, updated (no entry to refill), refilled, deferred, failed.",
            by("result", state.cache.refresh_counts()),
        ),
    ] {
        metric(&mut out, name, "counter", help, &samples);
    }

    let slots = state.policies().status();
    let by_slot = |f: &dyn Fn(&crate::policy::SlotStatus) -> f64| -> Vec<(String, f64)> {
        slots
            .iter()
            .map(|s| (format!("{{slot=\"{}\",policy=\"{}\"}}", s.slot, s.name.replace('"', "")), f(s)))
            .collect()
    };
    metric(
        &mut out,
        "volcache_policy_calls_total",
        "counter",
        "Calls into policy plugins.",
        &by_slot(&|s| s.stats.calls as f64),
    );
    metric(
        &mut out,
        "volcache_policy_fallbacks_total",
        "counter",
        "Decisions made by the built-in policy after a plugin failed.",
        &by_slot(&|s| s.stats.fallbacks as f64),
    );
    let failures: Vec<(String, f64)> = slots
        .iter()
        .flat_map(|s| {
            [
                ("timeout", s.stats.timeouts),
                ("memory", s.stats.memory_limit),
                ("trap", s.stats.traps),
                ("invalid-answer", s.stats.invalid_answers),
            ]
            .map(|(kind, n)| (format!("{{slot=\"{}\",kind=\"{kind}\"}}", s.slot), n as f64))
        })
        .collect();
    metric(&mut out, "volcache_policy_failures_total", "counter", "Policy plugin failures by kind.", &failures);
    metric(
        &mut out,
        "volcache_policy_latency_p50_seconds",
        "gauge",
        "Median latency of recent plugin calls.",
        &by_slot(&|s| s.stats.latency_p50_us as f64 / 1e6),
    );
    metric(
        &mut out,
        "volcache_policy_latency_p99_seconds",
        "gauge",
        "99th percentile latency of recent plugin calls.",
        &by_slot(&|s| s.stats.latency_p99_us as f64 / 1e6),
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}
