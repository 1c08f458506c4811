//! What the fuzz targets share: the reader's frame pipeline over an in-memory
//! stream, and the invariants of a decoded request.
//!
//! `read_stream` runs the reader's own pipeline (`session::frames` for
//! frames and close codes, `session::assemble` for messages) as
//! `read_loop` in `src/session/reader.rs` does, with the parts that need a
//! live server (outbox, shards, timers) left out: where the server would cut
//! the connection with a close code, it returns that code.
//!
//! `hyper_reads` is hyper's reading of a request head, as the server runs
//! hyper: the handshake target holds the upgrade read without hyper to it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use fastwebsockets::OpCode;
use parlor::error::close;
use parlor::protocol::client::{decode, ClientMsg, Request, HISTORY_MAX_LIMIT, MAX_ID_LEN};
use parlor::protocol::status::MAX_STATUS_TEXT;
use parlor::protocol::Format;
use parlor::session::assemble::Assembler;
use parlor::session::frames::{self, close_reply, FrameReader, ReadError, Stream};
use tokio::io::{AsyncRead, ReadBuf};

/// Whole-message limit of the frame targets: small, so that the fuzzer
/// reaches the size checks (the server's default is far larger).
pub const MAX_MESSAGE: usize = 4096;

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The input ran out (the server sends 1001 and closes).
    Eof,
    /// The client sent a close frame (the library echoes it).
    ClientClosed,
    /// The server closes with this code.
    Closed(u16),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Whole messages the assembler returned, in order.
    pub messages: Vec<(OpCode, Bytes)>,
    pub end: End,
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
}

/// Runs the reader's pipeline over `raw` (the bytes a client sends after the
/// handshake) until EOF or the first error, checking on the way that every
/// message is at most `max` bytes, that text is UTF-8 and that every error
/// becomes 1002, 1007 or 1009.
pub fn read_stream<R: AsyncRead + Unpin + Send>(raw: R, max: usize) -> Outcome {
    RUNTIME.with(|rt| rt.block_on(read_loop(raw, max)))
}

async fn read_loop<R: AsyncRead + Unpin + Send>(raw: R, max: usize) -> Outcome {
    let mut reader = FrameReader::new(Stream(raw), &[], max);
    let mut assembler = Assembler::new(max);
    let mut messages = Vec::new();
    let end = loop {
        let frame = match reader.next_frame().await {
            Ok(frame) => frame,
            Err(ReadError::Closed) => break End::Eof,
            Err(ReadError::Protocol(code)) => break End::Closed(code),
            Err(ReadError::Io(e)) => panic!("an I/O error on an in-memory stream: {e}"),
        };
        match frame.opcode {
            frames::OpCode::Close => match close_reply(&frame.payload) {
                Ok(_) => break End::ClientClosed,
                Err(code) => break End::Closed(code),
            },
            frames::OpCode::Ping | frames::OpCode::Pong => {}
            _ => match assembler.feed(frame) {
                Ok(Some((op, data))) => {
                    assert!(
                        data.len() <= max,
                        "a message of {} bytes > {max}",
                        data.len()
                    );
                    let op = match op {
                        frames::OpCode::Text => {
                            assert!(std::str::from_utf8(&data).is_ok(), "text is not UTF-8");
                            OpCode::Text
                        }
                        frames::OpCode::Binary => OpCode::Binary,
                        other => panic!("a message with opcode {other:?}"),
                    };
                    messages.push((op, data));
                }
                Ok(None) => {}
                Err(code) => break End::Closed(code),
            },
        }
    };
    if let End::Closed(code) = end {
        assert!(
            matches!(
                code,
                close::PROTOCOL_ERROR | close::INVALID_PAYLOAD | close::TOO_BIG
            ),
            "close code {code}"
        );
    }
    Outcome { messages, end }
}

/// Decodes `bytes` as the server would, checking the invariants of a decoded
/// request; returns it.
pub fn decode_checked(format: Format, bytes: &[u8]) -> Option<Request> {
    let req = decode(format, bytes).ok()?;
    check_request(&req);
    // What decoded re-encodes to itself, in both formats.
    let value = to_value(&req);
    let json = serde_json::to_vec(&value).expect("JSON encoding");
    assert_eq!(
        decode(Format::Json, &json).as_ref(),
        Ok(&req),
        "JSON round trip"
    );
    let msgpack = rmp_serde::to_vec(&value).expect("MessagePack encoding");
    assert_eq!(
        decode(Format::Msgpack, &msgpack).as_ref(),
        Ok(&req),
        "MessagePack round trip"
    );
    Some(req)
}

pub fn check_request(req: &Request) {
    if let Some(id) = &req.id {
        assert!(id.len() <= MAX_ID_LEN, "id of {} bytes", id.len());
    }
    match &req.msg {
        ClientMsg::Join { room, .. }
        | ClientMsg::Leave { room }
        | ClientMsg::Message { room, .. }
        | ClientMsg::Presence { room } => check_room(room.as_str()),
        ClientMsg::History { room, limit, .. } => {
            check_room(room.as_str());
            assert!(
                (1..=HISTORY_MAX_LIMIT).contains(limit),
                "history limit {limit}"
            );
        }
        ClientMsg::Typing { room } | ClientMsg::Read { room, .. } => check_room(room.as_str()),
        ClientMsg::Status { status } => {
            if let Some(text) = &status.text {
                assert!(!text.is_empty(), "an empty status text is none");
                assert!(
                    text.chars().count() <= MAX_STATUS_TEXT,
                    "status text of {} characters",
                    text.chars().count()
                );
            }
        }
        ClientMsg::Ping | ClientMsg::Refresh { .. } => {}
    }
}

