//! Plots with plotters, as SVG and PNG (text drawn with the bundled DejaVu Sans, so PNGs look
//! the same on machines without fonts). Every file is written to a temporary name and renamed.

use crate::npy::temp_path;
use anyhow::{anyhow, Result};
use plotters::coord::combinators::WithKeyPoints;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

/// Line colors: the ten of matplotlib's tab10, then six darker ones, all readable on white
/// (plotters' Palette99 turns pale from its 15th color); after 16, the colors repeat on dashed
/// lines (`line_styles`).
const SERIES_COLORS: [(u8, u8, u8); 16] = [
    (0x1f, 0x77, 0xb4),
    (0xff, 0x7f, 0x0e),
    (0x2c, 0xa0, 0x2c),
    (0xd6, 0x27, 0x28),
    (0x94, 0x67, 0xbd),
    (0x8c, 0x56, 0x4b),
    (0xe3, 0x77, 0xc2),
    (0x7f, 0x7f, 0x7f),
    (0xbc, 0xbd, 0x22),
    (0x17, 0xbe, 0xcf),
    (0x00, 0x00, 0x80),
    (0x80, 0x80, 0x00),
    (0x00, 0x80, 0x80),
    (0x80, 0x00, 0x00),
    (0x00, 0x00, 0x00),
    (0xff, 0x14, 0x93),
];

/// The color of series `i`.
fn series_color(i: usize) -> RGBAColor {
    let (r, g, b) = SERIES_COLORS[i % SERIES_COLORS.len()];
    RGBColor(r, g, b).to_rgba()
}

/// Dash patterns `(dash, gap)` in pixels for the variants of one line (0: solid).
const DASHES: [(u32, u32); 4] = [(0, 0), (9, 5), (3, 4), (16, 5)];

/// A line's label cut into its sampler's name and its variant (`@ w=2`, `[folder]`; empty
/// where there is none).
fn name_and_variant(label: &str) -> (String, String) {
    let cut = [label.find(" @ "), label.find(" [")]
        .into_iter()
        .flatten()
        .min();
    match cut {
        Some(i) => (label[..i].to_string(), label[i..].trim().to_string()),
        None => (label.to_string(), String::new()),
    }
}

/// Each line's `(color, dash)`: lines labelled `name @ variant` or `name [variant]` (a sampler
/// on several grids, or in several merged experiments) take one color per name and one dash
/// pattern per variant, where there are several variants; otherwise one color per line, solid
/// up to the 16th and dashed after it.
pub fn line_styles(labels: &[&str]) -> Vec<(usize, usize)> {
    let parts: Vec<(String, String)> = labels.iter().map(|l| name_and_variant(l)).collect();
    let mut names: Vec<&String> = Vec::new();
    let mut variants: Vec<&String> = Vec::new();
    for (n, v) in &parts {
        if !names.contains(&n) {
            names.push(n);
        }
        if !variants.contains(&v) {
            variants.push(v);
        }
    }
    if variants.len() < 2 {
        // One color each; once the colors run out, the next lines are dashed.
        return (0..labels.len())
            .map(|i| (i, (i / SERIES_COLORS.len()) % DASHES.len()))
            .collect();
    }
    parts
        .iter()
        .map(|(n, v)| {
            (
                names.iter().position(|m| *m == n).unwrap_or(0),
                variants.iter().position(|w| *w == v).unwrap_or(0) % DASHES.len(),
            )
        })
        .collect()
}

static FONT: Once = Once::new();

/// Make the bundled font the "sans-serif" family (once).
pub fn register_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("assets/DejaVuSans.ttf");
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes);
    });
}

/// One line of a quality-vs-NFE plot: points `(nfe, mean, low, high)` (the band is the spread
/// over seeds).
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64, f64, f64)>,
}

/// A panel of quality against NFE: log-log, or with a linear value axis (from below the
/// lowest value to just above 1) for a fraction (`fraction`).
pub struct Panel {
    pub title: String,
    pub ylabel: String,
    pub series: Vec<Series>,
    /// A horizontal reference line (e.g. the distance between two fresh data sets).
    pub floor: Option<(String, f64)>,
    /// The values are fractions in [0, 1] (an accuracy): a linear value axis.
    pub fraction: bool,
}

