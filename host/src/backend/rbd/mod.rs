//! The Ceph RBD backend: each volume is an RBD image `<prefix><name>` in one pool.
//!
//! - A cache entry is sealed with a protected snapshot ([`SEAL`]); a clone is an RBD clone of
//!   that snapshot (copy-on-write, no data copied), which works with clone format 1 and 2.
//! - Writes go out as asynchronous writes, a few in flight ([`RbdOptions::write_depth`]).
//! - A clone whose parent chain grows deeper than `rbd_max_clone_depth` is flattened on a
//!   background thread; it is usable at once.
//! - Removing an image whose snapshot still has clones moves it to the RBD trash: it leaves
//!   the listing at once, its space is reported by [`Backend::held`], and it is deleted when its
//!   last clone is removed or flattened (or by [`Backend::collect_garbage`] at start-up).
//! - Only images with the prefix are ever listed, touched or garbage-collected, so the pool may
//!   be shared with other users. One daemon owns a prefix: [`Backend::claim`] records it in the
//!   RADOS object `volcache.owner.<prefix>`, and a daemon with another identity is refused.
//!
//! `unsafe` code is denied crate-wide; only [`ffi`] allows it.

mod ffi;

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{valid_name, Backend, BackendError, CloneMode, Held, RbdOptions};
use crate::sparse::BlockDevice;

/// The snapshot that seals a cache entry; clones are taken from it.
pub const SEAL: &str = "volcache-sealed";

/// Volumes as RBD images in one pool.
#[derive(Debug)]
pub struct RbdBackend {
    pool: Arc<ffi::Pool>,
    options: RbdOptions,
    /// Background flattens, by volume name.
    flattening: Mutex<HashMap<String, JoinHandle<()>>>,
    /// Bytes stored by each of our images in the trash, by image id. A trashed image is never
    /// written again, so [`Backend::held`] only measures images it has not seen: a stats or
    /// metrics scrape costs one trash listing, not one open per held volume.
    held_bytes: Mutex<HashMap<String, u64>>,
    /// What a clone needs to know of each sealed volume it was taken from, learned by the seal
    /// or the first clone: a hit then costs the clone alone, not an open of its source too
    /// (each open is several round trips and a watch on the header). Forgotten when the volume
    /// is removed, and relearned when a clone with it fails.
    sources: Mutex<HashMap<String, Source>>,
}

/// A sealed volume as its clones see it (see [`RbdBackend::sources`]).
#[derive(Clone, Copy, Debug)]
struct Source {
    /// Features its clones get (the source's own).
    features: u64,
    /// Clone depth of a clone of it (1 for a volume written in place).
    child_depth: u32,
}

fn io_err<'n>(op: &'static str, name: &'n str) -> impl Fn(io::Error) -> BackendError + 'n {
    move |source| {
        if ffi::is_not_found(&source) {
            BackendError::NotFound(name.to_string())
        } else if ffi::is_exists(&source) {
            BackendError::Exists(name.to_string())
        } else {
            BackendError::Io { op, name: name.to_string(), source }
        }
    }
}

impl RbdBackend {
    /// Connects to the cluster and opens the pool.
    pub fn connect(options: RbdOptions) -> Result<Self, BackendError> {
        let keyring = options.keyring.as_ref().map(|k| k.to_string_lossy().into_owned());
        let mut settings: Vec<(&str, &str)> = vec![("client_mount_timeout", "30")];
        if let Some(k) = keyring.as_deref() {
            settings.push(("keyring", k));
        }
        let err = |source| BackendError::Io { op: "connect", name: options.pool.clone(), source };
        let cluster = ffi::Cluster::connect(&options.user, options.ceph_conf.as_deref(), &settings).map_err(err)?;
        let pool = Arc::new(cluster.pool(&options.pool).map_err(err)?);
        Ok(RbdBackend {
            pool,
            options,
            flattening: Mutex::default(),
            held_bytes: Mutex::default(),
            sources: Mutex::default(),
        })
    }

    pub fn options(&self) -> &RbdOptions {
        &self.options
    }

    fn image_name(&self, name: &str) -> Result<String, BackendError> {
        if !valid_name(name) {
            return Err(BackendError::BadName(name.to_string()));
        }
        Ok(format!("{}{name}", self.options.prefix))
    }

    fn open_image(&self, name: &str, op: &'static str) -> Result<ffi::Image, BackendError> {
        let image = self.image_name(name)?;
        self.pool.open(&image).map_err(io_err(op, name))
    }

