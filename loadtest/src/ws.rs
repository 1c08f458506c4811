//! A minimal WebSocket client (RFC 6455) built for reading many small frames
//! cheaply: one `read` syscall fills a buffer, then every complete frame in
//! it is handed out as a slice of that buffer, without copying or
//! allocating. The caller takes one timestamp per read, not per frame.
//!
//! Only what a load generator needs: the client handshake (with an optional
//! subprotocol), masked client frames, unmasked (or masked) server frames,
//! fragmented messages reassembled, ping answered by the caller, close
//! reported with its code.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpSocket;

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Where to connect: `ws://host:port/path?query`.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| anyhow::anyhow!("only ws:// URLs are supported: {url}"))?;
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        use std::net::ToSocketAddrs;
        let addr = hostport
            .to_socket_addrs()
            .map_err(|e| anyhow::anyhow!("cannot resolve {hostport}: {e}"))?
            .find(|a| a.is_ipv4())
            .ok_or_else(|| anyhow::anyhow!("no IPv4 address for {hostport}"))?;
        Ok(Target {
            addr,
            host: hostport.to_string(),
            path: path.to_string(),
        })
    }

    /// The request path with `user=` added to the query.
    pub fn path_for_user(&self, user: &str) -> String {
        let sep = if self.path.contains('?') { '&' } else { '?' };
        format!("{}{sep}user={user}", self.path)
    }
}

/// Why a connection attempt failed, sorted for the report.
#[derive(Debug)]
pub enum ConnectError {
    /// EMFILE / ENFILE: the fd limit stopped us.
    FdLimit(io::Error),
    /// EADDRNOTAVAIL: no free local port on the source address.
    NoPorts(io::Error),
    Io(io::Error),
    Handshake(String),
    Timeout,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::FdLimit(e) => write!(f, "file descriptor limit: {e}"),
            ConnectError::NoPorts(e) => write!(f, "no free local port: {e}"),
            ConnectError::Io(e) => write!(f, "{e}"),
            ConnectError::Handshake(s) => write!(f, "handshake: {s}"),
            ConnectError::Timeout => write!(f, "timeout"),
        }
    }
}

impl ConnectError {
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectError::FdLimit(_) => "fd_limit",
            ConnectError::NoPorts(_) => "no_local_ports",
            ConnectError::Io(_) => "io",
            ConnectError::Handshake(_) => "handshake",
            ConnectError::Timeout => "timeout",
        }
    }
}

fn classify(e: io::Error) -> ConnectError {
    match e.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => ConnectError::FdLimit(e),
        Some(libc::EADDRNOTAVAIL) => ConnectError::NoPorts(e),
        _ => ConnectError::Io(e),
    }
}

/// The source address for connection number `n`: 127.0.0.1..=127.0.0.254
/// round-robin when the server is on loopback (each source address has its
/// own ephemeral port range), none otherwise.
pub fn source_addr(target: &Target, n: usize, spread: usize) -> Option<IpAddr> {
    if spread == 0 || !target.addr.ip().is_loopback() {
        return None;
    }
    let k = (n % spread.min(254)) as u8 + 1;
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, k)))
}

/// Opens a TCP connection and performs the WebSocket handshake. Returns the
/// two halves; bytes the server sent after its 101 response stay in the
/// reader's buffer.
pub async fn connect(
    target: &Target,
    user: &str,
    source: Option<IpAddr>,
    subprotocol: Option<&str>,
    read_buf: usize,
    timeout: Duration,
) -> Result<(Reader, Writer), ConnectError> {
    match tokio::time::timeout(
        timeout,
        connect_inner(target, user, source, subprotocol, read_buf),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout),
    }
}

