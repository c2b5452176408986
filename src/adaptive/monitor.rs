//! How well a cell's model predicts, measured as it learns: each response is scored by
//! the weights as they were before it was learned from (progressive validation: the
//! prediction a decision would have read), into histograms by the prediction's probit
//! score, decayed so that they weigh recent responses (a half-life of
//! [`HALF_LIFE`] responses). From them: a rolling AUC, the calibration (responses'
//! positive rate against the mean prediction) and a reliability curve.
//!
//! Every step is a fixed sequence of `f64` operations on the learned responses in journal
//! order, so a monitor is part of the learning state that restarts, replays and every
//! node of a cluster reproduce bit for bit.

use serde::{Deserialize, Serialize};

/// Histogram bins, over the probit score z from −4 to 4 (probabilities 0.00003 to
/// 0.99997) in eighths; a score outside falls in the first or last. Responses scored in
/// one bin count as ties for the AUC: an eighth of z is, around a 3% rate, about 0.8
/// points of probability.
pub const BINS: usize = 64;

/// Bins per unit of z.
const PER_Z: f64 = 8.0;

/// Responses after which a response weighs half as much as the latest.
pub const HALF_LIFE: u32 = 1000;

/// 2^(1 / HALF_LIFE): the weight of each new response over the one before.
const GROW: f64 = 1.000_693_387_462_580_7;

/// Past this the weights are scaled back to 1 (well within `f64`'s range).
const RESCALE: f64 = 1e200;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Monitor {
    /// The weight the latest response was given: each response's is `GROW` times the
    /// one before's, so dividing by it reads the histograms with the latest at 1.
    latest: f64,
    positives: Vec<f64>,
    negatives: Vec<f64>,
    /// The sum of the predictions scored into each bin (weighted alike).
    predicted: Vec<f64>,
}

impl Default for Monitor {
    fn default() -> Monitor {
        Monitor {
            latest: 1.0 / GROW,
            positives: vec![0.0; BINS],
            negatives: vec![0.0; BINS],
            predicted: vec![0.0; BINS],
        }
    }
}

/// One bin of a reliability curve: responses whose prediction fell in it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Reliability {
    /// The mean prediction, and the share of them that were positive.
    pub predicted: f64,
    pub observed: f64,
    /// Their decayed count.
    pub weight: f64,
}

impl Monitor {
    /// Scores one response: its probit score `z`, its prediction `p` (Φ(z)), and whether
    /// it was positive.
    pub fn record(&mut self, z: f64, p: f64, positive: bool) {
        self.latest *= GROW;
        if self.latest > RESCALE {
            let k = 1.0 / self.latest;
            for b in self
                .positives
                .iter_mut()
                .chain(&mut self.negatives)
                .chain(&mut self.predicted)
            {
                *b *= k;
            }
            self.latest = 1.0;
        }
        // NaN (no score) goes to the first bin, as `as` saturates it to 0.
        let bin = ((z + 4.0) * PER_Z).floor().clamp(0.0, (BINS - 1) as f64) as usize;
        if self.positives.len() != BINS
            || self.negatives.len() != BINS
            || self.predicted.len() != BINS
        {
            // Only a snapshot of another layout could hold other lengths: begin again.
            *self = Monitor::default();
            self.latest = 1.0;
        }
        if positive {
            self.positives[bin] += self.latest;
        } else {
            self.negatives[bin] += self.latest;
        }
        self.predicted[bin] += self.latest * p;
    }

    /// The decayed number of responses (about `HALF_LIFE / ln 2` once many came).
    pub fn weight(&self) -> f64 {
        (self.positives.iter().sum::<f64>() + self.negatives.iter().sum::<f64>()) / self.latest
    }

    /// The chance that a positive response was predicted higher than a negative one (ties
    /// within a bin count half, so a lower bound by up to the share of such ties), over the decayed responses; `None` without both.
    pub fn auc(&self) -> Option<f64> {
        let (p, n): (f64, f64) = (self.positives.iter().sum(), self.negatives.iter().sum());
        if p <= 0.0 || n <= 0.0 {
            return None;
        }
        let mut below = 0.0;
        let mut pairs = 0.0;
        for (pos, neg) in self.positives.iter().zip(&self.negatives) {
            pairs += pos * (below + 0.5 * neg);
            below += neg;
        }
        Some(pairs / p / n)
    }

