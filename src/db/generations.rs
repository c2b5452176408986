//! Bounded memories of recent things: the decisions an outcome may name, and the
//! outcomes a retry may repeat.

use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

use crate::state::table::Table;

/// What an outcome needs to know about its decision: whose it was, the placement's
/// channel and the offers it showed. 40 bytes, so that with its 16-byte id a remembered
/// decision's slot is 56; what fits in [`INLINE`] bytes (a customer id of up to 21 bytes
/// with three offers shown, 29 with one) is kept in place, the rest in one allocation of
/// exactly its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recent(Packed);

/// Bytes kept in place: what the enum leaves of 40 once its tag and the length are in.
const INLINE: usize = 38;

/// The channel (u32, little-endian), the number of offers shown ([`UNKNOWN`] when not
/// known), their keys (u32 each) and then the customer id.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Packed {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

/// The count of a decision whose shown offers are not known.
const UNKNOWN: u8 = u8::MAX;

impl Recent {
    /// `channel` is the [`key`](crate::schema::key) of the placement's channel; `shown`
    /// the keys of the offers the decision showed, `None` when not known (a decision read
    /// from a first-wave journal or snapshot: then any offer of the catalog is taken).
    pub fn new(customer: &str, channel: u32, shown: Option<&[u32]>) -> Recent {
        Self::pack(customer, channel, shown.map(|k| k.iter().copied()))
    }

    /// As [`Recent::new`], the shown keys drawn as they come (a decision's offers).
    pub fn with_shown(
        customer: &str,
        channel: u32,
        shown: impl ExactSizeIterator<Item = u32>,
    ) -> Recent {
        Self::pack(customer, channel, Some(shown))
    }

    fn pack(
        customer: &str,
        channel: u32,
        shown: Option<impl ExactSizeIterator<Item = u32>>,
    ) -> Recent {
        // More offers than a count can say are taken as not known: any offer is then
        // accepted, never one refused. No placement shows 255.
        let shown = shown.filter(|k| k.len() < usize::from(UNKNOWN));
        let count = shown.as_ref().map_or(0, ExactSizeIterator::len);
        let len = 5 + 4 * count + customer.len();
        let put = |bytes: &mut [u8]| {
            bytes[..4].copy_from_slice(&channel.to_le_bytes());
            bytes[4] = if shown.is_some() {
                count as u8
            } else {
                UNKNOWN
            };
            for (at, k) in bytes[5..]
                .chunks_exact_mut(4)
                .zip(shown.into_iter().flatten())
            {
                at.copy_from_slice(&k.to_le_bytes());
            }
            bytes[5 + 4 * count..len].copy_from_slice(customer.as_bytes());
        };
        Recent(if len <= INLINE {
            let mut bytes = [0; INLINE];
            put(&mut bytes);
            Packed::Inline {
                len: len as u8,
                bytes,
            }
        } else {
            let mut bytes = vec![0; len].into_boxed_slice();
            put(&mut bytes);
            Packed::Heap(bytes)
        })
    }

    fn bytes(&self) -> &[u8] {
        match &self.0 {
            Packed::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Packed::Heap(bytes) => bytes,
        }
    }

    fn count(&self) -> Option<usize> {
        let count = self.bytes()[4];
        (count != UNKNOWN).then_some(usize::from(count))
    }

    /// The customer whose decision it was.
    pub fn customer(&self) -> &str {
        let from = 5 + 4 * self.count().unwrap_or(0);
        std::str::from_utf8(&self.bytes()[from..]).expect("written from a str")
    }

    /// The [`key`](crate::schema::key) of the placement's channel.
    pub fn channel(&self) -> u32 {
        let bytes = self.bytes();
        u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
    }

    /// The keys of the offers the decision showed, or `None` when not known.
    pub fn shown(&self) -> Option<impl Iterator<Item = u32> + Clone + '_> {
        let count = self.count()?;
        Some(
            self.bytes()[5..5 + 4 * count]
                .chunks_exact(4)
                .map(|k| u32::from_le_bytes([k[0], k[1], k[2], k[3]])),
        )
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
    /// Generations dropped so far (a `clear` drops both): which table a walk through
    /// them ([`Generations::for_each_shard`]) was in, whatever rotated meanwhile.
    dropped: AtomicUsize,
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
            dropped: AtomicUsize::new(0),
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
            self.dropped.fetch_add(1, Ordering::Relaxed);
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

