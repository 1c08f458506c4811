//! Cluster mode over real sockets with the real binary: three parlor
//! nodes sharing rooms through one Redis (started here, AOF `always`), and
//! the basic chat test against a 3-primary Redis Cluster.

mod common;

use std::collections::HashSet;
use std::path::Path;

use common::binary::{free_addr, Binary};
use common::redis::{available, Redis, RedisCluster};
use common::*;
use serde_json::Value;

/// Fast failure detection for tests: heartbeats every 200 ms (dead after
/// 600 ms), Redis calls bounded by 1 s; publishers may send fast.
const NODE_FLAGS: [&str; 8] = [
    "--cluster-heartbeat-ms",
    "200",
    "--cluster-timeout-ms",
    "1000",
    "--rate-per-sec",
    "1000",
    "--rate-burst",
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

/// `rediss://`: nodes that trust the server's CA (through `SSL_CERT_FILE`,
/// as an operator would point them at a private CA) chat over TLS; a node
/// that does not trust it does not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_redis_over_tls_and_check_its_certificate() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start_tls(&dir.path().join("redis"));
    let url = redis.url();
    assert!(url.starts_with("rediss://"));
    let ca = redis.ca_file();
    let mut args = vec!["--cluster", &url];
    args.extend(NODE_FLAGS);
    let env = [("SSL_CERT_FILE", ca.to_str().unwrap())];
    let mut nodes = Vec::new();
    for i in 0..2 {
        let name = dir.path().join(format!("node{i}"));
        nodes.push(Binary::start_env(&name, free_addr(), &args, &env).await);
    }
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
    every_member_sees_one_sequence(&addrs, "shared").await;
    assert_eq!(redis.cli(&["XLEN", "parlor:{shared}:log"]), "320");

    // Trusting only the system's CAs, or a CA file that is not there, a
    // node cannot reach Redis: it says why and exits (no panic).
    for ca in [None, Some(dir.path().join("missing.pem"))] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_parlor"));
        cmd.args(["serve", "--store", "redb", "--data-dir"])
            .arg(dir.path().join("untrusting"))
            .args(["--addr", &free_addr().to_string()])
            .args(&args)
            .env_remove("SSL_CERT_FILE");
        if let Some(ca) = &ca {
            cmd.env("SSL_CERT_FILE", ca);
        }
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{ca:?}: {err}");
        assert!(
            err.contains("Redis") && !err.contains("panicked"),
            "{ca:?}: {err}"
        );
    }
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

/// What a paced publisher got for each message it sent: (content, ack).
type Outcomes = Vec<(String, Result<u64, String>)>;

/// Sends `n` messages with ids to `room`, one every `every`, and records
/// what each got (ack or error), reading everything else away. Stops early
/// if the connection ends (its node was killed).
fn paced_publisher(
    addr: std::net::SocketAddr,
    user: String,
    room: String,
    n: usize,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<Outcomes> {
    tokio::spawn(async move {
        let mut c = connect(addr, &user).await;
        c.join(&room).await;
        let (mut tx, mut rx) = c.split();
        let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            loop {
                match rx.event_within(std::time::Duration::from_secs(30)).await {
                    Some(Event::Frame { value, .. }) => match ty(&value) {
                        "ack" => {
                            let _ = out_tx
                                .send((value["id"].as_str().unwrap().to_string(), Ok(seq(&value))));
                        }
                        "error" if value["id"].is_string() => {
                            let code = value["data"]["code"].as_str().unwrap_or("").to_string();
                            let _ =
                                out_tx.send((value["id"].as_str().unwrap().to_string(), Err(code)));
                        }
                        _ => {}
                    },
                    _ => return,
                }
            }
        });
        let mut sent = Vec::new();
        for k in 0..n {
            let id = format!("{user}-{k}");
            if tx.try_send(&msg_id(&room, &id, &id)).await.is_err() {
                break;
            }
            sent.push(id);
            tokio::time::sleep(every).await;
        }
        // Answers for what was sent, as far as they come.
        let mut answers = std::collections::HashMap::new();
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while answers.len() < sent.len() {
            match tokio::time::timeout_at(deadline, out_rx.recv()).await {
                Ok(Some((id, r))) => {
                    answers.insert(id, r);
                }
                _ => break,
            }
        }
        reader.abort();
        sent.into_iter()
            .map(|id| {
                let r = answers
                    .remove(&id)
                    .unwrap_or_else(|| Err("no answer".into()));
                (id, r)
            })
            .collect()
    })
}

