//! Applying only what JetStream committed.
//!
//! A NATS server cut off from its peers may go on believing, for 10–20 s on nats-server
//! 2.9, that it leads the write stream: it stores a write sent to it without a quorum and
//! delivers it to the consumers on its side, though that write is never committed and the
//! majority may commit another at the same position. A node that applied it would hold a
//! write nobody acknowledged and lack the one the cluster kept. So the applier applies a
//! record only once it knows the record is committed, as Raft's read index does:
//!
//! - JetStream acknowledges a publish once a quorum stored it, and a stream's records are
//!   committed in order, so an acknowledgement of position `S` to this node (one of its
//!   writes, never a duplicate's, which the leader answers from memory) says every record
//!   up to `S` is committed;
//! - a delivered record no acknowledgement covers yet waits briefly for one while this
//!   node awaits some (its own writes are acknowledged as they are delivered), then the
//!   applier publishes a *barrier*, a record of no content on `<prefix>.writes.barrier`,
//!   and waits for its acknowledgement. Without a quorum none comes: the applier applies
//!   nothing, reads the stream again from the last record it confirmed, and decides go
//!   on from memory.
//!
//! Barriers are not confirmed when they arrive (confirming them would have nodes answer
//! each other's barriers for ever): the applier passes them, keeps those nothing covered,
//! and reads them again whenever its consumer ends or a confirmation fails; one left
//! unconfirmed for [`PASSED_UNCONFIRMED`] with nothing after it raises a suspicion, since
//! a cut-off leader's barrier may stand where the majority committed a write.
//!
//! After any publish of this node went unacknowledged, or its consumer of the stream was
//! lost, records delivered to it may be of a cut-off leader's log even once a barrier is
//! acknowledged (by the majority's leader, after the heal: the cut-off server's copy is
//! mended only later): until the node reads back, committed, a barrier it published after
//! that, each record, and the barriers passed before it, are also compared with the
//! stream leader's copy before it applies.
//!
//! Not covered: a write a cut-off leader delivers in the few milliseconds before the
//! partition heals, to a node that saw nothing fail, and whose barrier then reaches the
//! majority's leader. Every other record is applied only if committed.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Cluster;

/// The last token of the write stream's subject for barriers.
pub(super) const SUBJECT: &str = "barrier";

/// Whether a write stream message is a barrier.
pub(super) fn is_barrier(subject: &str) -> bool {
    subject.rsplit('.').next() == Some(SUBJECT)
}

/// How long a delivered record waits for an acknowledgement of this node's own writes to
/// cover it before the applier publishes a barrier, while some are awaited.
const COVER_WAIT: Duration = Duration::from_millis(2);

/// A barrier passed while no acknowledgement covered it, left so this long with nothing
/// after it to confirm, raises a suspicion: it may be a cut-off leader's, hiding the
/// majority's record of that position.
const PASSED_UNCONFIRMED: Duration = Duration::from_millis(500);

/// The applier's side of confirming: whether and since when it trusts what it is
/// delivered.
#[derive(Debug, Default)]
pub(super) struct Confirmer {
    /// The count of suspicions (`Cluster::suspicions`) that a barrier read back covered.
    trusted: u64,
    /// A barrier published while suspicious: its payload, its position, and the count of
    /// suspicions when it was published.
    clearing: Option<(Vec<u8>, u64, u64)>,
    /// Barriers passed above what was known committed, since the last record confirmed:
    /// position, subject and payload, and when.
    passed: Vec<(u64, String, Vec<u8>, Instant)>,
    /// Whether the oldest of `passed` raised its suspicion already.
    suspected: bool,
}

impl Cluster {
    /// Notes that JetStream acknowledged position `position` to this node (not as a
    /// duplicate): every record up to it is committed.
    pub(super) fn committed_through(&self, position: u64) {
        if self.committed.fetch_max(position, Ordering::Relaxed) < position {
            self.committed_moved.notify_waiters();
        }
    }

    pub(super) fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// Publishes a barrier (payload: this node's id and a count), returning its payload
    /// and position once JetStream acknowledged it.
    async fn barrier(&self) -> Result<(Vec<u8>, u64), String> {
        let n = self.barriers.fetch_add(1, Ordering::Relaxed);
        let payload = format!("{} {n}", self.config.node_id).into_bytes();
        let subject = format!("{}.writes.{SUBJECT}", self.config.prefix);
        let ack = self
            .publish_barrier(subject, payload.clone())
            .await
            .map_err(|e| e.to_string())?;
        Ok((payload, ack.sequence))
    }
}

impl Confirmer {
    fn suspicious(&self, cluster: &Cluster) -> bool {
        cluster.suspicions.load(Ordering::Relaxed) > self.trusted
    }

