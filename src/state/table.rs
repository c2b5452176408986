//! The concurrent hash map behind the customer [`Store`](super::Store) and the
//! remembered decisions ([`Generations`](crate::db)): open addressing with linear probing
//! in shards of `Vec<Option<E>>`, each behind a `RwLock`. A shard is chosen by the hash's
//! low bits and a slot by its high bits, so the two are independent; removal shifts the
//! following entries back (no tombstones).
//!
//! Against a `DashMap` it saves two ways. A table made for a known bound (a generation of
//! remembered decisions, filled and then dropped whole) grows by doubling while small and
//! then once to its share of the bound, ending ~76% full: a `DashMap` of 500,000 entries
//! in 8 shards needs 2^17 buckets a shard and sits 48% full. And an entry may carry its
//! own key ([`Keyed`]): a customer's slot is one pointer to an allocation holding the id
//! and the packed record, instead of a key and a value side by side.

use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Shards: enough for two cores' worth of writers and readers not to meet often.
const SHARDS: usize = 16;

/// A shard grows when it would be fuller than this many fifths.
const MAX_LOAD_FIFTHS: usize = 4;

/// The first table of a shard, in slots.
const FIRST: usize = 16;

/// How far a table with no bound ([`Table::unbounded`]) grows a shard by doubling; past
/// this, by a quarter at a time, so that it stays 64–80% full.
const DOUBLING: usize = 4096;

/// The slots a shard needs for its share of `bound` entries at the maximum load, with a
/// margin for shards that get more than their share (5%: dozens of standard deviations at
/// the sizes where this matters).
fn share_of(bound: usize) -> usize {
    let per_shard = bound.div_ceil(SHARDS);
    ((per_shard + per_shard / 20) * 5 / MAX_LOAD_FIFTHS + 1).max(FIRST)
}

/// An entry that knows its key.
pub(crate) trait Keyed {
    type Key: ?Sized + Eq + Hash;
    fn key(&self) -> &Self::Key;
}

impl<K: Eq + Hash, V> Keyed for (K, V) {
    type Key = K;
    fn key(&self) -> &K {
        &self.0
    }
}

/// What [`Table::modify`] does with the entry once its closure has run.
pub(crate) enum Change<E> {
    /// Leave it as the closure left it (or absent).
    Keep,
    /// Put this entry (of the same key) in its place, or add it.
    Put(E),
    /// Remove it.
    Remove,
}

pub(crate) struct Table<E> {
    shards: Box<[RwLock<Shard<E>>]>,
    hasher: RandomState,
    /// The slots a shard grows to in one step once it is past half of them: its share of
    /// the bound ([`share_of`]).
    share: usize,
}

struct Shard<E> {
    slots: Vec<Option<E>>,
    len: usize,
}

impl<E: Keyed> Table<E> {
    /// A table for about `bound` entries; it may hold more, growing by a quarter at a time.
    pub fn new(bound: usize) -> Self {
        Self::with_share(share_of(bound))
    }

    /// A table with no bound known: each shard doubles up to [`DOUBLING`] slots, then
    /// grows by a quarter at a time.
    pub fn unbounded() -> Self {
        Self::with_share(DOUBLING)
    }

    fn with_share(share: usize) -> Self {
        Table {
            shards: (0..SHARDS)
                .map(|_| {
                    RwLock::new(Shard {
                        slots: Vec::new(),
                        len: 0,
                    })
                })
                .collect(),
            hasher: RandomState::new(),
            share,
        }
    }

    /// Grows every shard at once to hold its share of `entries` more (a restart that
    /// knows how many customers it loads): one rehash instead of one per growth step.
    pub fn reserve(&self, entries: usize) {
        for lock in self.shards.iter() {
            let mut shard = lock.write().unwrap_or_else(|e| e.into_inner());
            let slots = share_of(
                (shard.len.saturating_add(entries.div_ceil(SHARDS))).saturating_mul(SHARDS),
            );
            if slots > shard.slots.len() {
                shard.resize(slots, &self.hasher);
            }
        }
    }

    fn hash(&self, key: &E::Key) -> u64 {
        self.hasher.hash_one(key)
    }

