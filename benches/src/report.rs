//! Report-writing helpers shared by every benchmark and scenario run.
//!
//! A run writes its artefacts into `target/bench/<run-id>/` (see [`crate::run_dir`]): JSON
//! results ([`write_json`], [`environment`]), markdown summaries ([`md_table`],
//! [`percentile`]) and SVG charts ([`cdf_svg`], [`bars_svg`], [`lines_svg`]).
//!
//! The charts are drawn with plotters' SVG backend without font files: text sizes are only
//! estimated, so layouts leave generous room for labels. Every chart function accepts awkward
//! input (no data, a single point, all-equal values, zeros, huge values, NaN or infinite
//! samples, which are dropped) and still writes a valid SVG with the title; when there is
//! nothing to draw the plot area carries a "no data" caption.

use std::fmt::Debug;
use std::path::Path;

use anyhow::Context as _;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::{json, Value};

/// One named series of (x, y) points.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Series {
    /// The series name, shown in the legend.
    pub name: String,
    /// The (x, y) points; non-finite points are dropped when plotted.
    pub points: Vec<(f64, f64)>,
}

/// Chart size in pixels.
const SIZE: (u32, u32) = (800, 500);
/// Font family for all text (resolved by whatever renders the SVG).
const FONT: &str = "sans-serif";
const TITLE_PX: u32 = 22;
const DESC_PX: u32 = 15;
const TICK_PX: u32 = 13;
const LEGEND_PX: u32 = 13;
const VALUE_PX: u32 = 12;
const MARGIN: u32 = 15;
const Y_LABEL_AREA: u32 = 70;
const X_LABEL_AREA: u32 = 45;
/// CDFs with more samples than this are drawn through this many evenly spaced ranks.
const CDF_MAX_STEPS: usize = 2000;
/// Estimated advance of one character, in units of the font size (a conservative guess for a
/// proportional sans-serif font, used only to decide how to lay out bar labels).
const CHAR_EM: f64 = 0.52;

/// A colour-blind-friendly fixed palette (Tableau 10); [`Palette99`] beyond it.
const COLOURS: [RGBColor; 10] = [
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

fn colour(i: usize) -> RGBAColor {
    match COLOURS.get(i) {
        Some(c) => c.to_rgba(),
        None => Palette99::pick(i).to_rgba(),
    }
}

/// Maps a plotters error (which is not always `Send + Sync`) into anyhow.
fn plot_err<E: Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting failed: {e:?}")
}

/// Writes `contents` to `path`, creating its parent directories.
fn write_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating directory {}", parent.display()))?;
        }
    }
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// Renders an 800×500 SVG with `draw` and writes it to `path`.
fn render_svg(
    path: &Path,
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        draw(&root)?;
        root.present().map_err(plot_err)?;
    }
    write_file(path, svg.as_bytes())
}

/// The finite values of `values`, as a `(min, max)` pair; `None` if there are none.
fn finite_bounds(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// An axis range covering `bounds` (optionally also 0) with a little padding, always of
/// positive, finite width: no data gives `0..1`, a degenerate range is widened around its
/// value, and padding never crosses zero when all values lie on one side of it.
fn axis_range(bounds: Option<(f64, f64)>, include_zero: bool) -> (f64, f64) {
    const LIMIT: f64 = 1e300;
    let Some((mut lo, mut hi)) = bounds else {
        return (0.0, 1.0);
    };
    if include_zero {
        lo = lo.min(0.0);
        hi = hi.max(0.0);
    }
    // Keep the width finite (values near f64::MAX are clipped rather than overflowing).
    lo = lo.clamp(-LIMIT, LIMIT);
    hi = hi.clamp(-LIMIT, LIMIT);
    let span = hi - lo;
    let magnitude = lo.abs().max(hi.abs());
    if span <= magnitude * 1e-9 || span == 0.0 {
        // All equal (or equal up to rounding): widen around the value.
        let mid = lo / 2.0 + hi / 2.0;
        let pad = if mid == 0.0 { 1.0 } else { mid.abs() * 0.1 };
        // (With include_zero, equal values can only be all zeros here.)
        return (mid - pad, mid + pad);
    }
    let pad = span * 0.05;
    let a = if lo >= 0.0 && lo - pad < 0.0 {
        0.0
    } else {
        lo - pad
    };
    let b = if hi <= 0.0 && hi + pad > 0.0 {
        0.0
    } else {
        hi + pad
    };
    (a, b)
}

/// `v` rounded to 3 significant digits, in plain notation for moderate magnitudes and
/// scientific notation (e.g. `1.23e6`) for very large or very small ones.
fn sig3(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".to_string();
    }
    if v == 0.0 {
        return "0".to_string();
    }
    let exp = v.abs().log10().floor();
    if !(-3.0..6.0).contains(&exp) {
        return trim_sci(&format!("{v:.2e}"));
    }
    let scale = 10f64.powf(exp - 2.0);
    let rounded = (v / scale).round() * scale;
    let decimals = (2.0 - exp).max(0.0) as usize;
    trim_decimals(&format!("{rounded:.decimals$}"))
}

