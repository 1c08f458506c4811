//! The harness against a parlor started in-process: tiny scenarios whose
//! counts are known exactly.

use std::sync::Arc;

use clap::Parser;
use parlor_loadtest::{run, Args, Report};

async fn start() -> parlor::server::Running {
    let mut cfg = parlor::Config::for_tests();
    cfg.rate_per_sec = 1_000_000.0;
    cfg.rate_burst = 1_000_000.0;
    parlor::server::start(cfg, Arc::new(parlor::store::MemoryStore::new()))
        .await
        .expect("server starts")
}

async fn load(addr: std::net::SocketAddr, scenario: &[&str]) -> Report {
    let url = format!("ws://{addr}/ws");
    let pid = std::process::id().to_string();
    let mut argv = vec![
        "parlor-loadtest",
        "--url",
        &url,
        "--no-progress",
        "--deadline",
        "30",
        "--drain-timeout",
        "2",
        "--server-pid",
        &pid,
    ];
    argv.extend_from_slice(scenario);
    run(Args::parse_from(argv)).await.expect("run")
}

fn assert_clean(r: &Report) {
    let d = &r.deliveries;
    assert_eq!(d.lost, 0, "{}", r.table());
    assert_eq!(d.gaps, 0, "{}", r.table());
    assert_eq!(d.duplicates, 0, "{}", r.table());
    assert_eq!(d.reorders, 0, "{}", r.table());
    assert_eq!(d.received, d.expected, "{}", r.table());
    assert_eq!(r.connections.failed + r.connections.join_failed, 0);
    assert!(r.stopped_by.is_none(), "{}", r.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_counts_every_delivery() {
    let srv = start().await;
    for format in ["json", "msgpack"] {
        let r = load(
            srv.addr,
            &[
                "--format",
                format,
                "fanout",
                "--rooms",
                "2",
                "--members",
                "15",
                "--senders",
                "3",
                "--messages",
                "20",
                "--payload",
                "100",
            ],
        )
        .await;
        assert_clean(&r);
        // 2 rooms × 3 senders × 20 messages, each to 15 members.
        assert_eq!(r.messages.sent, 120);
        assert_eq!(r.messages.acked, 120);
        assert_eq!(r.deliveries.expected, 2 * 60 * 15);
        let lat = r.latency.as_ref().expect("latency");
        assert_eq!(lat.count, 2 * 60 * 15);
        assert!(lat.p50_us <= lat.p99_us && lat.p99_us <= lat.max_us);
        assert!(r.server.as_ref().unwrap().cpu_us_per_delivery.is_some());
        assert!(r.deliveries.per_sec > 0.0);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["deliveries"]["lost"], 0);
    }
    srv.shutdown(std::time::Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_reconnect_replays_without_gaps() {
    let srv = start().await;
    let r = load(
        srv.addr,
        &[
            "reconnect",
            "--members",
            "12",
            "--senders",
            "2",
            "--messages",
            "40",
            "--rate",
            "100",
            "--droppers",
            "4",
            "--drop-every-ms",
            "100",
        ],
    )
    .await;
    assert_clean(&r);
    assert_eq!(r.deliveries.expected, 80 * 12);
    assert!(r.connections.reconnects > 0, "{}", r.table());
    srv.shutdown(std::time::Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_holds_joined_connections_and_reports_memory() {
    let srv = start().await;
    let dir = std::env::temp_dir().join(format!("lt-svg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let r = load(
        srv.addr,
        &[
            "idle",
            "--connections",
            "40",
            "--members",
            "8",
            "--hold",
            "0.2",
        ],
    )
    .await;
    assert_eq!(r.connections.joined, 40, "{}", r.table());
    assert_eq!(r.connections.closed_by_server, 0);
    let idle = r.idle.as_ref().unwrap();
    assert!(idle.rss_after_kib > 0);
    assert!(idle.rss_per_connection_bytes.is_some());
    assert!(r.table().contains("per connection"));
    srv.shutdown(std::time::Duration::from_secs(5)).await;
    // The SVG renders (from a fan-out report with data in it).
    let srv = start().await;
    let r = load(srv.addr, &["rooms", "--rooms", "5", "--members", "4"]).await;
    assert_clean(&r);
    let svg = dir.join("run.svg");
    r.write_svg(&svg).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("<svg") && text.contains("polyline"));
    std::fs::remove_dir_all(&dir).ok();
    srv.shutdown(std::time::Duration::from_secs(5)).await;
}
