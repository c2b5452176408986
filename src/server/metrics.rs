//! Prometheus metrics: registered at construction into a registry the caller passes in,
//! exposed in the text format on `/metrics` of the metrics address.
//!
//! The explored share is `sum(rate(nextbest_offers_explored_total[5m])) /
//! sum(rate(nextbest_offers_shown_total[5m]))`; counters that mirror the journal and the
//! store are brought up to date when scraped.

use std::sync::Arc;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use super::{Node, proto};

#[derive(Debug, Clone)]
pub struct Metrics {
    decide_seconds: HistogramVec,
    decisions: IntCounterVec,
    shown: IntCounterVec,
    explored: IntCounterVec,
    outcomes: IntCounterVec,
    catalog: IntGaugeVec,
    reloads: IntCounterVec,
    customers: IntGauge,
    journal_bytes: IntCounter,
    journal_records: IntCounter,
    journal_fsyncs: IntCounter,
    journal_waits: IntCounter,
    journal_failed: IntGauge,
    unlogged: IntCounter,
    undecodable: IntCounter,
    /// The node's journal and store counters as last seen, and which `Db` they were read
    /// from: a healed node starts its counters again from zero.
    seen: Arc<std::sync::Mutex<(usize, [u64; 6])>>,
    write_seconds: Histogram,
    grpc_errors: IntCounterVec,
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
        let plain = |name: &str, help: &str| {
            let c = IntCounter::new(name, help)?;
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
        let write_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "nextbest_journal_write_seconds",
                "Time until an upsert, outcome or forget was durable (group commit included).",
            )
            .buckets(buckets()),
        )?;
        registry.register(Box::new(write_seconds.clone()))?;
        let catalog = IntGaugeVec::new(
            Opts::new(
                "nextbest_catalog_info",
                "The catalog version in force (value 1).",
            ),
            &["version"],
        )?;
        registry.register(Box::new(catalog.clone()))?;
        let customers = IntGauge::new("nextbest_customers", "Customers in the store.")?;
        registry.register(Box::new(customers.clone()))?;
        let journal_failed = IntGauge::new(
            "nextbest_journal_failed",
            "1 while the journal refuses writes (disk full or read-only): writes answer UNAVAILABLE, decisions are answered but not logged.",
        )?;
        registry.register(Box::new(journal_failed.clone()))?;
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
            customers,
            journal_bytes: plain(
                "nextbest_journal_bytes_total",
                "Bytes written to the journal.",
            )?,
            journal_records: plain(
                "nextbest_journal_records_total",
                "Records written to the journal.",
            )?,
            journal_fsyncs: plain("nextbest_journal_fsyncs_total", "Journal fsyncs.")?,
            journal_waits: plain(
                "nextbest_journal_queue_full_total",
                "Appends that waited for room in the journal's queue (backpressure).",
            )?,
            journal_failed,
            unlogged: plain(
                "nextbest_decisions_unlogged_total",
                "Decisions answered while the journal had failed, so not logged.",
            )?,
            undecodable: plain(
                "nextbest_undecodable_records_total",
                "Reads and writes refused (DATA_LOSS) because the customer's stored record does not decode; forget or repair the customer.",
            )?,
            seen: Arc::default(),
            write_seconds,
            grpc_errors: counter(
                "nextbest_grpc_errors_total",
                "Calls that ended with an error, by method and status code.",
                &["method", "code"],
            )?,
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

    pub fn durable_write(&self, seconds: f64) {
        self.write_seconds.observe(seconds);
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

    pub fn error(&self, method: &str, status: &tonic::Status) {
        self.grpc_errors
            .with_label_values(&[method, &format!("{:?}", status.code())])
            .inc();
    }

    /// Brings the store and journal figures up to date (at scrape time).
    fn refresh(&self, node: &Node) {
        let db = node.db();
        self.customers
            .set(i64::try_from(db.store().len()).unwrap_or(i64::MAX));
        self.journal_failed.set(i64::from(db.failed().is_some()));
        let stats = db.journal_stats();
        let load = |v: &std::sync::atomic::AtomicU64| v.load(std::sync::atomic::Ordering::Relaxed);
        let now = [
            load(&stats.bytes),
            load(&stats.records),
            load(&stats.fsyncs),
            load(&stats.waits),
            db.unlogged_decisions(),
            db.store().undecodable_reads(),
        ];
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let identity = Arc::as_ptr(&db) as usize;
        if seen.0 != identity {
            *seen = (identity, [0; 6]);
        }
        let counters = [
            &self.journal_bytes,
            &self.journal_records,
            &self.journal_fsyncs,
            &self.journal_waits,
            &self.unlogged,
            &self.undecodable,
        ];
        for ((counter, now), before) in counters.into_iter().zip(now).zip(&mut seen.1) {
            counter.inc_by(now.saturating_sub(*before));
            *before = now;
        }
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    metrics: Arc<Metrics>,
    node: Arc<Node>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let scrape = move || {
        metrics.refresh(&node);
        let mut out = String::new();
        match TextEncoder::new().encode_utf8(&registry.gather(), &mut out) {
            Ok(()) => (
                [(axum::http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
                out,
            )
                .into_response(),
            Err(e) => (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
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
