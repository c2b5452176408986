//! The gRPC service: the only module that sees proto types. Handlers translate requests
//! into calls on [`Node`] (the durable [`Db`] plus the rules directory it reloads from)
//! and domain results into replies; business logic stays in `decide`, `db` and
//! `journal`. Writes that wait for an fsync run on tokio's blocking pool, so a slow disk
//! never stalls the request threads.

pub mod convert;
pub mod metrics;
mod transport;
pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::catalog::{Catalog, LoadErrors, MAX_SLOTS, PlacementIdx};
use crate::db::{Db, DbError, DbOptions, OutcomeInput, Recovery};
use crate::decide::{self, Context, Decision, Options};
use crate::schema::printable;
use crate::state::CustomerState;
use convert::{decision_time, millis, status, timestamp};
pub use metrics::Metrics;
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

use proto::admin_service_server::{AdminService, AdminServiceServer};
use proto::customer_service_server::{CustomerService, CustomerServiceServer};
use proto::decision_service_server::{DecisionService, DecisionServiceServer};
use proto::probe_service_server::{ProbeService, ProbeServiceServer};

fn sha256(text: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).into()
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// A decision id: a UUIDv7 of when it was made, by the node's clock (its random bits keep
/// ids of one millisecond apart). Never of a caller's `at`: the node remembers decisions
/// and their outcomes' identities by the id's time, and an outcome's `decision_id` may be
/// no later than the node's clock.
fn decision_id(at: i64) -> uuid::Uuid {
    uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        u64::try_from(at.max(0) / 1000).unwrap_or(0),
        u32::try_from(at.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    ))
}

/// Why the node could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("the catalog in `{dir}` has errors:\n{}", errors.render())]
    Catalog { dir: PathBuf, errors: LoadErrors },
    #[error(
        "the new catalog changes the customer attributes; restart the node to carry stored customers over (snapshots are remapped by attribute name)"
    )]
    SchemaChanged,
    #[error(transparent)]
    Db(#[from] DbError),
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
        let catalog = Catalog::load(rules).map_err(|errors| NodeError::Catalog {
            dir: rules.to_path_buf(),
            errors,
        })?;
        let (db, recovery) = Db::open(data, Arc::new(catalog), options)?;
        Ok((
            Node {
                db: arc_swap::ArcSwap::from_pointee(db),
                data: data.to_path_buf(),
                rules: rules.to_path_buf(),
                loaded_at: AtomicI64::new(now_ms()),
                reloading: std::sync::Mutex::new(()),
                admin_token: None,
            },
            recovery,
        ))
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
        probe(&self.data).map_err(|source| {
            NodeError::Db(DbError::Io {
                context: format!("writing a probe file in `{}`", self.data.display()),
                source,
            })
        })?;
        let (fresh, _) = db.reopen()?;
        self.db.store(Arc::new(fresh));
        Ok(true)
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
    /// decisions in flight finish on the catalog they started with.
    pub fn reload(&self) -> Result<Arc<Catalog>, NodeError> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let catalog = Catalog::load(&self.rules).map_err(|errors| NodeError::Catalog {
            dir: self.rules.clone(),
            errors,
        })?;
        let catalog = Arc::new(catalog);
        if !self.db().set_catalog(Arc::clone(&catalog)) {
            return Err(NodeError::SchemaChanged);
        }
        self.loaded_at.store(now_ms(), Ordering::Relaxed);
        Ok(catalog)
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

    fn placement(catalog: &Catalog, id: &str) -> Result<PlacementIdx, Status> {
        catalog.placement(id).ok_or_else(|| {
            let ids: Vec<&str> = catalog.placements.iter().map(|p| p.id.as_str()).collect();
            Status::not_found(format!(
                "unknown placement `{}`; the catalog has {}",
                printable(id),
                ids.join(", ")
            ))
        })
    }

    /// A placement's context as a request gives it: a `context.channel` other than the
    /// placement's is refused (`field` names where it came from).
    fn context(
        catalog: &Catalog,
        placement: PlacementIdx,
        values: Vec<crate::schema::Value>,
        field: &str,
    ) -> Result<Context, Status> {
        if let Some(given) = Context::conflicting_channel(catalog, placement, &values) {
            let p = &catalog.placements[placement];
            return Err(Status::invalid_argument(format!(
                "`{field}` is `{}`, but placement `{}` is in channel `{}`: the channel is the placement's (leave it unset)",
                printable(&given),
                p.id,
                p.channel
            )));
        }
        Ok(Context::for_placement(catalog, placement, values))
    }

    /// One decision, logged; `exclude` are offers already on the page.
    #[allow(clippy::too_many_arguments)]
    fn decide_one(
        db: &Db,
        catalog: &Arc<Catalog>,
        customer: Option<&str>,
        inline: Option<&[crate::schema::Value]>,
        placement: PlacementIdx,
        context: Context,
        at: i64,
        slots: Option<u32>,
        explain: bool,
        exclude: &[crate::catalog::OfferIdx],
    ) -> Result<(proto::Decision, Vec<crate::catalog::OfferIdx>), Status> {
        let budgets = db.budgets(at);
        let options = Options {
            explain,
            slots,
            exclude,
            budgets: &budgets,
            ..Options::new(decision_id(now_ms()))
        };
        let reply = |_: &CustomerState, d: &Decision| {
            (
                decision_reply(catalog, d),
                d.offers.iter().map(|s| s.offer).collect::<Vec<_>>(),
            )
        };
        match inline {
            None => db
                .decide(catalog, customer, &context, placement, at, &options, reply)
                .map_err(status),
            Some(values) => {
                let stored = customer.map(|id| db.store().with(id, |s| s.cloned()));
                let mut state = stored
                    .transpose()
                    .map_err(|e| status(e.into()))?
                    .flatten()
                    .unwrap_or_else(|| CustomerState {
                        id: customer.map(str::to_string),
                        ..CustomerState::default()
                    });
                state.merge(&catalog.schema, values.to_vec());
                let d = decide::decide(catalog, &state, &context, placement, at, &options);
                let out = reply(&state, &d);
                let logged = db.log_decision(catalog, &state, &context, d);
                db.count_unlogged(logged.err());
                Ok(out)
            }
        }
    }
}