/// A value a log axis can show (plotters' log scale loops on 0 and on the ends of the float range).
fn plottable(v: f64) -> bool {
    v > 1e-300 && v < 1e300
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    p: &Panel,
    look: &Looks,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    // What the value axis can show: positive values on a log axis, finite ones on a linear one.
    let showable = |v: f64| {
        if p.fraction {
            v.is_finite()
        } else {
            plottable(v)
        }
    };
    let vals: Vec<f64> = p
        .series
        .iter()
        .flat_map(|s| s.points.iter().flat_map(|q| [q.1, q.2, q.3]))
        .chain(p.floor.iter().map(|f| f.1))
        .filter(|v| showable(*v))
        .collect();
    let nfes: Vec<f64> = p
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|q| q.0))
        .filter(|v| plottable(*v))
        .collect();
    if vals.is_empty() || nfes.is_empty() {
        return Ok(());
    }
    let (x0, x1) = (
        nfes.iter().cloned().fold(f64::INFINITY, f64::min) / 1.3,
        nfes.iter().cloned().fold(0.0, f64::max) * 1.3,
    );
    let dims = area.dim_in_pixel();
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(&p.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70);
    if p.fraction {
        // From below the lowest value to just above 1, where a fraction ends.
        let min = vals.iter().cloned().fold(1.0, f64::min);
        let span = (1.0 - min).max(0.02);
        let (lo, hi) = ((min - 0.15 * span).max(min.min(0.0)), 1.0 + 0.05 * span);
        let chart = builder.build_cartesian_2d(log_axis(x0, x1), lo..hi)?;
        draw_lines(chart, p, look, dims, (x0, x1), &showable, &|y| {
            (y - lo) / (hi - lo)
        })
    } else {
        let (lo, hi) = value_range(&vals);
        let chart = builder.build_cartesian_2d(log_axis(x0, x1), log_axis(lo, hi))?;
        draw_lines(chart, p, look, dims, (x0, x1), &showable, &|y| {
            (y / lo).ln() / (hi / lo).ln()
        })
    }
}

/// The axes, lines, floor and legend of a panel on its chart; `unit_y` maps a value to its
/// height in the plotting area, 0 to 1 (for the legend's placement).
fn draw_lines<'a, DB, Y>(
    mut chart: ChartContext<'a, DB, Cartesian2d<LogAxis, Y>>,
    p: &Panel,
    look: &Looks,
    dims: (u32, u32),
    (x0, x1): (f64, f64),
    showable: &dyn Fn(f64) -> bool,
    unit_y: &dyn Fn(f64) -> f64,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    Y: Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc("NFE")
        .x_label_formatter(&|v| value_tick(*v))
        .y_label_formatter(&|v| value_tick(*v))
        .y_desc(p.ylabel.as_str())
        .label_style(("sans-serif", 13))
        .max_light_lines(2)
        .draw()?;
    // With the figure's legend beside the panels, a panel's own legend has only its floor line.
    let own = look.shared.is_none();
    for s in &p.series {
        let (c, dash) = look.style(&s.label);
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|q| plottable(q.0) && showable(q.1))
            .map(|q| (q.0, q.1))
            .collect();
        if pts.is_empty() {
            continue;
        }
        let color = series_color(c);
        let (on, off) = DASHES[dash];
        if on == 0 {
            let drawn = chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?;
            if own {
                drawn.label(s.label.as_str()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            }
        } else {
            let drawn = chart.draw_series(DashedLineSeries::new(
                pts.clone(),
                on,
                off,
                color.stroke_width(2),
            ))?;
            if own {
                drawn.label(s.label.as_str()).legend(move |(x, y)| {
                    plotters::element::DashedPathElement::new(
                        vec![(x, y), (x + 24, y)],
                        on.min(6),
                        off.min(4),
                        color.stroke_width(2),
                    )
                });
            }
        }
        chart.draw_series(pts.iter().map(|q| Circle::new(*q, 3, color.filled())))?;
        // The spread over seeds as vertical bars.
        chart.draw_series(
            s.points
                .iter()
                .filter(|q| plottable(q.0) && showable(q.2) && showable(q.3) && q.3 > q.2)
                .map(|q| PathElement::new(vec![(q.0, q.2), (q.0, q.3)], color.stroke_width(1))),
        )?;
    }
    if let Some((label, f)) = p.floor.as_ref().filter(|f| showable(f.1)) {
        chart
            .draw_series(LineSeries::new(
                vec![(x0, *f), (x1, *f)],
                BLACK.mix(0.5).stroke_width(1),
            ))?
            .label(label.as_str())
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.5)));
    }
    // The legend goes to the corner that hides the fewest points (its size estimated from the
    // labels: 12 px text, about 7 px per character, 18 px per row, in the plotting area).
    let (pw, ph) = dims;
    let (pw, ph) = ((pw as f64 - 100.0).max(1.0), (ph as f64 - 90.0).max(1.0));
    let floor_shown = p.floor.as_ref().is_some_and(|f| showable(f.1));
    let in_legend: Vec<&str> = p
        .series
        .iter()
        .filter(|_| own)
        .map(|s| s.label.as_str())
        .chain(p.floor.iter().filter(|_| floor_shown).map(|f| f.0.as_str()))
        .collect();
    if in_legend.is_empty() {
        return Ok(());
    }
    let rows = in_legend.len();
    let chars = in_legend
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0);
    let size = (
        ((chars as f64 * 7.0 + 50.0) / pw).min(1.0),
        ((rows as f64 * 18.0 + 16.0) / ph).min(1.0),
    );
    let lx = (x1 / x0).ln();
    let unit: Vec<(f64, f64)> = p
        .series
        .iter()
        .flat_map(|s| {
            s.points
                .iter()
                .flat_map(|q| [(q.0, q.1), (q.0, q.2), (q.0, q.3)])
        })
        .filter(|q| plottable(q.0) && showable(q.1))
        .map(|(x, y)| ((x / x0).ln() / lx, unit_y(y)))
        .collect();
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 12))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(legend_corner(&unit, size))
        .draw()?;
    Ok(())
}

