//! The server: shared context, the accept loop, and start/stop.
//!
//! `start` binds, starts the shards and the accept loop and returns a
//! `Running` handle; `serve` is what the binary runs (open the store, start,
//! wait for a signal, shut down). Tests call `start` on port 0.

mod api;
mod http;
mod upgrade;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, StoreKind};
use crate::metrics::Metrics;
use crate::shard::{ShardEnv, Shards};
use crate::store::{MemoryStore, Store};

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a connection needs, shared by all of them.
pub struct Ctx {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub shards: Shards,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the server shuts down: sessions close with 1001.
    pub shutdown: CancellationToken,
    next_client_id: AtomicU64,
}

impl Ctx {
    pub fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// A started server.
pub struct Running {
    pub addr: SocketAddr,
    pub ctx: Arc<Ctx>,
    tasks: TaskTracker,
}

impl Running {
    /// Stops accepting, closes every session with 1001 and waits (at most
    /// `timeout`) for them to end. Everything acked is already committed.
    pub async fn shutdown(self, timeout: Duration) {
        self.ctx.shutdown.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(timeout, self.tasks.wait()).await;
    }
}

/// Opens the store the config names.
pub fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    match config.store {
        StoreKind::Memory => Ok(Arc::new(MemoryStore::new())),
        StoreKind::Redb => anyhow::bail!("the redb store is not built yet; use --store memory"),
    }
}

/// Binds `config.addr` and serves until `Running::shutdown`.
pub async fn start(config: Config, store: Arc<dyn Store>) -> anyhow::Result<Running> {
    let listener = TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.addr))?;
    let addr = listener.local_addr()?;
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
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
    })
    .context("cannot start the shard threads")?;
    let ctx = Arc::new(Ctx {
        config,
        store,
        shards,
        metrics,
        shutdown: CancellationToken::new(),
        next_client_id: AtomicU64::new(1),
    });
    let tasks = TaskTracker::new();
    tasks.spawn(accept_loop(listener, ctx.clone(), tasks.clone()));
    Ok(Running { addr, ctx, tasks })
}

/// What the binary runs: serve until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let store = open_store(&config)?;
    if config.store == StoreKind::Memory {
        tracing::warn!("--store memory: history is lost when parlor stops");
    }
    let running = start(config, store).await?;
    tracing::info!(addr = %running.addr, "parlor listening");
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.shutdown(Duration::from_secs(10)).await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>, tasks: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, _peer)) => {
                tasks.spawn(serve_connection(tcp, ctx.clone(), tasks.clone()));
            }
            Err(e) => {
                // Typically out of file descriptors: back off instead of spinning.
                tracing::warn!(cause = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(tcp: TcpStream, ctx: Arc<Ctx>, tasks: TaskTracker) {
    let _ = tcp.set_nodelay(true);
    let service = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        let tasks = tasks.clone();
        async move { Ok::<_, std::convert::Infallible>(http::route(req, ctx, tasks).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let builder = builder.http1_only();
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(tcp), service)
        .await
    {
        tracing::debug!(cause = %e, "HTTP connection ended with an error");
    }
}
