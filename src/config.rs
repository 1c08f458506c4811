//! The one configuration struct: clap flags, each also read from `PARLOR_*`.
//! Library code receives a `Config`; it never reads the environment itself.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(name = "parlor", version, about = "Real-time chat server", args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: Config,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server (the default when no subcommand is given).
    Serve(Config),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// Embedded append-only log in one redb file under --data-dir.
    Redb,
    /// In memory only: history is lost on exit (tests, benchmarks).
    Memory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Durability {
    /// Every acked message is committed and synced to disk.
    Immediate,
    /// Committed per batch, synced at most every --sync-interval-ms.
    Batched,
    /// Committed but never explicitly synced.
    None,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// Address to listen on for HTTP and WebSocket.
    #[arg(long, env = "PARLOR_ADDR", default_value = "0.0.0.0:8080")]
    pub addr: SocketAddr,

    /// Directory for the store's files.
    #[arg(long, env = "PARLOR_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Where history lives.
    #[arg(long, env = "PARLOR_STORE", value_enum, default_value_t = StoreKind::Redb)]
    pub store: StoreKind,

    /// When an `ack` is sent, relative to the disk.
    #[arg(long, env = "PARLOR_DURABILITY", value_enum, default_value_t = Durability::Immediate)]
    pub durability: Durability,

    /// Longest time between syncs with --durability batched, in milliseconds.
    #[arg(long, env = "PARLOR_SYNC_INTERVAL_MS", default_value_t = 10)]
    pub sync_interval_ms: u64,

    /// Room shard workers [default: number of cores].
    #[arg(long, env = "PARLOR_WORKERS")]
    pub workers: Option<usize>,

    /// Largest WebSocket message, in bytes, also when fragmented (larger: close 1009).
    #[arg(long, env = "PARLOR_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,

    /// Largest message `content`, in UTF-8 bytes (larger: error too_large).
    #[arg(long, env = "PARLOR_MAX_CONTENT_BYTES", default_value_t = 16 * 1024)]
    pub max_content_bytes: usize,

    /// Rooms one connection may be joined to at once.
    #[arg(long, env = "PARLOR_MAX_ROOMS_PER_CONN", default_value_t = 100)]
    pub max_rooms_per_conn: usize,

    /// Sustained `message` frames per second per connection.
    #[arg(long, env = "PARLOR_RATE_PER_SEC", default_value_t = 50.0)]
    pub rate_per_sec: f64,

    /// Burst of `message` frames a connection may send above the rate.
    #[arg(long, env = "PARLOR_RATE_BURST", default_value_t = 100.0)]
    pub rate_burst: f64,

    /// Outbound queue per connection, in frames (full: close 4008).
    #[arg(long, env = "PARLOR_OUTBOX_FRAMES", default_value_t = 4096)]
    pub outbox_frames: usize,

    /// Outbound queue per connection, in bytes (full: close 4008).
    #[arg(long, env = "PARLOR_OUTBOX_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub outbox_bytes: usize,

    /// Interval of heartbeat frames and pings, in milliseconds; a connection
    /// silent for twice this long is closed.
    #[arg(long, env = "PARLOR_HEARTBEAT_MS", default_value_t = 15_000)]
    pub heartbeat_ms: u64,

    /// Most messages replayed on `join` with `since` (older: page with history).
    #[arg(long, env = "PARLOR_REPLAY_LIMIT", default_value_t = 10_000)]
    pub replay_limit: u64,

    /// Recent messages sent in a `history` frame on `join` without `since`.
    #[arg(long, env = "PARLOR_HISTORY_ON_JOIN", default_value_t = 50)]
    pub history_on_join: u64,

    /// Rooms with more members than this send no presence_diff frames.
    #[arg(long, env = "PARLOR_PRESENCE_DIFF_MAX_MEMBERS", default_value_t = 1000)]
    pub presence_diff_max_members: usize,

    /// Window over which presence changes are coalesced, in milliseconds (≤ 250).
    #[arg(long, env = "PARLOR_PRESENCE_WINDOW_MS", default_value_t = 100)]
    pub presence_window_ms: u64,

    /// Message ids per room remembered for idempotent retries.
    #[arg(long, env = "PARLOR_DEDUP_WINDOW", default_value_t = 10_000)]
    pub dedup_window: usize,

    /// Messages kept per room; older ones are deleted in the background.
    #[arg(long, env = "PARLOR_RETAIN_MESSAGES", default_value_t = 1_000_000)]
    pub retain_messages: u64,

    /// Serve a WebSocket echo endpoint at /echo (conformance testing only).
    #[arg(long, env = "PARLOR_ENABLE_ECHO")]
    pub enable_echo: bool,
}

impl Default for Config {
    fn default() -> Self {
        Cli::parse_from(["parlor"]).serve
    }
}

impl Config {
    pub fn workers(&self) -> usize {
        self.workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.max(10))
    }

    pub fn presence_window(&self) -> Duration {
        Duration::from_millis(self.presence_window_ms.clamp(1, 250))
    }

    /// Options for tests and tools: memory store, ephemeral port, defaults
    /// otherwise.
    pub fn for_tests() -> Config {
        Config {
            addr: "127.0.0.1:0".parse().unwrap(),
            store: StoreKind::Memory,
            ..Config::default()
        }
    }
}

impl Cli {
    pub fn into_config(self) -> Config {
        match self.command {
            Some(Command::Serve(c)) => c,
            None => self.serve,
        }
    }
}
