//! Connection lifecycle: shutdown closes with 1001 after what was acked is
//! stored (PROTOCOL.md §6), any client frame counts as alive, large pages.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use parlor::protocol::RoomName;
use parlor::store::{MemoryStore, Store};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_sessions_with_1001_and_keeps_acked_messages() {
    let store = Arc::new(MemoryStore::new());
    let server = start_with_store(config(), store.clone()).await;
    let addr = server.addr;
    let mut a = connect(addr, "ann").await;
    let mut m = connect_opts(
        addr,
        Opts {
            user: Some("mia".into()),
            format_query: Some("msgpack".into()),
            ..Opts::default()
        },
    )
    .await;
    a.join("r").await;
    m.join("r").await;
    let (s, _) = a.publish_and_copy("r", "kept", "k1").await;

    let (a_tx, mut a_rx) = a.split();
    let (m_tx, mut m_rx) = m.split();
    let closes = tokio::spawn(async move {
        let codes = (a_rx.expect_close().await, m_rx.expect_close().await);
        drop((a_rx, m_rx, a_tx, m_tx));
        codes
    });
    server.shutdown(Duration::from_secs(5)).await;
    assert_eq!(closes.await.unwrap(), (1001, 1001));

    let stored = store
        .read(
            &RoomName::parse("r").unwrap(),
            0,
            u64::MAX,
            parlor::store::ReadLimit::messages(10),
        )
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (stored[0].sequence, stored[0].content.as_str()),
        (s, "kept")
    );

    // No longer accepting.
    let refused = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .unwrap();
    assert!(refused.is_err(), "still accepting after shutdown");
}

#[tokio::test]
async fn data_frames_count_as_alive_without_pongs() {
    let mut cfg = config();
    cfg.heartbeat_ms = 200;
    let server = start(cfg).await;
    // Never answers a WebSocket ping, but sends a `ping` message after each
    // heartbeat frame: alive, since any frame counts.
    let mut raw = Raw::connect(server.addr, "/ws?user=chatty").await;
    assert_eq!(ty(&raw.recv_json().await), "connected");
    let (mut beats, mut pongs) = (0, 0);
    while beats < 6 {
        let f = raw
            .read_frame()
            .await
            .expect("a client that sends data must stay connected");
        match f.opcode {
            OP_TEXT => {
                let v: serde_json::Value = serde_json::from_slice(&f.payload).unwrap();
                match ty(&v) {
                    "heartbeat" => {
                        beats += 1;
                        raw.send_json(&json!({"type": "ping"})).await;
                    }
                    "pong" => pongs += 1,
                    _ => panic!("unexpected {v}"),
                }
            }
            OP_PING => {}
            OP_CLOSE => panic!("closed with {:?} although it kept sending", f.close_code()),
            op => panic!("unexpected opcode {op}"),
        }
    }
    assert!(pongs >= 5, "{pongs}");
}

#[tokio::test]
async fn history_pages_are_capped_at_1000() {
    let mut cfg = config();
    cfg.rate_per_sec = 1e9;
    cfg.rate_burst = 1e9;
    let server = start(cfg).await;
    let mut a = connect(server.addr, "ann").await;
    a.join("r").await;
    for i in 1..=1200 {
        a.send(&msg("r", &format!("m{i}"))).await;
    }
    a.publish("r", "last", "last").await;

    a.send(&json!({"type": "history", "room": "r", "limit": 5000}))
        .await;
    let h = a.recv_until("history").await;
    let msgs = h["data"]["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1000);
    assert_eq!(msgs[0]["sequence"], 1);
    assert_eq!(msgs[999]["sequence"], 1000);
    assert_eq!(h["data"]["more"], true);

    a.send(&json!({"type": "history", "room": "r", "since": 1000, "limit": 1000}))
        .await;
    let h = a.recv_until("history").await;
    assert_eq!(h["data"]["messages"].as_array().unwrap().len(), 201);
    assert_eq!(h["data"]["more"], false);

    let v = get(server.addr, "/api/rooms/r/messages?limit=5000")
        .await
        .json();
    assert_eq!(v["messages"].as_array().unwrap().len(), 1000);
    assert_eq!(v["more"], true);
    let v = get(server.addr, "/api/rooms/r/messages").await.json();
    assert_eq!(
        v["messages"].as_array().unwrap().len(),
        100,
        "default limit 100"
    );
    assert_eq!(v["more"], true);
}

#[tokio::test]
async fn message_ids_up_to_64_bytes() {
    let server = start(config()).await;
    let mut a = connect(server.addr, "ann").await;
    a.join("r").await;
    let id = "i".repeat(64);
    let (s, _) = a.publish_and_copy("r", "x", &id).await;
    assert_eq!(s, 1);
    a.send(&msg_id("r", "y", &"j".repeat(65))).await;
    let v = a.recv().await;
    assert_error(&v, "bad_request", None);
    let h = get(server.addr, "/api/rooms/r/messages").await.json();
    assert_eq!(
        h["messages"].as_array().unwrap().len(),
        1,
        "over-long id is not stored"
    );
}

/// The library serves until its caller says stop (the binary passes its
/// first signal; a second one is the binary's to handle): no signal handler
/// and no process exit inside, and a stop flushes the store — with
/// `--durability none`, acked messages are on disk only because of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_stops_when_its_caller_says_and_flushes_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.addr = common::binary::free_addr();
    cfg.store = parlor::config::StoreKind::Redb;
    cfg.durability = parlor::config::Durability::None;
    cfg.data_dir = tmp.path().join("data");
    let addr = cfg.addr;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(parlor::server::serve(cfg.clone(), async {
        let _ = stopped.await;
    }));
    let deadline = std::time::Instant::now() + TIMEOUT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "never listened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 1..=5 {
        let body = json!({"user": "api", "content": format!("m{i}")});
        let r = post_json(addr, "/api/rooms/r/messages", &body).await;
        assert_eq!(r.json()["sequence"], i);
    }
    stop.send(()).unwrap();
    serving.await.unwrap().expect("a clean stop");

    let store = parlor::store::RedbStore::open(
        &cfg.data_dir,
        parlor::config::Durability::None,
        Duration::from_millis(10),
    )
    .unwrap();
    let room = RoomName::parse("r").unwrap();
    assert_eq!(store.load_room(&room, 0).unwrap().last, 5);
}
