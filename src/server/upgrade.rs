//! The WebSocket upgrade: negotiate user and format (`agree`), answer 101,
//! then run the session on the raw TCP halves.
//!
//! A plain TCP connection whose first request is an upgrade that `agree`
//! accepts is answered in `handshake`, without hyper. Every other upgrade
//! (refused, TLS, after other requests on the connection) comes here
//! through hyper, and is checked by the same `agree`. After hyper's 101,
//! the connection is taken back from hyper as the `TcpStream` it was
//! (keeping any bytes hyper had already read), out of the HTTP write
//! deadline, and split with `into_split`, which needs no lock per poll,
//! unlike `tokio::io::split` (which TLS streams still need).

use std::sync::Arc;

use bytes::Bytes;
use fastwebsockets::WebSocketError;
use futures_util::FutureExt;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_util::task::TaskTracker;

use super::http::{full, json_error, Body, Conn, Query};
use super::io::WriteDeadline;
use super::prefixed::Prefixed;
use super::{ConnSlot, Ctx, UserSlot};
use crate::auth::Grant;
use crate::error::ErrorCode;
use crate::protocol::{user, Format};
use crate::session::frames::Stream;
use crate::session::{self, Env, FrameReader, Params};

/// Why a long-lived connection (a WebSocket, an SSE stream) is refused
/// before it starts. Building one has no side effect: the refusal is
/// counted when it is answered (`respond`), so a caller may check a request
/// and leave the answer to another path (`handshake`).
pub(super) struct Refusal {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    /// Counted in `parlor_auth_failures_total` when answered.
    auth: bool,
}

impl Refusal {
    fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            code,
            message: message.into(),
            auth: false,
        }
    }

    fn auth(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal {
            auth: true,
            ..Refusal::new(status, ErrorCode::Forbidden, message)
        }
    }

    /// The HTTP answer, counted where it is an authentication failure.
    pub fn respond(self, ctx: &Ctx) -> Response<Body> {
        if self.auth {
            ctx.env.metrics.auth_failures.inc();
        }
        json_error(self.status, self.code, &self.message)
    }
}

/// Who a client is, by the rules every long-lived connection shares (a
/// WebSocket, an SSE stream): an allowed `Origin`, a valid token when
/// authentication is on (its `sub` is the user), else `?user=` under the
/// one user-name rule, else a generated name.
pub(super) fn identify(
    ctx: &Ctx,
    headers: &HeaderMap,
    query: &Query<'_>,
) -> Result<(Option<Grant>, Arc<str>), Refusal> {
    if !ctx.auth.origin_allowed(headers) {
        return Err(Refusal::auth(StatusCode::FORBIDDEN, "origin not allowed"));
    }
    let grant = ctx
        .auth
        .check_token(headers, query.get("token"))
        .map_err(|e| Refusal::auth(StatusCode::UNAUTHORIZED, e.to_string()))?;
    let user: Arc<str> = match (&grant, query.get("user")) {
        (Some(g), _) => g.user.as_str().into(),
        (None, Some(u)) => user::parse(u).map_err(|e| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                e.to_string(),
            )
        })?,
        (None, None) => format!("user_{:08x}", rand::random::<u32>()).into(),
    };
    Ok((grant, user))
}

/// What a WebSocket upgrade agreed on, on either path to it (hyper's or
/// `handshake`'s).
pub(super) struct Agreed {
    pub params: Params,
    /// The user's place under `--max-conns-per-user`, held by the session.
    pub slot: UserSlot,
    /// The subprotocol to echo in the 101, if the client offered one.
    pub offered: Option<Format>,
    /// `Sec-WebSocket-Accept`.
    pub accept: String,
}

/// Checks an upgrade request, in this order: who the client is
/// (`identify`), the user's connection limit, the format (subprotocol or
/// `?format=`), then the WebSocket key and version. Its only side effect is
/// the user's slot, taken on success.
pub(super) fn agree(
    ctx: &Ctx,
    headers: &HeaderMap,
    query: &Query<'_>,
    echo: bool,
) -> Result<Agreed, Refusal> {
    let (grant, user) = identify(ctx, headers, query)?;
    let slot = ctx.admit_user(&user).ok_or_else(|| {
        Refusal::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "too many connections for this user",
        )
    })?;
    let offered = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(Format::from_subprotocol);
    let format = match (offered, query.get("format")) {
        (Some(f), _) => f,
        (None, Some(q)) => Format::from_query(q).ok_or_else(|| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                "format must be json or msgpack",
            )
        })?,
        (None, None) => Format::Json,
    };
    let bad = |e: WebSocketError| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            e.to_string(),
        )
    };
    let key = headers
        .get(SEC_WEBSOCKET_KEY)
        .ok_or_else(|| bad(WebSocketError::MissingSecWebSocketKey))?;
    if headers.get(SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err(bad(WebSocketError::InvalidSecWebsocketVersion));
    }
    Ok(Agreed {
        accept: super::handshake::accept_key(key.as_bytes()),
        params: Params {
            user,
            format,
            echo,
            grant,
            account: slot.account().clone(),
        },
        slot,
        offered,
    })
}

