//! A native, streaming qcow2 reader (versions 2 and 3).
//!
//! It walks the L1 table in guest order and, for each L2 table, hands the thin writer either
//! data (standard clusters, read in runs where their host offsets are contiguous; compressed
//! clusters, inflated with deflate or zstd) or holes (unallocated and zero clusters, extended-L2
//! subclusters), which are never read. Every size and offset comes from untrusted bytes, so each
//! is checked against the file's length and against fixed bounds before anything is allocated.
//! Backing files, external data files and encryption are refused.
#![forbid(unsafe_code)]

use std::io;

use super::inflate::{Batch, Clusters};
use super::{ImageError, ReadAt};
use crate::sparse::ImageSink;

pub const MAGIC: [u8; 4] = *b"QFI\xfb";

/// qemu's own limits: clusters of 512 B to 2 MiB, an L1 table of at most 32 MiB.
const MIN_CLUSTER_BITS: u32 = 9;
const MAX_CLUSTER_BITS: u32 = 21;
const MAX_L1_BYTES: u64 = 32 << 20;
/// Guest sizes above this are refused (qemu caps images well below 2^63 as well).
const MAX_VIRTUAL_SIZE: u64 = 1 << 56;
/// Largest read issued for a run of contiguous data clusters.
const MAX_RUN: u64 = 8 << 20;

const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

const L1_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_COMPRESSED: u64 = 1 << 62;
const L2_ZERO: u64 = 1;

pub use super::inflate::Compression;

/// The parts of a qcow2 header this reader uses, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub virtual_size: u64,
    pub l1_size: u32,
    pub l1_offset: u64,
    pub compression: Compression,
    pub extended_l2: bool,
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn l2_entry_bytes(&self) -> u64 {
        if self.extended_l2 {
            16
        } else {
            8
        }
    }

    fn l2_entries(&self) -> u64 {
        self.cluster_size() / self.l2_entry_bytes()
    }

    /// Parses and checks a header from the first bytes of an image (at least 72, ideally 112).
    pub fn parse(buf: &[u8], file_len: u64) -> Result<Header, ImageError> {
        let corrupt = |m: String| ImageError::Corrupt(format!("qcow2 header: {m}"));
        if buf.len() < 72 {
            return Err(ImageError::Truncated { what: "qcow2 header".into(), need: 72, have: buf.len() as u64 });
        }
        let be32 = |at: usize| u32::from_be_bytes(buf[at..at + 4].try_into().unwrap_or_default());
        let be64 = |at: usize| u64::from_be_bytes(buf[at..at + 8].try_into().unwrap_or_default());
        if buf[..4] != MAGIC {
            return Err(corrupt("no QFI\\xfb magic".into()));
        }
        let version = be32(4);
        if version != 2 && version != 3 {
            return Err(ImageError::Unsupported(format!("qcow2 version {version} (only 2 and 3 exist)")));
        }
        if be64(8) != 0 {
            return Err(ImageError::Unsupported(
                "the image has a backing file; volcache only caches self-contained images (flatten it with `qemu-img convert`)".into(),
            ));
        }
        let cluster_bits = be32(20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(corrupt(format!(
                "cluster_bits {cluster_bits} outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}"
            )));
        }
        // Whole 512-byte sectors, as qemu-img reads it: a size that is not is rounded down.
        let virtual_size = be64(24) & !511;
        if virtual_size > MAX_VIRTUAL_SIZE {
            return Err(corrupt(format!("virtual size {virtual_size} is implausibly large")));
        }
        if be32(32) != 0 {
            return Err(ImageError::Unsupported("the image is encrypted".into()));
        }
        let l1_size = be32(36);
        let l1_offset = be64(40);
        let (mut compression, mut extended_l2) = (Compression::Deflate, false);
        if version == 3 {
            if buf.len() < 104 {
                return Err(ImageError::Truncated {
                    what: "qcow2 v3 header".into(),
                    need: 104,
                    have: buf.len() as u64,
                });
            }
            let incompat = be64(72);
            if incompat & !INCOMPAT_KNOWN != 0 {
                return Err(ImageError::Unsupported(format!(
                    "unknown incompatible qcow2 features {:#x}",
                    incompat & !INCOMPAT_KNOWN
                )));
            }
            if incompat & INCOMPAT_CORRUPT != 0 {
                return Err(corrupt(
                    "the image is marked corrupt by qemu; repair it with `qemu-img check -r all`".into(),
                ));
            }
            if incompat & INCOMPAT_DATA_FILE != 0 {
                return Err(ImageError::Unsupported("the image keeps its data in an external data file".into()));
            }
            extended_l2 = incompat & INCOMPAT_EXTL2 != 0;
            let header_length = be32(100);
            if incompat & INCOMPAT_COMPRESSION != 0 {
                if header_length <= 104 || buf.len() <= 104 {
                    return Err(corrupt("compression type flagged but missing from the header".into()));
                }
                compression = match buf[104] {
                    0 => Compression::Deflate,
                    1 => Compression::Zstd,
                    other => return Err(ImageError::Unsupported(format!("qcow2 compression type {other}"))),
                };
            }
            if extended_l2 && cluster_bits < 14 {
                return Err(corrupt("extended L2 entries need clusters of at least 16 KiB".into()));
            }
        }
        let header = Header { version, cluster_bits, virtual_size, l1_size, l1_offset, compression, extended_l2 };
        // The L1 table must map the whole disk, fit qemu's limit and lie inside the file.
        let per_l1 = header.l2_entries() * header.cluster_size();
        let needed = virtual_size.div_ceil(per_l1);
        if u64::from(l1_size) < needed {
            return Err(corrupt(format!("L1 table has {l1_size} entries, the disk needs {needed}")));
        }
        let l1_bytes = u64::from(l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(corrupt(format!("L1 table of {l1_bytes} bytes exceeds {MAX_L1_BYTES}")));
        }
        if needed > 0 && (l1_offset % header.cluster_size() != 0 || l1_offset.saturating_add(needed * 8) > file_len) {
            return Err(corrupt(format!(
                "L1 table at {l1_offset} is misaligned or beyond the end of the file ({file_len} bytes)"
            )));
        }
        Ok(header)
    }
}