    /// Records what clones of the open, sealed volume `name` need (see [`RbdBackend::sources`]).
    fn learn(&self, name: &str, image: &ffi::Image) -> Result<Source, BackendError> {
        let source = Source {
            features: image.features().map_err(io_err("clone", name))?,
            child_depth: self.depth(image).map_err(io_err("clone", name))? + 1,
        };
        self.sources.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), source);
        Ok(source)
    }

    /// Waits for a background flatten of `name`, if one runs.
    fn settle_one(&self, name: &str) {
        let handle = self.flattening.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    /// Waits for every background flatten.
    pub fn settle(&self) {
        let handles: Vec<_> = self.flattening.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        for (_, handle) in handles {
            let _ = handle.join();
        }
    }

    /// Copies a clone's data up from its parent so that it stands alone (as `rbd flatten`),
    /// then frees a removed parent that only it kept.
    pub fn flatten(&self, name: &str) -> Result<(), BackendError> {
        self.settle_one(name);
        self.open_image(name, "flatten")?.flatten().map_err(io_err("flatten", name))?;
        self.collect_garbage().map(drop)
    }

    /// How many clones deep `image` is (0: not a clone). Parents in the trash are followed by id.
    fn depth(&self, image: &ffi::Image) -> io::Result<u32> {
        let mut depth = 0;
        let mut parent = image.parent()?;
        while let Some(p) = parent {
            depth += 1;
            if depth > 64 {
                break;
            }
            let next = match self.pool.open(&p.image) {
                Ok(img) => img,
                Err(e) if ffi::is_not_found(&e) => {
                    match self.pool.trash_list()?.into_iter().find(|t| t.name == p.image) {
                        Some(t) => self.pool.open_by_id(&t.id)?,
                        None => break,
                    }
                }
                Err(e) => return Err(e),
            };
            parent = next.parent()?;
        }
        Ok(depth)
    }

    /// Flattens `name` on a background thread, then frees a trashed parent it held.
    fn flatten_in_background(&self, name: &str) {
        let (pool, prefix, image) = (Arc::clone(&self.pool), self.options.prefix.clone(), self.image_name(name));
        let Ok(image) = image else { return };
        let volume = name.to_string();
        let handle = std::thread::spawn(move || {
            let started = std::time::Instant::now();
            match pool.open(&image).and_then(|img| img.flatten()) {
                Ok(()) => {
                    tracing::info!(%volume, elapsed_ms = started.elapsed().as_millis() as u64, "clone flattened");
                    if let Err(e) = collect(&pool, &prefix) {
                        tracing::warn!(error = %e, "freeing trashed parents after a flatten");
                    }
                }
                Err(e) => tracing::warn!(%volume, error = %e, "flattening a deep clone failed; it stays a clone"),
            }
        });
        self.flattening.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), handle);
    }
}

/// Deletes the trashed images with `prefix` whose sealed snapshot has no clones left.
fn collect(pool: &Arc<ffi::Pool>, prefix: &str) -> io::Result<u64> {
    collect_matching(pool, |name| name.starts_with(prefix))
}

/// Deletes the trashed images whose name `wanted` accepts and whose sealed snapshot has no
/// clones left.
fn collect_matching(pool: &Arc<ffi::Pool>, wanted: impl Fn(&str) -> bool) -> io::Result<u64> {
    let mut freed = 0;
    for entry in pool.trash_list()?.into_iter().filter(|t| wanted(&t.name)) {
        let image = match pool.open_by_id(&entry.id) {
            Ok(image) => image,
            Err(e) if ffi::is_not_found(&e) => continue,
            Err(e) => return Err(e),
        };
        if image.snap_exists(SEAL)? {
            if image.snap_is_protected(SEAL)? {
                match image.snap_unprotect(SEAL) {
                    Ok(()) => {}
                    Err(e) if ffi::is_busy(&e) => continue, // clones still live
                    Err(e) => return Err(e),
                }
            }
            image.snap_remove(SEAL)?;
        }
        drop(image);
        pool.trash_remove(&entry.id)?;
        tracing::info!(image = %entry.name, "freed a removed volume whose last clone is gone");
        freed += 1;
    }
    Ok(freed)
}

