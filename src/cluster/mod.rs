//! One logical engine on many nodes (docs/cluster.md): the journal's writes live in a
//! NATS JetStream stream instead of local segments, and every node applies all of it, in
//! the stream's order, with the code that replays a journal; decisions go to a stream of
//! their own, which every node reads to remember them for their outcomes. Decide reads
//! memory only.
//!
//! - **Writes** are checked here exactly as an embedded node checks them (`Db`'s checks),
//!   published to `<prefix>.writes.<partition>` (the partition a hash of the customer id,
//!   so one customer's writes are in one subject, and the stream orders all of them),
//!   and acknowledged to the caller once JetStream acknowledged them *and* this node
//!   applied them: the caller reads its own write on the node it wrote through. The
//!   answer carries the write's stream position, which `Decide` on any node accepts as
//!   `min_position` (read your writes across nodes).
//! - **Outcomes** carry their identity as JetStream's message id (one stored within the
//!   stream's duplicate window) and are de-duplicated when applied beyond it, the same
//!   way on every node.
//! - **Snapshots** are taken by the applier between two records (exact), with the stream
//!   positions they reflect; a restart applies the stream from there.
//!
//! The applier is the only writer of the store in cluster mode.

mod apply;
mod catalog;
mod commit;
mod erase;
mod fetch;
mod publish;
mod snapshots;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use tokio::sync::watch;

use crate::catalog::Sources;
use crate::db::{Db, DbError, StreamMark};

pub use catalog::opening as opening_catalog;
pub use fetch::{Fetched, fetch_journal};
pub use publish::Written;
pub use snapshots::bootstrap;

/// How a node joins its cluster: what `serve --cluster` says.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS servers (`nats://host:port`), any of the cluster's.
    pub servers: Vec<String>,
    /// This node's name in logs, metrics and `Status`.
    pub node_id: String,
    /// Replicas of each stream (JetStream's `num_replicas`: 1, 3 or 5 in practice).
    pub replicas: usize,
    /// The write stream's partitions (subjects). Fixed for the life of a stream.
    pub partitions: u32,
    /// Names: streams `<PREFIX>_WRITES` and `<PREFIX>_DECISIONS`, subjects
    /// `<prefix>.writes.<n>` and `<prefix>.decisions.<n>`.
    pub prefix: String,
    /// Replicas of the decisions stream (the log for retraining; losing its tail loses
    /// no state): `replicas` unless set.
    pub decision_replicas: Option<usize>,
    /// How long decisions are kept in their stream (JetStream's `max_age`).
    pub decisions_max_age: Duration,
    /// JetStream's de-duplication window for the write stream.
    pub duplicate_window: Duration,
    /// Snapshot the applied state this often (`None`: never).
    pub snapshot_every: Option<Duration>,
    /// How long a write waits for JetStream's acknowledgement before answering
    /// UNAVAILABLE.
    pub publish_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            servers: vec!["nats://127.0.0.1:4222".into()],
            node_id: "node".into(),
            replicas: 3,
            partitions: 16,
            prefix: "nextbest".into(),
            decision_replicas: None,
            decisions_max_age: Duration::from_secs(7 * 86_400),
            duplicate_window: Duration::from_secs(120),
            snapshot_every: Some(Duration::from_secs(300)),
            publish_timeout: Duration::from_secs(5),
        }
    }
}

impl ClusterConfig {
    fn writes_stream(&self) -> String {
        format!("{}_WRITES", self.prefix.to_ascii_uppercase())
    }
    fn decisions_stream(&self) -> String {
        format!("{}_DECISIONS", self.prefix.to_ascii_uppercase())
    }
    /// The write subject of a key (a customer id, or a decision id for an outcome of
    /// nobody known).
    fn write_subject(&self, key: &[u8]) -> String {
        format!("{}.writes.{}", self.prefix, self.partition(key))
    }
    /// The write subject of catalog swaps: a catalog takes effect where it is in the
    /// write stream, on every node alike.
    fn catalog_subject(&self) -> String {
        format!("{}.writes.{}", self.prefix, catalog::SUBJECT)
    }
    fn partition(&self, key: &[u8]) -> u32 {
        (xxhash_rust::xxh3::xxh3_64(key) % u64::from(self.partitions.max(1))) as u32
    }
}

