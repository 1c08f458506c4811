//! The WebSocket upgrade read straight off the socket (`server/handshake.rs`)
//! and the requests it hands to hyper: a head in many pieces, frames sent
//! with the head, requests before an upgrade on one connection (pipelined
//! too), more headers or a longer head than it takes, a head over the
//! limit (431), a head cut short, and refusals answered and counted once
//! (PROTOCOL.md §1, §7).

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An upgrade request with the key `Raw` checks the answer against.
fn upgrade_request(addr: SocketAddr, path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A masked text frame carrying `v`, as a client sends it.
fn frame(v: &serde_json::Value) -> Vec<u8> {
    Raw::encode(true, 1, v.to_string().as_bytes(), true)
}

async fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads one HTTP response with a `content-length` body off `s`: its head
/// and body, nothing past it.
async fn read_response(s: &mut TcpStream) -> (String, String) {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(TIMEOUT, s.read(&mut byte))
            .await
            .expect("a response in time")
            .unwrap();
        assert_eq!(n, 1, "closed before a whole head: {buf:?}");
        buf.push(byte[0]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .expect("a content-length");
    let mut body = vec![0u8; len];
    tokio::time::timeout(TIMEOUT, s.read_exact(&mut body))
        .await
        .expect("the body in time")
        .unwrap();
    (head, String::from_utf8(body).unwrap())
}

/// The next frame that is not a heartbeat or a presence diff.
async fn next(raw: &mut Raw) -> serde_json::Value {
    loop {
        let v = raw.recv_json().await;
        if !matches!(ty(&v), "heartbeat" | "presence_diff") {
            return v;
        }
    }
}

/// `connected`, then a `join` sent with the head is answered.
async fn joins(raw: &mut Raw, room: &str) {
    assert_eq!(ty(&next(raw).await), "connected");
    let joined = next(raw).await;
    assert_eq!(ty(&joined), "joined", "{joined}");
    assert_eq!(joined["data"]["room"], room, "{joined}");
}

/// Writes an upgrade request to `path` on `s` with a `join` of `room`
/// right behind it, in one write: both must be answered. Returns the 101.
async fn upgrade_joining(
    mut s: TcpStream,
    addr: SocketAddr,
    path: &str,
    extra: &str,
    room: &str,
) -> String {
    let mut bytes = upgrade_request(addr, path, extra).into_bytes();
    bytes.extend(frame(&join(room)));
    s.write_all(&bytes).await.unwrap();
    let mut raw = Raw::upgraded(s).await;
    joins(&mut raw, room).await;
    raw.response
}

#[tokio::test]
async fn a_head_in_pieces_is_upgraded() {
    let server = start(config()).await;
    let mut s = tcp(server.addr).await;
    let req = upgrade_request(server.addr, "/ws?user=pia", "");
    for piece in req.as_bytes().chunks(7) {
        s.write_all(piece).await.unwrap();
        s.flush().await.unwrap();
        tokio::task::yield_now().await;
    }
    let mut raw = Raw::upgraded(s).await;
    assert_eq!(ty(&next(&mut raw).await), "connected");
    raw.send_json(&join("r")).await;
    assert_eq!(ty(&next(&mut raw).await), "joined");
}

#[tokio::test]
async fn frames_sent_with_the_head_are_read() {
    let server = start(config()).await;
    let s = tcp(server.addr).await;
    upgrade_joining(s, server.addr, "/?user=ann", "", "r1").await;
}

/// A plain request first: hyper answers it, and the upgrade that follows
/// on the same connection is hyper's, on the socket `handshake` read from.
#[tokio::test]
async fn an_upgrade_after_a_request_on_one_connection() {
    let server = start(config()).await;
    let mut s = tcp(server.addr).await;
    let healthz = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
    s.write_all(healthz.as_bytes()).await.unwrap();
    let (head, body) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["status"],
        "ok"
    );
    // hyper's 101 echoes the subprotocol as the direct path's does.
    let offer = "Sec-WebSocket-Protocol: chat.v9, parlor.v1.json\r\n";
    let answer = upgrade_joining(s, server.addr, "/ws?user=bo", offer, "r2").await;
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("sec-websocket-protocol: parlor.v1.json\r\n"),
        "{answer}"
    );
}

