//! The catalog: offers, placements and experiments, loaded from YAML, validated whole and
//! compiled once into the immutable [`Catalog`] that deciding reads.
//!
//! Loading ([`Catalog::load`]) reads `schema.yaml`, `placements.yaml`, `experiments.yaml`
//! and `offers/*.yaml`, and reports every error it finds at once, each at its file, line
//! and column. A catalog that has any error is not built, so a bad catalog can never
//! replace a good one. YAML types never leave this module: the rest of the crate sees
//! only the domain types below, with every rule compiled and every reference resolved to
//! an index.
//!
//! This module does not decide (that is `decide/`'s job) and does not enforce contact
//! policies; it only models them.

mod diag;
mod load;
pub mod plan;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

pub use diag::{Diagnostic, LoadErrors, Location, Related, SourceFile};
pub use load::{Sources, parse_duration, parse_timestamp};
pub use plan::{Plan, Planned};

use crate::expr::{ExprError, Formula, Predicate};
use crate::schema::Schema;

/// The most slots a placement has, and a request may ask for.
pub const MAX_SLOTS: u32 = 64;

/// Index of an offer in [`Catalog::offers`].
pub type OfferIdx = usize;
/// Index of a placement in [`Catalog::placements`].
pub type PlacementIdx = usize;
/// Index of an experiment in [`Catalog::experiments`].
pub type ExperimentIdx = usize;

/// A validated, compiled catalog.
#[derive(Debug)]
pub struct Catalog {
    /// A short content hash of the catalog's files; every decision records it.
    pub version: std::sync::Arc<str>,
    pub schema: Schema,
    pub offers: Vec<Offer>,
    pub placements: Vec<Placement>,
    pub experiments: Vec<Experiment>,
    /// The adaptive models of `models.yaml`, which `adaptive('id')` reads.
    pub models: Vec<std::sync::Arc<crate::adaptive::Model>>,
    /// Contact policy and budgets beyond single offers: per channel, per group, fatigue.
    pub policy: Policy,
    /// The eligibility clauses the offers share (see [`Offer::clauses`]).
    pub clauses: crate::expr::SharedClauses,
    /// The propensities several offers share (see [`Planned::propensity`]).
    pub formulas: crate::expr::SharedFormulas,
    // INVARIANT: every offer's id and key, mapped to its index (built by `load`; keys are
    // unique, as load refuses two ids with one key).
    by_id: HashMap<Box<str>, OfferIdx>,
    by_key: HashMap<u32, OfferIdx>,
}

impl Catalog {
    /// The offer with this id: one hash lookup (the outcome path and every export row
    /// ask).
    pub fn offer(&self, id: &str) -> Option<OfferIdx> {
        self.by_id.get(id).copied()
    }

    /// Learns one outcome into `learning` by the models of its offer, closing on the way
    /// the windows of every model of the catalog its time passes (see
    /// `adaptive::Learning::learn`): the one way the node, replay, `evaluate` and
    /// `report` learn. Nothing for a catalog without models.
    pub fn learn(
        &self,
        learning: &mut crate::adaptive::Learning,
        r: &crate::adaptive::Response<'_>,
    ) -> crate::adaptive::Learned {
        self.learn_observed(learning, r, &mut |_| {})
    }

