//! The HTTP API on the WebSocket port (PROTOCOL.md §7).

mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn healthz_is_ok() {
    let server = start(config()).await;
    let r = get(server.addr, "/healthz").await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    assert_eq!(r.json(), json!({"status": "ok"}));
}

#[tokio::test]
async fn root_serves_the_web_client_and_unknown_paths_are_404() {
    let server = start(config()).await;
    let r = get(server.addr, "/").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "{:?}",
        r.headers
    );
    assert!(r.text().to_ascii_lowercase().contains("<html"), "not HTML");

    let r = get(server.addr, "/no/such/thing").await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]["code"].is_string(), "{}", r.text());
    assert!(r.json()["error"]["message"].is_string(), "{}", r.text());
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let server = start(config()).await;
    let mut a = connect(server.addr, "ann").await;
    a.join("r").await;
    a.publish_and_copy("r", "one", "1").await;
    a.publish_and_copy("r", "two", "2").await;
    let r = get(server.addr, "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain")));
    let text = r.text();
    for name in [
        "parlor_connections",
        "parlor_connections_total",
        "parlor_messages_in_total",
        "parlor_messages_stored_total",
        "parlor_deliveries_total",
        "parlor_joins_total",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# TYPE {name} "))),
            "no {name} in:\n{text}"
        );
    }
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no sample of {name}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(value("parlor_connections"), 1.0);
    assert_eq!(value("parlor_messages_in_total"), 2.0);
    assert_eq!(value("parlor_messages_stored_total"), 2.0);
    assert_eq!(value("parlor_joins_total"), 1.0);
}

#[tokio::test]
async fn rooms_lists_last_members_connections() {
    let server = start(config()).await;
    let r = get(server.addr, "/api/rooms").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"rooms": [], "next": null}));

    let mut a1 = connect(server.addr, "ann").await;
    let mut a2 = connect(server.addr, "ann").await;
    let mut b = connect(server.addr, "bob").await;
    a1.join("alpha").await;
    a2.join("alpha").await;
    b.join("alpha").await;
    a1.publish_and_copy("alpha", "1", "1").await;
    a1.publish_and_copy("alpha", "2", "2").await;
    b.join("joined-only").await;
    let p = post_json(
        server.addr,
        "/api/rooms/posted/messages",
        &json!({"user": "http", "content": "x"}),
    )
    .await;
    assert_eq!(p.status, 201);

    let rooms = get(server.addr, "/api/rooms").await.json();
    let find = |name: &str| -> Value {
        rooms["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["room"] == name)
            .unwrap_or_else(|| panic!("{name} not listed in {rooms}"))
            .clone()
    };
    assert_eq!(
        find("alpha"),
        json!({"room": "alpha", "last": 2, "members": 2, "connections": 3})
    );
    assert_eq!(
        find("joined-only"),
        json!({"room": "joined-only", "last": 0, "members": 1, "connections": 1})
    );
    assert_eq!(
        find("posted"),
        json!({"room": "posted", "last": 1, "members": 0, "connections": 0})
    );
    assert_eq!(rooms["rooms"].as_array().unwrap().len(), 3, "{rooms}");

    b.send(&leave("joined-only")).await;
    b.rx.recv_until("left").await;
    let rooms = get(server.addr, "/api/rooms").await.json();
    let jo = rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room"] == "joined-only")
        .cloned();
    if let Some(jo) = jo {
        assert_eq!(jo["members"], 0);
        assert_eq!(jo["connections"], 0);
    }
}

