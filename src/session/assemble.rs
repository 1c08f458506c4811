//! Whole messages from WebSocket frames: what fastwebsockets leaves to us.
//!
//! fastwebsockets parses frames (unmasking, reserved bits, control frame
//! rules, close codes) but does not check that a client masked its frames,
//! limits single frames rather than messages, and does not reassemble
//! fragments. `Assembler` does those, and turns each failure into the close
//! code PROTOCOL.md §6 gives it. Pure: no I/O, so it is fuzzed on its own
//! (`fuzz/fuzz_targets/frames.rs`).

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode};

use crate::error::close;

pub fn is_control(op: OpCode) -> bool {
    matches!(op, OpCode::Close | OpCode::Ping | OpCode::Pong)
}

/// RFC 6455 §5.1: a server must fail the connection on an unmasked client
/// frame. fastwebsockets does not check; its `fmt_head` shows the mask bit.
pub fn is_masked(frame: &mut Frame<'_>) -> bool {
    let mut head = [0u8; 16];
    frame.fmt_head(&mut head);
    head[1] & 0x80 != 0
}

/// Reassembles fragmented messages, enforcing the whole-message size limit
/// (fastwebsockets only limits single frames).
pub struct Assembler {
    max: usize,
    opcode: Option<OpCode>,
    buf: Vec<u8>,
}

impl Assembler {
    pub fn new(max: usize) -> Assembler {
        Assembler {
            max,
            opcode: None,
            buf: Vec::new(),
        }
    }

    pub fn feed(&mut self, frame: Frame<'_>) -> Result<Option<(OpCode, Bytes)>, u16> {
        match (frame.opcode, self.opcode) {
            (OpCode::Text | OpCode::Binary, Some(_)) => Err(close::PROTOCOL_ERROR),
            (OpCode::Continuation, None) => Err(close::PROTOCOL_ERROR),
            (op @ (OpCode::Text | OpCode::Binary), None) if frame.fin => {
                if frame.payload.len() > self.max {
                    return Err(close::TOO_BIG);
                }
                let data = Bytes::copy_from_slice(&frame.payload);
                check_utf8(op, &data)?;
                Ok(Some((op, data)))
            }
            (op, started) => {
                if self.buf.len() + frame.payload.len() > self.max {
                    return Err(close::TOO_BIG);
                }
                self.opcode = Some(started.unwrap_or(op));
                self.buf.extend_from_slice(&frame.payload);
                if !frame.fin {
                    return Ok(None);
                }
                let op = self.opcode.take().expect("set above");
                let data = Bytes::from(std::mem::take(&mut self.buf));
                check_utf8(op, &data)?;
                Ok(Some((op, data)))
            }
        }
    }
}

fn check_utf8(op: OpCode, data: &[u8]) -> Result<(), u16> {
    if op == OpCode::Text && std::str::from_utf8(data).is_err() {
        Err(close::INVALID_PAYLOAD)
    } else {
        Ok(())
    }
}
