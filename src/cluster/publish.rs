//! Writes through the cluster: checked as an embedded node checks them, published to the
//! write stream, acknowledged once JetStream acknowledged them and this node applied them.
//! Decisions go to the decisions stream through a bounded queue that never makes a
//! decision wait.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage as Publish;
use async_nats::jetstream::publish::PublishAck;
use tokio::sync::mpsc;

use super::{Cluster, ClusterError, unavailable};
use crate::catalog::Catalog;
use crate::db::{DbError, DecisionSink, OutcomeAck, OutcomeInput};
use crate::journal::{Entry, PendingDecision, Record};
use crate::schema::Value;
use crate::storage::{Encode, WriteError};

/// How long a write that JetStream acknowledged waits for this node to apply it: then it
/// answers UNAVAILABLE, saying how far the node has applied (the write is in the stream;
/// retrying it is safe). With the publish's own bound (5 s) a call can outlast the
/// default call timeout (10 s) only when both are slow.
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// Decisions younger than this (ms) that a node does not remember may still be on their
/// way through the decisions stream: an outcome of one waits for it.
const RECENT_DECISION: i64 = 30_000;

/// The longest an outcome waits for its decision to arrive.
const DECISION_WAIT: Duration = Duration::from_secs(1);

/// Decisions waiting to be published; more are answered and counted unlogged.
const DECISION_QUEUE: usize = 16_384;

/// At most this many batches of decisions published and not yet acknowledged.
const BATCHES_IN_FLIGHT: usize = 256;

/// How long a batch of decisions waits for more after its first.
const LINGER: Duration = Duration::from_millis(2);

/// A batch of decisions is sent once it holds this many bytes (JetStream's default
/// largest message is 1 MB).
const BATCH_BYTES: usize = 256 * 1024;

/// A record sent to the write stream, its acknowledgement to come.
struct Pending<'a> {
    cluster: &'a Cluster,
    ack: PublishAckFuture,
    started: Instant,
    in_flight: InFlight<'a>,
}

/// Counts a record in flight to the write stream for as long as it lives.
struct InFlight<'a>(&'a Cluster);

impl<'a> InFlight<'a> {
    fn new(cluster: &'a Cluster) -> Self {
        cluster.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(cluster)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pending<'_> {
    async fn acked(self) -> Result<PublishAck, ClusterError> {
        let stats = &self.cluster.stats;
        let _in_flight = self.in_flight;
        match self.ack.await {
            Ok(ack) => {
                self.cluster.took(&ack);
                stats.published.fetch_add(1, Ordering::Relaxed);
                stats
                    .publish_micros
                    .fetch_add(self.started.elapsed().as_micros() as u64, Ordering::Relaxed);
                Ok(ack)
            }
            Err(e) => {
                self.cluster.acknowledged(false);
                stats.publish_failures.fetch_add(1, Ordering::Relaxed);
                Err(unavailable(e))
            }
        }
    }
}

/// A write acknowledged by the cluster: its position in the write stream (what `Decide`
/// accepts as `min_position` on any node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub position: u64,
}

fn encode(record: Record) -> Vec<u8> {
    let mut payload = Vec::with_capacity(256);
    Entry::Record(record).encode(&mut payload);
    payload
}

impl Cluster {
    /// Notes JetStream's acknowledgement of a record this node sent to the write stream.
    fn took(&self, ack: &PublishAck) {
        self.acknowledged(true);
        self.tail.fetch_max(ack.sequence, Ordering::Relaxed);
        // A duplicate is answered from the leader's memory, not by a quorum.
        if !ack.duplicate {
            self.committed_through(ack.sequence);
        }
    }

    /// Publishes a barrier (`commit`) and waits for JetStream's acknowledgement; counted
    /// apart from writes.
    pub(super) async fn publish_barrier(
        &self,
        subject: String,
        payload: Vec<u8>,
    ) -> Result<PublishAck, ClusterError> {
        let pending = self.send(subject, None, payload).await?;
        let _in_flight = pending.in_flight;
        match pending.ack.await {
            Ok(ack) => {
                self.took(&ack);
                self.stats.barriers.fetch_add(1, Ordering::Relaxed);
                Ok(ack)
            }
            Err(e) => {
                self.acknowledged(false);
                Err(unavailable(e))
            }
        }
    }

