//! Volume counters for budgets: impressions per offer, group and channel, today (UTC) and
//! in total, counted from impression outcomes as they are journaled.
//!
//! One mutex orders counting with journal appends (`Db` appends an impression and counts
//! it while holding it, and compaction rotates the journal while holding it), so the
//! counters a snapshot holds are exactly those of the records before its position and
//! replay counts exactly the ones after. Appending under it never waits for the disk:
//! the writer takes its room in the journal's queue first ([`Permit`]).
//!
//! Decide never takes that mutex. Every scope the catalog can read a budget of (each
//! offer, each policy group and channel) has a cell of atomics, published through an
//! `ArcSwap` and kept up to date by the counting writer, so a decision reads budgets
//! without a lock, whatever the writers are waiting for.
//!
//! [`Permit`]: crate::storage::Permit

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use crate::catalog::Catalog;
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

/// The lock-free copies of the counters decide reads: one cell per scope of a catalog.
#[derive(Debug, Default)]
struct Published {
    cells: HashMap<BudgetScope, Cell>,
}

/// One scope's counter as two atomics. The day and today's count share one word (day in
/// the high 32 bits, today's count, saturated, in the low 32), so a reader never sees
/// yesterday's count under today's date. The total is stored after it: a reader may see
/// today's count one ahead of the total for a moment, which no budget check compares.
#[derive(Debug, Default)]
struct Cell {
    day_today: AtomicU64,
    total: AtomicU64,
}

impl Cell {
    fn store(&self, c: &Counter) {
        let today = u32::try_from(c.today).unwrap_or(u32::MAX);
        self.day_today.store(
            (u64::from(c.day as u32) << 32) | u64::from(today),
            Ordering::Release,
        );
        self.total.store(c.total, Ordering::Release);
    }

    fn spent(&self, day: i64) -> Spent {
        let day_today = self.day_today.load(Ordering::Acquire);
        Spent {
            today: if (day_today >> 32) as u32 == day as u32 {
                day_today & u64::from(u32::MAX)
            } else {
                0
            },
            total: self.total.load(Ordering::Acquire),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Spending {
    counters: Mutex<Counters>,
    published: ArcSwap<Published>,
}

impl Spending {
    /// The counters, for counting (in journal order) or copying into a snapshot.
    pub fn lock(&self) -> Counting<'_> {
        Counting {
            // Each update is one assignment: a poisoned lock is still consistent.
            counters: self.counters.lock().unwrap_or_else(|e| e.into_inner()),
            published: self.published.load_full(),
        }
    }

    /// Publishes cells for every scope `catalogs` can read a budget of, with the counts
    /// so far. Called with the catalog about to be swapped in and the one in force, so
    /// decisions on either find their scopes.
    pub fn publish(&self, catalogs: &[&Catalog]) {
        let counting = self.lock();
        let mut cells = HashMap::new();
        for catalog in catalogs {
            let scopes = catalog
                .offers
                .iter()
                .map(|o| BudgetScope::Offer(o.key))
                .chain(
                    catalog
                        .policy
                        .groups
                        .iter()
                        .map(|g| BudgetScope::Group(g.key)),
                )
                .chain(
                    catalog
                        .policy
                        .channels
                        .iter()
                        .map(|c| BudgetScope::Channel(c.key)),
                );
            for scope in scopes {
                cells.entry(scope).or_insert_with(|| {
                    let cell = Cell::default();
                    if let Some(c) = counting.counters.get(&scope) {
                        cell.store(c);
                    }
                    cell
                });
            }
        }
        // Still holding the counters: no count lands between the copy and the swap.
        self.published.store(Arc::new(Published { cells }));
        drop(counting);
    }

    /// What the budgets of a decision at `now` read.
    pub fn at(&self, now: i64) -> SpentAt {
        SpentAt {
            published: self.published.load_full(),
            day: now.div_euclid(DAY),
        }
    }
}

/// The counters, locked for counting.
pub(crate) struct Counting<'a> {
    counters: MutexGuard<'a, Counters>,
    published: Arc<Published>,
}

impl Counting<'_> {
    /// Counts one impression at `at` in each scope.
    pub fn count(&mut self, scopes: &[BudgetScope], at: i64) {
        let day = at.div_euclid(DAY);
        for scope in scopes {
            let c = self.counters.entry(*scope).or_default();
            if day > c.day {
                c.day = day;
                c.today = 0;
            }
            if day == c.day {
                c.today += 1;
            }
            c.total += 1;
            if let Some(cell) = self.published.cells.get(scope) {
                cell.store(c);
            }
        }
    }

    /// Puts a counter in place (restoring a snapshot).
    pub fn set(&mut self, scope: BudgetScope, counter: Counter) {
        if let Some(cell) = self.published.cells.get(&scope) {
            cell.store(&counter);
        }
        self.counters.insert(scope, counter);
    }

    /// Forgets every count (a replay starting over).
    pub fn clear(&mut self) {
        self.counters.clear();
        for cell in self.published.cells.values() {
            cell.store(&Counter::default());
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
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

/// The counters as a decision on one day reads them: no lock.
#[derive(Debug)]
pub struct SpentAt {
    published: Arc<Published>,
    day: i64,
}

impl Budgets for SpentAt {
    fn spent(&self, scope: BudgetScope) -> Spent {
        self.published
            .cells
            .get(&scope)
            .map_or_else(Spent::default, |c| c.spent(self.day))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A catalog of the sample rules (its first offer is the one counted).
    fn sample() -> Catalog {
        Catalog::load(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"))
            .expect("the sample rules load")
    }

    #[test]
    fn today_resets_at_midnight_utc_and_total_does_not() {
        let catalog = sample();
        let spending = Spending::default();
        spending.publish(&[&catalog]);
        let offer = [BudgetScope::Offer(catalog.offers[0].key)];
        spending.lock().count(&offer, DAY - 1);
        spending.lock().count(&offer, DAY - 2);
        assert_eq!(
            spending.at(DAY - 1).spent(offer[0]),
            Spent { today: 2, total: 2 }
        );
        assert_eq!(
            spending.at(DAY).spent(offer[0]),
            Spent { today: 0, total: 2 }
        );
        spending.lock().count(&offer, DAY + 5);
        spending.lock().count(&offer, DAY - 3);
        assert_eq!(
            spending.at(DAY).spent(offer[0]),
            Spent { today: 1, total: 4 },
            "a late impression of yesterday counts in the total only"
        );
    }

    #[test]
    fn counts_before_publishing_are_published_and_reads_take_no_lock() {
        let catalog = sample();
        let spending = Spending::default();
        let offer = BudgetScope::Offer(catalog.offers[0].key);
        spending.lock().count(&[offer], 5);
        assert_eq!(
            spending.at(5).spent(offer),
            Spent::default(),
            "nothing published yet"
        );
        spending.publish(&[&catalog]);
        assert_eq!(spending.at(5).spent(offer), Spent { today: 1, total: 1 });
        // A writer holding the counters does not keep a decision from reading them.
        let held = spending.lock();
        assert_eq!(spending.at(5).spent(offer), Spent { today: 1, total: 1 });
        drop(held);
    }
}
