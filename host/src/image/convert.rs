//! Converting an image from any source and format into a thin raw file.
//!
//! The output is written under a temporary name beside the destination and renamed into place
//! only when every byte is written and every checksum matched: a failure (bad checksum, short
//! download, corrupt image) leaves nothing behind. A qcow2 image arriving as a stream is spooled
//! to a temporary qcow2 file first (its tables point anywhere in the file); raw streams are
//! written as they arrive.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::source::{self, Checker, Expected, Location, Opened};
use super::{check_declared, detect, qcow2, raw, DiskFormat, FileAt, ImageError};
use crate::sparse::{pipelined, BlockDevice, Target, ThinWriter, WriteMode, WriteStats, DEFAULT_MIN_SPARSE};

/// How to convert.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// The declared format; `None` detects it.
    pub format: Option<DiskFormat>,
    /// Zero-detection granularity in bytes (a power of two >= 512).
    pub min_sparse: u64,
    pub mode: WriteMode,
    /// Checksums to verify, in addition to any the source itself announces (Glance).
    pub expected: Expected,
    /// Sent to Glance as `X-Auth-Token`.
    pub token: Option<String>,
    /// The output's final length, if longer than the image (a volume larger than its image);
    /// `None`: the image's virtual size.
    pub length: Option<u64>,
    /// Bounds on a download.
    pub limits: source::SourceLimits,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            limits: source::SourceLimits::default(),
            format: None,
            min_sparse: DEFAULT_MIN_SPARSE,
            mode: WriteMode::Thin,
            expected: Expected::default(),
            token: None,
            length: None,
        }
    }
}

/// What a conversion did.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ConvertReport {
    pub format: DiskFormat,
    pub virtual_size: u64,
    /// Bytes read from the source (for a stream: downloaded).
    pub bytes_read: u64,
    #[serde(flatten)]
    pub write: WriteStats,
    /// How holes in the source were found without reading them.
    pub holes_from: HolesFrom,
    pub elapsed_seconds: f64,
    /// Virtual bytes converted per second, in MiB/s.
    pub throughput_mib_s: f64,
    /// A qcow2 download: `streamed` (converted as it arrived, no spool file) or `spooled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download: Option<&'static str>,
}

/// How a conversion found the source's holes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HolesFrom {
    /// SEEK_DATA/SEEK_HOLE on a raw file.
    SeekData,
    /// The qcow2 L1/L2 tables (unallocated and zero clusters).
    Qcow2Tables,
    /// Nothing: the source was read in full (a stream, or a file system without SEEK_DATA).
    None,
}

/// Progress: bytes of the virtual disk done, and its size (0 while unknown).
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Deletes the temporary output unless the conversion succeeded.
struct Partial {
    path: PathBuf,
    keep: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn temp_beside(dst: &Path, tag: &str) -> PathBuf {
    let name = dst.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dst.with_file_name(format!(".{name}.{tag}.{}", std::process::id()))
}

fn check_min_sparse(min_sparse: u64) -> Result<(), ImageError> {
    if min_sparse < 512 || !min_sparse.is_power_of_two() || min_sparse > (64 << 20) {
        return Err(ImageError::Unsupported(format!(
            "min-sparse {min_sparse}: must be a power of two between 512 and 64 MiB"
        )));
    }
    Ok(())
}

/// Converts the image at `src` into a thin raw file at `dst`.
pub fn convert(
    src: &Location,
    dst: &Path,
    opts: &ConvertOptions,
    progress: Progress<'_>,
) -> Result<ConvertReport, ImageError> {
    check_min_sparse(opts.min_sparse)?;
    let dst = match super::destination::resolve(dst)? {
        super::destination::Destination::File(path) => path,
        super::destination::Destination::Device { path, block } => {
            // In place: no temporary file, no rename, the old contents overwritten.
            let out = super::destination::DeviceOut::open(&path, block)?;
            let report = write_image(src, &out, Target::MayHoldData, &std::env::temp_dir(), opts, progress)?;
            out.sync_all().map_err(ImageError::Write)?;
            return Ok(report);
        }
    };
    let dst = dst.as_path();
    let out_path = temp_beside(dst, "partial");
    let mut partial = Partial { path: out_path.clone(), keep: false };
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&out_path)
        .map_err(|e| ImageError::io(&format!("creating {}", out_path.display()), e))?;
    let spool_dir = dst.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let report = write_image(src, &out, Target::Fresh, spool_dir, opts, progress)?;
    out.sync_all().map_err(ImageError::Write)?;
    fs::rename(&out_path, dst).map_err(|e| ImageError::io(&format!("moving the output to {}", dst.display()), e))?;
    partial.keep = true;
    Ok(report)
}

