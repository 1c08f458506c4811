//! The run: connect and join every member, let join traffic settle, start
//! the senders together, wait for the deliveries, count.
//!
//! One task per connection reads; one more per sender writes. Readers work
//! a socket read at a time (all complete frames in it, one timestamp) and
//! publish to shared counters once per read, so shared cache lines are
//! touched per batch, not per frame.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::report::{self, Report};
use crate::scan::{self, Ty};
use crate::sys;
use crate::ws::{self, now_nanos, Reader, Writer};
use crate::{Args, Format, Plan, TargetKind};

type SharedWriter = Arc<tokio::sync::Mutex<Writer>>;

/// Width of one bucket of the deliveries-over-time series.
pub const BUCKET_MS: u64 = 100;

#[derive(Default)]
pub struct Counters {
    pub opened: AtomicU64,
    pub failed: AtomicU64,
    pub join_failed: AtomicU64,
    pub joined: AtomicU64,
    pub closed_by_server: AtomicU64,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub send_failed: AtomicU64,
    pub ack_timeouts: AtomicU64,
    pub senders_done: AtomicU64,
    pub delivered: AtomicU64,
    pub replayed: AtomicU64,
    pub duplicates: AtomicU64,
    pub other_frames: AtomicU64,
    /// `heartbeat` frames (not join traffic: they never let it settle).
    pub heartbeats: AtomicU64,
    pub wrong_room: AtomicU64,
    pub reconnects: AtomicU64,
    pub reconnect_failed: AtomicU64,
    pub bytes_read: AtomicU64,
    /// Wall-clock ns of the first and last counted delivery, last ack.
    pub first_delivery_ns: AtomicU64,
    pub last_delivery_ns: AtomicU64,
    pub last_ack_ns: AtomicU64,
    /// Wall-clock ns of the last first-time `joined`.
    pub last_joined_ns: AtomicU64,
}

pub struct RoomState {
    pub name: String,
    /// Messages the server accepted (parlor: acked; seed: sent).
    pub accepted: AtomicU64,
    pub joined: AtomicU64,
}

pub struct Ctx {
    pub args: Args,
    pub plan: Plan,
    /// The servers; connection n goes to `targets[n % len]`.
    pub targets: Vec<ws::Target>,
    pub rooms: Vec<RoomState>,
    pub c: Counters,
    pub hist: Mutex<Histogram<u64>>,
    /// Latency seen by members that never drop (only with droppers).
    pub hist_steady: Mutex<Histogram<u64>>,
    pub buckets: Vec<AtomicU64>,
    pub t0_ns: u64,
    pub go: CancellationToken,
    pub stopped: std::sync::atomic::AtomicBool,
    pub sender_tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    pub connect_sem: Arc<Semaphore>,
    pub errors: Mutex<BTreeMap<String, u64>>,
    pub close_codes: Mutex<BTreeMap<String, u64>>,
    pub connect_errors: Mutex<BTreeMap<String, u64>>,
    pub first_connect_error: Mutex<Option<String>>,
    pub go_ns: AtomicU64,
    pub next_conn: AtomicUsize,
}

impl Ctx {
    fn seed(&self) -> bool {
        self.args.target_kind == TargetKind::Seed
    }

    fn bump(map: &Mutex<BTreeMap<String, u64>>, key: String) {
        *map.lock().entry(key).or_insert(0) += 1;
    }

