//! Crash safety of the real binary on the redb store: clients publish with
//! ids and record every `ack`; the server is killed with SIGKILL mid-stream
//! and restarted on the same data dir; every acked message must be there
//! with its sequence and content, each room gapless from 1, and the next
//! message must get N + 1.
//!
//! Self-contained (own process, HTTP and WebSocket helpers). Every wait is
//! bounded; the only sleeps pick a kill point, they never decide a result.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- server --

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    /// Starts `parlor serve --store redb` on `dir` and waits for /healthz.
    async fn start(dir: &Path, extra: &[&str]) -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.with_extension("log"))
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_parlor"))
            .args(["serve", "--store", "redb", "--data-dir"])
            .arg(dir)
            .args(["--addr", &addr.to_string()])
            .args([
                "--rate-per-sec",
                "100000",
                "--rate-burst",
                "100000",
                "--workers",
                "2",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn parlor");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let log = std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default();
                panic!("parlor exited early with {status}: {log}");
            }
            if let Ok((200, _)) = http_get(addr, "/healthz").await {
                return Server { child, addr };
            }
            assert!(Instant::now() < deadline, "parlor did not become healthy");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, then reap.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn data_dir(tmp: &tempfile::TempDir) -> PathBuf {
    tmp.path().join("data")
}

// ------------------------------------------------------------------ http --

/// A minimal HTTP/1.1 GET: (status, body).
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut tcp = TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::other("timeout"))??;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok((status, body))
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_str = String::from_utf8_lossy(&data[..eol]);
        let size =
            usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
}

