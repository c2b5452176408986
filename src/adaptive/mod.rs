//! Adaptive propensity models: declared in the catalog (`models.yaml`), read by
//! `adaptive('id')` in a propensity, and learned online from outcomes in journal order
//! (docs/learning.md, "Adaptive models").
//!
//! A [`Model`] is a definition (its predictors and how each becomes features, which
//! outcome kinds are positive and which negative, the response window, the learner's
//! prior) plus the cells decide reads: one set of [`Weights`] per offer that uses it (and
//! per channel where it says so), each behind an `ArcSwap`, so a decision reads weights
//! without a lock while outcomes are learned. [`Learning`] is the state the learning
//! writes, in journal order under the database's counting lock: the authoritative
//! weights, the impressions waiting for a response until their window closes, and the
//! journal's clock. The same records in the same order give the same `Learning` bit for
//! bit, on the node that took them, on replay and after a restart.
//!
//! Every predictor becomes indicators: a number falls into one of its bins, a bool and an
//! enum take one indicator per value, a set one per listed member it holds, a string one
//! per listed value; and each has one more, set when none of those is (unset with no
//! default, another string, a set holding no listed member), as Pega's adaptive models
//! bin missing values. So every predictor sets at least one feature, and a model with no
//! responses predicts its prior rate for every customer whose predictors set one feature
//! each (a set holding several listed members sets more, which widens it toward 1/2).

mod learner;
pub mod monitor;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

pub use self::learner::{Gaussian, Probit, Weights, inverse_normal_cdf, normal_cdf};
pub use self::monitor::Monitor;
use crate::schema::{Entity, EventKind, Feature, Value};

/// At most this many features are set for one decision (what `models.yaml` checks): the
/// prediction encodes them into a buffer on the stack.
pub const MAX_ACTIVE: usize = 64;

/// How one predictor becomes features.
#[derive(Debug, Clone, PartialEq)]
pub enum Encoding {
    /// A number, by the bin it falls in: below the first edge is bin 0, from edge `i - 1`
    /// (inclusive) to edge `i` is bin `i`, from the last edge on is the last bin.
    Bins(Box<[f64]>),
    /// `false` and `true`.
    Bool,
    /// One indicator per variant, by name.
    Enum(Box<[Box<str>]>),
    /// A set: one indicator per listed member it holds.
    Members(Box<[Box<str>]>),
    /// A string: one indicator per listed value (another value sets none).
    Strings(Box<[Box<str>]>),
}

impl Encoding {
    /// How many features it has: its values' and the one for none of them, the last.
    pub fn width(&self) -> u32 {
        self.values() + 1
    }

    fn values(&self) -> u32 {
        let n = match self {
            Encoding::Bins(edges) => edges.len() + 1,
            Encoding::Bool => 2,
            Encoding::Enum(names) | Encoding::Members(names) | Encoding::Strings(names) => {
                names.len()
            }
        };
        n as u32
    }

    /// How many features one value may set at most.
    pub fn max_active(&self) -> u32 {
        match self {
            Encoding::Members(names) => names.len() as u32,
            _ => 1,
        }
    }

    fn bin(edges: &[f64], x: f64) -> Option<u32> {
        x.is_finite()
            .then(|| edges.partition_point(|&e| e <= x) as u32)
    }

    /// The features (relative to the predictor) that a value sets: the last when none of
    /// its values does.
    fn of_value(&self, v: &Value, out: &mut impl FnMut(u32)) {
        let mut set = false;
        self.of_value_only(v, &mut |i| {
            set = true;
            out(i)
        });
        if !set {
            out(self.values());
        }
    }

