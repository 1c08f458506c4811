//! Server → client messages (PROTOCOL.md §3), encoded into complete frames.
//!
//! Every frame is `{type, id?, data?}`. Encoding goes straight into a buffer
//! with room for the WebSocket header (see `frame`), so one allocation makes
//! a frame that any number of sessions can share.

use bytes::Bytes;
use fastwebsockets::OpCode;
use serde::Serialize;

use super::frame;
use super::Format;
use crate::error::ErrorCode;
use crate::message::StoredMessage;

#[derive(Serialize)]
struct Envelope<'a, D: Serialize> {
    #[serde(rename = "type")]
    ty: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<D>,
}

/// Encodes `{type, id?, data?}` as one complete frame in `format`.
pub fn encode<D: Serialize>(format: Format, ty: &str, id: Option<&str>, data: Option<D>) -> Bytes {
    encode_sized(format, ty, id, data, 128)
}

/// `encode` into a buffer of `capacity` bytes to start with: a frame that
/// outgrows it is copied once more as it grows.
fn encode_sized<D: Serialize>(
    format: Format,
    ty: &str,
    id: Option<&str>,
    data: Option<D>,
    capacity: usize,
) -> Bytes {
    if format == Format::Sse {
        return sse_event(None, ty, data.as_ref());
    }
    let env = Envelope { ty, id, data };
    let mut buf = frame::payload_buffer(capacity);
    match format {
        Format::Json => {
            serde_json::to_writer(&mut buf, &env).expect("server messages always serialize");
            frame::finish(OpCode::Text, buf)
        }
        Format::Msgpack => {
            rmp_serde::encode::write_named(&mut buf, &env)
                .expect("server messages always serialize");
            frame::finish(OpCode::Binary, buf)
        }
        Format::Sse => unreachable!("encoded above"),
    }
}

/// One Server-Sent Event: `id:` (a message's sequence), `event:` the
/// frame's type, `data:` its `data` as one line of JSON (JSON never holds a
/// raw line break). A heartbeat is a comment line, the keep-alive.
fn sse_event<D: Serialize>(id: Option<u64>, ty: &str, data: Option<&D>) -> Bytes {
    if ty == "heartbeat" {
        return Bytes::from_static(b": keep-alive\n\n");
    }
    let mut out = Vec::with_capacity(128);
    if let Some(id) = id {
        out.extend_from_slice(format!("id: {id}\n").as_bytes());
    }
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(ty.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    match data {
        Some(d) => serde_json::to_writer(&mut out, d).expect("server messages always serialize"),
        None => out.extend_from_slice(b"{}"),
    }
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// `data` of a chat `message` frame and of each `history` entry.
#[derive(Serialize)]
pub struct MessageData<'a> {
    pub id: MessageId<'a>,
    pub room: &'a str,
    pub user: &'a str,
    pub content: &'a str,
    pub sequence: u64,
    pub timestamp: u64,
}

impl<'a> MessageData<'a> {
    /// The wire view of a stored message; its `id` is unique because a
    /// room's epoch is random and its sequence never repeats within it.
    pub fn of(room: &'a str, epoch: &'a str, m: &'a StoredMessage) -> Self {
        MessageData {
            id: MessageId {
                epoch,
                sequence: m.sequence,
            },
            room,
            user: &m.user,
            content: &m.content,
            sequence: m.sequence,
            timestamp: m.timestamp,
        }
    }
}

/// A message's wire id, `{epoch}-{sequence}`: written into the frame as it
/// is encoded, so a message's encoding makes no string of its own for it.
pub struct MessageId<'a> {
    pub epoch: &'a str,
    pub sequence: u64,
}

impl std::fmt::Display for MessageId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.epoch, self.sequence)
    }
}