    fn encode_join(&self, room: &str, since: Option<u64>) -> Vec<u8> {
        match self.args.format {
            Format::Json => match since {
                Some(s) => format!(r#"{{"type":"join","room":"{room}","since":{s}}}"#),
                None => format!(r#"{{"type":"join","room":"{room}"}}"#),
            }
            .into_bytes(),
            Format::Msgpack => {
                #[derive(serde::Serialize)]
                struct J<'a> {
                    #[serde(rename = "type")]
                    ty: &'a str,
                    room: &'a str,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    since: Option<u64>,
                }
                rmp_serde::to_vec_named(&J {
                    ty: "join",
                    room,
                    since,
                })
                .expect("encode")
            }
        }
    }

    fn encode_message(&self, id: &str, room: &str, content: &str) -> Vec<u8> {
        match self.args.format {
            Format::Json => format!(
                r#"{{"type":"message","id":"{id}","data":{{"room":"{room}","content":"{content}"}}}}"#
            )
            .into_bytes(),
            Format::Msgpack => {
                #[derive(serde::Serialize)]
                struct D<'a> {
                    room: &'a str,
                    content: &'a str,
                }
                #[derive(serde::Serialize)]
                struct M<'a> {
                    #[serde(rename = "type")]
                    ty: &'a str,
                    id: &'a str,
                    data: D<'a>,
                }
                rmp_serde::to_vec_named(&M {
                    ty: "message",
                    id,
                    data: D { room, content },
                })
                .expect("encode")
            }
        }
    }

    fn opcode(&self) -> u8 {
        match self.args.format {
            Format::Json => ws::OP_TEXT,
            Format::Msgpack => ws::OP_BINARY,
        }
    }

    fn subprotocol(&self) -> Option<&'static str> {
        match self.args.format {
            Format::Json => None,
            Format::Msgpack => Some("parlor.v1.msgpack"),
        }
    }

    fn parse<'a>(&self, payload: &'a [u8]) -> scan::Parsed<'a> {
        match self.args.format {
            Format::Json => scan::parse_json(payload),
            Format::Msgpack => scan::parse_msgpack(payload),
        }
    }
}

/// Which sequences one member has seen in its room.
#[derive(Default)]
struct Track {
    base: u64,
    bits: Vec<u64>,
    max_seq: u64,
    unique: u64,
    dups: u64,
    reorders: u64,
    old: u64,
}

impl Track {
    /// Records `seq`; true when it is new.
    fn record(&mut self, seq: u64) -> bool {
        if seq <= self.base {
            self.old += 1;
            return false;
        }
        let i = (seq - self.base - 1) as usize;
        let w = i / 64;
        if w >= self.bits.len() {
            if w > 1 << 26 {
                self.old += 1;
                return false;
            }
            self.bits.resize((w + 1).next_power_of_two(), 0);
        }
        let m = 1u64 << (i % 64);
        if self.bits[w] & m != 0 {
            self.dups += 1;
            return false;
        }
        self.bits[w] |= m;
        self.unique += 1;
        if seq < self.max_seq {
            self.reorders += 1;
        } else {
            self.max_seq = seq;
        }
        true
    }

    /// Sequences in base+1..=upto seen.
    fn seen_upto(&self, upto: u64) -> u64 {
        if upto <= self.base {
            return 0;
        }
        let n = (upto - self.base) as usize;
        let full = n / 64;
        let mut c: u64 = self
            .bits
            .iter()
            .take(full)
            .map(|w| w.count_ones() as u64)
            .sum();
        if !n.is_multiple_of(64) {
            if let Some(w) = self.bits.get(full) {
                c += (w & ((1u64 << (n % 64)) - 1)).count_ones() as u64;
            }
        }
        c
    }
}

struct SenderLink {
    id: u64,
    credits: Arc<Semaphore>,
    acked: Arc<AtomicU64>,
}

/// One member's state, shared with the coordinator: readers lock it once
/// per socket read (uncontended), and the coordinator reads it after
/// aborting the member at the end, so no stop signal sits in the hot path.
pub struct ConnState {
    room: usize,
    room_name: Vec<u8>,
    joined: bool,
    track: Track,
    /// Sequences up to this one arrived as replay after a rejoin.
    replay_upto: u64,
    sender: Option<SenderLink>,
    /// Keeps dropping and rejoining (reconnect scenario).
    dropper: bool,
}

type Slot = Arc<Mutex<ConnState>>;

#[derive(Default)]
struct Batch {
    unique: u64,
    replayed: u64,
    dups: u64,
    other: u64,
    heartbeats: u64,
    wrong_room: u64,
    acks: u64,
    lat_us: Vec<u64>,
}

enum End {
    Drop,
    Go,
    Closed(String),
}

