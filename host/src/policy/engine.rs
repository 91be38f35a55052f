//! The one wasmtime engine that runs every policy, and turning component bytes into a
//! type-checked, compiled [`Component`].
//!
//! Compiling with Cranelift takes ~10 ms a plugin; precompiled artifacts are cached on disk under
//! `<cache dir>/<sha256 of the component>-<engine compatibility hash>.cwasm`. Deserializing an
//! artifact runs its machine code, so a cached file is only loaded when it carries an HMAC made
//! with this daemon's own secret key (a 0600 file beside the cache): bytes anyone else wrote are
//! recompiled, never deserialized.
//!
//! The cache is bounded: it keeps the [`EngineOptions::cache_max_artifacts`] most recently used
//! artifacts, and on start-up drops artifacts of other wasmtime builds (this daemon can never
//! load them) and temporary files left by a writer that crashed.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine};

use super::LoadError;

/// How often the epoch advances; a call's deadline is rounded up to whole ticks.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);

const MAC_LEN: usize = 32;

/// Default of [`EngineOptions::max_component_bytes`]: room for a Python plugin three times over.
pub const DEFAULT_MAX_COMPONENT_BYTES: usize = 64 << 20;
const KEY_LEN: usize = 32;

/// Memory cap, deadline and cache location for every policy instance.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Largest linear memory (and table) a plugin instance may grow to.
    pub memory_limit_bytes: usize,
    /// Wall-clock budget of one call into a plugin.
    pub call_deadline: Duration,
    /// Budget of one event hook (`events.on-hit` ...), which runs off the request path.
    pub event_deadline: Duration,
    /// Where precompiled components are kept; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// Most artifacts kept in `cache_dir`; the least recently used go first.
    pub cache_max_artifacts: usize,
    /// Largest component accepted, from a file or an upload. A Python component built by
    /// componentize-py is about 18 MiB, a JavaScript one by componentize-js about 11 MiB.
    pub max_component_bytes: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            memory_limit_bytes: 64 << 20,
            call_deadline: Duration::from_millis(100),
            event_deadline: Duration::from_millis(10),
            cache_dir: None,
            cache_max_artifacts: 32,
            max_component_bytes: DEFAULT_MAX_COMPONENT_BYTES,
        }
    }
}

/// A compiled component plus what identifies it.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub component: Component,
    /// Lower-case hex sha256 of the component bytes.
    pub digest: String,
    pub from_cache: bool,
}

/// The shared engine. Cloning is cheap; the epoch ticker stops when the last clone is dropped.
#[derive(Clone)]
pub struct PolicyEngine {
    engine: Engine,
    options: EngineOptions,
    cache: Option<ArtifactCache>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine").field("options", &self.options).finish_non_exhaustive()
    }
}

impl PolicyEngine {
    pub fn new(options: EngineOptions) -> Result<Self, LoadError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        // A plugin that recurses without end hits this, not the host's stack.
        config.max_wasm_stack(1 << 20);
        let engine = Engine::new(&config).map_err(LoadError::Engine)?;
        let cache = match &options.cache_dir {
            Some(dir) => Some(
                ArtifactCache::open(dir, &engine, options.cache_max_artifacts.max(1))
                    .map_err(|source| LoadError::Cache { path: dir.clone(), source })?,
            ),
            None => None,
        };
        let weak = engine.weak();
        thread::Builder::new()
            .name("policy-epoch".into())
            .spawn(move || loop {
                thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            })
            .map_err(|e| LoadError::Engine(e.into()))?;
        Ok(PolicyEngine { engine, options, cache })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Epoch ticks that cover the call deadline (at least one whole tick more than asked, since
    /// a call may start just before a tick).
    pub(crate) fn deadline_ticks(&self) -> u64 {
        Self::ticks(self.options.call_deadline)
    }

    /// Epoch ticks of an event hook's budget.
    pub(crate) fn event_deadline_ticks(&self) -> u64 {
        Self::ticks(self.options.event_deadline.min(self.options.call_deadline))
    }

    fn ticks(budget: Duration) -> u64 {
        let tick = EPOCH_TICK.as_micros().max(1);
        let ticks = budget.as_micros().div_ceil(tick);
        u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1)
    }

