//! Formats and negotiation (PROTOCOL.md §1): JSON text frames and
//! MessagePack binary maps carry the same fields; subprotocols are echoed;
//! `?format=` works without a subprotocol.

mod common;

use common::*;
use serde_json::{json, Value};

fn mp_opts(user: &str) -> Opts {
    Opts {
        user: Some(user.into()),
        subprotocols: vec!["parlor.v1.msgpack".into()],
        ..Opts::default()
    }
}

/// Next frame that is not a heartbeat, with its kind; asserts the kind.
async fn recv_kind(c: &mut Client, binary: bool) -> Value {
    loop {
        let (v, is_binary) = c.rx.recv_any().await;
        if ty(&v) == "heartbeat" {
            continue;
        }
        assert_eq!(
            is_binary,
            binary,
            "frame kind for {}: {v}",
            if binary { "msgpack" } else { "json" }
        );
        if ty(&v) != "presence_diff" {
            return v;
        }
    }
}

#[tokio::test]
async fn msgpack_and_json_members_see_the_same_messages() {
    let server = start(config()).await;
    let mut j = connect(server.addr, "jay").await;
    let mut m = connect_opts(server.addr, mp_opts("mia")).await;
    assert_eq!(m.protocol.as_deref(), Some("parlor.v1.msgpack"));
    let connected = m.connected.as_ref().unwrap();
    assert_eq!(connected["data"]["format"], "msgpack");
    assert_eq!(connected["data"]["user"], "mia");
    assert!(connected["data"]["heartbeatMs"].is_u64());

    j.join("r").await;
    m.send(&join("r")).await;
    let joined_m = recv_kind(&mut m, true).await;
    assert_eq!(ty(&joined_m), "joined");
    assert_eq!(recv_kind(&mut m, true).await["data"]["count"], 2);
    assert_eq!(ty(&recv_kind(&mut m, true).await), "history");

    // Each side publishes; both see identical frames.
    m.send(&msg_id("r", "from msgpack ünïcode", "m1")).await;
    let mut from_m = None;
    let mut ack = None;
    while from_m.is_none() || ack.is_none() {
        let v = recv_kind(&mut m, true).await;
        match ty(&v) {
            "message" => from_m = Some(v),
            "ack" => ack = Some(v),
            _ => panic!("unexpected {v}"),
        }
    }
    assert_eq!(
        ack.unwrap(),
        json!({"type": "ack", "id": "m1", "data": {"room": "r", "sequence": 1}})
    );
    let from_m = from_m.unwrap();
    let j_view = recv_kind(&mut j, false).await;
    assert_eq!(
        j_view, from_m,
        "JSON and MessagePack members see the same message"
    );
    assert_eq!(from_m["data"]["user"], "mia");
    assert_eq!(from_m["data"]["content"], "from msgpack ünïcode");

    j.send(&msg("r", "from json")).await;
    let j_view = recv_kind(&mut j, false).await;
    let m_view = recv_kind(&mut m, true).await;
    assert_eq!(j_view, m_view);
    assert_eq!(m_view["data"]["sequence"], 2);
    for key in ["id", "room", "user", "content", "sequence", "timestamp"] {
        assert!(
            m_view["data"].get(key).is_some(),
            "msgpack message lacks {key}: {m_view}"
        );
    }

    // History, presence and errors match too.
    let h = json!({"type": "history", "room": "r"});
    j.send(&h).await;
    m.send(&h).await;
    assert_eq!(
        recv_kind(&mut j, false).await,
        recv_kind(&mut m, true).await
    );
    let e = json!({"type": "leave", "room": "nope", "id": "e1"});
    j.send(&e).await;
    m.send(&e).await;
    let (ej, em) = (
        recv_kind(&mut j, false).await,
        recv_kind(&mut m, true).await,
    );
    assert_eq!(ej, em);
    assert_error(&em, "not_joined", Some("e1"));
    m.send(&json!({"type": "ping"})).await;
    assert_eq!(recv_kind(&mut m, true).await, json!({"type": "pong"}));
}

