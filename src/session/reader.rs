//! The reader half of a session: frames in, requests routed.
//!
//! `frames` reads and checks frames (holding no buffer while idle),
//! `assemble` makes whole messages of them; each failure becomes its close
//! code. Reading a frame is not cancel-safe, so it is only ever raced
//! against the end of the session, never against other work.

use std::future::Future;
use std::sync::Arc;

use super::assemble::Assembler;
use super::dispatch::State;
use super::frames::{close_reply, ByteSource, FrameReader, OpCode, ReadError};
use super::writer::Liveness;
use super::{Env, Session};
use crate::error::{close, ErrorCode};
use crate::protocol::client::decode;
use crate::protocol::{frame, Format};
use crate::rooms::Command;

/// How long a closing connection is drained before the socket is dropped
/// (dropping unread input would make the kernel reset the connection and
/// could destroy the close frame we just sent).
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug)]
pub enum ReadEnd {
    ClientClosed,
    Eof,
    ProtocolError,
    TokenExpired,
    WriterGone,
}

/// The reader: reads until the session ends, then leaves its rooms and
/// drains. A plain fn returning the future, so each value lives in it once
/// (an `async fn` keeps its arguments beside their moved copies).
#[allow(clippy::manual_async_fn)]
pub fn run<S: ByteSource>(
    mut frames: FrameReader<S>,
    session: Arc<Session>,
    env: Arc<Env>,
    liveness: Arc<Liveness>,
    grant: Option<crate::auth::Grant>,
    echo: bool,
) -> impl Future<Output = ReadEnd> + Send {
    // Made here, not in the future: its parts (the grant) would be kept
    // in the future twice, as captured and as moved into the state.
    let mut state = State::new(session.clone(), env.clone(), grant);
    async move {
        let end = read_loop(&mut frames, &mut state, &liveness, echo).await;
        // Leave every room before anything slow, so presence updates at
        // once. Boxed: only a closing session needs the room for it.
        Box::pin(async {
            for room in state.take_joined() {
                let cmd = Command::Leave {
                    room: room.clone(),
                    client_id: session.peer.client_id,
                    explicit: false,
                };
                let _ = env.shards.send(&room, cmd).await;
            }
            if !matches!(end, ReadEnd::WriterGone) {
                session.writer_done.notified().await;
            }
            let _ = tokio::time::timeout(DRAIN_GRACE, frames.drain()).await;
        })
        .await;
        end
    }
}

async fn read_loop<S: ByteSource>(
    frames: &mut FrameReader<S>,
    state: &mut State,
    liveness: &Liveness,
    echo: bool,
) -> ReadEnd {
    let session = state.session().clone();
    let env = state.env().clone();
    let peer = &session.peer;
    let mut assembler = Assembler::new(env.config.max_frame_bytes);
    // Boxed, and only with a token that expires: a timer in every idle
    // session's future would cost each one its size.
    let mut expiry = timer(state.grant().and_then(|g| g.expires_at));
    loop {
        let read = tokio::select! {
            biased;
            // Also how a shutdown ends the session: `Env::close_sessions`
            // cuts it, and the writer sends 1001.
            _ = session.writer_done.notified() => return ReadEnd::WriterGone,
            _ = expired(&mut expiry) => {
                peer.outbox.cut(close::BAD_CREDENTIALS);
                return ReadEnd::TokenExpired;
            }
            read = frames.next_frame() => read,
        };
        let frame = match read {
            Ok(frame) => frame,
            Err(ReadError::Protocol(code)) => {
                peer.outbox.cut(code);
                return ReadEnd::ProtocolError;
            }
            Err(ReadError::Closed | ReadError::Io(_)) => {
                peer.outbox.cut(close::GOING_AWAY);
                return ReadEnd::Eof;
            }
        };
        liveness.touch();
        match frame.opcode {
            OpCode::Close => {
                // The echo (or our refusal of a bad close) is the last frame,
                // after what is queued.
                match close_reply(&frame.payload) {
                    Ok(echo) => {
                        let _ = peer
                            .outbox
                            .push_close(frame::frame(fastwebsockets::OpCode::Close, &echo));
                        return ReadEnd::ClientClosed;
                    }
                    Err(code) => {
                        peer.outbox.cut(code);
                        return ReadEnd::ProtocolError;
                    }
                }
            }
            OpCode::Ping => {
                let pong = frame::frame(fastwebsockets::OpCode::Pong, &frame.payload);
                peer.outbox.push_or_cut(pong);
            }
            OpCode::Pong => {}
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                let (opcode, data) = match assembler.feed(frame) {
                    Ok(Some(message)) => message,
                    Ok(None) => continue,
                    Err(code) => {
                        peer.outbox.cut(code);
                        return ReadEnd::ProtocolError;
                    }
                };
                if echo {
                    let op = match opcode {
                        OpCode::Text => fastwebsockets::OpCode::Text,
                        _ => fastwebsockets::OpCode::Binary,
                    };
                    if peer
                        .outbox
                        .push_wait(frame::frame(op, &data))
                        .await
                        .is_err()
                    {
                        return ReadEnd::WriterGone;
                    }
                    continue;
                }
                let expected = match peer.format {
                    Format::Json | Format::Sse => OpCode::Text,
                    Format::Msgpack => OpCode::Binary,
                };
                let decoded = if opcode == expected {
                    decode(peer.format, &data)
                } else {
                    Err(crate::protocol::DecodeError {
                        code: ErrorCode::BadRequest,
                        message: format!("this connection speaks {}", peer.format.name()),
                        id: None,
                    })
                };
                // The payload may share the read buffer's allocation: let it
                // go before a dispatch that waits (a join waits for its room),
                // so a join storm does not hold a read buffer per joiner.
                drop(data);
                match decoded {
                    Ok(request) => {
                        // Boxed: the dispatch state (join, history) would
                        // otherwise sit in every idle session's reader future.
                        if let Err(end) = Box::pin(state.dispatch(request)).await {
                            return end;
                        }
                        if state.take_refreshed() {
                            expiry = timer(state.grant().and_then(|g| g.expires_at));
                        }
                    }
                    Err(e) => state.error(e.code, &e.message, e.id.as_deref()),
                }
            }
        }
    }
}

/// A timer for a token's expiry, if it has one.
fn timer(at: Option<std::time::SystemTime>) -> Option<std::pin::Pin<Box<tokio::time::Sleep>>> {
    at.map(|at| {
        let left = at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        Box::pin(tokio::time::sleep(left))
    })
}

/// Resolves when the session's token expires; never without one.
async fn expired(expiry: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match expiry {
        Some(sleep) => sleep.await,
        None => std::future::pending().await,
    }
}
