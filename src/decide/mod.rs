//! The decision pipeline: which offers one customer sees in one placement, now, and with
//! what probability.
//!
//! `decide` is pure and synchronous: no I/O, no clock (time is an argument), no locks, no
//! tokio. For every offer of the placement it checks, in order: active window, eligibility
//! rule, contact policy (offer, group, channel and customer-wide caps), budgets; it scores
//! the survivors (propensity × context weight × value × weight, or a placement's or arm's
//! formula), fills the slots best first with at most one offer per group where asked, lets
//! epsilon-greedy explore each slot with a stable hash draw, and records the exact
//! probability of every offer shown. docs/decisions.md is the reference.
//!
//! Allocation is a small constant per decision, whatever the catalog's size: the
//! candidate and shown lists, an index of the customer's history when there is one, and
//! the explanation when asked for.

mod policy;
pub mod synthetic;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;

use uuid::Uuid;

use crate::catalog::plan::flags;
use crate::catalog::{Catalog, ExperimentIdx, OfferIdx, PlacementIdx, Planned};
use crate::explore::{Unit, propensity, window_index};
use crate::expr::Env;
use crate::schema::{AttrType, Value, offer_slot};
use crate::state::CustomerState;

pub use policy::{BudgetScope, Budgets, NoBudgets, Spent};

/// The request's context attributes, in the slots of the catalog's context schema.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Context {
    pub values: Vec<Value>,
}

impl Context {
    /// The context for a placement: `values`, with `context.channel` set to the
    /// placement's channel when the schema has that attribute and the caller left it unset.
    pub fn for_placement(
        catalog: &Catalog,
        placement: PlacementIdx,
        mut values: Vec<Value>,
    ) -> Context {
        let schema = &catalog.schema.context;
        values.resize(schema.len(), Value::Missing);
        if let Some(slot) = schema.slot("channel")
            && values[slot as usize].is_missing()
            && let Some(p) = catalog.placements.get(placement)
        {
            values[slot as usize] = match &schema.get(slot).map(|a| &a.ty) {
                Some(AttrType::Enum(def)) => {
                    def.index_of(&p.channel).map_or(Value::Missing, Value::Enum)
                }
                Some(AttrType::String) => Value::Str(p.channel.as_str().into()),
                _ => Value::Missing,
            };
        }
        Context { values }
    }

    /// The channel a caller's context names when it is not the placement's: the channel
    /// is the placement's, and a rule reading `context.channel` must see that one, so a
    /// caller's other channel is refused rather than scored with (docs/decisions.md).
    pub fn conflicting_channel(
        catalog: &Catalog,
        placement: PlacementIdx,
        values: &[Value],
    ) -> Option<String> {
        let schema = &catalog.schema.context;
        let slot = schema.slot("channel")?;
        let given = values.get(slot as usize).filter(|v| !v.is_missing())?;
        let p = catalog.placements.get(placement)?;
        let named = match (given, &schema.get(slot)?.ty) {
            (Value::Enum(i), AttrType::Enum(def)) => def.variants.get(*i as usize)?.to_string(),
            (Value::Str(s), _) => s.to_string(),
            _ => return None,
        };
        (named != p.channel).then_some(named)
    }
}

/// How to decide.
#[derive(Clone, Copy)]
pub struct Options<'a> {
    /// The decision's id (time-ordered, unique: a UUIDv7 made by the caller). For an
    /// anonymous caller it is also the unit of the exploration draw.
    pub decision_id: Uuid,
    /// Say for every offer of the placement where it stopped and why.
    pub explain: bool,
    /// Fill this many slots instead of the placement's number.
    pub slots: Option<u32>,
    /// Offers not to show (already on the page, for a batch of placements).
    pub exclude: &'a [OfferIdx],
    /// Volume counters, for budgets.
    pub budgets: &'a dyn Budgets,
}

impl fmt::Debug for Options<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("decision_id", &self.decision_id)
            .field("explain", &self.explain)
            .field("slots", &self.slots)
            .field("exclude", &self.exclude)
            .finish()
    }
}

impl Options<'static> {
    pub fn new(decision_id: Uuid) -> Options<'static> {
        Options {
            decision_id,
            explain: false,
            slots: None,
            exclude: &[],
            budgets: &NoBudgets,
        }
    }
}

