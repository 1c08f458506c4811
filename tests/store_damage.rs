//! A damaged `parlor.redb` under the real binary: the store is written by
//! parlor and closed cleanly, then bytes of the pages that hold one room's
//! messages are overwritten (found by a marker in a message's content), and
//! parlor is started on the file again.
//!
//! What must hold: the damaged room's join and history fail with `internal`,
//! every other room keeps working, the failure is counted
//! (`parlor_store_panics_total` for a panic in redb,
//! `parlor_store_errors_total` always), the damage is logged once with the
//! file named, and `/healthz` answers 503 with the reason until a restart.
//! Damage that redb notices while opening the file stops parlor at start
//! with an error naming the file instead.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::binary::Binary;
use common::*;
use serde_json::json;

const ROOMS: [&str; 4] = ["calm-a", "calm-b", "doomed", "calm-c"];
const PER_ROOM: u64 = 300;
/// A message of `doomed` in the middle of its log, within the newest
/// messages a room's load reads (its dedup window).
const MARKER: &str = "doomed#0150#";

fn content(room: &str, i: u64) -> String {
    format!("{room}#{i:04}#{}", "x".repeat(80))
}

/// A store with `ROOMS`, `PER_ROOM` messages each, written by the binary
/// and closed cleanly (SIGTERM).
async fn build_store(dir: &Path) {
    let fast = ["--rate-per-sec", "100000", "--rate-burst", "100000"];
    let mut server = Binary::start(dir, &fast).await;
    for room in ROOMS {
        // One connection per room: no copies of another room's messages
        // arrive while this one joins.
        let mut c = connect(server.addr, "writer").await;
        c.join(room).await;
        for i in 1..=PER_ROOM {
            c.send(&msg_id(room, &content(room, i), &format!("{room}-{i}")))
                .await;
        }
        let mut acked = 0;
        while acked < PER_ROOM {
            let v = c.recv().await;
            match ty(&v) {
                "ack" => acked += 1,
                "error" => panic!("refused while building the store: {v}"),
                _ => {}
            }
        }
    }
    server.signal("TERM");
    let status = server.exit_within(TIMEOUT).await.expect("parlor stopped");
    assert!(status.success(), "{status}");
}

/// How to damage the file.
#[derive(Clone, Copy, Debug)]
enum Damage {
    /// The entry count of the leaf page holding the marker: redb indexes
    /// past the page and panics.
    LeafCount,
    /// The record holding the marker no longer decodes (a MessagePack
    /// byte that is never valid): a corruption error, no panic.
    Record,
    /// The page type byte of the leaf holding the marker: redb's checks at
    /// open find it in debug builds; release builds find it on reading.
    PageType,
}

/// Applies `how` at every copy of the marker (freed pages may hold stale
/// copies; damaging them too is harmless). Returns how many were found.
fn damage(file: &Path, how: Damage) -> usize {
    const PAGE: usize = 4096;
    let mut bytes = std::fs::read(file).unwrap();
    let at: Vec<usize> = bytes
        .windows(MARKER.len())
        .enumerate()
        .filter(|(_, w)| *w == MARKER.as_bytes())
        .map(|(i, _)| i)
        .collect();
    for &pos in &at {
        let page = pos / PAGE * PAGE;
        match how {
            Damage::LeafCount => bytes[page + 2..page + 4].copy_from_slice(&[0xff, 0x7f]),
            // The content is a str8: 0xd9, its length, then the text.
            Damage::Record => {
                assert_eq!(bytes[pos - 2], 0xd9, "content is not a str8 record");
                bytes[pos - 2] = 0xc1;
            }
            Damage::PageType => bytes[page] = 0xff,
        }
    }
    std::fs::write(file, &bytes).unwrap();
    at.len()
}

/// A store built once per test, damaged `how`: (tempdir, data dir).
async fn damaged_store(how: Damage) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    build_store(&dir).await;
    let found = damage(&dir.join("parlor.redb"), how);
    assert!(found > 0, "marker not found in the file");
    (tmp, dir)
}

async fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    let text = get(addr, "/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

/// The checks of a server that opened a damaged file and found the damage
/// while running.
async fn check_damaged_room_fails_alone(server: &Binary, dir: &Path, panicked: bool) {
    let file = dir.join("parlor.redb");
    let file = file.to_str().unwrap();
    assert_eq!(get(server.addr, "/healthz").await.status, 200);
    let errors_before = metric(server.addr, "parlor_store_errors_total").await;

    // The damaged room: join and history fail with internal.
    let mut c = connect(server.addr, "reader").await;
    c.send(&json!({"type": "join", "room": "doomed", "id": "j1"}))
        .await;
    assert_error(&c.recv().await, "internal", Some("j1"));
    let h = get(server.addr, "/api/rooms/doomed/messages?since=0&limit=1000").await;
    assert_eq!(h.status, 500, "{}", h.text());
    assert_eq!(h.json()["error"]["code"], "internal");

    // Every other room works: history, a join, a publish after the last.
    for room in ["calm-a", "calm-b", "calm-c"] {
        let h = get(
            server.addr,
            &format!("/api/rooms/{room}/messages?since=0&limit=1000"),
        )
        .await;
        assert_eq!(h.status, 200, "{room}: {}", h.text());
        assert_eq!(
            h.json()["messages"].as_array().unwrap().len() as u64,
            PER_ROOM
        );
        let (joined, _, _) = c.join(room).await;
        assert_eq!(joined["data"]["last"], PER_ROOM);
        let seq = c
            .publish(room, "after the damage", &format!("{room}-after"))
            .await;
        assert_eq!(seq, PER_ROOM + 1);
    }

    // Counted.
    let errors = metric(server.addr, "parlor_store_errors_total").await;
    assert!(errors >= errors_before + 2.0, "{errors_before} -> {errors}");
    let panics = metric(server.addr, "parlor_store_panics_total").await;
    if panicked {
        assert!(panics >= 1.0, "panics: {panics}");
    }
    assert_eq!(metric(server.addr, "parlor_store_damaged").await, 1.0);

    // Reported: 503 with the reason, naming the file.
    let health = get(server.addr, "/healthz").await;
    assert_eq!(health.status, 503, "{}", health.text());
    let body = health.json();
    assert_eq!(body["status"], "unhealthy", "{body}");
    let reason = body["reason"].as_str().unwrap();
    assert!(
        reason.contains(file) && reason.contains("damaged"),
        "{reason}"
    );

    // Logged once with the file named, although two requests failed.
    let log = std::fs::read_to_string(dir.with_extension("log")).unwrap();
    let announced = log
        .lines()
        .filter(|l| l.contains("store file is damaged") && l.contains(file))
        .count();
    assert_eq!(announced, 1, "{log}");

    // A retry of the damaged room still fails; the others still work.
    c.send(&json!({"type": "join", "room": "doomed", "id": "j2"}))
        .await;
    assert_error(&c.recv_until("error").await, "internal", Some("j2"));
    assert_alive(server.addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_on_a_damaged_page_fails_only_its_room_and_is_reported() {
    let (_tmp, dir) = damaged_store(Damage::LeafCount).await;
    let server = Binary::start(&dir, &[]).await;
    check_damaged_room_fails_alone(&server, &dir, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_record_fails_only_its_room_and_is_reported() {
    let (_tmp, dir) = damaged_store(Damage::Record).await;
    let server = Binary::start(&dir, &[]).await;
    check_damaged_room_fails_alone(&server, &dir, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_found_at_open_stops_parlor_with_the_file_named() {
    let (_tmp, dir) = damaged_store(Damage::PageType).await;
    let bin = std::env::var("PARLOR_TEST_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_parlor").to_string());
    let addr = binary::free_addr();
    let mut child = Command::new(bin)
        .args(["serve", "--store", "redb", "--data-dir"])
        .arg(&dir)
        .args(["--addr", &addr.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Either it refuses to start (redb's checks found the page at open)…
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!status.success());
            let file = dir.join("parlor.redb");
            let line = err.lines().last().unwrap_or_default();
            assert!(
                line.contains(file.to_str().unwrap()) && line.contains("corrupt"),
                "the last line must name the file and say why: {err}"
            );
            eprintln!("refused at start: {line}");
            return;
        }
        if get_status(addr).await == Some(200) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "neither up nor exited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // …or it serves, and the damaged room fails alone (a release build).
    eprintln!("opened the damaged file; the room fails when read");
    let _ = child.kill();
    let _ = child.wait();
    let server = Binary::start(&dir, &[]).await;
    check_damaged_room_fails_alone(&server, &dir, false).await;
}

async fn get_status(addr: std::net::SocketAddr) -> Option<u16> {
    tokio::net::TcpStream::connect(addr).await.ok()?;
    Some(get(addr, "/healthz").await.status)
}
