//! The online learner behind adaptive propensity models (issue 20): Bayesian
//! probit regression with a diagonal Gaussian posterior over the weights, updated one
//! response at a time (AdPredictor: Graepel, Candela, Borchert and Herbrich, ICML 2010).
//!
//! Why this learner: each update is a closed-form step over the features present (no
//! learning rate to tune, no pass over past data), its prediction is a calibrated
//! probability that carries its own uncertainty (a new offer starts at its prior and
//! moves as fast as its evidence warrants), and a small dynamics term lets old evidence
//! fade so that a drifting world is followed. Every step is a fixed sequence of `f64`
//! operations in the order the responses are given, with `exp` and `log` from `libm`
//! (pure Rust, the same on every machine) rather than the platform's C library, so the
//! same responses in the same order give the same weights bit for bit: on replay, after
//! a restart and on every node of a cluster that applies them in stream order.
//!
//! [`super`] puts it to work: the catalog's models, `adaptive('id')` in propensities and
//! the updates from outcomes in journal order.

/// How a model learns: its prior and how fast it forgets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probit {
    /// The noise of the latent score: the larger, the smaller each update's step.
    pub beta: f64,
    /// The prior variance of every weight but the bias.
    pub prior_variance: f64,
    /// Each update moves every weight it touches this fraction of the way back to its
    /// prior (AdPredictor's dynamics, ε): 0 never forgets; 1e-4 halves old evidence's
    /// precision over roughly 7,000 responses of the same offer.
    pub forget: f64,
    /// The bias's prior mean and variance: a model with no responses predicts
    /// [`Probit::prior_rate`].
    pub bias_mean: f64,
    pub bias_variance: f64,
}

impl Probit {
    /// A model whose prediction before any response is `rate` (a prior response rate
    /// in (0, 1)), with a weight prior of variance 1 and no forgetting.
    pub fn with_prior_rate(rate: f64) -> Probit {
        let (beta, bias_variance) = (1.0, 1.0);
        let rate = rate.clamp(1e-9, 1.0 - 1e-9);
        Probit {
            beta,
            prior_variance: 1.0,
            forget: 0.0,
            // Φ(m / sqrt(β² + v)) = rate.
            bias_mean: inverse_normal_cdf(rate) * (beta * beta + bias_variance).sqrt(),
            bias_variance,
        }
    }

    /// A model whose prediction before any response is `rate` when `active` features are
    /// set (a model's number of predictors): the weights' prior variance is split among
    /// them (1 in all), so that the prior says `rate` however many predictors there are,
    /// instead of drifting toward one half as more are set.
    pub fn with_prior_rate_for(rate: f64, active: usize) -> Probit {
        let (beta, bias_variance) = (1.0, 1.0);
        let rate = rate.clamp(1e-9, 1.0 - 1e-9);
        let (prior_variance, spread) = match active {
            0 => (1.0, 0.0),
            n => (1.0 / n as f64, 1.0),
        };
        Probit {
            beta,
            prior_variance,
            forget: 0.0,
            bias_mean: inverse_normal_cdf(rate) * (beta * beta + bias_variance + spread).sqrt(),
            bias_variance,
        }
    }

    /// The prediction of a model that has seen nothing, for features none of which is
    /// set; the prior uncertainty of set features widens it toward one half.
    pub fn prior_rate(&self) -> f64 {
        normal_cdf(self.bias_mean / (self.beta * self.beta + self.bias_variance).sqrt())
    }

    /// Fresh weights for `width` features (the bias is kept apart).
    pub fn weights(&self, width: usize) -> Weights {
        Weights {
            bias: Gaussian {
                mean: self.bias_mean,
                variance: self.bias_variance,
            },
            features: vec![
                Gaussian {
                    mean: 0.0,
                    variance: self.prior_variance,
                };
                width
            ],
            responses: 0,
            positives: 0,
        }
    }

    /// The probability of a positive response for these features (index into the
    /// weights, value), under the posterior's uncertainty.
    pub fn predict(&self, w: &Weights, x: &[(u32, f64)]) -> f64 {
        normal_cdf(self.z(w, x))
    }

