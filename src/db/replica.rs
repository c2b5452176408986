//! What a cluster node asks of its `Db` (see `cluster`): the records a write would
//! journal, built and checked here exactly as the embedded node's are, but published to
//! the cluster's write stream instead of appended; applying the stream's records in its
//! order, with the code replay uses; decisions handed to the decisions stream instead of
//! the journal; the digest that shows two nodes hold the same state; and snapshots that
//! say which stream position they reflect.
//!
//! In cluster mode the stream's applier is the only writer of the store, the outcome
//! identities and the budget counters, so every node that applied the same records holds
//! the same state, and a snapshot taken between two records is exact.

use super::*;
use crate::decide::BudgetScope;
use crate::journal::{DecisionRecord, Replayed};

/// Where a cluster node's decisions go instead of its journal. `send` never waits: a
/// full queue refuses (the decision is answered and counted unlogged, as a full journal
/// queue does).
pub trait DecisionSink: Send + Sync + 'static {
    fn send(&self, decision: Box<PendingDecision>) -> Result<(), DbError>;
}

/// An outcome that passed its checks, ready to publish.
#[derive(Debug, Clone)]
pub struct ReplicaOutcome {
    pub record: Record,
    /// (decision, offer key, kind): what makes it idempotent.
    pub identity: (u128, u32, EventKind),
    /// The customer whose history it joins, if any (what the ack reports).
    pub customer: Option<String>,
}

impl ReplicaOutcome {
    /// The stream's de-duplication id: the identity, so the same outcome published
    /// twice within the stream's window is stored once.
    pub fn message_id(&self) -> String {
        let (decision, offer, kind) = self.identity;
        format!(
            "{}:{offer:08x}:{}",
            Uuid::from_u128(decision),
            kind.as_str()
        )
    }
}

/// A digest of a node's replicated state. Two nodes that applied the same records have
/// equal digests; each part is order-independent (a sum of per-item hashes), so it does
/// not depend on the order of the maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDigest {
    pub customers: u64,
    pub outcomes: u64,
    /// Hex of a hash over every part: customers (ids and packed records, histories
    /// and sequence numbers included), outcome identities, budget counters, the
    /// catalog version and the adaptive models' learning state.
    pub digest: String,
}

impl Db {
    /// Checks outcomes as [`Db::record_outcomes`] does (every one before any is
    /// published: a bad one refuses the batch, naming its index) and returns the records
    /// they write, accepted at `now`.
    pub fn outcome_records(
        &self,
        inputs: &[OutcomeInput],
        now: i64,
    ) -> Result<Vec<ReplicaOutcome>, (usize, DbError)> {
        let catalog = self.catalog();
        inputs
            .iter()
            .enumerate()
            .map(|(i, input)| {
                let checked = self
                    .check_outcome(&catalog, input, now)
                    .map_err(|e| (i, e))?;
                let identity = checked.identity(input);
                let customer = checked
                    .customer
                    .clone()
                    .filter(|_| checked.channel.is_some());
                Ok(ReplicaOutcome {
                    record: outcome::outcome_record(input, &checked, now),
                    identity,
                    customer,
                })
            })
            .collect()
    }

    /// The stream position of the record that first counted this outcome, once applied
    /// here (0: counted before this node's snapshot).
    pub fn outcome_position(&self, identity: &(u128, u32, EventKind)) -> Option<u64> {
        self.outcomes.get(identity)
    }

    /// Applies the write stream's record at `position`, as replay applies a journal
    /// record, an outcome counted already being skipped (another node published it
    /// too). Returns whether it changed anything.
    pub fn apply_replicated(&self, position: u64, record: Record) -> bool {
        let mut dropped = 0;
        recovery::apply(self, position, record, &mut dropped, true)
    }

    /// Remembers a decision read from the decisions stream (any node's), so that its
    /// outcomes find their customer, channel and shown offers here too.
    pub fn remember_replicated(&self, decision: Replayed) {
        if let Replayed::Decision {
            id,
            customer: Some(customer),
            channel,
            shown,
        } = decision
        {
            // Made before its customer was forgotten: stays forgotten.
            if self
                .forgotten_at
                .get(&Box::from(&*customer))
                .is_some_and(|at| uuid_time(Uuid::from_bytes(id)) <= at)
            {
                return;
            }
            self.decisions.insert(
                Uuid::from_bytes(id),
                Recent::new(&customer, channel, shown.as_deref()),
            );
        }
    }