    /// Resolves once the record delivered at `position` (`subject`, `payload`), and the
    /// barriers passed before it, are known to be committed; an error when that cannot
    /// be known now, or they are not what the stream's leader holds there: the caller
    /// reads the stream again from what it confirmed, after a pause.
    pub(super) async fn confirm(
        &mut self,
        cluster: &Cluster,
        position: u64,
        subject: &str,
        payload: &[u8],
    ) -> Result<(), String> {
        if cluster.committed() < position {
            // An acknowledgement to come may cover it; with none to come, a barrier at once.
            let wait = if cluster.in_flight.load(Ordering::Relaxed) > 0 {
                COVER_WAIT
            } else {
                Duration::ZERO
            };
            let covered = tokio::time::timeout(wait, async {
                loop {
                    let moved = cluster.committed_moved.notified();
                    if cluster.committed() >= position {
                        return;
                    }
                    moved.await;
                }
            });
            if covered.await.is_err() {
                let suspicions = cluster.suspicions.load(Ordering::Relaxed);
                let (barrier, at) = cluster.barrier().await?;
                // While suspicious, this barrier read back also clears the suspicion.
                if self.suspicious(cluster) && self.clearing.is_none() {
                    self.clearing = Some((barrier, at, suspicions));
                }
            }
            let committed = cluster.committed();
            if committed < position {
                // The leader's stream is shorter than what this node was delivered: it
                // was delivered records of a log that is not the cluster's.
                cluster.suspect();
                return Err(format!(
                    "position {position} was delivered but the stream's leader has committed only up to {committed}"
                ));
            }
        }
        if !self.suspicious(cluster) {
            self.confirmed();
            return Ok(());
        }
        if self.clearing.is_none() {
            let suspicions = cluster.suspicions.load(Ordering::Relaxed);
            let (barrier, at) = cluster.barrier().await?;
            self.clearing = Some((barrier, at, suspicions));
        }
        let stream = cluster
            .js
            .get_stream_no_info(cluster.config.writes_stream())
            .await
            .map_err(|e| e.to_string())?;
        let passed = std::mem::take(&mut self.passed);
        let records = passed
            .iter()
            .map(|(at, subject, payload, _)| (*at, subject.as_str(), payload.as_slice()))
            .chain([(position, subject, payload)]);
        for (at, subject, payload) in records {
            let held = stream
                .get_raw_message(at)
                .await
                .map_err(|e| format!("reading position {at} from the stream's leader: {e}"))?;
            if held.subject.as_str() != subject || held.payload.as_ref() != payload {
                return Err(format!(
                    "the record delivered at position {at} is not the one the stream's leader holds there"
                ));
            }
        }
        self.confirmed();
        Ok(())
    }

    fn confirmed(&mut self) {
        self.passed.clear();
        self.suspected = false;
    }

    /// Forgets what was passed since the last record confirmed: the caller reads it
    /// again.
    pub(super) fn rewound(&mut self) {
        self.confirmed();
    }

    /// Notes a barrier delivered at `position`: kept to check if nothing covered it;
    /// once this node's clearing barrier is read back committed, what it is delivered is
    /// the cluster's log again.
    pub(super) fn passed_barrier(
        &mut self,
        cluster: &Cluster,
        position: u64,
        subject: &str,
        payload: &[u8],
    ) {
        if let Some((clearing, at, failures)) = &self.clearing
            && *at == position
            && clearing.as_slice() == payload
        {
            self.trusted = *failures;
            self.clearing = None;
            tracing::info!(position, "the write stream is confirmed again");
        }
        if position > cluster.committed() {
            self.passed.push((
                position,
                subject.to_string(),
                payload.to_vec(),
                Instant::now(),
            ));
        }
    }

    /// Called while nothing is delivered: a barrier passed unconfirmed for long raises a
    /// suspicion, so what comes next is checked against the stream's leader.
    pub(super) fn quiet(&mut self, cluster: &Cluster) {
        // Covered by an acknowledgement now; while suspicious, still to be compared.
        if !self.suspicious(cluster) {
            let committed = cluster.committed();
            self.passed.retain(|(at, ..)| *at > committed);
        }
        if let Some((_, _, _, when)) = self.passed.first()
            && !self.suspected
            && when.elapsed() >= PASSED_UNCONFIRMED
        {
            self.suspected = true;
            cluster.suspect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn barriers_are_told_from_partitions_and_catalogs() {
        assert!(is_barrier("nextbest.writes.barrier"));
        assert!(!is_barrier("nextbest.writes.3"));
        assert!(!is_barrier("nextbest.writes.catalog"));
        assert!(!is_barrier("nextbest.writes.barrier.3"));
    }
}
