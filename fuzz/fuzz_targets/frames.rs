//! The input is the byte stream a client sends after the handshake. It runs
//! through the reader's pipeline (frames with their mask and control frame
//! checks, `Assembler`) until EOF or the first error: no panic, every message
//! at most `MAX_MESSAGE` bytes, text is UTF-8, every error is 1002, 1007 or
//! 1009 (checked in `read_stream`). Each message is then decoded as the
//! server would (text as JSON, binary as MessagePack).
#![no_main]

use fastwebsockets::OpCode;
use libfuzzer_sys::fuzz_target;
use parlor::protocol::Format;
use parlor_fuzz::{decode_checked, read_stream, MAX_MESSAGE};

fuzz_target!(|data: &[u8]| {
    let outcome = read_stream(data, MAX_MESSAGE);
    for (op, message) in &outcome.messages {
        let format = if *op == OpCode::Text {
            Format::Json
        } else {
            Format::Msgpack
        };
        decode_checked(format, message);
    }
});
