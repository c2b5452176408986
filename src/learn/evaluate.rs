//! `nextbest evaluate`: what a candidate catalog would have earned on the logged traffic,
//! estimated before it goes live, beside the logging policy itself, a uniformly random
//! policy and the champion alone.
//!
//! Every shown slot of the journal is replayed ([`replay`](super::replay)); IPS, SNIPS and
//! DR ([`estimate`](super::estimate)) turn the logged propensities into estimates with
//! 95% intervals. DR's reward model is a per-offer logistic regression on the same
//! attributes as `train`'s, cross-fitted: each half of the decisions (split by a hash of
//! the decision id and the seed) is predicted by the model fitted on the other half.

use std::path::Path;

use serde::Serialize;

use super::LearnError;
use super::estimate::{Estimate, Estimates, Sample, estimate, mean};
use super::model::{Encoder, Logistic, Rows};
use super::replay::{Log, Mode, Slot, Target, probability, read};
use super::scenario::Scenario;
use crate::catalog::Catalog;
use crate::journal::join::Reward;
use crate::schema::EventKind;

#[derive(Debug, Clone)]
pub struct EvaluateOptions {
    pub reward: Reward,
    /// Outcomes count within this long after their decision (ms).
    pub window: i64,
    /// Decisions at or after, and before, these times (ms).
    pub range: (Option<i64>, Option<i64>),
    /// Splits the decisions for cross-fitting the reward model.
    pub seed: u64,
    /// The reward model's L2 penalty.
    pub lambda: f64,
}

impl Default for EvaluateOptions {
    fn default() -> Self {
        EvaluateOptions {
            reward: Reward::Kind(EventKind::Accept),
            window: 7 * 86_400_000,
            range: (None, None),
            seed: 0,
            lambda: 1.0,
        }
    }
}

/// One policy's estimates over a group of slots.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    /// `all`, `placement` or `channel`.
    pub by: &'static str,
    pub name: String,
    #[serde(flatten)]
    pub estimates: Estimates,
    /// The mean probability the policy puts on offers the logging policy could not show
    /// in that slot: what no estimate here can see.
    pub unsupported: f64,
    /// The policy's true value per slot, when a scenario knows it.
    pub truth: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    pub name: String,
    pub groups: Vec<Group>,
    /// For the logging policy: its mean reward, measured rather than estimated.
    pub on_policy: Option<Estimate>,
}

impl Policy {
    pub fn overall(&self) -> &Group {
        &self.groups[0]
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub decisions: u64,
    pub slots: u64,
    pub outcomes: u64,
    pub reward: String,
    pub policies: Vec<Policy>,
    pub warnings: Vec<String>,
    pub damage: Vec<String>,
}

/// The reward model for DR: per offer and fold, P(reward > 0) times the offer's mean
/// positive reward.
struct RewardModel {
    encoder: Encoder,
    /// Per offer: the model for each fold (fitted on the other fold) and the mean
    /// positive reward.
    offers: Vec<Option<([Logistic; 2], f64)>>,
}

fn fold(seed: u64, decision: u128) -> usize {
    (xxhash_rust::xxh3::xxh3_64_with_seed(&decision.to_le_bytes(), seed) & 1) as usize
}

impl RewardModel {
    fn fit(log: &Log, catalog: &Catalog, seed: u64, lambda: f64) -> RewardModel {
        let encoder = log.encoder(&catalog.schema);
        let mut offers = Vec::new();
        for offer in 0..log.offers.names.len() as u32 {
            let mine: Vec<&Slot> = log.slots.iter().filter(|s| s.chosen == offer).collect();
            let positive: Vec<f64> = mine.iter().map(|s| s.reward).filter(|r| *r > 0.0).collect();
            if mine.is_empty() {
                offers.push(None);
                continue;
            }
            let scale = if positive.is_empty() {
                0.0
            } else {
                positive.iter().sum::<f64>() / positive.len() as f64
            };
            let models = [0, 1].map(|f| {
                let mut rows = Rows::new(encoder.len());
                for s in mine.iter().filter(|s| fold(seed, s.decision) != f) {
                    encoder.encode(&s.customer_values, &s.context_values, &mut rows.x);
                    rows.y.push(f64::from(u8::from(s.reward > 0.0)));
                    rows.w.push(1.0);
                }
                Logistic::fit(&rows, lambda)
            });
            offers.push(Some((models, scale)));
        }
        RewardModel { encoder, offers }
    }