#[tokio::test]
async fn history_over_http_pages_with_since_and_limit() {
    let server = start(config()).await;
    let mut a = connect(server.addr, "ann").await;
    a.join("r").await;
    for i in 1..=5 {
        a.publish_and_copy("r", &format!("m{i}"), &format!("{i}"))
            .await;
    }
    let seqs = |v: &Value| -> Vec<u64> {
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["sequence"].as_u64().unwrap())
            .collect()
    };
    let r = get(server.addr, "/api/rooms/r/messages").await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["room"], "r");
    assert_eq!(seqs(&v), [1, 2, 3, 4, 5]);
    assert_eq!(v["more"], false);
    let m = &v["messages"][0];
    for key in ["id", "room", "user", "content", "sequence", "timestamp"] {
        assert!(m.get(key).is_some(), "history entry lacks {key}: {m}");
    }
    assert_eq!(m["user"], "ann");
    assert_eq!(m["content"], "m1");

    // The same entries as the WebSocket history.
    a.send(&json!({"type": "history", "room": "r"})).await;
    let ws = a.recv_until("history").await;
    assert_eq!(ws["data"]["messages"], v["messages"]);

    let v = get(server.addr, "/api/rooms/r/messages?since=1&limit=2")
        .await
        .json();
    assert_eq!((seqs(&v), v["more"].clone()), (vec![2, 3], json!(true)));
    let v = get(server.addr, "/api/rooms/r/messages?since=3&limit=2")
        .await
        .json();
    assert_eq!((seqs(&v), v["more"].clone()), (vec![4, 5], json!(false)));
    let v = get(server.addr, "/api/rooms/r/messages?since=5")
        .await
        .json();
    assert_eq!((seqs(&v), v["more"].clone()), (vec![], json!(false)));
    let v = get(server.addr, "/api/rooms/r/messages?limit=5000")
        .await
        .json();
    assert_eq!(seqs(&v).len(), 5);

    // A valid room with no messages: empty list, not an error.
    let r = get(server.addr, "/api/rooms/nothing-here/messages").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"room": "nothing-here", "messages": [], "more": false})
    );

    for bad in ["since=-1", "since=x", "limit=abc"] {
        let r = get(server.addr, &format!("/api/rooms/r/messages?{bad}")).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "bad_request", "{bad}");
    }
}

