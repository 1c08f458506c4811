//! The report: one serialisable object, a readable table, an SVG.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use serde::Serialize;

use crate::run::{Ctx, BUCKET_MS};
use crate::sys::{FdLimit, ProcSample};
use crate::{Format, Plan, TargetKind};

#[derive(Default)]
pub struct Tally {
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub gaps: u64,
    pub duplicates: u64,
    pub reorders: u64,
    pub rooms_with_gaps_or_dups: BTreeSet<usize>,
    pub rooms_with_reorders: BTreeSet<usize>,
}

pub struct Measure {
    pub server_before: Option<ProcSample>,
    pub server_after: Option<ProcSample>,
    pub harness_before: Option<ProcSample>,
    pub harness_after: Option<ProcSample>,
    pub send_secs: f64,
    pub total_secs: f64,
}

pub struct Inputs<'a> {
    pub ctx: &'a Ctx,
    pub fd: FdLimit,
    pub tally: Tally,
    pub measure: Option<Measure>,
    pub server_before: Option<ProcSample>,
    pub server_connected: Option<ProcSample>,
    pub idle_rss: Option<ProcSample>,
    pub server_end: Option<ProcSample>,
    pub self_before: Option<ProcSample>,
    pub self_end: Option<ProcSample>,
    pub connect_secs: f64,
    pub settle_secs: f64,
    pub stopped_by: Option<String>,
    pub metrics: Option<crate::metrics::MetricsDelta>,
    pub total_secs: f64,
}

#[derive(Serialize, Debug, Clone)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

#[derive(Serialize, Debug, Clone)]
pub struct Report {
    pub label: Option<String>,
    pub url: String,
    pub target_kind: TargetKind,
    pub format: Format,
    pub plan: Plan,
    pub machine: Machine,
    pub fd_limit: FdLimit,
    pub connections: Connections,
    pub messages: Messages,
    pub deliveries: Deliveries,
    pub latency: Option<Latency>,
    /// Latency at the members that never dropped (scenarios with droppers).
    pub latency_steady: Option<Latency>,
    pub server: Option<Cost>,
    pub harness: Option<Cost>,
    pub idle: Option<Idle>,
    pub timing: Timing,
    pub stopped_by: Option<String>,
    /// `--metrics-url` scraped before and after the send+deliver phase.
    pub metrics: Option<crate::metrics::MetricsDelta>,
    pub errors: BTreeMap<String, u64>,
    /// Deliveries per `bucket_ms`, from the run's start.
    pub bucket_ms: u64,
    pub deliveries_over_time: Vec<u64>,
    /// (percentile, µs) points of the latency distribution.
    pub latency_curve: Vec<(f64, u64)>,
}

#[derive(Serialize, Debug, Clone)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
}

#[derive(Serialize, Debug, Clone)]
pub struct Connections {
    pub planned: usize,
    pub opened: u64,
    pub failed: u64,
    pub join_failed: u64,
    pub joined: u64,
    pub closed_by_server: u64,
    pub close_reasons: BTreeMap<String, u64>,
    pub connect_errors: BTreeMap<String, u64>,
    pub first_connect_error: Option<String>,
    pub reconnects: u64,
    pub reconnect_failed: u64,
    /// Joined connections per second of `timing.join_secs`.
    pub joins_per_sec: f64,
}

#[derive(Serialize, Debug, Clone)]
pub struct Messages {
    pub sent: u64,
    /// parlor: acked; seed servers: the sender's own copy came back.
    pub acked: u64,
    pub send_failed: u64,
    pub ack_timeouts: u64,
    /// Acks per second from the start of sending to the last ack.
    pub acks_per_sec: f64,
}

#[derive(Serialize, Debug, Clone)]
pub struct Deliveries {
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub gaps: u64,
    pub duplicates: u64,
    pub reorders: u64,
    pub rooms_with_gaps_or_duplicates: usize,
    pub rooms_with_reorders: usize,
    pub replayed: u64,
    pub wrong_room: u64,
    pub other_frames: u64,
    /// `heartbeat` frames received (not counted in `other_frames`).
    pub heartbeats: u64,
    /// Seconds from the first to the last delivery.
    pub window_secs: f64,
    pub per_sec: f64,
    pub bytes_read: u64,
}