    fn of_value_only(&self, v: &Value, out: &mut impl FnMut(u32)) {
        match (self, v) {
            (Encoding::Bins(edges), Value::Int(i)) => {
                Encoding::bin(edges, *i as f64).map_or((), out)
            }
            (Encoding::Bins(edges), Value::Float(x)) => Encoding::bin(edges, *x).map_or((), out),
            (Encoding::Bool, Value::Bool(b)) => out(u32::from(*b)),
            (Encoding::Enum(names), Value::Enum(i)) if (*i as usize) < names.len() => out(*i),
            (Encoding::Members(names), Value::Set(items)) => {
                for (i, n) in names.iter().enumerate() {
                    if items.binary_search(n).is_ok() {
                        out(i as u32);
                    }
                }
            }
            (Encoding::Strings(names), Value::Str(s)) => {
                if let Some(i) = names.iter().position(|n| n == s) {
                    out(i as u32);
                }
            }
            _ => {}
        }
    }

    /// The same, of the value as a journal record names it.
    fn of_feature(&self, f: &Feature, out: &mut impl FnMut(u32)) {
        let mut set = false;
        self.of_feature_only(f, &mut |i| {
            set = true;
            out(i)
        });
        if !set {
            out(self.values());
        }
    }

    fn of_feature_only(&self, f: &Feature, out: &mut impl FnMut(u32)) {
        match (self, f) {
            (Encoding::Bins(edges), Feature::Int(i)) => {
                Encoding::bin(edges, *i as f64).map_or((), out)
            }
            (Encoding::Bins(edges), Feature::Float(x)) => Encoding::bin(edges, *x).map_or((), out),
            (Encoding::Bool, Feature::Bool(b)) => out(u32::from(*b)),
            (Encoding::Enum(names), Feature::Enum(s)) => {
                if let Some(i) = names.iter().position(|n| **n == **s) {
                    out(i as u32);
                }
            }
            (Encoding::Members(names), Feature::Set(items)) => {
                for (i, n) in names.iter().enumerate() {
                    if items.iter().any(|m| **m == **n) {
                        out(i as u32);
                    }
                }
            }
            (Encoding::Strings(names), Feature::Str(s)) => {
                if let Some(i) = names.iter().position(|n| **n == **s) {
                    out(i as u32);
                }
            }
            _ => {}
        }
    }
}

/// One input of a model: an attribute and its encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Predictor {
    /// `customer.x` or `context.y`, as journal records name it.
    pub name: String,
    pub entity: Entity,
    pub slot: u32,
    pub encoding: Encoding,
    /// What stands in when the attribute is unset (its schema default, or `Missing`).
    pub default: Value,
    /// The index of its first feature in the model's weights.
    pub offset: u32,
}

/// A set of outcome kinds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Kinds(u8);

impl Kinds {
    pub fn with(self, kind: EventKind) -> Kinds {
        Kinds(self.0 | 1 << kind as u8)
    }

    pub fn contains(self, kind: EventKind) -> bool {
        self.0 & (1 << kind as u8) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = EventKind> {
        EventKind::ALL
            .into_iter()
            .filter(move |k| self.contains(*k))
    }
}

/// A model as `models.yaml` declares it, with the cells decisions read.
pub struct Model {
    pub id: String,
    /// A hash of everything that defines what it learns: a reloaded catalog keeps the
    /// state of a model whose fingerprint did not change.
    pub fingerprint: u64,
    pub description: Option<String>,
    pub predictors: Vec<Predictor>,
    /// The number of features (the weights' width).
    pub width: u32,
    pub positive: Kinds,
    pub negative: Kinds,
    /// How long after a decision its outcomes are learned from (ms); an impression with
    /// no positive or negative within it is learned as a negative when it closes.
    pub window: i64,
    /// One set of weights per offer and channel, not per offer.
    pub per_channel: bool,
    /// The response rate an offer with no responses is scored at (`prior`).
    pub prior_rate: f64,
    pub probit: Probit,
    prior: Arc<Weights>,
    /// (offer key, channel key or 0) -> the weights decide reads; set once the catalog's
    /// offers are known.
    cells: OnceLock<HashMap<(u32, u32), ArcSwap<Weights>, BuildKeys>>,
}

/// Hashes a cell's (offer key, channel key): both are hashes already (`schema::key`),
/// so mixing them is enough, and a decision looks up one per adaptive offer.
#[derive(Debug, Clone, Copy, Default)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0.rotate_left(32) ^ u64::from(n)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type BuildKeys = std::hash::BuildHasherDefault<KeyHasher>;

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("id", &self.id)
            .field("fingerprint", &format_args!("{:016x}", self.fingerprint))
            .finish_non_exhaustive()
    }
}

