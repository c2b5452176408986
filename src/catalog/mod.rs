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

pub use diag::{Diagnostic, LoadErrors, Location, SourceFile};
pub use load::{parse_duration, parse_timestamp};
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
/// input in backticks; the location is carried beside, in [`Diagnostic`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read `{path}`: {message}")]
    Io { path: String, message: String },
    #[error("invalid YAML: {message}")]
    Yaml { message: String },
    #[error("unknown key `{key}` in {context}")]
    UnknownKey {
        key: String,
        context: String,
        suggestion: Option<String>,
    },
    #[error("missing required key `{key}` in {context}")]
    MissingKey { key: String, context: String },
    #[error("`{key}` in {context} must be {expected}")]
    Invalid {
        key: String,
        context: String,
        expected: String,
    },
    #[error("duplicate {kind} `{id}` (first defined at {first})")]
    Duplicate {
        kind: String,
        id: String,
        first: String,
    },
    #[error("unknown {kind} `{id}` in {context}")]
    Dangling {
        kind: String,
        id: String,
        context: String,
        suggestion: Option<String>,
    },
    #[error("{message}")]
    Inconsistent { message: String },
    #[error("{error} in {what} of {owner}")]
    Rule {
        what: String,
        owner: String,
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
            } => Some(format!("did you mean `{s}`?")),
            CatalogError::Rule { error, .. } => error.help(),
            _ => None,
        }
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
