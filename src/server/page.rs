//! A page of the HTTP history API (`GET /api/rooms/{room}/messages`):
//! at most `limit` messages and `--max-page-bytes` of their content and
//! names (always at least one message), `more` when newer ones exist beyond
//! it. A page that takes more than one store read is streamed: the store is
//! read a piece at a time, as hyper takes the body, so a client that asks
//! for a big page and never reads it costs a piece and hyper's buffer, not
//! the page.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};

use super::http::{full, Body};
use crate::protocol::server::MessageData;
use crate::protocol::RoomName;
use crate::session::{history_page, Env};
use crate::store::{read_cost, StoreError};

/// Content and name bytes read from the store per piece of a page.
const PIECE_BYTES: usize = 32 * 1024;

/// The page of `room` after `since`. The first piece is read before the
/// answer, so a store that fails gets a 500, not a cut-off 200.
pub async fn respond(
    env: Arc<Env>,
    room: RoomName,
    since: u64,
    limit: usize,
    max_bytes: usize,
) -> Result<Response<Body>, StoreError> {
    let mut pager = Pager {
        env,
        room,
        after: since,
        messages_left: limit.max(1),
        bytes_left: max_bytes,
        epoch: None,
        sent: None,
    };
    let (first, done) = pager.next().await?;
    let body = if done {
        full(first)
    } else {
        PageBody {
            first: Some(first),
            pager: Some(pager),
            reading: None,
        }
        .boxed_unsync()
    };
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::OK;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

/// Where a page is: what it may still hold and where the store read is.
struct Pager {
    env: Arc<Env>,
    room: RoomName,
    /// The sequence of the last message read.
    after: u64,
    messages_left: usize,
    bytes_left: usize,
    /// The room's epoch at the first read (message ids are made from it).
    epoch: Option<String>,
    /// Messages encoded so far; `None` before the page's opening.
    sent: Option<usize>,
}

impl Pager {
    /// Reads and encodes the next piece of the page's JSON; `true` with
    /// the last one (which closes the object).
    async fn next(&mut self) -> Result<(Bytes, bool), StoreError> {
        let budget = self.bytes_left.min(PIECE_BYTES);
        let (epoch, messages, more) = history_page(
            &self.env,
            &self.room,
            self.after,
            self.messages_left,
            budget,
        )
        .await?;
        let epoch = self.epoch.get_or_insert(epoch);
        let mut out = Vec::with_capacity(budget + budget / 4 + 256);
        let sent = self.sent.get_or_insert_with(|| {
            out.extend_from_slice(b"{\"room\":");
            serde_json::to_writer(&mut out, self.room.as_str()).expect("a string serializes");
            out.extend_from_slice(b",\"messages\":[");
            0
        });
        for m in &messages {
            if *sent > 0 {
                out.push(b',');
            }
            *sent += 1;
            let data = MessageData::of(self.room.as_str(), epoch, m);
            serde_json::to_writer(&mut out, &data).expect("messages serialize");
            self.bytes_left = self.bytes_left.saturating_sub(read_cost(m));
        }
        self.messages_left = self.messages_left.saturating_sub(messages.len());
        if let Some(last) = messages.last() {
            self.after = last.sequence;
        }
        // Stopped by the piece's budget alone: the page goes on.
        let done = !more || self.messages_left == 0 || self.bytes_left == 0;
        if done {
            out.extend_from_slice(if more {
                b"],\"more\":true}"
            } else {
                b"],\"more\":false}"
            });
        }
        Ok((Bytes::from(out), done))
    }
}

type Reading = Pin<Box<dyn Future<Output = (Pager, Result<(Bytes, bool), StoreError>)> + Send>>;

/// The streamed body: the first piece, then one store read per piece
/// asked for. Dropped with its connection, it reads nothing more.
struct PageBody {
    first: Option<Bytes>,
    /// `None` once the last piece is read (or while one is being read).
    pager: Option<Pager>,
    reading: Option<Reading>,
}

impl HttpBody for PageBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        let reading = match &mut this.reading {
            Some(r) => r,
            None => {
                let Some(mut pager) = this.pager.take() else {
                    return Poll::Ready(None);
                };
                this.reading.insert(Box::pin(async move {
                    let piece = pager.next().await;
                    (pager, piece)
                }))
            }
        };
        let (pager, piece) = ready!(reading.as_mut().poll(cx));
        this.reading = None;
        match piece {
            Ok((bytes, done)) => {
                if !done {
                    this.pager = Some(pager);
                }
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Err(e) => {
                // The 200 is out: all that is left is to cut the body short.
                tracing::error!(cause = %e, room = %pager.room, "history page read failed");
                pager.env.metrics.store_errors.inc();
                Poll::Ready(Some(Err(io::Error::other(e))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.pager.is_none() && self.reading.is_none()
    }
}
