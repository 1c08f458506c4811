//! Pages of history, read from the store off the runtime: the answer to a
//! `history` request and the HTTP history API. A page is bounded by count
//! and by bytes, so a reply always fits the outbox it goes into (`more`
//! tells the client to ask for the rest).

use std::sync::Arc;

use bytes::Bytes;

use super::Env;
use crate::message::StoredMessage;
use crate::protocol::server as msg;
use crate::protocol::{Format, RoomName};
use crate::store::{read_cost, ReadLimit, StoreError};

/// One page: (epoch, messages, more).
pub type Page = (String, Vec<StoredMessage>, bool);

/// Up to `limit` messages after `since`, and no more once their content and
/// names reach `max_bytes` (always at least one): (epoch, messages, more).
pub async fn history_page(
    env: &Env,
    room: &RoomName,
    since: u64,
    limit: usize,
    max_bytes: usize,
) -> Result<Page, StoreError> {
    let store = env.store.clone();
    let room = room.clone();
    let read = tokio::task::spawn_blocking(move || {
        let epoch = store.epoch(&room)?.unwrap_or_default();
        let bounds = ReadLimit {
            messages: limit + 1,
            bytes: max_bytes,
        };
        let mut messages = store.read(&room, since, u64::MAX, bounds)?;
        let mut more = messages.len() > limit;
        messages.truncate(limit);
        let bytes: usize = messages.iter().map(read_cost).sum();
        if !more && bytes >= max_bytes {
            // Stopped by size: is there anything after the page?
            let last = messages.last().map_or(since, |m| m.sequence);
            more = !store
                .read(&room, last, u64::MAX, ReadLimit::messages(1))?
                .is_empty();
        }
        Ok((epoch, messages, more))
    });
    match read.await {
        Ok(page) => page,
        Err(join) => Err(StoreError::Panicked(join.to_string())),
    }
}

/// The `history` frame answering a request: at most `max_bytes` encoded
/// (halving the page until it fits; one message always goes).
pub async fn history_frame(
    env: &Arc<Env>,
    room: &RoomName,
    since: u64,
    limit: usize,
    format: Format,
    max_bytes: usize,
) -> Result<Bytes, StoreError> {
    let (epoch, messages, more) = history_page(env, room, since, limit, max_bytes).await?;
    let mut n = messages.len();
    loop {
        let cut = n < messages.len();
        let f = msg::history(format, room.as_str(), &epoch, &messages[..n], more || cut);
        if f.len() <= max_bytes || n <= 1 {
            return Ok(f);
        }
        n /= 2;
    }
}