/// A log axis whose ticks are [`log_ticks`] (plotters' own ticks on a log axis label only the
/// powers of ten and the multiples above the first one in range, and its minor lines run on
/// from each power of ten to the axis' end, a dense band near 100).
type LogAxis = WithKeyPoints<LogCoord<f64>>;

fn log_axis(lo: f64, hi: f64) -> LogAxis {
    let (bold, light) = log_ticks(lo, hi);
    (lo..hi)
        .log_scale()
        .with_key_points(bold)
        .with_light_points(light)
}

/// The ticks of a log axis from `lo` to `hi`: labelled, `m 10^k` for every m in 1..9 where the
/// axis spans up to about a decade, for m = 1, 2, 5 up to 2.5 decades, for m = 1 above (every
/// other power of ten beyond 8 decades); unlabelled minor lines at the other `m 10^k` (none
/// beyond 5 decades). Where fewer than two labels fall in range, the minor lines are labelled
/// too, and where none does, the axis' middle is.
fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
    if !(lo > 0.0 && hi > lo && hi.is_finite()) {
        return (Vec::new(), Vec::new());
    }
    let decades = (hi / lo).log10();
    let labelled: &[u32] = if decades <= 1.2 {
        &[1, 2, 3, 4, 5, 6, 7, 8, 9]
    } else if decades <= 2.5 {
        &[1, 2, 5]
    } else {
        &[1]
    };
    let every = if decades > 8.0 { 2 } else { 1 };
    let (mut bold, mut light) = (Vec::new(), Vec::new());
    for k in lo.log10().floor() as i32..=hi.log10().ceil() as i32 {
        let p = 10f64.powi(k);
        for m in 1..=9u32 {
            let v = m as f64 * p;
            if v < lo || v > hi {
                continue;
            }
            if labelled.contains(&m) && (m != 1 || k.rem_euclid(every) == 0) {
                bold.push(v);
            } else if decades <= 5.0 {
                light.push(v);
            }
        }
    }
    if bold.len() < 2 {
        bold.append(&mut light);
        bold.sort_by(f64::total_cmp);
    }
    if bold.is_empty() {
        bold.push((lo * hi).sqrt());
    }
    (bold, light)
}

/// The value axis' range: the values with a margin, reaching down to a power of ten where they
/// lie within one decade (so that every value axis shows a power of ten to read the others by).
fn value_range(vals: &[f64]) -> (f64, f64) {
    let lo = vals.iter().cloned().fold(f64::INFINITY, f64::min) / 1.5;
    let hi = vals.iter().cloned().fold(0.0, f64::max) * 1.5;
    let decade = 10f64.powf(hi.log10().floor());
    (
        if plottable(decade) {
            lo.min(decade)
        } else {
            lo
        },
        hi,
    )
}

/// A value tick's text, three significant digits without float noise (0.3, not
/// 0.30000000000000004): decimals from 1e-3 to 1e5, else scientific.
fn value_tick(v: f64) -> String {
    if !v.is_finite() {
        return String::new();
    }
    if v == 0.0 {
        return "0".into();
    }
    let trim = |t: String| {
        if t.contains('.') {
            t.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            t
        }
    };
    let e = v.abs().log10().floor();
    if (-3.0..5.0).contains(&e) {
        trim(format!("{:.*}", (2.0 - e).max(0.0) as usize, v))
    } else {
        let t = format!("{v:.2e}");
        let (m, x) = t.split_once('e').unwrap_or((&t, "0"));
        format!("{}e{x}", trim(m.to_string()))
    }
}

