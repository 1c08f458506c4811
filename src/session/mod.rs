//! A session is one WebSocket connection: a reader (this task), a writer task
//! and the outbox between them. The reader decodes and routes requests; the
//! shards and the reader push ready-made frames into the outbox; the writer
//! alone touches the socket's write half.

pub mod assemble;
pub mod outbox;
pub mod rate;
mod reader;
mod replay;
pub use replay::history_page;
pub mod writer;

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tracing::Instrument;

use crate::protocol::{server as msg, Format};
use crate::server::Ctx;
pub use outbox::{Outbox, PushError};

/// What shards hold of a session: where to push its frames and how.
pub struct SessionHandle {
    /// Process-unique id, the key of a member in a room.
    pub client_id: u64,
    pub user: Arc<str>,
    pub format: Format,
    pub outbox: Outbox,
    /// Signalled once when the writer has finished.
    pub(crate) writer_done: Notify,
}

impl SessionHandle {
    pub fn new(client_id: u64, user: Arc<str>, format: Format, outbox: Outbox) -> SessionHandle {
        SessionHandle {
            client_id,
            user,
            format,
            outbox,
            writer_done: Notify::new(),
        }
    }

    /// The `clientId` shown on the wire.
    pub fn client_name(&self) -> String {
        format!("c{:x}", self.client_id)
    }
}

/// How a connection was negotiated at the upgrade.
pub struct Params {
    pub user: Arc<str>,
    pub format: Format,
    /// Echo every data message back (conformance endpoint) instead of chat.
    pub echo: bool,
    /// What the client's token allows (`None`: authentication is off).
    pub grant: Option<crate::server::auth::Grant>,
}

/// Runs a session to its end. `read` and `write` are the two halves of an
/// upgraded connection; the writer runs on its own task.
pub async fn run<R, W>(read: R, write: W, params: Params, ctx: Arc<Ctx>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let cfg = ctx.config.clone();
    let client_id = ctx.next_client_id();
    let max_bytes = if params.echo {
        cfg.outbox_bytes.max(cfg.max_frame_bytes.saturating_mul(2))
    } else {
        cfg.outbox_bytes
    };
    let (outbox, rx) = Outbox::new(cfg.outbox_frames, max_bytes);
    let session = Arc::new(SessionHandle::new(
        client_id,
        params.user.clone(),
        params.format,
        outbox,
    ));
    let span =
        tracing::info_span!("session", client_id = %session.client_name(), user = %session.user);
    async move {
        ctx.metrics.connections.inc();
        ctx.metrics.connections_total.inc();
        let liveness = Arc::new(writer::Liveness::new());
        let heartbeat = (!params.echo).then(|| writer::Heartbeat {
            interval: cfg.heartbeat(),
            frame: msg::bare(session.format, "heartbeat"),
        });
        if !params.echo {
            let connected = msg::Connected {
                client_id: &session.client_name(),
                user: &session.user,
                format: session.format.name(),
                heartbeat_ms: cfg.heartbeat().as_millis() as u64,
                server: concat!("parlor/", env!("CARGO_PKG_VERSION")),
            };
            session.outbox.push_or_cut(msg::encode(
                session.format,
                "connected",
                None,
                Some(connected),
            ));
        }
        let writer = tokio::spawn(
            writer::run(
                write,
                rx,
                session.clone(),
                heartbeat,
                liveness.clone(),
                ctx.metrics.clone(),
            )
            .instrument(tracing::Span::current()),
        );
        let end = reader::run(read, &session, &ctx, &liveness, &params).await;
        let code = session.outbox.cut_code();
        if code == crate::error::close::SLOW_CONSUMER {
            ctx.metrics.slow_consumer_cuts.inc();
        }
        ctx.metrics.closed(code);
        tracing::debug!(?end, close = code, "session reader ended");
        let _ = writer.await;
        ctx.metrics.connections.dec();
    }
    .instrument(span)
    .await
}
