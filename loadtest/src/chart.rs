//! `parlor-loadtest chart`: result files side by side in one SVG.
//!
//! Each input is the `--json` object of one run; its `label` names the
//! server. One panel per metric, one horizontal bar per label, the value
//! written at the end of the bar ("2.5 M", "500 k", "0.42 µs"). Runs with
//! the same label are repeats: the bar is their median and a whisker spans
//! their min..max. When a bar is labelled `limit` (the machine's ceiling
//! server), every other bar also says how it compares: "0.80× limit".

use std::path::{Path, PathBuf};

use clap::ValueEnum;
use plotters::coord::ranged1d::{IntoSegmentedCoord, SegmentValue};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

#[derive(clap::Args, Debug, Clone)]
pub struct ChartArgs {
    /// Result files (the `--json` output of runs). Files with the same
    /// label are repeats: the bar is their median, a whisker their range.
    #[arg(long = "in", required = true, num_args = 1..)]
    pub inputs: Vec<PathBuf>,
    /// The SVG to write.
    #[arg(long)]
    pub out: PathBuf,
    /// A panel per metric, left to right [default: by scenario: fanout and
    /// rooms: deliveries-per-sec, cpu-us-per-delivery; idle:
    /// kib-per-connection; join-storm: join-secs; reconnect: steady-p99-ms].
    #[arg(long = "metric", value_enum)]
    pub metrics: Vec<Metric>,
    /// Title above the panels [default: the scenario].
    #[arg(long)]
    pub title: Option<String>,
    /// Order of the bars, top to bottom, by label (comma-separated); labels
    /// not listed follow in the order first seen.
    #[arg(long, value_delimiter = ',')]
    pub order: Vec<String>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// deliveries.per_sec
    DeliveriesPerSec,
    /// server.cpu_us_per_delivery
    CpuUsPerDelivery,
    /// latency.p50_us, in ms
    P50Ms,
    /// latency.p99_us, in ms
    P99Ms,
    /// latency_steady.p99_us (members that never dropped), in ms
    SteadyP99Ms,
    /// idle.rss_per_connection_bytes, in KiB
    KibPerConnection,
    /// timing.join_secs (connect + join of every connection)
    JoinSecs,
    /// messages.acks_per_sec
    AcksPerSec,
    /// metrics.messages_per_commit (needs --metrics-url)
    MessagesPerCommit,
    /// metrics.commit_ms_mean (needs --metrics-url)
    CommitMs,
}