    // Every change leaves a shard consistent before it can panic: a poisoned lock is
    // still usable.
    fn read(&self, hash: u64) -> RwLockReadGuard<'_, Shard<E>> {
        self.shards[hash as usize % SHARDS]
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, hash: u64) -> RwLockWriteGuard<'_, Shard<E>> {
        self.shards[hash as usize % SHARDS]
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub fn contains_key(&self, key: &E::Key) -> bool {
        self.view(key, |entry| entry.is_some())
    }

    /// Runs `f` on the entry of `key`, if any, under its shard's read lock.
    pub fn view<R>(&self, key: &E::Key, f: impl FnOnce(Option<&E>) -> R) -> R {
        let hash = self.hash(key);
        let shard = self.read(hash);
        let entry = shard
            .find(hash, key)
            .and_then(|at| shard.slots[at].as_ref());
        f(entry)
    }

    /// Runs `f` on the entry of `key`, if any, under its shard's write lock, then does
    /// what `f` asks with it: writers of one key are served one at a time, in turn.
    ///
    /// `f` changing an entry's key in place, or putting an entry of another key, leaves
    /// it where it cannot be found.
    pub fn modify<R>(&self, key: &E::Key, f: impl FnOnce(Option<&mut E>) -> (R, Change<E>)) -> R {
        let hash = self.hash(key);
        let mut shard = self.write(hash);
        let at = shard.find(hash, key);
        let (result, change) = f(at.and_then(|at| shard.slots[at].as_mut()));
        match (change, at) {
            (Change::Keep, _) | (Change::Remove, None) => {}
            (Change::Put(entry), Some(at)) => shard.slots[at] = Some(entry),
            (Change::Put(entry), None) => self.place_new(&mut shard, hash, entry),
            (Change::Remove, Some(at)) => shard.take(at, &self.hasher),
        }
        result
    }

    /// Inserts or replaces; whether the key is new.
    pub fn put(&self, entry: E) -> bool {
        self.add(entry, true)
    }

    /// Inserts unless the key is present (which keeps its entry); whether it was new.
    pub fn put_new(&self, entry: E) -> bool {
        self.add(entry, false)
    }

    fn add(&self, entry: E, replace: bool) -> bool {
        let hash = self.hash(entry.key());
        let mut shard = self.write(hash);
        if let Some(at) = shard.find(hash, entry.key()) {
            if replace {
                shard.slots[at] = Some(entry);
            }
            return false;
        }
        self.place_new(&mut shard, hash, entry);
        true
    }

    /// Adds an entry known to be absent, growing the shard first if it would be too full.
    fn place_new(&self, shard: &mut Shard<E>, hash: u64, entry: E) {
        if (shard.len + 1) * 5 > shard.slots.len() * MAX_LOAD_FIFTHS {
            let slots = shard.slots.len();
            let grown = if slots < FIRST {
                FIRST
            } else if slots * 2 <= self.share {
                slots * 2
            } else if slots < self.share {
                self.share
            } else {
                slots + slots / 4
            };
            shard.resize(grown, &self.hasher);
        }
        shard.place(hash, entry);
    }

    /// Removes the entry of `key`; whether there was one.
    pub fn remove(&self, key: &E::Key) -> bool {
        self.modify(key, |entry| (entry.is_some(), Change::Remove))
    }

    /// Keeps only the entries `keep` says to.
    pub fn retain(&self, mut keep: impl FnMut(&E) -> bool) {
        for lock in self.shards.iter() {
            let mut shard = lock.write().unwrap_or_else(|e| e.into_inner());
            let mut at = 0;
            while at < shard.slots.len() {
                if matches!(&shard.slots[at], Some(e) if !keep(e)) {
                    // The entry shifted back into `at`, if any, is looked at next. Only
                    // entries already looked at can shift past the end to the front.
                    shard.take(at, &self.hasher);
                } else {
                    at += 1;
                }
            }
        }
    }

    /// Calls `f` with every entry, each shard under its read lock in turn.
    pub fn for_each(&self, mut f: impl FnMut(&E)) {
        for lock in self.shards.iter() {
            let shard = lock.read().unwrap_or_else(|e| e.into_inner());
            for e in shard.slots.iter().flatten() {
                f(e);
            }
        }
    }

    /// The number of shards, for [`Table::copy_shard`].
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// A copy of the entries of shard `shard`, taken under its read lock: a caller going
    /// through a large table a shard at a time holds one shard's copy at most, and no
    /// lock while it uses it.
    pub fn copy_shard(&self, shard: usize) -> Vec<E>
    where
        E: Clone,
    {
        let shard = self.shards[shard].read().unwrap_or_else(|e| e.into_inner());
        shard.slots.iter().flatten().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|lock| lock.read().unwrap_or_else(|e| e.into_inner()).len)
            .sum()
    }
}