/// The corner of the unit square (x right, y up) whose `size` box holds the fewest of `points`,
/// lower left first among equals.
fn legend_corner(points: &[(f64, f64)], size: (f64, f64)) -> SeriesLabelPosition {
    let (w, h) = size;
    let corners = [
        (SeriesLabelPosition::LowerLeft, (0.0, w), (0.0, h)),
        (
            SeriesLabelPosition::UpperRight,
            (1.0 - w, 1.0),
            (1.0 - h, 1.0),
        ),
        (SeriesLabelPosition::LowerRight, (1.0 - w, 1.0), (0.0, h)),
        (SeriesLabelPosition::UpperLeft, (0.0, w), (1.0 - h, 1.0)),
    ];
    let hidden = |xr: (f64, f64), yr: (f64, f64)| {
        points
            .iter()
            .filter(|(x, y)| *x >= xr.0 && *x <= xr.1 && *y >= yr.0 && *y <= yr.1)
            .count()
    };
    let mut best = (usize::MAX, SeriesLabelPosition::LowerLeft);
    for (pos, xr, yr) in corners {
        let n = hidden(xr, yr);
        if n < best.0 {
            best = (n, pos);
        }
    }
    best.1
}

/// Scatter panels of 2-D samples: `(title, points)`, `cols` per row, shared limits.
pub struct Scatter {
    pub title: String,
    pub points: Vec<[f64; 2]>,
}

fn draw_scatter<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panels: &[Scatter],
    cols: usize,
    lim: f64,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let rows = panels.len().div_ceil(cols.max(1));
    let areas = area.split_evenly((rows.max(1), cols.max(1)));
    for (a, p) in areas.iter().zip(panels) {
        let mut chart = ChartBuilder::on(a)
            .caption(&p.title, ("sans-serif", 13))
            .margin(4)
            .build_cartesian_2d(-lim..lim, -lim..lim)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(0)
            .y_labels(0)
            .draw()?;
        let inside = p
            .points
            .iter()
            .filter(|q| q[0].abs() <= lim && q[1].abs() <= lim);
        chart.draw_series(inside.map(|q| Circle::new((q[0], q[1]), 1, BLUE.mix(0.4).filled())))?;
    }
    Ok(())
}

fn draw_paths<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panels: &[(String, Vec<Vec<[f64; 2]>>)],
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let cols = panels.len().clamp(1, 4);
    let rows = panels.len().div_ceil(cols).max(1);
    for (a, (title, lines)) in area.split_evenly((rows, cols)).iter().zip(panels) {
        // The last points (the samples) set the view; the start, at sigma_max, is far outside.
        let lim = lines
            .iter()
            .filter_map(|l| l.last())
            .map(|p| p[0].abs().max(p[1].abs()))
            .fold(1e-3f64, f64::max)
            * 1.6;
        let mut chart = ChartBuilder::on(a)
            .caption(title.as_str(), ("sans-serif", 13))
            .margin(6)
            .build_cartesian_2d(-lim..lim, -lim..lim)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(0)
            .y_labels(0)
            .draw()?;
        for (i, l) in lines.iter().enumerate() {
            let color = series_color(i);
            let pts: Vec<(f64, f64)> = l
                .iter()
                .map(|p| (p[0].clamp(-lim, lim), p[1].clamp(-lim, lim)))
                .collect();
            chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(1)))?;
            if let Some(p) = pts.last() {
                chart.draw_series(std::iter::once(Circle::new(*p, 3, color.filled())))?;
            }
        }
    }
    Ok(())
}

/// Sample paths from sigma_max to 0, one panel per sampler, as `stem.svg` and `stem.png`.
pub fn trajectories(stem: &Path, panels: &[(String, Vec<Vec<[f64; 2]>>)]) -> Result<()> {
    let cols = panels.len().clamp(1, 4) as u32;
    let rows = panels.len().div_ceil(cols as usize).max(1) as u32;
    render(stem, (300 * cols, 300 * rows), |svg, png| {
        if let Some(a) = svg {
            draw_paths(a, panels)?;
        }
        if let Some(a) = png {
            draw_paths(a, panels)?;
        }
        Ok(())
    })
}

/// Quality-vs-NFE panels, two per row, as `stem.svg` and `stem.png`.
pub fn quality_vs_nfe(stem: &Path, panels: &[Panel]) -> Result<()> {
    let cols = panels.len().clamp(1, 2);
    let rows = panels.len().div_ceil(cols).max(1);
    let look = Looks::of(panels);
    let (pw, ph) = (640 * cols as u32, 540 * rows as u32);
    let side = look.shared.as_ref().map_or(0, |e| legend_width(e, ph));
    render(stem, (pw + side, ph), |svg, png| {
        if let Some(a) = svg {
            let (left, right) = a.split_horizontally(pw);
            for (area, p) in left.split_evenly((rows, cols)).iter().zip(panels) {
                draw_panel(area, p, &look)?;
            }
            if let Some(e) = &look.shared {
                draw_legend(&right, e)?;
            }
        }
        if let Some(a) = png {
            let (left, right) = a.split_horizontally(pw);
            for (area, p) in left.split_evenly((rows, cols)).iter().zip(panels) {
                draw_panel(area, p, &look)?;
            }
            if let Some(e) = &look.shared {
                draw_legend(&right, e)?;
            }
        }
        Ok(())
    })
}