    /// The predicted reward of each offer for `slot` (0 for an offer never shown).
    fn predict(&self, slot: &Slot, seed: u64, inputs: &mut Vec<f64>) -> Vec<f64> {
        inputs.clear();
        self.encoder
            .encode(&slot.customer_values, &slot.context_values, inputs);
        let f = fold(seed, slot.decision);
        self.offers
            .iter()
            .map(|m| {
                m.as_ref().map_or(0.0, |(models, scale)| {
                    models[f].predict_inputs(inputs) * scale
                })
            })
            .collect()
    }
}

/// Evaluates, on the journal in `data`, the catalog in `baseline` (the logging policy's
/// champion alone) and each of `candidates` as written, beside the logging policy and a
/// uniformly random one. With a `scenario` (compiled against the baseline catalog), the
/// true value of each policy is computed too.
pub fn evaluate(
    data: &Path,
    baseline: &Path,
    candidates: &[&Path],
    scenario: Option<&Scenario>,
    options: &EvaluateOptions,
) -> Result<Evaluation, LearnError> {
    let load = |dir: &Path| Catalog::load(dir).map_err(LearnError::Catalog);
    let reference = load(baseline)?;
    let mut targets = vec![Target::new(
        "champion alone",
        load(baseline)?,
        Mode::Champion,
    )];
    for dir in candidates {
        targets.push(Target::new(
            dir.display().to_string(),
            load(dir)?,
            Mode::AsWritten,
        ));
    }
    let log = read(
        data,
        &reference,
        &targets,
        options.reward,
        options.window,
        options.range,
    )?;
    let model = RewardModel::fit(&log, &reference, options.seed, options.lambda);
    let truth_value = match options.reward {
        Reward::Value => Some(true),
        Reward::Kind(EventKind::Accept) => Some(false),
        Reward::Kind(_) => None,
    };
    // Offer ids of the log as offers of the reference catalog, for the scenario.
    let reference_offers: Vec<Option<usize>> = log
        .offers
        .names
        .iter()
        .map(|id| reference.offer(id))
        .collect();

    // Per policy: its distribution over offers in a slot. 0 = logging, 1 = uniform,
    // then the targets.
    let names: Vec<String> = ["logging policy".to_string(), "uniform random".to_string()]
        .into_iter()
        .chain(targets.iter().map(|t| t.name.clone()))
        .collect();
    let distribution = |slot: &Slot, policy: usize| -> Vec<(u32, f64)> {
        match policy {
            0 => slot.logged.clone(),
            1 => {
                let m = slot.logged.len() as f64;
                slot.logged.iter().map(|&(o, _)| (o, 1.0 / m)).collect()
            }
            t => slot.targets[t - 2].clone(),
        }
    };
    struct Row {
        sample: Sample,
        unsupported: f64,
        truth: Option<f64>,
    }
    let mut rows: Vec<Vec<Row>> = (0..names.len())
        .map(|_| Vec::with_capacity(log.slots.len()))
        .collect();
    let mut inputs = Vec::new();
    for slot in &log.slots {
        let predicted = model.predict(slot, options.seed, &mut inputs);
        for (policy, out) in rows.iter_mut().enumerate() {
            let dist = distribution(slot, policy);
            let mut unsupported = 0.0;
            let mut expected = 0.0;
            let mut truth = Some(0.0);
            for &(offer, p) in &dist {
                if probability(&slot.logged, offer) <= 0.0 {
                    unsupported += p;
                }
                expected += p * predicted[offer as usize];
                truth = match (
                    truth,
                    scenario,
                    truth_value,
                    reference_offers[offer as usize],
                ) {
                    (Some(t), Some(s), Some(value), Some(o)) => Some(
                        t + p * s.expected(
                            o,
                            &slot.customer_values,
                            &slot.context_values,
                            slot.at,
                            slot.slot,
                            value,
                        ),
                    ),
                    _ => None,
                };
            }
            out.push(Row {
                sample: Sample {
                    reward: slot.reward,
                    logged: slot.logged_probability(),
                    target: probability(&dist, slot.chosen),
                    predicted: predicted[slot.chosen as usize],
                    expected,
                },
                unsupported,
                truth: if dist.is_empty() && scenario.is_some() {
                    Some(0.0)
                } else {
                    truth
                },
            });
        }
    }

    let group = |rows: &[Row], idx: &[usize], by: &'static str, name: String| -> Group {
        let samples: Vec<Sample> = idx.iter().map(|&i| rows[i].sample).collect();
        let n = idx.len().max(1) as f64;
        let truths: Option<Vec<f64>> = idx.iter().map(|&i| rows[i].truth).collect();
        Group {
            by,
            name,
            estimates: estimate(&samples),
            unsupported: idx.iter().map(|&i| rows[i].unsupported).sum::<f64>() / n,
            truth: truths
                .filter(|t| !t.is_empty())
                .map(|t| t.iter().sum::<f64>() / t.len() as f64),
        }
    };
    let all: Vec<usize> = (0..log.slots.len()).collect();
    let mut policies = Vec::new();
    let mut warnings = Vec::new();
    for (policy, rows) in rows.iter().enumerate() {
        let mut groups = vec![group(rows, &all, "all", "all".into())];
        for (by, names, key) in [
            (
                "placement",
                &log.placements,
                (|s: &Slot| s.placement) as fn(&Slot) -> u32,
            ),
            ("channel", &log.channels, |s: &Slot| s.channel),
        ] {
            for (k, name) in names.names.iter().enumerate() {
                let idx: Vec<usize> = all
                    .iter()
                    .copied()
                    .filter(|&i| key(&log.slots[i]) == k as u32)
                    .collect();
                if !idx.is_empty() {
                    groups.push(group(rows, &idx, by, name.clone()));
                }
            }
        }
        let unsupported = groups[0].unsupported;
        if unsupported > 0.001 {
            warnings.push(format!(
                "{}: {:.1}% of its choices are offers the logging policy could never have shown there (no support); \
                 the estimates cannot see them and understate or overstate it by up to that share: do not trust them",
                names[policy],
                100.0 * unsupported
            ));
        }
        let ess = groups[0].estimates.effective_samples;
        if policy > 0 && ess < 0.01 * log.slots.len() as f64 && !log.slots.is_empty() {
            warnings.push(format!(
                "{}: the effective sample size is {ess:.0} of {} slots: it differs so much from the logging policy \
                 that the intervals are wide",
                names[policy],
                log.slots.len()
            ));
        }
        policies.push(Policy {
            name: names[policy].clone(),
            groups,
            on_policy: (policy == 0).then(|| mean(log.slots.iter().map(|s| s.reward))),
        });
    }
    if log.slots.is_empty() {
        warnings.push("the journal has no shown slot to learn from in this time range".into());
    }
    Ok(Evaluation {
        decisions: log.decisions,
        slots: log.slots.len() as u64,
        outcomes: log.outcomes,
        reward: match options.reward {
            Reward::Value => "value".into(),
            Reward::Kind(k) => k.as_str().into(),
        },
        policies,
        warnings,
        damage: log.damage,
    })
}

