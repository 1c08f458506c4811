//! Shared helpers for the integration tests: start a server on port 0, a
//! WebSocket client over tokio-tungstenite (JSON or MessagePack), a raw-TCP
//! client for hand-made frames, and a minimal HTTP/1.1 client.
//!
//! Every wait is bounded by `TIMEOUT`, so a broken server fails a test
//! instead of hanging it; nothing sleeps to wait for something awaitable.

#![allow(dead_code)]

pub mod binary;
pub mod faulty;
pub mod redis;
pub mod sse;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use parlor::server::Running;
pub use parlor::Config;

/// Longest wait for any single event.
pub const TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- server --

/// Test config: memory store, port 0, defaults otherwise.
pub fn config() -> Config {
    Config::for_tests()
}

pub async fn start(cfg: Config) -> Running {
    start_with_store(cfg, Arc::new(parlor::store::MemoryStore::new())).await
}

pub async fn start_with_store(cfg: Config, store: Arc<dyn parlor::store::Store>) -> Running {
    parlor::server::start(cfg, store)
        .await
        .expect("server starts")
}

/// Polls `check` until it gives a value, for at most `TIMEOUT`: for states
/// no frame announces (a metric, a background deletion). The poll interval
/// only sets how soon the state is seen, never whether the test passes.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

static UNIQUE: AtomicU64 = AtomicU64::new(1);

/// A name unique within this test process (`prefix-N`).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", UNIQUE.fetch_add(1, Ordering::Relaxed))
}

// ---------------------------------------------------------------- frames --

pub fn join(room: &str) -> Value {
    json!({"type": "join", "room": room})
}

pub fn join_since(room: &str, since: u64) -> Value {
    json!({"type": "join", "room": room, "since": since})
}

pub fn leave(room: &str) -> Value {
    json!({"type": "leave", "room": room})
}

pub fn msg(room: &str, content: &str) -> Value {
    json!({"type": "message", "data": {"room": room, "content": content}})
}

pub fn msg_id(room: &str, content: &str, id: &str) -> Value {
    json!({"type": "message", "id": id, "data": {"room": room, "content": content}})
}

pub fn ty(v: &Value) -> &str {
    v["type"].as_str().unwrap_or("<no type>")
}

pub fn seq(v: &Value) -> u64 {
    v["data"]["sequence"]
        .as_u64()
        .unwrap_or_else(|| panic!("no data.sequence in {v}"))
}

/// Asserts `v` is an `error` with `code` (and, when given, echoing `id`).
#[track_caller]
pub fn assert_error(v: &Value, code: &str, id: Option<&str>) {
    assert_eq!(ty(v), "error", "expected error {code}, got {v}");
    assert_eq!(v["data"]["code"], code, "wrong error code in {v}");
    assert!(
        v["data"]["message"].is_string(),
        "error without message: {v}"
    );
    if let Some(id) = id {
        assert_eq!(v["id"], id, "error does not echo id: {v}");
    }
}

// ------------------------------------------------------ websocket client --

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fmt {
    Json,
    Msgpack,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What a read from the socket produced.
#[derive(Debug)]
pub enum Event {
    /// A data frame, decoded; `binary` tells the frame kind.
    Frame { value: Value, binary: bool },
    /// A close frame with its code (None: no code).
    Close(Option<u16>),
    /// The stream ended (or failed) without a close frame.
    End(String),
}

/// How to connect.
#[derive(Debug, Clone, Default)]
pub struct Opts {
    /// Path without query; default `/ws`.
    pub path: Option<String>,
    pub user: Option<String>,
    /// `?format=` value.
    pub format_query: Option<String>,
    /// Offered in `Sec-WebSocket-Protocol`.
    pub subprotocols: Vec<String>,
    /// Do not expect a `connected` frame (echo endpoint).
    pub no_connected: bool,
    /// How to encode what `send` sends; default from the negotiation.
    pub fmt: Option<Fmt>,
}

impl Opts {
    pub fn user(user: &str) -> Opts {
        Opts {
            user: Some(user.into()),
            ..Opts::default()
        }
    }

    fn url(&self, addr: SocketAddr) -> String {
        let mut url = format!("ws://{addr}{}", self.path.as_deref().unwrap_or("/ws"));
        let mut q = Vec::new();
        if let Some(u) = &self.user {
            q.push(format!("user={u}"));
        }
        if let Some(f) = &self.format_query {
            q.push(format!("format={f}"));
        }
        if !q.is_empty() {
            url.push('?');
            url.push_str(&q.join("&"));
        }
        url
    }
}

pub struct ClientTx {
    sink: SplitSink<Ws, Message>,
    pub fmt: Fmt,
}

pub struct ClientRx {
    stream: SplitStream<Ws>,
    pub fmt: Fmt,
}

/// One WebSocket connection; `split` it to send and read from two tasks.
pub struct Client {
    pub tx: ClientTx,
    pub rx: ClientRx,
    /// The `connected` frame (None with `Opts::no_connected`).
    pub connected: Option<Value>,
    /// `Sec-WebSocket-Protocol` of the 101 response.
    pub protocol: Option<String>,
    pub user: String,
}

/// Connects as `user` with JSON, reads `connected`.
pub async fn connect(addr: SocketAddr, user: &str) -> Client {
    connect_opts(addr, Opts::user(user)).await
}

pub async fn try_connect(
    addr: SocketAddr,
    opts: &Opts,
) -> Result<
    (
        Ws,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    let mut req = opts.url(addr).into_client_request().expect("valid url");
    if !opts.subprotocols.is_empty() {
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(&opts.subprotocols.join(", ")).unwrap(),
        );
    }
    tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect timed out")
}

