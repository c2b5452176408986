//! Prometheus metrics: registered at construction into a registry the caller passes in,
//! exposed in the text format on `/metrics` of the metrics address.
//!
//! The explored share is `sum(rate(nextbest_offers_explored_total[5m])) /
//! sum(rate(nextbest_offers_shown_total[5m]))`; counters that mirror the journal and the
//! store are brought up to date when scraped. Calls are counted in one place, a layer
//! around tonic's router (`CallsLayer`), not by the handlers: what tonic refuses before
//! a handler runs counts too, and nothing counts twice.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use prometheus::proto::{MetricFamily, MetricType};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use super::{Node, proto};
use tonic::Code;
use tonic::codegen::http;

#[derive(Debug, Clone)]
pub struct Metrics {
    decide_seconds: HistogramVec,
    decisions: IntCounterVec,
    shown: IntCounterVec,
    explored: IntCounterVec,
    outcomes: IntCounterVec,
    catalog: IntGaugeVec,
    reloads: IntCounterVec,
    grpc_requests: IntCounterVec,
    grpc_errors: IntCounterVec,
    grpc_seconds: HistogramVec,
}

/// Latency buckets from 10 µs to 1 s.
fn buckets() -> Vec<f64> {
    prometheus::exponential_buckets(1e-5, 2.5, 14).expect("valid buckets")
}

impl Metrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Metrics> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let decide_seconds = HistogramVec::new(
            HistogramOpts::new(
                "nextbest_decide_seconds",
                "Time to read the customer, decide and log the decision, by placement.",
            )
            .buckets(buckets()),
            &["placement"],
        )?;
        registry.register(Box::new(decide_seconds.clone()))?;
        let grpc_seconds = HistogramVec::new(
            HistogramOpts::new(
                "nextbest_grpc_request_duration_seconds",
                "Time from a call's arrival to its reply (or its end unanswered), by method.",
            )
            .buckets(buckets()),
            &["method"],
        )?;
        registry.register(Box::new(grpc_seconds.clone()))?;
        let catalog = IntGaugeVec::new(
            Opts::new(
                "nextbest_catalog_info",
                "The catalog version in force (value 1).",
            ),
            &["version"],
        )?;
        registry.register(Box::new(catalog.clone()))?;
        Ok(Metrics {
            decide_seconds,
            decisions: counter(
                "nextbest_decisions_total",
                "Decisions made, by placement and experiment arm.",
                &["placement", "arm"],
            )?,
            shown: counter(
                "nextbest_offers_shown_total",
                "Offers shown, by offer and channel.",
                &["offer", "channel"],
            )?,
            explored: counter(
                "nextbest_offers_explored_total",
                "Offers shown because the slot explored, by placement.",
                &["placement"],
            )?,
            outcomes: counter(
                "nextbest_outcomes_total",
                "Outcomes recorded (retries not counted), by kind.",
                &["kind"],
            )?,
            catalog,
            reloads: counter(
                "nextbest_reloads_total",
                "Catalog reloads, by result (ok, refused).",
                &["result"],
            )?,
            grpc_requests: counter(
                "nextbest_grpc_requests_total",
                "Calls answered, by method and status code (OK included).",
                &["method", "code"],
            )?,
            grpc_errors: counter(
                "nextbest_grpc_errors_total",
                "Calls that ended with an error, by method and status code.",
                &["method", "code"],
            )?,
            grpc_seconds,
        })
    }

    pub fn decision(&self, reply: &proto::Decision, seconds: f64) {
        self.decide_seconds
            .with_label_values(&[&reply.placement])
            .observe(seconds);
        self.decisions
            .with_label_values(&[&reply.placement, &reply.arm])
            .inc();
        for o in &reply.offers {
            self.shown
                .with_label_values(&[&o.offer_id, &reply.channel])
                .inc();
            if o.explored {
                self.explored.with_label_values(&[&reply.placement]).inc();
            }
        }
    }

    pub fn outcome(&self, kind: crate::schema::EventKind, duplicate: bool) {
        if !duplicate {
            self.outcomes.with_label_values(&[kind.as_str()]).inc();
        }
    }

    pub fn reload(&self, ok: bool, version: &str) {
        self.reloads
            .with_label_values(&[if ok { "ok" } else { "refused" }])
            .inc();
        if ok {
            self.catalog.reset();
        }
        self.catalog.with_label_values(&[version]).set(1);
    }

    /// The layer that counts every call [`run`](super::run) serves, by method and status
    /// code. `descriptor_sets` (encoded) describe the services served: their methods get
    /// a label each, any other path counts as `unknown`, so that clients cannot add
    /// series at will.
    pub(super) fn calls(&self, descriptor_sets: &[&[u8]]) -> CallsLayer {
        use prost::Message as _;
        let mut labels = vec![UNKNOWN.to_string()];
        let mut methods = HashMap::new();
        for set in descriptor_sets {
            let set = prost_types::FileDescriptorSet::decode(*set)
                .expect("the descriptor sets built with the crates are valid");
            for file in &set.file {
                let package = file.package();
                for service in &file.service {
                    let prefix = if package.is_empty() {
                        format!("/{}/", service.name())
                    } else {
                        format!("/{package}.{}/", service.name())
                    };
                    for method in &service.method {
                        let name = method.name();
                        let label = labels.iter().position(|l| l == name).unwrap_or_else(|| {
                            labels.push(name.to_string());
                            labels.len() - 1
                        });
                        methods.insert(format!("{prefix}{name}"), label);
                    }
                }
            }
        }
        CallsLayer(Arc::new(Calls {
            requests: self.grpc_requests.clone(),
            errors: self.grpc_errors.clone(),
            seconds: labels
                .iter()
                .map(|l| self.grpc_seconds.with_label_values(&[l]))
                .collect(),
            counted: labels.iter().map(|_| Default::default()).collect(),
            methods,
            labels,
        }))
    }
}

