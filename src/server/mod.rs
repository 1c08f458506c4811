//! The server: shared context, the accept loop, and start/stop.
//!
//! `start` binds, starts the shards and the accept loop and returns a
//! `Running` handle; `serve` is what the binary runs (open the store, start,
//! wait for a signal, shut down). Tests call `start` on port 0.

mod api;
pub mod handshake;
mod http;
mod io;
mod page;
mod prefixed;
mod sse;
mod tls;
mod upgrade;
mod web;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::auth;
use crate::cluster::Cluster;
use crate::config::{redact_url, Config, StoreKind};
use crate::metrics::Metrics;
use crate::session;
use crate::shard::{ShardEnv, Shards};
use crate::store::{GuardedStore, MemoryStore, RedisLog, Store};

/// How long a client may take to send its request headers (and how long a
/// keep-alive connection may sit idle).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// At shutdown, how long an HTTP connection asked to finish may take to
/// end its request in flight before it is closed.
const HTTP_DRAIN: Duration = Duration::from_secs(2);

/// Most bytes hyper buffers per connection, read or write: what a client
/// that stops reading a streamed response pins, besides one piece of it
/// (hyper's default is ≈ 400 KiB). Also the largest request head (431).
const HTTP_MAX_BUF: usize = 64 * 1024;

/// Everything a connection needs, shared by all of them.
pub struct Ctx {
    /// What sessions see of the server (config, shards, store, metrics,
    /// the shutdown signal).
    pub env: Arc<session::Env>,
    pub auth: Arc<auth::Auth>,
    /// Set when shutting down: `/healthz` answers 503.
    pub draining: AtomicBool,
    /// One permit per open TCP connection (`--max-connections`).
    connections: Arc<Semaphore>,
    /// One permit per connection over that limit that may only ask for
    /// `/healthz` or `/metrics` (`--admin-reserve`).
    reserve: Arc<Semaphore>,
    /// `POST /api/.../messages` as a user (a user's token, or the open
    /// API): the WebSocket's `message` rate, per user.
    pub posts: api::PostLimits,
}

impl Ctx {
    pub fn config(&self) -> &Config {
        &self.env.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.env.metrics
    }

    /// Sets `parlor_open_connections` from the permits in use.
    pub fn count_open_connections(&self) {
        let cfg = self.config();
        let open = |max: usize, sem: &Semaphore| max.saturating_sub(sem.available_permits());
        let gauge = &self.metrics().open_connections;
        let client = open(cfg.max_connections.max(1), &self.connections);
        let reserve = open(cfg.admin_reserve, &self.reserve);
        gauge.with_label_values(&["client"]).set(client as i64);
        gauge.with_label_values(&["reserve"]).set(reserve as i64);
    }

    /// Counts a new session of `user`; `None` when the user is at the limit.
    /// The returned slot uncounts it when dropped, and carries the account
    /// the session shares with the user's others.
    pub fn admit_user(&self, user: &Arc<str>) -> Option<UserSlot> {
        let max = self.config().max_conns_per_user;
        self.env.accounts.admit(user, max)
    }
}

/// A connection's place under `--max-connections`.
pub type ConnSlot = Arc<tokio::sync::OwnedSemaphorePermit>;

/// A session's place in its user's count (`--max-conns-per-user`).
pub type UserSlot = session::AccountSlot;

/// A started server.
pub struct Running {
    pub addr: SocketAddr,
    pub ctx: Arc<Ctx>,
    tasks: TaskTracker,
    /// Cluster mode: the feed, presence and heartbeat tasks.
    cluster: Option<Arc<Cluster>>,
}

