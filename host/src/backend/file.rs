//! The file backend: each volume is a raw sparse file under one directory. Clones use FICLONE
//! (reflink) where the file system has it (XFS with reflink=1, btrfs) and otherwise copy only the
//! data extents with copy_file_range, leaving holes as holes.
#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{valid_name, Backend, BackendError, CloneMode};
use crate::sparse::{BlockDevice, DataExtents};
use crate::sys;

/// Volumes as files in `dir`.
#[derive(Debug, Clone)]
pub struct FileBackend {
    dir: PathBuf,
    /// The daemon's lock on the directory ([`Backend::claim`]), held while it lives.
    claim: Arc<Mutex<Option<File>>>,
}

/// The lock file of [`Backend::claim`]; a name no volume can have.
const CLAIM_FILE: &str = ".volcache.lock";

impl FileBackend {
    pub fn new(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(FileBackend { dir, claim: Arc::default() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> Result<PathBuf, BackendError> {
        if !valid_name(name) {
            return Err(BackendError::BadName(name.to_string()));
        }
        Ok(self.dir.join(name))
    }

    fn open(&self, name: &str, op: &'static str) -> Result<File, BackendError> {
        let path = self.path(name)?;
        File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => BackendError::NotFound(name.to_string()),
            _ => BackendError::Io { op, name: name.to_string(), source: e },
        })
    }

    /// Opens a volume's file for reading and writing.
    pub fn open_rw(&self, name: &str) -> Result<File, BackendError> {
        let path = self.path(name)?;
        OpenOptions::new().read(true).write(true).open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => BackendError::NotFound(name.to_string()),
            _ => BackendError::Io { op: "open", name: name.to_string(), source: e },
        })
    }

    fn create_new(&self, name: &str, op: &'static str) -> Result<File, BackendError> {
        let path = self.path(name)?;
        OpenOptions::new().read(true).write(true).create_new(true).open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => BackendError::Exists(name.to_string()),
            _ => BackendError::Io { op, name: name.to_string(), source: e },
        })
    }
}

/// Copies `src`'s data extents into the empty `dst` in the kernel; holes stay holes.
fn sparse_copy(src: &File, dst: &File, size: u64) -> io::Result<()> {
    dst.set_len(size)?;
    for extent in DataExtents::new(src, size) {
        let extent = extent?;
        let (mut at, end) = (extent.offset, extent.offset + extent.len);
        while at < end {
            let want = usize::try_from(end - at).unwrap_or(usize::MAX).min(1 << 30);
            let n = match sys::copy_range(src, dst, at, want) {
                Ok(n) => n,
                // No in-kernel copy here (e.g. across file systems): copy through user space.
                Err(e) if sys::is_unsupported(&e) => copy_user(src, dst, at, want)?,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "source shrank during the copy"));
            }
            at += n as u64;
        }
    }
    Ok(())
}

fn copy_user(src: &File, dst: &File, offset: u64, len: usize) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len.min(8 << 20)];
    let n = src.read_at(&mut buf, offset)?;
    FileExt::write_all_at(dst, &buf[..n], offset)?;
    Ok(n)
}

impl Backend for FileBackend {
    fn create(&self, name: &str, size: u64) -> Result<(), BackendError> {
        let file = self.create_new(name, "create")?;
        file.set_len(size).map_err(|source| BackendError::Io { op: "create", name: name.into(), source })
    }

    fn open(&self, name: &str) -> Result<Box<dyn BlockDevice>, BackendError> {
        Ok(Box::new(self.open_rw(name)?))
    }

    fn clone_volume(&self, src: &str, dst: &str) -> Result<CloneMode, BackendError> {
        self.clone_grown(src, dst, None)
    }

    /// Reflinks (or copies sparsely), grows, then one `fsync` makes the clone's extents, its
    /// size and its name durable together.
    fn clone_grown(&self, src: &str, dst: &str, size: Option<u64>) -> Result<CloneMode, BackendError> {
        let source = self.open(src, "clone")?;
        let target = self.create_new(dst, "clone")?;
        let io_err = |source| BackendError::Io { op: "clone", name: dst.to_string(), source };
        let result = (|| {
            let length = source.metadata().map_err(io_err)?.len();
            let mode = match sys::reflink(&source, &target) {
                Ok(()) => CloneMode::Reflink,
                Err(e) if sys::is_unsupported(&e) => {
                    sparse_copy(&source, &target, length).map_err(io_err)?;
                    CloneMode::SparseCopy
                }
                Err(e) => return Err(io_err(e)),
            };
            if let Some(size) = size {
                if size < length {
                    return Err(BackendError::Shrink { name: dst.into(), size: length, requested: size });
                }
                target.set_len(size).map_err(io_err)?;
            }
            target.sync_all().map_err(io_err)?;
            Ok(mode)
        })();
        if result.is_err() {
            // Never leave a half-made clone behind.
            let _ = fs::remove_file(self.dir.join(dst));
        }
        result
    }

    fn resize(&self, name: &str, size: u64) -> Result<(), BackendError> {
        let io_err = |source| BackendError::Io { op: "resize", name: name.into(), source };
        let file = self.open_rw(name)?;
        let current = file.metadata().map_err(io_err)?.len();
        if size < current {
            return Err(BackendError::Shrink { name: name.into(), size: current, requested: size });
        }
        file.set_len(size).map_err(io_err)?;
        // The new size must survive a power cut like the record that states it.
        file.sync_data().map_err(io_err)
    }

    fn remove(&self, name: &str) -> Result<(), BackendError> {
        match fs::remove_file(self.path(name)?) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(BackendError::Io { op: "remove", name: name.into(), source }),
        }
    }

    fn size(&self, name: &str) -> Result<u64, BackendError> {
        let file = self.open(name, "stat")?;
        file.metadata().map(|m| m.len()).map_err(|source| BackendError::Io { op: "stat", name: name.into(), source })
    }

    fn allocated_bytes(&self, name: &str) -> Result<u64, BackendError> {
        let file = self.open(name, "stat")?;
        sys::allocated_bytes(&file).map_err(|source| BackendError::Io { op: "stat", name: name.into(), source })
    }

    fn exists(&self, name: &str) -> Result<bool, BackendError> {
        Ok(self.path(name)?.is_file())
    }

    /// An exclusive `flock` on `.volcache.lock` in the directory, held until the backend is
    /// dropped (the kernel releases it if the daemon dies); the file names the owner.
    fn claim(&self, owner: &str) -> Result<(), BackendError> {
        let path = self.dir.join(CLAIM_FILE);
        let io_err = |source| BackendError::Io { op: "claim", name: path.display().to_string(), source };
        let mut held = self.claim.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_some() {
            return Ok(());
        }
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut other = String::new();
                let _ = file.read_to_string(&mut other);
                return Err(BackendError::Claimed {
                    what: format!("backend.path {}", self.dir.display()),
                    owner: if other.trim().is_empty() { "owner unknown".into() } else { other.trim().to_string() },
                    remedy: "give each daemon its own directory".into(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(e)),
        }
        file.set_len(0).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        writeln!(file, "{owner} (pid {})", std::process::id()).map_err(io_err)?;
        *held = Some(file);
        Ok(())
    }

    fn list(&self) -> Result<Vec<String>, BackendError> {
        let io_err = |source| BackendError::Io { op: "list", name: String::new(), source };
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err)? {
            let name = entry.map_err(io_err)?.file_name().to_string_lossy().into_owned();
            if valid_name(&name) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }
}
