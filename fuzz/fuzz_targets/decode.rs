//! The client message decoder, both formats, on any bytes: never panics; what
//! it accepts has valid room names, an `id` of at most 64 bytes and a history
//! `limit` in 1..=1000, and re-encodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parlor::protocol::Format;
use parlor_fuzz::decode_checked;

fuzz_target!(|data: &[u8]| {
    decode_checked(Format::Json, data);
    decode_checked(Format::Msgpack, data);
});
