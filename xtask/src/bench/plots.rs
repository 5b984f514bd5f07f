//! The SVG plots in docs/bench/: ratios, the fill curve, program costs.
use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use super::model::{BENCH_POOL, Ratio, Results};

const W: u32 = 900;

fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e}")
}

pub fn write_all(results: &Results, dir: &Path) -> Result<()> {
    ratios(results, &dir.join("ratios.svg"))?;
    fill(results, &dir.join("fill-curve.svg"))?;
    programs(results, &dir.join("program-cost.svg"))
}

/// E/K and E/R median ratios per metric, turned so that right of 1 is
/// better for E whatever the metric's direction.
fn ratios(results: &Results, path: &Path) -> Result<()> {
    let orange = RGBColor(230, 140, 30);
    let rows: Vec<(String, Vec<(f64, RGBColor)>)> = results
        .metrics
        .iter()
        .filter(|m| !m.name.ends_with("failures"))
        .map(|m| {
            let better = |r: Ratio| {
                m.ratio(r)
                    .map(|s| s.median)
                    .filter(|x| *x > 0.0)
                    .map(|x| if m.higher_is_better { x } else { 1.0 / x })
            };
            let bars = [(better(Ratio::EK), BLUE), (better(Ratio::ER), orange)]
                .into_iter()
                .map(|(v, c)| (v.unwrap_or(0.0), c))
                .collect();
            (m.name.clone(), bars)
        })
        .collect();
    hbars(
        path,
        "E's advantage, median ratio turned so that > 1 is E better: E/K blue, E/R orange",
        &rows,
        Some(1.0),
    )
}

/// Horizontal bars, one group per row, names on the left; an optional
/// reference line.
fn hbars(
    path: &Path,
    caption: &str,
    rows: &[(String, Vec<(f64, RGBColor)>)],
    reference: Option<f64>,
) -> Result<()> {
    let n = rows.len().max(1);
    let root = SVGBackend::new(path, (W, 70 + 30 * n as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let max = rows
        .iter()
        .flat_map(|r| r.1.iter().map(|b| b.0))
        .chain(reference)
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(260)
        .build_cartesian_2d(0.0..max * 1.08, 0.0..n as f64)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .y_labels(0)
        .disable_y_mesh()
        .draw()
        .map_err(plot_err)?;
    for (i, (name, bars)) in rows.iter().enumerate() {
        let top = (n - i) as f64;
        let h = 0.8 / bars.len().max(1) as f64;
        for (j, (v, color)) in bars.iter().enumerate() {
            let y0 = top - 0.1 - h * (j + 1) as f64;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(0.0, y0), (*v, y0 + h)],
                    color.filled(),
                )))
                .map_err(plot_err)?;
        }
        let (_, py) = chart.backend_coord(&(0.0, top - 0.5));
        root.draw(&Text::new(
            name.clone(),
            (10, py - 6),
            ("sans-serif", 13).into_font(),
        ))
        .map_err(plot_err)?;
    }
    if let Some(x) = reference {
        chart
            .draw_series(LineSeries::new(
                [(x, 0.0), (x, n as f64)],
                BLACK.stroke_width(2),
            ))
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

/// Failures against fill %, E and K.
fn fill(results: &Results, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (W, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let curves: Vec<(String, Vec<(f64, f64)>)> = results
        .fill_curve
        .iter()
        .map(|c| {
            let pts = c
                .points
                .iter()
                .filter_map(|p| Some((p.fill_pct, p.failures?.median)))
                .collect();
            (c.datapath.clone(), pts)
        })
        .collect();
    let ymax = curves
        .iter()
        .flat_map(|c| c.1.iter().map(|p| p.1))
        .fold(10.0f64, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("SNAT fill toward one destination ({BENCH_POOL}-port block): failed new flows"),
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..103.0, 0.0..ymax * 1.05)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("pool fill, % (flows sent / ports)")
        .y_desc("failed flows (cumulative)")
        .draw()
        .map_err(plot_err)?;
    for (dp, pts) in curves {
        let color = if dp == "E" { BLUE } else { RED };
        let label = if dp == "E" {
            "E: netplane"
        } else {
            "K: nf_nat MASQUERADE/SNAT"
        };
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(plot_err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// ns per run of each path against the floor (grey).
fn programs(results: &Results, path: &Path) -> Result<()> {
    let rows: Vec<(String, Vec<(f64, RGBColor)>)> = results
        .test_run_ns
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let color = if i == 0 {
                RGBColor(128, 128, 128)
            } else {
                BLUE
            };
            Some((p.path.clone(), vec![(p.ns?.median, color)]))
        })
        .collect();
    hbars(
        path,
        "ns per program run (BPF_PROG_TEST_RUN, median); the floor in grey",
        &rows,
        None,
    )
}
