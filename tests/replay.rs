//! Joining with and without `since`: replay, recovery flags, the replay
//! limit, epochs, and the replay/live hand-off under load (PROTOCOL.md §4).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::*;
use serde_json::{json, Value};

/// Publishes `n` messages into `room` from a fresh client; returns it.
async fn fill(addr: std::net::SocketAddr, room: &str, n: u64) -> Client {
    let mut p = connect(addr, "filler").await;
    p.join(room).await;
    for i in 1..=n {
        let (s, _) = p
            .publish_and_copy(room, &format!("m{i}"), &format!("f{i}"))
            .await;
        assert_eq!(s, i);
    }
    p
}

/// Sends `join` (with since/epoch as given); returns `joined` after checking
/// `presence` follows it.
async fn join_with(c: &mut Client, room: &str, since: Option<u64>, epoch: Option<&str>) -> Value {
    let mut j = json!({"type": "join", "room": room});
    if let Some(s) = since {
        j["since"] = json!(s);
    }
    if let Some(e) = epoch {
        j["epoch"] = json!(e);
    }
    c.send(&j).await;
    let joined = c.expect("joined").await;
    assert_eq!(joined["data"]["room"], room);
    c.expect("presence").await;
    joined
}

/// Reads `message` frames (skipping presence diffs) until `upto`; returns
/// their sequences.
async fn messages_upto(c: &mut Client, upto: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    while seqs.last().is_none_or(|&l| l < upto) {
        let v = c.rx.recv_skip_diffs().await;
        assert_eq!(
            ty(&v),
            "message",
            "expected replayed/live messages, got {v}"
        );
        seqs.push(seq(&v));
    }
    seqs
}

#[tokio::test]
async fn join_without_since_sends_recent_history() {
    let server = start(config()).await;
    let _p = fill(server.addr, "r", 60).await;
    let mut c = connect(server.addr, "ann").await;
    let (joined, _, history) = c.join("r").await;
    assert_eq!(joined["data"]["last"], 60);
    assert_eq!(joined["data"]["recovered"], true);
    let seqs: Vec<u64> = history["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (11..=60).collect::<Vec<_>>(),
        "the most recent 50, oldest first"
    );
    assert_eq!(history["data"]["more"], true, "older ones exist");

    // Then live messages with sequence > last.
    let (s, _) = http_publish(server.addr, "r").await;
    assert_eq!(s, 61);
    let v = c.rx.recv_until("message").await;
    assert_eq!(seq(&v), 61);
}

