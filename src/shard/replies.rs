//! Frames a shard sends besides broadcasts: presence snapshots and diffs,
//! and the outcome of a publish (ack or error, to a session or the HTTP API).

use std::sync::Arc;

use bytes::Bytes;

use super::room::{Bounds, Room};
use super::PublishReply;
use crate::error::ErrorCode;
use crate::protocol::server as msg;
use crate::protocol::{Format, RoomName};

/// Sends one window's presence changes to the room's members; a member that
/// joined within the window is not told about its own user.
pub fn flush_presence(room: &mut Room, joins: &[Arc<str>], leaves: &[Arc<str>], bounds: Bounds) {
    let name = room.name.clone();
    let encode = |format: Format, joins: &[&str], leaves: &[&str]| {
        let data = msg::PresenceDiff {
            room: name.as_str(),
            joins,
            leaves,
        };
        msg::encode(format, "presence_diff", None, Some(data))
    };
    let joins: Vec<&str> = joins.iter().map(|u| &**u).collect();
    let leaves: Vec<&str> = leaves.iter().map(|u| &**u).collect();
    let shared: [Bytes; 2] = Format::ALL.map(|f| encode(f, &joins, &leaves));
    let mut gone = Vec::new();
    for m in room.members_mut() {
        let fresh = std::mem::take(&mut m.fresh);
        let user = &*m.session.user;
        let f = if fresh && joins.contains(&user) {
            let others: Vec<&str> = joins.iter().copied().filter(|u| *u != user).collect();
            if others.is_empty() && leaves.is_empty() {
                continue;
            }
            encode(m.session.format, &others, &leaves)
        } else {
            shared[m.session.format.index()].clone()
        };
        if !m.deliver(&[f], bounds) {
            gone.push(m.session.client_id);
        }
    }
    for id in gone {
        room.remove(id);
    }
}

pub fn presence_frame(room: &Room, format: Format) -> Bytes {
    let snap = room.presence.snapshot();
    let data = msg::Presence {
        room: room.name.as_str(),
        count: snap.count,
        users: snap
            .users
            .iter()
            .map(|(user, last_seen)| msg::PresenceUser {
                user,
                status: "online",
                last_seen: *last_seen,
            })
            .collect(),
        truncated: snap.truncated,
    };
    msg::encode(format, "presence", None, Some(data))
}

pub fn reply_ok(reply: PublishReply, id: Option<&str>, room: &RoomName, sequence: u64) {
    match reply {
        PublishReply::Session(s) => {
            if let Some(id) = id {
                let data = msg::AckData {
                    room: room.as_str(),
                    sequence,
                };
                s.outbox
                    .push_or_cut(msg::encode(s.format, "ack", Some(id), Some(data)));
            }
        }
        PublishReply::Http(tx) => {
            let _ = tx.send(Ok(sequence));
        }
    }
}

pub fn reply_error(reply: PublishReply, code: ErrorCode, id: Option<&str>, room: &RoomName) {
    match reply {
        PublishReply::Session(s) => {
            let message = match code {
                ErrorCode::NotJoined => format!("not joined to {room}"),
                _ => format!("message to {room} was not stored"),
            };
            s.outbox
                .push_or_cut(msg::error(s.format, code, &message, id));
        }
        PublishReply::Http(tx) => {
            let _ = tx.send(Err(code));
        }
    }
}
