//! The WebSocket upgrade read straight off a plain TCP connection.
//!
//! Nearly every connection to the port is a WebSocket upgrade, and a
//! connection that stays is one. Through hyper, each costs an HTTP/1
//! connection of its own (a dispatcher, its buffers, a boxed service
//! future, the `Request` and `Response`, the upgrade's channel and boxed
//! socket), all to be thrown away after one request: in a profile of a
//! join storm, ≈ 18 % of the server's samples (BENCHMARKS.md, 2026-12-05
//! 23:36); `cargo bench --bench handshake` compares the two paths. Here
//! the first request
//! is read under the same limits (`HEADER_READ_TIMEOUT`, `HTTP_MAX_BUF`),
//! parsed with `httparse` (the parser hyper itself uses), and an upgrade to
//! `/ws` or `/` (`/echo` when enabled) that `upgrade::agree` accepts is
//! answered with the 101 and its session started, on the socket as it is.
//!
//! Anything else goes to hyper with the bytes read so far in front of the
//! socket (`Prefixed`): another request, an upgrade `agree` refuses, a head
//! hyper would answer with an error, more than `MAX_HEADERS` headers or
//! `MAX_DIRECT_HEAD` bytes of head.
//! hyper then answers it as if this path were not there, refusals with
//! their status, body and metrics included: nothing here has a side effect
//! unless it upgrades. A head that is not complete in time, or a client that
//! closes before completing it, closes the connection, as hyper does.

use bytes::{Bytes, BytesMut};
use hyper::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE};
use hyper::{HeaderMap, StatusCode};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::http::Query;
use super::prefixed::Prefixed;
use super::upgrade::{self, Agreed};
use super::{serve_connection, Admitted, Ctx, HEADER_READ_TIMEOUT, HTTP_MAX_BUF};
use crate::protocol::Format;

/// Headers parsed here at most; a request with more goes to hyper (which
/// takes up to 100).
const MAX_HEADERS: usize = 32;

/// The longest head taken here: well under hyper's limit (`HTTP_MAX_BUF`,
/// 431 past it), so that what hyper would refuse as too large never gets
/// here. A longer one (a browser's cookies, say) goes to hyper.
const MAX_DIRECT_HEAD: usize = 16 * 1024;

/// What the first read asks room for: a browser's upgrade request is
/// ≈ 0.5–2 KiB.
const FIRST_READ: usize = 4096;

/// Serves a plain TCP connection: its first request, if it is a WebSocket
/// upgrade that is accepted, here; else (and every later request) hyper.
pub(super) async fn serve_plain(tcp: TcpStream, conn: Admitted) {
    // The admin reserve takes `/healthz` and `/metrics` only.
    if conn.reserve {
        return serve_connection(tcp, conn).await;
    }
    let Some(read) = read_head(&tcp, &conn.ctx).await else {
        return;
    };
    let read = read.freeze();
    let Some((agreed, head_len)) = accepted(&read, &conn.ctx) else {
        return serve_connection(Prefixed::new(read, tcp), conn).await;
    };
    let env = conn.ctx.env.clone();
    let head = switching(&agreed.accept, agreed.offered);
    upgrade::start_on_tcp(
        tcp,
        &read[head_len..],
        Some(head),
        agreed.params,
        env,
        (agreed.slot, conn.slot),
        &conn.tasks,
    );
}

/// Reads until the buffer holds a whole request head (or a head hyper will
/// refuse: malformed, or over `HTTP_MAX_BUF`). `None`: the connection is to
/// be closed (no whole head in `HEADER_READ_TIMEOUT`, the client closed or
/// failed, the server is shutting down). No buffer is allocated before the
/// client sends something.
async fn read_head(tcp: &TcpStream, ctx: &Ctx) -> Option<BytesMut> {
    let deadline = Instant::now() + HEADER_READ_TIMEOUT;
    let mut buf = BytesMut::new();
    loop {
        let ready = tokio::select! {
            _ = ctx.env.shutdown.cancelled() => return None,
            ready = tokio::time::timeout_at(deadline, tcp.readable()) => ready,
        };
        match ready {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return None,
            Err(_) => {
                ctx.env
                    .metrics
                    .http_timeouts
                    .with_label_values(&["header"])
                    .inc();
                return None;
            }
        }
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len().max(FIRST_READ));
        }
        match tcp.try_read_buf(&mut buf) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return None,
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match httparse::Request::new(&mut headers).parse(&buf) {
            Ok(httparse::Status::Partial) if buf.len() < HTTP_MAX_BUF => continue,
            // Whole, too big, malformed or with more headers than parsed
            // here: a request for `accepted`, or for hyper to answer.
            _ => return Some(buf),
        }
    }
}

