//! parlor: a real-time chat server. Clients connect over WebSocket, join
//! rooms, and every message gets a gapless per-room sequence number, is
//! stored in an append-only log and fanned out to every member; a client that
//! drops reconnects and replays exactly what it missed. The wire contract is
//! `docs/PROTOCOL.md`.
//!
//! # Layout
//!
//! - `rooms`: the room core, a sans-IO state machine — sequencer, members,
//!   presence, dedup, join planning and the replay→live hand-off, commit
//!   bookkeeping, fan-out. Inputs with the time in, effects out.
//! - `shard`: one driver thread per worker running a room core and doing its
//!   I/O (loads and reads off the thread, commits on the shared log writer),
//!   the fan-out pool.
//! - `store`: the log seam (`Store`) and its implementations (redb, memory,
//!   and Redis for cluster mode).
//! - `cluster`: cluster mode's live feed (pub/sub), presence across nodes
//!   and heartbeat, between the shards and Redis.
//! - `session`: one WebSocket connection: reader, request dispatch, writer.
//! - `outbox`: a session's bounded outbound queue, shared by the rooms and
//!   the session.
//! - `protocol`: client messages (decode), server frames (encode once,
//!   share), room names, formats. `message`: a chat message as kept.
//! - `server`: accept loop and HTTP routes (`/ws`, `/`, `/healthz`,
//!   `/metrics`, `/api`); `auth`: tokens, grants, API key, origins.
//! - `config`: the one `Config` (clap flags, `PARLOR_*`, TOML file);
//!   `error`: wire error codes and close codes; `metrics`: Prometheus.
//!
//! Data flow:
//!
//! ```text
//! session reader ─(bounded channel)─▶ shard driver ─▶ room core
//!                                         ▲   │ effects: load · commit · read
//!                  completions ───────────┘   ▼
//!                        blocking pool (loads, reads) · log writer (commits)
//! room core ─(committed: encode once per format)─▶ outboxes ─▶ session writers
//! ```

pub mod auth;
pub mod cluster;
pub mod config;
pub mod error;
pub mod message;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod rooms;
pub mod server;
pub mod session;
pub mod shard;
pub mod store;

pub use config::Config;
