//! Replaying a journal through catalogs: every shown slot of every logged decision, with
//! the distribution the logging policy drew it from, its reward, and the distribution
//! each target policy would have drawn from in the same place.
//!
//! A target decides on the decision's feature snapshot (the customer and context
//! attributes as logged) and on the customer's history rebuilt from the journal's
//! outcomes up to that decision, so its contact policies see what the live node saw.
//! Budgets are not replayed (they count across customers in real time). A placement with
//! several slots is judged slot by slot, each given the offers the log showed before it:
//! the value estimated is the value per shown slot.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::adaptive::{CellKey, Learning, Weights};
use crate::catalog::Catalog;
use crate::decide::{Context, Options, decide};
use crate::journal::join::{Outcomes, Reward, slot_choices};
use crate::journal::{DecisionRecord, Reader, Record};
use crate::schema::{EntitySchema, Event, Feature, Value};
use crate::state::{CustomerState, History, HistoryLimits};
use crate::storage::Position;

/// How a target catalog decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// As written: its experiments, arms and exploration.
    AsWritten,
    /// Every customer in the first arm (the champion) of each experiment, no exploration.
    Champion,
}

/// A policy to judge: a catalog and how it decides.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub catalog: Arc<Catalog>,
}

impl Target {
    /// `catalog` deciding as `mode` says. For [`Mode::Champion`] the catalog must not be
    /// shared yet: its experiments are rewritten to one arm with no exploration.
    pub fn new(name: impl Into<String>, mut catalog: Catalog, mode: Mode) -> Target {
        if mode == Mode::Champion {
            for e in &mut catalog.experiments {
                e.arms.truncate(1);
                e.epsilon = 0.0;
                for arm in &mut e.arms {
                    arm.share = 1.0;
                    arm.epsilon = None;
                }
            }
        }
        Target {
            name: name.into(),
            catalog: Arc::new(catalog),
        }
    }
}

/// Names interned as small numbers.
#[derive(Debug, Clone, Default)]
pub struct Names {
    pub names: Vec<String>,
    index: HashMap<String, u32>,
}

impl Names {
    pub fn intern(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names.push(name.to_string());
        self.index.insert(name.to_string(), i);
        i
    }

    pub fn get(&self, name: &str) -> Option<u32> {
        self.index.get(name).copied()
    }

    pub fn name(&self, i: u32) -> &str {
        &self.names[i as usize]
    }
}

/// One shown slot of a logged decision.
#[derive(Debug, Clone)]
pub struct Slot {
    pub decision: u128,
    pub at: i64,
    pub customer: Option<String>,
    pub placement: u32,
    pub channel: u32,
    /// The experiment arm the customer was in, if the placement ran one.
    pub arm: Option<u32>,
    pub slot: u32,
    /// The customer and context attributes, in the slots of the reference catalog.
    pub customer_values: Vec<Value>,
    pub context_values: Vec<Value>,
    /// The offer shown.
    pub chosen: u32,
    pub reward: f64,
    /// The logging policy's distribution (offer, probability).
    pub logged: Vec<(u32, f64)>,
    /// Each target's distribution, in the order of the targets.
    pub targets: Vec<Vec<(u32, f64)>>,
}

impl Slot {
    pub fn logged_probability(&self) -> f64 {
        probability(&self.logged, self.chosen)
    }
}

/// The probability a distribution gives `offer`.
pub fn probability(distribution: &[(u32, f64)], offer: u32) -> f64 {
    distribution
        .iter()
        .filter(|(o, _)| *o == offer)
        .map(|(_, p)| p)
        .sum()
}

/// A journal's shown slots.
#[derive(Debug, Default)]
pub struct Log {
    pub slots: Vec<Slot>,
    pub offers: Names,
    pub placements: Names,
    pub channels: Names,
    pub arms: Names,
    pub decisions: u64,
    /// Decisions with no slot to learn from (suppressed, or a fallback only).
    pub skipped: u64,
    pub outcomes: u64,
    pub damage: Vec<String>,
}

impl Log {
    /// Model inputs fitted to the attribute values of every slot.
    pub fn encoder(&self, schema: &crate::schema::Schema) -> super::model::Encoder {
        super::model::Encoder::fit(
            schema,
            self.slots
                .iter()
                .map(|s| (&s.customer_values[..], &s.context_values[..])),
        )
    }
}

