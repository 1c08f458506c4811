//! Whole messages from data frames: reassembly of fragmented messages under
//! the whole-message size limit (a limit per frame alone would let eleven
//! 60 KiB fragments through as one 660 KiB message), and UTF-8 of text.
//! Each failure becomes the close code PROTOCOL.md §6 gives it. Pure: no
//! I/O, so it is fuzzed on its own (`fuzz/`).

use bytes::Bytes;

use super::frames::{Frame, OpCode};
use crate::error::close;

/// Reassembles fragmented messages, enforcing the whole-message size limit.
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

    /// Takes a data frame (text, binary, continuation); a whole message
    /// once its last fragment is in.
    pub fn feed(&mut self, frame: Frame) -> Result<Option<(OpCode, Bytes)>, u16> {
        match (frame.opcode, self.opcode) {
            (OpCode::Text | OpCode::Binary, Some(_)) => Err(close::PROTOCOL_ERROR),
            (OpCode::Continuation, None) => Err(close::PROTOCOL_ERROR),
            (op @ (OpCode::Text | OpCode::Binary), None) if frame.fin => {
                if frame.payload.len() > self.max {
                    return Err(close::TOO_BIG);
                }
                check_utf8(op, &frame.payload)?;
                Ok(Some((op, frame.payload)))
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