impl Running {
    /// Stops accepting, closes every session with 1001, asks every HTTP
    /// connection to finish (closing it `HTTP_DRAIN` later if it has not)
    /// and waits (at most `timeout`) for them to end; then, whatever clients
    /// do, stops the shards — each lands every batch it accepted — and
    /// flushes the store.
    /// Everything acked was committed before its ack; this lets in-flight
    /// work land and makes `--durability none` durable at a clean stop.
    pub async fn shutdown(self, timeout: Duration) {
        let env = self.ctx.env.clone();
        self.ctx.draining.store(true, Ordering::Release);
        env.close_sessions();
        self.tasks.close();
        if tokio::time::timeout(timeout, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.tasks.len(),
                "connections still open after the shutdown timeout; stopping anyway"
            );
        }
        env.shards.stop().await;
        let cluster = self.cluster.clone();
        let landed = tokio::task::spawn_blocking(move || {
            // The others see this node's users leave at once.
            if let Some(cluster) = cluster {
                cluster.stop();
            }
            env.store.flush()
        })
        .await;
        match landed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(cause = %e, "flushing the store at shutdown failed"),
            Err(e) => tracing::error!(cause = %e, "flushing the store at shutdown panicked"),
        }
    }
}

/// Opens the store the config names.
pub fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    match config.store {
        StoreKind::Memory => Ok(Arc::new(MemoryStore::new())),
        StoreKind::Redb => {
            let interval = Duration::from_millis(config.sync_interval_ms);
            let store = crate::store::RedbStore::open_with(
                &config.data_dir,
                config.durability,
                interval,
                config.quick_repair,
            )
            .context("cannot open the store")?;
            Ok(Arc::new(store))
        }
    }
}

/// Binds `config.addr` and serves until `Running::shutdown`.
pub async fn start(config: Config, store: Arc<dyn Store>) -> anyhow::Result<Running> {
    start_with(config, store, None, Arc::new(Metrics::new())).await
}

/// Cluster mode: connects to Redis (`--cluster`), which holds the log and
/// carries the live channels, and serves like `start`.
pub async fn start_cluster(config: Config) -> anyhow::Result<Running> {
    let metrics = Arc::new(Metrics::new());
    let settings = crate::store::redis::Settings {
        urls: config.cluster.clone(),
        mode: config.cluster_mode(),
        timeout: config.cluster_timeout(),
        dedup_window: config.dedup_window,
        retain_messages: config.retain_messages,
        retain_age: config.retain_age,
        node: crate::cluster::new_node_id(),
    };
    let shown: Vec<String> = config.cluster.iter().map(|u| redact_url(u)).collect();
    let log = RedisLog::connect(settings, metrics.clone())
        .await
        .with_context(|| format!("cannot reach Redis at {}", shown.join(",")))?;
    let cluster = Cluster::new(log.clone(), config.shards(), config.cluster_heartbeat());
    tracing::info!(node = %cluster.node, redis = %shown.join(","), "cluster mode");
    start_with(config, log, Some(cluster), metrics).await
}

async fn start_with(
    config: Config,
    store: Arc<dyn Store>,
    cluster: Option<Arc<Cluster>>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Running> {
    let auth = Arc::new(auth::Auth::from_config(&config)?);
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
        _ => None,
    };
    let listener = TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.addr))?;
    let addr = listener.local_addr()?;
    let config_max_connections = config.max_connections.max(1);
    let admin_reserve = config.admin_reserve;
    let config = Arc::new(config);
    // Every store call from here on is guarded: panics contained and
    // counted, damage and failing writes tracked for /healthz.
    let store: Arc<dyn Store> = Arc::new(GuardedStore::new(store, metrics.clone()));
    let workers = config.workers();
    let pool = if workers > 1 {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .thread_name(|i| format!("parlor-fanout-{i}"))
            .build()
            .context("cannot start the fan-out pool")?;
        Some(Arc::new(pool))
    } else {
        None
    };
    let shards = Shards::start(ShardEnv {
        config: config.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
        pool,
        cluster: cluster.clone(),
    })
    .context("cannot start the shards")?;
    if let Some(cluster) = &cluster {
        cluster.start();
    }
    let ctx = Arc::new(Ctx {
        env: Arc::new(session::Env::new(
            config,
            store,
            shards,
            metrics,
            auth.clone(),
        )),
        auth,
        draining: AtomicBool::new(false),
        connections: Arc::new(Semaphore::new(config_max_connections)),
        reserve: Arc::new(Semaphore::new(admin_reserve)),
        posts: Default::default(),
    });
    let tasks = TaskTracker::new();
    tasks.spawn(accept_loop(listener, ctx.clone(), tasks.clone(), tls));
    tasks.spawn(retention_loop(ctx.clone()));
    tasks.spawn(probe_loop(ctx.clone()));
    Ok(Running {
        addr,
        ctx,
        tasks,
        cluster,
    })
}

