//! The appliers: every node reads the whole write stream in order and applies each record
//! to its memory with the code journal replay uses (`Db::apply_replicated`), and reads
//! the decisions stream to remember every node's decisions for their outcomes. Both read
//! through JetStream's ordered consumers (ephemeral, no acks, gaps detected and the
//! consumer recreated by the client); a consumer that fails is recreated from the last
//! position applied, after a pause.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{DeliverPolicy, push};
use tokio_stream::StreamExt;

use super::Cluster;
use super::commit::{self, Confirmer};
use crate::journal::Record;

/// How long to wait before making a failed consumer again.
const RETRY: Duration = Duration::from_millis(500);

/// A consumer that delivers nothing this long is checked against what the stream holds.
const QUIET: Duration = Duration::from_millis(500);

fn deliver_from(position: u64) -> DeliverPolicy {
    if position <= 1 {
        DeliverPolicy::All
    } else {
        DeliverPolicy::ByStartSequence {
            start_sequence: position,
        }
    }
}

/// An ordered consumer of the stream `name` from position `from` on, and its messages.
async fn consume(cluster: &Cluster, name: &str, from: u64) -> Result<push::Ordered, String> {
    let stream = cluster
        .js
        .get_stream(name)
        .await
        .map_err(|e| e.to_string())?;
    stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: cluster.js.client().new_inbox(),
            deliver_policy: deliver_from(from),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?
        .messages()
        .await
        .map_err(|e| e.to_string())
}

