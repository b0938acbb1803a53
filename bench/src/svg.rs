//! Grouped bar charts as standalone SVG, with min–max whiskers for the spread of repeated
//! runs. Hand-written (a few dozen elements) rather than a plotting dependency.

use std::fmt::Write as _;

use crate::stats::{Summary, human};

/// Categories along the x axis (e.g. N = 10, 1k, ...), one bar per series in each.
#[derive(Debug, Clone)]
pub struct BarChart {
    pub title: String,
    pub y_label: String,
    pub categories: Vec<String>,
    pub series: Vec<Series>,
    /// Logarithmic y axis (for values spanning decades, e.g. iptables at 100k rules).
    pub log_y: bool,
}

#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    /// One value per category; `None` where not measured.
    pub values: Vec<Option<Summary>>,
}

const W: f64 = 760.0;
const H: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 90.0;
const COLORS: [&str; 8] = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f"];

impl BarChart {
    pub fn new(title: impl Into<String>, y_label: impl Into<String>) -> BarChart {
        BarChart {
            title: title.into(),
            y_label: y_label.into(),
            categories: Vec::new(),
            series: Vec::new(),
            log_y: false,
        }
    }

    /// The SVG document.
    pub fn svg(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
            W / 2.0,
            esc(&self.title)
        );
        let (plot_w, plot_h) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
        let max = self.series.iter().flat_map(|s| s.values.iter().flatten()).map(|v| v.max).fold(0.0_f64, f64::max);
        let min_pos = self
            .series
            .iter()
            .flat_map(|s| s.values.iter().flatten())
            .map(|v| v.min)
            .filter(|v| *v > 0.0)
            .fold(f64::INFINITY, f64::min);
        let scale = Scale::new(self.log_y, min_pos, max);
        // Axes and gridlines.
        for (value, label) in scale.ticks() {
            let y = TOP + plot_h * (1.0 - scale.frac(value));
            let _ = writeln!(s, r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/>"##, W - RIGHT);
            let _ = writeln!(s, r#"<text x="{}" y="{:.1}" text-anchor="end">{label}</text>"#, LEFT - 6.0, y + 4.0);
        }
        let _ = writeln!(
            s,
            r#"<text transform="translate(16,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
            TOP + plot_h / 2.0,
            esc(&self.y_label)
        );
        let n_cat = self.categories.len().max(1);
        let n_ser = self.series.len().max(1);
        let group_w = plot_w / n_cat as f64;
        let bar_w = (group_w * 0.8) / n_ser as f64;
        for (ci, cat) in self.categories.iter().enumerate() {
            let gx = LEFT + group_w * ci as f64;
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
                gx + group_w / 2.0,
                TOP + plot_h + 18.0,
                esc(cat)
            );
            for (si, ser) in self.series.iter().enumerate() {
                let Some(Some(v)) = ser.values.get(ci) else { continue };
                let x = gx + group_w * 0.1 + bar_w * si as f64;
                let y = TOP + plot_h * (1.0 - scale.frac(v.median));
                let color = COLORS[si % COLORS.len()];
                let _ = writeln!(
                    s,
                    r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{}: {}</title></rect>"#,
                    (bar_w - 2.0).max(1.0),
                    (TOP + plot_h - y).max(0.0),
                    esc(&ser.name),
                    esc(&v.to_string())
                );
                if v.n > 1 {
                    let cx = x + (bar_w - 2.0).max(1.0) / 2.0;
                    let (y0, y1) = (TOP + plot_h * (1.0 - scale.frac(v.min)), TOP + plot_h * (1.0 - scale.frac(v.max)));
                    let _ =
                        writeln!(s, r#"<line x1="{cx:.1}" y1="{y0:.1}" x2="{cx:.1}" y2="{y1:.1}" stroke="black"/>"#);
                }
            }
        }
        let _ =
            writeln!(s, r#"<line x1="{LEFT}" y1="{0}" x2="{1}" y2="{0}" stroke="black"/>"#, TOP + plot_h, W - RIGHT);
        // Legend, below the axis labels.
        let legend_y = H - 40.0;
        let item_w = plot_w / n_ser as f64;
        for (si, ser) in self.series.iter().enumerate() {
            let x = LEFT + item_w * si as f64;
            let color = COLORS[si % COLORS.len()];
            let _ = writeln!(s, r#"<rect x="{x:.1}" y="{legend_y}" width="12" height="12" fill="{color}"/>"#);
            let _ = writeln!(s, r#"<text x="{:.1}" y="{}">{}</text>"#, x + 16.0, legend_y + 10.0, esc(&ser.name));
        }
        s.push_str("</svg>\n");
        s
    }
}

/// Maps values to 0..=1 of the plot height.
struct Scale {
    log: bool,
    lo: f64,
    hi: f64,
}

impl Scale {
    fn new(log: bool, min_pos: f64, max: f64) -> Scale {
        let max = if max > 0.0 { max } else { 1.0 };
        if log && min_pos.is_finite() {
            let lo = 10f64.powf(min_pos.log10().floor());
            let hi = 10f64.powf(max.log10().ceil().max(lo.log10() + 1.0));
            Scale { log: true, lo, hi }
        } else {
            Scale { log: false, lo: 0.0, hi: nice_ceiling(max) }
        }
    }

    fn frac(&self, v: f64) -> f64 {
        let f = if self.log {
            if v <= 0.0 { 0.0 } else { (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10()) }
        } else {
            v / self.hi
        };
        f.clamp(0.0, 1.0)
    }

    fn ticks(&self) -> Vec<(f64, String)> {
        if self.log {
            let mut t = Vec::new();
            let mut v = self.lo;
            while v <= self.hi * 1.0001 {
                t.push((v, human(v)));
                v *= 10.0;
            }
            t
        } else {
            (0..=5).map(|i| self.hi * f64::from(i) / 5.0).map(|v| (v, human(v))).collect()
        }
    }
}

/// The smallest 1, 2 or 5 × 10^k at or above `x`.
fn nice_ceiling(x: f64) -> f64 {
    let p = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * p).find(|v| *v >= x).unwrap_or(10.0 * p)
}

fn esc(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(log: bool) -> BarChart {
        let mut c = BarChart::new("RR <rate>", "req/s");
        c.log_y = log;
        c.categories = vec!["N=10".into(), "N=100k".into()];
        c.series = vec![
            Series { name: "ward".into(), values: vec![Summary::of(&[90.0, 100.0, 110.0]), Summary::of(&[95.0])] },
            Series { name: "iptables".into(), values: vec![Summary::of(&[100.0]), None] },
        ];
        c
    }

    #[test]
    fn one_bar_per_measured_value_with_whiskers_for_repeats() {
        let svg = chart(false).svg();
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        // 3 bars plus 1 background rect plus 2 legend swatches.
        assert_eq!(svg.matches("<rect").count(), 6, "{svg}");
        assert_eq!(svg.matches("<title>").count(), 3);
        assert!(svg.contains("RR &lt;rate&gt;"), "title escaped: {svg}");
        // Only the 3-run value has a whisker: axis line + gridlines + 1 whisker.
        assert_eq!(svg.matches(r#"stroke="black""#).count(), 2, "{svg}");
    }

    #[test]
    fn scales() {
        assert_eq!(nice_ceiling(110.0), 200.0);
        assert_eq!(nice_ceiling(1.0), 1.0);
        assert_eq!(nice_ceiling(4200.0), 5000.0);
        let s = Scale::new(true, 3.0, 2000.0);
        assert_eq!((s.lo, s.hi), (1.0, 10000.0));
        assert!((s.frac(100.0) - 0.5).abs() < 1e-9);
        let svg = chart(true).svg();
        assert!(svg.contains(">100</text>"), "log ticks at decades: {svg}");
    }
}
