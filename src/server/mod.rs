//! The gRPC service: the only module that sees proto types. Handlers translate requests
//! into calls on [`Node`] (the durable [`Db`] plus the rules directory it reloads from)
//! and domain results into replies; business logic stays in `decide`, `db` and
//! `journal`. Writes that wait for an fsync run on tokio's blocking pool, so a slow disk
//! never stalls the request threads.
//!
//! One file a service: `decision.rs`, `customer.rs`, `admin.rs` (and `Probe` here);
//! `serve.rs` wires a node, its metrics endpoint, the rules watcher and the
//! [`maintenance`] tasks into one [`serve`], what the binary and the tests call.

mod admin;
pub mod convert;
mod customer;
mod decision;
pub mod maintenance;
pub mod metrics;
mod serve;
mod transport;
pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tonic::{Request, Response, Status};

use crate::catalog::{Catalog, MAX_SLOTS};
use crate::cluster::Cluster;
use crate::db::{Db, DbError, DbOptions, Recovery};
use crate::setup::{RulesError, load_catalog, now_ms};
pub use admin::reload;
pub use metrics::Metrics;
pub use serve::{DRAIN_GRACE, Listeners, ServeConfig, ServeError, run, serve};
pub use transport::{MAX_MESSAGE_BYTES, TlsError, Transport};

/// The generated code of `proto/nextbest/v1`.
#[allow(
    missing_docs,
    clippy::all,
    missing_debug_implementations,
    unused_qualifications
)]
pub mod proto {
    tonic::include_proto!("nextbest.v1");

    /// The encoded file descriptor set, for the reflection service.
    pub const DESCRIPTOR: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/nextbest_descriptor.bin"));
}

use proto::probe_service_server::ProbeService;

fn sha256(text: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).into()
}

/// Why the node could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Catalog(#[from] RulesError),
    #[error(transparent)]
    Db(#[from] DbError),
    /// A cluster node's reload that could not be published.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// The blocking task doing the work panicked or was cancelled.
    #[error("{0}")]
    Task(String),
}

/// The running node: the durable state and where its rules come from.
#[derive(Debug)]
pub struct Node {
    /// Replaced whole when the node heals after its journal failed.
    db: arc_swap::ArcSwap<Db>,
    data: PathBuf,
    rules: PathBuf,
    loaded_at: AtomicI64,
    reloading: std::sync::Mutex<()>,
    /// The SHA-256 of the token required as `authorization: Bearer <token>` on customer
    /// and admin calls, when set.
    admin_token: Option<[u8; 32]>,
    /// The cluster this node is a member of, if any: writes go through it.
    cluster: std::sync::OnceLock<Arc<Cluster>>,
    /// Retraining attempts (`serve --retrain-every`): taken, refused by the gate (or with
    /// nothing to train), failed.
    retrains: [std::sync::atomic::AtomicU64; 3],
}

/// How a retraining attempt ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retrained {
    Taken = 0,
    Refused = 1,
    Failed = 2,
}

impl Retrained {
    pub const ALL: [(Retrained, &'static str); 3] = [
        (Retrained::Taken, "taken"),
        (Retrained::Refused, "refused"),
        (Retrained::Failed, "failed"),
    ];
}

impl Node {
    /// Loads the catalog and opens the data directory (recovering it).
    pub fn open(rules: &Path, data: &Path) -> Result<(Node, Recovery), NodeError> {
        Node::open_with(rules, data, DbOptions::default())
    }

    /// As [`Node::open`], with the data directory's options (tests use a small journal
    /// queue to fill it).
    pub fn open_with(
        rules: &Path,
        data: &Path,
        options: DbOptions,
    ) -> Result<(Node, Recovery), NodeError> {
        Node::open_on(rules, load_catalog(rules)?, data, options)
    }

    /// As [`Node::open_with`], with `catalog` in force instead of the rules directory's
    /// (a cluster node opens with the cluster's); reloads still read `rules`.
    pub fn open_on(
        rules: &Path,
        catalog: Arc<Catalog>,
        data: &Path,
        options: DbOptions,
    ) -> Result<(Node, Recovery), NodeError> {
        let (db, recovery) = Db::open(data, catalog, options)?;
        Ok((
            Node {
                db: arc_swap::ArcSwap::from_pointee(db),
                data: data.to_path_buf(),
                rules: rules.to_path_buf(),
                loaded_at: AtomicI64::new(now_ms()),
                reloading: std::sync::Mutex::new(()),
                admin_token: None,
                cluster: std::sync::OnceLock::new(),
                retrains: Default::default(),
            },
            recovery,
        ))
    }