/// Why a cluster write was not acknowledged, or the cluster could not be joined.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The caller's mistake or the node's state, as an embedded node answers it.
    #[error(transparent)]
    Db(#[from] DbError),
    /// JetStream did not acknowledge: the write may or may not be applied later (a
    /// retry is safe: outcomes are idempotent, upserts and forgets repeat alike).
    #[error("the cluster's stream did not acknowledge the write ({0}); nothing was acknowledged")]
    Unavailable(String),
    /// This node has not applied a position it was asked to wait for.
    #[error(
        "this node has applied the cluster's writes up to position {applied}, not yet {wanted}; retry, or ask another node"
    )]
    Behind { wanted: u64, applied: u64 },
    /// Connecting or setting up the streams.
    #[error("joining the cluster at {servers}: {detail}")]
    Join { servers: String, detail: String },
    /// The data directory holds an embedded node's journal or snapshot.
    #[error(
        "the data directory holds an embedded node's snapshot or journal ({records} journal records); a cluster node starts from an empty directory or its own snapshots"
    )]
    NotAClusterDirectory { records: u64 },
}

fn unavailable(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Unavailable(e.to_string())
}

/// Counters of a node's cluster traffic, for metrics and `Status`.
#[derive(Debug, Default)]
pub struct ClusterStats {
    pub published: AtomicU64,
    pub publish_failures: AtomicU64,
    pub applied_records: AtomicU64,
    pub skipped_duplicates: AtomicU64,
    pub undecodable: AtomicU64,
    pub decisions_published: AtomicU64,
    pub decisions_lost: AtomicU64,
    pub decisions_remembered: AtomicU64,
    pub stale_decides: AtomicU64,
    pub snapshots: AtomicU64,
    pub snapshots_published: AtomicU64,
    /// Write-stream records purged below every node's snapshot.
    pub trimmed: AtomicU64,
    /// Forgotten customers' decisions erased from the decisions stream by this node.
    pub erased_decisions: AtomicU64,
    /// Replaced snapshots whose chunks this node erased from the snapshot store.
    pub erased_snapshots: AtomicU64,
    /// Barriers published to confirm that records delivered are committed.
    pub barriers: AtomicU64,
    /// Sum of publish-to-ack times of this node's writes, in µs (with `published`, a mean).
    pub publish_micros: AtomicU64,
}

/// A node's membership of a cluster: the connection, the streams, and the applier's
/// progress.
pub struct Cluster {
    config: ClusterConfig,
    js: jetstream::Context,
    db: Arc<Db>,
    /// The last write-stream position applied here.
    applied: watch::Sender<u64>,
    /// Per partition, the last position applied.
    partitions: Box<[AtomicU64]>,
    /// The highest write-stream position known to exist (from acks and deliveries).
    tail: AtomicU64,
    /// The highest write-stream position JetStream acknowledged to this node: every record
    /// up to it is committed (`commit`).
    committed: AtomicU64,
    committed_moved: tokio::sync::Notify,
    /// Barriers this node published (their payloads count them).
    barriers: AtomicU64,
    /// Records this node sent to the write stream and JetStream has not answered yet.
    in_flight: AtomicU64,
    /// Events after which what this node is delivered may not be the cluster's log (a
    /// publish JetStream did not acknowledge, a consumer of the write stream lost): the
    /// applier then checks each record against the stream's leader (`commit`).
    suspicions: AtomicU64,
    /// The last decisions-stream position remembered here.
    decisions_applied: AtomicU64,
    /// JetStream's store time (ms since the epoch) of the last write applied here.
    applied_at: std::sync::atomic::AtomicI64,
    /// The write stream's position when this node joined: SERVING once applied.
    joined_at: u64,
    stream_created: i64,
    connected: Arc<AtomicBool>,
    /// Whether the last publish JetStream answered (a write or a batch of decisions) was
    /// acknowledged: false on the minority side of a partition, where the connection to
    /// a NATS server holds but the streams have no quorum.
    acknowledging: AtomicBool,
    catalog_bucket: jetstream::kv::Store,
    snapshot_store: jetstream::object_store::ObjectStore,
    /// Each node's newest snapshot position (what trimming the write stream respects).
    nodes_bucket: jetstream::kv::Store,
    /// Catalogs this node swapped to because the cluster published them.
    catalog_swaps: AtomicU64,
    /// The catalog in force as the cluster published it (its files): what snapshots keep,
    /// for a restart to open with. Set before the applier starts, then only by it.
    in_force: std::sync::Mutex<Option<Arc<[u8]>>>,
    /// Customers forgotten through this node, their decisions still to erase (`erase`).
    erasures: erase::Erasures,
    /// The position of the last snapshot this node uploaded (`snapshots`).
    uploaded: AtomicU64,
    pub stats: ClusterStats,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.config.node_id)
            .field("applied", &*self.applied.borrow())
            .finish()
    }
}