impl PartialEq for Model {
    fn eq(&self, other: &Model) -> bool {
        self.id == other.id && self.fingerprint == other.fingerprint
    }
}

/// What a model is made of, before its cells exist.
#[derive(Debug, Clone)]
pub struct Definition {
    pub id: String,
    pub description: Option<String>,
    pub predictors: Vec<Predictor>,
    pub positive: Kinds,
    pub negative: Kinds,
    pub window: i64,
    pub per_channel: bool,
    /// The response rate an offer with no responses is scored at.
    pub prior_rate: f64,
    pub probit: Probit,
}

impl Model {
    pub fn new(mut def: Definition) -> Model {
        let mut offset = 0;
        for p in &mut def.predictors {
            p.offset = offset;
            offset += p.encoding.width();
        }
        // What defines what it learns, by name (a slot moves when the schema gains an
        // attribute; the model does not change for that).
        let predictors: Vec<_> = def
            .predictors
            .iter()
            .map(|p| (&p.name, &p.encoding, &p.default))
            .collect();
        let fingerprint = xxhash_rust::xxh3::xxh3_64(
            format!(
                "{:?}",
                (
                    &def.id,
                    predictors,
                    def.positive,
                    def.negative,
                    def.window,
                    def.per_channel,
                    def.probit
                )
            )
            .as_bytes(),
        );
        Model {
            prior: Arc::new(def.probit.weights(offset as usize)),
            id: def.id,
            fingerprint,
            description: def.description,
            predictors: def.predictors,
            width: offset,
            positive: def.positive,
            negative: def.negative,
            window: def.window,
            per_channel: def.per_channel,
            prior_rate: def.prior_rate,
            probit: def.probit,
            cells: OnceLock::new(),
        }
    }

    /// Fresh weights: what an offer with no responses predicts from.
    pub fn prior(&self) -> &Weights {
        &self.prior
    }

    /// The cell of an offer in a channel: channel 0 for a model that is not per channel.
    pub fn cell_key(&self, offer: u32, channel: u32) -> (u32, u32) {
        (offer, if self.per_channel { channel } else { 0 })
    }

    /// Makes the cells of these (offer, channel) pairs, at their prior. Once only: a
    /// catalog's models get their cells when its offers are known.
    pub fn set_cells(&self, keys: impl IntoIterator<Item = (u32, u32)>) {
        let cells = keys
            .into_iter()
            .map(|k| (k, ArcSwap::new(Arc::clone(&self.prior))))
            .collect();
        let _ = self.cells.set(cells);
    }