    /// Calls `f` with every entry, oldest generation first, a copy of one shard at a time
    /// handed over outside every lock (a snapshot writes them out meanwhile: holding the
    /// generations' lock that long would hold up a rotation, and every insert behind it).
    /// An entry whose generation is dropped while the walk goes on is passed over, as it
    /// would be by a walk a moment later.
    pub fn for_each_shard(&self, mut f: impl FnMut(Vec<(K, V)>)) {
        let start = self.dropped.load(Ordering::Relaxed);
        for generation in [1, 0] {
            let shards = self.read()[generation].shards();
            for shard in 0..shards {
                let copy = {
                    let g = self.read();
                    // Where the table walked is now: one place older per rotation since.
                    let dropped = self.dropped.load(Ordering::Relaxed) - start;
                    match generation + dropped {
                        at @ 0..=1 => g[at].copy_shard(shard),
                        _ => continue,
                    }
                };
                f(copy);
            }
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
        self.dropped.fetch_add(2, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_bounded_and_the_latest_half_is_always_remembered() {
        let recents = Generations::new(100);
        let recent = |i: u128| Recent::new(&format!("c{i}"), 1, None);
        for i in 0..1000u128 {
            recents.insert(i, recent(i));
            assert!(recents.entries().len() <= 100);
        }
        for i in 950..1000 {
            assert_eq!(recents.get(&i), Some(recent(i)), "{i}");
        }
        assert_eq!(recents.get(&10), None);
        recents.retain(|_, r| r.customer() != "c999");
        assert_eq!(recents.get(&999), None);
    }

    #[test]
    fn a_walk_by_shards_sees_every_entry_once_oldest_first_even_across_a_rotation() {
        let recents = Generations::new(8);
        for i in 0..6u64 {
            recents.insert(i, ());
        }
        let mut seen = Vec::new();
        recents.for_each_shard(|shard| seen.extend(shard.into_iter().map(|(k, ())| k)));
        let (older, newer) = seen.split_at(4);
        let mut older = older.to_vec();
        older.sort_unstable();
        assert_eq!(older, [0, 1, 2, 3], "the previous generation first");
        let mut newer = newer.to_vec();
        newer.sort_unstable();
        assert_eq!(newer, [4, 5]);

        // Filling the current generation halfway through the walk of the previous one
        // rotates: the rest of the dropped generation is passed over, and the one that
        // was current is still walked whole, once.
        let recents = Generations::new(2000);
        for i in 0..1500u64 {
            recents.insert(i, ());
        }
        let (mut seen, mut calls) = (Vec::new(), 0);
        recents.for_each_shard(|shard| {
            calls += 1;
            if calls == 8 {
                for i in 1500..2000 {
                    recents.insert(i, ());
                }
            }
            seen.extend(shard.into_iter().map(|(k, ())| k));
        });
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), seen.len(), "an entry seen twice");
        let missing: Vec<_> = (1000..2000).filter(|k| !seen.contains(k)).collect();
        assert!(
            missing.is_empty(),
            "{} missing, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
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
        let shown = |r: &Recent| r.shown().map(|k| k.collect::<Vec<_>>());
        let few = Recent::new("c", 7, Some(&[1, 2][..]));
        assert_eq!((few.customer(), few.channel()), ("c", 7));
        assert_eq!(shown(&few), Some(vec![1, 2]));
        let many = Recent::new("c", 8, Some(&[1, 2, 3, 4][..]));
        assert_eq!((many.channel(), shown(&many)), (8, Some(vec![1, 2, 3, 4])));
        let unknown = Recent::new("c", 9, None);
        assert_eq!((unknown.channel(), shown(&unknown)), (9, None));
        let none = Recent::new("c", 9, Some(&[][..]));
        assert_eq!(shown(&none), Some(vec![]));
    }

    #[test]
    fn short_ids_stay_in_place_and_long_ones_keep_every_byte() {
        let fits = "c".repeat(INLINE - 5 - 12);
        let r = Recent::new(&fits, 1, Some(&[1, 2, 3][..]));
        assert!(matches!(r.0, Packed::Inline { .. }));
        assert_eq!(r.customer(), fits);
        for id in [format!("{fits}x"), "é".repeat(300)] {
            let keys: Vec<u32> = (0..300).collect();
            for shown in [&keys[..3], &keys[..254]] {
                let r = Recent::new(&id, u32::MAX, Some(shown));
                assert!(matches!(r.0, Packed::Heap(_)));
                assert_eq!((r.customer(), r.channel()), (&id[..], u32::MAX));
                assert_eq!(
                    r.shown().map(|k| k.collect::<Vec<_>>()),
                    Some(shown.to_vec())
                );
            }
            // A list longer than a count can say is taken as not known: every offer
            // is then accepted, none refused.
            let r = Recent::new(&id, 1, Some(&keys[..]));
            assert!(r.shown().is_none());
            assert_eq!(r.customer(), id);
        }
    }
}
