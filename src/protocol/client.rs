//! Client → server messages (PROTOCOL.md §2), decoded from either format.
//!
//! Decoding is strict about shapes and lenient about extras: unknown fields
//! are ignored, but a frame that is not an object, lacks a string `type`, or
//! has a field of the wrong type is `bad_request`; an unknown `type` is
//! `unknown_type`; a bad room name is `invalid_room`. Every error keeps the
//! request's `id` when one could be read, so the reply can echo it.

use serde::Deserialize;

use std::sync::Arc;

use super::room::RoomName;
use super::status::{Availability, Status, MAX_STATUS_TEXT};
use super::Format;
use crate::error::ErrorCode;

/// Longest client-chosen message `id` (PROTOCOL.md §2).
pub const MAX_ID_LEN: usize = 64;
/// Default and largest `limit` of a `history` request.
pub const HISTORY_DEFAULT_LIMIT: usize = 100;
pub const HISTORY_MAX_LIMIT: usize = 1000;

#[derive(Debug, Clone, PartialEq)]
pub enum ClientMsg {
    Join {
        room: RoomName,
        since: Option<u64>,
        epoch: Option<String>,
    },
    Leave {
        room: RoomName,
    },
    Message {
        room: RoomName,
        content: String,
    },
    History {
        room: RoomName,
        since: u64,
        limit: usize,
    },
    Presence {
        room: RoomName,
    },
    Ping,
    /// Sets the user's status in every room they are in.
    Status {
        status: Status,
    },
    /// The user is typing in `room` (relayed, never stored).
    Typing {
        room: RoomName,
    },
    /// The user has read `room` up to `sequence` (stored per user).
    Read {
        room: RoomName,
        sequence: u64,
    },
    /// A new token for this session (same `sub`): new expiry and grants.
    Refresh {
        token: String,
    },
}

impl ClientMsg {
    /// The room a request names, if any: every such request is held to the
    /// session's room grants before anything else.
    pub fn room(&self) -> Option<&RoomName> {
        match self {
            ClientMsg::Join { room, .. }
            | ClientMsg::Leave { room }
            | ClientMsg::Message { room, .. }
            | ClientMsg::History { room, .. }
            | ClientMsg::Presence { room }
            | ClientMsg::Typing { room }
            | ClientMsg::Read { room, .. } => Some(room),
            ClientMsg::Ping | ClientMsg::Status { .. } | ClientMsg::Refresh { .. } => None,
        }
    }
}

/// A decoded request: the message and the client's correlation `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Option<String>,
    pub msg: ClientMsg,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    pub code: ErrorCode,
    pub message: String,
    pub id: Option<String>,
}

/// Every field any client message may carry; all optional so that one pass
/// decodes any type and wrong types surface as serde errors.
#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "type")]
    ty: Option<String>,
    id: Option<String>,
    room: Option<String>,
    since: Option<u64>,
    epoch: Option<String>,
    limit: Option<u64>,
    data: Option<RawData>,
    status: Option<String>,
    text: Option<String>,
    sequence: Option<u64>,
    token: Option<String>,
}

#[derive(Deserialize)]
struct RawData {
    room: Option<String>,
    content: Option<String>,
}

/// Second look at a frame that failed to decode: just its `id`, if any.
#[derive(Deserialize)]
struct IdOnly {
    id: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct IdString {
    id: String,
}

pub fn decode(format: Format, bytes: &[u8]) -> Result<Request, DecodeError> {
    let raw: Raw = match parse(format, bytes) {
        Ok(raw) => raw,
        Err(message) => {
            return Err(DecodeError {
                code: ErrorCode::BadRequest,
                message,
                id: salvage_id(format, bytes),
            })
        }
    };
    let id = raw.id.clone().filter(|id| id.len() <= MAX_ID_LEN);
    interpret(raw).map_err(|(code, message)| DecodeError { code, message, id })
}

fn parse<T: serde::de::DeserializeOwned>(format: Format, bytes: &[u8]) -> Result<T, String> {
    // Both serde backends would also accept a positional array for a struct;
    // the protocol only has objects, so look at the first token ourselves.
    match format {
        Format::Json => {
            let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
            if first != Some(&b'{') {
                return Err("a frame must be a JSON object".into());
            }
            serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))
        }
        Format::Sse => Err("server-sent events carry no client frames".into()),
        Format::Msgpack => {
            let is_map = matches!(bytes.first(), Some(0x80..=0x8f | 0xde | 0xdf));
            if !is_map {
                return Err("a frame must be a MessagePack map".into());
            }
            rmp_serde::from_slice(bytes).map_err(|e| format!("invalid MessagePack: {e}"))
        }
    }
}

