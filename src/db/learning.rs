//! Adaptive models on the node (see `adaptive`): the decision's predictor values kept
//! for its outcomes, written into each outcome's record, and learned from in journal
//! order.
//!
//! What a model learns from is in the journal itself: an outcome's record carries the
//! values its decision saw (`OutcomeRecord::inputs`), taken from a bounded memory of
//! recent decisions' values when the node accepts it. Learning reads only the record, so
//! replay, a restart and every node of a cluster learn the same weights from the same
//! records. The memory is a cache for writing records: an outcome of a decision it no
//! longer holds (or never did: made on another node of a cluster) carries no values and
//! teaches nothing, counted as skipped.
//!
//! Learning happens under the budget counters' lock, which orders it with the journal
//! appends (as counting does, see `budget`), so a snapshot taken at a rotation holds
//! exactly the learning of the records before its position.

use std::sync::atomic::Ordering;

use super::*;
use crate::adaptive::{CellKey, Learned, Learning, Monitor};
use crate::catalog::OfferIdx;
use crate::decide::Decision;
use crate::journal::DecisionRecord;
use crate::schema::{Entity, Feature};

/// What the node's learning has done since it opened.
#[derive(Debug, Default)]
pub(super) struct Counts {
    pub positives: std::sync::atomic::AtomicU64,
    pub negatives: std::sync::atomic::AtomicU64,
    pub skipped: std::sync::atomic::AtomicU64,
}

/// Figures of the node's adaptive models, for metrics and status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LearningStatus {
    /// Responses learned as positive and as negative since the node opened (replay
    /// included), and outcomes a model could not learn from (no values known, too late,
    /// no room).
    pub positives: u64,
    pub negatives: u64,
    pub skipped: u64,
    /// Impressions waiting for their window to close.
    pub pending: usize,
    /// Per model and offer (and channel): responses, positives, and the prediction of the
    /// model with no feature set (its base rate now).
    pub cells: Vec<CellStatus>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CellStatus {
    pub model: String,
    pub offer: String,
    /// The channel, for a model that learns per channel.
    pub channel: Option<String>,
    pub responses: u64,
    pub positives: u64,
    pub base_rate: f64,
    /// Rolling (a half-life of `adaptive::monitor::HALF_LIFE` responses), each response
    /// scored before it was learned from: the AUC (`None` without both positives and
    /// negatives), the calibration (positive rate over mean prediction; 1 is calibrated)
    /// and the decayed count of responses they weigh.
    pub auc: Option<f64>,
    pub calibration: Option<f64>,
    pub recent: f64,
    /// Positives over 200, at most 1 (`adaptive::monitor::maturity`).
    pub maturity: f64,
    /// The rolling reliability curve, lowest prediction first.
    pub reliability: Vec<crate::adaptive::monitor::Reliability>,
}

/// The figures of every cell of the catalog's models (an offer that reads one, and its
/// channel for a model per channel), from what `learning` learned (the prior where it
/// learned nothing yet), in (model, offer, channel) order.
pub fn cell_statuses(catalog: &Catalog, learning: &Learning) -> Vec<CellStatus> {
    let mut cells = Vec::new();
    for model in &catalog.models {
        for ((offer, channel_key), _) in model.cells() {
            let Some(o) = catalog.offer_by_key(offer) else {
                continue;
            };
            let channel = (channel_key != 0).then(|| {
                catalog
                    .placements
                    .iter()
                    .find(|p| p.channel_key == channel_key)
                    .map_or_else(|| format!("{channel_key:08x}"), |p| p.channel.clone())
            });
            let cell = CellKey {
                model: model.fingerprint,
                offer,
                channel: channel_key,
            };
            let w = learning.weights(&cell).unwrap_or(model.prior());
            let monitor = learning.monitor(&cell);
            cells.push(CellStatus {
                model: model.id.clone(),
                offer: catalog.offers[o].id.clone(),
                channel,
                responses: w.responses,
                positives: w.positives,
                base_rate: model.probit.predict(w, &[]),
                auc: monitor.and_then(Monitor::auc),
                calibration: monitor.and_then(Monitor::calibration),
                recent: monitor.map_or(0.0, Monitor::weight),
                maturity: crate::adaptive::monitor::maturity(w.positives),
                reliability: monitor.map_or_else(Vec::new, Monitor::reliability),
            });
        }
    }
    cells.sort_by(|a, b| (&a.model, &a.offer, &a.channel).cmp(&(&b.model, &b.offer, &b.channel)));
    cells
}

