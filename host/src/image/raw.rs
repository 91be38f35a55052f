//! Raw images: from a file, only its data extents are read (holes are skipped without reading);
//! from a stream (HTTP, a pipe), everything is read in order.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;

use super::source::Checker;
use super::ImageError;
use crate::sparse::{DataExtents, ImageSink, ThinWriter};

const CHUNK: usize = 8 << 20;
/// How far ahead of the copy the kernel is asked to read (bytes of upcoming extents).
const PREFETCH: u64 = 32 << 20;

/// Result of a raw copy.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawStats {
    pub bytes_read: u64,
    /// SEEK_DATA/SEEK_HOLE answered; holes were skipped unread.
    pub hole_aware: bool,
}

/// Copies a raw file of `size` bytes. Holes are fed to `checker` as zeros, never read.
pub fn copy_file(
    src: &File,
    size: u64,
    out: &mut dyn ImageSink,
    mut checker: Option<&mut Checker>,
) -> Result<RawStats, ImageError> {
    let mut stats = RawStats::default();
    let mut buf = vec![0u8; CHUNK];
    let mut extents = DataExtents::new(src, size);
    let mut pos = 0u64;
    // Extents found ahead of the one being copied, already handed to the kernel to read in the
    // background (up to PREFETCH bytes of each): a cloud image has thousands of small extents,
    // and reading them one at a time leaves the disk idle between requests.
    let mut ahead: std::collections::VecDeque<crate::sparse::Extent> = std::collections::VecDeque::new();
    let mut ahead_bytes = 0u64;
    loop {
        while ahead_bytes < PREFETCH {
            let Some(next) = extents.next() else { break };
            let next = next.map_err(|e| ImageError::io("finding the image's data", e))?;
            let advised = next.len.min(PREFETCH);
            crate::sys::prefetch(src, next.offset, advised);
            ahead_bytes += advised;
            ahead.push_back(next);
        }
        let Some(extent) = ahead.pop_front() else { break };
        ahead_bytes -= extent.len.min(PREFETCH);
        if extent.offset > pos {
            out.hole(pos, extent.offset - pos).map_err(ImageError::Write)?;
            if let Some(c) = checker.as_deref_mut() {
                c.update_zeros(extent.offset - pos);
            }
        }
        let end = extent.offset + extent.len;
        let mut at = extent.offset;
        while at < end {
            let n = (end - at).min(CHUNK as u64) as usize;
            src.read_exact_at(&mut buf[..n], at).map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => {
                    ImageError::Truncated { what: "raw image".into(), need: at + n as u64, have: at }
                }
                _ => ImageError::io("reading the image", e),
            })?;
            if let Some(c) = checker.as_deref_mut() {
                c.update(&buf[..n]);
            }
            out.write_at(at, &buf[..n]).map_err(ImageError::Write)?;
            stats.bytes_read += n as u64;
            at += n as u64;
        }
        pos = end;
    }
    if pos < size {
        out.hole(pos, size - pos).map_err(ImageError::Write)?;
        if let Some(c) = checker {
            c.update_zeros(size - pos);
        }
    }
    stats.hole_aware = extents.hole_aware();
    Ok(stats)
}

/// Copies a raw stream that starts with `head` (bytes already read from it). When `expected_len`
/// is known, a shorter stream is an error.
pub fn copy_stream(
    head: &[u8],
    reader: &mut dyn Read,
    expected_len: Option<u64>,
    out: &mut ThinWriter<'_>,
    checker: &mut Checker,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, ImageError> {
    checker.update(head);
    out.write_at(0, head).map_err(ImageError::Write)?;
    let mut total = head.len() as u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = read_full(reader, &mut buf).map_err(|e| stream_error(e, total, expected_len))?;
        if n == 0 {
            break;
        }
        checker.update(&buf[..n]);
        out.write_at(total, &buf[..n]).map_err(ImageError::Write)?;
        total += n as u64;
        progress(total);
    }
    if let Some(expected) = expected_len {
        if total != expected {
            return Err(ImageError::Truncated { what: "download".into(), need: expected, have: total });
        }
    }
    Ok(total)
}

/// A failed read from a download: before the announced length arrived, that is a truncated
/// image (whatever the transport called it).
pub(crate) fn stream_error(e: std::io::Error, received: u64, expected: Option<u64>) -> ImageError {
    match expected {
        Some(need) if received < need => {
            ImageError::Truncated { what: format!("download ({e})"), need, have: received }
        }
        _ => ImageError::Download(format!("after {received} bytes: {e}")),
    }
}

/// Reads until `buf` is full or the stream ends.
pub(crate) fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