fn salvage_id(format: Format, bytes: &[u8]) -> Option<String> {
    // Only when the frame is a well-formed object whose `id` is a string
    // short enough to be one (an error never echoes more than an id).
    parse::<IdOnly>(format, bytes).ok()?.id?;
    let id = parse::<IdString>(format, bytes).ok()?.id;
    (id.len() <= MAX_ID_LEN).then_some(id)
}

fn interpret(raw: Raw) -> Result<Request, (ErrorCode, String)> {
    let bad = |m: &str| (ErrorCode::BadRequest, m.to_string());
    let ty = raw.ty.ok_or_else(|| bad("missing string field `type`"))?;
    if let Some(id) = &raw.id {
        if id.len() > MAX_ID_LEN {
            return Err(bad("`id` is longer than 64 bytes"));
        }
    }
    let room = |name: Option<String>| -> Result<RoomName, (ErrorCode, String)> {
        let name = name.ok_or_else(|| bad("missing string field `room`"))?;
        RoomName::parse(&name).map_err(|e| (ErrorCode::InvalidRoom, e.to_string()))
    };
    let msg = match ty.as_str() {
        "join" => ClientMsg::Join {
            room: room(raw.room)?,
            since: raw.since,
            epoch: raw.epoch,
        },
        "leave" => ClientMsg::Leave {
            room: room(raw.room)?,
        },
        "message" => {
            let data = raw.data.ok_or_else(|| bad("missing object field `data`"))?;
            let content = data
                .content
                .ok_or_else(|| bad("missing string field `data.content`"))?;
            ClientMsg::Message {
                room: room(data.room)?,
                content,
            }
        }
        "history" => ClientMsg::History {
            room: room(raw.room)?,
            since: raw.since.unwrap_or(0),
            limit: raw.limit.map_or(HISTORY_DEFAULT_LIMIT, |l| {
                (l as usize).clamp(1, HISTORY_MAX_LIMIT)
            }),
        },
        "presence" => ClientMsg::Presence {
            room: room(raw.room)?,
        },
        "ping" => ClientMsg::Ping,
        "status" => {
            let name = raw
                .status
                .ok_or_else(|| bad("missing string field `status`"))?;
            let availability = Availability::parse(&name)
                .ok_or_else(|| bad("`status` is one of online, away, busy"))?;
            if let Some(t) = &raw.text {
                if t.chars().count() > MAX_STATUS_TEXT {
                    let m = format!("`text` is over {MAX_STATUS_TEXT} characters");
                    return Err((ErrorCode::TooLarge, m));
                }
            }
            let text = raw.text.filter(|t| !t.is_empty()).map(Arc::from);
            ClientMsg::Status {
                status: Status { availability, text },
            }
        }
        "typing" => ClientMsg::Typing {
            room: room(raw.room)?,
        },
        "read" => ClientMsg::Read {
            sequence: raw
                .sequence
                .ok_or_else(|| bad("missing integer field `sequence`"))?,
            room: room(raw.room)?,
        },
        "refresh" => ClientMsg::Refresh {
            token: raw
                .token
                .ok_or_else(|| bad("missing string field `token`"))?,
        },
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err((ErrorCode::UnknownType, format!("unknown type {shown:?}")));
        }
    };
    Ok(Request { id: raw.id, msg })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> Result<Request, DecodeError> {
        decode(Format::Json, s.as_bytes())
    }

    #[test]
    fn decodes_each_type() {
        let r = json(r#"{"type":"join","room":"a","since":5,"epoch":"e","extra":1}"#).unwrap();
        assert_eq!(
            r.msg,
            ClientMsg::Join {
                room: RoomName::parse("a").unwrap(),
                since: Some(5),
                epoch: Some("e".into())
            }
        );
        let r = json(r#"{"type":"message","id":"m1","data":{"room":"a","content":"hi"}}"#).unwrap();
        assert_eq!(r.id.as_deref(), Some("m1"));
        assert!(matches!(r.msg, ClientMsg::Message { .. }));
        let r = json(r#"{"type":"history","room":"a","limit":5000}"#).unwrap();
        assert!(matches!(
            r.msg,
            ClientMsg::History {
                since: 0,
                limit: 1000,
                ..
            }
        ));
        assert_eq!(json(r#"{"type":"ping"}"#).unwrap().msg, ClientMsg::Ping);
        let r = json(r#"{"type":"status","status":"busy","text":"in a call"}"#).unwrap();
        assert_eq!(
            r.msg,
            ClientMsg::Status {
                status: Status {
                    availability: Availability::Busy,
                    text: Some("in a call".into())
                }
            }
        );
        let r = json(r#"{"type":"read","room":"a","sequence":7}"#).unwrap();
        assert!(matches!(r.msg, ClientMsg::Read { sequence: 7, .. }));
        let r = json(r#"{"type":"typing","room":"a"}"#).unwrap();
        assert!(matches!(r.msg, ClientMsg::Typing { .. }));
    }

    #[test]
    fn status_and_read_are_checked() {
        let e = json(r#"{"type":"status","status":"asleep"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let long = format!(
            r#"{{"type":"status","status":"away","text":"{}"}}"#,
            "é".repeat(129)
        );
        assert_eq!(json(&long).unwrap_err().code, ErrorCode::TooLarge);
        let ok = format!(
            r#"{{"type":"status","status":"away","text":"{}"}}"#,
            "é".repeat(128)
        );
        assert!(json(&ok).is_ok());
        let e = json(r#"{"type":"read","room":"a"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = json(r#"{"type":"refresh"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }

    #[test]
    fn classifies_errors_and_keeps_the_id() {
        let e = json(r#"{"type":"join","room":5,"id":"x"}"#).unwrap_err();
        assert_eq!(
            (e.code, e.id.as_deref()),
            (ErrorCode::BadRequest, Some("x"))
        );
        let e = json(r#"{"type":"join","since":-1,"room":"a"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = json(r#"{"type":"dance","id":"y"}"#).unwrap_err();
        assert_eq!(
            (e.code, e.id.as_deref()),
            (ErrorCode::UnknownType, Some("y"))
        );
        let e = json(r#"{"type":"join","room":"../x"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRoom);
        for bad in [
            "[1,2]",
            "nope",
            "{",
            r#"{"room":"a"}"#,
            r#"{"type":7}"#,
            "\"join\"",
        ] {
            assert_eq!(json(bad).unwrap_err().code, ErrorCode::BadRequest, "{bad}");
        }
        let long = format!(r#"{{"type":"ping","id":"{}"}}"#, "i".repeat(65));
        let e = json(&long).unwrap_err();
        assert_eq!(
            (e.code, e.id),
            (ErrorCode::BadRequest, None),
            "never echoed"
        );
        let bad = format!(r#"{{"type":7,"id":"{}"}}"#, "i".repeat(300));
        assert_eq!(json(&bad).unwrap_err().id, None);
    }

    #[test]
    fn msgpack_needs_a_string_keyed_map() {
        #[derive(serde::Serialize)]
        struct Join<'a> {
            #[serde(rename = "type")]
            ty: &'a str,
            room: &'a str,
        }
        let named = rmp_serde::to_vec_named(&Join {
            ty: "join",
            room: "r",
        })
        .unwrap();
        assert!(decode(Format::Msgpack, &named).is_ok());
        let positional = rmp_serde::to_vec(&Join {
            ty: "join",
            room: "r",
        })
        .unwrap();
        assert_eq!(
            decode(Format::Msgpack, &positional).unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            decode(Format::Msgpack, &[0xc1]).unwrap_err().code,
            ErrorCode::BadRequest
        );
    }
}