/// What was decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub id: Uuid,
    /// Milliseconds since the epoch.
    pub at: i64,
    pub catalog_version: Arc<str>,
    pub placement: PlacementIdx,
    pub experiment: Option<ExperimentIdx>,
    /// Index into the experiment's arms.
    pub arm: Option<usize>,
    /// The exploration rate in force (0 without an experiment).
    pub epsilon: f64,
    /// The offers shown, slot by slot.
    pub offers: Vec<Shown>,
    /// Every offer that passed eligibility, policy and budgets, with its score, in catalog
    /// order: what the journal needs to evaluate other policies offline.
    pub candidates: Vec<Candidate>,
    /// Set when a channel cap, customer fatigue or a channel budget forbids showing
    /// anything at all in this placement now.
    pub suppressed: Option<String>,
    /// For every offer of the placement, where it stopped; when asked for.
    pub explanation: Option<Vec<Explained>>,
    /// With adaptive models: the learning state the scores read (responses learned
    /// before it), when the caller knows it (`Db::decide_consistent`); else `None`.
    pub learned: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shown {
    pub offer: OfferIdx,
    /// From 0.
    pub slot: u32,
    pub score: f64,
    /// The probability the policy put this offer in this slot, given the earlier slots.
    pub propensity: f64,
    /// The slot's draw chose to explore.
    pub explored: bool,
    /// The placement's fallback, shown because nothing qualified.
    pub fallback: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub offer: OfferIdx,
    pub score: f64,
    /// The offer's group key (0 for none) and its key, kept here so arbitration reads no
    /// offer.
    pub group: u32,
    pub key: u32,
}

/// Where one offer stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct Explained {
    pub offer: OfferIdx,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Outside its active window.
    Inactive,
    /// Excluded by the caller (already shown on the page).
    Excluded,
    /// Its eligibility rule: the first clause that failed, and whether it was false or
    /// undecided (a missing value).
    Ineligible {
        clause: String,
        undecided: bool,
    },
    /// A contact-policy cap.
    Capped {
        reason: String,
    },
    /// A budget is spent.
    OverBudget {
        reason: String,
    },
    /// A score term was missing (an unset attribute, a division by zero, ...).
    NoScore {
        term: &'static str,
    },
    /// Eligible and scored, but not shown.
    Lost {
        score: f64,
    },
    Shown {
        slot: u32,
        explored: bool,
    },
    /// Nothing could be shown at all (`Decision::suppressed`).
    Suppressed,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Inactive => f.write_str("inactive: outside its active window"),
            Outcome::Excluded => f.write_str("excluded: already shown on the page"),
            Outcome::Ineligible {
                clause,
                undecided: false,
            } => write!(f, "ineligible: `{clause}` is false"),
            Outcome::Ineligible {
                clause,
                undecided: true,
            } => {
                write!(
                    f,
                    "ineligible: `{clause}` is undecided (a value it reads is missing)"
                )
            }
            Outcome::Capped { reason } => write!(f, "capped: {reason}"),
            Outcome::OverBudget { reason } => write!(f, "over budget: {reason}"),
            Outcome::NoScore { term } => write!(f, "no score: `{term}` is missing"),
            Outcome::Lost { score } => write!(f, "lost arbitration with score {score}"),
            Outcome::Shown {
                slot,
                explored: false,
            } => write!(f, "shown in slot {slot}"),
            Outcome::Shown {
                slot,
                explored: true,
            } => write!(f, "shown in slot {slot} (explored)"),
            Outcome::Suppressed => f.write_str("suppressed: the placement shows nothing now"),
        }
    }
}