async fn http_publish(addr: std::net::SocketAddr, room: &str) -> (u64, Value) {
    let r = post_json(
        addr,
        &format!("/api/rooms/{room}/messages"),
        &json!({"user": "http", "content": "live"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    (r.json()["sequence"].as_u64().unwrap(), r.json())
}

#[tokio::test]
async fn join_with_since_replays_exactly_the_missed_messages() {
    let server = start(config()).await;
    let mut p = fill(server.addr, "r", 20).await;
    let mut c = connect(server.addr, "ann").await;
    let joined = join_with(&mut c, "r", Some(12), None).await;
    assert_eq!(joined["data"]["last"], 20);
    assert_eq!(joined["data"]["recovered"], true);
    assert_eq!(
        messages_upto(&mut c, 20).await,
        (13..=20).collect::<Vec<_>>()
    );
    p.publish_and_copy("r", "live", "live-1").await;
    assert_eq!(messages_upto(&mut c, 21).await, vec![21]);

    // since == last: nothing to replay, live at once.
    let mut d = connect(server.addr, "dan").await;
    let epoch = joined["data"]["epoch"].as_str().unwrap().to_string();
    let joined = join_with(&mut d, "r", Some(21), Some(&epoch)).await;
    assert_eq!(joined["data"]["recovered"], true);
    assert_eq!(joined["data"]["epoch"], epoch.as_str());
    p.publish_and_copy("r", "live2", "live-2").await;
    assert_eq!(messages_upto(&mut d, 22).await, vec![22]);

    // since 0 on a room within the limit: everything.
    let mut e = connect(server.addr, "eve").await;
    let joined = join_with(&mut e, "r", Some(0), None).await;
    assert_eq!(joined["data"]["recovered"], true);
    assert_eq!(
        messages_upto(&mut e, 22).await,
        (1..=22).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn since_beyond_the_replay_limit_replays_the_newest() {
    let mut cfg = config();
    cfg.replay_limit = 10;
    let server = start(cfg).await;
    let mut p = fill(server.addr, "r", 30).await;

    let mut c = connect(server.addr, "ann").await;
    let joined = join_with(&mut c, "r", Some(5), None).await;
    assert_eq!(joined["data"]["last"], 30);
    assert_eq!(
        joined["data"]["recovered"], false,
        "25 missed > replay limit 10"
    );
    assert_eq!(
        messages_upto(&mut c, 30).await,
        (21..=30).collect::<Vec<_>>()
    );
    p.publish_and_copy("r", "live", "live-1").await;
    assert_eq!(messages_upto(&mut c, 31).await, vec![31]);

    // Exactly at the limit: recovered.
    let mut d = connect(server.addr, "dan").await;
    let joined = join_with(&mut d, "r", Some(21), None).await;
    assert_eq!(
        joined["data"]["recovered"], true,
        "10 missed = replay limit"
    );
    assert_eq!(
        messages_upto(&mut d, 31).await,
        (22..=31).collect::<Vec<_>>()
    );

    // The client pages the rest with history.
    c.send(&json!({"type": "history", "room": "r", "since": 5, "limit": 15}))
        .await;
    let h = c.rx.recv_until("history").await;
    let seqs: Vec<u64> = h["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (6..=20).collect::<Vec<_>>());
    assert_eq!(h["data"]["more"], true);
}

#[tokio::test]
async fn since_greater_than_last_replays_from_one() {
    let server = start(config()).await;
    let _p = fill(server.addr, "r", 5).await;
    let mut c = connect(server.addr, "ann").await;
    let joined = join_with(&mut c, "r", Some(100), None).await;
    assert_eq!(joined["data"]["last"], 5);
    assert_eq!(joined["data"]["recovered"], false);
    assert_eq!(messages_upto(&mut c, 5).await, vec![1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn since_on_a_new_room_is_not_recovered_and_goes_live() {
    let server = start(config()).await;
    let mut c = connect(server.addr, "ann").await;
    let joined = join_with(&mut c, "fresh", Some(7), None).await;
    assert_eq!(joined["data"]["last"], 0);
    assert_eq!(joined["data"]["recovered"], false, "since 7 > last 0");
    let (s, _) = c.publish_and_copy("fresh", "first", "f").await;
    assert_eq!(s, 1);
}

#[tokio::test]
async fn since_greater_than_last_with_replay_limit_starts_later() {
    let mut cfg = config();
    cfg.replay_limit = 3;
    let server = start(cfg).await;
    let _p = fill(server.addr, "r", 5).await;
    let mut c = connect(server.addr, "ann").await;
    let joined = join_with(&mut c, "r", Some(100), None).await;
    assert_eq!(joined["data"]["recovered"], false);
    assert_eq!(
        messages_upto(&mut c, 5).await,
        vec![3, 4, 5],
        "newest replay_limit"
    );
}

#[tokio::test]
async fn wrong_epoch_replays_from_one() {
    let server = start(config()).await;
    let _p = fill(server.addr, "r", 5).await;
    let mut c = connect(server.addr, "ann").await;
    let joined = join_with(&mut c, "r", Some(3), Some("not-this-log")).await;
    assert_eq!(joined["data"]["recovered"], false);
    assert_ne!(joined["data"]["epoch"], "not-this-log");
    assert_eq!(messages_upto(&mut c, 5).await, vec![1, 2, 3, 4, 5]);

    let epoch = joined["data"]["epoch"].as_str().unwrap().to_string();
    let mut d = connect(server.addr, "dan").await;
    let joined = join_with(&mut d, "r", Some(3), Some(&epoch)).await;
    assert_eq!(joined["data"]["recovered"], true);
    assert_eq!(messages_upto(&mut d, 5).await, vec![4, 5]);
}

#[tokio::test]
async fn epoch_changes_with_a_new_memory_store() {
    // The same room on a new server (memory store: the log is lost).
    let s1 = start(config()).await;
    let _p = fill(s1.addr, "r", 3).await;
    let mut c = connect(s1.addr, "ann").await;
    let j1 = join_with(&mut c, "r", Some(3), None).await;
    let s2 = start(config()).await;
    let _q = fill(s2.addr, "r", 2).await;
    let mut d = connect(s2.addr, "ann").await;
    let e1 = j1["data"]["epoch"].as_str().unwrap();
    let j2 = join_with(&mut d, "r", Some(3), Some(e1)).await;
    assert_ne!(j2["data"]["epoch"], e1, "a new log has a new epoch");
    assert_eq!(j2["data"]["recovered"], false);
    assert_eq!(messages_upto(&mut d, 2).await, vec![1, 2]);
}

#[tokio::test]
async fn joining_twice_replies_joined_again() {
    let server = start(config()).await;
    let mut c = connect(server.addr, "ann").await;
    c.join("r").await;
    let (s, _) = c.publish_and_copy("r", "one", "1").await;
    c.send(&json!({"type": "join", "room": "r", "id": "again"}))
        .await;
    let v = c.rx.recv_skip_diffs().await;
    assert_eq!(ty(&v), "joined", "second join must reply joined, got {v}");
    assert_eq!(v["data"]["room"], "r");
    assert_eq!(v["data"]["last"], s);
    // A no-op: no second presence/history, and messages arrive once.
    c.send(&json!({"type": "ping"})).await;
    let v = c.rx.recv_skip_diffs().await;
    assert_eq!(ty(&v), "pong", "a repeated join is a no-op, got {v}");
    c.send(&msg_id("r", "two", "2")).await;
    let mut copies = 0;
    loop {
        let v = c.rx.recv_skip_diffs().await;
        match ty(&v) {
            "message" => copies += 1,
            "ack" => break,
            _ => panic!("unexpected {v}"),
        }
    }
    c.send(&json!({"type": "ping"})).await;
    loop {
        let v = c.rx.recv_skip_diffs().await;
        match ty(&v) {
            "message" => copies += 1,
            "pong" => break,
            _ => panic!("unexpected {v}"),
        }
    }
    assert_eq!(copies, 1, "one copy per message after a double join");
}

/// Joins with `since` at random points while a publisher keeps the room
/// busy: each joiner sees every sequence after `since` once, in order, across
/// the replay/live hand-off.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn join_with_since_while_busy_has_no_gap_and_no_duplicate() {
    let mut cfg = config();
    cfg.rate_per_sec = 1e9;
    cfg.rate_burst = 1e9;
    let server = start(cfg).await;
    let addr = server.addr;
    let room = "busy";

    // The publisher sends rounds of 20 messages and reads its own copies,
    // so the room stays busy and `last` is known.
    let last = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut p = connect(addr, "pub").await;
    p.join(room).await;
    let publisher = {
        let (last, stop) = (last.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            let mut seen = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 500_000 {
                for _ in 0..20 {
                    n += 1;
                    p.send(&msg(room, &format!("m{n}"))).await;
                }
                while seen < n {
                    let v = p.rx.recv_until("message").await;
                    seen += 1;
                    assert_eq!(seq(&v), seen, "publisher's own copies in order");
                    last.store(seen, Ordering::Relaxed);
                }
            }
            n
        })
    };
    // Wait until the room has some history (awaiting the publisher's copies).
    let mut warm = connect(addr, "warm").await;
    warm.join(room).await;
    while seq(&warm.rx.recv_until("message").await) < 200 {}
    drop(warm);

    let mut joiners = Vec::new();
    for j in 0..3u64 {
        let last = last.clone();
        joiners.push(tokio::spawn(async move {
            let mut rng = Rng::new(0x9e37_79b9 + j);
            for round in 0..20 {
                let mut c = connect(addr, &format!("joiner{j}")).await;
                let now = last.load(Ordering::Relaxed);
                let since = now.saturating_sub(rng.below(150));
                let joined = join_with(&mut c, room, Some(since), None).await;
                assert_eq!(joined["data"]["recovered"], true, "{joined}");
                let at_join = joined["data"]["last"].as_u64().unwrap();
                assert!(at_join >= since, "last {at_join} < since {since}");
                // Read through the hand-off well into live messages.
                let upto = at_join + 40;
                let seqs = messages_upto(&mut c, upto).await;
                let expected: Vec<u64> = (since + 1..=upto).collect();
                assert_eq!(
                    seqs, expected,
                    "joiner {j} round {round}: since {since}, last at join {at_join}"
                );
            }
        }));
    }
    for j in joiners {
        j.await.expect("joiner saw no gap and no duplicate");
    }
    stop.store(true, Ordering::Relaxed);
    let sent = publisher.await.expect("publisher");
    assert!(sent > 200);
}
