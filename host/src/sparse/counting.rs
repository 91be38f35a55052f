//! A block device wrapper that counts the bytes written (progress reports).
#![forbid(unsafe_code)]

use std::io;

use super::BlockDevice;

/// A device that counts the bytes written into it (for progress reports).
#[derive(Debug)]
pub struct CountingDevice<D> {
    inner: D,
    written: std::sync::atomic::AtomicU64,
}

impl<D: std::ops::Deref<Target = dyn BlockDevice>> CountingDevice<D> {
    pub fn new(inner: D) -> Self {
        CountingDevice { inner, written: Default::default() }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl<D: std::ops::Deref<Target = dyn BlockDevice> + Send + Sync + std::fmt::Debug> BlockDevice for CountingDevice<D> {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, offset)?;
        self.written.fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.punch_hole(offset, len)
    }
    fn set_len(&self, size: u64) -> io::Result<()> {
        self.inner.set_len(size)
    }
    fn sync_all(&self) -> io::Result<()> {
        self.inner.sync_all()
    }
}
