//! Bad input (PROTOCOL.md §1, §3, §6): malformed frames get `error` replies
//! that echo the request's `id` and leave the connection open; WebSocket
//! protocol violations close it with 1002 / 1007; the server keeps serving.

mod common;

use common::*;
use serde_json::{json, Value};

/// Sends `text` and expects `error code` (echoing `id` when given).
async fn expect_error_for(c: &mut Client, text: &str, code: &str, id: Option<&str>) {
    c.tx.send_text(text).await;
    let v = c.recv().await;
    assert_eq!(ty(&v), "error", "{text:?} → {v}");
    assert_eq!(v["data"]["code"], code, "{text:?} → {v}");
    match id {
        Some(id) => assert_eq!(v["id"], id, "{text:?} must echo its id: {v}"),
        None => assert!(v.get("id").is_none_or(Value::is_null), "{text:?} → {v}"),
    }
}

async fn still_open(c: &mut Client) {
    c.send(&json!({"type": "ping"})).await;
    assert_eq!(
        ty(&c.recv().await),
        "pong",
        "an error reply must not close the connection"
    );
}

#[tokio::test]
async fn invalid_json_and_non_objects_are_bad_request() {
    let server = start(config()).await;
    let mut c = connect(server.addr, "ann").await;
    for text in [
        "{",
        "nope",
        "",
        "[1,2]",
        r#"["join","r"]"#,
        r#""join""#,
        "42",
        "null",
        r#"{"room":"a"}"#,
        r#"{"type":7}"#,
        r#"{"type":null}"#,
        r#"{"type":"join","room":"a""#,
    ] {
        expect_error_for(&mut c, text, "bad_request", None).await;
    }
    still_open(&mut c).await;
    assert_alive(server.addr).await;
}

