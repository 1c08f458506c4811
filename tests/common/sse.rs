//! A Server-Sent Events client over plain TCP (HTTP/1.1, chunked body), for
//! `GET /api/rooms/{room}/events`: reads events one at a time.

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::TIMEOUT;

#[derive(Debug, Clone)]
pub struct Event {
    pub id: Option<u64>,
    /// `message`, `joined`, `presence`, …; `comment` for a comment line.
    pub event: String,
    pub data: Value,
}

pub struct Sse {
    pub stream: TcpStream,
    raw: Vec<u8>,
    text: Vec<u8>,
    pub status: u16,
    pub head: String,
    ended: bool,
}

impl Sse {
    /// Sends the request; reads the response head.
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Sse {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        Self::open_on(stream, addr, path, headers).await
    }

    /// Like `open`, with a receive buffer of about `bytes` (a slow reader).
    pub async fn open_small(addr: SocketAddr, path: &str, bytes: u32) -> Sse {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(bytes).unwrap();
        let stream = socket.connect(addr).await.expect("tcp connect");
        Self::open_on(stream, addr, path, &[]).await
    }

    async fn open_on(
        mut stream: TcpStream,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Sse {
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut s = Sse {
            stream,
            raw: Vec::new(),
            text: Vec::new(),
            status: 0,
            head: String::new(),
            ended: false,
        };
        let end = loop {
            if let Some(i) = s.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                s.fill().await > 0,
                "connection closed before the response head"
            );
        };
        s.head = String::from_utf8_lossy(&s.raw[..end]).into_owned();
        s.raw.drain(..end);
        s.status = s
            .head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap();
        s
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16384];
        let n = tokio::time::timeout(TIMEOUT, self.stream.read(&mut chunk))
            .await
            .expect("timed out reading the event stream")
            .unwrap_or(0);
        self.raw.extend_from_slice(&chunk[..n]);
        n
    }

    /// Moves whole chunks of the chunked body from `raw` to `text`.
    fn dechunk(&mut self) {
        loop {
            let Some(i) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&self.raw[..i])
                    .split(';')
                    .next()
                    .unwrap()
                    .trim(),
                16,
            )
            .expect("chunk size");
            if size == 0 {
                self.ended = true;
                self.raw.clear();
                return;
            }
            if self.raw.len() < i + 2 + size + 2 {
                return;
            }
            self.text.extend_from_slice(&self.raw[i + 2..i + 2 + size]);
            self.raw.drain(..i + 2 + size + 2);
        }
    }

    /// The error body of a refused request (its status is not 200).
    pub async fn error_body(&mut self) -> Value {
        let len: usize = self
            .head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .expect("content-length");
        while self.raw.len() < len {
            assert!(self.fill().await > 0, "body cut short");
        }
        serde_json::from_slice(&self.raw[..len]).unwrap()
    }

    /// Next event (comments included); None once the stream has ended.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            self.dechunk();
            if let Some(i) = self.text.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8(self.text[..i].to_vec()).expect("UTF-8 events");
                self.text.drain(..i + 2);
                if block.starts_with("retry:") {
                    continue;
                }
                return Some(parse(&block));
            }
            if self.ended || self.fill().await == 0 {
                return None;
            }
        }
    }

    /// Next event that is not a comment.
    pub async fn event(&mut self) -> Option<Event> {
        loop {
            let e = self.next().await?;
            if e.event != "comment" {
                return Some(e);
            }
        }
    }

    /// Next `message` event's (sequence, data), skipping others.
    pub async fn message(&mut self) -> Option<(u64, Value)> {
        loop {
            let e = self.event().await?;
            if e.event == "message" {
                return Some((e.id.expect("a message event has an id"), e.data));
            }
        }
    }
}

fn parse(block: &str) -> Event {
    let mut e = Event {
        id: None,
        event: "message".into(),
        data: Value::Null,
    };
    for line in block.lines() {
        if line.starts_with(':') {
            e.event = "comment".into();
        } else if let Some(v) = line.strip_prefix("id: ") {
            e.id = Some(v.parse().expect("numeric id"));
        } else if let Some(v) = line.strip_prefix("event: ") {
            e.event = v.to_string();
        } else if let Some(v) = line.strip_prefix("data: ") {
            e.data = serde_json::from_str(v).expect("JSON data");
        }
    }
    e
}
