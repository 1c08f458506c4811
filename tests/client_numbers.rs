//! Numbers clients choose, at their extremes: a signed token whose `exp`
//! the clock cannot represent, and history queries at the edges of u64.
//! None of them may panic a connection task; the server keeps serving.

mod common;

use common::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "test-secret-0123456789";

fn token(claims: serde_json::Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn a_token_expiring_beyond_the_clock_connects_as_never_expiring() {
    let mut cfg = config();
    cfg.jwt_secret = Some(SECRET.into());
    let server = start(cfg).await;
    let addr = server.addr;
    for (i, exp) in [1u64 << 63, u64::MAX, (1u64 << 63) + 12345]
        .into_iter()
        .enumerate()
    {
        let user = format!("far{i}");
        let t = token(json!({"sub": user, "exp": exp}));
        let opts = Opts {
            path: Some(format!("/ws?token={t}")),
            ..Opts::default()
        };
        let mut c = connect_opts(addr, opts).await;
        assert_eq!(c.connected.as_ref().unwrap()["data"]["user"], user.as_str());
        let room = unique("far");
        c.join(&room).await;
        c.publish(&room, "still valid", "p1").await;
    }
    // Authenticated, the server still serves a normal token.
    let ok = token(json!({"sub": "near", "exp": 4_000_000_000u64}));
    let opts = Opts {
        path: Some(format!("/ws?token={ok}")),
        ..Opts::default()
    };
    connect_opts(addr, opts).await;
}

#[tokio::test]
async fn history_queries_at_the_edges_of_u64_answer_without_harm() {
    let server = start(config()).await;
    let addr = server.addr;
    let mut c = connect(addr, "ann").await;
    c.join("edge").await;
    c.publish("edge", "one", "1").await;
    let max = u64::MAX;
    for (query, status) in [
        (format!("since={max}"), 200),
        (format!("since={}", max - 1), 200),
        (format!("limit={max}"), 200),
        (format!("since={max}&limit={max}"), 200),
        ("limit=0".to_string(), 200),
        ("since=18446744073709551616".to_string(), 400),
        ("limit=99999999999999999999999".to_string(), 400),
        ("since=-1".to_string(), 400),
        ("since=1e3".to_string(), 400),
    ] {
        let r = get(addr, &format!("/api/rooms/edge/messages?{query}")).await;
        assert_eq!(r.status, status, "{query}: {}", r.text());
        if status == 200 {
            assert!(r.json()["messages"].is_array(), "{query}: {}", r.text());
        }
    }
    let page = get(addr, &format!("/api/rooms/edge/messages?limit={max}"))
        .await
        .json();
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);
    assert_alive(addr).await;
}