/// Writes the image at `src` thin into `out` (a new sparse file, or one that may hold old data,
/// as `target` says) and sets its length to the image's virtual size. A qcow2 stream is spooled
/// under `spool_dir` first. On error, `out` holds garbage: the caller removes it.
pub fn write_image(
    src: &Location,
    out: &dyn BlockDevice,
    target: Target,
    spool_dir: &Path,
    opts: &ConvertOptions,
    progress: Progress<'_>,
) -> Result<ConvertReport, ImageError> {
    check_min_sparse(opts.min_sparse)?;
    let started = Instant::now();
    let (opened, meta) = source::open(src, opts.token.as_deref(), &opts.limits)?;
    let declared = opts.format.or(meta.disk_format);
    let mut expected = meta.expected;
    if opts.expected.md5.is_some() {
        expected.md5 = opts.expected.md5.clone();
    }
    if opts.expected.hash.is_some() {
        expected.hash = opts.expected.hash.clone();
    }
    let mut writer = ThinWriter::new(out, opts.mode, target, opts.min_sparse);
    let (format, virtual_size, bytes_read, holes_from, download) = match opened {
        Opened::File(file) => {
            let (format, size, read, holes) = from_file(file, declared, Checker::new(expected), &mut writer, progress)?;
            (format, size, read, holes, None)
        }
        Opened::Stream { reader, len, ranged } => {
            from_stream(reader, len, ranged, declared, Checker::new(expected), spool_dir, &mut writer, progress)?
        }
    };
    if let Some(length) = opts.length.filter(|&l| l < virtual_size) {
        return Err(ImageError::Unsupported(format!(
            "the image's virtual size is {virtual_size} bytes: it does not fit in {length} bytes"
        )));
    }
    let write = writer.finish_at(virtual_size, opts.length.unwrap_or(0)).map_err(ImageError::Write)?;
    let elapsed = started.elapsed().as_secs_f64();
    Ok(ConvertReport {
        format,
        virtual_size,
        bytes_read,
        write,
        holes_from,
        elapsed_seconds: elapsed,
        throughput_mib_s: virtual_size as f64 / (1 << 20) as f64 / elapsed.max(1e-9),
        download,
    })
}

fn read_head(file: &File) -> Result<Vec<u8>, ImageError> {
    let mut head = vec![0u8; 4096];
    let n = raw::read_full(&mut &*file, &mut head).map_err(|e| ImageError::io("reading the image header", e))?;
    head.truncate(n);
    Ok(head)
}

fn from_file(
    file: File,
    declared: Option<DiskFormat>,
    mut checker: Checker,
    writer: &mut ThinWriter<'_>,
    progress: Progress<'_>,
) -> Result<(DiskFormat, u64, u64, HolesFrom), ImageError> {
    let head = read_head(&file)?;
    let format = detect(&head)?;
    check_declared(declared, format)?;
    let src = FileAt::new(file).map_err(|e| ImageError::io("reading the image size", e))?;
    match format {
        DiskFormat::Raw => {
            let size = crate::image::ReadAt::len(&src);
            let active = checker.is_active();
            let checker_ref = &mut checker;
            let stats = pipelined(
                writer,
                |sink| raw::copy_file(&src.file, size, sink, active.then_some(checker_ref)),
                ImageError::Write,
                &mut |done| progress(done, size),
            )?;
            checker.finish()?;
            let holes = if stats.hole_aware { HolesFrom::SeekData } else { HolesFrom::None };
            Ok((format, raw_virtual_size(size), stats.bytes_read, holes))
        }
        DiskFormat::Qcow2 => {
            // The checksum covers the qcow2 file itself: verify it before trusting its tables.
            let mut checksum_read = 0;
            if checker.is_active() {
                let size = crate::image::ReadAt::len(&src);
                checksum_read = hash_file(&src.file, size, &mut checker)?;
                checker.finish()?;
            }
            let header = qcow2::Header::parse(&head, crate::image::ReadAt::len(&src))?;
            let size = header.virtual_size;
            let stats = pipelined(writer, |sink| qcow2::copy(&src, &header, sink), ImageError::Write, &mut |done| {
                progress(done, size)
            })?;
            Ok((format, size, stats.bytes_read + checksum_read, HolesFrom::Qcow2Tables))
        }
    }
}

/// Hashes a whole file, feeding holes as zeros without reading them.
fn hash_file(file: &File, size: u64, checker: &mut Checker) -> Result<u64, ImageError> {
    let mut read = 0;
    let mut pos = 0;
    let mut buf = vec![0u8; 8 << 20];
    for extent in crate::sparse::DataExtents::new(file, size) {
        let extent = extent.map_err(|e| ImageError::io("finding the image's data", e))?;
        checker.update_zeros(extent.offset - pos);
        let mut at = extent.offset;
        while at < extent.offset + extent.len {
            let n = (extent.offset + extent.len - at).min(buf.len() as u64) as usize;
            std::os::unix::fs::FileExt::read_exact_at(file, &mut buf[..n], at)
                .map_err(|e| ImageError::io("reading the image", e))?;
            checker.update(&buf[..n]);
            at += n as u64;
            read += n as u64;
        }
        pos = extent.offset + extent.len;
    }
    checker.update_zeros(size - pos);
    Ok(read)
}