/// Every stored message of a room via the HTTP history API, paging by 1000:
/// (sequence, content) in order.
async fn history(addr: SocketAddr, room: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut since = 0;
    loop {
        let (status, body) = http_get(
            addr,
            &format!("/api/rooms/{room}/messages?since={since}&limit=1000"),
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let v: Value = serde_json::from_slice(&body).unwrap();
        let messages = v["messages"].as_array().unwrap();
        for m in messages {
            let seq = m["sequence"].as_u64().unwrap();
            out.push((seq, m["content"].as_str().unwrap().to_owned()));
            since = seq;
        }
        if !v["more"].as_bool().unwrap() || messages.is_empty() {
            return out;
        }
    }
}

// ------------------------------------------------------------- websocket --

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(addr: SocketAddr, user: &str) -> Ws {
    let (ws, _) = tokio::time::timeout(
        TIMEOUT,
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws?user={user}")),
    )
    .await
    .expect("connect timed out")
    .expect("connect");
    ws
}

async fn send(ws: &mut Ws, v: Value) -> Result<(), String> {
    ws.send(Message::text(v.to_string()))
        .await
        .map_err(|e| e.to_string())
}

/// Next JSON frame; Err when the connection ended.
async fn recv(ws: &mut Ws) -> Result<Value, String> {
    loop {
        let next = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .map_err(|_| "recv timed out".to_string())?;
        match next {
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(&t).map_err(|e| e.to_string())
            }
            Some(Ok(Message::Close(_))) | None => return Err("closed".into()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
        }
    }
}

/// Joins and waits for `joined`.
async fn join(ws: &mut Ws, room: &str) {
    send(ws, json!({"type": "join", "room": room}))
        .await
        .unwrap();
    loop {
        let f = recv(ws).await.unwrap();
        if f["type"] == "joined" && f["data"]["room"] == room {
            return;
        }
        assert_ne!(f["type"], "error", "{f}");
    }
}

/// Publishes with an id and waits for its ack: the sequence.
async fn publish(ws: &mut Ws, room: &str, content: &str, id: &str) -> u64 {
    let frame = json!({"type": "message", "id": id, "data": {"room": room, "content": content}});
    send(ws, frame).await.unwrap();
    loop {
        let f = recv(ws).await.unwrap();
        if f["type"] == "ack" && f["id"] == id {
            assert_eq!(f["data"]["room"], room);
            return f["data"]["sequence"].as_u64().unwrap();
        }
        assert_ne!(f["type"], "error", "{f}");
    }
}

// ------------------------------------------------------------ publishers --

/// One acked message: (room, sequence) → content.
type Acks = Arc<Mutex<BTreeMap<(String, u64), String>>>;

/// Publishes into `rooms` round-robin, `window` messages in flight, until the
/// connection dies; records every ack.
async fn publisher(
    addr: SocketAddr,
    user: String,
    rooms: Vec<String>,
    round: usize,
    acks: Acks,
) -> usize {
    // The kill may come before this client is even connected or joined.
    let Ok(Ok((mut ws, _))) = tokio::time::timeout(
        TIMEOUT,
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws?user={user}")),
    )
    .await
    else {
        return 0;
    };
    for r in &rooms {
        if send(&mut ws, json!({"type": "join", "room": r}))
            .await
            .is_err()
        {
            return 0;
        }
        loop {
            match recv(&mut ws).await {
                Ok(f) if f["type"] == "joined" && f["data"]["room"] == r.as_str() => break,
                Ok(f) => assert_ne!(f["type"], "error", "{f}"),
                Err(_) => return 0,
            }
        }
    }
    let window = 16;
    let mut sent: HashMap<String, (String, String)> = HashMap::new();
    let mut n = 0usize;
    let mut acked = 0usize;
    loop {
        for _ in 0..window {
            let room = &rooms[n % rooms.len()];
            let id = format!("{user}-r{round}-{n}");
            let content = format!("{user} round {round} message {n} in {room}");
            let frame =
                json!({"type": "message", "id": id, "data": {"room": room, "content": content}});
            if send(&mut ws, frame).await.is_err() {
                return acked;
            }
            sent.insert(id, (room.clone(), content));
            n += 1;
        }
        while !sent.is_empty() {
            let f = match recv(&mut ws).await {
                Ok(f) => f,
                Err(_) => return acked,
            };
            match f["type"].as_str() {
                Some("ack") => {
                    let id = f["id"].as_str().unwrap();
                    let (room, content) = sent.remove(id).expect("ack for an id we sent");
                    assert_eq!(f["data"]["room"], room.as_str());
                    let seq = f["data"]["sequence"].as_u64().unwrap();
                    let prev = acks.lock().insert((room, seq), content);
                    assert!(prev.is_none(), "sequence acked twice: {f}");
                    acked += 1;
                }
                Some("error") => panic!("unexpected error frame: {f}"),
                _ => {}
            }
        }
    }
}

/// Checks the store after a restart against every ack so far; returns each
/// room's last sequence.
async fn verify(addr: SocketAddr, rooms: &[String], acks: &Acks) -> HashMap<String, u64> {
    let acks = acks.lock().clone();
    let mut lasts = HashMap::new();
    for room in rooms {
        let stored = history(addr, room).await;
        for (i, (seq, _)) in stored.iter().enumerate() {
            assert_eq!(
                *seq,
                i as u64 + 1,
                "room {room}: gap or disorder at index {i}"
            );
        }
        let by_seq: HashMap<u64, &String> = stored.iter().map(|(s, c)| (*s, c)).collect();
        for ((r, seq), content) in acks.range((room.clone(), 0)..=(room.clone(), u64::MAX)) {
            assert_eq!(r, room);
            assert_eq!(
                by_seq.get(seq).copied(),
                Some(content),
                "room {room}: acked message {seq} lost or changed"
            );
        }
        lasts.insert(room.clone(), stored.len() as u64);
    }
    lasts
}

// ----------------------------------------------------------------- tests --

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acked_messages_survive_sigkill_at_several_points() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let rooms: Vec<String> = (0..4).map(|i| format!("crash-{i}")).collect();
    let acks: Acks = Arc::default();

    for (round, kill_after_ms) in [150u64, 400, 900].into_iter().enumerate() {
        let server = Server::start(&dir, &[]).await;
        let lasts = verify(server.addr, &rooms, &acks).await;
        if round > 0 {
            assert!(
                lasts.values().sum::<u64>() > 0,
                "nothing stored after round {round}"
            );
        }
        let mut tasks = Vec::new();
        for c in 0..6 {
            // Each client joins three of the four rooms.
            let mine: Vec<String> = (0..3)
                .map(|k| rooms[(c + k) % rooms.len()].clone())
                .collect();
            tasks.push(tokio::spawn(publisher(
                server.addr,
                format!("u{c}"),
                mine,
                round,
                acks.clone(),
            )));
        }
        // Kill mid-stream: once acks flow, after a delay that picks the point.
        let before = acks.lock().len();
        let deadline = Instant::now() + TIMEOUT;
        while acks.lock().len() == before {
            assert!(Instant::now() < deadline, "round {round}: no ack arrived");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
        server.kill();
        let mut acked = 0;
        for t in tasks {
            acked += tokio::time::timeout(TIMEOUT, t)
                .await
                .expect("publisher ended")
                .unwrap();
        }
        assert!(
            acked > 0,
            "round {round}: no message was acked before the kill"
        );
        eprintln!("round {round}: killed after {kill_after_ms} ms, {acked} acks");
    }

    // Final restart: everything acked is there, and each room continues at N + 1.
    let server = Server::start(&dir, &[]).await;
    let lasts = verify(server.addr, &rooms, &acks).await;
    let mut ws = connect(server.addr, "after").await;
    for room in &rooms {
        join(&mut ws, room).await;
        let seq = publish(&mut ws, room, "after the crashes", &format!("after-{room}")).await;
        assert_eq!(seq, lasts[room] + 1, "room {room}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_retry_after_a_restart_gets_the_original_sequence() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let room = "idem";

    let server = Server::start(&dir, &[]).await;
    let mut ws = connect(server.addr, "alice").await;
    join(&mut ws, room).await;
    assert_eq!(publish(&mut ws, room, "zero", "id-0").await, 1);
    let original = publish(&mut ws, room, "the one", "X").await;
    assert_eq!(original, 2);
    assert_eq!(publish(&mut ws, room, "later", "id-2").await, 3);
    server.kill();

    let server = Server::start(&dir, &[]).await;
    let mut ws = connect(server.addr, "alice").await;
    join(&mut ws, room).await;
    assert_eq!(publish(&mut ws, room, "the one", "X").await, original);
    // The same id from another user is a different message.
    let mut bob = connect(server.addr, "bob").await;
    join(&mut bob, room).await;
    assert_eq!(publish(&mut bob, room, "bob's", "X").await, 4);
    let stored = history(server.addr, room).await;
    let contents: Vec<&str> = stored.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(contents, ["zero", "the one", "later", "bob's"]);
    assert_eq!(publish(&mut ws, room, "new", "id-5").await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_durability_persists_a_quiet_log_before_a_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let room = "quiet";
    let args = ["--durability", "batched", "--sync-interval-ms", "20"];

    let server = Server::start(&dir, &args).await;
    let mut ws = connect(server.addr, "carol").await;
    join(&mut ws, room).await;
    for i in 1..=30u64 {
        assert_eq!(
            publish(&mut ws, room, &format!("m{i}"), &format!("id{i}")).await,
            i
        );
    }
    // Quiet: the background sync persists the log within an interval.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (_, body) = http_get(server.addr, "/metrics").await.unwrap();
        let text = String::from_utf8(body).unwrap();
        if text.lines().any(|l| l == "parlor_store_unsynced 0") {
            break;
        }
        assert!(Instant::now() < deadline, "the quiet log was never synced");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill();

    let server = Server::start(&dir, &args).await;
    let stored = history(server.addr, room).await;
    assert_eq!(stored.len(), 30);
    let mut ws = connect(server.addr, "carol").await;
    join(&mut ws, room).await;
    assert_eq!(publish(&mut ws, room, "m31", "id31").await, 31);
}

/// Runs the binary on `dir` to its exit (it should refuse to start).
fn serve_until_exit(dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_parlor"))
        .args(["serve", "--store", "redb", "--data-dir"])
        .arg(dir)
        .args(["--addr", "127.0.0.1:0"])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_data_dir_exits_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let server = Server::start(&dir, &[]).await;
    let out = serve_until_exit(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("parlor.redb") && err.contains("already open"),
        "{err}"
    );
    // The first server is unharmed.
    assert_eq!(http_get(server.addr, "/healthz").await.unwrap().0, 200);
    drop(server);

    // A foreign file: refused, exit code != 0, left as it was.
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("parlor.redb");
    std::fs::write(&file, b"not a database").unwrap();
    let out = serve_until_exit(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("parlor.redb") && err.contains("not a parlor store"),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"not a database");
}
