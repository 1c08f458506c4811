//! The room core over real sockets: what the old shard got wrong, each as it
//! was found from outside — a busy room unloaded mid-commit, one shard's bad
//! batch failing another's, a cold room or a slow commit stalling a shard,
//! and a replay outliving its join. The same paths run under the seeded
//! simulation (`tests/simulation.rs`); these prove them end to end.

mod common;

use std::time::Duration;

use common::faulty::FaultyStore;
use common::*;
use parlor::protocol::RoomName;
use serde_json::{json, Value};

fn one_shard() -> Config {
    let mut cfg = config();
    cfg.shards = Some(1);
    cfg
}

/// A gauge or counter from /metrics (no labels).
async fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    let text = get(addr, "/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// Waits (bounded) until the metric has the value.
async fn metric_reaches(addr: std::net::SocketAddr, name: &str, want: f64) {
    let what = format!("{name} to reach {want}");
    eventually(&what, || async {
        (metric(addr, name).await == want).then_some(())
    })
    .await
}

async fn post(addr: std::net::SocketAddr, room: &str, content: &str) -> HttpResponse {
    let body = json!({"user": "api", "content": content});
    post_json(addr, &format!("/api/rooms/{room}/messages"), &body).await
}

fn contents(page: &Value) -> Vec<(u64, String)> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let s = m["sequence"].as_u64().unwrap();
            (s, m["content"].as_str().unwrap().to_owned())
        })
        .collect()
}

/// Found from outside: a room published to only over HTTP was unloaded by
/// the idle timer while its batch was committing, and reloaded behind the
/// sequences it had handed out ("expected sequence 163775, got 163774").
#[tokio::test]
async fn a_room_with_a_commit_in_flight_is_not_unloaded() {
    let store = FaultyStore::new();
    let mut cfg = one_shard();
    cfg.room_idle_ms = 30;
    cfg.presence_window_ms = 10;
    let server = start_with_store(cfg, store.clone()).await;
    let addr = server.addr;

    // The commit of "busy" stalls at the log.
    let gate = store.stall_next_append();
    let first = tokio::spawn(async move { post(addr, "busy", "one").await });
    gate.arrived().await;

    // A room that was loaded after "busy" and left idle: once it is
    // unloaded, an idle sweep has looked at "busy" too.
    let mut c = connect(addr, "ann").await;
    c.join("witness").await;
    c.send(&leave("witness")).await;
    c.expect("left").await;
    metric_reaches(addr, "parlor_rooms", 1.0).await;

    gate.open();
    assert_eq!(first.await.unwrap().json()["sequence"], 1);
    let second = post(addr, "busy", "two").await;
    assert_eq!(second.status, 201, "{}", second.text());
    assert_eq!(second.json()["sequence"], 2, "no sequence handed out twice");
    let page = get(addr, "/api/rooms/busy/messages").await.json();
    assert_eq!(contents(&page), [(1, "one".into()), (2, "two".into())]);
}

/// Found from outside: a failed merged commit failed every shard's
/// messages in it. Alone, a shard's batch fails only for itself. (Whether
/// the two batches meet in one merged commit here depends on timing; the
/// log writer's own test drives the merge itself.)
#[tokio::test]
async fn a_failed_commit_fails_only_the_batch_that_caused_it() {
    let store = FaultyStore::new();
    let mut cfg = config();
    cfg.shards = Some(3);
    let server = start_with_store(cfg, store.clone()).await;
    let addr = server.addr;
    let shards = &server.ctx.env.shards;
    let on = |shard: usize| {
        (0..)
            .map(|i| format!("r{i}"))
            .find(|r| shards.index_of(&RoomName::parse(r).unwrap()) == shard)
            .unwrap()
    };
    let (bad, good, held) = (on(0), on(1), on(2));
    *store.poison.lock().unwrap() = Some(RoomName::parse(&bad).unwrap());

    // Hold the log writer (with a third shard's batch) so the other two
    // shards' batches queue behind it and are merged.
    let gate = store.stall_next_append();
    let holder = tokio::spawn(async move { post(addr, &held, "x").await });
    gate.arrived().await;
    let (b, g) = (bad.clone(), good.clone());
    let bad_post = tokio::spawn(async move { post(addr, &b, "poisoned").await });
    let good_post = tokio::spawn(async move { post(addr, &g, "fine").await });
    metric_reaches(addr, "parlor_messages_in_total", 3.0).await;
    gate.open();

    assert_eq!(holder.await.unwrap().status, 201);
    let good_post = good_post.await.unwrap();
    assert_eq!(good_post.status, 201, "{}", good_post.text());
    assert_eq!(good_post.json()["sequence"], 1);
    let bad_post = bad_post.await.unwrap();
    assert_eq!(bad_post.status, 500);
    assert_eq!(bad_post.json()["error"]["code"], "internal");
}