#[derive(Serialize, Debug, Clone)]
pub struct Cost {
    /// CPU seconds (user + system) over the sending and delivery phase.
    pub cpu_secs: f64,
    /// Share of one core over that phase.
    pub cores_busy: f64,
    pub cpu_us_per_delivery: Option<f64>,
    pub rss_kib: Option<u64>,
}

#[derive(Serialize, Debug, Clone)]
pub struct Idle {
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub rss_per_connection_bytes: Option<f64>,
    pub harness_rss_kib: u64,
}

#[derive(Serialize, Debug, Clone)]
pub struct Timing {
    /// Start of the run until every connection joined or failed.
    pub connect_secs: f64,
    /// Start of the run until the last `joined` arrived (the join storm).
    pub join_secs: f64,
    pub settle_secs: f64,
    pub send_secs: f64,
    pub deliver_secs: f64,
    pub total_secs: f64,
}

fn cost(
    before: Option<ProcSample>,
    after: Option<ProcSample>,
    secs: f64,
    deliveries: u64,
) -> Option<Cost> {
    let (b, a) = (before?, after?);
    let cpu = (a.cpu_s - b.cpu_s).max(0.0);
    Some(Cost {
        cpu_secs: cpu,
        cores_busy: if secs > 0.0 { cpu / secs } else { 0.0 },
        cpu_us_per_delivery: (deliveries > 0).then(|| cpu * 1e6 / deliveries as f64),
        rss_kib: Some(a.rss_kib),
    })
}

fn latency_of(h: &hdrhistogram::Histogram<u64>) -> Option<Latency> {
    (!h.is_empty()).then(|| Latency {
        count: h.len(),
        p50_us: h.value_at_quantile(0.50),
        p90_us: h.value_at_quantile(0.90),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
        mean_us: h.mean(),
    })
}