    /// Counts a retraining attempt.
    pub fn count_retrain(&self, result: Retrained) {
        self.retrains[result as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Retraining attempts so far, by how they ended.
    pub fn retrains(&self, result: Retrained) -> u64 {
        self.retrains[result as usize].load(Ordering::Relaxed)
    }

    /// The durable state: hold it for one request, not longer (a heal replaces it).
    pub fn db(&self) -> Arc<Db> {
        self.db.load_full()
    }

    /// After the journal failed (a full or read-only disk), checks that the data
    /// directory takes a synced write again and, if so, opens it afresh: the memory is
    /// rebuilt from what is durable, so writes that failed leave no trace in it.
    /// Returns whether it healed; an error says why not yet.
    pub fn heal(&self) -> Result<bool, NodeError> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let db = self.db();
        if db.failed().is_none() {
            return Ok(false);
        }
        maintenance::probe(&self.data).map_err(|source| {
            NodeError::Db(DbError::Io {
                context: format!("writing a probe file in `{}`", self.data.display()),
                source,
            })
        })?;
        let (fresh, _) = db.reopen()?;
        self.db.store(Arc::new(fresh));
        Ok(true)
    }

    /// Makes this node a member of `cluster` (joined on its `Db`): from now on writes go
    /// through the cluster's stream. Set once.
    pub fn set_cluster(&self, cluster: Arc<Cluster>) -> bool {
        self.cluster.set(cluster).is_ok()
    }

    /// The cluster this node is a member of, if any.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// Requires `authorization: Bearer <token>` on every customer and admin call.
    pub fn with_admin_token(mut self, token: Option<String>) -> Node {
        self.admin_token = token.filter(|t| !t.is_empty()).map(|t| sha256(&t));
        self
    }

    /// The directory the catalog is loaded from.
    pub fn rules(&self) -> &Path {
        &self.rules
    }

    /// Loads the rules directory again and swaps the catalog if it has no error at all;
    /// decisions in flight finish on the catalog they started with. A catalog with other
    /// customer attributes carries the stored customers over by name (see
    /// [`Db::set_catalog`]): decisions and writes go on meanwhile.
    pub fn reload(&self) -> Result<Arc<Catalog>, NodeError> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let catalog = load_catalog(&self.rules)?;
        let relayout = self.db().set_catalog(Arc::clone(&catalog));
        if relayout.customers > 0 {
            tracing::info!(
                version = %catalog.version,
                customers = relayout.customers,
                dropped_values = relayout.dropped_values,
                copied_ms = relayout.copied.as_millis() as u64,
                written_meanwhile = relayout.taken_again,
                writes_held_ms = relayout.paused.as_millis() as u64,
                "the catalog changes the customer attributes: stored customers carried over by name"
            );
        }
        if relayout.models_changed {
            tracing::info!(
                version = %catalog.version,
                cells_reset = relayout.model_cells_reset,
                "the catalog changes its adaptive models: what a model defined alike learned is kept, the rest starts from its prior"
            );
            // A restart replays under the catalog it opens with: from a snapshot taken
            // now, it replays no record learned under the old models.
            if let Err(e) = self.db().compact(now_ms()) {
                tracing::warn!(error = %e, "no snapshot after the models changed: a restart before the next one replays the records since the last under the new models");
            }
        }
        self.loaded_at.store(now_ms(), Ordering::Relaxed);
        Ok(catalog)
    }

    /// A cluster node's reload: loads and validates the rules directory here (off the
    /// request threads), then publishes it as the cluster's catalog and returns once this
    /// node swapped to it; every other node swaps as it applies it, at the same position of
    /// the write stream. A catalog with any error is refused here and reaches no node.
    pub async fn reload_cluster(&self, cluster: &Cluster) -> Result<Arc<Catalog>, NodeError> {
        let rules = self.rules.clone();
        let (sources, catalog) = tokio::task::spawn_blocking(move || {
            let (sources, io_errors) = crate::catalog::Sources::read(&rules);
            Catalog::from_read(sources.clone(), io_errors)
                .map(|catalog| (sources, catalog))
                .map_err(|errors| RulesError { dir: rules, errors })
        })
        .await
        .map_err(|e| NodeError::Task(format!("the reload task failed: {e}")))??;
        cluster.publish_catalog(&sources, &catalog).await?;
        self.loaded_at.store(now_ms(), Ordering::Relaxed);
        Ok(self.db().catalog())
    }

