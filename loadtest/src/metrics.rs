//! Scrapes a Prometheus text endpoint (parlor's `/metrics`) over plain
//! HTTP/1.1, before and after the measured phase, and reports the deltas:
//! in particular messages per store commit and the mean commit time.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Samples of one scrape: name → value, labelled series under their full
/// name (`name{labels}`) and summed under the bare name when it has no
/// unlabelled sample of its own (`_bucket` lines are left out).
pub type Samples = BTreeMap<String, f64>;

/// What changed between two scrapes.
#[derive(Serialize, Debug, Clone, Default)]
pub struct MetricsDelta {
    pub url: String,
    /// after − before, for every unlabelled sample present in both.
    pub deltas: BTreeMap<String, f64>,
    /// Δ`parlor_store_batch_messages_sum` / Δ`…_count`.
    pub messages_per_commit: Option<f64>,
    /// Δ`parlor_store_commit_seconds_sum` / Δ`…_count`, in ms.
    pub commit_ms_mean: Option<f64>,
    /// Δ`parlor_store_commit_seconds_count`.
    pub commits: Option<f64>,
    /// Cluster mode: Redis calls (every operation), and per stored message.
    pub redis_calls: Option<f64>,
    pub redis_calls_per_message: Option<f64>,
    /// Appends (one script call per room per batch) per stored message.
    pub redis_appends_per_message: Option<f64>,
    /// Mean Redis call time, in ms.
    pub redis_ms_mean: Option<f64>,
    /// Δ`parlor_gap_fills_total`.
    pub gap_fills: Option<f64>,
    /// Set when a scrape failed.
    pub error: Option<String>,
}

/// Parses the Prometheus text format (the subset needed: `name value`,
/// `name{labels} value`).
pub fn parse(text: &str) -> Samples {
    let mut out = Samples::new();
    let mut labelled: BTreeMap<String, f64> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, labels, value) = match line.find('{') {
            Some(i) => {
                let Some(end) = line.rfind('}') else { continue };
                (&line[..i], &line[i..=end], line[end + 1..].trim())
            }
            None => match line.split_once(char::is_whitespace) {
                Some((n, v)) => (n, "", v.trim()),
                None => continue,
            },
        };
        if name.ends_with("_bucket") {
            continue;
        }
        let Ok(v) = value.split_whitespace().next().unwrap_or("").parse::<f64>() else {
            continue;
        };
        if labels.is_empty() {
            out.insert(name.to_string(), v);
        } else {
            out.insert(format!("{name}{labels}"), v);
            *labelled.entry(name.to_string()).or_default() += v;
        }
    }
    for (name, v) in labelled {
        out.entry(name).or_insert(v);
    }
    out
}

/// The deltas between two scrapes, with the store figures derived.
pub fn delta(url: &str, before: &Samples, after: &Samples) -> MetricsDelta {
    // A labelled counter appears at its first increment: one missing
    // before the run started at 0.
    let deltas: BTreeMap<String, f64> = after
        .iter()
        .map(|(k, a)| (k.clone(), a - before.get(k).copied().unwrap_or(0.0)))
        .collect();
    let ratio = |num: &str, den: &str| {
        let (n, d) = (deltas.get(num)?, deltas.get(den)?);
        (*d > 0.0).then(|| n / d)
    };
    MetricsDelta {
        url: url.to_string(),
        messages_per_commit: ratio(
            "parlor_store_batch_messages_sum",
            "parlor_store_batch_messages_count",
        ),
        commit_ms_mean: ratio(
            "parlor_store_commit_seconds_sum",
            "parlor_store_commit_seconds_count",
        )
        .map(|s| s * 1000.0),
        commits: deltas.get("parlor_store_commit_seconds_count").copied(),
        redis_calls: deltas.get("parlor_redis_calls_total").copied(),
        redis_calls_per_message: ratio("parlor_redis_calls_total", "parlor_messages_stored_total"),
        redis_appends_per_message: ratio(
            "parlor_redis_calls_total{op=\"append\"}",
            "parlor_messages_stored_total",
        ),
        redis_ms_mean: ratio(
            "parlor_redis_roundtrip_seconds_sum",
            "parlor_redis_roundtrip_seconds_count",
        )
        .map(|s| s * 1000.0),
        gap_fills: deltas.get("parlor_gap_fills_total").copied(),
        deltas,
        error: None,
    }
}

/// GET `url` (http://host:port/path) and parse the body.
pub async fn scrape(url: &str, timeout: Duration) -> anyhow::Result<Samples> {
    let body = tokio::time::timeout(timeout, get(url))
        .await
        .map_err(|_| anyhow::anyhow!("timeout scraping {url}"))??;
    Ok(parse(&body))
}

async fn get(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("only http:// metrics URLs are supported: {url}"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    let mut s = tokio::net::TcpStream::connect(hostport).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("malformed HTTP response from {url}"))?;
    let status = head.lines().next().unwrap_or("");
    if !status.contains(" 200") {
        anyhow::bail!("{url}: {status}");
    }
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    Ok(if chunked {
        dechunk(body)
    } else {
        body.to_string()
    })
}

/// Decodes a chunked transfer-encoded body.
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_derives_store_figures() {
        let before = parse(
            "# HELP x y\n# TYPE parlor_store_batch_messages histogram\n\
             parlor_store_batch_messages_bucket{le=\"1\"} 3\n\
             parlor_store_batch_messages_sum 10\nparlor_store_batch_messages_count 5\n\
             parlor_store_commit_seconds_sum 0.01\nparlor_store_commit_seconds_count 5\n\
             parlor_errors_total{code=\"x\"} 1\nparlor_acks_total 10\n",
        );
        assert_eq!(before.len(), 7, "{before:?}");
        assert_eq!(before["parlor_errors_total{code=\"x\"}"], 1.0);
        assert_eq!(before["parlor_errors_total"], 1.0, "labelled series summed");
        let after = parse(
            "parlor_store_batch_messages_sum 110\nparlor_store_batch_messages_count 9\n\
             parlor_store_commit_seconds_sum 0.018\nparlor_store_commit_seconds_count 9\n\
             parlor_acks_total 110\n",
        );
        let d = delta("u", &before, &after);
        assert_eq!(d.messages_per_commit, Some(25.0));
        assert!((d.commit_ms_mean.unwrap() - 2.0).abs() < 1e-9);
        assert_eq!(d.commits, Some(4.0));
        assert_eq!(d.deltas["parlor_acks_total"], 100.0);
    }

    #[test]
    fn a_counter_first_seen_after_the_start_counts_from_zero() {
        let before =
            parse("parlor_redis_calls_total{op=\"load\"} 2\nparlor_messages_stored_total 0\n");
        let after = parse(
            "parlor_redis_calls_total{op=\"load\"} 2\nparlor_redis_calls_total{op=\"append\"} 5\n\
             parlor_messages_stored_total 50\n",
        );
        let d = delta("u", &before, &after);
        assert_eq!(d.redis_appends_per_message, Some(0.1));
        assert_eq!(d.redis_calls_per_message, Some(0.1));
    }

    #[test]
    fn dechunks() {
        assert_eq!(dechunk("4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n"), "abcdefg");
    }
}
