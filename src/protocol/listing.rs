//! A `presence` frame put together from its users' entries, each encoded
//! on its own and kept by the room (see `rooms::presence`) until that user's
//! `lastSeen` or status changes.
//!
//! A room's listing changes with every join, and each joiner gets the
//! whole listing (PROTOCOL.md §4): encoding it afresh for each of the first
//! thousand joiners of a room is half a million user entries. Put together
//! from kept entries, a frame costs one entry's encoding and a copy of the
//! rest.
//!
//! The frame is byte for byte what `server::encode` makes of
//! `server::Presence` (a test holds the two together): JSON
//! `{"type":"presence","data":{"room":…,"count":…,"users":[…],"truncated":…}}`,
//! or the same as MessagePack maps with named fields.

use bytes::Bytes;
use fastwebsockets::OpCode;

use super::frame;
use super::server::PresenceUser;
use super::Format;

/// One user's entry in a `presence` frame's `users`, in `format` (JSON or
/// MessagePack; a Server-Sent Event is encoded whole, not from entries).
pub fn entry(format: Format, user: &PresenceUser<'_>) -> Box<[u8]> {
    let mut out = Vec::with_capacity(64 + user.user.len());
    match format {
        Format::Json => serde_json::to_writer(&mut out, user).expect("an entry always serializes"),
        Format::Msgpack => {
            rmp_serde::encode::write_named(&mut out, user).expect("an entry always serializes")
        }
        Format::Sse => unreachable!("SSE frames are not put together from entries"),
    }
    out.into_boxed_slice()
}

/// The `presence` frame of `room` listing `entries` (made by `entry` in the
/// same `format`), of `count` users online in all.
pub fn frame(
    format: Format,
    room: &str,
    count: usize,
    entries: &[&[u8]],
    truncated: bool,
) -> Bytes {
    // Sized to fit, so that the frame (kept while it serves) never grows
    // into twice its size: the fixed parts take < 128 bytes in either
    // format, the room at most twice its length escaped, each entry a
    // separator at most.
    let listed: usize = entries.iter().map(|e| e.len() + 1).sum();
    let mut buf = frame::payload_buffer(128 + room.len() * 2 + listed);
    match format {
        Format::Json => {
            buf.extend_from_slice(br#"{"type":"presence","data":{"room":"#);
            serde_json::to_writer(&mut buf, room).expect("a string always serializes");
            buf.extend_from_slice(br#","count":"#);
            buf.extend_from_slice(itoa::Buffer::new().format(count).as_bytes());
            buf.extend_from_slice(br#","users":["#);
            for (i, e) in entries.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                buf.extend_from_slice(e);
            }
            buf.extend_from_slice(br#"],"truncated":"#);
            buf.extend_from_slice(if truncated { b"true" } else { b"false" });
            buf.extend_from_slice(b"}}");
            frame::finish(OpCode::Text, buf)
        }
        Format::Msgpack => {
            use rmp::encode as mp;
            // Writes into a Vec cannot fail.
            let _ = mp::write_map_len(&mut buf, 2);
            let _ = mp::write_str(&mut buf, "type");
            let _ = mp::write_str(&mut buf, "presence");
            let _ = mp::write_str(&mut buf, "data");
            let _ = mp::write_map_len(&mut buf, 4);
            let _ = mp::write_str(&mut buf, "room");
            let _ = mp::write_str(&mut buf, room);
            let _ = mp::write_str(&mut buf, "count");
            let _ = mp::write_uint(&mut buf, count as u64);
            let _ = mp::write_str(&mut buf, "users");
            let len = u32::try_from(entries.len()).expect("at most MAX_LISTED entries");
            let _ = mp::write_array_len(&mut buf, len);
            for e in entries {
                buf.extend_from_slice(e);
            }
            let _ = mp::write_str(&mut buf, "truncated");
            let _ = mp::write_bool(&mut buf, truncated);
            frame::finish(OpCode::Binary, buf)
        }
        Format::Sse => unreachable!("SSE frames are not put together from entries"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::server::{encode, Presence};

    fn users(n: usize) -> Vec<(String, &'static str, Option<String>, u64)> {
        (0..n)
            .map(|i| {
                // Names and texts JSON must escape, and non-ASCII ones.
                let name = match i % 4 {
                    0 => format!("user{i}"),
                    1 => format!("q\"{i}\\"),
                    2 => format!("ünï{i}"),
                    _ => format!("u{}", "x".repeat(i)),
                };
                let status = ["online", "away", "busy"][i % 3];
                let text = (i % 5 == 1).then(|| format!("out\n{}", "t".repeat(i * 7)));
                (name, status, text, 1_700_000_000_000 + (i as u64) * 977)
            })
            .collect()
    }

    #[test]
    fn a_frame_from_entries_is_what_the_encoder_makes() {
        let rooms = ["lobby", "a\"b", "r".repeat(200).leak() as &str];
        // Counts on both sides of each MessagePack width (fixint, u8, u16,
        // u32) and lists of every array header width.
        let sizes = [
            (0, 0),
            (1, 1),
            (3, 127),
            (16, 128),
            (40, 70_000),
            (300, 300),
        ];
        for format in [Format::Json, Format::Msgpack] {
            for room in rooms {
                for (listed, count) in sizes {
                    let all = users(listed);
                    let view: Vec<PresenceUser<'_>> = all
                        .iter()
                        .map(|(user, status, text, last_seen)| PresenceUser {
                            user,
                            status,
                            text: text.as_deref(),
                            last_seen: *last_seen,
                        })
                        .collect();
                    let kept: Vec<Box<[u8]>> = view.iter().map(|u| entry(format, u)).collect();
                    let entries: Vec<&[u8]> = kept.iter().map(|e| &e[..]).collect();
                    let truncated = count > listed;
                    let assembled = frame(format, room, count, &entries, truncated);
                    // Within the buffer `frame` sized: the fixed parts
                    // fit in their 128 bytes.
                    let sized: usize = entries.iter().map(|e| e.len() + 1).sum();
                    let bound = frame::MAX_HEADER + 128 + room.len() * 2 + sized;
                    assert!(assembled.len() <= bound, "{format:?}: outgrew its buffer");
                    let data = Presence {
                        room,
                        count,
                        users: view,
                        truncated,
                    };
                    let encoded = encode(format, "presence", None, Some(data));
                    assert!(
                        assembled == encoded,
                        "{format:?}, room {room:?}, {listed} listed of {count}"
                    );
                }
            }
        }
    }
}
