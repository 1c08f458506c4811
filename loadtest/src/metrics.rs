//! Scrapes a Prometheus text endpoint (parlor's `/metrics`) over plain
//! HTTP/1.1, before and after the measured phase, and reports the deltas:
//! in particular messages per store commit and the mean commit time.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Unlabelled samples of one scrape: name → value (`_bucket` lines and
/// labelled series are left out).
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
    /// Set when a scrape failed.
    pub error: Option<String>,
}

/// Parses the Prometheus text format (the subset needed: `name value`).
pub fn parse(text: &str) -> Samples {
    let mut out = Samples::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.contains('{') {
            continue;
        }
        let mut it = line.split_whitespace();
        let (Some(name), Some(value)) = (it.next(), it.next()) else {
            continue;
        };
        if name.ends_with("_bucket") {
            continue;
        }
        if let Ok(v) = value.parse::<f64>() {
            out.insert(name.to_string(), v);
        }
    }
    out
}

/// The deltas between two scrapes, with the store figures derived.
pub fn delta(url: &str, before: &Samples, after: &Samples) -> MetricsDelta {
    let deltas: BTreeMap<String, f64> = after
        .iter()
        .filter_map(|(k, a)| before.get(k).map(|b| (k.clone(), a - b)))
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
        assert_eq!(before.len(), 5);
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
    fn dechunks() {
        assert_eq!(dechunk("4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n"), "abcdefg");
    }
}
