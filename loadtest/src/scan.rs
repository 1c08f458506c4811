//! Decodes only what the harness checks from a server frame: `type`, and
//! for the types it counts `sequence`, `room`, the content prefix (send
//! time and sender), `last`, or an error `code`.
//!
//! JSON is scanned, not parsed: a keyed substring search on the frame.
//! That is sound here because the harness writes every room name, user
//! name and content itself (no quotes, no escapes, no key names inside
//! them), and it tolerates `"key": value` with spaces as Python's
//! `json.dumps` writes it. MessagePack is decoded with serde into borrowed
//! fields, skipping the rest.

use memchr::memmem;
use serde::Deserialize;
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Message,
    Ack,
    Joined,
    Presence,
    History,
    Error,
    Connected,
    Heartbeat,
    Other,
}

impl Ty {
    fn from_bytes(b: &[u8]) -> Ty {
        match b {
            b"message" => Ty::Message,
            b"ack" => Ty::Ack,
            b"joined" => Ty::Joined,
            b"presence" => Ty::Presence,
            b"history" => Ty::History,
            b"error" => Ty::Error,
            b"connected" => Ty::Connected,
            b"heartbeat" => Ty::Heartbeat,
            _ => Ty::Other,
        }
    }
}

/// What the harness reads out of one frame.
#[derive(Debug, Default, Clone, Copy)]
pub struct Parsed<'a> {
    pub ty: Option<Ty>,
    pub sequence: Option<u64>,
    pub room: Option<&'a [u8]>,
    /// `content` when it starts with the harness prefix `t=`.
    pub content: Option<&'a [u8]>,
    pub last: Option<u64>,
    pub code: Option<&'a [u8]>,
    pub id: Option<&'a [u8]>,
}

struct Finders {
    ty: memmem::Finder<'static>,
    seq: memmem::Finder<'static>,
    room: memmem::Finder<'static>,
    content: memmem::Finder<'static>,
    last: memmem::Finder<'static>,
    code: memmem::Finder<'static>,
    id: memmem::Finder<'static>,
}

fn finders() -> &'static Finders {
    static F: OnceLock<Finders> = OnceLock::new();
    F.get_or_init(|| Finders {
        ty: memmem::Finder::new(b"\"type\""),
        seq: memmem::Finder::new(b"\"sequence\""),
        room: memmem::Finder::new(b"\"room\""),
        content: memmem::Finder::new(b"\"content\""),
        last: memmem::Finder::new(b"\"last\""),
        code: memmem::Finder::new(b"\"code\""),
        id: memmem::Finder::new(b"\"id\""),
    })
}

/// The value after `"key"` `:` (whitespace skipped).
fn value_after<'a>(s: &'a [u8], f: &memmem::Finder<'_>) -> Option<&'a [u8]> {
    let i = f.find(s)? + f.needle().len();
    let mut j = i;
    while j < s.len() && (s[j] == b' ' || s[j] == b'\t') {
        j += 1;
    }
    if s.get(j) != Some(&b':') {
        return None;
    }
    j += 1;
    while j < s.len() && (s[j] == b' ' || s[j] == b'\t') {
        j += 1;
    }
    Some(&s[j..])
}

/// A JSON string value without escapes (ours never have any).
fn str_val(v: &[u8]) -> Option<&[u8]> {
    let v = v.strip_prefix(b"\"")?;
    let end = memchr::memchr(b'"', v)?;
    Some(&v[..end])
}

fn u64_val(v: &[u8]) -> Option<u64> {
    let mut n: u64 = 0;
    let mut any = false;
    for &b in v {
        if b.is_ascii_digit() {
            n = n.checked_mul(10)?.checked_add((b - b'0') as u64)?;
            any = true;
        } else {
            break;
        }
    }
    any.then_some(n)
}

pub fn parse_json(s: &[u8]) -> Parsed<'_> {
    let f = finders();
    let mut p = Parsed::default();
    let ty = match value_after(s, &f.ty).and_then(str_val) {
        Some(t) => Ty::from_bytes(t),
        None => return p,
    };
    p.ty = Some(ty);
    match ty {
        Ty::Message => {
            p.sequence = value_after(s, &f.seq).and_then(u64_val);
            p.room = value_after(s, &f.room).and_then(str_val);
            p.content = value_after(s, &f.content)
                .and_then(|v| v.strip_prefix(b"\""))
                .filter(|v| v.starts_with(b"t="));
        }
        Ty::Ack => {
            p.sequence = value_after(s, &f.seq).and_then(u64_val);
            p.id = value_after(s, &f.id).and_then(str_val);
        }
        Ty::Joined => {
            p.last = value_after(s, &f.last).and_then(u64_val);
            p.room = value_after(s, &f.room).and_then(str_val);
        }
        Ty::Error => {
            p.code = value_after(s, &f.code).and_then(str_val);
            p.id = value_after(s, &f.id).and_then(str_val);
        }
        _ => {}
    }
    p
}