impl Metric {
    pub fn title(self) -> &'static str {
        match self {
            Metric::DeliveriesPerSec => "deliveries/s (higher is better)",
            Metric::CpuUsPerDelivery => "server CPU µs per delivery (lower is better)",
            Metric::P50Ms => "p50 latency, ms (lower is better)",
            Metric::P99Ms => "p99 latency, ms (lower is better)",
            Metric::SteadyP99Ms => "p99 of members that stay, ms (lower is better)",
            Metric::KibPerConnection => "server RSS KiB per connection (lower is better)",
            Metric::JoinSecs => "seconds to connect + join all (lower is better)",
            Metric::AcksPerSec => "acks/s (higher is better)",
            Metric::MessagesPerCommit => "messages per store commit",
            Metric::CommitMs => "ms per store commit (lower is better)",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Metric::DeliveriesPerSec | Metric::AcksPerSec | Metric::MessagesPerCommit => "",
            Metric::CpuUsPerDelivery => " µs",
            Metric::P50Ms | Metric::P99Ms | Metric::SteadyP99Ms | Metric::CommitMs => " ms",
            Metric::KibPerConnection => " KiB",
            Metric::JoinSecs => " s",
        }
    }

    /// The metric's value in one result, if it has one.
    pub fn extract(self, r: &Value) -> Option<f64> {
        let f = |path: &[&str]| {
            let mut v = r;
            for k in path {
                v = v.get(k)?;
            }
            v.as_f64()
        };
        let v = match self {
            Metric::DeliveriesPerSec => f(&["deliveries", "per_sec"]),
            Metric::CpuUsPerDelivery => f(&["server", "cpu_us_per_delivery"]),
            Metric::P50Ms => f(&["latency", "p50_us"]).map(|v| v / 1000.0),
            Metric::P99Ms => f(&["latency", "p99_us"]).map(|v| v / 1000.0),
            Metric::SteadyP99Ms => f(&["latency_steady", "p99_us"]).map(|v| v / 1000.0),
            Metric::KibPerConnection => {
                f(&["idle", "rss_per_connection_bytes"]).map(|v| v / 1024.0)
            }
            Metric::JoinSecs => f(&["timing", "join_secs"])
                .filter(|v| *v > 0.0)
                .or_else(|| f(&["timing", "connect_secs"])),
            Metric::AcksPerSec => f(&["messages", "acks_per_sec"]),
            Metric::MessagesPerCommit => f(&["metrics", "messages_per_commit"]),
            Metric::CommitMs => f(&["metrics", "commit_ms_mean"]),
        }?;
        // A throughput of 0 means "nothing measured", not a result.
        let rate = matches!(self, Metric::DeliveriesPerSec | Metric::AcksPerSec);
        (v.is_finite() && !(rate && v <= 0.0)).then_some(v)
    }

    fn defaults(scenario: &str) -> Vec<Metric> {
        match scenario {
            "idle" => vec![Metric::KibPerConnection],
            "join-storm" => vec![Metric::JoinSecs],
            "reconnect" => vec![Metric::SteadyP99Ms, Metric::P99Ms],
            _ => vec![Metric::DeliveriesPerSec, Metric::CpuUsPerDelivery],
        }
    }
}