/// The evaluation as a terminal table: every policy overall, then by placement and by
/// channel.
pub fn render(e: &Evaluation) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} decisions, {} shown slots, {} outcomes; reward: {} per shown slot\n",
        e.decisions, e.slots, e.outcomes, e.reward
    );
    let truth = e.policies.iter().any(|p| p.overall().truth.is_some());
    let table = |out: &mut String, by: &str| {
        let _ = writeln!(
            out,
            "{:<34} {:>7} {:>26} {:>26} {:>26} {:>8} {:>8}{}",
            if by == "all" { "policy" } else { by },
            "slots",
            "IPS [95% CI]",
            "SNIPS [95% CI]",
            "DR [95% CI]",
            "ESS",
            "no supp",
            if truth { "      true" } else { "" }
        );
        for p in &e.policies {
            for g in p.groups.iter().filter(|g| g.by == by) {
                let label = if by == "all" {
                    p.name.clone()
                } else {
                    format!("{} / {}", p.name, g.name)
                };
                let _ = writeln!(
                    out,
                    "{:<34} {:>7} {:>26} {:>26} {:>26} {:>8.0} {:>7.1}%{}",
                    shorten(&label, 34),
                    g.estimates.samples,
                    g.estimates.ips.to_string(),
                    g.estimates.snips.to_string(),
                    g.estimates.dr.to_string(),
                    g.estimates.effective_samples,
                    100.0 * g.unsupported,
                    g.truth.map_or(String::new(), |t| format!(" {t:>9.4}"))
                );
            }
        }
        let _ = writeln!(out);
    };
    table(&mut out, "all");
    if let Some(on) = e.policies.first().and_then(|p| p.on_policy) {
        let _ = writeln!(out, "logging policy, measured: {on}\n");
    }
    table(&mut out, "placement");
    table(&mut out, "channel");
    for w in &e.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    for d in &e.damage {
        let _ = writeln!(out, "damage: {d}");
    }
    out
}

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let tail: String = s
        .chars()
        .rev()
        .take(n - 1)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
}
