//! The writer task: drains the outbox, coalesces what is queued into one
//! vectored write, sends heartbeats and pings, and ends the connection when
//! the session is cut, a close was sent, or the client went silent.
//!
//! Invariant: no write waits unboundedly. Every write (frames or heartbeat)
//! races the cut signal and the silence deadline, so a peer that stopped
//! reading cannot keep a session — and its connection permit — past its cut
//! plus the close grace, or past twice the heartbeat of silence.

use std::future::{poll_fn, Future};
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::{sleep_until, Instant};

use super::Session;
use crate::outbox::{Out, Outbox, OutboxReceiver};
use crate::protocol::frame;

/// How long a cut session gets to take its close frame (PROTOCOL.md §6).
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// When the client was last heard from, in ms since `epoch`.
pub struct Liveness {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Liveness {
    pub fn new() -> Liveness {
        Liveness {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness::new()
    }
}

pub struct Heartbeat {
    pub interval: Duration,
    /// The `heartbeat` frame in the session's format.
    pub frame: Bytes,
}

#[derive(Debug, PartialEq, Eq)]
pub enum WriterEnd {
    /// Sent a close frame (ours or the echo of the client's).
    Closed,
    /// The client was silent for twice the heartbeat.
    Dead,
    /// Every sender is gone or the socket failed.
    Gone,
}

/// The writer. A plain fn returning the future, so each value lives in it
/// once; one timer serves the heartbeat and the silence deadline.
#[allow(clippy::manual_async_fn)]
pub fn run<W: AsyncWrite + Unpin + Send + 'static>(
    mut io: W,
    head: Option<Bytes>,
    mut rx: OutboxReceiver,
    session: Arc<Session>,
    heartbeat: Option<Heartbeat>,
    liveness: Arc<Liveness>,
    metrics: Arc<crate::metrics::Metrics>,
) -> impl Future<Output = WriterEnd> + Send {
    async move {
        let outbox = &session.peer.outbox;
        let silence = heartbeat.as_ref().map(|h| h.interval * 2);
        let mut next_beat = heartbeat.as_ref().map(|h| Instant::now() + h.interval);
        let guard = Guard {
            outbox,
            liveness: &liveness,
            silence,
        };
        let end = 'run: {
            if let Some(head) = head {
                // The handshake's 101 goes out first, whatever follows, and
                // in one write with what is queued already (`connected`);
                // alone when nothing is (echo), or after a cut.
                if !outbox.is_cut() {
                    let _ = rx.take(outbox).now_or_never();
                }
                let wrote = write_taken(&mut io, Some(head), &mut rx, &guard, &metrics);
                if let Some(end) = wrote.await {
                    break 'run end;
                }
            }
            // One timer for the writer's life, moved only when its deadline
            // does (a heartbeat sent, or the silence deadline coming first):
            // a busy writer wakes per write, and a timer made and dropped on
            // each wake cost a wheel insert and removal every time.
            let timer = sleep_until(Instant::now());
            tokio::pin!(timer);
            let mut armed: Option<Instant> = None;
            loop {
                // The next heartbeat, or the silence deadline if it comes first.
                let wake = next_beat.map(|beat| match silence {
                    Some(s) => beat.min(liveness.last() + s),
                    None => beat,
                });
                if let Some(at) = wake.filter(|&at| armed != Some(at)) {
                    timer.as_mut().reset(at);
                    armed = Some(at);
                }
                tokio::select! {
                    biased;
                    // A cut closes the outbox and wakes its taker: `take`
                    // then finds it closed and empty.
                    more = rx.take(outbox) => {
                        if !more {
                            // Closed and empty: only a cut empties a closed
                            // outbox, and the close frame is still owed.
                            if outbox.is_cut() {
                                break Box::pin(send_cut(&mut io, &mut rx, outbox, Instant::now() + CLOSE_GRACE)).await;
                            }
                            break WriterEnd::Gone;
                        }
                        if let Some(end) = write_taken(&mut io, None, &mut rx, &guard, &metrics).await {
                            break end;
                        }
                    }
                    _ = &mut timer, if armed.is_some() => {
                        armed = None;
                        if guard.silent() {
                            break WriterEnd::Dead;
                        }
                        let (Some(beat), Some(hb)) = (next_beat, &heartbeat) else { continue };
                        if Instant::now() < beat {
                            continue;
                        }
                        next_beat = Some(Instant::now() + hb.interval);
                        match guard.write(&mut io, &[hb.frame.clone(), frame::ping()]).await {
                            Written::Done => {}
                            Written::Failed => break WriterEnd::Gone,
                            Written::CutMeanwhile(deadline) => {
                                break Box::pin(send_cut(&mut io, &mut rx, outbox, deadline)).await
                            }
                        }
                    }
                }
            }
        };
        // Whatever ended the writer, nothing more can be delivered: make every
        // pusher see a closed outbox and wake the reader.
        outbox.cut(crate::error::close::GOING_AWAY);
        session.writer_done.notify_one();
        end
    }
}

