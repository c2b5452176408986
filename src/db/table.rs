//! The concurrent hash map behind [`Generations`](super::generations::Generations): a
//! generation is filled up to a known bound and then dropped whole, so its map is sized
//! to that bound instead of to a power of two. A `DashMap` of 500,000 entries in 8 shards
//! needs 2^17 buckets a shard and sits 48% full; here each shard doubles while it is small
//! and then grows once to its share of the bound, ending ~76% full.
//!
//! Open addressing with linear probing in shards of `Vec<Option<(K, V)>>`, each behind a
//! `RwLock`; a shard is chosen by the hash's low bits and a slot by its high bits, so the
//! two are independent. Removal shifts the following entries back (no tombstones).

use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Shards: enough for two cores' worth of writers and readers not to meet often.
const SHARDS: usize = 16;

/// A shard grows when it would be fuller than this many fifths.
const MAX_LOAD_FIFTHS: usize = 4;

/// The first table of a shard, in slots.
const FIRST: usize = 16;

pub(crate) struct Table<K, V> {
    shards: Box<[RwLock<Shard<K, V>>]>,
    hasher: RandomState,
    /// The slots a shard grows to in one step once it is past half of them: its share of
    /// the bound, at the maximum load, with a margin for shards that get more than their
    /// share (5%: dozens of standard deviations at the sizes where this matters).
    share: usize,
}

struct Shard<K, V> {
    slots: Vec<Option<(K, V)>>,
    len: usize,
}

impl<K: Eq + Hash, V> Table<K, V> {
    /// A table for about `bound` entries; it may hold more, growing by a quarter at a time.
    pub fn new(bound: usize) -> Self {
        let per_shard = bound.div_ceil(SHARDS);
        let share = (per_shard + per_shard / 20) * 5 / MAX_LOAD_FIFTHS + 1;
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
            share: share.max(FIRST),
        }
    }

    fn hash(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }

    // Every change leaves a shard consistent before it can panic: a poisoned lock is
    // still usable.
    fn read(&self, hash: u64) -> RwLockReadGuard<'_, Shard<K, V>> {
        self.shards[hash as usize % SHARDS]
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, hash: u64) -> RwLockWriteGuard<'_, Shard<K, V>> {
        self.shards[hash as usize % SHARDS]
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub fn contains_key(&self, key: &K) -> bool {
        let hash = self.hash(key);
        self.read(hash).find(hash, key).is_some()
    }

    /// The value of `key`, cloned.
    pub fn get(&self, key: &K) -> Option<V>
    where
        V: Clone,
    {
        let hash = self.hash(key);
        let shard = self.read(hash);
        let at = shard.find(hash, key)?;
        shard.slots[at].as_ref().map(|(_, v)| v.clone())
    }

    /// Replaces the value of `key` if present; whether it was.
    pub fn update(&self, key: &K, value: V) -> bool {
        let hash = self.hash(key);
        let mut shard = self.write(hash);
        match shard.find(hash, key) {
            Some(at) => {
                if let Some((_, v)) = &mut shard.slots[at] {
                    *v = value;
                }
                true
            }
            None => false,
        }
    }

    /// Inserts or replaces; whether the key is new.
    pub fn insert(&self, key: K, value: V) -> bool {
        self.put(key, value, true)
    }

    /// Inserts unless the key is present (which keeps its value); whether it was new.
    pub fn insert_new(&self, key: K, value: V) -> bool {
        self.put(key, value, false)
    }

    fn put(&self, key: K, value: V, replace: bool) -> bool {
        let hash = self.hash(&key);
        let mut shard = self.write(hash);
        if let Some(at) = shard.find(hash, &key) {
            if replace && let Some((_, v)) = &mut shard.slots[at] {
                *v = value;
            }
            return false;
        }
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
        shard.place(hash, key, value);
        true
    }

    pub fn remove(&self, key: &K) {
        let hash = self.hash(key);
        let mut shard = self.write(hash);
        if let Some(at) = shard.find(hash, key) {
            shard.take(at, &self.hasher);
        }
    }

    /// Keeps only the entries `keep` says to.
    pub fn retain(&self, mut keep: impl FnMut(&K, &V) -> bool) {
        for lock in self.shards.iter() {
            let mut shard = lock.write().unwrap_or_else(|e| e.into_inner());
            let mut at = 0;
            while at < shard.slots.len() {
                if matches!(&shard.slots[at], Some((k, v)) if !keep(k, v)) {
                    // The entry shifted back into `at`, if any, is looked at next. Only
                    // entries already looked at can shift past the end to the front.
                    shard.take(at, &self.hasher);
                } else {
                    at += 1;
                }
            }
        }
    }

    /// Calls `f` with every entry, shard by shard.
    pub fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        for lock in self.shards.iter() {
            let shard = lock.read().unwrap_or_else(|e| e.into_inner());
            for (k, v) in shard.slots.iter().flatten() {
                f(k, v);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|lock| lock.read().unwrap_or_else(|e| e.into_inner()).len)
            .sum()
    }
}

