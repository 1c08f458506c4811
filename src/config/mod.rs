//! The one configuration struct: clap flags, each also read from `PARLOR_*`,
//! and optionally from a TOML file (`--config`). Precedence: flags > env >
//! file > defaults. Library code receives a `Config`; it never reads the
//! environment itself.

mod file;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

pub use file::{redact_url, ConfigError, Invocation};

#[derive(Parser, Debug)]
#[command(
    name = "parlor",
    version,
    about = "Real-time chat server",
    args_conflicts_with_subcommands = true
)]
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
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print the effective configuration (flags > env > file > defaults) as
    /// TOML, with secrets redacted.
    Print(Config),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Embedded append-only log in one redb file under --data-dir.
    Redb,
    /// In memory only: history is lost on exit (tests, benchmarks).
    Memory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Every acked message is committed and synced to disk.
    Immediate,
    /// Committed per batch, synced at most every --sync-interval-ms.
    Batched,
    /// Committed but never explicitly synced.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterMode {
    /// One Redis server (the first URL).
    Single,
    /// A Redis Cluster; the URLs are seed nodes.
    Cluster,
}

#[derive(clap::Args, Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
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

    /// Make restarts after a crash instant (redb quick repair) at the cost
    /// of slower commits; without it, reopening walks the file (≈ 1.7 s/GB).
    #[arg(long, env = "PARLOR_QUICK_REPAIR")]
    pub quick_repair: bool,

    /// Threads that run connections and fan big rooms out [default: number of cores].
    #[arg(long, env = "PARLOR_WORKERS")]
    pub workers: Option<usize>,

    /// Room shards, each sequencing its share of the rooms as a task on
    /// the server's runtime [default: one per three workers].
    #[arg(long, env = "PARLOR_SHARDS")]
    pub shards: Option<usize>,

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

    /// Sustained requests per second per connection that cost the server a
    /// store read or a pass over a room (`join`, `leave`, `history`,
    /// `presence`); over it: error rate_limited.
    #[arg(long, env = "PARLOR_REQUEST_RATE_PER_SEC", default_value_t = 20.0)]
    pub request_rate_per_sec: f64,

    /// Burst of such requests a connection may send above the rate.
    #[arg(long, env = "PARLOR_REQUEST_BURST", default_value_t = 40.0)]
    pub request_burst: f64,

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

    /// Rooms without members are unloaded from memory after this long
    /// without activity, in milliseconds (they reload from the store).
    #[arg(long, env = "PARLOR_ROOM_IDLE_MS", default_value_t = 60_000)]
    pub room_idle_ms: u64,

    /// Rooms one connection, or one user posting over the HTTP API, may
    /// create per minute (a message to a room the store does not have
    /// creates it); more: error rate_limited.
    #[arg(long, env = "PARLOR_ROOM_CREATIONS_PER_MIN", default_value_t = 30.0)]
    pub room_creations_per_min: f64,

    /// Most rooms the store may hold; a message that would create one more
    /// gets error rate_limited (joining such a room still works).
    #[arg(long, env = "PARLOR_MAX_ROOMS", default_value_t = 1_000_000)]
    pub max_rooms: usize,

    /// Message ids per room remembered for idempotent retries.
    #[arg(long, env = "PARLOR_DEDUP_WINDOW", default_value_t = 10_000)]
    pub dedup_window: usize,

    /// Messages kept per room; older ones are deleted in the background.
    #[arg(long, env = "PARLOR_RETAIN_MESSAGES", default_value_t = 1_000_000)]
    pub retain_messages: u64,

    /// Delete messages older than this (e.g. `30d`, `12h`) [default: off].
    #[arg(long, env = "PARLOR_RETAIN_AGE", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "human_duration")]
    pub retain_age: Option<Duration>,

    /// How often retention runs, in milliseconds.
    #[arg(long, env = "PARLOR_RETENTION_INTERVAL_MS", default_value_t = 10_000)]
    pub retention_interval_ms: u64,

    /// Serve a WebSocket echo endpoint at /echo (conformance testing only).
    #[arg(long, env = "PARLOR_ENABLE_ECHO")]
    pub enable_echo: bool,

    /// HS256 secret: when set, every WebSocket needs a valid token
    /// (`?token=` or `Authorization: Bearer`) [default: none, anonymous users].
    #[arg(long, env = "PARLOR_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// File holding the HS256 secret (alternative to --jwt-secret).
    #[arg(long, env = "PARLOR_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,

    /// Key required as `Authorization: Bearer` on the HTTP write API
    /// [default: none, writes open].
    #[arg(long, env = "PARLOR_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// File holding the API key (alternative to --api-key).
    #[arg(long, env = "PARLOR_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,

    /// Whether the HTTP read API is open without the API key.
    #[arg(long, env = "PARLOR_API_READ_OPEN", default_value_t = true, action = clap::ArgAction::Set)]
    pub api_read_open: bool,

    /// Origins allowed to open a WebSocket (comma-separated, e.g.
    /// https://chat.example.com); requests without `Origin` are allowed
    /// [default: any origin].
    #[arg(long, env = "PARLOR_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Most open connections; more get HTTP 503.
    #[arg(long, env = "PARLOR_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Most WebSocket connections per user; more get HTTP 429 [default: no limit].
    #[arg(long, env = "PARLOR_MAX_CONNS_PER_USER")]
    pub max_conns_per_user: Option<usize>,

    /// Connections beyond --max-connections kept for `GET /healthz` and
    /// `/metrics` only, one request each (anything else there: HTTP 503).
    #[arg(long, env = "PARLOR_ADMIN_RESERVE", default_value_t = 8)]
    pub admin_reserve: usize,

    /// Longest time to receive an HTTP request body, in milliseconds (then
    /// HTTP 408 and the connection is closed).
    #[arg(long, env = "PARLOR_BODY_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_timeout_ms: u64,

    /// Longest an HTTP response may wait on a client that does not read
    /// it, in milliseconds (then the connection is closed).
    #[arg(long, env = "PARLOR_WRITE_TIMEOUT_MS", default_value_t = 30_000)]
    pub write_timeout_ms: u64,

    /// Most message bytes (content and user names) in one page of the HTTP
    /// history API; a fuller page ends early with `more: true`.
    #[arg(long, env = "PARLOR_MAX_PAGE_BYTES", default_value_t = 1024 * 1024)]
    pub max_page_bytes: usize,

    /// PEM certificate chain: serve HTTPS/WSS directly (needs --tls-key).
    #[arg(long, env = "PARLOR_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "PARLOR_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Log line format.
    #[arg(long, env = "PARLOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Seconds to wait for sessions to close on SIGTERM/SIGINT.
    #[arg(long, env = "PARLOR_SHUTDOWN_TIMEOUT", default_value_t = 10)]
    pub shutdown_timeout: u64,

    /// Cluster mode: share rooms with other parlor nodes through Redis,
    /// which then holds the log instead of --store (`redis://[user:pass@]HOST:PORT`,
    /// `rediss://` for TLS; several comma-separated seed nodes for a Redis
    /// Cluster) [default: off, one node].
    #[arg(
        long,
        env = "PARLOR_CLUSTER",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub cluster: Vec<String>,

    /// What --cluster points at [default: single, or cluster when several
    /// URLs are given].
    #[arg(long, env = "PARLOR_CLUSTER_MODE", value_enum)]
    pub cluster_mode: Option<ClusterMode>,

    /// Cluster mode: how often this node proves to the others it is alive,
    /// in milliseconds; a node silent for 3 of these is dead and its users
    /// leave every room.
    #[arg(long, env = "PARLOR_CLUSTER_HEARTBEAT_MS", default_value_t = 1000)]
    pub cluster_heartbeat_ms: u64,

    /// Cluster mode: longest a Redis call may take, in milliseconds; then
    /// the request it serves fails (`error internal`).
    #[arg(long, env = "PARLOR_CLUSTER_TIMEOUT_MS", default_value_t = 2000)]
    pub cluster_timeout_ms: u64,

    /// TOML file with any of these settings (keys are the flag names,
    /// e.g. `max-frame-bytes = 65536`).
    #[arg(long, env = "PARLOR_CONFIG")]
    pub config: Option<PathBuf>,
}

