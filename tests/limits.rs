//! Limits and liveness (PROTOCOL.md §6): content size, rooms per
//! connection, message rate and 4029, message size (also fragmented) and
//! 1009, heartbeats and pings, dead connections.

mod common;

use common::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn content_over_the_limit_is_too_large() {
    let mut cfg = config();
    cfg.max_content_bytes = 100;
    let server = start(cfg).await;
    let mut a = connect(server.addr, "ann").await;
    a.join("r").await;

    a.send(&msg_id("r", &"x".repeat(101), "big")).await;
    assert_error(&a.recv().await, "too_large", Some("big"));
    // Counted in UTF-8 bytes: 51 × "é" is 102 bytes.
    a.send(&msg_id("r", &"é".repeat(51), "big2")).await;
    assert_error(&a.recv().await, "too_large", Some("big2"));
    // An error does not close the connection; exactly the limit is fine.
    let (s, m) = a.publish_and_copy("r", &"y".repeat(100), "ok").await;
    assert_eq!(s, 1, "refused messages take no sequence");
    assert_eq!(m["data"]["content"].as_str().unwrap().len(), 100);
    let (s, _) = a.publish_and_copy("r", &"é".repeat(50), "ok2").await;
    assert_eq!(s, 2);
}

#[tokio::test]
async fn rooms_per_connection_are_limited() {
    let mut cfg = config();
    cfg.max_rooms_per_conn = 3;
    let server = start(cfg).await;
    let mut a = connect(server.addr, "ann").await;
    for r in ["a", "b", "c"] {
        a.join(r).await;
    }
    a.send(&json!({"type": "join", "room": "d", "id": "j4"}))
        .await;
    assert_error(&a.rx.recv_skip_diffs().await, "rate_limited", Some("j4"));
    // Re-joining a room already joined is not a new room.
    a.send(&join("a")).await;
    assert_eq!(ty(&a.rx.recv_skip_diffs().await), "joined");
    // After a leave there is room for another.
    a.send(&leave("b")).await;
    assert_eq!(ty(&a.rx.recv_skip_diffs().await), "left");
    a.join("d").await;
    a.send(&json!({"type": "join", "room": "e", "id": "j5"}))
        .await;
    assert_error(&a.rx.recv_skip_diffs().await, "rate_limited", Some("j5"));
    // Another connection has its own allowance.
    let mut b = connect(server.addr, "bob").await;
    for r in ["a", "b", "e"] {
        b.join(r).await;
    }
}

#[tokio::test]
async fn message_rate_is_limited_then_4029_after_more_than_100_refusals() {
    let mut cfg = config();
    // Practically no refill during the test: burst 3, then refusals.
    cfg.rate_per_sec = 0.01;
    cfg.rate_burst = 3.0;
    let server = start(cfg).await;
    let mut a = connect(server.addr, "ann").await;
    a.join("r").await;
    for i in 1..=3 {
        a.publish_and_copy("r", &format!("m{i}"), &format!("m{i}"))
            .await;
    }
    a.send(&msg_id("r", "m4", "m4")).await;
    assert_error(&a.recv().await, "rate_limited", Some("m4"));

    // 100 refusals in all: still open.
    for i in 5..=103 {
        a.send(&msg_id("r", &format!("m{i}"), &format!("m{i}")))
            .await;
    }
    a.send(&json!({"type": "ping"})).await;
    let mut refused = 1;
    loop {
        let v = a.recv().await;
        match ty(&v) {
            "error" => {
                assert_eq!(v["data"]["code"], "rate_limited", "{v}");
                refused += 1;
            }
            "pong" => break,
            _ => panic!("unexpected {v}"),
        }
    }
    assert_eq!(refused, 100);
    // Other requests are not rate limited.
    a.send(&json!({"type": "history", "room": "r"})).await;
    assert_eq!(
        a.recv().await["data"]["messages"].as_array().unwrap().len(),
        3
    );

    // The 101st refusal within 10 s closes with 4029.
    a.send(&msg_id("r", "m104", "m104")).await;
    assert_eq!(a.expect_close().await, 4029);

    // Refused messages were dropped, not stored.
    let h = get(server.addr, "/api/rooms/r/messages").await.json();
    assert_eq!(h["messages"].as_array().unwrap().len(), 3, "{h}");
    assert_alive(server.addr).await;
}

