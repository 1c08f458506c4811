//! A simulated session: its peer (a real outbox), what it has sent, and its
//! view of each room, checked frame by frame against the log as it reads.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use parlor::error::ErrorCode;
use parlor::outbox::{Outbox, OutboxReceiver};
use parlor::protocol::{Format, RoomName};
use parlor::rooms::Peer;
use parlor::store::{MemoryStore, ReadLimit, Store, StoredMessage};
use serde_json::Value;
use tokio::sync::oneshot;

/// Per room, the highest sequence seen and its epoch.
pub type Seen = BTreeMap<RoomName, (u64, String)>;

/// How a client reads its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Reads whenever it can.
    Eager,
    /// Reads now and then.
    Slow,
    /// Never reads.
    Stalled,
}

/// One join of one room, as the client sees it.
#[derive(Debug)]
pub struct View {
    pub since: Option<u64>,
    /// The `joined` frame has arrived.
    pub announced: bool,
    pub epoch: Option<String>,
    /// The next sequence this view must see (None: not known yet).
    pub next: Option<u64>,
    /// A leave was sent: the view ends with `left`.
    pub leaving: bool,
}

/// A message the client sent with an id, and what became of it.
#[derive(Debug, Clone)]
pub struct Sent {
    pub room: RoomName,
    pub content: String,
    pub acked: Option<u64>,
}

pub struct Client {
    pub id: u64,
    pub user: Arc<str>,
    pub peer: Arc<Peer>,
    rx: OutboxReceiver,
    pub pace: Pace,
    /// Views per room, oldest first: frames go to the first that is not over.
    pub views: BTreeMap<RoomName, VecDeque<View>>,
    /// What the session's reader believes it is joined to.
    pub joined: Vec<RoomName>,
    /// A join the reader waits on (it reads nothing else meanwhile).
    pub waiting: Option<(RoomName, oneshot::Receiver<Result<(), ErrorCode>>)>,
    pub sent: BTreeMap<String, Sent>,
    /// Highest sequence seen per room, for resuming after a reconnect.
    pub seen: Seen,
    pub next_join: u64,
    pub alive: bool,
    /// A plain join sends a `history` frame (`--history-on-join` > 0).
    pub history_on_join: bool,
}

impl Client {
    pub fn new(
        id: u64,
        user: Arc<str>,
        format: Format,
        pace: Pace,
        bounds: (usize, usize),
    ) -> Client {
        let (outbox, rx) = Outbox::new(bounds.0, bounds.1);
        let peer = Arc::new(Peer::new(id, user.clone(), format, outbox));
        Client {
            id,
            user,
            peer,
            rx,
            pace,
            views: BTreeMap::new(),
            joined: Vec::new(),
            waiting: None,
            sent: BTreeMap::new(),
            seen: BTreeMap::new(),
            next_join: 0,
            alive: true,
            history_on_join: true,
        }
    }

    pub fn open_view(&mut self, room: &RoomName, since: Option<u64>) {
        self.views.entry(room.clone()).or_default().push_back(View {
            since,
            announced: false,
            epoch: None,
            next: None,
            leaving: false,
        });
    }

    /// Reads everything queued and checks each frame.
    pub fn read(&mut self, log: &Logs) {
        for frame in self.peer.outbox.drain_frames(&mut self.rx) {
            let v = decode(&frame);
            if std::env::var_os("PARLOR_SIM_FRAMES").is_some() {
                eprintln!("c{} <- {v}", self.id);
            }
            if let Err(why) = self.check(&v, log) {
                let views = format!("{:?}", self.views);
                panic!(
                    "client {} ({}): {why}\n  frame: {v}\n  views: {views}",
                    self.id, self.user
                );
            }
        }
    }

    fn view(&mut self, room: &RoomName) -> Result<&mut View, String> {
        self.views
            .get_mut(room)
            .and_then(|q| q.front_mut())
            .ok_or_else(|| format!("a frame for {room}, which this client has no view of"))
    }

