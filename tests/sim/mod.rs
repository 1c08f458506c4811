//! The world a seed runs in: the room core of one shard, a log that commits
//! late, fails, reorders loads and reads and survives crashes, clients that
//! read eagerly, slowly or never, and a clock — all driven by one seeded
//! generator, so a failing seed replays exactly.

mod client;
mod shared;

use std::collections::BTreeMap;
use std::sync::Arc;

use client::{Client, Logs, Pace, Seen, Sent};
use parlor::error::ErrorCode;
use parlor::protocol::{Format, RoomName};
use parlor::rooms::fanout::Sequential;
use parlor::rooms::{
    Budget, Command, Effect, Fill, Limits, Origin, Publish, ReadDone, ReadRequest, Rooms,
    FILL_CHUNK,
};
use parlor::store::{Batch, MemoryStore, ReadLimit, Store, StoreError, StoredMessage};
use tokio::sync::oneshot;

/// Small deterministic generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.below(items.len() as u64) as usize])
    }
}

enum Pending {
    Load(RoomName),
    Commit(Batch),
    Read(ReadRequest),
    /// The live channel listens to the room (shared log).
    Subscribed(RoomName),
    Fill(Fill),
}

/// A publish through the HTTP API, waiting for its answer.
struct HttpPublish {
    rx: oneshot::Receiver<Result<u64, ErrorCode>>,
    room: RoomName,
    content: String,
    id: Option<String>,
}

/// What the seeds exercised, summed (printed by the test, so a change that
/// stops the simulation from reaching a path shows).
#[derive(Debug, Default, Clone, Copy)]
pub struct Coverage {
    pub commits: u64,
    pub failed_commits: u64,
    pub failed_loads: u64,
    pub replayed: u64,
    pub loaded: u64,
    pub unloaded: u64,
    pub cut_slow: u64,
    pub crashes: u64,
    pub stale_reads: u64,
    pub expired: u64,
    /// Shared-log seeds: gap fills, live deliveries, disconnections, the
    /// other node's batches, commits whose answer was lost.
    pub fills: u64,
    pub live: u64,
    pub disconnects: u64,
    pub other_batches: u64,
    pub lost_answers: u64,
    pub long_polls: u64,
}

impl Coverage {
    pub fn add(&mut self, o: Coverage) {
        self.commits += o.commits;
        self.failed_commits += o.failed_commits;
        self.failed_loads += o.failed_loads;
        self.replayed += o.replayed;
        self.loaded += o.loaded;
        self.unloaded += o.unloaded;
        self.cut_slow += o.cut_slow;
        self.crashes += o.crashes;
        self.stale_reads += o.stale_reads;
        self.expired += o.expired;
        self.fills += o.fills;
        self.live += o.live;
        self.disconnects += o.disconnects;
        self.other_batches += o.other_batches;
        self.lost_answers += o.lost_answers;
        self.long_polls += o.long_polls;
    }
}

pub struct World {
    pub coverage: Coverage,
    rng: Rng,
    now: u64,
    log: Arc<MemoryStore>,
    /// The log and the logs of rooms deleted since, for checking frames.
    logs: Logs,
    limits: Limits,
    core: Rooms,
    /// Effects in flight, each with the time it may complete.
    pending: Vec<(u64, Pending)>,
    clients: Vec<Client>,
    /// Where ended sessions were, for clients that come back.
    gone: Vec<(Arc<str>, Seen)>,
    http: Vec<HttpPublish>,
    /// Long polls: (room, after, answer); an answer must name a sequence
    /// past `after` that the log has.
    waits: Vec<(RoomName, u64, oneshot::Receiver<u64>)>,
    /// Every (user, id) acked, with its sequence: retries must get the same.
    acked: BTreeMap<(String, String), (RoomName, u64)>,
    rooms: Vec<RoomName>,
    next_client: u64,
    next_content: u64,
    pub trace: Vec<String>,
    /// The log is shared with another node (numbering seeds).
    shared: bool,
    channel: shared::Channel,
}

const ROOMS: [&str; 3] = ["lobby", "dev", "dm:ann:bob"];
const USERS: [&str; 4] = ["ann", "bob", "cat", "dan"];

