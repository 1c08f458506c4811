//! Many publishers into one big room: every member sees every sequence
//! exactly once, in order (PROTOCOL.md §4).

mod common;

use common::*;
use tokio_tungstenite::tungstenite::Message;

const MEMBERS: usize = 50;
const PUBLISHERS: usize = 8;
const PER_PUBLISHER: usize = 500;
const TOTAL: u64 = (PUBLISHERS * PER_PUBLISHER) as u64;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_publishers_fifty_members_see_every_sequence_once_in_order() {
    let mut cfg = config();
    cfg.rate_per_sec = 1e9;
    cfg.rate_burst = 1e9;
    // Not under test here: room enough for a member that reads late.
    cfg.outbox_frames = 1 << 16;
    cfg.outbox_bytes = 256 << 20;
    let server = start(cfg).await;
    let room = "big";

    let mut members = Vec::new();
    for i in 0..MEMBERS {
        let mut c = connect(server.addr, &format!("m{i:02}")).await;
        c.join(room).await;
        members.push(c);
    }

    let mut readers = Vec::new();
    let mut senders = Vec::new();
    for (i, c) in members.into_iter().enumerate() {
        let (mut tx, mut rx) = c.split();
        let publisher = i < PUBLISHERS;
        readers.push(tokio::spawn(async move {
            let mut next = 1u64;
            // Per publisher, the last index seen: a publisher's messages keep
            // their order.
            let mut last_index = [None::<usize>; PUBLISHERS];
            let mut acks = 0usize;
            while next <= TOTAL || (publisher && acks < PER_PUBLISHER) {
                let v = rx.recv().await;
                match ty(&v) {
                    "message" => {
                        let s = seq(&v);
                        assert_eq!(s, next, "member {i}: expected sequence {next}, got {v}");
                        next += 1;
                        let content = v["data"]["content"].as_str().unwrap();
                        let (p, k) = content.split_once('-').unwrap();
                        let (p, k): (usize, usize) = (p[1..].parse().unwrap(), k.parse().unwrap());
                        assert_eq!(v["data"]["user"], format!("m{p:02}"));
                        assert!(
                            last_index[p].is_none_or(|l| l < k),
                            "member {i}: publisher {p}'s message {k} after {:?}",
                            last_index[p]
                        );
                        last_index[p] = Some(k);
                    }
                    "ack" => {
                        assert!(publisher, "member {i} got an ack it did not ask for: {v}");
                        acks += 1;
                    }
                    "presence_diff" => {}
                    _ => panic!("member {i}: unexpected frame {v}"),
                }
            }
            assert_eq!(next - 1, TOTAL);
            for (p, l) in last_index.iter().enumerate() {
                assert_eq!(
                    *l,
                    Some(PER_PUBLISHER - 1),
                    "member {i}: publisher {p} incomplete"
                );
            }
            rx
        }));
        if publisher {
            senders.push(tokio::spawn(async move {
                for k in 0..PER_PUBLISHER {
                    let content = format!("p{i}-{k}");
                    tx.send(&msg_id(room, &content, &format!("{i}:{k}"))).await;
                }
                tx
            }));
        } else {
            senders.push(tokio::spawn(async move { tx }));
        }
    }
    let mut keep = Vec::new();
    for s in senders {
        keep.push(s.await.expect("publisher task"));
    }
    for r in readers {
        r.await.expect("member saw every sequence once, in order");
    }
    let rooms = get(server.addr, "/api/rooms").await.json();
    let entry = rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room"] == room)
        .expect("room listed")
        .clone();
    assert_eq!(entry["last"], TOTAL);
    assert_eq!(entry["connections"], MEMBERS);
    assert_eq!(entry["members"], MEMBERS);
}

/// Above `parlor::shard::pool::PARALLEL_FANOUT_MIN` members a room is fanned out
/// on the worker pool: order and completeness must hold there too, for
/// JSON and MessagePack members alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn big_room_fanned_out_in_parallel_keeps_order() {
    const BIG: usize = parlor::shard::pool::PARALLEL_FANOUT_MIN + 100;
    const N: u64 = 40;
    let mut cfg = config();
    cfg.workers = Some(2);
    cfg.rate_per_sec = 1e9;
    cfg.rate_burst = 1e9;
    cfg.history_on_join = 0;
    cfg.presence_diff_max_members = 10;
    let server = start(cfg).await;
    let addr = server.addr;
    let room = "huge";
    let mut joins = Vec::new();
    for chunk in 0..16usize {
        joins.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in (chunk..BIG).step_by(16) {
                let opts = Opts {
                    user: Some(format!("u{i:04}")),
                    format_query: Some(if i % 3 == 0 { "msgpack" } else { "json" }.into()),
                    ..Opts::default()
                };
                let mut c = connect_opts(addr, opts).await;
                c.send(&join(room)).await;
                c.rx.recv_until("joined").await;
                out.push(c);
            }
            out
        }));
    }
    let mut members = Vec::new();
    for j in joins {
        members.extend(j.await.unwrap());
    }
    assert_eq!(members.len(), BIG);
    let mut publisher = members.pop().unwrap();
    let mut readers = Vec::new();
    for (i, c) in members.into_iter().enumerate() {
        readers.push(tokio::spawn(async move {
            let (_tx, mut rx) = c.split();
            let mut next = 1;
            while next <= N {
                // Skip the (large) presence snapshots without decoding them.
                let m = rx.raw_message().await.expect("member connection open");
                let head = &m.clone().into_data()[..];
                if head.windows(8).take(24).any(|w| w == b"presence") {
                    continue;
                }
                let v: serde_json::Value = match m {
                    Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
                    Message::Binary(b) => rmp_serde::from_slice(&b).unwrap(),
                    other => panic!("member {i}: unexpected {other:?}"),
                };
                if ty(&v) == "message" {
                    assert_eq!(seq(&v), next, "member {i}: {v}");
                    assert_eq!(v["data"]["content"], format!("c{next}"));
                    next += 1;
                }
            }
        }));
    }
    for k in 1..=N {
        publisher.send(&msg(room, &format!("c{k}"))).await;
    }
    for r in readers {
        r.await
            .expect("every member of the big room saw every message in order");
    }
}
