//! The composition root: turns a validated [`Config`] into a running daemon. It opens the
//! catalog, the backend (and claims it), the policy set, restores the policies chosen at run
//! time, reconciles what a crash left, and serves the HTTP API until SIGINT or SIGTERM. Nothing
//! else in the crate wires these parts together.
#![forbid(unsafe_code)]

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use crate::backend::file::FileBackend;
use crate::backend::Backend;
use crate::cache::CacheService;
use crate::catalog::Catalog;
use crate::config::{BackendConfig, Config};
use crate::policy::{PolicyEngine, PolicySet};
use crate::server::{app, policies, AppState};

/// Tokens shorter than this are refused: a guessable token is no protection.
pub const MIN_TOKEN_LEN: usize = 16;

/// The admin token: from the config, else `VOLCACHE_ADMIN_TOKEN`, else a token file under the
/// state directory, created 0600 with a random token on first start. A short or empty token is
/// refused with what to do, never a silent lockout.
pub fn admin_token(config: &Config) -> anyhow::Result<String> {
    if let Some(token) = &config.admin_token {
        return Ok(token.clone());
    }
    if let Ok(token) = std::env::var("VOLCACHE_ADMIN_TOKEN") {
        let token = token.trim();
        if token.len() >= MIN_TOKEN_LEN {
            return Ok(token.to_string());
        }
        if !token.is_empty() {
            anyhow::bail!(
                "VOLCACHE_ADMIN_TOKEN is {} characters long; use at least {MIN_TOKEN_LEN} (e.g. `openssl rand -hex 24`)",
                token.len()
            );
        }
    }
    let path = config.state_dir.join("admin-token");
    token_file(&path)
}

fn token_file(path: &Path) -> anyhow::Result<String> {
    if let Ok(token) = std::fs::read_to_string(path) {
        let token = token.trim();
        if token.len() < MIN_TOKEN_LEN {
            anyhow::bail!(
                "admin token file {} holds {} characters; it needs at least {MIN_TOKEN_LEN}: delete it to have a new \
                 token written at the next start, or write a longer token into it",
                path.display(),
                token.len()
            );
        }
        return Ok(token.to_string());
    }
    let mut raw = [0u8; 24];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut raw)?;
    let token = hex::encode(raw);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    writeln!(file, "{token}")?;
    eprintln!("volcache: admin token written to {}", path.display());
    Ok(token)
}

/// Starts the daemon and serves until SIGINT or SIGTERM.
/// Opens the configured backend; errors name the config key.
pub fn open_backend(config: &BackendConfig) -> anyhow::Result<Arc<dyn Backend>> {
    match config {
        BackendConfig::File { dir } => {
            Ok(Arc::new(FileBackend::new(dir).map_err(|e| anyhow::anyhow!("backend.path {}: {e}", dir.display()))?))
        }
        #[cfg(feature = "rbd")]
        BackendConfig::Rbd(options) => {
            let backend = crate::backend::rbd::RbdBackend::connect(options.clone())
                .map_err(|e| anyhow::anyhow!("backend (rbd pool {:?}): {e}", options.pool))?;
            tracing::info!(pool = %options.pool, prefix = %options.prefix, "RBD backend connected");
            Ok(Arc::new(backend))
        }
        #[cfg(not(feature = "rbd"))]
        BackendConfig::Rbd(_) => anyhow::bail!("backend.kind: this volcache was built without RBD support"),
    }
}

/// Opens the catalog under the state directory. redb panics on some kinds of damage; the panic
/// is caught inside `Catalog::open` and its message must not reach the terminal as a backtrace.
pub fn open_catalog(config: &Config) -> anyhow::Result<Catalog> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let catalog = Catalog::open(&config.state_dir.join("catalog.redb"));
    std::panic::set_hook(hook);
    Ok(catalog?)
}

/// Claims the backend for this daemon: its host and its state directory (one catalog, one
/// owner of the volumes).
pub fn claim_backend(config: &Config, backend: &dyn Backend) -> anyhow::Result<()> {
    let state_dir = std::fs::canonicalize(&config.state_dir).unwrap_or_else(|_| config.state_dir.clone());
    let owner = format!("volcache on {} with state {}", config.cache.host, state_dir.display());
    backend.claim(&owner).map_err(|e| anyhow::anyhow!("backend: {e}"))
}