/// Everything in one write, the first request bigger than hyper reads at
/// once and frames after the upgrade: depending on sizes, the upgrade's
/// head and the frames after it are split between what hyper read and what
/// it had not read yet of the bytes handed to it, and must come out in
/// order.
#[tokio::test]
async fn a_pipelined_upgrade_after_a_big_request() {
    let server = start(config()).await;
    for pad in [100, 5_000, 9_000, 17_000, 30_000, 60_000] {
        for pings in [1, 300, 3_000] {
            let mut s = tcp(server.addr).await;
            let mut bytes = format!(
                "GET /healthz HTTP/1.1\r\nHost: {}\r\nX-Pad: {}\r\n\r\n",
                server.addr,
                "p".repeat(pad)
            )
            .into_bytes();
            bytes.extend(upgrade_request(server.addr, "/ws?user=cy", "").into_bytes());
            let room = format!("r-{pad}-{pings}");
            bytes.extend(frame(&join(&room)));
            for _ in 0..pings {
                bytes.extend(frame(&serde_json::json!({"type": "ping"})));
            }
            s.write_all(&bytes).await.unwrap();
            let (head, _) = read_response(&mut s).await;
            assert!(head.starts_with("HTTP/1.1 200"), "pad {pad}: {head}");
            let mut raw = Raw::upgraded(s).await;
            joins(&mut raw, &room).await;
            let mut pongs = 0;
            while pongs < pings {
                let v = next(&mut raw).await;
                match ty(&v) {
                    "pong" => pongs += 1,
                    "history" | "presence" => {}
                    _ => panic!("pad {pad}, {pings} pings: {v}"),
                }
            }
        }
    }
}

/// More headers, or a longer head, than the direct path takes: hyper's
/// path upgrades them.
#[tokio::test]
async fn bigger_heads_than_taken_directly_still_upgrade() {
    let server = start(config()).await;
    let many: String = (0..40).map(|i| format!("X-Extra-{i}: {i}\r\n")).collect();
    let long = format!("Cookie: c={}\r\n", "c".repeat(20 * 1024));
    for (i, extra) in [many, long].iter().enumerate() {
        let s = tcp(server.addr).await;
        let room = format!("r3-{i}");
        upgrade_joining(s, server.addr, "/ws?user=di", extra, &room).await;
    }
}

#[tokio::test]
async fn a_head_over_64_kib_is_431() {
    let server = start(config()).await;
    let mut s = tcp(server.addr).await;
    let pad = format!("X-Pad: {}\r\n", "p".repeat(70 * 1024));
    // The server may answer and close before it has read all of this.
    let _ = s
        .write_all(upgrade_request(server.addr, "/ws", &pad).as_bytes())
        .await;
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
    assert_alive(server.addr).await;
}

/// A client that closes before its head is whole gets no answer.
#[tokio::test]
async fn a_head_cut_short_is_closed() {
    let server = start(config()).await;
    let mut s = tcp(server.addr).await;
    let req = upgrade_request(server.addr, "/ws", "");
    s.write_all(&req.as_bytes()[..req.len() / 2]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .unwrap();
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert_alive(server.addr).await;
}

/// Refused upgrades are answered by hyper's path as before, each counted
/// once, and a refused connection carries on as HTTP.
#[tokio::test]
async fn refusals_are_answered_and_counted_once() {
    let mut cfg = config();
    cfg.jwt_secret = Some("handshake-secret-0123456789".into());
    let server = start(cfg).await;
    for path in ["/ws", "/ws?token=not-a-jwt", "/?token=x.y.z"] {
        let mut s = tcp(server.addr).await;
        s.write_all(upgrade_request(server.addr, path, "").as_bytes())
            .await
            .unwrap();
        let (head, body) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 401"), "{path}: {head}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["code"], "forbidden", "{path}");
    }
    let metrics = get(server.addr, "/metrics").await.text();
    assert!(
        metrics.lines().any(|l| l == "parlor_auth_failures_total 3"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("auth_failures"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    let open = start(config()).await;
    let cases = [
        ("/ws?user=%07bell", "", 400),
        ("/ws?format=xml", "", 400),
        ("/nowhere", "", 404),
        // A target hyper's URI parser refuses.
        ("/ws?user=a\"b", "", 400),
    ];
    for (path, extra, status) in cases {
        let mut s = tcp(open.addr).await;
        let req = upgrade_request(open.addr, path, extra);
        s.write_all(req.as_bytes()).await.unwrap();
        let (head, _) = read_response(&mut s).await;
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status}")),
            "{path}: {head}"
        );
    }
    // Without the key, or with another version: 400.
    for (key, version) in [(None, "13"), (Some("dGhlIHNhbXBsZSBub25jZQ=="), "12")] {
        let mut req = format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: {version}\r\n"
        );
        if let Some(key) = key {
            req.push_str(&format!("Sec-WebSocket-Key: {key}\r\n"));
        }
        req.push_str("\r\n");
        let mut s = tcp(open.addr).await;
        s.write_all(req.as_bytes()).await.unwrap();
        let (head, body) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{req}: {head}");
        assert!(body.contains("bad_request"), "{body}");
        // The connection is still HTTP: a request after the refusal is served.
        let healthz = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        s.write_all(healthz.as_bytes()).await.unwrap();
        let (head, _) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
}
