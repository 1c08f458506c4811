//! Peers that stop reading, against the real binary: they are cut and gone
//! within a bound (their writes race the cut and the silence deadline, the
//! heartbeat's included), their connection permits come back, and SIGTERM
//! still lands every acked message and exits 0 in time while they hang on.

mod common;

use std::time::{Duration, Instant};

use common::binary::Binary;
use common::*;
use serde_json::json;
use tokio::io::AsyncWriteExt;

const HEARTBEAT_MS: u64 = 300;
/// Cut or silence, then the close grace (5 s), and some slack.
const GONE_WITHIN: Duration = Duration::from_secs(12);

async fn connections(addr: std::net::SocketAddr) -> f64 {
    let text = get(addr, "/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix("parlor_connections ")?.parse().ok())
        .expect("parlor_connections")
}

/// Peers that join `room` and never read again; `chatty` ones keep sending
/// pings, so they are never silent (only a cut can end them).
async fn stalled_peers(
    addr: std::net::SocketAddr,
    room: &str,
    n: usize,
    chatty: bool,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut peers = Vec::new();
    for i in 0..n {
        let path = format!("/ws?user=stalled{i}");
        let mut raw = Raw::connect_small_window(addr, &path, 2048).await;
        raw.send_json(&json!({"type": "join", "room": room})).await;
        peers.push(tokio::spawn(async move {
            if chatty {
                let ping = Raw::encode(true, OP_PING, b"", true);
                while raw.stream.write_all(&ping).await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            std::future::pending::<()>().await;
        }));
    }
    peers
}

/// Publishes big messages into `room` until `done` says stop (or `limit`).
async fn flood(c: &mut Client, room: &str, from: usize, limit: usize) {
    let content = "x".repeat(8 * 1024);
    for i in from..from + limit {
        c.publish(room, &content, &format!("flood-{i}")).await;
    }
}

#[tokio::test]
async fn stalled_peers_are_cut_release_their_permits_and_do_not_block_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let args = [
        "--heartbeat-ms",
        &HEARTBEAT_MS.to_string(),
        "--durability",
        "none",
        "--shutdown-timeout",
        "10",
        "--max-connections",
        "8",
        "--rate-per-sec",
        "100000",
        "--rate-burst",
        "100000",
    ];
    let mut server = Binary::start(&dir, &args).await;
    let addr = server.addr;

    // Three peers that never read, in a room that keeps talking.
    let mut publisher = connect(addr, "publisher").await;
    publisher.join("busy").await;
    let peers = stalled_peers(addr, "busy", 3, false).await;
    let deadline = Instant::now() + GONE_WITHIN;
    let mut sent = 0;
    while connections(addr).await > 1.0 {
        assert!(
            Instant::now() < deadline,
            "stalled peers outlived their cut"
        );
        flood(&mut publisher, "busy", sent, 20).await;
        sent += 20;
    }
    for p in peers {
        p.abort();
    }

    // Their permits are back: eight connections fit again.
    let mut fresh = Vec::new();
    for i in 0..6 {
        fresh.push(connect(addr, &format!("fresh{i}")).await);
    }
    drop(fresh);

    // Peers that still send but never read, their writes stuck, connected
    // through SIGTERM, with acked messages that `--durability none` keeps
    // only if the store is flushed at exit.
    let _peers = stalled_peers(addr, "busy", 3, true).await;
    flood(&mut publisher, "busy", sent, 30).await;
    publisher.join("quiet").await;
    let mut acked = Vec::new();
    for i in 0..20 {
        acked.push(
            publisher
                .publish("quiet", &format!("keep-{i}"), &format!("k{i}"))
                .await,
        );
    }
    server.signal("TERM");
    let status = server
        .exit_within(Duration::from_secs(10 + 5))
        .await
        .expect("exits within the shutdown timeout");
    assert_eq!(status.code(), Some(0));

    let server = Binary::start(&dir, &args).await;
    let page = get(server.addr, "/api/rooms/quiet/messages?limit=1000")
        .await
        .json();
    let stored: Vec<u64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(stored, acked, "every acked message survived the shutdown");
}