    /// The cells, by (offer key, channel key or 0).
    pub fn cells(&self) -> impl Iterator<Item = ((u32, u32), Arc<Weights>)> + '_ {
        self.cells
            .get()
            .into_iter()
            .flatten()
            .map(|(k, c)| (*k, c.load_full()))
    }

    /// The weights published now in a cell (by offer key and channel key or 0).
    pub fn published(&self, cell: (u32, u32)) -> Option<Arc<Weights>> {
        self.cells.get()?.get(&cell).map(ArcSwap::load_full)
    }

    /// Publishes a cell's weights to the decisions that read it.
    pub fn publish(&self, cell: (u32, u32), weights: Weights) {
        if let Some(c) = self.cells.get().and_then(|cells| cells.get(&cell)) {
            c.store(Arc::new(weights));
        }
    }

    /// The features a customer and context set (indices into the weights), into `buf`.
    pub fn features_of_values<'b>(
        &self,
        customer: &[Value],
        context: &[Value],
        buf: &'b mut [(u32, f64); MAX_ACTIVE],
    ) -> &'b [(u32, f64)] {
        let mut n = 0;
        for p in &self.predictors {
            let values = if p.entity == Entity::Customer {
                customer
            } else {
                context
            };
            let v = match values.get(p.slot as usize) {
                None | Some(Value::Missing) => &p.default,
                Some(v) => v,
            };
            p.encoding.of_value(v, &mut |i| {
                if n < MAX_ACTIVE {
                    buf[n] = (p.offset + i, 1.0);
                    n += 1;
                }
            });
        }
        &buf[..n]
    }

    /// The features of a decision as its journal record names its values (`customer.x`,
    /// `context.y`); an attribute not named reads as its default.
    pub fn features_of_record(&self, named: &[(String, Feature)]) -> Vec<u32> {
        let mut out = Vec::new();
        for p in &self.predictors {
            let mut push = |i| {
                if out.len() < MAX_ACTIVE {
                    out.push(p.offset + i);
                }
            };
            match named.iter().find(|(n, _)| *n == p.name) {
                Some((_, f)) => p.encoding.of_feature(f, &mut push),
                None => p.encoding.of_value(&p.default, &mut push),
            }
        }
        out
    }

    /// The predicted probability of a positive response of `offer` in `channel` for this
    /// customer and context, from the weights published now.
    #[inline]
    pub fn predict(&self, offer: u32, channel: u32, customer: &[Value], context: &[Value]) -> f64 {
        let mut buf = [(0, 0.0); MAX_ACTIVE];
        let x = self.features_of_values(customer, context, &mut buf);
        self.predict_features(offer, channel, x)
    }

    /// The same, with the features encoded once per decision: the first offer that reads
    /// this model fills `memo`, the others read it (a decision's customer and context do
    /// not change between its offers).
    #[inline]
    pub fn predict_memo(
        &self,
        offer: u32,
        channel: u32,
        customer: &[Value],
        context: &[Value],
        memo: &FeatureMemo,
    ) -> f64 {
        let me = self as *const Model as usize;
        let mut buf = memo.buf.borrow_mut();
        if memo.model.get() != me {
            let n = self.features_of_values(customer, context, &mut buf).len();
            memo.n.set(n);
            memo.model.set(me);
        }
        self.predict_features(offer, channel, &buf[..memo.n.get()])
    }

    fn predict_features(&self, offer: u32, channel: u32, x: &[(u32, f64)]) -> f64 {
        let cell = self
            .cells
            .get()
            .and_then(|cells| cells.get(&self.cell_key(offer, channel)));
        match cell {
            Some(c) => self.probit.predict(&c.load(), x),
            None => self.probit.predict(&self.prior, x),
        }
    }

    /// The names of the attributes it reads.
    pub fn reads(&self) -> impl Iterator<Item = &str> {
        self.predictors.iter().map(|p| p.name.as_str())
    }
}

/// One decision's features of the model it last encoded them for (by address: the
/// memo lives no longer than the decision, and the catalog and its models outlive it).
pub struct FeatureMemo {
    model: Cell<usize>,
    n: Cell<usize>,
    buf: RefCell<[(u32, f64); MAX_ACTIVE]>,
}

impl std::fmt::Debug for FeatureMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureMemo")
            .field("n", &self.n.get())
            .finish_non_exhaustive()
    }
}

impl Default for FeatureMemo {
    fn default() -> FeatureMemo {
        FeatureMemo {
            model: Cell::new(0),
            n: Cell::new(0),
            buf: RefCell::new([(0, 0.0); MAX_ACTIVE]),
        }
    }
}

/// A cell of [`Learning`]: the model (by fingerprint), the offer and the channel (0 for a
/// model that is not per channel), by their keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CellKey {
    pub model: u64,
    pub offer: u32,
    pub channel: u32,
}

/// An impression (or a response) of one offer of one decision, for one model, until
/// its window closes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub decision: u128,
    pub cell: CellKey,
    /// When its window closes (ms, the journal's clock).
    pub closes: i64,
    pub features: Box<[u32]>,
    /// Learned already (a positive or a negative came): nothing more is.
    pub resolved: bool,
}

/// An outcome, as learning sees it.
#[derive(Debug, Clone, Copy)]
pub struct Response<'a> {
    pub decision: u128,
    /// When the decision was made (ms: the time in its id).
    pub decided: i64,
    pub offer: u32,
    pub channel: u32,
    pub kind: EventKind,
    /// When the node accepted it: the journal's clock.
    pub accepted: i64,
    /// The decision's values of the predictors, as the outcome's record carries them;
    /// `None` when the node did not know them (nothing is learned then).
    pub inputs: Option<&'a [(String, Feature)]>,
}

