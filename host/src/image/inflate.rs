//! Compressed qcow2 clusters, inflated on every core.
//!
//! Consecutive compressed clusters are collected into a batch (up to 8 MiB of output). A
//! batch's compressed bytes are read in order, inflated in parallel (one share per core, on
//! scoped threads), and written out in guest order. A corrupt cluster fails the batch with the
//! cluster's host offset, as before.
#![forbid(unsafe_code)]

use std::io::Read;
use std::sync::OnceLock;

use super::qcow2::{read_vec, Compression, Header, ReadStats};
use super::{ImageError, ReadAt};
use crate::sparse::ImageSink;

/// Output bytes a batch holds at most before it is inflated and written.
const BATCH_BYTES: u64 = 8 << 20;

/// Cores to inflate on.
fn workers() -> usize {
    static WORKERS: OnceLock<usize> = OnceLock::new();
    *WORKERS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Where a compressed cluster's bytes are: its descriptor holds the host offset in the low x
/// bits and the number of additional 512-byte sectors above them. The length may run past the
/// end of the file for the last cluster; readers clip it.
pub(super) fn compressed_range(header: &Header, entry: u64) -> (u64, u64) {
    let x = 62 - (header.cluster_bits - 8);
    let offset = entry & ((1u64 << x) - 1);
    let sectors = (entry & ((1u64 << 62) - 1)) >> x;
    (offset, (sectors + 1) * 512 - (offset & 511))
}

/// Compressed clusters waiting to be inflated: (guest offset, guest length, L2 entry).
#[derive(Debug, Default)]
pub(super) struct Batch {
    items: Vec<(u64, u64, u64)>,
    out_bytes: u64,
}

impl Batch {
    pub(super) fn push(&mut self, header: &Header, guest: u64, len: u64, entry: u64) {
        self.items.push((guest, len, entry));
        self.out_bytes += header.cluster_size();
    }

    pub(super) fn is_full(&self) -> bool {
        self.out_bytes >= BATCH_BYTES
    }

    /// Reads, inflates and writes every cluster in the batch; empties it.
    pub(super) fn flush<R: ReadAt + ?Sized>(
        &mut self,
        src: &R,
        header: &Header,
        out: &mut dyn ImageSink,
        stats: &mut ReadStats,
    ) -> Result<(), ImageError> {
        if self.items.is_empty() {
            return Ok(());
        }
        let inputs = self
            .items
            .iter()
            .map(|&(_, _, entry)| read_input(src, header, entry, stats))
            .collect::<Result<Vec<_>, _>>()?;
        let mut outputs: Vec<Vec<u8>> = vec![Vec::new(); inputs.len()];
        let share = inputs.len().div_ceil(workers().min(inputs.len()));
        let inflate_share = |ins: &[(u64, Vec<u8>)], outs: &mut [Vec<u8>]| -> Result<(), ImageError> {
            for ((offset, input), output) in ins.iter().zip(outs) {
                inflate(header, *offset, input, output)?;
            }
            Ok(())
        };
        if share >= inputs.len() {
            inflate_share(&inputs, &mut outputs)?;
        } else {
            std::thread::scope(|scope| -> Result<(), ImageError> {
                let mut pairs = inputs.chunks(share).zip(outputs.chunks_mut(share));
                let (first_in, first_out) = pairs.next().expect("a non-empty batch");
                let others: Vec<_> = pairs.map(|(i, o)| scope.spawn(move || inflate_share(i, o))).collect();
                let mine = inflate_share(first_in, first_out);
                for handle in others {
                    handle.join().map_err(|_| ImageError::Corrupt("inflating a cluster panicked".into()))??;
                }
                mine
            })?;
        }
        for (&(guest, len, _), output) in self.items.iter().zip(&outputs) {
            out.write_at(guest, &output[..len as usize]).map_err(ImageError::Write)?;
        }
        self.items.clear();
        self.out_bytes = 0;
        Ok(())
    }
}

/// A compressed cluster's stored bytes, and their host offset.
fn read_input<R: ReadAt + ?Sized>(
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

/// Inflates one compressed cluster (stored at host `offset`) into `out`, one cluster long.
fn inflate(header: &Header, offset: u64, input: &[u8], out: &mut Vec<u8>) -> Result<(), ImageError> {
    let cs = header.cluster_size();
    out.clear();
    out.resize(cs as usize, 0);
    let bad = |why: String| ImageError::Corrupt(format!("compressed cluster at host offset {offset}: {why}"));
    match header.compression {
        Compression::Deflate => {
            let mut inflate = flate2::Decompress::new(false);
            inflate.decompress(input, out, flate2::FlushDecompress::Finish).map_err(|e| bad(e.to_string()))?;
            if inflate.total_out() != cs {
                return Err(bad(format!("inflates to {} bytes, not {cs}", inflate.total_out())));
            }
        }
        Compression::Zstd => {
            // libzstd; frames one after another, and the sector padding after the last one is
            // never parsed: reading stops once the cluster is full.
            let mut decoder = zstd::stream::read::Decoder::with_buffer(input).map_err(|e| bad(e.to_string()))?;
            let filled = read_up_to(&mut decoder, out).map_err(|e| bad(e.to_string()))?;
            if filled != out.len() {
                return Err(bad(format!("decompresses to {filled} bytes, not {cs}")));
            }
        }
    }
    Ok(())
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
