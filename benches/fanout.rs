//! Fan-out of one committed message to 1k / 10k / 100k members' in-memory
//! outboxes, through the shard's own `Room::fan_out`, sequentially and on
//! the fan-out pool. Measures what the shard spends per delivery.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use parlor::protocol::{Format, RoomName};
use parlor::session::outbox::OutboxReceiver;
use parlor::session::{Outbox, SessionHandle};
use parlor::shard::room::{Bounds, FramesByFormat, Member, Room};
use parlor::store::RoomLog;

const BOUNDS: Bounds = Bounds {
    frames: 4096,
    bytes: 8 << 20,
};

fn room_with(members: usize) -> (Room, Vec<(Arc<SessionHandle>, OutboxReceiver)>) {
    let log = RoomLog {
        epoch: "e".into(),
        last: 0,
        recent_ids: Vec::new(),
    };
    let mut room = Room::new(RoomName::parse("big").unwrap(), log, 0);
    let mut receivers = Vec::with_capacity(members);
    for i in 0..members {
        let (outbox, rx) = Outbox::new(BOUNDS.frames, BOUNDS.bytes);
        let session = Arc::new(SessionHandle::new(
            i as u64,
            format!("u{i}").into(),
            Format::Json,
            outbox,
        ));
        room.add(
            Member {
                session: session.clone(),
                held: None,
                fresh: false,
            },
            0,
        );
        receivers.push((session, rx));
    }
    (room, receivers)
}

fn drain(receivers: &mut [(Arc<SessionHandle>, OutboxReceiver)]) {
    for (session, rx) in receivers {
        rx.drain(&session.outbox);
    }
}

fn fanout(c: &mut Criterion) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let frame = parlor::protocol::frame::frame(fastwebsockets::OpCode::Text, &[b'x'; 64]);
    let frames: FramesByFormat = [vec![frame], Vec::<Bytes>::new()];
    let mut g = c.benchmark_group("fanout");
    g.sample_size(10);
    for members in [1_000usize, 10_000, 100_000] {
        let (mut room, mut receivers) = room_with(members);
        g.throughput(Throughput::Elements(members as u64));
        for (label, pool) in [("sequential", None), ("pool", Some(&pool))] {
            g.bench_function(BenchmarkId::new(label, members), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for i in 0..iters {
                        let t = Instant::now();
                        room.fan_out(&frames, BOUNDS, pool);
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
        assert_eq!(room.connections(), members, "no member may be cut");
    }
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