#[tokio::test]
async fn wrong_field_types_are_bad_request_echoing_the_id() {
    let server = start(config()).await;
    let mut c = connect(server.addr, "ann").await;
    let cases = [
        (r#"{"type":"join","room":5,"id":"a1"}"#, "a1"),
        (r#"{"type":"join","room":"r","since":-1,"id":"a2"}"#, "a2"),
        (r#"{"type":"join","room":"r","since":"3","id":"a3"}"#, "a3"),
        (r#"{"type":"join","room":"r","since":1.5,"id":"a4"}"#, "a4"),
        (r#"{"type":"join","room":"r","epoch":5,"id":"a5"}"#, "a5"),
        (r#"{"type":"join","id":"a6"}"#, "a6"),
        (r#"{"type":"leave","room":["r"],"id":"a7"}"#, "a7"),
        (r#"{"type":"message","data":"hi","id":"a8"}"#, "a8"),
        (
            r#"{"type":"message","data":{"room":"r","content":5},"id":"a9"}"#,
            "a9",
        ),
        (
            r#"{"type":"message","data":{"room":"r"},"id":"a10"}"#,
            "a10",
        ),
        (r#"{"type":"message","id":"a11"}"#, "a11"),
        (
            r#"{"type":"history","room":"r","limit":"ten","id":"a12"}"#,
            "a12",
        ),
        (
            r#"{"type":"history","room":"r","since":-5,"id":"a13"}"#,
            "a13",
        ),
        (r#"{"type":"presence","room":true,"id":"a14"}"#, "a14"),
    ];
    for (text, id) in cases {
        expect_error_for(&mut c, text, "bad_request", Some(id)).await;
    }
    // An id that is not a string cannot be echoed; an id over 64 bytes is bad.
    expect_error_for(
        &mut c,
        r#"{"type":"join","room":5,"id":7}"#,
        "bad_request",
        None,
    )
    .await;
    let long = format!(r#"{{"type":"ping","id":"{}"}}"#, "i".repeat(65));
    c.tx.send_text(&long).await;
    assert_error(&c.recv().await, "bad_request", None);
    // 64 bytes is fine; unknown fields are ignored.
    let ok = format!(
        r#"{{"type":"ping","id":"{}","whatever":{{"x":[1]}}}}"#,
        "i".repeat(64)
    );
    c.tx.send_text(&ok).await;
    assert_eq!(ty(&c.recv().await), "pong");
    still_open(&mut c).await;
}

#[tokio::test]
async fn unknown_type_is_unknown_type_echoing_the_id() {
    let server = start(config()).await;
    let mut c = connect(server.addr, "ann").await;
    expect_error_for(
        &mut c,
        r#"{"type":"dance","id":"d1"}"#,
        "unknown_type",
        Some("d1"),
    )
    .await;
    expect_error_for(
        &mut c,
        r#"{"type":"JOIN","room":"r"}"#,
        "unknown_type",
        None,
    )
    .await;
    expect_error_for(
        &mut c,
        r#"{"type":"","id":"d2"}"#,
        "unknown_type",
        Some("d2"),
    )
    .await;
    still_open(&mut c).await;
}

#[tokio::test]
async fn invalid_room_names_are_invalid_room() {
    let server = start(config()).await;
    let mut c = connect(server.addr, "ann").await;
    let long = "x".repeat(65);
    let bad = [
        "../x",
        "a/b",
        long.as_str(),
        "",
        ".hidden",
        "a b",
        "é",
        "a\\b",
        "a\u{0}b",
        "..",
        "/",
    ];
    for (i, room) in bad.iter().enumerate() {
        let id = format!("r{i}");
        let requests = [
            json!({"type": "join", "room": room, "id": id}),
            json!({"type": "leave", "room": room, "id": id}),
            json!({"type": "message", "data": {"room": room, "content": "x"}, "id": id}),
            json!({"type": "history", "room": room, "id": id}),
            json!({"type": "presence", "room": room, "id": id}),
        ];
        for r in requests {
            c.send(&r).await;
            let v = c.recv().await;
            assert_eq!(
                v["data"]["code"], "invalid_room",
                "room {room:?}: {r} → {v}"
            );
            assert_eq!(v["id"], id.as_str(), "{v}");
        }
    }
    // The edges of the valid alphabet.
    let max = "y".repeat(64);
    for room in [max.as_str(), "a", "A-z_0.9:x", "x..y"] {
        let (joined, _, _) = c.join(room).await;
        assert_eq!(joined["data"]["room"], room);
    }
    // Over HTTP the same names are refused (not used as paths).
    let r = get(server.addr, "/api/rooms/..%2Fx/messages").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "invalid_room");
    assert_alive(server.addr).await;
}

#[tokio::test]
async fn msgpack_bad_input() {
    let server = start(config()).await;
    let opts = Opts {
        user: Some("mp".into()),
        subprotocols: vec!["parlor.v1.msgpack".into()],
        ..Opts::default()
    };
    let mut c = connect_opts(server.addr, opts).await;
    assert_eq!(c.tx.fmt, Fmt::Msgpack);
    // Not MessagePack at all / truncated / not a map / positional array.
    for bytes in [
        vec![0xc1],
        vec![0x82, 0xa4],
        vec![0x2a],
        vec![0x92, 0xa4, b'p', b'i', b'n', b'g', 0xc0],
        vec![],
    ] {
        c.tx.send_binary(bytes.clone()).await;
        let v = c.recv().await;
        assert_error(&v, "bad_request", None);
        assert!(v["id"].is_null(), "{bytes:?} → {v}");
    }
    // A text frame on a MessagePack connection.
    c.tx.send_text(r#"{"type":"ping"}"#).await;
    assert_error(&c.recv().await, "bad_request", None);
    // Wrong field type and unknown type, with the id echoed.
    c.send(&json!({"type": "join", "room": 5, "id": "m1"}))
        .await;
    assert_error(&c.recv().await, "bad_request", Some("m1"));
    c.send(&json!({"type": "dance", "id": "m2"})).await;
    assert_error(&c.recv().await, "unknown_type", Some("m2"));
    c.send(&json!({"type": "join", "room": "a/b", "id": "m3"}))
        .await;
    assert_error(&c.recv().await, "invalid_room", Some("m3"));
    still_open(&mut c).await;

    // A binary frame on a JSON connection.
    let mut j = connect(server.addr, "js").await;
    j.tx.send_binary(rmp_serde::to_vec_named(&json!({"type": "ping"})).unwrap())
        .await;
    assert_error(&j.recv().await, "bad_request", None);
    still_open(&mut j).await;
    assert_alive(server.addr).await;
}

#[tokio::test]
async fn invalid_utf8_text_frame_closes_1007() {
    let server = start(config()).await;
    let mut raw = Raw::connect(server.addr, "/ws?user=raw").await;
    assert_eq!(ty(&raw.recv_json().await), "connected");
    raw.send_frame(
        true,
        OP_TEXT,
        b"{\"type\":\"ping\",\"x\":\"\xff\xfe\"}",
        true,
    )
    .await
    .unwrap();
    assert_eq!(raw.expect_close().await, 1007);
    assert_alive(server.addr).await;

    // Invalid UTF-8 only visible once fragments are joined: a sequence cut
    // short at the end of the message.
    let mut raw = Raw::connect(server.addr, "/ws?user=raw2").await;
    assert_eq!(ty(&raw.recv_json().await), "connected");
    raw.send_frame(false, OP_TEXT, b"{\"type\":\"ping\"}", true)
        .await
        .unwrap();
    raw.send_frame(true, OP_CONT, b"\xc3", true).await.unwrap();
    assert_eq!(raw.expect_close().await, 1007);
    assert_alive(server.addr).await;
}

#[tokio::test]
async fn unmasked_frame_closes_1002() {
    let server = start(config()).await;
    let mut raw = Raw::connect(server.addr, "/ws?user=raw").await;
    assert_eq!(ty(&raw.recv_json().await), "connected");
    raw.send_frame(true, OP_TEXT, br#"{"type":"ping"}"#, false)
        .await
        .unwrap();
    assert_eq!(raw.expect_close().await, 1002);
    assert_alive(server.addr).await;
}

#[tokio::test]
async fn other_protocol_violations_close_1002() {
    let server = start(config()).await;
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "continuation without a start",
            vec![Raw::encode(true, OP_CONT, b"x", true)],
        ),
        (
            "new text frame inside a fragmented message",
            vec![
                Raw::encode(false, OP_TEXT, b"{\"type\":", true),
                Raw::encode(true, OP_TEXT, b"\"ping\"}", true),
            ],
        ),
        ("reserved bit set", {
            let mut f = Raw::encode(true, OP_TEXT, br#"{"type":"ping"}"#, true);
            f[0] |= 0x40;
            vec![f]
        }),
        ("reserved opcode", vec![Raw::encode(true, 0x3, b"x", true)]),
        (
            "fragmented ping",
            vec![Raw::encode(false, OP_PING, b"x", true)],
        ),
        (
            "ping over 125 bytes",
            vec![Raw::encode(true, OP_PING, &[b'p'; 126], true)],
        ),
    ];
    for (what, frames) in cases {
        let mut raw = Raw::connect(server.addr, "/ws?user=raw").await;
        assert_eq!(ty(&raw.recv_json().await), "connected");
        for f in frames {
            let _ = tokio::io::AsyncWriteExt::write_all(&mut raw.stream, &f).await;
        }
        let code = raw.expect_close().await;
        assert_eq!(code, 1002, "{what}: expected close 1002, got {code}");
    }
    assert_alive(server.addr).await;
}

#[tokio::test]
async fn fragmented_message_is_reassembled() {
    let server = start(config()).await;
    let mut raw = Raw::connect(server.addr, "/ws?user=frag").await;
    assert_eq!(ty(&raw.recv_json().await), "connected");
    // A join split into three frames.
    raw.send_frame(false, OP_TEXT, br#"{"type":"jo"#, true)
        .await
        .unwrap();
    raw.send_frame(false, OP_CONT, br#"in","room":"#, true)
        .await
        .unwrap();
    raw.send_frame(true, OP_CONT, br#""lobby"}"#, true)
        .await
        .unwrap();
    let v = raw.recv_json().await;
    assert_eq!(ty(&v), "joined", "{v}");
    assert_eq!(v["data"]["room"], "lobby");
    assert_eq!(ty(&raw.recv_json().await), "presence");
    assert_eq!(ty(&raw.recv_json().await), "history");

    // A message split mid-character ("é" = c3 a9), with a ping between
    // fragments (control frames may be interleaved): pong, then the message.
    let text =
        r#"{"type":"message","id":"f1","data":{"room":"lobby","content":"café"}}"#.as_bytes();
    let cut = text.iter().position(|&b| b == 0xc3).unwrap() + 1;
    raw.send_frame(false, OP_TEXT, &text[..cut], true)
        .await
        .unwrap();
    raw.send_frame(true, OP_PING, b"hello", true).await.unwrap();
    raw.send_frame(true, OP_CONT, &text[cut..], true)
        .await
        .unwrap();
    let pong = loop {
        let f = raw.read_frame().await.expect("open");
        if f.opcode == OP_PONG {
            break f;
        }
        assert_ne!(
            f.opcode, OP_TEXT,
            "pong must come before the message's frames"
        );
    };
    assert_eq!(pong.payload, b"hello", "pong echoes the ping's payload");
    let mut got = (false, false);
    while got != (true, true) {
        let v = raw.recv_json().await;
        match ty(&v) {
            "message" => {
                assert_eq!(v["data"]["content"], "café");
                got.0 = true;
            }
            "ack" => {
                assert_eq!(v["id"], "f1");
                got.1 = true;
            }
            _ => panic!("unexpected {v}"),
        }
    }

    // A fragmented MessagePack (binary) message.
    let mut mp = Raw::connect(server.addr, "/ws?user=mp&format=msgpack").await;
    let f = mp.read_frame().await.unwrap();
    assert_eq!(f.opcode, OP_BINARY);
    let bytes = rmp_serde::to_vec_named(&json!({"type": "ping"})).unwrap();
    mp.send_frame(false, OP_BINARY, &bytes[..3], true)
        .await
        .unwrap();
    mp.send_frame(true, OP_CONT, &bytes[3..], true)
        .await
        .unwrap();
    let f = mp.read_frame().await.unwrap();
    let v: Value = rmp_serde::from_slice(&f.payload).unwrap();
    assert_eq!(ty(&v), "pong");
}

#[tokio::test]
async fn client_close_is_echoed() {
    let server = start(config()).await;
    let mut raw = Raw::connect(server.addr, "/ws?user=bye").await;
    assert_eq!(ty(&raw.recv_json().await), "connected");
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    raw.send_frame(true, OP_CLOSE, &payload, true)
        .await
        .unwrap();
    assert_eq!(raw.expect_close().await, 1000);
    assert_eq!(
        raw.read_to_end().await,
        None,
        "nothing after the close frame"
    );

    // An invalid close code is a protocol error.
    let mut raw = Raw::connect(server.addr, "/ws?user=bye2").await;
    assert_eq!(ty(&raw.recv_json().await), "connected");
    raw.send_frame(true, OP_CLOSE, &999u16.to_be_bytes(), true)
        .await
        .unwrap();
    assert_eq!(raw.expect_close().await, 1002);
    assert_alive(server.addr).await;
}

#[tokio::test]
async fn garbage_instead_of_a_handshake_does_not_hurt() {
    let server = start(config()).await;
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, b"\x16\x03\x01garbage\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(
        TIMEOUT,
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf),
    )
    .await
    .expect("server answers or closes");
    // A plain GET to /ws without upgrade headers is not a WebSocket.
    let r = get(server.addr, "/ws").await;
    assert!(r.status >= 400, "{}", r.status);
    assert_alive(server.addr).await;
}