    /// Makes everything durable and stops the journal.
    pub fn close(self) -> Result<(), DbError> {
        match Arc::try_unwrap(self.db.into_inner()) {
            Ok(db) => db.close(),
            // Still held (a request finishing): sync now, the journal stops on drop.
            Err(db) => db.sync(),
        }
    }
}

#[derive(Debug, Clone)]
struct Service {
    node: Arc<Node>,
    metrics: Arc<Metrics>,
}

impl Service {
    /// Customer data and administration need the admin token, when the node has one.
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(token) = &self.node.admin_token else {
            return Ok(());
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Digests of equal length, compared in time independent of where they differ:
        // neither the token's content nor its length shows in the timing.
        let same = sha256(given)
            .iter()
            .zip(token)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
        if same {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "customer and admin calls need `authorization: Bearer <admin token>`",
            ))
        }
    }
}

impl Service {
    /// Read your writes across a cluster: waits until this node has applied the write
    /// stream up to `min_position` (at most [`MIN_POSITION_WAIT`], or until the call's
    /// deadline). An embedded node, or a position of 0, waits for nothing. Also counts a
    /// decision answered while the cluster is out of reach.
    async fn read_position(&self, min_position: u64, deadline: Deadline) -> Result<(), Status> {
        let Some(cluster) = self.node.cluster() else {
            return Ok(());
        };
        cluster.count_if_stale();
        if min_position == 0 {
            return Ok(());
        }
        let within = deadline
            .remaining()
            .map_or(MIN_POSITION_WAIT, |d| d.min(MIN_POSITION_WAIT));
        cluster
            .wait_applied(min_position, within)
            .await
            .map_err(convert::cluster_status)
    }
}

/// The longest a `Decide` waits for its `min_position`.
pub const MIN_POSITION_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

pub use crate::schema::MAX_ID_BYTES;

/// The most outcomes one `RecordOutcomes` may carry (one group commit for all of them).
pub const MAX_BATCH_OUTCOMES: usize = 1000;

/// A request's `slots`: absent (the placement's number) or 1 to [`MAX_SLOTS`].
fn slots(field: &str, slots: Option<u32>) -> Result<Option<u32>, Status> {
    match slots {
        Some(n) if !(1..=MAX_SLOTS).contains(&n) => Err(Status::invalid_argument(format!(
            "`{field}` is {n}; a decision fills 1 to {MAX_SLOTS} slots (leave it unset for the placement's number)"
        ))),
        n => Ok(n),
    }
}

/// The most placements one `DecideBatch` (a page) may ask for.
pub const MAX_PAGE_PLACEMENTS: usize = 64;

/// An id that may be left empty.
fn optional<'a>(field: &str, value: &'a str) -> Result<Option<&'a str>, Status> {
    if value.is_empty() {
        Ok(None)
    } else if value.len() > MAX_ID_BYTES {
        Err(Status::invalid_argument(format!(
            "`{field}` is {} bytes long; ids have at most {MAX_ID_BYTES}",
            value.len()
        )))
    } else {
        Ok(Some(value))
    }
}

fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, Status> {
    optional(field, value)?
        .ok_or_else(|| Status::invalid_argument(format!("`{field}` is required")))
}

/// When the caller stops waiting: the call's arrival plus its `grpc-timeout`, if it sent
/// one. tonic cancels a call whose deadline passes (CANCELLED), but only at its next
/// await and at millisecond resolution, and a write handed to the blocking pool runs
/// anyway; checked right before anything is applied or logged, this keeps a call whose
/// caller has already given up from doing anything at all.
#[derive(Debug, Clone, Copy)]
struct Deadline(Option<std::time::Instant>);

impl Deadline {
    fn of<T>(request: &Request<T>) -> Deadline {
        Deadline(
            request
                .metadata()
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok())
                .and_then(grpc_timeout)
                .and_then(|d| std::time::Instant::now().checked_add(d)),
        )
    }

    /// How long until the deadline, if there is one.
    fn remaining(self) -> Option<std::time::Duration> {
        self.0
            .map(|at| at.saturating_duration_since(std::time::Instant::now()))
    }

    fn check(self) -> Result<(), Status> {
        match self.0 {
            Some(at) if std::time::Instant::now() >= at => Err(Status::deadline_exceeded(
                "the call's deadline (its `grpc-timeout`) passed before it could act: nothing was applied or logged",
            )),
            _ => Ok(()),
        }
    }
}