impl Serialize for MessageId<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // On the stack: an epoch as parlor makes them (16 hex digits) and
        // any sequence fit, where `collect_str` would make a `String` for
        // MessagePack. An epoch of another length, as a store file or a
        // Redis log may hold, still serializes, through `collect_str`.
        let mut digits = itoa::Buffer::new();
        let (epoch, sequence) = (
            self.epoch.as_bytes(),
            digits.format(self.sequence).as_bytes(),
        );
        let len = epoch.len() + 1 + sequence.len();
        let mut buf = [0u8; 64];
        let Some(id) = buf.get_mut(..len) else {
            return s.collect_str(self);
        };
        id[..epoch.len()].copy_from_slice(epoch);
        id[epoch.len()] = b'-';
        id[epoch.len() + 1..].copy_from_slice(sequence);
        s.serialize_str(std::str::from_utf8(id).expect("two strs and a '-'"))
    }
}

pub fn message(format: Format, data: &MessageData<'_>) -> Bytes {
    match format {
        Format::Sse => sse_event(Some(data.sequence), "message", Some(data)),
        _ => {
            // The envelope, the id, the sequence and the timestamp take
            // ≈ 130 bytes in JSON; the strings, their own length and more
            // if escaped.
            let strings = data.room.len() + data.user.len() + data.content.len();
            encode_sized(format, "message", None, Some(data), 160 + strings)
        }
    }
}

/// A `history` frame: `messages` oldest first, `more` when older ones exist.
pub fn history(
    format: Format,
    room: &str,
    epoch: &str,
    messages: &[StoredMessage],
    more: bool,
) -> Bytes {
    if format == Format::Sse {
        // A stream has no pages: the history is its messages, each an event
        // whose id resumes the stream.
        let mut out = Vec::new();
        for m in messages {
            out.extend_from_slice(&message(format, &MessageData::of(room, epoch, m)));
        }
        return Bytes::from(out);
    }
    let data = History {
        room,
        messages: messages
            .iter()
            .map(|m| MessageData::of(room, epoch, m))
            .collect(),
        more,
    };
    encode(format, "history", None, Some(data))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Connected<'a> {
    pub client_id: &'a str,
    pub user: &'a str,
    pub format: &'a str,
    pub heartbeat_ms: u64,
    pub server: &'a str,
}

#[derive(Serialize)]
pub struct Joined<'a> {
    pub room: &'a str,
    pub last: u64,
    pub epoch: &'a str,
    pub recovered: bool,
    /// The joining user's read marker in this room (0: none).
    pub read: u64,
}

/// The answer to a `refresh`: whose session, and when it now expires (ms
/// since the epoch; null: never).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Refreshed<'a> {
    pub user: &'a str,
    pub expires_at: Option<u64>,
}

#[derive(Serialize)]
pub struct RoomOnly<'a> {
    pub room: &'a str,
}

#[derive(Serialize)]
pub struct AckData<'a> {
    pub room: &'a str,
    pub sequence: u64,
}

#[derive(Serialize)]
pub struct History<'a> {
    pub room: &'a str,
    pub messages: Vec<MessageData<'a>>,
    pub more: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceUser<'a> {
    pub user: &'a str,
    pub status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<&'a str>,
    pub last_seen: u64,
}

/// A status change in a `presence_diff`.
#[derive(Serialize, Clone, Copy)]
pub struct StatusChange<'a> {
    pub user: &'a str,
    pub status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<&'a str>,
}

/// `typing` (who) and `read` (who, up to where): ephemeral room events.
#[derive(Serialize)]
pub struct UserEvent<'a> {
    pub room: &'a str,
    pub user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
}

#[derive(Serialize)]
pub struct Presence<'a> {
    pub room: &'a str,
    pub count: usize,
    pub users: Vec<PresenceUser<'a>>,
    pub truncated: bool,
}

#[derive(Serialize)]
pub struct PresenceDiff<'a> {
    pub room: &'a str,
    pub joins: &'a [&'a str],
    pub leaves: &'a [&'a str],
    pub changes: &'a [StatusChange<'a>],
}

#[derive(Serialize)]
pub struct ErrorData<'a> {
    pub code: &'a str,
    pub message: &'a str,
}