/// What the binary runs: open the store, serve until `stop` resolves (the
/// binary passes its first SIGINT/SIGTERM), then shut down cleanly.
pub async fn serve(config: Config, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(config.shutdown_timeout);
    let running = if config.clustered() {
        start_cluster(config).await?
    } else {
        let store = open_store(&config)?;
        if config.store == StoreKind::Memory {
            tracing::warn!("--store memory: history is lost when parlor stops");
        }
        start(config, store).await?
    };
    if !running.ctx.auth.tokens_required() {
        tracing::warn!(
            "no --jwt-secret: anonymous users, names taken from ?user=; direct-message rooms \
             (dm:a:b) are then only a convention, not private"
        );
    }
    let scheme = if running.ctx.config().tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(addr = %running.addr, %scheme, "parlor listening");
    stop.await;
    tracing::info!("shutting down: closing sessions, flushing the store");
    running.shutdown(timeout).await;
    tracing::info!("stopped");
    Ok(())
}

/// Most messages deleted per store call; appends interleave between calls.
const RETENTION_BATCH: usize = 10_000;

/// Deletes what retention no longer keeps, in bounded batches off the
/// runtime, every `--retention-interval-ms`.
async fn retention_loop(ctx: Arc<Ctx>) {
    let env = ctx.env.clone();
    let every = Duration::from_millis(env.config.retention_interval_ms.max(10));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = env.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let policy = env.config.retention(crate::protocol::now_ms());
        loop {
            let store = env.store.clone();
            let deleted = tokio::task::spawn_blocking(move || {
                store.apply_retention(&policy, RETENTION_BATCH)
            })
            .await;
            match deleted {
                Ok(Ok(n)) => {
                    env.metrics.retained_deleted.inc_by(n as u64);
                    if n < RETENTION_BATCH {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    // Counted by the store's guard.
                    tracing::error!(cause = %e, "retention failed");
                    break;
                }
                Err(_) => break,
            }
        }
        // Rooms whose whole log is past the age: their shards delete them
        // (unless someone is in them), so a name can start a new log.
        if let Some(before) = policy.older_than_ms {
            let store = env.store.clone();
            let expired =
                tokio::task::spawn_blocking(move || store.expired_rooms(before, RETENTION_BATCH))
                    .await;
            if let Ok(Ok(rooms)) = expired {
                for room in rooms {
                    let cmd = crate::rooms::Command::Expire { room: room.clone() };
                    let _ = env.shards.send(&room, cmd).await;
                }
            }
        }
    }
}

/// How often a store whose writes failed is probed while nothing else
/// writes, so that `/healthz` recovers once writes work again (a node taken
/// out of rotation on 503 gets no messages to prove it).
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