/// A response about to be learned (see [`Learning::learn_observed`]).
#[derive(Debug)]
pub struct Observed<'a> {
    pub model: &'a Model,
    pub cell: CellKey,
    /// The cell's weights before it is learned.
    pub weights: &'a Weights,
    pub features: &'a [u32],
    pub positive: bool,
}

/// What one outcome did to the models.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Learned {
    /// Cells whose weights changed (the window closes it passed included).
    pub changed: Vec<CellKey>,
    pub positives: u32,
    pub negatives: u32,
    /// For a model that would have learned from it, but the outcome did not carry the
    /// decision's inputs, came after the window, or found no room to wait.
    pub skipped: u32,
}

/// At most this many impressions wait for their window to close; past it a new one is
/// not learned from (counted), so memory stays bounded whatever the traffic.
pub const MAX_PENDING: usize = 4_000_000;

/// The learning state: authoritative weights, the impressions waiting, and the clock.
/// Changed only in journal order (see the module's documentation).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Learning {
    cells: BTreeMap<CellKey, Weights>,
    /// How well each cell predicted the responses it learned from.
    monitors: BTreeMap<CellKey, Monitor>,
    pending: HashMap<(u128, u32, u64), Pending>,
    closing: BTreeSet<(i64, u128, u32, u64)>,
    /// The latest acceptance time learned from: windows close by it, not by a timer.
    clock: i64,
    /// Responses learned so far (each update of a cell): the learning state a decision
    /// read is named by it (`DecisionRecord::learned`).
    updates: u64,
}

/// A snapshot's copy of [`Learning`], without the pending impressions (written apart, in
/// chunks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearningHead {
    pub clock: i64,
    pub cells: Vec<(CellKey, Weights)>,
}

impl Learning {
    /// The weights of a cell, if it learned anything.
    pub fn weights(&self, cell: &CellKey) -> Option<&Weights> {
        self.cells.get(cell)
    }

    /// Every cell that learned, in key order.
    pub fn cells(&self) -> impl Iterator<Item = (&CellKey, &Weights)> {
        self.cells.iter()
    }