    /// The same, showing `observe` each response learned (`Learning::learn_observed`).
    pub fn learn_observed(
        &self,
        learning: &mut crate::adaptive::Learning,
        r: &crate::adaptive::Response<'_>,
        observe: &mut dyn FnMut(&crate::adaptive::Observed<'_>),
    ) -> crate::adaptive::Learned {
        if self.models.is_empty() {
            return Default::default();
        }
        let models = self
            .offer_by_key(r.offer)
            .map(|i| self.models_of(i))
            .unwrap_or_default();
        learning.learn_observed(&self.models, &models, r, observe)
    }

    /// The adaptive models an offer's formulas read: the ones its outcomes teach.
    pub fn models_of(&self, offer: OfferIdx) -> Vec<std::sync::Arc<crate::adaptive::Model>> {
        let o = &self.offers[offer];
        let mut out: Vec<std::sync::Arc<crate::adaptive::Model>> = Vec::new();
        for f in [&o.propensity, &o.value, &o.weight, &o.context_weight] {
            for m in f.models() {
                if !out.iter().any(|x| std::sync::Arc::ptr_eq(x, m)) {
                    out.push(std::sync::Arc::clone(m));
                }
            }
        }
        out
    }

    /// The offer with this [`key`](crate::schema::key).
    pub fn offer_by_key(&self, key: u32) -> Option<OfferIdx> {
        self.by_key.get(&key).copied()
    }

    /// Indexes the offers by id and key (`Catalog::by_id`, `by_key`).
    fn index_offers(offers: &[Offer]) -> (HashMap<Box<str>, OfferIdx>, HashMap<u32, OfferIdx>) {
        let by_id = offers
            .iter()
            .enumerate()
            .map(|(i, o)| (o.id.as_str().into(), i))
            .collect();
        let by_key = offers.iter().enumerate().map(|(i, o)| (o.key, i)).collect();
        (by_id, by_key)
    }

    pub fn placement(&self, id: &str) -> Option<PlacementIdx> {
        self.placements.iter().position(|p| p.id == id)
    }

    pub fn experiment(&self, id: &str) -> Option<ExperimentIdx> {
        self.experiments.iter().position(|e| e.id == id)
    }

    /// The longest stretch of history (ms) any rule, cap or suppression of this catalog
    /// looks at; `i64::MAX` when one looks back without limit (`stop_after_accept`, or a
    /// history function whose window is not a constant). History older than this can go.
    pub fn history_horizon(&self) -> i64 {
        let caps = |caps: &[FrequencyCap]| caps.iter().map(|c| c.within).max().unwrap_or(0);
        let offers = self.offers.iter().map(|o| {
            let p = &o.contact_policy;
            let rules =
                [&o.propensity, &o.value, &o.weight, &o.context_weight].map(|f| f.horizon());
            let suppression = p
                .suppress_after_rejects
                .map_or(0, |s| s.within.max(s.suppress_for));
            let forever = if p.stop_after_accept { i64::MAX } else { 0 };
            [
                o.eligibility.horizon(),
                caps(&p.max_impressions),
                suppression,
                forever,
            ]
            .into_iter()
            .chain(rules)
            .max()
            .unwrap_or(0)
        });
        let scopes = self
            .policy
            .channels
            .iter()
            .chain(&self.policy.groups)
            .map(|s| caps(&s.max_impressions));
        let formulas = self
            .placements
            .iter()
            .filter_map(|p| p.score.as_ref())
            .chain(
                self.experiments
                    .iter()
                    .flat_map(|e| e.arms.iter().filter_map(|a| a.score.as_ref())),
            )
            .map(|f| f.horizon());
        offers
            .chain(scopes)
            .chain(formulas)
            .chain([caps(&self.policy.fatigue)])
            .max()
            .unwrap_or(0)
    }
}

/// Something that can be shown: a product, a service action, a retention gesture.
#[derive(Debug)]
pub struct Offer {
    pub id: String,
    /// [`key`](crate::schema::key) of `id`. INVARIANT: unique in the catalog (`load`).
    pub key: u32,
    /// [`key`](crate::schema::key) of `group`, 0 for none.
    pub group_key: u32,
    pub name: String,
    pub description: Option<String>,
    /// Offers of one group compete for one slot where a placement asks for it.
    pub group: Option<String>,
    pub tags: Vec<String>,
    pub active: Window,
    /// What to show, per placement the offer may appear in.
    pub content: BTreeMap<PlacementIdx, Content>,
    pub eligibility: Predicate,
    /// The source of `eligibility`, for explanations.
    pub eligibility_src: Option<String>,
    /// `eligibility` as its top-level clauses, most of them shared with other offers
    /// through [`Catalog::clauses`]; `None` when it is evaluated whole.
    pub clauses: Option<Box<[crate::expr::Clause]>>,
    pub propensity: Formula,
    pub value: Formula,
    pub weight: Formula,
    /// A multiplier from the request context (e.g. a boost in the call-center channel).
    pub context_weight: Formula,
    pub contact_policy: ContactPolicy,
    pub budget: Budget,
}

/// A volume cap: at most so many impressions a day (UTC) and in all, across customers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budget {
    pub per_day: Option<u64>,
    pub total: Option<u64>,
}