/// Decides which offers `customer` sees in `placement` at `now` (ms since the epoch).
pub fn decide(
    catalog: &Catalog,
    customer: &CustomerState,
    context: &Context,
    placement: PlacementIdx,
    now: i64,
    options: &Options<'_>,
) -> Decision {
    let p = &catalog.placements[placement];
    let mut decision = Decision {
        id: options.decision_id,
        at: now,
        catalog_version: catalog.version.clone(),
        placement,
        experiment: p.experiment,
        arm: None,
        epsilon: 0.0,
        offers: Vec::new(),
        candidates: Vec::with_capacity(p.offers.len()),
        suppressed: None,
        explanation: None,
        learned: None,
    };
    let mut explanation = options.explain.then(|| Vec::with_capacity(p.offers.len()));

    // The experiment: a sticky arm, and the epsilon and score formula it sets.
    // An anonymous caller's unit is the decision: a fresh draw per request.
    let mut buffer = Uuid::encode_buffer();
    let unit_id = match &customer.id {
        Some(id) => id.as_str(),
        None => &*options.decision_id.hyphenated().encode_lower(&mut buffer),
    };
    let mut score_formula = p.score.as_ref();
    let mut draw = None;
    if let Some(e) = p.experiment.map(|e| &catalog.experiments[e]) {
        let unit = Unit::new(&e.salt, unit_id);
        let arm = unit.arm(e.arms.iter().map(|a| a.share));
        let chosen = &e.arms[arm];
        decision.arm = Some(arm);
        decision.epsilon = chosen.epsilon.unwrap_or(e.epsilon);
        score_formula = chosen.score.as_ref().or(score_formula);
        draw = Some((unit, window_index(now, e.window)));
    }

    let history = policy::HistoryIndex::new(customer.history.events());
    let checks = policy::Checks::new(catalog, p, &history, now, options.budgets);
    if let Some(reason) = checks.suppressed() {
        decision.suppressed = Some(reason);
        if let Some(explanation) = &mut explanation {
            explanation.extend(p.offers.iter().map(|&offer| Explained {
                offer,
                outcome: Outcome::Suppressed,
            }));
        }
        decision.explanation = explanation;
        return decision;
    }

    // What this decision has found out about the clauses and propensities offers share
    // (on the stack for up to 256 clauses and 32 formulas).
    let mut on_stack = [crate::expr::memo::UNKNOWN; 256];
    let mut on_heap = Vec::new();
    let memo = scratch(
        &mut on_stack,
        &mut on_heap,
        catalog.clauses.len(),
        crate::expr::memo::UNKNOWN,
    );
    let mut on_stack = [None; 32];
    let mut on_heap = Vec::new();
    let known = scratch(&mut on_stack, &mut on_heap, catalog.formulas.len(), None);
    let mut bits = crate::expr::ClauseBits::default();
    let mut explain = |offer: OfferIdx, outcome: Outcome| {
        if let Some(explanation) = &mut explanation {
            explanation.push(Explained { offer, outcome });
        }
    };
    let events = customer.history.events();
    // Shared clauses and formulas read no history: one environment serves every offer.
    let features = crate::adaptive::FeatureMemo::default();
    let shared_env = Env::new(&customer.attributes, &context.values, &[], now)
        .with_history(events, 0, 0, 0)
        .with_memo(&features);
    let plan = &p.plan;
    // The offers to visit: those the placement's index (`catalog::plan::Index`) admits,
    // or every one where there is no index or the decision explains itself (it says why
    // each offer is ineligible, which takes evaluating its rule anyway).
    let n = plan.offers.len();
    let mut on_stack = [0u64; 16];
    let mut on_heap = Vec::new();
    let visit = scratch(&mut on_stack, &mut on_heap, n.div_ceil(64), 0);
    match &plan.index {
        Some(index) if !options.explain => index.admit(n, visit, |id| {
            catalog.clauses.holds_kept(id, &shared_env, memo, &mut bits)
        }),
        _ => crate::catalog::plan::all(n, visit),
    }
    for position in SetBits::new(visit) {
        let planned = &plan.offers[position];
        let idx = planned.offer as usize;
        let offer = &catalog.offers[idx];
        if !options.exclude.is_empty() && options.exclude.contains(&idx) {
            explain(idx, Outcome::Excluded);
            continue;
        }
        if planned.has(flags::WINDOW) && !offer.active.contains(now) {
            explain(idx, Outcome::Inactive);
            continue;
        }
        // The offer's own environment, for what reads history (which depends on the offer).
        let env = || shared_env.with_history(events, planned.key, planned.group, p.channel_key);
        let eligible = if planned.has(flags::SHARED_RULE) {
            let (start, end) = planned.clauses;
            let ids = &plan.clauses[start as usize..end as usize];
            catalog.clauses.all_in(planned.mask, &shared_env, &mut bits)
                && catalog.clauses.all(ids, &shared_env, memo)
        } else {
            match &offer.clauses {
                Some(clauses) => catalog.clauses.matches(clauses, &env(), memo),
                None => offer.eligibility.matches(&env()),
            }
        };
        if !eligible {
            if options.explain {
                let src = offer.eligibility_src.as_deref().unwrap_or("");
                let (clause, result) = offer
                    .eligibility
                    .explain(&env(), src)
                    .unwrap_or((src, None));
                explain(
                    idx,
                    Outcome::Ineligible {
                        clause: clause.to_string(),
                        undecided: result.is_none(),
                    },
                );
            }
            continue;
        }
        if checks.may_cap(planned)
            && let Some(reason) = checks.capped(offer, options.explain)
        {
            explain(idx, Outcome::Capped { reason });
            continue;
        }
        if planned.has(flags::BUDGET | flags::GROUP_POLICY)
            && let Some(reason) = checks.over_budget(offer, options.explain)
        {
            explain(idx, Outcome::OverBudget { reason });
            continue;
        }
        let propensity = if planned.has(flags::SHARED_PROPENSITY) {
            catalog
                .formulas
                .eval(planned.propensity, &shared_env, known)
        } else {
            offer.propensity.eval(&env())
        };
        match score(offer, planned, propensity, score_formula, env) {
            Ok(score) => decision.candidates.push(Candidate {
                offer: idx,
                score,
                group: planned.group,
                key: planned.key,
            }),
            Err(term) => explain(idx, Outcome::NoScore { term }),
        }
    }

    arbitrate(catalog, p, &mut decision, options, draw);
    if let Some(explanation) = &mut explanation {
        for c in &decision.candidates {
            let outcome = match decision
                .offers
                .iter()
                .find(|s| s.offer == c.offer && !s.fallback)
            {
                Some(s) => Outcome::Shown {
                    slot: s.slot,
                    explored: s.explored,
                },
                None => Outcome::Lost { score: c.score },
            };
            explanation.push(Explained {
                offer: c.offer,
                outcome,
            });
        }
    }
    decision.explanation = explanation;
    decision
}

