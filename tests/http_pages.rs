//! HTTP history pages of large messages: a page holds at most
//! `--max-page-bytes` (default 1 MiB) of message content and names and says
//! `more`; a big page is streamed, so clients that ask for big pages and
//! never read them cost the server little memory; and a response the client
//! does not read is closed after `--write-timeout-ms`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::binary::Binary;
use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Just under the default `--max-content-bytes` (16 KiB).
const BIG: usize = 16_000;
const MIB: usize = 1024 * 1024;

/// Publishes `n` messages of `BIG` bytes into `room`, content `"{i}:xxx…"`.
async fn fill(addr: SocketAddr, room: &str, n: usize) {
    let mut c = connect(addr, "filler").await;
    c.join(room).await;
    for i in 0..n {
        let mut content = format!("{i}:");
        content.push_str(&"x".repeat(BIG - content.len()));
        c.publish(room, &content, &format!("f{i}")).await;
    }
}

fn sequences(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages in {page}"))
        .iter()
        .map(|m| m["sequence"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn a_page_of_big_messages_stops_at_max_page_bytes_and_pages_on_with_more() {
    let mut cfg = config();
    cfg.rate_per_sec = 100_000.0;
    cfg.rate_burst = 100_000.0;
    let server = start(cfg).await;
    let addr = server.addr;
    fill(addr, "big", 100).await;

    let first = get(addr, "/api/rooms/big/messages?limit=100").await;
    assert_eq!(first.status, 200);
    let page = first.json();
    let got = sequences(&page);
    // 1 MiB of 16 000-byte contents (and the 6-byte user name): the page
    // stops with the message that reaches 1 MiB.
    let per = BIG + "filler".len();
    assert_eq!(got.len(), MIB.div_ceil(per), "{} messages", got.len());
    assert_eq!(page["more"], true);
    assert_eq!(got, (1..=got.len() as u64).collect::<Vec<_>>());
    for m in page["messages"].as_array().unwrap() {
        let content = m["content"].as_str().unwrap();
        let i: u64 = content.split(':').next().unwrap().parse().unwrap();
        assert_eq!(i + 1, m["sequence"].as_u64().unwrap());
        assert_eq!(content.len(), BIG);
    }

    // Paging on with `since` gives the rest, each sequence once.
    let mut all = got;
    while let Some(&last) = all.last() {
        let page = get(
            addr,
            &format!("/api/rooms/big/messages?limit=100&since={last}"),
        )
        .await
        .json();
        let next = sequences(&page);
        all.extend(&next);
        if page["more"] != true {
            break;
        }
        assert!(!next.is_empty(), "more without messages: {page}");
    }
    assert_eq!(all, (1..=100).collect::<Vec<_>>());
}

/// The page bound in the memory test: larger than the kernel's socket
/// buffers can take (tcp_wmem max is 4 MiB by default), so a client that
/// does not read leaves most of each page unsent.
const PAGE_BYTES: usize = 8 * MIB;
const READERS: usize = 30;
const WRITE_TIMEOUT_MS: u64 = 2_000;

/// A connection that asks for a page and reads nothing: its receive window
/// is a few KiB, so the server's writes to it soon block.
async fn unread_request(addr: SocketAddr, path: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn unread_big_pages_keep_memory_bounded_and_are_closed_after_the_write_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let args = [
        "--durability",
        "none",
        "--rate-per-sec",
        "100000",
        "--rate-burst",
        "100000",
    ];
    // As environment, so the same test runs against a build from before
    // these settings (PARLOR_TEST_BIN), which ignores them.
    let page_bytes = PAGE_BYTES.to_string();
    let write_timeout = WRITE_TIMEOUT_MS.to_string();
    let env = [
        ("PARLOR_MAX_PAGE_BYTES", page_bytes.as_str()),
        ("PARLOR_WRITE_TIMEOUT_MS", write_timeout.as_str()),
    ];
    let server = Binary::start_env(&dir, binary::free_addr(), &args, &env).await;
    let addr = server.addr;
    // 1000 messages of 16 KB: a `limit=1000` page would be 16 MB.
    fill(addr, "big", 1000).await;
    let path = "/api/rooms/big/messages?limit=1000";
    // One page read in full, so the store's cache is in the baseline.
    assert_eq!(get(addr, path).await.status, 200);
    let baseline = server.rss_kib();

    let mut readers = Vec::new();
    for _ in 0..READERS {
        readers.push(unread_request(addr, path).await);
    }
    // Memory stays within what the page bound allows for each stuck
    // reader, from the requests until they are closed; streaming keeps it
    // far below. Sampled while the server answers (the first bytes of every
    // answer arrive, none is read) and until the write deadline closes them.
    let ceiling = baseline + (READERS * PAGE_BYTES / 1024) as u64;
    let deadline = Instant::now() + Duration::from_millis(WRITE_TIMEOUT_MS) + 6 * TIMEOUT;
    let mut answered = vec![false; READERS];
    let mut peak = 0;
    loop {
        let rss = server.rss_kib();
        peak = peak.max(rss);
        assert!(
            rss < ceiling,
            "RSS {rss} KiB with {READERS} unread pages: over {ceiling} KiB (baseline {baseline} KiB)"
        );
        for (r, seen) in readers.iter().zip(&mut answered) {
            let mut b = [0u8; 1];
            let peek = tokio::time::timeout(Duration::from_millis(1), r.peek(&mut b)).await;
            *seen |= matches!(peek, Ok(Ok(1)));
        }
        let cut = if answered.iter().all(|&a| a) {
            let text = get(addr, "/metrics").await.text();
            metric(&text, "parlor_http_timeouts_total{kind=\"write\"}").unwrap_or(0.0)
        } else {
            0.0
        };
        if cut >= READERS as f64 {
            break;
        }
        let started = answered.iter().filter(|&&a| a).count();
        assert!(
            Instant::now() < deadline,
            "{started} of {READERS} answers started, {cut} closed after the write deadline"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("baseline {baseline} KiB, peak {peak} KiB, ceiling {ceiling} KiB");

    // Closed mid-page: what the kernel had taken arrives, then the end of
    // the stream, without the chunked body's last chunk.
    for r in &mut readers {
        let mut all = Vec::new();
        tokio::time::timeout(TIMEOUT, r.read_to_end(&mut all))
            .await
            .expect("closed by the server")
            .unwrap();
        assert!(all.starts_with(b"HTTP/1.1 200"));
        assert!(!all.ends_with(b"0\r\n\r\n"), "the page was sent in full");
    }
}
