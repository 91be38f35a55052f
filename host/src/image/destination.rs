//! Where `volcache convert` writes, as `qemu-img convert` does: a regular file (written beside
//! it and renamed into place), the file a symlink points to (the link itself stays), or a device
//! written in place (never replaced by a regular file, never truncated; its size bounds the
//! image). On a device, zero runs are written as zeros: discarding is not done unasked.
#![forbid(unsafe_code)]

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use super::ImageError;
use crate::sparse::BlockDevice;

/// The resolved destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A regular file, existing or not, after following symlinks.
    File(PathBuf),
    /// A block or character device, after following symlinks.
    Device { path: PathBuf, block: bool },
}

/// Follows `dst` through symlinks (even to a file that does not exist yet) to what is written.
pub fn resolve(dst: &Path) -> Result<Destination, ImageError> {
    let mut path = dst.to_path_buf();
    for _ in 0..40 {
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Destination::File(path)),
            Err(e) => return Err(ImageError::io(&format!("examining {}", path.display()), e)),
        };
        let kind = meta.file_type();
        if kind.is_symlink() {
            let target =
                fs::read_link(&path).map_err(|e| ImageError::io(&format!("reading link {}", path.display()), e))?;
            path = match path.parent() {
                Some(parent) if target.is_relative() => parent.join(target),
                _ => target,
            };
            continue;
        }
        let refuse = |what: &str| {
            Err(ImageError::Unsupported(format!("{} is {what}; write to a file or a device", dst.display())))
        };
        return if kind.is_file() {
            Ok(Destination::File(path))
        } else if kind.is_block_device() || kind.is_char_device() {
            Ok(Destination::Device { path, block: kind.is_block_device() })
        } else if kind.is_dir() {
            refuse("a directory")
        } else {
            refuse("a FIFO or a socket")
        };
    }
    Err(ImageError::Unsupported(format!("{}: too many levels of symbolic links", dst.display())))
}

/// A device opened for writing in place.
#[derive(Debug)]
pub struct DeviceOut {
    file: File,
    /// A block device's size; a character device has none.
    size: Option<u64>,
}

impl DeviceOut {
    pub fn open(path: &Path, block: bool) -> Result<DeviceOut, ImageError> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| ImageError::io(&format!("opening {}", path.display()), e))?;
        let size = if block {
            let end = io::Seek::seek(&mut &file, io::SeekFrom::End(0))
                .map_err(|e| ImageError::io(&format!("sizing {}", path.display()), e))?;
            Some(end)
        } else {
            None
        };
        Ok(DeviceOut { file, size })
    }
}

impl BlockDevice for DeviceOut {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if let Some(size) = self.size.filter(|&s| offset + buf.len() as u64 > s) {
            return Err(io::Error::other(format!("the device holds {size} bytes; the image is larger")));
        }
        FileExt::write_all_at(&self.file, buf, offset)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.file, buf, offset)
    }
    fn punch_hole(&self, _offset: u64, _len: u64) -> io::Result<()> {
        // Not unasked: the writer then writes the zeros.
        Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
    }
    fn set_len(&self, size: u64) -> io::Result<()> {
        match self.size {
            Some(device) if size > device => {
                Err(io::Error::other(format!("the device holds {device} bytes; the image needs {size}")))
            }
            _ => Ok(()),
        }
    }
    fn sync_all(&self) -> io::Result<()> {
        match self.file.sync_all() {
            // A character device such as /dev/null cannot be synced; nothing is lost.
            Err(e) if self.size.is_none() && crate::sys::is_unsupported(&e) => Ok(()),
            result => result,
        }
    }
}
