//! Client frames off the socket (RFC 6455 §5.2), holding no buffer (and no
//! future state) while the connection is idle.
//!
//! A session reads only when the socket is readable; the read buffer is
//! allocated then and given back as soon as it holds no partial frame, so a
//! quiet connection costs no read buffer at all (fastwebsockets keeps an
//! 8 KiB buffer per connection for its whole life). Parsing is strict about
//! what a server must refuse: reserved bits, unknown opcodes, unmasked
//! frames, fragmented or oversized control frames and 64-bit lengths with
//! the top bit set close with 1002, a frame over the size limit with 1009.
//! Pure apart from `ByteSource`, so it is fuzzed on its own.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncRead;
use tokio::net::tcp::OwnedReadHalf;

use crate::error::close;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<OpCode> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// One unmasked frame from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: OpCode,
    pub payload: Bytes,
}

#[derive(Debug)]
pub enum ReadError {
    /// The connection ended (cleanly or not) before a whole frame.
    Closed,
    Io(io::Error),
    /// A frame the server must refuse; the close code to send.
    Protocol(u16),
}

/// Where frames come from: reads into the buffer only once data is there.
/// Poll-based, so a reader waiting for data holds no future state of its
/// own (that state is memory in every idle session).
pub trait ByteSource: Send {
    /// Appends what is there to `buf` once there is something; Ok(0) at EOF.
    fn poll_read_more(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>>;
}

/// Most bytes read per read call.
const READ_CHUNK: usize = 4096;

/// A plain TCP read half: waits for readiness with no buffer, then reads.
///
/// The read goes through `AsyncRead::poll_read`, not `try_read_buf`: a read
/// that fills less than the buffer shows the socket is drained, and only
/// `poll_read` then clears the readiness tokio keeps. After `try_read_buf`
/// the readiness stayed set, so every read of a client's frames was
/// followed by a second `recv` that found nothing (`EAGAIN`): one wasted
/// syscall per wake-up of every reader, one per connection in a join storm.
impl ByteSource for OwnedReadHalf {
    fn poll_read_more(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        ready!(self.as_ref().poll_read_ready(cx))?;
        buf.reserve(READ_CHUNK);
        let read = tokio_util::io::poll_read_buf(Pin::new(self), cx, buf);
        if read.is_pending() && buf.is_empty() {
            // Readiness was stale: wait again without the buffer.
            *buf = BytesMut::new();
        }
        read
    }
}

/// Any other stream (TLS): reads through its own buffer.
pub struct Stream<R>(pub R);

impl<R: AsyncRead + Unpin + Send> ByteSource for Stream<R> {
    fn poll_read_more(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        buf.reserve(READ_CHUNK);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.0), cx, buf)
    }
}

/// Bytes already in memory (tests, fuzzing), then EOF.
impl ByteSource for &[u8] {
    fn poll_read_more(
        &mut self,
        _: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        let n = self.len().min(READ_CHUNK);
        buf.extend_from_slice(&self[..n]);
        *self = &self[n..];
        Poll::Ready(Ok(n))
    }
}

pub struct FrameReader<S> {
    source: S,
    /// Bytes read and not yet parsed; empty (no allocation) between frames.
    buf: BytesMut,
    /// Largest frame payload accepted (inclusive).
    max_frame: usize,
}

impl<S: ByteSource> FrameReader<S> {
    /// `early`: bytes that arrived with the handshake.
    pub fn new(source: S, early: &[u8], max_frame: usize) -> FrameReader<S> {
        FrameReader {
            source,
            buf: BytesMut::from(early),
            max_frame,
        }
    }

    /// The next frame. Cancel-safe: what was read stays in the buffer.
    pub fn next_frame(&mut self) -> impl Future<Output = Result<Frame, ReadError>> + Send + '_ {
        std::future::poll_fn(move |cx| self.poll_next(cx))
    }

    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<Frame, ReadError>> {
        loop {
            if let Some(frame) = parse(&mut self.buf, self.max_frame)? {
                if self.buf.is_empty() {
                    // Give the buffer back while the connection is quiet.
                    self.buf = BytesMut::new();
                }
                return Poll::Ready(Ok(frame));
            }
            match ready!(self.source.poll_read_more(cx, &mut self.buf)) {
                Ok(0) => return Poll::Ready(Err(ReadError::Closed)),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(ReadError::Io(e))),
            }
        }
    }

    /// Reads and drops whatever the client still sends, until it closes.
    pub async fn drain(&mut self) {
        let mut sink = BytesMut::new();
        std::future::poll_fn(|cx| loop {
            match ready!(self.source.poll_read_more(cx, &mut sink)) {
                Ok(n) if n > 0 => sink.clear(),
                _ => return Poll::Ready(()),
            }
        })
        .await
    }
}