pub fn error(format: Format, code: ErrorCode, message: &str, id: Option<&str>) -> Bytes {
    let data = ErrorData {
        code: code.as_str(),
        message,
    };
    encode(format, "error", id, Some(data))
}

pub fn bare(format: Format, ty: &str) -> Bytes {
    encode::<()>(format, ty, None, None)
}

/// The `heartbeat` frame, encoded once per process and shared by every
/// session (cloning it copies no bytes).
pub fn heartbeat(format: Format) -> Bytes {
    static FRAMES: std::sync::OnceLock<[Bytes; Format::COUNT]> = std::sync::OnceLock::new();
    FRAMES.get_or_init(|| Format::ALL.map(|f| bare(f, "heartbeat")))[format.index()].clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(f: &Bytes) -> &[u8] {
        let off = match f[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        &f[off..]
    }

    #[test]
    fn json_and_msgpack_carry_the_same_fields() {
        let m = StoredMessage {
            sequence: 7,
            timestamp: 1,
            user: "ann".into(),
            content: "hi".into(),
            client_msg_id: None,
        };
        let data = MessageData::of("lobby", "e1", &m);
        let j: serde_json::Value =
            serde_json::from_slice(payload(&message(Format::Json, &data))).unwrap();
        let p: serde_json::Value =
            rmp_serde::from_slice(payload(&message(Format::Msgpack, &data))).unwrap();
        assert_eq!(j, p);
        assert_eq!(j["type"], "message");
        assert_eq!(j["data"]["sequence"], 7);
        assert_eq!(j["data"]["id"], "e1-7");
    }

    #[test]
    fn a_message_id_is_epoch_and_sequence_however_long_the_epoch() {
        let m = StoredMessage {
            sequence: u64::MAX,
            timestamp: 1,
            user: "ann".into(),
            content: "hi".into(),
            client_msg_id: None,
        };
        // Parlor's own epochs fit the stack buffer; a longer one (and a
        // quote, which JSON escapes) goes through `collect_str`.
        for epoch in ["0123456789abcdef", &"e\"".repeat(40)] {
            let data = MessageData::of("lobby", epoch, &m);
            let want = format!("{epoch}-{}", u64::MAX);
            for format in [Format::Json, Format::Msgpack] {
                let f = message(format, &data);
                let v: serde_json::Value = match format {
                    Format::Json => serde_json::from_slice(payload(&f)).unwrap(),
                    _ => rmp_serde::from_slice(payload(&f)).unwrap(),
                };
                assert_eq!(v["data"]["id"], want.as_str(), "{format:?}");
            }
        }
    }

    #[test]
    fn sse_events_carry_the_sequence_as_id() {
        let m = StoredMessage {
            sequence: 9,
            timestamp: 1,
            user: "ann".into(),
            content: "two\nlines".into(),
            client_msg_id: None,
        };
        let f = message(Format::Sse, &MessageData::of("lobby", "e1", &m));
        let text = std::str::from_utf8(&f).unwrap();
        let mut lines = text.split('\n');
        assert_eq!(lines.next(), Some("id: 9"));
        assert_eq!(lines.next(), Some("event: message"));
        let data: serde_json::Value =
            serde_json::from_str(lines.next().unwrap().strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(data["content"], "two\nlines");
        assert!(text.ends_with("\n\n"));
        assert_eq!(&bare(Format::Sse, "heartbeat")[..], b": keep-alive\n\n");
    }

    #[test]
    fn bare_frames_have_only_a_type() {
        let f = bare(Format::Json, "pong");
        assert_eq!(payload(&f), br#"{"type":"pong"}"#);
        let e = error(Format::Json, ErrorCode::NotJoined, "join first", Some("q"));
        let v: serde_json::Value = serde_json::from_slice(payload(&e)).unwrap();
        assert_eq!(v["id"], "q");
        assert_eq!(v["data"]["code"], "not_joined");
    }
}
