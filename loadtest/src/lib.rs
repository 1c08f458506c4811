//! parlor-loadtest: drives a server of the parlor protocol (or, in JSON,
//! the teaching servers it grew out of) with many WebSocket connections and
//! reports what arrived, how fast, how late, and what it cost the server.
//!
//! Scenarios: `fanout` (R rooms × M members, S senders per room),
//! `rooms` (many small rooms), `idle` (C joined connections, memory per
//! connection), `join-storm` (C connections join one room at once: how
//! long it takes), `reconnect` (members drop and rejoin with `since` under
//! load, continuity checked). `chart` draws result files side by side.
//! See `loadtest/README.md`.

pub mod chart;
pub mod metrics;
pub mod report;
pub mod run;
pub mod scan;
pub mod sys;
pub mod ws;

use std::path::PathBuf;

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};

pub use report::Report;
pub use run::run;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "parlor-loadtest",
    version,
    about = "Load generator and checker for parlor (and the teaching chat servers)"
)]
pub struct Args {
    /// Server WebSocket URL (ws:// only). Repeat it (or separate URLs with
    /// commas) to spread the members over several nodes of a cluster,
    /// round-robin by connection.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8080/ws"
    )]
    pub url: Vec<String>,

    /// What the server is: parlor (acks, `joined`) or a teaching seed server
    /// (no ack: a sender's own echo stands in for it; join answered by
    /// `presence`; reorders counted, not failed). The ceiling server
    /// `limit` (../shared/limit) is driven as `seed`: no ack, join answered
    /// by `joined`.
    #[arg(long, global = true, value_enum, default_value_t = TargetKind::Parlor)]
    pub target_kind: TargetKind,

    /// Wire format (msgpack: subprotocol parlor.v1.msgpack; parlor only).
    #[arg(long, global = true, value_enum, default_value_t = Format::Json)]
    pub format: Format,

    /// PID of the server, to report its CPU seconds and RSS from /proc;
    /// several (repeated or comma-separated) are summed, e.g. every node
    /// of a cluster and its Redis.
    #[arg(long, global = true, value_delimiter = ',')]
    pub server_pid: Vec<u32>,

    /// Print one JSON object on stdout (the table goes to stderr).
    #[arg(long, global = true)]
    pub json: bool,

    /// Write an SVG with the latency distribution and deliveries over time.
    #[arg(long, global = true)]
    pub svg: Option<PathBuf>,

    /// Prometheus endpoint of the server (e.g. http://127.0.0.1:8080/metrics),
    /// scraped just before the senders start and after the deliveries: the
    /// report gives the deltas, and messages per store commit (and in
    /// cluster mode Redis calls per message). Several (one per node) are
    /// summed.
    #[arg(long, global = true, value_delimiter = ',')]
    pub metrics_url: Vec<String>,

    /// Hard limit on the whole run, in seconds; every phase stops by then.
    #[arg(long, global = true, default_value_t = 120.0)]
    pub deadline: f64,

    /// Connection handshakes in flight at once.
    #[arg(long, global = true, default_value_t = 128)]
    pub connect_concurrency: usize,

    /// Timeout of one connect + handshake + join, in seconds.
    #[arg(long, global = true, default_value_t = 30.0)]
    pub connect_timeout: f64,

    /// Source addresses 127.0.0.1..=127.0.0.N used round-robin for
    /// loopback targets (0: let the kernel pick).
    #[arg(long, global = true, default_value_t = 254)]
    pub source_addrs: usize,

    /// Deliveries stop being awaited after this many seconds without progress.
    #[arg(long, global = true, default_value_t = 3.0)]
    pub drain_timeout: f64,

    /// Longest wait for join traffic to go quiet before sending, in seconds.
    #[arg(long, global = true, default_value_t = 60.0)]
    pub settle_max: f64,

    /// Name of this run in the report (e.g. the server variant).
    #[arg(long, global = true)]
    pub label: Option<String>,

    /// No progress bar.
    #[arg(long, global = true)]
    pub no_progress: bool,

    /// Worker threads of the harness runtime [default: cores].
    #[arg(long, global = true)]
    pub threads: Option<usize>,

    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Parlor,
    Seed,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Msgpack,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Scenario {
    /// R rooms × M members, S senders per room, N messages each
    /// [defaults: 1 × 1000, 10 senders × 100].
    Fanout(LoadArgs),
    /// Many small rooms [defaults: 1000 × 10, 1 sender × 10].
    Rooms(LoadArgs),
    /// C idle connections joined to rooms of M; server memory per connection.
    Idle(IdleArgs),
    /// C connections connect and join ONE room as fast as they can; the
    /// seconds until the last `joined` (and server memory afterwards).
    JoinStorm(JoinStormArgs),
    /// Fan-out while members drop and rejoin with `since`; continuity checked
    /// [defaults: 1 × 200, 5 senders × 200 at 100/s, 50 droppers every 300 ms].
    Reconnect(ReconnectArgs),
    /// Draw result files (`--json` output) side by side: one horizontal bar
    /// per server (label), one panel per metric. Not a load run.
    Chart(crate::chart::ChartArgs),
}