    fn check(&mut self, v: &Value, log: &Logs) -> Result<(), String> {
        let ty = v["type"].as_str().unwrap_or_default();
        let data = &v["data"];
        let room = data["room"].as_str().map(|r| RoomName::parse(r).unwrap());
        match ty {
            "joined" => {
                let room = room.unwrap();
                let (last, epoch) = (
                    data["last"].as_u64().unwrap(),
                    data["epoch"].as_str().unwrap(),
                );
                let recovered = data["recovered"].as_bool().unwrap();
                // Frames of a join come before its `left`, those of the
                // next join after: `joined` is for the first view, and a
                // repeat when that one is announced (a join while joined).
                let history_on_join = self.history_on_join;
                let view = self.view(&room)?;
                if view.announced {
                    if view.epoch.as_deref() != Some(epoch) {
                        return Err("a repeated joined changed the epoch".into());
                    }
                    return Ok(());
                }
                view.announced = true;
                view.epoch = Some(epoch.to_string());
                view.next = match view.since {
                    Some(s) if recovered => Some(s + 1),
                    Some(_) => None,
                    None if last == 0 || !history_on_join => Some(last + 1),
                    None => None,
                };
                Ok(())
            }
            "history" => {
                let room = room.unwrap();
                let view = self.view(&room)?;
                if !view.announced || view.since.is_some() || view.next.is_some_and(|n| n > 1) {
                    return Err("a history frame out of place".into());
                }
                let msgs = data["messages"].as_array().unwrap();
                for m in msgs {
                    check_message(view, &room, m, log)?;
                }
                if msgs.is_empty() && view.next.is_none() {
                    return Err("an empty history for a room with messages".into());
                }
                Ok(())
            }
            "message" => {
                let room = room.unwrap();
                let view = self.view(&room)?;
                if !view.announced {
                    return Err("a message before joined".into());
                }
                if view.since.is_none() && view.next.is_none() {
                    return Err("a message before the join's history".into());
                }
                check_message(view, &room, data, log)?;
                let seq = data["sequence"].as_u64().unwrap();
                let epoch = view.epoch.clone().unwrap();
                self.seen.insert(room, (seq, epoch));
                Ok(())
            }
            "ack" => {
                let id = v["id"].as_str().ok_or("ack without id")?;
                let seq = data["sequence"].as_u64().unwrap();
                let sent = self.sent.get_mut(id).ok_or("ack for an id never sent")?;
                if let Some(first) = sent.acked {
                    if first != seq {
                        return Err(format!("id {id} acked as {first} and then as {seq}"));
                    }
                }
                let stored = log
                    .find(&sent.room, None, seq, |m| {
                        m.client_msg_id.as_deref() == Some(id)
                    })
                    .ok_or("acked but not in the log")?;
                if stored.content != sent.content || *stored.user != *self.user {
                    return Err(format!("ack {seq} names another message"));
                }
                if stored.client_msg_id.as_deref() != Some(id) {
                    return Err(format!("ack {seq} for id {id}: the log has another id"));
                }
                sent.acked = Some(seq);
                Ok(())
            }
            "error" => {
                let code = data["code"].as_str().unwrap_or_default();
                if !matches!(code, "internal" | "not_joined") {
                    return Err(format!("unexpected error {code}"));
                }
                Ok(())
            }
            "left" => {
                let room = room.unwrap();
                let q = self
                    .views
                    .get_mut(&room)
                    .ok_or("left for an unknown room")?;
                match q.front() {
                    Some(v) if v.leaving => {
                        q.pop_front();
                        Ok(())
                    }
                    _ => Err("left for a view that was not leaving".into()),
                }
            }
            "presence_diff" => {
                let room = room.unwrap();
                if !self.view(&room)?.announced {
                    return Err("a presence diff before joined".into());
                }
                Ok(())
            }
            "presence" => Ok(()),
            "typing" | "read" => {
                let room = room.unwrap();
                if !self.view(&room)?.announced {
                    return Err(format!("a {ty} event before joined"));
                }
                if ty == "typing" && data["user"].as_str() == Some(&*self.user) {
                    return Err("told about its own typing".into());
                }
                if ty == "read" {
                    let seq = data["sequence"].as_u64().ok_or("read without sequence")?;
                    let last = log.log.load_room(&room, 0).map_err(|e| e.to_string())?.last;
                    let epoch_now = log.log.epoch(&room).ok().flatten();
                    let view_epoch = self.view(&room)?.epoch.clone();
                    if epoch_now == view_epoch && seq > last {
                        return Err(format!("read marker {seq} past the log's {last}"));
                    }
                }
                Ok(())
            }
            other => Err(format!("unexpected frame type {other}")),
        }
    }
}

