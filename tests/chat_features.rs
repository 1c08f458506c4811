//! Presence status, typing indicators, read markers, direct-message rooms
//! and token refresh over real sockets (PROTOCOL.md §2, §3, §4).

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::binary::Binary;
use common::sse::Sse;
use common::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "feature-secret-0123456789";

fn cfg() -> Config {
    let mut cfg = config();
    cfg.shards = Some(1);
    cfg.presence_window_ms = 20;
    cfg
}

fn token(claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn auth_cfg() -> Config {
    let mut c = cfg();
    c.jwt_secret = Some(SECRET.into());
    c
}

async fn connect_token(addr: std::net::SocketAddr, tok: &str, fmt: Option<&str>) -> Client {
    let opts = Opts {
        path: Some(format!("/ws?token={tok}")),
        subprotocols: fmt
            .map(|f| vec![format!("parlor.v1.{f}")])
            .unwrap_or_default(),
        ..Opts::default()
    };
    connect_opts(addr, opts).await
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

/// Next presence_diff of `room` with a non-empty `changes`.
async fn next_change(c: &mut Client, room: &str) -> Value {
    loop {
        let v = next_of(c, "presence_diff", room).await;
        if v["data"]["changes"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            return v;
        }
    }
}

#[tokio::test]
async fn status_changes_reach_json_and_msgpack_members() {
    let server = start(cfg()).await;
    let room = unique("status");
    let mut ann = connect(server.addr, "ann").await;
    ann.join(&room).await;
    let mut bob = connect_opts(
        server.addr,
        Opts {
            format_query: Some("msgpack".into()),
            ..Opts::user("bob")
        },
    )
    .await;
    bob.join(&room).await;
    next_of(&mut ann, "presence_diff", &room).await;

    ann.send(&json!({"type": "status", "status": "busy", "text": "in a call"}))
        .await;
    for c in [&mut ann, &mut bob] {
        let d = next_change(c, &room).await;
        assert_eq!(
            d["data"]["changes"],
            json!([{"user": "ann", "status": "busy", "text": "in a call"}]),
            "{d}"
        );
    }
    // The snapshot carries it, for a late joiner too.
    bob.send(&json!({"type": "presence", "room": room})).await;
    let p = next_of(&mut bob, "presence", &room).await;
    let entry = p["data"]["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user"] == "ann")
        .cloned()
        .unwrap();
    assert_eq!(
        (entry["status"].clone(), entry["text"].clone()),
        (json!("busy"), json!("in a call"))
    );

    // Per user: a second connection of ann's sets away; it wins everywhere.
    let mut ann2 = connect(server.addr, "ann").await;
    let other = unique("status-other");
    ann2.join(&other).await;
    ann2.send(&json!({"type": "status", "status": "away"}))
        .await;
    let d = next_change(&mut bob, &room).await;
    assert_eq!(
        d["data"]["changes"],
        json!([{"user": "ann", "status": "away"}])
    );
    // Joining a new room, ann shows her status there.
    let mut cat = connect(server.addr, "cat").await;
    let third = unique("status-third");
    cat.join(&third).await;
    ann.join(&third).await;
    let d = next_of(&mut cat, "presence_diff", &third).await;
    assert_eq!(d["data"]["joins"], json!(["ann"]));
    assert_eq!(
        d["data"]["changes"],
        json!([{"user": "ann", "status": "away"}])
    );

    // Bad statuses are refused.
    ann.send(&json!({"type": "status", "status": "asleep", "id": "s1"}))
        .await;
    assert_error(&ann.recv_until("error").await, "bad_request", Some("s1"));
    let long = "x".repeat(129);
    ann.send(&json!({"type": "status", "status": "away", "text": long, "id": "s2"}))
        .await;
    assert_error(&ann.recv_until("error").await, "too_large", Some("s2"));
}

#[tokio::test]
async fn typing_is_relayed_rate_limited_and_never_stored() {
    let server = start(cfg()).await;
    let room = unique("typing");
    let mut ann = connect(server.addr, "ann").await;
    ann.join(&room).await;
    let mut bob = connect_opts(
        server.addr,
        Opts {
            format_query: Some("msgpack".into()),
            ..Opts::user("bob")
        },
    )
    .await;
    bob.join(&room).await;
    let typing = json!({"type": "typing", "room": room});
    ann.send(&typing).await;
    let t = next_of(&mut bob, "typing", &room).await;
    assert_eq!(t["data"], json!({"room": room, "user": "ann"}));
    assert!(t["data"].get("sequence").is_none(), "no sequence: {t}");
    // More within the second are dropped silently; a message then shows
    // nothing came in between.
    for _ in 0..5 {
        ann.send(&typing).await;
    }
    ann.publish(&room, "after typing", "t1").await;
    loop {
        let v = bob.recv().await;
        assert_ne!(
            ty(&v),
            "typing",
            "a second typing relay within a second: {v}"
        );
        if ty(&v) == "message" {
            break;
        }
    }
    // After a second, typing is relayed again; the typist is not told.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ann.send(&typing).await;
    next_of(&mut bob, "typing", &room).await;
    // Not in history, not in a replay.
    let h = get(server.addr, &format!("/api/rooms/{room}/messages"))
        .await
        .json();
    assert_eq!(h["messages"].as_array().unwrap().len(), 1);
    let mut late = connect(server.addr, "late").await;
    late.send(&join_since(&room, 0)).await;
    late.expect("joined").await;
    late.expect("presence").await;
    let m = late.rx.recv_skip_diffs().await;
    assert_eq!((ty(&m), seq(&m)), ("message", 1));
    ann.publish(&room, "barrier", "t2").await;
    let m = late.rx.recv_skip_diffs().await;
    assert_eq!(
        m["data"]["content"], "barrier",
        "nothing but messages replayed: {m}"
    );
    // Not joined: not_joined.
    let mut eve = connect(server.addr, "eve").await;
    eve.send(&json!({"type": "typing", "room": room, "id": "e1"}))
        .await;
    assert_error(&eve.recv_until("error").await, "not_joined", Some("e1"));
    // The typist itself never got a typing frame.
    ann.send(&json!({"type": "ping"})).await;
    loop {
        let v = ann.recv().await;
        assert_ne!(ty(&v), "typing", "the typist was told: {v}");
        if ty(&v) == "pong" {
            break;
        }
    }
}

#[tokio::test]
async fn typing_is_not_sent_in_rooms_above_the_presence_threshold() {
    let mut c = cfg();
    c.presence_diff_max_members = 1;
    let server = start(c).await;
    let room = unique("big");
    let mut ann = connect(server.addr, "ann").await;
    ann.join(&room).await;
    let mut bob = connect(server.addr, "bob").await;
    bob.join(&room).await;
    ann.send(&json!({"type": "typing", "room": room})).await;
    ann.send(&json!({"type": "read", "room": room, "sequence": 0}))
        .await;
    ann.publish(&room, "m", "b1").await;
    let m = bob.rx.recv_skip_diffs().await;
    assert_eq!(ty(&m), "message", "no typing in a big room: {m}");
}

#[tokio::test]
async fn read_markers_move_forward_only_and_reach_the_users_other_devices() {
    let server = start(cfg()).await;
    let room = unique("read");
    let mut ann = connect(server.addr, "ann").await;
    let (joined, _, _) = ann.join(&room).await;
    assert_eq!(joined["data"]["read"], 0);
    for i in 1..=5 {
        ann.publish(&room, &format!("m{i}"), &format!("r{i}")).await;
    }
    let mut phone = connect_opts(
        server.addr,
        Opts {
            format_query: Some("msgpack".into()),
            ..Opts::user("ann")
        },
    )
    .await;
    phone.join(&room).await;
    let mut bob = connect(server.addr, "bob").await;
    bob.join(&room).await;
    ann.send(&json!({"type": "read", "room": room, "sequence": 3}))
        .await;
    for c in [&mut phone, &mut bob] {
        let r = next_of(c, "read", &room).await;
        assert_eq!(
            r["data"],
            json!({"room": room, "user": "ann", "sequence": 3})
        );
    }
    // Backwards: nothing happens. Past the end: the newest.
    ann.send(&json!({"type": "read", "room": room, "sequence": 2}))
        .await;
    ann.send(&json!({"type": "read", "room": room, "sequence": 99}))
        .await;
    let r = next_of(&mut bob, "read", &room).await;
    assert_eq!(r["data"]["sequence"], 5, "{r}");
    // A new device of ann's learns the marker in `joined`.
    let mut tab = connect(server.addr, "ann").await;
    let (joined, _, _) = tab.join(&room).await;
    assert_eq!(joined["data"]["read"], 5);
    let (joined, _, _) = bob.join(&unique("other")).await;
    assert_eq!(joined["data"]["read"], 0);
}

#[tokio::test]
async fn read_markers_survive_a_restart_on_redb() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Binary::start(&data, &[]).await;
    let room = "durable-read";
    let mut ann = connect(server.addr, "ann").await;
    ann.join(room).await;
    for i in 1..=4 {
        ann.publish(room, &format!("m{i}"), &format!("d{i}")).await;
    }
    let mut bob = connect(server.addr, "bob").await;
    bob.join(room).await;
    ann.send(&json!({"type": "read", "room": room, "sequence": 4}))
        .await;
    ann.send(&json!({"type": "read", "room": room, "sequence": 1}))
        .await;
    next_of(&mut bob, "read", room).await;
    drop((ann, bob));
    server.signal("TERM");
    assert!(server
        .exit_within(TIMEOUT)
        .await
        .is_some_and(|s| s.success()));

    let server = Binary::start(&data, &[]).await;
    let mut ann = connect(server.addr, "ann").await;
    let (joined, _, _) = ann.join(room).await;
    assert_eq!(joined["data"]["read"], 4, "{joined}");
    ann.send(&json!({"type": "read", "room": room, "sequence": 2}))
        .await;
    let mut tab = connect(server.addr, "ann").await;
    let (joined, _, _) = tab.join(room).await;
    assert_eq!(joined["data"]["read"], 4, "never backwards");
}

