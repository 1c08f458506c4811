//! The WebSocket upgrade read without hyper (`parlor::server::handshake`)
//! against hyper's reading of the same bytes. Whatever `upgrade_head` takes
//! as an upgrade, hyper must read as the same request: a GET of the same
//! target with the same headers, an upgrade by fastwebsockets' test, its
//! head ending where `upgrade_head` says (hyper is given the head alone).
//! Inputs `upgrade_head` leaves to hyper are hyper's alone: nothing to
//! compare. And `upgrade_head` must not panic on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parlor::server::handshake::upgrade_head;
use parlor_fuzz::hyper_reads;

fuzz_target!(|data: &[u8]| {
    let Some(ours) = upgrade_head(&bytes::Bytes::copy_from_slice(data), true) else {
        return;
    };
    let head = &data[..ours.len];
    let Some(theirs) = hyper_reads(head) else {
        panic!("hyper reads no request where the direct path reads an upgrade: {ours:?}");
    };
    assert_eq!(theirs.method, hyper::Method::GET);
    assert_eq!(theirs.uri, ours.uri);
    assert_eq!(theirs.uri.path(), ours.uri.path());
    assert_eq!(theirs.uri.query(), ours.uri.query());
    assert_eq!(theirs.headers, ours.headers);
    assert!(theirs.upgrade, "not an upgrade to hyper: {theirs:?}");
});