/// Gives an open image its protected [`SEAL`] snapshot unless it has it.
fn seal(image: &ffi::Image, name: &str) -> Result<(), BackendError> {
    let err = io_err("seal", name);
    if !image.snap_exists(SEAL).map_err(&err)? {
        image.snap_create(SEAL).map_err(&err)?;
    }
    if !image.snap_is_protected(SEAL).map_err(&err)? {
        image.snap_protect(SEAL).map_err(&err)?;
    }
    Ok(())
}

/// An open image as the thin writer's target.
#[derive(Debug)]
struct RbdDevice(ffi::Device);

impl BlockDevice for RbdDevice {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write(buf, offset)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.image()?.read_exact_at(buf, offset)
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.0.image()?.discard(offset, len)
    }
    fn set_len(&self, size: u64) -> io::Result<()> {
        self.0.image()?.resize(size)
    }
    fn sync_all(&self) -> io::Result<()> {
        self.0.image()?.flush()
    }
}

impl Backend for RbdBackend {
    fn create(&self, name: &str, size: u64) -> Result<(), BackendError> {
        let image = self.image_name(name)?;
        self.pool.create(&image, size).map_err(io_err("create", name))
    }

    fn open(&self, name: &str) -> Result<Box<dyn BlockDevice>, BackendError> {
        let image = self.open_image(name, "open")?;
        Ok(Box::new(RbdDevice(ffi::Device::new(image, self.options.write_depth))))
    }

    fn seal(&self, name: &str) -> Result<(), BackendError> {
        let image = self.open_image(name, "seal")?;
        seal(&image, name)?;
        self.learn(name, &image)?;
        Ok(())
    }

    fn clone_volume(&self, src: &str, dst: &str) -> Result<CloneMode, BackendError> {
        let (src_image, dst_image) = (self.image_name(src)?, self.image_name(dst)?);
        let known = self.sources.lock().unwrap_or_else(|p| p.into_inner()).get(src).copied();
        let fast = known.map(|source| (source, self.pool.clone_image(&src_image, SEAL, &dst_image, source.features)));
        let depth = match fast {
            Some((source, Ok(()))) => source.child_depth,
            Some((_, Err(e))) if ffi::is_exists(&e) => return Err(BackendError::Exists(dst.to_string())),
            // The source changed behind this backend (gone, or its seal): open it and see.
            Some((_, Err(_))) | None => {
                self.sources.lock().unwrap_or_else(|p| p.into_inner()).remove(src);
                let source = self.open_image(src, "clone")?;
                seal(&source, src)?;
                let learned = self.learn(src, &source)?;
                self.pool.clone_image(&src_image, SEAL, &dst_image, learned.features).map_err(io_err("clone", dst))?;
                learned.child_depth
            }
        };
        if depth > self.options.max_clone_depth {
            tracing::info!(volume = dst, depth, max = self.options.max_clone_depth, "clone too deep: flattening it");
            self.flatten_in_background(dst);
        }
        Ok(CloneMode::SnapshotClone)
    }

    fn resize(&self, name: &str, size: u64) -> Result<(), BackendError> {
        let image = self.open_image(name, "resize")?;
        let current = image.size().map_err(io_err("resize", name))?;
        if size < current {
            return Err(BackendError::Shrink { name: name.into(), size: current, requested: size });
        }
        if size == current {
            // A resize to the same size still takes the exclusive lock: round trips for nothing.
            return Ok(());
        }
        image.resize(size).map_err(io_err("resize", name))
    }

    fn remove(&self, name: &str) -> Result<(), BackendError> {
        let image_name = self.image_name(name)?;
        self.settle_one(name);
        self.sources.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        let image = match self.pool.open(&image_name) {
            Ok(image) => image,
            Err(e) if ffi::is_not_found(&e) => return Ok(()),
            Err(e) => return Err(io_err("remove", name)(e)),
        };
        let err = io_err("remove", name);
        let parent = image.parent().map_err(&err)?;
        if image.snap_exists(SEAL).map_err(&err)? {
            if image.snap_is_protected(SEAL).map_err(&err)? {
                if let Err(e) = image.snap_unprotect(SEAL) {
                    if !ffi::is_busy(&e) {
                        return Err(err(e));
                    }
                    // Clones live: out of the listing now, deleted with its last clone.
                    drop(image);
                    self.pool.trash_move(&image_name).map_err(&err)?;
                    tracing::info!(volume = name, "volume has live clones: moved to the trash until they are gone");
                    return Ok(());
                }
            }
            image.snap_remove(SEAL).map_err(&err)?;
        }
        drop(image);
        match self.pool.remove(&image_name) {
            Ok(()) => {}
            Err(e) if ffi::is_not_found(&e) => {}
            Err(e) => return Err(err(e)),
        }
        if let Some(parent) = parent.filter(|p| p.image.starts_with(&self.options.prefix)) {
            // This may have been the last clone of its (trashed) parent: free just that one.
            collect_matching(&self.pool, |name| name == parent.image).map_err(io_err("trash", &parent.image))?;
        }
        Ok(())
    }

