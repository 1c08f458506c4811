//! Server-Sent Events and long polling with plain HTTP clients: exact replay
//! from `Last-Event-ID` while a publisher writes, the keep-alive, a slow
//! consumer cut without harming others, and a thousand long polls released
//! by one message.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::sse::Sse;
use common::*;
use serde_json::json;

/// No rate limit in the way of a test's publisher.
fn fast_writers() -> Config {
    let mut cfg = config();
    cfg.rate_per_sec = 100_000.0;
    cfg.rate_burst = 100_000.0;
    cfg
}

async fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    let text = get(addr, "/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::test]
async fn sse_replays_exactly_from_last_event_id_while_a_publisher_writes() {
    let server = start(fast_writers()).await;
    let addr = server.addr;
    let room = unique("sse-replay");
    const TOTAL: u64 = 400;
    let done = Arc::new(AtomicBool::new(false));
    let publisher = {
        let room = room.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut p = connect(addr, "writer").await;
            p.join(&room).await;
            let (mut tx, mut rx) = p.split();
            let reader = tokio::spawn(async move {
                let mut acked = 0;
                while acked < TOTAL {
                    if ty(&rx.recv().await) == "ack" {
                        acked += 1;
                    }
                }
            });
            for i in 1..=TOTAL {
                tx.send(&msg_id(&room, &format!("m{i}"), &format!("w{i}")))
                    .await;
                if i % 8 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            reader.await.unwrap();
            done.store(true, Ordering::Release);
        })
    };
    // Reconnect again and again, each time after a few events, resuming
    // with Last-Event-ID: every sequence once, in order, no gap.
    let mut seen: Vec<u64> = Vec::new();
    let mut rng = Rng::new(7);
    let mut reconnects = 0;
    while seen.last().copied().unwrap_or(0) < TOTAL {
        let path = format!("/api/rooms/{room}/events");
        let mut sse = match seen.last() {
            Some(last) => {
                let id = last.to_string();
                Sse::open(addr, &path, &[("Last-Event-ID", id.as_str())]).await
            }
            None => Sse::open(addr, &format!("{path}?since=0"), &[]).await,
        };
        assert_eq!(sse.status, 200, "{}", sse.head);
        assert!(sse
            .head
            .to_ascii_lowercase()
            .contains("content-type: text/event-stream"));
        reconnects += 1;
        let take = 1 + rng.below(40);
        for _ in 0..take {
            let Some((seq, data)) = sse.message().await else {
                break;
            };
            assert_eq!(
                seq,
                seen.len() as u64 + 1,
                "gap or duplicate after {seen:?}"
            );
            assert_eq!(data["content"], format!("m{seq}"));
            assert_eq!(data["sequence"], seq);
            seen.push(seq);
            if seq == TOTAL {
                break;
            }
        }
    }
    publisher.await.unwrap();
    assert!(done.load(Ordering::Acquire));
    assert!(reconnects >= 10, "only {reconnects} reconnects");
}

#[tokio::test]
async fn sse_sends_keep_alives_joined_and_optional_presence() {
    let mut cfg = config();
    cfg.heartbeat_ms = 200;
    let server = start(cfg).await;
    let room = unique("sse-misc");
    let mut sse = Sse::open(
        server.addr,
        &format!("/api/rooms/{room}/events?user=watcher&presence=1"),
        &[],
    )
    .await;
    assert_eq!(sse.status, 200);
    let j = sse.next().await.unwrap();
    assert_eq!(j.event, "joined", "{j:?}");
    assert_eq!(j.data["room"], room.as_str());
    let p = sse.next().await.unwrap();
    assert_eq!(p.event, "presence");
    let mut ann = connect(server.addr, "ann").await;
    ann.join(&room).await;
    ann.send(&json!({"type": "typing", "room": room})).await;
    let mut kinds = Vec::new();
    while !(kinds.contains(&"presence_diff".to_string())
        && kinds.contains(&"typing".to_string())
        && kinds.contains(&"comment".to_string()))
    {
        kinds.push(sse.next().await.unwrap().event);
    }
    // Without presence=1: messages only (and joined).
    let mut quiet = Sse::open(
        server.addr,
        &format!("/api/rooms/{room}/events?user=q"),
        &[],
    )
    .await;
    assert_eq!(quiet.event().await.unwrap().event, "joined");
    ann.send(&json!({"type": "status", "status": "busy"})).await;
    ann.publish(&room, "hello", "h1").await;
    let e = quiet.event().await.unwrap();
    assert_eq!((e.event.as_str(), e.id), ("message", Some(1)), "{e:?}");
    // Bad input.
    let bad = Sse::open(
        server.addr,
        &format!("/api/rooms/{room}/events"),
        &[("Last-Event-ID", "x")],
    )
    .await;
    assert_eq!(bad.status, 400);
    let mut bad = Sse::open(server.addr, "/api/rooms/..x/events", &[]).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.error_body().await["error"]["code"], "invalid_room");
}