pub fn build(i: Inputs<'_>) -> Report {
    let ctx = i.ctx;
    let c = &ctx.c;
    let latency_steady = latency_of(&ctx.hist_steady.lock());
    let h = ctx.hist.lock();
    let latency = latency_of(&h);
    let latency_curve = if !h.is_empty() {
        [
            0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0,
        ]
        .iter()
        .map(|&p| (p, h.value_at_quantile(p / 100.0)))
        .collect()
    } else {
        Vec::new()
    };
    drop(h);
    let first = c.first_delivery_ns.load(Relaxed);
    let last = c.last_delivery_ns.load(Relaxed);
    let window_secs = if first != u64::MAX && last > first {
        (last - first) as f64 / 1e9
    } else {
        0.0
    };
    let received = i.tally.received;
    let go = ctx.go_ns.load(Relaxed);
    let last_ack = c.last_ack_ns.load(Relaxed);
    let acked = c.acked.load(Relaxed);
    let acks_per_sec = if go > 0 && last_ack > go {
        acked as f64 / ((last_ack - go) as f64 / 1e9)
    } else {
        0.0
    };
    let mut buckets: Vec<u64> = ctx.buckets.iter().map(|b| b.load(Relaxed)).collect();
    while buckets.last() == Some(&0) {
        buckets.pop();
    }
    let (server, harness, send_secs, deliver_secs) = match &i.measure {
        Some(m) => (
            cost(m.server_before, m.server_after, m.total_secs, received),
            cost(m.harness_before, m.harness_after, m.total_secs, received),
            m.send_secs,
            m.total_secs,
        ),
        None => (
            cost(i.server_before, i.server_end, i.total_secs, 0),
            cost(i.self_before, i.self_end, i.total_secs, 0),
            0.0,
            0.0,
        ),
    };
    let joined = c.joined.load(Relaxed);
    let last_joined = c.last_joined_ns.load(Relaxed);
    let join_secs = if last_joined > ctx.t0_ns {
        (last_joined - ctx.t0_ns) as f64 / 1e9
    } else {
        0.0
    };
    let idle = if ctx.plan.is_idle() {
        let joined = c.joined.load(Relaxed);
        let before = i.server_before.map_or(0, |s| s.rss_kib);
        let after = i.idle_rss.or(i.server_connected).map_or(0, |s| s.rss_kib);
        Some(Idle {
            rss_before_kib: before,
            rss_after_kib: after,
            rss_per_connection_bytes: (i.server_before.is_some() && joined > 0)
                .then(|| (after.saturating_sub(before) as f64 * 1024.0) / joined as f64),
            harness_rss_kib: i.self_end.map_or(0, |s| s.rss_kib),
        })
    } else {
        None
    };
    let (cores, cpu) = crate::sys::machine();
    Report {
        label: ctx.args.label.clone(),
        url: ctx.args.url.join(","),
        target_kind: ctx.args.target_kind,
        format: ctx.args.format,
        plan: ctx.plan.clone(),
        machine: Machine { cores, cpu },
        fd_limit: i.fd,
        connections: Connections {
            planned: ctx.plan.connections,
            opened: c.opened.load(Relaxed),
            failed: c.failed.load(Relaxed),
            join_failed: c.join_failed.load(Relaxed),
            joined: c.joined.load(Relaxed),
            closed_by_server: c.closed_by_server.load(Relaxed),
            close_reasons: ctx.close_codes.lock().clone(),
            connect_errors: ctx.connect_errors.lock().clone(),
            first_connect_error: ctx.first_connect_error.lock().clone(),
            reconnects: c.reconnects.load(Relaxed),
            reconnect_failed: c.reconnect_failed.load(Relaxed),
            joins_per_sec: if join_secs > 0.0 {
                joined as f64 / join_secs
            } else {
                0.0
            },
        },
        messages: Messages {
            sent: c.sent.load(Relaxed),
            acked,
            send_failed: c.send_failed.load(Relaxed),
            ack_timeouts: c.ack_timeouts.load(Relaxed),
            acks_per_sec,
        },
        deliveries: Deliveries {
            expected: i.tally.expected,
            received,
            lost: i.tally.lost,
            gaps: i.tally.gaps,
            duplicates: i.tally.duplicates,
            reorders: i.tally.reorders,
            rooms_with_gaps_or_duplicates: i.tally.rooms_with_gaps_or_dups.len(),
            rooms_with_reorders: i.tally.rooms_with_reorders.len(),
            replayed: c.replayed.load(Relaxed),
            wrong_room: c.wrong_room.load(Relaxed),
            other_frames: c.other_frames.load(Relaxed),
            heartbeats: c.heartbeats.load(Relaxed),
            window_secs,
            per_sec: if window_secs > 0.0 {
                received as f64 / window_secs
            } else {
                0.0
            },
            bytes_read: c.bytes_read.load(Relaxed),
        },
        latency,
        latency_steady,
        server,
        harness,
        idle,
        timing: Timing {
            connect_secs: i.connect_secs,
            join_secs,
            settle_secs: i.settle_secs,
            send_secs,
            deliver_secs,
            total_secs: i.total_secs,
        },
        stopped_by: i.stopped_by,
        metrics: i.metrics,
        errors: ctx.errors.lock().clone(),
        bucket_ms: BUCKET_MS,
        deliveries_over_time: buckets,
        latency_curve,
    }
}

fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn us(v: u64) -> String {
    if v >= 10_000 {
        format!("{:.1} ms", v as f64 / 1000.0)
    } else {
        format!("{v} µs")
    }
}

