//! Contact policy and budgets for one decision: what the customer's history and the
//! volume counters allow.

use std::collections::HashMap;

use crate::catalog::plan::flags;
use crate::catalog::{Budget, Catalog, FrequencyCap, Offer, Placement, Planned, ScopePolicy};
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
/// lookup, not a scan of the whole history, however many offers there are.
///
/// An open-addressing table keyed by offer key (keys are already hashes) whose entries
/// head a chain of that offer's events, newest first: built in one pass over the history
/// (no sort), one allocation, and an offer with no history, most offers, costs one probe.
pub(super) struct HistoryIndex<'h> {
    events: &'h [Event],
    // INVARIANT (built by `new`): `table` has `2 * slots + events.len()` entries. For a
    // slot `s < slots`: `table[s]` is an offer key (0: empty; keys are never 0) and
    // `table[slots + s]` is 1 + the position of that offer's newest event. For an event
    // `i`: `table[2 * slots + i]` is 1 + the position of the same offer's previous event,
    // or 0. `slots` is a power of two of at least twice the events.
    table: Vec<u32>,
    mask: usize,
}

impl<'h> HistoryIndex<'h> {
    pub(super) fn new(events: &'h [Event]) -> HistoryIndex<'h> {
        if events.is_empty() {
            return HistoryIndex {
                events,
                table: Vec::new(),
                mask: 0,
            };
        }
        let slots = (2 * events.len()).next_power_of_two();
        let mask = slots - 1;
        let mut table = vec![0u32; 2 * slots + events.len()];
        for (i, e) in events.iter().enumerate() {
            if e.offer == 0 {
                // Not an offer key (`schema::key` is never 0), and 0 marks empty slots.
                continue;
            }
            let mut s = e.offer as usize & mask;
            while table[s] != 0 && table[s] != e.offer {
                s = (s + 1) & mask;
            }
            table[s] = e.offer;
            table[2 * slots + i] = table[slots + s];
            table[slots + s] = i as u32 + 1;
        }
        HistoryIndex {
            events,
            table,
            mask,
        }
    }

    /// Whether the customer has any event of offer `key`.
    #[inline]
    fn has(&self, key: u32) -> bool {
        self.of_offer(key).next != 0
    }

    /// The events of offer `key`, newest first.
    fn of_offer(&self, key: u32) -> OfferEvents<'_, 'h> {
        let mut next = 0;
        if !self.table.is_empty() {
            let slots = self.mask + 1;
            let mut s = key as usize & self.mask;
            loop {
                match self.table[s] {
                    0 => break,
                    k if k == key => {
                        next = self.table[slots + s];
                        break;
                    }
                    _ => s = (s + 1) & self.mask,
                }
            }
        }
        OfferEvents { index: self, next }
    }
}

/// The events of one offer, following its chain in a [`HistoryIndex`].
#[derive(Clone)]
struct OfferEvents<'i, 'h> {
    index: &'i HistoryIndex<'h>,
    /// 1 + the position of the next event to yield, 0 at the end.
    next: u32,
}

impl<'h> Iterator for OfferEvents<'_, 'h> {
    type Item = &'h Event;

    #[inline]
    fn next(&mut self) -> Option<&'h Event> {
        let i = self.next.checked_sub(1)? as usize;
        let chain = 2 * (self.index.mask + 1);
        self.next = self.index.table[chain + i];
        Some(&self.index.events[i])
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

    /// Whether [`capped`](Checks::capped) can find anything for the offer: it has caps and
    /// this customer has events of it (a cap allows at least one impression), or its group
    /// has a policy. Most offers, most customers: no.
    #[inline]
    pub(super) fn may_cap(&self, planned: &Planned) -> bool {
        planned.has(flags::GROUP_POLICY)
            || (planned.has(flags::CAPS) && self.history.has(planned.key))
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

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Every offer's events through the index are exactly its events in the history,
        /// for offer keys that collide in the table (few distinct low bits), offers that
        /// have no events, and events whose key is 0 (no offer's).
        #[test]
        fn the_index_finds_each_offers_events(
            offers in proptest::collection::vec(0u32..40, 0..120),
            probe in 1u32..45,
        ) {
            // Keys 1..40 times 64: their low bits collide, so probing wraps around.
            let key = |k: u32| k * 64 + k % 3;
            let events: Vec<Event> = offers
                .iter()
                .enumerate()
                .map(|(i, &o)| Event {
                    at: i as i64,
                    offer: key(o),
                    group: 0,
                    channel: 0,
                    kind: EventKind::Impression,
                })
                .collect();
            let index = HistoryIndex::new(&events);
            for k in (1..45).chain([probe]) {
                let mut found: Vec<i64> = index.of_offer(key(k)).map(|e| e.at).collect();
                found.sort_unstable();
                let expected: Vec<i64> = events
                    .iter()
                    .filter(|e| e.offer == key(k))
                    .map(|e| e.at)
                    .collect();
                proptest::prop_assert_eq!(found, expected);
            }
        }
    }
}
