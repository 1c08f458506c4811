//! parlor: a real-time chat server. Clients connect over WebSocket, join
//! rooms, and every message gets a gapless per-room sequence number, is
//! stored in an append-only log and fanned out to every member; a client that
//! drops reconnects and replays exactly what it missed. The wire contract is
//! `docs/PROTOCOL.md`.
//!
//! # Layout
//!
//! - `config`: the one `Config` (clap flags and `PARLOR_*` variables).
//! - `error`: wire error codes and close codes.
//! - `protocol`: client messages (decode), server frames (encode once, share),
//!   room names, formats.
//! - `server`: accept loop and HTTP routes (`/ws`, `/`, `/healthz`,
//!   `/metrics`, `/api`).
//! - `session`: one WebSocket connection: reader, writer, outbox, replay.
//! - `shard`: room workers: sequencer, members, presence, dedup, fan-out.
//! - `store`: the `Store` trait and its implementations.
//! - `metrics`: Prometheus counters and histograms.
//!
//! Data flow: session reader → (bounded channel) → shard → store batch →
//! encode once per format → every member's outbox → session writer.

pub mod auth;
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