/// Removes trailing zeros (and a trailing point) from a plain decimal number.
fn trim_decimals(s: &str) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s.to_string()
    }
}

/// Removes trailing zeros from the mantissa of `1.20e6`-style numbers.
fn trim_sci(s: &str) -> String {
    match s.split_once('e') {
        Some((m, e)) => format!("{}e{e}", trim_decimals(m)),
        None => s.to_string(),
    }
}

/// A tick label for `v` on an axis spanning `span`: as many decimals as the tick spacing
/// (about a tenth of the span) needs, scientific notation for very large or small magnitudes.
fn tick_label(v: f64, lo: f64, hi: f64) -> String {
    let span = (hi - lo).abs();
    let step = span / 10.0;
    if !v.is_finite() || step <= 0.0 || !step.is_finite() {
        return sig3(v);
    }
    if v.abs() < step * 1e-6 {
        return "0".to_string();
    }
    let magnitude = lo.abs().max(hi.abs());
    let step_exp = step.log10().floor();
    if !(1e-3..1e6).contains(&magnitude) {
        let mag_exp = magnitude.log10().floor();
        let digits = (mag_exp - step_exp).clamp(0.0, 8.0) as usize;
        return trim_sci(&format!("{v:.digits$e}"));
    }
    let decimals = (-step_exp).clamp(0.0, 9.0) as usize;
    trim_decimals(&format!("{v:.decimals$}"))
}

/// Estimated width in pixels of `text` at `px` font size.
fn text_width(text: &str, px: u32) -> f64 {
    text.chars().count() as f64 * f64::from(px) * CHAR_EM
}

/// `text` cut to at most `max` characters, with an ellipsis if cut.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

fn text_style(px: u32) -> TextStyle<'static> {
    (FONT, px).into_font().color(&BLACK)
}

/// Draws the "no data" caption in the middle of the plot area at pixel `centre`.
fn no_data(root: &DrawingArea<SVGBackend<'_>, Shift>, centre: (i32, i32)) -> anyhow::Result<()> {
    let style = text_style(DESC_PX + 3)
        .color(&RGBColor(120, 120, 120))
        .pos(Pos::new(HPos::Center, VPos::Center));
    root.draw(&Text::new("no data", centre, style))
        .map_err(plot_err)
}

/// Draws the legend of `chart` in `position` (only when a series has a label).
fn legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    position: SeriesLabelPosition,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.5))
        .label_font(text_style(LEGEND_PX))
        .draw()
        .map_err(plot_err)
}

/// The legend corner that hides the least of the drawn lines: each corner's box (a third of
/// the width, a quarter of the height per legend row, at most half the height) is scored by how
/// many samples along the polylines fall inside it; ties go to the earlier corner in
/// `preference`.
fn legend_corner(
    lines: &[&[(f64, f64)]],
    legend_rows: usize,
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
    preference: [SeriesLabelPosition; 4],
) -> SeriesLabelPosition {
    let box_w = 0.4;
    let box_h = (0.08 * legend_rows as f64 + 0.04).min(0.5);
    let mut hits = [0usize; 4];
    let mut count = |x: f64, y: f64| {
        let u = (x - x0) / (x1 - x0);
        let v = (y - y0) / (y1 - y0);
        for (i, corner) in preference.iter().enumerate() {
            let (left, right, bottom, top) =
                (u <= box_w, u >= 1.0 - box_w, v <= box_h, v >= 1.0 - box_h);
            let inside = match corner {
                SeriesLabelPosition::UpperLeft => left && top,
                SeriesLabelPosition::UpperRight => right && top,
                SeriesLabelPosition::LowerLeft => left && bottom,
                _ => right && bottom,
            };
            if inside {
                hits[i] += 1;
            }
        }
    };
    for line in lines {
        for pair in line.windows(2) {
            let ((ax, ay), (bx, by)) = (pair[0], pair[1]);
            for k in 0..8 {
                let t = f64::from(k) / 8.0;
                count(ax + (bx - ax) * t, ay + (by - ay) * t);
            }
        }
        if let Some(&(x, y)) = line.last() {
            count(x, y);
        }
    }
    let best = (0..4).min_by_key(|&i| (hits[i], i)).unwrap_or(0);
    preference[best].clone()
}

/// The points of the empirical CDF of `sorted` (finite, ascending) as a step line: for each
/// value x, y = fraction of samples ≤ x. Large sample sets are drawn through
/// [`CDF_MAX_STEPS`] evenly spaced ranks.
fn ecdf_points(sorted: &[f64]) -> Vec<(f64, f64)> {
    let n = sorted.len();
    let Some(&first) = sorted.first() else {
        return Vec::new();
    };
    let nf = n as f64;
    let mut points = Vec::with_capacity(2 * n.min(CDF_MAX_STEPS) + 2);
    points.push((first, 0.0));
    if n <= CDF_MAX_STEPS {
        let mut prev = 0.0;
        for (i, &x) in sorted.iter().enumerate() {
            let y = (i + 1) as f64 / nf;
            points.push((x, prev));
            points.push((x, y));
            prev = y;
        }
    } else {
        for k in 0..=CDF_MAX_STEPS {
            let idx = k * (n - 1) / CDF_MAX_STEPS;
            if let Some(&x) = sorted.get(idx) {
                points.push((x, (idx + 1) as f64 / nf));
            }
        }
    }
    points
}