/// The positions of the set bits of a bitset, in order: the offers a decision visits.
struct SetBits<'a> {
    words: &'a [u64],
    /// The word being read, and its bits not yet returned.
    word: usize,
    rest: u64,
}

impl<'a> SetBits<'a> {
    fn new(words: &'a [u64]) -> Self {
        SetBits {
            words,
            word: 0,
            rest: words.first().copied().unwrap_or(0),
        }
    }
}

impl Iterator for SetBits<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        while self.rest == 0 {
            self.word += 1;
            self.rest = *self.words.get(self.word)?;
        }
        let bit = self.rest.trailing_zeros() as usize;
        self.rest &= self.rest - 1;
        Some(self.word * 64 + bit)
    }
}

/// A decision's scratch memo of `len` entries set to `init`: on the stack when it fits.
fn scratch<'m, T: Copy>(
    stack: &'m mut [T],
    heap: &'m mut Vec<T>,
    len: usize,
    init: T,
) -> &'m mut [T] {
    if len <= stack.len() {
        &mut stack[..len]
    } else {
        heap.resize(len, init);
        heap
    }
}

/// The offer's score from its `propensity`, or the name of the term that was missing.
#[inline]
fn score<'e>(
    offer: &crate::catalog::Offer,
    planned: &Planned,
    propensity: Option<f64>,
    formula: Option<&crate::expr::Formula>,
    env: impl Fn() -> Env<'e>,
) -> Result<f64, &'static str> {
    let propensity = propensity.ok_or("propensity")?;
    let (value, weight, context_weight) = if planned.has(flags::CONSTANT_TERMS) {
        (planned.value, planned.weight, planned.context_weight)
    } else {
        let env = &env();
        (
            offer.value.eval(env).ok_or("value")?,
            offer.weight.eval(env).ok_or("weight")?,
            offer.context_weight.eval(env).ok_or("context_weight")?,
        )
    };
    let score = match formula {
        None => propensity * context_weight * value * weight,
        Some(f) => {
            let mut vars = [
                Value::Missing,
                Value::Missing,
                Value::Missing,
                Value::Missing,
            ];
            vars[offer_slot::PROPENSITY as usize] = Value::Float(propensity);
            vars[offer_slot::VALUE as usize] = Value::Float(value);
            vars[offer_slot::WEIGHT as usize] = Value::Float(weight);
            vars[offer_slot::CONTEXT_WEIGHT as usize] = Value::Float(context_weight);
            let env = env();
            let env = env.with_offer(&vars);
            f.eval(&env).ok_or("score")?
        }
    };
    if score.is_finite() {
        Ok(score)
    } else {
        Err("score")
    }
}

