//! `GET /api/rooms/{room}/events`: a room as Server-Sent Events.
//!
//! An SSE consumer is one more kind of peer: it joins the room like a
//! WebSocket session, with an outbox of its own, and the room core encodes
//! each message once for every SSE consumer (`Format::Sse`: `id:` the
//! sequence, `event: message`, `data:` the message as JSON). So the stream
//! gets the same exact replay-then-live hand-off as `join` with `since`
//! (from `Last-Event-ID` or `?since=`), and the same outbox bound: a
//! consumer that cannot keep up is cut (the stream ends) and resumes with
//! `Last-Event-ID`. A pump task moves what the outbox holds into the
//! response body, one piece at a time as hyper takes it, and sends a
//! comment line every heartbeat. Auth and origin rules are the WebSocket's.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use tokio::sync::{mpsc, oneshot};

use super::http::{json_error, Body, Conn, Query};
use crate::error::{close, ErrorCode};
use crate::outbox::{Out, Outbox};
use crate::protocol::{Format, RoomName};
use crate::rooms::{Command, Peer};
use crate::session::dispatch::refusal;

/// Pieces of the stream handed to hyper ahead of its writes (each is what
/// the outbox held at once: bounded by the outbox's bytes).
const PIPE: usize = 1;

pub async fn events(req: Request<Incoming>, conn: Conn, room: &str) -> Response<Body> {
    let ctx = conn.ctx.clone();
    let env = ctx.env.clone();
    let cfg = env.config.clone();
    let query = Query::parse(req.uri().query());
    let (grant, who) = match super::upgrade::identify(&ctx, req.headers(), &query) {
        Ok(identified) => identified,
        Err(refused) => return refused.respond(&ctx),
    };
    let room = match RoomName::parse(room) {
        Ok(r) => r,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidRoom,
                &e.to_string(),
            )
        }
    };
    if let Some(why) = refusal(&room, &who, grant.as_ref()) {
        return json_error(StatusCode::FORBIDDEN, ErrorCode::Forbidden, why);
    }
    let last_event_id = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned());
    let since = match last_event_id.as_deref().or(query.get("since")) {
        None | Some("") => None,
        Some(v) => match v.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                let m = "Last-Event-ID and since are sequences (non-negative integers)";
                return json_error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, m);
            }
        },
    };
    let Some(user_slot) = ctx.admit_user(&who) else {
        return json_error(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "too many connections for this user",
        );
    };
    let (outbox, mut rx) = Outbox::new(cfg.outbox_frames, cfg.outbox_bytes);
    let mut peer = Peer::new(env.next_client_id(), who.clone(), Format::Sse, outbox);
    peer.presence_events = matches!(query.get("presence"), Some("1" | "true"));
    peer.account = user_slot.account().clone();
    let peer = Arc::new(peer);
    let (reply, joined) = oneshot::channel();
    let join = Command::Join {
        peer: peer.clone(),
        room: room.clone(),
        since,
        epoch: None,
        join: 1,
        reply,
    };
    let refused = |why: &str| json_error(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Internal, why);
    if env.shards.send(&room, join).await.is_err() {
        return refused("the server is shutting down");
    }
    match joined.await {
        Ok(Ok(())) => {}
        Ok(Err(_)) | Err(_) => return refused("the room is unavailable; try again"),
    }
    peer.account.joined(&room);
    env.metrics.joins.inc();

    let (tx, body_rx) = mpsc::channel::<Bytes>(PIPE);
    let heartbeat = cfg.heartbeat();
    let expires_at = grant.and_then(|g| g.expires_at);
    let slot = conn.slot.clone();
    conn.tasks.spawn(async move {
        let _slots = (user_slot, slot);
        env.metrics.sse_streams.inc();
        let outbox = &peer.outbox;
        // Browsers reconnect this long after a stream ends.
        let _ = tx.send(Bytes::from_static(b"retry: 2000\n\n")).await;
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        let expiry = until(expires_at);
        tokio::pin!(expiry);
        loop {
            tokio::select! {
                biased;
                _ = outbox.cut_signalled() => break,
                _ = env.shutdown.cancelled() => break,
                _ = &mut expiry => break,
                _ = tx.closed() => break,
                more = rx.take(outbox) => {
                    if !more {
                        break;
                    }
                    let mut piece = BytesMut::new();
                    let mut frames = 0;
                    for item in rx.taken() {
                        let (Out::Frame(b) | Out::Close(b)) = item;
                        piece.extend_from_slice(&b);
                        frames += 1;
                    }
                    let bytes = piece.len();
                    // Waits while hyper has not written the last piece: the
                    // outbox fills meanwhile, and a full one is cut.
                    let sent = tokio::select! {
                        sent = tx.send(piece.freeze()) => sent.is_ok(),
                        _ = outbox.cut_signalled() => false,
                        _ = env.shutdown.cancelled() => false,
                    };
                    rx.written(outbox, frames, bytes);
                    if !sent {
                        break;
                    }
                }
                _ = beat.tick() => {
                    if tx.try_send(Bytes::from_static(b": keep-alive\n\n")).is_err() && tx.is_closed() {
                        break;
                    }
                }
            }
        }
        env.metrics.sse_streams.dec();
        if outbox.cut_code() == close::SLOW_CONSUMER {
            env.metrics.slow_consumer_cuts.inc();
        }
        outbox.cut(close::GOING_AWAY);
        peer.account.left(&room);
        let leave = Command::Leave {
            room: room.clone(),
            client_id: peer.client_id,
            explicit: false,
        };
        let _ = env.shards.send(&room, leave).await;
    });

    let mut r = Response::new(channel_body(body_rx));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// Resolves at `at`; never without one.
async fn until(at: Option<std::time::SystemTime>) {
    match at {
        Some(at) => {
            let left = at
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            tokio::time::sleep(left.min(Duration::from_secs(86_400 * 365 * 100))).await
        }
        None => std::future::pending().await,
    }
}

/// A response body fed by a channel; it ends when the sender is dropped.
fn channel_body(rx: mpsc::Receiver<Bytes>) -> Body {
    use http_body_util::BodyExt;
    ChannelBody(rx).boxed_unsync()
}

struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|piece| piece.map(|b| Ok(Frame::data(b))))
    }
}
