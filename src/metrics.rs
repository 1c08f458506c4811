//! Prometheus metrics, rendered at `/metrics`. Counters on hot paths are
//! bumped once per batch or per session event, never once per delivery.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::error::ErrorCode;

pub struct Metrics {
    registry: Registry,
    pub connections: IntGauge,
    pub connections_total: IntCounter,
    pub rooms: IntGauge,
    pub joins: IntCounter,
    /// Long polls waiting now; SSE streams open now.
    pub long_polls: IntGauge,
    pub sse_streams: IntGauge,
    pub messages_in: IntCounter,
    pub messages_stored: IntCounter,
    pub deliveries: IntCounter,
    pub replayed: IntCounter,
    pub slow_consumer_cuts: IntCounter,
    pub store_errors: IntCounter,
    pub store_panics: IntCounter,
    pub store_damaged: IntGauge,
    pub store_writes_failing: IntGauge,
    pub acks: IntCounter,
    pub retained_deleted: IntCounter,
    pub rooms_expired: IntCounter,
    pub auth_failures: IntCounter,
    /// HTTP connections closed for a deadline, by kind: `header` (request
    /// head), `body` (request body: 408), `write` (an unread response).
    pub http_timeouts: IntCounterVec,
    /// Open connections by slot: `client` (under --max-connections) and
    /// `reserve` (--admin-reserve); set when /metrics is rendered.
    pub open_connections: IntGaugeVec,
    errors: IntCounterVec,
    closes: IntCounterVec,
    pub outbox_depth: Histogram,
    pub shard_queue_depth: IntGaugeVec,
    pub commit_seconds: Histogram,
    pub store_unsynced: IntGauge,
    pub batch_size: Histogram,
    /// Cluster mode: Redis calls by operation, and how long each took
    /// (one round trip; a batch's rooms go in parallel).
    pub redis_calls: IntCounterVec,
    pub redis_seconds: HistogramVec,
    pub redis_reconnects: IntCounter,
    /// 1 while the Redis connection is up (set when /healthz or /metrics ask).
    pub redis_up: IntGauge,
    /// Gaps in a room's sequence filled from the log (a message lost or
    /// late on the live channel, a resubscription, a join ahead of us).
    pub gap_fills: IntCounter,
    /// Messages that came on live channels, and how old each was then.
    pub live_messages: IntCounter,
    pub live_lag_seconds: Histogram,
    /// Other parlor nodes alive, as the last heartbeat saw.
    pub cluster_nodes: IntGauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("metric definition");
                registry
                    .register(Box::new(m.clone()))
                    .expect("unique metric");
                m
            }};
        }
        Metrics {
            connections: reg!(IntGauge::new(
                "parlor_connections",
                "Open WebSocket connections"
            )),
            connections_total: reg!(IntCounter::new(
                "parlor_connections_total",
                "WebSocket connections accepted"
            )),
            rooms: reg!(IntGauge::new("parlor_rooms", "Rooms loaded in shards")),
            joins: reg!(IntCounter::new("parlor_joins_total", "Successful joins")),
            long_polls: reg!(IntGauge::new(
                "parlor_long_polls",
                "Long polls (GET messages with wait) waiting for a message"
            )),
            sse_streams: reg!(IntGauge::new(
                "parlor_sse_streams",
                "Server-Sent Events streams open"
            )),
            messages_in: reg!(IntCounter::new(
                "parlor_messages_in_total",
                "Chat messages received from clients"
            )),
            messages_stored: reg!(IntCounter::new(
                "parlor_messages_stored_total",
                "Chat messages committed to the store"
            )),
            deliveries: reg!(IntCounter::new(
                "parlor_deliveries_total",
                "Message frames queued to members"
            )),
            replayed: reg!(IntCounter::new(
                "parlor_replayed_messages_total",
                "Messages replayed from the store on join"
            )),
            slow_consumer_cuts: reg!(IntCounter::new(
                "parlor_slow_consumer_cuts_total",
                "Connections closed with 4008 because their outbox was full"
            )),
            store_errors: reg!(IntCounter::new(
                "parlor_store_errors_total",
                "Failed store operations"
            )),
            store_panics: reg!(IntCounter::new(
                "parlor_store_panics_total",
                "Panics in store code, each contained to the operation that hit it"
            )),
            store_damaged: reg!(IntGauge::new(
                "parlor_store_damaged",
                "1 once the store file was found damaged (until restart)"
            )),
            store_writes_failing: reg!(IntGauge::new(
                "parlor_store_writes_failing",
                "1 while store writes fail (e.g. a full disk)"
            )),
            acks: reg!(IntCounter::new(
                "parlor_acks_total",
                "Acks sent for stored messages"
            )),
            retained_deleted: reg!(IntCounter::new(
                "parlor_retention_deleted_total",
                "Messages deleted by retention"
            )),
            rooms_expired: reg!(IntCounter::new(
                "parlor_rooms_expired_total",
                "Rooms deleted because their whole log was past retention"
            )),
            auth_failures: reg!(IntCounter::new(
                "parlor_auth_failures_total",
                "Refused tokens, API keys and origins"
            )),
            http_timeouts: {
                let v = reg!(IntCounterVec::new(
                    Opts::new(
                        "parlor_http_timeouts_total",
                        "HTTP connections closed for a deadline, by kind (header, body, write)"
                    ),
                    &["kind"]
                ));
                for kind in ["header", "body", "write"] {
                    v.with_label_values(&[kind]);
                }
                v
            },
            open_connections: reg!(IntGaugeVec::new(
                Opts::new(
                    "parlor_open_connections",
                    "Open TCP connections, by slot (client: --max-connections, reserve: --admin-reserve)"
                ),
                &["slot"]
            )),
            closes: reg!(IntCounterVec::new(
                Opts::new(
                    "parlor_closes_total",
                    "Sessions ended, by the close code sent (0: none)"
                ),
                &["code"]
            )),
            outbox_depth: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "parlor_outbox_depth_frames",
                    "Frames a session writer found queued when it woke"
                )
                .buckets(prometheus::exponential_buckets(1.0, 4.0, 8).unwrap())
            )),
            errors: reg!(IntCounterVec::new(
                Opts::new("parlor_errors_total", "Error replies sent, by code"),
                &["code"]
            )),
            shard_queue_depth: reg!(IntGaugeVec::new(
                Opts::new("parlor_shard_queue_depth", "Commands waiting per shard"),
                &["shard"]
            )),
            store_unsynced: reg!(IntGauge::new(
                "parlor_store_unsynced",
                "1 while committed messages are not yet synced to disk (batched, none)"
            )),
            commit_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new("parlor_store_commit_seconds", "Store batch commit latency")
                    .buckets(prometheus::exponential_buckets(0.00005, 2.0, 16).unwrap())
            )),
            batch_size: reg!(Histogram::with_opts(
                HistogramOpts::new("parlor_store_batch_messages", "Messages per store batch")
                    .buckets(prometheus::exponential_buckets(1.0, 2.0, 12).unwrap())
            )),
            redis_calls: reg!(IntCounterVec::new(
                Opts::new(
                    "parlor_redis_calls_total",
                    "Cluster mode: calls to Redis (one command or script each), by operation"
                ),
                &["op"]
            )),
            redis_seconds: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "parlor_redis_roundtrip_seconds",
                    "Cluster mode: Redis call latency, by operation"
                )
                .buckets(prometheus::exponential_buckets(0.00005, 2.0, 16).unwrap()),
                &["op"]
            )),
            redis_reconnects: reg!(IntCounter::new(
                "parlor_redis_reconnects_total",
                "Cluster mode: reconnections to Redis"
            )),
            redis_up: reg!(IntGauge::new(
                "parlor_redis_up",
                "Cluster mode: 1 while Redis is reachable"
            )),
            gap_fills: reg!(IntCounter::new(
                "parlor_gap_fills_total",
                "Cluster mode: gaps in a room's sequence filled from the log"
            )),
            live_messages: reg!(IntCounter::new(
                "parlor_live_messages_total",
                "Cluster mode: messages received on live channels"
            )),
            live_lag_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "parlor_live_lag_seconds",
                    "Cluster mode: age of a message when it arrived on the live channel"
                )
                .buckets(prometheus::exponential_buckets(0.0005, 2.0, 14).unwrap())
            )),
            cluster_nodes: reg!(IntGauge::new(
                "parlor_cluster_nodes",
                "Cluster mode: parlor nodes alive (this one included)"
            )),
            registry,
        }
    }

    pub fn error(&self, code: ErrorCode) {
        self.errors.with_label_values(&[code.as_str()]).inc();
    }

    pub fn closed(&self, code: u16) {
        self.closes.with_label_values(&[&code.to_string()]).inc();
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding of metrics");
        String::from_utf8(buf).expect("metrics text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