fn decision_reply(catalog: &Catalog, d: &Decision) -> proto::Decision {
    let p = &catalog.placements[d.placement];
    let experiment = d.experiment.map(|e| &catalog.experiments[e]);
    proto::Decision {
        decision_id: d.id.to_string(),
        at: Some(timestamp(d.at)),
        catalog_version: d.catalog_version.to_string(),
        placement: p.id.clone(),
        channel: p.channel.clone(),
        experiment: experiment.map(|e| e.id.clone()).unwrap_or_default(),
        arm: experiment
            .zip(d.arm)
            .map(|(e, a)| e.arms[a].id.clone())
            .unwrap_or_default(),
        epsilon: d.epsilon,
        offers: d
            .offers
            .iter()
            .map(|s| {
                let o = &catalog.offers[s.offer];
                proto::ShownOffer {
                    offer_id: o.id.clone(),
                    slot: s.slot,
                    name: o.name.clone(),
                    content: o
                        .content
                        .get(&d.placement)
                        .map(|c| c.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                        .unwrap_or_default(),
                    score: s.score,
                    propensity: s.propensity,
                    explored: s.explored,
                    fallback: s.fallback,
                }
            })
            .collect(),
        suppressed: d.suppressed.clone().unwrap_or_default(),
        explanation: d
            .explanation
            .iter()
            .flatten()
            .map(|e| proto::Explanation {
                offer_id: catalog.offers[e.offer].id.clone(),
                outcome: e.outcome.to_string(),
            })
            .collect(),
    }
}

/// Request attributes over the stored ones, if the request has any.
fn inline_attributes(
    catalog: &Catalog,
    attributes: &std::collections::HashMap<String, proto::Value>,
) -> Result<Option<Vec<crate::schema::Value>>, Status> {
    if attributes.is_empty() {
        return Ok(None);
    }
    convert::values("customer", &catalog.schema.customer, attributes).map(Some)
}

pub use crate::schema::MAX_ID_BYTES;

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

/// The most outcomes one `RecordOutcomes` may carry (one group commit for all of them).
pub const MAX_BATCH_OUTCOMES: usize = 1000;

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

#[tonic::async_trait]
impl DecisionService for Service {
    async fn decide(
        &self,
        request: Request<proto::DecideRequest>,
    ) -> Result<Response<proto::Decision>, Status> {
        async {
            let deadline = Deadline::of(&request);
            let r = request.into_inner();
            // One `Db` (and catalog) for the whole call: a heal may swap the node's.
            let db = self.node.db();
            let catalog = db.catalog();
            let placement = Self::placement(&catalog, required("placement", &r.placement)?)?;
            let customer = optional("customer_id", &r.customer_id)?;
            let context = convert::values("context", &catalog.schema.context, &r.context)?;
            let context = Self::context(&catalog, placement, context, "context.channel")?;
            let inline = inline_attributes(&catalog, &r.attributes)?;
            let at = decision_time(r.at.as_ref(), now_ms)?;
            let slots = slots("slots", r.slots)?;
            deadline.check()?;
            let started = std::time::Instant::now();
            let (reply, _) = Self::decide_one(
                &db,
                &catalog,
                customer,
                inline.as_deref(),
                placement,
                context,
                at,
                slots,
                r.explain,
                &[],
            )?;
            self.metrics
                .decision(&reply, started.elapsed().as_secs_f64());
            Ok(Response::new(reply))
        }
        .await
    }

    async fn decide_batch(
        &self,
        request: Request<proto::DecideBatchRequest>,
    ) -> Result<Response<proto::DecideBatchResponse>, Status> {
        async {
            let deadline = Deadline::of(&request);
            let r = request.into_inner();
            let db = self.node.db();
            let catalog = db.catalog();
            let customer = optional("customer_id", &r.customer_id)?;
            if r.placements.is_empty() || r.placements.len() > MAX_PAGE_PLACEMENTS {
                return Err(Status::invalid_argument(format!(
                    "`placements` has {} entries; a page has 1 to {MAX_PAGE_PLACEMENTS}",
                    r.placements.len()
                )));
            }
            let shared = convert::values("context", &catalog.schema.context, &r.context)?;
            let inline = inline_attributes(&catalog, &r.attributes)?;
            let at = decision_time(r.at.as_ref(), now_ms)?;
            // Check every placement before deciding any.
            let mut requests = Vec::with_capacity(r.placements.len());
            for (i, p) in r.placements.iter().enumerate() {
                // The field's full name is spelled out only for an error.
                let id = required("placement", &p.placement).map_err(|e| {
                    Status::invalid_argument(e.message().replacen(
                        "`placement`",
                        &format!("`placements[{i}].placement`"),
                        1,
                    ))
                })?;
                let placement = Self::placement(&catalog, id)?;
                let mut context = shared.clone();
                let own = convert::values("context", &catalog.schema.context, &p.context)?;
                let own_channel = Context::conflicting_channel(&catalog, placement, &own).is_some();
                for (slot, v) in own.into_iter().enumerate() {
                    if !v.is_missing() {
                        context[slot] = v;
                    }
                }
                let field = if own_channel {
                    format!("placements[{i}].context.channel")
                } else {
                    "context.channel".to_string()
                };
                let context = Self::context(&catalog, placement, context, &field)?;
                let slots = slots(&format!("placements[{i}].slots"), p.slots)?;
                requests.push((placement, context, slots));
            }
            deadline.check()?;
            let mut shown = Vec::new();
            let mut decisions = Vec::with_capacity(requests.len());
            for (placement, context, slots) in requests {
                let exclude = if r.allow_repeats {
                    Vec::new()
                } else {
                    shown.clone()
                };
                let started = std::time::Instant::now();
                let (reply, offers) = Self::decide_one(
                    &db,
                    &catalog,
                    customer,
                    inline.as_deref(),
                    placement,
                    context,
                    at,
                    slots,
                    r.explain,
                    &exclude,
                )?;
                shown.extend(offers);
                self.metrics
                    .decision(&reply, started.elapsed().as_secs_f64());
                decisions.push(reply);
            }
            Ok(Response::new(proto::DecideBatchResponse { decisions }))
        }
        .await
    }

    async fn record_outcome(
        &self,
        request: Request<proto::Outcome>,
    ) -> Result<Response<proto::OutcomeAck>, Status> {
        async {
            let deadline = Deadline::of(&request);
            let input = outcome_input(request.into_inner())?;
            let node = Arc::clone(&self.node);
            let kind = input.kind;
            let ack = blocking(move || {
                deadline.check()?;
                node.db().record_outcome(&input, now_ms()).map_err(status)
            })
            .await?;
            self.metrics.outcome(kind, ack.duplicate);
            Ok(Response::new(proto::OutcomeAck {
                duplicate: ack.duplicate,
            }))
        }
        .await
    }

    async fn record_outcomes(
        &self,
        request: Request<proto::RecordOutcomesRequest>,
    ) -> Result<Response<proto::RecordOutcomesResponse>, Status> {
        async {
            let deadline = Deadline::of(&request);
            let outcomes = request.into_inner().outcomes;
            if outcomes.len() > MAX_BATCH_OUTCOMES {
                return Err(Status::invalid_argument(format!(
                    "`outcomes` has {} entries; a call carries at most {MAX_BATCH_OUTCOMES}",
                    outcomes.len()
                )));
            }
            let inputs = outcomes
                .into_iter()
                .enumerate()
                .map(|(i, o)| {
                    outcome_input(o).map_err(|s| {
                        Status::new(s.code(), format!("outcomes[{i}]: {}", s.message()))
                    })
                })
                .collect::<Result<Vec<_>, Status>>()?;
            let node = Arc::clone(&self.node);
            let acks = blocking(move || {
                deadline.check()?;
                node.db()
                    .record_outcomes(&inputs, now_ms())
                    .map(|acks| (inputs, acks))
                    .map_err(|(i, e)| {
                        let s = status(e);
                        match i {
                            Some(i) => {
                                Status::new(s.code(), format!("outcomes[{i}]: {}", s.message()))
                            }
                            None => s,
                        }
                    })
            })
            .await?;
            let acks = acks
                .0
                .iter()
                .zip(acks.1)
                .map(|(input, a)| {
                    self.metrics.outcome(input.kind, a.duplicate);
                    proto::OutcomeAck {
                        duplicate: a.duplicate,
                    }
                })
                .collect();
            Ok(Response::new(proto::RecordOutcomesResponse { acks }))
        }
        .await
    }
}

fn outcome_input(o: proto::Outcome) -> Result<OutcomeInput, Status> {
    let decision =
        uuid::Uuid::parse_str(required("decision_id", &o.decision_id)?).map_err(|e| {
            Status::invalid_argument(format!(
                "`decision_id`: `{}` is not a UUID: {e}",
                printable(&o.decision_id)
            ))
        })?;
    Ok(OutcomeInput {
        decision,
        offer: required("offer_id", &o.offer_id)?.to_string(),
        kind: convert::kind(o.kind)?,
        value: match o.value {
            Some(v) if !v.is_finite() => {
                return Err(Status::invalid_argument(format!(
                    "`value` must be a finite number, found {v}"
                )));
            }
            v => v,
        },
        at: o
            .at
            .as_ref()
            .map_or_else(|| Ok(now_ms()), |t| millis("at", t))?,
        customer: optional("customer_id", &o.customer_id)?.map(str::to_string),
        channel: optional("channel", &o.channel)?.map(str::to_string),
    })
}

#[tonic::async_trait]
impl CustomerService for Service {
    async fn upsert(
        &self,
        request: Request<proto::UpsertRequest>,
    ) -> Result<Response<proto::UpsertResponse>, Status> {
        async {
            self.authorize(&request)?;
            let deadline = Deadline::of(&request);
            let r = request.into_inner();
            let id = required("customer_id", &r.customer_id)?.to_string();
            let catalog = self.node.db().catalog();
            let values = convert::values("customer", &catalog.schema.customer, &r.attributes)?;
            let node = Arc::clone(&self.node);
            blocking(move || {
                deadline.check()?;
                node.db()
                    .upsert(&id, values, now_ms(), true)
                    .map_err(status)
            })
            .await?;
            Ok(Response::new(proto::UpsertResponse {}))
        }
        .await
    }

    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::Customer>, Status> {
        async {
            self.authorize(&request)?;
            let r = request.into_inner();
            let id = required("customer_id", &r.customer_id)?;
            let db = self.node.db();
            let catalog = db.catalog();
            db.store()
                .with(id, |s| {
                    s.map(|s| convert::customer(&catalog, s, r.history_limit as usize))
                })
                .map_err(|e| status(e.into()))?
                .map(Response::new)
                .ok_or_else(|| Status::not_found(format!("no customer `{}`", printable(id))))
        }
        .await
    }

    async fn forget(
        &self,
        request: Request<proto::ForgetRequest>,
    ) -> Result<Response<proto::ForgetResponse>, Status> {
        async {
            self.authorize(&request)?;
            let deadline = Deadline::of(&request);
            let id = required("customer_id", &request.into_inner().customer_id)?.to_string();
            let node = Arc::clone(&self.node);
            let existed = blocking(move || {
                deadline.check()?;
                node.db().forget(&id, now_ms()).map_err(status)
            })
            .await?;
            Ok(Response::new(proto::ForgetResponse { existed }))
        }
        .await
    }
}

#[tonic::async_trait]
impl AdminService for Service {
    async fn reload(
        &self,
        request: Request<proto::ReloadRequest>,
    ) -> Result<Response<proto::ReloadResponse>, Status> {
        async {
            self.authorize(&request)?;
            let node = Arc::clone(&self.node);
            let result = tokio::task::spawn_blocking(move || node.reload())
                .await
                .map_err(|e| Status::internal(format!("the reload task failed: {e}")))?;
            let version = self.node.db().catalog().version.to_string();
            self.metrics.reload(result.is_ok(), &version);
            Ok(Response::new(match result {
                Ok(_) => proto::ReloadResponse {
                    version,
                    reloaded: true,
                    errors: Vec::new(),
                },
                Err(NodeError::Catalog { errors, .. }) => proto::ReloadResponse {
                    version,
                    reloaded: false,
                    errors: errors.lines(),
                },
                Err(e) => proto::ReloadResponse {
                    version,
                    reloaded: false,
                    errors: vec![e.to_string()],
                },
            }))
        }
        .await
    }

    async fn get_catalog(
        &self,
        request: Request<proto::GetCatalogRequest>,
    ) -> Result<Response<proto::CatalogInfo>, Status> {
        async {
            self.authorize(&request)?;
            let db = self.node.db();
            let catalog = db.catalog();
            let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
            Ok(Response::new(proto::CatalogInfo {
                version: catalog.version.to_string(),
                loaded_at: Some(timestamp(self.node.loaded_at.load(Ordering::Relaxed))),
                offers: count(catalog.offers.len()),
                placements: count(catalog.placements.len()),
                experiments: count(catalog.experiments.len()),
                customer_attributes: count(catalog.schema.customer.len()),
                context_attributes: count(catalog.schema.context.len()),
                customers: db.store().len() as u64,
            }))
        }
        .await
    }
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

/// Serves the node on `listener` until `shutdown` resolves, then stops accepting,
/// finishes the calls in flight and returns. Health reports SERVING from the start (the
/// node is loaded and recovered before this is called) and NOT_SERVING while draining.
pub async fn run(
    listener: TcpListener,
    node: Arc<Node>,
    metrics: Arc<Metrics>,
    transport: &Transport,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<DecisionServiceServer<Service>>().await;
    health.set_serving::<CustomerServiceServer<Service>>().await;
    health.set_serving::<AdminServiceServer<Service>>().await;
    // Reflection in both versions: grpcurl speaks v1, many other clients (Python's
    // grpcio-reflection, older grpcurl, GUI tools) still only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::DESCRIPTOR)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .expect("the descriptor sets built with the crate are valid");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("the descriptor sets built with the crate are valid");
    metrics.reload(true, &node.db().catalog().version);
    let calls = metrics.calls(&[
        proto::DESCRIPTOR,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]);
    let healing = tokio::spawn(heal_when_failed(Arc::clone(&node), HEAL_INTERVAL));
    let service = Service { node, metrics };
    let (draining_started, drain_started) = tokio::sync::oneshot::channel::<()>();
    let draining = async move {
        shutdown.await;
        health
            .set_not_serving::<DecisionServiceServer<Service>>()
            .await;
        health
            .set_not_serving::<CustomerServiceServer<Service>>()
            .await;
        health
            .set_not_serving::<AdminServiceServer<Service>>()
            .await;
        let _ = draining_started.send(());
    };
    let limit = transport.max_message_bytes;
    let serving = transport
        .builder()?
        // First, so outermost: it counts the code the client gets, the oversize one
        // already rewritten by the next layer.
        .layer(calls)
        .layer(tower::util::MapResponseLayer::new(
            transport::oversize_is_resource_exhausted,
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(DecisionServiceServer::new(service.clone()).max_decoding_message_size(limit))
        .add_service(CustomerServiceServer::new(service.clone()).max_decoding_message_size(limit))
        .add_service(AdminServiceServer::new(service).max_decoding_message_size(limit))
        .add_service(ProbeServiceServer::new(Probe))
        .serve_with_incoming_shutdown(
            // Without TCP_NODELAY, small replies wait for delayed ACKs: ~40 ms a call.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            draining,
        );
    // Streams that never end (a client watching health) would hold the drain forever:
    // calls still open `DRAIN_GRACE` after the shutdown signal are cut off.
    let given_up = async {
        if drain_started.await.is_ok() {
            tokio::time::sleep(DRAIN_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let served = tokio::select! {
        served = serving => served,
        () = given_up => {
            eprintln!("drain: calls still open after {DRAIN_GRACE:?} were cut off");
            Ok(())
        }
    };
    // Let go of the node before returning: the caller closes it.
    healing.abort();
    let _ = healing.await;
    served
}

/// How long a shutdown waits for calls in flight.
pub const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Writes, syncs and removes a file of 64 KiB in `dir`: whether the disk takes writes.
fn probe(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(".probe");
    let written = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(&[0u8; 64 * 1024])?;
        f.sync_all()
    });
    let removed = std::fs::remove_file(&path);
    written.and(removed)
}

/// How often a node whose journal failed checks whether the disk takes writes again.
pub const HEAL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Heals the node ([`Node::heal`]) whenever its journal has failed, every `interval`.
async fn heal_when_failed(node: Arc<Node>, interval: std::time::Duration) {
    let mut reported = false;
    loop {
        tokio::time::sleep(interval).await;
        let Some(why) = node.db().failed() else {
            continue;
        };
        if !reported {
            eprintln!("journal failed, writes refused until the disk takes them: {why}");
            reported = true;
        }
        let healing = Arc::clone(&node);
        match tokio::task::spawn_blocking(move || healing.heal()).await {
            Ok(Ok(true)) => {
                eprintln!("journal healed: the data directory was reopened, writes resume");
                reported = false;
            }
            Ok(Ok(false)) | Err(_) => {}
            Ok(Err(e)) => eprintln!("journal still failing: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