/// The log, and the logs of rooms deleted since (by epoch), so a frame read
/// late is checked against the log it came from.
#[derive(Default)]
pub struct Logs {
    pub log: Arc<MemoryStore>,
    archive: BTreeMap<RoomName, Vec<(String, Vec<StoredMessage>)>>,
}

impl Logs {
    pub fn new(log: Arc<MemoryStore>) -> Logs {
        Logs {
            log,
            archive: BTreeMap::new(),
        }
    }

    /// Keeps a room's log before it is deleted.
    pub fn archive(&mut self, room: &RoomName) {
        let Ok(Some(epoch)) = self.log.epoch(room) else {
            return;
        };
        let all = self
            .log
            .read(room, 0, u64::MAX, ReadLimit::messages(usize::MAX))
            .unwrap();
        self.archive
            .entry(room.clone())
            .or_default()
            .push((epoch, all));
    }

    /// Message `seq` of `room` in the log of `epoch` (any, when None) that
    /// `matches`.
    pub fn find(
        &self,
        room: &RoomName,
        epoch: Option<&str>,
        seq: u64,
        matches: impl Fn(&StoredMessage) -> bool,
    ) -> Option<StoredMessage> {
        let current = self.log.epoch(room).ok().flatten();
        if epoch.is_none() || epoch == current.as_deref() {
            let got = self
                .log
                .read(room, seq - 1, seq, ReadLimit::messages(1))
                .ok()?;
            if let Some(m) = got.into_iter().next().filter(|m| matches(m)) {
                return Some(m);
            }
        }
        let old = self.archive.get(room)?;
        old.iter()
            .filter(|(e, _)| epoch.is_none_or(|want| want == e))
            .filter_map(|(_, all)| all.get(seq as usize - 1))
            .find(|m| matches(m))
            .cloned()
    }
}

/// A message shown to a view: the next one in order, in this log, once.
fn check_message(view: &mut View, room: &RoomName, m: &Value, log: &Logs) -> Result<(), String> {
    let seq = m["sequence"].as_u64().unwrap();
    if let Some(next) = view.next {
        if seq != next {
            return Err(format!("expected sequence {next}, got {seq}"));
        }
    }
    view.next = Some(seq + 1);
    let epoch = view.epoch.as_deref().unwrap();
    if m["id"].as_str() != Some(&format!("{epoch}-{seq}")) {
        return Err(format!("message id {} is not of epoch {epoch}", m["id"]));
    }
    let stored = log
        .find(room, Some(epoch), seq, |_| true)
        .ok_or(format!("shown {seq}, which the log does not have"))?;
    if m["content"].as_str() != Some(&stored.content) || m["user"].as_str() != Some(&*stored.user) {
        return Err(format!("shown {seq} differs from the log"));
    }
    Ok(())
}

/// A server frame (WebSocket header + JSON or MessagePack payload) as JSON.
fn decode(frame: &[u8]) -> Value {
    let head = match frame[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let payload = &frame[head..];
    match frame[0] & 0x0f {
        1 => serde_json::from_slice(payload).expect("server JSON"),
        2 => rmp_serde::from_slice(payload).expect("server MessagePack"),
        op => panic!("unexpected opcode {op}"),
    }
}