    fn size(&self, name: &str) -> Result<u64, BackendError> {
        self.open_image(name, "stat")?.size().map_err(io_err("stat", name))
    }

    fn allocated_bytes(&self, name: &str) -> Result<u64, BackendError> {
        self.open_image(name, "stat")?.used_bytes().map_err(io_err("stat", name))
    }

    fn exists(&self, name: &str) -> Result<bool, BackendError> {
        match self.open_image(name, "stat") {
            Ok(_) => Ok(true),
            Err(BackendError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Records `owner` in the RADOS object `volcache.owner.<prefix>` (created atomically), or
    /// checks that it is the one recorded there. Unlike a lock, the record outlives a crash:
    /// the same daemon restarting claims it again, any other is refused until an operator
    /// removes the object.
    fn claim(&self, owner: &str) -> Result<(), BackendError> {
        let oid = format!("volcache.owner.{}", self.options.prefix);
        let err = |source| BackendError::Io { op: "claim", name: oid.clone(), source };
        let refused = |other: &[u8]| BackendError::Claimed {
            what: format!("rbd pool {:?} with rbd_image_prefix {:?}", self.options.pool, self.options.prefix),
            owner: String::from_utf8_lossy(other).trim().to_string(),
            remedy: format!(
                "give each daemon its own rbd_image_prefix; if that daemon is gone for good, remove its claim \
                 with `rados -p {} rm {oid}`",
                self.options.pool
            ),
        };
        const MAX_OWNER: usize = 4096;
        for _ in 0..3 {
            match self.pool.read_object(&oid, MAX_OWNER).map_err(err)? {
                Some(other) if other == owner.as_bytes() => return Ok(()),
                Some(other) => return Err(refused(&other)),
                None => match self.pool.create_object(&oid, owner.as_bytes()) {
                    Ok(()) => return Ok(()),
                    // Another daemon created it between the read and the create: read it again.
                    Err(e) if ffi::is_exists(&e) => continue,
                    Err(e) => return Err(err(e)),
                },
            }
        }
        Err(err(io::Error::other("the claim object keeps appearing and disappearing")))
    }

    fn list(&self) -> Result<Vec<String>, BackendError> {
        let prefix = &self.options.prefix;
        let all = self.pool.list().map_err(io_err("list", ""))?;
        let mut names: Vec<String> = all
            .iter()
            .filter_map(|n| n.strip_prefix(prefix.as_str()))
            .filter(|n| valid_name(n))
            .map(str::to_string)
            .collect();
        names.sort();
        Ok(names)
    }

    fn held(&self) -> Result<Held, BackendError> {
        let err = io_err("trash", "");
        let trashed: Vec<ffi::TrashEntry> = (self.pool.trash_list().map_err(&err)?.into_iter())
            .filter(|entry| entry.name.starts_with(&self.options.prefix))
            .collect();
        let known = self.held_bytes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut now = HashMap::with_capacity(trashed.len());
        for entry in trashed {
            let bytes = match known.get(&entry.id) {
                Some(&bytes) => bytes,
                None => match self.pool.open_by_id(&entry.id) {
                    Ok(image) => image.used_bytes().map_err(&err)?,
                    Err(e) if ffi::is_not_found(&e) => continue, // freed since the listing
                    Err(e) => return Err(err(e)),
                },
            };
            now.insert(entry.id, bytes);
        }
        let held = Held { volumes: now.len() as u64, bytes: now.values().sum() };
        *self.held_bytes.lock().unwrap_or_else(|p| p.into_inner()) = now;
        Ok(held)
    }

    fn collect_garbage(&self) -> Result<u64, BackendError> {
        collect(&self.pool, &self.options.prefix).map_err(io_err("trash", ""))
    }
}

impl Drop for RbdBackend {
    fn drop(&mut self) {
        self.settle();
    }
}
