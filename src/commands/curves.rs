//! Training curves as a PNG (plotters' bitmap backend, text in the model crate's embedded font):
//! the losses in one panel, the loss weights λg/λp and the mean grounding gate in another, each
//! against the training step.

use std::error::Error;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::anyhow;
use plotters::prelude::*;
use plotters::style::FontStyle;
use spatiallock_model::image_io::{font_bytes, write_png, RgbImage};
use spatiallock_protocol::api::MetricPoint;

/// Width of a curves picture, pixels.
pub const WIDTH: u32 = 1000;
/// Height of a panel, pixels (a picture has one or two, under a title).
pub const PANEL_HEIGHT: u32 = 340;
const TITLE_HEIGHT: u32 = 40;

/// The metrics drawn, by panel: (reported name, legend).
pub const PANELS: [(&str, &[(&str, &str)]); 2] = [
    (
        "losses",
        &[
            ("loss", "total loss"),
            ("loss_diffusion", "diffusion loss"),
            ("loss_perception", "perception loss"),
        ],
    ),
    (
        "weights and gates",
        &[
            ("lambda_g", "λg"),
            ("lambda_p", "λp"),
            ("gate_mean", "mean gate tanh(α)"),
        ],
    ),
];

/// The metric names [`PANELS`] draws, comma-separated (a metrics query).
pub fn metric_names() -> String {
    PANELS
        .iter()
        .flat_map(|(_, series)| series.iter().map(|(name, _)| *name))
        .collect::<Vec<_>>()
        .join(",")
}

/// Registers the embedded font as plotters' `sans-serif` (once per process).
///
/// Errors: the font bytes do not parse.
fn register_font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font("sans-serif", FontStyle::Normal, font_bytes()).is_ok());
    if ok {
        Ok(())
    } else {
        Err(anyhow!(
            "the embedded font (DejaVu Sans) could not be registered for plotting"
        ))
    }
}

/// A series to draw: legend, points, colour (the metric's own, the same in every picture).
type Series<'a> = (&'a str, &'a [MetricPoint], RGBColor);

/// Draws the series `metrics` holds (name → points) among [`PANELS`] under `title` into a
/// PNG at `path`; panels without any series are left out.
///
/// Errors: none of the metrics has points; the font; drawing; writing the file.
pub fn write_curves(
    path: &Path,
    title: &str,
    metrics: &std::collections::BTreeMap<String, Vec<MetricPoint>>,
) -> anyhow::Result<()> {
    let panels: Vec<(&str, Vec<Series>)> = PANELS
        .iter()
        .map(|(name, wanted)| {
            let series = wanted
                .iter()
                .enumerate()
                .filter_map(|(i, (metric, legend))| {
                    let points = metrics.get(*metric).filter(|p| !p.is_empty())?;
                    Some((*legend, points.as_slice(), COLOURS[i % COLOURS.len()]))
                })
                .collect::<Vec<_>>();
            (*name, series)
        })
        .filter(|(_, series)| !series.is_empty())
        .collect();
    if panels.is_empty() {
        return Err(anyhow!("no training metrics to draw ({})", metric_names()));
    }
    register_font()?;
    let height = TITLE_HEIGHT + PANEL_HEIGHT * panels.len() as u32;
    let mut buffer = vec![0u8; (WIDTH * height * 3) as usize];
    draw(&mut buffer, (WIDTH, height), title, &panels).map_err(|e| anyhow!("drawing {}: {e}", path.display()))?;
    let picture = RgbImage::from_raw(WIDTH, height, buffer)
        .ok_or_else(|| anyhow!("drawing {}: the picture does not fill its buffer", path.display()))?;
    write_png(path, &picture)?;
    Ok(())
}

/// `(low, high)` around `values`, 5% of their range wider below and `top` of it above (room for
/// the legend), never empty.
fn span(values: impl Iterator<Item = f64>, top: f64) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let range = if hi > lo { hi - lo } else { lo.abs().max(1e-3) };
    (lo - range * 0.05, hi + range * top)
}

const COLOURS: [RGBColor; 3] = [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44)];

fn draw(
    buffer: &mut [u8],
    size: (u32, u32),
    title: &str,
    panels: &[(&str, Vec<Series>)],
) -> Result<(), Box<dyn Error>> {
    let root = BitMapBackend::with_buffer(buffer, size).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 24))?;
    let areas = root.split_evenly((panels.len(), 1));
    for (area, (name, series)) in areas.iter().zip(panels) {
        let points = || series.iter().flat_map(|(_, p, _)| p.iter());
        let (x0, x1) = span(points().map(|p| p.step as f64), 0.05);
        let (y0, y1) = span(points().map(|p| p.value), 0.35);
        let mut chart = ChartBuilder::on(area)
            .caption(*name, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(x0.max(0.0)..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .label_style(("sans-serif", 14))
            .draw()?;
        for &(legend, points, colour) in series {
            let line = points
                .iter()
                .filter(|p| p.value.is_finite())
                .map(|p| (p.step as f64, p.value));
            chart
                .draw_series(LineSeries::new(line, colour.stroke_width(2)).point_size(2))?
                .label(legend)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_padded_and_never_empty() {
        let close = |(a, b): (f64, f64), (c, d): (f64, f64)| (a - c).abs() < 1e-12 && (b - d).abs() < 1e-12;
        assert!(close(span([1.0, 3.0].into_iter(), 0.05), (0.9, 3.1)));
        assert!(close(span([1.0, 3.0].into_iter(), 0.5), (0.9, 4.0)));
        let (lo, hi) = span([2.0].into_iter(), 0.05);
        assert!(lo < 2.0 && hi > 2.0);
        assert_eq!(span(std::iter::empty(), 0.05), (0.0, 1.0));
        assert_eq!(span([f64::NAN].into_iter(), 0.05), (0.0, 1.0));
    }

    #[test]
    fn curves_are_drawn_for_the_metrics_there_are() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("curves.png");
        let series = |v: f64| {
            (1..=10)
                .map(|s| MetricPoint {
                    step: s,
                    value: v / s as f64,
                })
                .collect::<Vec<_>>()
        };
        let mut metrics = std::collections::BTreeMap::new();
        metrics.insert("loss".to_string(), series(1.0));
        metrics.insert("loss_diffusion".to_string(), series(0.5));
        write_curves(&path, "trial 0 (components=PoI)", &metrics).unwrap();
        let picture = spatiallock_model::image_io::read_rgb(&path).unwrap();
        assert_eq!(
            (picture.width(), picture.height()),
            (WIDTH, TITLE_HEIGHT + PANEL_HEIGHT)
        );
        metrics.insert("gate_mean".to_string(), series(0.01));
        write_curves(&path, "two panels", &metrics).unwrap();
        let picture = spatiallock_model::image_io::read_rgb(&path).unwrap();
        assert_eq!(picture.height(), TITLE_HEIGHT + 2 * PANEL_HEIGHT);
        assert!(write_curves(&path, "none", &Default::default()).is_err());
    }
}