impl World {
    pub fn new(seed: u64) -> World {
        let mut rng = Rng::new(seed);
        let numbering = seed % 4 == 3;
        let log = Arc::new(if numbering {
            MemoryStore::numbering()
        } else {
            MemoryStore::new()
        });
        let limits = Limits {
            dedup_window: 1000,
            history_on_join: [0, 3, 50][rng.below(3) as usize],
            replay_limit: [5, 10_000][rng.below(2) as usize],
            presence_window_ms: 100,
            presence_diff_max_members: [1, 1000][rng.below(2) as usize],
            idle_unload_ms: 1000,
            sequencing: log.sequencing(),
            fill_grace_ms: [0, 50, 300][rng.below(3) as usize],
        };
        World {
            coverage: Coverage::default(),
            rng,
            now: 1_700_000_000_000,
            core: Rooms::new(limits, Box::new(Sequential)),
            logs: Logs::new(log.clone()),
            log,
            limits,
            pending: Vec::new(),
            clients: Vec::new(),
            gone: Vec::new(),
            http: Vec::new(),
            waits: Vec::new(),
            acked: BTreeMap::new(),
            rooms: ROOMS.iter().map(|r| RoomName::parse(r).unwrap()).collect(),
            next_client: 1,
            next_content: 1,
            trace: Vec::new(),
            shared: numbering,
            channel: shared::Channel::default(),
        }
    }

    fn note(&mut self, what: String) {
        self.trace
            .push(format!("t={} {what}", self.now % 1_000_000));
    }

    /// Collects the core's effects, each to complete after a random delay.
    fn take_effects(&mut self) {
        let t = self.core.take_tally();
        self.coverage.replayed += t.replayed;
        self.coverage.loaded += t.loaded;
        self.coverage.unloaded += t.unloaded;
        self.coverage.cut_slow += t.slow_consumer_cuts;
        self.coverage.stale_reads += t.stale_reads;
        self.coverage.fills += t.fills;
        while let Some(effect) = self.core.poll_effect() {
            let at = self.now + self.rng.below(300);
            let p = match effect {
                Effect::Load(room) => Pending::Load(room),
                Effect::Commit(batch) => Pending::Commit(batch),
                Effect::Read(read) => Pending::Read(read),
                Effect::Subscribe(room) => {
                    self.channel.wanted.insert(room.clone());
                    Pending::Subscribed(room)
                }
                Effect::Unsubscribe(room) => {
                    self.channel.wanted.remove(&room);
                    self.channel.listening.remove(&room);
                    continue;
                }
                Effect::Fill(fill) => Pending::Fill(fill),
                // The other node's view of ours is not simulated.
                Effect::Presence(_) | Effect::Relay(_) => continue,
            };
            self.pending.push((at, p));
        }
    }

    fn handle(&mut self, cmd: Command) {
        self.core.handle(cmd, self.now);
        self.take_effects();
    }

    /// One random step.
    pub fn step(&mut self) {
        self.reconnect();
        if self.shared && self.rng.chance(30) {
            self.shared_step();
            self.settle_http();
            self.reap();
            return;
        }
        match self.rng.below(100) {
            0..=9 => self.connect(),
            10..=44 => self.client_acts(),
            45..=54 => self.http_publish(),
            55..=69 => self.complete(),
            70..=79 => {
                self.core.end_round();
                self.take_effects();
            }
            80..=89 => self.read_clients(),
            90..=97 => self.advance(),
            98 if self.rng.chance(50) => self.stats(),
            98 => {
                // Retention found a room's whole log past its age.
                let room = self.rng.pick(&self.rooms).unwrap().clone();
                self.note(format!("expire {room}"));
                self.handle(Command::Expire { room });
            }
            _ => {
                if self.rng.chance(25) {
                    self.crash();
                } else {
                    self.advance();
                }
            }
        }
        self.settle_http();
        self.settle_waits();
        self.reap();
    }

