//! Contact policy and budgets for one decision: what the customer's history and the
//! volume counters allow.

use std::collections::HashMap;

use crate::catalog::{Budget, Catalog, FrequencyCap, Offer, Placement, ScopePolicy};
use crate::state::{Event, EventKind};

/// What a budget is counted over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BudgetScope {
    /// An offer, by [`key`](crate::schema::key) of its id.
    Offer(u32),
    Group(u32),
    Channel(u32),
}

/// Impressions counted against a budget: today (UTC) and in all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spent {
    pub today: u64,
    pub total: u64,
}

/// The volume counters decide reads (the server owns and updates them atomically).
pub trait Budgets {
    fn spent(&self, scope: BudgetScope) -> Spent;
}

/// No volume counted anywhere: every budget has room.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoBudgets;

impl Budgets for NoBudgets {
    fn spent(&self, _: BudgetScope) -> Spent {
        Spent::default()
    }
}

impl Budgets for HashMap<BudgetScope, Spent> {
    fn spent(&self, scope: BudgetScope) -> Spent {
        self.get(&scope).copied().unwrap_or_default()
    }
}

/// A customer's events, with an index by offer so that checking an offer's caps costs a
/// binary search, not a scan of the whole history, however many offers there are.
pub(super) struct HistoryIndex<'h> {
    events: &'h [Event],
    // INVARIANT: sorted by (offer key, position); built by `new`.
    by_offer: Vec<(u32, u32)>,
}

impl<'h> HistoryIndex<'h> {
    pub(super) fn new(events: &'h [Event]) -> HistoryIndex<'h> {
        let mut by_offer: Vec<(u32, u32)> = events
            .iter()
            .enumerate()
            .map(|(i, e)| (e.offer, i as u32))
            .collect();
        by_offer.sort_unstable();
        HistoryIndex { events, by_offer }
    }

    fn of_offer(&self, key: u32) -> impl Iterator<Item = &'h Event> + Clone + '_ {
        let start = self.by_offer.partition_point(|(k, _)| *k < key);
        self.by_offer[start..]
            .iter()
            .take_while(move |(k, _)| *k == key)
            .map(|(_, i)| &self.events[*i as usize])
    }
}

/// The first cap in `caps` that `events` reach, with the count seen.
fn reached<'e>(
    caps: &[FrequencyCap],
    events: impl Iterator<Item = &'e Event> + Clone,
    now: i64,
    channel: u32,
) -> Option<(FrequencyCap, usize)> {
    caps.iter().find_map(|cap| {
        let since = now.saturating_sub(cap.within);
        let seen = events
            .clone()
            .filter(|e| {
                e.kind == EventKind::Impression
                    && e.at >= since
                    && e.at <= now
                    && (!cap.per_channel || e.channel == channel)
            })
            .count();
        (seen >= cap.count as usize).then_some((*cap, seen))
    })
}

fn describe(cap: &FrequencyCap, seen: usize, scope: &str) -> String {
    let days = cap.within as f64 / 86_400_000.0;
    let channel = if cap.per_channel {
        " in this channel"
    } else {
        ""
    };
    format!(
        "{scope} reached its cap of {} impression(s) in {days}d{channel} ({seen} seen)",
        cap.count
    )
}

fn exhausted(budget: &Budget, spent: Spent) -> Option<(&'static str, u64)> {
    match (budget.per_day, budget.total) {
        (Some(limit), _) if spent.today >= limit => Some(("daily", limit)),
        (_, Some(limit)) if spent.total >= limit => Some(("total", limit)),
        _ => None,
    }
}

/// A reason, written out only when explaining: otherwise an empty string, which does not
/// allocate, so the hot path pays nothing for messages.
fn reason(explain: bool, text: impl FnOnce() -> String) -> Option<String> {
    Some(if explain { text() } else { String::new() })
}

/// The policy checks of one decision, with what is shared by all offers computed once.
pub(super) struct Checks<'a> {
    history: &'a HistoryIndex<'a>,
    placement: &'a Placement,
    catalog: &'a Catalog,
    budgets: &'a dyn Budgets,
    now: i64,
}

