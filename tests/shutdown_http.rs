//! Shutdown with plain HTTP connections open, against the real binary: an
//! idle keep-alive connection and a POST whose body never arrives do not
//! hold the exit. SIGTERM asks every HTTP connection to finish, closes what
//! does not within a short bound, and the process exits 0 long before
//! `--shutdown-timeout`, keeping every acked message (with `--durability
//! none` they survive only if the store is flushed at exit).

mod common;

use std::time::Duration;

use common::binary::Binary;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Large, so that an exit bounded by half of it cannot come from the
/// timeout itself.
const SHUTDOWN_TIMEOUT_SECS: u64 = 60;

/// Reads from `s` until `needle` has arrived; returns everything read.
async fn read_until(s: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !got.windows(needle.len()).any(|w| w == needle) {
        let n = tokio::time::timeout(TIMEOUT, s.read(&mut chunk))
            .await
            .expect("timed out reading")
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    got
}

/// A keep-alive connection that has had one answer and now sits idle.
async fn idle_keep_alive(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let answer = read_until(&mut s, br#"{"status":"ok"}"#).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    s
}

/// A POST whose body stops after a few bytes. `Expect: 100-continue`
/// makes the server say when its handler starts reading the body, so the
/// request is known to be in the handler, not in a queue.
async fn stalled_post(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/rooms/kept/messages HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let answer = read_until(&mut s, b"\r\n\r\n").await;
    assert!(
        answer.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    s.write_all(br#"{"user":"#).await.unwrap();
    s
}

#[tokio::test]
async fn sigterm_with_an_idle_and_a_stalled_http_connection_exits_0_well_within_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let timeout = SHUTDOWN_TIMEOUT_SECS.to_string();
    let args = ["--durability", "none", "--shutdown-timeout", &timeout];
    let mut server = Binary::start(&dir, &args).await;
    let addr = server.addr;

    let mut c = connect(addr, "ann").await;
    c.join("kept").await;
    let mut acked = Vec::new();
    for i in 0..20 {
        acked.push(c.publish("kept", &format!("m{i}"), &format!("id{i}")).await);
    }
    let _idle = idle_keep_alive(addr).await;
    let _stalled = stalled_post(addr).await;

    server.signal("TERM");
    assert_eq!(c.expect_close().await, 1001);
    let status = server
        .exit_within(Duration::from_secs(SHUTDOWN_TIMEOUT_SECS / 2))
        .await
        .expect("exits well within --shutdown-timeout");
    assert_eq!(status.code(), Some(0));

    let server = Binary::start(&dir, &args).await;
    let page = get(server.addr, "/api/rooms/kept/messages?limit=1000")
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