/// A map of keys to values, as the remembered decisions and outcomes use it.
impl<K: Eq + Hash, V> Table<(K, V)> {
    /// The value of `key`, cloned.
    pub fn get(&self, key: &K) -> Option<V>
    where
        V: Clone,
    {
        self.view(key, |entry| entry.map(|(_, v)| v.clone()))
    }

    /// Replaces the value of `key` if present; whether it was.
    pub fn update(&self, key: &K, value: V) -> bool {
        self.modify(key, |entry| match entry {
            Some((_, v)) => {
                *v = value;
                (true, Change::Keep)
            }
            None => (false, Change::Keep),
        })
    }

    /// Inserts or replaces; whether the key is new.
    pub fn insert(&self, key: K, value: V) -> bool {
        self.put((key, value))
    }

    /// Inserts unless the key is present (which keeps its value); whether it was new.
    pub fn insert_new(&self, key: K, value: V) -> bool {
        self.put_new((key, value))
    }
}

impl<E: Keyed> Shard<E> {
    /// The slot a hash starts probing at.
    fn home(&self, hash: u64) -> usize {
        ((u128::from(hash) * self.slots.len() as u128) >> 64) as usize
    }

    fn find(&self, hash: u64, key: &E::Key) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let n = self.slots.len();
        let mut at = self.home(hash);
        loop {
            match &self.slots[at] {
                None => return None,
                Some(e) if e.key() == key => return Some(at),
                Some(_) => at = if at + 1 == n { 0 } else { at + 1 },
            }
        }
    }

    /// Puts an entry known to be absent in the first free slot from its home (one exists:
    /// the load is kept under its maximum).
    fn place(&mut self, hash: u64, entry: E) {
        let n = self.slots.len();
        let mut at = self.home(hash);
        while self.slots[at].is_some() {
            at = if at + 1 == n { 0 } else { at + 1 };
        }
        self.slots[at] = Some(entry);
        self.len += 1;
    }

    fn resize(&mut self, slots: usize, hasher: &RandomState) {
        let old = std::mem::take(&mut self.slots);
        self.slots.resize_with(slots, || None);
        self.len = 0;
        for e in old.into_iter().flatten() {
            let hash = hasher.hash_one(e.key());
            self.place(hash, e);
        }
    }

    /// Empties slot `at` and shifts back the entries after it that would no longer be
    /// found past the gap.
    fn take(&mut self, mut at: usize, hasher: &RandomState) {
        let n = self.slots.len();
        self.slots[at] = None;
        self.len -= 1;
        let mut next = if at + 1 == n { 0 } else { at + 1 };
        while let Some(e) = &self.slots[next] {
            let home = self.home(hasher.hash_one(e.key()));
            // The entry may move to the gap unless its home lies cyclically in (at, next].
            let stays = if at <= next {
                at < home && home <= next
            } else {
                at < home || home <= next
            };
            if !stays {
                self.slots[at] = self.slots[next].take();
                at = next;
            }
            next = if next + 1 == n { 0 } else { next + 1 };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16, u32),
        InsertNew(u16, u32),
        Update(u16, u32),
        Remove(u16),
        RetainEven,
        /// Through [`Table::modify`]: adds one to the value, adds the key with 0, or
        /// removes it when the value is odd.
        Modify(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few keys, so that operations meet the same ones and probe chains wrap.
        let key = 0u16..300;
        prop_oneof![
            4 => (key.clone(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            2 => (key.clone(), any::<u32>()).prop_map(|(k, v)| Op::InsertNew(k, v)),
            1 => (key.clone(), any::<u32>()).prop_map(|(k, v)| Op::Update(k, v)),
            2 => key.clone().prop_map(Op::Remove),
            1 => Just(Op::RetainEven),
            3 => key.clone().prop_map(Op::Modify),
        ]
    }

    proptest! {
        /// The table answers as a `HashMap` does, whatever the mix of operations, through
        /// growth and removals that shift entries back.
        #[test]
        fn the_table_is_a_map(bound in 1usize..200, ops in proptest::collection::vec(op(), 0..600)) {
            let table = Table::new(bound);
            let mut model = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        prop_assert_eq!(table.insert(k, v), model.insert(k, v).is_none());
                    }
                    Op::InsertNew(k, v) => {
                        let new = !model.contains_key(&k);
                        if new {
                            model.insert(k, v);
                        }
                        prop_assert_eq!(table.insert_new(k, v), new);
                    }
                    Op::Update(k, v) => {
                        let present = model.contains_key(&k);
                        if present {
                            model.insert(k, v);
                        }
                        prop_assert_eq!(table.update(&k, v), present);
                    }
                    Op::Remove(k) => {
                        prop_assert_eq!(table.remove(&k), model.remove(&k).is_some());
                    }
                    Op::RetainEven => {
                        table.retain(|(_, v)| v % 2 == 0);
                        model.retain(|_, v| *v % 2 == 0);
                    }
                    Op::Modify(k) => {
                        let seen = table.modify(&k, |entry| match entry {
                            Some((_, v)) if *v % 2 == 1 => (Some(*v), Change::Remove),
                            Some((_, v)) => {
                                *v = v.wrapping_add(1);
                                (Some(*v - 1), Change::Keep)
                            }
                            None => (None, Change::Put((k, 0))),
                        });
                        prop_assert_eq!(seen, model.get(&k).copied());
                        match seen {
                            Some(v) if v % 2 == 1 => {
                                model.remove(&k);
                            }
                            Some(v) => {
                                model.insert(k, v.wrapping_add(1));
                            }
                            None => {
                                model.insert(k, 0);
                            }
                        }
                    }
                }
                prop_assert_eq!(table.len(), model.len());
            }
            for k in 0..300u16 {
                prop_assert_eq!(table.get(&k), model.get(&k).copied(), "{}", k);
                prop_assert_eq!(table.contains_key(&k), model.contains_key(&k));
            }
            let mut all = Vec::new();
            table.for_each(|(k, v)| all.push((*k, *v)));
            all.sort_unstable();
            let mut expected: Vec<_> = model.into_iter().collect();
            expected.sort_unstable();
            prop_assert_eq!(all, expected);
        }
    }

    #[test]
    fn a_table_filled_to_its_bound_is_sized_to_it_not_to_a_power_of_two() {
        let bound = 500_000;
        let table = Table::new(bound);
        for k in 0..bound as u64 {
            table.insert(k, ());
        }
        let slots: usize = table
            .shards
            .iter()
            .map(|s| s.read().expect("unpoisoned").slots.len())
            .sum();
        let load = bound as f64 / slots as f64;
        assert!(
            (0.7..=0.8).contains(&load),
            "{slots} slots for {bound} entries: load {load:.2}"
        );
    }

    #[test]
    fn a_reserved_table_takes_its_entries_without_growing_again() {
        let table = Table::unbounded();
        table.insert(u64::MAX, ());
        let entries = 200_000;
        table.reserve(entries);
        let slots = |t: &Table<(u64, ())>| -> Vec<usize> {
            t.shards
                .iter()
                .map(|s| s.read().expect("unpoisoned").slots.len())
                .collect()
        };
        let reserved = slots(&table);
        for k in 0..entries as u64 {
            table.insert(k, ());
        }
        assert_eq!(slots(&table), reserved, "no shard grew");
        assert_eq!(table.len(), entries + 1);
        assert!((0..entries as u64).all(|k| table.contains_key(&k)));
        assert!(
            table.contains_key(&u64::MAX),
            "what was there before is kept"
        );
    }
}