#[tokio::test]
async fn post_publishes_to_the_room() {
    let server = start(config()).await;
    let mut a = connect(server.addr, "ann").await;
    a.join("r").await;

    let r = post_json(
        server.addr,
        "/api/rooms/r/messages",
        &json!({"user": "bot", "content": "hello"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json(), json!({"sequence": 1}));
    let v = a.recv_until("message").await;
    assert_eq!(v["data"]["user"], "bot");
    assert_eq!(v["data"]["content"], "hello");
    assert_eq!(v["data"]["room"], "r");
    assert_eq!(v["data"]["sequence"], 1);

    // With an id: a retry gets the original sequence, one copy.
    let body = json!({"user": "bot", "content": "once", "id": "h-1"});
    let r1 = post_json(server.addr, "/api/rooms/r/messages", &body).await;
    let r2 = post_json(server.addr, "/api/rooms/r/messages", &body).await;
    assert_eq!(r1.status, 201);
    assert_eq!(r2.status, 201);
    assert_eq!(r1.json()["sequence"], 2);
    assert_eq!(r2.json()["sequence"], 2, "retry with the same id");
    let r3 = post_json(
        server.addr,
        "/api/rooms/r/messages",
        &json!({"user": "bot", "content": "next"}),
    )
    .await;
    assert_eq!(r3.json()["sequence"], 3);
    let v = a.recv_until("message").await;
    assert_eq!((seq(&v), v["data"]["content"].clone()), (2, json!("once")));
    let v = a.recv_until("message").await;
    assert_eq!((seq(&v), v["data"]["content"].clone()), (3, json!("next")));

    // A message sent over WebSocket and retried over HTTP (same user, room
    // and id) is the same message.
    let (s, _) = a.publish_and_copy("r", "ws first", "x-1").await;
    assert_eq!(s, 4);
    let r = post_json(
        server.addr,
        "/api/rooms/r/messages",
        &json!({"user": "ann", "content": "ws first", "id": "x-1"}),
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["sequence"], 4);
    // Same id from another user is another message.
    let r = post_json(
        server.addr,
        "/api/rooms/r/messages",
        &json!({"user": "bot", "content": "b", "id": "x-1"}),
    )
    .await;
    assert_eq!(r.json()["sequence"], 5);
    let v = a.recv_until("message").await;
    assert_eq!((seq(&v), v["data"]["user"].clone()), (5, json!("bot")));

    // A MessagePack member gets HTTP-posted messages as MessagePack.
    let mut m = connect_opts(
        server.addr,
        Opts {
            user: Some("mia".into()),
            format_query: Some("msgpack".into()),
            ..Opts::default()
        },
    )
    .await;
    m.join("r").await;
    let r = post_json(
        server.addr,
        "/api/rooms/r/messages",
        &json!({"user": "bot", "content": "to mp"}),
    )
    .await;
    assert_eq!(r.json()["sequence"], 6);
    loop {
        let (v, binary) = m.rx.recv_any().await;
        if ty(&v) == "message" {
            assert!(binary);
            assert_eq!(v["data"]["content"], "to mp");
            break;
        }
    }
}

#[tokio::test]
async fn api_errors_are_json_with_fitting_status() {
    let mut cfg = config();
    cfg.max_content_bytes = 10;
    let server = start(cfg).await;
    let check = |r: &HttpResponse, status: u16, code: &str| {
        assert_eq!(r.status, status, "{}", r.text());
        let v = r.json();
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    };
    let ok = json!({"user": "u", "content": "x"});
    for room in [
        "..",
        ".hidden",
        &"x".repeat(65),
        "a%20b",
        "%2E%2E%2Fx",
        "a/b",
        "",
        "../x",
    ] {
        check(
            &post_json(server.addr, &format!("/api/rooms/{room}/messages"), &ok).await,
            400,
            "invalid_room",
        );
        check(
            &get(server.addr, &format!("/api/rooms/{room}/messages")).await,
            400,
            "invalid_room",
        );
    }
    let path = "/api/rooms/r/messages";
    let post = |body: &'static [u8]| {
        http(
            server.addr,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            Some(body),
        )
    };
    check(&post(b"not json").await, 400, "bad_request");
    check(&post(br#"{"content":"x"}"#).await, 400, "bad_request");
    check(&post(br#"{"user":"u"}"#).await, 400, "bad_request");
    check(
        &post(br#"{"user":5,"content":"x"}"#).await,
        400,
        "bad_request",
    );
    check(
        &post(br#"{"user":"","content":"x"}"#).await,
        400,
        "bad_request",
    );
    check(
        &post(br#"{"user":"u","content":"x","id":7}"#).await,
        400,
        "bad_request",
    );
    check(
        &post(br#"{"user":"u","content":"01234567890"}"#).await,
        413,
        "too_large",
    );
    // Nothing was stored by the refused requests.
    let v = get(server.addr, path).await.json();
    assert_eq!(v["messages"], json!([]));
}

#[tokio::test]
async fn rooms_come_in_pages_that_walk_every_room_once() {
    let server = start(config()).await;
    let addr = server.addr;
    for room in ["r1", "r2", "r3", "r4", "r5"] {
        let body = json!({"user": "ann", "content": "hi"});
        let path = format!("/api/rooms/{room}/messages");
        assert_eq!(post_json(addr, &path, &body).await.status, 201);
    }
    // Loaded but never written to: listed among the stored ones, in order.
    let mut b = connect(addr, "bob").await;
    b.join("r3x").await;

    let mut seen = Vec::new();
    let mut path = "/api/rooms?limit=2".to_string();
    let mut pages = 0;
    loop {
        let page = get(addr, &path).await;
        assert_eq!(page.status, 200, "{}", page.text());
        let page = page.json();
        let rooms = page["rooms"].as_array().unwrap();
        assert!(rooms.len() <= 2, "{page}");
        seen.extend(rooms.iter().map(|r| r["room"].as_str().unwrap().to_owned()));
        pages += 1;
        match page["next"].as_str() {
            Some(next) => path = format!("/api/rooms?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, ["r1", "r2", "r3", "r3x", "r4", "r5"]);
    assert_eq!(pages, 3);

    // Without `limit`, a page holds up to 100; past the last room, none.
    let all = get(addr, "/api/rooms").await.json();
    assert_eq!(all["rooms"].as_array().unwrap().len(), 6);
    assert_eq!(all["next"], Value::Null);
    let past = get(addr, "/api/rooms?after=zz").await.json();
    assert_eq!(past, json!({"rooms": [], "next": null}));

    let bad = get(addr, "/api/rooms?after=../etc").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["code"], "invalid_room");
    let bad = get(addr, "/api/rooms?limit=-1").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["code"], "bad_request");
}
