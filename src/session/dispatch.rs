//! What a session does with each decoded request: checks what the session
//! itself can (grants, limits, membership, sizes), then hands it to the
//! room's shard, or reads a history page.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::history::history_frame;
use super::rate::{Limit, RateLimiter, Verdict};
use super::reader::ReadEnd;
use super::{Env, Session};
use crate::auth::Grant;
use crate::config::Config;
use crate::error::{close, ErrorCode};
use crate::protocol::client::{ClientMsg, Request};
use crate::protocol::{server as msg, RoomName};
use crate::rooms::{Command, JoinId, Origin, Publish, RoomSet};

enum RateKind {
    Message,
    Request,
    Signal,
}

/// `typing`, `read` and `status` per connection: cheap (no store read, at
/// most a pass over a small room), but bounded all the same.
const SIGNAL_RATE_PER_SEC: f64 = 10.0;
const SIGNAL_BURST: f64 = 20.0;

impl RateKind {
    fn limit(&self, cfg: &Config) -> Limit {
        match self {
            RateKind::Message => Limit::new(cfg.rate_per_sec, cfg.rate_burst),
            RateKind::Request => Limit::new(cfg.request_rate_per_sec, cfg.request_burst),
            RateKind::Signal => Limit::new(SIGNAL_RATE_PER_SEC, SIGNAL_BURST),
        }
    }
}

/// A session's request state: who it is allowed to be and where it is.
pub struct State {
    session: Arc<Session>,
    env: Arc<Env>,
    /// Boxed: a session without a token (or not yet refreshed) keeps one
    /// word for it, not the grant's size.
    grant: Option<Box<Grant>>,
    joined: RoomSet,
    /// `message` frames.
    rate: RateLimiter,
    /// Requests that cost a store read or a pass over a room.
    requests: RateLimiter,
    /// `typing`, `read` and `status`.
    signals: RateLimiter,
    /// Names each join, so the rooms can tell its catch-up from a later one's.
    joins: JoinId,
    /// A `refresh` replaced the grant: the reader re-arms the expiry.
    refreshed: bool,
}

impl State {
    pub fn new(session: Arc<Session>, env: Arc<Env>, grant: Option<Grant>) -> State {
        let cfg = &env.config;
        let now = Instant::now();
        let rate = RateLimiter::new(RateKind::Message.limit(cfg), now);
        let requests = RateLimiter::new(RateKind::Request.limit(cfg), now);
        let signals = RateLimiter::new(RateKind::Signal.limit(cfg), now);
        State {
            session,
            env,
            grant: grant.map(Box::new),
            joined: RoomSet::default(),
            rate,
            requests,
            signals,
            joins: 0,
            refreshed: false,
        }
    }

