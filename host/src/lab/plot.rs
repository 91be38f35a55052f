//! Miss-ratio curves: byte miss ratio against cache size, one line per policy. The SVG is written
//! by hand (a few dozen lines); the PNG is that SVG drawn by resvg with the system's fonts, so
//! both show the same picture.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Write;

use super::sim::Outcome;

const W: f64 = 720.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 230.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];

/// An SVG of `outcomes`' byte miss ratio (y, 0..1) against `max_size_gb` (x), a line per policy.
pub fn miss_ratio_svg(title: &str, outcomes: &[Outcome]) -> String {
    let mut lines: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for o in outcomes {
        lines.entry(o.policy.as_str()).or_default().push((o.max_size_gb as f64, o.byte_miss_ratio));
    }
    let xmax = outcomes.iter().map(|o| o.max_size_gb as f64).fold(1.0, f64::max);
    let x = |v: f64| LEFT + v / xmax * (W - LEFT - RIGHT);
    let y = |v: f64| TOP + (1.0 - v) * (H - TOP - BOTTOM);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(svg, r#"<text x="{LEFT}" y="22" font-size="15">{}</text>"#, escape(title));
    for i in 0..=5 {
        let v = i as f64 / 5.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{:.0}%</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y(v) + 4.0,
            v * 100.0,
            y = y(v)
        );
    }
    let mut ticks: Vec<u64> = outcomes.iter().map(|o| o.max_size_gb).collect();
    ticks.sort_unstable();
    ticks.dedup();
    for t in ticks {
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{}" y2="{}" stroke="#999"/><text x="{x:.1}" y="{}" text-anchor="middle">{t}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 5.0,
            H - BOTTOM + 18.0,
            x = x(t as f64)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">cache size, GiB</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 15.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(18 {}) rotate(-90)" text-anchor="middle">byte miss ratio</text>"#,
        (TOP + H - BOTTOM) / 2.0
    );
    for (i, (policy, mut points)) in lines.into_iter().enumerate() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = points.iter().map(|&(a, b)| format!("{:.1},{:.1}", x(a), y(b))).collect();
        let dash = if policy == "belady" { r#" stroke-dasharray="6 4""# } else { "" };
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
            path.join(" ")
        );
        for &(a, b) in &points {
            let _ = writeln!(svg, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#, x(a), y(b));
        }
        let ly = TOP + 10.0 + i as f64 * 18.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            W - RIGHT + 12.0,
            W - RIGHT + 36.0,
            W - RIGHT + 42.0,
            ly + 4.0,
            escape(&legend(policy))
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// A policy set's label, shortened for the legend: `admission=second-hit.wasm,eviction=gdsf.wasm`
/// reads `second-hit + gdsf`.
fn legend(policy: &str) -> String {
    policy
        .split(',')
        .map(|part| {
            let part = part
                .split_once('=')
                .filter(|(slot, _)| slot.parse::<crate::policy::Slot>().is_ok())
                .map_or(part, |(_, p)| p);
            part.replace(".wasm", "")
        })
        .collect::<Vec<_>>()
        .join(" + ")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Draws an SVG written by [`miss_ratio_svg`] as a PNG (twice its size, for sharp text), with
/// the system's fonts. Without any font the text could not be drawn: that is an error naming the
/// package to install, and the SVG stays the plot to look at.
pub fn svg_to_png(svg: &str) -> Result<Vec<u8>, String> {
    use resvg::{tiny_skia, usvg};
    let mut options = usvg::Options { fontdb: fonts()?, ..usvg::Options::default() };
    options.font_family = "sans-serif".into();
    let tree = usvg::Tree::from_str(svg, &options).map_err(|e| format!("reading the plot's SVG: {e}"))?;
    let size = tree.size().to_int_size();
    let mut pixmap = tiny_skia::Pixmap::new(size.width() * 2, size.height() * 2)
        .ok_or_else(|| format!("a {}x{} plot is too large to draw", size.width(), size.height()))?;
    resvg::render(&tree, tiny_skia::Transform::from_scale(2.0, 2.0), &mut pixmap.as_mut());
    pixmap.encode_png().map_err(|e| format!("encoding the PNG: {e}"))
}

/// The system's fonts, read once, with `sans-serif` mapped to an installed family.
fn fonts() -> Result<std::sync::Arc<resvg::usvg::fontdb::Database>, String> {
    use resvg::usvg::fontdb::{Database, Family, Query};
    static FONTS: std::sync::OnceLock<Option<std::sync::Arc<Database>>> = std::sync::OnceLock::new();
    let db = FONTS.get_or_init(|| {
        let mut db = Database::new();
        db.load_system_fonts();
        let sans = Query { families: &[Family::SansSerif], ..Query::default() };
        if db.query(&sans).is_none() {
            // The generic family names Arial by default; use what is installed instead.
            let installed = ["DejaVu Sans", "Liberation Sans", "Noto Sans", "FreeSans"]
                .into_iter()
                .find(|name| db.query(&Query { families: &[Family::Name(name)], ..Query::default() }).is_some())
                .map(str::to_owned)
                .or_else(|| db.faces().next().and_then(|f| f.families.first()).map(|(name, _)| name.clone()));
            db.set_sans_serif_family(installed?);
        }
        Some(std::sync::Arc::new(db))
    });
    db.clone().ok_or_else(|| {
        "no system font to draw the plot's text (install fonts-dejavu-core); the SVG plot was written".to_string()
    })
}