#[tokio::test]
async fn a_dm_room_is_for_its_two_users_at_every_door() {
    let server = start(auth_cfg()).await;
    let addr = server.addr;
    let exp = now_s() + 600;
    let tok = |u: &str| token(json!({"sub": u, "exp": exp}));
    let dm = "dm:alice:bob";
    let mut alice = connect_token(addr, &tok("alice"), None).await;
    alice.join(dm).await;
    let mut bob = connect_token(addr, &tok("bob"), Some("msgpack")).await;
    bob.join(dm).await;
    alice.publish(dm, "just us", "dm1").await;
    bob.recv_message("just us").await;

    // carol: WebSocket (every request naming the room), SSE, long poll, API.
    let carol_tok = tok("carol");
    let mut carol = connect_token(addr, &carol_tok, None).await;
    for (i, frame) in [
        json!({"type": "join", "room": dm}),
        json!({"type": "history", "room": dm}),
        json!({"type": "presence", "room": dm}),
        json!({"type": "typing", "room": dm}),
        json!({"type": "read", "room": dm, "sequence": 1}),
        json!({"type": "message", "data": {"room": dm, "content": "hi"}}),
    ]
    .into_iter()
    .enumerate()
    {
        let mut frame = frame;
        frame["id"] = json!(format!("c{i}"));
        carol.send(&frame).await;
        assert_error(
            &carol.recv_until("error").await,
            "forbidden",
            Some(&format!("c{i}")),
        );
    }
    let mut sse = Sse::open(
        addr,
        &format!("/api/rooms/{dm}/events?token={carol_tok}"),
        &[],
    )
    .await;
    assert_eq!(sse.status, 403);
    assert_eq!(sse.error_body().await["error"]["code"], "forbidden");
    let bearer = format!("Bearer {carol_tok}");
    let auth = [("Authorization", bearer.as_str())];
    for path in [
        format!("/api/rooms/{dm}/messages"),
        format!("/api/rooms/{dm}/messages?since=0&wait=5"),
    ] {
        let r = http(addr, "GET", &path, &auth, None).await;
        assert_eq!(r.status, 403, "{path}: {}", r.text());
    }
    let body = json!({"content": "let me in"}).to_string();
    let r = http(
        addr,
        "POST",
        &format!("/api/rooms/{dm}/messages"),
        &auth,
        Some(body.as_bytes()),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let listed = http(addr, "GET", "/api/rooms", &auth, None).await.json();
    assert!(
        listed["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["room"] != dm),
        "{listed}"
    );

    // alice over the same doors.
    let alice_tok = tok("alice");
    let bearer = format!("Bearer {alice_tok}");
    let auth = [("Authorization", bearer.as_str())];
    let r = http(
        addr,
        "GET",
        &format!("/api/rooms/{dm}/messages"),
        &auth,
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["messages"][0]["content"], "just us");
    let mut sse = Sse::open(
        addr,
        &format!("/api/rooms/{dm}/events?token={alice_tok}&since=0"),
        &[],
    )
    .await;
    assert_eq!(sse.status, 200);
    let (s, m) = sse.message().await.unwrap();
    assert_eq!((s, m["content"].clone()), (1, json!("just us")));
    // A `dm:` name out of order is nobody's.
    alice
        .send(&json!({"type": "join", "room": "dm:bob:alice", "id": "x"}))
        .await;
    assert_error(&alice.recv_until("error").await, "forbidden", Some("x"));
}

#[tokio::test]
async fn without_auth_a_dm_room_goes_by_the_names_users_give() {
    let server = start(cfg()).await;
    let dm = "dm:alice:bob";
    let mut carol = connect(server.addr, "carol").await;
    carol
        .send(&json!({"type": "join", "room": dm, "id": "j"}))
        .await;
    assert_error(&carol.recv_until("error").await, "forbidden", Some("j"));
    let r = get(server.addr, &format!("/api/rooms/{dm}/messages")).await;
    assert_eq!(r.status, 403, "who asks must be said");
    let r = get(server.addr, &format!("/api/rooms/{dm}/messages?user=alice")).await;
    assert_eq!(r.status, 200);
    let r = post_json(
        server.addr,
        &format!("/api/rooms/{dm}/messages"),
        &json!({"user": "carol", "content": "x"}),
    )
    .await;
    assert_eq!(r.status, 403);
    let r = post_json(
        server.addr,
        &format!("/api/rooms/{dm}/messages"),
        &json!({"user": "bob", "content": "x"}),
    )
    .await;
    assert_eq!(r.status, 201);
}

#[tokio::test]
async fn a_post_with_a_users_token_publishes_as_that_user() {
    let mut c = auth_cfg();
    c.api_key = Some("the-key".into());
    c.rate_per_sec = 0.0;
    c.rate_burst = 3.0;
    let server = start(c).await;
    let addr = server.addr;
    let tok = token(json!({"sub": "alice", "exp": now_s() + 600, "rooms": ["open-*"]}));
    let bearer = format!("Bearer {tok}");
    let auth = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/json"),
    ];
    let post = |room: &'static str, body: Value| async move {
        let b = body.to_string();
        http(
            addr,
            "POST",
            &format!("/api/rooms/{room}/messages"),
            &auth,
            Some(b.as_bytes()),
        )
        .await
    };
    let r = post("open-1", json!({"content": "as me", "id": "p1"})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = post("open-1", json!({"user": "mallory", "content": "not me"})).await;
    assert_eq!(r.status, 403);
    let r = post("secret", json!({"content": "not granted"})).await;
    assert_eq!(r.status, 403);
    let r = post(
        "open-1",
        json!({"user": "alice", "content": "me again", "id": "p2"}),
    )
    .await;
    assert_eq!(r.status, 201);
    // A retry with the same id is idempotent.
    let r = post("open-1", json!({"content": "as me", "id": "p1"})).await;
    assert_eq!((r.status, r.json()["sequence"].clone()), (201, json!(1)));
    // The per-user rate: a burst of 3, no refill.
    let r = post("open-1", json!({"content": "one too many"})).await;
    assert_eq!(r.status, 429, "{}", r.text());
    let key = [("Authorization", "Bearer the-key")];
    let page = http(addr, "GET", "/api/rooms/open-1/messages", &key, None)
        .await
        .json();
    let users: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["alice", "alice"]);
}

