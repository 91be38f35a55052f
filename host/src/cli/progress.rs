//! Following the daemon's event stream: progress bars for writes (a warm-up, a create that
//! misses) and the end of a warm-up.
//!
//! The stream is opened **before** the request that starts the work, so no event is missed.
//! On a terminal the bar redraws in place on stderr; otherwise a line is printed at most every
//! few seconds and at the end, so logs show progress without flooding.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

/// `1.5 GiB`, `312 MiB`, `4 KiB`, `17 B`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = "B";
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    if value < 10.0 {
        format!("{value:.1} {unit}")
    } else {
        format!("{value:.0} {unit}")
    }
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: String,
    pub data: Value,
}

/// The daemon's `/v1/events`, read on a thread.
pub struct Events {
    rx: Receiver<Event>,
}

impl Events {
    /// Subscribes; events from now on arrive in order.
    pub fn open(agent: &ureq::Agent, base: &str, token: &str) -> anyhow::Result<Events> {
        let url = format!("{base}/v1/events");
        let res = agent
            .get(&url)
            .set("Authorization", &format!("Bearer {token}"))
            .call()
            .map_err(|e| anyhow::anyhow!("cannot follow the daemon's events at {url}: {e}"))?;
        let reader = BufReader::new(res.into_reader());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut kind, mut data) = (String::new(), String::new());
            for line in reader.lines() {
                let Ok(line) = line else { return };
                if let Some(k) = line.strip_prefix("event:") {
                    kind = k.trim().to_string();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                } else if line.is_empty() && !kind.is_empty() {
                    let event = Event {
                        kind: std::mem::take(&mut kind),
                        data: serde_json::from_str(&std::mem::take(&mut data)).unwrap_or(Value::Null),
                    };
                    if tx.send(event).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Events { rx })
    }

    /// The next event, or `None` after `timeout` (or when the stream ended).
    pub fn next(&self, timeout: Duration) -> Result<Event, RecvTimeoutError> {
        self.rx.recv_timeout(timeout)
    }
}

/// Draws the progress of one image's write on stderr.
pub struct Bar {
    label: String,
    terminal: bool,
    last_line: Option<Instant>,
    drawn: bool,
}

impl Bar {
    /// How often a line is printed when stderr is not a terminal.
    const LINE_EVERY: Duration = Duration::from_secs(5);

    pub fn new(label: String) -> Bar {
        Bar { label, terminal: std::io::stderr().is_terminal(), last_line: None, drawn: false }
    }

    /// Shows one `image_volume_cache.progress` payload.
    pub fn show(&mut self, progress: &Value) {
        let done = progress["done_bytes"].as_u64().unwrap_or(0);
        let total = progress["total_bytes"].as_u64().unwrap_or(0);
        let percent = progress["percent"].as_u64().unwrap_or(0);
        let rate = progress["bytes_per_second"].as_u64().unwrap_or(0);
        let last = progress["done"].as_bool().unwrap_or(false);
        let written = progress["written_bytes"].as_u64().unwrap_or(0);
        let amount = if total > 0 { format!("{} of {}", human(done), human(total)) } else { human(done) };
        let amount = format!("{amount} ({} written)", human(written));
        let text = format!("{}  {percent:>3}%  {amount}  {}/s", self.label, human(rate));
        let mut err = std::io::stderr();
        if self.terminal {
            let width = 24;
            let filled = (percent as usize * width / 100).min(width);
            let _ = write!(err, "\r\x1b[2K[{}{}] {text}", "#".repeat(filled), ".".repeat(width - filled));
            self.drawn = true;
            if last {
                let _ = writeln!(err);
                self.drawn = false;
            }
        } else if last || self.last_line.is_none_or(|t| t.elapsed() >= Self::LINE_EVERY) {
            let _ = writeln!(err, "{text}");
            self.last_line = Some(Instant::now());
        }
        let _ = err.flush();
    }

    /// Ends a bar left drawn (the work ended without a last report).
    pub fn finish(&mut self) {
        if self.drawn {
            let _ = writeln!(std::io::stderr());
            self.drawn = false;
        }
    }
}

/// Shows the progress of writes of one image while a request runs (`volume create`).
pub struct WriteWatcher {
    tx: std::sync::mpsc::Sender<bool>,
    handle: std::thread::JoinHandle<()>,
}

impl WriteWatcher {
    pub fn start(events: Events, image: String) -> WriteWatcher {
        let (tx, rx) = std::sync::mpsc::channel::<bool>();
        let handle = std::thread::spawn(move || {
            let mut bar = Bar::new(format!("writing image {image}"));
            let mut until: Option<Instant> = None;
            let mut saw_done = false;
            loop {
                if until.is_none() {
                    match rx.try_recv() {
                        Ok(true) if saw_done => break,
                        Ok(true) => until = Some(Instant::now() + Duration::from_secs(2)),
                        Ok(false) | Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
                        Err(std::sync::mpsc::TryRecvError::Empty) => {}
                    }
                }
                if until.is_some_and(|t| Instant::now() >= t) {
                    break;
                }
                match events.next(Duration::from_millis(50)) {
                    Ok(e) if e.kind == "image_volume_cache.progress" && e.data["image_id"] == image => {
                        bar.show(&e.data["progress"]);
                        saw_done = e.data["progress"]["done"] == true;
                        if saw_done && until.is_some() {
                            break;
                        }
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                    _ => {}
                }
            }
            bar.finish();
        });
        WriteWatcher { tx, handle }
    }

    /// The request ended; `written` when it wrote the image (then its last report, which may
    /// still be on the way, is waited for up to 2 s).
    pub fn end(self, written: bool) {
        let _ = self.tx.send(written);
        let _ = self.handle.join();
    }
}

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(17), "17 B");
        assert_eq!(human(4096), "4.0 KiB");
        assert_eq!(human(312 << 20), "312 MiB");
        assert_eq!(human(3 << 29), "1.5 GiB");
        assert_eq!(human(2 << 40), "2.0 TiB");
    }
}
