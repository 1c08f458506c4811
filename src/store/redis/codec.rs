//! What parlor writes into Redis and reads back: a message as stored in a
//! room's stream (and carried on its live channel), and the live channel's
//! two kinds of payload. The live payloads are made by the scripts (so the
//! sequence a script assigned goes out with the message): lines, the first
//! naming the kind — `m` (messages: epoch, then `<sequence> <json>` per
//! message) or `p` (presence: node, version, then `+user` / `-user`) — or
//! made by a node: `r` (a relayed event: node, user, then `t` typing,
//! `r <sequence>` read, or `s <availability>` status followed by its text,
//! which runs to the end). JSON escapes every control character and user
//! names cannot hold one, so a newline always ends a line before the text.

use std::sync::Arc;

use fred::prelude::Value;
use serde::{Deserialize, Serialize};

use super::keys;
use crate::message::StoredMessage;
use crate::protocol::{Availability, Status};
use crate::rooms::Relay;
use crate::store::StoreError;

/// A message as stored, without its sequence (the entry id holds it).
#[derive(Serialize)]
struct OutMessage<'a> {
    t: u64,
    u: &'a str,
    c: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    i: Option<&'a str>,
}

#[derive(Deserialize)]
struct InMessage {
    t: u64,
    u: String,
    c: String,
    i: Option<String>,
}

/// The JSON of a message (everything but its sequence).
pub fn encode_message(m: &StoredMessage) -> String {
    let out = OutMessage {
        t: m.timestamp,
        u: &m.user,
        c: &m.content,
        i: m.client_msg_id.as_deref(),
    };
    serde_json::to_string(&out).expect("a message always serializes")
}

pub fn decode_message(sequence: u64, json: &[u8]) -> Result<StoredMessage, StoreError> {
    let m: InMessage = serde_json::from_slice(json).map_err(|e| StoreError::Corrupt {
        sequence,
        why: e.to_string(),
    })?;
    Ok(StoredMessage {
        sequence,
        timestamp: m.t,
        user: m.u.into(),
        content: m.c,
        client_msg_id: m.i,
    })
}

/// The dedup key of a message with a client id: ids are per user.
pub fn dedup_key(m: &StoredMessage) -> String {
    match &m.client_msg_id {
        Some(id) => format!("{}\0{id}", m.user),
        None => String::new(),
    }
}

/// What came on a room's live channel.
#[derive(Debug, PartialEq, Eq)]
pub enum Live {
    /// New messages, in sequence order, of the log named `epoch`.
    Messages {
        epoch: String,
        messages: Vec<StoredMessage>,
    },
    /// A node's users changed.
    Presence {
        node: Arc<str>,
        version: u64,
        joins: Vec<Arc<str>>,
        leaves: Vec<Arc<str>>,
    },
    /// A node relays what one of its users did.
    Relay {
        node: Arc<str>,
        user: Arc<str>,
        relay: Relay,
    },
}

/// The live payload of a relayed event.
pub fn encode_relay(node: &str, user: &str, relay: &Relay) -> String {
    match relay {
        Relay::Typing => format!("r\n{node}\n{user}\nt"),
        Relay::Read(seq) => format!("r\n{node}\n{user}\nr {seq}"),
        Relay::Status(s) => format!(
            "r\n{node}\n{user}\ns {}\n{}",
            s.availability.as_str(),
            s.text.as_deref().unwrap_or("")
        ),
    }
}

fn decode_relay(text: &str) -> Result<Live, StoreError> {
    let mut parts = text.splitn(5, '\n').skip(1);
    let node: Arc<str> = parts.next().ok_or_else(|| bad("no node"))?.into();
    let user: Arc<str> = parts.next().ok_or_else(|| bad("no user"))?.into();
    let kind = parts.next().ok_or_else(|| bad("no relay kind"))?;
    let relay = match kind.split_once(' ') {
        None if kind == "t" => Relay::Typing,
        Some(("r", seq)) => Relay::Read(seq.parse().map_err(|_| bad("bad sequence"))?),
        Some(("s", a)) => {
            let availability = Availability::parse(a).ok_or_else(|| bad("bad status"))?;
            let text = parts.next().filter(|t| !t.is_empty()).map(Arc::from);
            Relay::Status(Status { availability, text })
        }
        _ => return Err(bad("unknown relay kind")),
    };
    Ok(Live::Relay { node, user, relay })
}

fn bad(why: &str) -> StoreError {
    StoreError::Corrupt {
        sequence: 0,
        why: format!("live payload: {why}"),
    }
}