/// Empirical CDF plot: for each named sample set, x = value (sorted), y = fraction ≤ x (0..1).
/// Empty sample sets are listed in the legend as "(no samples)" and drawn as nothing.
///
/// NaN and infinite samples are dropped. The curve is drawn as a step function; sets larger
/// than a couple of thousand samples are drawn through evenly spaced ranks.
pub fn cdf_svg(
    path: &Path,
    title: &str,
    x_label: &str,
    samples: &[(String, Vec<f64>)],
) -> anyhow::Result<()> {
    let sets: Vec<(&str, Vec<f64>)> = samples
        .iter()
        .map(|(name, values)| {
            let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
            v.sort_by(f64::total_cmp);
            (name.as_str(), v)
        })
        .collect();
    let bounds = finite_bounds(sets.iter().flat_map(|(_, v)| v.iter().copied()));
    let (x0, x1) = axis_range(bounds, false);
    let (y0, y1) = (0.0, 1.02);
    // Only values beyond ±1e300 fall outside the axis; pin them to its edge.
    let curves: Vec<Vec<(f64, f64)>> = sets
        .iter()
        .map(|(_, v)| {
            ecdf_points(v)
                .into_iter()
                .map(|(x, y)| (x.clamp(x0, x1), y))
                .collect()
        })
        .collect();
    let corner = legend_corner(
        &curves.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        sets.len(),
        (x0, x1),
        (y0, y1),
        [
            SeriesLabelPosition::LowerRight,
            SeriesLabelPosition::UpperLeft,
            SeriesLabelPosition::LowerLeft,
            SeriesLabelPosition::UpperRight,
        ],
    );

    render_svg(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, TITLE_PX))
            .margin(MARGIN)
            .x_label_area_size(X_LABEL_AREA)
            .y_label_area_size(Y_LABEL_AREA)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(plot_err)?;
        let x_fmt = |v: &f64| tick_label(*v, x0, x1);
        let y_fmt = |v: &f64| tick_label(*v, 0.0, 1.0);
        chart
            .configure_mesh()
            .x_labels(if bounds.is_some() { 10 } else { 0 })
            .x_desc(x_label)
            .y_desc("fraction ≤ x")
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .axis_desc_style(text_style(DESC_PX))
            .label_style(text_style(TICK_PX))
            .light_line_style(BLACK.mix(0.04))
            .bold_line_style(BLACK.mix(0.12))
            .draw()
            .map_err(plot_err)?;

        for (i, ((name, values), points)) in sets.iter().zip(&curves).enumerate() {
            let c = colour(i);
            if values.is_empty() {
                chart
                    .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())
                    .map_err(plot_err)?
                    .label(format!("{name} (no samples)"))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
            } else {
                chart
                    .draw_series(LineSeries::new(points.iter().copied(), c.stroke_width(2)))
                    .map_err(plot_err)?
                    .label(format!("{name} (n={})", values.len()))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                    });
            }
        }
        if !sets.is_empty() {
            legend(&mut chart, corner)?;
        }
        if bounds.is_none() {
            no_data(root, chart.backend_coord(&((x0 + x1) / 2.0, 0.5)))?;
        }
        Ok(())
    })
}

