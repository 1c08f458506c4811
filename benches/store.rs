//! RedbStore throughput on a temp file: appends/s for batch sizes 1, 16 and
//! 256 under each durability mode (one `append` = one write transaction,
//! as the shard's group commit does it), what one durable commit of 48
//! messages costs when they belong to 1, 8 or 48 rooms (each room a
//! separate part of the B-tree), one of 512 over 100 rooms (a burst
//! into many small rooms) and the CPU of one of 900 over 100 rooms, and
//! range-read throughput (1: the read of a
//! client that missed one message).
//!
//! `cargo bench --bench store` measures; `cargo bench --bench store -- --test`
//! runs each once (with a smaller log to read from).

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use parlor::config::Durability;
use parlor::protocol::RoomName;
use parlor::store::{Append, Batch, NewRoom, ReadLimit, RedbStore, Store, StoredMessage};

/// About 200 bytes of content, like a short chat line.
fn message(seq: u64, user: &Arc<str>) -> StoredMessage {
    StoredMessage {
        sequence: seq,
        timestamp: 1_700_000_000_000 + seq,
        user: user.clone(),
        content: format!("{seq:>10} {}", "lorem ipsum dolor sit amet ".repeat(7)),
        client_msg_id: Some(format!("client-{seq}")),
    }
}

fn test_mode() -> bool {
    std::env::args().any(|a| a == "--test")
}

/// Messages `seqs` of `room`, creating the room if the log lacks it.
fn messages(room: &RoomName, seqs: std::ops::Range<u64>, user: &Arc<str>) -> Batch {
    Batch {
        new_rooms: vec![NewRoom {
            room: room.clone(),
            epoch: "bench".into(),
        }],
        appends: seqs
            .map(|s| Append::new(room.clone(), message(s, user)))
            .collect(),
        expired: Vec::new(),
        read_markers: Vec::new(),
    }
}

fn appends(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    let user: Arc<str> = Arc::from("bench-user");
    for (name, mode) in [
        ("immediate", Durability::Immediate),
        ("batched", Durability::Batched),
        ("none", Durability::None),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path(), mode, Duration::from_millis(10)).unwrap();
        for batch in [1u64, 16, 256] {
            let room = RoomName::parse(&format!("bench-{batch}")).unwrap();
            let mut next = store.load_room(&room, 0).unwrap().last + 1;
            group.throughput(Throughput::Elements(batch));
            group.bench_function(BenchmarkId::new(name, batch), |b| {
                b.iter_batched(
                    || {
                        let v = messages(&room, next..next + batch, &user);
                        next += batch;
                        v
                    },
                    |mut v| store.append(&mut v).unwrap(),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

/// One durable commit of 48 messages spread over `rooms` rooms of a log
/// that already holds 300 messages per room: redb copies every B-tree page
/// a commit touches, so a commit over many rooms writes (and syncs) more
/// pages than one over a single room. `burst/100`: 512 messages over 100
/// rooms, the commits of a burst into many small rooms (≈ 500 messages
/// each in rooms-100x10). `burst-cpu/100`: 900 messages over 100 rooms
/// (a commit of rooms-100x10 with 1 200 messages per sender), timed in the
/// committing thread's CPU, not the wall clock: what the log writer
/// spends on it, without the wait for the disk, whose noise hides changes
/// of a few percent in the wall time.
fn append_spread(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_spread");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    let user: Arc<str> = Arc::from("bench-user");
    let dir = tempfile::tempdir().unwrap();
    let store =
        RedbStore::open(dir.path(), Durability::Immediate, Duration::from_millis(10)).unwrap();
    let all: Vec<RoomName> = (0..100)
        .map(|i| RoomName::parse(&format!("spread-{i}")).unwrap())
        .collect();
    let prefill = if test_mode() { 10 } else { 300 };
    let mut next = vec![1u64; all.len()];
    for (room, next) in all.iter().zip(&mut next) {
        store
            .append(&mut messages(room, 1..1 + prefill, &user))
            .unwrap();
        *next = 1 + prefill;
    }
    // `per_commit` messages over the first `rooms` rooms, each room's in
    // order, the rooms taking turns.
    let mut batch = |per_commit: u64, rooms: usize| {
        let mut batch = Batch::default();
        for room in &all[..rooms] {
            batch.new_rooms.push(NewRoom {
                room: room.clone(),
                epoch: "bench".into(),
            });
        }
        for i in 0..per_commit as usize {
            let r = i % rooms;
            let m = message(next[r], &user);
            next[r] += 1;
            batch.appends.push(Append::new(all[r].clone(), m));
        }
        batch
    };
    for (name, per_commit, rooms) in [
        ("rooms", 48u64, 1usize),
        ("rooms", 48, 8),
        ("rooms", 48, 48),
        ("burst", 512, 100),
    ] {
        group.throughput(Throughput::Elements(per_commit));
        group.bench_function(BenchmarkId::new(name, rooms), |b| {
            b.iter_batched(
                || batch(per_commit, rooms),
                |mut v| store.append(&mut v).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    group.throughput(Throughput::Elements(900));
    group.bench_function(BenchmarkId::new("burst-cpu", 100), |b| {
        b.iter_custom(|iters| {
            let mut batches: Vec<Batch> = (0..iters).map(|_| batch(900, 100)).collect();
            let started = thread_cpu();
            for v in &mut batches {
                store.append(v).unwrap();
            }
            let took = thread_cpu() - started;
            // Freed outside the timing: only the commits are measured.
            drop(batches);
            took
        })
    });
    group.finish();
}

/// The CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write to; this clock exists on
    // every Linux.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(ok, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn reads(c: &mut Criterion) {
    let total: u64 = if test_mode() { 5_000 } else { 100_000 };
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path(), Durability::None, Duration::from_millis(10)).unwrap();
    let room = RoomName::parse("history").unwrap();
    let user: Arc<str> = Arc::from("bench-user");
    for start in (1..=total).step_by(1000) {
        store
            .append(&mut messages(&room, start..start + 1000, &user))
            .unwrap();
    }
    store.sync().unwrap();

    let mut group = c.benchmark_group("read");
    group.sample_size(20);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    for limit in [1u64, 100, 1000] {
        group.throughput(Throughput::Elements(limit));
        let mut after = 0;
        group.bench_function(BenchmarkId::new("range", limit), |b| {
            b.iter(|| {
                let bounds = ReadLimit::messages(limit as usize);
                let got = store.read(&room, after, u64::MAX, bounds).unwrap();
                assert_eq!(got.len() as u64, limit);
                after = (after + 7919) % (total - limit);
                std::hint::black_box(got)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, appends, append_spread, reads);
criterion_main!(benches);
