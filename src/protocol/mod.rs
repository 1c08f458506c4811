//! The wire contract of PROTOCOL.md: decoded client requests, encoded server
//! frames, room and user names and the two formats (JSON text frames, MessagePack
//! binary frames with string keys).

pub mod client;
pub mod frame;
pub mod listing;
pub mod room;
pub mod server;
pub mod status;
pub mod user;

pub use client::{ClientMsg, DecodeError, Request};
pub use room::RoomName;
pub use status::{Availability, Status};

/// How a session's frames are encoded. Negotiated once per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Json,
    Msgpack,
    /// Server-Sent Events (`GET /api/rooms/{room}/events`): `event:` and a
    /// JSON `data:` line per frame, no WebSocket header; never negotiated
    /// on a WebSocket.
    Sse,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Json, Format::Msgpack, Format::Sse];
    /// How many formats there are: the length of per-format arrays.
    pub const COUNT: usize = 3;

    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Msgpack => "msgpack",
            Format::Sse => "sse",
        }
    }

    pub fn subprotocol(self) -> &'static str {
        match self {
            Format::Json => "parlor.v1.json",
            Format::Msgpack => "parlor.v1.msgpack",
            Format::Sse => "",
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

    /// Index into per-format arrays (`[T; Format::COUNT]`).
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