#[tokio::test]
async fn a_slow_sse_consumer_is_ended_without_harming_others() {
    let mut cfg = fast_writers();
    cfg.outbox_frames = 64;
    cfg.outbox_bytes = 64 * 1024;
    let server = start(cfg).await;
    let addr = server.addr;
    let room = unique("sse-slow");
    let path = format!("/api/rooms/{room}/events?since=0");
    let mut slow = Sse::open_small(addr, &path, 4096).await;
    assert_eq!(slow.status, 200);
    let mut fast = Sse::open(addr, &path, &[]).await;
    let mut member = connect(addr, "member").await;
    member.join(&room).await;
    let mut p = connect(addr, "writer").await;
    p.join(&room).await;
    // More than the kernel's socket buffers hold (the server's send buffer
    // grows to a few MiB on loopback), so the slow one's outbox fills.
    let big = "x".repeat(10_000);
    const N: u64 = 800;
    let fast_reader = tokio::spawn(async move {
        for i in 1..=N {
            let (s, _) = fast.message().await.expect("the fast stream goes on");
            assert_eq!(s, i);
        }
    });
    let member_reader = tokio::spawn(async move {
        for i in 1..=N {
            let v = member.rx.recv_skip_diffs().await;
            assert_eq!(seq(&v), i);
        }
    });
    for i in 1..=N {
        p.publish(&room, &big, &format!("s{i}")).await;
    }
    fast_reader.await.unwrap();
    member_reader.await.unwrap();
    eventually("the slow stream is cut", || async {
        (metric(addr, "parlor_slow_consumer_cuts_total").await >= 1.0).then_some(())
    })
    .await;
    // What it got is a gapless prefix; the stream then ends; it resumes.
    let mut got = 0;
    while let Some((s, _)) = slow.message().await {
        assert_eq!(s, got + 1);
        got = s;
    }
    assert!(got < N, "the slow consumer was not cut ({got})");
    let id = got.to_string();
    let mut again = Sse::open(
        addr,
        &format!("/api/rooms/{room}/events"),
        &[("Last-Event-ID", id.as_str())],
    )
    .await;
    for i in got + 1..=N {
        assert_eq!(again.message().await.unwrap().0, i);
    }
}

#[tokio::test]
async fn a_long_poll_answers_at_once_waits_or_times_out() {
    let server = start(config()).await;
    let addr = server.addr;
    let room = unique("lp");
    let r = post_json(
        addr,
        &format!("/api/rooms/{room}/messages"),
        &json!({"user": "u", "content": "one"}),
    )
    .await;
    assert_eq!(r.status, 201);
    let t0 = std::time::Instant::now();
    let page = get(addr, &format!("/api/rooms/{room}/messages?since=0&wait=20"))
        .await
        .json();
    assert_eq!(page["messages"][0]["content"], "one");
    assert!(t0.elapsed() < Duration::from_secs(2), "answered at once");
    let t0 = std::time::Instant::now();
    let page = get(addr, &format!("/api/rooms/{room}/messages?since=1&wait=1"))
        .await
        .json();
    assert_eq!(page["messages"], json!([]));
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "held for the wait"
    );
    let r = get(addr, &format!("/api/rooms/{room}/messages?since=1&wait=x")).await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn a_thousand_long_polls_are_released_by_one_message() {
    let server = start(config()).await;
    let addr = server.addr;
    let room = unique("lp-many");
    const N: usize = 1000;
    let mut polls = Vec::with_capacity(N);
    for _ in 0..N {
        let path = format!("/api/rooms/{room}/messages?since=0&wait=30");
        polls.push(tokio::spawn(async move { get(addr, &path).await }));
    }
    eventually("every long poll is waiting", || async {
        (metric(addr, "parlor_long_polls").await as usize == N).then_some(())
    })
    .await;
    let t0 = std::time::Instant::now();
    let r = post_json(
        addr,
        &format!("/api/rooms/{room}/messages"),
        &json!({"user": "u", "content": "wake up"}),
    )
    .await;
    assert_eq!(r.status, 201);
    for p in polls {
        let page = p.await.unwrap();
        assert_eq!(page.status, 200);
        assert_eq!(page.json()["messages"][0]["content"], "wake up");
    }
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "released in {:?}",
        t0.elapsed()
    );
    assert_eq!(metric(addr, "parlor_long_polls").await, 0.0);
}