    /// Impressions waiting for their window to close.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn clock(&self) -> i64 {
        self.clock
    }

    /// Responses learned so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Restores a snapshot's count of responses learned.
    pub fn restore_updates(&mut self, updates: u64) {
        self.updates = updates;
    }

    /// Learns one outcome. `models` are the models of the outcome's offer in the catalog
    /// in force; the windows that the outcome's time closes are learned first, for every
    /// model still in `all`.
    pub fn learn(
        &mut self,
        all: &[Arc<Model>],
        models: &[Arc<Model>],
        r: &Response<'_>,
    ) -> Learned {
        self.learn_observed(all, models, r, &mut |_| {})
    }

    /// The same, showing `observe` each response as it is about to be learned, with the
    /// weights it is learned into (to measure another learner on the same stream).
    pub fn learn_observed(
        &mut self,
        all: &[Arc<Model>],
        models: &[Arc<Model>],
        r: &Response<'_>,
        observe: &mut dyn FnMut(&Observed<'_>),
    ) -> Learned {
        let mut learned = Learned::default();
        self.advance(all, r.accepted, &mut learned, observe);
        for model in models {
            let positive = model.positive.contains(r.kind);
            let negative = model.negative.contains(r.kind);
            if !positive && !negative && r.kind != EventKind::Impression {
                continue;
            }
            let closes = r.decided.saturating_add(model.window);
            // Closed by the journal's clock (which the outcome's own time may lag behind,
            // when requests raced to the journal): learned already if it was waiting, and
            // never opened again.
            if closes < self.clock {
                learned.skipped += 1;
                continue;
            }
            // A model per channel needs the channel: an outcome of a decision the node did
            // not remember, without one, would teach a cell no decision reads.
            if model.per_channel && r.channel == 0 {
                learned.skipped += 1;
                continue;
            }
            let (offer, channel) = model.cell_key(r.offer, r.channel);
            let cell = CellKey {
                model: model.fingerprint,
                offer,
                channel,
            };
            let id = (r.decision, r.offer, model.fingerprint);
            if let Some(p) = self.pending.get_mut(&id) {
                if p.resolved || !(positive || negative) {
                    continue;
                }
                p.resolved = true;
                let features = std::mem::take(&mut p.features);
                self.update(model, cell, &features, positive, &mut learned, observe);
                continue;
            }
            let Some(inputs) = r.inputs else {
                learned.skipped += 1;
                continue;
            };
            let features = model.features_of_record(inputs);
            let resolved = positive || negative;
            if resolved {
                self.update(model, cell, &features, positive, &mut learned, observe);
            }
            // Past the bound an impression is not waited for (a response already learned
            // is only not remembered: a second one of the same impression would teach
            // again, which only a full table allows).
            if self.pending.len() >= MAX_PENDING {
                learned.skipped += u32::from(!resolved);
                continue;
            }
            self.closing
                .insert((closes, r.decision, r.offer, model.fingerprint));
            self.pending.insert(
                id,
                Pending {
                    decision: r.decision,
                    cell,
                    closes,
                    features: if resolved {
                        Box::default()
                    } else {
                        features.into()
                    },
                    resolved,
                },
            );
        }
        learned
    }

    /// Moves the clock to `now` and closes the windows that end before it: an impression
    /// with no response is learned as a negative.
    fn advance(
        &mut self,
        all: &[Arc<Model>],
        now: i64,
        learned: &mut Learned,
        observe: &mut dyn FnMut(&Observed<'_>),
    ) {
        self.clock = self.clock.max(now);
        while let Some(&first) = self.closing.first() {
            let (closes, decision, offer, fingerprint) = first;
            if closes >= self.clock {
                break;
            }
            self.closing.pop_first();
            let Some(p) = self.pending.remove(&(decision, offer, fingerprint)) else {
                continue;
            };
            if p.resolved {
                continue;
            }
            if let Some(model) = all.iter().find(|m| m.fingerprint == fingerprint) {
                self.update(model, p.cell, &p.features, false, learned, observe);
            }
        }
    }

    fn update(
        &mut self,
        model: &Model,
        cell: CellKey,
        features: &[u32],
        positive: bool,
        learned: &mut Learned,
        observe: &mut dyn FnMut(&Observed<'_>),
    ) {
        let w = self
            .cells
            .entry(cell)
            .or_insert_with(|| model.prior().clone());
        let mut buf = [(0, 0.0); MAX_ACTIVE];
        let n = features.len().min(MAX_ACTIVE);
        for (b, &i) in buf.iter_mut().zip(&features[..n]) {
            // Encoded by this model's predictors: below its width.
            debug_assert!(i < model.width, "feature {i} of {}", model.width);
            *b = (i.min(model.width.saturating_sub(1)), 1.0);
        }
        observe(&Observed {
            model,
            cell,
            weights: w,
            features: &features[..n],
            positive,
        });
        let z = model.probit.z(w, &buf[..n]);
        self.monitors
            .entry(cell)
            .or_default()
            .record(z, normal_cdf(z), positive);
        model.probit.update(w, &buf[..n], positive);
        self.updates += 1;
        if positive {
            learned.positives += 1;
        } else {
            learned.negatives += 1;
        }
        if !learned.changed.contains(&cell) {
            learned.changed.push(cell);
        }
    }

    /// Keeps the state of the models in `models` and drops the rest (a model removed, or
    /// changed: its fingerprint is another); how many cells were dropped.
    pub fn retain(&mut self, models: &[Arc<Model>]) -> usize {
        let keep = |f: u64| models.iter().any(|m| m.fingerprint == f);
        let before = self.cells.len();
        self.cells.retain(|k, _| keep(k.model));
        self.monitors.retain(|k, _| keep(k.model));
        self.pending.retain(|k, _| keep(k.2));
        self.closing.retain(|k| keep(k.3));
        before - self.cells.len()
    }

    /// Publishes every cell of `models` (the prior for those that learned nothing).
    pub fn publish_all(&self, models: &[Arc<Model>]) {
        for model in models {
            let keys: Vec<_> = model.cells().map(|(k, _)| k).collect();
            for (offer, channel) in keys {
                let cell = CellKey {
                    model: model.fingerprint,
                    offer,
                    channel,
                };
                let w = self
                    .cells
                    .get(&cell)
                    .cloned()
                    .unwrap_or_else(|| model.prior().clone());
                model.publish((offer, channel), w);
            }
        }
    }

    /// Publishes these cells' weights to the models of the catalog in force.
    pub fn publish(&self, models: &[Arc<Model>], cells: &[CellKey]) {
        for cell in cells {
            let Some(w) = self.cells.get(cell) else {
                continue;
            };
            for model in models.iter().filter(|m| m.fingerprint == cell.model) {
                model.publish((cell.offer, cell.channel), w.clone());
            }
        }
    }

    /// The snapshot's copy: the head, and the pending impressions in a fixed order.
    pub fn to_snapshot(&self) -> (LearningHead, Vec<Pending>) {
        let mut pending: Vec<Pending> = self.pending.values().cloned().collect();
        pending.sort_unstable_by_key(|p| (p.closes, p.decision, p.cell.offer, p.cell.model));
        (
            LearningHead {
                clock: self.clock,
                cells: self.cells.iter().map(|(k, w)| (*k, w.clone())).collect(),
            },
            pending,
        )
    }

    /// How well a cell predicted what it learned from, if it learned anything.
    pub fn monitor(&self, cell: &CellKey) -> Option<&Monitor> {
        self.monitors.get(cell)
    }

    /// The snapshot's copy of the monitors, in key order.
    pub fn monitors_snapshot(&self) -> Vec<(CellKey, Monitor)> {
        self.monitors.iter().map(|(k, m)| (*k, m.clone())).collect()
    }

    /// Restores monitors a snapshot held.
    pub fn restore_monitors(&mut self, monitors: Vec<(CellKey, Monitor)>) {
        self.monitors.extend(monitors);
    }

    /// Restores a snapshot's head.
    pub fn restore_head(&mut self, head: LearningHead) {
        self.clock = head.clock;
        self.cells = head.cells.into_iter().collect();
    }

    /// Restores pending impressions a snapshot held.
    pub fn restore_pending(&mut self, pending: Vec<Pending>) {
        for p in pending {
            self.closing
                .insert((p.closes, p.decision, p.cell.offer, p.cell.model));
            self.pending
                .insert((p.decision, p.cell.offer, p.cell.model), p);
        }
    }

    /// A digest of what was learned, equal on nodes (and restarts) that learned the same
    /// records: the clock, the weights and the impressions waiting, each hashed as it is
    /// laid out in a snapshot, the waiting ones summed (so in no order, and with no copy
    /// of them). The monitors and the count of updates are left out: a node restored
    /// from a snapshot older than them counts them from another point.
    pub fn digest(&self) -> u64 {
        use xxhash_rust::xxh3::Xxh3;
        /// Feeds what postcard writes straight into a hash.
        struct Hashing<'a>(&'a mut Xxh3);
        impl std::io::Write for Hashing<'_> {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.update(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        fn hash(value: &impl Serialize) -> u64 {
            let mut h = Xxh3::new();
            let _ = postcard::to_io(value, Hashing(&mut h));
            h.digest()
        }
        let pending = self
            .pending
            .values()
            .fold(0u64, |sum, p| sum.wrapping_add(hash(p)));
        let mut h = Xxh3::new();
        h.update(&self.clock.to_le_bytes());
        for (k, w) in &self.cells {
            h.update(&hash(k).to_le_bytes());
            h.update(&hash(w).to_le_bytes());
        }
        h.update(&(self.pending.len() as u64).to_le_bytes());
        h.update(&pending.to_le_bytes());
        h.digest()
    }
}

#[cfg(test)]
mod tests;
