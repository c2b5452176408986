//! Each placement's offers laid out for deciding: what the loop over a placement's offers
//! reads, packed into one contiguous array in catalog order, with flags that say which
//! checks an offer needs at all. Built once at load, from the compiled catalog; the
//! [`Offer`]s themselves (names, content, tags, rules) are read only on the slower paths:
//! a rule that reads history, a score term that is not a constant, a policy to check.

use std::collections::HashMap;

use super::{Offer, Placement, Policy, Window};
use crate::expr::{Clause, SharedFormulas};

/// What decide reads of one offer of a placement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Planned {
    /// Index in [`Catalog::offers`](super::Catalog::offers).
    pub offer: u32,
    /// [`Offer::key`].
    pub key: u32,
    /// [`Offer::group_key`].
    pub group: u32,
    /// Which of the checks below apply ([`flags`]).
    pub flags: u32,
    /// With [`flags::SHARED_RULE`]: the eligibility rule is the shared clauses with ids
    /// below 64 in this mask (bit `id` for clause `id`) and those in
    /// `Plan::clauses[start..end]` (none at all: the offer has no rule).
    pub mask: u64,
    pub clauses: (u32, u32),
    /// With [`flags::SHARED_PROPENSITY`]: the id of the propensity among
    /// [`Catalog::formulas`](super::Catalog::formulas).
    pub propensity: u32,
    /// With [`flags::CONSTANT_TERMS`]: the value, weight and context weight.
    pub value: f64,
    pub weight: f64,
    pub context_weight: f64,
}

/// What [`Planned::flags`] says.
pub mod flags {
    /// The offer has an active window to check.
    pub const WINDOW: u32 = 1;
    /// The eligibility rule is all shared clauses ([`Planned::clauses`](super::Planned)).
    pub const SHARED_RULE: u32 = 1 << 1;
    /// The propensity is shared ([`Planned::propensity`](super::Planned)).
    pub const SHARED_PROPENSITY: u32 = 1 << 2;
    /// Value, weight and context weight are constants, copied into the plan.
    pub const CONSTANT_TERMS: u32 = 1 << 3;
    /// The offer has caps of its own (impressions, rejects, accepts): they can only bite
    /// when the customer's history has events of this offer (every cap allows at least
    /// one impression: `FrequencyCap::count`).
    pub const CAPS: u32 = 1 << 4;
    /// The policy has caps or a budget for the offer's group.
    pub const GROUP_POLICY: u32 = 1 << 5;
    /// The offer has a budget.
    pub const BUDGET: u32 = 1 << 6;
}

impl Planned {
    #[inline]
    pub fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }
}

/// A placement's offers for deciding ([`Placement::plan`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// One per offer of [`Placement::offers`], in the same order.
    pub offers: Vec<Planned>,
    /// The shared clause ids of the offers with [`flags::SHARED_RULE`], one offer after
    /// another.
    pub clauses: Vec<u32>,
    /// Which offers can match at all, from a few clauses (`None`: visit every offer).
    pub index: Option<Index>,
}

/// A placement of at least this many offers gets an [`Index`]: below it, visiting every
/// offer costs less than evaluating the index.
pub const INDEX_MIN_OFFERS: usize = 32;

/// At most this many clauses are indexed (those most offers require).
const INDEX_MAX_CLAUSES: usize = 64;

/// The offers a decision needs to visit: those whose rules require none of the indexed
/// clauses that do not hold for the customer. The indexed clauses are the shared clauses
/// (top-level `&&` clauses that read no history: an enum or bool test, a set membership,
/// the channel in the context, a comparison) that at least two offers of the placement
/// require; each is evaluated once per decision, and an offer whose rule requires one
/// that does not definitely hold is ineligible, as visiting it would have found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Index {
    /// The indexed shared clause ids.
    pub clauses: Vec<u32>,
    /// Per indexed clause, a bitset over the plan's offers (`words` words, bit `i` for
    /// `Plan::offers[i]`): those whose rule requires it.
    pub requires: Vec<u64>,
    /// Words per bitset.
    pub words: usize,
}

