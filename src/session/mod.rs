//! A session is one WebSocket connection: a reader (this task), a writer task
//! and the outbox between them. The reader decodes requests and routes them
//! (`dispatch`); the rooms and the reader push ready-made frames into the
//! outbox; the writer alone touches the socket's write half.
//!
//! A session knows the server only through `Env`: the config, the shards,
//! the store (for `history` pages), the metrics and the shutdown signal.

mod accounts;
pub mod assemble;
pub(crate) mod dispatch;
pub mod frames;
mod history;
pub mod rate;
mod reader;
mod writer;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use futures_util::FutureExt;
use tokio::io::AsyncWrite;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, Grant};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::protocol::{server as msg, Format};
use crate::rooms::{Account, Budget, Peer};
use crate::shard::Shards;
use crate::store::Store;

pub use accounts::{AccountSlot, Accounts};
pub use frames::{ByteSource, FrameReader};
pub use history::history_page;

/// What sessions share with the rest of the server.
pub struct Env {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub shards: Shards,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the server shuts down (the accept loop and background
    /// tasks watch it; sessions are closed through `live`).
    pub shutdown: CancellationToken,
    /// Every open session, to close them all with 1001 at shutdown: one map
    /// entry each instead of a shutdown future in every idle session.
    live: parking_lot::Mutex<HashMap<u64, Weak<Peer>>>,
    /// Checks tokens (a `refresh` frame's too).
    pub auth: Arc<Auth>,
    /// Each user's shared state (status, rooms), across their sessions.
    pub accounts: Accounts,
    next_client_id: AtomicU64,
}

impl Env {
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        shards: Shards,
        metrics: Arc<Metrics>,
        auth: Arc<Auth>,
    ) -> Env {
        Env {
            config,
            store,
            shards,
            metrics,
            auth,
            accounts: Accounts::default(),
            shutdown: CancellationToken::new(),
            live: parking_lot::Mutex::new(HashMap::new()),
            next_client_id: AtomicU64::new(1),
        }
    }

    /// Closes every open session with 1001 (server going away); a session
    /// opened from now on is closed as it registers.
    pub fn close_sessions(&self) {
        self.shutdown.cancel();
        let live: Vec<Weak<Peer>> = self.live.lock().values().cloned().collect();
        for peer in live.iter().filter_map(Weak::upgrade) {
            peer.outbox.cut(crate::error::close::GOING_AWAY);
        }
    }

    pub fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }

    fn register(self: &Arc<Self>, peer: &Arc<Peer>) -> Registered {
        self.live
            .lock()
            .insert(peer.client_id, Arc::downgrade(peer));
        if self.shutdown.is_cancelled() {
            peer.outbox.cut(crate::error::close::GOING_AWAY);
        }
        Registered {
            env: self.clone(),
            client_id: peer.client_id,
        }
    }
}

/// A session's entry in `Env::live`, removed when the session ends.
struct Registered {
    env: Arc<Env>,
    client_id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.env.live.lock().remove(&self.client_id);
    }
}

/// How a connection was negotiated at the upgrade.
pub struct Params {
    pub user: Arc<str>,
    pub format: Format,
    /// Echo every data message back (conformance endpoint) instead of chat.
    pub echo: bool,
    /// What the client's token allows (`None`: authentication is off).
    pub grant: Option<Grant>,
    /// The user's account, shared with their other sessions (from the
    /// slot the connection was admitted with).
    pub account: Arc<Account>,
}

/// The session's own end of its peer: the rooms hold the `Peer`; the reader
/// also waits for the writer to finish.
pub(crate) struct Session {
    pub peer: Arc<Peer>,
    /// Signalled once when the writer has finished.
    pub writer_done: Notify,
}

/// Runs a session to its end. `read` and `write` are the two halves of an
/// upgraded connection, `head` the handshake answer still to be sent on
/// it; the writer runs on its own task.
///
/// What is set up once happens before the returned future, so an idle
/// session's future carries only what its reader waits with (its size is
/// memory per connection).
pub fn run<S, W>(
    read: FrameReader<S>,
    write: W,
    head: Option<Bytes>,
    params: Params,
    env: Arc<Env>,
) -> impl Future<Output = ()> + Send
where
    S: ByteSource + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let cfg = &env.config;
    let client_id = env.next_client_id();
    let max_bytes = if params.echo {
        cfg.outbox_bytes.max(cfg.max_frame_bytes.saturating_mul(2))
    } else {
        cfg.outbox_bytes
    };
    let (outbox, rx) = Outbox::new(cfg.outbox_frames, max_bytes);
    let mut peer = Peer::new(client_id, params.user.clone(), params.format, outbox);
    peer.new_rooms = Budget::per_minute(cfg.room_creations_per_min, cfg.room_creations_per_min);
    peer.account = params.account;
    let session = Arc::new(Session {
        peer: Arc::new(peer),
        writer_done: Notify::new(),
    });
    let peer = &session.peer;
    let registered = env.register(peer);
    env.metrics.connections.inc();
    env.metrics.connections_total.inc();
    let liveness = Arc::new(writer::Liveness::new());
    let heartbeat = (!params.echo).then(|| writer::Heartbeat {
        interval: cfg.heartbeat(),
        frame: msg::heartbeat(peer.format),
    });
    if !params.echo {
        let connected = msg::Connected {
            client_id: &peer.client_name(),
            user: &peer.user,
            format: peer.format.name(),
            heartbeat_ms: cfg.heartbeat().as_millis() as u64,
            server: concat!("parlor/", env!("CARGO_PKG_VERSION")),
        };
        let f = msg::encode(peer.format, "connected", None, Some(connected));
        peer.outbox.push_or_cut(f);
    }
    let writer = writer::run(
        write,
        head,
        rx,
        session.clone(),
        heartbeat,
        liveness.clone(),
        env.metrics.clone(),
    );
    let writer = tokio::spawn(writer);
    let reader = reader::run(
        read,
        session.clone(),
        env.clone(),
        liveness,
        params.grant,
        params.echo,
    );
    // Chained, not awaited from an async block: a future held in a local
    // and then awaited takes its size twice in the enclosing future (the
    // local and the awaited copy), and the reader's is most of an idle
    // session's memory.
    reader
        .then(move |end| async move {
            let code = session.peer.outbox.cut_code();
            if code == crate::error::close::SLOW_CONSUMER {
                env.metrics.slow_consumer_cuts.inc();
            }
            env.metrics.closed(code);
            // No span per session: it would cost every idle connection its
            // size in both of its futures, for this one event.
            let peer = &session.peer;
            tracing::debug!(client_id = %peer.client_name(), user = %peer.user, ?end, close = code, "session reader ended");
            let _ = writer.await;
            env.metrics.connections.dec();
            drop(registered);
        })
}