    /// What the other node and the live channel do.
    fn shared_step(&mut self) {
        let room = self.rng.pick(&self.rooms).unwrap().clone();
        match self.rng.below(100) {
            0..=29 => {
                let (epoch, fresh) = self.channel.other_node_publishes(
                    &mut self.rng,
                    self.now,
                    &self.log,
                    &room,
                    &mut self.next_content,
                );
                self.note(format!("other node appends {} to {room}", fresh.len()));
                self.coverage.other_batches += 1;
                self.channel
                    .publish(&mut self.rng, self.now, &room, &epoch, fresh);
            }
            30..=84 => self.deliver_live(),
            85..=88 if self.channel.down_until.is_none() => {
                self.note("the live channel disconnects".into());
                self.coverage.disconnects += 1;
                self.channel.disconnect(&mut self.rng, self.now);
            }
            89 => {
                self.note("the other node dies".into());
                self.core.node_gone("other");
                self.take_effects();
            }
            _ => self
                .channel
                .other_node_presence(&mut self.rng, self.now, &room),
        }
    }

    /// One message batch (or presence change) on the live channel whose
    /// time has come, in any order.
    fn deliver_live(&mut self) {
        let ready: Vec<usize> = (0..self.channel.in_flight.len())
            .filter(|&i| self.channel.in_flight[i].0 <= self.now)
            .collect();
        if let Some(&i) = self.rng.pick(&ready) {
            let (_, room, epoch, messages) = self.channel.in_flight.swap_remove(i);
            self.note(format!(
                "live {room} {:?}",
                messages.iter().map(|m| m.sequence).collect::<Vec<_>>()
            ));
            self.coverage.live += 1;
            self.core.live(&room, &epoch, messages, self.now);
            self.take_effects();
            return;
        }
        let ready: Vec<usize> = (0..self.channel.presence.len())
            .filter(|&i| self.channel.presence[i].0 <= self.now)
            .collect();
        if let Some(&i) = self.rng.pick(&ready) {
            let (_, room, update) = self.channel.presence.swap_remove(i);
            self.core.remote_presence(&room, update, self.now);
            self.take_effects();
        }
    }

    /// The live channel is back: every room listens again, and the core
    /// hears of it a little later (after the subscription took effect).
    fn reconnect(&mut self) {
        if self.channel.down_until.is_some_and(|t| t <= self.now) {
            self.channel.down_until = None;
            self.note("the live channel is back".into());
            for room in self.channel.wanted.clone() {
                self.channel.listening.insert(room.clone());
                let at = self.now + self.rng.below(100);
                self.pending.push((at, Pending::Subscribed(room)));
            }
        }
    }

    /// Long polls answered: with a sequence past theirs, in the log.
    fn settle_waits(&mut self) {
        let mut still = Vec::new();
        for (room, after, mut rx) in std::mem::take(&mut self.waits) {
            match rx.try_recv() {
                Ok(last) => {
                    assert!(last > after, "a long poll after {after} woken at {last}");
                    let log_last = self.log.load_room(&room, 0).unwrap().last;
                    assert!(last <= log_last, "woken at {last}, the log has {log_last}");
                    self.coverage.long_polls += 1;
                }
                Err(oneshot::error::TryRecvError::Closed) => {}
                Err(oneshot::error::TryRecvError::Empty) => still.push((room, after, rx)),
            }
        }
        self.waits = still;
    }

    fn connect(&mut self) {
        if self.clients.iter().filter(|c| c.alive).count() >= 6 {
            return;
        }
        let id = self.next_client;
        self.next_client += 1;
        let resume = if !self.gone.is_empty() && self.rng.chance(40) {
            let i = self.rng.below(self.gone.len() as u64) as usize;
            Some(self.gone.swap_remove(i))
        } else {
            None
        };
        let user: Arc<str> = match &resume {
            Some((user, _)) => user.clone(),
            None => (*self.rng.pick(&USERS).unwrap()).into(),
        };
        let pace = match self.rng.below(10) {
            0 => Pace::Stalled,
            1..=2 => Pace::Slow,
            _ => Pace::Eager,
        };
        let format = if self.rng.chance(50) {
            Format::Json
        } else {
            Format::Msgpack
        };
        let bounds = [(16, 1 << 20), (64, 8 << 10), (4096, 1 << 20)][self.rng.below(3) as usize];
        let mut c = Client::new(id, user, format, pace, bounds);
        c.history_on_join = self.limits.history_on_join > 0;
        self.note(format!(
            "connect c{id} {} {pace:?} {bounds:?} resume={}",
            c.user,
            resume.is_some()
        ));
        let mut joins = Vec::new();
        if let Some((_, seen)) = resume {
            c.seen = seen.clone();
            for (room, (seq, epoch)) in seen {
                joins.push((room, Some(seq), Some(epoch)));
            }
        }
        self.clients.push(c);
        // Only the first join goes now: the reader waits for each reply.
        if let Some((room, since, epoch)) = joins.into_iter().next() {
            let i = self.clients.len() - 1;
            self.join(i, room, since, epoch);
        }
    }