/// A number for people: "2.0 M", "48.5 k", "500 k", "0.42", "12.5".
pub fn human(v: f64) -> String {
    let a = v.abs();
    let scaled = |x: f64, suffix: &str| {
        if x.abs() >= 100.0 {
            format!("{x:.0} {suffix}")
        } else {
            format!("{x:.1} {suffix}")
        }
    };
    if a >= 1e6 {
        scaled(v / 1e6, "M")
    } else if a >= 1e3 {
        scaled(v / 1e3, "k")
    } else if a == 0.0 {
        "0".into()
    } else {
        // Three significant digits, trailing zeros dropped.
        let decimals = (2 - a.log10().floor() as i32).clamp(0, 6) as usize;
        let s = format!("{v:.decimals$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    }
}

/// One bar: the median of a label's runs and their range.
#[derive(Debug, Clone)]
pub struct Bar {
    pub label: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
    /// Some run of this label reported `stopped_by`.
    pub stopped: bool,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The bars of one metric, in `order` then first-seen order.
pub fn bars(results: &[Value], metric: Metric, order: &[String]) -> Vec<Bar> {
    let mut labels: Vec<String> = Vec::new();
    for r in results {
        let l = label_of(r);
        if !labels.contains(&l) {
            labels.push(l);
        }
    }
    labels.sort_by_key(|l| order.iter().position(|o| o == l).unwrap_or(usize::MAX));
    labels
        .into_iter()
        .filter_map(|l| {
            let runs: Vec<&Value> = results.iter().filter(|r| label_of(r) == l).collect();
            let mut vals: Vec<f64> = runs.iter().filter_map(|r| metric.extract(r)).collect();
            if vals.is_empty() {
                return None;
            }
            let min = vals.iter().copied().fold(f64::INFINITY, f64::min);
            let max = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            Some(Bar {
                runs: vals.len(),
                median: median(&mut vals),
                min,
                max,
                stopped: runs.iter().any(|r| !r["stopped_by"].is_null()),
                label: l,
            })
        })
        .collect()
}

fn label_of(r: &Value) -> String {
    r["label"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| r["url"].as_str().unwrap_or("?").to_string())
}

/// A stable colour per server: the ceiling grey, parlor's stores in blue /
/// orange / green / purple, a baseline build as a paler shade of the same.
pub fn color_for(label: &str) -> RGBColor {
    let (base, pale) = match label.strip_prefix("parlor-before-") {
        Some(rest) => (format!("parlor-{rest}"), true),
        None => (label.to_string(), false),
    };
    let c = match base.as_str() {
        "limit" => RGBColor(110, 110, 110),
        "parlor-memory" => RGBColor(31, 119, 180),
        "parlor-redb-immediate" => RGBColor(230, 115, 0),
        "parlor-redb-batched" => RGBColor(44, 160, 44),
        "parlor-redb-none" => RGBColor(148, 103, 189),
        "seed-ts" => RGBColor(214, 39, 40),
        "seed-py" => RGBColor(140, 86, 75),
        other => {
            const P: [RGBColor; 6] = [
                RGBColor(23, 190, 207),
                RGBColor(188, 189, 34),
                RGBColor(227, 119, 194),
                RGBColor(127, 127, 127),
                RGBColor(31, 119, 180),
                RGBColor(255, 127, 14),
            ];
            let h = other
                .bytes()
                .fold(7u32, |h, b| h.wrapping_mul(31) ^ b as u32);
            P[h as usize % P.len()]
        }
    };
    if pale {
        let mix = |x: u8| ((x as u16 + 2 * 255) / 3) as u8;
        RGBColor(mix(c.0), mix(c.1), mix(c.2))
    } else {
        c
    }
}

/// Reads the inputs and writes the SVG.
pub fn run(a: &ChartArgs) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for p in &a.inputs {
        let text = std::fs::read_to_string(p)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not a result: {e}", p.display()))?;
        results.push(v);
    }
    let scenario = results
        .first()
        .and_then(|r| r["plan"]["scenario"].as_str())
        .unwrap_or("")
        .to_string();
    let metrics = if a.metrics.is_empty() {
        Metric::defaults(&scenario)
    } else {
        a.metrics.clone()
    };
    let title = a.title.clone().unwrap_or(scenario);
    let panels: Vec<(Metric, Vec<Bar>)> = metrics
        .iter()
        .map(|&m| (m, bars(&results, m, &a.order)))
        .collect();
    draw(&a.out, &title, &panels)
}

/// Draws the panels one above the other (each as wide as the page allows,
/// so the text stays legible when the SVG is scaled into a document).
pub fn draw(out: &Path, title: &str, panels: &[(Metric, Vec<Bar>)]) -> anyhow::Result<()> {
    let rows = panels.iter().map(|p| p.1.len()).max().unwrap_or(0).max(1);
    let longest = panels
        .iter()
        .flat_map(|p| p.1.iter().map(|b| b.label.chars().count()))
        .max()
        .unwrap_or(5);
    let label_w = (longest as u32 * 8 + 16).max(60);
    let width = label_w + 640;
    let panel_h = 30 + 34 * rows.max(2) as u32 + 45;
    let height = 36 + panel_h * panels.len().max(1) as u32;
    let root = SVGBackend::new(out, (width, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 18))?;
    let areas = root.split_evenly((panels.len().max(1), 1));
    for ((metric, bars), area) in panels.iter().zip(areas.iter()) {
        draw_panel(area, *metric, bars, rows, label_w)?;
    }
    root.present()?;
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    metric: Metric,
    bars: &[Bar],
    rows: usize,
    label_w: u32,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let limit = bars.iter().find(|b| b.label == "limit").map(|b| b.median);
    let with_ratio = limit.is_some() && bars.len() > 1;
    // A few bars far above the rest (the seeds' costs) would squash the
    // others to slivers: they are cut, marked, and their value written.
    let cut = cut_above(bars);
    let top = bars
        .iter()
        .filter(|b| cut.is_none_or(|c| b.median <= c))
        .map(|b| b.max.max(b.median))
        .fold(0.0, f64::max);
    let top = if top > 0.0 { top } else { 1.0 };
    let room = if with_ratio { 1.75 } else { 1.35 } + if cut.is_some() { 0.15 } else { 0.0 };
    let xmax = top * room;
    // Cut bars end visibly beyond the longest whole one.
    let cut_at = top * 1.12;
    let n = bars.len().max(1);
    let caption = if bars.iter().any(|b| b.runs > 1) {
        format!(
            "{}; bars: median of n runs, whiskers: min–max",
            metric.title()
        )
    } else {
        metric.title().to_string()
    };
    let mut ch = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 15))
        .margin(10)
        .margin_right(20)
        .x_label_area_size(30)
        .y_label_area_size(label_w)
        // An integer range includes its end: rows 0..=n-1 (a single bar
        // needs a non-empty range: it gets an empty row above it).
        .build_cartesian_2d(0.0..xmax, (0..(n - 1).max(1)).into_segmented())?;
    let label_of_row = |i: usize| bars.get(n - 1 - i).map(|b| b.label.clone());
    ch.configure_mesh()
        .disable_y_mesh()
        .x_labels(5)
        .y_labels(rows)
        .x_label_formatter(&|v| human(*v))
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => label_of_row(*i).unwrap_or_default(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 13))
        .light_line_style(TRANSPARENT)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;
    if bars.is_empty() {
        ch.draw_series(std::iter::once(Text::new(
            "(no data)",
            (xmax * 0.05, SegmentValue::CenterOf(0)),
            ("sans-serif", 14),
        )))?;
        return Ok(());
    }
    let value_style = TextStyle::from(("sans-serif", 13).into_font())
        .pos(Pos::new(HPos::Left, VPos::Center))
        .color(&BLACK);
    for (k, b) in bars.iter().enumerate() {
        let i = n - 1 - k;
        let color = color_for(&b.label);
        let is_cut = cut.is_some_and(|c| b.median > c);
        let end = if is_cut { cut_at } else { b.median };
        let mut rect = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(i)),
                (end, SegmentValue::Exact(i + 1)),
            ],
            color.filled(),
        );
        rect.set_margin(6, 6, 0, 0);
        ch.draw_series(std::iter::once(rect))?;
        if is_cut {
            // A break mark: two white slashes across the bar's end.
            for dx in [-14, -8] {
                ch.draw_series(std::iter::once(
                    EmptyElement::at((cut_at, SegmentValue::CenterOf(i)))
                        + PathElement::new(
                            vec![(dx - 3, 10), (dx + 3, -10)],
                            WHITE.stroke_width(2),
                        ),
                ))?;
            }
        }
        if b.runs > 1 && b.max > b.min && !is_cut {
            let y = || SegmentValue::CenterOf(i);
            ch.draw_series(std::iter::once(PathElement::new(
                vec![(b.min, y()), (b.max, y())],
                BLACK.stroke_width(1),
            )))?;
            for x in [b.min, b.max] {
                ch.draw_series(std::iter::once(
                    EmptyElement::at((x, y()))
                        + PathElement::new(vec![(0, -5), (0, 5)], BLACK.stroke_width(1)),
                ))?;
            }
        }
        let mut text = value_text(b.median, metric.unit());
        if let (Some(l), true) = (limit, b.label != "limit") {
            if l > 0.0 {
                let r = b.median / l;
                let r = if r >= 10.0 {
                    format!("{r:.0}")
                } else if r >= 0.1 {
                    format!("{r:.2}")
                } else {
                    format!("{r:.3}")
                };
                text.push_str(&format!("  ({r}× limit)"));
            }
        }
        if b.runs > 1 {
            text.push_str(&format!(", n={}", b.runs));
        }
        if b.stopped {
            text.push_str("  *stopped early");
        }
        if is_cut {
            text.push_str("  (bar cut)");
        }
        let at = (
            if is_cut { cut_at } else { b.max.max(b.median) },
            SegmentValue::CenterOf(i),
        );
        ch.draw_series(std::iter::once(
            EmptyElement::at(at) + Text::new(text, (6, 0), value_style.clone()),
        ))?;
    }
    Ok(())
}