#[expect(clippy::too_many_arguments, reason = "one download's state, passed through once")]
fn from_stream(
    mut reader: Box<dyn Read + Send>,
    len: Option<u64>,
    ranged: Option<super::source::Ranged>,
    declared: Option<DiskFormat>,
    mut checker: Checker,
    spool_dir: &Path,
    writer: &mut ThinWriter<'_>,
    progress: Progress<'_>,
) -> Result<(DiskFormat, u64, u64, HolesFrom, Option<&'static str>), ImageError> {
    let mut head = vec![0u8; 4096];
    let n = raw::read_full(&mut *reader, &mut head).map_err(|e| raw::stream_error(e, 0, len))?;
    head.truncate(n);
    let format = detect(&head)?;
    check_declared(declared, format)?;
    match (format, len, ranged) {
        (DiskFormat::Qcow2, Some(len), Some(ranged)) => {
            // Converted while it downloads: no spool file (module `stream_at`).
            let header = qcow2::Header::parse(&head, len)?;
            let size = header.virtual_size;
            let src = super::stream_at::StreamAt::start(head, reader, len, checker, ranged);
            pipelined(writer, |sink| qcow2::copy(&src, &header, sink), ImageError::Write, &mut |done| {
                progress(done, size)
            })?;
            let refetched = src.finish()?;
            tracing::info!(bytes = len, refetched, "qcow2 download converted as it arrived (no spool file)");
            Ok((format, size, len + refetched, HolesFrom::Qcow2Tables, Some("streamed")))
        }
        (DiskFormat::Raw, ..) => {
            let total = len.unwrap_or(0);
            let size =
                raw::copy_stream(&head, &mut *reader, len, writer, &mut checker, &mut |done| progress(done, total))?;
            checker.finish()?;
            Ok((format, raw_virtual_size(size), size, HolesFrom::None, None))
        }
        (DiskFormat::Qcow2, len, ranged) => {
            tracing::info!(
                why = if len.is_none() {
                    "no Content-Length"
                } else if ranged.is_none() {
                    "the server does not accept Range requests"
                } else {
                    ""
                },
                "qcow2 download spooled to a file before conversion"
            );
            static SPOOLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = SPOOLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let spool_path = spool_dir.join(format!(".volcache-download.{}.{n}.qcow2", std::process::id()));
            let _spool_guard = Partial { path: spool_path.clone(), keep: false };
            let mut spool = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&spool_path)
                .map_err(|e| ImageError::io(&format!("creating {}", spool_path.display()), e))?;
            checker.update(&head);
            spool.write_all(&head).map_err(ImageError::Write)?;
            let mut total = head.len() as u64;
            let mut buf = vec![0u8; 8 << 20];
            loop {
                let n = raw::read_full(&mut *reader, &mut buf).map_err(|e| raw::stream_error(e, total, len))?;
                if n == 0 {
                    break;
                }
                checker.update(&buf[..n]);
                spool.write_all(&buf[..n]).map_err(ImageError::Write)?;
                total += n as u64;
                progress(0, 0);
            }
            if let Some(expected) = len {
                if total != expected {
                    return Err(ImageError::Truncated { what: "download".into(), need: expected, have: total });
                }
            }
            checker.finish()?;
            let src = FileAt::new(spool).map_err(|e| ImageError::io("reading the downloaded image", e))?;
            let header = qcow2::Header::parse(&head, total)?;
            let size = header.virtual_size;
            pipelined(writer, |sink| qcow2::copy(&src, &header, sink), ImageError::Write, &mut |done| {
                progress(done, size)
            })?;
            Ok((format, size, total, HolesFrom::Qcow2Tables, Some("spooled")))
        }
    }
}

/// What registering an image learns without converting it: its format and virtual size, from
/// the first 4 KiB (and, for a raw stream, its Content-Length).
pub fn probe(
    src: &Location,
    declared: Option<DiskFormat>,
    token: Option<&str>,
    limits: &source::SourceLimits,
) -> Result<(DiskFormat, u64), ImageError> {
    let (opened, meta) = source::open(src, token, limits)?;
    let declared = declared.or(meta.disk_format);
    let (head, len) = match opened {
        Opened::File(file) => {
            let len = file.metadata().map_err(|e| ImageError::io("reading the image size", e))?.len();
            (read_head(&file)?, Some(len))
        }
        Opened::Stream { mut reader, len, .. } => {
            let mut head = vec![0u8; 4096];
            let n = raw::read_full(&mut *reader, &mut head).map_err(|e| raw::stream_error(e, 0, len))?;
            head.truncate(n);
            (head, len)
        }
    };
    let format = detect(&head)?;
    check_declared(declared, format)?;
    match format {
        DiskFormat::Qcow2 => {
            // The header's own bounds checks need the file length; a stream's is its Content-Length.
            let header = qcow2::Header::parse(&head, len.unwrap_or(u64::MAX))?;
            Ok((format, header.virtual_size))
        }
        DiskFormat::Raw => {
            let size = len.ok_or_else(|| {
                ImageError::Download("the server did not say how big the raw image is (no Content-Length)".into())
            })?;
            Ok((format, raw_virtual_size(size)))
        }
    }
}

/// A raw image's virtual size: its length rounded up to whole 512-byte sectors, as qemu-img
/// reads it (the padding reads as zeros).
fn raw_virtual_size(len: u64) -> u64 {
    len.next_multiple_of(512)
}