    fn join(&mut self, i: usize, room: RoomName, since: Option<u64>, epoch: Option<String>) {
        let c = &mut self.clients[i];
        c.next_join += 1;
        let (reply, rx) = oneshot::channel();
        // A join while joined is a no-op answered with `joined`: same view.
        if !c.joined.contains(&room) {
            c.open_view(&room, since);
        }
        c.waiting = Some((room.clone(), rx));
        let cmd = Command::Join {
            peer: c.peer.clone(),
            room: room.clone(),
            since,
            epoch,
            join: c.next_join,
            reply,
        };
        let id = c.id;
        self.note(format!("c{id} join {room} since={since:?}"));
        self.handle(cmd);
    }

    fn leave(&mut self, i: usize, room: RoomName) {
        let c = &mut self.clients[i];
        c.joined.retain(|r| *r != room);
        if let Some(v) = c.views.get_mut(&room).and_then(|q| q.back_mut()) {
            v.leaving = true;
        }
        let cmd = Command::Leave {
            room: room.clone(),
            client_id: c.id,
            explicit: true,
        };
        let id = c.id;
        self.note(format!("c{id} leave {room}"));
        self.handle(cmd);
    }

    fn client_acts(&mut self) {
        let alive: Vec<usize> = (0..self.clients.len())
            .filter(|&i| self.clients[i].alive && self.clients[i].waiting.is_none())
            .collect();
        let Some(&i) = self.rng.pick(&alive) else {
            return;
        };
        let room = self.rng.pick(&self.rooms).unwrap().clone();
        let joined = self.clients[i].joined.contains(&room);
        match self.rng.below(100) {
            0..=24 if !joined || self.rng.chance(10) => {
                let seen = self.clients[i].seen.get(&room).cloned();
                let (since, epoch) = match self.rng.below(4) {
                    0 => (None, None),
                    1 => (Some(0), None),
                    2 => (seen.as_ref().map(|s| s.0), seen.map(|s| s.1)),
                    _ => (Some(self.rng.below(40)), None),
                };
                self.join(i, room, since, epoch);
            }
            0..=34 if joined => {
                self.leave(i, room.clone());
                if self.rng.chance(50) {
                    // Leave and join again at once, while a replay may run.
                    self.join(i, room, Some(0), None);
                }
            }
            0..=84 if joined => {
                let retry = self.rng.chance(20);
                let sent: Vec<(String, Sent)> = self.clients[i]
                    .sent
                    .iter()
                    .filter(|(_, s)| s.room == room)
                    .map(|(k, s)| (k.clone(), s.clone()))
                    .collect();
                let (id, content) = match self.rng.pick(&sent) {
                    Some((id, s)) if retry => (Some(id.clone()), s.content.clone()),
                    _ => {
                        self.next_content += 1;
                        let content = format!("m{}", self.next_content);
                        let id = self
                            .rng
                            .chance(80)
                            .then(|| format!("i{}", self.next_content));
                        (id, content)
                    }
                };
                let c = &mut self.clients[i];
                if let Some(id) = &id {
                    c.sent.entry(id.clone()).or_insert(Sent {
                        room: room.clone(),
                        content: content.clone(),
                        acked: None,
                    });
                }
                let cmd = Command::Publish(Publish {
                    room: room.clone(),
                    user: c.user.clone(),
                    content,
                    client_msg_id: id.clone(),
                    origin: Origin::Session(c.peer.clone()),
                });
                let cid = c.id;
                self.note(format!("c{cid} publish {room} id={id:?}"));
                self.handle(cmd);
            }
            0..=88 => {
                let cmd = Command::Presence {
                    room,
                    peer: self.clients[i].peer.clone(),
                };
                self.handle(cmd);
            }
            // Ephemeral and per-user signals: they take no sequence and
            // must never disturb a view's messages.
            89 => {
                let peer = self.clients[i].peer.clone();
                self.note(format!("c{} typing {room}", peer.client_id));
                self.handle(Command::Typing { room, peer });
            }
            90 => {
                let peer = self.clients[i].peer.clone();
                let sequence = self.rng.below(60);
                self.note(format!("c{} read {room} {sequence}", peer.client_id));
                self.handle(Command::Read {
                    room,
                    peer,
                    sequence,
                });
            }
            91 => {
                let status = parlor::protocol::Status {
                    availability: [
                        parlor::protocol::Availability::Online,
                        parlor::protocol::Availability::Away,
                        parlor::protocol::Availability::Busy,
                    ][self.rng.below(3) as usize],
                    text: None,
                };
                let user = self.clients[i].user.clone();
                self.handle(Command::Status { room, user, status });
            }
            92 => {
                let after = self.rng.below(40);
                let (reply, rx) = oneshot::channel();
                self.waits.push((room.clone(), after, rx));
                self.handle(Command::Wait { room, after, reply });
            }
            _ => {
                self.note(format!("c{} disconnects", self.clients[i].id));
                self.end_session(i);
            }
        }
    }