/// gRPC's canonical name of a status code, as its status table (and every other server's
/// metrics) spell it: `INVALID_ARGUMENT` where tonic's `Debug` says `InvalidArgument`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The method label of a path no service serves.
const UNKNOWN: &str = "unknown";

/// Counts every call by method and status code. It wraps tonic's router, so it sees calls
/// tonic refuses before any handler runs (a message over the size limit, a method nobody
/// serves) as well as those a handler answers; it sits outside the layer that rewrites
/// the oversize code, so it counts what the client is told.
#[derive(Debug, Clone)]
pub(super) struct CallsLayer(Arc<Calls>);

/// One method's counters for one status code: its calls, and its errors (none for OK).
type CallCounters = (IntCounter, Option<IntCounter>);

#[derive(Debug)]
struct Calls {
    requests: IntCounterVec,
    errors: IntCounterVec,
    /// Per method label: its duration histogram, and its request and error counters per
    /// status code once a call has ended with it (resolved once, not per call; a series
    /// appears with its first call).
    seconds: Vec<Histogram>,
    counted: Vec<[std::sync::OnceLock<CallCounters>; 17]>,
    /// The label of each method served, as an index into `labels`, by request path
    /// (`/nextbest.v1.DecisionService/Decide`); `labels[0]` is `unknown`.
    methods: HashMap<String, usize>,
    /// The bare method names (`Decide`), as the series name them.
    labels: Vec<String>,
}

impl Calls {
    fn method(&self, path: &str) -> usize {
        self.methods.get(path).copied().unwrap_or(0)
    }

    fn count(&self, method: usize, code: Code, started: std::time::Instant) {
        self.seconds[method].observe(started.elapsed().as_secs_f64());
        let (requests, errors) = self.counted[method][code as usize].get_or_init(|| {
            let labels = [self.labels[method].as_str(), code_name(code)];
            (
                self.requests.with_label_values(&labels),
                (code != Code::Ok).then(|| self.errors.with_label_values(&labels)),
            )
        });
        requests.inc();
        if let Some(errors) = errors {
            errors.inc();
        }
    }
}

/// The status of a call from its response headers. A call refused before its reply
/// starts is answered trailers-only, with `grpc-status` among the headers; a reply that
/// started has none there and counts as OK (a unary handler has succeeded by then; a
/// stream that fails midway says so only in its trailers, which this does not read).
fn status_of(headers: &http::HeaderMap) -> Code {
    headers
        .get("grpc-status")
        .map_or(Code::Ok, |v| Code::from_bytes(v.as_bytes()))
}