#[derive(Deserialize)]
struct MpFrame<'a> {
    #[serde(rename = "type", borrow)]
    ty: &'a str,
    #[serde(default, borrow)]
    id: Option<&'a str>,
    #[serde(default, borrow)]
    data: Option<MpData<'a>>,
}

#[derive(Deserialize)]
struct MpData<'a> {
    #[serde(default, borrow)]
    room: Option<&'a str>,
    #[serde(default, borrow)]
    content: Option<&'a str>,
    #[serde(default)]
    sequence: Option<u64>,
    #[serde(default)]
    last: Option<u64>,
    #[serde(default, borrow)]
    code: Option<&'a str>,
}

pub fn parse_msgpack(s: &[u8]) -> Parsed<'_> {
    let mut p = Parsed::default();
    let Ok(f) = rmp_serde::from_slice::<MpFrame<'_>>(s) else {
        return p;
    };
    p.ty = Some(Ty::from_bytes(f.ty.as_bytes()));
    p.id = f.id.map(str::as_bytes);
    if let Some(d) = f.data {
        p.sequence = d.sequence;
        p.room = d.room.map(str::as_bytes);
        p.content = d
            .content
            .map(str::as_bytes)
            .filter(|c| c.starts_with(b"t="));
        p.last = d.last;
        p.code = d.code.map(str::as_bytes);
    }
    p
}

/// From content `t=<unix nanos>;s=<sender>;...`: (send time, sender).
pub fn content_fields(c: &[u8]) -> (Option<u64>, Option<u64>) {
    let Some(rest) = c.strip_prefix(b"t=") else {
        return (None, None);
    };
    let t = u64_val(rest);
    let sender = memchr::memchr(b';', rest)
        .and_then(|i| rest[i + 1..].strip_prefix(b"s="))
        .and_then(u64_val);
    (t, sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_message_frames_parlor_and_python_style() {
        let f = br#"{"type":"message","data":{"id":"e-7","room":"r1","user":"u1","content":"t=123;s=4;xx","sequence":7,"timestamp":1}}"#;
        let p = parse_json(f);
        assert_eq!(p.ty, Some(Ty::Message));
        assert_eq!(p.sequence, Some(7));
        assert_eq!(p.room, Some(&b"r1"[..]));
        assert_eq!(content_fields(p.content.unwrap()), (Some(123), Some(4)));
        let f = br#"{"type": "message", "data": {"room": "r1", "content": "t=9;s=1;", "sequence": 12}}"#;
        let p = parse_json(f);
        assert_eq!(p.sequence, Some(12));
        assert_eq!(content_fields(p.content.unwrap()), (Some(9), Some(1)));
        let f = br#"{"type":"message","data":{"room":"r1","user":"system","content":"u1 joined the room","sequence":3}}"#;
        assert!(parse_json(f).content.is_none());
    }

    #[test]
    fn json_ack_joined_error() {
        let p = parse_json(br#"{"type":"ack","id":"3-1","data":{"room":"r","sequence":5}}"#);
        assert_eq!((p.ty, p.sequence), (Some(Ty::Ack), Some(5)));
        assert_eq!(p.id, Some(&b"3-1"[..]));
        let p = parse_json(br#"{"type":"joined","data":{"room":"r","last":42,"epoch":"x"}}"#);
        assert_eq!((p.ty, p.last), (Some(Ty::Joined), Some(42)));
        let p = parse_json(
            br#"{"type":"error","id":"1","data":{"code":"rate_limited","message":"m"}}"#,
        );
        assert_eq!(p.code, Some(&b"rate_limited"[..]));
        // Heartbeats are told apart: they must not keep the settle phase busy.
        assert_eq!(
            parse_json(br#"{"type":"heartbeat"}"#).ty,
            Some(Ty::Heartbeat)
        );
        assert_eq!(
            parse_json(br#"{"type": "heartbeat", "data": {"t": 1}}"#).ty,
            Some(Ty::Heartbeat)
        );
    }

    #[test]
    fn msgpack_message() {
        #[derive(serde::Serialize)]
        struct D<'a> {
            room: &'a str,
            content: &'a str,
            sequence: u64,
            user: &'a str,
        }
        #[derive(serde::Serialize)]
        struct F<'a> {
            #[serde(rename = "type")]
            ty: &'a str,
            data: D<'a>,
        }
        let b = rmp_serde::to_vec_named(&F {
            ty: "message",
            data: D {
                room: "r",
                content: "t=5;s=2;",
                sequence: 3,
                user: "u",
            },
        })
        .unwrap();
        let p = parse_msgpack(&b);
        assert_eq!((p.ty, p.sequence), (Some(Ty::Message), Some(3)));
        assert_eq!(content_fields(p.content.unwrap()), (Some(5), Some(2)));
    }
}
