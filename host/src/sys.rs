//! The system calls the data path needs, as small `io::Result` functions: SEEK_DATA/SEEK_HOLE,
//! hole punching, reflink (FICLONE) and in-kernel copies. They go through `rustix`, so no
//! `unsafe` is needed here; each maps "not supported here" to a value the caller can act on.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io;

use rustix::fs::{fallocate, FallocateFlags, SeekFrom};
use rustix::io::Errno;

/// Next offset >= `from` that holds data, or `None` when only a hole follows (ENXIO).
pub fn next_data(file: &File, from: u64) -> io::Result<Option<u64>> {
    match rustix::fs::seek(file, SeekFrom::Data(from)) {
        Ok(offset) => Ok(Some(offset)),
        Err(Errno::NXIO) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Next offset >= `from` that starts a hole (the end of the file counts as one).
pub fn next_hole(file: &File, from: u64) -> io::Result<u64> {
    Ok(rustix::fs::seek(file, SeekFrom::Hole(from))?)
}

/// Whether an error means "this file system or file kind cannot do that", as opposed to a
/// real I/O failure.
pub fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        Errno::from_io_error(e),
        Some(
            Errno::INVAL
                | Errno::OPNOTSUPP
                | Errno::NOSYS
                | Errno::XDEV
                | Errno::SPIPE
                | Errno::BADF
                | Errno::NOTTY
                | Errno::PERM
        )
    )
}

/// Deallocates `len` bytes at `offset`, keeping the file size; they read back as zeros.
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    Ok(fallocate(file, FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE, offset, len)?)
}

/// Makes `dst` share all of `src`'s blocks (copy-on-write). Fails with an error for which
/// [`is_unsupported`] holds on file systems without reflink.
pub fn reflink(src: &File, dst: &File) -> io::Result<()> {
    Ok(rustix::fs::ioctl_ficlone(dst, src)?)
}

/// Copies up to `len` bytes from `src` at `offset` to `dst` at the same offset inside the
/// kernel; returns the bytes copied (0 at end of file).
pub fn copy_range(src: &File, dst: &File, offset: u64, len: usize) -> io::Result<usize> {
    let (mut from, mut to) = (offset, offset);
    Ok(rustix::fs::copy_file_range(src, Some(&mut from), dst, Some(&mut to), len)?)
}

/// Bytes the file actually occupies on disk.
pub fn allocated_bytes(file: &File) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(file.metadata()?.blocks() * 512)
}

/// Asks the kernel to start reading `len` bytes at `offset` in the background (a hint: errors
/// are ignored), so that reads of scattered extents overlap instead of waiting one by one.
pub fn prefetch(file: &File, offset: u64, len: u64) {
    if let Some(len) = std::num::NonZeroU64::new(len) {
        let _ = rustix::fs::fadvise(file, offset, Some(len), rustix::fs::Advice::WillNeed);
    }
}