async fn connect_join(
    ctx: &Ctx,
    user: &str,
    room: usize,
    since: Option<u64>,
) -> Result<(Reader, Writer, u64), String> {
    let n = ctx.next_conn.fetch_add(1, Relaxed);
    let target = &ctx.targets[n % ctx.targets.len()];
    let src = ws::source_addr(target, n, ctx.args.source_addrs);
    let timeout = Duration::from_secs_f64(ctx.args.connect_timeout);
    let _permit = ctx.connect_sem.acquire().await.map_err(|e| e.to_string())?;
    let initial_buf = if ctx.plan.is_idle() { 1024 } else { 8192 };
    let (mut rd, mut wr) =
        match ws::connect(target, user, src, ctx.subprotocol(), initial_buf, timeout).await {
            Ok(x) => x,
            Err(e) => {
                Ctx::bump(&ctx.connect_errors, e.kind().to_string());
                let mut first = ctx.first_connect_error.lock();
                if first.is_none() {
                    *first = Some(e.to_string());
                }
                return Err(format!("connect: {e}"));
            }
        };
    ctx.c.opened.fetch_add(1, Relaxed);
    let room_name = &ctx.rooms[room].name;
    wr.send(ctx.opcode(), &ctx.encode_join(room_name, since))
        .await
        .map_err(|e| format!("send join: {e}"))?;
    let wait = async {
        loop {
            while let Some(f) = rd.next_frame().map_err(|e| e.to_string())? {
                match f.opcode {
                    ws::OP_TEXT | ws::OP_BINARY => {
                        let p = ctx.parse(rd.payload(&f));
                        match p.ty {
                            Some(Ty::Joined) => return Ok(p.last.unwrap_or(0)),
                            Some(Ty::Presence) if ctx.seed() => return Ok(0),
                            Some(Ty::Error) => {
                                let code = p.code.map(String::from_utf8_lossy).unwrap_or_default();
                                return Err(format!("join refused: {code}"));
                            }
                            _ => {}
                        }
                    }
                    ws::OP_CLOSE => return Err("closed during join".to_string()),
                    _ => {}
                }
            }
            match rd.fill().await {
                Ok(0) | Err(_) => return Err("connection lost during join".to_string()),
                Ok(_) => {}
            }
        }
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(last)) => Ok((rd, wr, last)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("join timeout".into()),
    }
}

