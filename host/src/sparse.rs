//! Thin I/O: find where a file's data is without reading its holes, and write only data.
//!
//! Reading: [`DataExtents`] walks a file's data with SEEK_DATA/SEEK_HOLE; where the file system
//! or file kind cannot answer, the whole file is one extent and is read in full.
//!
//! Writing: a [`ThinWriter`] receives the image's bytes in offset order. Each aligned block of
//! `min_sparse` bytes (4 KiB by default, like `qemu-img convert -S 4k`) that is all zeros is not
//! written: on a fresh sparse target it is simply skipped, on a target that may hold old data it
//! is punched out. Data is gathered into large writes. With [`WriteMode::Dense`] every byte is
//! written, zeros included; the bytes read back are identical either way.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::sys;

/// Default zero-detection granularity.
pub const DEFAULT_MIN_SPARSE: u64 = 4096;
/// Largest single write.
const WRITE_BATCH: usize = 8 << 20;
/// Runs of data at least this long are written from the caller's buffer without gathering.
const DIRECT_WRITE: usize = 1 << 20;

/// A run of data: `len` bytes at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
}

/// Data extents of a file, in order, up to `size`.
#[derive(Debug)]
pub struct DataExtents<'f> {
    file: &'f File,
    pos: u64,
    size: u64,
    /// SEEK_DATA is unavailable: everything is one extent.
    whole: bool,
}

impl<'f> DataExtents<'f> {
    pub fn new(file: &'f File, size: u64) -> Self {
        DataExtents { file, pos: 0, size, whole: false }
    }

    /// Whether the file system answered SEEK_DATA (false after a fallback to reading all).
    pub fn hole_aware(&self) -> bool {
        !self.whole
    }

    fn next_extent(&mut self) -> io::Result<Option<Extent>> {
        if self.pos >= self.size {
            return Ok(None);
        }
        if self.whole {
            let e = Extent { offset: self.pos, len: self.size - self.pos };
            self.pos = self.size;
            return Ok(Some(e));
        }
        let start = match sys::next_data(self.file, self.pos) {
            Ok(Some(start)) if start < self.size => start,
            Ok(_) => {
                self.pos = self.size;
                return Ok(None);
            }
            Err(e) if sys::is_unsupported(&e) => {
                self.whole = true;
                return self.next_extent();
            }
            Err(e) => return Err(e),
        };
        let end = sys::next_hole(self.file, start)?.min(self.size);
        self.pos = end;
        Ok(Some(Extent { offset: start, len: end - start }))
    }
}

impl Iterator for DataExtents<'_> {
    type Item = io::Result<Extent>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_extent().transpose()
    }
}

/// Where a [`ThinWriter`] writes: a random-access byte store such as a file or an RBD image.
/// Methods take `&self` so one handle can be shared; an implementation that queues writes
/// (asynchronous I/O) must make every other method see them (drain first).
pub trait BlockDevice: Send + Sync + std::fmt::Debug {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Deallocates `len` bytes at `offset` (they read back as zeros) without changing the
    /// size. An error for which [`sys::is_unsupported`] holds makes the caller write zeros.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Sets the size: new space reads as zeros.
    fn set_len(&self, size: u64) -> io::Result<()>;
    /// Makes everything written so far durable.
    fn sync_all(&self) -> io::Result<()>;
}

impl BlockDevice for File {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        sys::punch_hole(self, offset, len)
    }
    fn set_len(&self, size: u64) -> io::Result<()> {
        File::set_len(self, size)
    }
    fn sync_all(&self) -> io::Result<()> {
        File::sync_all(self)
    }
}

/// Whether zeros are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WriteMode {
    /// Zero blocks and holes are not written (`*_thin_provisioning = true`, the default).
    #[default]
    Thin,
    /// Every byte is written.
    Dense,
}

/// What the target held before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A new, empty (sparse) file: skipping a block leaves zeros.
    Fresh,
    /// A file that may hold old data: zero blocks must be punched out.
    MayHoldData,
}

/// Counters of one thin write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WriteStats {
    /// Bytes written to the target.
    pub data_bytes_written: u64,
    /// Bytes received that were zeros and were not written.
    pub zero_bytes_skipped: u64,
    /// Bytes the source reported as holes, never read and never written.
    pub hole_bytes_skipped: u64,
}

