//! Every client message type of PROTOCOL.md §2 and the frames of §3 that
//! answer it; idempotent retries (§5); an old teaching-system client.

mod common;

use common::*;
use serde_json::json;

fn assert_message_data(
    v: &serde_json::Value,
    room: &str,
    user: &str,
    content: &str,
    sequence: u64,
) {
    assert_eq!(ty(v), "message", "{v}");
    let d = &v["data"];
    assert!(
        d["id"].as_str().is_some_and(|s| !s.is_empty()),
        "message id: {v}"
    );
    assert_eq!(d["room"], room, "{v}");
    assert_eq!(d["user"], user, "{v}");
    assert_eq!(d["content"], content, "{v}");
    assert_eq!(d["sequence"], sequence, "{v}");
    assert!(
        d["timestamp"]
            .as_u64()
            .is_some_and(|t| t > 1_600_000_000_000),
        "timestamp in ms: {v}"
    );
}

#[tokio::test]
async fn connected_is_the_first_frame() {
    let mut cfg = config();
    cfg.heartbeat_ms = 1234;
    let server = start(cfg).await;
    let c = connect(server.addr, "ann").await;
    let d = &c.connected.as_ref().unwrap()["data"];
    assert!(d["clientId"].as_str().is_some_and(|s| !s.is_empty()), "{d}");
    assert_eq!(d["user"], "ann");
    assert_eq!(d["format"], "json");
    assert_eq!(d["heartbeatMs"], 1234);
    assert!(
        d["server"]
            .as_str()
            .is_some_and(|s| s.starts_with("parlor")),
        "{d}"
    );

    // Without ?user= the server makes one up: user_ + 8 hex digits.
    let c2 = connect_opts(server.addr, Opts::default()).await;
    let d2 = &c2.connected.as_ref().unwrap()["data"];
    let user = d2["user"].as_str().unwrap();
    let hex = user
        .strip_prefix("user_")
        .unwrap_or_else(|| panic!("made-up user {user}"));
    assert!(
        hex.len() == 8 && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "made-up user {user}"
    );
    assert_ne!(d["clientId"], d2["clientId"], "clientIds must differ");

    // The query is URL-decoded; unknown parameters are ignored.
    let c3 = connect_opts(
        server.addr,
        Opts {
            user: Some("ann%20sm%C3%AFth&x=1".into()),
            ..Opts::default()
        },
    )
    .await;
    assert_eq!(c3.connected.as_ref().unwrap()["data"]["user"], "ann smïth");
}

