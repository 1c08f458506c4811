//! Graceful shutdown of the real binary: SIGTERM while clients publish.
//! Every client gets close 1001, the process exits 0, and after a restart on
//! the same data dir every acked message is there.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn spawn(dir: &std::path::Path, addr: SocketAddr) -> Child {
    Command::new(env!("CARGO_BIN_EXE_parlor"))
        .args([
            "serve",
            "--store",
            "redb",
            "--rate-per-sec",
            "100000",
            "--rate-burst",
            "100000",
        ])
        .arg("--data-dir")
        .arg(dir)
        .arg("--addr")
        .arg(addr.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start parlor")
}

async fn wait_healthy(addr: SocketAddr) {
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(addr).await.is_ok()
            && get(addr, "/healthz").await.status == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("parlor did not become healthy at {addr}");
}

#[tokio::test]
async fn sigterm_under_load_closes_1001_keeps_every_ack_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut child = spawn(dir.path(), addr);
    wait_healthy(addr).await;

    let rooms = ["r0", "r1", "r2"];
    let mut publishers = Vec::new();
    // Acks seen per publisher, so the signal comes once every room has some.
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    for (i, room) in rooms.iter().enumerate() {
        let mut c = connect(addr, &format!("pub{i}")).await;
        c.join(room).await;
        let room = room.to_string();
        let ack_tx = ack_tx.clone();
        publishers.push(tokio::spawn(async move {
            let (mut tx, mut rx) = c.split();
            let sender = tokio::spawn(async move {
                for n in 0..100_000u32 {
                    let m = json!({"type": "message", "id": format!("{room}-{n}"),
                                   "data": {"room": room, "content": format!("c{n}")}});
                    if tx.try_send(&m).await.is_err() {
                        break;
                    }
                }
            });
            // Record acks until the server closes the connection.
            let mut acked: HashMap<u64, String> = HashMap::new();
            let code = loop {
                match rx.event().await {
                    Event::Frame { value, .. } if value["type"] == "ack" => {
                        acked.insert(
                            value["data"]["sequence"].as_u64().unwrap(),
                            value["id"].as_str().unwrap().into(),
                        );
                        let _ = ack_tx.send(i);
                    }
                    Event::Frame { .. } => {}
                    Event::Close(code) => break code,
                    Event::End(why) => panic!("connection ended without a close frame: {why}"),
                }
            };
            sender.abort();
            (code, acked)
        }));
    }
    // Let some traffic through, then ask the server to stop.
    // Stop mid-stream: once every publisher has had some acks.
    let mut seen = vec![0usize; rooms.len()];
    while seen.iter().any(|&n| n < 20) {
        let i = tokio::time::timeout(TIMEOUT, ack_rx.recv())
            .await
            .expect("acks flow")
            .unwrap();
        seen[i] += 1;
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut acked_by_room = Vec::new();
    for p in publishers {
        let (code, acked) = p.await.unwrap();
        assert_eq!(code, Some(1001));
        acked_by_room.push(acked);
    }
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0), "clean exit after SIGTERM");

    let mut child = spawn(dir.path(), addr);
    wait_healthy(addr).await;
    for (room, acked) in rooms.iter().zip(acked_by_room) {
        assert!(!acked.is_empty(), "{room}: no acks before the shutdown");
        let mut stored = HashMap::new();
        let mut since = 0;
        loop {
            let page = get(
                addr,
                &format!("/api/rooms/{room}/messages?since={since}&limit=1000"),
            )
            .await
            .json();
            for m in page["messages"].as_array().unwrap() {
                let seq = m["sequence"].as_u64().unwrap();
                assert_eq!(seq, since + 1, "{room}: gapless");
                since = seq;
                stored.insert(seq, m["content"].as_str().unwrap().to_owned());
            }
            if page["more"] != true {
                break;
            }
        }
        for (seq, id) in &acked {
            let n = id.rsplit('-').next().unwrap();
            assert_eq!(
                stored.get(seq).map(String::as_str),
                Some(format!("c{n}").as_str()),
                "{room}: acked {id} at {seq}"
            );
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