impl<S> tower::Layer<S> for CallsLayer {
    type Service = CountCalls<S>;

    fn layer(&self, inner: S) -> CountCalls<S> {
        CountCalls {
            inner,
            calls: Arc::clone(&self.0),
        }
    }
}

/// The service [`CallsLayer`] makes.
#[derive(Debug, Clone)]
pub(super) struct CountCalls<S> {
    inner: S,
    calls: Arc<Calls>,
}

impl<S, R, B> tower::Service<http::Request<R>> for CountCalls<S>
where
    S: tower::Service<http::Request<R>, Response = http::Response<B>>,
    // tonic's router boxes each handler's future, so its own is `Unpin`: the reply can be
    // awaited here without a box (or `unsafe`) of our own per call.
    S::Future: Unpin,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = Counting<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<R>) -> Self::Future {
        let method = self.calls.method(request.uri().path());
        // The call's span: what the handlers log carries the method, and the handlers of
        // Decide and DecideBatch record the placement and the decision id on it.
        let span = tracing::info_span!(
            "call",
            method = self.calls.labels[method].as_str(),
            placement = tracing::field::Empty,
            decision_id = tracing::field::Empty,
        );
        let inner = span.in_scope(|| self.inner.call(request));
        Counting {
            inner,
            span,
            call: Some((Arc::clone(&self.calls), method, std::time::Instant::now())),
        }
    }
}

/// A call's reply, counted once: when it comes, or as CANCELLED when the call is dropped
/// unanswered (tonic's timeout answers those CANCELLED, and a client that gave up has
/// cancelled).
#[derive(Debug)]
pub(super) struct Counting<F> {
    inner: F,
    /// Entered around every poll of the reply: the handler runs inside it.
    span: tracing::Span,
    /// Taken when counted: the calls, the method's label and when the call arrived.
    call: Option<(Arc<Calls>, usize, std::time::Instant)>,
}

impl<F, B, E> Future for Counting<F>
where
    F: Future<Output = Result<http::Response<B>, E>> + Unpin,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let result = {
            let _in_call = this.span.enter();
            std::task::ready!(Pin::new(&mut this.inner).poll(cx))
        };
        if let Some((calls, method, started)) = this.call.take() {
            // tonic's router never fails; an error below it would reset the stream, which
            // the client sees as UNKNOWN.
            let code = result
                .as_ref()
                .map_or(Code::Unknown, |r| status_of(r.headers()));
            calls.count(method, code, started);
        }
        Poll::Ready(result)
    }
}

