//! Store faults (PROTOCOL.md §4, §5): a failed append is answered with
//! `error internal`, nobody is shown the message, and the sequence stays
//! gapless. A panic in store code fails only the room it hit; it and failing
//! writes are counted and make `/healthz` answer 503 with the reason.

mod common;

use std::sync::atomic::Ordering;

use common::faulty::FaultyStore;
use common::*;
use serde_json::json;

#[tokio::test]
async fn failed_append_is_internal_unseen_and_leaves_no_gap() {
    let store = FaultyStore::new();
    let server = start_with_store(config(), store.clone()).await;
    let mut a = connect(server.addr, "ann").await;
    let mut b = connect(server.addr, "bob").await;
    a.join("r").await;
    b.join("r").await;

    let (s1, _) = a.publish_and_copy("r", "first", "m1").await;
    assert_eq!(s1, 1);

    store.fail_append.store(true, Ordering::SeqCst);
    a.send(&msg_id("r", "lost", "m2")).await;
    let v = a.rx.recv_skip_diffs().await;
    assert_error(&v, "internal", Some("m2"));

    // The next message takes the next sequence: no gap, no reuse shown.
    let (s3, copy) = a.publish_and_copy("r", "third", "m3").await;
    assert_eq!(s3, 2, "the failed message's sequence is taken back");
    assert_eq!(copy["data"]["content"], "third");

    // Nobody saw the failed message.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let v = b.rx.recv_until("message").await;
        seen.push((seq(&v), v["data"]["content"].as_str().unwrap().to_string()));
    }
    assert_eq!(
        seen,
        vec![(1, "first".to_string()), (2, "third".to_string())]
    );

    // The log agrees, and the failed id was not remembered: a retry of m2
    // is stored as a new message.
    let h = get(server.addr, "/api/rooms/r/messages").await.json();
    let contents: Vec<&str> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["first", "third"]);
    let (s4, _) = a.publish_and_copy("r", "lost", "m2").await;
    assert_eq!(s4, 3);

    // A joiner with since=0 replays exactly what was stored.
    let mut c = connect(server.addr, "cat").await;
    c.send(&json!({"type": "join", "room": "r", "since": 0}))
        .await;
    c.expect("joined").await;
    c.expect("presence").await;
    let mut replay = Vec::new();
    while replay.len() < 3 {
        let v = c.rx.recv_until("message").await;
        replay.push(v["data"]["content"].as_str().unwrap().to_string());
    }
    assert_eq!(replay, ["first", "third", "lost"]);
}

#[tokio::test]
async fn failed_append_over_http_is_500_internal() {
    let store = FaultyStore::new();
    let server = start_with_store(config(), store.clone()).await;
    let mut a = connect(server.addr, "ann").await;
    a.join("r").await;
    store.fail_append.store(true, Ordering::SeqCst);
    let r = post_json(
        server.addr,
        "/api/rooms/r/messages",
        &json!({"user": "u", "content": "x"}),
    )
    .await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "internal");
    let r = post_json(
        server.addr,
        "/api/rooms/r/messages",
        &json!({"user": "u", "content": "y"}),
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["sequence"], 1);
    let v = a.recv_until("message").await;
    assert_eq!((seq(&v), v["data"]["content"].clone()), (1, json!("y")));
}

#[tokio::test]
async fn failed_room_open_refuses_the_join_with_internal() {
    let store = FaultyStore::new();
    let server = start_with_store(config(), store.clone()).await;
    let mut a = connect(server.addr, "ann").await;
    store.fail_load.store(true, Ordering::SeqCst);
    a.send(&json!({"type": "join", "room": "r", "id": "j1"}))
        .await;
    assert_error(&a.recv().await, "internal", Some("j1"));
    // Not joined: sending is refused; a retried join works.
    a.send(&msg_id("r", "x", "m1")).await;
    assert_error(&a.recv().await, "not_joined", Some("m1"));
    let (joined, _, _) = a.join("r").await;
    assert_eq!(joined["data"]["last"], 0);
    assert_eq!(a.publish_and_copy("r", "ok", "m2").await.0, 1);
}

async fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    let text = get(addr, "/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

#[tokio::test]
async fn a_store_panic_fails_only_its_room_and_is_counted_and_reported() {
    let store = FaultyStore::new();
    let mut cfg = config();
    cfg.shards = Some(1); // every room on the one shard the panic hits
    let server = start_with_store(cfg, store.clone()).await;
    *store.panic_load.lock().unwrap() = Some(parlor::protocol::RoomName::parse("doomed").unwrap());
    assert_eq!(get(server.addr, "/healthz").await.status, 200);

    let mut a = connect(server.addr, "ann").await;
    for id in ["j1", "j2"] {
        a.send(&json!({"type": "join", "room": "doomed", "id": id}))
            .await;
        assert_error(&a.recv().await, "internal", Some(id));
    }
    // The shard lives on: another room on it works.
    a.join("fine").await;
    assert_eq!(a.publish_and_copy("fine", "ok", "m1").await.0, 1);
    assert_alive(server.addr).await;

    assert_eq!(metric(server.addr, "parlor_store_panics_total").await, 2.0);
    assert_eq!(metric(server.addr, "parlor_store_errors_total").await, 2.0);
    assert_eq!(metric(server.addr, "parlor_store_damaged").await, 1.0);
    let health = get(server.addr, "/healthz").await;
    assert_eq!(health.status, 503, "{}", health.text());
    let body = health.json();
    assert_eq!(body["status"], "unhealthy");
    let reason = body["reason"].as_str().unwrap();
    assert!(
        reason.contains("damaged") && reason.contains("load_room of room doomed"),
        "{reason}"
    );
    assert!(body["store"]["writes_failing"].is_null(), "{body}");
}

#[tokio::test]
async fn failing_writes_make_healthz_503_until_a_write_works() {
    let store = FaultyStore::new();
    let server = start_with_store(config(), store.clone()).await;
    let mut a = connect(server.addr, "ann").await;
    a.join("r").await;
    store.failing_writes.store(true, Ordering::SeqCst);
    a.send(&msg_id("r", "lost", "m1")).await;
    assert_error(&a.rx.recv_skip_diffs().await, "internal", Some("m1"));

    let health = get(server.addr, "/healthz").await;
    assert_eq!(health.status, 503, "{}", health.text());
    let body = health.json();
    let failing = body["store"]["writes_failing"].as_str().unwrap();
    assert!(failing.contains("No space left on device"), "{failing}");
    assert!(body["store"]["damaged"].is_null(), "{body}");
    assert_eq!(
        metric(server.addr, "parlor_store_writes_failing").await,
        1.0
    );
    // Still failing: the background probe keeps it so.
    a.send(&msg_id("r", "lost too", "m2")).await;
    assert_error(&a.rx.recv_skip_diffs().await, "internal", Some("m2"));
    assert_eq!(get(server.addr, "/healthz").await.status, 503);

    // Space is back: with no traffic, the probe makes it healthy again.
    store.failing_writes.store(false, Ordering::SeqCst);
    eventually("healthz 200 again", || async {
        (get(server.addr, "/healthz").await.status == 200).then_some(())
    })
    .await;
    assert_eq!(
        metric(server.addr, "parlor_store_writes_failing").await,
        0.0
    );
    assert_eq!(a.publish_and_copy("r", "stored", "m3").await.0, 1);
}