/// The attribute values of a feature snapshot under `schema` (`prefix` is `customer.` or
/// `context.`); features the schema does not have, or of another type, read as unset.
pub fn values(features: &[(String, Feature)], prefix: &str, schema: &EntitySchema) -> Vec<Value> {
    let mut out = vec![Value::Missing; schema.len()];
    for (name, feature) in features {
        let Some(name) = name.strip_prefix(prefix) else {
            continue;
        };
        if let Some(slot) = schema.slot(name)
            && let Some(attr) = schema.get(slot)
            && let Some(v) = feature.value(&attr.ty)
        {
            out[slot as usize] = v;
        }
    }
    out
}

/// What a target would show in each logged slot of `d`, given the offers the log showed
/// in the slots before it: per slot, `(offer, probability)` over the target's remaining
/// candidates (best by score with `1 - ε + ε/m`, each other `ε/m`, as decide
/// arbitrates). Empty when the target shows nothing there (a fallback at most).
fn target_distributions(
    target: &Catalog,
    d: &DecisionRecord,
    history: &History,
    shown_before: &[&str],
    offers: &mut Names,
) -> Vec<Vec<(u32, f64)>> {
    let mut out = Vec::with_capacity(shown_before.len() + 1);
    let Some(placement) = target.placement(&d.placement) else {
        return vec![Vec::new(); shown_before.len() + 1];
    };
    let customer = CustomerState {
        id: d.customer.clone(),
        attributes: values(&d.features, "customer.", &target.schema.customer),
        history: history.clone(),
        seq: 0,
    };
    let context = Context::for_placement(
        target,
        placement,
        values(&d.features, "context.", &target.schema.context),
    );
    let id = uuid::Uuid::from_bytes(d.id);
    let decision = decide(
        target,
        &customer,
        &context,
        placement,
        d.at,
        &Options::new(id),
    );
    let one_per_group = target.placements[placement].one_per_group;
    for k in 0..=shown_before.len() {
        let before = &shown_before[..k];
        let groups: Vec<u32> = before
            .iter()
            .filter_map(|id| target.offer(id))
            .map(|i| target.offers[i].group_key)
            .filter(|&g| g != 0)
            .collect();
        let remaining: Vec<_> = decision
            .candidates
            .iter()
            .filter(|c| {
                let offer = &target.offers[c.offer];
                let taken = before.contains(&offer.id.as_str());
                let group_used = one_per_group && c.group != 0 && groups.contains(&c.group);
                !(taken || group_used)
            })
            .collect();
        let mut best = None;
        for (i, c) in remaining.iter().enumerate() {
            if best.is_none_or(|b: usize| c.score > remaining[b].score) {
                best = Some(i);
            }
        }
        let m = remaining.len() as f64;
        let e = decision.epsilon;
        out.push(
            remaining
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let p = e / m + if Some(i) == best { 1.0 - e } else { 0.0 };
                    (offers.intern(&target.offers[c.offer].id), p)
                })
                .collect(),
        );
    }
    out
}

/// A target's recent publications, to score a decision with the learning state it was
/// scored with (`DecisionRecord::learned`) when outcomes were learned between its
/// scoring and its record: per learned outcome, the responses learned after it and each
/// changed cell's weights before it.
///
/// It rewinds only once the journal and replay count alike: after a decision of the same
/// catalog version that read exactly the state replay holds at its record (a node
/// restored from a snapshot that did not keep the count names its states by another
/// count, and is never rewound), and only to a state replay passed through.
#[derive(Default)]
struct Rewind {
    /// Per cell changed: the responses learned before and after the outcome that changed
    /// it, and its weights before.
    changes: std::collections::VecDeque<(u64, u64, CellKey, Arc<Weights>)>,
    aligned: bool,
    /// The catalog version of the last decision seen: another one (a reload) aligns anew.
    version: String,
}

/// How many changed cells a rewind remembers: far more than race between a decision's
/// scoring and its record.
const REWIND: usize = 4096;

/// Cells published back to an earlier state, to publish forward again.
struct Rewound(Vec<CellKey>);

impl Rewind {
    fn keep(
        &mut self,
        catalog: &Catalog,
        (before_count, updates): (u64, u64),
        changed: &[CellKey],
    ) {
        for cell in changed {
            let Some(model) = catalog.models.iter().find(|m| m.fingerprint == cell.model) else {
                continue;
            };
            let before = model
                .published((cell.offer, cell.channel))
                .unwrap_or_else(|| Arc::new(model.prior().clone()));
            if self.changes.len() == REWIND {
                self.changes.pop_front();
            }
            self.changes
                .push_back((before_count, updates, *cell, before));
        }
    }

