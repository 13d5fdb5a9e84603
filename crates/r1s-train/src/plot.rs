//! `r1s policy plot`: curves of a training run's `metrics.jsonl` as one PNG — per step (training
//! rollouts) and per evaluation (held-out, greedy), stages shaded apart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::error::{Result, TrainError};

/// One panel: a title and the series it draws (`kind` of line, key, legend).
struct Panel {
    title: &'static str,
    series: &'static [(&'static str, &'static str, &'static str)],
}

const PANELS: &[Panel] = &[
    Panel { title: "reward (mean of rollouts)", series: &[("step", "reward_mean", "train")] },
    Panel {
        title: "retrieval rate",
        series: &[("step", "retrieval_rate", "train rollouts"), ("eval", "retrieval_rate", "held-out (greedy)")],
    },
    Panel {
        title: "RC (external searches per question)",
        series: &[("step", "rc", "train rollouts"), ("eval", "rc", "held-out (greedy)")],
    },
    Panel {
        title: "answered with no search (share)",
        series: &[("step", "zero_search", "train rollouts"), ("eval", "zero_search", "held-out (greedy)")],
    },
    Panel {
        title: "memorisation (R1-Searcher++)",
        series: &[("step", "mem_nll", "NLL per path token"), ("step", "mem_paths", "paths kept")],
    },
    Panel { title: "answer F1", series: &[("step", "f1", "train rollouts"), ("eval", "f1", "held-out (greedy)")] },
    Panel {
        title: "format bad (share)",
        series: &[("step", "format_bad", "train rollouts"), ("eval", "format_bad", "held-out (greedy)")],
    },
    Panel { title: "KL to reference / entropy", series: &[("step", "kl", "KL"), ("step", "entropy", "entropy")] },
    Panel { title: "seconds per step", series: &[("step", "step_s", "step"), ("step", "rollout_s", "rollouts")] },
    Panel {
        title: "π_trainer / π_rollout per action token",
        series: &[
            ("step", "rollout_ratio_mean", "mean"),
            ("step", "rollout_ratio_min", "least"),
            ("step", "rollout_ratio_max", "greatest"),
        ],
    },
    Panel { title: "SFT token NLL", series: &[("sft", "token_nll", "NLL per policy token")] },
    Panel { title: "SFT grad norm", series: &[("sft", "grad_norm", "grad norm")] },
];

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

fn register_font() -> Result<()> {
    static DONE: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let env = std::env::var_os("R1S_FONT").map(PathBuf::from);
        let candidates = env.into_iter().chain(FONT_PATHS.iter().map(PathBuf::from));
        for p in candidates {
            if let Ok(bytes) = std::fs::read(&p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                return plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                    .map_err(|_| format!("{} is not a font plotters can read", p.display()));
            }
        }
        Err("no TrueType font found (install fonts-dejavu-core or set R1S_FONT to a .ttf file)".into())
    })
    .clone()
    .map_err(TrainError::Plot)
}

/// Reads the metrics lines of `path` (bad lines are an error naming the line).
pub fn read_metrics(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| TrainError::BadLine {
                path: path.into(),
                line: i + 1,
                reason: e.to_string(),
            })
        })
        .collect()
}

/// `(step, r[key])` of a metrics line `r` of `kind` (`step`, `eval`, `sft`) that has both.
fn point(r: &serde_json::Value, kind: &str, key: &str) -> Option<(f64, f64)> {
    (r["kind"].as_str() == Some(kind)).then_some(())?;
    Some((r["step"].as_f64()?, r[key].as_f64()?))
}

