//! The adaptive learner against binned naive Bayes (the learner of Pega's adaptive
//! models) on the same stream: a data directory's journal learned again in its order by
//! the catalog's models, each response scored by both learners before either learns it
//! (progressive validation), per offer (and channel) as the engine learns. Prints one
//! JSON line: for each learner the responses, the mean log loss, the AUC over all
//! responses, and the calibration (positives over the sum of predictions).
//!
//!     cargo run --release --example learners -- DATA RULES
//!
//! scripts/adaptive_proof.sh runs it on every seed's adaptive run; docs/learning.md has
//! the figures. The naive Bayes here is the textbook one over the same binned features:
//! per cell, counts of positives and negatives of each predictor's bins (Laplace
//! smoothing, one pseudo-count a bin), combined as independent evidence; no forgetting
//! (Pega's default).

use std::collections::HashMap;
use std::path::Path;

use nextbest::adaptive::{CellKey, Learning, Model, Observed};
use nextbest::catalog::Catalog;
use nextbest::journal::{Reader, Record};
use nextbest::storage::Position;

/// One cell's counts: per feature, positives and negatives; and the totals.
#[derive(Default)]
struct Counts {
    positives: f64,
    negatives: f64,
    by_feature: Vec<(f64, f64)>,
}

/// The number of features (bins) of the predictor each feature belongs to.
fn bins_of(model: &Model) -> Vec<f64> {
    let mut out = vec![1.0; model.width as usize];
    for (i, p) in model.predictors.iter().enumerate() {
        let end = model
            .predictors
            .get(i + 1)
            .map_or(model.width, |next| next.offset);
        for f in p.offset..end {
            out[f as usize] = f64::from(end - p.offset);
        }
    }
    out
}

impl Counts {
    fn predict(&self, features: &[u32], bins: &[f64]) -> f64 {
        let (p, n) = (self.positives, self.negatives);
        let mut log_odds = ((p + 1.0) / (n + 1.0)).ln();
        for &f in features {
            let (fp, fn_) = self.by_feature.get(f as usize).copied().unwrap_or_default();
            let k = bins[f as usize];
            log_odds += ((fp + 1.0) / (p + k)).ln() - ((fn_ + 1.0) / (n + k)).ln();
        }
        1.0 / (1.0 + (-log_odds).exp())
    }

    fn learn(&mut self, features: &[u32], positive: bool, width: usize) {
        if self.by_feature.is_empty() {
            self.by_feature = vec![(0.0, 0.0); width];
        }
        if positive {
            self.positives += 1.0;
        } else {
            self.negatives += 1.0;
        }
        for &f in features {
            let c = &mut self.by_feature[f as usize];
            if positive {
                c.0 += 1.0;
            } else {
                c.1 += 1.0;
            }
        }
    }
}

/// Predictions and labels of one learner.
#[derive(Default)]
struct Scored(Vec<(f64, bool)>);

impl Scored {
    fn summary(&mut self) -> serde_json::Value {
        let n = self.0.len() as f64;
        let eps = 1e-12;
        let log_loss = self
            .0
            .iter()
            .map(|&(p, y)| {
                let p = p.clamp(eps, 1.0 - eps);
                if y { -p.ln() } else { -(1.0 - p).ln() }
            })
            .sum::<f64>()
            / n;
        let positives = self.0.iter().filter(|s| s.1).count() as f64;
        let predicted: f64 = self.0.iter().map(|s| s.0).sum();
        // AUC by ranks (ties share their mean rank).
        self.0.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut rank_sum = 0.0;
        let mut i = 0;
        while i < self.0.len() {
            let mut j = i;
            while j < self.0.len() && self.0[j].0 == self.0[i].0 {
                j += 1;
            }
            let mean_rank = (i + j + 1) as f64 / 2.0;
            rank_sum += mean_rank * self.0[i..j].iter().filter(|s| s.1).count() as f64;
            i = j;
        }
        let negatives = n - positives;
        let auc = (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives);
        serde_json::json!({
            "responses": self.0.len(),
            "log_loss": log_loss,
            "auc": auc,
            "calibration": positives / predicted,
        })
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [data, rules] = &args[..] else {
        eprintln!("usage: learners DATA RULES");
        std::process::exit(2);
    };
    let catalog = Catalog::load(rules).unwrap_or_else(|e| {
        eprintln!("{}", e.render());
        std::process::exit(1)
    });
    let bins: HashMap<u64, Vec<f64>> = catalog
        .models
        .iter()
        .map(|m| (m.fingerprint, bins_of(m)))
        .collect();
    let mut learning = Learning::default();
    let mut bayes: HashMap<CellKey, Counts> = HashMap::new();
    let (mut probit, mut naive) = (Scored::default(), Scored::default());
    let mut reader = Reader::open(&Path::new(data).join("journal"), Position::default())
        .unwrap_or_else(|e| {
            eprintln!("{data}: {e}");
            std::process::exit(1)
        });
    while let Some((_, _, record)) = reader.next_record().expect("reading the journal") {
        let Record::Outcome(o) = record else {
            continue;
        };
        catalog.learn_observed(&mut learning, &o.response(), &mut |obs: &Observed<'_>| {
            let x: Vec<(u32, f64)> = obs.features.iter().map(|&f| (f, 1.0)).collect();
            probit
                .0
                .push((obs.model.probit.predict(obs.weights, &x), obs.positive));
            let bins = &bins[&obs.model.fingerprint];
            let counts = bayes.entry(obs.cell).or_default();
            naive
                .0
                .push((counts.predict(obs.features, bins), obs.positive));
            counts.learn(obs.features, obs.positive, obs.model.width as usize);
        });
    }
    println!(
        "{}",
        serde_json::json!({
            "probit": probit.summary(),
            "naive_bayes": naive.summary(),
        })
    );
}