    /// Sends one record to the write stream; the returned future is JetStream's
    /// acknowledgement. Sending several before awaiting any pipelines them.
    async fn send(
        &self,
        subject: String,
        message_id: Option<String>,
        payload: Vec<u8>,
    ) -> Result<Pending<'_>, ClusterError> {
        let mut message = Publish::build()
            .payload(payload.into())
            .expected_stream(self.config.writes_stream());
        if let Some(id) = message_id {
            message = message.message_id(id);
        }
        let started = Instant::now();
        match self.js.send_publish(subject, message).await {
            Ok(ack) => Ok(Pending {
                cluster: self,
                ack,
                started,
                in_flight: InFlight::new(self),
            }),
            Err(e) => {
                self.acknowledged(false);
                self.stats.publish_failures.fetch_add(1, Ordering::Relaxed);
                Err(unavailable(e))
            }
        }
    }

    /// Publishes one record and waits for JetStream's acknowledgement.
    pub(super) async fn publish(
        &self,
        subject: String,
        message_id: Option<String>,
        payload: Vec<u8>,
    ) -> Result<PublishAck, ClusterError> {
        self.send(subject, message_id, payload).await?.acked().await
    }

    /// Merges attributes into a customer, through the cluster.
    /// `values` are in `catalog`'s slots (the record names them).
    pub async fn upsert(
        &self,
        catalog: &Catalog,
        id: &str,
        values: Vec<Value>,
        at: i64,
    ) -> Result<Written, ClusterError> {
        let record = crate::db::Db::upsert_record(catalog, id, &values, at);
        // A customer whose stored record does not decode is refused, as embedded.
        self.db.store().with(id, |_| ()).map_err(DbError::from)?;
        let ack = self
            .publish(
                self.config.write_subject(id.as_bytes()),
                None,
                encode(record),
            )
            .await?;
        self.wait_applied(ack.sequence, APPLY_WAIT).await?;
        Ok(Written {
            position: ack.sequence,
        })
    }

    /// Forgets a customer on every node; says whether this node knew them.
    pub async fn forget(&self, id: &str, at: i64) -> Result<(bool, Written), ClusterError> {
        let known = self.db.store().with(id, |s| s.is_some()).unwrap_or(true);
        let record = Record::Forget(crate::journal::ForgetRecord {
            at,
            customer: id.to_string(),
        });
        let ack = self
            .publish(
                self.config.write_subject(id.as_bytes()),
                None,
                encode(record),
            )
            .await?;
        self.wait_applied(ack.sequence, APPLY_WAIT).await?;
        // Its decisions are in batches of the decisions stream, among other customers'.
        self.erase_decisions_later(id, at);
        Ok((
            known,
            Written {
                position: ack.sequence,
            },
        ))
    }

    /// An outcome usually reaches another node than the one that decided (decided at an
    /// email's open on one, clicked through another): when an outcome names a decision
    /// this node does not remember yet and that is recent enough to be on its way, waits
    /// (at most [`DECISION_WAIT`]) until the decisions stream, read to its end, brings it,
    /// so the outcome finds its customer, channel and shown offers.
    async fn await_decisions(&self, inputs: &[OutcomeInput], now: i64) {
        let unknown = |i: &OutcomeInput| {
            now - crate::db::uuid_time(i.decision) <= RECENT_DECISION
                && !self.db.remembers(i.decision)
        };
        if !inputs.iter().any(unknown) {
            return;
        }
        let given_up = Instant::now() + DECISION_WAIT;
        // Read the decisions stream to its end (twice at most: a decision answered a
        // moment ago may not be published yet); a decision still unknown then is one this
        // node will not learn of (anonymous, or too old) and the outcome goes on without.
        for round in 0..2 {
            let remaining = given_up.saturating_duration_since(Instant::now());
            let stream = self.config.decisions_stream();
            let Ok(last) = tokio::time::timeout(remaining, self.stream_last(&stream)).await else {
                return;
            };
            while self.decisions_applied.load(Ordering::Relaxed) < last && Instant::now() < given_up
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            if round == 0 && inputs.iter().any(unknown) {
                // A batch lingers up to 2 ms before it is published.
                tokio::time::sleep(LINGER * 5).await;
            }
            if !inputs.iter().any(unknown) {
                return;
            }
        }
    }

    /// Records outcomes through the cluster: every one is checked before any is
    /// published (a bad one refuses the batch and publishes nothing, naming its index);
    /// then all are published at once and acknowledged once applied here. An outcome
    /// counted before (by any node, once applied here) answers `duplicate`. When
    /// JetStream fails part-way, the ones it took apply and the call answers UNAVAILABLE:
    /// a retry of the batch counts each once.
    pub async fn record_outcomes(
        &self,
        inputs: &[OutcomeInput],
        now: i64,
    ) -> Result<(Vec<OutcomeAck>, Written), (Option<usize>, ClusterError)> {
        self.await_decisions(inputs, now).await;
        let outcomes = self
            .db
            .outcome_records(inputs, now)
            .map_err(|(i, e)| (Some(i), e.into()))?;
        let mut acks = vec![None; outcomes.len()];
        let mut last = self.applied();
        let mut sent = Vec::new();
        let mut failure = None;
        for (i, outcome) in outcomes.iter().enumerate() {
            // Counted already, and applied here: the same answer on every node.
            if self
                .db
                .outcome_position(&outcome.identity)
                .is_some_and(|p| p <= self.applied())
            {
                acks[i] = Some(OutcomeAck {
                    duplicate: true,
                    customer: outcome.customer.clone(),
                });
                continue;
            }
            let key = match &outcome.customer {
                Some(c) => c.as_bytes().to_vec(),
                None => outcome.identity.0.to_le_bytes().to_vec(),
            };
            let subject = self.config.write_subject(&key);
            let sending = self
                .send(
                    subject,
                    Some(outcome.message_id()),
                    encode(outcome.record.clone()),
                )
                .await;
            match sending {
                Ok(pending) => sent.push((i, pending)),
                Err(e) => {
                    // Nothing after it is sent; what was sent is awaited below.
                    failure = Some(e);
                    break;
                }
            }
        }
        let mut positions = Vec::with_capacity(sent.len());
        for (i, pending) in sent {
            match pending.acked().await {
                Ok(ack) => {
                    last = last.max(ack.sequence);
                    positions.push((i, ack));
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failure {
            return Err((None, e));
        }
        self.wait_applied(last, APPLY_WAIT)
            .await
            .map_err(|e| (None, e))?;
        for (i, ack) in positions {
            let outcome = &outcomes[i];
            // The first write of this identity, applied here, is the one at its recorded
            // position; any other (JetStream's duplicate, or a later copy skipped when
            // applied) is a duplicate.
            let first =
                !ack.duplicate && self.db.outcome_position(&outcome.identity) == Some(ack.sequence);
            acks[i] = Some(OutcomeAck {
                duplicate: !first,
                customer: outcome.customer.clone(),
            });
        }
        Ok((
            acks.into_iter()
                .map(|a| a.expect("every outcome is answered"))
                .collect(),
            Written { position: last },
        ))
    }
}

/// The decisions stream's side of a node: `send` queues (never waits), a task publishes.
pub(super) struct DecisionQueue {
    queue: mpsc::Sender<Box<PendingDecision>>,
}

impl DecisionQueue {
    /// Starts the task that publishes queued decisions in batches: what arrives within
    /// [`LINGER`] of a batch's first decision (up to [`BATCH_BYTES`]) goes out as one
    /// message of journal frames, so a busy node sends a few large messages rather than
    /// one per decision (each message costs the stream a replicated append). A node's
    /// batches go to one subject of its own; the stream keeps decisions for the
    /// attribution window only (`max_age`).
    pub(super) fn start(cluster: Arc<Cluster>) -> DecisionQueue {
        let (queue, mut receiver) = mpsc::channel::<Box<PendingDecision>>(DECISION_QUEUE);
        tokio::spawn(async move {
            let subject = format!(
                "{}.decisions.{}",
                cluster.config.prefix,
                cluster.config.partition(cluster.config.node_id.as_bytes())
            );
            let mut in_flight = tokio::task::JoinSet::new();
            let mut payload = Vec::with_capacity(1024);
            while let Some(first) = receiver.recv().await {
                let linger = tokio::time::Instant::now() + LINGER;
                let id = first.decision.id;
                let mut batch = Vec::with_capacity(64 * 1024);
                let mut count = 0u64;
                let mut next = Some(first);
                while let Some(decision) = next.take() {
                    payload.clear();
                    Entry::Decision(decision).encode(&mut payload);
                    crate::storage::segment::frame(&mut batch, &payload);
                    count += 1;
                    if batch.len() < BATCH_BYTES {
                        next = match receiver.try_recv() {
                            Ok(d) => Some(d),
                            Err(_) => tokio::time::timeout_at(linger, receiver.recv())
                                .await
                                .ok()
                                .flatten(),
                        };
                    }
                }
                while in_flight.len() >= BATCHES_IN_FLIGHT {
                    in_flight.join_next().await;
                }
                // The batch's first decision names it: a batch sent twice is stored once.
                let message = Publish::build()
                    .payload(batch.into())
                    .message_id(id.to_string())
                    .expected_stream(cluster.config.decisions_stream());
                let published = cluster.js.send_publish(subject.clone(), message).await;
                let cluster = Arc::clone(&cluster);
                in_flight.spawn(async move {
                    let acked = match published {
                        Ok(ack) => ack.await.is_ok(),
                        Err(_) => false,
                    };
                    cluster.acknowledged(acked);
                    let counter = if acked {
                        &cluster.stats.decisions_published
                    } else {
                        &cluster.stats.decisions_lost
                    };
                    counter.fetch_add(count, Ordering::Relaxed);
                });
            }
        });
        DecisionQueue { queue }
    }
}

impl DecisionSink for DecisionQueue {
    fn send(&self, decision: Box<PendingDecision>) -> Result<(), DbError> {
        self.queue
            .try_send(decision)
            .map_err(|_| DbError::Write(WriteError::Full))
    }
}
