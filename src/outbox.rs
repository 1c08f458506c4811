//! The outbox: a session's bounded outbound queue of ready-made frames, the
//! one queue between everything that produces frames for a client (the room
//! core, the session's own replies) and the session's writer.
//!
//! Producers `try_push` and never wait: a full outbox means the client is not
//! keeping up, and the session is cut with 4008 (PROTOCOL.md §6). Catch-up
//! reads wait for room *before* reading (`wait_below`), so what they push fits.
//! Plain memory and a waker: no I/O, so the room core pushes into it directly
//! and the simulation drains it by hand.
//!
//! Worst-case memory per session: `max_frames` queue slots plus `max_bytes`
//! of frame data not shared with other sessions (broadcast frames are shared
//! `Bytes`, so a room's traffic is stored once however many outboxes hold it).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU16, Ordering};
use std::task::{Poll, Waker};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::error::close;

/// An item for the writer. `Close` is the last frame it sends.
pub enum Out {
    Frame(Bytes),
    Close(Bytes),
}

impl Out {
    fn len(&self) -> usize {
        match self {
            Out::Frame(b) | Out::Close(b) => b.len(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// Over the frame or byte bound: the caller cuts the session.
    Full,
    /// The session is closing; the frame was dropped.
    Closed,
}

/// Why not a channel: a push is one short, almost always uncontended lock
/// (only this session's writer ever competes for it), the writer is woken
/// only when the queue goes from empty to non-empty, and it takes everything
/// queued in one swap. A bounded mpsc pays a permit and a block lookup per
/// push and a locked permit release per received item.
pub struct Outbox {
    queue: Mutex<Queue>,
    max_frames: usize,
    max_bytes: usize,
    /// 0 while open; else the close code the writer must send.
    cut_code: AtomicU16,
    /// Signals a cut to whoever waits on something else meanwhile (a write
    /// stuck on the socket, an SSE stream); a writer waiting in `take` is
    /// woken by the closed queue itself.
    cut_signal: Notify,
    /// Wakes a waiting `push_wait` or `wait_below` when the writer has
    /// written frames; notified only while `Queue::space_waiters` says
    /// someone waits, so the writer's every write does not take its lock.
    space: Notify,
}

struct Queue {
    items: VecDeque<Out>,
    /// Frames and bytes queued or taken by the writer and not yet written:
    /// what the bounds limit.
    frames: usize,
    bytes: usize,
    closed: bool,
    /// The writer, when it waits for frames.
    waker: Option<Waker>,
    /// Callers of `push_wait` and `wait_below` that may wait for `space`.
    /// Counted under this lock before they look at the bounds, so a
    /// writer that frees room after they looked sees them.
    space_waiters: usize,
}

/// The writer's end of an outbox: the frames it has taken.
pub struct OutboxReceiver {
    taken: VecDeque<Out>,
}

/// A taken deque with more room than this is freed once written, so a burst
/// does not pin memory on an idle session.
const KEEP_CAPACITY: usize = 64;

impl OutboxReceiver {
    /// Waits for frames and takes all that are queued; false once the
    /// outbox is closed and empty.
    pub(crate) async fn take(&mut self, outbox: &Outbox) -> bool {
        poll_fn(|cx| {
            let mut q = outbox.queue.lock();
            if !q.items.is_empty() {
                std::mem::swap(&mut q.items, &mut self.taken);
                Poll::Ready(true)
            } else if q.closed {
                Poll::Ready(false)
            } else {
                match &q.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => q.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        })
        .await
    }

    /// The frames taken by the last `take`, to write in order.
    pub(crate) fn taken(&mut self) -> impl Iterator<Item = Out> + '_ {
        self.taken.drain(..)
    }

    /// Returns the room of what was written to the bounds. If nothing more
    /// was queued meanwhile, the session is quiet: both deques are freed, so
    /// an idle connection keeps no queue memory (the next push makes one, a
    /// small allocation beside the write's syscall). While frames keep
    /// coming, the taken deque keeps its room for the next swap, up to
    /// `KEEP_CAPACITY`, so a busy session does not allocate per write.
    pub(crate) fn written(&mut self, outbox: &Outbox, frames: usize, bytes: usize) {
        debug_assert!(
            self.taken.is_empty(),
            "written before the taken frames were"
        );
        let (quiet, waiters) = {
            let mut q = outbox.queue.lock();
            q.frames -= frames;
            q.bytes -= bytes;
            let quiet = q.items.is_empty().then(|| std::mem::take(&mut q.items));
            (quiet, q.space_waiters)
        };
        if quiet.is_some() || self.taken.capacity() > KEEP_CAPACITY {
            self.taken = VecDeque::new();
        }
        drop(quiet);
        if waiters > 0 {
            outbox.space.notify_waiters();
        }
    }

    /// Takes and drops whatever is queued, as a writer that wrote it would
    /// (benchmarks stand in for a writer with it).
    pub fn drain(&mut self, outbox: &Outbox) {
        let (frames, bytes) = {
            let mut q = outbox.queue.lock();
            std::mem::swap(&mut q.items, &mut self.taken);
            (self.taken.len(), self.taken.iter().map(Out::len).sum())
        };
        self.taken.clear();
        self.written(outbox, frames, bytes);
    }
}

impl Outbox {
    pub fn new(max_frames: usize, max_bytes: usize) -> (Outbox, OutboxReceiver) {
        let outbox = Outbox {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                frames: 0,
                bytes: 0,
                closed: false,
                waker: None,
                space_waiters: 0,
            }),
            max_frames: max_frames.max(1),
            max_bytes: max_bytes.max(1),
            cut_code: AtomicU16::new(0),
            cut_signal: Notify::new(),
            space: Notify::new(),
        };
        let rx = OutboxReceiver {
            taken: VecDeque::new(),
        };
        (outbox, rx)
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
        let len = out.len();
        let waker = {
            let mut q = self.queue.lock();
            if q.closed {
                return Err(PushError::Closed);
            }
            if q.frames >= self.max_frames || q.bytes + len > self.max_bytes {
                return Err(PushError::Full);
            }
            q.frames += 1;
            q.bytes += len;
            if matches!(out, Out::Close(_)) {
                q.closed = true;
            }
            q.items.push_back(out);
            if q.items.len() == 1 {
                q.waker.take()
            } else {
                None
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Queues a frame, waiting while the outbox is full. For the session's
    /// own replay, whose pace the client sets; fails once the session closes.
    pub async fn push_wait(&self, frame: Bytes) -> Result<(), PushError> {
        loop {
            // Made before the bounds are looked at: a write after that
            // notifies it (`notify_waiters` reaches every `Notified` made
            // before it, polled or not).
            let space = self.space.notified();
            let _waiting = SpaceWaiter::count(self);
            match self.try_push(frame.clone()) {
                Err(PushError::Full) => space.await,
                other => return other,
            }
        }
    }

    /// Waits until at most `frames` frames and `bytes` bytes are queued (or
    /// the session is cut). Catch-up reads call it before reading, so the
    /// chunk they produce fits without waiting.
    pub async fn wait_below(&self, frames: usize, bytes: usize) {
        loop {
            let space = self.space.notified();
            let _waiting = SpaceWaiter::count(self);
            {
                let q = self.queue.lock();
                if q.closed || (q.frames <= frames && q.bytes <= bytes) {
                    return;
                }
            }
            space.await;
        }
    }

    pub fn max_frames(&self) -> usize {
        self.max_frames
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
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
            let (dropped, writer) = {
                let mut q = self.queue.lock();
                q.closed = true;
                q.frames -= q.items.len();
                q.bytes -= q.items.iter().map(Out::len).sum::<usize>();
                (std::mem::take(&mut q.items), q.waker.take())
            };
            drop(dropped);
            // A writer waiting for frames finds the outbox closed and empty.
            if let Some(w) = writer {
                w.wake();
            }
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

    pub(crate) async fn cut_signalled(&self) {
        self.cut_signal.notified().await
    }

    /// Frames waiting to be written.
    pub fn depth(&self) -> usize {
        self.queue.lock().frames
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.queue.lock().bytes
    }

    /// Takes every queued frame out, as a writer would before writing them,
    /// and marks them written. For tests and simulations standing in for a
    /// client that reads.
    pub fn drain_frames(&self, rx: &mut OutboxReceiver) -> Vec<Bytes> {
        let (frames, bytes) = {
            let mut q = self.queue.lock();
            std::mem::swap(&mut q.items, &mut rx.taken);
            (rx.taken.len(), rx.taken.iter().map(Out::len).sum())
        };
        let out = rx
            .taken
            .drain(..)
            .map(|o| match o {
                Out::Frame(b) | Out::Close(b) => b,
            })
            .collect();
        rx.written(self, frames, bytes);
        out
    }
}

/// One caller that may wait for `space`, counted while it exists (also
/// when its future is dropped mid-wait).
struct SpaceWaiter<'a>(&'a Outbox);

impl<'a> SpaceWaiter<'a> {
    fn count(outbox: &'a Outbox) -> SpaceWaiter<'a> {
        outbox.queue.lock().space_waiters += 1;
        SpaceWaiter(outbox)
    }
}

impl Drop for SpaceWaiter<'_> {
    fn drop(&mut self) {
        self.0.queue.lock().space_waiters -= 1;
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
    fn written_frames_free_their_room() {
        let (o, mut rx) = Outbox::new(2, 100);
        o.try_push(Bytes::from(vec![0; 60])).unwrap();
        o.try_push(Bytes::from(vec![0; 30])).unwrap();
        assert_eq!(o.try_push(Bytes::new()), Err(PushError::Full));
        rx.drain(&o);
        assert_eq!(o.depth(), 0);
        assert_eq!(o.try_push(Bytes::from(vec![0; 100])), Ok(()));
    }

    #[test]
    fn a_quiet_outbox_keeps_no_buffer() {
        let (o, mut rx) = Outbox::new(64, 1 << 20);
        o.try_push(Bytes::from_static(b"a")).unwrap();
        rx.drain(&o);
        assert_eq!(o.queue.lock().items.capacity(), 0);
        assert_eq!(rx.taken.capacity(), 0);
    }

    #[test]
    fn a_busy_outbox_keeps_the_taken_deque_for_the_next_swap() {
        let (o, mut rx) = Outbox::new(64, 1 << 20);
        for _ in 0..8 {
            o.try_push(Bytes::from_static(b"a")).unwrap();
        }
        // The writer takes a batch; more is queued while it writes.
        let (frames, bytes) = {
            let mut q = o.queue.lock();
            std::mem::swap(&mut q.items, &mut rx.taken);
            (rx.taken.len(), rx.taken.len())
        };
        rx.taken.clear();
        o.try_push(Bytes::from_static(b"b")).unwrap();
        rx.written(&o, frames, bytes);
        assert!(rx.taken.capacity() >= 8);
        assert_eq!(o.depth(), 1);
    }

    #[test]
    fn nothing_is_accepted_after_the_close_frame() {
        let (o, _rx) = Outbox::new(8, 100);
        o.push_close(Bytes::from_static(b"bye")).unwrap();
        assert_eq!(o.try_push(Bytes::new()), Err(PushError::Closed));
    }

    /// The writer waits in `take` alone: a cut must wake it there, with
    /// the outbox closed and empty (what it then sends the close frame for).
    #[test]
    fn a_cut_wakes_a_writer_waiting_for_frames() {
        use futures_util::task::{waker, ArcWake};
        use std::future::Future;
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        use std::task::Context;

        #[derive(Default)]
        struct Flag(AtomicBool);
        impl ArcWake for Flag {
            fn wake_by_ref(f: &Arc<Self>) {
                f.0.store(true, Ordering::SeqCst);
            }
        }
        let (o, mut rx) = Outbox::new(8, 100);
        let flag = Arc::new(Flag::default());
        let waker = waker(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let mut take = Box::pin(rx.take(&o));
        assert!(take.as_mut().poll(&mut cx).is_pending());
        o.cut(4008);
        assert!(flag.0.load(Ordering::SeqCst), "the cut woke the writer");
        assert_eq!(take.as_mut().poll(&mut cx), Poll::Ready(false));
    }

    /// A replay waiting for room is woken by the write that frees it, and a
    /// waiter that gave up is no longer counted (writes stop notifying).
    #[tokio::test]
    async fn a_waiter_for_room_is_woken_by_a_write_and_uncounted_after() {
        let o = std::sync::Arc::new(Outbox::new(1, 100));
        o.0.try_push(Bytes::from_static(b"a")).unwrap();
        let waiter = {
            let o = o.clone();
            tokio::spawn(async move { o.0.push_wait(Bytes::from_static(b"b")).await })
        };
        while o.0.queue.lock().space_waiters == 0 {
            tokio::task::yield_now().await;
        }
        let (frames, bytes) = {
            let mut q = o.0.queue.lock();
            let taken = std::mem::take(&mut q.items);
            (taken.len(), taken.iter().map(Out::len).sum())
        };
        // The receiver is only the writer's deque: a fresh one does.
        let (_, mut rx) = Outbox::new(1, 1);
        rx.written(&o.0, frames, bytes);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert_eq!(o.0.depth(), 1);
        assert_eq!(o.0.queue.lock().space_waiters, 0);

        let gave_up = futures_util::FutureExt::now_or_never(o.0.wait_below(0, 0));
        assert!(gave_up.is_none());
        assert_eq!(o.0.queue.lock().space_waiters, 0);
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
