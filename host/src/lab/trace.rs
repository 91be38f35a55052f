//! The workload trace: what an image cache saw, as one CSV line per operation.
//!
//! Columns (with a header line): `time_ms,op,image,version,size_bytes`
//! - `time_ms`: milliseconds since the trace began (or since the Unix epoch for a recorded one);
//! - `op`: `request` (a volume created from the image), `register`, `update` (the image changed:
//!   its `version` grows and cached copies of older versions are stale), `delete`, `evict`;
//! - `image`: the image id; `version`: which contents (0 for the first);
//! - `size_bytes`: the image's virtual size.
//!
//! Only ids and sizes: no tokens, URLs or names.
#![forbid(unsafe_code)]

use std::fmt;
use std::io::{BufRead, Write};
use std::str::FromStr;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Request,
    Register,
    Update,
    Delete,
    Evict,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Request => "request",
            Op::Register => "register",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Evict => "evict",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Op {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Op::Request, Op::Register, Op::Update, Op::Delete, Op::Evict]
            .into_iter()
            .find(|op| op.as_str() == s)
            .ok_or_else(|| format!("unknown op {s:?}: expected request, register, update, delete or evict"))
    }
}

/// One line of a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub time_ms: u64,
    pub op: Op,
    pub image: String,
    pub version: u32,
    pub size_bytes: u64,
}

pub const HEADER: &str = "time_ms,op,image,version,size_bytes";

impl Record {
    pub fn write_csv(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(out, "{},{},{},{},{}", self.time_ms, self.op, self.image, self.version, self.size_bytes)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "time_ms": self.time_ms, "op": self.op.as_str(), "image": self.image,
            "version": self.version, "size_bytes": self.size_bytes,
        })
    }
}

/// A trace line that cannot be read, with its line number.
#[derive(Debug, thiserror::Error)]
#[error("trace line {line}: {why}")]
pub struct TraceError {
    pub line: usize,
    pub why: String,
}

/// Reads a CSV trace (header optional).
pub fn read(input: impl BufRead) -> Result<Vec<Record>, TraceError> {
    let mut records = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(|e| TraceError { line: line_no, why: e.to_string() })?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (i == 0 && line.starts_with("time_ms")) {
            continue;
        }
        records.push(parse(line).map_err(|why| TraceError { line: line_no, why })?);
    }
    Ok(records)
}

/// Reads a trace the daemon wrote, skipping lines it cannot parse (a line cut short by a
/// failed write); answers the records and how many lines were skipped.
pub fn read_skipping(input: impl BufRead) -> std::io::Result<(Vec<Record>, usize)> {
    let mut records = Vec::new();
    let mut skipped = 0;
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (i == 0 && line.starts_with("time_ms")) {
            continue;
        }
        match parse(line) {
            Ok(r) => records.push(r),
            Err(_) => skipped += 1,
        }
    }
    Ok((records, skipped))
}

fn parse(line: &str) -> Result<Record, String> {
    let fields: Vec<&str> = line.split(',').collect();
    let [time, op, image, version, size] = fields.as_slice() else {
        return Err(format!("expected 5 fields ({HEADER}), got {}", fields.len()));
    };
    let number = |what: &str, s: &str| s.trim().parse::<u64>().map_err(|_| format!("{what} {s:?} is not a number"));
    if image.is_empty() {
        return Err("empty image id".into());
    }
    Ok(Record {
        time_ms: number("time_ms", time)?,
        op: op.trim().parse()?,
        image: image.trim().to_string(),
        version: u32::try_from(number("version", version)?).map_err(|_| "version too large".to_string())?,
        size_bytes: number("size_bytes", size)?,
    })
}

/// Writes requests only as `time,obj_id,obj_size` for libCacheSim's CSV reader (numeric object
/// ids: one per image version), e.g. `cachesim trace.csv csv lru 1gb -t "time-col=1,
/// obj-id-col=2, obj-size-col=3, delimiter=,, has-header=true"`.
pub fn write_libcachesim(records: &[Record], out: &mut impl Write) -> std::io::Result<()> {
    use std::collections::HashMap;
    let mut ids: HashMap<(&str, u32), u64> = HashMap::new();
    writeln!(out, "time,obj_id,obj_size")?;
    for r in records.iter().filter(|r| r.op == Op::Request) {
        let next = ids.len() as u64 + 1;
        let id = *ids.entry((r.image.as_str(), r.version)).or_insert(next);
        writeln!(out, "{},{id},{}", r.time_ms, r.size_bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_reads_back_what_was_written_and_bad_lines_are_named() {
        let records = vec![
            Record { time_ms: 0, op: Op::Register, image: "a".into(), version: 0, size_bytes: 1 << 30 },
            Record { time_ms: 5, op: Op::Request, image: "a".into(), version: 0, size_bytes: 1 << 30 },
            Record { time_ms: 9, op: Op::Update, image: "a".into(), version: 1, size_bytes: 2 << 30 },
        ];
        let mut out = format!("{HEADER}\n").into_bytes();
        for r in &records {
            r.write_csv(&mut out).unwrap();
        }
        assert_eq!(read(out.as_slice()).unwrap(), records);
        let err = read(&b"time_ms,op,image,version,size_bytes\n1,request,a,0\n"[..]).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(read(&b"1,fetch,a,0,5\n"[..]).unwrap_err().why.contains("unknown op"));
    }

    #[test]
    fn libcachesim_output_numbers_image_versions() {
        let r = |t, image: &str, version| Record {
            time_ms: t,
            op: Op::Request,
            image: image.into(),
            version,
            size_bytes: 10,
        };
        let mut out = Vec::new();
        write_libcachesim(&[r(1, "a", 0), r(2, "b", 0), r(3, "a", 1), r(4, "a", 0)], &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "time,obj_id,obj_size\n1,1,10\n2,2,10\n3,3,10\n4,1,10\n");
    }
}