/// Counters of one qcow2 read.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadStats {
    pub bytes_read: u64,
}

/// Reads the image in `src` and writes its guest bytes, in order, through `out`.
pub fn copy<R: ReadAt + ?Sized>(src: &R, header: &Header, out: &mut dyn ImageSink) -> Result<ReadStats, ImageError> {
    let mut stats = ReadStats::default();
    let file_len = src.len();
    let cs = header.cluster_size();
    let per_l2 = header.l2_entries();
    let l1_needed = header.virtual_size.div_ceil(per_l2 * cs);
    let l1 = read_vec(src, header.l1_offset, l1_needed * 8, "L1 table", &mut stats)?;
    let mut l2 = vec![0u8; (per_l2 * header.l2_entry_bytes()) as usize];
    let mut run = Run::default();
    let mut batch = Batch::default();
    let mut prefetch = Prefetch::default();
    for (l1_index, l1_entry) in l1.chunks_exact(8).enumerate() {
        let l1_entry = u64::from_be_bytes(l1_entry.try_into().unwrap_or_default());
        let guest_base = l1_index as u64 * per_l2 * cs;
        let span = (per_l2 * cs).min(header.virtual_size - guest_base);
        let l2_offset = l1_entry & L1_OFFSET_MASK;
        if l2_offset == 0 {
            flush_batch(&mut batch, src, header, out, &mut stats)?;
            run.flush(src, out, &mut stats)?;
            out.hole(guest_base, span).map_err(ImageError::Write)?;
            continue;
        }
        if !l2_offset.is_multiple_of(cs) {
            return Err(ImageError::Corrupt(format!(
                "L2 table at {l2_offset} is not cluster-aligned (L1 entry {l1_index})"
            )));
        }
        check_range(l2_offset, l2.len() as u64, file_len, "L2 table")?;
        src.read_exact_at(&mut l2, l2_offset).map_err(|e| ImageError::io("reading an L2 table", e))?;
        stats.bytes_read += l2.len() as u64;
        let clusters = span.div_ceil(cs);
        prefetch.plan(header, &l2, clusters);
        for i in 0..clusters {
            let guest = guest_base + i * cs;
            let len = cs.min(header.virtual_size - guest);
            let at = (i * header.l2_entry_bytes()) as usize;
            let entry = u64::from_be_bytes(l2[at..at + 8].try_into().unwrap_or_default());
            prefetch.advance(src, header, entry);
            if entry & L2_COMPRESSED != 0 {
                run.flush(src, out, &mut stats)?;
                batch.push(cs, guest, len, entry);
                if batch.is_full() {
                    flush_batch(&mut batch, src, header, out, &mut stats)?;
                }
                continue;
            }
            // Compressed clusters before this one go out first: the writer takes guest order.
            flush_batch(&mut batch, src, header, out, &mut stats)?;
            let host = entry & L2_OFFSET_MASK;
            if header.extended_l2 {
                let bitmap = u64::from_be_bytes(l2[at + 8..at + 16].try_into().unwrap_or_default());
                subclusters(src, header, guest, len, host, bitmap, &mut run, out, &mut stats)?;
            } else if entry & L2_ZERO != 0 && header.version < 3 {
                return Err(ImageError::Corrupt(format!(
                    "the L2 entry of guest offset {guest} has the zero flag, which version 2 images do not have"
                )));
            } else if entry & L2_ZERO != 0 && !host.is_multiple_of(cs) {
                return Err(ImageError::Corrupt(format!(
                    "zero cluster at guest offset {guest} has an unaligned host offset {host}"
                )));
            } else if entry & L2_ZERO != 0 || host == 0 {
                run.flush(src, out, &mut stats)?;
                out.hole(guest, len).map_err(ImageError::Write)?;
            } else {
                if !host.is_multiple_of(cs) {
                    return Err(ImageError::Corrupt(format!(
                        "data cluster at host offset {host} is not cluster-aligned"
                    )));
                }
                check_range(host, len, file_len, "data cluster")?;
                run.push(src, out, guest, host, len, &mut stats)?;
            }
        }
    }
    flush_batch(&mut batch, src, header, out, &mut stats)?;
    run.flush(src, out, &mut stats)?;
    Ok(stats)
}

