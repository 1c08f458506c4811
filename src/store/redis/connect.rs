//! Connecting to Redis: the client's configuration from `--cluster` (one
//! server or a Redis Cluster's seed nodes, `redis://` or `rediss://`), and
//! the settings that keep a failing Redis loud instead of slow.

use std::time::Duration;

use fred::prelude::*;
use fred::types::config::{ServerConfig, UnresponsiveConfig};

use crate::config::ClusterMode;

/// How parlor talks to Redis.
#[derive(Debug, Clone)]
pub struct Settings {
    pub urls: Vec<String>,
    pub mode: ClusterMode,
    /// Longest a call may take, connecting included.
    pub timeout: Duration,
    /// Client ids remembered per room (the dedup window).
    pub dedup_window: usize,
    /// Messages kept per room (streams are trimmed to about this many).
    pub retain_messages: u64,
    /// Age past which messages are deleted (`--retain-age`).
    pub retain_age: Option<Duration>,
    /// This node's id: its own presence entries are not another node's.
    pub node: String,
}

/// The client configuration for `settings.urls`.
pub fn client_config(settings: &Settings) -> Result<Config, Error> {
    let first = settings
        .urls
        .first()
        .ok_or_else(|| Error::new(ErrorKind::Config, "no Redis URL"))?;
    match settings.mode {
        ClusterMode::Single => Config::from_url_centralized(first),
        ClusterMode::Cluster => {
            let mut config = Config::from_url_clustered(first)?;
            for url in &settings.urls[1..] {
                let other = Config::from_url_clustered(url)?;
                if let (
                    ServerConfig::Clustered { hosts, .. },
                    ServerConfig::Clustered { hosts: more, .. },
                ) = (&mut config.server, other.server)
                {
                    hosts.extend(more);
                }
            }
            Ok(config)
        }
    }
}

/// A client whose calls fail within `timeout` while Redis is away, and
/// that reconnects for ever in the background (50 ms, doubling to 1 s).
/// Appends also fail fast (`fail_fast`): one queued while Redis is away,
/// or caught in flight by a disconnection, is never sent again later —
/// that would store a message whose sender was told `internal`.
pub fn build(settings: &Settings) -> Result<Client, Error> {
    let timeout = settings.timeout;
    Builder::from_config(client_config(settings)?)
        .with_connection_config(|c| {
            c.connection_timeout = timeout;
            c.internal_command_timeout = timeout;
            c.max_command_attempts = 3;
            c.unresponsive = UnresponsiveConfig {
                max_timeout: Some(timeout),
                interval: Duration::from_millis(100),
            };
        })
        .with_performance_config(|p| {
            p.default_command_timeout = timeout;
            // The live feed's queue; a feed that falls behind this far
            // catches up from the log instead.
            p.broadcast_channel_capacity = 1 << 14;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 1000, 2))
        .build()
}

/// Options for calls that must not wait for a reconnection.
pub fn fail_fast(timeout: Duration) -> Options {
    Options {
        fail_fast: true,
        timeout: Some(timeout),
        ..Options::default()
    }
}

/// Whether the server has sharded pub/sub (Redis 7+).
pub async fn has_sharded_pubsub(client: &Client) -> bool {
    let info: Result<String, _> = client.info(Some(fred::types::InfoKind::Server)).await;
    info.ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("redis_version:"))
                .and_then(|v| v.trim().split('.').next()?.parse::<u32>().ok())
        })
        .is_some_and(|major| major >= 7)
}