pub async fn connect_opts(addr: SocketAddr, opts: Opts) -> Client {
    let (ws, resp) = try_connect(addr, &opts)
        .await
        .unwrap_or_else(|e| panic!("connect {} failed: {e}", opts.url(addr)));
    let protocol = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().unwrap().to_string());
    let negotiated = match protocol.as_deref() {
        Some("parlor.v1.msgpack") => Fmt::Msgpack,
        Some(_) => Fmt::Json,
        None if opts.format_query.as_deref() == Some("msgpack") => Fmt::Msgpack,
        None => Fmt::Json,
    };
    let fmt = opts.fmt.unwrap_or(negotiated);
    let (sink, stream) = ws.split();
    let mut client = Client {
        tx: ClientTx { sink, fmt },
        rx: ClientRx { stream, fmt },
        connected: None,
        protocol,
        user: opts.user.clone().unwrap_or_default(),
    };
    if !opts.no_connected {
        let c = client.rx.recv().await;
        assert_eq!(ty(&c), "connected", "first frame must be connected: {c}");
        if let Some(u) = c["data"]["user"].as_str() {
            client.user = u.to_string();
        }
        client.connected = Some(c);
    }
    client
}

impl ClientTx {
    /// Sends a JSON value in this client's format (text JSON or binary msgpack map).
    pub async fn send(&mut self, v: &Value) {
        let m = match self.fmt {
            Fmt::Json => Message::text(v.to_string()),
            Fmt::Msgpack => Message::binary(rmp_serde::to_vec_named(v).expect("msgpack encodes")),
        };
        self.send_raw(m).await.expect("send failed");
    }

    /// Like `send`, but a failure (the server closed) is returned, not a panic.
    pub async fn try_send(&mut self, v: &Value) -> Result<(), String> {
        let m = match self.fmt {
            Fmt::Json => Message::text(v.to_string()),
            Fmt::Msgpack => Message::binary(rmp_serde::to_vec_named(v).expect("msgpack encodes")),
        };
        self.send_raw(m).await
    }

    pub async fn send_raw(&mut self, m: Message) -> Result<(), String> {
        match tokio::time::timeout(TIMEOUT, self.sink.send(m)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("send timed out".into()),
        }
    }

    pub async fn send_text(&mut self, s: &str) {
        self.send_raw(Message::text(s.to_string()))
            .await
            .expect("send failed");
    }

    pub async fn send_binary(&mut self, b: Vec<u8>) {
        self.send_raw(Message::binary(b))
            .await
            .expect("send failed");
    }

    pub async fn close(&mut self) {
        let _ = self.sink.close().await;
    }
}

fn decode(m: Message) -> Option<Event> {
    match m {
        Message::Text(t) => {
            let value = serde_json::from_str(t.as_str())
                .unwrap_or_else(|e| panic!("server sent invalid JSON ({e}): {}", t.as_str()));
            Some(Event::Frame {
                value,
                binary: false,
            })
        }
        Message::Binary(b) => {
            let value = rmp_serde::from_slice(&b)
                .unwrap_or_else(|e| panic!("server sent invalid MessagePack ({e}): {b:?}"));
            Some(Event::Frame {
                value,
                binary: true,
            })
        }
        Message::Close(c) => Some(Event::Close(c.map(|f| u16::from(f.code)))),
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
    }
}

