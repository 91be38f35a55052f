//! A backend in memory, for fast and exhaustive tests of the cache core: no root, no file
//! system, thousands of cases a second. Volumes are sparse maps of 4 KiB blocks; a clone
//! shares nothing and copies the map (data is small in tests). It keeps the same contract as
//! the real backends (names, errors, no shrinking), which the conformance suite checks.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Arc, Mutex};

use super::{valid_name, Backend, BackendError, CloneMode};
use crate::sparse::BlockDevice;

const BLOCK: u64 = 4096;

#[derive(Clone, Debug, Default)]
struct Volume {
    size: u64,
    blocks: BTreeMap<u64, Box<[u8]>>,
}

impl Volume {
    fn write(&mut self, buf: &[u8], offset: u64) {
        let mut at = offset;
        let mut rest = buf;
        while !rest.is_empty() {
            let (index, within) = (at / BLOCK, (at % BLOCK) as usize);
            let n = rest.len().min(BLOCK as usize - within);
            let block = self.blocks.entry(index).or_insert_with(|| vec![0u8; BLOCK as usize].into_boxed_slice());
            block[within..within + n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            at += n as u64;
        }
        self.size = self.size.max(offset + buf.len() as u64);
    }

    fn read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset + buf.len() as u64 > self.size {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut at = offset;
        let mut done = 0;
        while done < buf.len() {
            let (index, within) = (at / BLOCK, (at % BLOCK) as usize);
            let n = (buf.len() - done).min(BLOCK as usize - within);
            match self.blocks.get(&index) {
                Some(block) => buf[done..done + n].copy_from_slice(&block[within..within + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
            at += n as u64;
        }
        Ok(())
    }

    fn zero(&mut self, offset: u64, len: u64) {
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let (index, within) = (at / BLOCK, at % BLOCK);
            let n = (end - at).min(BLOCK - within);
            if within == 0 && n == BLOCK {
                self.blocks.remove(&index);
            } else if let Some(block) = self.blocks.get_mut(&index) {
                block[within as usize..(within + n) as usize].fill(0);
            }
            at += n;
        }
    }

    fn set_len(&mut self, size: u64) {
        if size < self.size {
            self.zero(size, self.size - size);
            self.blocks.retain(|index, _| index * BLOCK < size);
        }
        self.size = size;
    }
}

/// The in-memory backend.
#[derive(Clone, Debug, Default)]
pub struct MemoryBackend {
    volumes: Arc<Mutex<HashMap<String, Arc<Mutex<Volume>>>>>,
}

impl MemoryBackend {
    pub fn new() -> Self {
        MemoryBackend::default()
    }

    fn get(&self, name: &str) -> Result<Arc<Mutex<Volume>>, BackendError> {
        self.volumes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| BackendError::NotFound(name.into()))
    }

    /// A volume's whole contents.
    pub fn read_all(&self, name: &str) -> Result<Vec<u8>, BackendError> {
        let volume = self.get(name)?;
        let v = volume.lock().unwrap_or_else(|p| p.into_inner());
        let mut buf = vec![0u8; v.size as usize];
        v.read(&mut buf, 0).map_err(|source| BackendError::Io { op: "read", name: name.into(), source })?;
        Ok(buf)
    }
}

/// An open volume.
#[derive(Debug)]
struct Device(Arc<Mutex<Volume>>);

impl Device {
    fn lock(&self) -> std::sync::MutexGuard<'_, Volume> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl BlockDevice for Device {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.lock().write(buf, offset);
        Ok(())
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.lock().read(buf, offset)
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.lock().zero(offset, len);
        Ok(())
    }
    fn set_len(&self, size: u64) -> io::Result<()> {
        self.lock().set_len(size);
        Ok(())
    }
    fn sync_all(&self) -> io::Result<()> {
        Ok(())
    }
}

impl Backend for MemoryBackend {
    fn create(&self, name: &str, size: u64) -> Result<(), BackendError> {
        if !valid_name(name) {
            return Err(BackendError::BadName(name.into()));
        }
        let mut volumes = self.volumes.lock().unwrap_or_else(|p| p.into_inner());
        if volumes.contains_key(name) {
            return Err(BackendError::Exists(name.into()));
        }
        volumes.insert(name.into(), Arc::new(Mutex::new(Volume { size, blocks: BTreeMap::new() })));
        Ok(())
    }

    fn open(&self, name: &str) -> Result<Box<dyn BlockDevice>, BackendError> {
        Ok(Box::new(Device(self.get(name)?)))
    }

    fn clone_volume(&self, src: &str, dst: &str) -> Result<CloneMode, BackendError> {
        if !valid_name(dst) {
            return Err(BackendError::BadName(dst.into()));
        }
        let copy = self.get(src)?.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut volumes = self.volumes.lock().unwrap_or_else(|p| p.into_inner());
        if volumes.contains_key(dst) {
            return Err(BackendError::Exists(dst.into()));
        }
        volumes.insert(dst.into(), Arc::new(Mutex::new(copy)));
        Ok(CloneMode::SparseCopy)
    }

    fn resize(&self, name: &str, size: u64) -> Result<(), BackendError> {
        let volume = self.get(name)?;
        let mut v = volume.lock().unwrap_or_else(|p| p.into_inner());
        if size < v.size {
            return Err(BackendError::Shrink { name: name.into(), size: v.size, requested: size });
        }
        v.set_len(size);
        Ok(())
    }

    fn remove(&self, name: &str) -> Result<(), BackendError> {
        self.volumes.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        Ok(())
    }

    fn size(&self, name: &str) -> Result<u64, BackendError> {
        Ok(self.get(name)?.lock().unwrap_or_else(|p| p.into_inner()).size)
    }

    fn allocated_bytes(&self, name: &str) -> Result<u64, BackendError> {
        Ok(self.get(name)?.lock().unwrap_or_else(|p| p.into_inner()).blocks.len() as u64 * BLOCK)
    }

    fn exists(&self, name: &str) -> Result<bool, BackendError> {
        Ok(self.volumes.lock().unwrap_or_else(|p| p.into_inner()).contains_key(name))
    }

    fn list(&self) -> Result<Vec<String>, BackendError> {
        let mut names: Vec<String> = self.volumes.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        names.sort();
        Ok(names)
    }
}