/// Found from outside: opening a room ran on the shard itself, so one cold
/// room (a slow first load) stalled every room of its shard.
#[tokio::test]
async fn a_cold_room_does_not_stall_its_shard() {
    let store = FaultyStore::new();
    let server = start_with_store(one_shard(), store.clone()).await;
    let gate = store.stall_load("cold");

    let mut a = connect(server.addr, "ann").await;
    a.send(&join("cold")).await;
    gate.arrived().await;

    // Same shard, while "cold" is still loading: joined, acked, delivered.
    let mut b = connect(server.addr, "bob").await;
    let mut c = connect(server.addr, "cat").await;
    b.join("warm").await;
    c.join("warm").await;
    let (seq, _) = b.publish_and_copy("warm", "hello", "w1").await;
    assert_eq!(seq, 1);
    assert_eq!(c.recv_message("hello").await["data"]["sequence"], 1);
    // And "cold" has answered nothing yet.
    assert!(a.rx.event_within(Duration::from_millis(50)).await.is_none());

    gate.open();
    let joined = a.expect("joined").await;
    assert_eq!(joined["data"]["room"], "cold");
    a.expect("presence").await;
    a.expect("history").await;
}

/// A commit that is slow for one batch holds back only the acks of what it
/// carries and what queued behind it: the shards keep serving joins,
/// presence and catch-ups meanwhile, and everything lands once it is done.
#[tokio::test]
async fn a_slow_commit_does_not_stall_the_shards() {
    let store = FaultyStore::new();
    let mut cfg = config();
    cfg.shards = Some(2);
    let server = start_with_store(cfg, store.clone()).await;
    let addr = server.addr;
    for i in 1..=3 {
        assert_eq!(post(addr, "old", &format!("m{i}")).await.status, 201);
    }

    let gate = store.stall_next_append();
    let mut a = connect(addr, "ann").await;
    a.join("slow").await;
    a.send(&msg_id("slow", "stuck", "s1")).await;
    gate.arrived().await;

    // Every shard serves joins with catch-up, and presence, meanwhile.
    for i in 0..4 {
        let room = format!("other-{i}");
        let mut c = connect(addr, &format!("u{i}")).await;
        c.join(&room).await;
        c.send(&json!({"type": "presence", "room": room})).await;
        assert_eq!(c.expect("presence").await["data"]["count"], 1);
        c.send(&join_since("old", 1)).await;
        c.expect("joined").await;
        c.expect("presence").await;
        assert_eq!(c.rx.recv_until("message").await["data"]["sequence"], 2);
        assert_eq!(c.rx.recv_until("message").await["data"]["sequence"], 3);
    }

    gate.open();
    let (seq, _) = a.publish_and_copy("slow", "after", "s2").await;
    assert_eq!(seq, 2, "the stalled message landed first");
}