/// Vertical bar chart, one bar per (label, value), value printed above each bar.
///
/// Values are printed with up to 3 significant digits; a NaN or infinite value keeps its slot
/// and label but draws no bar and prints "n/a". Long labels are staggered over two rows, or
/// rotated when even that does not fit.
pub fn bars_svg(
    path: &Path,
    title: &str,
    y_label: &str,
    bars: &[(String, f64)],
) -> anyhow::Result<()> {
    let n = bars.len();
    let bounds = finite_bounds(bars.iter().map(|(_, v)| *v));
    let (mut y0, mut y1) = axis_range(bounds, true);
    // Headroom for the value printed above (or below) the extreme bars.
    let head = (y1 - y0) * 0.08;
    if y1 > 0.0 {
        y1 += head;
    }
    if y0 < 0.0 {
        y0 -= head;
    }
    let (x0, x1) = (0.0, n.max(1) as f64);

    // Lay out the category labels: one row, two staggered rows, or rotated.
    let plot_w = f64::from(SIZE.0 - 2 * MARGIN - Y_LABEL_AREA);
    let slot = plot_w / n.max(1) as f64;
    let widest = bars
        .iter()
        .map(|(l, _)| text_width(l, TICK_PX))
        .fold(0.0, f64::max);
    #[derive(Clone, Copy, PartialEq)]
    enum Layout {
        Row,
        Staggered,
        Rotated,
    }
    const MAX_ROTATED_CHARS: usize = 28;
    let layout = if widest <= slot * 0.9 {
        Layout::Row
    } else if widest <= 2.0 * slot * 0.9 {
        Layout::Staggered
    } else {
        Layout::Rotated
    };
    let label_area = match layout {
        Layout::Row => 30,
        Layout::Staggered => 48,
        Layout::Rotated => {
            let w = bars
                .iter()
                .map(|(l, _)| text_width(&truncate(l, MAX_ROTATED_CHARS), TICK_PX))
                .fold(0.0, f64::max);
            (w as u32 + 15).clamp(30, 200)
        }
    };
    let widest_value = bars
        .iter()
        .map(|(_, v)| text_width(&sig3(*v), VALUE_PX))
        .fold(0.0, f64::max);
    let value_px = if widest_value <= slot * 0.95 {
        VALUE_PX
    } else {
        9
    };

    render_svg(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, TITLE_PX))
            .margin(MARGIN)
            .x_label_area_size(label_area)
            .y_label_area_size(Y_LABEL_AREA)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(plot_err)?;
        let y_fmt = |v: &f64| tick_label(*v, y0, y1);
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_labels(if bounds.is_some() { 10 } else { 0 })
            .y_desc(y_label)
            .y_label_formatter(&y_fmt)
            .axis_desc_style(text_style(DESC_PX))
            .label_style(text_style(TICK_PX))
            .light_line_style(BLACK.mix(0.04))
            .bold_line_style(BLACK.mix(0.12))
            .draw()
            .map_err(plot_err)?;

        let bar_rects = bars
            .iter()
            .enumerate()
            .filter(|(_, (_, v))| v.is_finite())
            .map(|(i, (_, v))| {
                let left = i as f64 + 0.15;
                let right = i as f64 + 0.85;
                let top = v.clamp(y0, y1);
                Rectangle::new([(left, 0.0), (right, top)], colour(i).filled())
            });
        chart.draw_series(bar_rects).map_err(plot_err)?;
        if y0 < 0.0 {
            // A baseline at zero when bars go both ways.
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(x0, 0.0), (x1, 0.0)],
                    BLACK.mix(0.6),
                )))
                .map_err(plot_err)?;
        }

        for (i, (label, v)) in bars.iter().enumerate() {
            let centre = i as f64 + 0.5;
            // Value above a positive bar, below a negative one.
            let (anchor, dy) = if *v < 0.0 {
                (Pos::new(HPos::Center, VPos::Top), 4)
            } else {
                (Pos::new(HPos::Center, VPos::Bottom), -4)
            };
            let at = if v.is_finite() { v.clamp(y0, y1) } else { 0.0 };
            let (px, py) = chart.backend_coord(&(centre, at));
            root.draw(&Text::new(
                sig3(*v),
                (px, py + dy),
                text_style(value_px).pos(anchor),
            ))
            .map_err(plot_err)?;

            // The category label below the axis.
            let (lx, ly) = chart.backend_coord(&(centre, y0));
            let (text, pos, style) = match layout {
                Layout::Row => (
                    label.clone(),
                    (lx, ly + 8),
                    text_style(TICK_PX).pos(Pos::new(HPos::Center, VPos::Top)),
                ),
                Layout::Staggered => (
                    label.clone(),
                    (lx, ly + 8 + if i % 2 == 1 { 18 } else { 0 }),
                    text_style(TICK_PX).pos(Pos::new(HPos::Center, VPos::Top)),
                ),
                Layout::Rotated => (
                    truncate(label, MAX_ROTATED_CHARS),
                    (lx, ly + 8),
                    text_style(TICK_PX)
                        .transform(FontTransform::Rotate270)
                        .pos(Pos::new(HPos::Right, VPos::Center)),
                ),
            };
            root.draw(&Text::new(text, pos, style)).map_err(plot_err)?;
        }
        if n == 0 || bounds.is_none() {
            no_data(
                root,
                chart.backend_coord(&((x0 + x1) / 2.0, (y0 + y1) / 2.0)),
            )?;
        }
        Ok(())
    })
}

