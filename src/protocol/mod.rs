//! The wire contract of PROTOCOL.md: decoded client requests, encoded server
//! frames, room and user names and the two formats (JSON text frames, MessagePack
//! binary frames with string keys).

pub mod client;
pub mod frame;
pub mod room;
pub mod server;
pub mod user;

pub use client::{ClientMsg, DecodeError, Request};
pub use room::RoomName;

/// How a session's frames are encoded. Negotiated once per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Json,
    Msgpack,
}

impl Format {
    pub const ALL: [Format; 2] = [Format::Json, Format::Msgpack];

    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Msgpack => "msgpack",
        }
    }

    pub fn subprotocol(self) -> &'static str {
        match self {
            Format::Json => "parlor.v1.json",
            Format::Msgpack => "parlor.v1.msgpack",
        }
    }

    pub fn from_subprotocol(s: &str) -> Option<Format> {
        match s.trim() {
            "parlor.v1.json" => Some(Format::Json),
            "parlor.v1.msgpack" => Some(Format::Msgpack),
            _ => None,
        }
    }

    pub fn from_query(s: &str) -> Option<Format> {
        match s {
            "json" => Some(Format::Json),
            "msgpack" => Some(Format::Msgpack),
            _ => None,
        }
    }

    /// Index into per-format arrays (`[T; 2]`).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Milliseconds since the Unix epoch, the `timestamp` of messages.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
