//! Recording the daemon's own workload as a trace: every create-from-image request, image
//! register/update/delete and eviction, one CSV line each, in `<state>/trace/`.
//!
//! Bounded and rotating: when `trace.csv` reaches half the limit it becomes `trace.1.csv`
//! (replacing the older one), so the two never hold more than the limit. Each line is appended
//! with one write as it happens (no buffer to lose in a crash; no fsync either: a power cut may
//! lose the last lines). A write that fails is logged once and the recording carries on: a
//! request never fails because of its trace, and a line cut short by a full disk is skipped
//! when the trace is read back.
//! Versions are numbered per image, 0, 1, 2..., in the order the daemon sees its `updated_at`
//! values (so they restart at 0 when the daemon restarts).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::shadow::Shadows;
use super::trace::{self, Op, Record};
use crate::catalog::CacheOutcome;

/// The workload recorder of one daemon.
#[derive(Debug)]
pub struct Recorder {
    dir: PathBuf,
    max_bytes: u64,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    file: File,
    written: u64,
    failed: bool,
    /// The last write may have stopped mid-line: the next line starts on a new one.
    cut: bool,
}

fn open_current(dir: &Path) -> io::Result<(File, u64)> {
    let path = dir.join("trace.csv");
    let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
    let mut written = file.metadata()?.len();
    if written == 0 {
        writeln!(file, "{}", trace::HEADER)?;
        written = trace::HEADER.len() as u64 + 1;
    } else {
        // A line a crash cut short stays one bad line instead of swallowing the next record.
        let mut last = [0u8; 1];
        std::os::unix::fs::FileExt::read_exact_at(&File::open(&path)?, &mut last, written - 1)?;
        if last[0] != b'\n' {
            file.write_all(b"\n")?;
            written += 1;
        }
    }
    Ok((file, written))
}

impl Recorder {
    /// Opens (or continues) the trace in `dir`, keeping at most `max_bytes` on disk.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Recorder> {
        fs::create_dir_all(dir)?;
        let (file, written) = open_current(dir)?;
        let inner = Inner { file, written, failed: false, cut: false };
        Ok(Recorder { dir: dir.to_path_buf(), max_bytes: max_bytes.max(4096), inner: Mutex::new(inner) })
    }

    /// Appends one record.
    pub fn write_record(&self, record: &Record) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut line = Vec::with_capacity(96);
        let _ = record.write_csv(&mut line);
        let result = self.write(&mut inner, &line);
        inner.cut = result.is_err();
        if let Err(e) = result {
            if !inner.failed {
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not write the workload trace; recording goes on, lines may be missing");
            }
            inner.failed = true;
        }
    }

    fn write(&self, inner: &mut Inner, line: &[u8]) -> io::Result<()> {
        if inner.written + line.len() as u64 > self.max_bytes / 2 {
            fs::rename(self.dir.join("trace.csv"), self.dir.join("trace.1.csv"))?;
            let (file, written) = open_current(&self.dir)?;
            inner.file = file;
            inner.written = written;
        }
        if inner.cut {
            inner.file.write_all(b"\n")?;
            inner.written += 1;
        }
        // Counted before the write: a partial write must not leave the file over its limit.
        inner.written += line.len() as u64;
        inner.file.write_all(line)
    }

    /// Everything recorded and still kept, oldest first.
    pub fn export(&self) -> io::Result<Vec<Record>> {
        // Held so that no rotation happens while the files are read.
        let _inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut records = Vec::new();
        for name in ["trace.1.csv", "trace.csv"] {
            match File::open(self.dir.join(name)) {
                Ok(file) => {
                    let (read, skipped) = trace::read_skipping(BufReader::new(file))?;
                    if skipped > 0 {
                        tracing::warn!(
                            file = name,
                            skipped,
                            "unreadable trace lines skipped (cut short by a failed write)"
                        );
                    }
                    records.extend(read);
                }
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
        // A line cut short (a full disk) is skipped, not fatal to the export.
        fs::OpenOptions::new().append(true).open(dir.path().join("trace.csv")).unwrap().write_all(b"17,requ").unwrap();
        drop(workload);
        let again = Workload::new(Some(Recorder::open(dir.path(), 16 * 1024).unwrap()));
        again.record(Op::Request, "z", "t", 1);
        let records = again.recorder().unwrap().export().unwrap();
        assert_eq!(records.len(), kept.len() + 1, "a restart continues the trace, and the cut line stays cut");
        assert_eq!(records.last().unwrap().image, "z");
    }
}