impl Budget {
    pub fn is_unlimited(&self) -> bool {
        self.per_day.is_none() && self.total.is_none()
    }
}

/// Caps that span offers: customer-wide fatigue, per channel and per offer group.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    /// At most so many impressions of any offer, in any channel.
    pub fatigue: Vec<FrequencyCap>,
    pub channels: Vec<ScopePolicy>,
    pub groups: Vec<ScopePolicy>,
}

/// The caps and budget of one channel or one offer group.
#[derive(Debug, Clone, PartialEq)]
pub struct ScopePolicy {
    pub id: String,
    /// [`key`](crate::schema::key) of `id`.
    pub key: u32,
    /// For a channel: impressions of any offer in it; for a group: impressions of any of
    /// its offers in any channel (or only the requesting one, with `per_channel`).
    pub max_impressions: Vec<FrequencyCap>,
    pub budget: Budget,
}

/// Content fields for one placement: `title`, `body`, `image_url`, `cta`, `agent_script`,
/// `template_id`, or any other string the channel renders.
pub type Content = BTreeMap<String, String>;

/// When an offer may be shown: `from` inclusive, `until` exclusive, in ms since the epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub from: Option<i64>,
    pub until: Option<i64>,
}

impl Window {
    pub fn contains(&self, now: i64) -> bool {
        self.from.is_none_or(|f| now >= f) && self.until.is_none_or(|u| now < u)
    }
}