    fn http_publish(&mut self) {
        let room = self.rng.pick(&self.rooms).unwrap().clone();
        self.next_content += 1;
        let content = format!("h{}", self.next_content);
        let id = self
            .rng
            .chance(50)
            .then(|| format!("h{}", self.rng.below(20)));
        let (tx, rx) = oneshot::channel();
        self.http.push(HttpPublish {
            rx,
            room: room.clone(),
            content: content.clone(),
            id: id.clone(),
        });
        self.note(format!("http publish {room} id={id:?}"));
        let cmd = Command::Publish(Publish {
            room,
            user: "api".into(),
            content,
            client_msg_id: id,
            origin: Origin::Http(tx, Arc::new(Budget::unlimited())),
        });
        self.handle(cmd);
    }

    /// Checks HTTP answers that have arrived.
    fn settle_http(&mut self) {
        let mut still = Vec::new();
        for mut h in std::mem::take(&mut self.http) {
            match h.rx.try_recv() {
                Ok(Ok(seq)) => {
                    // The room may have expired since: its log is archived.
                    let (id, content) = (h.id.clone(), h.content.clone());
                    let names_it = |m: &StoredMessage| match &id {
                        // A retried id answers with the first one's message.
                        Some(id) => m.client_msg_id.as_deref() == Some(id.as_str()),
                        None => m.content == content,
                    };
                    if self.logs.find(&h.room, None, seq, names_it).is_none() {
                        panic!("HTTP publish answered {seq}: no such message in the log");
                    }
                    if let Some(id) = &h.id {
                        self.check_acked("api", id, &h.room, seq);
                    }
                }
                Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => {}
                Err(oneshot::error::TryRecvError::Empty) => still.push(h),
            }
        }
        self.http = still;
    }

    fn check_acked(&mut self, user: &str, id: &str, room: &RoomName, seq: u64) {
        let key = (user.to_string(), id.to_string());
        match self.acked.get(&key) {
            Some((r, s)) if r == room => {
                assert_eq!(*s, seq, "{user}'s id {id} acked as {s}, then as {seq}")
            }
            Some(_) => {}
            None => {
                self.acked.insert(key, (room.clone(), seq));
            }
        }
    }

