//! One rule for user names at every door a name comes in by: `?user=` on
//! the upgrade (400), the `user` of `POST /api/rooms/{room}/messages` (400)
//! and a token's `sub` (401). A name is 1-64 characters, without control
//! characters, line separators or bidirectional formatting characters, and
//! without white space at either end.

mod common;

use common::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "test-secret-0123456789";

const UPGRADE: [(&str, &str); 4] = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
];

/// Names every door must refuse.
fn bad_names() -> Vec<String> {
    vec![
        String::new(),
        "nul\0byte".into(),
        "two\nlines".into(),
        "cr\rlf".into(),
        "tab\there".into(),
        "\u{1b}[31mred\u{1b}[0m".into(),
        "del\u{7f}".into(),
        "c1\u{85}next".into(),
        "line\u{2028}sep".into(),
        "evil\u{202e}txt.exe".into(),
        "isolate\u{2066}x".into(),
        " ann".into(),
        "ann ".into(),
        "x".repeat(65),
        "é".repeat(65),
        "x".repeat(10 * 1024),
    ]
}

/// Names every door must accept, as given.
fn good_names() -> Vec<String> {
    vec![
        "a".into(),
        "Ann Lee".into(),
        "名前".into(),
        "x".repeat(64),
        "é".repeat(64),
        "o'brien-2 (ops)".into(),
    ]
}

fn encode_query(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn query_user_names_follow_the_one_rule() {
    let server = start(config()).await;
    let addr = server.addr;
    for name in bad_names() {
        let path = format!("/ws?user={}", encode_query(&name));
        let r = http(addr, "GET", &path, &UPGRADE, None).await;
        assert_eq!(r.status, 400, "{name:?}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "bad_request");
    }
    for name in good_names() {
        let opts = Opts {
            path: Some(format!("/ws?user={}", encode_query(&name))),
            ..Opts::default()
        };
        let c = connect_opts(addr, opts).await;
        assert_eq!(c.connected.as_ref().unwrap()["data"]["user"], name.as_str());
    }
}

#[tokio::test]
async fn http_post_user_names_follow_the_one_rule() {
    let server = start(config()).await;
    let addr = server.addr;
    for name in bad_names() {
        let body = json!({"user": name, "content": "hi"});
        let r = post_json(addr, "/api/rooms/doors/messages", &body).await;
        assert_eq!(r.status, 400, "{name:?}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "bad_request");
    }
    let page = get(addr, "/api/rooms/doors/messages").await.json();
    assert_eq!(page["messages"], json!([]), "nothing refused was stored");
    for name in good_names() {
        let body = json!({"user": name, "content": "hi"});
        let r = post_json(addr, "/api/rooms/doors/messages", &body).await;
        assert_eq!(r.status, 201, "{name:?}: {}", r.text());
    }
    let page = get(addr, "/api/rooms/doors/messages").await.json();
    let users: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap())
        .collect();
    let expected = good_names();
    assert_eq!(
        users,
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn token_subjects_follow_the_one_rule() {
    let mut cfg = config();
    cfg.jwt_secret = Some(SECRET.into());
    let server = start(cfg).await;
    let addr = server.addr;
    let token = |sub: &str| {
        encode(
            &Header::default(),
            &json!({"sub": sub, "exp": 4_000_000_000u64}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    for name in bad_names() {
        let bearer = format!("Bearer {}", token(&name));
        let mut headers = UPGRADE.to_vec();
        headers.push(("Authorization", &bearer));
        let r = http(addr, "GET", "/ws", &headers, None).await;
        assert_eq!(r.status, 401, "{name:?}: {}", r.text());
        let e = r.json();
        assert_eq!(e["error"]["code"], "forbidden");
        let message = e["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("sub"),
            "{name:?}: unclear message {message:?}"
        );
    }
    for name in good_names() {
        let opts = Opts {
            path: Some(format!("/ws?token={}", token(&name))),
            ..Opts::default()
        };
        let c = connect_opts(addr, opts).await;
        assert_eq!(c.connected.as_ref().unwrap()["data"]["user"], name.as_str());
    }
}
