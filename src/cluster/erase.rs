//! Erasure from the decisions stream: a forgotten customer's decisions are rewritten out
//! of the batches that hold them. The node that took a `Forget` does it, a few seconds
//! later (so that decisions made just before it, on any node, have reached the stream):
//! it reads the stream, publishes each batch holding one of the customer's decisions made
//! before the forget again without them, and deletes the old message with JetStream's
//! erasing delete, which overwrites its bytes on every replica. The write stream needs
//! nothing of this (trimming below every snapshot purges its records), nor the snapshots
//! (`snapshots` erases the chunks of every snapshot a newer one replaced).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::push;
use async_nats::jetstream::message::PublishMessage as Publish;
use tokio_stream::StreamExt;

use super::Cluster;
use crate::journal::{Record, Replayed};

/// How long after a forget its erasure starts: decisions made before it on any node
/// reach the decisions stream within a batch's linger and acknowledgement, far less.
const SETTLE: Duration = Duration::from_secs(2);

/// How long a failed pass waits before it is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// The header of a rewritten batch: the original's store time (ns since the epoch), by
/// which `fetch` orders it among the other records, as the original was.
pub(super) const STORED_AT: &str = "Nextbest-Stored-At";

/// Customers forgotten through this node whose decisions are still to be erased, each with
/// the time of its forget (ms): decisions made up to then are erased, later ones are the
/// customer's again.
#[derive(Default)]
pub(super) struct Erasures {
    pending: std::sync::Mutex<HashMap<Box<str>, i64>>,
    wake: tokio::sync::Notify,
}

impl Erasures {
    fn take(&self) -> HashMap<Box<str>, i64> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn add(&self, customers: impl IntoIterator<Item = (Box<str>, i64)>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for (customer, at) in customers {
            let kept = pending.entry(customer).or_insert(at);
            *kept = (*kept).max(at);
        }
        drop(pending);
        self.wake.notify_one();
    }
}

impl Cluster {
    /// Erases, soon, the decisions of `customer` made up to `at` (ms) from the decisions
    /// stream.
    pub(super) fn erase_decisions_later(&self, customer: &str, at: i64) {
        self.erasures.add([(Box::from(customer), at)]);
    }
}

/// Runs erasure passes for as long as the process does.
pub(super) async fn run(cluster: Arc<Cluster>) {
    loop {
        cluster.erasures.wake.notified().await;
        tokio::time::sleep(SETTLE).await;
        let forgotten = cluster.erasures.take();
        if forgotten.is_empty() {
            continue;
        }
        match pass(&cluster, &forgotten).await {
            Ok(erased) => {
                cluster
                    .stats
                    .erased_decisions
                    .fetch_add(erased.decisions, Ordering::Relaxed);
                tracing::info!(
                    customers = forgotten.len(),
                    decisions = erased.decisions,
                    batches = erased.batches,
                    "erased forgotten customers' decisions from the decisions stream"
                );
            }
            Err(error) => {
                tracing::warn!(%error, customers = forgotten.len(), "erasing forgotten customers' decisions; trying again");
                tokio::time::sleep(RETRY).await;
                cluster.erasures.add(forgotten);
            }
        }
    }
}

/// What a pass erased.
#[derive(Debug, Default, PartialEq, Eq)]
struct Erased {
    decisions: u64,
    batches: u64,
}

/// A batch of decisions (journal frames) without those of `forgotten` made up to their
/// forget, and how many it dropped; `None` when it drops none (or cannot be read whole:
/// what cannot be read is never rewritten).
fn without(batch: &[u8], forgotten: &HashMap<Box<str>, i64>) -> Option<(Vec<u8>, u64)> {
    let mut kept = Vec::with_capacity(batch.len());
    let mut dropped = 0;
    for frame in crate::storage::segment::frames(batch) {
        let frame = frame?;
        let erase = match Record::decode_payload_for_replay(frame).ok()? {
            Replayed::Decision {
                id,
                customer: Some(customer),
                ..
            } => forgotten
                .get(&*customer)
                .is_some_and(|at| crate::db::uuid_time(uuid::Uuid::from_bytes(id)) <= *at),
            _ => false,
        };
        if erase {
            dropped += 1;
        } else {
            crate::storage::segment::frame(&mut kept, frame);
        }
    }
    (dropped > 0).then_some((kept, dropped))
}

