//! The conformance echo endpoint (`/echo`, only with `enable_echo`).

mod common;

use common::*;
use tokio_tungstenite::tungstenite::{Error, Message};

fn echo_opts() -> Opts {
    Opts {
        path: Some("/echo".into()),
        no_connected: true,
        ..Opts::default()
    }
}

async fn next_data(c: &mut Client) -> Message {
    c.rx.raw_message().await.expect("echo connection open")
}

#[tokio::test]
async fn echo_returns_text_and_binary_unchanged() {
    let mut cfg = config();
    cfg.enable_echo = true;
    cfg.heartbeat_ms = 50;
    let server = start(cfg).await;
    let mut c = connect_opts(server.addr, echo_opts()).await;

    c.tx.send_raw(Message::text("hello, echo")).await.unwrap();
    assert_eq!(next_data(&mut c).await, Message::text("hello, echo"));
    let bin: Vec<u8> = (0..=255u8).collect();
    c.tx.send_raw(Message::binary(bin.clone())).await.unwrap();
    assert_eq!(next_data(&mut c).await, Message::binary(bin));
    // Not chat: no protocol processing, no connected/heartbeat frames.
    c.tx.send_raw(Message::text(r#"{"type":"ping"}"#))
        .await
        .unwrap();
    assert_eq!(next_data(&mut c).await, Message::text(r#"{"type":"ping"}"#));
    let big = "e".repeat(60 * 1024);
    c.tx.send_raw(Message::text(big.clone())).await.unwrap();
    assert_eq!(next_data(&mut c).await, Message::text(big));
    c.tx.send_raw(Message::binary(Vec::new())).await.unwrap();
    assert_eq!(next_data(&mut c).await, Message::binary(Vec::new()));

    // Fragmented input comes back as one message.
    let mut raw = Raw::connect(server.addr, "/echo").await;
    raw.send_frame(false, OP_TEXT, b"frag", true).await.unwrap();
    raw.send_frame(false, OP_CONT, b"men", true).await.unwrap();
    raw.send_frame(true, OP_CONT, b"ted", true).await.unwrap();
    let f = raw.read_frame().await.unwrap();
    assert_eq!(
        (f.fin, f.opcode, f.payload.as_slice()),
        (true, OP_TEXT, &b"fragmented"[..])
    );
    // Pings are answered with the same payload.
    raw.send_frame(true, OP_PING, b"p", true).await.unwrap();
    let f = raw.read_frame().await.unwrap();
    assert_eq!((f.opcode, f.payload.as_slice()), (OP_PONG, &b"p"[..]));
    // Invalid UTF-8 closes with 1007 here too.
    raw.send_frame(true, OP_TEXT, b"\xff", true).await.unwrap();
    assert_eq!(raw.expect_close().await, 1007);
}

#[tokio::test]
async fn echo_is_404_when_disabled() {
    let server = start(config()).await;
    match try_connect(server.addr, &echo_opts()).await {
        Err(Error::Http(resp)) => assert_eq!(resp.status(), 404),
        Err(e) => panic!("expected HTTP 404, got {e}"),
        Ok(_) => panic!("/echo must not upgrade when disabled"),
    }
    assert_eq!(get(server.addr, "/echo").await.status, 404);
    assert_alive(server.addr).await;
}