impl ClientRx {
    /// Next event (data frame, close, end), heartbeats included; waits at
    /// most `wait`.
    pub async fn event_within(&mut self, wait: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(n) => n,
                Err(_) => return None,
            };
            match next {
                None => return Some(Event::End("stream ended".into())),
                Some(Err(e)) => return Some(Event::End(e.to_string())),
                Some(Ok(m)) => {
                    if let Some(ev) = decode(m) {
                        return Some(ev);
                    }
                }
            }
        }
    }

    /// Next WebSocket message as tungstenite gives it (pings and pongs
    /// skipped); None when the stream ended or failed. For readers that must
    /// not spend time decoding large frames.
    pub async fn raw_message(&mut self) -> Option<Message> {
        loop {
            let next = tokio::time::timeout(TIMEOUT, self.stream.next())
                .await
                .expect("timed out waiting for a frame");
            match next {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(m)) => return Some(m),
            }
        }
    }

    pub async fn event(&mut self) -> Event {
        self.event_within(TIMEOUT)
            .await
            .expect("timed out waiting for a frame")
    }

    /// Next data frame with its kind (binary?), heartbeats included.
    pub async fn recv_any(&mut self) -> (Value, bool) {
        match self.event().await {
            Event::Frame { value, binary } => (value, binary),
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Next data frame that is not a `heartbeat`.
    pub async fn recv(&mut self) -> Value {
        loop {
            let (v, _) = self.recv_any().await;
            if ty(&v) != "heartbeat" {
                return v;
            }
        }
    }

    /// Next non-heartbeat frame, which must be of type `t`.
    #[track_caller]
    pub fn expect<'a>(&'a mut self, t: &'a str) -> impl std::future::Future<Output = Value> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            let v = self.recv().await;
            assert_eq!(ty(&v), t, "expected a {t} frame, got {v} (at {caller})");
            v
        }
    }

    /// Skips frames until one of type `t` (returned).
    pub async fn recv_until(&mut self, t: &str) -> Value {
        loop {
            let v = self.recv().await;
            if ty(&v) == t {
                return v;
            }
        }
    }

    /// Next non-heartbeat, non-presence_diff frame.
    pub async fn recv_skip_diffs(&mut self) -> Value {
        loop {
            let v = self.recv().await;
            if ty(&v) != "presence_diff" {
                return v;
            }
        }
    }

    /// Reads (and drops) frames until the close frame; returns its code.
    /// Panics if the stream ends without one.
    pub async fn expect_close(&mut self) -> u16 {
        loop {
            match self.event().await {
                Event::Frame { .. } => {}
                Event::Close(code) => return code.expect("close frame without a code"),
                Event::End(why) => panic!("connection ended without a close frame: {why}"),
            }
        }
    }
}

impl Client {
    pub async fn send(&mut self, v: &Value) {
        self.tx.send(v).await
    }
    pub async fn recv(&mut self) -> Value {
        self.rx.recv().await
    }
    pub async fn recv_until(&mut self, t: &str) -> Value {
        self.rx.recv_until(t).await
    }
    #[track_caller]
    pub fn expect<'a>(&'a mut self, t: &'a str) -> impl std::future::Future<Output = Value> + 'a {
        self.rx.expect(t)
    }
    pub async fn expect_close(&mut self) -> u16 {
        self.rx.expect_close().await
    }
    pub fn split(self) -> (ClientTx, ClientRx) {
        (self.tx, self.rx)
    }

    /// Joins `room` without `since`: returns (joined, presence, history).
    /// Frames before `joined` (traffic of rooms already joined) are skipped;
    /// `presence` and `history` must follow it.
    pub async fn join(&mut self, room: &str) -> (Value, Value, Value) {
        self.send(&join(room)).await;
        let joined = loop {
            let v = self.recv().await;
            match ty(&v) {
                "joined" => break v,
                "error" => panic!("join {room} refused: {v}"),
                _ => {}
            }
        };
        assert_eq!(joined["data"]["room"], room, "{joined}");
        let presence = self.expect("presence").await;
        let history = self.rx.recv_skip_diffs().await;
        assert_eq!(
            ty(&history),
            "history",
            "join without since must send history, got {history}"
        );
        (joined, presence, history)
    }

