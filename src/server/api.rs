//! The HTTP API: list rooms, read history, publish a message.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::http::{closing, json, json_error, Body, Query};
use super::{page, Ctx};
use crate::auth::ApiAccess;
use crate::config::Config;
use crate::error::ErrorCode;
use crate::protocol::client::{HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT, MAX_ID_LEN};
use crate::protocol::{user, RoomName};
use crate::rooms::{Budget, Command, Origin, Publish};
use crate::session::dispatch::refusal;
use crate::session::rate::{Limit, RateLimiter, Verdict};

#[derive(Serialize)]
struct RoomEntry {
    room: String,
    last: u64,
    members: usize,
    connections: usize,
}

/// One page of `GET /api/rooms`: `next` names the last room of the page
/// when more may follow (`?after=<next>` asks for them), else is null.
#[derive(Serialize)]
struct RoomsPage {
    rooms: Vec<RoomEntry>,
    next: Option<String>,
}

/// Rooms per page of `GET /api/rooms` when `limit` is not given, and at most.
pub const ROOMS_DEFAULT_LIMIT: usize = 100;
pub const ROOMS_MAX_LIMIT: usize = 1000;

/// `GET /api/rooms?after=&limit=`: one page of the rooms, in name order,
/// stored or loaded, with who is in each now. A room the caller may not
/// read (a DM room of others, one outside a token's grants) is left out of
/// the page; `next` still moves past it, so a page may hold fewer than
/// `limit` rooms while more follow.
pub async fn rooms(ctx: &Arc<Ctx>, access: &ApiAccess, query: Option<&str>) -> Response<Body> {
    let q = Query::parse(query);
    let user = q.get("user");
    let after = match q.get("after").filter(|a| !a.is_empty()) {
        None => None,
        Some(a) => match RoomName::parse(a) {
            Ok(room) => Some(room),
            Err(e) => {
                let m = format!("after: {e}");
                return json_error(StatusCode::BAD_REQUEST, ErrorCode::InvalidRoom, &m);
            }
        },
    };
    let limit = match q.get("limit").map(str::parse::<usize>).transpose() {
        Ok(l) => l.map_or(ROOMS_DEFAULT_LIMIT, |l| l.clamp(1, ROOMS_MAX_LIMIT)),
        Err(_) => {
            let m = "limit must be a non-negative integer";
            return json_error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, m);
        }
    };
    // One more than the page, to know whether another follows. The first
    // `limit + 1` rooms of the union of stored and loaded rooms are among
    // the first `limit + 1` of each.
    let store = ctx.env.store.clone();
    let from = after.clone();
    let stored = tokio::task::spawn_blocking(move || store.rooms(from.as_ref(), limit + 1));
    let stored = match stored.await {
        Ok(Ok(rooms)) => rooms,
        _ => return internal(),
    };
    let mut all: BTreeMap<RoomName, RoomEntry> = stored
        .into_iter()
        .map(|r| (r.room.clone(), RoomEntry::new(&r.room, r.last)))
        .collect();
    for s in ctx.env.shards.stats(after.as_ref(), limit + 1).await {
        let e = all
            .entry(s.room.clone())
            .or_insert_with(|| RoomEntry::new(&s.room, 0));
        e.last = e.last.max(s.last);
        e.members = s.members;
        e.connections = s.connections;
    }
    let more = all.len() > limit;
    let page: Vec<(RoomName, RoomEntry)> = all.into_iter().take(limit).collect();
    let next = more
        .then(|| page.last().map(|(room, _)| room.to_string()))
        .flatten();
    let rooms = page
        .into_iter()
        .filter(|(room, _)| may_read(room, access, user).is_ok())
        .map(|(_, entry)| entry)
        .collect();
    json(StatusCode::OK, &RoomsPage { rooms, next })
}

impl RoomEntry {
    fn new(room: &RoomName, last: u64) -> Self {
        RoomEntry {
            room: room.to_string(),
            last,
            members: 0,
            connections: 0,
        }
    }
}

/// An API failure, turned into `{"error": {code, message}}` once.
struct ApiError(StatusCode, ErrorCode, String);

impl ApiError {
    fn response(self) -> Response<Body> {
        json_error(self.0, self.1, &self.2)
    }
}

/// The room a request names, if it is valid and the caller may read it
/// (`user`: who an open API's caller says it is, `?user=`).
fn room_or_error(name: &str, access: &ApiAccess, user: Option<&str>) -> Result<RoomName, ApiError> {
    let room = RoomName::parse(name).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRoom,
            e.to_string(),
        )
    })?;
    may_read(&room, access, user)
        .map_err(|why| ApiError(StatusCode::FORBIDDEN, ErrorCode::Forbidden, why.to_string()))?;
    Ok(room)
}