impl Db {
    /// Keeps the values of the predictors of the models the decision's shown offers read,
    /// for the records of its outcomes. Nothing for a catalog without models.
    pub(super) fn keep_inputs(
        &self,
        catalog: &Catalog,
        customer: &[Value],
        context: &[Value],
        decision: &Decision,
    ) {
        if catalog.models.is_empty() {
            return;
        }
        let models: Vec<_> = decision
            .offers
            .iter()
            .flat_map(|s| catalog.models_of(s.offer))
            .collect();
        if models.is_empty() {
            return;
        }
        let mut inputs: Vec<(String, Feature)> = Vec::new();
        for p in models.iter().flat_map(|m| &m.predictors) {
            if inputs.iter().any(|(n, _)| *n == p.name) {
                continue;
            }
            let (values, schema) = match p.entity {
                Entity::Customer => (customer, &catalog.schema.customer),
                _ => (context, &catalog.schema.context),
            };
            let value = match values.get(p.slot as usize) {
                None | Some(Value::Missing) => &p.default,
                Some(v) => v,
            };
            if let Some(f) = schema.get(p.slot).and_then(|a| Feature::of(value, &a.ty)) {
                inputs.push((p.name.clone(), f));
            }
        }
        if let Ok(bytes) = postcard::to_allocvec(&inputs) {
            self.inputs.insert(decision.id, Arc::from(bytes));
        }
    }

    /// As [`Db::keep_inputs`], from a decision's journal record (replay, or a decision
    /// another node of a cluster made): the record names every value the decision read.
    pub(super) fn keep_record_inputs(&self, catalog: &Catalog, r: &DecisionRecord) {
        if catalog.models.is_empty() {
            return;
        }
        let models: Vec<_> = r
            .shown
            .iter()
            .filter_map(|s| catalog.offer(&s.offer))
            .flat_map(|o| catalog.models_of(o))
            .collect();
        if models.is_empty() {
            return;
        }
        let inputs: Vec<(String, Feature)> = r
            .features
            .iter()
            .filter(|(name, _)| models.iter().any(|m| m.reads().any(|n| n == name)))
            .cloned()
            .collect();
        if let Ok(bytes) = postcard::to_allocvec(&inputs) {
            self.inputs.insert(r.decision_id(), Arc::from(bytes));
        }
    }

    /// Drops the predictor values kept for a forgotten customer's decisions (while the
    /// recent decisions still say whose they are): no later outcome record carries them.
    pub(super) fn forget_inputs(&self, customer: &str) {
        self.inputs.retain(|id, _| {
            self.decisions
                .get(id)
                .is_none_or(|r| r.customer() != customer)
        });
    }

    /// The values a decision's outcome record carries for the models of `offer`.
    pub(super) fn inputs_for(
        &self,
        catalog: &Catalog,
        decision: Uuid,
        offer: OfferIdx,
    ) -> Option<Vec<(String, Feature)>> {
        if catalog.models.is_empty() || catalog.models_of(offer).is_empty() {
            return None;
        }
        let bytes = self.inputs.get(&decision)?;
        postcard::from_bytes(&bytes).ok()
    }

    /// Learns an outcome as journaled, in journal order: the caller holds the budget
    /// counters' lock (or replays).
    pub(super) fn learn(&self, r: &OutcomeRecord) {
        // The lock first: a catalog swap holds it (`relearn`), so the view loaded under it
        // is the one the swap left, never one it is replacing.
        let mut learning = self.learning.lock().unwrap_or_else(|e| e.into_inner());
        let view = self.view.load();
        let catalog = &view.catalog;
        if catalog.models.is_empty() {
            return;
        }
        let before = learning.updates();
        let learned = catalog.learn(&mut learning, &r.response());
        if !learned.changed.is_empty() {
            // A sequence lock around the publication: a decision that read weights while
            // it was under way scores again (`decide_consistent`).
            self.published.store(before << 1 | 1, Ordering::Relaxed);
            std::sync::atomic::fence(Ordering::Release);
            learning.publish(&catalog.models, &learned.changed);
            self.published
                .store(learning.updates() << 1, Ordering::Release);
        }
        self.count_learned(&learned);
    }