/// Writes an image's bytes thin; see the module docs.
#[derive(Debug)]
pub struct ThinWriter<'f> {
    file: &'f dyn BlockDevice,
    mode: WriteMode,
    target: Target,
    block: u64,
    /// Pending contiguous data and where it goes.
    pending: Vec<u8>,
    pending_at: u64,
    /// Pending zero range to punch (only for `Target::MayHoldData`).
    punch: Option<(u64, u64)>,
    /// A partial block carried over between calls, so zero detection stays block-aligned.
    carry: Vec<u8>,
    carry_at: u64,
    next: u64,
    stats: WriteStats,
}

fn is_zero(block: &[u8]) -> bool {
    let mut words = block.chunks_exact(16);
    words.all(|w| u128::from_ne_bytes(w.try_into().unwrap_or([1; 16])) == 0)
        && words.remainder().iter().all(|&b| b == 0)
}

impl<'f> ThinWriter<'f> {
    /// `min_sparse` is the zero-detection block size (a power of two, at least 512).
    pub fn new(file: &'f dyn BlockDevice, mode: WriteMode, target: Target, min_sparse: u64) -> Self {
        ThinWriter {
            file,
            mode,
            target,
            block: min_sparse.max(512),
            pending: Vec::with_capacity(WRITE_BATCH),
            pending_at: 0,
            punch: None,
            carry: Vec::new(),
            carry_at: 0,
            next: 0,
            stats: WriteStats::default(),
        }
    }

    pub fn stats(&self) -> WriteStats {
        self.stats
    }