/// The one room rule for readers of the HTTP API: a token's grants, and a
/// DM room's two users (the token's `sub`, or the open API's `?user=`).
/// The API key, the operator's own servers, reads every room.
fn may_read(room: &RoomName, access: &ApiAccess, user: Option<&str>) -> Result<(), &'static str> {
    let who = match access {
        ApiAccess::Key => return Ok(()),
        ApiAccess::Denied => return Err("not allowed"),
        ApiAccess::User(grant) => {
            return refusal(room, &grant.user, Some(grant)).map_or(Ok(()), Err);
        }
        ApiAccess::Open => user,
    };
    match who {
        Some(u) => refusal(room, u, None).map_or(Ok(()), Err),
        None if room.is_direct() => Err("a direct-message room: say who you are (?user=)"),
        None => Ok(()),
    }
}

/// `POST` as a user (a user's token, or the open API) is held to the
/// WebSocket's `message` rate and room creations, per user; the API key
/// is not.
#[derive(Default)]
pub struct PostLimits {
    /// Short locks; pruned of idle users as it grows.
    users: parking_lot::Mutex<HashMap<Arc<str>, PostLimit>>,
}

struct PostLimit {
    messages: RateLimiter,
    new_rooms: Arc<Budget>,
    last: Instant,
}

/// Prune users idle this long once the map holds `PRUNE_FROM` of them.
const IDLE: Duration = Duration::from_secs(30);
const PRUNE_FROM: usize = 4096;

impl PostLimits {
    /// Whether `user` may post now, and the user's budget of room
    /// creations (spent by the room core if the post creates a room).
    fn admit(&self, user: &Arc<str>, cfg: &Config) -> Option<Arc<Budget>> {
        let now = Instant::now();
        let mut users = self.users.lock();
        if users.len() >= PRUNE_FROM {
            users.retain(|_, u| now.duration_since(u.last) < IDLE);
        }
        let rate = Limit::new(cfg.rate_per_sec, cfg.rate_burst);
        let limit = users.entry(user.clone()).or_insert_with(|| PostLimit {
            messages: RateLimiter::new(rate, now),
            new_rooms: Arc::new(Budget::per_minute(
                cfg.room_creations_per_min,
                cfg.room_creations_per_min,
            )),
            last: now,
        });
        limit.last = now;
        (limit.messages.check(rate, now) == Verdict::Allow).then(|| limit.new_rooms.clone())
    }
}

fn too_large() -> Response<Body> {
    json_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::TooLarge,
        "body is too large",
    )
}

fn internal() -> Response<Body> {
    json_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Internal,
        "store unavailable",
    )
}

/// `GET /api/rooms/{room}/messages?since=&limit=`: a page bounded by
/// `limit` and `--max-page-bytes` (see `page`).
pub async fn history(
    ctx: &Arc<Ctx>,
    access: &ApiAccess,
    room: &str,
    query: Option<&str>,
) -> Response<Body> {
    let q = Query::parse(query);
    let room = match room_or_error(room, access, q.get("user")) {
        Ok(r) => r,
        Err(e) => return e.response(),
    };
    let number = |key: &str| -> Result<Option<u64>, ApiError> {
        q.get(key)
            .map(|v| v.parse::<u64>())
            .transpose()
            .map_err(|_| {
                let m = format!("{key} must be a non-negative integer");
                ApiError(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, m)
            })
    };
    let (since, limit, wait) = match (number("since"), number("limit"), number("wait")) {
        (Ok(s), Ok(l), Ok(w)) => (
            s.unwrap_or(0),
            l.map_or(HISTORY_DEFAULT_LIMIT, |l| {
                l.clamp(1, HISTORY_MAX_LIMIT as u64) as usize
            }),
            w.unwrap_or(0).min(MAX_WAIT_SECS),
        ),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return e.response(),
    };
    if wait > 0 {
        long_poll(ctx, &room, since, Duration::from_secs(wait)).await;
    }
    let max_bytes = ctx.env.config.max_page_bytes;
    match page::respond(ctx.env.clone(), room, since, limit, max_bytes).await {
        Ok(response) => response,
        Err(_) => internal(),
    }
}

/// Longest `wait` of a long poll, in seconds.
pub const MAX_WAIT_SECS: u64 = 30;