/// The contact-policy caps of an offer (enforced by deciding, modelled here).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContactPolicy {
    /// At most `count` impressions within `within`.
    pub max_impressions: Vec<FrequencyCap>,
    /// After `count` rejects within `within`, suppress the offer for `suppress_for`.
    pub suppress_after_rejects: Option<RejectSuppression>,
    /// Never show the offer again once the customer has accepted it.
    pub stop_after_accept: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrequencyCap {
    /// INVARIANT: at least 1 (checked by `load`; deciding skips the caps of offers the
    /// customer has no events of).
    pub count: u32,
    /// Milliseconds.
    pub within: i64,
    /// Count impressions in the requesting channel only, instead of across channels.
    pub per_channel: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RejectSuppression {
    pub count: u32,
    /// Milliseconds.
    pub within: i64,
    /// Milliseconds.
    pub suppress_for: i64,
}

/// Where offers go.
#[derive(Debug)]
pub struct Placement {
    pub id: String,
    pub channel: String,
    /// [`key`](crate::schema::key) of `channel`.
    pub channel_key: u32,
    pub description: Option<String>,
    /// INVARIANT: at least 1 (checked by `load`).
    pub slots: u32,
    /// Shown when no offer qualifies. INVARIANT: has content for this placement.
    pub fallback: Option<OfferIdx>,
    pub one_per_group: bool,
    pub experiment: Option<ExperimentIdx>,
    /// Overrides the default score (propensity × context weight × value × weight).
    pub score: Option<Formula>,
    /// The offers that have content for this placement, in catalog order.
    pub offers: Vec<OfferIdx>,
    /// `offers` laid out for deciding.
    pub plan: Plan,
}

/// An epsilon-greedy test with champion/challenger arms.
#[derive(Debug)]
pub struct Experiment {
    pub id: String,
    pub description: Option<String>,
    /// INVARIANT: within [0, 1] (checked by `load`).
    pub epsilon: f64,
    /// The length of the time window of the exploration draw, in milliseconds (> 0).
    pub window: i64,
    pub salt: String,
    /// INVARIANT: non-empty, shares within (0, 1] summing to 1 (checked by `load`).
    pub arms: Vec<Arm>,
}

#[derive(Debug)]
pub struct Arm {
    pub id: String,
    pub share: f64,
    /// Overrides the experiment's epsilon for this arm.
    pub epsilon: Option<f64>,
    /// Overrides the score formula for this arm.
    pub score: Option<Formula>,
}

/// What can be wrong with a catalog. Messages follow the house style: lowercase, user
/// input in backticks; the location is carried beside, in [`Diagnostic`]. Each variant
/// holds what its message is made of, typed, so a tool can match on it rather than parse
/// the text. Not `PartialEq`: an [`io::Error`](std::io::Error) cause has no equality.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CatalogError {
    /// A catalog file, or the offers directory, could not be read. The `io::Error` is kept
    /// as the `source()`, shared so that the error stays `Clone`.
    #[error("cannot read `{path}`: {source}")]
    Io {
        path: String,
        #[source]
        source: std::sync::Arc<std::io::Error>,
    },
    /// A file is not YAML, or uses YAML the catalog does not take.
    #[error("invalid YAML: {0}")]
    Yaml(YamlError),
    /// A key the mapping does not take; `suggestion` is the allowed key closest to it.
    #[error("unknown key `{key}` in {context}")]
    UnknownKey {
        key: String,
        context: Context,
        suggestion: Option<String>,
    },
    /// A key the mapping must have.
    #[error("missing required key `{key}` in {context}")]
    MissingKey { key: &'static str, context: Context },
    /// A value that is not what its key takes.
    #[error("`{key}` in {context} must be {expected}")]
    Invalid {
        key: String,
        context: Context,
        expected: Expected,
    },
    /// A second item of one kind with an id already taken.
    #[error("duplicate {kind} `{id}` (first defined at {first})")]
    Duplicate {
        kind: Kind,
        id: String,
        first: FirstDefined,
    },
    /// A reference to an id that no item of its kind has; `suggestion` is the closest
    /// one that exists.
    #[error("unknown {kind} `{id}` in {context}")]
    Dangling {
        kind: Kind,
        id: String,
        context: Context,
        suggestion: Option<String>,
    },
    /// A placement's channel that is not a value of the `context.channel` enum.
    #[error(
        "unknown channel `{channel}` in placement `{placement}` (channels are the values of `context.channel`)"
    )]
    UnknownChannel {
        channel: String,
        placement: String,
        suggestion: Option<String>,
    },
    /// A placement's fallback offer that has no content for the placement, so could not
    /// be shown in it.
    #[error("fallback offer `{offer}` of placement `{placement}` has no content for it")]
    FallbackWithoutContent { offer: String, placement: String },
    /// An offer's active window that ends at or before its start.
    #[error("the active window of offer `{offer}` ends before it starts")]
    EmptyWindow { offer: String },
    /// The shares of an experiment's arms do not add up to 1.
    #[error("the arm shares of experiment `{experiment}` add up to {total}, not 1")]
    ArmShares { experiment: String, total: f64 },
    /// Two offer ids with one history [`key`](crate::schema::key), which would share
    /// their history.
    #[error("offer ids `{first}` and `{second}` have the same history key; rename one")]
    KeyCollision { first: String, second: String },
    /// A predictor of a model that names no attribute of the schema.
    #[error("unknown attribute `{attribute}` in the predictors of model `{model}`")]
    UnknownPredictor {
        model: String,
        attribute: String,
        suggestion: Option<String>,
    },
    /// A predictor whose encoding does not fit its attribute's type.
    #[error("predictor `{attribute}` of model `{model}` {problem}")]
    Predictor {
        model: String,
        attribute: String,
        problem: PredictorProblem,
    },
    /// An outcome kind a model counts both as positive and as negative.
    #[error("outcome kind `{kind}` of model `{model}` is both positive and negative")]
    KindTwice { model: String, kind: &'static str },
    /// A model whose predictors may set more features at once than a decision encodes.
    #[error(
        "the predictors of model `{model}` may set {active} features at once; at most {max} can be"
    )]
    ModelTooWide {
        model: String,
        active: u32,
        max: usize,
    },
    /// An error in a rule, with the field that holds the rule and the item of the field.
    #[error("{error} in {field} of {owner}")]
    Rule {
        field: RuleField,
        owner: Owner,
        error: ExprError,
    },
}

impl CatalogError {
    pub fn help(&self) -> Option<String> {
        match self {
            CatalogError::UnknownKey {
                suggestion: Some(s),
                ..
            }
            | CatalogError::Dangling {
                suggestion: Some(s),
                ..
            }
            | CatalogError::UnknownChannel {
                suggestion: Some(s),
                ..
            }
            | CatalogError::UnknownPredictor {
                suggestion: Some(s),
                ..
            } => Some(format!("did you mean `{s}`?")),
            CatalogError::Rule { error, .. } => error.help(),
            _ => None,
        }
    }
}