impl Index {
    /// Builds the index of a placement's plan (`None` for a small placement, or when no
    /// clause is required by two offers).
    fn build(plan: &Plan, offers: &[Offer]) -> Option<Index> {
        let n = plan.offers.len();
        if n < INDEX_MIN_OFFERS {
            return None;
        }
        let required = |planned: &Planned| -> Vec<u32> {
            let mut ids: Vec<u32> = match &offers[planned.offer as usize].clauses {
                Some(clauses) => clauses
                    .iter()
                    .filter_map(|c| match c {
                        Clause::Shared(id) => Some(*id),
                        Clause::Own(_) => None,
                    })
                    .collect(),
                None => Vec::new(),
            };
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        let required: Vec<Vec<u32>> = plan.offers.iter().map(required).collect();
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for ids in &required {
            for id in ids {
                *counts.entry(*id).or_default() += 1;
            }
        }
        let mut clauses: Vec<(u32, usize)> = counts.into_iter().filter(|(_, c)| *c >= 2).collect();
        if clauses.is_empty() {
            return None;
        }
        // The most required first (ties by id: the same catalog, the same index).
        clauses.sort_unstable_by_key(|(id, count)| (std::cmp::Reverse(*count), *id));
        clauses.truncate(INDEX_MAX_CLAUSES);
        let words = n.div_ceil(64);
        let mut index = Index {
            clauses: clauses.iter().map(|(id, _)| *id).collect(),
            requires: vec![0; clauses.len() * words],
            words,
        };
        for (k, id) in index.clauses.iter().enumerate() {
            let bits = &mut index.requires[k * words..(k + 1) * words];
            for (i, ids) in required.iter().enumerate() {
                if ids.binary_search(id).is_ok() {
                    bits[i / 64] |= 1 << (i % 64);
                }
            }
        }
        Some(index)
    }

    /// Fills `admitted` (`words` words) with the offers to visit, given which indexed
    /// clauses hold (`holds`, called once for each).
    #[inline]
    pub fn admit(&self, n: usize, admitted: &mut [u64], mut holds: impl FnMut(u32) -> bool) {
        all(n, admitted);
        for (k, &id) in self.clauses.iter().enumerate() {
            if !holds(id) {
                let requires = &self.requires[k * self.words..(k + 1) * self.words];
                for (word, r) in admitted.iter_mut().zip(requires) {
                    *word &= !r;
                }
            }
        }
    }
}

/// Fills `bits` (`n.div_ceil(64)` words) with the set of `n` offers.
#[inline]
pub fn all(n: usize, bits: &mut [u64]) {
    bits.fill(!0);
    if !n.is_multiple_of(64)
        && let Some(last) = bits.last_mut()
    {
        *last = (1u64 << (n % 64)) - 1;
    }
}

/// Shares the propensities that several offers write the same way and read no history
/// (compiled once in `formulas`), and lays out every placement's plan.
pub(super) fn build(
    placements: &mut [Placement],
    offers: &[Offer],
    policy: &Policy,
    formulas: &mut SharedFormulas,
) {
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for o in offers {
        if o.propensity.as_constant().is_none() && !o.propensity.src().is_empty() {
            *uses.entry(o.propensity.src()).or_default() += 1;
        }
    }
    let mut shared: HashMap<&str, Option<u32>> = HashMap::new();
    let propensity: Vec<Option<u32>> = offers
        .iter()
        .map(|o| {
            let src = o.propensity.src();
            if uses.get(src).copied().unwrap_or(0) < 2 {
                return None;
            }
            *shared
                .entry(src)
                .or_insert_with(|| formulas.add(&o.propensity))
        })
        .collect();
    for p in placements {
        let mut plan = Plan::default();
        for &idx in &p.offers {
            let o = &offers[idx];
            plan.offers
                .push(planned(o, idx, policy, propensity[idx], &mut plan.clauses));
        }
        plan.index = Index::build(&plan, offers);
        p.plan = plan;
    }
}

fn planned(
    o: &Offer,
    idx: usize,
    policy: &Policy,
    propensity: Option<u32>,
    clauses: &mut Vec<u32>,
) -> Planned {
    let mut flags = 0;
    if o.active != Window::default() {
        flags |= flags::WINDOW;
    }
    let start = clauses.len() as u32;
    let rule: Option<Vec<u32>> = match (&o.clauses, &o.eligibility_src) {
        (_, None) => Some(Vec::new()),
        (Some(cs), Some(_)) => cs
            .iter()
            .map(|c| match c {
                Clause::Shared(id) => Some(*id),
                Clause::Own(_) => None,
            })
            .collect(),
        (None, Some(_)) => None,
    };
    let mut mask = 0u64;
    if let Some(ids) = rule {
        flags |= flags::SHARED_RULE;
        for id in ids {
            match 1u64.checked_shl(id) {
                Some(bit) => mask |= bit,
                None => clauses.push(id),
            }
        }
    }
    if propensity.is_some() {
        flags |= flags::SHARED_PROPENSITY;
    }
    let terms = [&o.value, &o.weight, &o.context_weight].map(|f| f.as_constant());
    if terms.iter().all(Option::is_some) {
        flags |= flags::CONSTANT_TERMS;
    }
    let caps = &o.contact_policy;
    if !caps.max_impressions.is_empty()
        || caps.suppress_after_rejects.is_some()
        || caps.stop_after_accept
    {
        flags |= flags::CAPS;
    }
    if o.group_key != 0 && policy.groups.iter().any(|g| g.key == o.group_key) {
        flags |= flags::GROUP_POLICY;
    }
    if !o.budget.is_unlimited() {
        flags |= flags::BUDGET;
    }
    Planned {
        offer: idx as u32,
        key: o.key,
        group: o.group_key,
        flags,
        mask,
        clauses: (start, clauses.len() as u32),
        propensity: propensity.unwrap_or(u32::MAX),
        value: terms[0].unwrap_or(f64::NAN),
        weight: terms[1].unwrap_or(f64::NAN),
        context_weight: terms[2].unwrap_or(f64::NAN),
    }
}

// One cache line per offer: the loop over a placement streams through them.
const _: () = assert!(size_of::<Planned>() == 64);