    /// Completes one effect whose time has come.
    fn complete(&mut self) {
        let ready: Vec<usize> = (0..self.pending.len())
            .filter(|&i| self.pending[i].0 <= self.now)
            .collect();
        let Some(&i) = self.rng.pick(&ready) else {
            return;
        };
        let (_, p) = self.pending.swap_remove(i);
        match p {
            Pending::Load(room) => {
                let result = if self.rng.chance(5) {
                    Err(injected())
                } else {
                    self.log
                        .load_room(&room, self.limits.dedup_window)
                        .map_err(Arc::new)
                };
                self.note(format!("loaded {room} ok={}", result.is_ok()));
                self.coverage.failed_loads += u64::from(result.is_err());
                self.core.loaded(room, result, self.now);
            }
            Pending::Commit(mut batch) => {
                // Whether the log took the batch, whatever the answer says.
                let stored = !self.rng.chance(8);
                let result = if !stored {
                    Err(injected())
                } else {
                    for room in &batch.expired {
                        self.logs.archive(room);
                    }
                    if let Err(e) = self.log.append(&mut batch) {
                        panic!("the log refused a batch of the core: {e}");
                    }
                    if self.shared {
                        self.publish_batch(&batch);
                    }
                    if self.shared && self.rng.chance(5) {
                        // Stored, but the answer was lost for some rooms.
                        self.coverage.lost_answers += 1;
                        let lost = self.rng.pick(&self.rooms).unwrap().clone();
                        for a in batch.appends.iter_mut().filter(|a| a.room == lost) {
                            a.message.sequence = 0;
                        }
                        Err(injected())
                    } else {
                        Ok(())
                    }
                };
                self.note(format!(
                    "committed {} ok={}",
                    batch.appends.len(),
                    result.is_ok()
                ));
                self.coverage.commits += 1;
                self.coverage.failed_commits += u64::from(result.is_err());
                // A lost answer does not bring a deleted log back.
                let deleted = if stored {
                    batch.expired.clone()
                } else {
                    Vec::new()
                };
                self.core.committed(batch, result, self.now);
                // Retries this batch answered name what was stored before
                // the deletion: checked first, then forgotten with it.
                self.settle_http();
                for room in &deleted {
                    self.forget(room);
                }
            }
            Pending::Subscribed(room) => {
                if self.channel.down_until.is_none() && self.channel.wanted.contains(&room) {
                    self.channel.listening.insert(room.clone());
                    self.note(format!("subscribed {room}"));
                    self.core.subscribed(&room, self.now);
                }
            }
            Pending::Fill(fill) => {
                let result = if self.rng.chance(3) {
                    Err(injected())
                } else {
                    let limit = ReadLimit::messages(FILL_CHUNK);
                    self.log
                        .read_tail(&fill.room, fill.after, fill.upto, limit)
                        .map_err(Arc::new)
                };
                self.note(format!(
                    "filled {} after {} upto {} ok={}",
                    fill.room,
                    fill.after,
                    fill.upto,
                    result.is_ok()
                ));
                self.core.filled(&fill.room, result, self.now);
            }
            Pending::Read(read) => {
                let (frames, bytes) = read.wait_for();
                let outbox = &read.peer.outbox;
                if outbox.is_cut() {
                    return;
                }
                if outbox.depth() > frames || outbox.queued_bytes() > bytes {
                    // The driver waits for the client to read first.
                    self.pending.push((self.now + 1, Pending::Read(read)));
                    return;
                }
                let result = if self.rng.chance(2) {
                    Err(injected())
                } else {
                    read.read(&*self.log).map_err(Arc::new)
                };
                self.note(format!(
                    "read {} for c{} after {}",
                    read.room, read.peer.client_id, read.after
                ));
                let done = ReadDone {
                    room: read.room,
                    client_id: read.peer.client_id,
                    join: read.join,
                    result,
                };
                self.core.read_done(done, self.now);
            }
        }
        self.take_effects();
    }

    /// The live channel carries what a batch stored, per room.
    fn publish_batch(&mut self, batch: &Batch) {
        for new in &batch.new_rooms {
            let fresh: Vec<_> = batch
                .appends
                .iter()
                .filter(|a| a.room == new.room && !a.duplicate && a.message.sequence > 0)
                .map(|a| a.message.clone())
                .collect();
            self.channel
                .publish(&mut self.rng, self.now, &new.room, &new.epoch, fresh);
        }
    }