    /// Sends a message with `id` and waits for its ack (skipping other
    /// frames, e.g. its own copy); returns the acked sequence.
    pub async fn publish(&mut self, room: &str, content: &str, id: &str) -> u64 {
        self.send(&msg_id(room, content, id)).await;
        loop {
            let v = self.recv().await;
            match ty(&v) {
                "ack" if v["id"] == id => {
                    return v["data"]["sequence"].as_u64().expect("ack sequence")
                }
                "error" if v["id"] == id => panic!("message {id} refused: {v}"),
                _ => {}
            }
        }
    }

    /// Sends a message with `id`; waits for both its ack and the sender's own
    /// copy (in either order). Returns (acked sequence, message frame).
    pub async fn publish_and_copy(&mut self, room: &str, content: &str, id: &str) -> (u64, Value) {
        self.send(&msg_id(room, content, id)).await;
        let (mut ack, mut copy) = (None, None);
        while ack.is_none() || copy.is_none() {
            let v = self.recv().await;
            match ty(&v) {
                "ack" if v["id"] == id => {
                    ack = Some(v["data"]["sequence"].as_u64().expect("ack sequence"))
                }
                "error" if v["id"] == id => panic!("message {id} refused: {v}"),
                "message" if v["data"]["content"] == content && v["data"]["room"] == room => {
                    copy = Some(v)
                }
                _ => {}
            }
        }
        (ack.unwrap(), copy.unwrap())
    }

    /// Reads frames until a `message` with this content (returned).
    pub async fn recv_message(&mut self, content: &str) -> Value {
        loop {
            let v = self.recv_until("message").await;
            if v["data"]["content"] == content {
                return v;
            }
        }
    }
}

/// Proves the server still serves: a fresh client joins a fresh room, sends a
/// message and gets it back.
pub async fn assert_alive(addr: SocketAddr) {
    let mut c = connect(addr, &unique("alive")).await;
    let room = unique("alive-room");
    c.join(&room).await;
    let (acked, m) = c.publish_and_copy(&room, "still here", "alive-1").await;
    assert_eq!(acked, 1);
    assert_eq!(seq(&m), acked);
}

// ------------------------------------------------------- raw TCP client --

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

#[derive(Debug, Clone)]
pub struct RawFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// Close code of a close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == OP_CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// A WebSocket client written by hand over TCP, for frames tungstenite
/// would refuse to send (unmasked, invalid UTF-8, odd fragmentation).
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// The response head of the handshake.
    pub response: String,
}

impl Raw {
    /// Handshake on `path` (with query); panics unless the answer is 101.
    pub async fn connect(addr: SocketAddr, path: &str) -> Raw {
        Self::connect_with(addr, path, &[]).await
    }

