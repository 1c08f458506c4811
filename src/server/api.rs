//! The HTTP API: list rooms, read history, publish a message.

use std::collections::BTreeMap;
use std::sync::Arc;

use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::http::{closing, json, json_error, Body, Query};
use super::{page, Ctx};
use crate::auth::ApiAccess;
use crate::error::ErrorCode;
use crate::protocol::client::{HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT, MAX_ID_LEN};
use crate::protocol::{user, RoomName};
use crate::rooms::{Command, Origin, Publish};

#[derive(Serialize)]
struct RoomEntry {
    room: String,
    last: u64,
    members: usize,
    connections: usize,
}

/// `GET /api/rooms`: every stored room (that the caller may see), with who
/// is in it now.
pub async fn rooms(ctx: &Arc<Ctx>, access: &ApiAccess) -> Response<Body> {
    let store = ctx.env.store.clone();
    let stored = match tokio::task::spawn_blocking(move || store.rooms()).await {
        Ok(Ok(rooms)) => rooms,
        _ => return internal(),
    };
    let mut all: BTreeMap<String, RoomEntry> = stored
        .into_iter()
        .map(|r| {
            let entry = RoomEntry {
                room: r.room.to_string(),
                last: r.last,
                members: 0,
                connections: 0,
            };
            (r.room.to_string(), entry)
        })
        .collect();
    for s in ctx.env.shards.stats().await {
        let e = all.entry(s.room.to_string()).or_insert_with(|| RoomEntry {
            room: s.room.to_string(),
            last: 0,
            members: 0,
            connections: 0,
        });
        e.last = e.last.max(s.last);
        e.members = s.members;
        e.connections = s.connections;
    }
    let visible: Vec<RoomEntry> = all
        .into_values()
        .filter(|e| RoomName::parse(&e.room).is_ok_and(|r| access.allows(&r)))
        .collect();
    json(StatusCode::OK, &visible)
}

/// An API failure, turned into `{"error": {code, message}}` once.
struct ApiError(StatusCode, ErrorCode, String);

impl ApiError {
    fn response(self) -> Response<Body> {
        json_error(self.0, self.1, &self.2)
    }
}

/// The room a request names, if it is valid and the caller may touch it.
fn room_or_error(name: &str, access: &ApiAccess) -> Result<RoomName, ApiError> {
    let room = RoomName::parse(name).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRoom,
            e.to_string(),
        )
    })?;
    if !access.allows(&room) {
        let why = "your token does not grant this room".to_string();
        return Err(ApiError(StatusCode::FORBIDDEN, ErrorCode::Forbidden, why));
    }
    Ok(room)
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
    let room = match room_or_error(room, access) {
        Ok(r) => r,
        Err(e) => return e.response(),
    };
    let q = Query::parse(query);
    let number = |key: &str| -> Result<Option<u64>, ApiError> {
        q.get(key)
            .map(|v| v.parse::<u64>())
            .transpose()
            .map_err(|_| {
                let m = format!("{key} must be a non-negative integer");
                ApiError(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, m)
            })
    };
    let (since, limit) = match (number("since"), number("limit")) {
        (Ok(s), Ok(l)) => (
            s.unwrap_or(0),
            l.map_or(HISTORY_DEFAULT_LIMIT, |l| {
                l.clamp(1, HISTORY_MAX_LIMIT as u64) as usize
            }),
        ),
        (Err(e), _) | (_, Err(e)) => return e.response(),
    };
    let max_bytes = ctx.env.config.max_page_bytes;
    match page::respond(ctx.env.clone(), room, since, limit, max_bytes).await {
        Ok(response) => response,
        Err(_) => internal(),
    }
}

#[derive(Deserialize)]
struct PublishBody {
    user: String,
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
    let room = match room_or_error(room, access) {
        Ok(r) => r,
        Err(e) => return e.response(),
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
    let user = match user::parse(&body.user) {
        Ok(u) => u,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                &e.to_string(),
            )
        }
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
        origin: Origin::Http(tx),
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
            "message was not stored",
        ),
        Err(_) => internal(),
    }
}
