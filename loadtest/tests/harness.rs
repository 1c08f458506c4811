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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_storm_times_the_joins() {
    let srv = start().await;
    let r = load(srv.addr, &["join-storm", "--connections", "60"]).await;
    assert_eq!(r.connections.joined, 60, "{}", r.table());
    assert_eq!(r.plan.rooms, 1);
    assert!(r.timing.join_secs > 0.0 && r.timing.join_secs <= r.timing.connect_secs + 0.1);
    assert!(r.connections.joins_per_sec > 0.0);
    assert!(r.idle.as_ref().unwrap().rss_per_connection_bytes.is_some());
    assert!(r.table().contains("joins/s"), "{}", r.table());
    srv.shutdown(std::time::Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_reconnect_reports_the_steady_members() {
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
            "5",
            "--drop-every-ms",
            "100",
            "--together",
        ],
    )
    .await;
    assert_clean(&r);
    assert!(r.connections.reconnects >= 5, "{}", r.table());
    // 7 members never drop: 80 messages each, all live.
    let steady = r.latency_steady.as_ref().expect("steady latency");
    assert_eq!(steady.count, 7 * 80, "{}", r.table());
    srv.shutdown(std::time::Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_run_scrapes_store_metrics_and_charts() {
    let srv = start().await;
    let metrics = format!("http://{}/metrics", srv.addr);
    let r = load(
        srv.addr,
        &[
            "--metrics-url",
            &metrics,
            "--label",
            "parlor-memory",
            "fanout",
            "--rooms",
            "4",
            "--members",
            "1",
            "--senders",
            "1",
            "--messages",
            "30",
            "--window",
            "1",
        ],
    )
    .await;
    assert_clean(&r);
    let m = r.metrics.as_ref().expect("metrics scraped");
    assert!(m.error.is_none(), "{:?}", m.error);
    assert_eq!(m.deltas.get("parlor_messages_in_total"), Some(&120.0));
    let per_commit = m.messages_per_commit.expect("store batches observed");
    assert!((1.0..=4.0).contains(&per_commit), "{per_commit}");
    assert!(r.table().contains("messages per commit"), "{}", r.table());
    srv.shutdown(std::time::Duration::from_secs(5)).await;
    // `chart` draws it beside a copy labelled as another server.
    let dir = std::env::temp_dir().join(format!("lt-chart-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut j = serde_json::to_value(&r).unwrap();
    std::fs::write(dir.join("a.json"), j.to_string()).unwrap();
    j["label"] = "limit".into();
    std::fs::write(dir.join("b.json"), j.to_string()).unwrap();
    let out = dir.join("c.svg");
    let args = Args::parse_from([
        "parlor-loadtest",
        "chart",
        "--in",
        dir.join("a.json").to_str().unwrap(),
        dir.join("b.json").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--metric",
        "acks-per-sec",
        "--metric",
        "messages-per-commit",
    ]);
    let parlor_loadtest::Scenario::Chart(c) = &args.scenario else {
        panic!("chart args")
    };
    parlor_loadtest::chart::run(c).unwrap();
    let svg = std::fs::read_to_string(&out).unwrap();
    assert!(svg.contains("parlor-memory") && svg.contains("1.00× limit"));
    std::fs::remove_dir_all(&dir).ok();
}

/// A `redis-server` of this test's own (AOF off: nothing here needs it),
/// killed when dropped; None (a note) when Redis is not installed, unless
/// `PARLOR_REQUIRE_REDIS` is set.
struct Redis(std::process::Child, u16);

impl Redis {
    fn start() -> Option<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn();
        let Ok(child) = child else {
            assert!(
                std::env::var("PARLOR_REQUIRE_REDIS").is_err(),
                "redis-server is not installed"
            );
            eprintln!("skipped: redis-server is not installed");
            return None;
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Redis(child, port));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("redis-server did not start");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_urls_spread_members_over_cluster_nodes() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let mut cfg = parlor::Config::for_tests();
        cfg.rate_per_sec = 1_000_000.0;
        cfg.rate_burst = 1_000_000.0;
        cfg.cluster = vec![format!("redis://127.0.0.1:{}", redis.1)];
        nodes.push(
            parlor::server::start_cluster(cfg)
                .await
                .expect("node starts"),
        );
    }
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| format!("ws://{}/ws", n.addr))
        .collect();
    let metrics: Vec<String> = nodes
        .iter()
        .map(|n| format!("http://{}/metrics", n.addr))
        .collect();
    let argv = vec![
        "parlor-loadtest".to_string(),
        "--url".into(),
        urls.join(","),
        "--metrics-url".into(),
        metrics.join(","),
        "--no-progress".into(),
        "--deadline".into(),
        "30".into(),
        "--drain-timeout".into(),
        "3".into(),
        "fanout".into(),
        "--rooms".into(),
        "2".into(),
        "--members".into(),
        "10".into(),
        "--senders".into(),
        "4".into(),
        "--messages".into(),
        "25".into(),
    ];
    let r = run(Args::parse_from(argv)).await.expect("run");
    assert_clean(&r);
    assert_eq!(r.deliveries.expected, 2 * 100 * 10);
    assert_eq!(r.url, urls.join(","));
    let m = r.metrics.as_ref().expect("metrics scraped");
    assert!(
        m.redis_calls_per_message.is_some_and(|c| c > 0.0),
        "{}",
        r.table()
    );
    assert!(r.table().contains("calls per message"), "{}", r.table());
}