#[tokio::test]
async fn join_answers_joined_then_presence_then_history() {
    let server = start(config()).await;
    let mut a = connect(server.addr, "ann").await;
    let (joined, presence, history) = a.join("lobby").await;
    let epoch = joined["data"]["epoch"]
        .as_str()
        .expect("epoch string")
        .to_string();
    assert_eq!(
        joined["data"],
        json!({"room": "lobby", "last": 0, "epoch": epoch, "recovered": true, "read": 0})
    );
    assert_eq!(presence["data"]["room"], "lobby");
    assert_eq!(presence["data"]["count"], 1);
    assert_eq!(presence["data"]["truncated"], false);
    let users = presence["data"]["users"].as_array().unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0]["user"], "ann");
    assert_eq!(users[0]["status"], "online");
    assert!(users[0]["lastSeen"].as_u64().is_some(), "{presence}");
    assert_eq!(
        history["data"],
        json!({"room": "lobby", "messages": [], "more": false})
    );

    for i in 1..=3 {
        a.publish_and_copy("lobby", &format!("m{i}"), &format!("id{i}"))
            .await;
    }

    let mut b = connect(server.addr, "bob").await;
    let (joined, presence, history) = b.join("lobby").await;
    assert_eq!(
        joined["data"],
        json!({"room": "lobby", "last": 3, "epoch": epoch, "recovered": true, "read": 0})
    );
    assert_eq!(presence["data"]["count"], 2);
    let mut names: Vec<&str> = presence["data"]["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["ann", "bob"]);
    let msgs = history["data"]["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3);
    for (i, m) in msgs.iter().enumerate() {
        let wrapped = json!({"type": "message", "data": m});
        assert_message_data(
            &wrapped,
            "lobby",
            "ann",
            &format!("m{}", i + 1),
            i as u64 + 1,
        );
    }
    assert_eq!(history["data"]["more"], false);
    assert_eq!(history["data"]["room"], "lobby");
}

#[tokio::test]
async fn message_is_broadcast_to_every_member_and_acked() {
    let server = start(config()).await;
    let mut a = connect(server.addr, "ann").await;
    let mut b = connect(server.addr, "bob").await;
    a.join("r").await;
    b.join("r").await;

    a.send(&msg_id("r", "hello", "m-1")).await;
    // The ack and the sender's own copy may come in either order.
    let mut got_ack = false;
    let mut got_copy = false;
    while !(got_ack && got_copy) {
        let v = a.rx.recv_skip_diffs().await;
        match ty(&v) {
            "ack" => {
                assert!(!got_ack, "two acks: {v}");
                assert_eq!(v["id"], "m-1");
                assert_eq!(v["data"], json!({"room": "r", "sequence": 1}));
                got_ack = true;
            }
            "message" => {
                assert!(!got_copy, "two copies: {v}");
                assert_message_data(&v, "r", "ann", "hello", 1);
                got_copy = true;
            }
            _ => panic!("unexpected frame {v}"),
        }
    }
    let v = b.rx.recv_skip_diffs().await;
    assert_message_data(&v, "r", "ann", "hello", 1);
    let id = v["data"]["id"].clone();

    // Without an id: broadcast, no ack.
    b.send(&msg("r", "no id")).await;
    let v = b.rx.recv_skip_diffs().await;
    assert_message_data(&v, "r", "bob", "no id", 2);
    assert_ne!(v["data"]["id"], id, "message ids are unique");
    b.send(&json!({"type": "ping"})).await;
    let v = b.rx.recv_skip_diffs().await;
    assert_eq!(ty(&v), "pong", "no ack for a message without id, got {v}");
    let v = a.rx.recv_skip_diffs().await;
    assert_message_data(&v, "r", "bob", "no id", 2);

    // Not joined: error not_joined echoing the id; nothing stored.
    a.send(&msg_id("elsewhere", "x", "m-2")).await;
    let v = a.rx.recv_skip_diffs().await;
    assert_error(&v, "not_joined", Some("m-2"));
    let h = get(server.addr, "/api/rooms/elsewhere/messages").await;
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["messages"], json!([]));
}

#[tokio::test]
async fn leave_replies_left_and_stops_delivery() {
    let server = start(config()).await;
    let mut a = connect(server.addr, "ann").await;
    let mut b = connect(server.addr, "bob").await;
    a.join("r").await;
    b.join("r").await;

    a.send(&json!({"type": "leave", "room": "r", "id": "l1"}))
        .await;
    let v = a.rx.recv_skip_diffs().await;
    assert_eq!(ty(&v), "left", "{v}");
    assert_eq!(v["data"], json!({"room": "r"}));

    // b's message is acked after it was fanned out; a's pong after that
    // must not be preceded by the message.
    b.publish("r", "after leave", "b1").await;
    a.send(&json!({"type": "ping"})).await;
    let v = a.rx.recv_skip_diffs().await;
    assert_eq!(ty(&v), "pong", "a left the room but got {v}");

    // Leaving again, or a room never joined: not_joined, with the id echoed.
    a.send(&json!({"type": "leave", "room": "r", "id": "l2"}))
        .await;
    assert_error(&a.rx.recv_skip_diffs().await, "not_joined", Some("l2"));
    a.send(&leave("never")).await;
    assert_error(&a.rx.recv_skip_diffs().await, "not_joined", None);

    // Sending to a room left: not_joined.
    a.send(&msg_id("r", "x", "m9")).await;
    assert_error(&a.rx.recv_skip_diffs().await, "not_joined", Some("m9"));

    // Joining again works.
    let (joined, _, _) = a.join("r").await;
    assert_eq!(joined["data"]["last"], 1);
}

