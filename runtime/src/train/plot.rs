//! PNG curves of a run from its `log.jsonl`: loss and accuracy per split, firing rate per layer.
//! Text uses a font compiled into the binary, so no fontconfig/freetype is needed anywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use super::TrainError;
use super::log::{LogRecord, read_log};
use crate::events::write_atomic;

/// Sub-directory of the run directory that receives the plots.
pub const PLOTS_DIR: &str = "plots";
const SIZE: (u32, u32) = (900, 560);
const FONT: &str = "sans-serif";

/// Colours that stay distinguishable for many series (Tableau 10).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn ensure_font() {
    static FONT_ONCE: Once = Once::new();
    FONT_ONCE.call_once(|| {
        // The bundled font is a valid TTF; if registration ever failed, text would just be
        // missing from the plots, which is no reason to fail a training run.
        let _ = register_font(FONT, FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT);
    });
}

/// One curve: label and (epoch, value) points.
type Series = (String, Vec<(f64, f64)>);

/// Writes `RUN_DIR/plots/{loss,accuracy,firing_rates}.png` from `RUN_DIR/log.jsonl` and returns
/// the paths written. A plot with no data (e.g. no accuracy logged) is skipped. When a resumed
/// run logged an epoch twice, the later record wins.
pub fn plot_run(run_dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    let log = read_log(run_dir)?;
    // Last record wins per (split, epoch): a resume re-runs epochs logged after the checkpoint.
    let mut latest: BTreeMap<(String, usize), &LogRecord> = BTreeMap::new();
    for r in &log.records {
        latest.insert((r.split.clone(), r.epoch), r);
    }
    let per_split = |f: &dyn Fn(&LogRecord) -> Option<f64>| -> Vec<Series> {
        let mut by_split: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
        for ((split, epoch), r) in &latest {
            if let Some(v) = f(r).filter(|v| v.is_finite()) {
                by_split.entry(split).or_default().push((*epoch as f64, v));
            }
        }
        by_split
            .into_iter()
            .map(|(s, pts)| (s.to_string(), pts))
            .collect()
    };
    let loss = per_split(&|r| r.loss);
    let accuracy = per_split(&|r| r.accuracy.map(|a| a * 100.0));
    // Firing rates of one split: training if logged (it has a point every epoch), else the first.
    let rate_split = latest
        .iter()
        .filter(|(_, r)| !r.firing_rates.is_empty())
        .map(|((s, _), _)| s.as_str())
        .min_by_key(|s| *s != "train");
    let mut rates: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    if let Some(split) = rate_split {
        for ((s, epoch), r) in &latest {
            if s != split {
                continue;
            }
            for (layer, &v) in &r.firing_rates {
                if v.is_finite() {
                    rates
                        .entry(layer.clone())
                        .or_default()
                        .push((*epoch as f64, v));
                }
            }
        }
    }
    let rates: Vec<Series> = rates.into_iter().collect();

    let dir = run_dir.join(PLOTS_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
    let mut written = Vec::new();
    let plots = [
        // Legends go where the curves usually are not: loss falls, accuracy rises.
        (
            "loss.png",
            "Loss".to_string(),
            "loss",
            loss,
            SeriesLabelPosition::UpperRight,
        ),
        (
            "accuracy.png",
            "Accuracy".to_string(),
            "accuracy (%)",
            accuracy,
            SeriesLabelPosition::LowerRight,
        ),
        (
            "firing_rates.png",
            format!("Firing rate per layer ({})", rate_split.unwrap_or("")),
            "firing rate",
            rates,
            SeriesLabelPosition::UpperRight,
        ),
    ];
    for (file, title, y_label, series, legend) in plots {
        if series.iter().all(|(_, pts)| pts.is_empty()) {
            continue;
        }
        let path = dir.join(file);
        write_png(&path, &title, y_label, &series, legend)?;
        written.push(path);
    }
    Ok(written)
}

/// Draws line curves (with point markers, so single-epoch series still show) into a PNG.
fn write_png(
    path: &Path,
    title: &str,
    y_label: &str,
    series: &[Series],
    legend: SeriesLabelPosition,
) -> Result<(), TrainError> {
    ensure_font();
    let fail = |what: String| TrainError::Plot {
        path: path.to_path_buf(),
        what,
    };
    let (w, h) = SIZE;
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
        draw(&root, title, y_label, series, legend).map_err(|e| fail(e.to_string()))?;
        root.present().map_err(|e| fail(e.to_string()))?;
    }
    let mut png_bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png_bytes, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(|e| fail(e.to_string()))?;
        writer
            .write_image_data(&rgb)
            .map_err(|e| fail(e.to_string()))?;
        writer.finish().map_err(|e| fail(e.to_string()))?;
    }
    write_atomic(path, |out| out.write_all(&png_bytes))?;
    Ok(())
}

/// Padded axis range: a flat series still gets a visible band.
fn range(values: impl Iterator<Item = f64>, floor_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        let pad = if lo.abs() > 0.0 { lo.abs() * 0.1 } else { 1.0 };
        lo -= pad;
        hi += pad;
    } else {
        let pad = (hi - lo) * 0.05;
        lo -= pad;
        hi += pad;
    }
    if floor_zero && lo < 0.0 {
        lo = 0.0;
    }
    (lo, hi)
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    y_label: &str,
    series: &[Series],
    legend: SeriesLabelPosition,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let all = || series.iter().flat_map(|(_, p)| p.iter());
    let (x0, x1) = range(all().map(|p| p.0), true);
    let (y0, y1) = range(all().map(|p| p.1), true);
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 26))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        // Epochs are integers; show "3", not "3.0" (fractional ticks only appear when zoomed in).
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-9 {
                format!("{x:.0}")
            } else {
                format!("{x:.1}")
            }
        })
        .y_desc(y_label)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    for (i, (label, pts)) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(3)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .draw()?;
    Ok(())
}
