//! The outbox: a session's bounded outbound queue of ready-made frames.
//!
//! Shards `try_push` and never wait: a full outbox means the client is not
//! keeping up, and the session is cut with 4008 (PROTOCOL.md §6). Only the
//! session's own replay, which runs on its own task, may wait for room.
//!
//! Worst-case memory per session: `max_frames` queue slots plus `max_bytes`
//! of frame data not shared with other sessions (broadcast frames are shared
//! `Bytes`, so a room's traffic is stored once however many outboxes hold it).

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use crate::error::close;

/// An item for the writer. `Close` is the last frame it sends.
pub enum Out {
    Frame(Bytes),
    Close(Bytes),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// Over the frame or byte bound: the caller cuts the session.
    Full,
    /// The session is closing; the frame was dropped.
    Closed,
}

pub struct Outbox {
    tx: mpsc::Sender<Out>,
    /// Bytes queued and not yet written; bounded by `max_bytes`.
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    /// 0 while open; else the close code the writer must send.
    cut_code: AtomicU16,
    /// Wakes the writer when the session is cut.
    cut_signal: Notify,
    /// Wakes a waiting `push_wait` when the writer has drained frames.
    space: Notify,
}

/// The writer's end of an outbox.
pub struct OutboxReceiver {
    pub(super) rx: mpsc::Receiver<Out>,
}

impl OutboxReceiver {
    /// Drops everything queued (benchmarks stand in for a writer with it).
    pub fn drain(&mut self) {
        while self.rx.try_recv().is_ok() {}
    }
}

impl Outbox {
    pub fn new(max_frames: usize, max_bytes: usize) -> (Outbox, OutboxReceiver) {
        let (tx, rx) = mpsc::channel(max_frames.max(1));
        let outbox = Outbox {
            tx,
            queued_bytes: AtomicUsize::new(0),
            max_bytes: max_bytes.max(1),
            cut_code: AtomicU16::new(0),
            cut_signal: Notify::new(),
            space: Notify::new(),
        };
        (outbox, OutboxReceiver { rx })
    }

    /// Queues a frame if it fits; never waits.
    pub fn try_push(&self, frame: Bytes) -> Result<(), PushError> {
        self.try_send(Out::Frame(frame))
    }

    /// Queues the final close frame after what is already queued (the echo of
    /// a client's close); nothing is accepted after it.
    pub fn push_close(&self, frame: Bytes) -> Result<(), PushError> {
        self.try_send(Out::Close(frame))
    }

    fn try_send(&self, out: Out) -> Result<(), PushError> {
        if self.is_cut() {
            return Err(PushError::Closed);
        }
        let len = match &out {
            Out::Frame(b) | Out::Close(b) => b.len(),
        };
        let before = self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if before + len > self.max_bytes {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            return Err(PushError::Full);
        }
        match self.tx.try_send(out) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                Err(match e {
                    mpsc::error::TrySendError::Full(_) => PushError::Full,
                    mpsc::error::TrySendError::Closed(_) => PushError::Closed,
                })
            }
        }
    }

    /// Queues a frame, waiting while the outbox is full. For the session's
    /// own replay, whose pace the client sets; fails once the session closes.
    pub async fn push_wait(&self, frame: Bytes) -> Result<(), PushError> {
        loop {
            let space = self.space.notified();
            match self.try_push(frame.clone()) {
                Err(PushError::Full) => space.await,
                other => return other,
            }
        }
    }

    /// Pushes a frame the session itself owes the client (reply, error);
    /// a full outbox cuts the session as for broadcasts.
    pub fn push_or_cut(&self, frame: Bytes) -> bool {
        match self.try_push(frame) {
            Ok(()) => true,
            Err(PushError::Full) => {
                self.cut(close::SLOW_CONSUMER);
                false
            }
            Err(PushError::Closed) => false,
        }
    }

    /// Closes the session with `code`: queued frames are dropped and the
    /// writer sends the close frame. The first cut wins; returns whether this
    /// call was it.
    pub fn cut(&self, code: u16) -> bool {
        let first = self
            .cut_code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if first {
            self.cut_signal.notify_one();
            self.space.notify_waiters();
        }
        first
    }

    pub fn is_cut(&self) -> bool {
        self.cut_code.load(Ordering::Acquire) != 0
    }

    pub fn cut_code(&self) -> u16 {
        self.cut_code.load(Ordering::Acquire)
    }

    pub(super) async fn cut_signalled(&self) {
        self.cut_signal.notified().await
    }

    pub(super) fn written(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.space.notify_waiters();
    }

    /// Frames waiting to be written.
    pub fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_frames_and_bytes() {
        let (o, _rx) = Outbox::new(2, 100);
        assert_eq!(o.try_push(Bytes::from(vec![0; 60])), Ok(()));
        assert_eq!(o.try_push(Bytes::from(vec![0; 60])), Err(PushError::Full));
        assert_eq!(o.try_push(Bytes::from(vec![0; 10])), Ok(()));
        assert_eq!(o.try_push(Bytes::from(vec![0; 1])), Err(PushError::Full));
    }

    #[test]
    fn first_cut_wins_and_closes() {
        let (o, _rx) = Outbox::new(2, 100);
        assert!(o.cut(4008));
        assert!(!o.cut(1001));
        assert_eq!(o.cut_code(), 4008);
        assert_eq!(o.try_push(Bytes::new()), Err(PushError::Closed));
    }
}
