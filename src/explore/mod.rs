//! Exploration: epsilon-greedy draws that are stable hashes, not per-request random numbers.
//!
//! Every draw is xxh3 (seeded by the experiment's salt) of the customer and a few integers,
//! so one customer gets the same arm and the same explore/exploit outcome per slot in every
//! placement of the experiment and on every repeated call within a time window, and another
//! window redraws. The explored offer is chosen rendezvous-style, by ranking the eligible
//! offers on hash(customer, window, offer): every placement ranks them in the same order,
//! so two placements that explore show the same offer when the highest-ranked of all their
//! candidates is a candidate in both. docs/decisions.md gives the propensities this yields.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Domain tags, so the arm, the draws and the ranks are independent hashes.
const ARM: u64 = 1;
const DRAW: u64 = 2;
const RANK: u64 = 3;

/// A number in [0, 1) from the top 53 bits of a hash.
#[inline]
pub fn unit(h: u64) -> f64 {
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// xxh3 of up to four integers, little-endian, under `seed`.
#[inline]
fn mix(seed: u64, parts: [u64; 4]) -> u64 {
    let mut buf = [0u8; 32];
    for (chunk, p) in buf.chunks_exact_mut(8).zip(parts) {
        chunk.copy_from_slice(&p.to_le_bytes());
    }
    xxh3_64_with_seed(&buf, seed)
}

/// The index of the time window `now` falls in, for windows of `window` ms.
pub fn window_index(now: i64, window: i64) -> i64 {
    now.div_euclid(window.max(1))
}

/// The draws of one unit (a customer, or a request for an anonymous caller) in one
/// experiment.
#[derive(Debug, Clone, Copy)]
pub struct Unit {
    seed: u64,
    unit: u64,
}

impl Unit {
    pub fn new(salt: &str, unit: &str) -> Unit {
        let seed = xxh3_64(salt.as_bytes());
        Unit {
            seed,
            unit: xxh3_64_with_seed(unit.as_bytes(), seed),
        }
    }

    /// The arm this unit is in, sticky for the experiment's life: the first arm whose
    /// cumulative share exceeds the unit's draw. `shares` should add up to 1.
    pub fn arm(&self, shares: impl IntoIterator<Item = f64>) -> usize {
        let u = unit(mix(self.seed, [self.unit, ARM, 0, 0]));
        let mut cumulative = 0.0;
        let mut last = 0;
        for (i, share) in shares.into_iter().enumerate() {
            cumulative += share;
            last = i;
            if u < cumulative {
                return i;
            }
        }
        last
    }

    /// Whether slot `slot` explores in window `window`, with probability `epsilon`.
    pub fn explores(&self, window: i64, slot: u32, epsilon: f64) -> bool {
        epsilon > 0.0
            && unit(mix(
                self.seed,
                [self.unit, DRAW, window as u64, u64::from(slot)],
            )) < epsilon
    }

    /// The rank of an offer for exploration in `window`: the remaining eligible offer with
    /// the highest rank is the one explored. Independent of placement and slot.
    pub fn rank(&self, window: i64, offer_key: u32) -> u64 {
        mix(
            self.seed,
            [self.unit, RANK, window as u64, u64::from(offer_key)],
        )
    }
}

/// The probability that epsilon-greedy puts an offer in a slot, given the earlier slots:
/// `(1 − ε)·[it is the best remaining] + ε / K`, with `K` the eligible offers remaining.
pub fn propensity(epsilon: f64, is_best: bool, remaining: usize) -> f64 {
    let exploit = if is_best { 1.0 - epsilon } else { 0.0 };
    exploit + epsilon / remaining.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_stable_and_depend_on_their_inputs() {
        let a = Unit::new("salt", "customer-1");
        assert_eq!(a.rank(7, 42), Unit::new("salt", "customer-1").rank(7, 42));
        assert_ne!(a.rank(7, 42), a.rank(8, 42), "another window redraws");
        assert_ne!(
            a.rank(7, 42),
            Unit::new("other", "customer-1").rank(7, 42),
            "another salt redraws"
        );
        assert_ne!(a.rank(7, 42), Unit::new("salt", "customer-2").rank(7, 42));
    }

    #[test]
    fn draws_are_uniform_enough() {
        // 100,000 units: the exploring share is epsilon within 4 standard deviations, and
        // arms split by their shares.
        let (n, eps) = (100_000, 0.1);
        let mut explored = 0;
        let mut arms = [0usize; 3];
        for i in 0..n {
            let u = Unit::new("s", &format!("c{i}"));
            explored += usize::from(u.explores(3, 0, eps));
            arms[u.arm([0.5, 0.3, 0.2])] += 1;
        }
        let sd = (n as f64 * eps * (1.0 - eps)).sqrt();
        assert!(
            (explored as f64 - n as f64 * eps).abs() < 4.0 * sd,
            "explored {explored}"
        );
        for (count, share) in arms.iter().zip([0.5, 0.3, 0.2]) {
            let sd = (n as f64 * share * (1.0 - share)).sqrt();
            assert!(
                (*count as f64 - n as f64 * share).abs() < 4.0 * sd,
                "arms {arms:?}"
            );
        }
    }

    #[test]
    fn windows_are_floors() {
        assert_eq!(window_index(86_399_999, 86_400_000), 0);
        assert_eq!(window_index(86_400_000, 86_400_000), 1);
        assert_eq!(window_index(-1, 86_400_000), -1);
    }

    #[test]
    fn propensities() {
        assert_eq!(propensity(0.0, true, 5), 1.0);
        assert!((propensity(0.1, true, 4) - 0.925).abs() < 1e-12);
        assert!((propensity(0.1, false, 4) - 0.025).abs() < 1e-12);
        assert_eq!(propensity(0.2, true, 1), 1.0);
    }
}
