//! Overlapping requests through the real daemon over HTTP on 127.0.0.1: clients that give up
//! while waiting for another client's fill free their place at once, and health says what waits.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::daemon::{request_json, Daemon, TOKEN};
use crate::fixtures::MIB;

/// An image server whose first answer (the registration's probe) is whole, and whose later
/// answers send the first MiB, then stall until `release` is set.
pub struct StallingServer {
    pub addr: String,
    release: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
}

impl StallingServer {
    /// Lets every stalled and later answer finish.
    pub fn release(&self) {
        self.release.store(true, Ordering::SeqCst);
    }

    pub fn start(body: Vec<u8>) -> StallingServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let release = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let (rel, reqs) = (release.clone(), requests.clone());
        let body = Arc::new(body);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let n = reqs.fetch_add(1, Ordering::SeqCst);
                let (rel, body) = (rel.clone(), body.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    while reader.read_line(&mut line).unwrap_or(0) > 2 {
                        line.clear();
                    }
                    let head =
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                    let _ = stream.write_all(head.as_bytes());
                    let first = if n == 0 { body.len() } else { MIB as usize };
                    let _ = stream.write_all(&body[..first]);
                    let started = Instant::now();
                    while !rel.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(120) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    let _ = stream.write_all(&body[first..]);
                });
            }
        });
        StallingServer { addr, release, requests }
    }
}

fn health(addr: &str) -> serde_json::Value {
    request_json(addr, "GET", "/healthz", None).unwrap().1
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ok() {
        assert!(started.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn clients_that_leave_while_waiting_for_a_fill_free_their_place() {
    let mut image = vec![0u8; 8 * MIB as usize];
    image[..4096].fill(0x5a);
    image[6 * MIB as usize..6 * MIB as usize + 4096].fill(0x33);
    let server = StallingServer::start(image);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("volcache.toml"), format!("image_source_urls = [\"http://{}/\"]\n", server.addr))
        .unwrap();
    let d = Daemon::start_in(dir);
    let source = format!("http://{}/img.raw", server.addr);
    let body = serde_json::json!({"id": "img", "name": "img", "source": source, "disk_format": "raw"});
    assert_eq!(request_json(&d.addr, "POST", "/v1/images", Some(body)).unwrap().0, 201);

    let addr = d.addr.clone();
    let leader = std::thread::spawn(move || {
        request_json(&addr, "POST", "/v1/volumes", Some(serde_json::json!({"image_id": "img", "size": 1}))).unwrap()
    });
    wait_for("the leader's fill", || health(&d.addr)["fills_in_progress"] == 1);

    // Twenty clients ask for the same image, then give up and close their connections.
    let payload = br#"{"image_id": "img", "size": 1}"#;
    let clients: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(&d.addr).unwrap();
            let head = format!(
                "POST /v1/volumes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                payload.len()
            );
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(payload).unwrap();
            s
        })
        .collect();
    wait_for("twenty waiting creates", || health(&d.addr)["creates_waiting_for_a_fill"] == 20);
    drop(clients);
    wait_for("the waits to end with their clients", || health(&d.addr)["creates_waiting_for_a_fill"] == 0);
    let h = health(&d.addr);
    assert_eq!((h["status"].as_str(), h["fills_in_progress"].as_u64()), (Some("ok"), Some(1)), "{h}");

    // The fill itself goes on, and the leader gets its volume.
    server.release();
    let (status, v) = leader.join().unwrap();
    assert_eq!((status, v["cache"].as_str()), (201, Some("miss")), "{v}");
    assert_eq!(server.requests.load(Ordering::SeqCst), 2, "one probe, one download");
    // The next client is a hit.
    let mut s = TcpStream::connect(&d.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "POST /v1/volumes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        payload.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(payload).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 201") && answer.contains("\"hit\""), "{answer}");
}