#[tokio::test]
async fn history_pages_with_since_limit_and_more() {
    let server = start(config()).await;
    let mut a = connect(server.addr, "ann").await;
    a.join("r").await;
    for i in 1..=5 {
        a.publish_and_copy("r", &format!("m{i}"), &format!("i{i}"))
            .await;
    }
    let page = |v: &serde_json::Value| -> (Vec<u64>, bool) {
        assert_eq!(ty(v), "history", "{v}");
        assert_eq!(v["data"]["room"], "r");
        let seqs = v["data"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["sequence"].as_u64().unwrap())
            .collect();
        (seqs, v["data"]["more"].as_bool().unwrap())
    };
    a.send(&json!({"type": "history", "room": "r", "since": 2, "limit": 2}))
        .await;
    assert_eq!(page(&a.recv().await), (vec![3, 4], true));
    a.send(&json!({"type": "history", "room": "r", "since": 3, "limit": 10}))
        .await;
    assert_eq!(page(&a.recv().await), (vec![4, 5], false));
    a.send(&json!({"type": "history", "room": "r"})).await;
    let v = a.recv().await;
    assert_eq!(page(&v), (vec![1, 2, 3, 4, 5], false));
    let first = json!({"type": "message", "data": v["data"]["messages"][0]});
    assert_message_data(&first, "r", "ann", "m1", 1);
    a.send(&json!({"type": "history", "room": "r", "since": 5}))
        .await;
    assert_eq!(page(&a.recv().await), (vec![], false));
    a.send(&json!({"type": "history", "room": "r", "since": 4, "limit": 1}))
        .await;
    assert_eq!(
        page(&a.recv().await),
        (vec![5], false),
        "more is false when nothing is beyond the page"
    );

    // A valid room with no messages (never used): empty list, not an error.
    a.send(&json!({"type": "history", "room": "empty-room"}))
        .await;
    let v = a.recv().await;
    assert_eq!(
        v["data"],
        json!({"room": "empty-room", "messages": [], "more": false})
    );
}