/// Why a predictor's encoding does not fit its attribute, as a message says it after
/// the predictor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PredictorProblem {
    /// A number without `bins`.
    NeedsBins { ty: &'static str },
    /// A string or set without the `values` or `members` it is encoded by.
    NeedsNames { ty: &'static str, key: &'static str },
    /// A key the attribute's type does not take.
    KeyNotForType { key: &'static str, ty: &'static str },
    /// A timestamp, which has no encoding (write a rule for it in the schema's stead).
    Timestamp,
    /// A second predictor on one attribute.
    Duplicate,
}

impl std::fmt::Display for PredictorProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PredictorProblem::NeedsBins { ty } => {
                write!(f, "is of type `{ty}` and needs `bins` (the edges between its ranges)")
            }
            PredictorProblem::NeedsNames { ty, key } => {
                write!(f, "is of type `{ty}` and needs `{key}` (the ones that become features)")
            }
            PredictorProblem::KeyNotForType { key, ty } => {
                write!(f, "is of type `{ty}`, which does not take `{key}`")
            }
            PredictorProblem::Timestamp => f.write_str(
                "is a timestamp, which cannot be a predictor (give the schema a number, such as days since it)",
            ),
            PredictorProblem::Duplicate => f.write_str("is listed twice"),
        }
    }
}

/// What is wrong with a file as YAML.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum YamlError {
    /// The file holds a list or a single value where the catalog needs a mapping.
    #[error("the top level must be a mapping")]
    TopLevelNotMapping,
    /// The file holds a mapping or a single value where a list is needed.
    #[error("the top level must be a list")]
    TopLevelNotList,
    /// `&anchor` or `*alias`, which the catalog does not take.
    #[error("anchors and aliases are not supported")]
    Anchor,
    /// A mapping key that is a list or a mapping.
    #[error("mapping keys must be plain strings")]
    KeyNotScalar,
    /// A `!tag`, which the catalog does not take.
    #[error("tags are not supported")]
    Tag,
    /// The YAML scanner's own message: the text is not YAML.
    #[error("{0}")]
    Syntax(String),
    /// A key given twice in one mapping.
    #[error("duplicate key `{key}` (first at line {first_line})")]
    DuplicateKey { key: String, first_line: usize },
    /// Any other error of the YAML loader, in its words.
    #[error("{0}")]
    Other(String),
}

/// The kinds of item of a catalog that have ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Offer,
    Placement,
    Experiment,
    Arm,
    Model,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Model => "model",
            Kind::Offer => "offer",
            Kind::Placement => "placement",
            Kind::Experiment => "experiment",
            Kind::Arm => "arm",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A named thing of the catalog that keys, parts and rules belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// ``offer `gold_card` ``
    Offer(String),
    /// ``placement `web.banner` ``
    Placement(String),
    /// ``experiment `explore` ``
    Experiment(String),
    /// ``arm `challenger` of experiment `explore` ``
    Arm { id: String, experiment: String },
    /// ``model `retention` ``
    Model(String),
    /// ``attribute `customer.age` ``, qualified by its entity.
    Attribute(String),
    /// ``channel `web` `` in the contact policy of placements.yaml.
    Channel(String),
    /// ``group `cards` `` in the contact policy of placements.yaml.
    Group(String),
    /// `the fatigue policy`: the caps over every offer, in placements.yaml.
    Fatigue,
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Offer(id) => write!(f, "offer `{id}`"),
            Owner::Placement(id) => write!(f, "placement `{id}`"),
            Owner::Experiment(id) => write!(f, "experiment `{id}`"),
            Owner::Arm { id, experiment } => write!(f, "arm `{id}` of experiment `{experiment}`"),
            Owner::Attribute(name) => write!(f, "attribute `{name}`"),
            Owner::Channel(id) => write!(f, "channel `{id}`"),
            Owner::Group(id) => write!(f, "group `{id}`"),
            Owner::Fatigue => f.write_str("the fatigue policy"),
            Owner::Model(id) => write!(f, "model `{id}`"),
        }
    }
}