    /// Takes `data`, the image's bytes at `offset`. Offsets must not go backwards; a gap since
    /// the last call is treated as a hole.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        if offset > self.next {
            self.hole(self.next, offset - self.next)?;
        }
        let block = self.block as usize;
        let (mut offset, mut data) = (offset, data);
        while !data.is_empty() {
            if self.carry.is_empty() && offset % self.block == 0 && data.len() >= block {
                // Fast path: whole aligned blocks straight from the caller's buffer; runs of
                // data blocks go out as one write each.
                let whole = data.len() / block * block;
                let region = &data[..whole];
                let mut run_start = None;
                for (i, chunk) in region.chunks_exact(block).enumerate() {
                    if self.mode == WriteMode::Thin && is_zero(chunk) {
                        if let Some(start) = run_start.take() {
                            self.data_run(offset + start as u64, &region[start..i * block])?;
                        }
                        self.zero_block(offset + (i * block) as u64)?;
                    } else if run_start.is_none() {
                        run_start = Some(i * block);
                    }
                }
                if let Some(start) = run_start {
                    self.data_run(offset + start as u64, &region[start..])?;
                }
                offset += whole as u64;
                data = &data[whole..];
                continue;
            }
            // A partial block: gather it until it reaches the next block boundary.
            if self.carry.is_empty() {
                self.carry_at = offset;
            }
            let room = (self.block - offset % self.block) as usize;
            let take = room.min(data.len());
            self.carry.extend_from_slice(&data[..take]);
            offset += take as u64;
            data = &data[take..];
            if offset % self.block == 0 {
                self.flush_carry()?;
            }
        }
        self.next = offset;
        Ok(())
    }

    /// The source has a hole of `len` bytes at `offset`: nothing was read; zeros are implied.
    pub fn hole(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let (offset, len) = match offset.checked_sub(self.next) {
            Some(gap) if gap > 0 => (self.next, len + gap),
            _ => (offset, len),
        };
        if len == 0 {
            return Ok(());
        }
        self.flush_carry()?;
        self.flush_pending()?;
        self.stats.hole_bytes_skipped += len;
        match (self.mode, self.target) {
            (WriteMode::Dense, _) => {
                write_zeros(self.file, offset, len)?;
                self.stats.data_bytes_written += len;
            }
            (WriteMode::Thin, Target::MayHoldData) => self.add_punch(offset, len)?,
            (WriteMode::Thin, Target::Fresh) => {}
        }
        self.next = offset + len;
        Ok(())
    }

    fn flush_carry(&mut self) -> io::Result<()> {
        if self.carry.is_empty() {
            return Ok(());
        }
        let carry = std::mem::take(&mut self.carry);
        self.block_at(self.carry_at, &carry)?;
        self.carry = carry;
        self.carry.clear();
        Ok(())
    }

    /// One block (a carried-over partial one, or the last one of the image).
    fn block_at(&mut self, offset: u64, block: &[u8]) -> io::Result<()> {
        if self.mode == WriteMode::Thin && is_zero(block) {
            self.zero_block_len(offset, block.len() as u64)
        } else {
            self.data_run(offset, block)
        }
    }

    fn zero_block(&mut self, offset: u64) -> io::Result<()> {
        self.zero_block_len(offset, self.block)
    }

    fn zero_block_len(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.flush_pending()?;
        self.stats.zero_bytes_skipped += len;
        if self.target == Target::MayHoldData {
            self.add_punch(offset, len)?;
        }
        Ok(())
    }

    /// Data blocks at `offset`. A large run is written straight from the caller's buffer (no
    /// copy); small ones are gathered into one larger write.
    fn data_run(&mut self, offset: u64, run: &[u8]) -> io::Result<()> {
        self.flush_punch()?;
        if !self.pending.is_empty() && self.pending_at + self.pending.len() as u64 != offset {
            self.flush_pending()?;
        }
        if run.len() >= DIRECT_WRITE {
            self.flush_pending()?;
            self.file.write_all_at(run, offset)?;
            self.stats.data_bytes_written += run.len() as u64;
            return Ok(());
        }
        if self.pending.is_empty() {
            self.pending_at = offset;
        }
        self.pending.extend_from_slice(run);
        if self.pending.len() >= WRITE_BATCH {
            self.flush_pending()?;
        }
        Ok(())
    }

    fn flush_pending(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.file.write_all_at(&self.pending, self.pending_at)?;
            self.stats.data_bytes_written += self.pending.len() as u64;
            self.pending.clear();
        }
        Ok(())
    }

    fn add_punch(&mut self, offset: u64, len: u64) -> io::Result<()> {
        match &mut self.punch {
            Some((start, plen)) if *start + *plen == offset => *plen += len,
            _ => {
                self.flush_punch()?;
                self.punch = Some((offset, len));
            }
        }
        Ok(())
    }

    fn flush_punch(&mut self) -> io::Result<()> {
        if let Some((offset, len)) = self.punch.take() {
            match self.file.punch_hole(offset, len) {
                Ok(()) => {}
                // No hole punching here: write the zeros so the bytes are still right.
                Err(e) if sys::is_unsupported(&e) => write_zeros(self.file, offset, len)?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes what is pending and sets the file's size to `size`; what the source never
    /// reached counts as a hole.
    pub fn finish(self, size: u64) -> io::Result<WriteStats> {
        self.finish_at(size, size)
    }

    /// [`finish`](Self::finish), leaving the target `len` bytes long (at least `size`): the
    /// bytes past the image read as zeros, and a target created at that length is not resized.
    pub fn finish_at(mut self, size: u64, len: u64) -> io::Result<WriteStats> {
        self.flush_carry()?;
        if self.next < size {
            self.hole(self.next, size - self.next)?;
        }
        self.flush_pending()?;
        self.flush_punch()?;
        self.file.set_len(len.max(size))?;
        Ok(self.stats)
    }
}

fn write_zeros(file: &dyn BlockDevice, offset: u64, len: u64) -> io::Result<()> {
    let zeros = vec![0u8; WRITE_BATCH.min(len as usize)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64);
        file.write_all_at(&zeros[..n as usize], offset + done)?;
        done += n;
    }
    Ok(())
}

/// Where a reader puts an image's bytes, in offset order: a [`ThinWriter`] directly, or the
/// channel of a [`pipelined`] copy.
pub trait ImageSink {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    fn hole(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// Takes `len` bytes at `offset` that `fill` produces into a buffer the sink provides (so
    /// a reader can read straight into it: one copy fewer than `write_at`).
    fn write_with(
        &mut self,
        offset: u64,
        len: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut buf = vec![0u8; len];
        fill(&mut buf)?;
        self.write_at(offset, &buf)
    }
}

impl ImageSink for ThinWriter<'_> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        ThinWriter::write_at(self, offset, data)
    }
    fn hole(&mut self, offset: u64, len: u64) -> io::Result<()> {
        ThinWriter::hole(self, offset, len)
    }
}

/// Chunks in flight between the reading and the writing thread (8 MiB each at most).
const PIPELINE_DEPTH: usize = 4;

enum Chunk {
    /// Offset, buffer, and how many of its bytes are data.
    Data(u64, Vec<u8>, usize),
    Hole(u64, u64),
}