/// Applies the write stream from `from` on, for as long as the process runs, each record
/// once it is known to be committed (`commit`).
pub(super) async fn writes(cluster: Arc<Cluster>, from: u64) {
    let mut next = from;
    // The last position applied and known committed: where reading starts again when a
    // record cannot be confirmed (only barriers, which change nothing, lie between it
    // and `next`).
    let mut confirmed = from.saturating_sub(1);
    let mut confirmer = Confirmer::default();
    let mut last_snapshot = Instant::now();
    // The position of the last snapshot taken (or the one the node started from).
    let mut snapshotted = from.saturating_sub(1);
    let mut failing = false;
    // Whether the last record delivered could not be confirmed (logged once).
    let mut unconfirmed = false;
    loop {
        let mut messages = match consume(&cluster, &cluster.config.writes_stream(), next).await {
            Ok(m) => m,
            Err(e) => {
                cluster.suspect();
                if !failing {
                    tracing::warn!(error = %e, "consuming the write stream; retrying");
                    failing = true;
                }
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        if failing {
            tracing::info!(from = next, "applying the write stream again");
            failing = false;
        }
        let mut quiet = 0u32;
        loop {
            let message = match tokio::time::timeout(QUIET, messages.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => {
                    tracing::warn!(error = %e, "the write stream's consumer failed; making it again");
                    cluster.suspect();
                    break;
                }
                Ok(None) => {
                    cluster.suspect();
                    break;
                }
                Err(_) => {
                    // Nothing delivered for a while. The consumer (one replica, on one
                    // server) may be gone with its server: the client would notice only
                    // after two missed heartbeats (10 s). Known records not delivered, or
                    // the stream longer than what was applied, mean it is: make it again.
                    quiet += 1;
                    confirmer.quiet(&cluster);
                    let applied = next - 1;
                    // A quiet stream still gets its snapshot, of what was applied since.
                    if let Some(every) = cluster.config.snapshot_every
                        && last_snapshot.elapsed() >= every
                        && confirmed > snapshotted
                    {
                        last_snapshot = Instant::now();
                        snapshotted = confirmed;
                        snapshot(&cluster, confirmed);
                    }
                    if cluster.tail.load(Ordering::Relaxed) > applied {
                        tracing::info!(
                            applied,
                            "the write stream's consumer is stalled; making it again"
                        );
                        cluster.suspect();
                        break;
                    }
                    if quiet.is_multiple_of(4)
                        && cluster.stream_last(&cluster.config.writes_stream()).await > applied
                    {
                        cluster.suspect();
                        break;
                    }
                    continue;
                }
            };
            quiet = 0;
            let Ok(info) = message.info() else {
                continue;
            };
            let position = info.stream_sequence;
            let pending = info.pending;
            let stored_ms = (info.published.unix_timestamp_nanos() / 1_000_000) as i64;
            if position < next {
                // Delivered again after a consumer was made anew.
                continue;
            }
            if position > next && next > 1 {
                // Records this node has not applied were trimmed away (it was cut off
                // longer than every other node's snapshots reach back): its state can no
                // longer be completed. Stop rather than serve a state missing writes.
                tracing::error!(
                    expected = next,
                    delivered = position,
                    "the write stream no longer holds the records this node needs next; exiting (start it on an empty data directory: it begins from the cluster's published snapshot)"
                );
                std::process::exit(70);
            }
            if commit::is_barrier(&message.subject) {
                confirmer.passed_barrier(&cluster, position, &message.subject, &message.payload);
                if position <= cluster.committed() {
                    confirmed = position;
                }
            } else {
                if let Err(e) = confirmer
                    .confirm(&cluster, position, &message.subject, &message.payload)
                    .await
                {
                    if !unconfirmed {
                        tracing::warn!(
                            position,
                            error = %e,
                            "a delivered write is not known to be committed; reading the stream again"
                        );
                        unconfirmed = true;
                    }
                    break;
                }
                if unconfirmed {
                    tracing::info!(position, "delivered writes are confirmed committed again");
                    unconfirmed = false;
                }
                apply_message(&cluster, position, &message.subject, &message.payload);
                confirmed = position;
                cluster
                    .tail
                    .fetch_max(position + pending, Ordering::Relaxed);
            }
            next = position + 1;
            cluster.applied_at.store(stored_ms, Ordering::Relaxed);
            cluster.applied.send_if_modified(|applied| {
                let moved = position > *applied;
                *applied = (*applied).max(position);
                moved
            });
            if let Some(every) = cluster.config.snapshot_every
                && last_snapshot.elapsed() >= every
                && confirmed > snapshotted
            {
                last_snapshot = Instant::now();
                snapshotted = confirmed;
                snapshot(&cluster, confirmed);
            }
        }
        // Whatever ended this consumer, read again from the last record confirmed: the
        // barriers passed since may not be the cluster's.
        next = confirmed + 1;
        confirmer.rewound();
        tokio::time::sleep(RETRY).await;
    }
}

/// Applies one committed record of the write stream: a catalog, or a journal record.
fn apply_message(cluster: &Cluster, position: u64, subject: &str, payload: &[u8]) {
    if super::catalog::is_catalog(subject) {
        super::catalog::apply(cluster, position, payload);
    } else {
        match Record::decode_payload(payload) {
            Ok(record) => {
                let counter = if cluster.db.apply_replicated(position, record) {
                    &cluster.stats.applied_records
                } else {
                    &cluster.stats.skipped_duplicates
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                // A record of a newer nextbest, or damage: skipped alike on every node of
                // this version, so the nodes stay equal; counted and logged.
                cluster.stats.undecodable.fetch_add(1, Ordering::Relaxed);
                tracing::error!(position, error = %e, "a write in the stream does not decode; skipped");
            }
        }
    }
    if let Some(p) = partition_of(subject)
        && let Some(cell) = cluster.partitions.get(p)
    {
        cell.store(position, Ordering::Relaxed);
    }
}

/// Snapshots the state as of `position`, applying nothing meanwhile (the applier calls
/// it between two records), and publishes it for nodes to come.
fn snapshot(cluster: &Arc<Cluster>, position: u64) {
    let mark = cluster.mark(position);
    let db = &cluster.db;
    let catalog = cluster.catalog_in_force();
    let taken = tokio::task::block_in_place(|| {
        db.snapshot_replicated(&mark, catalog.as_deref(), crate::setup::now_ms())
    });
    match taken {
        Ok(path) => {
            cluster.stats.snapshots.fetch_add(1, Ordering::Relaxed);
            tracing::info!(position, snapshot = %path.display(), "snapshot taken");
            super::snapshots::publish(cluster, path, position);
        }
        Err(e) => tracing::error!(error = %e, "snapshot failed"),
    }
}

/// The partition number at the end of a write subject.
fn partition_of(subject: &str) -> Option<usize> {
    subject.rsplit('.').next()?.parse().ok()
}

/// Remembers the decisions stream's decisions from `from` on.
pub(super) async fn decisions(cluster: Arc<Cluster>, from: u64) {
    let mut next = from;
    loop {
        let Ok(mut messages) = consume(&cluster, &cluster.config.decisions_stream(), next).await
        else {
            tokio::time::sleep(RETRY).await;
            continue;
        };
        let mut quiet = 0u32;
        loop {
            let message = match tokio::time::timeout(QUIET, messages.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(_)) | None) => break,
                Err(_) => {
                    // As for the write stream: a consumer gone with its server.
                    quiet += 1;
                    if quiet.is_multiple_of(4)
                        && cluster
                            .stream_last(&cluster.config.decisions_stream())
                            .await
                            >= next
                    {
                        break;
                    }
                    continue;
                }
            };
            quiet = 0;
            let Ok(info) = message.info() else {
                continue;
            };
            let position = info.stream_sequence;
            if position < next {
                continue;
            }
            next = position + 1;
            // A batch of decisions, as journal frames. With adaptive models a decision is
            // read whole: its predictors' values are kept for its outcomes' records.
            let whole = !cluster.db.catalog().models.is_empty();
            for frame in crate::storage::segment::frames(&message.payload) {
                let remembered = frame.and_then(|f| {
                    if whole {
                        if let Record::Decision(d) = Record::decode_payload(f).ok()? {
                            cluster.db.remember_replicated_record(&d);
                        }
                    } else {
                        let decision = Record::decode_payload_for_replay(f).ok()?;
                        cluster.db.remember_replicated(decision);
                    }
                    Some(())
                });
                if remembered.is_none() {
                    cluster.stats.undecodable.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                cluster
                    .stats
                    .decisions_remembered
                    .fetch_add(1, Ordering::Relaxed);
            }
            cluster.decisions_applied.store(position, Ordering::Relaxed);
        }
        tokio::time::sleep(RETRY).await;
    }
}
