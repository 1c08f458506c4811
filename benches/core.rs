//! One round of the room core, as a shard runs it: `publishes` messages
//! (each with a client id) spread over `rooms` rooms of 10 members are
//! handled, handed on as one batch, and come back committed, so each is
//! deduplicated, sequenced, encoded, fanned out to its room's outboxes and
//! acked. No store: this is the shard's own work per message, what it adds
//! on top of the log writer's commit in many small rooms.

use std::cell::RefCell;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
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
    next_id: u64,
}

impl World {
    fn new(rooms: usize) -> World {
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
            let mut in_room = Vec::with_capacity(MEMBERS);
            for m in 0..MEMBERS {
                let (outbox, rx) = Outbox::new(4096, 8 << 20);
                let id = (r * MEMBERS + m) as u64;
                let peer = Arc::new(Peer::new(id, format!("u{id}").into(), Format::Json, outbox));
                // A join whose session is gone (its reply dropped) is not made.
                let (reply, joined) = oneshot::channel();
                replies.push(joined);
                core.handle(
                    Command::Join {
                        peer: peer.clone(),
                        room: room.clone(),
                        since: None,
                        epoch: None,
                        join: 1,
                        reply,
                    },
                    NOW,
                );
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
                let (peer, _) = &self.members[r][i / self.rooms.len() % MEMBERS];
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
        assert_eq!(tally.deliveries, n * MEMBERS as u64);
        assert_eq!(tally.acks, n);
        self.drain();
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
        let world = RefCell::new(World::new(rooms));
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

criterion_group!(benches, commit_round);
criterion_main!(benches);