/// Parses one frame from the front of `buf` (consuming it), or None when
/// more bytes are needed.
pub fn parse(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Frame>, ReadError> {
    let refuse = |code| Err(ReadError::Protocol(code));
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let fin = b0 & 0x80 != 0;
    if b0 & 0x70 != 0 {
        return refuse(close::PROTOCOL_ERROR);
    }
    let Some(opcode) = OpCode::from_bits(b0 & 0x0F) else {
        return refuse(close::PROTOCOL_ERROR);
    };
    // RFC 6455 §5.1: a server must fail the connection on an unmasked frame.
    if b1 & 0x80 == 0 {
        return refuse(close::PROTOCOL_ERROR);
    }
    let (len, head) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let len = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
            if len >> 63 != 0 {
                return refuse(close::PROTOCOL_ERROR);
            }
            (len, 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode.is_control() && (!fin || len > 125) {
        return refuse(close::PROTOCOL_ERROR);
    }
    if len > max_frame as u64 {
        return refuse(close::TOO_BIG);
    }
    let len = len as usize;
    if buf.len() < head + 4 + len {
        // Room for the rest of this frame, not more than it needs.
        buf.reserve(head + 4 + len - buf.len());
        return Ok(None);
    }
    let mask: [u8; 4] = buf[head..head + 4].try_into().expect("4 bytes");
    buf.advance(head + 4);
    let mut payload = buf.split_to(len);
    unmask(&mut payload, mask);
    Ok(Some(Frame {
        fin,
        opcode,
        payload: payload.freeze(),
    }))
}

fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes(c.try_into().expect("8 bytes")) ^ wide;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// The close code in a client's close frame, checked (RFC 6455 §7.4): the
/// reply to send — the echo of a valid close, or 1002 / 1007.
pub fn close_reply(payload: &[u8]) -> Result<Bytes, u16> {
    match payload.len() {
        0 => return Ok(Bytes::new()),
        1 => return Err(close::PROTOCOL_ERROR),
        _ => {}
    }
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    if std::str::from_utf8(&payload[2..]).is_err() {
        return Err(close::INVALID_PAYLOAD);
    }
    let allowed = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
    if !allowed {
        return Err(close::PROTOCOL_ERROR);
    }
    Ok(Bytes::copy_from_slice(payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | op];
        let len = payload.len();
        if len < 126 {
            f.push(0x80 | len as u8);
        } else if len < 65536 {
            f.push(0x80 | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let key = [1u8, 2, 3, 4];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        f
    }

    fn read_all(bytes: &[u8], max: usize) -> (Vec<Frame>, Option<ReadError>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut r = FrameReader::new(bytes, &[], max);
            let mut frames = Vec::new();
            loop {
                match r.next_frame().await {
                    Ok(f) => frames.push(f),
                    Err(ReadError::Closed) => return (frames, None),
                    Err(e) => return (frames, Some(e)),
                }
            }
        })
    }

    #[test]
    fn reads_frames_of_every_length_encoding_split_anywhere() {
        let mut stream = Vec::new();
        for len in [0, 5, 125, 126, 1000, 65535, 65536, 70_000] {
            stream.extend(masked(true, 2, &vec![7u8; len]));
        }
        stream.extend(masked(false, 1, b"he"));
        stream.extend(masked(true, 9, b"ping"));
        stream.extend(masked(true, 0, b"llo"));
        let (frames, err) = read_all(&stream, 1 << 20);
        assert!(err.is_none(), "{err:?}");
        let lens: Vec<usize> = frames.iter().map(|f| f.payload.len()).collect();
        assert_eq!(lens, [0, 5, 125, 126, 1000, 65535, 65536, 70_000, 2, 4, 3]);
        assert!(frames[..8]
            .iter()
            .all(|f| f.payload.iter().all(|b| *b == 7)));
        assert_eq!((frames[8].fin, frames[8].opcode), (false, OpCode::Text));
        assert_eq!(&frames[9].payload[..], b"ping");
        assert_eq!(&frames[10].payload[..], b"llo");
    }

    #[test]
    fn refuses_what_a_server_must() {
        let code = |bytes: &[u8], max| match read_all(bytes, max).1 {
            Some(ReadError::Protocol(c)) => c,
            other => panic!("expected a refusal, got {other:?}"),
        };
        let mut unmasked = masked(true, 1, b"hi");
        unmasked[1] &= 0x7F;
        assert_eq!(code(&unmasked[..4], 100), 1002, "unmasked");
        let mut rsv = masked(true, 1, b"hi");
        rsv[0] |= 0x40;
        assert_eq!(code(&rsv, 100), 1002, "reserved bit");
        assert_eq!(code(&masked(true, 3, b""), 100), 1002, "unknown opcode");
        assert_eq!(code(&masked(false, 9, b""), 100), 1002, "fragmented ping");
        assert_eq!(code(&masked(true, 9, &[0; 126]), 1000), 1002, "long ping");
        assert_eq!(code(&masked(true, 2, &[0; 101]), 100), 1009, "too big");
        let mut huge = vec![0x82, 0xFF];
        huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(code(&huge, 100), 1002, "64-bit length with the top bit");
    }

    #[test]
    fn an_idle_reader_holds_no_buffer() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let stream = masked(true, 1, b"hello");
        let mut r = FrameReader::new(&stream[..], &[], 100);
        let f = rt.block_on(r.next_frame()).unwrap();
        assert_eq!(&f.payload[..], b"hello");
        assert_eq!(r.buf.capacity(), 0);
    }

    #[test]
    fn close_codes_are_checked() {
        assert_eq!(close_reply(&[]).unwrap(), Bytes::new());
        assert_eq!(close_reply(&[3]), Err(1002));
        assert_eq!(
            &close_reply(&[0x03, 0xE8, b'o', b'k']).unwrap()[..],
            &[0x03, 0xE8, b'o', b'k']
        );
        for bad in [999u16, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert_eq!(close_reply(&bad.to_be_bytes()), Err(1002), "{bad}");
        }
        assert_eq!(close_reply(&[0x03, 0xE8, 0xFF]), Err(1007));
    }
}