#[derive(ClapArgs, Debug, Clone, Default)]
pub struct LoadArgs {
    /// Rooms.
    #[arg(long)]
    pub rooms: Option<usize>,
    /// Members per room (senders included).
    #[arg(long)]
    pub members: Option<usize>,
    /// Senders per room.
    #[arg(long)]
    pub senders: Option<usize>,
    /// Messages per sender.
    #[arg(long)]
    pub messages: Option<u64>,
    /// Messages per second per sender; 0 = as fast as the window allows.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Messages a sender may have unacknowledged (seed servers: own echo
    /// not yet seen) [default: 10 unpaced, 1000 paced].
    #[arg(long)]
    pub window: Option<usize>,
    /// Content size in bytes (send time and sender prefix included).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Longest wait for one ack, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub ack_timeout: f64,
}

#[derive(ClapArgs, Debug, Clone)]
pub struct IdleArgs {
    /// Connections.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Connections per room.
    #[arg(long, default_value_t = 10)]
    pub members: usize,
    /// Seconds to hold them open before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub hold: f64,
}

#[derive(ClapArgs, Debug, Clone)]
pub struct JoinStormArgs {
    /// Connections, all joining the same room.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Seconds to hold them open after the last join before measuring memory.
    #[arg(long, default_value_t = 0.0)]
    pub hold: f64,
}

#[derive(ClapArgs, Debug, Clone)]
pub struct ReconnectArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Members per room that keep dropping and rejoining.
    #[arg(long, default_value_t = 50)]
    pub droppers: usize,
    /// Mean time between a dropper's disconnects, in milliseconds.
    #[arg(long, default_value_t = 300)]
    pub drop_every_ms: u64,
    /// Mass reconnect: every dropper drops at the same instants (every
    /// `--drop-every-ms` after the senders start) instead of at random times.
    #[arg(long)]
    pub together: bool,
}

/// The resolved shape of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub scenario: &'static str,
    pub rooms: usize,
    pub members: usize,
    /// Connections in all (the last room of `idle` may be smaller).
    pub connections: usize,
    pub senders: usize,
    pub messages: u64,
    pub rate: f64,
    pub window: usize,
    pub payload: usize,
    pub ack_timeout: f64,
    pub droppers: usize,
    pub drop_every_ms: u64,
    /// Droppers drop all at once (mass reconnect).
    pub drop_together: bool,
    pub hold: f64,
}

impl Plan {
    /// Scenarios that only connect, join and hold (no senders).
    pub fn is_idle(&self) -> bool {
        matches!(self.scenario, "idle" | "join-storm")
    }

    /// The shape of a load run; an error for `chart`, which is not one.
    pub fn from_args(s: &Scenario) -> anyhow::Result<Plan> {
        fn load(scenario: &'static str, a: &LoadArgs, d: (usize, usize, usize, u64, f64)) -> Plan {
            let rooms = a.rooms.unwrap_or(d.0).max(1);
            let members = a.members.unwrap_or(d.1).max(1);
            let rate = if a.rate > 0.0 { a.rate } else { d.4 };
            Plan {
                scenario,
                rooms,
                members,
                connections: rooms * members,
                senders: a.senders.unwrap_or(d.2).min(members),
                messages: a.messages.unwrap_or(d.3),
                rate,
                window: a
                    .window
                    .unwrap_or(if rate > 0.0 { 1000 } else { 10 })
                    .max(1),
                payload: a.payload,
                ack_timeout: a.ack_timeout,
                droppers: 0,
                drop_every_ms: 0,
                drop_together: false,
                hold: 0.0,
            }
        }
        let idle = |scenario, connections: usize, members: usize, hold| {
            let members = members.max(1);
            Plan {
                scenario,
                rooms: connections.div_ceil(members),
                members,
                connections,
                senders: 0,
                messages: 0,
                rate: 0.0,
                window: 1,
                payload: 0,
                ack_timeout: 0.0,
                droppers: 0,
                drop_every_ms: 0,
                drop_together: false,
                hold,
            }
        };
        Ok(match s {
            Scenario::Fanout(a) => load("fanout", a, (1, 1000, 10, 100, 0.0)),
            Scenario::Rooms(a) => load("rooms", a, (1000, 10, 1, 10, 0.0)),
            Scenario::Reconnect(r) => {
                let mut p = load("reconnect", &r.load, (1, 200, 5, 200, 100.0));
                p.droppers = r.droppers.min(p.members - p.senders);
                p.drop_every_ms = r.drop_every_ms.max(10);
                p.drop_together = r.together;
                p
            }
            Scenario::Idle(i) => idle("idle", i.connections, i.members, i.hold),
            Scenario::JoinStorm(j) => {
                idle("join-storm", j.connections, j.connections.max(1), j.hold)
            }
            Scenario::Chart(_) => anyhow::bail!("`chart` draws results; it is not a load run"),
        })
    }
}