/// A value with its unit; milliseconds from 1 000 on as seconds.
fn value_text(v: f64, unit: &str) -> String {
    if unit == " ms" && v >= 1000.0 {
        format!("{} s", human(v / 1000.0))
    } else {
        format!("{}{unit}", human(v))
    }
}

/// The value above which bars are cut: when sorted values jump by ≥ 5×
/// and fewer bars lie above the jump than below it.
fn cut_above(bars: &[Bar]) -> Option<f64> {
    let mut v: Vec<f64> = bars.iter().map(|b| b.median).filter(|v| *v > 0.0).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    (1..v.len())
        .find(|&i| v[i] >= 5.0 * v[i - 1])
        .filter(|&i| v.len() - i < i)
        .map(|i| v[i - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outliers_are_cut_only_when_few() {
        let bar = |m: f64| Bar {
            label: String::new(),
            median: m,
            min: m,
            max: m,
            runs: 1,
            stopped: false,
        };
        let costs: Vec<Bar> = [1.1, 2.2, 2.6, 49.0, 76.0].map(bar).into();
        assert_eq!(cut_above(&costs), Some(2.6));
        let rates: Vec<Bar> = [9.9e3, 16e3, 2.2e5, 2.5e5, 3e5].map(bar).into();
        assert_eq!(cut_above(&rates), None);
        assert_eq!(cut_above(&[bar(1.0)]), None);
    }

    #[test]
    fn human_numbers() {
        assert_eq!(human(2_000_000.0), "2.0 M");
        assert_eq!(human(2_540_000.0), "2.5 M");
        assert_eq!(human(500_000.0), "500 k");
        assert_eq!(human(48_500.0), "48.5 k");
        assert_eq!(human(1_000.0), "1.0 k");
        assert_eq!(human(999.0), "999");
        assert_eq!(human(12.5), "12.5");
        assert_eq!(human(0.42), "0.42");
        assert_eq!(human(0.035), "0.035");
        assert_eq!(human(0.0), "0");
        assert_eq!(human(7.0), "7");
        assert_eq!(value_text(8300.0, " ms"), "8.3 s");
        assert_eq!(value_text(75.5, " ms"), "75.5 ms");
    }

    fn result(label: &str, per_sec: f64, cpu: f64) -> Value {
        serde_json::json!({
            "label": label,
            "plan": {"scenario": "fanout"},
            "deliveries": {"per_sec": per_sec},
            "server": {"cpu_us_per_delivery": cpu},
            "stopped_by": null,
        })
    }

    #[test]
    fn bars_take_medians_in_order() {
        let rs = vec![
            result("parlor-memory", 2.0e6, 0.4),
            result("limit", 3.0e6, 0.2),
            result("parlor-memory", 2.6e6, 0.5),
            result("parlor-memory", 2.2e6, 0.3),
        ];
        let b = bars(&rs, Metric::DeliveriesPerSec, &["limit".into()]);
        assert_eq!(b[0].label, "limit");
        assert_eq!(
            (b[1].median, b[1].min, b[1].max, b[1].runs),
            (2.2e6, 2.0e6, 2.6e6, 3)
        );
        let dir = std::env::temp_dir().join(format!("lt-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("c.svg");
        let panels = vec![
            (Metric::DeliveriesPerSec, b),
            (
                Metric::CpuUsPerDelivery,
                bars(&rs, Metric::CpuUsPerDelivery, &[]),
            ),
        ];
        draw(&out, "fan-out", &panels).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        for s in [
            "parlor-memory",
            "limit",
            "2.2 M",
            "0.73× limit",
            "µs",
            "n=3",
            "median of n runs",
        ] {
            assert!(svg.contains(s), "{s} missing");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