/// The upgrade the head in `buf` asks for, agreed, and the head's length;
/// `None` for anything hyper is to answer.
fn accepted(buf: &Bytes, ctx: &Ctx) -> Option<(Agreed, usize)> {
    let head = upgrade_head(buf, ctx.env.config.enable_echo)?;
    let query = Query::parse(head.uri.query());
    let agreed = upgrade::agree(ctx, &head.headers, &query, head.echo).ok()?;
    Some((agreed, head.len))
}

/// A request head this path takes as a WebSocket upgrade, before `agree`
/// checks who it is from.
#[derive(Debug)]
pub struct UpgradeHead {
    /// The head's length in bytes: what follows is the client's frames.
    pub len: usize,
    pub uri: hyper::Uri,
    pub headers: HeaderMap,
    /// To `/echo` (the conformance endpoint), not `/ws` or `/`.
    pub echo: bool,
}

/// The WebSocket upgrade at the start of `buf`, if it is one this path
/// takes (see the module doc); `None` for anything else, hyper's to
/// answer. Public for the fuzz target that holds it to hyper's reading of
/// the same bytes (`fuzz/fuzz_targets/handshake.rs`): whatever it takes,
/// hyper reads as the same GET, target and headers. The target and the
/// header values are slices of `buf`, not copies (as hyper makes them).
pub fn upgrade_head(buf: &Bytes, echo_enabled: bool) -> Option<UpgradeHead> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(len) = req.parse(buf).ok()? else {
        return None;
    };
    if len > MAX_DIRECT_HEAD || req.method != Some("GET") || req.version != Some(1) {
        return None;
    }
    // Parsed as hyper parses it: the same targets are refused (400 from
    // hyper), and the path and query are read the same way.
    let uri = hyper::Uri::from_maybe_shared(buf.slice_ref(req.path?.as_bytes())).ok()?;
    let echo = match uri.path() {
        "/" | "/ws" => false,
        "/echo" if echo_enabled => true,
        _ => return None,
    };
    let mut map = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = hyper::header::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = hyper::header::HeaderValue::from_maybe_shared(buf.slice_ref(h.value)).ok()?;
        map.append(name, value);
    }
    // A body on an upgrade request is hyper's to read (or refuse).
    if !has_token(&map, CONNECTION, "upgrade")
        || !has_token(&map, UPGRADE, "websocket")
        || map.contains_key(CONTENT_LENGTH)
        || map.contains_key(TRANSFER_ENCODING)
    {
        return None;
    }
    Some(UpgradeHead {
        len,
        uri,
        headers: map,
        echo,
    })
}

/// Whether a comma-separated header lists `token` (any case), in any of
/// its lines: as hyper's path tells an upgrade request
/// (`fastwebsockets::upgrade::is_upgrade_request`).
fn has_token(map: &HeaderMap, name: hyper::header::HeaderName, token: &str) -> bool {
    map.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&c| c == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// The 101 for an agreed upgrade: the headers hyper's path answers with.
pub fn switching(accept: &str, offered: Option<Format>) -> Bytes {
    let status = StatusCode::SWITCHING_PROTOCOLS;
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: {accept}\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or_default(),
    );
    if let Some(format) = offered {
        head.push_str("sec-websocket-protocol: ");
        head.push_str(format.subprotocol());
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    Bytes::from(head)
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455
/// §4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    use base64::Engine as _;
    use sha1::{Digest, Sha1};
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6455's example (§1.3).
    #[test]
    fn the_accept_key_is_the_rfcs() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn tokens_are_found_in_any_line_and_case() {
        let mut map = HeaderMap::new();
        map.append(CONNECTION, "keep-alive".parse().unwrap());
        map.append(CONNECTION, "foo, Upgrade ".parse().unwrap());
        assert!(has_token(&map, CONNECTION, "upgrade"));
        assert!(!has_token(&map, CONNECTION, "close"));
        assert!(!has_token(&map, UPGRADE, "websocket"));
        map.append(UPGRADE, "websocketx".parse().unwrap());
        assert!(!has_token(&map, UPGRADE, "websocket"));
    }
}