    /// The positive rate of the decayed responses over their mean prediction: 1 when the
    /// model is calibrated, above 1 when it predicts too low; `None` before any response.
    pub fn calibration(&self) -> Option<f64> {
        let predicted: f64 = self.predicted.iter().sum();
        let p: f64 = self.positives.iter().sum();
        (predicted > 0.0).then(|| p / predicted)
    }

    /// The reliability curve: each bin that holds responses, lowest prediction first.
    pub fn reliability(&self) -> Vec<Reliability> {
        (0..BINS)
            .filter_map(|i| {
                let total = self.positives[i] + self.negatives[i];
                (total > 0.0).then(|| Reliability {
                    predicted: self.predicted[i] / total,
                    observed: self.positives[i] / total,
                    weight: total / self.latest,
                })
            })
            .collect()
    }
}

/// Positives after which a cell's model counts as mature (Pega's adaptive models use the
/// same 200).
pub const MATURE_POSITIVES: u64 = 200;

/// How mature a cell is: its positives over [`MATURE_POSITIVES`], at most 1.
pub fn maturity(positives: u64) -> f64 {
    (positives as f64 / MATURE_POSITIVES as f64).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adaptive::normal_cdf;

    #[test]
    fn a_perfect_ranking_scores_one_a_useless_one_half_and_calibration_reads_the_rates() {
        let mut perfect = Monitor::default();
        let mut useless = Monitor::default();
        for i in 0..2000 {
            let positive = i % 4 == 0;
            // Positives scored high, negatives low.
            let z = if positive { 1.0 } else { -1.0 };
            perfect.record(z, normal_cdf(z), positive);
            // The same score for every response: all ties.
            useless.record(-0.674, 0.25, positive);
        }
        assert_eq!(perfect.auc(), Some(1.0));
        assert_eq!(useless.auc(), Some(0.5));
        // 25% positive against a prediction of 25%: calibrated.
        let c = useless.calibration().expect("responses");
        assert!((c - 1.0).abs() < 0.01, "{c}");
        // Predicted Φ(1) = 84% for the positives, Φ(-1) = 16% for the rest: the curve
        // says both are off, and where.
        let curve = perfect.reliability();
        assert_eq!(curve.len(), 2);
        assert!((curve[0].predicted - 0.1587).abs() < 1e-3 && curve[0].observed == 0.0);
        assert!((curve[1].predicted - 0.8413).abs() < 1e-3 && curve[1].observed == 1.0);
        assert_eq!(Monitor::default().auc(), None);
        assert_eq!(Monitor::default().calibration(), None);
    }

    #[test]
    fn old_responses_fade_with_the_half_life_and_the_scale_stays_finite() {
        let mut m = Monitor::default();
        // A model that ranked well, then one that ranks backwards.
        for i in 0..(20 * HALF_LIFE) {
            let positive = i % 2 == 0;
            m.record(if positive { 1.0 } else { -1.0 }, 0.5, positive);
        }
        assert!(m.auc().expect("auc") > 0.99);
        for i in 0..(5 * HALF_LIFE) {
            let positive = i % 2 == 0;
            m.record(if positive { -1.0 } else { 1.0 }, 0.5, positive);
        }
        // Five half-lives on, the earlier responses weigh ~3% of the total.
        let auc = m.auc().expect("auc");
        assert!(auc < 0.05, "{auc}");
        let w = m.weight();
        let expected = 1.0 / (1.0 - 1.0 / GROW);
        assert!((w / expected - 1.0).abs() < 0.01, "{w} {expected}");
        // Far past RESCALE's worth of growth, the weights are still finite.
        let mut long = Monitor::default();
        for i in 0..700_000u32 {
            long.record(0.0, 0.5, i % 3 == 0);
        }
        assert!(long.weight().is_finite() && long.latest <= RESCALE);
        assert!((long.weight() / expected - 1.0).abs() < 0.01);
    }

    #[test]
    fn maturity_is_capped_at_one() {
        assert_eq!(maturity(0), 0.0);
        assert_eq!(maturity(100), 0.5);
        assert_eq!(maturity(5000), 1.0);
    }
}
