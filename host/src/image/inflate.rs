//! Compressed qcow2 clusters, inflated on every core.
//!
//! Consecutive compressed clusters are collected into a batch (up to 8 MiB of output). A
//! batch's compressed bytes are read in order, inflated in parallel (one share per core, on
//! scoped threads), and written out in guest order. A corrupt cluster fails the batch with the
//! cluster's host offset, as before. This module knows codecs, not qcow2: the reader hands it
//! each cluster's stored bytes through a callback.
#![forbid(unsafe_code)]

use std::io::Read;
use std::sync::OnceLock;

use super::ImageError;
use crate::sparse::ImageSink;

/// Output bytes a batch holds at most before it is inflated and written.
const BATCH_BYTES: u64 = 8 << 20;

/// Cores to inflate on.
fn workers() -> usize {
    static WORKERS: OnceLock<usize> = OnceLock::new();
    *WORKERS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// How compressed clusters are compressed (the qcow2 header's compression type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Deflate,
    Zstd,
}

/// Compressed clusters waiting to be inflated: (guest offset, guest length, the reader's handle
/// for the stored bytes, e.g. a qcow2 L2 entry).
#[derive(Debug, Default)]
pub(super) struct Batch {
    items: Vec<(u64, u64, u64)>,
    out_bytes: u64,
}

/// What a batch needs to know of the image: the codec, the cluster size, and how to read a
/// cluster's stored bytes (and their host offset, for messages) from its handle.
pub(super) struct Clusters<'a> {
    pub compression: Compression,
    pub cluster_size: u64,
    pub read: &'a mut dyn FnMut(u64) -> Result<(u64, Vec<u8>), ImageError>,
}

impl Batch {
    pub(super) fn push(&mut self, cluster_size: u64, guest: u64, len: u64, handle: u64) {
        self.items.push((guest, len, handle));
        self.out_bytes += cluster_size;
    }

    pub(super) fn is_full(&self) -> bool {
        self.out_bytes >= BATCH_BYTES
    }

    /// Reads, inflates and writes every cluster in the batch; empties it.
    pub(super) fn flush(&mut self, clusters: Clusters<'_>, out: &mut dyn ImageSink) -> Result<(), ImageError> {
        if self.items.is_empty() {
            return Ok(());
        }
        let inputs = self.items.iter().map(|&(_, _, handle)| (clusters.read)(handle)).collect::<Result<Vec<_>, _>>()?;
        let (compression, cluster_size) = (clusters.compression, clusters.cluster_size);
        let mut outputs: Vec<Vec<u8>> = vec![Vec::new(); inputs.len()];
        let share = inputs.len().div_ceil(workers().min(inputs.len()));
        let inflate_share = |ins: &[(u64, Vec<u8>)], outs: &mut [Vec<u8>]| -> Result<(), ImageError> {
            for ((offset, input), output) in ins.iter().zip(outs) {
                inflate(compression, cluster_size, *offset, input, output)?;
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

/// Inflates one compressed cluster (stored at host `offset`) into `out`, one cluster long.
fn inflate(compression: Compression, cs: u64, offset: u64, input: &[u8], out: &mut Vec<u8>) -> Result<(), ImageError> {
    out.clear();
    out.resize(cs as usize, 0);
    let bad = |why: String| ImageError::Corrupt(format!("compressed cluster at host offset {offset}: {why}"));
    match compression {
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