/// A part of an [`Owner`] that has keys of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// `an arm of`, before the arm's id is read.
    Arm,
    /// `the budget of`
    Budget,
    /// `the active window of`
    ActiveWindow,
    /// `the contact policy of`
    ContactPolicy,
    /// `the reject suppression of`
    RejectSuppression,
    /// `an impression cap of`
    ImpressionCap,
    /// `the content of`: the mapping from placement ids.
    Content,
    /// ``the `web.banner` content of``: the fields shown in one placement.
    ContentFor(String),
    /// `a predictor of`
    Predictor,
    /// `the fallback of`
    Fallback,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Part::Arm => f.write_str("an arm of"),
            Part::Budget => f.write_str("the budget of"),
            Part::ActiveWindow => f.write_str("the active window of"),
            Part::ContactPolicy => f.write_str("the contact policy of"),
            Part::RejectSuppression => f.write_str("the reject suppression of"),
            Part::ImpressionCap => f.write_str("an impression cap of"),
            Part::Content => f.write_str("the content of"),
            Part::ContentFor(placement) => write!(f, "the `{placement}` content of"),
            Part::Predictor => f.write_str("a predictor of"),
            Part::Fallback => f.write_str("the fallback of"),
        }
    }
}

/// The catalog files, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRole {
    Schema,
    Placements,
    Experiments,
    Models,
    /// One of `offers/*.yaml`.
    Offers,
}

/// Where in the catalog a key or a reference is, as a message says it after `in`.
/// (Not the request context that deciding reads.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Context {
    /// The top level of a file: `schema.yaml`, `placements.yaml`, `experiments.yaml`,
    /// `an offers file`.
    File(FileRole),
    /// An item whose id is not read yet: `an offer`, `a placement`, `an experiment`,
    /// `an arm`.
    Unnamed(Kind),
    /// A named item itself: ``offer `gold_card` ``.
    Of(Owner),
    /// A part of a named item: ``the budget of offer `gold_card` ``.
    Part(Part, Owner),
    /// `the contact policy`: the section of placements.yaml.
    ContactPolicy,
}

impl std::fmt::Display for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Context::File(FileRole::Schema) => f.write_str("schema.yaml"),
            Context::File(FileRole::Placements) => f.write_str("placements.yaml"),
            Context::File(FileRole::Experiments) => f.write_str("experiments.yaml"),
            Context::File(FileRole::Models) => f.write_str("models.yaml"),
            Context::File(FileRole::Offers) => f.write_str("an offers file"),
            Context::Unnamed(Kind::Offer) => f.write_str("an offer"),
            Context::Unnamed(Kind::Placement) => f.write_str("a placement"),
            Context::Unnamed(Kind::Experiment) => f.write_str("an experiment"),
            Context::Unnamed(Kind::Arm) => f.write_str("an arm"),
            Context::Unnamed(Kind::Model) => f.write_str("a model"),
            Context::Of(owner) => write!(f, "{owner}"),
            Context::Part(part, owner) => write!(f, "{part} {owner}"),
            Context::ContactPolicy => f.write_str("the contact policy"),
        }
    }
}

/// The attribute types `schema.yaml` takes, in the order messages list them.
pub const ATTRIBUTE_TYPES: [&str; 7] =
    ["bool", "int", "float", "string", "enum", "set", "timestamp"];