#[tokio::test]
async fn refresh_extends_a_session_past_the_first_tokens_expiry() {
    let server = start(auth_cfg()).await;
    let addr = server.addr;
    // Expires in 2 s (the server allows 5 s of skew on a token it checks,
    // but a session ends at `exp` itself).
    let first = token(json!({"sub": "ann", "exp": now_s() + 2}));
    let mut ann = connect_token(addr, &first, None).await;
    let room = unique("refresh");
    ann.join(&room).await;
    // Another user's token is refused and changes nothing.
    let bobs = token(json!({"sub": "bob", "exp": now_s() + 600}));
    ann.send(&json!({"type": "refresh", "token": bobs, "id": "r0"}))
        .await;
    assert_error(&ann.recv_until("error").await, "forbidden", Some("r0"));
    ann.send(&json!({"type": "refresh", "token": "garbage", "id": "r1"}))
        .await;
    assert_error(&ann.recv_until("error").await, "forbidden", Some("r1"));
    let later = now_s() + 600;
    let second = token(json!({"sub": "ann", "exp": later, "rooms": [room.clone(), "keep-*"]}));
    ann.send(&json!({"type": "refresh", "token": second, "id": "r2"}))
        .await;
    let r = ann.recv_until("refreshed").await;
    assert_eq!(r["id"], "r2");
    assert_eq!(r["data"]["user"], "ann");
    assert_eq!(r["data"]["expiresAt"], later * 1000);
    // Past the first token's expiry, still connected and chatting.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let s = ann.publish(&room, "still here", "late").await;
    assert_eq!(s, 1);
    // The new grants hold: another room is now forbidden.
    ann.send(&json!({"type": "join", "room": "elsewhere", "id": "j"}))
        .await;
    assert_error(&ann.recv_until("error").await, "forbidden", Some("j"));
}

#[tokio::test]
async fn a_session_whose_token_runs_out_without_refresh_is_closed() {
    let server = start(auth_cfg()).await;
    let first = token(json!({"sub": "ann", "exp": now_s() + 1}));
    let mut ann = connect_token(server.addr, &first, None).await;
    // A refused refresh (another user) does not extend it.
    let bobs = token(json!({"sub": "bob", "exp": now_s() + 600}));
    ann.send(&json!({"type": "refresh", "token": bobs})).await;
    assert_eq!(ann.expect_close().await, 4001);
}
