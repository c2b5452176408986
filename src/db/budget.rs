//! Volume counters for budgets: impressions per offer, group and channel, today (UTC) and
//! in total, counted from impression outcomes as they are journaled.
//!
//! One mutex orders counting with journal appends (`Db` appends an impression and counts
//! it while holding it, and compaction rotates the journal while holding it), so the
//! counters a snapshot holds are exactly those of the records before its position and
//! replay counts exactly the ones after.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::decide::{BudgetScope, Budgets, Spent};

const DAY: i64 = 86_400_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counter {
    /// The UTC day (days since the epoch) `today` counts.
    pub day: i64,
    pub today: u64,
    pub total: u64,
}

pub(crate) type Counters = HashMap<BudgetScope, Counter>;

#[derive(Debug, Default)]
pub(crate) struct Spending {
    counters: Mutex<Counters>,
}

impl Spending {
    pub fn lock(&self) -> MutexGuard<'_, Counters> {
        // Each update is one assignment: a poisoned lock is still consistent.
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the budgets of a decision at `now` read.
    pub fn at(&self, now: i64) -> SpentAt<'_> {
        SpentAt {
            spending: self,
            day: now.div_euclid(DAY),
        }
    }
}

/// Counts one impression at `at` in each scope.
pub(crate) fn count(counters: &mut Counters, scopes: &[BudgetScope], at: i64) {
    let day = at.div_euclid(DAY);
    for scope in scopes {
        let c = counters.entry(*scope).or_default();
        if day > c.day {
            c.day = day;
            c.today = 0;
        }
        if day == c.day {
            c.today += 1;
        }
        c.total += 1;
    }
}

/// The scopes an impression of `offer` (with `group`, 0 for none) in `channel` (0 for
/// unknown) counts in.
pub(crate) fn scopes(offer: u32, group: u32, channel: u32) -> Vec<BudgetScope> {
    let mut out = vec![BudgetScope::Offer(offer)];
    if group != 0 {
        out.push(BudgetScope::Group(group));
    }
    if channel != 0 {
        out.push(BudgetScope::Channel(channel));
    }
    out
}

/// The counters as a decision on one day reads them.
#[derive(Debug)]
pub struct SpentAt<'a> {
    spending: &'a Spending,
    day: i64,
}

impl Budgets for SpentAt<'_> {
    fn spent(&self, scope: BudgetScope) -> Spent {
        let counters = self.spending.lock();
        counters.get(&scope).map_or_else(Spent::default, |c| Spent {
            today: if c.day == self.day { c.today } else { 0 },
            total: c.total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn today_resets_at_midnight_utc_and_total_does_not() {
        let spending = Spending::default();
        let offer = [BudgetScope::Offer(7)];
        count(&mut spending.lock(), &offer, DAY - 1);
        count(&mut spending.lock(), &offer, DAY - 2);
        assert_eq!(
            spending.at(DAY - 1).spent(offer[0]),
            Spent { today: 2, total: 2 }
        );
        assert_eq!(
            spending.at(DAY).spent(offer[0]),
            Spent { today: 0, total: 2 }
        );
        count(&mut spending.lock(), &offer, DAY + 5);
        count(&mut spending.lock(), &offer, DAY - 3);
        assert_eq!(
            spending.at(DAY).spent(offer[0]),
            Spent { today: 1, total: 4 },
            "a late impression of yesterday counts in the total only"
        );
    }
}