    /// Whether a `refresh` replaced the grant since the last call.
    pub fn take_refreshed(&mut self) -> bool {
        std::mem::take(&mut self.refreshed)
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    pub fn env(&self) -> &Arc<Env> {
        &self.env
    }

    pub fn grant(&self) -> Option<&Grant> {
        self.grant.as_deref()
    }

    /// The rooms joined, for leaving them when the session ends.
    pub fn take_joined(&mut self) -> Vec<RoomName> {
        let account = &self.session.peer.account;
        let rooms = self.joined.take();
        for room in &rooms {
            account.left(room);
        }
        rooms
    }

    pub fn error(&self, code: ErrorCode, message: &str, id: Option<&str>) {
        self.env.metrics.error(code);
        let peer = &self.session.peer;
        peer.outbox
            .push_or_cut(msg::error(peer.format, code, message, id));
    }

    fn reply(&self, f: Bytes) {
        self.session.peer.outbox.push_or_cut(f);
    }

    async fn to_shard(&self, room: &RoomName, cmd: Command) -> Result<(), ReadEnd> {
        self.env.shards.send(room, cmd).await.map_err(|_| {
            self.session.peer.outbox.cut(close::GOING_AWAY);
            ReadEnd::WriterGone
        })
    }

    /// Whether the rate limit of `kind` lets this request through; refused
    /// ones get `rate_limited`, and too many refusals close with 4029.
    fn admit(&mut self, kind: RateKind, id: Option<&str>) -> Result<bool, ReadEnd> {
        let limit = kind.limit(&self.env.config);
        let (limiter, what) = match kind {
            RateKind::Message => (&mut self.rate, "too many messages"),
            RateKind::Request => (&mut self.requests, "too many requests"),
            RateKind::Signal => (&mut self.signals, "too many typing, read or status frames"),
        };
        match limiter.check(limit, Instant::now()) {
            Verdict::Allow => Ok(true),
            Verdict::Refuse => {
                self.error(ErrorCode::RateLimited, what, id);
                Ok(false)
            }
            Verdict::Close => {
                self.session.peer.outbox.cut(close::TOO_MANY_REFUSALS);
                Err(ReadEnd::ProtocolError)
            }
        }
    }

    pub async fn dispatch(&mut self, req: Request) -> Result<(), ReadEnd> {
        let Request { id, msg: m } = req;
        let id = id.as_deref();
        let peer = self.session.peer.clone();
        let cfg = self.env.config.clone();
        // One check for every request that names a room, whatever it asks.
        if let Some(room) = m.room() {
            if let Some(why) = refusal(room, &peer.user, self.grant.as_deref()) {
                self.error(ErrorCode::Forbidden, why, id);
                return Ok(());
            }
        }
        let signal = matches!(
            m,
            ClientMsg::Typing { .. } | ClientMsg::Read { .. } | ClientMsg::Status { .. }
        );
        if signal && !self.admit(RateKind::Signal, id)? {
            return Ok(());
        }
        // What costs a store read or a pass over a room's members is paced.
        let costly = matches!(
            m,
            ClientMsg::Join { .. }
                | ClientMsg::Leave { .. }
                | ClientMsg::History { .. }
                | ClientMsg::Presence { .. }
        );
        if costly && !self.admit(RateKind::Request, id)? {
            return Ok(());
        }
        match m {
            ClientMsg::Ping => self.reply(msg::bare(peer.format, "pong")),
            ClientMsg::Join { room, since, epoch } => {
                if !self.joined.contains(&room) && self.joined.len() >= cfg.max_rooms_per_conn {
                    let m = format!("at most {} rooms per connection", cfg.max_rooms_per_conn);
                    self.error(ErrorCode::RateLimited, &m, id);
                    return Ok(());
                }
                self.joins += 1;
                let (tx, rx) = tokio::sync::oneshot::channel();
                let cmd = Command::Join {
                    peer,
                    room: room.clone(),
                    since,
                    epoch,
                    join: self.joins,
                    reply: tx,
                };
                self.to_shard(&room, cmd).await?;
                match rx.await {
                    Ok(Ok(())) => {
                        if self.joined.insert(room.clone()) {
                            self.session.peer.account.joined(&room);
                        }
                        self.env.metrics.joins.inc();
                    }
                    Ok(Err(code)) => self.error(code, "join failed", id),
                    Err(_) => self.error(ErrorCode::Internal, "shard unavailable", id),
                }
            }
            ClientMsg::Leave { room } => {
                if !self.joined.remove(&room) {
                    self.error(ErrorCode::NotJoined, "not joined to this room", id);
                    return Ok(());
                }
                peer.account.left(&room);
                let cmd = Command::Leave {
                    room: room.clone(),
                    client_id: peer.client_id,
                    explicit: true,
                };
                self.to_shard(&room, cmd).await?;
            }
            ClientMsg::Message { room, content } => {
                if !self.admit(RateKind::Message, id)? {
                    return Ok(());
                }
                if content.len() > cfg.max_content_bytes {
                    let m = format!("content is over {} bytes", cfg.max_content_bytes);
                    self.error(ErrorCode::TooLarge, &m, id);
                    return Ok(());
                }
                if !self.joined.contains(&room) {
                    let m = "join the room before sending to it";
                    self.error(ErrorCode::NotJoined, m, id);
                    return Ok(());
                }
                self.env.metrics.messages_in.inc();
                let cmd = Command::Publish(Publish {
                    room: room.clone(),
                    user: peer.user.clone(),
                    content,
                    client_msg_id: id.map(str::to_owned),
                    origin: Origin::Session(peer),
                });
                self.to_shard(&room, cmd).await?;
            }
            ClientMsg::History { room, since, limit } => {
                // A page fits a quarter of the outbox: the reply waits for
                // the outbox to drain to half, never for room that cannot be.
                let (frames, bytes) = (peer.outbox.max_frames(), peer.outbox.max_bytes());
                let budget = bytes / 4;
                match history_frame(&self.env, &room, since, limit, peer.format, budget).await {
                    Ok(f) => {
                        peer.outbox.wait_below(frames / 2, bytes / 2).await;
                        if !peer.outbox.push_or_cut(f) && peer.outbox.is_cut() {
                            return Err(ReadEnd::WriterGone);
                        }
                    }
                    Err(_) => self.error(ErrorCode::Internal, "history is unavailable", id),
                }
            }
            ClientMsg::Presence { room } => {
                let cmd = Command::Presence {
                    room: room.clone(),
                    peer,
                };
                self.to_shard(&room, cmd).await?;
            }
            ClientMsg::Typing { room } => {
                if !self.joined.contains(&room) {
                    self.error(ErrorCode::NotJoined, "join the room first", id);
                    return Ok(());
                }
                let cmd = Command::Typing {
                    room: room.clone(),
                    peer,
                };
                self.to_shard(&room, cmd).await?;
            }
            ClientMsg::Read { room, sequence } => {
                if !self.joined.contains(&room) {
                    self.error(ErrorCode::NotJoined, "join the room first", id);
                    return Ok(());
                }
                let cmd = Command::Read {
                    room: room.clone(),
                    peer,
                    sequence,
                };
                self.to_shard(&room, cmd).await?;
            }
            ClientMsg::Status { status } => {
                // Every room any session of the user is in shows it.
                for room in peer.account.set_status(status.clone()) {
                    let cmd = Command::Status {
                        room: room.clone(),
                        user: peer.user.clone(),
                        status: status.clone(),
                    };
                    self.to_shard(&room, cmd).await?;
                }
            }
            ClientMsg::Refresh { token } => self.refresh(&token, id).await?,
        }
        Ok(())
    }

    /// Replaces the session's grant with a new token's, if it is valid and
    /// for the same user; rooms the new grant does not cover are left.
    async fn refresh(&mut self, token: &str, id: Option<&str>) -> Result<(), ReadEnd> {
        let peer = self.session.peer.clone();
        let grant = match self.env.auth.check_token(&Default::default(), Some(token)) {
            Ok(Some(grant)) => grant,
            Ok(None) => {
                let m = "authentication is off: there is no token to refresh";
                self.error(ErrorCode::BadRequest, m, id);
                return Ok(());
            }
            Err(e) => {
                self.env.metrics.auth_failures.inc();
                self.error(ErrorCode::Forbidden, &e.to_string(), id);
                return Ok(());
            }
        };
        if grant.user != *peer.user {
            self.env.metrics.auth_failures.inc();
            let m = "the token is for another user";
            self.error(ErrorCode::Forbidden, m, id);
            return Ok(());
        }
        let revoked: Vec<RoomName> = self
            .joined
            .iter()
            .filter(|r| !grant.allows(r))
            .cloned()
            .collect();
        let expires_at = grant.expires_at.and_then(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_millis() as u64)
        });
        self.grant = Some(Box::new(grant));
        self.refreshed = true;
        for room in revoked {
            self.joined.remove(&room);
            peer.account.left(&room);
            let cmd = Command::Leave {
                room: room.clone(),
                client_id: peer.client_id,
                explicit: true,
            };
            self.to_shard(&room, cmd).await?;
        }
        let data = msg::Refreshed {
            user: &peer.user,
            expires_at,
        };
        self.reply(msg::encode(peer.format, "refreshed", id, Some(data)));
        Ok(())
    }
}

/// Why `user` may not touch `room`, if not: its token's grants, and a
/// direct-message room's two users (the one rule for every door).
pub fn refusal(room: &RoomName, user: &str, grant: Option<&Grant>) -> Option<&'static str> {
    if grant.is_some_and(|g| !g.allows(room)) {
        return Some("your token does not grant this room");
    }
    if !room.admits(user) {
        return Some("a direct-message room is for its two users only");
    }
    None
}