/// What a key's value must be, as a message says it after `must be`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// `a mapping`
    Mapping,
    /// `a list`
    List,
    /// `a single value`: a scalar, not a list or a mapping.
    Scalar,
    /// `a list of strings`, said of an item that is not one.
    Strings,
    /// `a string`, said of a content field.
    String,
    /// An id of offers, placements, experiments and arms.
    Id,
    /// An attribute name: an identifier of the rule language.
    Name,
    /// `` `true` or `false` ``
    Bool,
    /// `a whole number of at least 1`
    Count,
    /// `a whole number from 1 to` [`MAX_SLOTS`]
    Slots,
    /// A positive duration as the rule language writes it.
    Duration,
    /// `a number from 0 to 1`
    Fraction,
    /// `a number above 0 and at most 1`: an arm's share.
    Share,
    /// An RFC 3339 timestamp.
    Timestamp,
    /// The values of an enum: a non-empty list of distinct, non-empty strings.
    EnumValues,
    /// One of [`ATTRIBUTE_TYPES`], with the one closest to what was written.
    AttributeType { suggestion: Option<String> },
    /// `values`, which only an enum takes.
    OnlyForEnum,
    /// A default of the attribute's type (its name, as [`AttrType::name`](crate::schema::AttrType::name) gives it).
    ValueOf { ty: &'static str },
    /// An offer's content, which must name at least one placement.
    Content,
    /// A prior response rate: above 0 and below 1.
    Rate,
    /// A model's forgetting: from 0 to 0.5.
    Forget,
    /// A response window: from 1 minute to 365 days.
    ResponseWindow,
    /// A non-empty list of outcome kinds.
    OutcomeKinds,
    /// A non-empty list of increasing numbers.
    Bins,
    /// A non-empty list of distinct, non-empty strings (a predictor's values or members).
    Names,
    /// An attribute name, or a mapping with `attribute` and its encoding.
    PredictorSpec,
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expected::Mapping => f.write_str("a mapping"),
            Expected::List => f.write_str("a list"),
            Expected::Scalar => f.write_str("a single value"),
            Expected::Strings => f.write_str("a list of strings"),
            Expected::String => f.write_str("a string"),
            Expected::Id => f.write_str("an id of letters, digits, `_`, `-` and `.`"),
            Expected::Name => {
                f.write_str("a name of letters, digits and `_`, not starting with a digit")
            }
            Expected::Bool => f.write_str("`true` or `false`"),
            Expected::Count => f.write_str("a whole number of at least 1"),
            Expected::Slots => write!(f, "a whole number from 1 to {MAX_SLOTS}"),
            Expected::Duration => f.write_str("a duration such as `7d`, `12h`, `30m`, `45s`"),
            Expected::Fraction => f.write_str("a number from 0 to 1"),
            Expected::Share => f.write_str("a number above 0 and at most 1"),
            Expected::Timestamp => f.write_str("a timestamp such as `2026-01-31T00:00:00Z`"),
            Expected::EnumValues => f.write_str("a non-empty list of distinct, non-empty strings"),
            Expected::AttributeType { suggestion } => {
                write!(f, "one of {}", ATTRIBUTE_TYPES.join(", "))?;
                match suggestion {
                    Some(s) => write!(f, " (did you mean `{s}`?)"),
                    None => Ok(()),
                }
            }
            Expected::OnlyForEnum => f.write_str("given only for `type: enum`"),
            Expected::ValueOf { ty } => write!(f, "a value of type `{ty}`"),
            Expected::Content => f.write_str("content for at least one placement"),
            Expected::Rate => f.write_str("a number above 0 and below 1"),
            Expected::Forget => f.write_str("a number from 0 to 0.5"),
            Expected::ResponseWindow => f.write_str("a duration from `1m` to `365d`"),
            Expected::OutcomeKinds => f.write_str(
                "a non-empty list of distinct response kinds (click, accept, reject, convert; an impression opens the wait for one)",
            ),
            Expected::Bins => f.write_str("a non-empty list of increasing numbers"),
            Expected::Names => f.write_str("a non-empty list of distinct, non-empty strings"),
            Expected::PredictorSpec => f.write_str(
                "an attribute such as `customer.segment`, or a mapping with `attribute` and its `bins`, `values` or `members`",
            ),
        }
    }
}

/// Where the first of two items with one id is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstDefined {
    /// `path:line:column` in a catalog file.
    At {
        path: String,
        line: usize,
        column: usize,
    },
    /// `?`: its position was not known.
    Unknown,
    /// Within an item (an arm, within its experiment).
    In(Owner),
}

impl std::fmt::Display for FirstDefined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FirstDefined::At { path, line, column } => write!(f, "{path}:{line}:{column}"),
            FirstDefined::Unknown => f.write_str("?"),
            FirstDefined::In(owner) => write!(f, "{owner}"),
        }
    }
}

/// The fields of the catalog that hold a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleField {
    Eligibility,
    Propensity,
    Value,
    Weight,
    ContextWeight,
    Score,
}

impl RuleField {
    /// The key in the YAML, and the rule's name in messages of the rule language.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleField::Eligibility => "eligibility",
            RuleField::Propensity => "propensity",
            RuleField::Value => "value",
            RuleField::Weight => "weight",
            RuleField::ContextWeight => "context_weight",
            RuleField::Score => "score",
        }
    }
}

