//! Bounded memories of recent things: the decisions an outcome may name, and the
//! outcomes a retry may repeat.

use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use crate::state::table::Table;

/// What an outcome needs to know about its decision: 40 bytes, so that with its 16-byte
/// id a remembered decision's slot is 56.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recent {
    pub customer: Arc<str>,
    /// The channel and the shown offers together: apart, the enum's tag and the channel
    /// would each take a word of padding.
    seen: Seen,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Unknown { channel: u32 },
    Few { channel: u32, n: u8, keys: [u32; 3] },
    Many { channel: u32, keys: Box<[u32]> },
}

impl Recent {
    /// `channel` is the [`key`](crate::schema::key) of the placement's channel.
    pub fn new(customer: Arc<str>, channel: u32, shown: Shown) -> Recent {
        let seen = match shown {
            Shown::Unknown => Seen::Unknown { channel },
            Shown::Few(n, keys) => Seen::Few { channel, n, keys },
            Shown::Many(keys) => Seen::Many { channel, keys },
        };
        Recent { customer, seen }
    }

    /// The [`key`](crate::schema::key) of the placement's channel.
    pub fn channel(&self) -> u32 {
        match self.seen {
            Seen::Unknown { channel } | Seen::Few { channel, .. } | Seen::Many { channel, .. } => {
                channel
            }
        }
    }

    /// The keys of the offers the decision showed, or `None` when not known.
    pub fn shown(&self) -> Option<&[u32]> {
        match &self.seen {
            Seen::Unknown { .. } => None,
            Seen::Few { n, keys, .. } => Some(&keys[..usize::from(*n)]),
            Seen::Many { keys, .. } => Some(keys),
        }
    }
}

/// The keys of the offers a decision showed: up to three in place (most placements show
/// one to three offers), more on the heap, or not known (a decision read from a
/// first-wave journal or snapshot: then any offer of the catalog is taken).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Shown {
    Unknown,
    Few(u8, [u32; 3]),
    Many(Box<[u32]>),
}

impl From<Option<&[u32]>> for Shown {
    fn from(keys: Option<&[u32]>) -> Shown {
        match keys {
            None => Shown::Unknown,
            Some(keys) if keys.len() <= 3 => {
                let mut few = [0; 3];
                few[..keys.len()].copy_from_slice(keys);
                Shown::Few(keys.len() as u8, few)
            }
            Some(keys) => Shown::Many(keys.into()),
        }
    }
}

/// A map that forgets its oldest entries: inserts go to the current generation; once it
/// holds half the capacity, the previous generation is dropped and the current one takes
/// its place. Memory stays under the capacity, an insert never scans, and the latest
/// `capacity / 2` entries are always remembered.
pub(crate) struct Generations<K: Eq + Hash, V> {
    /// `[current, previous]`.
    maps: RwLock<[Table<(K, V)>; 2]>,
    /// Entries added to the current generation.
    current: AtomicUsize,
    half: usize,
}