#[tokio::test]
async fn message_over_max_frame_bytes_closes_1009() {
    let mut cfg = config();
    cfg.max_frame_bytes = 1024;
    let server = start(cfg).await;

    // Exactly the limit is accepted.
    let mut a = connect(server.addr, "ann").await;
    a.join("r").await;
    let skeleton = msg_id("r", "", "exact").to_string();
    let content = "z".repeat(1024 - skeleton.len());
    let frame = msg_id("r", &content, "exact").to_string();
    assert_eq!(frame.len(), 1024);
    a.tx.send_text(&frame).await;
    let v = a.recv_until("ack").await;
    assert_eq!(v["id"], "exact");

    // One byte more: close 1009.
    let frame = msg_id("r", &format!("{content}z"), "exacT").to_string();
    assert_eq!(frame.len(), 1025);
    a.tx.send_text(&frame).await;
    assert_eq!(a.expect_close().await, 1009);

    // A binary (msgpack) frame over the limit, too.
    let mut m = connect_opts(
        server.addr,
        Opts {
            user: Some("mp".into()),
            format_query: Some("msgpack".into()),
            ..Opts::default()
        },
    )
    .await;
    m.tx.send_raw(Message::binary(vec![0x80u8; 1025]))
        .await
        .unwrap();
    assert_eq!(m.expect_close().await, 1009);
    assert_alive(server.addr).await;
}

