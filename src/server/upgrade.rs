//! The WebSocket upgrade: negotiate user and format, answer 101, then run
//! the session on the raw TCP halves.
//!
//! After the 101, the connection is taken back from hyper as the `TcpStream`
//! it was (keeping any bytes hyper had already read), out of the HTTP write
//! deadline, and split with `into_split`, which needs no lock per poll,
//! unlike `tokio::io::split` (which TLS streams still need).

use std::sync::Arc;

use bytes::Bytes;
use fastwebsockets::upgrade::UpgradeFut;
use futures_util::FutureExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use hyper::upgrade::Upgraded;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_util::task::TaskTracker;

use super::http::{full, json_error, Body, Conn, Query};
use super::io::WriteDeadline;
use super::{ConnSlot, Ctx, UserSlot};
use crate::auth::Grant;
use crate::error::ErrorCode;
use crate::protocol::{user, Format};
use crate::session::frames::Stream;
use crate::session::{self, Env, FrameReader, Params};

/// Who a client is, by the rules every long-lived connection shares (a
/// WebSocket, an SSE stream): an allowed `Origin`, a valid token when
/// authentication is on (its `sub` is the user), else `?user=` under the
/// one user-name rule, else a generated name.
// The refusal is the response itself, made once per refused request.
#[allow(clippy::result_large_err)]
pub(super) fn identify(
    ctx: &Ctx,
    headers: &HeaderMap,
    query: &Query<'_>,
) -> Result<(Option<Grant>, Arc<str>), Response<Body>> {
    if !ctx.auth.origin_allowed(headers) {
        ctx.env.metrics.auth_failures.inc();
        return Err(json_error(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "origin not allowed",
        ));
    }
    let grant = match ctx.auth.check_token(headers, query.get("token")) {
        Ok(grant) => grant,
        Err(e) => {
            ctx.env.metrics.auth_failures.inc();
            return Err(json_error(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Forbidden,
                &e.to_string(),
            ));
        }
    };
    let user: Arc<str> = match (&grant, query.get("user")) {
        (Some(g), _) => g.user.as_str().into(),
        (None, Some(u)) => match user::parse(u) {
            Ok(u) => u,
            Err(e) => {
                return Err(json_error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadRequest,
                    &e.to_string(),
                ))
            }
        },
        (None, None) => format!("user_{:08x}", rand::random::<u32>()).into(),
    };
    Ok((grant, user))
}

pub fn upgrade(mut req: Request<Incoming>, conn: Conn, echo: bool) -> Response<Body> {
    let Conn {
        ctx,
        slot: conn_slot,
        pending,
        ..
    } = conn;
    let query = Query::parse(req.uri().query());
    let (grant, user) = match identify(&ctx, req.headers(), &query) {
        Ok(who) => who,
        Err(refused) => return refused,
    };
    let Some(slot) = ctx.admit_user(&user) else {
        return json_error(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "too many connections for this user",
        );
    };
    let offered = req
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(Format::from_subprotocol);
    let format = match (offered, query.get("format")) {
        (Some(f), _) => f,
        (None, Some(q)) => match Format::from_query(q) {
            Some(f) => f,
            None => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadRequest,
                    "format must be json or msgpack",
                )
            }
        },
        (None, None) => Format::Json,
    };
    let (response, upgraded) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(pair) => pair,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                &e.to_string(),
            )
        }
    };
    let mut response = response.map(|_| full(Bytes::new()));
    if let Some(f) = offered {
        response.headers_mut().insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(f.subprotocol()),
        );
    }
    let params = Params {
        user,
        format,
        echo,
        grant,
        account: slot.account().clone(),
    };
    // The connection's task starts the session once hyper has written the
    // 101 and handed the socket back (`serve_connection`): no task of its
    // own waits for that.
    *pending.lock() = Some(Pending {
        upgraded,
        params,
        slots: (slot, conn_slot),
    });
    response
}

/// A WebSocket session agreed on in a 101, waiting for hyper to hand the
/// socket back. One per HTTP connection at most: an upgrade is its last
/// request.
pub struct Pending {
    upgraded: UpgradeFut,
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
        let ws = match self.upgraded.await {
            Ok(ws) => ws,
            Err(e) => {
                tracing::debug!(cause = %e, "upgrade did not complete");
                return;
            }
        };
        session_over(
            ws.into_inner().into_inner(),
            self.params,
            env,
            self.slots,
            tasks,
        );
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
    let max_frame = env.config.max_frame_bytes;
    // The slots ride on the session's future, given back when it ends.
    let release = move |()| drop(slots);
    let upgraded = match upgraded.downcast::<TokioIo<WriteDeadline<TcpStream>>>() {
        Ok(parts) => {
            let (tcp, head) = parts.io.into_inner().into_inner();
            let (read, write) = tcp.into_split();
            let frames = FrameReader::new(read, &parts.read_buf, max_frame);
            tasks.spawn(session::run(frames, write, head, params, env).map(release));
            return;
        }
        Err(upgraded) => upgraded,
    };
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
