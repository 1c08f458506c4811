//! Presence (PROTOCOL.md §3 `presence`, `presence_diff`): diffs go to the
//! other members on a user's first join and last leave, never to the joiner
//! about itself, and not at all in rooms above the size threshold.
//!
//! Absence of a diff is shown with a barrier, not a sleep: with one shard,
//! every room's pending changes are flushed in the same presence
//! tick, so once a diff of a barrier room that was caused later has
//! arrived, any diff of the room under test would have arrived before it.

mod common;

use common::*;
use serde_json::{json, Value};

fn cfg_one_shard() -> Config {
    let mut cfg = config();
    cfg.shards = Some(1);
    cfg.presence_window_ms = 20;
    cfg
}

/// Next presence_diff of `room` (other frames of other rooms are skipped,
/// frames of `room` other than heartbeats are not expected).
async fn diff_of(c: &mut Client, room: &str) -> Value {
    loop {
        let v = c.recv().await;
        if ty(&v) == "presence_diff" && v["data"]["room"] == room {
            return v;
        }
    }
}

/// Makes `helper` join and leave `barrier` (where `c` is a member) and
/// returns every frame `c` got meanwhile, up to the barrier's leave diff.
async fn barrier(c: &mut Client, helper: &mut Client, barrier: &str) -> Vec<Value> {
    let mut frames = Vec::new();
    helper.join(barrier).await;
    loop {
        let v = c.recv().await;
        let is_join = ty(&v) == "presence_diff"
            && v["data"]["room"] == barrier
            && v["data"]["joins"] == json!([helper.user]);
        frames.push(v);
        if is_join {
            break;
        }
    }
    helper.send(&leave(barrier)).await;
    helper.rx.recv_until("left").await;
    loop {
        let v = c.recv().await;
        let is_leave = ty(&v) == "presence_diff"
            && v["data"]["room"] == barrier
            && v["data"]["leaves"] == json!([helper.user]);
        frames.push(v);
        if is_leave {
            return frames;
        }
    }
}

/// Frames up to and including the next `message`.
async fn frames_until_message(c: &mut Client) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let v = c.recv().await;
        let done = ty(&v) == "message";
        frames.push(v);
        if done {
            return frames;
        }
    }
}

/// Whether a presence_diff names `user` in its joins or leaves.
fn mentions(v: &Value, user: &str) -> bool {
    ["joins", "leaves"].iter().any(|k| {
        v["data"][*k]
            .as_array()
            .is_some_and(|a| a.iter().any(|u| u == user))
    })
}

fn diffs_of<'a>(frames: &'a [Value], room: &str) -> Vec<&'a Value> {
    frames
        .iter()
        .filter(|v| ty(v) == "presence_diff" && v["data"]["room"] == room)
        .collect()
}

#[tokio::test]
async fn diffs_go_to_others_on_first_join_and_last_leave() {
    let server = start(cfg_one_shard()).await;
    let mut a = connect(server.addr, "ann").await;
    let mut helper = connect(server.addr, "helper").await;
    a.join("r").await;
    a.join("barrier").await;

    // bob joins: ann is told, bob is not told about himself.
    let mut b = connect(server.addr, "bob").await;
    b.join("r").await;
    let d = diff_of(&mut a, "r").await;
    assert_eq!(
        d["data"],
        json!({"room": "r", "joins": ["bob"], "leaves": [], "changes": []})
    );
    // Barrier for bob: ann's message comes after the diffs of that tick.
    // bob may be told about ann (her join may share bob's window), never
    // about himself.
    a.publish("r", "probe", "p1").await;
    let before = frames_until_message(&mut b).await;
    assert_eq!(before.last().unwrap()["data"]["content"], "probe");
    for v in &before[..before.len() - 1] {
        assert_eq!(ty(v), "presence_diff", "{v}");
        assert!(
            !mentions(v, "bob"),
            "the joiner got a presence_diff about itself: {v}"
        );
    }

    // A second connection of bob is no change; nor is its leave.
    let mut b2 = connect(server.addr, "bob").await;
    b2.join("r").await;
    b2.send(&leave("r")).await;
    b2.rx.recv_until("left").await;
    let frames = barrier(&mut a, &mut helper, "barrier").await;
    assert!(
        diffs_of(&frames, "r").is_empty(),
        "no diff for bob's second connection: {frames:?}"
    );

    // bob's last connection leaves: ann is told.
    b.send(&leave("r")).await;
    b.rx.recv_until("left").await;
    let d = diff_of(&mut a, "r").await;
    assert_eq!(
        d["data"],
        json!({"room": "r", "joins": [], "leaves": ["bob"], "changes": []})
    );

    // A member that disconnects leaves too.
    let mut c = connect(server.addr, "cat").await;
    c.join("r").await;
    assert_eq!(diff_of(&mut a, "r").await["data"]["joins"], json!(["cat"]));
    c.tx.close().await;
    drop(c);
    let d = diff_of(&mut a, "r").await;
    assert_eq!(
        d["data"],
        json!({"room": "r", "joins": [], "leaves": ["cat"], "changes": []})
    );
    a.send(&json!({"type": "presence", "room": "r"})).await;
    let p = a.recv_until("presence").await;
    assert_eq!(p["data"]["count"], 1);
}

