//! A member that stops reading is cut with 4008 while the others go on
//! (PROTOCOL.md §6: outbound queue per connection).

mod common;

use common::*;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

const BIG: usize = 8 * 1024;
/// Enough 8 KiB messages to fill any loopback socket buffers many times.
const MAX_FLOOD: u64 = 40_000;
/// Messages in flight before the publisher waits for the readers. A reader
/// that keeps up can still have two windows in its outbox: the frames its
/// writer has written but not yet released (the client may read them
/// before the writer runs again) and the next window. Both bounds below
/// hold more than that, so only the reader that stopped can overflow.
const WINDOW: u64 = 16;

enum Seen {
    Message(u64, bool),
    Other(Value),
    Close(Option<u16>),
    End,
}

/// Classifies a frame without decoding the 8 KiB ones in full.
fn scan(m: Option<Message>) -> Seen {
    match m {
        None => Seen::End,
        Some(Message::Text(t)) => {
            let s = t.as_str();
            if s.len() > BIG && s.starts_with(r#"{"type":"message""#) {
                let at = s.find(r#""sequence":"#).expect("sequence field") + 11;
                let digits: String = s[at..].chars().take_while(|c| c.is_ascii_digit()).collect();
                return Seen::Message(digits.parse().unwrap(), false);
            }
            let v: Value = serde_json::from_str(s).unwrap();
            if ty(&v) == "message" {
                let marker = v["data"]["content"] == "marker";
                return Seen::Message(seq(&v), marker);
            }
            Seen::Other(v)
        }
        Some(Message::Close(c)) => Seen::Close(c.map(|f| u16::from(f.code))),
        Some(other) => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn member_that_stops_reading_is_cut_with_4008_others_continue() {
    let mut cfg = config();
    cfg.outbox_frames = 64;
    flood_until_cut(cfg).await;
}

/// The same with the byte bound of the outbound queue as the one that binds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbox_byte_bound_cuts_with_4008_too() {
    let mut cfg = config();
    cfg.outbox_frames = 4096;
    // Three windows of 8 KiB messages with their framing (≈ 440 KiB).
    cfg.outbox_bytes = 3 * WINDOW as usize * (BIG + 1024);
    flood_until_cut(cfg).await;
}

async fn flood_until_cut(mut cfg: Config) {
    cfg.rate_per_sec = 1e9;
    cfg.rate_burst = 1e9;
    cfg.presence_window_ms = 20;
    let server = start(cfg).await;
    let room = "r";

    let mut obs = connect(server.addr, "obs").await;
    obs.join(room).await;
    let mut publ = connect(server.addr, "pub").await;
    publ.join(room).await;
    let mut slow = connect(server.addr, "slow").await;
    slow.join(room).await;
    // From here on, `slow` is never polled until the end.

    let (obs_tx, obs_seen) = watch::channel(0u64);
    let (cut_tx, cut_seen) = watch::channel(false);
    let (obs_w, mut obs_r) = obs.split();
    let observer = tokio::spawn(async move {
        let mut next = 1u64;
        loop {
            match scan(obs_r.raw_message().await) {
                Seen::Message(s, marker) => {
                    assert_eq!(s, next, "observer: sequence {s}, expected {next}");
                    next += 1;
                    obs_tx.send_replace(s);
                    if marker {
                        assert!(*cut_tx.borrow(), "marker is sent after the cut");
                        return (obs_r, s);
                    }
                }
                Seen::Other(v) if ty(&v) == "presence_diff" => {
                    let leaves = v["data"]["leaves"].as_array().unwrap();
                    if leaves.iter().any(|u| u == "slow") {
                        cut_tx.send_replace(true);
                    }
                    assert!(
                        !leaves.iter().any(|u| u == "obs" || u == "pub"),
                        "a member that reads was cut: {v}"
                    );
                }
                Seen::Other(v) if ty(&v) == "heartbeat" => {}
                Seen::Other(v) => panic!("observer: unexpected {v}"),
                Seen::Close(c) => panic!("observer was closed with {c:?}"),
                Seen::End => panic!("observer's connection ended"),
            }
        }
    });

    let (mut pub_w, mut pub_r) = publ.split();
    let (pub_tx, pub_seen) = watch::channel(0u64);
    let pub_reader = tokio::spawn(async move {
        loop {
            match scan(pub_r.raw_message().await) {
                Seen::Message(s, marker) => {
                    pub_tx.send_replace(s);
                    if marker {
                        return pub_r;
                    }
                }
                Seen::Other(_) => {}
                Seen::Close(c) => panic!("publisher was closed with {c:?}"),
                Seen::End => panic!("publisher's connection ended"),
            }
        }
    });

    let content = "x".repeat(BIG);
    let mut sent = 0u64;
    while !*cut_seen.borrow() {
        assert!(
            sent < MAX_FLOOD,
            "sent {sent} messages of 8 KiB and the reader that stopped was not cut"
        );
        for _ in 0..WINDOW {
            pub_w.send(&msg(room, &content)).await;
            sent += 1;
        }
        // Wait for both readers to catch up (or for the cut to show).
        let mut o = obs_seen.clone();
        let mut p = pub_seen.clone();
        let mut c = cut_seen.clone();
        tokio::time::timeout(TIMEOUT, async {
            tokio::select! {
                _ = async {
                    o.wait_for(|&s| s >= sent).await.unwrap();
                    p.wait_for(|&s| s >= sent).await.unwrap();
                } => {}
                _ = c.wait_for(|&cut| cut) => {}
            }
        })
        .await
        .expect("readers stalled");
    }
    // Deliveries to the others continue after the cut.
    pub_w.send(&msg(room, "marker")).await;
    let (obs_r, marker_seq) = observer
        .await
        .expect("observer saw every sequence in order");
    assert_eq!(marker_seq, sent + 1);
    let _pub_r = pub_reader.await.unwrap();

    // The cut member's user is gone from presence.
    let mut obs = Client {
        tx: obs_w,
        rx: obs_r,
        connected: None,
        protocol: None,
        user: "obs".into(),
    };
    obs.send(&json!({"type": "presence", "room": room})).await;
    let p = obs.recv_until("presence").await;
    assert_eq!(p["data"]["count"], 2, "{p}");
    let users: Vec<&str> = p["data"]["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user"].as_str().unwrap())
        .collect();
    assert!(!users.contains(&"slow"), "{p}");

    // The slow member now reads: a prefix of the messages, in order, then
    // the close frame 4008.
    let mut next = 1u64;
    let code = loop {
        match scan(slow.rx.raw_message().await) {
            Seen::Message(s, _) => {
                assert_eq!(s, next, "slow member: sequence {s}, expected {next}");
                next += 1;
            }
            Seen::Other(_) => {}
            Seen::Close(code) => break code,
            Seen::End => panic!("slow member's connection ended without a close frame"),
        }
    };
    eprintln!(
        "flooded {sent} messages of 8 KiB; the slow member got {} before its close",
        next - 1
    );
    assert_eq!(code, Some(4008));
    assert!(
        next - 1 < sent,
        "the slow member cannot have received everything"
    );

    let rooms = get(server.addr, "/api/rooms").await.json();
    let r = rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room"] == room)
        .unwrap()
        .clone();
    assert_eq!(r["members"], 2, "{r}");
    assert_eq!(r["connections"], 2, "{r}");
}