/// Line chart (with point markers) of several series against a shared x axis.
///
/// Points with a NaN or infinite coordinate are dropped; each series is drawn in x order.
/// Series without points are listed in the legend as "(no samples)".
pub fn lines_svg(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> anyhow::Result<()> {
    let clean: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .map(|s| {
            let mut pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            (s.name.as_str(), pts)
        })
        .collect();
    let xb = finite_bounds(clean.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)));
    let yb = finite_bounds(clean.iter().flat_map(|(_, p)| p.iter().map(|q| q.1)));
    let (x0, x1) = axis_range(xb, false);
    let (y0, y1) = axis_range(yb, false);
    // Only values beyond ±1e300 fall outside the axes; pin them to the edge.
    let clean: Vec<(&str, Vec<(f64, f64)>)> = clean
        .into_iter()
        .map(|(name, pts)| {
            let pts = pts
                .into_iter()
                .map(|(x, y)| (x.clamp(x0, x1), y.clamp(y0, y1)))
                .collect();
            (name, pts)
        })
        .collect();
    let corner = legend_corner(
        &clean.iter().map(|(_, p)| p.as_slice()).collect::<Vec<_>>(),
        clean.len(),
        (x0, x1),
        (y0, y1),
        [
            SeriesLabelPosition::UpperRight,
            SeriesLabelPosition::UpperLeft,
            SeriesLabelPosition::LowerRight,
            SeriesLabelPosition::LowerLeft,
        ],
    );

    render_svg(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, TITLE_PX))
            .margin(MARGIN)
            .x_label_area_size(X_LABEL_AREA)
            .y_label_area_size(Y_LABEL_AREA)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(plot_err)?;
        let x_fmt = |v: &f64| tick_label(*v, x0, x1);
        let y_fmt = |v: &f64| tick_label(*v, y0, y1);
        chart
            .configure_mesh()
            .x_labels(if xb.is_some() { 10 } else { 0 })
            .y_labels(if xb.is_some() { 10 } else { 0 })
            .x_desc(x_label)
            .y_desc(y_label)
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .axis_desc_style(text_style(DESC_PX))
            .label_style(text_style(TICK_PX))
            .light_line_style(BLACK.mix(0.04))
            .bold_line_style(BLACK.mix(0.12))
            .draw()
            .map_err(plot_err)?;

        for (i, (name, pts)) in clean.iter().enumerate() {
            let c = colour(i);
            if pts.is_empty() {
                chart
                    .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())
                    .map_err(plot_err)?
                    .label(format!("{name} (no samples)"))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
                continue;
            }
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
                .map_err(plot_err)?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            chart
                .draw_series(PointSeries::of_element(
                    pts.iter().copied(),
                    3,
                    c.filled(),
                    &|p, size, style| EmptyElement::at(p) + Circle::new((0, 0), size, style),
                ))
                .map_err(plot_err)?;
        }
        if !clean.is_empty() {
            legend(&mut chart, corner)?;
        }
        if xb.is_none() {
            no_data(
                root,
                chart.backend_coord(&((x0 + x1) / 2.0, (y0 + y1) / 2.0)),
            )?;
        }
        Ok(())
    })
}

/// The trimmed standard output of a command if it ran and succeeded.
fn command_output(cmd: &str, args: &[&str], dir: Option<&Path>) -> Option<String> {
    let mut c = std::process::Command::new(cmd);
    c.args(args);
    if let Some(dir) = dir {
        c.current_dir(dir);
    }
    let out = c.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A non-empty trimmed file content.
fn read_trimmed(path: &str) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian calendar).
fn utc_now() -> Option<String> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    let days = i64::try_from(secs / 86_400).ok()?;
    let rem = secs % 86_400;
    // Civil-from-days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

/// What a report records about where it ran: UTC date/time, hostname, kernel (uname -r), CPU model (first "model name" of /proc/cpuinfo), nproc, total memory (MemTotal), load average at the time, rustc version (rustc -V), git revision (git rev-parse HEAD, and whether the tree is dirty: git status --porcelain non-empty), and the command line (std::env::args). Missing pieces become null, never an error.
///
/// The keys are `date_utc` (`"2025-01-31T12:00:00Z"`), `hostname`, `kernel`, `cpu_model`,
/// `nproc` (number), `mem_total_bytes` (number), `loadavg` (array of the 1, 5 and 15 minute
/// averages), `rustc`, `git_rev`, `git_dirty` (bool) and `command_line` (array of strings).
/// Git is asked about the workspace this crate belongs to, whatever the current directory.
#[must_use]
pub fn environment() -> Value {
    let hostname = read_trimmed("/proc/sys/kernel/hostname")
        .or_else(|| command_output("hostname", &[], None).filter(|s| !s.is_empty()));
    let kernel = read_trimmed("/proc/sys/kernel/osrelease")
        .or_else(|| command_output("uname", &["-r"], None).filter(|s| !s.is_empty()));
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        })
    });
    let nproc = std::thread::available_parallelism().ok().map(|n| n.get());
    let mem_total_bytes = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines().find_map(|l| {
            let rest = l.strip_prefix("MemTotal:")?;
            let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            kib.checked_mul(1024)
        })
    });
    let loadavg = read_trimmed("/proc/loadavg").and_then(|s| {
        let v: Vec<f64> = s
            .split_whitespace()
            .take(3)
            .filter_map(|x| x.parse().ok())
            .collect();
        (v.len() == 3).then_some(v)
    });
    let rustc_bin = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let rustc = command_output(&rustc_bin, &["-V"], None).filter(|s| !s.is_empty());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let git_rev =
        command_output("git", &["rev-parse", "HEAD"], Some(&root)).filter(|s| !s.is_empty());
    let git_dirty = git_rev
        .as_ref()
        .and_then(|_| command_output("git", &["status", "--porcelain"], Some(&root)))
        .map(|s| !s.is_empty());
    let command_line: Vec<String> = std::env::args().collect();
    json!({
        "date_utc": utc_now(),
        "hostname": hostname,
        "kernel": kernel,
        "cpu_model": cpu_model,
        "nproc": nproc,
        "mem_total_bytes": mem_total_bytes,
        "loadavg": loadavg,
        "rustc": rustc,
        "git_rev": git_rev,
        "git_dirty": git_dirty,
        "command_line": command_line,
    })
}

/// Escapes a markdown table cell: `|` becomes `\|` and line breaks become spaces.
fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
        .replace("\r\n", " ")
        .replace(['\n', '\r'], " ")
}

