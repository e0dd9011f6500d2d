//! The SVG plots (drawn with plotters): commits/s against committers, and latency
//! percentiles against committers, one of each per record size.

use std::path::Path;

use crate::args::Args;
use crate::harness::Row;

pub fn plot_rates(
    rows: &[Row],
    args: &Args,
    size: usize,
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let here: Vec<&Row> = rows.iter().filter(|r| r.size == size).collect();
    let top = here.iter().map(|r| r.rate()).fold(1.0, f64::max) * 1.1;
    let most = args.committers.iter().copied().max().unwrap_or(1).max(2);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Durable commits/s, {size}-byte records"),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d((1u32..u32::try_from(most)?).log_scale(), 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("concurrent committers")
        .y_desc("commits/s")
        .draw()?;
    for (i, system) in args.systems.iter().enumerate() {
        let points: Vec<(u32, f64)> = here
            .iter()
            .filter(|r| &r.system == system)
            .map(|r| (u32::try_from(r.committers).unwrap_or(u32::MAX), r.rate()))
            .collect();
        if points.is_empty() {
            continue;
        }
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(system.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

pub fn plot_latency(
    rows: &[Row],
    args: &Args,
    size: usize,
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let here: Vec<&Row> = rows.iter().filter(|r| r.size == size).collect();
    let top = here.iter().map(|r| r.p999_us).fold(10.0, f64::max) * 1.5;
    let most = args.committers.iter().copied().max().unwrap_or(1).max(2);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Commit latency, {size}-byte records (solid p50, dashed p99, dotted p999)"),
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (1u32..u32::try_from(most)?).log_scale(),
            (5f64..top).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("concurrent committers")
        .y_desc("latency (µs)")
        .draw()?;
    for (i, system) in args.systems.iter().enumerate() {
        let mine: Vec<&&Row> = here.iter().filter(|r| &r.system == system).collect();
        if mine.is_empty() {
            continue;
        }
        let color = Palette99::pick(i).to_rgba();
        let at = |r: &&&Row, v: f64| (u32::try_from(r.committers).unwrap_or(u32::MAX), v.max(5.0));
        let p50: Vec<_> = mine.iter().map(|r| at(r, r.p50_us)).collect();
        let p99: Vec<_> = mine.iter().map(|r| at(r, r.p99_us)).collect();
        let p999: Vec<_> = mine.iter().map(|r| at(r, r.p999_us)).collect();
        chart
            .draw_series(LineSeries::new(p50, color.stroke_width(2)))?
            .label(system.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(DashedLineSeries::new(p99, 6, 4, color.stroke_width(1)))?;
        chart.draw_series(DashedLineSeries::new(p999, 2, 4, color.stroke_width(1)))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