/// The room name rules, written out again rather than calling `RoomName::parse`.
fn check_room(name: &str) {
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
    assert!(ok, "room name {name:?}");
}

/// The request as a client would write it (a map with string keys).
fn to_value(req: &Request) -> serde_json::Value {
    use serde_json::{json, Value};
    let mut v = match &req.msg {
        ClientMsg::Join { room, since, epoch } => {
            let mut v = json!({"type": "join", "room": room.as_str()});
            if let Some(since) = since {
                v["since"] = json!(since);
            }
            if let Some(epoch) = epoch {
                v["epoch"] = json!(epoch);
            }
            v
        }
        ClientMsg::Leave { room } => json!({"type": "leave", "room": room.as_str()}),
        ClientMsg::Message { room, content } => {
            json!({"type": "message", "data": {"room": room.as_str(), "content": content}})
        }
        ClientMsg::History { room, since, limit } => {
            json!({"type": "history", "room": room.as_str(), "since": since, "limit": limit})
        }
        ClientMsg::Presence { room } => json!({"type": "presence", "room": room.as_str()}),
        ClientMsg::Ping => json!({"type": "ping"}),
        ClientMsg::Status { status } => {
            let mut v = json!({"type": "status", "status": status.availability.as_str()});
            if let Some(text) = &status.text {
                v["text"] = json!(&**text);
            }
            v
        }
        ClientMsg::Typing { room } => json!({"type": "typing", "room": room.as_str()}),
        ClientMsg::Read { room, sequence } => {
            json!({"type": "read", "room": room.as_str(), "sequence": sequence})
        }
        ClientMsg::Refresh { token } => json!({"type": "refresh", "token": token}),
    };
    if let Some(id) = &req.id {
        v["id"] = Value::from(id.as_str());
    }
    v
}

/// An in-memory stream that hands out at most `chunk` bytes a read (0: all
/// it has) and, if `stall`, answers every other read with `Pending`, so the
/// library's partial-header and partial-payload paths run.
pub struct Trickle<'a> {
    data: &'a [u8],
    chunk: usize,
    stall: bool,
    stalled: bool,
}

impl<'a> Trickle<'a> {
    pub fn new(data: &'a [u8], chunk: usize, stall: bool) -> Trickle<'a> {
        Trickle {
            data,
            chunk,
            stall,
            stalled: false,
        }
    }
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.stall {
            this.stalled = !this.stalled;
            if this.stalled {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        let limit = if this.chunk == 0 {
            usize::MAX
        } else {
            this.chunk
        };
        let n = this.data.len().min(buf.remaining()).min(limit);
        buf.put_slice(&this.data[..n]);
        this.data = &this.data[n..];
        Poll::Ready(Ok(()))
    }
}

/// One frame as a client writes it: masked with `mask`; `wide` writes the
/// length in the 8-byte form whatever it is (legal for the library).
pub fn write_frame(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: OpCode,
    payload: &[u8],
    mask: [u8; 4],
    wide: bool,
) {
    out.push(((fin as u8) << 7) | opcode as u8);
    let len = payload.len();
    if wide {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    } else if len < 126 {
        out.push(0x80 | len as u8);
    } else if len < 65536 {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// What hyper reads from a connection that sends `bytes` and then closes:
/// the first request's method, target and headers, and whether it is a
/// WebSocket upgrade by fastwebsockets' test. `None` if hyper reads no
/// request (it answers with an error, or the head is not whole). hyper runs
/// as the server configures it (`max_buf_size`, `max_header_size`), over
/// an in-memory stream.
pub fn hyper_reads(bytes: &[u8]) -> Option<HyperRequest> {
    use std::sync::{Arc, Mutex};

    use http_body_util::Empty;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::io::AsyncWriteExt;

    /// `HTTP_MAX_BUF` in `src/server/mod.rs`.
    const HTTP_MAX_BUF: usize = 64 * 1024;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        // Room for the request and hyper's answer: neither side waits.
        let (mut client, server) = tokio::io::duplex(bytes.len() + 64 * 1024);
        client.write_all(bytes).await.expect("fits the pipe");
        client.shutdown().await.expect("shutdown");
        let seen: Arc<Mutex<Option<HyperRequest>>> = Arc::default();
        let slot = seen.clone();
        let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let mut slot = slot.lock().unwrap();
            if slot.is_none() {
                *slot = Some(HyperRequest {
                    upgrade: fastwebsockets::upgrade::is_upgrade_request(&req),
                    method: req.method().clone(),
                    uri: req.uri().clone(),
                    headers: req.headers().clone(),
                });
            }
            async { Ok::<_, std::convert::Infallible>(hyper::Response::new(Empty::<Bytes>::new())) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .header_read_timeout(None)
            .max_buf_size(HTTP_MAX_BUF)
            .max_header_size(HTTP_MAX_BUF)
            .serve_connection(TokioIo::new(server), service)
            .await;
        let read = seen.lock().unwrap().take();
        read
    })
}

/// A request as hyper read it (`hyper_reads`).
#[derive(Debug)]
pub struct HyperRequest {
    pub method: hyper::Method,
    pub uri: hyper::Uri,
    pub headers: hyper::HeaderMap,
    pub upgrade: bool,
}