/// A `grpc-timeout` header: at most 8 digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(text: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Runs blocking work (waiting for an fsync) off the request threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Status::internal(format!("a write task failed: {e}")))?
}

/// Answers `Ping` with nothing: the cost of the stack alone.
#[derive(Debug, Clone, Copy)]
struct Probe;

#[tonic::async_trait]
impl ProbeService for Probe {
    async fn ping(
        &self,
        _: Request<proto::PingRequest>,
    ) -> Result<Response<proto::PingReply>, Status> {
        Ok(Response::new(proto::PingReply {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::customer_service_server::CustomerService;
    use proto::decision_service_server::DecisionService;

    #[test]
    fn grpc_timeouts_are_read_in_every_unit() {
        use std::time::Duration;
        assert_eq!(grpc_timeout("1n"), Some(Duration::from_nanos(1)));
        assert_eq!(grpc_timeout("250u"), Some(Duration::from_micros(250)));
        assert_eq!(grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(grpc_timeout("10S"), Some(Duration::from_secs(10)));
        assert_eq!(grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(
            grpc_timeout("99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
        for bad in ["", "n", "123456789S", "10s", "-1S", "1.5S"] {
            assert_eq!(grpc_timeout(bad), None, "{bad}");
        }
    }

    fn with_timeout<T>(timeout: &str, request: &mut Request<T>) {
        request
            .metadata_mut()
            .insert("grpc-timeout", timeout.parse().expect("ascii"));
    }

    fn late<T>(message: T) -> Request<T> {
        let mut r = Request::new(message);
        with_timeout("1n", &mut r);
        r
    }

    fn refused<T>(result: Result<T, Status>, what: &str) {
        let e = result.map(drop).expect_err(what);
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{what}: {e:?}");
        assert!(
            e.message().contains("nothing was applied or logged"),
            "{e:?}"
        );
    }

    /// A call whose deadline has passed when the handler starts (as when the caller
    /// gave up while it was in flight) is refused before anything is applied or logged;
    /// with time left, the same call goes through. (A tonic client enforces its own
    /// deadline and reports CANCELLED itself, so this is tested on the handlers.)
    #[tokio::test]
    async fn a_call_whose_deadline_passed_does_nothing() {
        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        let data = tempfile::tempdir().expect("tempdir");
        let (node, _) = Node::open(&rules, data.path()).expect("node");
        let registry = prometheus::Registry::new();
        let service = Service {
            node: Arc::new(node),
            metrics: Arc::new(Metrics::new(&registry).expect("metrics")),
        };
        let upsert = || proto::UpsertRequest {
            customer_id: "ada".into(),
            attributes: [(
                "age".to_string(),
                proto::Value {
                    kind: Some(proto::value::Kind::IntValue(38)),
                },
            )]
            .into(),
        };
        let records = |s: &Service| s.node.db().journal_stats().records.load(Ordering::Relaxed);
        let before = records(&service);
        refused(service.upsert(late(upsert())).await, "Upsert");
        let decide = || proto::DecideRequest {
            customer_id: "ada".into(),
            placement: "app.card".into(),
            ..Default::default()
        };
        refused(service.decide(late(decide())).await, "Decide");
        let outcome = proto::Outcome {
            decision_id: uuid::Uuid::now_v7().to_string(),
            offer_id: "app_tips".into(),
            kind: proto::OutcomeKind::Impression as i32,
            ..Default::default()
        };
        refused(
            service.record_outcome(late(outcome.clone())).await,
            "RecordOutcome",
        );
        refused(
            service
                .forget(late(proto::ForgetRequest {
                    customer_id: "ada".into(),
                }))
                .await,
            "Forget",
        );
        service.node.db().sync().expect("sync");
        assert_eq!(records(&service), before, "nothing reached the journal");
        assert_eq!(service.node.db().store().len(), 0, "nothing was stored");

        // Ten seconds left: the same calls go through.
        let mut r = Request::new(upsert());
        with_timeout("10S", &mut r);
        service.upsert(r).await.expect("upsert in time");
        let mut r = Request::new(decide());
        with_timeout("10S", &mut r);
        service.decide(r).await.expect("decide in time");
        assert_eq!(service.node.db().store().len(), 1);
    }
}