/// The most lines a panel's own legend lists; with more, the figure gets one legend beside its
/// panels.
const LEGEND_IN_PANEL: usize = 10;

/// One row of the figure's legend: a line sample (`color` None: black) and its text.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    text: String,
    color: Option<usize>,
    dash: usize,
}

/// The lines' styles across a figure, and its legend where it is drawn beside the panels.
struct Looks {
    styles: std::collections::HashMap<String, (usize, usize)>,
    shared: Option<Vec<Entry>>,
}

impl Looks {
    /// Every line's `(color, dash)` from the labels of all panels (a line keeps its style from
    /// panel to panel, even where a panel lacks another line); with more lines than
    /// [`LEGEND_IN_PANEL`], a legend beside the panels, factored where the lines are names times
    /// variants (`name @ variant`, `name [variant]`): one row per name in its color, one per
    /// variant in its dash pattern.
    fn of(panels: &[Panel]) -> Looks {
        let mut labels: Vec<&str> = Vec::new();
        for s in panels.iter().flat_map(|p| &p.series) {
            if !labels.contains(&s.label.as_str()) {
                labels.push(&s.label);
            }
        }
        let styles = line_styles(&labels);
        let shared = (labels.len() > LEGEND_IN_PANEL).then(|| legend_entries(&labels, &styles));
        Looks {
            styles: labels.iter().map(|l| l.to_string()).zip(styles).collect(),
            shared,
        }
    }

    fn style(&self, label: &str) -> (usize, usize) {
        self.styles.get(label).copied().unwrap_or((0, 0))
    }
}

/// The rows of a legend for `labels` styled `styles`: factored into names and variants where
/// every variant has its own dash pattern, else one row per line.
fn legend_entries(labels: &[&str], styles: &[(usize, usize)]) -> Vec<Entry> {
    let mut names: Vec<(String, usize)> = Vec::new();
    let mut variants: Vec<(String, usize)> = Vec::new();
    for (l, &(c, d)) in labels.iter().zip(styles) {
        let (n, v) = name_and_variant(l);
        if !names.iter().any(|(m, _)| *m == n) {
            names.push((n, c));
        }
        if !variants.iter().any(|(w, _)| *w == v) {
            variants.push((v, d));
        }
    }
    // Factored only where each variant has a dash pattern of its own (at most DASHES.len()).
    let dashes: std::collections::BTreeSet<usize> = variants.iter().map(|v| v.1).collect();
    if variants.len() >= 2
        && dashes.len() == variants.len()
        && names.len() + variants.len() < labels.len()
    {
        names
            .into_iter()
            .map(|(text, c)| Entry {
                text,
                color: Some(c),
                dash: 0,
            })
            .chain(variants.into_iter().map(|(text, d)| Entry {
                text,
                color: None,
                dash: d,
            }))
            .collect()
    } else {
        labels
            .iter()
            .zip(styles)
            .map(|(l, &(c, d))| Entry {
                text: l.to_string(),
                color: Some(c),
                dash: d,
            })
            .collect()
    }
}

/// Legend rows: 18 px apart, from 40 px down.
const LEGEND_ROW: u32 = 18;

/// The width of the legend beside panels `height` px high: columns of rows, 7 px per character
/// of the longest text and 66 px for the line sample and margins.
fn legend_width(entries: &[Entry], height: u32) -> u32 {
    let per_col = ((height.saturating_sub(50)) / LEGEND_ROW).max(1) as usize;
    let cols = entries.len().div_ceil(per_col).max(1) as u32;
    let chars = entries
        .iter()
        .map(|e| e.text.chars().count())
        .max()
        .unwrap_or(0) as u32;
    cols * (chars * 7 + 66) + 10
}

/// The legend beside the panels, in columns.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[Entry],
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let (_, h) = area.dim_in_pixel();
    let per_col = ((h.saturating_sub(50)) / LEGEND_ROW).max(1) as usize;
    let chars = entries
        .iter()
        .map(|e| e.text.chars().count())
        .max()
        .unwrap_or(0) as i32;
    let font = ("sans-serif", 12).into_font();
    for (i, e) in entries.iter().enumerate() {
        let x = 5 + (i / per_col) as i32 * (chars * 7 + 66);
        let y = 40 + (i % per_col) as i32 * LEGEND_ROW as i32;
        let color = e.color.map_or(BLACK.to_rgba(), series_color);
        let (on, off) = DASHES[e.dash];
        // A sample long enough to show the whole dash pattern.
        if on == 0 {
            area.draw(&PathElement::new(
                vec![(x, y), (x + 40, y)],
                color.stroke_width(2),
            ))?;
        } else {
            area.draw(&plotters::element::DashedPathElement::new(
                vec![(x, y), (x + 40, y)],
                on,
                off,
                color.stroke_width(2),
            ))?;
        }
        area.draw(&Text::new(e.text.clone(), (x + 48, y - 7), font.clone()))?;
    }
    Ok(())
}

