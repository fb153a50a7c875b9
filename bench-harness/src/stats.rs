//! The statistics every figure of the report rests on: medians with their spread, paired ratios
//! against a limit, and the verdict a spread gives against a target.
//!
//! It exists because the disk under this harness swings 2x within minutes: a median of engine runs
//! divided by a median of raw runs measured at other moments can flip a verdict. So a ratio is
//! computed per adjacent (raw, engine) pair, and the report gives the median ratio with its min and
//! max; a target that lies inside that spread is "noisy", not "meets".

use serde::{Deserialize, Serialize};

/// Median, min and max of repeated measurements. The median of an even count is the mean of the
/// two middle values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Spread {
            median: median_of_sorted(&sorted),
            min: sorted.first().copied().unwrap_or(0.0),
            max: sorted.last().copied().unwrap_or(0.0),
            runs: sorted.len(),
        }
    }
}

fn median_of_sorted(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// Coefficient of variation (sample standard deviation / mean) of repeated measurements: the
/// run-to-run noise of a limit. 0 for fewer than two values.
pub fn coefficient_of_variation(values: &[f64]) -> f64 {
    let n = values.len();
    if n < 2 {
        return 0.0;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if mean == 0.0 {
        return 0.0;
    }
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    variance.sqrt() / mean
}

/// Interleaved (limit, engine) measurements, pushed in the order they were taken: each engine run
/// right after the limit run it is divided by.
#[derive(Debug, Clone, Default)]
pub struct Pairs {
    pub limit: Vec<f64>,
    pub engine: Vec<f64>,
}

impl Pairs {
    pub fn push(&mut self, limit: f64, engine: f64) {
        self.limit.push(limit);
        self.engine.push(engine);
    }

    pub fn len(&self) -> usize {
        self.engine.len()
    }

    /// engine / limit for each pair (0 where the limit is 0, which a real run never measures).
    pub fn ratios(&self) -> Vec<f64> {
        self.limit
            .iter()
            .zip(&self.engine)
            .map(|(l, e)| if *l > 0.0 { e / l } else { 0.0 })
            .collect()
    }

    pub fn summary(&self) -> PairedRatio {
        let ratio = Spread::of(&self.ratios());
        PairedRatio {
            pairs: self.len(),
            ratio_median: ratio.median,
            ratio_min: ratio.min,
            ratio_max: ratio.max,
            engine: Spread::of(&self.engine),
            limit: Spread::of(&self.limit),
            limit_cv: coefficient_of_variation(&self.limit),
        }
    }
}

/// What `Pairs` reduce to; every ratio figure in `results.json` carries these fields.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairedRatio {
    pub pairs: usize,
    pub ratio_median: f64,
    pub ratio_min: f64,
    pub ratio_max: f64,
    pub engine: Spread,
    pub limit: Spread,
    /// Run-to-run noise of the limit over these pairs.
    pub limit_cv: f64,
}

/// How a spread of values (or ratios) stands against a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The whole spread is on the right side of the target.
    Meets,
    /// The whole spread is on the wrong side.
    Below,
    /// The target lies inside the spread: the runs disagree, so no verdict.
    Noisy,
}

impl Verdict {
    /// For targets of the form "at least `target`".
    pub fn at_least(min: f64, max: f64, target: f64) -> Verdict {
        if min >= target {
            Verdict::Meets
        } else if max < target {
            Verdict::Below
        } else {
            Verdict::Noisy
        }
    }

    /// For targets of the form "less than `target`" (latencies).
    pub fn less_than(min: f64, max: f64, target: f64) -> Verdict {
        if max < target {
            Verdict::Meets
        } else if min >= target {
            Verdict::Below
        } else {
            Verdict::Noisy
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Meets => "meets",
            Verdict::Below => "below",
            Verdict::Noisy => "noisy",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(Spread::of(&[3.0, 1.0, 2.0]).median, 2.0);
        assert_eq!(Spread::of(&[4.0, 1.0, 3.0, 2.0]).median, 2.5);
        let s = Spread::of(&[5.0, 1.0, 9.0]);
        assert_eq!((s.min, s.max, s.runs), (1.0, 9.0, 3));
        assert_eq!(Spread::of(&[]).runs, 0);
    }

    #[test]
    fn ratios_are_per_pair_not_median_over_median() {
        // The limit swings 2x between pairs; each engine run follows its limit. Per-pair ratios
        // are all 0.8, while median(engine) / median(limit) would say 0.8 only by luck.
        let mut pairs = Pairs::default();
        pairs.push(1000.0, 800.0);
        pairs.push(2000.0, 1600.0);
        pairs.push(1500.0, 1200.0);
        pairs.push(1000.0, 800.0);
        pairs.push(2000.0, 1600.0);
        let s = pairs.summary();
        assert_eq!(s.pairs, 5);
        assert!((s.ratio_median - 0.8).abs() < 1e-12);
        assert!((s.ratio_min - 0.8).abs() < 1e-12 && (s.ratio_max - 0.8).abs() < 1e-12);
        // A pairing that lost its order would not give a constant ratio.
        let mut shuffled = Pairs::default();
        shuffled.push(1000.0, 1600.0);
        shuffled.push(2000.0, 800.0);
        assert!(shuffled.summary().ratio_max > 1.0);
    }

    #[test]
    fn verdicts() {
        assert_eq!(Verdict::at_least(0.81, 0.9, 0.8), Verdict::Meets);
        assert_eq!(Verdict::at_least(0.6, 0.79, 0.8), Verdict::Below);
        assert_eq!(Verdict::at_least(0.7, 0.9, 0.8), Verdict::Noisy);
        assert_eq!(Verdict::less_than(500.0, 900.0, 1000.0), Verdict::Meets);
        assert_eq!(Verdict::less_than(1000.0, 2000.0, 1000.0), Verdict::Below);
        assert_eq!(Verdict::less_than(500.0, 2000.0, 1000.0), Verdict::Noisy);
        assert_eq!(serde_json::to_string(&Verdict::Noisy).ok().as_deref(), Some("\"noisy\""));
    }

    #[test]
    fn coefficient_of_variation_of_a_limit() {
        assert_eq!(coefficient_of_variation(&[5.0]), 0.0);
        assert_eq!(coefficient_of_variation(&[2.0, 2.0, 2.0]), 0.0);
        // Sample standard deviation of [1, 3] is sqrt(2); mean 2.
        let cv = coefficient_of_variation(&[1.0, 3.0]);
        assert!((cv - 2f64.sqrt() / 2.0).abs() < 1e-12);
    }
}
