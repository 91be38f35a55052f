//! Recording the daemon's own workload as a trace: every create-from-image request, image
//! register/update/delete and eviction, one CSV line each, in `<state>/trace/`.
//!
//! Bounded and rotating: when `trace.csv` reaches half the limit it becomes `trace.1.csv`
//! (replacing the older one), so the two never hold more than the limit. Lines are buffered and
//! written at least every second; a crash loses at most that second. A write that fails is
//! logged once and the recording carries on: a request never fails because of its trace.
//! Versions are numbered per image, 0, 1, 2..., in the order the daemon sees its `updated_at`
//! values (so they restart at 0 when the daemon restarts).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::shadow::Shadows;
use super::trace::{self, Op, Record};
use crate::catalog::CacheOutcome;

const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The workload recorder of one daemon.
#[derive(Debug)]
pub struct Recorder {
    dir: PathBuf,
    max_bytes: u64,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    file: BufWriter<File>,
    written: u64,
    last_flush: Instant,
    failed: bool,
}

fn open_current(dir: &Path) -> io::Result<(BufWriter<File>, u64)> {
    let path = dir.join("trace.csv");
    let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
    let mut written = file.metadata()?.len();
    if written == 0 {
        writeln!(file, "{}", trace::HEADER)?;
        written = trace::HEADER.len() as u64 + 1;
    }
    Ok((BufWriter::new(file), written))
}

impl Recorder {
    /// Opens (or continues) the trace in `dir`, keeping at most `max_bytes` on disk.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Recorder> {
        fs::create_dir_all(dir)?;
        let (file, written) = open_current(dir)?;
        let inner = Inner { file, written, last_flush: Instant::now(), failed: false };
        Ok(Recorder { dir: dir.to_path_buf(), max_bytes: max_bytes.max(4096), inner: Mutex::new(inner) })
    }

    /// Appends one record.
    pub fn write_record(&self, record: &Record) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut line = Vec::with_capacity(96);
        let _ = record.write_csv(&mut line);
        let result = self.write(&mut inner, &line);
        if let Err(e) = result {
            if !inner.failed {
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not write the workload trace; recording goes on, lines may be missing");
            }
            inner.failed = true;
        }
    }

    fn write(&self, inner: &mut Inner, line: &[u8]) -> io::Result<()> {
        if inner.written + line.len() as u64 > self.max_bytes / 2 {
            inner.file.flush()?;
            fs::rename(self.dir.join("trace.csv"), self.dir.join("trace.1.csv"))?;
            let (file, written) = open_current(&self.dir)?;
            inner.file = file;
            inner.written = written;
        }
        inner.file.write_all(line)?;
        inner.written += line.len() as u64;
        if inner.last_flush.elapsed() >= FLUSH_EVERY {
            inner.file.flush()?;
            inner.last_flush = Instant::now();
        }
        Ok(())
    }

    /// Everything recorded and still kept, oldest first.
    pub fn export(&self) -> io::Result<Vec<Record>> {
        let inner = &mut *self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.file.flush()?;
        let mut records = Vec::new();
        for name in ["trace.1.csv", "trace.csv"] {
            match File::open(self.dir.join(name)) {
                Ok(file) => records.extend(
                    trace::read(BufReader::new(file)).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
                ),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(records)
    }
}

/// One image's version numbers by `updated_at`.
type Versions = HashMap<String, u32>;

/// Where the cache service reports its workload: the trace on disk (when recorded) and the
/// shadow policies (when attached). Versions are numbered here, once for both.
#[derive(Debug, Default)]
pub struct Workload {
    recorder: Option<Recorder>,
    shadows: Shadows,
    /// Per image: the version number of each `updated_at` seen, and the next number.
    versions: Mutex<HashMap<String, (Versions, u32)>>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Workload {
    pub fn new(recorder: Option<Recorder>) -> Workload {
        Workload { recorder, ..Workload::default() }
    }

    pub fn recorder(&self) -> Option<&Recorder> {
        self.recorder.as_ref()
    }

    pub fn shadows(&self) -> &Shadows {
        &self.shadows
    }

    /// The version number of `image`'s contents `updated_at` (numbering it when new).
    pub fn version(&self, image: &str, updated_at: &str) -> u32 {
        let mut versions = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        let (seen, next) = versions.entry(image.to_string()).or_default();
        match seen.get(updated_at) {
            // An eviction of an older copy keeps the version it had.
            Some(&version) => version,
            None => {
                if seen.len() >= 1024 {
                    seen.clear();
                }
                seen.insert(updated_at.to_string(), *next);
                *next += 1;
                *next - 1
            }
        }
    }

    fn make(&self, op: Op, image: &str, updated_at: &str, size_bytes: u64) -> Record {
        let version = self.version(image, updated_at);
        if op == Op::Delete {
            self.versions.lock().unwrap_or_else(|p| p.into_inner()).remove(image);
        }
        Record { time_ms: now_ms(), op, image: image.to_string(), version, size_bytes }
    }

    /// Records an operation: into the trace; and, except requests (which shadows learn with
    /// their outcome, from [`Workload::request_done`]), to the shadows.
    pub fn record(&self, op: Op, image: &str, updated_at: &str, size_bytes: u64) {
        if self.recorder.is_none() && self.shadows.is_empty() {
            return;
        }
        let record = self.make(op, image, updated_at, size_bytes);
        if let Some(recorder) = &self.recorder {
            recorder.write_record(&record);
        }
        if op != Op::Request {
            self.shadows.feed(&record, None);
        }
    }

    /// A request finished with `outcome`: the shadows replay it.
    pub fn request_done(&self, image: &str, updated_at: &str, size_bytes: u64, outcome: Option<CacheOutcome>) {
        if self.shadows.is_empty() {
            return;
        }
        let record = self.make(Op::Request, image, updated_at, size_bytes);
        self.shadows.feed(&record, outcome);
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = inner.file.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_follow_updated_at_and_the_files_stay_under_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let workload = Workload::new(Some(Recorder::open(dir.path(), 16 * 1024).unwrap()));
        workload.record(Op::Register, "a", "t0", 100);
        workload.record(Op::Request, "a", "t0", 100);
        workload.record(Op::Update, "a", "t1", 200);
        workload.record(Op::Request, "a", "t1", 200);
        workload.record(Op::Evict, "a", "t0", 100);
        let rec = workload.recorder().unwrap();
        let got: Vec<(Op, u32)> = rec.export().unwrap().iter().map(|r| (r.op, r.version)).collect();
        assert_eq!(got, [(Op::Register, 0), (Op::Request, 0), (Op::Update, 1), (Op::Request, 1), (Op::Evict, 0)]);
        for i in 0..2000 {
            workload.record(Op::Request, &format!("image-{i}"), "t", 1 << 30);
        }
        let on_disk: u64 =
            ["trace.csv", "trace.1.csv"].iter().map(|n| fs::metadata(dir.path().join(n)).map_or(0, |m| m.len())).sum();
        assert!(on_disk <= 16 * 1024, "{on_disk} bytes kept");
        let kept = rec.export().unwrap();
        assert!(kept.len() > 100 && kept.last().unwrap().image == "image-1999", "the newest lines are kept");
        drop(workload);
        let again = Recorder::open(dir.path(), 16 * 1024).unwrap();
        assert_eq!(again.export().unwrap().len(), kept.len(), "a restart continues the trace");
    }
}