impl<F> Drop for Counting<F> {
    fn drop(&mut self) {
        if let Some((calls, method, started)) = self.call.take() {
            calls.count(method, Code::Cancelled, started);
        }
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
/// The node's figures (journal, store) and the process's (CPU seconds, resident memory,
/// open file descriptors, start time, read from `/proc` on Linux) are registered here,
/// read when scraped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    node: Arc<Node>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Some(cluster) = node.cluster() {
        registry
            .register(Box::new(
                ClusterFigures::new(Arc::clone(cluster)).map_err(std::io::Error::other)?,
            ))
            .map_err(std::io::Error::other)?;
    }
    registry
        .register(Box::new(
            ModelFigures::new(Arc::clone(&node)).map_err(std::io::Error::other)?,
        ))
        .map_err(std::io::Error::other)?;
    registry
        .register(Box::new(
            NodeFigures::new(node).map_err(std::io::Error::other)?,
        ))
        .map_err(std::io::Error::other)?;
    #[cfg(target_os = "linux")]
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .map_err(std::io::Error::other)?;
    let scrape = move || {
        let mut out = String::new();
        match TextEncoder::new().encode_utf8(&registry.gather(), &mut out) {
            Ok(()) => {
                ([(http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], out).into_response()
            }
            Err(e) => (
                http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("encoding the metrics failed: {e}"),
            )
                .into_response(),
        }
    };
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move { scrape() }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

use axum::response::IntoResponse;

/// The node's journal and store figures, read from their atomics at every scrape (a
/// collector, not counters kept in step with them). A node that healed has a new
/// journal whose counters start again from zero: Prometheus reads that as a counter
/// reset, as after a restart.
struct NodeFigures {
    node: Arc<Node>,
    descs: Vec<prometheus::core::Desc>,
}

/// Name, help and type of each figure, in the order `NodeFigures::collect` reads them.
const FIGURES: [(&str, &str, MetricType); 10] = [
    (
        "nextbest_journal_bytes_total",
        "Bytes written to the journal.",
        MetricType::COUNTER,
    ),
    (
        "nextbest_journal_records_total",
        "Records written to the journal.",
        MetricType::COUNTER,
    ),
    (
        "nextbest_journal_fsyncs_total",
        "Journal fsyncs.",
        MetricType::COUNTER,
    ),
    (
        "nextbest_journal_queue_full_total",
        "Appends that waited for room in the journal's queue (backpressure).",
        MetricType::COUNTER,
    ),
    (
        "nextbest_decisions_unlogged_total",
        "Decisions answered but not logged: the journal had failed, or its queue was full (the disk not keeping up).",
        MetricType::COUNTER,
    ),
    (
        "nextbest_undecodable_records_total",
        "Reads and writes refused (DATA_LOSS) because the customer's stored record does not decode; forget or repair the customer.",
        MetricType::COUNTER,
    ),
    (
        "nextbest_customers",
        "Customers in the store.",
        MetricType::GAUGE,
    ),
    (
        "nextbest_journal_failed",
        "1 while the journal refuses writes (disk full or read-only): writes answer UNAVAILABLE, decisions are answered but not logged.",
        MetricType::GAUGE,
    ),
    (
        "nextbest_journal_write_seconds",
        "Time the journal thread took to write a batch, and fsync it when someone waits.",
        MetricType::HISTOGRAM,
    ),
    (
        "nextbest_journal_batches_total",
        "Batches the journal thread wrote (one write each).",
        MetricType::COUNTER,
    ),
];

impl NodeFigures {
    fn new(node: Arc<Node>) -> prometheus::Result<NodeFigures> {
        let descs = FIGURES
            .iter()
            .map(|(name, help, _)| {
                prometheus::core::Desc::new(
                    name.to_string(),
                    help.to_string(),
                    Vec::new(),
                    HashMap::new(),
                )
            })
            .collect::<prometheus::Result<_>>()?;
        Ok(NodeFigures { node, descs })
    }
}

impl prometheus::core::Collector for NodeFigures {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        use prometheus::proto::{Bucket, Counter, Gauge, Histogram, Metric};
        let db = self.node.db();
        let stats = db.journal_stats();
        let load = |v: &std::sync::atomic::AtomicU64| v.load(std::sync::atomic::Ordering::Relaxed);
        let values = [
            load(&stats.bytes),
            load(&stats.records),
            load(&stats.fsyncs),
            load(&stats.waits),
            db.unlogged_decisions(),
            db.store().undecodable_reads(),
            db.store().len() as u64,
            u64::from(db.failed().is_some()),
            0,
            load(&stats.batches),
        ];
        FIGURES
            .iter()
            .zip(values)
            .map(|(&(name, help, kind), value)| {
                let mut metric = Metric::default();
                match kind {
                    MetricType::COUNTER => {
                        let mut c = Counter::default();
                        c.set_value(value as f64);
                        metric.set_counter(c);
                    }
                    MetricType::GAUGE => {
                        let mut g = Gauge::default();
                        g.set_value(value as f64);
                        metric = Metric::from_gauge(g);
                    }
                    _ => {
                        let (below, count, sum) = stats.write_seconds.read();
                        let mut h = Histogram::default();
                        h.set_sample_count(count);
                        h.set_sample_sum(sum);
                        h.set_bucket(
                            crate::storage::Durations::BOUNDS
                                .iter()
                                .zip(below)
                                .map(|(bound, n)| {
                                    let mut b = Bucket::default();
                                    b.set_upper_bound(*bound);
                                    b.set_cumulative_count(n);
                                    b
                                })
                                .collect(),
                        );
                        metric.set_histogram(h);
                    }
                }
                let mut family = MetricFamily::default();
                family.set_name(name.to_string());
                family.set_help(help.to_string());
                family.set_field_type(kind);
                family.set_metric(vec![metric]);
                family
            })
            .collect()
    }
}

/// The adaptive models' figures, read at each scrape (`Db::learning_status`): per model,
/// offer and channel (empty for a model that is not per channel), and the node's counts.
struct ModelFigures {
    node: Arc<Node>,
    descs: Vec<prometheus::core::Desc>,
}

/// Name, help, type and labels of each family, in the order `ModelFigures::collect`
/// builds them.
const MODEL_FIGURES: [(&str, &str, MetricType, &[&str]); 9] = [
    (
        "nextbest_model_responses",
        "Responses an adaptive model learned for an offer (positive and negative).",
        MetricType::GAUGE,
        &["model", "offer", "channel"],
    ),
    (
        "nextbest_model_positives",
        "Positive responses an adaptive model learned for an offer.",
        MetricType::GAUGE,
        &["model", "offer", "channel"],
    ),
    (
        "nextbest_model_base_rate",
        "An adaptive model's predicted response rate for an offer with no feature weighed: where it stands now.",
        MetricType::GAUGE,
        &["model", "offer", "channel"],
    ),
    (
        "nextbest_model_auc",
        "An adaptive model's rolling AUC for an offer: each response scored before it was learned from, recent ones weighed most (half-life 1000 responses); absent until it has positives and negatives.",
        MetricType::GAUGE,
        &["model", "offer", "channel"],
    ),
    (
        "nextbest_model_calibration",
        "An adaptive model's rolling calibration for an offer: the positive rate of its recent responses over their mean prediction (1 is calibrated, above 1 predicts too low).",
        MetricType::GAUGE,
        &["model", "offer", "channel"],
    ),
    (
        "nextbest_model_maturity",
        "An adaptive model's maturity for an offer: its positives over 200, at most 1.",
        MetricType::GAUGE,
        &["model", "offer", "channel"],
    ),
    (
        "nextbest_model_outcomes_total",
        "Outcomes the node's adaptive models learned as positive or negative, or skipped (the decision's values unknown, after the window, or no room to wait), since it opened (replay included).",
        MetricType::COUNTER,
        &["result"],
    ),
    (
        "nextbest_model_unnamed_decisions_total",
        "Decisions with adaptive models whose scores read weights published meanwhile, several times running, and that went logged without naming the learning state they read (replay then scores them with the state at their record).",
        MetricType::COUNTER,
        &[],
    ),
    (
        "nextbest_retrain_attempts_total",
        "Retraining attempts (serve --retrain-every): the candidate taken, refused (the gate, or nothing to train), or failed.",
        MetricType::COUNTER,
        &["result"],
    ),
];

impl ModelFigures {
    fn new(node: Arc<Node>) -> prometheus::Result<ModelFigures> {
        let descs = MODEL_FIGURES
            .iter()
            .map(|(name, help, _, labels)| {
                prometheus::core::Desc::new(
                    name.to_string(),
                    help.to_string(),
                    labels.iter().map(|l| l.to_string()).collect(),
                    HashMap::new(),
                )
            })
            .collect::<prometheus::Result<_>>()?;
        Ok(ModelFigures { node, descs })
    }
}

impl prometheus::core::Collector for ModelFigures {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        use prometheus::proto::{Counter, Gauge, LabelPair, Metric};
        let status = self.node.db().learning_status();
        let labelled = |pairs: &[(&str, &str)], value: f64, gauge: bool| {
            let mut m = if gauge {
                let mut g = Gauge::default();
                g.set_value(value);
                Metric::from_gauge(g)
            } else {
                let mut c = Counter::default();
                c.set_value(value);
                let mut m = Metric::default();
                m.set_counter(c);
                m
            };
            m.set_label(
                pairs
                    .iter()
                    .map(|(k, v)| {
                        let mut l = LabelPair::default();
                        l.set_name(k.to_string());
                        l.set_value(v.to_string());
                        l
                    })
                    .collect(),
            );
            m
        };
        let per_cell = |value: fn(&crate::db::CellStatus) -> Option<f64>| {
            status
                .cells
                .iter()
                .filter_map(|c| {
                    let channel = c.channel.as_deref().unwrap_or("");
                    let labels = [
                        ("model", c.model.as_str()),
                        ("offer", c.offer.as_str()),
                        ("channel", channel),
                    ];
                    Some(labelled(&labels, value(c)?, true))
                })
                .collect::<Vec<_>>()
        };
        let metrics = [
            per_cell(|c| Some(c.responses as f64)),
            per_cell(|c| Some(c.positives as f64)),
            per_cell(|c| Some(c.base_rate)),
            per_cell(|c| c.auc),
            per_cell(|c| c.calibration),
            per_cell(|c| Some(c.maturity)),
            [
                ("positive", status.positives),
                ("negative", status.negatives),
                ("skipped", status.skipped),
            ]
            .iter()
            .map(|(r, n)| labelled(&[("result", r)], *n as f64, false))
            .collect(),
            vec![labelled(
                &[],
                self.node.db().unnamed_decisions() as f64,
                false,
            )],
            super::Retrained::ALL
                .iter()
                .map(|&(r, name)| {
                    labelled(&[("result", name)], self.node.retrains(r) as f64, false)
                })
                .collect(),
        ];
        MODEL_FIGURES
            .iter()
            .zip(metrics)
            .filter(|(_, m)| !m.is_empty())
            .map(|(&(name, help, kind, _), metrics)| {
                let mut family = MetricFamily::default();
                family.set_name(name.to_string());
                family.set_help(help.to_string());
                family.set_field_type(kind);
                family.set_metric(metrics);
                family
            })
            .collect()
    }
}

