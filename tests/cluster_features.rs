//! Cluster mode and the chat features over real sockets with the real
//! binary: typing, read markers and statuses of a user on one node reach
//! the members on the others, and a read marker is kept by the shared log
//! (a node that had never loaded the room reads it from Redis).

mod common;

use std::path::Path;

use common::binary::Binary;
use common::redis::{available, Redis};
use common::*;
use serde_json::{json, Value};

async fn node(dir: &Path, name: &str, cluster: &str) -> Binary {
    let args = [
        "--cluster",
        cluster,
        "--cluster-heartbeat-ms",
        "200",
        "--cluster-timeout-ms",
        "1000",
        "--presence-window-ms",
        "20",
    ];
    Binary::start(&dir.join(name), &args).await
}

/// Next frame of type `t` about `room`, skipping everything else.
async fn next_of(c: &mut Client, t: &str, room: &str) -> Value {
    loop {
        let v = c.recv().await;
        if ty(&v) == t && v["data"]["room"] == room {
            return v;
        }
    }
}

/// Waits for `user` to join `room` in a presence_diff `c` gets. When it
/// comes, `c`'s node listens to the room's live channel (other nodes'
/// changes reach it only there).
async fn sees_join(c: &mut Client, room: &str, user: &str) {
    loop {
        let d = next_of(c, "presence_diff", room).await;
        if d["data"]["joins"]
            .as_array()
            .is_some_and(|j| j.iter().any(|u| u == user))
        {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_read_markers_and_statuses_cross_nodes() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(&dir.path().join("redis"));
    let url = redis.url();
    let n0 = node(dir.path(), "node0", &url).await;
    let n1 = node(dir.path(), "node1", &url).await;
    let room = "features";

    let mut ann = connect(n0.addr, "ann").await;
    ann.join(room).await;
    let mut bob = connect(n1.addr, "bob").await;
    bob.join(room).await;
    // Both nodes listen to the room before anything is relayed.
    sees_join(&mut ann, room, "bob").await;
    let mut cat = connect(n0.addr, "cat").await;
    cat.join(room).await;
    sees_join(&mut bob, room, "cat").await;

    // Typing on node 0 reaches bob on node 1, never the typist.
    ann.send(&json!({"type": "typing", "room": room})).await;
    let t = next_of(&mut bob, "typing", room).await;
    assert_eq!(t["data"], json!({"room": room, "user": "ann"}));

    // A status set on node 0 shows in node 1's presence.
    ann.send(&json!({"type": "status", "status": "busy", "text": "in a call"}))
        .await;
    loop {
        let d = next_of(&mut bob, "presence_diff", room).await;
        let changes = &d["data"]["changes"];
        if changes.as_array().is_some_and(|c| !c.is_empty()) {
            assert_eq!(
                *changes,
                json!([{"user": "ann", "status": "busy", "text": "in a call"}])
            );
            break;
        }
    }
    bob.send(&json!({"type": "presence", "room": room})).await;
    let p = next_of(&mut bob, "presence", room).await;
    let entry = p["data"]["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user"] == "ann")
        .cloned()
        .unwrap();
    assert_eq!(entry["status"], "busy", "{p}");

    // A read marker on node 0 reaches node 1, and bob's own typing reaches
    // node 0 the other way.
    for i in 1..=3 {
        ann.publish(room, &format!("m{i}"), &format!("r{i}")).await;
    }
    ann.send(&json!({"type": "read", "room": room, "sequence": 3}))
        .await;
    let r = next_of(&mut bob, "read", room).await;
    assert_eq!(
        r["data"],
        json!({"room": room, "user": "ann", "sequence": 3})
    );
    bob.send(&json!({"type": "typing", "room": room})).await;
    // (cat, on ann's node, heard ann's typing before.)
    while next_of(&mut cat, "typing", room).await["data"]["user"] != "bob" {}

    // ann's other device on node 1 learns the marker in `joined` (node 1
    // moved its copy when the relay came).
    let mut phone = connect(n1.addr, "ann").await;
    let (joined, _, _) = phone.join(room).await;
    assert_eq!(joined["data"]["read"], 3);

    // The marker went to Redis no later than the batch of ann's next
    // message: once that is acked, a node that never had the room loaded
    // reads the marker from the log.
    ann.publish(room, "m4", "r4").await;
    let n2 = node(dir.path(), "node2", &url).await;
    let mut tab = connect(n2.addr, "ann").await;
    let (joined, _, _) = tab.join(room).await;
    assert_eq!(joined["data"]["read"], 3);
    assert_eq!(joined["data"]["last"], 4);
}