/// Writes the frames the last `take` took, after `head` if there is one
/// (not a frame of the outbox: not counted against it); `Some` when the
/// writer is done.
async fn write_taken<W: AsyncWrite + Unpin>(
    io: &mut W,
    head: Option<Bytes>,
    rx: &mut OutboxReceiver,
    guard: &Guard<'_>,
    metrics: &crate::metrics::Metrics,
) -> Option<WriterEnd> {
    let outbox = guard.outbox;
    // Made for this write and dropped after it: an idle writer keeps no
    // batch.
    let mut closing = false;
    let mut batch: Vec<Bytes> = head.into_iter().collect();
    let skip = batch.len();
    batch.extend(rx.taken().map(|item| unpack(item, &mut closing)));
    let bytes = batched_bytes(&batch[skip..]);
    let frames = batch.len() - skip;
    if frames > 0 {
        metrics.outbox_depth.observe(frames as f64);
    }
    let outcome = guard.write(io, &batch).await;
    drop(batch);
    rx.written(outbox, frames, bytes);
    match outcome {
        Written::Done if closing => {
            let _ = tokio::time::timeout(CLOSE_GRACE, io.shutdown()).await;
            Some(WriterEnd::Closed)
        }
        Written::Done => None,
        Written::Failed => Some(WriterEnd::Gone),
        Written::CutMeanwhile(deadline) => Some(Box::pin(send_cut(io, rx, outbox, deadline)).await),
    }
}

/// How a guarded write ended.
enum Written {
    Done,
    /// The socket failed, or the peer was silent too long while stuck.
    Failed,
    /// The session was cut during the write; the write finished, and the
    /// close frame must follow by the deadline.
    CutMeanwhile(Instant),
}

/// What every write races.
struct Guard<'a> {
    outbox: &'a Outbox,
    liveness: &'a Liveness,
    /// Twice the heartbeat; `None` (echo) never declares a peer dead.
    silence: Option<Duration>,
}

