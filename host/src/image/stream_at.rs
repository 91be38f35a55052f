//! A qcow2 image over HTTP converted while it downloads, without a spool file.
//!
//! One thread reads the response body in order (so the checksum is computed on every byte, as
//! before) into a bounded window of memory; the converter reads positions from that window and
//! waits for those not yet downloaded. qcow2 images made by `qemu-img convert` keep their
//! tables just before the data they map, so the converter follows the download closely. A read
//! behind the window (its chunks already dropped) is fetched again with an HTTP Range request;
//! the download stream is used only when the server says `Accept-Ranges: bytes`, so that such a
//! read can always be served (otherwise the image is spooled, as before).
//!
//! The window never deadlocks: when it is full and the converter waits for bytes beyond it, the
//! oldest chunks are dropped (a later read of them becomes a Range request).
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::io::Read;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use super::raw::{read_full, stream_error};
use super::source::{agent, http_error, Checker, Ranged};
use super::{ImageError, ReadAt};

/// Bytes per chunk read from the stream.
const CHUNK: usize = 1 << 20;
/// Bytes of downloaded image kept in memory at most (beyond it, the oldest chunks go).
pub const WINDOW: u64 = 64 << 20;

#[derive(Default)]
struct State {
    /// Retained chunks, contiguous: the first starts at `base`, the last ends at `watermark`.
    chunks: VecDeque<Arc<Vec<u8>>>,
    base: u64,
    watermark: u64,
    /// Where the converter read last: chunks wholly below it may go first.
    cursor: u64,
    /// The converter waits for bytes up to here (beyond the watermark).
    want: Option<u64>,
    done: bool,
    failed: Option<String>,
    /// The converter gave up: the download stops.
    closed: bool,
    /// Bytes fetched again with Range requests.
    refetched: u64,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The image being downloaded, as positional reads.
pub struct StreamAt {
    shared: Arc<Shared>,
    len: u64,
    ranged: Ranged,
    download: Option<JoinHandle<Result<Checker, ImageError>>>,
}

impl StreamAt {
    /// Starts reading `reader` (the rest of the body, `head` already read) on a thread; the
    /// body is `len` bytes and every byte goes through `checker`.
    pub fn start(head: Vec<u8>, reader: Box<dyn Read + Send>, len: u64, checker: Checker, ranged: Ranged) -> StreamAt {
        Self::with_window(head, reader, len, checker, ranged, WINDOW)
    }

    /// [`StreamAt::start`] keeping at most `window` bytes in memory.
    pub fn with_window(
        head: Vec<u8>,
        mut reader: Box<dyn Read + Send>,
        len: u64,
        mut checker: Checker,
        ranged: Ranged,
        window: u64,
    ) -> StreamAt {
        let shared = Arc::new(Shared { state: Mutex::new(State::default()), changed: Condvar::new() });
        checker.update(&head);
        {
            let mut s = shared.lock();
            s.watermark = head.len() as u64;
            if !head.is_empty() {
                s.chunks.push_back(Arc::new(head));
            }
        }
        let inner = shared.clone();
        let download = std::thread::Builder::new()
            .name("volcache-download".into())
            .spawn(move || {
                let result = download(&inner, &mut *reader, len, &mut checker, window);
                let mut s = inner.lock();
                s.done = true;
                if let Err(e) = &result {
                    s.failed = Some(e.to_string());
                }
                inner.changed.notify_all();
                drop(s);
                result.map(|()| checker)
            })
            .expect("spawning the download thread");
        StreamAt { shared, len, ranged, download: Some(download) }
    }

    /// Waits for the download to end; the checksum's verdict, and the bytes fetched twice.
    pub fn finish(mut self) -> Result<u64, ImageError> {
        let handle = self.download.take().expect("finish once");
        // Everything was read: the rest of the body only feeds the checksum.
        self.shared.lock().cursor = u64::MAX;
        self.shared.changed.notify_all();
        let checker = handle.join().map_err(|_| ImageError::Download("the download thread panicked".into()))??;
        checker.finish()?;
        Ok(self.shared.lock().refetched)
    }