/// Fills the slots: per slot, the best remaining candidate, or with probability epsilon
/// the remaining candidate that ranks highest on the stable hash; then the fallback if
/// nothing could be shown.
fn arbitrate(
    catalog: &Catalog,
    p: &crate::catalog::Placement,
    decision: &mut Decision,
    options: &Options<'_>,
    draw: Option<(Unit, i64)>,
) {
    let slots = options
        .slots
        .unwrap_or(p.slots)
        .min(crate::catalog::MAX_SLOTS);
    decision.offers.reserve_exact(slots as usize);
    let candidates = &decision.candidates;
    // The candidates no longer available: shown, or of a group shown where the placement
    // allows one per group. Each scan marks those of the previous slot's offer; the
    // earlier ones are marked already.
    let mut on_stack = [0u64; 16];
    let mut on_heap = Vec::new();
    let taken = scratch(
        &mut on_stack,
        &mut on_heap,
        candidates.len().div_ceil(64),
        0,
    );
    let is_taken = |taken: &[u64], i: usize| taken[i / 64] & (1 << (i % 64)) != 0;
    let mut previous: Option<(usize, u32)> = None;
    for slot in 0..slots {
        // The best remaining: highest score, then catalog order (scores are finite).
        let mut best = None;
        let mut best_score = f64::NEG_INFINITY;
        let mut remaining = 0usize;
        let mut consider = |i: usize, c: &Candidate| {
            remaining += 1;
            if c.score > best_score {
                best_score = c.score;
                best = Some(i);
            }
        };
        match previous {
            // Nothing taken yet: no need to ask.
            None => {
                for (i, c) in candidates.iter().enumerate() {
                    consider(i, c);
                }
            }
            Some((shown, group)) => {
                let group = if p.one_per_group { group } else { 0 };
                for (i, c) in candidates.iter().enumerate() {
                    if is_taken(taken, i) {
                        continue;
                    }
                    if i == shown || (group != 0 && c.group == group) {
                        taken[i / 64] |= 1 << (i % 64);
                        continue;
                    }
                    consider(i, c);
                }
            }
        }
        let Some(best) = best else { break };
        let explored =
            draw.is_some_and(|(unit, window)| unit.explores(window, slot, decision.epsilon));
        let chosen = match draw {
            Some((unit, window)) if explored => candidates
                .iter()
                .enumerate()
                // The scan above marked what the previous slot took.
                .filter(|(i, _)| !is_taken(taken, *i))
                .max_by_key(|(_, c)| unit.rank(window, c.key))
                .map_or(best, |(i, _)| i),
            _ => best,
        };
        previous = Some((chosen, candidates[chosen].group));
        let chosen = candidates[chosen];
        decision.offers.push(Shown {
            offer: chosen.offer,
            slot,
            score: chosen.score,
            propensity: propensity(
                decision.epsilon,
                chosen.offer == candidates[best].offer,
                remaining,
            ),
            explored,
            fallback: false,
        });
    }
    if slots > 0
        && decision.offers.is_empty()
        && let Some(fallback) = p.fallback
        && catalog.offers[fallback].active.contains(decision.at)
        && !options.exclude.contains(&fallback)
    {
        decision.offers.push(Shown {
            offer: fallback,
            slot: 0,
            score: 0.0,
            propensity: 1.0,
            explored: false,
            fallback: true,
        });
    }
}