async fn member(
    ctx: Arc<Ctx>,
    idx: usize,
    room: usize,
    sender_id: Option<u64>,
    dropper: bool,
    slot: Slot,
) {
    let user = format!("u{idx}");
    let (mut rd, wr, last) = match connect_join(&ctx, &user, room, None).await {
        Ok(x) => x,
        Err(e) => {
            if e.starts_with("connect") {
                ctx.c.failed.fetch_add(1, Relaxed);
            } else {
                ctx.c.join_failed.fetch_add(1, Relaxed);
                Ctx::bump(&ctx.connect_errors, e);
            }
            return;
        }
    };
    let mut wr: SharedWriter = Arc::new(tokio::sync::Mutex::new(wr));
    {
        let mut st = slot.lock();
        st.joined = true;
        st.track.base = last;
        if let Some(id) = sender_id {
            let link = SenderLink {
                id,
                credits: Arc::new(Semaphore::new(ctx.plan.window)),
                acked: Arc::new(AtomicU64::new(0)),
            };
            let h = tokio::spawn(sender(
                ctx.clone(),
                id,
                room,
                wr.clone(),
                link.credits.clone(),
                link.acked.clone(),
            ));
            ctx.sender_tasks.lock().push(h.abort_handle());
            st.sender = Some(link);
        }
    }
    ctx.c.joined.fetch_add(1, Relaxed);
    ctx.c.last_joined_ns.fetch_max(now_nanos(), Relaxed);
    ctx.rooms[room].joined.fetch_add(1, Relaxed);
    let mut rng = (idx as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    loop {
        let until = dropper.then(|| {
            let every = ctx.plan.drop_every_ms.max(1);
            if ctx.plan.drop_together {
                // Mass reconnect: all droppers at go + k × every.
                let every_ns = every * 1_000_000;
                let since_go = now_nanos().saturating_sub(ctx.go_ns.load(Relaxed));
                let next = (since_go / every_ns + 1) * every_ns;
                return tokio::time::Instant::now() + Duration::from_nanos(next - since_go);
            }
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let ms = every / 2 + rng % every;
            tokio::time::Instant::now() + Duration::from_millis(ms)
        });
        // Droppers only drop once the senders run.
        let waiting_for_go = dropper && !ctx.go.is_cancelled();
        let until = if waiting_for_go { None } else { until };
        match read_loop(&ctx, &mut rd, &wr, &slot, until, waiting_for_go).await {
            End::Go => continue,
            End::Closed(why) => {
                if ctx.stopped.load(Relaxed) {
                    return;
                }
                ctx.c.closed_by_server.fetch_add(1, Relaxed);
                Ctx::bump(&ctx.close_codes, why);
                if !dropper {
                    return;
                }
            }
            End::Drop => {}
        }
        if !dropper || ctx.stopped.load(Relaxed) {
            return;
        }
        // Drop the connection (no close handshake, as a network loss
        // would) and rejoin with `since` = the newest sequence seen.
        drop(rd);
        drop(wr);
        let since = slot.lock().track.max_seq;
        match connect_join(&ctx, &user, room, Some(since)).await {
            Ok((r, w, last)) => {
                ctx.c.reconnects.fetch_add(1, Relaxed);
                rd = r;
                wr = Arc::new(tokio::sync::Mutex::new(w));
                slot.lock().replay_upto = last;
            }
            Err(e) => {
                ctx.c.reconnect_failed.fetch_add(1, Relaxed);
                Ctx::bump(&ctx.connect_errors, format!("reconnect: {e}"));
                return;
            }
        }
    }
}

async fn read_loop(
    ctx: &Ctx,
    rd: &mut Reader,
    wr: &SharedWriter,
    slot: &Slot,
    until: Option<tokio::time::Instant>,
    wake_on_go: bool,
) -> End {
    let mut batch = Batch::default();
    let mut pongs: Vec<Vec<u8>> = Vec::new();
    let steady = ctx.plan.droppers > 0 && !slot.lock().dropper;
    loop {
        // Frames already buffered first (e.g. replay right after `joined`).
        let now = now_nanos();
        let mut end = None;
        {
            let mut st = slot.lock();
            loop {
                let f = match rd.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        end = Some(End::Closed(format!("protocol error: {e}")));
                        break;
                    }
                };
                match f.opcode {
                    ws::OP_TEXT | ws::OP_BINARY => {
                        handle(ctx, rd.payload(&f), now, &mut st, &mut batch)
                    }
                    ws::OP_PING => pongs.push(rd.payload(&f).to_vec()),
                    ws::OP_CLOSE => {
                        let p = rd.payload(&f);
                        let code = if p.len() >= 2 {
                            u16::from_be_bytes([p[0], p[1]]).to_string()
                        } else {
                            "none".into()
                        };
                        end = Some(End::Closed(format!("close {code}")));
                        break;
                    }
                    _ => {}
                }
            }
        }
        flush(ctx, &mut batch, now, steady);
        for p in pongs.drain(..) {
            let _ = wr.lock().await.send(ws::OP_PONG, &p).await;
        }
        if let Some(e) = end {
            return e;
        }
        let r = if until.is_none() && !wake_on_go {
            // The hot path: nothing but the read. The coordinator ends
            // members by aborting their tasks.
            rd.fill().await
        } else {
            tokio::select! {
                biased;
                r = rd.fill() => r,
                _ = async {
                    match until {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => return End::Drop,
                _ = ctx.go.cancelled(), if wake_on_go => return End::Go,
            }
        };
        match r {
            Ok(0) => return End::Closed("eof".into()),
            Err(e) => return End::Closed(format!("io: {}", e.kind())),
            Ok(n) => {
                ctx.c.bytes_read.fetch_add(n as u64, Relaxed);
            }
        }
    }
}

fn handle(ctx: &Ctx, payload: &[u8], now: u64, st: &mut ConnState, b: &mut Batch) {
    let p = ctx.parse(payload);
    match p.ty {
        Some(Ty::Message) => {
            let (Some(content), Some(seq)) = (p.content, p.sequence) else {
                b.other += 1;
                return;
            };
            if p.room != Some(&st.room_name[..]) {
                b.wrong_room += 1;
                return;
            }
            let (t, sender) = scan::content_fields(content);
            if st.track.record(seq) {
                b.unique += 1;
                if seq <= st.replay_upto {
                    b.replayed += 1;
                } else if let Some(t) = t {
                    b.lat_us.push(now.saturating_sub(t) / 1000);
                }
                if ctx.seed() {
                    if let Some(l) = &st.sender {
                        if sender == Some(l.id) {
                            // A seed server sends no ack: the sender's own
                            // copy is the sign the message was taken.
                            l.acked.fetch_add(1, Relaxed);
                            l.credits.add_permits(1);
                            b.acks += 1;
                        }
                    }
                }
            } else {
                b.dups += 1;
            }
        }
        Some(Ty::Ack) => {
            if let Some(l) = &st.sender {
                l.acked.fetch_add(1, Relaxed);
                l.credits.add_permits(1);
                ctx.rooms[st.room].accepted.fetch_add(1, Relaxed);
                b.acks += 1;
            }
        }
        Some(Ty::Error) => {
            let code = p.code.map(String::from_utf8_lossy).unwrap_or_default();
            Ctx::bump(&ctx.errors, code.into_owned());
            if let (Some(l), Some(_)) = (&st.sender, p.id) {
                // The message was refused: free its window slot.
                l.credits.add_permits(1);
            }
        }
        Some(Ty::Heartbeat) => b.heartbeats += 1,
        _ => b.other += 1,
    }
}

fn flush(ctx: &Ctx, b: &mut Batch, now: u64, steady: bool) {
    let c = &ctx.c;
    if b.unique > 0 {
        c.delivered.fetch_add(b.unique, Relaxed);
        c.first_delivery_ns.fetch_min(now, Relaxed);
        c.last_delivery_ns.fetch_max(now, Relaxed);
        let i = (now.saturating_sub(ctx.t0_ns) / (BUCKET_MS * 1_000_000)) as usize;
        if let Some(bk) = ctx.buckets.get(i.min(ctx.buckets.len() - 1)) {
            bk.fetch_add(b.unique, Relaxed);
        }
        b.unique = 0;
    }
    if !b.lat_us.is_empty() {
        let mut h = ctx.hist.lock();
        for &v in &b.lat_us {
            h.saturating_record(v.max(1));
        }
        drop(h);
        if steady {
            let mut h = ctx.hist_steady.lock();
            for &v in &b.lat_us {
                h.saturating_record(v.max(1));
            }
        }
        b.lat_us.clear();
    }
    if b.acks > 0 {
        c.acked.fetch_add(b.acks, Relaxed);
        c.last_ack_ns.fetch_max(now, Relaxed);
        b.acks = 0;
    }
    for (n, ctr) in [
        (&mut b.replayed, &c.replayed),
        (&mut b.dups, &c.duplicates),
        (&mut b.other, &c.other_frames),
        (&mut b.heartbeats, &c.heartbeats),
        (&mut b.wrong_room, &c.wrong_room),
    ] {
        if *n > 0 {
            ctr.fetch_add(*n, Relaxed);
            *n = 0;
        }
    }
}

async fn sender(
    ctx: Arc<Ctx>,
    id: u64,
    room: usize,
    wr: SharedWriter,
    credits: Arc<Semaphore>,
    acked: Arc<AtomicU64>,
) {
    ctx.go.cancelled().await;
    let plan = &ctx.plan;
    let start = tokio::time::Instant::now();
    let ack_timeout = Duration::from_secs_f64(plan.ack_timeout.max(0.1));
    let room_name = ctx.rooms[room].name.clone();
    let total_senders = (plan.senders * plan.rooms).max(1) as f64;
    let mut sent = 0u64;
    let mut content = String::with_capacity(plan.payload + 64);
    for i in 0..plan.messages {
        if ctx.stopped.load(Relaxed) {
            break;
        }
        if plan.rate > 0.0 {
            // Senders are spread evenly over one period.
            let offset = (id as f64 / total_senders) / plan.rate;
            let at = start + Duration::from_secs_f64(i as f64 / plan.rate + offset);
            tokio::time::sleep_until(at).await;
        }
        match tokio::time::timeout(ack_timeout, credits.acquire()).await {
            Ok(Ok(p)) => p.forget(),
            _ => {
                ctx.c.ack_timeouts.fetch_add(1, Relaxed);
                break;
            }
        }
        content.clear();
        use std::fmt::Write;
        let _ = write!(content, "t={};s={id};m={i};", now_nanos());
        while content.len() < plan.payload {
            content.push('x');
        }
        let frame = ctx.encode_message(&format!("{id}-{i}"), &room_name, &content);
        let r = wr.lock().await.send(ctx.opcode(), &frame).await;
        if r.is_err() {
            ctx.c.send_failed.fetch_add(1, Relaxed);
            break;
        }
        sent += 1;
        ctx.c.sent.fetch_add(1, Relaxed);
        if ctx.seed() {
            ctx.rooms[room].accepted.fetch_add(1, Relaxed);
        }
    }
    // Wait for the window to drain (all acked), bounded.
    let deadline = tokio::time::Instant::now() + ack_timeout;
    while acked.load(Relaxed) < sent && tokio::time::Instant::now() < deadline {
        if ctx.stopped.load(Relaxed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if acked.load(Relaxed) < sent {
        ctx.c
            .ack_timeouts
            .fetch_add(sent - acked.load(Relaxed), Relaxed);
    }
    ctx.c.senders_done.fetch_add(1, Relaxed);
}

fn bar(args: &Args, len: u64, msg: &str) -> ProgressBar {
    let pb = if args.no_progress {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(5))
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
        )
        .unwrap(),
    );
    pb.set_prefix(msg.to_string());
    pb
}

/// Runs the scenario the arguments name and returns its report.
pub async fn run(args: Args) -> anyhow::Result<Report> {
    let plan = Plan::from_args(&args.scenario)?;
    if args.format == Format::Msgpack && args.target_kind == TargetKind::Seed {
        anyhow::bail!("the teaching servers speak JSON only");
    }
    let targets = args
        .url
        .iter()
        .map(|u| ws::Target::parse(u))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if targets.is_empty() {
        anyhow::bail!("no --url");
    }
    let fd = sys::raise_nofile(plan.connections as u64 + 256);
    if let Some(w) = &fd.warning {
        eprintln!("warning: {w}");
    }
    let run_start = Instant::now();
    let hard_deadline = run_start + Duration::from_secs_f64(args.deadline);
    let run_id = format!("{:x}", now_nanos() & 0xFFFF_FFFF_FFFF);
    let rooms = (0..plan.rooms)
        .map(|r| RoomState {
            name: format!("lt-{run_id}-{r}"),
            accepted: AtomicU64::new(0),
            joined: AtomicU64::new(0),
        })
        .collect();
    let nbuckets = (args.deadline * 1000.0 / BUCKET_MS as f64) as usize + 2;
    let ctx = Arc::new(Ctx {
        connect_sem: Arc::new(Semaphore::new(args.connect_concurrency.max(1))),
        plan: plan.clone(),
        targets,
        rooms,
        c: Counters {
            first_delivery_ns: AtomicU64::new(u64::MAX),
            ..Default::default()
        },
        hist: Mutex::new(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram")),
        hist_steady: Mutex::new(
            Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram"),
        ),
        buckets: (0..nbuckets).map(|_| AtomicU64::new(0)).collect(),
        t0_ns: now_nanos(),
        go: CancellationToken::new(),
        stopped: Default::default(),
        sender_tasks: Default::default(),
        errors: Default::default(),
        close_codes: Default::default(),
        connect_errors: Default::default(),
        first_connect_error: Default::default(),
        go_ns: AtomicU64::new(0),
        next_conn: AtomicUsize::new(0),
        args: args.clone(),
    });
    let pids: Vec<String> = args.server_pid.iter().map(|p| p.to_string()).collect();
    let server_sample = || sys::sample_all(&pids);
    let server_before = server_sample();
    let self_before = sys::sample("self");

    // Connect and join everyone.
    let mut handles = Vec::with_capacity(plan.connections);
    let mut slots = Vec::with_capacity(plan.connections);
    let mut sender_no = 0u64;
    for i in 0..plan.connections {
        let room = i / plan.members;
        let pos = i % plan.members;
        let sender_id = (pos < plan.senders).then(|| {
            sender_no += 1;
            sender_no - 1
        });
        let dropper = pos >= plan.senders && pos < plan.senders + plan.droppers;
        let slot: Slot = Arc::new(Mutex::new(ConnState {
            room,
            room_name: ctx.rooms[room].name.as_bytes().to_vec(),
            joined: false,
            track: Track {
                bits: Vec::with_capacity((plan.senders as u64 * plan.messages / 64 + 1) as usize),
                ..Default::default()
            },
            replay_upto: 0,
            sender: None,
            dropper,
        }));
        slots.push(slot.clone());
        handles.push(tokio::spawn(member(
            ctx.clone(),
            i,
            room,
            sender_id,
            dropper,
            slot,
        )));
    }
    let total_senders = sender_no;
    let pb = bar(&args, plan.connections as u64, "joining");
    let c = &ctx.c;
    let mut stopped_by = None;
    loop {
        let done = c.joined.load(Relaxed) + c.failed.load(Relaxed) + c.join_failed.load(Relaxed);
        pb.set_position(c.joined.load(Relaxed));
        pb.set_message(format!(
            "failed {}",
            c.failed.load(Relaxed) + c.join_failed.load(Relaxed)
        ));
        if done >= plan.connections as u64 {
            break;
        }
        if Instant::now() >= hard_deadline {
            stopped_by = Some("deadline during connect".to_string());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pb.finish_and_clear();
    let connect_secs = run_start.elapsed().as_secs_f64();
    let server_connected = server_sample();

    let mut settle_secs = 0.0;
    let mut measure = None;
    let mut idle_rss = None;
    let mut metrics = None;
    if plan.is_idle() {
        let pb = bar(&args, (plan.hold * 10.0) as u64, "holding");
        let until = (Instant::now() + Duration::from_secs_f64(plan.hold)).min(hard_deadline);
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
            pb.inc(1);
        }
        pb.finish_and_clear();
        idle_rss = server_sample();
    } else if stopped_by.is_none() {
        // Let join traffic (presence, announcements) go quiet.
        let t = Instant::now();
        let settle_deadline = (t + Duration::from_secs_f64(args.settle_max)).min(hard_deadline);
        let mut last = c.other_frames.load(Relaxed);
        let mut quiet_since = Instant::now();
        while Instant::now() < settle_deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = c.other_frames.load(Relaxed);
            if now != last {
                last = now;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= Duration::from_millis(300) {
                break;
            }
        }
        settle_secs = t.elapsed().as_secs_f64();

        let metrics_before = scrape_metrics(&args).await;
        let s1 = server_sample();
        let h1 = sys::sample("self");
        let go_t = Instant::now();
        ctx.go_ns.store(now_nanos(), Relaxed);
        ctx.go.cancel();
        let planned = plan.rooms as u64 * plan.senders as u64 * plan.messages;
        let pb = bar(&args, planned * plan.members as u64, "delivering");
        // Senders finish (all acked, or their ack timeout).
        let expected = |ctx: &Ctx| -> u64 {
            ctx.rooms
                .iter()
                .map(|r| r.accepted.load(Relaxed) * r.joined.load(Relaxed))
                .sum()
        };
        loop {
            pb.set_position(c.delivered.load(Relaxed));
            pb.set_message(format!("sent {}", c.sent.load(Relaxed)));
            if c.senders_done.load(Relaxed) >= total_senders {
                break;
            }
            if Instant::now() >= hard_deadline {
                stopped_by = Some("deadline while sending".into());
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let send_secs = go_t.elapsed().as_secs_f64();
        // Deliveries: all expected, or no progress for drain_timeout.
        let mut last = c.delivered.load(Relaxed);
        let mut progress_at = Instant::now();
        let drain = Duration::from_secs_f64(args.drain_timeout);
        loop {
            let d = c.delivered.load(Relaxed);
            pb.set_position(d);
            if d >= expected(&ctx) {
                break;
            }
            if d != last {
                last = d;
                progress_at = Instant::now();
            } else if progress_at.elapsed() >= drain {
                stopped_by.get_or_insert_with(|| "no progress (drain timeout)".into());
                break;
            }
            if Instant::now() >= hard_deadline {
                stopped_by.get_or_insert_with(|| "deadline while delivering".into());
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        pb.finish_and_clear();
        let s2 = server_sample();
        let h2 = sys::sample("self");
        if !args.metrics_url.is_empty() {
            let url = args.metrics_url.join(",");
            let after = scrape_metrics(&args).await;
            metrics = Some(match (metrics_before, after) {
                (Some(Ok(b)), Some(Ok(a))) => crate::metrics::delta(&url, &b, &a),
                (b, a) => crate::metrics::MetricsDelta {
                    url,
                    error: [b, a]
                        .into_iter()
                        .find_map(|r| r.and_then(|r| r.err()))
                        .map(|e| format!("{e:#}")),
                    ..Default::default()
                },
            });
        }
        measure = Some(report::Measure {
            server_before: s1,
            server_after: s2,
            harness_before: h1,
            harness_after: h2,
            send_secs,
            total_secs: go_t.elapsed().as_secs_f64(),
        });
    }
    // End every member and sender; their counts stay in the slots.
    ctx.stopped.store(true, Relaxed);
    for h in ctx.sender_tasks.lock().drain(..) {
        h.abort();
    }
    for h in &handles {
        h.abort();
    }
    for h in handles {
        let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
    }
    let slots: Vec<_> = slots.iter().map(|s| s.lock()).collect();
    // Count per member against what its room accepted.
    let mut room_top: Vec<u64> = ctx.rooms.iter().map(|r| r.accepted.load(Relaxed)).collect();
    for o in slots.iter().filter(|o| o.joined) {
        // Sequenced but unacked messages still count as expected.
        let t = &mut room_top[o.room];
        *t = (*t).max(o.track.max_seq.saturating_sub(o.track.base));
    }
    let mut tally = report::Tally::default();
    for o in slots.iter().filter(|o| o.joined) {
        let t = &o.track;
        let expected = room_top[o.room];
        let seen = t.seen_upto(t.base + expected);
        let holes = t
            .max_seq
            .saturating_sub(t.base)
            .saturating_sub(t.seen_upto(t.max_seq));
        tally.expected += expected;
        tally.received += t.unique;
        tally.lost += expected.saturating_sub(seen);
        tally.gaps += holes;
        tally.duplicates += t.dups;
        tally.reorders += t.reorders;
        if holes > 0 || t.dups > 0 {
            tally.rooms_with_gaps_or_dups.insert(o.room);
        }
        if t.reorders > 0 {
            tally.rooms_with_reorders.insert(o.room);
        }
    }
    drop(slots);
    let server_end = server_sample();
    let self_end = sys::sample("self");
    Ok(report::build(report::Inputs {
        ctx: &ctx,
        fd,
        tally,
        measure,
        server_before,
        server_connected,
        idle_rss,
        server_end,
        self_before,
        self_end,
        connect_secs,
        settle_secs,
        stopped_by,
        metrics,
        total_secs: run_start.elapsed().as_secs_f64(),
    }))
}

/// One scrape of every `--metrics-url`, summed, if any is given.
async fn scrape_metrics(args: &Args) -> Option<anyhow::Result<crate::metrics::Samples>> {
    if args.metrics_url.is_empty() {
        return None;
    }
    let mut total = crate::metrics::Samples::new();
    for url in &args.metrics_url {
        match crate::metrics::scrape(url, Duration::from_secs(5)).await {
            Ok(samples) => {
                for (k, v) in samples {
                    *total.entry(k).or_default() += v;
                }
            }
            Err(e) => return Some(Err(e)),
        }
    }
    Some(Ok(total))
}