    /// Runs `decide` (a pure decision) so that its scores read one published learning
    /// state, and says which (`Decision::learned`: the responses learned before it): with
    /// adaptive models, a decision during which weights were published is made again
    /// (the same draws: it is the same decision, scored anew), at most three times more;
    /// past that it goes unnamed (`None`). Without models, `decide` as it is.
    pub fn decide_consistent(
        &self,
        catalog: &Catalog,
        mut decide: impl FnMut() -> Decision,
    ) -> Decision {
        if catalog.models.is_empty() {
            return decide();
        }
        let mut decision = None;
        for _ in 0..4 {
            let mut before = self.published.load(Ordering::Acquire);
            // Weights being published: a few hundred nanoseconds; wait rather than
            // score with them half done.
            for _ in 0..10_000 {
                if before & 1 == 0 {
                    break;
                }
                std::hint::spin_loop();
                before = self.published.load(Ordering::Acquire);
            }
            let mut d = decide();
            std::sync::atomic::fence(Ordering::Acquire);
            let after = self.published.load(Ordering::Relaxed);
            if before & 1 == 0 && before == after {
                d.learned = Some(before >> 1);
                return d;
            }
            decision = Some(d);
            std::hint::spin_loop();
        }
        self.unnamed.fetch_add(1, Ordering::Relaxed);
        decision.expect("decided at least once")
    }

    /// Decisions with adaptive models that went unnamed (`decide_consistent`).
    pub fn unnamed_decisions(&self) -> u64 {
        self.unnamed.load(Ordering::Relaxed)
    }

    fn count_learned(&self, l: &Learned) {
        let c = &self.learned;
        c.positives
            .fetch_add(u64::from(l.positives), Ordering::Relaxed);
        c.negatives
            .fetch_add(u64::from(l.negatives), Ordering::Relaxed);
        c.skipped.fetch_add(u64::from(l.skipped), Ordering::Relaxed);
    }

    /// A copy of the learning state (a snapshot's, or a test's).
    pub fn learning(&self) -> Learning {
        self.learning
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The figures of the node's adaptive models.
    pub fn learning_status(&self) -> LearningStatus {
        let catalog = self.catalog();
        let learning = self.learning.lock().unwrap_or_else(|e| e.into_inner());
        let cells = cell_statuses(&catalog, &learning);
        LearningStatus {
            positives: self.learned.positives.load(Ordering::Relaxed),
            negatives: self.learned.negatives.load(Ordering::Relaxed),
            skipped: self.learned.skipped.load(Ordering::Relaxed),
            pending: learning.pending(),
            cells,
        }
    }

    /// A digest of the learning state: equal on two nodes (or before and after a restart)
    /// that learned the same (`Learning::digest`). It hashes every waiting impression
    /// under the learning lock, which outcomes wait for: part of `Status`, not of
    /// `/metrics`.
    pub fn learning_digest(&self) -> u64 {
        self.learning
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .digest()
    }

    /// Swaps the learning to a catalog's models, holding the lock learning takes: the
    /// state of models whose definition is the same is kept and published to the new
    /// catalog's cells, the rest dropped. Returns the cells dropped. `swap` makes the
    /// catalog the one in force while the lock is held, so no outcome learns in between.
    pub(super) fn relearn(&self, catalog: &Catalog, swap: impl FnOnce()) -> usize {
        let mut learning = self.learning.lock().unwrap_or_else(|e| e.into_inner());
        let dropped = learning.retain(&catalog.models);
        learning.publish_all(&catalog.models);
        self.published
            .store(learning.updates() << 1, Ordering::Release);
        swap();
        dropped
    }
}