#[tokio::test]
async fn fragmented_message_over_the_limit_closes_1009() {
    let mut cfg = config();
    cfg.max_frame_bytes = 1024;
    let server = start(cfg).await;

    // Fragments under the limit that add up to exactly the limit: accepted.
    let mut ok = Raw::connect(server.addr, "/ws?user=frag").await;
    assert_eq!(ty(&ok.recv_json().await), "connected");
    let text = format!(r#"{{"type":"ping","pad":"{}"}}"#, "p".repeat(1024 - 24));
    assert_eq!(text.len(), 1024);
    let b = text.as_bytes();
    ok.send_frame(false, OP_TEXT, &b[..400], true)
        .await
        .unwrap();
    ok.send_frame(false, OP_CONT, &b[400..800], true)
        .await
        .unwrap();
    ok.send_frame(true, OP_CONT, &b[800..], true).await.unwrap();
    assert_eq!(ty(&ok.recv_json().await), "pong");

    // Three fragments of 500 bytes, each under the limit, 1500 in all.
    let mut raw = Raw::connect(server.addr, "/ws?user=frag2").await;
    assert_eq!(ty(&raw.recv_json().await), "connected");
    let chunk = vec![b' '; 500];
    raw.send_frame(false, OP_TEXT, &chunk, true).await.unwrap();
    raw.send_frame(false, OP_CONT, &chunk, true).await.unwrap();
    let _ = raw.send_frame(true, OP_CONT, &chunk, true).await;
    assert_eq!(raw.expect_close().await, 1009);
    assert_alive(server.addr).await;
}

#[tokio::test]
async fn heartbeat_frames_and_pings_arrive_every_interval() {
    let mut cfg = config();
    cfg.heartbeat_ms = 200;
    let server = start(cfg).await;

    // Application-level heartbeat frames (tungstenite answers the pings).
    let mut a = connect(server.addr, "ann").await;
    assert_eq!(a.connected.as_ref().unwrap()["data"]["heartbeatMs"], 200);
    let started = std::time::Instant::now();
    let mut beats = 0;
    while beats < 3 {
        let (v, _) = a.rx.recv_any().await;
        assert_eq!(
            ty(&v),
            "heartbeat",
            "idle connection gets only heartbeats: {v}"
        );
        assert_eq!(v, json!({"type": "heartbeat"}));
        beats += 1;
    }
    // Timers never fire early: 3 beats take at least ~3 intervals.
    assert!(started.elapsed() >= std::time::Duration::from_millis(500));

    // WebSocket pings besides; answering them keeps the connection alive
    // well past 2 × heartbeat.
    let mut raw = Raw::connect(server.addr, "/ws?user=raw").await;
    assert_eq!(ty(&raw.recv_json().await), "connected");
    let (mut pings, mut beats) = (0, 0);
    while pings < 5 || beats < 5 {
        let f = raw
            .read_frame()
            .await
            .expect("server must keep a live connection open");
        match f.opcode {
            OP_PING => {
                pings += 1;
                raw.send_frame(true, OP_PONG, &f.payload, true)
                    .await
                    .unwrap();
            }
            OP_TEXT => {
                let v: serde_json::Value = serde_json::from_slice(&f.payload).unwrap();
                assert_eq!(ty(&v), "heartbeat", "{v}");
                beats += 1;
            }
            OP_CLOSE => panic!(
                "a connection answering pings was closed: {:?}",
                f.close_code()
            ),
            op => panic!("unexpected opcode {op}"),
        }
    }
    raw.send_json(&json!({"type": "ping"})).await;
    assert_eq!(ty(&raw.recv_json().await), "pong");
}

#[tokio::test]
async fn silent_connection_is_dropped_and_leaves_presence() {
    let mut cfg = config();
    cfg.heartbeat_ms = 200;
    cfg.presence_window_ms = 20;
    let server = start(cfg).await;
    let mut a = connect(server.addr, "ann").await;
    a.join("r").await;

    // A raw client that joins, then never answers a ping nor sends anything.
    let mut silent = Raw::connect(server.addr, "/ws?user=ghost").await;
    assert_eq!(ty(&silent.recv_json().await), "connected");
    silent.send_json(&join("r")).await;
    assert_eq!(ty(&silent.recv_json().await), "joined");

    let diff = a.recv_until("presence_diff").await;
    assert_eq!(diff["data"]["joins"], json!(["ghost"]), "{diff}");
    // ann answers pings (tungstenite does while reading): only ghost goes.
    let diff = a.recv_until("presence_diff").await;
    assert_eq!(diff["data"]["room"], "r");
    assert_eq!(diff["data"]["leaves"], json!(["ghost"]), "{diff}");
    assert_eq!(diff["data"]["joins"], json!([]), "{diff}");
    a.send(&json!({"type": "presence", "room": "r"})).await;
    let p = a.recv_until("presence").await;
    assert_eq!(p["data"]["count"], 1);

    // The dead connection is closed: its socket ends.
    let _ = silent.read_to_end().await;
    assert_alive(server.addr).await;
}

/// Found from outside: one client asking `presence` of a 2 000-member room
/// as fast as it could read stalled every room of the shard. Requests that
/// cost a pass over a room (or a store read) are paced per connection, and
/// the snapshot is encoded once per presence window, not per request.
#[tokio::test]
async fn costly_requests_are_rate_limited_then_4029() {
    let mut cfg = config();
    cfg.request_rate_per_sec = 0.0;
    cfg.request_burst = 5.0;
    let server = start(cfg).await;
    let mut c = connect(server.addr, "ann").await;
    for i in 0..5 {
        c.send(&json!({"type": "presence", "room": "lobby", "id": format!("p{i}")}))
            .await;
        assert_eq!(ty(&c.recv().await), "presence");
    }
    for (i, req) in [
        json!({"type": "presence", "room": "lobby"}),
        json!({"type": "history", "room": "lobby"}),
        json!({"type": "join", "room": "lobby"}),
    ]
    .into_iter()
    .enumerate()
    {
        let mut req = req;
        req["id"] = json!(format!("x{i}"));
        c.send(&req).await;
        assert_error(&c.recv().await, "rate_limited", Some(&format!("x{i}")));
    }
    // Messages and pings have their own budget.
    c.send(&json!({"type": "ping"})).await;
    assert_eq!(ty(&c.recv().await), "pong");
    // Past 100 refusals within 10 s: closed with 4029.
    for _ in 0..100 {
        if c.tx
            .try_send(&json!({"type": "presence", "room": "lobby"}))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(c.expect_close().await, 4029);
}

/// Found from outside: a `history` page larger than `--outbox-bytes` hung
/// the session (it waited for room that could never exist) until the client
/// was dropped without a close frame. A page fits the outbox by
/// construction: it is cut by bytes as well as count, with `more: true`.
#[tokio::test]
async fn a_history_page_always_fits_the_outbox() {
    let mut cfg = config();
    cfg.outbox_bytes = 64 * 1024;
    cfg.history_on_join = 0;
    cfg.rate_per_sec = 1e6;
    cfg.rate_burst = 1e6;
    cfg.request_rate_per_sec = 1e6;
    cfg.request_burst = 1e6;
    let server = start(cfg).await;
    let big = "x".repeat(16_000);
    for i in 1..=30 {
        let body = json!({"user": "api", "content": format!("{i}{big}")});
        let r = post_json(server.addr, "/api/rooms/big/messages", &body).await;
        assert_eq!(r.json()["sequence"], i);
    }
    let mut c = connect(server.addr, "ann").await;
    let mut since = 0;
    let mut pages = 0;
    loop {
        c.send(&json!({"type": "history", "room": "big", "since": since, "limit": 1000}))
            .await;
        let page = c.expect("history").await;
        pages += 1;
        for m in page["data"]["messages"].as_array().unwrap() {
            assert_eq!(m["sequence"], since + 1, "pages continue where they stop");
            since += 1;
        }
        if page["data"]["more"] != true {
            break;
        }
    }
    assert_eq!(since, 30);
    assert!(
        pages > 1,
        "480 KB cannot come in one page through a 64 KiB outbox"
    );
}