    /// A room's log was deleted: what was acked in it is gone with it, and
    /// an id may be stored again in its new log.
    fn forget(&mut self, room: &RoomName) {
        self.note(format!("{room} expired"));
        self.coverage.expired += 1;
        self.acked.retain(|_, (r, _)| r != room);
        for c in &mut self.clients {
            for s in c.sent.values_mut().filter(|s| s.room == *room) {
                s.acked = None;
            }
        }
    }

    fn read_clients(&mut self) {
        for i in 0..self.clients.len() {
            let c = &self.clients[i];
            let reads = match c.pace {
                Pace::Eager => true,
                Pace::Slow => self.rng.chance(10),
                Pace::Stalled => false,
            };
            if c.alive && reads {
                self.clients[i].read(&self.logs);
            }
        }
    }

    fn advance(&mut self) {
        let by = if self.rng.chance(10) {
            1500
        } else {
            self.rng.below(200)
        };
        self.now += by;
        if self.core.poll_timeout().is_some_and(|t| t <= self.now) {
            self.core.handle_timeout(self.now);
            self.take_effects();
        }
    }

    fn stats(&mut self) {
        let (tx, mut rx) = oneshot::channel();
        self.handle(Command::Stats {
            after: None,
            limit: usize::MAX,
            reply: tx,
        });
        for s in rx.try_recv().expect("stats answer at once") {
            let log_last = self.log.load_room(&s.room, 0).unwrap().last;
            assert!(
                s.last <= log_last,
                "{} reports {} past the log's {log_last}",
                s.room,
                s.last
            );
        }
    }

    /// Answers to joins, and sessions that were cut.
    fn reap(&mut self) {
        for i in 0..self.clients.len() {
            let c = &mut self.clients[i];
            if !c.alive {
                continue;
            }
            if let Some((room, rx)) = &mut c.waiting {
                match rx.try_recv() {
                    Ok(Ok(())) => {
                        if !c.joined.contains(room) {
                            c.joined.push(room.clone());
                        }
                        c.waiting = None;
                    }
                    Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => {
                        if !c.joined.contains(room) {
                            if let Some(q) = c.views.get_mut(room) {
                                q.pop_back();
                            }
                        }
                        c.waiting = None;
                    }
                    Err(oneshot::error::TryRecvError::Empty) => {}
                }
            }
            if c.peer.outbox.is_cut() {
                let (id, code) = (c.id, c.peer.outbox.cut_code());
                self.note(format!("c{id} was cut ({code})"));
                self.end_session(i);
            }
        }
    }

    /// The session ends: it leaves its rooms (as its reader does).
    fn end_session(&mut self, i: usize) {
        let c = &mut self.clients[i];
        c.alive = false;
        c.peer.outbox.cut(1001);
        let rooms: Vec<RoomName> = c.views.keys().cloned().collect();
        let id = c.id;
        self.gone.push((c.user.clone(), c.seen.clone()));
        for room in rooms {
            self.handle(Command::Leave {
                room,
                client_id: id,
                explicit: false,
            });
        }
    }

    /// The process dies: the core and everything in flight are gone; a
    /// commit in flight may or may not have reached the log.
    fn crash(&mut self) {
        self.note("crash".into());
        self.coverage.crashes += 1;
        let mut deleted = Vec::new();
        for (_, p) in std::mem::take(&mut self.pending) {
            if let Pending::Commit(mut batch) = p {
                if self.rng.chance(50) {
                    // Landed before the crash: a room it deleted is gone
                    // from the log as after any committed batch.
                    self.log
                        .append(&mut batch)
                        .expect("the log takes the batch");
                    deleted.append(&mut batch.expired);
                }
            }
        }
        for room in &deleted {
            self.forget(room);
        }
        self.channel.wanted.clear();
        self.channel.listening.clear();
        self.channel.in_flight.clear();
        self.channel.presence.clear();
        for c in &mut self.clients {
            if c.alive {
                c.alive = false;
                self.gone.push((c.user.clone(), c.seen.clone()));
            }
        }
        self.http.clear();
        self.waits.clear();
        self.core = Rooms::new(self.limits, Box::new(Sequential));
    }

