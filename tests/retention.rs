//! Retention over real sockets and a real redb file: old messages are
//! deleted in the background while appends keep flowing, and a `since`
//! older than what is retained replays from the oldest retained message with
//! `recovered: false`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use parlor::config::Durability;
use parlor::store::RedbStore;

#[tokio::test]
async fn old_messages_go_and_replay_says_not_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path(), Durability::None, Duration::from_millis(10)).unwrap();
    let mut cfg = config();
    cfg.retain_messages = 20;
    cfg.retention_interval_ms = 10;
    cfg.rate_per_sec = 1e6;
    cfg.rate_burst = 1e6;
    let server = start_with_store(cfg, Arc::new(store)).await;

    let mut a = connect(server.addr, "ann").await;
    a.join("kept").await;
    // Appends keep flowing while retention deletes behind them: every ack is
    // the next sequence.
    for i in 1..=200u64 {
        assert_eq!(
            a.publish("kept", &format!("m{i}"), &format!("id{i}")).await,
            i
        );
    }
    // Wait until retention has caught up with the last append.
    let oldest = eventually("retention to catch up", || async {
        let page = get(server.addr, "/api/rooms/kept/messages?since=0&limit=1")
            .await
            .json();
        let first = page["messages"][0]["sequence"].as_u64().unwrap();
        assert!(first <= 181, "retention kept too little: oldest is {first}");
        (first == 181).then_some(first)
    })
    .await;

    let mut b = connect(server.addr, "bob").await;
    b.send(&join_since("kept", 5)).await;
    let joined = b.recv_until("joined").await;
    assert_eq!(joined["data"]["recovered"], false);
    assert_eq!(joined["data"]["last"], 200);
    for expected in oldest..=200 {
        let m = b.recv_until("message").await;
        assert_eq!(seq(&m), expected);
    }
    // A `since` inside what is retained still recovers exactly.
    let mut c = connect(server.addr, "cy").await;
    c.send(&join_since("kept", 190)).await;
    assert_eq!(c.recv_until("joined").await["data"]["recovered"], true);
    assert_eq!(seq(&c.recv_until("message").await), 191);
}
