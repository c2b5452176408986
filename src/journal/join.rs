//! Joining outcomes to decisions by decision id, within an attribution window, and the
//! per-slot choice distributions a decision's policy drew from.
//!
//! Outcomes are collected in a first pass over the journal (they are small and arrive
//! after their decision); decisions then stream past them, so memory grows with the
//! number of outcomes, never with the journal.

use std::collections::HashMap;
use std::path::Path;

use super::{DecisionRecord, Reader, Record};
use crate::schema::EventKind;
use crate::storage::{Damage, Position};

/// One outcome, as the join needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    pub offer: String,
    pub kind: EventKind,
    pub value: Option<f64>,
    pub at: i64,
}

/// What counts as the reward of a shown offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reward {
    /// 1 if an outcome of this kind was recorded within the window, else 0.
    Kind(EventKind),
    /// The sum of the values of the offer's outcomes within the window.
    Value,
}

impl std::str::FromStr for Reward {
    type Err = String;
    fn from_str(s: &str) -> Result<Reward, String> {
        if s == "value" {
            return Ok(Reward::Value);
        }
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .map(Reward::Kind)
            .ok_or_else(|| {
                format!(
                    "`{s}` is not a reward: use click, accept, convert, impression, reject or value"
                )
            })
    }
}

/// Every outcome of a journal, by decision.
#[derive(Debug, Default)]
pub struct Outcomes {
    by_decision: HashMap<u128, Vec<Joined>>,
    pub count: u64,
    pub damage: Vec<Damage>,
}

impl Outcomes {
    pub fn collect(dir: &Path) -> std::io::Result<Outcomes> {
        let mut out = Outcomes::default();
        let mut reader = Reader::open(dir, Position::default())?;
        while let Some((_, _, record)) = reader.next_record()? {
            if let Record::Outcome(o) = record {
                out.count += 1;
                out.by_decision
                    .entry(o.decision_id().as_u128())
                    .or_default()
                    .push(Joined {
                        offer: o.offer,
                        kind: o.kind,
                        value: o.value,
                        at: o.at,
                    });
            }
        }
        out.damage = reader.damage;
        Ok(out)
    }

    /// The outcomes of one decision within `window` ms after it.
    pub fn of<'a>(&'a self, d: &DecisionRecord, window: i64) -> impl Iterator<Item = &'a Joined> {
        let (from, to) = (d.at, d.at.saturating_add(window));
        self.by_decision
            .get(&d.decision_id().as_u128())
            .into_iter()
            .flatten()
            .filter(move |o| o.at >= from && o.at <= to)
    }

    /// The reward of `offer` in decision `d`.
    pub fn reward(&self, d: &DecisionRecord, offer: &str, window: i64, reward: Reward) -> f64 {
        let mine = self.of(d, window).filter(|o| o.offer == offer);
        match reward {
            Reward::Kind(kind) => {
                if mine.into_iter().any(|o| o.kind == kind) {
                    1.0
                } else {
                    0.0
                }
            }
            Reward::Value => mine.filter_map(|o| o.value).sum(),
        }
    }
}

/// The choice one slot of a decision made.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotChoice {
    pub slot: u32,
    /// Indexes into the decision's candidates that this slot could show, in catalog order.
    pub actions: Vec<usize>,
    /// The probability the policy gave each of `actions`.
    pub probabilities: Vec<f64>,
    /// Index into `actions` of the offer shown.
    pub chosen: usize,
    /// Index into `actions` of the greedy (best-scoring) choice.
    pub best: usize,
}

/// The distribution each non-fallback slot drew from, rebuilt from the record exactly as
/// decide arbitrates: the remaining candidates (not shown in an earlier slot, nor of an
/// earlier slot's group when the placement shows one offer per group), the best of them
/// by score (first in catalog order on ties) with `1 - ε + ε/m`, each other with `ε/m`.
/// Slots whose shown offer is not among the remaining candidates (fallbacks) are left out.
pub fn slot_choices(d: &DecisionRecord) -> Vec<SlotChoice> {
    let mut out = Vec::new();
    let mut shown: Vec<&str> = Vec::new();
    let mut groups: Vec<&str> = Vec::new();
    for s in d.shown.iter().filter(|s| !s.fallback) {
        let actions: Vec<usize> = d
            .candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                let taken = shown.contains(&c.offer.as_str());
                let group_used =
                    d.one_per_group && c.group.as_deref().is_some_and(|g| groups.contains(&g));
                !(taken || group_used)
            })
            .map(|(i, _)| i)
            .collect();
        let Some(chosen) = actions
            .iter()
            .position(|&i| d.candidates[i].offer == s.offer)
        else {
            break;
        };
        let mut best = 0;
        for (k, &i) in actions.iter().enumerate() {
            if d.candidates[i].score > d.candidates[actions[best]].score {
                best = k;
            }
        }
        let m = actions.len() as f64;
        let probabilities = (0..actions.len())
            .map(|k| d.epsilon / m + if k == best { 1.0 - d.epsilon } else { 0.0 })
            .collect();
        out.push(SlotChoice {
            slot: s.slot,
            actions,
            probabilities,
            chosen,
            best,
        });
        shown.push(&s.offer);
        if let Some(g) = d.candidates[out.last().map_or(0, |c| c.actions[c.chosen])]
            .group
            .as_deref()
        {
            groups.push(g);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::catalog::Catalog;
    use crate::decide::{Context, Options, decide};
    use crate::journal::PendingDecision;
    use crate::state::CustomerState;

    /// The distributions rebuilt from records give every shown offer exactly the
    /// propensity decide logged, and sum to one: the exports' `p` is the policy's.
    #[test]
    fn rebuilt_distributions_match_the_logged_propensities() {
        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        let catalog = Arc::new(Catalog::load(&rules).expect("sample catalog"));
        let customer = {
            let text = std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/customers/ada.json"),
            )
            .expect("example");
            let v: serde_json::Value = serde_json::from_str(&text).expect("json");
            let attrs = crate::state::parse_attributes(
                "customer",
                &catalog.schema.customer,
                v["attributes"].as_object().expect("attributes"),
            )
            .expect("valid");
            CustomerState {
                id: Some("ada".into()),
                attributes: attrs,
                ..CustomerState::default()
            }
        };
        let (mut checked, mut explored) = (0, 0);
        for n in 0..2000u64 {
            let placement = (n % catalog.placements.len() as u64) as usize;
            let context = Context::for_placement(&catalog, placement, vec![]);
            let id = uuid::Uuid::from_u128(u128::from(n) << 64 | 0x7000);
            let mut state = customer.clone();
            state.id = Some(format!("c{n}"));
            let d = decide(
                &catalog,
                &state,
                &context,
                placement,
                1_795_428_000_000,
                &Options::new(id),
            );
            let record =
                PendingDecision::new(Arc::clone(&catalog), &state, &context.values, d.clone())
                    .record();
            let choices = slot_choices(&record);
            let shown: Vec<_> = d.offers.iter().filter(|s| !s.fallback).collect();
            assert_eq!(choices.len(), shown.len());
            for (choice, s) in choices.iter().zip(shown) {
                let p = choice.probabilities[choice.chosen];
                assert!((p - s.propensity).abs() < 1e-12, "{p} vs {}", s.propensity);
                let total: f64 = choice.probabilities.iter().sum();
                assert!((total - 1.0).abs() < 1e-9);
                assert_eq!(choice.chosen == choice.best, !s.explored || p > 0.5);
                checked += 1;
                explored += usize::from(s.explored);
            }
        }
        assert!(
            checked > 2000 && explored > 50,
            "{checked} slots, {explored} explored"
        );
    }
}