    /// Lets everything in flight finish with eager readers, then checks that
    /// every eager member has seen its rooms' whole logs.
    pub fn quiesce(&mut self) {
        for _ in 0..10_000 {
            self.core.end_round();
            self.take_effects();
            self.now += 50;
            if self.core.poll_timeout().is_some_and(|t| t <= self.now) {
                self.core.handle_timeout(self.now);
                self.take_effects();
            }
            for i in 0..self.clients.len() {
                if self.clients[i].alive && self.clients[i].pace == Pace::Eager {
                    self.clients[i].read(&self.logs);
                }
            }
            self.reap();
            // Slow and stalled readers would hold reads back for ever.
            let stuck: Vec<usize> = (0..self.clients.len())
                .filter(|&i| self.clients[i].alive && self.clients[i].pace != Pace::Eager)
                .collect();
            for i in stuck {
                self.end_session(i);
            }
            self.reconnect();
            while !self.channel.in_flight.is_empty() || !self.channel.presence.is_empty() {
                let before = (self.channel.in_flight.len(), self.channel.presence.len());
                self.deliver_live();
                if before == (self.channel.in_flight.len(), self.channel.presence.len()) {
                    break;
                }
            }
            let quiet = !self.core.behind_log()
                && self.channel.in_flight.is_empty()
                && self.channel.presence.is_empty()
                && self.channel.down_until.is_none();
            if self.pending.is_empty() && self.core.is_settled() && quiet {
                // What the live channel brought just now is still queued.
                for i in 0..self.clients.len() {
                    if self.clients[i].alive && self.clients[i].pace == Pace::Eager {
                        self.clients[i].read(&self.logs);
                    }
                }
                break;
            }
            let ready = self
                .pending
                .iter()
                .filter(|(at, _)| *at <= self.now)
                .count();
            for _ in 0..ready {
                self.complete();
            }
        }
        assert!(
            self.pending.is_empty(),
            "effects still pending after quiescing"
        );
        for c in &self.clients {
            if !c.alive || c.waiting.is_some() {
                continue;
            }
            for room in &c.joined {
                let last = self.log.load_room(room, 0).unwrap().last;
                let view = c.views[room].back().unwrap();
                assert!(view.announced, "c{}: {room} never joined", c.id);
                let seen = view.next.map_or(0, |n| n - 1);
                assert_eq!(
                    seen, last,
                    "c{}: {room} saw up to {seen}, the log has {last}",
                    c.id
                );
            }
        }
    }
}

fn injected() -> Arc<StoreError> {
    Arc::new(StoreError::storage(
        "injected fault",
        std::io::Error::other("simulated"),
    ))
}

/// Runs one seed: `steps` random steps, then quiescence and the final checks.
pub fn run(seed: u64, steps: usize) -> Coverage {
    let mut world = World::new(seed);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for _ in 0..steps {
            world.step();
        }
        world.quiesce();
        check_log(&world);
    }));
    if let Err(panic) = outcome {
        let keep = std::env::var("PARLOR_SIM_TRACE").map_or(40, |v| v.parse().unwrap_or(40));
        let tail: Vec<&String> = world.trace.iter().rev().take(keep).collect();
        eprintln!("--- seed {seed}: last steps, newest first ---");
        for line in tail {
            eprintln!("  {line}");
        }
        std::panic::resume_unwind(panic);
    }
    world.coverage
}

/// The log itself: per room 1..N with no gap, and no client id twice; read
/// markers within the room's log.
fn check_log(world: &World) {
    for room in &world.rooms {
        let last = world.log.load_room(room, 0).unwrap().last;
        for (user, seq) in world.log.read_markers(room).unwrap() {
            assert!(
                seq <= last,
                "{room}: {user} read up to {seq}, the log ends at {last}"
            );
        }
        let all = world
            .log
            .read(room, 0, u64::MAX, ReadLimit::messages(usize::MAX))
            .unwrap();
        let mut ids = std::collections::HashSet::new();
        for (i, m) in all.iter().enumerate() {
            assert_eq!(m.sequence, i as u64 + 1, "{room}: a gap in the log");
            if let Some(id) = &m.client_msg_id {
                assert!(
                    ids.insert((m.user.clone(), id.clone())),
                    "{room}: id {id} stored twice"
                );
            }
        }
    }
}