#[tokio::test]
async fn presence_counts_distinct_users() {
    let server = start(config()).await;
    let mut a = connect(server.addr, "ann").await;
    let mut b1 = connect(server.addr, "bob").await;
    let mut b2 = connect(server.addr, "bob").await;
    a.join("r").await;
    b1.join("r").await;
    let (_, p, _) = b2.join("r").await;
    assert_eq!(
        p["data"]["count"], 2,
        "two connections of bob are one user: {p}"
    );

    a.send(&json!({"type": "presence", "room": "r"})).await;
    let v = a.rx.recv_skip_diffs().await;
    assert_eq!(ty(&v), "presence", "{v}");
    assert_eq!(v["data"]["room"], "r");
    assert_eq!(v["data"]["count"], 2);
    assert_eq!(v["data"]["truncated"], false);
    let users = v["data"]["users"].as_array().unwrap();
    let mut names: Vec<&str> = users.iter().map(|u| u["user"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["ann", "bob"]);
    for u in users {
        assert_eq!(u["status"], "online");
        assert!(
            u["lastSeen"]
                .as_u64()
                .is_some_and(|t| t > 1_600_000_000_000),
            "{u}"
        );
    }

    // One of bob's connections leaves: bob is still online.
    b1.send(&leave("r")).await;
    assert_eq!(ty(&b1.rx.recv_skip_diffs().await), "left");
    a.send(&json!({"type": "presence", "room": "r"})).await;
    assert_eq!(a.rx.recv_skip_diffs().await["data"]["count"], 2);
    // The last one leaves: bob is gone.
    b2.send(&leave("r")).await;
    b2.rx.recv_until("left").await;
    a.send(&json!({"type": "presence", "room": "r"})).await;
    let v = a.rx.recv_skip_diffs().await;
    assert_eq!(v["data"]["count"], 1);
    assert_eq!(v["data"]["users"][0]["user"], "ann");
}

#[tokio::test]
async fn ping_gets_pong() {
    let server = start(config()).await;
    let mut a = connect(server.addr, "ann").await;
    a.send(&json!({"type": "ping"})).await;
    let v = a.recv().await;
    assert_eq!(v, json!({"type": "pong"}));
    a.send(&json!({"type": "ping", "id": "p1", "extra": [1, 2]}))
        .await;
    assert_eq!(ty(&a.recv().await), "pong");
}

#[tokio::test]
async fn retry_with_the_same_id_is_acked_once_stored_once() {
    let server = start(config()).await;
    let mut a = connect(server.addr, "ann").await;
    let mut c = connect(server.addr, "cat").await;
    a.join("r").await;
    c.join("r").await;

    let (s1, _) = a.publish_and_copy("r", "once", "dup-1").await;
    // The retry: same user, same room, same id.
    a.send(&msg_id("r", "once", "dup-1")).await;
    let v = a.rx.recv_skip_diffs().await;
    assert_eq!(ty(&v), "ack", "retry must be acked, got {v}");
    assert_eq!(v["id"], "dup-1");
    assert_eq!(
        v["data"]["sequence"], s1,
        "retry acked with the original sequence"
    );

    // Also a retry sent back to back with the original, before its ack.
    a.send(&msg_id("r", "twice", "dup-2")).await;
    a.send(&msg_id("r", "twice", "dup-2")).await;
    let mut acks = Vec::new();
    while acks.len() < 2 {
        let v = a.rx.recv_skip_diffs().await;
        match ty(&v) {
            "ack" => acks.push(v["data"]["sequence"].as_u64().unwrap()),
            "message" => {}
            _ => panic!("unexpected {v}"),
        }
    }
    assert_eq!(acks[0], acks[1], "both acks carry the same sequence");
    assert_eq!(acks[0], s1 + 1);

    let (s3, _) = a.publish_and_copy("r", "next", "n-1").await;
    assert_eq!(s3, s1 + 2, "no sequence was used by the retries");

    // The other member saw each message exactly once.
    let mut seen = Vec::new();
    while seen.last().map(|(s, _)| *s) != Some(s3) {
        let v = c.rx.recv_until("message").await;
        seen.push((seq(&v), v["data"]["content"].as_str().unwrap().to_string()));
    }
    assert_eq!(
        seen,
        vec![
            (s1, "once".into()),
            (s1 + 1, "twice".into()),
            (s3, "next".into())
        ]
    );

    // The same id from another user is another message.
    c.send(&msg_id("r", "mine", "dup-1")).await;
    let v = c.rx.recv_until("ack").await;
    assert_eq!(v["data"]["sequence"], s3 + 1);
}

/// A client written for the teaching system: bare path, no user, no
/// subprotocol, its message shapes (PROTOCOL.md intro and §1).
#[tokio::test]
async fn teaching_system_client_works_unchanged() {
    let server = start(config()).await;
    let opts = Opts {
        path: Some("/".into()),
        ..Opts::default()
    };
    let mut old = connect_opts(server.addr, opts.clone()).await;
    assert!(old.protocol.is_none());
    let d = old.connected.clone().unwrap()["data"].clone();
    assert!(d["clientId"].is_string() && d["user"].is_string(), "{d}");

    old.send_text_frame(r#"{"type":"join","room":"r"}"#).await;
    old.recv_until("history").await;
    old.send_text_frame(r#"{"type":"message","data":{"room":"r","content":"hi"}}"#)
        .await;
    let v = old.recv_until("message").await;
    let data = v["data"].as_object().unwrap();
    for key in ["id", "room", "user", "content", "sequence", "timestamp"] {
        assert!(data.contains_key(key), "message data lacks {key}: {v}");
    }
    assert_eq!(data["room"], "r");
    assert_eq!(data["content"], "hi");
    assert_eq!(data["sequence"], 1);
    assert_eq!(data["user"], d["user"]);

    // History and presence as the old client asks for them.
    old.send_text_frame(r#"{"type":"history","room":"r","since":0}"#)
        .await;
    let h = old.recv_until("history").await;
    assert_eq!(h["data"]["messages"][0]["content"], "hi");
    old.send_text_frame(r#"{"type":"presence","room":"r"}"#)
        .await;
    let p = old.recv_until("presence").await;
    assert_eq!(p["data"]["users"][0]["user"], d["user"]);

    // A second old client sees the first one's message.
    let mut other = connect_opts(server.addr, opts).await;
    other.send_text_frame(r#"{"type":"join","room":"r"}"#).await;
    old.send_text_frame(r#"{"type":"message","data":{"room":"r","content":"second"}}"#)
        .await;
    let v = other.recv_message("second").await;
    assert_eq!(v["data"]["sequence"], 2);
}

trait SendText {
    async fn send_text_frame(&mut self, s: &str);
}

impl SendText for Client {
    async fn send_text_frame(&mut self, s: &str) {
        self.tx.send_text(s).await
    }
}
