//! The accept loop: HTTP/1.1 connections served by hyper with a header-read timeout (which also
//! closes keep-alive connections that sit idle between requests) and a cap on open connections,
//! so idle or half-open sockets cannot exhaust the process's file descriptors and stop
//! `/healthz` and creates from being answered. Stopping closes idle connections at once and lets
//! requests in flight finish (the daemon bounds how long).
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

pub use crate::config::HttpLimits;

/// The connection cap this process can honour: the configured one, or fewer if the file
/// descriptor limit (raised to its hard limit first) would run out before it.
pub fn effective_cap(configured: usize) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(max)) = (limit.current, limit.maximum) {
        if current < max {
            limit.current = Some(max);
            if setrlimit(Resource::Nofile, limit).is_err() {
                limit.current = Some(current);
            }
        }
    }
    // Room for the catalog, the backend, plugins, downloads and the listener itself.
    let room = limit.current.map(|n| (n as usize).saturating_sub(128)).unwrap_or(usize::MAX);
    configured.min(room).max(1)
}

/// Serves `app` on `listener` until `stopping` turns true, then waits for the open connections
/// to finish (idle ones close at once).
pub async fn serve(listener: TcpListener, app: Router, limits: HttpLimits, mut stopping: watch::Receiver<bool>) {
    let cap = effective_cap(limits.max_connections);
    let slots = Arc::new(Semaphore::new(cap));
    let refused = Arc::new(AtomicU64::new(0));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stopped(&mut stopping) => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::error!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Counted, and logged once per 100 so a flood does not flood the log.
            let n = refused.fetch_add(1, Ordering::Relaxed);
            if n.is_multiple_of(100) {
                tracing::warn!(%peer, cap, refused = n + 1, "connection limit reached: closing new connections (api.max_connections)");
            }
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let mut stop = stopping.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(tcp), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(slot);
        });
    }
    // Every connection gives its slot back when it ends.
    let _ = slots.acquire_many(cap as u32).await;
}

/// Resolves once `stopping` turns true (holding no borrow of the channel across the wait).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await.map(|_| ());
}