/// One pass over the decisions stream, from its first message to its last as the pass
/// began (and any copy another node's pass made meanwhile of a batch this one rewrites).
async fn pass(cluster: &Cluster, forgotten: &HashMap<Box<str>, i64>) -> Result<Erased, String> {
    let name = cluster.config.decisions_stream();
    let fail = |e: &dyn std::fmt::Display| format!("stream `{name}`: {e}");
    let mut stream = cluster.js.get_stream(&name).await.map_err(|e| fail(&e))?;
    let state = stream.info().await.map_err(|e| fail(&e))?.state.clone();
    let mut erased = Erased::default();
    if state.messages == 0 {
        return Ok(erased);
    }
    let mut end = state.last_sequence;
    let consumer = stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: cluster.js.client().new_inbox(),
            description: Some("nextbest erasure".into()),
            ..Default::default()
        })
        .await
        .map_err(|e| fail(&e))?;
    let mut messages = consumer.messages().await.map_err(|e| fail(&e))?;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .map_err(|_| fail(&"delivered nothing for 10 s"))?
            .ok_or_else(|| fail(&"the consumer ended"))?
            .map_err(|e| fail(&e))?;
        let info = message.info().map_err(|e| fail(&e))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        let stored_at = message
            .headers
            .as_ref()
            .and_then(|h| h.get(STORED_AT))
            .map(|v| v.as_str().to_string())
            .unwrap_or_else(|| info.published.unix_timestamp_nanos().to_string());
        if let Some((kept, dropped)) = without(&message.payload, forgotten) {
            if !kept.is_empty() {
                let mut headers = HeaderMap::new();
                headers.insert(STORED_AT, stored_at.as_str());
                // Named by the batch it replaces: two nodes' passes rewriting it at once
                // store one copy (the other's pass then reads that copy, further on).
                let copy = Publish::build()
                    .payload(kept.into())
                    .headers(headers)
                    .message_id(format!("erasing-{seq}"))
                    .expected_stream(&name);
                let ack = cluster
                    .js
                    .send_publish(message.subject.clone(), copy)
                    .await
                    .map_err(|e| fail(&e))?
                    .await
                    .map_err(|e| fail(&e))?;
                end = end.max(ack.sequence);
            }
            // JetStream's erasing delete (async-nats sends no `no_erase`): the message's
            // bytes are overwritten on every replica. Gone already: another pass's.
            match stream.delete_message(seq).await {
                Ok(_) => {}
                Err(e) if e.to_string().contains("no message found") => {}
                Err(e) => return Err(fail(&e)),
            }
            erased.decisions += dropped;
            erased.batches += 1;
        }
        if seq >= end || pending == 0 {
            return Ok(erased);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::DecisionRecord;
    use crate::storage::Encode;

    fn batch(decisions: &[(&str, i64)]) -> Vec<u8> {
        let mut batch = Vec::new();
        for (customer, at) in decisions {
            let ts = uuid::Timestamp::from_unix(uuid::NoContext, (*at / 1000) as u64, 0);
            let record = DecisionRecord {
                id: *uuid::Uuid::new_v7(ts).as_bytes(),
                at: *at,
                customer: Some(customer.to_string()),
                placement: "web.home_banner".into(),
                channel: "web".into(),
                shown: Vec::new(),
                catalog_version: "v1".into(),
                experiment: None,
                arm: None,
                epsilon: 0.1,
                one_per_group: false,
                features: Vec::new(),
                candidates: Vec::new(),
                suppressed: None,
                learned: None,
            };
            let mut payload = Vec::new();
            Record::Decision(Box::new(record)).encode(&mut payload);
            crate::storage::segment::frame(&mut batch, &payload);
        }
        batch
    }

    fn customers(batch: &[u8]) -> Vec<String> {
        crate::storage::segment::frames(batch)
            .map(|f| {
                let frame = f.expect("a whole frame");
                match Record::decode_payload_for_replay(frame).expect("a record") {
                    Replayed::Decision {
                        customer: Some(customer),
                        ..
                    } => customer.to_string(),
                    other => panic!("{other:?}"),
                }
            })
            .collect()
    }

    #[test]
    fn a_batch_loses_the_forgotten_customers_decisions_made_before_the_forget_only() {
        let original = batch(&[("a", 1_000), ("b", 1_000), ("a", 3_000), ("c", 1_000)]);
        let forgotten = HashMap::from([(Box::from("a"), 2_000)]);
        let (kept, dropped) = without(&original, &forgotten).expect("a's first decision goes");
        assert_eq!(dropped, 1);
        assert_eq!(customers(&kept), ["b", "a", "c"]);
        // Nothing to drop: left alone.
        assert_eq!(without(&kept, &forgotten), None);
        let everyone = HashMap::from([
            (Box::from("a"), 5_000),
            (Box::from("b"), 5_000),
            (Box::from("c"), 5_000),
        ]);
        let (kept, dropped) = without(&original, &everyone).expect("all go");
        assert_eq!((kept.len(), dropped), (0, 4));
        // A torn batch is never rewritten.
        assert_eq!(without(&original[..original.len() - 3], &everyone), None);
    }
}