/// One extended-L2 cluster: 32 subclusters, each data, zeros or unallocated.
#[expect(clippy::too_many_arguments, reason = "one cluster's state, passed through once")]
fn subclusters<R: ReadAt + ?Sized>(
    src: &R,
    header: &Header,
    guest: u64,
    len: u64,
    host: u64,
    bitmap: u64,
    run: &mut Run,
    out: &mut dyn ImageSink,
    stats: &mut ReadStats,
) -> Result<(), ImageError> {
    let sub = header.cluster_size() / 32;
    let (alloc, zero) = (bitmap as u32, (bitmap >> 32) as u32);
    if alloc & zero != 0 {
        return Err(ImageError::Corrupt(format!("subcluster both allocated and zero at guest offset {guest}")));
    }
    if alloc != 0 && (host == 0 || !host.is_multiple_of(header.cluster_size())) {
        return Err(ImageError::Corrupt(format!(
            "allocated subclusters without a valid host cluster at guest offset {guest}"
        )));
    }
    for s in 0..32u64 {
        let off = s * sub;
        if off >= len {
            break;
        }
        let n = sub.min(len - off);
        if alloc & (1 << s) != 0 {
            check_range(host + off, n, src.len(), "data subcluster")?;
            run.push(src, out, guest + off, host + off, n, stats)?;
        } else {
            run.flush(src, out, stats)?;
            out.hole(guest + off, n).map_err(ImageError::Write)?;
        }
    }
    Ok(())
}

/// Data clusters whose guest and host ranges are both contiguous, read with one call.
#[derive(Default)]
struct Run {
    guest: u64,
    host: u64,
    len: u64,
}

impl Run {
    fn push<R: ReadAt + ?Sized>(
        &mut self,
        src: &R,
        out: &mut dyn ImageSink,
        guest: u64,
        host: u64,
        len: u64,
        stats: &mut ReadStats,
    ) -> Result<(), ImageError> {
        let extends = self.len > 0 && self.guest + self.len == guest && self.host + self.len == host;
        if !extends || self.len + len > MAX_RUN {
            self.flush(src, out, stats)?;
            self.guest = guest;
            self.host = host;
        }
        self.len += len;
        Ok(())
    }

    fn flush<R: ReadAt + ?Sized>(
        &mut self,
        src: &R,
        out: &mut dyn ImageSink,
        stats: &mut ReadStats,
    ) -> Result<(), ImageError> {
        if self.len == 0 {
            return Ok(());
        }
        // Read straight into the sink's buffer; a read error is told apart from a write error.
        let (host, len) = (self.host, self.len);
        let mut read_error = None;
        let written = out.write_with(self.guest, len as usize, &mut |buf| {
            src.read_exact_at(buf, host).map_err(|e| {
                let marker = io::Error::other("read failed");
                read_error = Some(e);
                marker
            })
        });
        if let Some(e) = read_error {
            return Err(ImageError::io("reading data clusters", e));
        }
        written.map_err(ImageError::Write)?;
        stats.bytes_read += len;
        self.len = 0;
        Ok(())
    }
}

/// Bytes the source is asked to read ahead of the copy.
const PREFETCH_WINDOW: u64 = 32 << 20;
/// Largest single prefetch request.
const PREFETCH_STEP: u64 = 4 << 20;

/// Where a cluster's stored bytes are in the file (data or compressed), if anywhere.
fn stored_range(header: &Header, entry: u64) -> Option<(u64, u64)> {
    if entry & L2_COMPRESSED != 0 {
        return Some(compressed_range(header, entry));
    }
    let host = entry & L2_OFFSET_MASK;
    let zero = entry & L2_ZERO != 0 && header.version == 3 && !header.extended_l2;
    (host != 0 && !zero).then_some((host, header.cluster_size()))
}

