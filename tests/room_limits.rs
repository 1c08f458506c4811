//! Rooms as a resource: creating them is paced per connection (and per
//! user over HTTP) and capped
//! per server, and a room whose whole log is past age retention — and that
//! nobody is in — is deleted, so the next use of its name starts a new log.
//! (Found from outside: four anonymous connections created ≈ 2 000 durable
//! rooms a second, and rooms were never deleted.)

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn cfg() -> Config {
    let mut cfg = config();
    cfg.request_rate_per_sec = 1e6;
    cfg.request_burst = 1e6;
    cfg
}

async fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    let text = get(addr, "/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

#[tokio::test]
async fn a_connection_may_create_only_so_many_rooms_a_minute() {
    let mut cfg = cfg();
    cfg.room_creations_per_min = 2.0;
    let server = start(cfg).await;
    let mut c = connect(server.addr, "ann").await;
    for room in ["new-1", "new-2", "new-3"] {
        c.join(room).await;
    }
    assert_eq!(c.publish("new-1", "a", "1").await, 1);
    assert_eq!(c.publish("new-2", "b", "2").await, 1);
    c.send(&msg_id("new-3", "c", "3")).await;
    assert_error(&c.rx.recv_skip_diffs().await, "rate_limited", Some("3"));
    // Rooms that exist take messages as always.
    assert_eq!(c.publish("new-1", "again", "4").await, 2);
    // Another connection has its own budget.
    let mut d = connect(server.addr, "bob").await;
    d.join("new-3").await;
    assert_eq!(d.publish("new-3", "c", "5").await, 1);
}

#[tokio::test]
async fn posting_over_http_creates_rooms_at_the_same_pace_per_user() {
    let mut cfg = cfg();
    cfg.room_creations_per_min = 2.0;
    let server = start(cfg).await;
    let addr = server.addr;
    let post = |room: &str, user: &str| {
        let body = json!({"user": user, "content": "hi"});
        let path = format!("/api/rooms/{room}/messages");
        async move { post_json(addr, &path, &body).await }
    };
    assert_eq!(post("h-1", "ann").await.status, 201);
    assert_eq!(post("h-2", "ann").await.status, 201);
    let r = post("h-3", "ann").await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "rate_limited");
    assert!(r.text().contains("new room"), "{}", r.text());
    // Existing rooms take messages as always; another user has a budget.
    assert_eq!(post("h-1", "ann").await.status, 201);
    assert_eq!(post("h-3", "bob").await.status, 201);
}

#[tokio::test]
async fn the_api_key_creates_rooms_without_a_pace() {
    let mut cfg = cfg();
    cfg.room_creations_per_min = 1.0;
    cfg.api_key = Some("k3y".into());
    let server = start(cfg).await;
    let key = [("Authorization", "Bearer k3y")];
    for i in 0..5 {
        let body = json!({"user": "feed", "content": "hi"}).to_string();
        let path = format!("/api/rooms/k-{i}/messages");
        let r = http(server.addr, "POST", &path, &key, Some(body.as_bytes())).await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
}

#[tokio::test]
async fn the_operator_caps_how_many_rooms_the_store_holds() {
    let mut cfg = cfg();
    cfg.max_rooms = 2;
    let server = start(cfg).await;
    for room in ["a", "b"] {
        let r = post_json(
            server.addr,
            &format!("/api/rooms/{room}/messages"),
            &json!({"user": "u", "content": "x"}),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let r = post_json(
        server.addr,
        "/api/rooms/c/messages",
        &json!({"user": "u", "content": "x"}),
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "rate_limited");
    // A room that exists still takes messages, and a new one can be joined.
    let r = post_json(
        server.addr,
        "/api/rooms/a/messages",
        &json!({"user": "u", "content": "y"}),
    )
    .await;
    assert_eq!(r.json()["sequence"], 2);
    let mut c = connect(server.addr, "ann").await;
    let (joined, _, _) = c.join("c").await;
    assert_eq!(joined["data"]["last"], 0);
}

#[tokio::test]
async fn a_room_past_retention_with_nobody_in_it_is_deleted() {
    let mut cfg = cfg();
    cfg.retain_age = Some(Duration::from_millis(1));
    cfg.retention_interval_ms = 20;
    let server = start(cfg).await;
    let addr = server.addr;
    let mut member = connect(addr, "ann").await;
    let (kept, _, _) = member.join("kept").await;
    member.publish("kept", "still here", "k").await;
    let body = json!({"user": "u", "content": "old news"});
    let r = post_json(addr, "/api/rooms/gone/messages", &body).await;
    assert_eq!(r.json()["sequence"], 1);
    let mut c = connect(addr, "bob").await;
    let (first, _, _) = c.join("gone").await;
    c.send(&leave("gone")).await;
    c.expect("left").await;

    eventually("the empty room to be deleted", || async {
        (metric(addr, "parlor_rooms_expired_total").await >= 1.0).then_some(())
    })
    .await;
    let listed = get(addr, "/api/rooms").await.json();
    let names: Vec<&str> = listed["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["room"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&"gone"), "{names:?}");
    let page = get(addr, "/api/rooms/gone/messages").await.json();
    assert_eq!(page["messages"], json!([]));
    // The name starts a new log, under a new epoch.
    let r = post_json(addr, "/api/rooms/gone/messages", &body).await;
    assert_eq!(r.json()["sequence"], 1);
    let (again, _, _) = c.join("gone").await;
    assert_ne!(again["data"]["epoch"], first["data"]["epoch"]);

    // A room someone is in keeps its log (retention keeps its newest message).
    let page = get(addr, "/api/rooms/kept/messages").await.json();
    assert_eq!(page["messages"][0]["content"], "still here");
    member.send(&join("kept")).await;
    let rejoined = member.rx.recv_until("joined").await;
    assert_eq!(rejoined["data"]["epoch"], kept["data"]["epoch"]);
}