impl Report {
    /// The human-readable summary.
    pub fn table(&self) -> String {
        let p = &self.plan;
        let mut s = String::new();
        let shape = match p.scenario {
            "idle" => format!(
                "{} connections in rooms of {}, held {:.1} s",
                p.connections, p.members, p.hold
            ),
            "join-storm" => format!(
                "{} connections join one room at once, held {:.1} s",
                p.connections, p.hold
            ),
            _ => {
                let pace = if p.rate > 0.0 {
                    format!("{} msg/s each", p.rate)
                } else {
                    format!("as fast as acks allow, window {}", p.window)
                };
                let mut x = format!(
                    "{} room(s) × {} members, {} sender(s)/room × {} msgs, {} B, {pace}",
                    p.rooms, p.members, p.senders, p.messages, p.payload
                );
                if p.droppers > 0 && p.drop_together {
                    let _ = write!(
                        x,
                        ", {} droppers/room drop together every {} ms",
                        p.droppers, p.drop_every_ms
                    );
                } else if p.droppers > 0 {
                    let _ = write!(
                        x,
                        ", {} droppers/room every ~{} ms",
                        p.droppers, p.drop_every_ms
                    );
                }
                x
            }
        };
        let row = |s: &mut String, k: &str, v: String| {
            let _ = writeln!(s, "  {k:<13} {v}");
        };
        let _ = writeln!(
            s,
            "parlor-loadtest {}{}",
            p.scenario,
            self.label
                .as_deref()
                .map(|l| format!(" [{l}]"))
                .unwrap_or_default()
        );
        row(&mut s, "shape", shape);
        row(
            &mut s,
            "target",
            format!("{} ({:?}, {:?})", self.url, self.target_kind, self.format).to_lowercase(),
        );
        let cn = &self.connections;
        let mut conns = format!(
            "{} planned, {} opened, {} failed, {} join failed, {} closed by server",
            cn.planned, cn.opened, cn.failed, cn.join_failed, cn.closed_by_server
        );
        if !cn.close_reasons.is_empty() {
            let _ = write!(conns, " {:?}", cn.close_reasons);
        }
        row(&mut s, "connections", conns);
        if !cn.connect_errors.is_empty() {
            row(
                &mut s,
                "conn errors",
                format!(
                    "{:?}; first: {}",
                    cn.connect_errors,
                    cn.first_connect_error.as_deref().unwrap_or("-")
                ),
            );
        }
        if cn.reconnects > 0 || cn.reconnect_failed > 0 {
            row(
                &mut s,
                "reconnects",
                format!(
                    "{} ({} failed), {} messages replayed",
                    cn.reconnects, cn.reconnect_failed, self.deliveries.replayed
                ),
            );
        }
        if let Some(w) = &self.fd_limit.warning {
            row(&mut s, "fd limit", w.clone());
        }
        if p.is_idle() {
            row(
                &mut s,
                "joins",
                format!(
                    "{} joined in {:.2} s ({} joins/s, connect+join)",
                    cn.joined,
                    self.timing.join_secs,
                    si(cn.joins_per_sec)
                ),
            );
            row(
                &mut s,
                "heartbeats",
                format!(
                    "{} heartbeat frames received (pings answered)",
                    self.deliveries.heartbeats
                ),
            );
        } else {
            let m = &self.messages;
            row(
                &mut s,
                "messages",
                format!(
                    "{} sent, {} acked ({} acks/s), {} send failed, {} ack timeouts",
                    m.sent,
                    m.acked,
                    si(m.acks_per_sec),
                    m.send_failed,
                    m.ack_timeouts
                ),
            );
            let d = &self.deliveries;
            row(
                &mut s,
                "deliveries",
                format!(
                    "{} expected, {} received, {} lost, {} gaps, {} duplicates, {} reorders",
                    d.expected, d.received, d.lost, d.gaps, d.duplicates, d.reorders
                ),
            );
            row(
                &mut s,
                "throughput",
                format!(
                    "{} deliveries/s over {:.2} s (first to last delivery)",
                    si(d.per_sec),
                    d.window_secs
                ),
            );
            if let Some(l) = &self.latency {
                row(
                    &mut s,
                    "latency",
                    format!(
                        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n={})",
                        us(l.p50_us),
                        us(l.p90_us),
                        us(l.p99_us),
                        us(l.p999_us),
                        us(l.max_us),
                        l.count
                    ),
                );
            }
            if let Some(l) = &self.latency_steady {
                row(
                    &mut s,
                    "steady lat.",
                    format!(
                        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (members that never dropped, n={})",
                        us(l.p50_us),
                        us(l.p90_us),
                        us(l.p99_us),
                        us(l.p999_us),
                        us(l.max_us),
                        l.count
                    ),
                );
            }
        }
        let cost_row = |s: &mut String, k: &str, c: &Option<Cost>| {
            if let Some(c) = c {
                row(
                    s,
                    k,
                    format!(
                        "{:.2} CPU s ({:.2} cores){}, RSS {} MiB",
                        c.cpu_secs,
                        c.cores_busy,
                        c.cpu_us_per_delivery
                            .map(|v| format!(", {v:.3} µs CPU/delivery"))
                            .unwrap_or_default(),
                        c.rss_kib.unwrap_or(0) / 1024
                    ),
                );
            }
        };
        cost_row(&mut s, "server", &self.server);
        cost_row(&mut s, "harness", &self.harness);
        if let Some(i) = &self.idle {
            row(
                &mut s,
                "idle memory",
                match i.rss_per_connection_bytes {
                    Some(b) => format!(
                        "server RSS {} → {} MiB: {:.0} B ({:.2} KiB) per connection; harness RSS {} MiB",
                        i.rss_before_kib / 1024,
                        i.rss_after_kib / 1024,
                        b,
                        b / 1024.0,
                        i.harness_rss_kib / 1024
                    ),
                    None => "(give --server-pid to measure)".into(),
                },
            );
        }
        if let Some(m) = &self.metrics {
            let f = |v: Option<f64>, d: usize| v.map_or("-".to_string(), |v| format!("{v:.d$}"));
            row(
                &mut s,
                "store",
                match &m.error {
                    Some(e) => format!("metrics not scraped: {e}"),
                    None => format!(
                        "{} commits, {} messages per commit, {} ms per commit (from {})",
                        f(m.commits, 0),
                        f(m.messages_per_commit, 1),
                        f(m.commit_ms_mean, 2),
                        m.url
                    ),
                },
            );
            if m.redis_calls.is_some_and(|c| c > 0.0) {
                row(
                    &mut s,
                    "redis",
                    format!(
                        "{} calls per message ({} appends per message), {} ms per call, {} gap fills",
                        f(m.redis_calls_per_message, 3),
                        f(m.redis_appends_per_message, 3),
                        f(m.redis_ms_mean, 3),
                        f(m.gap_fills, 0)
                    ),
                );
            }
        }
        if !self.errors.is_empty() {
            row(&mut s, "error frames", format!("{:?}", self.errors));
        }
        let t = &self.timing;
        row(
            &mut s,
            "timing",
            format!(
                "connect {:.1} s, settle {:.1} s, send {:.1} s, send+deliver {:.1} s, total {:.1} s",
                t.connect_secs, t.settle_secs, t.send_secs, t.deliver_secs, t.total_secs
            ),
        );
        if let Some(why) = &self.stopped_by {
            row(&mut s, "stopped by", why.clone());
        }
        s
    }

    /// Latency distribution and deliveries over time, side by side.
    pub fn write_svg(&self, path: &std::path::Path) -> anyhow::Result<()> {
        use plotters::prelude::*;
        let root = SVGBackend::new(path, (1200, 450)).into_drawing_area();
        root.fill(&WHITE)?;
        let (left, right) = root.split_horizontally(600);
        let title = format!(
            "{} {}",
            self.plan.scenario,
            self.label.clone().unwrap_or_default()
        );
        // Latency: percentile on a "nines" axis (x = -log10(1 - p)).
        let pts: Vec<(f64, f64)> = self
            .latency_curve
            .iter()
            .filter(|(p, _)| *p < 100.0)
            .map(|(p, v)| (-(1.0 - p / 100.0).log10(), *v as f64 / 1000.0))
            .collect();
        let ymax = pts.iter().map(|p| p.1).fold(0.1, f64::max) * 1.1;
        let mut ch = ChartBuilder::on(&left)
            .caption(format!("latency, ms ({title})"), ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..4.0, 0.0..ymax)?;
        ch.configure_mesh()
            .x_desc("percentile")
            .x_label_formatter(&|x| format!("{:.2}", 100.0 * (1.0 - 10f64.powf(-x))))
            .draw()?;
        ch.draw_series(LineSeries::new(pts.iter().copied(), &BLUE))?;
        ch.draw_series(pts.iter().map(|&p| Circle::new(p, 3, BLUE.filled())))?;
        // Deliveries per second over time.
        let scale = 1000.0 / self.bucket_ms as f64;
        let series: Vec<(f64, f64)> = self
            .deliveries_over_time
            .iter()
            .enumerate()
            .map(|(i, &n)| (i as f64 * self.bucket_ms as f64 / 1000.0, n as f64 * scale))
            .collect();
        let xmax = series.last().map_or(1.0, |p| p.0.max(0.1) + 0.1);
        let ymax = series.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
        let mut ch = ChartBuilder::on(&right)
            .caption("deliveries/s over time (s since start)", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..xmax, 0.0..ymax)?;
        ch.configure_mesh().x_desc("seconds").draw()?;
        ch.draw_series(LineSeries::new(series, &RED))?;
        root.present()?;
        Ok(())
    }
}
