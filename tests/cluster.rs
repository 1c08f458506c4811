//! Cluster mode over real sockets with the real binary: three parlor
//! nodes sharing rooms through one Redis (started here, AOF `always`), and
//! the basic chat test against a 3-primary Redis Cluster.

mod common;

use std::collections::HashSet;
use std::path::Path;

use common::binary::Binary;
use common::redis::{available, Redis, RedisCluster};
use common::*;

/// Fast failure detection for tests: heartbeats every 200 ms (dead after
/// 600 ms), Redis calls bounded by 1 s.
const NODE_FLAGS: [&str; 4] = [
    "--cluster-heartbeat-ms",
    "200",
    "--cluster-timeout-ms",
    "1000",
];

async fn node(dir: &Path, name: &str, cluster: &str, extra: &[&str]) -> Binary {
    let mut args = vec!["--cluster", cluster];
    args.extend(NODE_FLAGS);
    args.extend(extra);
    Binary::start(&dir.join(name), &args).await
}

async fn nodes(dir: &Path, cluster: &str, n: usize) -> Vec<Binary> {
    let mut all = Vec::new();
    for i in 0..n {
        all.push(node(dir, &format!("node{i}"), cluster, &[]).await);
    }
    all
}

/// Reads `room`'s message frames until `n` have come; returns their
/// sequences in arrival order.
async fn sequences(rx: &mut ClientRx, room: &str, n: usize) -> Vec<u64> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let v = rx.recv().await;
        if ty(&v) == "message" && v["data"]["room"] == room {
            got.push(seq(&v));
        }
    }
    got
}

/// Every member, whichever node it is on, sees 1..N in order, once, while
/// publishers on every node send at once.
async fn every_member_sees_one_sequence(addrs: &[std::net::SocketAddr], room: &str) {
    const PUBLISHERS: usize = 8;
    const EACH: usize = 40;
    const N: usize = PUBLISHERS * EACH;
    let mut listeners = Vec::new();
    for (i, &addr) in addrs.iter().cycle().take(6).enumerate() {
        let mut c = connect(addr, &format!("listener{i}")).await;
        c.join(room).await;
        listeners.push(c);
    }
    let mut publishers = Vec::new();
    for (i, &addr) in addrs.iter().cycle().take(PUBLISHERS).enumerate() {
        let mut c = connect(addr, &format!("pub{i}")).await;
        c.join(room).await;
        publishers.push(c);
    }
    let mut tasks = Vec::new();
    for (i, c) in publishers.into_iter().enumerate() {
        let room = room.to_string();
        tasks.push(tokio::spawn(async move {
            let (mut tx, mut rx) = c.split();
            let reader = tokio::spawn(async move {
                let mut acks = Vec::new();
                let mut seen = Vec::new();
                while acks.len() < EACH || seen.len() < N {
                    let v = rx.recv().await;
                    match ty(&v) {
                        "ack" => acks.push(seq(&v)),
                        "message" => seen.push(seq(&v)),
                        "error" => panic!("publisher {i} got {v}"),
                        _ => {}
                    }
                }
                (acks, seen)
            });
            for k in 0..EACH {
                tx.send(&msg_id(&room, &format!("p{i}-{k}"), &format!("{i}-{k}")))
                    .await;
            }
            reader.await.unwrap()
        }));
    }
    let mut acked = HashSet::new();
    let expected: Vec<u64> = (1..=N as u64).collect();
    for t in tasks {
        let (acks, seen) = t.await.unwrap();
        for a in acks {
            assert!(acked.insert(a), "sequence {a} acked twice");
        }
        assert_eq!(seen, expected, "a publisher saw another order");
    }
    assert_eq!(acked.len(), N);
    for c in &mut listeners {
        assert_eq!(sequences(&mut c.rx, room, N).await, expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_three_nodes_see_one_sequence() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(&dir.path().join("redis"));
    let nodes = nodes(dir.path(), &redis.url(), 3).await;
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
    every_member_sees_one_sequence(&addrs, "shared").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_on_a_redis_cluster_with_rooms_in_several_slots() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = RedisCluster::start(&dir.path().join("redis"));
    let nodes = nodes(dir.path(), &cluster.urls(), 3).await;
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
    // These names hash to slots on each of the three primaries.
    for room in ["shared", "lobby", "dev"] {
        every_member_sees_one_sequence(&addrs, room).await;
    }
    for (i, n) in cluster.nodes.iter().enumerate() {
        let keys: u64 = n.cli(&["DBSIZE"]).parse().unwrap_or(0);
        assert!(keys >= 3, "primary {i} holds no room's keys");
    }
}
