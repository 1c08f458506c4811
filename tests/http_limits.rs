//! HTTP requests that try to hold connections: request bodies that never
//! finish get 408 and are closed after `--body-timeout-ms` (default 10 s),
//! `/healthz` and `/metrics` still answer when client connections are at
//! `--max-connections`, and a declared body size that cannot fit is refused
//! before any of it is read.

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Default `--body-timeout-ms`, plus the usual bound for the answer.
const BODY_TIMEOUT_AND_SLACK: std::time::Duration = std::time::Duration::from_secs(10 + 10);

/// A POST whose body stops after a few bytes. `Expect: 100-continue`
/// makes the server say when its handler starts reading the body, so the
/// connection is known to be served (holding its slot), not queued.
async fn stalled_post(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/rooms/r/messages HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(TIMEOUT, s.read(&mut chunk))
            .await
            .expect("timed out waiting for 100 Continue")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    s.write_all(br#"{"user":"#).await.unwrap();
    s
}

/// Everything the server sends until it closes, waiting at most `within`.
async fn read_to_close(s: &mut TcpStream, within: std::time::Duration) -> String {
    let mut all = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut all))
        .await
        .expect("the server did not close the connection in time")
        .expect("read");
    String::from_utf8_lossy(&all).into_owned()
}

#[tokio::test]
async fn twenty_stalled_bodies_at_the_limit_get_408_and_healthz_still_answers() {
    let mut cfg = config();
    cfg.max_connections = 20;
    let server = start(cfg).await;
    let addr = server.addr;
    let mut stalled = Vec::new();
    for _ in 0..20 {
        stalled.push(stalled_post(addr).await);
    }

    let health = get(addr, "/healthz").await;
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(get(addr, "/metrics").await.status, 200);

    for s in &mut stalled {
        let answer = read_to_close(s, BODY_TIMEOUT_AND_SLACK).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
    }
    // Their slots are free again.
    eventually("the API answers again", || async {
        (get(addr, "/api/rooms").await.status == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_declared_body_over_the_limit_is_refused_before_it_arrives() {
    let server = start(config()).await;
    let addr = server.addr;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/rooms/r/messages HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000000000000\r\n\r\n{{"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let answer = read_to_close(&mut s, TIMEOUT).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_alive(addr).await;
}

#[tokio::test]
async fn a_content_length_beyond_u64_is_400() {
    let server = start(config()).await;
    let addr = server.addr;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/rooms/r/messages HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Length: 99999999999999999999999999\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let answer = read_to_close(&mut s, TIMEOUT).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_alive(addr).await;
}
