//! The WebSocket upgrade, request bytes in to 101 bytes out, over an
//! in-memory stream: through hyper's HTTP/1 connection (how every upgrade
//! was answered before `server/handshake.rs`, and how the ones it leaves
//! to hyper still are) against the direct path (`httparse`, the accept
//! digest, the 101 written by hand). Who the client is (`agree`: origin,
//! token, user, the user's slot) is the same on both paths and left out.

use std::hint::black_box;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http_body_util::Empty;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parlor::server::handshake::{accept_key, switching, upgrade_head};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// A browser's upgrade request (≈ 0.5 KiB).
fn request() -> Vec<u8> {
    b"GET /ws?user=ann HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nConnection: Upgrade\r\n\
      Pragma: no-cache\r\nCache-Control: no-cache\r\n\
      User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0\r\n\
      Upgrade: websocket\r\nOrigin: http://127.0.0.1:8080\r\nSec-WebSocket-Version: 13\r\n\
      Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\n\
      Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
      Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        .to_vec()
}

/// Reads one response head off the client's end.
async fn read_101(client: &mut DuplexStream) -> usize {
    let mut buf = Vec::with_capacity(256);
    loop {
        let mut chunk = [0u8; 256];
        let n = client.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the 101");
        buf.extend_from_slice(&chunk[..n]);
        if buf.ends_with(b"\r\n\r\n") {
            assert!(buf.starts_with(b"HTTP/1.1 101"));
            return buf.len();
        }
    }
}

/// hyper's HTTP/1 connection, as the server runs it for an upgrade: the
/// service answers with fastwebsockets' 101, and the socket comes back
/// from hyper's upgrade future.
async fn through_hyper(req: &[u8]) -> usize {
    let (mut client, server) = tokio::io::duplex(4096);
    client.write_all(req).await.unwrap();
    let pending = Arc::new(Mutex::new(None));
    let slot = pending.clone();
    let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let (response, upgraded) = fastwebsockets::upgrade::upgrade(&mut req).unwrap();
        *slot.lock().unwrap() = Some(upgraded);
        async move { Ok::<_, std::convert::Infallible>(response.map(|_| Empty::<Bytes>::new())) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(server), service)
        .with_upgrades();
    let (ended, n) = tokio::join!(conn, read_101(&mut client));
    ended.unwrap();
    let upgraded = pending.lock().unwrap().take().unwrap();
    let ws = upgraded.await.unwrap();
    black_box(ws.into_inner());
    n
}

/// The direct path: read the head, parse it, write the 101.
async fn direct(req: &[u8]) -> usize {
    let (mut client, mut server) = tokio::io::duplex(4096);
    client.write_all(req).await.unwrap();
    let mut buf = BytesMut::with_capacity(4096);
    let (buf, head) = loop {
        server.read_buf(&mut buf).await.unwrap();
        let read = buf.split().freeze();
        if let Some(head) = upgrade_head(&read, false) {
            break (read, head);
        }
        buf.unsplit(read.try_into_mut().unwrap());
    };
    let key = head.headers.get("sec-websocket-key").unwrap();
    let answer = switching(&accept_key(key.as_bytes()), None);
    server.write_all(&answer).await.unwrap();
    let n = read_101(&mut client).await;
    black_box((server, &buf[head.len..]));
    n
}

fn upgrade(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let req = request();
    let whole = Bytes::from(req.clone());
    let mut g = c.benchmark_group("upgrade");
    g.throughput(Throughput::Elements(1));
    g.bench_function("hyper", |b| {
        b.iter(|| runtime.block_on(through_hyper(black_box(&req))))
    });
    g.bench_function("direct", |b| {
        b.iter(|| runtime.block_on(direct(black_box(&req))))
    });
    g.bench_function("parse-only", |b| {
        b.iter(|| upgrade_head(black_box(&whole), false).unwrap())
    });
    g.finish();
}

criterion_group!(benches, upgrade);
criterion_main!(benches);