/// What `AdminService.Status` reports of a cluster node.
#[derive(Debug, Clone)]
pub struct ClusterStatus {
    pub applied: u64,
    pub tail: u64,
    pub partitions: Vec<u64>,
    pub decisions_applied: u64,
    pub connected: bool,
    pub caught_up: bool,
}

impl Cluster {
    /// Connects, makes sure the streams exist (creating them with this node's settings
    /// if they do not), and starts applying from where the node's snapshot left off
    /// (`recovered`), or from the stream's start. Returns once the applier runs; the node
    /// is caught up when [`Cluster::caught_up`] says so.
    pub async fn join(
        mut config: ClusterConfig,
        db: Arc<Db>,
        rules: &Sources,
        recovery: &crate::db::Recovery,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let recovered = recovery.stream.clone();
        let servers = config.servers.join(",");
        let join_error = |detail: String| ClusterError::Join {
            servers: servers.clone(),
            detail,
        };
        // An embedded node's directory: a snapshot without a stream position, or journal
        // records (a cluster node journals nothing), whatever it was bootstrapped with.
        if (recovery.snapshot.is_some() && recovered.is_none()) || recovery.replayed > 0 {
            return Err(ClusterError::NotAClusterDirectory {
                records: recovery.replayed,
            });
        }
        let connected = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&connected);
        let client = async_nats::ConnectOptions::new()
            .name(format!("nextbest {}", config.node_id))
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| {
                let flag = Arc::clone(&flag);
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            flag.store(true, Ordering::Relaxed);
                            tracing::info!("connected to NATS");
                        }
                        async_nats::Event::Disconnected => {
                            flag.store(false, Ordering::Relaxed);
                            tracing::warn!(
                                "disconnected from NATS; writes answer UNAVAILABLE until it is back"
                            );
                        }
                        other => tracing::info!(event = %other, "NATS"),
                    }
                }
            })
            .connect(config.servers.as_slice())
            .await
            .map_err(|e| join_error(e.to_string()))?;
        connected.store(true, Ordering::Relaxed);
        let mut js = jetstream::new(client);
        js.set_timeout(config.publish_timeout);
        let writes = ensure_stream(
            &js,
            stream::Config {
                name: config.writes_stream(),
                subjects: vec![format!("{}.writes.*", config.prefix)],
                num_replicas: config.replicas,
                storage: stream::StorageType::File,
                duplicate_window: config.duplicate_window,
                description: Some(format!("nextbest writes; partitions={}", config.partitions)),
                ..Default::default()
            },
        )
        .await
        .map_err(join_error)?;
        // The partitions are the stream's (its first node's), whatever this node says.
        if let Some(n) = writes
            .config
            .description
            .as_deref()
            .and_then(|d| d.split("partitions=").nth(1))
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| *n > 0)
        {
            config.partitions = n;
        }
        ensure_stream(
            &js,
            stream::Config {
                name: config.decisions_stream(),
                subjects: vec![format!("{}.decisions.*", config.prefix)],
                num_replicas: config.decision_replicas.unwrap_or(config.replicas),
                storage: stream::StorageType::File,
                max_age: config.decisions_max_age,
                duplicate_window: Duration::from_secs(60),
                ..Default::default()
            },
        )
        .await
        .map_err(join_error)?;
        let catalog_bucket = catalog::bucket(&js, &config).await.map_err(join_error)?;
        let snapshot_store = snapshots::store(&js, &config).await.map_err(join_error)?;
        let nodes_bucket = snapshots::nodes_bucket(&js, &config)
            .await
            .map_err(join_error)?;
        let created = writes.created.unix_timestamp_nanos() as i64;
        let last = writes.state.last_sequence;
        // A snapshot of another stream (deleted and made again) or ahead of this one is
        // not this stream's state: start over from the stream.
        let from = match &recovered {
            Some(mark)
                if mark.stream == config.writes_stream()
                    && mark.created == created
                    && mark.position <= last =>
            {
                Some(mark.clone())
            }
            Some(mark) => {
                return Err(join_error(format!(
                    "the data directory's snapshot is of stream `{}` at position {}, which is not this cluster's `{}` (last position {last}); start this node on an empty data directory",
                    mark.stream,
                    mark.position,
                    config.writes_stream()
                )));
            }
            None => None,
        };
        // The records after the node's state must all still be in the stream.
        let first = writes.state.first_sequence;
        let start = from.as_ref().map_or(0, |m| m.position);
        if start + 1 < first {
            return Err(join_error(format!(
                "the write stream now starts at position {first} (trimmed below every node's snapshot) and this node's state is at {start}: start it on an empty data directory, which begins from the cluster's published snapshot"
            )));
        }
        let partitions = (0..config.partitions.max(1))
            .map(|_| AtomicU64::new(0))
            .collect();
        let cluster = Arc::new(Cluster {
            js,
            db,
            applied: watch::channel(start).0,
            partitions,
            tail: AtomicU64::new(last),
            committed: AtomicU64::new(0),
            committed_moved: tokio::sync::Notify::new(),
            barriers: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            suspicions: AtomicU64::new(0),
            decisions_applied: AtomicU64::new(from.as_ref().map_or(0, |m| m.decisions)),
            applied_at: std::sync::atomic::AtomicI64::new(0),
            joined_at: last,
            stream_created: created,
            connected,
            acknowledging: AtomicBool::new(true),
            catalog_bucket,
            snapshot_store,
            nodes_bucket,
            catalog_swaps: AtomicU64::new(0),
            in_force: std::sync::Mutex::new(None),
            erasures: erase::Erasures::default(),
            uploaded: AtomicU64::new(0),
            stats: ClusterStats::default(),
            config,
        });
        // The snapshot's catalog counts only if its state was loaded (`stream` set).
        let snapshot_catalog = recovery.stream.as_ref().and(recovery.catalog.as_deref());
        catalog::adopt(&cluster, rules.clone(), snapshot_catalog)
            .await
            .map_err(|e| ClusterError::Join {
                servers: cluster.config.servers.join(","),
                detail: e,
            })?;
        // Until this node's first snapshot, its restart begins where it starts now: keep
        // the records after it (a node that begins at the stream's start holds trimming
        // back until it has snapshotted).
        cluster.record_snapshot_position(start).await;
        let sink = publish::DecisionQueue::start(Arc::clone(&cluster));
        cluster.db.set_decision_sink(Box::new(sink));
        let applier = tokio::spawn(apply::writes(Arc::clone(&cluster), start + 1));
        tokio::spawn(async move {
            // The applier runs for as long as the process does; if it ends (a bug), the
            // node would serve a frozen state: stop the process, whose restart catches up.
            let ended = applier.await;
            tracing::error!(
                ?ended,
                "the write stream's applier stopped; exiting so that a restart catches up"
            );
            std::process::exit(70);
        });
        tokio::spawn(apply::decisions(
            Arc::clone(&cluster),
            cluster.decisions_applied.load(Ordering::Relaxed) + 1,
        ));
        tokio::spawn(erase::run(Arc::clone(&cluster)));
        tracing::info!(
            node = %cluster.config.node_id,
            stream = %cluster.config.writes_stream(),
            from = start,
            last,
            "joined the cluster; applying its writes"
        );
        Ok(cluster)
    }

    /// Catalogs this node swapped to because the cluster published them.
    pub fn catalog_swaps(&self) -> u64 {
        self.catalog_swaps.load(Ordering::Relaxed)
    }

    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    /// The last write-stream position applied here.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Whether this node has applied everything the stream held when it joined.
    pub fn caught_up(&self) -> bool {
        self.applied() >= self.joined_at
    }

    /// Resolves once the node is caught up.
    pub async fn wait_caught_up(&self) {
        let mut rx = self.applied.subscribe();
        let _ = rx.wait_for(|p| *p >= self.joined_at).await;
    }

    /// Whether the NATS connection is up.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Waits until this node has applied `position`, at most `within`.
    pub async fn wait_applied(&self, position: u64, within: Duration) -> Result<(), ClusterError> {
        if self.applied() >= position {
            return Ok(());
        }
        let mut rx = self.applied.subscribe();
        match tokio::time::timeout(within, rx.wait_for(|p| *p >= position)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ClusterError::Behind {
                wanted: position,
                applied: self.applied(),
            }),
        }
    }

    pub fn status(&self) -> ClusterStatus {
        ClusterStatus {
            applied: self.applied(),
            tail: self.tail.load(Ordering::Relaxed).max(self.applied()),
            partitions: self
                .partitions
                .iter()
                .map(|p| p.load(Ordering::Relaxed))
                .collect(),
            decisions_applied: self.decisions_applied.load(Ordering::Relaxed),
            connected: self.connected(),
            caught_up: self.caught_up(),
        }
    }

    /// The stream's last position (0 if it cannot be asked now, within 2 s).
    pub(super) async fn stream_last(&self, name: &str) -> u64 {
        let asked = async {
            let mut stream = self.js.get_stream(name).await.ok()?;
            stream.info().await.ok().map(|i| i.state.last_sequence)
        };
        tokio::time::timeout(Duration::from_secs(2), asked)
            .await
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    /// While the node lags the stream: how old (s) the last record it applied is, by
    /// JetStream's store times; 0 when caught up.
    pub fn lag_seconds(&self) -> f64 {
        let s = self.status();
        if s.tail <= s.applied {
            return 0.0;
        }
        let at = self.applied_at.load(Ordering::Relaxed);
        ((crate::setup::now_ms() - at).max(0) as f64) / 1000.0
    }

    /// Per partition, the last position the write stream holds now (0: none yet), as
    /// JetStream answers; `None` where it cannot be asked.
    pub async fn partition_tails(&self) -> Option<Vec<u64>> {
        let stream = self.js.get_stream(self.config.writes_stream()).await.ok()?;
        let mut tails = Vec::with_capacity(self.partitions.len());
        for p in 0..self.partitions.len() {
            let subject = format!("{}.writes.{p}", self.config.prefix);
            let last = match stream.get_last_raw_message_by_subject(&subject).await {
                Ok(message) => message.sequence,
                Err(e) if matches!(e.kind(), stream::LastRawMessageErrorKind::NoMessageFound) => 0,
                Err(_) => return None,
            };
            tails.push(last);
        }
        Some(tails)
    }

    /// Counts a decision answered while the cluster is out of reach (from memory, which
    /// may lag the cluster's writes): NATS unreachable, or its last publish refused.
    pub fn count_if_stale(&self) {
        if !self.connected() || !self.acknowledging.load(Ordering::Relaxed) {
            self.stats.stale_decides.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Notes whether JetStream acknowledged a publish.
    fn acknowledged(&self, yes: bool) {
        self.acknowledging.store(yes, Ordering::Relaxed);
        if !yes {
            self.suspect();
        }
    }

    /// Notes an event after which what this node is delivered may not be the cluster's log.
    pub(super) fn suspect(&self) {
        self.suspicions.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn mark(&self, position: u64) -> StreamMark {
        StreamMark {
            stream: self.config.writes_stream(),
            created: self.stream_created,
            position,
            decisions: self.decisions_applied.load(Ordering::Relaxed),
        }
    }
}

/// Gets a key-value bucket, making it when there is none (`history` values a key, each kept
/// `max_age`, zero for ever): the bucket's stream made directly, as the client's
/// `create_key_value` would make it, since that call first asks for the account's limits
/// in a form nats-server 2.9 does not answer in.
async fn key_value(
    js: &jetstream::Context,
    name: &str,
    history: i64,
    max_age: Duration,
    replicas: usize,
) -> Result<jetstream::kv::Store, String> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    let made = js
        .create_stream(stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: history,
            max_age,
            storage: stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            num_replicas: replicas,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await;
    // Made meanwhile by another node, or now.
    js.get_key_value(name).await.map_err(|e| match made {
        Err(made) => format!("the bucket `{name}`: {made}"),
        Ok(_) => format!("the bucket `{name}`: {e}"),
    })
}

/// Gets a stream, or creates it with `config` when there is none. An existing stream
/// keeps its settings (the first node's), whatever this node's say.
async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Info, String> {
    // A cluster just started may not have elected its meta leader yet: retry a while.
    let mut last_error = String::new();
    for _ in 0..30 {
        match js.get_or_create_stream(config.clone()).await {
            Ok(mut stream) => {
                return stream
                    .info()
                    .await
                    .cloned()
                    .map_err(|e| format!("stream `{}`: {e}", config.name));
            }
            Err(e) => {
                last_error = format!("stream `{}`: {e}", config.name);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    Err(last_error)
}