pub fn decode_live(payload: &[u8]) -> Result<Live, StoreError> {
    let text = std::str::from_utf8(payload).map_err(|_| bad("not UTF-8"))?;
    let mut lines = text.split('\n');
    match lines.next() {
        Some("m") => {
            let epoch = lines.next().ok_or_else(|| bad("no epoch"))?.to_string();
            let mut messages = Vec::new();
            for line in lines {
                let (seq, json) = line.split_once(' ').ok_or_else(|| bad("no sequence"))?;
                let seq = seq.parse().map_err(|_| bad("bad sequence"))?;
                messages.push(decode_message(seq, json.as_bytes())?);
            }
            Ok(Live::Messages { epoch, messages })
        }
        Some("p") => {
            let node: Arc<str> = lines.next().ok_or_else(|| bad("no node"))?.into();
            let version = lines
                .next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad("no version"))?;
            let (mut joins, mut leaves) = (Vec::new(), Vec::new());
            for line in lines {
                match line.split_at_checked(1) {
                    Some(("+", user)) => joins.push(user.into()),
                    Some(("-", user)) => leaves.push(user.into()),
                    _ => return Err(bad("bad presence change")),
                }
            }
            Ok(Live::Presence {
                node,
                version,
                joins,
                leaves,
            })
        }
        Some("r") => decode_relay(text),
        _ => Err(bad("unknown kind")),
    }
}

/// The messages of an `XRANGE` reply: `[[id, [field, value, …]], …]`.
pub fn decode_entries(reply: Value) -> Result<Vec<StoredMessage>, StoreError> {
    let Value::Array(entries) = reply else {
        return match reply {
            Value::Null => Ok(Vec::new()),
            _ => Err(bad("XRANGE reply is not an array")),
        };
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(mut parts) = entry else {
            return Err(bad("stream entry is not an array"));
        };
        if parts.len() != 2 {
            return Err(bad("stream entry is not [id, fields]"));
        }
        let fields = parts.pop().expect("two parts");
        let id = parts.pop().expect("two parts");
        let id = id.as_str().ok_or_else(|| bad("entry id"))?;
        let sequence = keys::sequence_of(&id).ok_or_else(|| bad("entry id"))?;
        let Value::Array(fields) = fields else {
            return Err(bad("entry fields"));
        };
        let json = fields
            .chunks(2)
            .find(|kv| kv[0].as_str().as_deref() == Some("m"))
            .and_then(|kv| kv.get(1))
            .and_then(|v| v.as_bytes().map(<[u8]>::to_vec))
            .ok_or(StoreError::Corrupt {
                sequence,
                why: "stream entry without its message".into(),
            })?;
        out.push(decode_message(sequence, &json)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(seq: u64, id: Option<&str>) -> StoredMessage {
        StoredMessage {
            sequence: seq,
            timestamp: 1_700_000_000_000,
            user: "ann b".into(),
            content: "line\none \"quoted\" ✓".into(),
            client_msg_id: id.map(str::to_owned),
        }
    }

    #[test]
    fn a_message_round_trips_through_a_live_payload() {
        let a = m(7, Some("x1"));
        let b = m(8, None);
        let payload = format!("m\nE1\n7 {}\n8 {}", encode_message(&a), encode_message(&b));
        assert_eq!(
            decode_live(payload.as_bytes()).unwrap(),
            Live::Messages {
                epoch: "E1".into(),
                messages: vec![a, b]
            }
        );
    }

    #[test]
    fn a_presence_change_decodes() {
        let got = decode_live(b"p\nn1\n42\n+ann b\n-bob").unwrap();
        assert_eq!(
            got,
            Live::Presence {
                node: "n1".into(),
                version: 42,
                joins: vec!["ann b".into()],
                leaves: vec!["bob".into()],
            }
        );
        assert!(decode_live(b"x\n").is_err());
    }

    #[test]
    fn relayed_events_round_trip() {
        let busy = Status {
            availability: Availability::Busy,
            text: Some("in a\nmeeting ✓".into()),
        };
        for relay in [
            Relay::Typing,
            Relay::Read(42),
            Relay::Status(busy),
            Relay::Status(Status::default()),
        ] {
            let payload = encode_relay("n1", "ann b", &relay);
            assert_eq!(
                decode_live(payload.as_bytes()).unwrap(),
                Live::Relay {
                    node: "n1".into(),
                    user: "ann b".into(),
                    relay
                }
            );
        }
        assert!(decode_live(b"r\nn1\nann\nq").is_err());
    }
}
