//! Catching a joining session up from the store: the replay of `join` with
//! `since`, the `history` frame of a plain `join`, and `history` requests.
//!
//! The shard decides what to send (a `JoinPlan`) and holds the member's live
//! messages back meanwhile; this file reads the store off the runtime
//! (`spawn_blocking`), pushes at the client's pace (`push_wait`), then tells
//! the shard to release what it held. So the client sees every sequence
//! exactly once and in order across the hand-off, however busy the room.

use std::sync::Arc;

use bytes::Bytes;

use super::SessionHandle;
use crate::protocol::server::{self as msg, MessageData};
use crate::protocol::{Format, RoomName};
use crate::server::Ctx;
use crate::shard::{CatchUp, JoinPlan, ShardCmd};
use crate::store::{StoreError, StoredMessage};

/// Messages read from the store per round trip.
const CHUNK: usize = 1000;

pub async fn run(ctx: &Arc<Ctx>, session: &Arc<SessionHandle>, room: &RoomName, plan: JoinPlan) {
    let held = !matches!(plan.catch_up, CatchUp::Nothing);
    match plan.catch_up {
        CatchUp::Nothing => {}
        CatchUp::History { after, upto, more } => {
            if let Ok(messages) = read(ctx, room, after, upto, (upto - after) as usize).await {
                let f = history_frame(session.format, room, &plan.epoch, &messages, more);
                let _ = session.outbox.push_wait(f).await;
            } else {
                session.outbox.cut(crate::error::close::INTERNAL);
            }
        }
        CatchUp::Replay { after, upto } => {
            let mut next = after;
            while next < upto {
                let Ok(messages) = read(ctx, room, next, upto, CHUNK).await else {
                    session.outbox.cut(crate::error::close::INTERNAL);
                    break;
                };
                let Some(last) = messages.last() else { break };
                next = last.sequence;
                ctx.metrics.replayed.inc_by(messages.len() as u64);
                for m in &messages {
                    let f = msg::message(
                        session.format,
                        &MessageData::of(room.as_str(), &plan.epoch, m),
                    );
                    if session.outbox.push_wait(f).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
    if held {
        let cmd = ShardCmd::CaughtUp {
            room: room.clone(),
            client_id: session.client_id,
        };
        let _ = ctx.shards.send(room, cmd).await;
    }
}

async fn read(
    ctx: &Arc<Ctx>,
    room: &RoomName,
    after: u64,
    upto: u64,
    limit: usize,
) -> Result<Vec<StoredMessage>, StoreError> {
    let store = ctx.store.clone();
    let room = room.clone();
    tokio::task::spawn_blocking(move || store.read(&room, after, upto, limit))
        .await
        .map_err(|e| StoreError::Io(e.to_string()))?
}

pub fn history_frame(
    format: Format,
    room: &RoomName,
    epoch: &str,
    messages: &[StoredMessage],
    more: bool,
) -> Bytes {
    let data = msg::History {
        room: room.as_str(),
        messages: messages
            .iter()
            .map(|m| MessageData::of(room.as_str(), epoch, m))
            .collect(),
        more,
    };
    msg::encode(format, "history", None, Some(data))
}

/// The answer to a `history` request: up to `limit` messages after `since`.
pub async fn history(
    ctx: &Arc<Ctx>,
    room: &RoomName,
    since: u64,
    limit: usize,
    format: Format,
) -> Result<Bytes, StoreError> {
    let (epoch, messages, more) = history_page(ctx, room, since, limit).await?;
    Ok(history_frame(format, room, &epoch, &messages, more))
}

/// One page of history, shared with the HTTP API: (epoch, messages, more).
pub async fn history_page(
    ctx: &Arc<Ctx>,
    room: &RoomName,
    since: u64,
    limit: usize,
) -> Result<(String, Vec<StoredMessage>, bool), StoreError> {
    let store = ctx.store.clone();
    let room = room.clone();
    tokio::task::spawn_blocking(move || {
        let epoch = store.epoch(&room)?.unwrap_or_default();
        let mut messages = store.read(&room, since, u64::MAX, limit + 1)?;
        let more = messages.len() > limit;
        messages.truncate(limit);
        Ok((epoch, messages, more))
    })
    .await
    .map_err(|e| StoreError::Io(e.to_string()))?
}