    /// As [`Db::remember_replicated`], of a whole decision record: with adaptive models
    /// in force, the values of their predictors are kept as well, so that an outcome
    /// accepted here of a decision another node made carries them in its record (and
    /// teaches every node alike).
    pub fn remember_replicated_record(&self, record: &DecisionRecord) {
        let Some(customer) = &record.customer else {
            return;
        };
        let id = record.decision_id();
        let forgotten = || {
            self.forgotten_at
                .get(&Box::from(customer.as_str()))
                .is_some_and(|at| uuid_time(id) <= at)
        };
        if forgotten() {
            return;
        }
        // The values first: an outcome waiting for this decision (`await_decisions`)
        // goes on once the decision is remembered, and must find them.
        self.keep_record_inputs(&self.catalog(), record);
        self.decisions.insert(
            id,
            Recent::with_shown(
                customer,
                key(&record.channel),
                record.shown.iter().map(|s| key(&s.offer)),
            ),
        );
        // A forget applied meanwhile (it marks the customer before dropping their
        // decisions and values) may have missed these: dropped now.
        if forgotten() {
            self.inputs.remove(&id);
            self.decisions.remove(&id);
        }
    }

    /// Whether the decision is remembered here (its outcomes find its customer).
    pub fn remembers(&self, decision: Uuid) -> bool {
        self.decisions.get(&decision).is_some()
    }

    /// Sends decisions to `sink` from now on instead of the journal; set once.
    pub fn set_decision_sink(&self, sink: Box<dyn DecisionSink>) -> bool {
        self.decision_sink.set(sink).is_ok()
    }

    /// The digest of the state the write stream builds (see [`StateDigest`]).
    pub fn digest(&self) -> StateDigest {
        use xxhash_rust::xxh3::{Xxh3, xxh3_64};
        let mut customers = 0u64;
        let mut customer_sum = 0u64;
        let view = self.view();
        view.store.for_each_packed(|id, packed| {
            let mut h = Xxh3::new();
            h.update(&(id.len() as u64).to_le_bytes());
            h.update(id.as_bytes());
            h.update(packed);
            customer_sum = customer_sum.wrapping_add(h.digest());
            customers += 1;
        });
        let identities = self.outcomes.entries();
        let outcome_sum = identities.iter().fold(0u64, |acc, ((d, o, k), _)| {
            let mut bytes = [0u8; 21];
            bytes[..16].copy_from_slice(&d.to_le_bytes());
            bytes[16..20].copy_from_slice(&o.to_le_bytes());
            bytes[20] = *k as u8;
            acc.wrapping_add(xxh3_64(&bytes))
        });
        let budget_sum = self
            .spending
            .lock()
            .counters()
            .iter()
            .fold(0u64, |acc, (scope, c)| {
                let (kind, key) = match *scope {
                    BudgetScope::Offer(k) => (0u8, k),
                    BudgetScope::Group(k) => (1, k),
                    BudgetScope::Channel(k) => (2, k),
                };
                let mut h = Xxh3::new();
                h.update(&[kind]);
                h.update(&key.to_le_bytes());
                h.update(&c.day.to_le_bytes());
                h.update(&c.today.to_le_bytes());
                h.update(&c.total.to_le_bytes());
                acc.wrapping_add(h.digest())
            });
        let mut h = Xxh3::new();
        for part in [
            customers,
            customer_sum,
            identities.len() as u64,
            outcome_sum,
            budget_sum,
        ] {
            h.update(&part.to_le_bytes());
        }
        h.update(view.catalog.version.as_bytes());
        h.update(&self.learning_digest().to_le_bytes());
        StateDigest {
            customers,
            outcomes: identities.len() as u64,
            digest: format!("{:016x}", h.digest()),
        }
    }

    /// Snapshots a cluster node's state as of the write stream's `mark` (the caller, the
    /// applier, applies nothing meanwhile, so the snapshot is exact), with the cluster's
    /// catalog in force there as published. The node's journal holds no writes in cluster
    /// mode, so nothing is rotated or erased.
    pub fn snapshot_replicated(
        &self,
        mark: &StreamMark,
        catalog: Option<&[u8]>,
        now: i64,
    ) -> Result<PathBuf, DbError> {
        let _one_at_a_time = self.compaction.lock().unwrap_or_else(|e| e.into_inner());
        let cutoff = now - self.options.attribution_window;
        self.decisions.retain(|d, _| uuid_time(*d) >= cutoff);
        let (spending, learning) = {
            let counters = self.spending.lock();
            (counters.counters().clone(), self.learning())
        };
        // Nothing of theirs is in this node's journal (it holds no writes) to erase.
        self.forgotten
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let (path, _) = recovery::write_snapshot(
            self,
            storage::Position::default(),
            &spending,
            &learning,
            now,
            Some((mark, catalog)),
        )?;
        Ok(path)
    }
}