async fn connect_inner(
    target: &Target,
    user: &str,
    source: Option<IpAddr>,
    subprotocol: Option<&str>,
    read_buf: usize,
) -> Result<(Reader, Writer), ConnectError> {
    let sock = TcpSocket::new_v4().map_err(classify)?;
    if let Some(ip) = source {
        sock.bind(SocketAddr::new(ip, 0)).map_err(classify)?;
    }
    let stream = sock.connect(target.addr).await.map_err(classify)?;
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        target.path_for_user(user),
        target.host
    );
    if let Some(p) = subprotocol {
        req.push_str("Sec-WebSocket-Protocol: ");
        req.push_str(p);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    wr.write_all(req.as_bytes()).await.map_err(classify)?;
    let mut reader = Reader::new(rd, read_buf);
    // Read the response head; what follows it stays buffered.
    let head_end = loop {
        if let Some(i) = memchr::memmem::find(&reader.buf[..reader.end], b"\r\n\r\n") {
            break i + 4;
        }
        if reader.end > 16 * 1024 {
            return Err(ConnectError::Handshake("response head too long".into()));
        }
        if reader.fill().await.map_err(classify)? == 0 {
            return Err(ConnectError::Handshake("closed during handshake".into()));
        }
    };
    let head = String::from_utf8_lossy(&reader.buf[..head_end]).to_string();
    let status = head.lines().next().unwrap_or("");
    if !status.contains(" 101") {
        return Err(ConnectError::Handshake(status.trim().to_string()));
    }
    if let Some(p) = subprotocol {
        let lower = head.to_ascii_lowercase();
        let echoed = lower
            .lines()
            .find_map(|l| l.strip_prefix("sec-websocket-protocol:"))
            .map(|v| v.trim().to_string());
        if echoed.as_deref() != Some(&p.to_ascii_lowercase()) {
            return Err(ConnectError::Handshake(format!(
                "server did not accept subprotocol {p}"
            )));
        }
    }
    reader.start = head_end;
    let seed = (user.len() as u64) ^ (reader.end as u64) ^ now_nanos();
    Ok((reader, Writer::new(wr, seed)))
}

pub fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// One complete frame in the reader's buffer (or in its reassembly buffer
/// when `assembled`).
#[derive(Debug, Clone)]
pub struct Frame {
    pub opcode: u8,
    pub payload: Range<usize>,
    pub assembled: bool,
}

pub struct Reader {
    half: OwnedReadHalf,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max_buf: usize,
    frag: Vec<u8>,
    frag_op: Option<u8>,
    /// Bytes read so far (for the report).
    pub bytes: u64,
}

impl Reader {
    fn new(half: OwnedReadHalf, initial: usize) -> Reader {
        Reader {
            half,
            buf: vec![0; initial.max(512)],
            start: 0,
            end: 0,
            max_buf: 256 * 1024,
            frag: Vec::new(),
            frag_op: None,
            bytes: 0,
        }
    }

