//! A qcow2 image over HTTP is converted while it downloads, without a spool file, when the
//! server accepts Range requests; byte for byte what `qemu-img convert` makes of it, the
//! checksum still verified, and spooled as before when the server does not accept ranges.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::fixtures::{assert_same_bytes, cloud_like_raw, run, volcache, MIB};

/// Serves one body at any path, GET and Range, each connection on its own thread (a Range
/// request arrives while the main download is still open). Counts bytes sent.
struct RangeServer {
    addr: String,
    sent: Arc<AtomicU64>,
    ranges_answered: Arc<AtomicU64>,
}

impl RangeServer {
    fn start(body: Vec<u8>, accept_ranges: bool) -> RangeServer {
        Self::start_cut(body, accept_ranges, None)
    }

    /// Like `start`, but a whole-body GET announces the full length and stops after `cut`
    /// bytes (a server or network that fails halfway).
    fn start_cut(body: Vec<u8>, accept_ranges: bool, cut: Option<usize>) -> RangeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let body = Arc::new(body);
        let sent = Arc::new(AtomicU64::new(0));
        let ranges_answered = Arc::new(AtomicU64::new(0));
        let (counter, ranges) = (sent.clone(), ranges_answered.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (body, counter, ranges) = (body.clone(), counter.clone(), ranges.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    let _ = reader.read_line(&mut line);
                    let mut range = None;
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                            break;
                        }
                        if let Some((name, value)) = header.split_once(':') {
                            if name.eq_ignore_ascii_case("range") {
                                let spec = value.trim().trim_start_matches("bytes=");
                                let (a, b) = spec.split_once('-').unwrap();
                                range = Some((a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()));
                            }
                        }
                    }
                    let (status, part) = match range {
                        Some((a, b)) if accept_ranges => {
                            ranges.fetch_add(1, Ordering::SeqCst);
                            (206, &body[a..=b])
                        }
                        _ => (200, &body[..]),
                    };
                    let announced = part.len();
                    let part = if status == 200 { &part[..cut.unwrap_or(part.len()).min(part.len())] } else { part };
                    let accept = if accept_ranges { "Accept-Ranges: bytes\r\n" } else { "" };
                    let head = format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: {announced}\r\n{accept}Connection: close\r\n\r\n"
                    );
                    if stream.write_all(head.as_bytes()).is_ok() {
                        // In pieces, as a network delivers it.
                        for piece in part.chunks(256 << 10) {
                            if stream.write_all(piece).is_err() {
                                return;
                            }
                            counter.fetch_add(piece.len() as u64, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        RangeServer { addr, sent, ranges_answered }
    }

    fn url(&self) -> String {
        format!("http://{}/image.qcow2", self.addr)
    }
}

fn qcow2_of(raw: &Path, out: &Path, compressed: bool) {
    let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
    if compressed {
        args.push("-c");
    }
    args.extend([raw.to_str().unwrap(), out.to_str().unwrap()]);
    run("qemu-img", &args);
}

fn md5(path: &Path) -> String {
    String::from_utf8(run("md5sum", &[path.to_str().unwrap()]).stdout).unwrap()[..32].to_string()
}

#[test]
fn a_qcow2_download_is_converted_as_it_arrives_without_a_spool_file() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("image.raw");
    cloud_like_raw(&raw, 96 * MIB);
    for compressed in [false, true] {
        let qcow2 = dir.path().join(format!("image-{compressed}.qcow2"));
        qcow2_of(&raw, &qcow2, compressed);
        let body = std::fs::read(&qcow2).unwrap();
        let server = RangeServer::start(body.clone(), true);
        let out_dir = tempfile::tempdir().unwrap();
        let out = out_dir.path().join("volume.raw");
        // Watch the output's directory (where a spool file would go) while converting.
        let watching = Arc::new(AtomicBool::new(true));
        let watcher = {
            let (dir, watching) = (out_dir.path().to_path_buf(), watching.clone());
            std::thread::spawn(move || {
                let mut spooled = false;
                while watching.load(Ordering::SeqCst) {
                    spooled |= std::fs::read_dir(&dir)
                        .unwrap()
                        .flatten()
                        .any(|e| e.file_name().to_string_lossy().contains("volcache-download"));
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                spooled
            })
        };
        let res = volcache(&["convert", &server.url(), out.to_str().unwrap(), "--json", "--md5", &md5(&qcow2)]);
        watching.store(false, Ordering::SeqCst);
        assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
        assert!(!watcher.join().unwrap(), "a spool file appeared");
        let report: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
        assert_eq!(report["download"], "streamed", "{report}");
        assert_same_bytes(&out, &raw);
        // Downloaded about once: the stream, plus any Range refetch (reported as read).
        let sent = server.sent.load(Ordering::SeqCst);
        assert!(sent >= body.len() as u64 && sent < body.len() as u64 * 2, "sent {sent} for {}", body.len());
        assert_eq!(report["bytes_read"].as_u64().unwrap(), sent, "{report}");
    }
}

#[test]
fn a_streamed_download_still_fails_on_a_checksum_mismatch_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("image.raw");
    cloud_like_raw(&raw, 24 * MIB);
    let qcow2 = dir.path().join("image.qcow2");
    qcow2_of(&raw, &qcow2, false);
    let server = RangeServer::start(std::fs::read(&qcow2).unwrap(), true);
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("volume.raw");
    let res = volcache(&["convert", &server.url(), out.to_str().unwrap(), "--md5", &"0".repeat(32)]);
    assert!(!res.status.success());
    assert!(String::from_utf8_lossy(&res.stderr).contains("md5"), "{}", String::from_utf8_lossy(&res.stderr));
    assert!(std::fs::read_dir(out_dir.path()).unwrap().next().is_none(), "nothing stays");
}

