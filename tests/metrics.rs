//! `/metrics` parses as Prometheus text and its counts follow what happened.

mod common;

use common::*;
use prometheus_parse::{Scrape, Value};
use serde_json::json;

async fn scrape(addr: std::net::SocketAddr) -> Scrape {
    let r = get(addr, "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    Scrape::parse(r.text().lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text format")
}

/// The value of a counter or gauge, with an optional `label=value`.
fn value(s: &Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
        .map(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => panic!("{name} is not a scalar"),
        })
        .next()
        .unwrap_or(0.0)
}

fn histogram_count(s: &Scrape, name: &str) -> f64 {
    s.samples
        .iter()
        .find(|x| x.metric == name)
        .map(|x| match &x.value {
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            _ => panic!("{name} is not a histogram"),
        })
        .unwrap_or_else(|| panic!("{name} missing"))
}

#[tokio::test]
async fn counts_move_with_traffic() {
    let server = start(config()).await;
    let before = scrape(server.addr).await;
    assert_eq!(value(&before, "parlor_connections", None), 0.0);

    let mut a = connect(server.addr, "ann").await;
    let mut b = connect(server.addr, "bob").await;
    a.join("m").await;
    b.join("m").await;
    for i in 0..3 {
        a.publish("m", &format!("hello {i}"), &format!("id{i}"))
            .await;
    }
    for _ in 0..3 {
        b.recv_until("message").await;
    }
    a.send(&json!({"type": "dance"})).await;
    a.recv_until("error").await;

    let s = scrape(server.addr).await;
    assert_eq!(value(&s, "parlor_connections", None), 2.0);
    assert_eq!(value(&s, "parlor_connections_total", None), 2.0);
    assert_eq!(value(&s, "parlor_joins_total", None), 2.0);
    assert_eq!(value(&s, "parlor_messages_in_total", None), 3.0);
    assert_eq!(value(&s, "parlor_messages_stored_total", None), 3.0);
    assert_eq!(value(&s, "parlor_acks_total", None), 3.0);
    assert_eq!(
        value(&s, "parlor_deliveries_total", None),
        6.0,
        "3 messages × 2 members"
    );
    assert_eq!(
        value(&s, "parlor_errors_total", Some(("code", "unknown_type"))),
        1.0
    );
    assert!(value(&s, "parlor_rooms", None) >= 1.0);
    assert!(histogram_count(&s, "parlor_store_commit_seconds") >= 1.0);
    assert!(histogram_count(&s, "parlor_store_batch_messages") >= 1.0);
    for name in [
        "parlor_slow_consumer_cuts_total",
        "parlor_replayed_messages_total",
        "parlor_store_errors_total",
        "parlor_auth_failures_total",
    ] {
        assert!(s.samples.iter().any(|x| x.metric == name), "{name} missing");
    }
    assert!(s
        .samples
        .iter()
        .any(|x| x.metric == "parlor_shard_queue_depth"));

    drop(a);
    b.tx.close().await;
    let closes = eventually("every connection closed", || async {
        let s = scrape(server.addr).await;
        (value(&s, "parlor_connections", None) == 0.0).then_some(s)
    })
    .await;
    let total: f64 = closes
        .samples
        .iter()
        .filter(|x| x.metric == "parlor_closes_total")
        .map(|x| match x.value {
            Value::Counter(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(total, 2.0);

    // The sample dashboard only charts series parlor exports.
    let dashboard = include_str!("../docs/grafana-dashboard.json");
    let exported = get(server.addr, "/metrics").await.text();
    let mut charted: Vec<&str> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("parlor_"))
        .collect();
    charted.sort_unstable();
    charted.dedup();
    assert!(charted.len() > 10);
    for name in charted {
        assert!(
            exported.contains(name),
            "dashboard charts {name}, which /metrics lacks"
        );
    }
}
