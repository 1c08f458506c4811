//! Authentication and admission over real sockets: JWT on the upgrade, room
//! claims, expiry while connected, the API key, the Origin allow-list and
//! connection limits.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "test-secret-0123456789";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(claims: serde_json::Value, secret: &str) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

const UPGRADE: [(&str, &str); 4] = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
];

fn upgrade_with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut h = UPGRADE.to_vec();
    h.extend_from_slice(extra);
    h
}

fn auth_config() -> parlor::Config {
    let mut cfg = config();
    cfg.jwt_secret = Some(SECRET.into());
    cfg
}

#[tokio::test]
async fn tokens_are_required_and_checked_before_the_upgrade() {
    let server = start(auth_config()).await;
    let addr = server.addr;
    let refused = |path: String| async move {
        let r = http(addr, "GET", &path, &UPGRADE, None).await;
        assert_eq!(r.status, 401, "{path}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "forbidden");
    };
    refused("/ws".into()).await;
    refused("/ws?user=mallory".into()).await;
    let forged = token(json!({"sub": "ann", "exp": now() + 600}), "other-secret");
    refused(format!("/ws?token={forged}")).await;
    let expired = token(json!({"sub": "ann", "exp": now() - 600}), SECRET);
    refused(format!("/ws?token={expired}")).await;
    let not_yet = token(json!({"sub": "ann", "nbf": now() + 600}), SECRET);
    refused(format!("/ws?token={not_yet}")).await;

    // A good token in the query: the user is the token's subject, not ?user=.
    let good = token(json!({"sub": "ann", "exp": now() + 600}), SECRET);
    let opts = Opts {
        path: Some(format!("/ws?token={good}&user=mallory")),
        ..Opts::default()
    };
    let mut c = connect_opts(addr, opts).await;
    assert_eq!(c.connected.as_ref().unwrap()["data"]["user"], "ann");
    c.join("lobby").await;
    let seq = c.publish("lobby", "hi", "m1").await;
    assert_eq!(seq, 1);

    // And as a bearer header.
    let bearer = format!("Bearer {good}");
    let mut raw = Raw::connect_with(addr, "/ws", &[("Authorization", &bearer)]).await;
    let connected = raw.recv_json().await;
    assert_eq!(connected["data"]["user"], "ann");
}

#[tokio::test]
async fn a_room_claim_limits_what_may_be_joined() {
    let server = start(auth_config()).await;
    let t = token(
        json!({"sub": "bo", "exp": now() + 600, "rooms": ["lobby", "team-*"]}),
        SECRET,
    );
    let opts = Opts {
        path: Some(format!("/ws?token={t}")),
        ..Opts::default()
    };
    let mut c = connect_opts(server.addr, opts).await;
    c.join("lobby").await;
    c.join("team-red").await;
    c.send(&json!({"type": "join", "room": "secret", "id": "j1"}))
        .await;
    let e = c.recv_until("error").await;
    assert_error(&e, "forbidden", Some("j1"));
    c.send(&json!({"type": "ping"})).await;
    c.recv_until("pong").await;
}

#[tokio::test]
async fn a_token_that_expires_while_connected_closes_with_4001() {
    let server = start(auth_config()).await;
    let t = token(json!({"sub": "cy", "exp": now() + 2}), SECRET);
    let opts = Opts {
        path: Some(format!("/ws?token={t}")),
        ..Opts::default()
    };
    let mut c = connect_opts(server.addr, opts).await;
    assert_eq!(c.expect_close().await, 4001);
}

#[tokio::test]
async fn without_a_secret_anonymous_users_work() {
    let server = start(config()).await;
    let c = connect(server.addr, "dee").await;
    assert_eq!(c.connected.as_ref().unwrap()["data"]["user"], "dee");
}

#[tokio::test]
async fn the_api_key_guards_writes_and_optionally_reads() {
    let mut cfg = config();
    cfg.api_key = Some("k3y".into());
    let server = start(cfg).await;
    let addr = server.addr;
    let body = json!({"user": "svc", "content": "deploy done"}).to_string();
    let post = |auth: Option<&'static str>| {
        let body = body.clone();
        async move {
            let mut h = vec![("Content-Type", "application/json")];
            if let Some(a) = auth {
                h.push(("Authorization", a));
            }
            http(
                addr,
                "POST",
                "/api/rooms/ops/messages",
                &h,
                Some(body.as_bytes()),
            )
            .await
        }
    };
    assert_eq!(post(None).await.status, 401);
    assert_eq!(post(Some("Bearer nope")).await.status, 401);
    let ok = post(Some("Bearer k3y")).await;
    assert_eq!(ok.status, 201, "{}", ok.text());
    assert_eq!(ok.json()["sequence"], 1);
    // Reads stay open by default.
    assert_eq!(get(addr, "/api/rooms/ops/messages").await.status, 200);

    let mut cfg = config();
    cfg.api_key = Some("k3y".into());
    cfg.api_read_open = false;
    let closed = start(cfg).await;
    assert_eq!(get(closed.addr, "/api/rooms").await.status, 401);
    let r = http(
        closed.addr,
        "GET",
        "/api/rooms",
        &[("Authorization", "Bearer k3y")],
        None,
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_refused_origin_gets_403() {
    let mut cfg = config();
    cfg.allowed_origins = vec!["https://chat.example.com".into()];
    let server = start(cfg).await;
    let evil = upgrade_with(&[("Origin", "https://evil.example")]);
    let r = http(server.addr, "GET", "/ws?user=a", &evil, None).await;
    assert_eq!(r.status, 403);
    Raw::connect_with(
        server.addr,
        "/ws?user=a",
        &[("Origin", "https://chat.example.com")],
    )
    .await;
    // Non-browser clients send no Origin.
    Raw::connect(server.addr, "/ws?user=a").await;
}

#[tokio::test]
async fn connections_over_the_limit_get_503_but_healthz_and_metrics_answer() {
    let mut cfg = config();
    cfg.max_connections = 2;
    let server = start(cfg).await;
    let addr = server.addr;
    let a = connect(addr, "a").await;
    let _b = connect(addr, "b").await;
    // Over the limit, a reserve connection serves health and metrics only.
    assert_eq!(get(addr, "/healthz").await.status, 200);
    assert_eq!(get(addr, "/metrics").await.status, 200);
    let ws = http(addr, "GET", "/ws?user=c", &UPGRADE, None).await;
    assert_eq!(ws.status, 503, "{}", ws.text());
    assert_eq!(get(addr, "/api/rooms").await.status, 503);
    drop(a);
    // The slot frees once the first session has ended.
    eventually("a free connection slot", || async {
        (get(addr, "/api/rooms").await.status == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn connections_per_user_are_limited() {
    let mut cfg = config();
    cfg.max_conns_per_user = Some(1);
    let server = start(cfg).await;
    let solo = connect(server.addr, "solo").await;
    // A refusal takes no slot and gives none back: the next is refused too.
    for _ in 0..2 {
        let Err(e) = try_connect(server.addr, &Opts::user("solo")).await else {
            panic!("a second session of solo was admitted");
        };
        assert!(e.to_string().contains("429"), "{e}");
    }
    let _other = connect(server.addr, "someone-else").await;
    // The slot comes back once the session has ended (as the server
    // notices the close: tried again until then).
    drop(solo);
    let deadline = std::time::Instant::now() + TIMEOUT;
    let _again = loop {
        match try_connect(server.addr, &Opts::user("solo")).await {
            Ok(ws) => break ws,
            Err(e) => assert!(std::time::Instant::now() < deadline, "still refused: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let r = http(server.addr, "GET", "/ws?user=solo", &UPGRADE, None).await;
    assert_eq!(r.status, 429, "the slot is taken again");
}

/// Found from outside: a token whose `rooms` claim is `["lobby","team-*"]`
/// got `forbidden` on `join secret-x`, but `history` returned its messages
/// and `presence` who was in it. Every request that names a room passes the
/// same grant check, over WebSocket and over the HTTP API with a user token.
#[tokio::test]
async fn room_grants_hold_for_every_request_that_names_a_room() {
    let mut cfg = auth_config();
    cfg.api_key = Some("the-api-key".into());
    cfg.api_read_open = false;
    let server = start(cfg).await;
    let addr = server.addr;
    let connect_as = |claims: serde_json::Value| {
        let t = token(claims, SECRET);
        async move {
            let opts = Opts {
                path: Some(format!("/ws?token={t}")),
                ..Opts::default()
            };
            connect_opts(addr, opts).await
        }
    };
    let mut insider = connect_as(json!({"sub": "ann", "exp": now() + 600})).await;
    insider.join("secret-x").await;
    insider.publish("secret-x", "the plan", "s1").await;
    insider.join("team-a").await;
    insider.publish("team-a", "hello team", "t1").await;

    let limited = json!({"sub": "eve", "exp": now() + 600, "rooms": ["lobby", "team-*"]});
    let mut eve = connect_as(limited.clone()).await;
    for (i, req) in [
        json!({"type": "join", "room": "secret-x"}),
        json!({"type": "history", "room": "secret-x"}),
        json!({"type": "presence", "room": "secret-x"}),
        json!({"type": "leave", "room": "secret-x"}),
    ]
    .into_iter()
    .enumerate()
    {
        let mut req = req;
        req["id"] = json!(format!("q{i}"));
        eve.send(&req).await;
        assert_error(&eve.recv().await, "forbidden", Some(&format!("q{i}")));
    }
    // What the token grants still works.
    eve.send(&json!({"type": "history", "room": "team-a"}))
        .await;
    let page = eve.expect("history").await;
    assert_eq!(page["data"]["messages"][0]["content"], "hello team");

    // The HTTP API with the same token: the same rooms, no others.
    let bearer = format!("Bearer {}", token(limited, SECRET));
    let auth = [("Authorization", bearer.as_str())];
    let r = http(addr, "GET", "/api/rooms/secret-x/messages", &auth, None).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "forbidden");
    let r = http(addr, "GET", "/api/rooms/team-a/messages", &auth, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let listed = http(addr, "GET", "/api/rooms", &auth, None).await.json();
    let names: Vec<&str> = listed["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["room"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["team-a"], "only the rooms the token grants");
    // The API key still sees everything; no credential sees nothing.
    let key = [("Authorization", "Bearer the-api-key")];
    let r = http(addr, "GET", "/api/rooms/secret-x/messages", &key, None).await;
    assert_eq!(r.status, 200);
    let r = get(addr, "/api/rooms/secret-x/messages").await;
    assert_eq!(r.status, 401);
}