    /// Fetches `buf.len()` bytes at `offset` with a Range request.
    fn refetch(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let end = offset + buf.len() as u64 - 1;
        let mut request =
            agent(&self.ranged.limits).get(&self.ranged.url).set("Range", &format!("bytes={offset}-{end}"));
        if let Some(token) = &self.ranged.token {
            request = request.set("X-Auth-Token", token);
        }
        let response =
            request.call().map_err(|e| std::io::Error::other(http_error(&self.ranged.url, e).to_string()))?;
        if response.status() != 206 {
            return Err(std::io::Error::other(format!(
                "{}: a Range request was answered {} instead of 206",
                self.ranged.url,
                response.status()
            )));
        }
        let mut body = response.into_reader();
        let n = read_full(&mut body, buf)?;
        if n != buf.len() {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "short Range answer"));
        }
        self.shared.lock().refetched += n as u64;
        Ok(())
    }
}

impl std::fmt::Debug for StreamAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.shared.lock();
        f.debug_struct("StreamAt")
            .field("url", &self.ranged.url)
            .field("len", &self.len)
            .field("retained", &(s.base..s.watermark))
            .field("refetched", &s.refetched)
            .finish()
    }
}

impl Drop for StreamAt {
    fn drop(&mut self) {
        // A conversion that failed stops the download. It is not waited for: a stalled source
        // would hold the failed fill until its idle timeout; the thread ends by itself after
        // its current read (`closed` is checked before each chunk is kept).
        if self.download.take().is_some() {
            self.shared.lock().closed = true;
            self.shared.changed.notify_all();
        }
    }
}

fn download(
    shared: &Shared,
    reader: &mut dyn Read,
    len: u64,
    checker: &mut Checker,
    window: u64,
) -> Result<(), ImageError> {
    let mut total = shared.lock().watermark;
    loop {
        let mut chunk = vec![0u8; CHUNK];
        let n = read_full(reader, &mut chunk).map_err(|e| stream_error(e, total, Some(len)))?;
        if n == 0 {
            break;
        }
        chunk.truncate(n);
        checker.update(&chunk);
        total += n as u64;
        let mut s = shared.lock();
        // Room: drop what the converter has read past; when it waits beyond the window, drop
        // the oldest anyway; otherwise wait for it to read on.
        loop {
            if s.closed {
                return Ok(());
            }
            let retained = s.watermark - s.base;
            if retained + n as u64 <= window {
                break;
            }
            let oldest = s.chunks.front().map_or(0, |c| c.len() as u64);
            let consumed = s.base + oldest <= s.cursor;
            let starving = s.want.is_some_and(|w| w > s.watermark);
            if oldest > 0 && (consumed || starving) {
                s.chunks.pop_front();
                s.base += oldest;
                continue;
            }
            s = shared.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.chunks.push_back(Arc::new(chunk));
        s.watermark = total;
        shared.changed.notify_all();
    }
    if total != len {
        return Err(ImageError::Truncated { what: "download".into(), need: len, have: total });
    }
    Ok(())
}

impl ReadAt for StreamAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let end =
            offset.checked_add(buf.len() as u64).filter(|&e| e <= self.len).ok_or(std::io::ErrorKind::UnexpectedEof)?;
        if buf.is_empty() {
            return Ok(());
        }
        let mut s = self.shared.lock();
        loop {
            if offset < s.base {
                drop(s);
                return self.refetch(buf, offset);
            }
            if end <= s.watermark {
                copy_out(&s, buf, offset);
                s.cursor = end;
                s.want = None;
                self.shared.changed.notify_all();
                return Ok(());
            }
            if let Some(why) = &s.failed {
                return Err(std::io::Error::other(why.clone()));
            }
            if s.done {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            s.want = Some(end);
            self.shared.changed.notify_all();
            s = self.shared.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn len(&self) -> u64 {
        self.len
    }
}

/// Copies `buf.len()` retained bytes at `offset` out of the chunks.
fn copy_out(s: &State, buf: &mut [u8], offset: u64) {
    let mut at = s.base;
    let mut filled = 0;
    for chunk in &s.chunks {
        let chunk_end = at + chunk.len() as u64;
        let want = offset + filled as u64;
        if chunk_end > want && filled < buf.len() {
            let from = (want - at) as usize;
            let n = (chunk.len() - from).min(buf.len() - filled);
            buf[filled..filled + n].copy_from_slice(&chunk[from..from + n]);
            filled += n;
        }
        at = chunk_end;
        if filled == buf.len() {
            break;
        }
    }
}