/// The reading side of a [`pipelined`] copy. Contiguous data is gathered into chunks of up to
/// 8 MiB before it crosses to the writer (a qcow2 image arrives a 64 KiB cluster at a time;
/// a hand-off per cluster would cost more than the copy), reusing the writer's buffers.
#[derive(Debug)]
pub struct ChannelSink {
    chunks: std::sync::mpsc::SyncSender<Chunk>,
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    /// The first `used` bytes of `pending` are data. The buffer keeps its length between
    /// uses, so that readers fill it in place without zeroing it first.
    pending: Vec<u8>,
    used: usize,
    pending_at: u64,
    /// A pending run of holes (never at the same time as pending data). A qcow2 image reports
    /// one hole per unallocated cluster: sent one by one, the hand-offs cost more than the copy.
    hole: Option<(u64, u64)>,
}

impl ChannelSink {
    /// Sends what is pending (data or a hole run).
    fn flush(&mut self) -> io::Result<()> {
        if let Some((offset, len)) = self.hole.take() {
            return self.chunks.send(Chunk::Hole(offset, len)).map_err(|_| closed());
        }
        if self.used == 0 {
            return Ok(());
        }
        let next = self.spare.try_recv().unwrap_or_default();
        let full = std::mem::replace(&mut self.pending, next);
        let used = std::mem::take(&mut self.used);
        self.chunks.send(Chunk::Data(self.pending_at, full, used)).map_err(|_| closed())
    }

    /// Room for `len` more bytes at `offset`, after flushing what cannot be extended.
    fn room(&mut self, offset: u64, len: usize) -> io::Result<&mut [u8]> {
        if self.hole.is_some() {
            self.flush()?;
        }
        let contiguous = self.pending_at + self.used as u64 == offset;
        if self.used > 0 && (!contiguous || self.used + len > WRITE_BATCH) {
            self.flush()?;
        }
        if self.used == 0 {
            self.pending_at = offset;
        }
        let end = self.used + len;
        if self.pending.len() < end {
            self.pending.resize(end, 0);
        }
        Ok(&mut self.pending[self.used..end])
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the writing side stopped")
}

impl ImageSink for ChannelSink {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.room(offset, data.len())?.copy_from_slice(data);
        self.used += data.len();
        Ok(())
    }
    fn write_with(
        &mut self,
        offset: u64,
        len: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        fill(self.room(offset, len)?)?;
        self.used += len;
        Ok(())
    }
    fn hole(&mut self, offset: u64, len: u64) -> io::Result<()> {
        match &mut self.hole {
            Some((at, n)) if *at + *n == offset => *n += len,
            _ => {
                self.flush()?;
                self.hole = Some((offset, len));
            }
        }
        Ok(())
    }
}

/// Runs `read` on a second thread and writes what it emits through `out` on this one, so that
/// reading (and inflating) overlaps with zero detection and writing. `progress` is called
/// with the offset written up to. The first error on either side stops both; a write error
/// is returned as `write_error` makes it.
pub fn pipelined<T: Send, E: Send>(
    out: &mut ThinWriter<'_>,
    read: impl FnOnce(&mut ChannelSink) -> Result<T, E> + Send,
    write_error: impl Fn(io::Error) -> E,
    progress: &mut dyn FnMut(u64),
) -> Result<T, E> {
    std::thread::scope(|scope| {
        let (chunks, incoming) = std::sync::mpsc::sync_channel(PIPELINE_DEPTH);
        let (give_back, spare) = std::sync::mpsc::channel::<Vec<u8>>();
        let reader = scope.spawn(move || {
            let mut sink = ChannelSink { chunks, spare, pending: Vec::new(), used: 0, pending_at: 0, hole: None };
            let result = read(&mut sink);
            // Whatever was gathered still goes out; if the writer has stopped, its error wins.
            let _ = sink.flush();
            result
        });
        let mut written: io::Result<()> = Ok(());
        for chunk in incoming.iter() {
            written = match chunk {
                Chunk::Data(offset, buf, used) => {
                    let r = out.write_at(offset, &buf[..used]);
                    progress(offset + used as u64);
                    let _ = give_back.send(buf);
                    r
                }
                Chunk::Hole(offset, len) => {
                    let r = out.hole(offset, len);
                    progress(offset + len);
                    r
                }
            };
            if written.is_err() {
                break;
            }
        }
        // Dropping the receiver makes the reader's next send fail, so it stops.
        drop(incoming);
        let read = reader.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        written.map_err(write_error)?;
        read
    })
}

mod counting;
pub use counting::CountingDevice;

#[cfg(test)]
mod tests;
