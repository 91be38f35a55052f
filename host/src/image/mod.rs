//! Images: their formats (raw, qcow2), where they come from (file, HTTP(S), Glance v2), their
//! checksums, and converting them into a thin raw file.
//!
//! Flow: a [`source`] opens the bytes and verifies checksums as they stream; the format is
//! detected by magic (and must match the declared one); the [`qcow2`] or raw reader hands the
//! guest bytes, in order, to a [`crate::sparse::ThinWriter`]. [`convert`] wires this together for
//! the `volcache convert` command and, later, for cache fills.
#![forbid(unsafe_code)]

pub mod convert;
pub mod destination;
mod inflate;
pub mod qcow2;
pub mod raw;
pub mod source;
pub mod stream_at;
pub mod version;

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::str::FromStr;

/// Why an image could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("truncated image: {what} needs {need} bytes, the image has {have}")]
    Truncated { what: String, need: u64, have: u64 },
    #[error("corrupt image: {0}")]
    Corrupt(String),
    #[error("unsupported image: {0}")]
    Unsupported(String),
    #[error("the image is {detected}, but it was declared {declared}")]
    FormatMismatch { declared: DiskFormat, detected: DiskFormat },
    #[error("{algorithm} checksum mismatch: expected {expected}, got {actual}")]
    Checksum { algorithm: String, expected: String, actual: String },
    #[error("download failed: {0}")]
    Download(String),
    #[error("writing the output: {0}")]
    Write(#[source] io::Error),
    /// The daemon's configuration does not allow this source.
    #[error("{0}")]
    Forbidden(String),
}

impl ImageError {
    pub(crate) fn io(context: &str, source: io::Error) -> Self {
        ImageError::Io { context: context.to_string(), source }
    }
}

/// Positional reads, as from a file: the qcow2 reader's only view of its input.
pub trait ReadAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn len(&self) -> u64;
    /// A hint that `len` bytes at `offset` will be read soon (a file starts reading them in
    /// the background).
    fn prefetch(&self, _offset: u64, _len: u64) {}
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A file and its length, taken once.
#[derive(Debug)]
pub struct FileAt {
    pub file: File,
    len: u64,
}

impl FileAt {
    pub fn new(file: File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(FileAt { file, len })
    }
}

impl ReadAt for FileAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.file, buf, offset)
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn prefetch(&self, offset: u64, len: u64) {
        crate::sys::prefetch(&self.file, offset, len);
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = self.get(start..start.saturating_add(buf.len())).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
}

/// An image's on-disk format (Glance's `disk_format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        })
    }
}

impl FromStr for DiskFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raw" => Ok(DiskFormat::Raw),
            "qcow2" => Ok(DiskFormat::Qcow2),
            other => Err(format!("unsupported disk_format {other:?}: expected raw or qcow2")),
        }
    }
}

/// The format the first bytes say. Anything that is not qcow2 is raw, as for qemu-img, except
/// that every other container format we know of is refused by name rather than copied out as
/// the container's raw bytes (Glance's and Nova's defence against format confusion). An ISO is
/// raw and fine.
pub fn detect(head: &[u8]) -> Result<DiskFormat, ImageError> {
    if head.starts_with(&qcow2::MAGIC) {
        return Ok(DiskFormat::Qcow2);
    }
    if let Some(name) = foreign_format(head) {
        return Err(ImageError::Unsupported(format!(
            "this is a {name} image, which volcache does not decode; convert it to qcow2 or raw first \
             (qemu-img convert -O qcow2 ...)"
        )));
    }
    Ok(DiskFormat::Raw)
}

/// The name of a container format that `head` starts with, other than qcow2.
fn foreign_format(head: &[u8]) -> Option<&'static str> {
    const AT_START: [(&[u8], &str); 11] = [
        (b"conectix", "VHD (vpc)"),
        (b"vhdxfile", "VHDX"),
        (b"KDMV", "VMDK (sparse extent)"),
        (b"COWD", "VMDK (VMware 3 COW)"),
        (b"# Disk DescriptorFile", "VMDK (text descriptor)"),
        (b"QED\0", "QED"),
        (b"WithoutFreeSpace", "Parallels"),
        (b"WithouFreSpacExt", "Parallels"),
        (b"LUKS\xba\xbe", "LUKS (encrypted)"),
        (b"Bochs Virtual HD Image", "Bochs"),
        (b"#!/bin/sh\n#V2.0 Format", "cloop"),
    ];
    if let Some((_, name)) = AT_START.iter().find(|(magic, _)| head.starts_with(magic)) {
        return Some(name);
    }
    // VDI: its text banner varies; the signature at offset 64 does not.
    if head.get(64..68) == Some(&0xbeda_107f_u32.to_le_bytes()[..]) {
        return Some("VDI (VirtualBox)");
    }
    None
}

/// Checks a detected format against the declared one (`None` accepts any).
pub fn check_declared(declared: Option<DiskFormat>, detected: DiskFormat) -> Result<(), ImageError> {
    match declared {
        Some(declared) if declared != detected => Err(ImageError::FormatMismatch { declared, detected }),
        _ => Ok(()),
    }
}