impl Default for Config {
    /// The documented defaults (environment variables are not consulted).
    fn default() -> Self {
        let matches = Cli::command()
            .mut_args(|a| a.env(None::<&str>))
            .get_matches_from(["parlor"]);
        Cli::from_arg_matches(&matches)
            .expect("defaults parse")
            .serve
    }
}

fn human_duration<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
        None => s.serialize_none(),
    }
}

impl Config {
    /// What history the store keeps, as of `now_ms`.
    pub fn retention(&self, now_ms: u64) -> crate::store::Retention {
        crate::store::Retention {
            keep: self.retain_messages,
            older_than_ms: self
                .retain_age
                .map(|age| now_ms.saturating_sub(age.as_millis() as u64)),
        }
    }

    pub fn workers(&self) -> usize {
        self.workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }

    /// One shard per three workers unless set (see `shard` for why not
    /// one per worker).
    pub fn shards(&self) -> usize {
        self.shards
            .unwrap_or_else(|| self.workers().div_ceil(3))
            .max(1)
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.max(10))
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms.max(1))
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms.max(1))
    }

    pub fn presence_window(&self) -> Duration {
        Duration::from_millis(self.presence_window_ms.clamp(1, 250))
    }

    /// Whether this node shares its rooms through Redis (`--cluster`).
    pub fn clustered(&self) -> bool {
        !self.cluster.is_empty()
    }

    /// What `--cluster` points at.
    pub fn cluster_mode(&self) -> ClusterMode {
        self.cluster_mode.unwrap_or(if self.cluster.len() > 1 {
            ClusterMode::Cluster
        } else {
            ClusterMode::Single
        })
    }

    pub fn cluster_heartbeat(&self) -> Duration {
        Duration::from_millis(self.cluster_heartbeat_ms.max(10))
    }

    pub fn cluster_timeout(&self) -> Duration {
        Duration::from_millis(self.cluster_timeout_ms.max(10))
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

#[cfg(test)]
mod tests {
    use super::Config;

    #[test]
    fn shards_default_to_one_per_three_workers_and_never_to_none() {
        let with = |workers, shards| Config {
            workers: Some(workers),
            shards,
            ..Config::for_tests()
        };
        for (workers, shards) in [(1, 1), (2, 1), (3, 1), (4, 2), (8, 3), (16, 6)] {
            assert_eq!(with(workers, None).shards(), shards, "{workers} workers");
        }
        assert_eq!(with(2, Some(5)).shards(), 5, "set, it wins");
        assert_eq!(with(2, Some(0)).shards(), 1);
    }
}