impl<K: Eq + Hash, V> Shard<K, V> {
    /// The slot a hash starts probing at.
    fn home(&self, hash: u64) -> usize {
        ((u128::from(hash) * self.slots.len() as u128) >> 64) as usize
    }

    fn find(&self, hash: u64, key: &K) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let n = self.slots.len();
        let mut at = self.home(hash);
        loop {
            match &self.slots[at] {
                None => return None,
                Some((k, _)) if k == key => return Some(at),
                Some(_) => at = if at + 1 == n { 0 } else { at + 1 },
            }
        }
    }

    /// Puts an entry known to be absent in the first free slot from its home (one exists:
    /// the load is kept under its maximum).
    fn place(&mut self, hash: u64, key: K, value: V) {
        let n = self.slots.len();
        let mut at = self.home(hash);
        while self.slots[at].is_some() {
            at = if at + 1 == n { 0 } else { at + 1 };
        }
        self.slots[at] = Some((key, value));
        self.len += 1;
    }

    fn resize(&mut self, slots: usize, hasher: &RandomState) {
        let old = std::mem::take(&mut self.slots);
        self.slots.resize_with(slots, || None);
        self.len = 0;
        for (k, v) in old.into_iter().flatten() {
            let hash = hasher.hash_one(&k);
            self.place(hash, k, v);
        }
    }

    /// Empties slot `at` and shifts back the entries after it that would no longer be
    /// found past the gap.
    fn take(&mut self, mut at: usize, hasher: &RandomState) {
        let n = self.slots.len();
        self.slots[at] = None;
        self.len -= 1;
        let mut next = if at + 1 == n { 0 } else { at + 1 };
        while let Some((k, _)) = &self.slots[next] {
            let home = self.home(hasher.hash_one(k));
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
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few keys, so that operations meet the same ones and probe chains wrap.
        let key = 0u16..300;
        prop_oneof![
            4 => (key.clone(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            2 => (key.clone(), any::<u32>()).prop_map(|(k, v)| Op::InsertNew(k, v)),
            1 => (key.clone(), any::<u32>()).prop_map(|(k, v)| Op::Update(k, v)),
            2 => key.prop_map(Op::Remove),
            1 => Just(Op::RetainEven),
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
                        table.remove(&k);
                        model.remove(&k);
                    }
                    Op::RetainEven => {
                        table.retain(|_, v| v % 2 == 0);
                        model.retain(|_, v| *v % 2 == 0);
                    }
                }
                prop_assert_eq!(table.len(), model.len());
            }
            for k in 0..300u16 {
                prop_assert_eq!(table.get(&k), model.get(&k).copied(), "{}", k);
                prop_assert_eq!(table.contains_key(&k), model.contains_key(&k));
            }
            let mut all = Vec::new();
            table.for_each(|k, v| all.push((*k, *v)));
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
}