    /// The probit score the prediction is Φ of.
    pub fn z(&self, w: &Weights, x: &[(u32, f64)]) -> f64 {
        let (mean, variance) = self.score(w, x);
        mean / variance.sqrt()
    }

    /// The latent score's mean and variance (the noise β² included).
    fn score(&self, w: &Weights, x: &[(u32, f64)]) -> (f64, f64) {
        let mut mean = w.bias.mean;
        let mut variance = self.beta * self.beta + w.bias.variance;
        for &(i, v) in x {
            let g = &w.features[i as usize];
            mean += g.mean * v;
            variance += g.variance * v * v;
        }
        (mean, variance)
    }

    /// Learns one response: `positive` or not, for these features. Indices past the
    /// weights are a caller's bug and panic.
    pub fn update(&self, w: &mut Weights, x: &[(u32, f64)], positive: bool) {
        let (mean, variance) = self.score(w, x);
        let t = if positive { 1.0 } else { -1.0 };
        let s = variance.sqrt();
        let z = t * mean / s;
        let v = truncated_mean(z);
        let shrink = v * (v + z);
        let step = |g: &mut Gaussian, x: f64, prior: Gaussian| {
            let mean = g.mean + t * x * g.variance / s * v;
            let variance = g.variance * (1.0 - x * x * g.variance / variance * shrink);
            if self.forget == 0.0 {
                *g = Gaussian { mean, variance };
                return;
            }
            // Forgetting: the precision-weighted way back to the prior.
            let forgot = variance * prior.variance
                / ((1.0 - self.forget) * prior.variance + self.forget * variance);
            let mean = forgot
                * ((1.0 - self.forget) * mean / variance
                    + self.forget * prior.mean / prior.variance);
            *g = Gaussian {
                mean,
                variance: forgot,
            };
        };
        let bias_prior = Gaussian {
            mean: self.bias_mean,
            variance: self.bias_variance,
        };
        step(&mut w.bias, 1.0, bias_prior);
        let prior = Gaussian {
            mean: 0.0,
            variance: self.prior_variance,
        };
        for &(i, value) in x {
            step(&mut w.features[i as usize], value, prior);
        }
        w.responses += 1;
        w.positives += u64::from(positive);
    }
}

/// A weight's posterior.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Gaussian {
    pub mean: f64,
    pub variance: f64,
}

/// One offer's model state: 16 bytes a feature, plus 56 (the bias, the vector, two counts).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Weights {
    pub bias: Gaussian,
    pub features: Vec<Gaussian>,
    /// Responses learned, and how many of them were positive.
    pub responses: u64,
    pub positives: u64,
}

/// v(z) = φ(z) / Φ(z), the mean of a standard normal truncated below at −z, computed
/// where Φ(z) underflows by its asymptote.
fn truncated_mean(z: f64) -> f64 {
    if z < -30.0 {
        // Mills' ratio: v(z) = -z - 1/z + O(z⁻³), so that v(v + z) still tends to 1.
        return -z - 1.0 / z;
    }
    normal_pdf(z) / normal_cdf(z)
}

fn normal_pdf(z: f64) -> f64 {
    libm::exp(-0.5 * z * z) / (2.0 * std::f64::consts::PI).sqrt()
}

/// Φ(z), through erfc's Chebyshev fit (Numerical Recipes' `erfcc`: relative error under
/// 1.2e-7 everywhere, so the tails stay accurate in ratio).
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * libm::exp(poly);
    if x >= 0.0 { r } else { 2.0 - r }
}