/// A GitHub-flavoured markdown table: header row, separator, rows; cells with `|` escaped.
///
/// Line breaks inside cells become spaces; rows shorter than the header are padded with empty
/// cells. Every line ends with a newline.
#[must_use]
pub fn md_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
    let mut out = line(headers.iter().map(|h| md_cell(h)).collect());
    out.push_str(&line(headers.iter().map(|_| "---".to_string()).collect()));
    for row in rows {
        let mut cells: Vec<String> = row.iter().map(|c| md_cell(c)).collect();
        while cells.len() < headers.len() {
            cells.push(String::new());
        }
        out.push_str(&line(cells));
    }
    out
}

/// Percentile (nearest-rank, p in 0..=100) of unsorted samples; None if empty.
///
/// NaN and infinite samples are ignored (so only those gives `None`, as does a NaN `p`); `p`
/// outside 0..=100 is clamped. p0 is the minimum and p100 the maximum.
#[must_use]
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if p.is_nan() {
        return None;
    }
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let p = p.clamp(0.0, 100.0);
    // p * n / 100 is exact when the true rank is an integer, so no off-by-one from rounding.
    let rank = (p * n as f64 / 100.0).ceil() as usize;
    v.get(rank.clamp(1, n) - 1).copied()
}

/// Write `value` pretty-printed to `path` (creating parent directories).
pub fn write_json(path: &Path, value: &Value) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("serialising JSON")?;
    text.push('\n');
    write_file(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A unique temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "jumping-report-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A minimal XML well-formedness check: one root `<svg>` element, every tag closed in
    /// order, no stray `<` or `&` in text.
    fn assert_well_formed_svg(s: &str) {
        let start = s.find("<svg").expect("no <svg");
        let mut stack: Vec<String> = Vec::new();
        let mut rest = &s[start..];
        let mut roots = 0;
        while let Some(lt) = rest.find('<') {
            let text = &rest[..lt];
            assert!(!text.contains('>'), "stray '>' in text: {text:?}");
            for (i, _) in text.match_indices('&') {
                let ent = &text[i..];
                assert!(
                    ["&lt;", "&gt;", "&amp;", "&quot;", "&apos;"]
                        .iter()
                        .any(|e| ent.starts_with(e)),
                    "bad entity in {text:?}"
                );
            }
            let gt = rest[lt..].find('>').expect("unterminated tag") + lt;
            let tag = &rest[lt + 1..gt];
            if let Some(name) = tag.strip_prefix('/') {
                let open = stack.pop().expect("close without open");
                assert_eq!(open, name.trim(), "mismatched close tag");
            } else if !tag.starts_with('?') && !tag.starts_with('!') && !tag.ends_with('/') {
                let name = tag.split_whitespace().next().unwrap().to_string();
                if stack.is_empty() {
                    roots += 1;
                }
                stack.push(name);
            }
            rest = &rest[gt + 1..];
        }
        assert!(stack.is_empty(), "unclosed tags: {stack:?}");
        assert_eq!(roots, 1, "expected one root element");
        assert!(rest.trim().is_empty(), "trailing text after root");
    }

    fn read_svg(path: &Path) -> String {
        let s = std::fs::read_to_string(path).unwrap();
        assert!(s.contains("<svg"), "no <svg in {s}");
        assert!(s.contains("<text"), "no text elements");
        assert_well_formed_svg(&s);
        s
    }

    fn s(x: &str) -> String {
        x.to_string()
    }

    #[test]
    fn cdf_has_title_and_series_names() {
        let dir = TempDir::new();
        let path = dir.0.join("nested/dir/cdf.svg");
        let samples = vec![
            (s("jumping-af_xdp"), (1..=100).map(f64::from).collect()),
            (
                s("wireguard-go"),
                vec![5.0, f64::NAN, 3.0, f64::INFINITY, 4.0],
            ),
            (s("empty-set"), vec![]),
        ];
        cdf_svg(&path, "Latency CDF", "latency (µs)", &samples).unwrap();
        let svg = read_svg(&path);
        for needle in [
            "Latency CDF",
            "latency (µs)",
            "jumping-af_xdp",
            "wireguard-go (n=3)",
            "empty-set (no samples)",
            "<polyline",
        ] {
            assert!(svg.contains(needle), "missing {needle:?}");
        }
        assert!(!svg.contains("no data"));
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn cdf_edge_cases_do_not_panic() {
        let dir = TempDir::new();
        type Case = (&'static str, Vec<(String, Vec<f64>)>);
        let cases: Vec<Case> = vec![
            ("none", vec![]),
            (
                "all-empty",
                vec![(s("a"), vec![]), (s("b"), vec![f64::NAN])],
            ),
            ("one", vec![(s("a"), vec![42.0])]),
            ("equal", vec![(s("a"), vec![7.0; 10])]),
            ("zeros", vec![(s("a"), vec![0.0; 5])]),
            ("huge", vec![(s("a"), vec![f64::MAX, -f64::MAX, 1e300])]),
            ("tiny", vec![(s("a"), vec![1.0, 1.0 + 1e-15])]),
            (
                "big",
                vec![(s("a"), (0..100_000).map(|i| f64::from(i).sqrt()).collect())],
            ),
        ];
        for (title, samples) in cases {
            let path = dir.0.join(format!("{title}.svg"));
            cdf_svg(&path, title, "x", &samples).unwrap();
            let svg = read_svg(&path);
            assert!(svg.contains(title));
            let empty = samples
                .iter()
                .all(|(_, v)| v.iter().all(|x| !x.is_finite()));
            assert_eq!(svg.contains("no data"), empty, "{title}");
        }
        let all_empty = std::fs::read_to_string(dir.0.join("all-empty.svg")).unwrap();
        assert!(all_empty.contains("a (no samples)") && all_empty.contains("b (no samples)"));
    }

    #[test]
    fn ecdf_is_fraction_at_most_x() {
        let pts = ecdf_points(&[1.0, 2.0, 2.0, 4.0]);
        assert_eq!(pts.first(), Some(&(1.0, 0.0)));
        assert!(pts.contains(&(2.0, 0.75)));
        assert_eq!(pts.last(), Some(&(4.0, 1.0)));
        let big: Vec<f64> = (0..10_000).map(f64::from).collect();
        let pts = ecdf_points(&big);
        assert!(pts.len() <= CDF_MAX_STEPS + 2);
        assert_eq!(pts.last(), Some(&(9999.0, 1.0)));
    }

    #[test]
    fn bars_have_title_labels_and_values() {
        let dir = TempDir::new();
        let path = dir.0.join("bars.svg");
        let bars = vec![
            (s("jumping-af_xdp"), 9_412.7),
            (s("wireguard-go"), 2_345.0),
            (s("untunnelled"), 0.0),
            (s("a|b & <c>"), f64::NAN),
        ];
        bars_svg(&path, "Throughput", "Mbit/s", &bars).unwrap();
        let svg = read_svg(&path);
        for needle in [
            "Throughput",
            "Mbit/s",
            "jumping-af_xdp",
            "wireguard-go",
            "untunnelled",
            "a|b &amp; &lt;c&gt;",
            "9410",
            "2350",
            ">\n0\n<",
            "n/a",
            "<rect",
        ] {
            assert!(svg.contains(needle), "missing {needle:?}");
        }
    }

    #[test]
    fn bars_edge_cases_do_not_panic() {
        let dir = TempDir::new();
        let many: Vec<(String, f64)> = (0..40)
            .map(|i| {
                (
                    format!("a-rather-long-label-number-{i}"),
                    f64::from(i) * 1e7,
                )
            })
            .collect();
        let cases: Vec<(&str, Vec<(String, f64)>)> = vec![
            ("none", vec![]),
            ("one", vec![(s("only"), 3.0)]),
            ("equal", vec![(s("a"), 5.0), (s("b"), 5.0)]),
            ("zeros", vec![(s("a"), 0.0), (s("b"), 0.0)]),
            ("negative", vec![(s("a"), -2.0), (s("b"), 3.0)]),
            ("huge", vec![(s("a"), f64::MAX), (s("b"), 1e300)]),
            ("all-nan", vec![(s("a"), f64::NAN), (s("b"), f64::INFINITY)]),
            ("many", many),
        ];
        for (title, bars) in cases {
            let path = dir.0.join(format!("{title}.svg"));
            bars_svg(&path, title, "y", &bars).unwrap();
            let svg = read_svg(&path);
            assert!(svg.contains(title));
            let empty = bars.iter().all(|(_, v)| !v.is_finite());
            assert_eq!(svg.contains("no data"), empty, "{title}");
        }
    }

    #[test]
    fn lines_have_title_and_series_names() {
        let dir = TempDir::new();
        let path = dir.0.join("lines.svg");
        let series = vec![
            Series {
                name: s("jumping"),
                points: vec![(3.0, 30.0), (1.0, 10.0), (2.0, f64::NAN), (2.0, 20.0)],
            },
            Series {
                name: s("wireguard-go"),
                points: vec![(1.0, 5.0), (3.0, 6.0)],
            },
            Series {
                name: s("nothing"),
                points: vec![],
            },
        ];
        lines_svg(&path, "Throughput vs peers", "peers", "Mbit/s", &series).unwrap();
        let svg = read_svg(&path);
        for needle in [
            "Throughput vs peers",
            "peers",
            "Mbit/s",
            "jumping",
            "wireguard-go",
            "nothing (no samples)",
            "<circle",
            "<polyline",
        ] {
            assert!(svg.contains(needle), "missing {needle:?}");
        }
        assert!(!svg.contains("no data"));
    }

    #[test]
    fn lines_edge_cases_do_not_panic() {
        let dir = TempDir::new();
        let one = |name: &str, points: Vec<(f64, f64)>| {
            vec![Series {
                name: s(name),
                points,
            }]
        };
        let cases: Vec<(&str, Vec<Series>)> = vec![
            ("none", vec![]),
            ("empty", one("a", vec![])),
            ("nan", one("a", vec![(f64::NAN, 1.0), (1.0, f64::INFINITY)])),
            ("one", one("a", vec![(1.0, 2.0)])),
            ("equal", one("a", vec![(1.0, 2.0), (1.0, 2.0)])),
            ("zeros", one("a", vec![(0.0, 0.0), (0.0, 0.0)])),
            ("huge", one("a", vec![(0.0, f64::MAX), (1e300, -f64::MAX)])),
            ("small", one("a", vec![(1e-9, 1e-12), (2e-9, 3e-12)])),
        ];
        for (title, series) in cases {
            let path = dir.0.join(format!("{title}.svg"));
            lines_svg(&path, title, "x", "y", &series).unwrap();
            let svg = read_svg(&path);
            assert!(svg.contains(title));
            let empty = series.iter().all(|s| {
                s.points
                    .iter()
                    .all(|(x, y)| !x.is_finite() || !y.is_finite())
            });
            assert_eq!(svg.contains("no data"), empty, "{title}");
        }
    }

    #[test]
    fn axis_ranges_are_sane() {
        assert_eq!(axis_range(None, false), (0.0, 1.0));
        assert_eq!(axis_range(Some((0.0, 0.0)), false), (-1.0, 1.0));
        assert_eq!(axis_range(Some((0.0, 0.0)), true), (-1.0, 1.0));
        let (a, b) = axis_range(Some((5.0, 5.0)), false);
        assert!(a < 5.0 && b > 5.0);
        assert_eq!(axis_range(Some((5.0, 5.0)), true), (0.0, 5.25));
        assert_eq!(axis_range(Some((-5.0, -5.0)), true), (-5.25, 0.0));
        let (a, b) = axis_range(Some((0.0, 10.0)), false);
        assert_eq!(a, 0.0);
        assert!(b > 10.0);
        for (lo, hi) in [
            (-f64::MAX, f64::MAX),
            (f64::MAX, f64::MAX),
            (1.0, 1.0 + 1e-15),
        ] {
            let (a, b) = axis_range(Some((lo, hi)), false);
            assert!(a.is_finite() && b.is_finite() && b > a && (b - a).is_finite());
        }
    }

    #[test]
    fn number_formatting() {
        assert_eq!(sig3(0.0), "0");
        assert_eq!(sig3(1234.5), "1230");
        assert_eq!(sig3(999.6), "1000");
        assert_eq!(sig3(12.345), "12.3");
        assert_eq!(sig3(0.012345), "0.0123");
        assert_eq!(sig3(-2.5), "-2.5");
        assert_eq!(sig3(5.0), "5");
        assert_eq!(sig3(1.5e9), "1.5e9");
        assert_eq!(sig3(1e-7), "1e-7");
        assert_eq!(sig3(f64::NAN), "n/a");
        assert_eq!(tick_label(0.5, 0.0, 1.0), "0.5");
        assert_eq!(tick_label(200.0, 0.0, 1000.0), "200");
        assert_eq!(tick_label(1000.26, 1000.0, 1001.0), "1000.3");
        assert_eq!(tick_label(2e9, 0.0, 1e10), "2e9");
        assert_eq!(tick_label(1e-17, -1.0, 1.0), "0");
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(percentile(&v, 50.0), Some(2.0));
        assert_eq!(percentile(&v, 100.0), Some(4.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 25.0), Some(1.0));
        assert_eq!(percentile(&v, 26.0), Some(2.0));
        assert_eq!(percentile(&v, 75.0), Some(3.0));
        assert_eq!(percentile(&v, 99.0), Some(4.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[f64::NAN], 50.0), None);
        assert_eq!(
            percentile(&[f64::NAN, 7.0, f64::INFINITY], 100.0),
            Some(7.0)
        );
        assert_eq!(percentile(&v, f64::NAN), None);
        assert_eq!(percentile(&v, 150.0), Some(4.0));
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        for p in 1..=100 {
            assert_eq!(percentile(&hundred, f64::from(p)), Some(f64::from(p)));
        }
    }

    #[test]
    fn md_table_escapes_pipes() {
        let t = md_table(
            &["name", "a|b"],
            &[
                vec![s("x|y"), s("1")],
                vec![s("short")],
                vec![s("multi\nline"), s("2")],
            ],
        );
        assert_eq!(
            t,
            "| name | a\\|b |\n| --- | --- |\n| x\\|y | 1 |\n| short |  |\n| multi line | 2 |\n"
        );
    }

    #[test]
    fn environment_has_all_keys() {
        let env = environment();
        let obj = env.as_object().unwrap();
        for key in [
            "date_utc",
            "hostname",
            "kernel",
            "cpu_model",
            "nproc",
            "mem_total_bytes",
            "loadavg",
            "rustc",
            "git_rev",
            "git_dirty",
            "command_line",
        ] {
            assert!(obj.contains_key(key), "missing {key}");
        }
        assert!(env["command_line"].is_array());
        let date = env["date_utc"].as_str().unwrap();
        assert_eq!(date.len(), 20, "{date}");
        assert!(date.starts_with("20") && date.ends_with('Z'));
    }

    #[test]
    fn write_json_creates_parents() {
        let dir = TempDir::new();
        let path = dir.0.join("a/b/c.json");
        let v = json!({"x": 1, "env": environment()});
        write_json(&path, &v).unwrap();
        let back: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back, v);
    }
}