    /// Reads once from the socket (cancel-safe). Returns the number of
    /// bytes read, 0 at end of stream. Grows the buffer (up to 256 KiB)
    /// when a read fills it, so busy connections batch more per syscall
    /// while idle ones stay small.
    pub async fn fill(&mut self) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let n = self.buf.len() * 2;
            self.buf.resize(n, 0);
        }
        let room = self.buf.len() - self.end;
        let n = self.half.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        self.bytes += n as u64;
        if n == room && self.buf.len() < self.max_buf {
            let n = self.buf.len() * 2;
            self.buf.resize(n, 0);
        }
        Ok(n)
    }

    /// The next complete frame already buffered, data frames reassembled.
    /// `Ok(None)`: call `fill` again.
    pub fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        loop {
            let avail = &self.buf[self.start..self.end];
            if avail.len() < 2 {
                return Ok(None);
            }
            let b0 = avail[0];
            let b1 = avail[1];
            let fin = b0 & 0x80 != 0;
            let opcode = b0 & 0x0F;
            let masked = b1 & 0x80 != 0;
            let (len, mut hdr) = match b1 & 0x7F {
                126 => {
                    if avail.len() < 4 {
                        return Ok(None);
                    }
                    (u16::from_be_bytes([avail[2], avail[3]]) as usize, 4)
                }
                127 => {
                    if avail.len() < 10 {
                        return Ok(None);
                    }
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&avail[2..10]);
                    (u64::from_be_bytes(b) as usize, 10)
                }
                n => (n as usize, 2),
            };
            if len > 64 * 1024 * 1024 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "frame too large",
                ));
            }
            let mask = if masked {
                if avail.len() < hdr + 4 {
                    return Ok(None);
                }
                let m = [avail[hdr], avail[hdr + 1], avail[hdr + 2], avail[hdr + 3]];
                hdr += 4;
                Some(m)
            } else {
                None
            };
            if avail.len() < hdr + len {
                // Make sure the whole frame fits once read.
                let need = hdr + len;
                if need > self.buf.len() - self.start {
                    self.buf.copy_within(self.start..self.end, 0);
                    self.end -= self.start;
                    self.start = 0;
                    if need > self.buf.len() {
                        self.buf.resize(need.next_power_of_two(), 0);
                    }
                }
                return Ok(None);
            }
            let p0 = self.start + hdr;
            let p1 = p0 + len;
            self.start = p1;
            if let Some(m) = mask {
                for (i, b) in self.buf[p0..p1].iter_mut().enumerate() {
                    *b ^= m[i & 3];
                }
            }
            match opcode {
                OP_CONT => {
                    if self.frag_op.is_none() {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "continuation without a start",
                        ));
                    }
                    self.frag.extend_from_slice(&self.buf[p0..p1]);
                    if fin {
                        let op = self.frag_op.take().unwrap();
                        return Ok(Some(Frame {
                            opcode: op,
                            payload: 0..self.frag.len(),
                            assembled: true,
                        }));
                    }
                }
                OP_TEXT | OP_BINARY if !fin => {
                    self.frag.clear();
                    self.frag.extend_from_slice(&self.buf[p0..p1]);
                    self.frag_op = Some(opcode);
                }
                _ => {
                    return Ok(Some(Frame {
                        opcode,
                        payload: p0..p1,
                        assembled: false,
                    }))
                }
            }
        }
    }

    pub fn payload(&self, f: &Frame) -> &[u8] {
        if f.assembled {
            &self.frag[f.payload.clone()]
        } else {
            &self.buf[f.payload.clone()]
        }
    }
}

pub struct Writer {
    half: OwnedWriteHalf,
    rng: u64,
    out: Vec<u8>,
}

impl Writer {
    fn new(half: OwnedWriteHalf, seed: u64) -> Writer {
        Writer {
            half,
            rng: seed | 1,
            out: Vec::with_capacity(256),
        }
    }

    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift64*: masks need not be secure for a load generator.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) as u32).to_le_bytes()
    }

    /// Sends one masked frame.
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mask = self.next_mask();
        self.out.clear();
        encode_frame(&mut self.out, opcode, payload, mask);
        self.half.write_all(&self.out).await
    }

    /// Sends a close frame with `code` (errors ignored: best effort).
    pub async fn close(&mut self, code: u16) {
        let _ = self.send(OP_CLOSE, &code.to_be_bytes()).await;
        let _ = self.half.shutdown().await;
    }
}

pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let base = out.len();
    out.extend_from_slice(payload);
    for (i, b) in out[base..].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_encoding_masks_payload() {
        let mut out = Vec::new();
        encode_frame(&mut out, OP_TEXT, b"hi", [1, 2, 3, 4]);
        assert_eq!(out, vec![0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
        let mut out = Vec::new();
        encode_frame(&mut out, OP_BINARY, &[0u8; 300], [0; 4]);
        assert_eq!(&out[..4], &[0x82, 0x80 | 126, 1, 44]);
        assert_eq!(out.len(), 4 + 4 + 300);
    }

    #[test]
    fn target_parse() {
        let t = Target::parse("ws://127.0.0.1:9000/ws").unwrap();
        assert_eq!(t.addr.port(), 9000);
        assert_eq!(t.path_for_user("u1"), "/ws?user=u1");
        let t = Target::parse("ws://127.0.0.1:9000").unwrap();
        assert_eq!(t.path_for_user("u1"), "/?user=u1");
    }
}