impl std::fmt::Display for RuleField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A one-screen summary of a loaded catalog, as `nextbest check` prints it.
pub fn summary(catalog: &Catalog, dir: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "catalog {dir} ok, version {}", catalog.version);
    let _ = writeln!(
        out,
        "  {} customer attributes, {} context attributes, {} offers, {} placements, {} experiments",
        catalog.schema.customer.len(),
        catalog.schema.context.len(),
        catalog.offers.len(),
        catalog.placements.len(),
        catalog.experiments.len()
    );
    let _ = writeln!(out, "  placements:");
    for p in &catalog.placements {
        let fallback = p.fallback.map_or("none", |i| catalog.offers[i].id.as_str());
        let experiment = p
            .experiment
            .map_or("none", |i| catalog.experiments[i].id.as_str());
        let _ = writeln!(
            out,
            "    {:<24} {:<12} {} slot(s), {:>2} offers, fallback {fallback}, experiment {experiment}",
            p.id,
            p.channel,
            p.slots,
            p.offers.len()
        );
    }
    for e in &catalog.experiments {
        let arms: Vec<String> = e
            .arms
            .iter()
            .map(|a| format!("{} {:.0}%", a.id, a.share * 100.0))
            .collect();
        let _ = writeln!(
            out,
            "  experiment {}: epsilon {}, arms {}",
            e.id,
            e.epsilon,
            arms.join(", ")
        );
    }
    for m in &catalog.models {
        let offers = m
            .cells()
            .map(|((offer, _), _)| offer)
            .collect::<std::collections::BTreeSet<_>>();
        let _ = writeln!(
            out,
            "  model {}: {} predictor(s), {} feature(s), window {}, prior {:.3}; read by {} offer(s){}",
            m.id,
            m.predictors.len(),
            m.width,
            duration(m.window),
            m.prior_rate,
            offers.len(),
            if m.per_channel { ", per channel" } else { "" }
        );
    }
    let policy = &catalog.policy;
    let _ = writeln!(
        out,
        "  contact policy: {} fatigue cap(s), {} channel(s) and {} group(s) with caps or budgets",
        policy.fatigue.len(),
        policy.channels.len(),
        policy.groups.len()
    );
    let clauses: usize = catalog
        .offers
        .iter()
        .filter_map(|o| o.clauses.as_ref())
        .map(|c| c.len())
        .sum();
    let _ = writeln!(
        out,
        "  rules: {clauses} eligibility clause(s), {} distinct without history (each evaluated at most once a decision); {} propensit{} shared by several offers",
        catalog.clauses.len(),
        catalog.formulas.len(),
        if catalog.formulas.len() == 1 {
            "y"
        } else {
            "ies"
        }
    );
    let _ = match catalog.history_horizon() {
        i64::MAX => writeln!(
            out,
            "  history: kept as long as the store allows (stop_after_accept looks back without limit)"
        ),
        0 => writeln!(out, "  history: no rule or cap reads it"),
        ms => writeln!(
            out,
            "  history: kept for {}d, the longest window a rule or cap reads",
            (ms + 86_399_999) / 86_400_000
        ),
    };
    out
}

/// The summary as JSON, for tools.
pub fn summary_json(catalog: &Catalog) -> serde_json::Value {
    serde_json::json!({
        "ok": true,
        "version": &*catalog.version,
        "counts": {
            "customer_attributes": catalog.schema.customer.len(),
            "context_attributes": catalog.schema.context.len(),
            "offers": catalog.offers.len(),
            "placements": catalog.placements.len(),
            "experiments": catalog.experiments.len(),
        },
        "placements": catalog.placements.iter().map(|p| serde_json::json!({
            "id": p.id,
            "channel": p.channel,
            "slots": p.slots,
            "offers": p.offers.len(),
            "fallback": p.fallback.map(|i| catalog.offers[i].id.clone()),
            "experiment": p.experiment.map(|i| catalog.experiments[i].id.clone()),
        })).collect::<Vec<_>>(),
    })
}

/// A duration in ms as the catalog writes one, in its largest whole unit (`7d`, `90m`).
fn duration(ms: i64) -> String {
    for (unit, len) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms % len == 0 {
            return format!("{}{unit}", ms / len);
        }
    }
    format!("{ms}ms")
}
