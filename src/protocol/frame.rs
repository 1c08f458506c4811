//! Server→client WebSocket frames, framed once and shared.
//!
//! Server frames are never masked, so the exact bytes of a frame (header and
//! payload) are the same for every recipient. parlor encodes a message once
//! per format into one `Bytes` that already carries its WebSocket header;
//! fan-out clones that `Bytes` (a reference-count increment) into each
//! member's outbox and the writer hands the buffers to the kernel as they are.
//! Reading (unmasking, validation, control frames) stays with fastwebsockets.

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode};

/// Longest WebSocket header of an unmasked frame: 2 + 8 length bytes.
pub const MAX_HEADER: usize = 10;

/// Writes the header for a final, unmasked frame of `len` payload bytes into
/// `head` and returns how many bytes it used.
fn write_header(opcode: OpCode, len: usize, head: &mut [u8; MAX_HEADER]) -> usize {
    head[0] = 0x80 | opcode as u8;
    if len < 126 {
        head[1] = len as u8;
        2
    } else if len < 65536 {
        head[1] = 126;
        head[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        head[1] = 127;
        head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// A buffer whose first `MAX_HEADER` bytes are reserved for the frame header,
/// so a payload can be serialized straight into it.
pub fn payload_buffer(capacity: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(MAX_HEADER + capacity);
    v.resize(MAX_HEADER, 0);
    v
}

/// Turns a `payload_buffer` filled with a payload into a complete frame.
pub fn finish(opcode: OpCode, mut buf: Vec<u8>) -> Bytes {
    let len = buf.len() - MAX_HEADER;
    let mut head = [0u8; MAX_HEADER];
    let n = write_header(opcode, len, &mut head);
    let start = MAX_HEADER - n;
    buf[start..MAX_HEADER].copy_from_slice(&head[..n]);
    Bytes::from(buf).slice(start..)
}

/// A complete frame around a copy of `payload`.
pub fn frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut buf = payload_buffer(payload.len());
    buf.extend_from_slice(payload);
    finish(opcode, buf)
}

/// A close frame with a status code and a short reason (≤ 123 bytes).
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut reason = reason.as_bytes();
    if reason.len() > 123 {
        reason = &reason[..123];
    }
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason);
    frame(OpCode::Close, &payload)
}

pub fn ping() -> Bytes {
    frame(OpCode::Ping, b"")
}

/// Frames fastwebsockets obliges us to send (pong, close echo), as bytes.
pub fn from_fastwebsockets(f: &Frame<'_>) -> Bytes {
    frame(f.opcode, &f.payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lengths_match_rfc6455() {
        for (len, head_len, second) in [
            (0, 2, 0u8),
            (125, 2, 125),
            (126, 4, 126),
            (65535, 4, 126),
            (65536, 10, 127),
        ] {
            let f = frame(OpCode::Binary, &vec![7u8; len]);
            assert_eq!(f.len(), head_len + len);
            assert_eq!(f[0], 0x82);
            assert_eq!(f[1], second);
        }
    }

    #[test]
    fn close_carries_code_and_reason() {
        let f = close(4008, "slow consumer");
        assert_eq!(f[0], 0x88);
        assert_eq!(&f[2..4], &4008u16.to_be_bytes());
        assert_eq!(&f[4..], b"slow consumer");
    }
}
