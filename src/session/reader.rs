//! The reader half of a session: frames in, requests routed.
//!
//! fastwebsockets parses frames; `assemble` checks and reassembles them into
//! whole messages, and each failure becomes its close code.
//! `read_frame` is not cancel-safe, so it is only ever raced against the end
//! of the session, never against other work.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Role};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::assemble::{is_control, is_masked, Assembler};
use super::rate::{RateLimiter, Verdict};
use super::replay;
use super::writer::Liveness;
use super::{PushError, SessionHandle};
use crate::error::{close, close_code_for, ErrorCode};
use crate::protocol::client::{decode, ClientMsg, Request};
use crate::protocol::{frame, server as msg, Format, RoomName};
use crate::server::auth::Grant;
use crate::server::Ctx;
use crate::shard::{CatchUp, PublishReply, ShardCmd};

/// How long a closing connection is drained before the socket is dropped
/// (dropping unread input would make the kernel reset the connection and
/// could destroy the close frame we just sent).
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug)]
pub enum ReadEnd {
    ClientClosed,
    Eof,
    ProtocolError,
    Shutdown,
    TokenExpired,
    WriterGone,
}

pub async fn run<R: AsyncRead + Unpin>(
    mut raw: R,
    session: &Arc<SessionHandle>,
    ctx: &Arc<Ctx>,
    liveness: &Liveness,
    params: &super::Params,
) -> ReadEnd {
    let echo = params.echo;
    let mut state = State {
        replays: HashMap::new(),
        grant: params.grant.clone(),
        session: session.clone(),
        ctx: ctx.clone(),
        joined: HashSet::new(),
        rate: RateLimiter::new(
            ctx.config.rate_per_sec,
            ctx.config.rate_burst,
            Instant::now(),
        ),
    };
    let end = read_loop(&mut raw, &mut state, liveness, echo).await;
    for (_, replay) in state.replays.drain() {
        replay.abort();
    }
    // Leave every room before anything slow, so presence updates at once.
    for room in state.joined.drain() {
        let cmd = ShardCmd::Leave {
            room: room.clone(),
            client_id: session.client_id,
            reply: false,
        };
        let _ = ctx.shards.send(&room, cmd).await;
    }
    if !matches!(end, ReadEnd::WriterGone) {
        session.writer_done.notified().await;
    }
    // On the heap, and only now: an array here would sit in every session's future.
    let mut sink = vec![0u8; 4096];
    let _ = tokio::time::timeout(DRAIN_GRACE, async {
        while matches!(raw.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    end
}

struct State {
    /// Catch-ups still running, by room; aborted on leave and at the end.
    replays: HashMap<RoomName, tokio::task::AbortHandle>,
    grant: Option<Grant>,
    session: Arc<SessionHandle>,
    ctx: Arc<Ctx>,
    joined: HashSet<RoomName>,
    rate: RateLimiter,
}

async fn read_loop<R: AsyncRead + Unpin>(
    raw: &mut R,
    state: &mut State,
    liveness: &Liveness,
    echo: bool,
) -> ReadEnd {
    let session = state.session.clone();
    let cfg = &state.ctx.config;
    let max_message = cfg.max_frame_bytes;
    let (mut ws, _) = fastwebsockets::after_handshake_split(raw, tokio::io::sink(), Role::Server);
    ws.set_auto_pong(false);
    // The library refuses frames of `len >= max`; ours is inclusive.
    ws.set_max_message_size(max_message.saturating_add(1));
    let mut assembler = Assembler::new(max_message);
    let expiry = token_expiry(state.grant.as_ref().and_then(|g| g.expires_at));
    tokio::pin!(expiry);
    // Frames the library obliges us to send (close echo, 1002 on a bad close
    // code) are final: they go through the outbox after what is queued.
    let mut send_fn = |f: Frame<'_>| {
        let res = session
            .outbox
            .push_close(frame::from_fastwebsockets(&f))
            .map_err(|e| std::io::Error::other(format!("{e:?}")));
        std::future::ready(res)
    };
    loop {
        let read = tokio::select! {
            biased;
            _ = session.writer_done.notified() => return ReadEnd::WriterGone,
            _ = state.ctx.shutdown.cancelled() => {
                session.outbox.cut(close::GOING_AWAY);
                return ReadEnd::Shutdown;
            }
            _ = &mut expiry => {
                session.outbox.cut(close::BAD_CREDENTIALS);
                return ReadEnd::TokenExpired;
            }
            read = ws.read_frame(&mut send_fn) => read,
        };
        let mut frame = match read {
            Ok(frame) => frame,
            Err(e) => {
                return match close_code_for(&e) {
                    Some(code) => {
                        session.outbox.cut(code);
                        ReadEnd::ProtocolError
                    }
                    None if matches!(e, fastwebsockets::WebSocketError::InvalidCloseCode) => {
                        ReadEnd::ProtocolError
                    }
                    None => {
                        session.outbox.cut(close::GOING_AWAY);
                        ReadEnd::Eof
                    }
                };
            }
        };
        liveness.touch();
        if !is_masked(&mut frame) || (is_control(frame.opcode) && frame.payload.len() > 125) {
            session.outbox.cut(close::PROTOCOL_ERROR);
            return ReadEnd::ProtocolError;
        }
        match frame.opcode {
            OpCode::Close => return ReadEnd::ClientClosed,
            OpCode::Ping => {
                session
                    .outbox
                    .push_or_cut(frame::frame(OpCode::Pong, &frame.payload));
            }
            OpCode::Pong => {}
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                let (opcode, data) = match assembler.feed(frame) {
                    Ok(Some(message)) => message,
                    Ok(None) => continue,
                    Err(code) => {
                        session.outbox.cut(code);
                        return ReadEnd::ProtocolError;
                    }
                };
                if echo {
                    if session
                        .outbox
                        .push_wait(frame::frame(opcode, &data))
                        .await
                        .is_err()
                    {
                        return ReadEnd::WriterGone;
                    }
                    continue;
                }
                let expected = match session.format {
                    Format::Json => OpCode::Text,
                    Format::Msgpack => OpCode::Binary,
                };
                let decoded = if opcode == expected {
                    decode(session.format, &data)
                } else {
                    Err(crate::protocol::DecodeError {
                        code: ErrorCode::BadRequest,
                        message: format!("this connection speaks {}", session.format.name()),
                        id: None,
                    })
                };
                match decoded {
                    Ok(request) => {
                        // Boxed: the dispatch state (join, replay, history) would
                        // otherwise sit in every idle session's reader future.
                        if let Err(end) = Box::pin(state.dispatch(request)).await {
                            return end;
                        }
                    }
                    Err(e) => state.error(e.code, &e.message, e.id.as_deref()),
                }
            }
        }
    }
}

/// Resolves when the session's token expires; never without one.
async fn token_expiry(expires_at: Option<std::time::SystemTime>) {
    match expires_at {
        Some(at) => {
            let left = at
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            tokio::time::sleep(left).await
        }
        None => std::future::pending().await,
    }
}

impl State {
    fn error(&self, code: ErrorCode, message: &str, id: Option<&str>) {
        self.ctx.metrics.error(code);
        let f = msg::error(self.session.format, code, message, id);
        self.session.outbox.push_or_cut(f);
    }

    fn reply(&self, f: Bytes) {
        self.session.outbox.push_or_cut(f);
    }

    async fn to_shard(&self, room: &RoomName, cmd: ShardCmd) -> Result<(), ReadEnd> {
        self.ctx.shards.send(room, cmd).await.map_err(|_| {
            self.session.outbox.cut(close::GOING_AWAY);
            ReadEnd::WriterGone
        })
    }

    async fn dispatch(&mut self, req: Request) -> Result<(), ReadEnd> {
        let Request { id, msg: m } = req;
        let id = id.as_deref();
        let cfg = &self.ctx.config;
        match m {
            ClientMsg::Ping => self.reply(msg::bare(self.session.format, "pong")),
            ClientMsg::Join { room, since, epoch } => {
                if self.grant.as_ref().is_some_and(|g| !g.allows(&room)) {
                    self.error(
                        ErrorCode::Forbidden,
                        "your token does not grant this room",
                        id,
                    );
                    return Ok(());
                }
                if !self.joined.contains(&room) && self.joined.len() >= cfg.max_rooms_per_conn {
                    let m = format!("at most {} rooms per connection", cfg.max_rooms_per_conn);
                    self.error(ErrorCode::RateLimited, &m, id);
                    return Ok(());
                }
                let (tx, rx) = tokio::sync::oneshot::channel();
                let cmd = ShardCmd::Join {
                    room: room.clone(),
                    session: self.session.clone(),
                    since,
                    epoch,
                    reply: tx,
                };
                self.to_shard(&room, cmd).await?;
                match rx.await {
                    Ok(Ok(plan)) => {
                        self.joined.insert(room.clone());
                        self.ctx.metrics.joins.inc();
                        // The catch-up runs beside the reader, so the client's
                        // other frames (pongs above all) are read meanwhile.
                        if plan.catch_up != CatchUp::Nothing {
                            let (ctx, session, r) =
                                (self.ctx.clone(), self.session.clone(), room.clone());
                            let task =
                                tokio::spawn(
                                    async move { replay::run(&ctx, &session, &r, plan).await },
                                );
                            if let Some(old) = self.replays.insert(room, task.abort_handle()) {
                                old.abort();
                            }
                        }
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
                if let Some(replay) = self.replays.remove(&room) {
                    replay.abort();
                }
                let cmd = ShardCmd::Leave {
                    room: room.clone(),
                    client_id: self.session.client_id,
                    reply: true,
                };
                self.to_shard(&room, cmd).await?;
            }
            ClientMsg::Message { room, content } => {
                match self.rate.check(Instant::now()) {
                    Verdict::Allow => {}
                    Verdict::Refuse => {
                        self.error(ErrorCode::RateLimited, "too many messages", id);
                        return Ok(());
                    }
                    Verdict::Close => {
                        self.session.outbox.cut(close::TOO_MANY_REFUSALS);
                        return Err(ReadEnd::ProtocolError);
                    }
                }
                if content.len() > cfg.max_content_bytes {
                    let m = format!("content is over {} bytes", cfg.max_content_bytes);
                    self.error(ErrorCode::TooLarge, &m, id);
                    return Ok(());
                }
                if !self.joined.contains(&room) {
                    self.error(
                        ErrorCode::NotJoined,
                        "join the room before sending to it",
                        id,
                    );
                    return Ok(());
                }
                self.ctx.metrics.messages_in.inc();
                let cmd = ShardCmd::Publish {
                    room: room.clone(),
                    user: self.session.user.clone(),
                    content,
                    client_msg_id: id.map(str::to_owned),
                    reply: PublishReply::Session(self.session.clone()),
                };
                self.to_shard(&room, cmd).await?;
            }
            ClientMsg::History { room, since, limit } => {
                match replay::history(&self.ctx, &room, since, limit, self.session.format).await {
                    Ok(f) => {
                        if let Err(PushError::Closed) = self.session.outbox.push_wait(f).await {
                            return Err(ReadEnd::WriterGone);
                        }
                    }
                    Err(_) => self.error(ErrorCode::Internal, "history is unavailable", id),
                }
            }
            ClientMsg::Presence { room } => {
                let cmd = ShardCmd::Presence {
                    room: room.clone(),
                    session: self.session.clone(),
                };
                self.to_shard(&room, cmd).await?;
            }
        }
        Ok(())
    }
}
