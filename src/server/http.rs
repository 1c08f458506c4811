//! HTTP routing on the WebSocket port (PROTOCOL.md §7).

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use tokio_util::task::TaskTracker;

use super::{api, sse, upgrade, web, Ctx};
use crate::auth::ApiAccess;
use crate::error::ErrorCode;

/// A response body: most are one buffer (`full`), big history pages are
/// streamed (`page`).
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// A body of one buffer.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// What a request handler knows of its connection.
pub struct Conn {
    pub ctx: Arc<Ctx>,
    pub tasks: TaskTracker,
    pub slot: super::ConnSlot,
    /// A connection over `--max-connections` on the `--admin-reserve`:
    /// it may ask for `/healthz` and `/metrics` only.
    pub reserve: bool,
    /// Where an upgrade leaves its session, for the connection's task to
    /// start once hyper hands the socket back.
    pub pending: upgrade::PendingSlot,
}

pub async fn route(req: Request<Incoming>, conn: Conn) -> Response<Body> {
    let ctx = conn.ctx.clone();
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let is_ws = fastwebsockets::upgrade::is_upgrade_request(&req);
    if conn.reserve && !(method == Method::GET && matches!(path.as_str(), "/healthz" | "/metrics"))
    {
        return closing(json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal,
            "too many connections",
        ));
    }
    match (&method, path.as_str()) {
        (&Method::GET, "/" | "/ws") if is_ws => upgrade::upgrade(req, conn, false),
        (&Method::GET, "/echo") if is_ws && ctx.env.config.enable_echo => {
            upgrade::upgrade(req, conn, true)
        }
        (&Method::GET, p) if web::is_asset(p) => web::serve(p, req.headers()),
        (&Method::GET, "/healthz") => health(&ctx),
        // The WebSocket's rules (token in the query, Origin), not the API's.
        (&Method::GET, p) if p.starts_with("/api/rooms/") && p.ends_with("/events") => {
            let room = p["/api/rooms/".len()..p.len() - "/events".len()].to_owned();
            sse::events(req, conn, &room).await
        }
        (_, p)
            if p.starts_with("/api/")
                && ctx.auth.api_access(req.headers(), method != Method::GET)
                    == ApiAccess::Denied =>
        {
            ctx.env.metrics.auth_failures.inc();
            json_error(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Forbidden,
                "a valid API key is required",
            )
        }
        (&Method::GET, "/metrics") => {
            ctx.count_open_connections();
            let unsynced = ctx.env.store.unsynced();
            ctx.env.metrics.store_unsynced.set(i64::from(unsynced));
            for (i, depth) in ctx.env.shards.queue_depths().into_iter().enumerate() {
                ctx.env
                    .metrics
                    .shard_queue_depth
                    .with_label_values(&[&i.to_string()])
                    .set(depth as i64);
            }
            respond(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                ctx.env.metrics.render(),
            )
        }
        (&Method::GET, "/api/rooms") => {
            let access = ctx.auth.api_access(req.headers(), false);
            api::rooms(&ctx, &access, req.uri().query()).await
        }
        (_, p) if p.starts_with("/api/rooms/") => {
            let access = ctx.auth.api_access(req.headers(), method != Method::GET);
            match p["/api/rooms/".len()..].strip_suffix("/messages") {
                Some(room) if method == Method::GET => {
                    api::history(&ctx, &access, room, req.uri().query()).await
                }
                Some(room) if method == Method::POST => {
                    api::publish(&ctx, &access, room, req).await
                }
                Some(_) => json_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    ErrorCode::BadRequest,
                    "use GET or POST",
                ),
                None => not_found(),
            }
        }
        _ => not_found(),
    }
}

/// `/healthz`: 200 `{"status":"ok"}`; 503 while draining, and while the
/// store is damaged (until restart) or its writes fail, with the reason.
fn health(ctx: &Ctx) -> Response<Body> {
    if ctx.draining.load(std::sync::atomic::Ordering::Acquire) {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "draining"}),
        );
    }
    let store = ctx.env.store.health();
    if store.is_ok() {
        return json(StatusCode::OK, &serde_json::json!({"status": "ok"}));
    }
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        &serde_json::json!({
            "status": "unhealthy",
            "reason": store.reason(),
            "store": {
                "damaged": store.damaged,
                "writes_failing": store.writes_failing,
            },
        }),
    )
}

fn not_found() -> Response<Body> {
    json_error(
        StatusCode::NOT_FOUND,
        ErrorCode::BadRequest,
        "no such endpoint",
    )
}

pub fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("responses serialize");
    respond(status, "application/json", body)
}

/// `response`, after which the connection is closed (its request body may
/// be unread, or the client is one to be rid of).
pub fn closing(mut response: Response<Body>) -> Response<Body> {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// `{"error": {code, message}}` with the given status.
pub fn json_error(status: StatusCode, code: ErrorCode, message: &str) -> Response<Body> {
    json(
        status,
        &serde_json::json!({"error": {"code": code.as_str(), "message": message}}),
    )
}

/// Decoded query parameters.
pub struct Query<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'a> Query<'a> {
    pub fn parse(q: Option<&'a str>) -> Query<'a> {
        Query(form_urlencoded::parse(q.unwrap_or("").as_bytes()).collect())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| &**v)
    }
}