    /// Compiles component bytes, or loads this daemon's own precompiled artifact for them.
    pub fn compile(&self, bytes: &[u8]) -> Result<Compiled, LoadError> {
        check_component_preamble(bytes)?;
        // Refusals that need no compiler come first: they take milliseconds, not seconds.
        super::scan::check(&super::scan::outline(bytes)?)?;
        let digest = hex::encode(Sha256::digest(bytes));
        if let Some(cache) = &self.cache {
            if let Some(component) = cache.load(&self.engine, &digest) {
                return Ok(Compiled { component, digest, from_cache: true });
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(LoadError::Compile)?;
        if let Some(cache) = &self.cache {
            if let Err(e) = cache.store(&component, &digest) {
                tracing::warn!(digest = %digest, error = %e, "could not cache the compiled plugin; it will be compiled again next time");
            }
        }
        Ok(Compiled { component, digest, from_cache: false })
    }
}

/// A core module or random bytes get an error that says what to do, before Cranelift sees them.
pub(crate) fn check_component_preamble(bytes: &[u8]) -> Result<(), LoadError> {
    const MAGIC: &[u8] = b"\0asm";
    match bytes.get(..8) {
        Some(head) if head.starts_with(MAGIC) && head[6..8] == [1, 0] => Ok(()),
        Some(head) if head.starts_with(MAGIC) && head[4..8] == [1, 0, 0, 0] => Err(LoadError::NotAComponent(
            "this is a core WebAssembly module; a policy must be a component (build it with \
             `make plugins`, or wrap it with `wasm-tools component new`)"
                .into(),
        )),
        _ => Err(LoadError::NotAComponent("no WebAssembly component header".into())),
    }
}

/// Precompiled artifacts on disk, each followed by an HMAC-SHA256 of its bytes under a key that
/// only this daemon holds.
#[derive(Clone)]
struct ArtifactCache {
    dir: PathBuf,
    key: [u8; KEY_LEN],
    engine_tag: String,
    max_artifacts: usize,
}

/// A temporary file this old was left by a writer that died (a store takes milliseconds).
const STALE_TEMP: Duration = Duration::from_secs(3600);

impl ArtifactCache {
    fn open(dir: &Path, engine: &Engine, max_artifacts: usize) -> io::Result<Self> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let key = load_or_create_key(&dir.join("cache.key"))?;
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let cache = ArtifactCache {
            dir: dir.to_path_buf(),
            key,
            engine_tag: format!("{:016x}", hasher.finish()),
            max_artifacts,
        };
        cache.sweep();
        cache.prune();
        Ok(cache)
    }

    /// Removes artifacts another wasmtime build wrote and temporary files of dead writers.
    fn sweep(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else { return };
        let ours = format!("-{}.cwasm", self.engine_tag);
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale_temp = name.contains(".tmp.")
                && entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().unwrap_or_default() > STALE_TEMP);
            let other_build = name.ends_with(".cwasm") && !name.ends_with(&ours);
            if stale_temp || other_build {
                match fs::remove_file(entry.path()) {
                    Ok(()) => tracing::info!(file = %name, "removed an unusable file from the plugin cache"),
                    Err(e) => tracing::warn!(file = %name, error = %e, "could not remove a file from the plugin cache"),
                }
            }
        }
    }

    /// Keeps the `max_artifacts` most recently used artifacts (by modification time, which a
    /// load refreshes).
    fn prune(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else { return };
        let mut artifacts: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if artifacts.len() <= self.max_artifacts {
            return;
        }
        artifacts.sort();
        let excess = artifacts.len() - self.max_artifacts;
        for (_, path) in artifacts.into_iter().take(excess) {
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove an old precompiled plugin");
            }
        }
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_tag))
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes keys of any length")
    }

    #[expect(unsafe_code, reason = "deserializing a precompiled component is unsafe by nature")]
    fn load(&self, engine: &Engine, digest: &str) -> Option<Component> {
        let path = self.path(digest);
        let data = fs::read(&path).ok()?;
        let split = data.len().checked_sub(MAC_LEN)?;
        let (artifact, tag) = data.split_at(split);
        let mut mac = self.mac();
        mac.update(artifact);
        if mac.verify_slice(tag).is_err() {
            tracing::warn!(path = %path.display(), "ignoring a precompiled plugin this daemon did not write");
            return None;
        }
        // SAFETY: `deserialize` runs the artifact's machine code, so it is only safe on bytes that
        // wasmtime itself produced for a compatible engine. The HMAC just verified proves this
        // daemon wrote these bytes (the key never leaves the 0600 key file), the file name binds
        // them to this engine's compatibility hash, and wasmtime re-checks its own header.
        let component = unsafe { Component::deserialize(engine, artifact) };
        if component.is_ok() {
            // Used: the least recently used artifacts are the ones pruned.
            let _ =
                fs::File::options().write(true).open(&path).and_then(|f| f.set_modified(std::time::SystemTime::now()));
        }
        component.ok()
    }

    fn store(&self, component: &Component, digest: &str) -> io::Result<()> {
        let artifact = component.serialize().map_err(io::Error::other)?;
        let mut mac = self.mac();
        mac.update(&artifact);
        let tag = mac.finalize().into_bytes();
        let path = self.path(digest);
        // A private temporary name: concurrent writers of one digest must not share a file.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let tmp = path.with_extension(format!("tmp.{}.{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        file.write_all(&artifact)?;
        file.write_all(&tag)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        self.prune();
        Ok(())
    }
}

fn load_or_create_key(path: &Path) -> io::Result<[u8; KEY_LEN]> {
    let read = |path: &Path| -> io::Result<[u8; KEY_LEN]> {
        let mut key = [0u8; KEY_LEN];
        fs::File::open(path)?.read_exact(&mut key)?;
        Ok(key)
    };
    match read(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        other => return other,
    }
    let mut key = [0u8; KEY_LEN];
    fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    // Written in full under a private name, then published with link(2), which fails if another
    // process got there first: nobody ever reads a half-written key, and all agree on one.
    let tmp = path.with_extension(format!(
        "{}.{:x}",
        std::process::id(),
        u64::from_le_bytes(key[..8].try_into().unwrap_or_default())
    ));
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    file.write_all(&key)?;
    file.sync_all()?;
    let published = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match published {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read(path),
        Err(e) => Err(e),
    }
}
