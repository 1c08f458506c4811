//! Structured: builds a stream of well-formed masked frames (messages cut
//! into random fragments with pings and pongs between them, read back in
//! random-sized pieces) plus a few deliberate faults, and checks that the
//! reader's pipeline returns exactly the messages sent, ending exactly where
//! and how RFC 6455 and PROTOCOL.md §6 say:
//! - a message over the limit: 1009 at the frame that crosses it;
//! - text that is not UTF-8 once whole: 1007;
//! - any frame over the limit, controls too: 1009;
//! - a control frame over 125 bytes, a continuation with no message started,
//!   a new message before the last one ended: 1002;
//! - a close frame: the client closed; the end of the input: EOF.
#![no_main]

use arbitrary::Arbitrary;
use fastwebsockets::OpCode;
use libfuzzer_sys::fuzz_target;
use parlor_fuzz::{read_stream, write_frame, End, Trickle, MAX_MESSAGE};

#[derive(Arbitrary, Debug)]
struct Script {
    /// Whole-message limit, up to twice `MAX_MESSAGE`.
    max: u16,
    /// Bytes per read (0: as many as fit).
    chunk: u8,
    /// Every other read is `Pending`.
    stall: bool,
    /// Lengths in the 8-byte form.
    wide: bool,
    mask: [u8; 4],
    items: Vec<Item>,
    close: bool,
}

#[derive(Arbitrary, Debug)]
enum Item {
    /// A text message cut at byte offsets (characters may straddle frames).
    Text {
        text: String,
        cuts: Vec<u16>,
        controls: Vec<Control>,
    },
    /// Any bytes, as text (maybe not UTF-8) or binary.
    Raw {
        text: bool,
        bytes: Vec<u8>,
        cuts: Vec<u16>,
        controls: Vec<Control>,
    },
    /// A long message of one repeated byte, to reach the size limit.
    Long {
        text: bool,
        len: u16,
        byte: u8,
        cuts: Vec<u16>,
    },
    Control(Control),
    /// A continuation frame with no message started.
    Stray {
        fin: bool,
        bytes: Vec<u8>,
    },
    /// A first fragment, then a new message before the first one ended.
    Interrupted {
        binary: bool,
        first: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug)]
struct Control {
    pong: bool,
    /// Cut to 130 bytes: over 125 is a protocol error.
    payload: Vec<u8>,
}

struct Stream {
    bytes: Vec<u8>,
    mask: [u8; 4],
    wide: bool,
    frames: usize,
    max: usize,
    /// What the reader must return.
    messages: Vec<(OpCode, Vec<u8>)>,
}

impl Stream {
    fn frame(&mut self, fin: bool, op: OpCode, payload: &[u8]) {
        let mask = self.mask.map(|b| b.wrapping_add(self.frames as u8));
        self.frames += 1;
        write_frame(&mut self.bytes, fin, op, payload, mask, self.wide);
    }

    fn control(&mut self, c: &Control) -> Result<(), u16> {
        let payload = &c.payload[..c.payload.len().min(130)];
        let op = if c.pong { OpCode::Pong } else { OpCode::Ping };
        self.frame(true, op, payload);
        // A control frame over 125 bytes breaks the protocol whatever the
        // limit; under that, the limit applies to it as to any frame.
        match payload.len() {
            126.. => Err(1002),
            n if n > self.max => Err(1009),
            _ => Ok(()),
        }
    }

    /// A whole message in fragments, controls after the first ones.
    fn message(
        &mut self,
        op: OpCode,
        payload: &[u8],
        cuts: &[u16],
        controls: &[Control],
    ) -> Result<(), u16> {
        let mut bounds: Vec<usize> = cuts
            .iter()
            .map(|&c| c as usize % (payload.len() + 1))
            .collect();
        bounds.push(payload.len());
        bounds.sort_unstable();
        bounds.dedup();
        let mut start = 0;
        for (i, &end) in bounds.iter().enumerate() {
            let fin = i + 1 == bounds.len();
            let frame_op = if i == 0 { op } else { OpCode::Continuation };
            self.frame(fin, frame_op, &payload[start..end]);
            if end > self.max {
                return Err(1009);
            }
            start = end;
            if !fin {
                if let Some(c) = controls.get(i) {
                    self.control(c)?;
                }
            }
        }
        if op == OpCode::Text && std::str::from_utf8(payload).is_err() {
            return Err(1007);
        }
        self.messages.push((op, payload.to_vec()));
        for c in controls.iter().skip(bounds.len() - 1) {
            self.control(c)?;
        }
        Ok(())
    }

    fn item(&mut self, item: &Item) -> Result<(), u16> {
        let data = |text: bool| if text { OpCode::Text } else { OpCode::Binary };
        match item {
            Item::Text {
                text,
                cuts,
                controls,
            } => self.message(OpCode::Text, text.as_bytes(), cuts, controls),
            Item::Raw {
                text,
                bytes,
                cuts,
                controls,
            } => self.message(data(*text), bytes, cuts, controls),
            Item::Long {
                text,
                len,
                byte,
                cuts,
            } => self.message(data(*text), &vec![*byte; *len as usize], cuts, &[]),
            Item::Control(c) => self.control(c),
            Item::Stray { fin, bytes } => {
                self.frame(*fin, OpCode::Continuation, bytes);
                Err(if bytes.len() > self.max { 1009 } else { 1002 })
            }
            Item::Interrupted { binary, first } => {
                let op = data(!*binary);
                self.frame(false, op, first);
                if first.len() > self.max {
                    return Err(1009);
                }
                self.frame(true, op, b"");
                Err(1002)
            }
        }
    }
}

fuzz_target!(|script: Script| {
    let max = script.max as usize % (2 * MAX_MESSAGE + 1);
    let mut stream = Stream {
        bytes: Vec::new(),
        mask: script.mask,
        wide: script.wide,
        frames: 0,
        max,
        messages: Vec::new(),
    };
    let mut expected = End::Eof;
    for item in &script.items {
        if let Err(code) = stream.item(item) {
            expected = End::Closed(code);
            break;
        }
    }
    if expected == End::Eof && script.close {
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        stream.frame(true, OpCode::Close, &payload);
        // Control frames too are held to the limit.
        expected = if payload.len() > max {
            End::Closed(1009)
        } else {
            End::ClientClosed
        };
    }
    let reader = Trickle::new(&stream.bytes, script.chunk as usize, script.stall);
    let outcome = read_stream(reader, max);
    let got: Vec<(OpCode, Vec<u8>)> = outcome
        .messages
        .iter()
        .map(|(op, data)| (*op, data.to_vec()))
        .collect();
    assert_eq!(got, stream.messages, "messages");
    assert_eq!(outcome.end, expected, "end");
});
