//! The reader half of a session: frames in, requests routed.
//!
//! fastwebsockets parses frames; `assemble` checks and reassembles them into
//! whole messages, and each failure becomes its close code.
//! `read_frame` is not cancel-safe, so it is only ever raced against the end
//! of the session, never against other work.

use std::sync::Arc;

use fastwebsockets::{Frame, OpCode, Role};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::assemble::{is_control, is_masked, Assembler};
use super::dispatch::State;
use super::writer::Liveness;
use super::{Env, Session};
use crate::error::{close, close_code_for, ErrorCode};
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
    Shutdown,
    TokenExpired,
    WriterGone,
}

pub async fn run<R: AsyncRead + Unpin>(
    mut raw: R,
    session: &Arc<Session>,
    env: &Arc<Env>,
    liveness: &Liveness,
    params: &super::Params,
) -> ReadEnd {
    let mut state = State::new(session.clone(), env.clone(), params.grant.clone());
    let end = read_loop(&mut raw, &mut state, liveness, params.echo).await;
    // Leave every room before anything slow, so presence updates at once.
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
    // On the heap, and only now: an array here would sit in every session's future.
    let mut sink = vec![0u8; 4096];
    let _ = tokio::time::timeout(DRAIN_GRACE, async {
        while matches!(raw.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    end
}

async fn read_loop<R: AsyncRead + Unpin>(
    raw: &mut R,
    state: &mut State,
    liveness: &Liveness,
    echo: bool,
) -> ReadEnd {
    let session = state.session().clone();
    let env = state.env().clone();
    let peer = &session.peer;
    let cfg = &env.config;
    let max_message = cfg.max_frame_bytes;
    let (mut ws, _) = fastwebsockets::after_handshake_split(raw, tokio::io::sink(), Role::Server);
    ws.set_auto_pong(false);
    // The library refuses frames of `len >= max`; ours is inclusive.
    ws.set_max_message_size(max_message.saturating_add(1));
    let mut assembler = Assembler::new(max_message);
    let expiry = token_expiry(state.grant().and_then(|g| g.expires_at));
    tokio::pin!(expiry);
    // Frames the library obliges us to send (close echo, 1002 on a bad close
    // code) are final: they go through the outbox after what is queued.
    let mut send_fn = |f: Frame<'_>| {
        let res = peer
            .outbox
            .push_close(frame::from_fastwebsockets(&f))
            .map_err(|e| std::io::Error::other(format!("{e:?}")));
        std::future::ready(res)
    };
    loop {
        let read = tokio::select! {
            biased;
            _ = session.writer_done.notified() => return ReadEnd::WriterGone,
            _ = env.shutdown.cancelled() => {
                peer.outbox.cut(close::GOING_AWAY);
                return ReadEnd::Shutdown;
            }
            _ = &mut expiry => {
                peer.outbox.cut(close::BAD_CREDENTIALS);
                return ReadEnd::TokenExpired;
            }
            read = ws.read_frame(&mut send_fn) => read,
        };
        let mut frame = match read {
            Ok(frame) => frame,
            Err(e) => {
                return match close_code_for(&e) {
                    Some(code) => {
                        peer.outbox.cut(code);
                        ReadEnd::ProtocolError
                    }
                    None if matches!(e, fastwebsockets::WebSocketError::InvalidCloseCode) => {
                        ReadEnd::ProtocolError
                    }
                    None => {
                        peer.outbox.cut(close::GOING_AWAY);
                        ReadEnd::Eof
                    }
                };
            }
        };
        liveness.touch();
        if !is_masked(&mut frame) || (is_control(frame.opcode) && frame.payload.len() > 125) {
            peer.outbox.cut(close::PROTOCOL_ERROR);
            return ReadEnd::ProtocolError;
        }
        match frame.opcode {
            OpCode::Close => return ReadEnd::ClientClosed,
            OpCode::Ping => {
                peer.outbox
                    .push_or_cut(frame::frame(OpCode::Pong, &frame.payload));
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
                    if peer
                        .outbox
                        .push_wait(frame::frame(opcode, &data))
                        .await
                        .is_err()
                    {
                        return ReadEnd::WriterGone;
                    }
                    continue;
                }
                let expected = match peer.format {
                    Format::Json => OpCode::Text,
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