    /// Publishes each cell changed after `k` responses as it was then (when what is
    /// remembered reaches back that far, and the counts are aligned).
    fn to(
        &mut self,
        catalog: &Catalog,
        learning: &Learning,
        d: &DecisionRecord,
        k: u64,
    ) -> Option<Rewound> {
        if self.version != d.catalog_version {
            self.version.clone_from(&d.catalog_version);
            self.aligned = false;
        }
        let now = learning.updates();
        if k >= now {
            self.aligned = k == now;
            return None;
        }
        // `k` must be a state replay passed through (between two outcomes it learned),
        // and still remembered.
        let passed = self.changes.iter().any(|c| c.0 == k || c.1 == k);
        let reaches = self.changes.len() < REWIND || self.changes.front().is_some_and(|f| f.1 <= k);
        if !self.aligned || !passed || !reaches {
            return None;
        }
        let mut then: HashMap<CellKey, &Arc<Weights>> = HashMap::new();
        for (_, after, cell, before) in self.changes.iter().rev() {
            if *after <= k {
                break;
            }
            // Newest first: the oldest change after `k` has the state as of `k`.
            then.insert(*cell, before);
        }
        let mut cells = Vec::with_capacity(then.len());
        for (cell, weights) in then {
            for model in catalog
                .models
                .iter()
                .filter(|m| m.fingerprint == cell.model)
            {
                model.publish((cell.offer, cell.channel), (**weights).clone());
            }
            cells.push(cell);
        }
        Some(Rewound(cells))
    }
}

impl Rewound {
    fn restore(self, catalog: &Catalog, learning: &Learning) {
        for cell in self.0 {
            for model in catalog
                .models
                .iter()
                .filter(|m| m.fingerprint == cell.model)
            {
                let now = learning
                    .weights(&cell)
                    .cloned()
                    .unwrap_or_else(|| model.prior().clone());
                model.publish((cell.offer, cell.channel), now);
            }
        }
    }
}