impl<'a> Checks<'a> {
    pub(super) fn new(
        catalog: &'a Catalog,
        placement: &'a Placement,
        history: &'a HistoryIndex<'a>,
        now: i64,
        budgets: &'a dyn Budgets,
    ) -> Checks<'a> {
        Checks {
            history,
            placement,
            catalog,
            budgets,
            now,
        }
    }

    /// Why nothing may be shown in this placement now: a channel cap, customer fatigue or
    /// a channel budget.
    pub(super) fn suppressed(&self) -> Option<String> {
        let events = self.history.events;
        let channel = self.placement.channel_key;
        let policy = &self.catalog.policy;
        if let Some((cap, seen)) = reached(&policy.fatigue, events.iter(), self.now, channel) {
            return Some(describe(&cap, seen, "the customer"));
        }
        for scope in policy.channels.iter().filter(|c| c.key == channel) {
            let in_channel = events.iter().filter(|e| e.channel == channel);
            if let Some((cap, seen)) =
                reached(&scope.max_impressions, in_channel, self.now, channel)
            {
                return Some(describe(&cap, seen, &format!("channel `{}`", scope.id)));
            }
            if let Some((period, limit)) = exhausted(
                &scope.budget,
                self.budgets.spent(BudgetScope::Channel(channel)),
            ) {
                return Some(format!(
                    "channel `{}` spent its {period} budget of {limit}",
                    scope.id
                ));
            }
        }
        None
    }

    /// The caps and budget of `offer`'s group, if the policy has them.
    fn group_of(&self, offer: &Offer) -> impl Iterator<Item = &'a ScopePolicy> + use<'a> {
        let group = offer.group_key;
        self.catalog
            .policy
            .groups
            .iter()
            .filter(move |g| group != 0 && g.key == group)
    }

    /// Why a contact-policy cap forbids `offer`; the reason is written out only when
    /// `explain` is set.
    pub(super) fn capped(&self, offer: &Offer, explain: bool) -> Option<String> {
        let policy = &offer.contact_policy;
        let channel = self.placement.channel_key;
        let mine = self.history.of_offer(offer.key);
        if let Some((cap, seen)) = reached(&policy.max_impressions, mine.clone(), self.now, channel)
        {
            return reason(explain, || describe(&cap, seen, "the offer"));
        }
        if let Some(rule) = &policy.suppress_after_rejects {
            let since = self.now.saturating_sub(rule.within);
            let rejects = mine
                .clone()
                .filter(|e| e.kind == EventKind::Reject && e.at >= since && e.at <= self.now);
            let (count, last) =
                rejects.fold((0u32, i64::MIN), |(n, last), e| (n + 1, last.max(e.at)));
            if count >= rule.count && self.now < last.saturating_add(rule.suppress_for) {
                return reason(explain, || {
                    format!(
                        "suppressed after {count} reject(s), the last {}h ago",
                        (self.now - last) / 3_600_000
                    )
                });
            }
        }
        if policy.stop_after_accept
            && mine
                .clone()
                .any(|e| e.kind == EventKind::Accept && e.at <= self.now)
        {
            return reason(explain, || "already accepted".to_string());
        }
        for scope in self.group_of(offer) {
            let in_group = self
                .history
                .events
                .iter()
                .filter(|e| e.group == offer.group_key);
            if let Some((cap, seen)) = reached(&scope.max_impressions, in_group, self.now, channel)
            {
                return reason(explain, || {
                    describe(&cap, seen, &format!("group `{}`", scope.id))
                });
            }
        }
        None
    }

    /// Why a budget forbids `offer`; as `capped`, written out only when explaining.
    pub(super) fn over_budget(&self, offer: &Offer, explain: bool) -> Option<String> {
        if let Some((period, limit)) = exhausted(
            &offer.budget,
            self.budgets.spent(BudgetScope::Offer(offer.key)),
        ) {
            return reason(explain, || {
                format!("the offer spent its {period} budget of {limit}")
            });
        }
        for scope in self.group_of(offer).filter(|g| !g.budget.is_unlimited()) {
            if let Some((period, limit)) = exhausted(
                &scope.budget,
                self.budgets.spent(BudgetScope::Group(scope.key)),
            ) {
                return reason(explain, || {
                    format!("group `{}` spent its {period} budget of {limit}", scope.id)
                });
            }
        }
        None
    }
}
