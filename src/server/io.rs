//! The socket under hyper, with a deadline on writes (`--write-timeout-ms`).
//!
//! Once a write blocks (the client is not reading), the client has the
//! timeout to catch up: everything hyper has buffered must reach the kernel
//! by then, or the write fails and hyper ends the connection. A completed
//! flush (hyper's buffer empty) disarms it. hyper refills its buffer from a
//! streamed body as it drains, so for a streamed page that is the rest of
//! the page. This bounds how long an unread response holds its memory and
//! its connection slot. An upgraded WebSocket is taken out
//! of this wrapper (`into_inner`): sessions keep their own deadlines.
//!
//! A `101 Switching Protocols` head is held, not written: whoever takes the
//! socket back after the upgrade gets it from `into_inner` and sends it with
//! the session's first frame (`connected`), in one write. A connection that
//! joins then costs the server two writes (101 and `connected`, then
//! `joined`), not three — in a join storm, each write is a loopback transmit
//! and a wake-up of the client. The head is released before anything else
//! written through this wrapper, and on shutdown; a flush leaves it held.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

pub struct WriteDeadline<I> {
    io: I,
    timeout: Duration,
    /// Armed by the first write that blocks, cleared by a completed flush.
    timer: Option<Pin<Box<Sleep>>>,
    /// Counts connections ended by the deadline.
    expired: IntCounter,
    /// A 101 head hyper wrote, not yet on the wire.
    held: Option<Bytes>,
}

/// How hyper's answer to an upgrade starts.
const SWITCHING: &[u8] = b"HTTP/1.1 101 ";

impl<I> WriteDeadline<I> {
    pub fn new(io: I, timeout: Duration, expired: IntCounter) -> Self {
        WriteDeadline {
            io,
            timeout,
            timer: None,
            expired,
            held: None,
        }
    }

    /// The socket, and the 101 head still to be sent on it, if any.
    pub fn into_inner(self) -> (I, Option<Bytes>) {
        (self.io, self.held)
    }

    /// The inner write is pending: wait on the deadline too, and fail
    /// once it has passed.
    fn blocked<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // Count once: hyper may poll again before it gives up.
        self.timer = Some(Box::pin(tokio::time::sleep(Duration::MAX)));
        self.expired.inc();
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client did not read the response in time",
        )))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteDeadline<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> WriteDeadline<I> {
    /// Writes out a held head before anything else goes on the wire.
    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(held) = self.held.as_mut() {
            match Pin::new(&mut self.io).poll_write(cx, held) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    held.advance(n);
                    if held.is_empty() {
                        self.held = None;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return self.blocked(cx),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.held.is_none() && buf.starts_with(SWITCHING) {
            self.held = Some(Bytes::copy_from_slice(buf));
            return Poll::Ready(Ok(buf.len()));
        }
        std::task::ready!(self.poll_release(cx))?;
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Pending => self.blocked(cx),
            ready => ready,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs.iter().find(|b| !b.is_empty());
        if self.held.is_none() && first.is_some_and(|b| b.starts_with(SWITCHING)) {
            let mut head = Vec::with_capacity(bufs.iter().map(|b| b.len()).sum());
            for b in bufs {
                head.extend_from_slice(b);
            }
            let n = head.len();
            self.held = Some(head.into());
            return Poll::Ready(Ok(n));
        }
        std::task::ready!(self.poll_release(cx))?;
        match Pin::new(&mut self.io).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.blocked(cx),
            ready => ready,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                self.timer = None;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => self.blocked(cx),
            err => err,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_release(cx))?;
        match Pin::new(&mut self.io).poll_shutdown(cx) {
            Poll::Pending => self.blocked(cx),
            ready => ready,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_takes_fails_after_the_timeout() {
        let (near, _far) = tokio::io::duplex(16);
        let expired = IntCounter::new("t", "t").unwrap();
        let mut io = WriteDeadline::new(near, Duration::from_secs(30), expired.clone());
        let started = tokio::time::Instant::now();
        let err = io.write_all(&[0u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert_eq!(expired.get(), 1);
    }

    #[tokio::test]
    async fn a_switching_head_is_held_until_taken_back() {
        use tokio::io::AsyncReadExt;
        let (near, mut far) = tokio::io::duplex(1024);
        let expired = IntCounter::new("t", "t").unwrap();
        let mut io = WriteDeadline::new(near, Duration::from_secs(30), expired);
        let head = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n";
        io.write_all(head).await.unwrap();
        io.flush().await.unwrap();
        let (mut near, held) = io.into_inner();
        assert_eq!(held.as_deref(), Some(&head[..]));
        // Nothing reached the peer: the head goes out with the first frame.
        near.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(far.read(&mut buf).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_held_head_goes_out_before_a_later_write() {
        use tokio::io::AsyncReadExt;
        let (near, mut far) = tokio::io::duplex(1024);
        let expired = IntCounter::new("t", "t").unwrap();
        let mut io = WriteDeadline::new(near, Duration::from_secs(30), expired);
        io.write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
            .await
            .unwrap();
        io.write_all(b"after").await.unwrap();
        let (_near, held) = io.into_inner();
        assert!(held.is_none());
        let mut buf = vec![0u8; 41];
        far.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf[..], b"HTTP/1.1 101 Switching Protocols\r\n\r\nafter");
    }

    #[tokio::test]
    async fn other_responses_are_written_at_once() {
        use tokio::io::AsyncReadExt;
        let (near, mut far) = tokio::io::duplex(1024);
        let expired = IntCounter::new("t", "t").unwrap();
        let mut io = WriteDeadline::new(near, Duration::from_secs(30), expired);
        io.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        let mut buf = vec![0u8; 19];
        far.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf[..], b"HTTP/1.1 200 OK\r\n\r\n");
        assert!(io.into_inner().1.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_completed_flush_disarms_the_deadline() {
        use tokio::io::AsyncReadExt;
        let (near, mut far) = tokio::io::duplex(16);
        let expired = IntCounter::new("t", "t").unwrap();
        let mut io = WriteDeadline::new(near, Duration::from_secs(30), expired.clone());
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 32];
            // Takes the first 32 bytes late, then the next 32 late again:
            // each wait is under the timeout, their sum is over it.
            for _ in 0..2 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                far.read_exact(&mut buf).await.unwrap();
            }
            far
        });
        for _ in 0..2 {
            io.write_all(&[1u8; 32]).await.unwrap();
            io.flush().await.unwrap();
        }
        drop(reader.await.unwrap());
        assert_eq!(expired.get(), 0);
    }
}