impl<K: Eq + Hash, V> std::fmt::Debug for Generations<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generations")
            .field("current", &self.current.load(Ordering::Relaxed))
            .field("half", &self.half)
            .finish()
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Generations<K, V> {
    pub fn new(capacity: usize) -> Self {
        let half = (capacity / 2).max(1);
        Generations {
            maps: RwLock::new([Table::new(half), Table::new(half)]),
            current: AtomicUsize::new(0),
            half,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, [Table<(K, V)>; 2]> {
        // Every update leaves the maps consistent: a poisoned lock is still usable.
        self.maps.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Inserts unless the key is remembered; returns whether it was new.
    pub fn insert_new(&self, key: K, value: V) -> bool {
        let (new, full) = {
            let g = self.read();
            if g[1].contains_key(&key) {
                return false;
            }
            // An entry already current keeps its value.
            let new = g[0].insert_new(key, value);
            (new, new && self.added())
        };
        if full {
            self.rotate();
        }
        new
    }

    /// Inserts or replaces in the current generation. For keys that are new (decision
    /// ids): an older entry for the key in the previous generation is not removed, only
    /// shadowed until that generation goes.
    pub fn insert(&self, key: K, value: V) {
        let full = {
            let g = self.read();
            g[0].insert(key, value) && self.added()
        };
        if full {
            self.rotate();
        }
    }

    /// Counts an entry added to the current generation; whether it is now full.
    fn added(&self) -> bool {
        self.current.fetch_add(1, Ordering::Relaxed) + 1 >= self.half
    }

    fn rotate(&self) {
        let dropped = {
            let mut g = self.maps.write().unwrap_or_else(|e| e.into_inner());
            // Another thread may have rotated while this one waited for the lock.
            if self.current.load(Ordering::Relaxed) < self.half {
                return;
            }
            self.current.store(0, Ordering::Relaxed);
            g.swap(0, 1);
            std::mem::replace(&mut g[0], Table::new(self.half))
        };
        // Freed outside the lock.
        drop(dropped);
    }

    pub fn get(&self, key: &K) -> Option<V> {
        let g = self.read();
        g[0].get(key).or_else(|| g[1].get(key))
    }

    /// Replaces the value of a remembered key, in whichever generation holds it.
    pub fn update(&self, key: &K, value: V) {
        let g = self.read();
        if !g[0].update(key, value.clone()) {
            g[1].update(key, value);
        }
    }

    pub fn remove(&self, key: &K) {
        let g = self.read();
        g[0].remove(key);
        g[1].remove(key);
    }

    pub fn retain(&self, mut keep: impl FnMut(&K, &V) -> bool) {
        let g = self.read();
        for map in g.iter() {
            map.retain(|(k, v)| keep(k, v));
        }
    }

    /// Every entry, oldest generation first.
    pub fn entries(&self) -> Vec<(K, V)> {
        let g = self.read();
        let mut all = Vec::with_capacity(g[0].len() + g[1].len());
        for map in g.iter().rev() {
            map.for_each(|(k, v)| all.push((k.clone(), v.clone())));
        }
        all
    }

    pub fn clear(&self) {
        let mut g = self.maps.write().unwrap_or_else(|e| e.into_inner());
        *g = [Table::new(self.half), Table::new(self.half)];
        self.current.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_bounded_and_the_latest_half_is_always_remembered() {
        let recents = Generations::new(100);
        let recent = |i: u128| Recent::new(format!("c{i}").into(), 1, Shown::Unknown);
        for i in 0..1000u128 {
            recents.insert(i, recent(i));
            assert!(recents.entries().len() <= 100);
        }
        for i in 950..1000 {
            assert_eq!(recents.get(&i), Some(recent(i)), "{i}");
        }
        assert_eq!(recents.get(&10), None);
        recents.retain(|_, r| &*r.customer != "c999");
        assert_eq!(recents.get(&999), None);
    }

    #[test]
    fn insert_new_sees_both_generations() {
        let seen = Generations::new(4);
        assert!(seen.insert_new(1, ()));
        assert!(
            seen.insert_new(2, ()),
            "fills the current generation: it rotates"
        );
        assert!(
            !seen.insert_new(1, ()),
            "remembered in the previous generation"
        );
        assert!(seen.insert_new(3, ()));
        assert!(
            seen.insert_new(4, ()),
            "rotates again: 1 and 2 are forgotten"
        );
        assert!(seen.insert_new(1, ()));
        assert!(!seen.insert_new(4, ()));
    }

    #[test]
    fn a_remembered_decision_takes_a_56_byte_slot() {
        assert_eq!(size_of::<Recent>(), 40);
        assert_eq!(size_of::<Option<(uuid::Uuid, Recent)>>(), 56);
        let few = Recent::new("c".into(), 7, Shown::from(Some(&[1, 2][..])));
        assert_eq!((few.channel(), few.shown()), (7, Some(&[1, 2][..])));
        let many = Recent::new("c".into(), 8, Shown::from(Some(&[1, 2, 3, 4][..])));
        assert_eq!((many.channel(), many.shown()), (8, Some(&[1, 2, 3, 4][..])));
        let unknown = Recent::new("c".into(), 9, Shown::Unknown);
        assert_eq!((unknown.channel(), unknown.shown()), (9, None));
    }
}