#[test]
fn a_server_without_ranges_gets_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("image.raw");
    cloud_like_raw(&raw, 24 * MIB);
    let qcow2 = dir.path().join("image.qcow2");
    qcow2_of(&raw, &qcow2, false);
    let server = RangeServer::start(std::fs::read(&qcow2).unwrap(), false);
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("volume.raw");
    let res = volcache(&["convert", &server.url(), out.to_str().unwrap(), "--json"]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let report: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
    assert_eq!(report["download"], "spooled", "{report}");
    assert_same_bytes(&out, &raw);
    assert_eq!(server.ranges_answered.load(Ordering::SeqCst), 0);
}

#[test]
fn reads_behind_the_window_are_fetched_again_with_range_requests() {
    use volcache::image::source::{Checker, Expected, Ranged};
    use volcache::image::stream_at::StreamAt;
    use volcache::image::ReadAt;

    let body: Vec<u8> = (0..12 * MIB as usize).map(|i| (i * 7 + i / 4096) as u8).collect();
    let server = RangeServer::start(body.clone(), true);
    let response = ureq::get(&server.url()).call().unwrap();
    let len = body.len() as u64;
    let ranged = Ranged { url: server.url(), token: None, limits: Default::default() };
    // A window of 2 MiB: reading at 10 MiB makes the download drop what lies behind.
    let src = StreamAt::with_window(
        Vec::new(),
        Box::new(response.into_reader()),
        len,
        Checker::new(Expected::default()),
        ranged,
        2 * MIB,
    );
    let mut far = vec![0u8; 4096];
    src.read_exact_at(&mut far, 10 * MIB).unwrap();
    assert_eq!(&far[..], &body[10 * MIB as usize..10 * MIB as usize + 4096]);
    let mut behind = vec![0u8; 100_000];
    src.read_exact_at(&mut behind, 12_345).unwrap();
    assert_eq!(&behind[..], &body[12_345..112_345]);
    assert_eq!(server.ranges_answered.load(Ordering::SeqCst), 1, "the read behind was one Range request");
    let mut past = vec![0u8; 10];
    assert!(src.read_exact_at(&mut past, len - 5).is_err(), "past the end is an error");
    let refetched = src.finish().unwrap();
    assert_eq!(refetched, 100_000);
}

#[test]
fn a_streamed_download_cut_halfway_fails_with_one_line_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("image.raw");
    cloud_like_raw(&raw, 24 * MIB);
    let qcow2 = dir.path().join("image.qcow2");
    qcow2_of(&raw, &qcow2, false);
    let body = std::fs::read(&qcow2).unwrap();
    let half = body.len() / 2;
    let server = RangeServer::start_cut(body, true, Some(half));
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("volume.raw");
    let res = volcache(&["convert", &server.url(), out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&res.stderr).to_string();
    assert!(!res.status.success());
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("download") || err.contains("short") || err.contains("bytes"), "{err}");
    assert!(std::fs::read_dir(out_dir.path()).unwrap().next().is_none(), "nothing stays");
}

#[test]
fn a_failed_conversion_does_not_wait_for_a_stalled_download() {
    use volcache::image::source::{Checker, Expected, Ranged};
    use volcache::image::stream_at::StreamAt;

    // A server that answers the headers and then sends nothing, ever.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let _holder = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n");
        std::thread::sleep(std::time::Duration::from_secs(3600));
    });
    let response = ureq::get(&format!("http://{addr}/")).call().unwrap();
    let ranged = Ranged { url: format!("http://{addr}/"), token: None, limits: Default::default() };
    let src = StreamAt::start(
        vec![1u8; 4096],
        Box::new(response.into_reader()),
        1_000_000,
        Checker::new(Expected::default()),
        ranged,
    );
    // The converter gives up (as on a corrupt table): dropping the reader must return, not
    // wait for the stalled body.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(src);
        let _ = tx.send(());
    });
    assert!(rx.recv_timeout(std::time::Duration::from_secs(30)).is_ok(), "dropping the reader hung on the download");
}