/// A cluster node's figures, read at each scrape from its `Cluster`.
struct ClusterFigures {
    cluster: Arc<crate::cluster::Cluster>,
    descs: Vec<prometheus::core::Desc>,
}

type ClusterFigure = (
    &'static str,
    &'static str,
    MetricType,
    fn(&crate::cluster::Cluster) -> f64,
);

fn count(v: &std::sync::atomic::AtomicU64) -> f64 {
    v.load(std::sync::atomic::Ordering::Relaxed) as f64
}

const CLUSTER_FIGURES: [ClusterFigure; 22] = [
    (
        "nextbest_cluster_applied_position",
        "The last write-stream position this node applied.",
        MetricType::GAUGE,
        |c| c.status().applied as f64,
    ),
    (
        "nextbest_cluster_lag_records",
        "Write-stream records known to exist and not yet applied here.",
        MetricType::GAUGE,
        |c| {
            let s = c.status();
            s.tail.saturating_sub(s.applied) as f64
        },
    ),
    (
        "nextbest_cluster_connected",
        "1 while the node reaches NATS (writes are refused UNAVAILABLE otherwise).",
        MetricType::GAUGE,
        |c| f64::from(u8::from(c.connected())),
    ),
    (
        "nextbest_cluster_caught_up",
        "1 once the node applied what the stream held when it joined (health SERVING).",
        MetricType::GAUGE,
        |c| f64::from(u8::from(c.caught_up())),
    ),
    (
        "nextbest_cluster_published_total",
        "Writes this node published and JetStream acknowledged.",
        MetricType::COUNTER,
        |c| count(&c.stats.published),
    ),
    (
        "nextbest_cluster_publish_seconds_total",
        "Time from publishing to JetStream's acknowledgement, summed over the acknowledged writes (with _published_total: the mean publish latency).",
        MetricType::COUNTER,
        |c| count(&c.stats.publish_micros) / 1e6,
    ),
    (
        "nextbest_cluster_publish_failures_total",
        "Writes JetStream did not acknowledge (answered UNAVAILABLE).",
        MetricType::COUNTER,
        |c| count(&c.stats.publish_failures),
    ),
    (
        "nextbest_cluster_barriers_total",
        "Barriers this node published to learn that records delivered to it are committed before applying them.",
        MetricType::COUNTER,
        |c| count(&c.stats.barriers),
    ),
    (
        "nextbest_cluster_applied_total",
        "Write-stream records applied here.",
        MetricType::COUNTER,
        |c| count(&c.stats.applied_records),
    ),
    (
        "nextbest_cluster_duplicates_skipped_total",
        "Outcomes in the stream counted before (published by two nodes) and skipped when applied.",
        MetricType::COUNTER,
        |c| count(&c.stats.skipped_duplicates),
    ),
    (
        "nextbest_cluster_undecodable_total",
        "Write-stream records that did not decode (a newer format) and were skipped.",
        MetricType::COUNTER,
        |c| count(&c.stats.undecodable),
    ),
    (
        "nextbest_cluster_decisions_published_total",
        "Decisions this node published to the decisions stream.",
        MetricType::COUNTER,
        |c| count(&c.stats.decisions_published),
    ),
    (
        "nextbest_cluster_decisions_lost_total",
        "Decisions this node answered that the decisions stream did not acknowledge.",
        MetricType::COUNTER,
        |c| count(&c.stats.decisions_lost),
    ),
    (
        "nextbest_cluster_decisions_remembered_total",
        "Decisions of every node read from the decisions stream.",
        MetricType::COUNTER,
        |c| count(&c.stats.decisions_remembered),
    ),
    (
        "nextbest_cluster_stale_decisions_total",
        "Decisions answered while NATS was out of reach (from a memory that may lag the cluster).",
        MetricType::COUNTER,
        |c| count(&c.stats.stale_decides),
    ),
    (
        "nextbest_cluster_lag_seconds",
        "While the node lags the write stream: how old the last record it applied is (JetStream's store time); 0 when caught up.",
        MetricType::GAUGE,
        |c| c.lag_seconds(),
    ),
    (
        "nextbest_cluster_snapshots_total",
        "Snapshots this node took of its applied state.",
        MetricType::COUNTER,
        |c| count(&c.stats.snapshots),
    ),
    (
        "nextbest_cluster_snapshots_published_total",
        "Snapshots this node uploaded to the cluster's snapshot store (what new nodes start from).",
        MetricType::COUNTER,
        |c| count(&c.stats.snapshots_published),
    ),
    (
        "nextbest_cluster_trimmed_total",
        "Write-stream records this node purged below every node's snapshot.",
        MetricType::COUNTER,
        |c| count(&c.stats.trimmed),
    ),
    (
        "nextbest_cluster_erased_decisions_total",
        "Decisions of customers forgotten through this node that it erased from the decisions stream.",
        MetricType::COUNTER,
        |c| count(&c.stats.erased_decisions),
    ),
    (
        "nextbest_cluster_erased_snapshots_total",
        "Replaced snapshots whose chunks this node erased from the snapshot store.",
        MetricType::COUNTER,
        |c| count(&c.stats.erased_snapshots),
    ),
    (
        "nextbest_cluster_catalog_swaps_total",
        "Catalogs this node swapped to because the cluster published them.",
        MetricType::COUNTER,
        |c| c.catalog_swaps() as f64,
    ),
];

