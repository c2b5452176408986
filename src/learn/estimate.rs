//! Off-policy estimators over logged slots: inverse propensity scoring (IPS),
//! self-normalised IPS (SNIPS) and doubly robust (DR), each with a 95% normal confidence
//! interval, and the effective sample size of the importance weights.
//!
//! One [`Sample`] is one shown slot: the reward it earned, the probability the logging
//! policy gave the offer shown, the probability the target policy gives it, and, for DR,
//! the reward model's prediction for the offer shown and its expectation under the target.

use serde::Serialize;

/// The 0.975 quantile of the standard normal: a two-sided 95% interval.
pub const Z95: f64 = 1.959_963_984_540_054;

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Sample {
    pub reward: f64,
    /// The logging policy's probability of the offer shown (> 0).
    pub logged: f64,
    /// The target policy's probability of the offer shown.
    pub target: f64,
    /// The reward model's prediction for the offer shown.
    pub predicted: f64,
    /// The reward model's prediction averaged over the target policy's choice.
    pub expected: f64,
}

impl Sample {
    pub fn weight(&self) -> f64 {
        self.target / self.logged
    }
}

/// A point estimate with its 95% confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Estimate {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

impl Estimate {
    fn normal(value: f64, standard_error: f64) -> Estimate {
        Estimate {
            value,
            low: value - Z95 * standard_error,
            high: value + Z95 * standard_error,
        }
    }

    pub fn covers(&self, x: f64) -> bool {
        self.low <= x && x <= self.high
    }
}

impl std::fmt::Display for Estimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.4} [{:.4}, {:.4}]", self.value, self.low, self.high)
    }
}

/// The estimates of one target policy's value per slot.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Estimates {
    pub samples: u64,
    pub ips: Estimate,
    pub snips: Estimate,
    pub dr: Estimate,
    /// (Σw)² / Σw²: how many samples the weighted estimate is worth.
    pub effective_samples: f64,
    pub max_weight: f64,
}

/// The mean of `xs` with its normal 95% interval.
pub fn mean(xs: impl Iterator<Item = f64> + Clone) -> Estimate {
    let (n, sum) = xs.clone().fold((0usize, 0.0), |(n, s), x| (n + 1, s + x));
    if n == 0 {
        return Estimate::default();
    }
    let m = sum / n as f64;
    let var = if n > 1 {
        xs.map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1) as f64
    } else {
        0.0
    };
    Estimate::normal(m, (var / n as f64).sqrt())
}

