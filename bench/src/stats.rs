//! Summaries of repeated measurements: the median and the spread (min..max) of repeated
//! runs, and nearest-rank percentiles of latency samples.

use std::fmt;

/// Repeated runs of one measurement, summarised.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Summary {
    /// `None` for no samples (or only NaNs, which are dropped: a run that measured nothing).
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Summary { median, min: v[0], max: v[n - 1], n })
    }

    /// Spread as a fraction of the median: (max - min) / median.
    pub fn rel_spread(&self) -> f64 {
        if self.median == 0.0 { 0.0 } else { (self.max - self.min) / self.median.abs() }
    }

    /// This summary divided by `base` (medians), e.g. a rate relative to the no-program rate.
    pub fn ratio_to(&self, base: &Summary) -> Option<f64> {
        (base.median != 0.0).then(|| self.median / base.median)
    }

    /// Formats with `fmt_value` applied to median, min and max: `12.3k (11.9k–12.8k, n=3)`.
    pub fn display_with(&self, fmt_value: impl Fn(f64) -> String) -> String {
        if self.n == 1 {
            return format!("{} (n=1)", fmt_value(self.median));
        }
        format!("{} ({}–{}, n={})", fmt_value(self.median), fmt_value(self.min), fmt_value(self.max), self.n)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display_with(human))
    }
}

/// Nearest-rank percentile (`p` in 0..=100) of unsorted samples; `None` when empty.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(percentile_sorted(&v, p))
}

/// Nearest-rank percentile of already sorted, non-empty samples.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    let p = p.clamp(0.0, 100.0);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A number with an SI suffix and three significant digits: 1234567 → `1.23M`, 0.5 → `0.500`.
pub fn human(x: f64) -> String {
    let a = x.abs();
    let (v, suffix) = if a >= 1e9 {
        (x / 1e9, "G")
    } else if a >= 1e6 {
        (x / 1e6, "M")
    } else if a >= 1e3 {
        (x / 1e3, "k")
    } else {
        (x, "")
    };
    format!("{}{suffix}", sig3(v))
}

/// Three significant digits without an exponent: 123.4 → `123`, 12.34 → `12.3`, 1.234 → `1.23`.
pub fn sig3(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A duration given in seconds, in the unit that reads best: `850 ns`, `12.3 µs`, `4.56 ms`, `1.20 s`.
pub fn secs(s: f64) -> String {
    let a = s.abs();
    if a >= 1.0 {
        format!("{} s", sig3(s))
    } else if a >= 1e-3 {
        format!("{} ms", sig3(s * 1e3))
    } else if a >= 1e-6 {
        format!("{} µs", sig3(s * 1e6))
    } else {
        format!("{} ns", sig3(s * 1e9))
    }
}

/// Bytes in binary units: `512 B`, `1.50 KiB`, `12.0 MiB`, `1.25 GiB`.
pub fn bytes(b: f64) -> String {
    const K: f64 = 1024.0;
    if b >= K * K * K {
        format!("{} GiB", sig3(b / (K * K * K)))
    } else if b >= K * K {
        format!("{} MiB", sig3(b / (K * K)))
    } else if b >= K {
        format!("{} KiB", sig3(b / K))
    } else {
        format!("{b:.0} B")
    }
}

/// A ratio as `0.97×`.
pub fn ratio(r: f64) -> String {
    format!("{r:.2}×")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        let s = Summary::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Summary::of(&[]).is_none());
        assert!(Summary::of(&[f64::NAN]).is_none());
    }

    #[test]
    fn spread_and_ratio() {
        let a = Summary::of(&[90.0, 100.0, 110.0]).unwrap();
        assert!((a.rel_spread() - 0.2).abs() < 1e-12);
        let b = Summary::of(&[200.0]).unwrap();
        assert_eq!(a.ratio_to(&b), Some(0.5));
        let zero = Summary::of(&[0.0]).unwrap();
        assert_eq!(a.ratio_to(&zero), None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        // Unsorted input.
        assert_eq!(percentile(&[5.0, 1.0, 3.0, 2.0, 4.0], 60.0), Some(3.0));
    }

    #[test]
    fn formats() {
        assert_eq!(human(1_234_567.0), "1.23M");
        assert_eq!(human(12_345.0), "12.3k");
        assert_eq!(human(999.0), "999");
        assert_eq!(secs(0.000_012_34), "12.3 µs");
        assert_eq!(secs(0.004_56), "4.56 ms");
        assert_eq!(secs(850e-9), "850 ns");
        assert_eq!(bytes(3.0 * 1024.0 * 1024.0), "3.00 MiB");
        assert_eq!(ratio(0.9712), "0.97×");
        let s = Summary::of(&[1000.0, 2000.0, 3000.0]).unwrap();
        assert_eq!(s.to_string(), "2.00k (1.00k–3.00k, n=3)");
    }
}