/// Holds a long poll until the room has a message after `since` (at once
/// if it has one already), `wait` passes or the server shuts down. The
/// room core answers it on the commit that stores the message: no thread,
/// no polling per waiting request.
async fn long_poll(ctx: &Arc<Ctx>, room: &RoomName, since: u64, wait: Duration) {
    let (reply, rx) = oneshot::channel();
    let cmd = Command::Wait {
        room: room.clone(),
        after: since,
        reply,
    };
    if ctx.env.shards.send(room, cmd).await.is_err() {
        return;
    }
    let waiting = &ctx.env.metrics.long_polls;
    waiting.inc();
    tokio::select! {
        _ = tokio::time::timeout(wait, rx) => {}
        _ = ctx.env.shutdown.cancelled() => {}
    }
    waiting.dec();
}

#[derive(Deserialize)]
struct PublishBody {
    /// Who writes: required with the API key or the open API; with a
    /// user's token it is the token's `sub` (and must match if given).
    user: Option<String>,
    content: String,
    id: Option<String>,
}

/// `POST /api/rooms/{room}/messages` with `{user, content, id?}`: `201 {sequence}`.
pub async fn publish(
    ctx: &Arc<Ctx>,
    access: &ApiAccess,
    room: &str,
    req: Request<Incoming>,
) -> Response<Body> {
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
    let cfg = &ctx.env.config;
    let max = cfg.max_frame_bytes;
    // A declared length that cannot fit is refused before any of it is read.
    if req.body().size_hint().lower() > max as u64 {
        return closing(too_large());
    }
    let read = Limited::new(req.into_body(), max).collect();
    let bytes = match tokio::time::timeout(cfg.body_timeout(), read).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<LengthLimitError>() => return closing(too_large()),
        Ok(Err(_)) => {
            return closing(json_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                "the body could not be read",
            ))
        }
        Err(_) => {
            ctx.env
                .metrics
                .http_timeouts
                .with_label_values(&["body"])
                .inc();
            return closing(json_error(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::BadRequest,
                "the body did not arrive in time",
            ));
        }
    };
    let body: PublishBody = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                &format!("expected {{user, content, id?}}: {e}"),
            )
        }
    };
    let user = match (access, body.user.as_deref()) {
        // A user's token publishes as its `sub`, whatever else is said.
        (ApiAccess::User(grant), given) => {
            if given.is_some_and(|u| u != grant.user) {
                let m = "`user` must be your token's user";
                return json_error(StatusCode::FORBIDDEN, ErrorCode::Forbidden, m);
            }
            Arc::from(grant.user.as_str())
        }
        (_, None) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                "missing `user`",
            )
        }
        (_, Some(given)) => match user::parse(given) {
            Ok(u) => u,
            Err(e) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadRequest,
                    &e.to_string(),
                )
            }
        },
    };
    // The room rule of the WebSocket for whoever writes (the API key
    // included: a DM room is written by its two users only).
    let grant = match access {
        ApiAccess::User(g) => Some(g),
        _ => None,
    };
    if let Some(why) = refusal(&room, &user, grant) {
        return json_error(StatusCode::FORBIDDEN, ErrorCode::Forbidden, why);
    }
    let new_rooms = match access {
        ApiAccess::User(_) | ApiAccess::Open => match ctx.posts.admit(&user, cfg) {
            Some(budget) => budget,
            None => {
                return json_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    ErrorCode::RateLimited,
                    "too many messages",
                )
            }
        },
        _ => Arc::new(Budget::unlimited()),
    };
    if body.id.as_ref().is_some_and(|i| i.len() > MAX_ID_LEN) {
        return json_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "id is over 64 bytes",
        );
    }
    if body.content.len() > cfg.max_content_bytes {
        return json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge,
            &format!("content is over {} bytes", cfg.max_content_bytes),
        );
    }
    let (tx, rx) = oneshot::channel();
    let cmd = Command::Publish(Publish {
        room: room.clone(),
        user,
        content: body.content,
        client_msg_id: body.id,
        origin: Origin::Http(tx, new_rooms),
    });
    ctx.env.metrics.messages_in.inc();
    if ctx.env.shards.send(&room, cmd).await.is_err() {
        return internal();
    }
    match rx.await {
        Ok(Ok(sequence)) => json(
            StatusCode::CREATED,
            &serde_json::json!({ "sequence": sequence }),
        ),
        Ok(Err(code)) => json_error(
            StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code,
            match code {
                ErrorCode::RateLimited => {
                    "this would be a new room, and no more may be created now"
                }
                _ => "message was not stored",
            },
        ),
        Err(_) => internal(),
    }
}
