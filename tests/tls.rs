//! WSS: parlor terminates TLS itself with a certificate generated here, and
//! a chat round-trip works over it.

mod common;

use std::sync::Arc;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_tungstenite::tungstenite::Message;

async fn next_json<S>(ws: &mut S) -> Value
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let m = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] != "heartbeat" {
                return v;
            }
        }
    }
}

#[tokio::test]
async fn chat_round_trip_over_wss() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();

    let mut cfg = config();
    cfg.tls_cert = Some(cert_path);
    cfg.tls_key = Some(key_path);
    let server = start(cfg).await;

    let mut roots = RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/ws?user=tess", tls)
        .await
        .expect("WebSocket handshake over TLS");

    assert_eq!(next_json(&mut ws).await["type"], "connected");
    ws.send(Message::text(
        json!({"type": "join", "room": "secure"}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "joined");
    let msg =
        json!({"type": "message", "id": "t1", "data": {"room": "secure", "content": "over tls"}});
    ws.send(Message::text(msg.to_string())).await.unwrap();
    let mut got_ack = false;
    let mut got_copy = false;
    while !(got_ack && got_copy) {
        let v = next_json(&mut ws).await;
        match v["type"].as_str().unwrap() {
            "ack" => got_ack = v["id"] == "t1" && v["data"]["sequence"] == 1,
            "message" => got_copy = v["data"]["content"] == "over tls",
            _ => {}
        }
    }

    // Plain HTTP on the TLS port is not served.
    let plain = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut plain = plain;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("\"ok\""));
}
