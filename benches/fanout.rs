//! Fan-out of one committed message to 1k / 10k / 100k members' in-memory
//! outboxes, through the room core's own `fanout::broadcast`, sequentially
//! and on the fan-out pool. Measures what the shard spends per delivery;
//! and one frame's trip through an outbox, the per-message cost of a quiet
//! session.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use parlor::outbox::{Outbox, OutboxReceiver};
use parlor::protocol::Format;
use parlor::rooms::fanout::{broadcast, FramesByFormat, Sequential, Spread};
use parlor::rooms::{Member, MemberState, Members, Peer};
use parlor::shard::pool::Pool;

fn room_with(members: usize) -> (Members, Vec<(Arc<Peer>, OutboxReceiver)>) {
    let mut room = Members::default();
    let mut receivers = Vec::with_capacity(members);
    for i in 0..members {
        let (outbox, rx) = Outbox::new(4096, 8 << 20);
        let peer = Arc::new(Peer::new(
            i as u64,
            format!("u{i}").into(),
            Format::Json,
            outbox,
        ));
        room.add(Member {
            peer: peer.clone(),
            join: 1,
            state: MemberState::Live,
            fresh: false,
        });
        receivers.push((peer, rx));
    }
    (room, receivers)
}

fn drain(receivers: &mut [(Arc<Peer>, OutboxReceiver)]) {
    for (peer, rx) in receivers {
        rx.drain(&peer.outbox);
    }
}

fn fanout(c: &mut Criterion) {
    let pool = Pool(Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap(),
    ));
    let frame = parlor::protocol::frame::frame(fastwebsockets::OpCode::Text, &[b'x'; 64]);
    let frames: FramesByFormat = [vec![frame], Vec::<Bytes>::new(), Vec::<Bytes>::new()];
    let mut g = c.benchmark_group("fanout");
    g.sample_size(10);
    for members in [1_000usize, 10_000, 100_000] {
        let (mut room, mut receivers) = room_with(members);
        g.throughput(Throughput::Elements(members as u64));
        let spreads: [(&str, &dyn Spread); 2] = [("sequential", &Sequential), ("pool", &pool)];
        for (label, spread) in spreads {
            g.bench_function(BenchmarkId::new(label, members), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for i in 0..iters {
                        let t = Instant::now();
                        broadcast(&mut room, &frames, spread);
                        total += t.elapsed();
                        if i % 1024 == 1023 {
                            drain(&mut receivers);
                        }
                    }
                    drain(&mut receivers);
                    total
                })
            });
        }
        assert_eq!(room.len(), members, "no member may be cut");
    }
    g.finish();
}

/// One frame through an idle session's outbox: pushed, then taken and
/// marked written as the writer does. The paced case: every message finds
/// the outbox empty, so this is what a quiet session pays per delivery for
/// keeping no buffer between messages.
fn outbox_cycle(c: &mut Criterion) {
    let frame = parlor::protocol::frame::frame(fastwebsockets::OpCode::Text, &[b'x'; 64]);
    let (outbox, mut rx) = Outbox::new(4096, 8 << 20);
    let mut g = c.benchmark_group("outbox");
    g.throughput(Throughput::Elements(1));
    g.bench_function("push_take_one", |b| {
        b.iter(|| {
            outbox.try_push(frame.clone()).unwrap();
            rx.drain(&outbox);
        })
    });
    g.bench_function("push_take_16", |b| {
        b.iter(|| {
            for _ in 0..16 {
                outbox.try_push(frame.clone()).unwrap();
            }
            rx.drain(&outbox);
        })
    });
    g.finish();
}

criterion_group!(benches, fanout, outbox_cycle);
criterion_main!(benches);
