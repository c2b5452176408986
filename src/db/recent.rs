//! Recently made decisions: what an outcome that names only its decision needs to find
//! the customer and channel whose history it joins.

use std::sync::RwLock;

use dashmap::DashMap;

/// What an outcome needs to know about its decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recent {
    pub customer: std::sync::Arc<str>,
    /// [`key`](crate::schema::key) of the placement's channel.
    pub channel: u32,
}

/// Two generations of decisions: inserts go to the current one; once it holds half the
/// capacity, the previous one is dropped and the current one takes its place. Memory
/// stays under the capacity, an insert never scans, and a decision is remembered for at
/// least the last `capacity / 2` decisions.
#[derive(Debug)]
pub(crate) struct Recents {
    /// `[current, previous]`.
    generations: RwLock<[DashMap<u128, Recent>; 2]>,
    half: usize,
}

impl Recents {
    pub fn new(capacity: usize) -> Recents {
        Recents {
            generations: RwLock::new([DashMap::new(), DashMap::new()]),
            half: (capacity / 2).max(1),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, [DashMap<u128, Recent>; 2]> {
        // Every update leaves the maps consistent: a poisoned lock is still usable.
        self.generations.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, id: u128, recent: Recent) {
        let full = {
            let g = self.read();
            g[0].insert(id, recent);
            g[0].len() >= self.half
        };
        if full {
            let dropped = {
                let mut g = self.generations.write().unwrap_or_else(|e| e.into_inner());
                if g[0].len() < self.half {
                    return;
                }
                g.swap(0, 1);
                std::mem::take(&mut g[0])
            };
            // Freed outside the lock.
            drop(dropped);
        }
    }

    pub fn get(&self, id: u128) -> Option<Recent> {
        let g = self.read();
        g[0].get(&id)
            .or_else(|| g[1].get(&id))
            .map(|r| r.value().clone())
    }

    pub fn retain(&self, mut keep: impl FnMut(u128, &Recent) -> bool) {
        let g = self.read();
        for map in g.iter() {
            map.retain(|id, r| keep(*id, r));
        }
    }

    /// Every remembered decision, oldest generation first.
    pub fn entries(&self) -> Vec<(u128, Recent)> {
        let g = self.read();
        g.iter()
            .rev()
            .flat_map(|m| {
                m.iter()
                    .map(|e| (*e.key(), e.value().clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    pub fn clear(&self) {
        let g = self.read();
        g[0].clear();
        g[1].clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_bounded_and_the_latest_half_is_always_remembered() {
        let recents = Recents::new(100);
        let recent = |i: u128| Recent {
            customer: format!("c{i}").into(),
            channel: 1,
        };
        for i in 0..1000u128 {
            recents.insert(i, recent(i));
            assert!(recents.entries().len() <= 100);
        }
        for i in 950..1000 {
            assert_eq!(recents.get(i), Some(recent(i)), "{i}");
        }
        assert_eq!(recents.get(10), None);
        recents.retain(|_, r| &*r.customer != "c999");
        assert_eq!(recents.get(999), None);
    }
}