/// `volcache catalog rebuild`: sets a damaged catalog aside, then adopts the backend's volumes
/// that the catalog does not record. Refused while a daemon holds the backend.
pub fn rebuild_catalog(config: &Config) -> anyhow::Result<crate::cache::recover::Rebuilt> {
    std::fs::create_dir_all(&config.state_dir)?;
    let backend = open_backend(&config.backend)?;
    claim_backend(config, &*backend)?;
    let path = config.state_dir.join("catalog.redb");
    let catalog = match open_catalog(config) {
        Ok(catalog) => catalog,
        Err(e) if matches!(e.downcast_ref(), Some(crate::catalog::CatalogError::Damaged { .. })) => {
            let aside = path.with_extension(format!("redb.damaged-{}", crate::cache::now_ms() / 1000));
            std::fs::rename(&path, &aside)?;
            eprintln!("volcache: the damaged catalog was moved to {}", aside.display());
            open_catalog(config)?
        }
        Err(e) => return Err(e),
    };
    Ok(crate::cache::recover::rebuild(&catalog, &*backend)?)
}

pub fn serve(config: Config) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // The port first: a daemon that cannot listen must not have created or touched any state.
    let listener = std::net::TcpListener::bind(config.listen).map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {}: {e}; another program (perhaps another volcache) uses it: choose another with --listen or `listen` in the configuration",
            config.listen
        )
    })?;
    listener.set_nonblocking(true)?;
    std::fs::create_dir_all(&config.state_dir)?;
    std::fs::create_dir_all(&config.cache.spool_dir)?;
    let token = admin_token(&config)?;
    let engine = PolicyEngine::new(config.engine.clone())?;
    let policies = Arc::new(PolicySet::new(engine, config.limits));
    for (slot, spec) in &config.slots {
        policies.swap(*slot, spec.clone()).map_err(|e| anyhow::anyhow!("policy.slots.{slot}: {e}"))?;
    }
    let catalog = Arc::new(open_catalog(&config)?);
    let backend = open_backend(&config.backend)?;
    claim_backend(&config, &*backend)?;
    crate::cache::recover::check_catalog_matches(&catalog, &*backend)?;
    let plugin_dir = config.state_dir.join("plugins");
    // Slots swapped at run time win over the configuration file; one that no longer loads is
    // reported and the configured policy keeps the slot.
    for (slot, choice) in catalog.read(|r| r.policy_choices())? {
        let Ok(slot) = slot.parse::<crate::policy::Slot>() else { continue };
        match policies::stored_spec(&plugin_dir, &config.plugin_sources, &choice)
            .and_then(|spec| policies.swap(slot, spec).map_err(|e| e.to_string()))
        {
            Ok(status) => tracing::info!(%slot, policy = %status.name, "restored the policy chosen at run time"),
            Err(e) => {
                tracing::error!(%slot, error = %e, "could not restore the policy chosen at run time; using the configured one")
            }
        }
    }
    let mut cache = CacheService::new(catalog, backend, policies, config.cache.clone());
    if config.trace_max_bytes > 0 {
        let dir = config.state_dir.join("trace");
        let recorder = crate::lab::record::Recorder::open(&dir, config.trace_max_bytes)
            .map_err(|e| anyhow::anyhow!("opening the workload trace in {}: {e}", dir.display()))?;
        cache = cache.with_trace(recorder);
    }
    let cache = Arc::new(cache);
    let reconciled = cache.reconcile()?;
    tracing::info!(?reconciled, "start-up reconciliation done");
    // Images with a refresh interval are checked at their source (each at its own interval).
    cache.spawn_refresher(std::time::Duration::from_secs(1));
    // Entries the eviction policy lets go without pressure (a plugin exporting `expiry`).
    cache.spawn_expirer(config.expire_interval);
    let state = AppState::new(cache, &token, plugin_dir, config.api).with_plugin_sources(config.plugin_sources.clone());
    if !config.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %config.listen,
            "listening beyond this host: anyone who can reach this address can try the admin token; put TLS and a firewall in front"
        );
    }
    let grace = config.shutdown_grace;
    let runtime = tokio::runtime::Runtime::new()?;
    let served = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let local = listener.local_addr()?;
        tracing::info!(listen = %local, "volcache serving");
        crate::notify::notify(&format!("READY=1\nSTATUS=serving on {local}"));
        let stopping = state.stopping();
        let http = state.api.http;
        let (signalled_tx, mut signalled) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            // Event streams and idle connections end now; requests in flight get the grace
            // period.
            crate::notify::notify("STOPPING=1\nSTATUS=finishing requests in flight");
            stopping.send_replace(true);
            signalled_tx.send_replace(true);
        });
        let server = crate::server::serve_http(listener, app(state.clone()), http, state.stopping().subscribe());
        let deadline = async move {
            let _ = signalled.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            () = server => {}
            () = deadline => tracing::warn!(
                grace_s = grace.as_secs(),
                "grace period over: stopping with requests in flight; start-up reconciliation finishes what they left"
            ),
        }
        anyhow::Ok(())
    });
    // Blocking work still running (a fill on a stalled source) does not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    served?;
    tracing::info!("volcache stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