async fn probe_loop(ctx: Arc<Ctx>) {
    let env = ctx.env.clone();
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = env.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if env.store.health().writes_failing.is_none() {
            continue;
        }
        let store = env.store.clone();
        // The guard records the outcome; nothing else to do with it.
        let _ = tokio::task::spawn_blocking(move || store.probe_writes()).await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<Ctx>,
    tasks: TaskTracker,
    tls: Option<TlsAcceptor>,
) {
    loop {
        let accepted = tokio::select! {
            _ = ctx.env.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, _peer)) => {
                let _ = tcp.set_nodelay(true);
                let (permit, reserve) = match ctx.connections.clone().try_acquire_owned() {
                    Ok(permit) => (permit, false),
                    Err(_) => match ctx.reserve.clone().try_acquire_owned() {
                        Ok(permit) => (permit, true),
                        Err(_) => {
                            tasks.spawn(refuse_busy(tcp, ctx.clone()));
                            continue;
                        }
                    },
                };
                let conn = Admitted {
                    ctx: ctx.clone(),
                    tasks: tasks.clone(),
                    slot: Arc::new(permit),
                    reserve,
                };
                let tls = tls.clone();
                tasks.spawn(async move {
                    match tls {
                        None => handshake::serve_plain(tcp, conn).await,
                        Some(tls) => {
                            let shutdown = conn.ctx.env.shutdown.clone();
                            let handshake =
                                tokio::time::timeout(HEADER_READ_TIMEOUT, tls.accept(tcp));
                            let stream = tokio::select! {
                                _ = shutdown.cancelled() => return,
                                stream = handshake => stream,
                            };
                            match stream {
                                Ok(Ok(stream)) => serve_connection(stream, conn).await,
                                _ => tracing::debug!("TLS handshake failed"),
                            }
                        }
                    }
                });
            }
            Err(e) => {
                // Typically out of file descriptors: back off instead of spinning.
                tracing::warn!(cause = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Over `--max-connections` and the reserve: a plain 503 and close.
async fn refuse_busy(mut tcp: TcpStream, ctx: Arc<Ctx>) {
    use tokio::io::AsyncWriteExt;
    let body = r#"{"error":{"code":"internal","message":"too many connections"}}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let write = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = tcp.write_all(response.as_bytes()).await;
        let _ = tcp.shutdown().await;
    });
    tokio::select! {
        _ = ctx.env.shutdown.cancelled() => {}
        _ = write => {}
    }
}

/// An accepted connection and its place under the limits.
struct Admitted {
    ctx: Arc<Ctx>,
    tasks: TaskTracker,
    /// Its `--max-connections` (or reserve) permit: an upgraded WebSocket
    /// session keeps a clone until it ends.
    slot: ConnSlot,
    /// On the `--admin-reserve`: `/healthz` and `/metrics` only, one request.
    reserve: bool,
}

/// Serves HTTP on one connection until the client is done, a deadline
/// passes (request head, body, an unread response) or the server shuts
/// down: then the connection is asked to finish its request in flight and
/// closed `HTTP_DRAIN` later if it has not. After a WebSocket upgrade this
/// task starts the session (a task of its own) and ends.
async fn serve_connection<I>(io: I, conn: Admitted)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Admitted {
        ctx,
        tasks,
        slot,
        reserve,
    } = conn;
    let shutdown = ctx.env.shutdown.clone();
    let metrics = ctx.env.metrics.clone();
    let io = io::WriteDeadline::new(
        io,
        ctx.config().write_timeout(),
        metrics.http_timeouts.with_label_values(&["write"]),
    );
    let pending = upgrade::PendingSlot::default();
    let (env, session_tasks, upgrade) = (ctx.env.clone(), tasks.clone(), pending.clone());
    let service = hyper::service::service_fn(move |req| {
        let conn = http::Conn {
            ctx: ctx.clone(),
            tasks: tasks.clone(),
            slot: slot.clone(),
            reserve,
            pending: upgrade.clone(),
        };
        async move { Ok::<_, std::convert::Infallible>(http::route(req, conn).await) }
    });
    // hyper's own HTTP/1 connection, not hyper-util's auto builder: the
    // auto builder wraps the socket to sniff the protocol, and then an
    // upgraded WebSocket can no longer be taken back as the bare TcpStream
    // (see `upgrade`), which costs a lock per poll for the life of a session.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(HTTP_MAX_BUF)
        .max_header_size(HTTP_MAX_BUF)
        .keep_alive(!reserve);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = shutdown.cancelled() => {
            // Idle: closes now; mid-request: answers it, then closes.
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(HTTP_DRAIN, conn.as_mut()).await {
                Ok(ended) => ended,
                Err(_) => {
                    tracing::debug!("HTTP connection still busy at shutdown; closing it");
                    return;
                }
            }
        }
    };
    if let Err(e) = ended {
        if e.is_timeout() {
            metrics.http_timeouts.with_label_values(&["header"]).inc();
        }
        tracing::debug!(cause = %e, "HTTP connection ended with an error");
    }
    // An upgrade is a connection's last request: its session starts now
    // that hyper has handed the socket back.
    let pending = pending.lock().take();
    if let Some(pending) = pending {
        pending.start(env, &session_tasks).await;
    }
}