#[tokio::test]
async fn joiner_told_about_others_joining_in_the_same_window() {
    let mut cfg = cfg_one_shard();
    cfg.presence_window_ms = 250;
    let server = start(cfg).await;
    let mut a = connect(server.addr, "ann").await;
    a.join("r").await;
    // bob and cat join close together; each may get a diff about the other,
    // never about itself.
    let mut b = connect(server.addr, "bob").await;
    let mut c = connect(server.addr, "cat").await;
    b.join("r").await;
    c.join("r").await;
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 2 {
        let d = diff_of(&mut a, "r").await;
        for u in d["data"]["joins"].as_array().unwrap() {
            seen.insert(u.as_str().unwrap().to_string());
        }
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["bob", "cat"]);
    // Barrier on r itself: ann publishes; by the time bob/cat see it, any diff
    // of the tick that told ann has been queued for them too.
    a.publish("r", "probe", "p").await;
    for (me, client) in [("bob", &mut b), ("cat", &mut c)] {
        loop {
            let v = client.recv().await;
            if ty(&v) == "message" {
                break;
            }
            assert_eq!(ty(&v), "presence_diff", "{v}");
            let joins = v["data"]["joins"].as_array().unwrap();
            assert!(
                !joins.iter().any(|u| u == me),
                "{me} was told about itself: {v}"
            );
        }
    }
}

#[tokio::test]
async fn rooms_above_the_threshold_send_no_diffs() {
    let mut cfg = cfg_one_shard();
    cfg.presence_diff_max_members = 2;
    let server = start(cfg).await;
    let mut a = connect(server.addr, "ann").await;
    let mut helper = connect(server.addr, "helper").await;
    a.join("big").await;
    a.join("barrier").await;
    let mut b = connect(server.addr, "bob").await;
    b.join("big").await;
    // Two members: at the threshold, not above it.
    assert_eq!(
        diff_of(&mut a, "big").await["data"]["joins"],
        json!(["bob"])
    );

    // A third member: above the threshold, nobody gets a diff.
    let mut c = connect(server.addr, "cat").await;
    c.join("big").await;
    let mut d = connect(server.addr, "dan").await;
    d.join("big").await;
    let frames = barrier(&mut a, &mut helper, "barrier").await;
    assert!(
        diffs_of(&frames, "big").is_empty(),
        "diffs in a room above the threshold: {frames:?}"
    );

    // A joiner above the threshold is told the count, not the list.
    let mut e = connect(server.addr, "eve").await;
    e.send(&join("big")).await;
    e.expect("joined").await;
    let snap = e.expect("presence").await;
    assert_eq!(snap["data"]["count"], 5);
    assert_eq!(snap["data"]["users"], json!([]));
    assert_eq!(snap["data"]["truncated"], true);
    drop(e);

    // Asked for, the snapshot lists everyone.
    a.send(&json!({"type": "presence", "room": "big"})).await;
    let p = a.recv_until("presence").await;
    let count = p["data"]["count"].as_u64().unwrap();
    assert!(count == 4 || count == 5, "eve may still be leaving: {p}");
    assert_eq!(p["data"]["users"].as_array().unwrap().len() as u64, count);
    // bob was told nothing about cat and dan either.
    a.publish("big", "probe", "p").await;
    let before = frames_until_message(&mut b).await;
    for v in &before[..before.len() - 1] {
        assert_eq!(ty(v), "presence_diff", "{v}");
        assert!(
            !mentions(v, "cat") && !mentions(v, "dan"),
            "a diff in a room above the threshold: {v}"
        );
    }
    drop((c, d));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_lists_at_most_1000_users_and_says_truncated() {
    let mut cfg = config();
    cfg.presence_diff_max_members = 10;
    cfg.history_on_join = 0;
    let server = start(cfg).await;
    let addr = server.addr;
    let mut tasks = Vec::new();
    for chunk in 0..20 {
        tasks.push(tokio::spawn(async move {
            let mut clients = Vec::new();
            for i in 0..51 {
                let n = chunk * 51 + i;
                if n >= 1001 {
                    break;
                }
                let mut c = connect(addr, &format!("u{n:04}")).await;
                c.send(&join("crowd")).await;
                c.expect("joined").await;
                clients.push(c);
            }
            clients
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(all.len(), 1001);
    let mut q = connect(addr, "q").await;
    q.send(&json!({"type": "presence", "room": "crowd"})).await;
    let p = q.recv_until("presence").await;
    assert_eq!(p["data"]["count"], 1001);
    assert_eq!(p["data"]["users"].as_array().unwrap().len(), 1000);
    assert_eq!(p["data"]["truncated"], true);
}