impl ClusterFigures {
    fn new(cluster: Arc<crate::cluster::Cluster>) -> prometheus::Result<ClusterFigures> {
        let descs = CLUSTER_FIGURES
            .iter()
            .map(|(name, help, _, _)| {
                prometheus::core::Desc::new(
                    name.to_string(),
                    help.to_string(),
                    vec!["node".to_string()],
                    HashMap::new(),
                )
            })
            .collect::<prometheus::Result<_>>()?;
        Ok(ClusterFigures { cluster, descs })
    }
}

impl prometheus::core::Collector for ClusterFigures {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        use prometheus::proto::{Counter, Gauge, LabelPair, Metric};
        CLUSTER_FIGURES
            .iter()
            .map(|&(name, help, kind, read)| {
                let value = read(&self.cluster);
                let mut metric = Metric::default();
                if kind == MetricType::COUNTER {
                    let mut c = Counter::default();
                    c.set_value(value);
                    metric.set_counter(c);
                } else {
                    let mut g = Gauge::default();
                    g.set_value(value);
                    metric = Metric::from_gauge(g);
                }
                let mut label = LabelPair::default();
                label.set_name("node".to_string());
                label.set_value(self.cluster.node_id().to_string());
                metric.set_label(vec![label]);
                let mut family = MetricFamily::default();
                family.set_name(name.to_string());
                family.set_help(help.to_string());
                family.set_field_type(kind);
                family.set_metric(vec![metric]);
                family
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer as _, Service as _};

    /// The series of `name` in the registry, sorted, as the text format writes them.
    fn series(registry: &Registry, name: &str) -> Vec<String> {
        let mut text = String::new();
        TextEncoder::new()
            .encode_utf8(&registry.gather(), &mut text)
            .expect("encode");
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .map(str::to_string)
            .collect();
        lines.sort_unstable();
        lines
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder()
            .uri(path)
            .body(())
            .expect("a valid request")
    }

    /// A reply with `grpc-status` in its headers (trailers-only), or none.
    fn reply(status: Option<Code>) -> http::Response<()> {
        let mut response = http::Response::new(());
        if let Some(code) = status {
            response
                .headers_mut()
                .insert("grpc-status", http::HeaderValue::from(code as i32));
        }
        response
    }

    #[tokio::test]
    async fn every_call_counts_once_by_method_and_canonical_code() {
        let registry = Registry::new();
        let metrics = Metrics::new(&registry).expect("metrics");
        let layer = metrics.calls(&[proto::DESCRIPTOR]);
        for (path, status) in [
            ("/nextbest.v1.DecisionService/Decide", None),
            ("/nextbest.v1.DecisionService/Decide", Some(Code::Ok)),
            (
                "/nextbest.v1.DecisionService/Decide",
                Some(Code::InvalidArgument),
            ),
            (
                "/nextbest.v1.CustomerService/Upsert",
                Some(Code::ResourceExhausted),
            ),
            ("/nextbest.v1.ProbeService/Ping", None),
            (
                "/nextbest.v1.DecisionService/Nope",
                Some(Code::Unimplemented),
            ),
            ("/Decide", Some(Code::Unimplemented)),
        ] {
            let mut service = layer.layer(tower::service_fn(move |_: http::Request<()>| {
                std::future::ready(Ok::<_, std::convert::Infallible>(reply(status)))
            }));
            service.call(request(path)).await.expect("answered");
        }
        // Dropped unanswered: a timeout, or a client that gave up.
        let mut stuck = layer.layer(tower::service_fn(|_: http::Request<()>| {
            std::future::pending::<Result<http::Response<()>, std::convert::Infallible>>()
        }));
        drop(stuck.call(request("/nextbest.v1.CustomerService/Forget")));

        assert_eq!(
            series(&registry, "nextbest_grpc_requests_total"),
            [
                r#"nextbest_grpc_requests_total{code="CANCELLED",method="Forget"} 1"#,
                r#"nextbest_grpc_requests_total{code="INVALID_ARGUMENT",method="Decide"} 1"#,
                r#"nextbest_grpc_requests_total{code="OK",method="Decide"} 2"#,
                r#"nextbest_grpc_requests_total{code="OK",method="Ping"} 1"#,
                r#"nextbest_grpc_requests_total{code="RESOURCE_EXHAUSTED",method="Upsert"} 1"#,
                r#"nextbest_grpc_requests_total{code="UNIMPLEMENTED",method="unknown"} 2"#,
            ]
        );
        assert_eq!(
            series(&registry, "nextbest_grpc_errors_total"),
            [
                r#"nextbest_grpc_errors_total{code="CANCELLED",method="Forget"} 1"#,
                r#"nextbest_grpc_errors_total{code="INVALID_ARGUMENT",method="Decide"} 1"#,
                r#"nextbest_grpc_errors_total{code="RESOURCE_EXHAUSTED",method="Upsert"} 1"#,
                r#"nextbest_grpc_errors_total{code="UNIMPLEMENTED",method="unknown"} 2"#,
            ]
        );
    }

    /// The canonical names are tonic's variant names in upper snake case, one per code
    /// of gRPC's table (0 to 16).
    #[test]
    fn code_names_are_grpcs_canonical_ones() {
        for i in 0..=16 {
            let code = Code::from_i32(i);
            assert_eq!(code as i32, i, "{code:?}");
            let mut snake = String::new();
            for (n, c) in format!("{code:?}").chars().enumerate() {
                if c.is_uppercase() && n > 0 {
                    snake.push('_');
                }
                snake.push(c.to_ascii_uppercase());
            }
            assert_eq!(code_name(code), snake);
        }
    }
}