/// A grid of 2-D scatter plots, as `stem.svg` and `stem.png`.
pub fn scatter_grid(stem: &Path, panels: &[Scatter], cols: usize, lim: f64) -> Result<()> {
    let rows = panels.len().div_ceil(cols.max(1)).max(1) as u32;
    render(stem, (220 * cols.max(1) as u32, 220 * rows), |svg, png| {
        if let Some(a) = svg {
            draw_scatter(a, panels, cols, lim)?;
        }
        if let Some(a) = png {
            draw_scatter(a, panels, cols, lim)?;
        }
        Ok(())
    })
}

type DrawFn<'a> = dyn Fn(
        Option<&DrawingArea<SVGBackend, Shift>>,
        Option<&DrawingArea<BitMapBackend, Shift>>,
    ) -> Result<(), Box<dyn std::error::Error>>
    + 'a;

fn render(
    stem: &Path,
    size: (u32, u32),
    f: impl Fn(
        Option<&DrawingArea<SVGBackend, Shift>>,
        Option<&DrawingArea<BitMapBackend, Shift>>,
    ) -> Result<(), Box<dyn std::error::Error>>,
) -> Result<()> {
    let f: &DrawFn = &f;
    register_font();
    let svg = stem.with_extension("svg");
    let png = stem.with_extension("png");
    let (tsvg, tpng) = (temp_path(&svg), temp_path(&png));
    let res = (|| -> Result<(), Box<dyn std::error::Error>> {
        {
            let root = SVGBackend::new(&tsvg, size).into_drawing_area();
            root.fill(&WHITE)?;
            f(Some(&root), None)?;
            root.present()?;
        }
        {
            let root = BitMapBackend::new(&tpng, size).into_drawing_area();
            root.fill(&WHITE)?;
            f(None, Some(&root))?;
            root.present()?;
        }
        crate::npy::commit(&tsvg, &svg)?;
        crate::npy::commit(&tpng, &png)?;
        Ok(())
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tsvg);
        let _ = std::fs::remove_file(&tpng);
        return Err(anyhow!("cannot draw {}: {e}", stem.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_axes_hold_a_power_of_ten() {
        // Mode weights between 0.029 and 0.0625: the axis reaches down to 0.01.
        assert_eq!(value_range(&[0.0293, 0.0625]).0, 0.01);
        // Values across decades keep their own margin.
        let (lo, hi) = value_range(&[0.002, 3.0]);
        assert!((lo - 0.002 / 1.5).abs() < 1e-15 && (hi - 4.5).abs() < 1e-12);
        // (0.2 to 0.9 with the margin reach above 1 and hold it already; 20 to 60 do not.)
        for (vals, want) in [
            ([0.2, 0.9], 0.2 / 1.5),
            ([3e-7, 8e-7], 3e-7 / 1.5),
            ([20.0, 60.0], 10.0),
        ] {
            let (lo, hi) = value_range(&vals);
            assert!((lo - want).abs() < 1e-12 * want, "{vals:?}: {lo}");
            assert!((hi - vals[1] * 1.5).abs() < 1e-12 * hi, "{vals:?}: {hi}");
        }
    }

    #[test]
    fn log_axes_label_what_their_span_has_room_for() {
        let close = |got: &[f64], want: &[f64]| {
            got.len() == want.len() && got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-9 * b)
        };
        // NFE 4 to 10 (a GITS grid axis): every integer labelled, none left as a minor line.
        let (bold, light) = log_ticks(3.08, 13.0);
        assert!(
            close(&bold, &[4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]),
            "{bold:?}"
        );
        assert!(light.is_empty(), "{light:?}");
        // NFE 3.8 to 250: 10, 20, 50, 100, 200 labelled, the other m 10^k minor lines, and
        // none beyond the axis (plotters' own ran on from 10 to the end: 11, 12, ..., 250).
        let (bold, light) = log_ticks(3.8, 250.0);
        assert!(
            close(&bold, &[5.0, 10.0, 20.0, 50.0, 100.0, 200.0]),
            "{bold:?}"
        );
        let want: Vec<f64> = [4.0, 6.0, 7.0, 8.0, 9.0]
            .into_iter()
            .chain([3.0, 4.0, 6.0, 7.0, 8.0, 9.0].map(|m| m * 10.0))
            .chain([3.0, 4.0, 6.0, 7.0, 8.0, 9.0].map(|m| m * 100.0))
            .filter(|v| *v <= 250.0)
            .collect();
        assert!(close(&light, &want), "{light:?}");
        // Seven decades: powers of ten only, no minor lines; twelve: every other power.
        let (bold, light) = log_ticks(2e-7, 3.0);
        assert_eq!(bold.len(), 7, "{bold:?}");
        assert!(light.is_empty());
        let (bold, _) = log_ticks(1e-9, 5e2);
        assert!(
            close(&bold, &[1e-8, 1e-6, 1e-4, 1e-2, 1.0, 100.0]),
            "{bold:?}"
        );
        // A span with no m 10^k inside gets its middle labelled; a bad range gets nothing.
        let (bold, _) = log_ticks(1.1, 1.8);
        assert!(close(&bold, &[(1.1f64 * 1.8).sqrt()]), "{bold:?}");
        assert!(log_ticks(0.0, 1.0).0.is_empty() && log_ticks(5.0, 5.0).0.is_empty());
    }

    #[test]
    fn value_ticks_have_no_float_noise() {
        for (v, want) in [
            (0.30000000000000004, "0.3"),
            (0.6000000000000001, "0.6"),
            (0.02, "0.02"),
            (1.0, "1"),
            (200.0, "200"),
            (0.001, "0.001"),
            (0.0005, "5e-4"),
            (1e-7, "1e-7"),
            (2.5e6, "2.5e6"),
            (0.0123456, "0.0123"),
            (0.0, "0"),
        ] {
            assert_eq!(value_tick(v), want, "{v}");
        }
    }

    #[test]
    fn one_sampler_keeps_its_color_across_grids_and_folders() {
        // Plain labels (a restart's segments included): one color each, solid.
        assert_eq!(
            line_styles(&["euler", "heun", "restart(segments=[[3,2,0.06,0.3]])"]),
            [(0, 0), (1, 0), (2, 0)]
        );
        // A grid axis: color by sampler, dash by grid.
        assert_eq!(
            line_styles(&[
                "euler @ karras",
                "euler @ gits",
                "ipndm @ karras",
                "ipndm @ gits"
            ]),
            [(0, 0), (0, 1), (1, 0), (1, 1)]
        );
        // Merged folders, and both tags: the variant is everything after the name.
        assert_eq!(
            line_styles(&["euler [a]", "heun [a]", "euler [b]", "euler @ karras [b]"]),
            [(0, 0), (1, 0), (0, 1), (0, 2)]
        );
        // One variant only: no dashes.
        assert_eq!(line_styles(&["euler [a]", "heun [a]"]), [(0, 0), (1, 0)]);
        // More plain lines than colors: the 17th on is dashed, so no two lines look alike.
        let many: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
        let styles = line_styles(&many.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        assert_eq!(styles[15], (15, 0));
        assert_eq!(styles[16], (16, 1));
        let looks: std::collections::BTreeSet<(usize, usize)> = styles
            .iter()
            .map(|&(c, d)| (c % SERIES_COLORS.len(), d))
            .collect();
        assert_eq!(looks.len(), 20);
    }

    #[test]
    fn a_fraction_panel_has_a_linear_axis_that_shows_zero() {
        // Accuracies 0 to 1: a linear axis from 0 (a log axis cannot show 0) to just above 1,
        // ticked in tenths; beside it a log panel.
        let dir = tempfile::tempdir().unwrap();
        let series = |v: [f64; 3]| Series {
            label: "heun".into(),
            points: vec![
                (8.0, v[0], v[0], v[0]),
                (16.0, v[1], v[1], v[1]),
                (32.0, v[2], v[2], v[2]),
            ],
        };
        let panels = [
            Panel {
                title: "accuracy".into(),
                ylabel: "class accuracy".into(),
                series: vec![series([0.0, 0.5, 1.0])],
                floor: Some(("the classifier on fresh data".into(), 1.0)),
                fraction: true,
            },
            Panel {
                title: "error".into(),
                ylabel: "FD".into(),
                series: vec![series([30.0, 10.0, 3.0])],
                floor: None,
                fraction: false,
            },
        ];
        let stem = dir.path().join("q");
        quality_vs_nfe(&stem, &panels).unwrap();
        let svg = std::fs::read_to_string(stem.with_extension("svg")).unwrap();
        let texts = svg_texts(&svg);
        for tick in ["0", "0.5", "1", "10"] {
            assert!(texts.contains(&tick), "no tick {tick}: {texts:?}");
        }
        assert!(stem.with_extension("png").exists());
    }

    /// The texts of an SVG's `<text>` elements.
    fn svg_texts(svg: &str) -> Vec<&str> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                t.split_once('>')
                    .map(|(_, r)| r.split('<').next().unwrap().trim())
            })
            .collect()
    }

    /// A panel with one point per label.
    fn lines(labels: &[String]) -> Panel {
        Panel {
            title: "t".into(),
            ylabel: "y".into(),
            series: labels
                .iter()
                .enumerate()
                .map(|(i, l)| Series {
                    label: l.clone(),
                    points: vec![(8.0, 1.0 + i as f64, 1.0 + i as f64, 1.0 + i as f64)],
                })
                .collect(),
            floor: None,
            fraction: false,
        }
    }

    #[test]
    fn many_lines_get_one_legend_beside_the_panels_factored_into_names_and_variants() {
        let names = ["euler", "heun", "dpmpp-2m", "euler-cfgpp"];
        let grid = |variants: &[&str]| -> Vec<String> {
            names
                .iter()
                .flat_map(|n| variants.iter().map(move |v| format!("{n} @ {v}")))
                .collect()
        };
        // Four names times three weights: 12 lines, a legend of 4 + 3 rows beside the panels.
        let labels = grid(&["w=0.5", "w=1", "w=2"]);
        let look = Looks::of(&[lines(&labels)]);
        let rows = look.shared.as_ref().unwrap();
        let texts: Vec<&str> = rows.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "euler",
                "heun",
                "dpmpp-2m",
                "euler-cfgpp",
                "@ w=0.5",
                "@ w=1",
                "@ w=2"
            ]
        );
        assert!(rows[..4].iter().all(|e| e.color.is_some() && e.dash == 0));
        let dashes: Vec<usize> = rows[4..].iter().map(|e| e.dash).collect();
        assert_eq!(dashes, [0, 1, 2]);
        assert!(rows[4..].iter().all(|e| e.color.is_none()));
        // Each line's style is its name's color and its variant's dash.
        for (i, l) in labels.iter().enumerate() {
            assert_eq!(look.style(l), (i / 3, i % 3));
        }
        // Styles belong to the figure: where the first panel lacks euler's lines, heun still has
        // one color for its three lines and euler another (per panel, heun took euler's color in
        // the first panel and its own in the second).
        let other = Looks::of(&[lines(&labels[3..]), lines(&labels)]);
        let colors: std::collections::BTreeSet<usize> =
            labels.iter().map(|l| other.style(l).0).collect();
        assert_eq!(colors.len(), 4);
        for n in 0..4 {
            let c: std::collections::BTreeSet<usize> = labels[3 * n..3 * n + 3]
                .iter()
                .map(|l| other.style(l).0)
                .collect();
            assert_eq!(c.len(), 1);
        }
        // More variants than dash patterns: one row per line.
        let five = grid(&["a", "b", "c", "d", "e"]);
        assert_eq!(Looks::of(&[lines(&five)]).shared.unwrap().len(), 20);
        // Few lines: the panels' own legends, as before.
        assert!(Looks::of(&[lines(&grid(&["w=1", "w=2"])[..6])])
            .shared
            .is_none());
        // Drawn: the figure is wider than its two panels, and the legend names each name and
        // each variant once, no line's whole label.
        let dir = tempfile::tempdir().unwrap();
        let stem = dir.path().join("q");
        quality_vs_nfe(&stem, &[lines(&labels), lines(&labels)]).unwrap();
        let svg = std::fs::read_to_string(stem.with_extension("svg")).unwrap();
        let width: u32 = svg
            .split("width=\"")
            .nth(1)
            .and_then(|w| w.split('"').next())
            .unwrap()
            .parse()
            .unwrap();
        assert!(width > 1280, "{width}");
        let texts = svg_texts(&svg);
        for t in ["euler", "heun", "@ w=0.5", "@ w=2"] {
            assert_eq!(
                texts.iter().filter(|x| **x == t).count(),
                1,
                "{t}: {texts:?}"
            );
        }
        assert!(!texts.contains(&"euler @ w=1"), "{texts:?}");
    }

    #[test]
    fn the_legend_goes_where_it_hides_the_fewest_points() {
        let is = |p: SeriesLabelPosition, want: SeriesLabelPosition| {
            std::mem::discriminant(&p) == std::mem::discriminant(&want)
        };
        // Falling curves that flatten at the bottom: the upper right is empty.
        let falling: Vec<(f64, f64)> = (0..20)
            .map(|i| {
                let x = i as f64 / 19.0;
                (x, (1.0 - 3.0 * x).max(0.05))
            })
            .collect();
        assert!(is(
            legend_corner(&falling, (0.4, 0.3)),
            SeriesLabelPosition::UpperRight
        ));
        // Nothing in the lower left: it stays there.
        let high: Vec<(f64, f64)> = (0..20).map(|i| (i as f64 / 19.0, 0.9)).collect();
        assert!(is(
            legend_corner(&high, (0.4, 0.3)),
            SeriesLabelPosition::LowerLeft
        ));
    }
}
