//! The HTML report: an index.html with the figures and PNG plots drawn with plotters
//! (rate over time, setup-time percentiles over time, MOS distribution, RSS over time).

use super::Report;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::OnceLock;

const FONT_PATHS: &[&str] = &["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf"];

/// Registers a TrueType font for plot labels once; `false` when none is installed (plots
/// are then drawn without text; scripts/setup.sh installs fonts-dejavu-core).
fn font() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        for p in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

fn line_chart(path: &Path, title: &str, y_label: &str, series: &[Series<'_>]) -> Result<(), String> {
    let text = font();
    let root = BitMapBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let xmax = series.iter().flat_map(|s| s.2.iter().map(|p| p.0)).fold(1.0, f64::max);
    let ymax = series.iter().flat_map(|s| s.2.iter().map(|p| p.1)).fold(0.0, f64::max).max(1e-3) * 1.1;
    let mut b = ChartBuilder::on(&root);
    b.margin(15);
    if text {
        b.caption(title, ("sans-serif", 20)).x_label_area_size(35).y_label_area_size(60);
    }
    let mut chart = b.build_cartesian_2d(0.0..xmax, 0.0..ymax).map_err(|e| e.to_string())?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("seconds").y_desc(y_label);
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw().map_err(|e| e.to_string())?;
    for (name, color, pts) in series {
        let s = chart.draw_series(LineSeries::new(pts.iter().copied(), color)).map_err(|e| e.to_string())?;
        if text {
            let c = *color;
            s.label(*name).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
        }
    }
    if text && series.len() > 1 {
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| format!("{}: {e}", path.display()))
}

fn histogram(path: &Path, title: &str, values: &[f64], lo: f64, hi: f64, bins: usize) -> Result<(), String> {
    let text = font();
    let root = BitMapBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let w = (hi - lo) / bins as f64;
    let mut counts = vec![0u32; bins];
    for v in values {
        let i = (((v - lo) / w).floor().max(0.0) as usize).min(bins - 1);
        counts[i] += 1;
    }
    let ymax = counts.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.1;
    let mut b = ChartBuilder::on(&root);
    b.margin(15);
    if text {
        b.caption(title, ("sans-serif", 20)).x_label_area_size(35).y_label_area_size(50);
    }
    let mut chart = b.build_cartesian_2d(lo..hi, 0.0..ymax).map_err(|e| e.to_string())?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("MOS").y_desc("streams");
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw().map_err(|e| e.to_string())?;
    chart
        .draw_series(counts.iter().enumerate().map(|(i, c)| {
            let x0 = lo + i as f64 * w;
            Rectangle::new([(x0, 0.0), (x0 + w * 0.9, *c as f64)], BLUE.filled())
        }))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes `dir/index.html` and the PNG files it references.
pub fn write(r: &Report, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let t = |f: fn(&crate::stats::Second) -> f64| r.timeline.iter().map(|s| (s.t as f64, f(s))).collect::<Vec<_>>();
    let mut images = vec![];
    line_chart(
        &dir.join("rate.png"),
        "Rate over time",
        "per second",
        &[
            ("started", BLUE, t(|s| s.started as f64)),
            ("succeeded", GREEN, t(|s| s.succeeded as f64)),
            ("failed", RED, t(|s| s.failed as f64)),
        ],
    )?;
    images.push(("rate.png", "Started, succeeded and failed per second"));
    line_chart(&dir.join("active.png"), "Work in progress", "active", &[("active", BLUE, t(|s| s.active as f64))])?;
    images.push(("active.png", "Calls (or registrations) in progress"));
    if r.setup_ms.count > 0 {
        let with = |f: fn(&crate::stats::Second) -> f64| {
            r.timeline.iter().filter(|s| s.setup_p50 > 0.0).map(|s| (s.t as f64, f(s))).collect::<Vec<_>>()
        };
        line_chart(
            &dir.join("setup.png"),
            "Call setup time (INVITE to 200)",
            "ms",
            &[("p50", BLUE, with(|s| s.setup_p50)), ("p90", GREEN, with(|s| s.setup_p90)), ("p99", RED, with(|s| s.setup_p99))],
        )?;
        images.push(("setup.png", "Setup-time percentiles per second"));
    }
    if let Some(m) = &r.media {
        let mos: Vec<f64> = m.per_stream.iter().map(|s| s.mos).collect();
        histogram(&dir.join("mos.png"), "MOS distribution", &mos, 1.0, 4.5, 35)?;
        images.push(("mos.png", "MOS per stream (ITU-T G.107 E-model)"));
    }
    let rss: Vec<(f64, f64)> = r.timeline.iter().filter_map(|s| s.rss_mb.map(|v| (s.t as f64, v))).collect();
    if !rss.is_empty() {
        line_chart(&dir.join("rss.png"), "Target RSS", "MiB", &[("RSS", BLUE, rss)])?;
        images.push(("rss.png", "Resident memory of the target"));
    }
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>loadgen {mode} report</title><style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{text-align:left}}</style></head><body><h1>loadgen {mode}: {target} ({transport})</h1><table>",
        mode = esc(&r.mode),
        target = esc(&r.target),
        transport = esc(&r.transport)
    );
    let rows: Vec<(&str, String)> = vec![
        ("duration (s)", format!("{:.1}", r.duration_s)),
        ("attempted", r.calls_attempted.to_string()),
        ("succeeded", r.calls_succeeded.to_string()),
        ("failed", format!("{} ({:.2}%)", r.calls_failed, r.failure_pct)),
        ("offered rate (/s)", format!("{:.1}", r.offered_rate)),
        ("achieved rate (/s)", format!("{:.1}", r.achieved_rate)),
        (
            "setup ms p50 / p90 / p99 / max",
            format!("{:.2} / {:.2} / {:.2} / {:.2}", r.setup_ms.p50, r.setup_ms.p90, r.setup_ms.p99, r.setup_ms.max),
        ),
        ("post-dial delay ms p50 / p99", format!("{:.2} / {:.2}", r.pdd_ms.p50, r.pdd_ms.p99)),
        ("registration ms p50 / p99", format!("{:.2} / {:.2}", r.register_ms.p50, r.register_ms.p99)),
        ("CANCELs", r.cancels.to_string()),
    ];
    for (k, v) in rows {
        let _ = write!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
    }
    if let Some(m) = &r.media {
        let _ = write!(
            h,
            "<tr><th>MOS mean / min</th><td>{:.2} / {:.2}</td></tr><tr><th>loss % / jitter ms (mean)</th><td>{:.2} / {:.2}</td></tr>",
            m.mos_mean, m.mos_min, m.loss_pct_mean, m.jitter_ms_mean
        );
    }
    for (k, v) in &r.failures_by_reason {
        let _ = write!(h, "<tr><th>failure: {}</th><td>{v}</td></tr>", esc(k));
    }
    h.push_str("</table>");
    for (file, caption) in images {
        let _ = write!(h, "<h2>{}</h2><img src=\"{file}\" alt=\"{}\">", esc(caption), esc(caption));
    }
    h.push_str("</body></html>\n");
    std::fs::write(dir.join("index.html"), h).map_err(|e| format!("{}: {e}", dir.display()))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