/// A WebSocket upgrade through hyper: the connection's first request was
/// not one `handshake` took (or the connection is TLS).
pub fn upgrade(mut req: Request<Incoming>, conn: Conn, echo: bool) -> Response<Body> {
    let Conn {
        ctx,
        slot: conn_slot,
        pending,
        ..
    } = conn;
    let query = Query::parse(req.uri().query());
    let agreed = match agree(&ctx, req.headers(), &query, echo) {
        Ok(agreed) => agreed,
        Err(refused) => return refused.respond(&ctx),
    };
    // hyper hands the socket back after writing this 101 (the same headers
    // as `handshake::switching`).
    let upgraded = hyper::upgrade::on(&mut req);
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        SEC_WEBSOCKET_ACCEPT,
        HeaderValue::try_from(agreed.accept).expect("base64 is a valid header value"),
    );
    if let Some(f) = agreed.offered {
        headers.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(f.subprotocol()),
        );
    }
    // The connection's task starts the session once hyper has written the
    // 101 and handed the socket back (`serve_connection`): no task of its
    // own waits for that.
    *pending.lock() = Some(Pending {
        upgraded,
        params: agreed.params,
        slots: (agreed.slot, conn_slot),
    });
    response
}

/// A WebSocket session agreed on in a 101, waiting for hyper to hand the
/// socket back. One per HTTP connection at most: an upgrade is its last
/// request.
pub struct Pending {
    upgraded: OnUpgrade,
    params: Params,
    /// Held until the session ends.
    slots: (UserSlot, ConnSlot),
}

/// Where `upgrade` leaves the session for the connection's task to start.
pub type PendingSlot = Arc<parking_lot::Mutex<Option<Pending>>>;

impl Pending {
    /// Starts the session once its connection has been handed back: when
    /// hyper's connection future has ended, the upgrade is complete (or
    /// failed), so this does not wait.
    pub async fn start(self, env: Arc<Env>, tasks: &TaskTracker) {
        let upgraded = match self.upgraded.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(cause = %e, "upgrade did not complete");
                return;
            }
        };
        session_over(upgraded, self.params, env, self.slots, tasks);
    }
}

/// Starts the session on an upgraded connection as a task of its own, sized
/// to its own future: each way of taking the socket back (plain TCP, TLS)
/// makes a future of a different size, and an idle session should carry
/// only its own, not the largest, nor the upgrade's state (the handshake's
/// parameters, hyper's upgrade future), which ends here.
///
/// hyper served the connection through the write deadline; the session
/// takes the socket out of it and keeps its own deadlines. Bytes hyper read
/// past the handshake start the frame reader, and hyper's read buffer is
/// dropped with `parts`. The 101 head `WriteDeadline` held back goes out
/// with the session's first frame. `slots` are held until the session ends.
fn session_over(
    upgraded: Upgraded,
    params: Params,
    env: Arc<Env>,
    slots: (UserSlot, ConnSlot),
    tasks: &TaskTracker,
) {
    let upgraded = match upgraded.downcast::<TokioIo<WriteDeadline<TcpStream>>>() {
        Ok(parts) => {
            let (tcp, head) = parts.io.into_inner().into_inner();
            start_on_tcp(tcp, &parts.read_buf, head, params, env, slots, tasks);
            return;
        }
        Err(upgraded) => upgraded,
    };
    // A connection `handshake` handed to hyper: hyper read from the bytes
    // `handshake` had read first, and what it did not take of them comes
    // after what it read.
    let upgraded = match upgraded.downcast::<TokioIo<WriteDeadline<Prefixed>>>() {
        Ok(parts) => {
            let (prefixed, head) = parts.io.into_inner().into_inner();
            let (rest, tcp) = prefixed.into_parts();
            let early = [&parts.read_buf[..], &rest[..]].concat();
            start_on_tcp(tcp, &early, head, params, env, slots, tasks);
            return;
        }
        Err(upgraded) => upgraded,
    };
    let max_frame = env.config.max_frame_bytes;
    let release = move |()| drop(slots);
    match upgraded.downcast::<TokioIo<WriteDeadline<TlsStream<TcpStream>>>>() {
        Ok(parts) => {
            // TLS: one stream for both directions, split with a lock.
            let (tls, head) = parts.io.into_inner().into_inner();
            let (read, write) = tokio::io::split(tls);
            let frames = FrameReader::new(Stream(read), &parts.read_buf, max_frame);
            tasks.spawn(session::run(frames, write, head, params, env).map(release));
        }
        Err(upgraded) => {
            tracing::debug!("upgraded connection of an unknown type; splitting with a lock");
            let (read, write) = tokio::io::split(TokioIo::new(upgraded));
            let frames = FrameReader::new(Stream(read), &[], max_frame);
            // Not through `WriteDeadline`, so hyper's 101 went out itself.
            tasks.spawn(session::run(frames, write, None, params, env).map(release));
        }
    }
}

/// Starts the session on a plain TCP socket, split without a lock
/// (`into_split`): `early` are the bytes that came after the handshake,
/// `head` the 101 still to be sent (with the session's first frame).
/// The slots ride on the session's future, given back when it ends.
pub(super) fn start_on_tcp(
    tcp: TcpStream,
    early: &[u8],
    head: Option<Bytes>,
    params: Params,
    env: Arc<Env>,
    slots: (UserSlot, ConnSlot),
    tasks: &TaskTracker,
) {
    let (read, write) = tcp.into_split();
    let frames = FrameReader::new(read, early, env.config.max_frame_bytes);
    let release = move |()| drop(slots);
    tasks.spawn(session::run(frames, write, head, params, env).map(release));
}