/// The whole log of a room through the HTTP history API: (sequence, content).
async fn log_of(addr: std::net::SocketAddr, room: &str) -> Vec<(u64, String)> {
    let mut all = Vec::new();
    let mut since = 0;
    loop {
        let r = get(
            addr,
            &format!("/api/rooms/{room}/messages?since={since}&limit=1000"),
        )
        .await;
        assert_eq!(r.status, 200, "history: {}", r.text());
        let v = r.json();
        let page = v["messages"].as_array().unwrap();
        for m in page {
            all.push((
                m["sequence"].as_u64().unwrap(),
                m["content"].as_str().unwrap().to_string(),
            ));
        }
        since = all.last().map_or(0, |m| m.0);
        if !v["more"].as_bool().unwrap_or(false) {
            return all;
        }
    }
}

/// The log is 1..N with no gap, and has every acked message at its sequence.
fn check_log(log: &[(u64, String)], outcomes: &[Outcomes]) {
    for (i, (s, _)) in log.iter().enumerate() {
        assert_eq!(*s, i as u64 + 1, "a gap in the log");
    }
    let contents: HashSet<&str> = log.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(contents.len(), log.len(), "a message stored twice");
    for o in outcomes {
        for (content, r) in o {
            if let Ok(s) = r {
                let stored = &log[*s as usize - 1];
                assert_eq!(&stored.1, content, "ack {s} names another message");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_since_on_another_node_replays_exactly_then_goes_live() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(&dir.path().join("redis"));
    let nodes = nodes(dir.path(), &redis.url(), 3).await;
    let room = "handoff";
    let every = std::time::Duration::from_millis(4);
    let pubs: Vec<_> = (0..4)
        .map(|i| paced_publisher(nodes[i % 2].addr, format!("p{i}"), room.into(), 150, every))
        .collect();
    // A reader on node 0 sees some messages, then drops.
    let mut a = connect(nodes[0].addr, "reader").await;
    a.join(room).await;
    let first = sequences(&mut a.rx, room, 100).await;
    assert_eq!(first, (first[0]..first[0] + 100).collect::<Vec<_>>());
    let since = *first.last().unwrap();
    drop(a);
    // It comes back on node 2 while the publishers keep going.
    let mut b = connect(nodes[2].addr, "reader").await;
    b.send(&join_since(room, since)).await;
    let joined = b.expect("joined").await;
    assert_eq!(joined["data"]["recovered"], true);
    let last = joined["data"]["last"].as_u64().unwrap();
    assert!(
        last < 600,
        "the hand-off happened while publishers kept going"
    );
    let mut outcomes = Vec::new();
    for p in pubs {
        outcomes.push(p.await.unwrap());
    }
    let total: usize = outcomes.iter().flatten().filter(|(_, r)| r.is_ok()).count();
    assert_eq!(total, 600, "every message was acked");
    let rest = sequences(&mut b.rx, room, 600 - since as usize).await;
    assert_eq!(
        rest,
        (since + 1..=600).collect::<Vec<_>>(),
        "exactly since+1.., in order"
    );
    check_log(&log_of(nodes[1].addr, room).await, &outcomes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_on_another_node_gets_the_original_sequence() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(&dir.path().join("redis"));
    let nodes = nodes(dir.path(), &redis.url(), 3).await;
    let room = "retry";
    let mut watcher = connect(nodes[2].addr, "watcher").await;
    watcher.join(room).await;
    let mut a = connect(nodes[0].addr, "ann").await;
    a.join(room).await;
    a.publish(room, "before", "b-1").await;
    let (first, _) = a.publish_and_copy(room, "hello", "m-1").await;
    // The client reconnects to another node and retries the same id.
    let mut b = connect(nodes[1].addr, "ann").await;
    b.join(room).await;
    let again = b.publish(room, "hello", "m-1").await;
    assert_eq!(again, first, "the original sequence");
    // Over HTTP on the third node too.
    let body = serde_json::json!({"user": "ann", "content": "hello", "id": "m-1"});
    let r = post_json(nodes[2].addr, &format!("/api/rooms/{room}/messages"), &body).await;
    assert_eq!(r.json()["sequence"], first);
    let after = b.publish(room, "after", "a-1").await;
    assert_eq!(after, first + 1, "nothing was stored for the retries");
    let log = log_of(nodes[2].addr, room).await;
    assert_eq!(log.iter().filter(|(_, c)| c == "hello").count(), 1);
    // The watcher saw each message once.
    assert_eq!(sequences(&mut watcher.rx, room, 3).await, vec![1, 2, 3]);
}

/// The users a `presence` frame lists.
fn users(v: &Value) -> Vec<String> {
    let mut u: Vec<String> = v["data"]["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user"].as_str().unwrap().to_string())
        .collect();
    u.sort();
    u
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_spans_nodes_and_a_dead_nodes_users_leave() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(&dir.path().join("redis"));
    let mut nodes = nodes(dir.path(), &redis.url(), 3).await;
    let room = "lounge";
    let mut ann = connect(nodes[0].addr, "ann").await;
    ann.join(room).await;
    let mut bob = connect(nodes[1].addr, "bob").await;
    bob.join(room).await;
    let mut cat = connect(nodes[2].addr, "cat").await;
    cat.join(room).await;
    // One snapshot lists the users of every node.
    let all = ["ann", "bob", "cat"].map(String::from).to_vec();
    for c in [&mut ann, &mut bob, &mut cat] {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            c.send(&serde_json::json!({"type": "presence", "room": room}))
                .await;
            if users(&c.recv_until("presence").await) == all {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no snapshot with every node's users"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let mut dan = connect(nodes[0].addr, "dan").await;
    let (_, snapshot, _) = dan.join(room).await;
    assert_eq!(users(&snapshot), ["ann", "bob", "cat", "dan"]);
    // A node dies: its users leave everywhere; the bound (about 3
    // heartbeats, 600 ms here) is held by each wait's limit (`TIMEOUT`),
    // not by a timing assertion.
    nodes[2].child.kill().unwrap();
    for c in [&mut ann, &mut bob] {
        loop {
            let v = c.recv_until("presence_diff").await;
            if v["data"]["leaves"]
                .as_array()
                .unwrap()
                .iter()
                .any(|u| u == "cat")
            {
                break;
            }
        }
    }
    ann.send(&serde_json::json!({"type": "presence", "room": room}))
        .await;
    assert_eq!(
        users(&ann.recv_until("presence").await),
        ["ann", "bob", "dan"]
    );
}

/// Reads a room's messages until the connection ends; they must be
/// 1, 2, 3 … from `from`, with no gap or repeat. Returns the last.
async fn read_until_gone(mut rx: ClientRx, room: &str, from: u64) -> u64 {
    let mut next = from;
    loop {
        match rx.event_within(TIMEOUT).await {
            Some(Event::Frame { value, .. }) => {
                if ty(&value) == "message" && value["data"]["room"] == room {
                    assert_eq!(seq(&value), next, "a gap or repeat before the node died");
                    next += 1;
                }
            }
            _ => return next - 1,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_loses_no_acked_message_and_its_clients_resume_elsewhere() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(&dir.path().join("redis"));
    let mut nodes = nodes(dir.path(), &redis.url(), 3).await;
    let room = "busy";
    let mut listener = connect(nodes[2].addr, "listener").await;
    listener.join(room).await;
    let every = std::time::Duration::from_millis(5);
    let pubs: Vec<_> = (0..6)
        .map(|i| paced_publisher(nodes[i % 3].addr, format!("p{i}"), room.into(), 200, every))
        .collect();
    let (_, rx) = listener.split();
    let seen = tokio::spawn(async move { read_until_gone(rx, room, 1).await });
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    nodes[2].child.kill().unwrap();
    let last_seen = seen.await.unwrap();
    assert!(last_seen > 0, "the listener saw nothing before the kill");
    // The listener comes back on node 0 and replays from where it was.
    let mut back = connect(nodes[0].addr, "listener").await;
    back.send(&join_since(room, last_seen)).await;
    assert_eq!(back.expect("joined").await["data"]["recovered"], true);
    let mut outcomes = Vec::new();
    for p in pubs {
        outcomes.push(p.await.unwrap());
    }
    let log = log_of(nodes[1].addr, room).await;
    check_log(&log, &outcomes);
    let n = log.len() as u64;
    assert!(n > last_seen, "the others kept publishing");
    let rest = sequences(&mut back.rx, room, (n - last_seen) as usize).await;
    assert_eq!(rest, (last_seen + 1..=n).collect::<Vec<_>>());
    // The survivors' publishers lost nothing.
    for o in &outcomes[..2]
        .iter()
        .chain(&outcomes[3..5])
        .collect::<Vec<_>>()
    {
        assert!(
            o.iter().all(|(_, r)| r.is_ok()),
            "a survivor's message failed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_fails_fast_then_everyone_converges() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Redis::start(&dir.path().join("redis"));
    let nodes = nodes(dir.path(), &redis.url(), 3).await;
    let room = "storm";
    let mut listeners = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let mut c = connect(n.addr, &format!("listener{i}")).await;
        c.join(room).await;
        listeners.push(c);
    }
    let every = std::time::Duration::from_millis(10);
    let pubs: Vec<_> = (0..3)
        .map(|i| paced_publisher(nodes[i].addr, format!("p{i}"), room.into(), 500, every))
        .collect();
    let mut probe = connect(nodes[1].addr, "probe").await;
    probe.join(room).await;
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    redis.kill();
    // Loud: /healthz says 503, a message gets `internal` (never an ack,
    // never a hang: each wait is bounded by `TIMEOUT`, the Redis calls by
    // 1 s), a join that needs the log fails; connected sessions stay open.
    eventually("/healthz 503 while Redis is down", || async {
        (get(nodes[0].addr, "/healthz").await.status == 503).then_some(())
    })
    .await;
    probe.send(&msg_id(room, "during", "d-1")).await;
    loop {
        let v = probe.recv().await;
        if ty(&v) == "error" {
            assert_error(&v, "internal", Some("d-1"));
            break;
        }
        assert_ne!(ty(&v), "ack", "acked while Redis is down: {v}");
    }
    probe.send(&join("never-loaded")).await;
    loop {
        let v = probe.recv().await;
        if ty(&v) == "error" {
            assert_error(&v, "internal", None);
            break;
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    redis.restart();
    eventually("/healthz 200 once Redis is back", || async {
        (get(nodes[0].addr, "/healthz").await.status == 200).then_some(())
    })
    .await;
    let mut outcomes = Vec::new();
    for p in pubs {
        outcomes.push(p.await.unwrap());
    }
    let failed: usize = outcomes
        .iter()
        .flatten()
        .filter(|(_, r)| r.is_err())
        .count();
    assert!(failed > 0, "no publish fell in the outage");
    for (id, r) in outcomes.iter().flatten() {
        if let Err(code) = r {
            assert_eq!(
                code, "internal",
                "{id} got {code} (no hang: every message answered)"
            );
        }
    }
    for o in &outcomes {
        let (id, last) = o.last().unwrap();
        assert!(last.is_ok(), "publishing did not resume: {id} got {last:?}");
    }
    // Nothing acked was lost (AOF always), and every member converges on
    // the log, in order, with no gap or repeat.
    let log = log_of(nodes[2].addr, room).await;
    check_log(&log, &outcomes);
    let n = log.len();
    for l in &mut listeners {
        assert_eq!(
            sequences(&mut l.rx, room, n).await,
            (1..=n as u64).collect::<Vec<_>>()
        );
    }
    let metrics = get(nodes[0].addr, "/metrics").await.text();
    for name in [
        "parlor_redis_reconnects_total",
        "parlor_redis_roundtrip_seconds",
        "parlor_gap_fills_total",
        "parlor_live_lag_seconds",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
}