    pub async fn connect_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        Self::handshake(stream, addr, path, headers).await
    }

    /// A client whose socket takes in at most about `bytes` unread: once it
    /// stops reading, the server's writes to it soon block.
    pub async fn connect_small_window(addr: SocketAddr, path: &str, bytes: u32) -> Raw {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(bytes).unwrap();
        let stream = socket.connect(addr).await.expect("tcp connect");
        Self::handshake(stream, addr, path, &[]).await
    }

    async fn handshake(
        mut stream: TcpStream,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Raw {
        stream.set_nodelay(true).unwrap();
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        Self::upgraded(stream).await
    }

    /// The client end of `stream`, on which an upgrade request (with the
    /// key `connect` sends) has been written by hand: reads the answer and
    /// panics unless it is the 101.
    pub async fn upgraded(stream: TcpStream) -> Raw {
        let mut raw = Raw {
            stream,
            buf: Vec::new(),
            response: String::new(),
        };
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                raw.fill().await > 0,
                "connection closed during the handshake"
            );
        };
        raw.response = String::from_utf8_lossy(&raw.buf[..end]).into_owned();
        raw.buf.drain(..end);
        assert!(
            raw.response.starts_with("HTTP/1.1 101"),
            "handshake refused: {}",
            raw.response
        );
        assert!(
            raw.response
                .to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "bad Sec-WebSocket-Accept: {}",
            raw.response
        );
        raw
    }

    /// Reads more bytes into the buffer; 0 at EOF (or reset).
    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 65536];
        let n = tokio::time::timeout(TIMEOUT, self.stream.read(&mut chunk))
            .await
            .expect("timed out reading the raw socket")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Encodes a client frame; `masked` false makes a protocol violation.
    pub fn encode(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut f = Vec::with_capacity(payload.len() + 14);
        f.push(if fin { 0x80 } else { 0 } | opcode);
        let mask_bit = if masked { 0x80 } else { 0 };
        let len = payload.len();
        if len < 126 {
            f.push(mask_bit | len as u8);
        } else if len < 65536 {
            f.push(mask_bit | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            f.push(mask_bit | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
        if masked {
            let key = [0x37u8, 0xfa, 0x21, 0x3d];
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        f
    }

    /// Writes one frame; an error (the server already closed) is returned.
    pub async fn send_frame(
        &mut self,
        fin: bool,
        opcode: u8,
        payload: &[u8],
        masked: bool,
    ) -> std::io::Result<()> {
        let f = Self::encode(fin, opcode, payload, masked);
        self.stream.write_all(&f).await
    }

    pub async fn send_text(&mut self, s: &str) {
        self.send_frame(true, OP_TEXT, s.as_bytes(), true)
            .await
            .expect("raw send");
    }

    pub async fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string()).await
    }

    /// Next frame from the server; None at EOF.
    pub async fn read_frame(&mut self) -> Option<RawFrame> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            if self.fill().await == 0 {
                return None;
            }
        }
    }

    /// Next JSON data frame, skipping control frames and heartbeats.
    pub async fn recv_json(&mut self) -> Value {
        loop {
            let f = self.read_frame().await.expect("raw connection ended");
            match f.opcode {
                OP_TEXT => {
                    assert!(f.fin, "server sent a fragmented frame");
                    let v: Value = serde_json::from_slice(&f.payload).expect("server JSON");
                    if ty(&v) != "heartbeat" {
                        return v;
                    }
                }
                OP_CLOSE => panic!("unexpected close {:?}", f.close_code()),
                OP_PING | OP_PONG => {}
                op => panic!("unexpected opcode {op}"),
            }
        }
    }

    /// Reads until a close frame and returns its code; panics at EOF
    /// without one.
    pub async fn expect_close(&mut self) -> u16 {
        loop {
            match self.read_frame().await {
                Some(f) if f.opcode == OP_CLOSE => {
                    return f.close_code().expect("close frame without a code")
                }
                Some(_) => {}
                None => panic!("connection ended without a close frame"),
            }
        }
    }

    /// Reads until EOF; returns the close code if a close frame came first.
    pub async fn read_to_end(&mut self) -> Option<u16> {
        let mut code = None;
        while let Some(f) = self.read_frame().await {
            if f.opcode == OP_CLOSE {
                code = f.close_code();
            }
        }
        code
    }
}

/// Parses one unmasked server frame at the start of `buf`.
fn parse_server_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    assert_eq!(buf[1] & 0x80, 0, "server frames must not be masked");
    let (len, head) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            (
                u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                10,
            )
        }
        n => (n as usize, 2),
    };
    if buf.len() < head + len {
        return None;
    }
    let frame = RawFrame {
        fin,
        opcode,
        payload: buf[head..head + len].to_vec(),
    };
    Some((frame, head + len))
}

// ------------------------------------------------------------ HTTP client --

pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request with `Connection: close`; reads the whole answer.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> HttpResponse {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("tcp connect");
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        if let Some(b) = body {
            bytes.extend_from_slice(b);
        }
        s.write_all(&bytes).await.unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.expect("read response");
        all
    };
    let all = tokio::time::timeout(TIMEOUT, fut)
        .await
        .expect("HTTP request timed out");
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(&all)))
        + 4;
    let head = String::from_utf8_lossy(&all[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut resp = HttpResponse {
        status,
        headers,
        body: all[end..].to_vec(),
    };
    if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        resp.body = dechunk(&resp.body);
    } else if let Some(len) = resp
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        resp.body.truncate(len);
    }
    resp
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&b[..i])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .expect("chunk size");
        b = &b[i + 2..];
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
    out
}

pub async fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    http(addr, "GET", path, &[], None).await
}

pub async fn post_json(addr: SocketAddr, path: &str, body: &Value) -> HttpResponse {
    let b = body.to_string();
    http(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        Some(b.as_bytes()),
    )
    .await
}

/// Small deterministic PRNG (xorshift64*), so tests need no extra crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