/// Where a compressed cluster's bytes are: its descriptor holds the host offset in the low x
/// bits and the number of additional 512-byte sectors above them. The length may run past the
/// end of the file for the last cluster; readers clip it.
fn compressed_range(header: &Header, entry: u64) -> (u64, u64) {
    let x = 62 - (header.cluster_bits - 8);
    let offset = entry & ((1u64 << x) - 1);
    let sectors = (entry & ((1u64 << 62) - 1)) >> x;
    (offset, (sectors + 1) * 512 - (offset & 511))
}

/// A compressed cluster's stored bytes, and their host offset.
fn read_compressed<R: ReadAt + ?Sized>(
    src: &R,
    header: &Header,
    entry: u64,
    stats: &mut ReadStats,
) -> Result<(u64, Vec<u8>), ImageError> {
    let (offset, len) = compressed_range(header, entry);
    // The last compressed cluster may end before its last sector does.
    let len = len.min(src.len().saturating_sub(offset));
    if len == 0 {
        return Err(ImageError::Truncated {
            what: format!("compressed cluster at offset {offset}"),
            need: offset + 1,
            have: src.len(),
        });
    }
    Ok((offset, read_vec(src, offset, len, "compressed cluster", stats)?))
}

/// Inflates the batched compressed clusters (on every core) and writes them out.
fn flush_batch<R: ReadAt + ?Sized>(
    batch: &mut Batch,
    src: &R,
    header: &Header,
    out: &mut dyn ImageSink,
    stats: &mut ReadStats,
) -> Result<(), ImageError> {
    let clusters = Clusters {
        compression: header.compression,
        cluster_size: header.cluster_size(),
        read: &mut |entry| read_compressed(src, header, entry, stats),
    };
    batch.flush(clusters, out)
}

/// Hands the stored ranges of the clusters ahead to the source to read in the background, a
/// window of [`PREFETCH_WINDOW`] bytes ahead of the copy, so that reads overlap. Only a hint:
/// ranges are checked when they are actually read.
#[derive(Default)]
struct Prefetch {
    /// Coalesced stored ranges of the current L2 table's clusters, in table order.
    ranges: Vec<(u64, u64)>,
    next: usize,
    within: u64,
    advised: u64,
    consumed: u64,
}

impl Prefetch {
    fn plan(&mut self, header: &Header, l2: &[u8], clusters: u64) {
        self.ranges.clear();
        (self.next, self.within, self.advised, self.consumed) = (0, 0, 0, 0);
        for i in 0..clusters {
            let at = (i * header.l2_entry_bytes()) as usize;
            let Some(entry) = l2.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes) else {
                break;
            };
            if let Some((offset, len)) = stored_range(header, entry) {
                match self.ranges.last_mut() {
                    Some((o, l)) if *o + *l == offset => *l += len,
                    _ => self.ranges.push((offset, len)),
                }
            }
        }
    }

    /// The copy reached the cluster with this L2 entry: keep the window ahead of it.
    fn advance<R: ReadAt + ?Sized>(&mut self, src: &R, header: &Header, entry: u64) {
        if let Some((_, len)) = stored_range(header, entry) {
            self.consumed += len;
        }
        while self.advised < self.consumed + PREFETCH_WINDOW && self.next < self.ranges.len() {
            let (offset, len) = self.ranges[self.next];
            let piece = (len - self.within).min(PREFETCH_STEP);
            src.prefetch(offset + self.within, piece);
            self.advised += piece;
            self.within += piece;
            if self.within >= len {
                (self.next, self.within) = (self.next + 1, 0);
            }
        }
    }
}

fn check_range(offset: u64, len: u64, file_len: u64, what: &str) -> Result<(), ImageError> {
    let end =
        offset.checked_add(len).ok_or_else(|| ImageError::Corrupt(format!("{what} offset {offset} overflows")))?;
    if end > file_len {
        // A truncated file is the usual cause: say so rather than "corrupt".
        return Err(ImageError::Truncated { what: format!("{what} at offset {offset}"), need: end, have: file_len });
    }
    Ok(())
}

fn read_vec<R: ReadAt + ?Sized>(
    src: &R,
    offset: u64,
    len: u64,
    what: &str,
    stats: &mut ReadStats,
) -> Result<Vec<u8>, ImageError> {
    check_range(offset, len, src.len(), what)?;
    let mut buf = vec![0u8; len as usize];
    src.read_exact_at(&mut buf, offset).map_err(|e| ImageError::io(&format!("reading the {what}"), e))?;
    stats.bytes_read += len;
    Ok(buf)
}