#[tokio::test]
async fn subprotocol_is_echoed_in_the_101() {
    let server = start(config()).await;
    for (offer, chosen, format) in [
        (vec!["parlor.v1.json"], "parlor.v1.json", "json"),
        (vec!["parlor.v1.msgpack"], "parlor.v1.msgpack", "msgpack"),
        (
            vec!["chat.v9", "parlor.v1.msgpack"],
            "parlor.v1.msgpack",
            "msgpack",
        ),
        (
            vec!["parlor.v1.msgpack", "parlor.v1.json"],
            "parlor.v1.msgpack",
            "msgpack",
        ),
        (
            vec!["parlor.v1.json", "parlor.v1.msgpack"],
            "parlor.v1.json",
            "json",
        ),
    ] {
        let opts = Opts {
            user: Some("u".into()),
            subprotocols: offer.iter().map(|s| s.to_string()).collect(),
            ..Opts::default()
        };
        let c = connect_opts(server.addr, opts).await;
        assert_eq!(c.protocol.as_deref(), Some(chosen), "offered {offer:?}");
        assert_eq!(
            c.connected.as_ref().unwrap()["data"]["format"],
            format,
            "offered {offer:?}"
        );
    }

    // A subprotocol wins over ?format=.
    let opts = Opts {
        user: Some("u".into()),
        subprotocols: vec!["parlor.v1.json".into()],
        format_query: Some("msgpack".into()),
        ..Opts::default()
    };
    let c = connect_opts(server.addr, opts).await;
    assert_eq!(c.connected.as_ref().unwrap()["data"]["format"], "json");

    // Nothing supported offered: no header in the 101, JSON.
    let mut raw = Raw::connect_with(
        server.addr,
        "/ws?user=u",
        &[("Sec-WebSocket-Protocol", "chat.v9")],
    )
    .await;
    assert!(
        !raw.response
            .to_ascii_lowercase()
            .contains("sec-websocket-protocol"),
        "{}",
        raw.response
    );
    let v = raw.recv_json().await;
    assert_eq!(v["data"]["format"], "json");

    // Two header lines are one list.
    let mut raw = Raw::connect_with(
        server.addr,
        "/ws?user=u",
        &[
            ("Sec-WebSocket-Protocol", "chat.v9"),
            ("Sec-WebSocket-Protocol", "parlor.v1.msgpack"),
        ],
    )
    .await;
    assert!(
        raw.response
            .to_ascii_lowercase()
            .contains("sec-websocket-protocol: parlor.v1.msgpack"),
        "{}",
        raw.response
    );
    let f = raw.read_frame().await.unwrap();
    assert_eq!(f.opcode, OP_BINARY);
}

#[tokio::test]
async fn format_query_msgpack_works_without_subprotocol() {
    let server = start(config()).await;
    let opts = Opts {
        user: Some("qm".into()),
        format_query: Some("msgpack".into()),
        ..Opts::default()
    };
    let mut m = connect_opts(server.addr, opts).await;
    assert_eq!(m.protocol, None, "no subprotocol offered, none echoed");
    assert_eq!(m.connected.as_ref().unwrap()["data"]["format"], "msgpack");
    m.send(&join("r")).await;
    assert_eq!(ty(&recv_kind(&mut m, true).await), "joined");
    assert_eq!(ty(&recv_kind(&mut m, true).await), "presence");
    assert_eq!(ty(&recv_kind(&mut m, true).await), "history");
    m.send(&msg_id("r", "hi", "q1")).await;
    let mut got = 0;
    while got < 2 {
        let v = recv_kind(&mut m, true).await;
        assert!(matches!(ty(&v), "message" | "ack"), "{v}");
        got += 1;
    }

    // ?format=json explicitly, and on the bare path.
    let opts = Opts {
        path: Some("/".into()),
        format_query: Some("json".into()),
        ..Opts::default()
    };
    let c = connect_opts(server.addr, opts).await;
    assert_eq!(c.connected.as_ref().unwrap()["data"]["format"], "json");
    let opts = Opts {
        path: Some("/".into()),
        format_query: Some("msgpack".into()),
        ..Opts::default()
    };
    let c = connect_opts(server.addr, opts).await;
    assert_eq!(c.connected.as_ref().unwrap()["data"]["format"], "msgpack");
}

#[tokio::test]
async fn heartbeat_in_msgpack_is_a_binary_map() {
    let mut cfg = config();
    cfg.heartbeat_ms = 200;
    let server = start(cfg).await;
    let mut m = connect_opts(server.addr, mp_opts("hb")).await;
    let (v, binary) = m.rx.recv_any().await;
    assert!(binary);
    assert_eq!(v, json!({"type": "heartbeat"}));
}