/// Reads every shown slot of the journal of the data directory `data`, decided at or after `from` and before
/// `to`, with the rewards joined within `window` ms, under `reference` (whose schema the
/// attribute values are read in and whose history limits the rebuilt histories keep),
/// and what each of `targets` would have shown there.
pub fn read(
    data: &Path,
    reference: &Catalog,
    targets: &[Target],
    reward: Reward,
    window: i64,
    (from, to): (Option<i64>, Option<i64>),
) -> std::io::Result<Log> {
    let journal = data.join("journal");
    if !journal.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("`{}` has no journal", data.display()),
        ));
    }
    let dir = journal.as_path();
    let outcomes = Outcomes::collect(dir)?;
    let mut log = Log {
        outcomes: outcomes.count,
        ..Log::default()
    };
    let limits = targets
        .iter()
        .map(|t| HistoryLimits::for_catalog(&t.catalog))
        .fold(HistoryLimits::for_catalog(reference), |a, b| {
            HistoryLimits {
                max_events: a.max_events.max(b.max_events),
                max_age: a.max_age.max(b.max_age),
            }
        });
    let mut histories: HashMap<String, History> = HashMap::new();
    // Each target's adaptive models learn from the journal's outcomes in its order, as
    // the node's did: a decision is scored by what they had learned before it.
    let mut learnings: Vec<Learning> = targets.iter().map(|_| Default::default()).collect();
    let mut rewinds: Vec<Rewind> = targets.iter().map(|_| Rewind::default()).collect();
    let empty = History::default();
    let mut reader = Reader::open(dir, Position::default())?;
    while let Some((_, _, record)) = reader.next_record()? {
        let d = match record {
            Record::Outcome(o) => {
                for ((t, learning), rewind) in targets.iter().zip(&mut learnings).zip(&mut rewinds)
                {
                    let before = learning.updates();
                    let learned = t.catalog.learn(learning, &o.response());
                    rewind.keep(&t.catalog, (before, learning.updates()), &learned.changed);
                    learning.publish(&t.catalog.models, &learned.changed);
                }
                if let (Some(customer), Some(channel)) = (&o.customer, &o.channel) {
                    let event = Event::new(o.at, &o.offer, o.group.as_deref(), channel, o.kind);
                    histories
                        .entry(customer.clone())
                        .or_default()
                        .record(event, limits, o.accepted);
                }
                continue;
            }
            Record::Forget(f) => {
                histories.remove(&f.customer);
                continue;
            }
            Record::Decision(d) => d,
            Record::Upsert(_) => continue,
        };
        if from.is_some_and(|f| d.at < f) || to.is_some_and(|t| d.at >= t) {
            continue;
        }
        log.decisions += 1;
        let choices = slot_choices(&d);
        if choices.is_empty() {
            log.skipped += 1;
            continue;
        }
        let history = d
            .customer
            .as_ref()
            .and_then(|c| histories.get(c))
            .unwrap_or(&empty);
        let shown: Vec<&str> = choices
            .iter()
            .map(|c| d.candidates[c.actions[c.chosen]].offer.as_str())
            .collect();
        let per_target: Vec<_> = targets
            .iter()
            .zip(&learnings)
            .zip(&mut rewinds)
            .map(|((t, learning), rewind)| {
                // The logging catalog scores the decision with the learning state the
                // node scored it with, not with what was learned between its scoring
                // and its record.
                let back = d
                    .learned
                    .filter(|_| *t.catalog.version == *d.catalog_version)
                    .and_then(|k| rewind.to(&t.catalog, learning, &d, k));
                let distributions = target_distributions(
                    &t.catalog,
                    &d,
                    history,
                    &shown[..shown.len() - 1],
                    &mut log.offers,
                );
                if let Some(back) = back {
                    back.restore(&t.catalog, learning);
                }
                distributions
            })
            .collect();
        let customer_values = values(&d.features, "customer.", &reference.schema.customer);
        let context_values = values(&d.features, "context.", &reference.schema.context);
        let placement = log.placements.intern(&d.placement);
        let channel = log.channels.intern(&d.channel);
        let arm = d.arm.as_deref().map(|a| log.arms.intern(a));
        for (k, choice) in choices.iter().enumerate() {
            let offer = &d.candidates[choice.actions[choice.chosen]].offer;
            log.slots.push(Slot {
                decision: d.decision_id().as_u128(),
                at: d.at,
                customer: d.customer.clone(),
                placement,
                channel,
                arm,
                slot: choice.slot,
                customer_values: customer_values.clone(),
                context_values: context_values.clone(),
                chosen: log.offers.intern(offer),
                reward: outcomes.reward(&d, offer, window, reward),
                logged: choice
                    .actions
                    .iter()
                    .zip(&choice.probabilities)
                    .map(|(&a, &p)| (log.offers.intern(&d.candidates[a].offer), p))
                    .collect(),
                targets: per_target.iter().map(|t| t[k].clone()).collect(),
            });
        }
    }
    log.damage = outcomes
        .damage
        .iter()
        .chain(&reader.damage)
        .map(ToString::to_string)
        .collect();
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Db, DbOptions};
    use crate::learn::{scenario::Scenario, simulate};

    /// The logging catalog replayed as a target gives, in every logged slot, exactly the
    /// distribution the log holds: same candidates (eligibility on the snapshot, contact
    /// policies on the rebuilt history), same arm and epsilon, same arbitration.
    #[test]
    fn the_logging_catalog_replayed_reproduces_the_logged_distributions() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let load = || Catalog::load(root.join("rules")).expect("sample catalog");
        let catalog = Arc::new(load());
        let mut scenario =
            Scenario::load(&root.join("scenarios/telco.yaml"), &catalog).expect("scenario");
        scenario.customers = 150;
        scenario.days = 6;
        scenario.visits_per_day = 3.0;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut options = DbOptions::default();
        options.writer.sync = crate::storage::writer::SyncMode::Never;
        let (db, _) = Db::open(dir.path(), Arc::clone(&catalog), options).expect("open");
        let summary = simulate::run(&db, &scenario, 11, &mut |_, _| {}).expect("run");
        db.close().expect("close");
        assert!(summary.empty > 0, "contact policies bit: {summary:?}");

        let target = Target::new("same", load(), Mode::AsWritten);
        let log = read(
            dir.path(),
            &catalog,
            &[target],
            Reward::Value,
            7 * 86_400_000,
            (None, None),
        )
        .expect("read");
        assert!(log.slots.len() > 2000, "{} slots", log.slots.len());
        let sorted = |d: &[(u32, f64)]| {
            let mut d = d.to_vec();
            d.sort_by_key(|a| a.0);
            d
        };
        for s in &log.slots {
            let (want, got) = (sorted(&s.logged), sorted(&s.targets[0]));
            assert_eq!(want.len(), got.len(), "{s:?}");
            for (w, g) in want.iter().zip(&got) {
                assert_eq!(w.0, g.0, "{s:?}");
                assert!((w.1 - g.1).abs() < 1e-12, "{s:?}");
            }
        }
    }
}