/// Draws the curves of `rows` into a PNG at `out`; returns how many panels had data.
pub fn plot(rows: &[serde_json::Value], out: &Path, title: &str) -> Result<usize> {
    register_font()?;
    type Series = Vec<Vec<(f64, f64)>>;
    let panels: Vec<(&Panel, Series)> = PANELS
        .iter()
        .map(|p| {
            (p, p.series.iter().map(|(k, key, _)| rows.iter().filter_map(|r| point(r, k, key)).collect()).collect())
        })
        .filter(|(_, s): &(&Panel, Series)| s.iter().any(|v| !v.is_empty()))
        .collect();
    if panels.is_empty() {
        return Err(TrainError::Plot("no step, eval or sft lines with data in the metrics".into()));
    }
    // where each stage starts (for shading)
    let mut stages: BTreeMap<u64, String> = BTreeMap::new();
    for r in rows {
        if let (Some(s), Some(st)) = (r["step"].as_u64(), r["stage"].as_str())
            && r["kind"].as_str() == Some("step")
            && !stages.values().any(|v| v == st)
        {
            stages.insert(s.saturating_sub(1), st.to_owned());
        }
    }
    let cols = 2usize.min(panels.len());
    let nrows = panels.len().div_ceil(cols);
    let (w, h) = (620 * cols as u32, 330 * nrows as u32 + 50);
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(out, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, ("sans-serif", 24))?;
        let areas = root.split_evenly((nrows, cols));
        let colors = [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44)];
        for ((panel, series), area) in panels.iter().zip(areas) {
            let pts = series.iter().flatten();
            let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
            for &(x, y) in pts {
                (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
            }
            if x1 <= x0 {
                x1 = x0 + 1.0;
            }
            let pad = ((y1 - y0) * 0.08).max(1e-3);
            let mut chart = ChartBuilder::on(&area)
                .caption(panel.title, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(55)
                .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))?;
            chart.configure_mesh().x_desc("step").light_line_style(WHITE.mix(0.0)).draw()?;
            let starts: Vec<(f64, &String)> = stages.iter().map(|(s, n)| (*s as f64, n)).collect();
            for (i, &(s, name)) in starts.iter().enumerate() {
                // a panel of another run's steps (SFT before RL) shows only the stages it overlaps
                let end = starts.get(i + 1).map_or(x1, |n| n.0).min(x1);
                if s >= x1 || end <= x0 {
                    continue;
                }
                let s = s.max(x0);
                if i % 2 == 1 {
                    chart.draw_series(std::iter::once(Rectangle::new(
                        [(s, y0 - pad), (end, y1 + pad)],
                        RGBColor(0, 0, 0).mix(0.06).filled(),
                    )))?;
                }
                chart.draw_series(std::iter::once(Text::new(
                    name.clone(),
                    (s, y1 + pad * 0.2),
                    ("sans-serif", 13).into_font().color(&RGBColor(90, 90, 90)),
                )))?;
            }
            for (j, ((kind, _, label), data)) in panel.series.iter().zip(series).enumerate() {
                if data.is_empty() {
                    continue;
                }
                let c = colors[j % colors.len()];
                let style = ShapeStyle::from(&c).stroke_width(2);
                let drawn = if *kind == "eval" {
                    chart.draw_series(LineSeries::new(data.iter().copied(), style))?;
                    chart.draw_series(data.iter().map(|&p| Circle::new(p, 4, c.filled())))?
                } else {
                    chart.draw_series(LineSeries::new(data.iter().copied(), style))?
                };
                drawn
                    .label(*label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(RGBColor(200, 200, 200))
                .label_font(("sans-serif", 13))
                .draw()?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| TrainError::Plot(format!("{}: {e}", out.display())))?;
    Ok(panels.len())
}

/// Draws several runs' curves over each other into a PNG at `out` (the panels of [`plot`], each
/// line named `label: series`), for comparing runs that share their steps (e.g. rollouts with f32
/// and q8_0 weights from the same checkpoint and seed). Returns how many panels had data.
///
/// Errors: as [`plot_series`].
pub fn plot_runs(runs: &[(String, Vec<serde_json::Value>)], out: &Path, title: &str) -> Result<usize> {
    let panels: Vec<SeriesPanel> = PANELS
        .iter()
        .map(|p| SeriesPanel {
            title: p.title.into(),
            lines: runs
                .iter()
                .flat_map(|(label, rows)| {
                    p.series.iter().map(move |&(kind, key, legend)| {
                        let points = rows.iter().filter_map(|r| point(r, kind, key)).collect();
                        (format!("{label}: {legend}"), points)
                    })
                })
                .collect(),
        })
        .collect();
    let n = panels.iter().filter(|p| p.lines.iter().any(|(_, v)| !v.is_empty())).count();
    plot_series(out, title, "step", &panels)?;
    Ok(n)
}

/// One panel of [`plot_series`]: its title and lines (legend, points in x order).
#[derive(Debug, Clone, Default)]
pub struct SeriesPanel {
    pub title: String,
    pub lines: Vec<(String, Vec<(f64, f64)>)>,
}

/// Draws `panels`, two per row, into a PNG at `out` with `title` above them and `x_desc` under each
/// x axis (e.g. the per-minute figures of `tools/soak-serve`). Panels without points are left out.
///
/// Errors: [`TrainError::Plot`] when no panel has a point, no font is found, or the PNG cannot be
/// written.
pub fn plot_series(out: &Path, title: &str, x_desc: &str, panels: &[SeriesPanel]) -> Result<()> {
    register_font()?;
    let panels: Vec<&SeriesPanel> = panels.iter().filter(|p| p.lines.iter().any(|(_, v)| !v.is_empty())).collect();
    if panels.is_empty() {
        return Err(TrainError::Plot("no points to draw".into()));
    }
    let cols = 2usize.min(panels.len());
    let nrows = panels.len().div_ceil(cols);
    let (w, h) = (620 * cols as u32, 330 * nrows as u32 + 50);
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(out, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, ("sans-serif", 24))?;
        // matplotlib's tab10: up to 10 lines (e.g. two overlaid runs of 3 series) in distinct colours
        let colors = [
            RGBColor(31, 119, 180),
            RGBColor(214, 39, 40),
            RGBColor(44, 160, 44),
            RGBColor(148, 103, 189),
            RGBColor(255, 127, 14),
            RGBColor(140, 86, 75),
            RGBColor(227, 119, 194),
            RGBColor(127, 127, 127),
            RGBColor(188, 189, 34),
            RGBColor(23, 190, 207),
        ];
        for (panel, area) in panels.iter().zip(root.split_evenly((nrows, cols))) {
            let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
            for &(x, y) in panel.lines.iter().flat_map(|(_, v)| v) {
                (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
            }
            if x1 <= x0 {
                x1 = x0 + 1.0;
            }
            // from zero where the values are non-negative: a flat line reads as flat (and all
            // zeros as zero on a unit axis)
            let y0 = if y0 >= 0.0 { 0.0 } else { y0 };
            let pad = if y1 - y0 < 1e-9 { y1.abs().max(1.0) } else { (y1 - y0) * 0.08 };
            let mut chart = ChartBuilder::on(&area)
                .caption(&panel.title, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(60)
                .build_cartesian_2d(x0..x1, y0..(y1 + pad))?;
            chart.configure_mesh().x_desc(x_desc).light_line_style(WHITE.mix(0.0)).draw()?;
            for (j, (label, data)) in panel.lines.iter().enumerate().filter(|(_, (_, d))| !d.is_empty()) {
                let c = colors[j % colors.len()];
                chart
                    .draw_series(LineSeries::new(data.iter().copied(), ShapeStyle::from(&c).stroke_width(2)))?
                    .label(label.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(RGBColor(200, 200, 200))
                .label_font(("sans-serif", 13))
                .draw()?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| TrainError::Plot(format!("{}: {e}", out.display())))
}