pub fn estimate(samples: &[Sample]) -> Estimates {
    let n = samples.len();
    if n == 0 {
        return Estimates::default();
    }
    let ips = mean(samples.iter().map(|s| s.weight() * s.reward));
    let dr = mean(
        samples
            .iter()
            .map(|s| s.expected + s.weight() * (s.reward - s.predicted)),
    );
    let (sum_w, sum_w2, sum_wr) = samples.iter().fold((0.0, 0.0, 0.0), |(a, b, c), s| {
        let w = s.weight();
        (a + w, b + w * w, c + w * s.reward)
    });
    // SNIPS is a ratio; its standard error by the delta method.
    let snips = if sum_w > 0.0 {
        let v = sum_wr / sum_w;
        let spread: f64 = samples
            .iter()
            .map(|s| {
                let d = s.weight() * (s.reward - v);
                d * d
            })
            .sum();
        Estimate::normal(v, spread.sqrt() / sum_w)
    } else {
        Estimate::default()
    };
    Estimates {
        samples: n as u64,
        ips,
        snips,
        dr,
        effective_samples: if sum_w2 > 0.0 {
            sum_w * sum_w / sum_w2
        } else {
            0.0
        },
        max_weight: samples.iter().map(Sample::weight).fold(0.0, f64::max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(reward: f64, logged: f64, target: f64) -> Sample {
        Sample {
            reward,
            logged,
            target,
            ..Sample::default()
        }
    }

    /// The logging policy judged by itself: every weight is 1, so IPS and SNIPS are the
    /// plain mean, with the plain mean's interval.
    #[test]
    fn the_logging_policy_judged_by_itself_is_the_mean() {
        let xs = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0];
        let samples: Vec<_> = xs.iter().map(|&r| sample(r, 0.3, 0.3)).collect();
        let e = estimate(&samples);
        let m = mean(xs.iter().copied());
        assert_eq!(m.value, 0.375);
        // s² = (3 * 0.625² + 5 * 0.375²) / 7; se = sqrt(s² / 8)
        let se = ((3.0 * 0.625f64.powi(2) + 5.0 * 0.375f64.powi(2)) / 7.0 / 8.0).sqrt();
        assert!((m.high - m.value - Z95 * se).abs() < 1e-12);
        assert!((e.ips.value - 0.375).abs() < 1e-12);
        assert!((e.snips.value - 0.375).abs() < 1e-12);
        assert!((e.effective_samples - 8.0).abs() < 1e-9);
    }

    /// Two slots logged uniformly (p = 1/2) with rewards 1 for `a` and 0 for `b`; a target
    /// that always shows `a` is worth 1: IPS = mean(2·1, 0) = 1; SNIPS = 2 / 2 = 1 with
    /// zero spread; the effective sample size is (2)² / 4 = 1.
    #[test]
    fn closed_form_two_arm_case() {
        let samples = [sample(1.0, 0.5, 1.0), sample(0.0, 0.5, 0.0)];
        let e = estimate(&samples);
        assert!((e.ips.value - 1.0).abs() < 1e-12);
        assert!((e.snips.value - 1.0).abs() < 1e-12);
        assert_eq!(e.snips.low, e.snips.high);
        assert!((e.effective_samples - 1.0).abs() < 1e-12);
        assert_eq!(e.max_weight, 2.0);
        // IPS: values 2 and 0, s² = 2, se = 1.
        assert!((e.ips.high - (1.0 + Z95)).abs() < 1e-12);
    }

    /// DR with a perfect reward model is its direct part alone: the weighted residuals
    /// vanish, whatever the weights.
    #[test]
    fn doubly_robust_with_a_perfect_model_is_the_model() {
        let samples = [
            Sample {
                reward: 1.0,
                logged: 0.1,
                target: 0.9,
                predicted: 1.0,
                expected: 0.7,
            },
            Sample {
                reward: 0.0,
                logged: 0.5,
                target: 0.2,
                predicted: 0.0,
                expected: 0.3,
            },
        ];
        let e = estimate(&samples);
        assert!((e.dr.value - 0.5).abs() < 1e-12);
        // And with a useless model (predicting 0), DR is IPS.
        let blind: Vec<_> = samples
            .iter()
            .map(|s| Sample {
                predicted: 0.0,
                expected: 0.0,
                ..*s
            })
            .collect();
        let b = estimate(&blind);
        assert!((b.dr.value - b.ips.value).abs() < 1e-12);
    }

    proptest::proptest! {
        /// Whatever the data: SNIPS is a weighted mean of the rewards, so it lies within
        /// their range; every interval contains its estimate; the effective sample size is
        /// between 1 and n; and rescaling the target probabilities moves IPS in proportion
        /// but not SNIPS.
        #[test]
        fn estimator_invariants(
            rows in proptest::collection::vec((0.0f64..10.0, 0.01f64..1.0, 0.0f64..1.0), 1..60),
            scale in 0.1f64..1.0,
        ) {
            let samples: Vec<Sample> = rows.iter().map(|&(r, p, q)| sample(r, p, q)).collect();
            let e = estimate(&samples);
            let (lo, hi) = rows.iter().fold((f64::MAX, f64::MIN), |(a, b), r| (a.min(r.0), b.max(r.0)));
            if samples.iter().any(|s| s.target > 0.0) {
                proptest::prop_assert!(e.snips.value >= lo - 1e-9 && e.snips.value <= hi + 1e-9);
                proptest::prop_assert!(e.effective_samples >= 1.0 - 1e-9);
            }
            proptest::prop_assert!(e.effective_samples <= samples.len() as f64 + 1e-9);
            for est in [e.ips, e.snips, e.dr] {
                proptest::prop_assert!(est.low <= est.value && est.value <= est.high);
            }
            let scaled: Vec<Sample> = samples.iter().map(|s| Sample { target: s.target * scale, ..*s }).collect();
            let f = estimate(&scaled);
            proptest::prop_assert!((f.ips.value - scale * e.ips.value).abs() < 1e-9 * (1.0 + e.ips.value.abs()));
            proptest::prop_assert!((f.snips.value - e.snips.value).abs() < 1e-9 * (1.0 + e.snips.value.abs()));
        }
    }

    #[test]
    fn no_samples_no_estimate() {
        assert_eq!(estimate(&[]), Estimates::default());
        assert_eq!(mean(std::iter::empty()), Estimate::default());
    }
}