impl Guard<'_> {
    fn silent(&self) -> bool {
        self.silence
            .is_some_and(|s| self.liveness.last() + s <= Instant::now())
    }

    /// Writes `bufs`: at once when the socket takes them all, the common
    /// case, with no timer and no allocation; else through the guarded
    /// path, boxed so that its timers and write state are not part of every
    /// idle writer's state.
    async fn write<W: AsyncWrite + Unpin>(&self, io: &mut W, bufs: &[Bytes]) -> Written {
        let total = batched_bytes(bufs);
        let slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
        let first = poll_fn(|cx| Poll::Ready(Pin::new(&mut *io).poll_write_vectored(cx, &slices)));
        let written = match first.await {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(_)) => return Written::Failed,
            Poll::Pending => 0,
        };
        drop(slices);
        if written == total {
            let flushed = poll_fn(|cx| Poll::Ready(Pin::new(&mut *io).poll_flush(cx)));
            match flushed.await {
                Poll::Ready(Ok(())) => return Written::Done,
                Poll::Ready(Err(_)) => return Written::Failed,
                Poll::Pending => {}
            }
        }
        let rest = unwritten(bufs, written);
        Box::pin(self.write_guarded(io, rest)).await
    }

    async fn write_guarded<W: AsyncWrite + Unpin>(&self, io: &mut W, bufs: Vec<Bytes>) -> Written {
        let write = write_all(io, &bufs);
        tokio::pin!(write);
        loop {
            let silent_until = self.silence.map(|s| self.liveness.last() + s);
            tokio::select! {
                biased;
                res = &mut write => return if res.is_ok() { Written::Done } else { Written::Failed },
                // A write stuck on a peer that also went silent: dead.
                _ = sleep_until_opt(silent_until) => {
                    if self.silent() {
                        return Written::Failed;
                    }
                }
                _ = self.outbox.cut_signalled() => {
                    // A close frame cannot start mid-frame: finish this write
                    // within the close grace first.
                    let deadline = Instant::now() + CLOSE_GRACE;
                    return match tokio::time::timeout_at(deadline, &mut write).await {
                        Ok(Ok(())) => Written::CutMeanwhile(deadline),
                        _ => Written::Failed,
                    };
                }
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What of `bufs` is left after the first `written` bytes (shared, not copied).
fn unwritten(bufs: &[Bytes], mut written: usize) -> Vec<Bytes> {
    let mut rest = Vec::with_capacity(bufs.len());
    for b in bufs {
        if written >= b.len() {
            written -= b.len();
        } else {
            rest.push(b.slice(written..));
            written = 0;
        }
    }
    rest
}

/// A taken item's bytes; notes whether it is the close frame.
fn unpack(item: Out, closing: &mut bool) -> Bytes {
    match item {
        Out::Frame(b) => b,
        Out::Close(b) => {
            *closing = true;
            b
        }
    }
}

fn batched_bytes(batch: &[Bytes]) -> usize {
    batch.iter().map(Bytes::len).sum()
}

async fn send_cut<W: AsyncWrite + Unpin>(
    io: &mut W,
    rx: &mut OutboxReceiver,
    outbox: &Outbox,
    deadline: Instant,
) -> WriterEnd {
    // `cut` already dropped what was queued; forget what was taken too.
    rx.drain(outbox);
    let code = outbox.cut_code();
    let close = frame::close(code, close_reason(code));
    let sent = tokio::time::timeout_at(deadline, async {
        write_all(io, &[close]).await?;
        io.shutdown().await
    })
    .await;
    match sent {
        Ok(Ok(())) => WriterEnd::Closed,
        _ => WriterEnd::Gone,
    }
}

pub fn close_reason(code: u16) -> &'static str {
    use crate::error::close::*;
    match code {
        GOING_AWAY => "server going away",
        PROTOCOL_ERROR => "protocol error",
        INVALID_PAYLOAD => "invalid UTF-8",
        TOO_BIG => "message too big",
        BAD_CREDENTIALS => "bad credentials",
        SLOW_CONSUMER => "slow consumer",
        TOO_MANY_REFUSALS => "too many refused messages",
        _ => "",
    }
}

/// Writes every buffer with as few syscalls as the kernel allows.
async fn write_all<W: AsyncWrite + Unpin>(io: &mut W, bufs: &[Bytes]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = io.write_vectored(rest).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    io.flush().await
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::sync::Notify;

    use super::*;
    use crate::outbox::Outbox;
    use crate::protocol::Format;
    use crate::rooms::Peer;

    /// A socket whose peer stopped reading: the first `accepts` writes go
    /// through, every later one waits for ever.
    struct Stalled {
        accepts: usize,
    }

    impl AsyncWrite for Stalled {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            if self.accepts == 0 {
                return Poll::Pending;
            }
            self.accepts -= 1;
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
    }

    /// A socket that takes everything and keeps each write's bytes apart.
    #[derive(Clone, Default)]
    struct Recorder(Arc<parking_lot::Mutex<Vec<Vec<u8>>>>);

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.0.lock().push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let write: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let n = write.len();
            self.0.lock().push(write);
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    const HEAD: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";

    /// Starts a writer with the 101 head on a recording socket; returns
    /// the socket once the writer has made `n` writes, and the writer.
    async fn writes_after(
        session: Arc<Session>,
        rx: OutboxReceiver,
        n: usize,
    ) -> (Recorder, tokio::task::JoinHandle<WriterEnd>) {
        let socket = Recorder::default();
        let writer = tokio::spawn(run(
            socket.clone(),
            Some(Bytes::from_static(HEAD)),
            rx,
            session,
            None,
            Arc::new(Liveness::new()),
            Arc::new(crate::metrics::Metrics::new()),
        ));
        while socket.0.lock().len() < n {
            tokio::task::yield_now().await;
        }
        (socket, writer)
    }

    #[tokio::test]
    async fn the_held_head_goes_out_with_the_queued_frames_in_one_write() {
        let (session, rx) = session();
        session
            .peer
            .outbox
            .try_push(Bytes::from_static(b"connected"))
            .unwrap();
        let (socket, writer) = writes_after(session.clone(), rx, 1).await;
        assert_eq!(*socket.0.lock(), vec![[HEAD, b"connected"].concat()]);
        assert_eq!(session.peer.outbox.depth(), 0);
        writer.abort();
    }

    #[tokio::test]
    async fn the_held_head_goes_out_alone_when_nothing_is_queued() {
        let (session, rx) = session();
        let (socket, writer) = writes_after(session.clone(), rx, 1).await;
        assert_eq!(*socket.0.lock(), vec![HEAD.to_vec()]);
        session
            .peer
            .outbox
            .try_push(Bytes::from_static(b"later"))
            .unwrap();
        while socket.0.lock().len() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(*socket.0.lock(), vec![HEAD.to_vec(), b"later".to_vec()]);
        writer.abort();
    }

    #[tokio::test]
    async fn the_held_head_goes_out_before_the_close_of_a_cut_session() {
        let (session, rx) = session();
        session
            .peer
            .outbox
            .try_push(Bytes::from_static(b"connected"))
            .unwrap();
        session.peer.outbox.cut(crate::error::close::SLOW_CONSUMER);
        let (socket, writer) = writes_after(session.clone(), rx, 2).await;
        let writes = socket.0.lock().clone();
        assert_eq!(writes[0], HEAD);
        // The close frame follows; the dropped frame does not.
        assert_eq!(writes[1][0], 0x88);
        assert!(!writes.concat().windows(9).any(|w| w == b"connected"));
        assert_eq!(writer.await.unwrap(), WriterEnd::Closed);
    }

    fn session() -> (Arc<Session>, OutboxReceiver) {
        let (outbox, rx) = Outbox::new(16, 1 << 16);
        let peer = Arc::new(Peer::new(1, "u".into(), Format::Json, outbox));
        let session = Arc::new(Session {
            peer,
            writer_done: Notify::new(),
        });
        (session, rx)
    }

    fn heartbeat() -> Option<Heartbeat> {
        Some(Heartbeat {
            interval: Duration::from_millis(100),
            frame: Bytes::from_static(b"beat"),
        })
    }

    /// Found from outside: the heartbeat's write was raced against nothing,
    /// so a silent peer that stopped reading kept its session for ever.
    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_stuck_on_a_silent_peer_ends_the_session() {
        let (session, rx) = session();
        let liveness = Arc::new(Liveness::new());
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let run = run(
            Stalled { accepts: 0 },
            None,
            rx,
            session,
            heartbeat(),
            liveness,
            metrics,
        );
        let end = tokio::time::timeout(Duration::from_secs(3600), run).await;
        assert_eq!(end.expect("the writer ends"), WriterEnd::Gone);
    }

    /// Found from outside (a publisher at shutdown got EOF with no close
    /// frame): a cut landing after the writer's select looked at the cut
    /// signal and before it took from the outbox found the outbox closed
    /// and empty, and the writer ended without the close frame. The window
    /// is a few instructions wide, so the cut races a busy writer from
    /// another thread many times.
    #[test]
    fn a_cut_racing_a_busy_writer_still_sends_the_close_frame() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        for round in 0..300u32 {
            let (session, rx) = session();
            let socket = Recorder::default();
            let writer = rt.spawn(run(
                socket.clone(),
                None,
                rx,
                session.clone(),
                None,
                Arc::new(Liveness::new()),
                Arc::new(crate::metrics::Metrics::new()),
            ));
            // Keep the writer cycling: a frame queued as soon as there is room.
            let pusher = {
                let session = session.clone();
                std::thread::spawn(move || loop {
                    match session.peer.outbox.try_push(Bytes::from_static(b"frame")) {
                        Err(crate::outbox::PushError::Closed) => break,
                        _ => std::hint::spin_loop(),
                    }
                })
            };
            while socket.0.lock().len() < 1 + (round as usize % 7) {
                std::hint::spin_loop();
            }
            session.peer.outbox.cut(crate::error::close::GOING_AWAY);
            pusher.join().unwrap();
            let end = rt.block_on(writer).unwrap();
            let writes = socket.0.lock().clone();
            assert_eq!(end, WriterEnd::Closed, "round {round}");
            assert_eq!(
                writes.last().unwrap()[0],
                0x88,
                "round {round}: close frame last"
            );
        }
    }

    /// A cut during a stuck heartbeat ends the session within the close
    /// grace, also while the peer still sends (so it is not silent).
    #[tokio::test(start_paused = true)]
    async fn a_cut_during_a_stuck_heartbeat_ends_the_session() {
        let (session, rx) = session();
        let liveness = Arc::new(Liveness::new());
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let alive = liveness.clone();
        let chatty = tokio::spawn(async move {
            loop {
                alive.touch();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let cutter = session.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            cutter.peer.outbox.cut(crate::error::close::SLOW_CONSUMER);
        });
        let started = Instant::now();
        let run = run(
            Stalled { accepts: 0 },
            None,
            rx,
            session,
            heartbeat(),
            liveness,
            metrics,
        );
        let end = tokio::time::timeout(Duration::from_secs(3600), run).await;
        assert_eq!(end.expect("the writer ends"), WriterEnd::Gone);
        assert!(started.elapsed() <= Duration::from_millis(500) + CLOSE_GRACE);
        chatty.abort();
    }
}