/// Found from outside: `leave` and `join since: 0` sent at once during a
/// replay made the second join see duplicates and `[4, 5, 1, 6, 7]`: the
/// first replay kept pushing, and its end released the second join's hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_and_rejoin_during_a_replay_sees_each_message_once_in_order() {
    let mut cfg = config();
    cfg.history_on_join = 0;
    cfg.rate_per_sec = 1e6;
    cfg.rate_burst = 1e6;
    let server = start(cfg).await;
    let addr = server.addr;
    const N: u64 = 3000;
    let mut p = connect(addr, "filler").await;
    p.send(&join("big")).await;
    p.expect("joined").await;
    for chunk in 0..N / 100 {
        for i in 0..100 {
            let n = chunk * 100 + i + 1;
            p.send(&msg_id("big", &format!("m{n}"), &format!("f{n}")))
                .await;
        }
        let mut acks = 0;
        while acks < 100 {
            if ty(&p.recv().await) == "ack" {
                acks += 1;
            }
        }
    }

    for attempt in 0..20 {
        let mut c = connect(addr, &format!("c{attempt}")).await;
        c.send(&join_since("big", 0)).await;
        // Once the first replay is under way: leave and join again at once.
        c.rx.recv_until("message").await;
        c.send(&leave("big")).await;
        c.send(&join_since("big", 0)).await;
        // Frames of the first join end with `left`; the second join's follow.
        loop {
            if ty(&c.recv().await) == "left" {
                break;
            }
        }
        let joined = c.expect("joined").await;
        assert_eq!(joined["data"]["recovered"], true);
        c.expect("presence").await;
        let mut next = 1;
        while next <= N {
            let (raw, _) = c.rx.recv_any().await;
            match ty(&raw) {
                "message" => {
                    assert_eq!(seq(&raw), next, "attempt {attempt}: out of order or twice");
                    next += 1;
                }
                "presence_diff" | "heartbeat" => {}
                other => panic!("attempt {attempt}: unexpected {other}"),
            }
        }
    }
}

/// With a store that syncs, a shard gathers each batch after a commit and
/// is woken by the sessions only once what it waits for has queued (its
/// gate): publishers awaiting their acks land in shared commits, and a
/// command that is not a message (here `presence`) is answered while the
/// shard gathers. Nothing is held back for good, lost or reordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_awaiting_acks_on_a_syncing_store_all_land_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = parlor::store::RedbStore::open(
        dir.path(),
        parlor::config::Durability::Immediate,
        Duration::from_secs(3600),
    )
    .unwrap();
    let mut cfg = one_shard();
    cfg.rate_per_sec = 1e6;
    cfg.rate_burst = 1e6;
    let server = start_with_store(cfg, std::sync::Arc::new(store)).await;
    let addr = server.addr;
    const PUBLISHERS: usize = 8;
    const EACH: u64 = 25;

    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let mut c = connect(addr, &format!("p{p}")).await;
        c.join(&format!("gate-{p}")).await;
        publishers.push(tokio::spawn(async move {
            for n in 1..=EACH {
                let room = format!("gate-{p}");
                let (seq, _) = c
                    .publish_and_copy(&room, &format!("m{n}"), &format!("{p}-{n}"))
                    .await;
                assert_eq!(seq, n, "publisher {p}: acks in order, gapless");
            }
        }));
    }
    let mut asker = connect(addr, "asker").await;
    asker.join("gate-0").await;
    for _ in 0..EACH {
        asker
            .send(&json!({"type": "presence", "room": "gate-0"}))
            .await;
        let presence = asker.recv_until("presence").await;
        assert_eq!(presence["data"]["room"], "gate-0");
    }
    for p in publishers {
        p.await.unwrap();
    }

    // Every message is in the log, once, in order.
    for p in 0..PUBLISHERS {
        let page = get(addr, &format!("/api/rooms/gate-{p}/messages?limit=100"))
            .await
            .json();
        let want: Vec<(u64, String)> = (1..=EACH).map(|n| (n, format!("m{n}"))).collect();
        assert_eq!(contents(&page), want, "room gate-{p}");
    }
}
