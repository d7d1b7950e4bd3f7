//! SVG charts beside the report: TTFT CDF per router and KV use per pod over time.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use super::{RouterKind, RunResult};

/// SVG charts beside the report: TTFT CDF per router, and KV use per pod over time for each router.
pub(super) fn write_charts(
    out: &Path,
    blocks: u32,
    results: &BTreeMap<(u32, RouterKind), Vec<RunResult>>,
) -> anyhow::Result<()> {
    let colors = ["#d62728", "#ff7f0e", "#2ca02c", "#1f77b4", "#9467bd"];
    let mut cdf = Vec::new();
    for ((b, router), runs) in results {
        if *b == blocks
            && let Some(first) = runs.first()
        {
            let n = first.ttfts_ms.len().max(1) as f64;
            let points = first
                .ttfts_ms
                .iter()
                .enumerate()
                .map(|(i, &t)| (t / 1e3, (i + 1) as f64 / n))
                .collect();
            cdf.push((router.name().to_owned(), points));
        }
    }
    std::fs::write(
        out.join("ttft_cdf.svg"),
        svg_lines("TTFT CDF (first seed)", "TTFT s", "fraction", &cdf, &colors, true),
    )?;
    for ((b, router), runs) in results {
        if *b == blocks
            && let Some(first) = runs.first()
        {
            let series: Vec<(String, Vec<(f64, f64)>)> = first
                .kv_series
                .iter()
                .map(|(pod, s)| (pod.clone(), s.clone()))
                .collect();
            let title = format!("KV-cache use per pod, {} (first seed)", router.name());
            let path: PathBuf = out.join(format!("kv_{}.svg", router.name()));
            std::fs::write(path, svg_lines(&title, "wall s", "KV use", &series, &colors, false))?;
        }
    }
    Ok(())
}

fn svg_lines(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    colors: &[&str],
    log_x: bool,
) -> String {
    let (w, h, pad) = (720.0, 420.0, 50.0);
    let fx = |x: f64| if log_x { x.max(1e-3).log10() } else { x };
    let xs = series.iter().flat_map(|(_, p)| p.iter().map(|&(x, _)| fx(x)));
    let (x_min, x_max) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let y_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let span = (x_max - x_min).max(1e-9);
    let px = |x: f64| pad + (fx(x) - x_min) / span * (w - 2.0 * pad);
    let py = |y: f64| h - pad - y / y_max * (h - 2.0 * pad);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/><text x=\"{pad}\" y=\"20\" font-size=\"14\">{title}</text>\
         <line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{}\" stroke=\"black\"/>\
         <text x=\"{}\" y=\"{}\">{x_label}{}</text><text x=\"5\" y=\"{}\">{y_label}</text>",
        h - pad,
        w - pad,
        h - pad,
        h - pad,
        w / 2.0,
        h - 15.0,
        if log_x { " (log)" } else { "" },
        pad - 14.0
    );
    let _ = write!(
        svg,
        "<text x=\"{}\" y=\"{}\">{:.2}</text><text x=\"{}\" y=\"{}\">{:.2}</text><text x=\"10\" y=\"{}\">{y_max:.2}</text>",
        pad,
        h - pad + 15.0,
        if log_x { 10f64.powf(x_min) } else { x_min },
        w - pad - 30.0,
        h - pad + 15.0,
        if log_x { 10f64.powf(x_max) } else { x_max },
        pad + 4.0
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        let path: String = points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1} ", px(x), py(y)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{path}\"/>"
        );
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{name}</text>",
            w - pad - 140.0,
            pad + 16.0 * i as f64
        );
    }
    svg.push_str("</svg>");
    svg
}