/// Φ⁻¹(p) for p in (0, 1), by Acklam's rational approximation (relative error under
/// 1.2e-9).
pub fn inverse_normal_cdf(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    const LOW: f64 = 0.024_25;
    if p < LOW {
        tail((-2.0 * libm::log(p)).sqrt())
    } else if p > 1.0 - LOW {
        -tail((-2.0 * libm::log(1.0 - p)).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator, so the tests need no seed plumbing.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn the_normal_functions_match_known_values() {
        for (z, p) in [
            (0.0, 0.5),
            (1.0, 0.841_344_746_068_543),
            (-1.959_963_984_540_054, 0.025),
            (-5.0, 2.866_515_718_791_939e-7),
        ] {
            assert!(((normal_cdf(z) - p) / p).abs() < 2e-7, "Φ({z})");
            assert!((inverse_normal_cdf(p) - z).abs() < 1e-6, "Φ⁻¹({p})");
        }
        // Past the cut-over the asymptote takes over without a jump, and the variance's
        // shrink factor v(v + z) stays near 1 (a surprising response still teaches).
        let (below, above) = (truncated_mean(-30.0 - 1e-9), truncated_mean(-30.0 + 1e-9));
        assert!((below - above).abs() < 1e-4, "{below} against {above}");
        let v = truncated_mean(-40.0);
        assert!((v * (v - 40.0) - 1.0).abs() < 0.01);
    }

    #[test]
    fn a_model_with_no_responses_predicts_its_prior() {
        for rate in [0.01, 0.1, 0.5, 0.9] {
            let model = Probit::with_prior_rate(rate);
            let w = model.weights(3);
            assert!((model.prior_rate() - rate).abs() < 1e-6);
            assert!((model.predict(&w, &[]) - rate).abs() < 1e-6);
            // The features' own uncertainty widens the prediction toward a coin toss.
            let with = model.predict(&w, &[(0, 1.0), (2, 1.0)]);
            assert!((with - 0.5).abs() <= (rate - 0.5).abs() + 1e-6, "{with}");
            assert!((with - 0.5) * (rate - 0.5) >= -1e-12, "{with}");
        }
    }

    #[test]
    fn it_learns_a_rate_and_an_effect_and_is_calibrated() {
        // Truth: 5% without the feature, 20% with it.
        let model = Probit::with_prior_rate(0.1);
        let mut w = model.weights(1);
        let mut rng = Lcg(7);
        for _ in 0..20_000 {
            let on = rng.next() < 0.5;
            let x: &[(u32, f64)] = if on { &[(0, 1.0)] } else { &[] };
            let p = if on { 0.20 } else { 0.05 };
            model.update(&mut w, x, rng.next() < p);
        }
        let off = model.predict(&w, &[]);
        let on = model.predict(&w, &[(0, 1.0)]);
        assert!((off - 0.05).abs() < 0.01, "off: {off}");
        assert!((on - 0.20).abs() < 0.02, "on: {on}");
        assert_eq!(w.responses, 20_000);
        assert!(
            w.features[0].variance < 0.01,
            "evidence narrows the posterior"
        );
    }

    #[test]
    fn the_same_responses_in_the_same_order_give_the_same_weights_bit_for_bit() {
        let model = Probit {
            forget: 1e-3,
            ..Probit::with_prior_rate(0.1)
        };
        let run = || {
            let mut w = model.weights(4);
            let mut rng = Lcg(11);
            for _ in 0..5_000 {
                let x = [(0, 1.0), ((rng.next() * 3.0) as u32 + 1, rng.next())];
                model.update(&mut w, &x, rng.next() < 0.3);
            }
            w
        };
        let (a, b) = (run(), run());
        let bits = |w: &Weights| -> Vec<u64> {
            std::iter::once(w.bias)
                .chain(w.features.iter().copied())
                .flat_map(|g| [g.mean.to_bits(), g.variance.to_bits()])
                .collect()
        };
        assert_eq!(bits(&a), bits(&b));
    }

    #[test]
    fn forgetting_follows_a_drift_that_no_forgetting_lags() {
        // 30% for 20,000 responses, then 5% for 5,000.
        let learn = |forget: f64| {
            let model = Probit {
                forget,
                ..Probit::with_prior_rate(0.1)
            };
            let mut w = model.weights(0);
            let mut rng = Lcg(3);
            for i in 0..25_000 {
                let p = if i < 20_000 { 0.30 } else { 0.05 };
                model.update(&mut w, &[], rng.next() < p);
            }
            model.predict(&w, &[])
        };
        let (remembers, forgets) = (learn(0.0), learn(1e-3));
        assert!(remembers > 0.2, "no forgetting still says {remembers}");
        assert!((forgets - 0.05).abs() < 0.02, "forgetting says {forgets}");
    }
}
