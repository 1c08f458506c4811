//! The room core's work as a shard runs it, without a store.
//!
//! - `commit_round`: `publishes` messages (each with a client id) spread
//!   over `rooms` rooms of 10 members are handled, handed on as one batch,
//!   and come back committed, so each is deduplicated, sequenced, encoded,
//!   fanned out to its room's outboxes and acked: the shard's own work per
//!   message, what it adds on top of the log writer's commit in many small
//!   rooms.
//! - `join`: a user joins a room of 999 online users (and leaves again, so
//!   the next join meets the same room): `joined` and a presence snapshot
//!   listing 1 000 users, what each of the first thousand joiners of a room
//!   costs the shard in a join storm.

use std::cell::RefCell;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use parlor::error::ErrorCode;
use parlor::outbox::{Outbox, OutboxReceiver};
use parlor::protocol::{Format, RoomName};
use parlor::rooms::fanout::Sequential;
use parlor::rooms::{Command, Effect, Limits, Origin, Peer, Publish, Rooms};
use parlor::store::{MemoryStore, Store};
use tokio::sync::oneshot;

const MEMBERS: usize = 10;
const NOW: u64 = 1_700_000_000_000;

struct World {
    core: Rooms,
    rooms: Vec<RoomName>,
    /// Per room, its members.
    members: Vec<Vec<(Arc<Peer>, OutboxReceiver)>>,
    /// Members per room.
    size: usize,
    next_id: u64,
}

/// A session's peer (JSON) and the receiving end of its outbox.
fn session(id: u64, user: String) -> (Arc<Peer>, OutboxReceiver) {
    let (outbox, rx) = Outbox::new(4096, 8 << 20);
    (
        Arc::new(Peer::new(id, user.into(), Format::Json, outbox)),
        rx,
    )
}

/// `peer`'s live join of `room`, and where its answer comes.
fn live_join(
    peer: &Arc<Peer>,
    room: &RoomName,
) -> (Command, oneshot::Receiver<Result<(), ErrorCode>>) {
    let (reply, joined) = oneshot::channel();
    let join = Command::Join {
        peer: peer.clone(),
        room: room.clone(),
        since: None,
        epoch: None,
        join: 1,
        reply,
    };
    (join, joined)
}

impl World {
    fn new(rooms: usize, size: usize) -> World {
        let store = MemoryStore::new();
        let limits = Limits {
            dedup_window: 10_000,
            history_on_join: 0,
            replay_limit: 10_000,
            presence_window_ms: 100,
            presence_diff_max_members: 1000,
            idle_unload_ms: 60_000,
            sequencing: store.sequencing(),
            fill_grace_ms: 50,
        };
        let mut core = Rooms::new(limits, Box::new(Sequential));
        let names: Vec<RoomName> = (0..rooms)
            .map(|r| RoomName::parse(&format!("room-{r:03}")).unwrap())
            .collect();
        let mut members = Vec::with_capacity(rooms);
        let mut replies = Vec::new();
        for (r, room) in names.iter().enumerate() {
            let mut in_room = Vec::with_capacity(size);
            for m in 0..size {
                let id = (r * size + m) as u64;
                let (peer, rx) = session(id, format!("u{id}"));
                // A join whose session is gone (its reply dropped) is not made.
                let (join, joined) = live_join(&peer, room);
                replies.push(joined);
                core.handle(join, NOW);
                in_room.push((peer, rx));
            }
            members.push(in_room);
            // Answer the load (and a log of one node's subscription) as the
            // driver does.
            while let Some(effect) = core.poll_effect() {
                match effect {
                    Effect::Load(room) => core.loaded(
                        room.clone(),
                        Ok(store.load_room(&room, 10_000).unwrap()),
                        NOW,
                    ),
                    Effect::Subscribe(room) => core.subscribed(&room, NOW),
                    _ => {}
                }
            }
        }
        for mut joined in replies {
            assert!(matches!(joined.try_recv(), Ok(Ok(()))), "joined");
        }
        let mut world = World {
            core,
            rooms: names,
            members,
            size,
            next_id: 0,
        };
        world.drain();
        world
    }

    /// `n` publishes, round robin over the rooms, each from a member.
    fn publishes(&mut self, n: usize) -> Vec<Command> {
        (0..n)
            .map(|i| {
                let r = i % self.rooms.len();
                let (peer, _) = &self.members[r][i / self.rooms.len() % self.size];
                self.next_id += 1;
                Command::Publish(Publish {
                    room: self.rooms[r].clone(),
                    user: peer.user.clone(),
                    content: "a chat line of about sixty-four bytes, as the loadtest sends".into(),
                    client_msg_id: Some(format!("m{}", self.next_id)),
                    origin: Origin::Session(peer.clone()),
                })
            })
            .collect()
    }

    /// Handles the publishes, commits the batch and delivers it.
    fn round(&mut self, publishes: Vec<Command>) {
        let n = publishes.len() as u64;
        for cmd in publishes {
            self.core.handle(cmd, NOW);
        }
        assert!(self.core.end_round(), "a batch to commit");
        while let Some(effect) = self.core.poll_effect() {
            if let Effect::Commit(batch) = effect {
                self.core.committed(batch, Ok(()), NOW);
            }
        }
        // Every message reached every member and was acked: the round
        // measured is the whole one, not refusals.
        let tally = self.core.take_tally();
        assert_eq!(tally.deliveries, n * self.size as u64);
        assert_eq!(tally.acks, n);
        self.drain();
    }

    /// A new user joins the first room (and gets `joined` and the
    /// snapshot), then leaves it.
    fn join_and_leave(&mut self) {
        self.next_id += 1;
        let id = 1_000_000 + self.next_id;
        let (peer, mut rx) = session(id, format!("n{id}"));
        let room = self.rooms[0].clone();
        let (join, mut joined) = live_join(&peer, &room);
        self.core.handle(join, NOW);
        assert!(matches!(joined.try_recv(), Ok(Ok(()))), "joined");
        let frames = peer.outbox.drain_frames(&mut rx);
        assert_eq!(frames.len(), 2, "joined and the snapshot");
        assert!(frames[1].len() > 40_000, "1 000 users listed");
        let leave = Command::Leave {
            room,
            client_id: id,
            explicit: false,
        };
        self.core.handle(leave, NOW);
    }

    fn drain(&mut self) {
        for (peer, rx) in self.members.iter_mut().flatten() {
            rx.drain(&peer.outbox);
        }
    }
}

fn commit_round(c: &mut Criterion) {
    let mut g = c.benchmark_group("commit_round");
    g.sample_size(20);
    for (rooms, publishes) in [(1usize, 64usize), (100, 512), (1000, 2048)] {
        let world = RefCell::new(World::new(rooms, MEMBERS));
        g.throughput(Throughput::Elements(publishes as u64));
        g.bench_function(BenchmarkId::new(format!("rooms/{rooms}"), publishes), |b| {
            b.iter_batched(
                || world.borrow_mut().publishes(publishes),
                |cmds| world.borrow_mut().round(cmds),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn join(c: &mut Criterion) {
    let mut g = c.benchmark_group("join");
    let mut world = World::new(1, 999);
    g.bench_function("room_of_1000", |b| b.iter(|| world.join_and_leave()));
    g.finish();
}

criterion_group!(benches, commit_round, join);
criterion_main!(benches);
