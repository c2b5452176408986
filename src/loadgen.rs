//! `nextbest loadgen`: load against a running server, measured with HDR histograms.
//!
//! Closed loop: N callers, each sending its next request when the previous one is
//! answered. Open loop: requests fall due at a fixed rate whatever the server does, and a
//! request's latency counts from when it fell due, not from when it was sent, so a server
//! that stalls cannot hide the stall by slowing the sender down (coordinated omission).
//!
//! The requests are drawn from the catalog the server runs (placements, customer and
//! context attributes), over customers `c0..cN` that `populate` upserts beforehand, with
//! a stable hash as the random source: the same seed sends the same requests.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tonic::transport::Channel;

use crate::catalog::Catalog;
use crate::schema::{AttrType, Attribute};
use crate::server::proto::customer_service_client::CustomerServiceClient;
use crate::server::proto::decision_service_client::DecisionServiceClient;
use crate::server::proto::probe_service_client::ProbeServiceClient;
use crate::server::proto::{self, value::Kind};

/// One kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    Decide,
    DecideBatch,
    RecordOutcome,
    Upsert,
    Ping,
}

impl Op {
    const ALL: [Op; 5] = [
        Op::Decide,
        Op::DecideBatch,
        Op::RecordOutcome,
        Op::Upsert,
        Op::Ping,
    ];

    /// The name in `--mix` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::Decide => "decide",
            Op::DecideBatch => "batch",
            Op::RecordOutcome => "outcome",
            Op::Upsert => "upsert",
            Op::Ping => "ping",
        }
    }
}

/// How often each request kind is sent, as integer weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix(Vec<(Op, u32)>);

impl Mix {
    /// Only pings: the ceiling of the server's stack.
    pub fn ping() -> Mix {
        Mix(vec![(Op::Ping, 1)])
    }

    /// `decide=70,batch=10,outcome=15,upsert=5`.
    pub fn parse(text: &str) -> Result<Mix, String> {
        let mut mix = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected NAME=WEIGHT, e.g. decide=70"))?;
            let op = Op::ALL
                .into_iter()
                .find(|op| op.name() == name.trim())
                .ok_or_else(|| {
                    let names: Vec<_> = Op::ALL.iter().map(|o| o.name()).collect();
                    format!("`{name}` is not one of {}", names.join(", "))
                })?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("`{part}`: the weight is not a whole number"))?;
            if weight > 0 {
                mix.push((op, weight));
            }
        }
        if mix.is_empty() {
            return Err("the mix has no request kind with a weight above 0".into());
        }
        Ok(Mix(mix))
    }

    fn total(&self) -> u64 {
        self.0.iter().map(|&(_, w)| u64::from(w)).sum()
    }

    fn pick(&self, draw: u64) -> Op {
        let mut at = draw % self.total();
        for &(op, weight) in &self.0 {
            if at < u64::from(weight) {
                return op;
            }
            at -= u64::from(weight);
        }
        unreachable!("draw % total is below the sum of the weights")
    }
}

/// Closed or open loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// This many callers, each waiting for its answer before sending again.
    Closed { concurrency: usize },
    /// This many requests a second, due on schedule whatever the answers do.
    Open { rate: f64 },
}

/// A run.
#[derive(Debug, Clone)]
pub struct Config {
    pub mix: Mix,
    pub load: Load,
    /// Measured for this long, after the warm-up.
    pub duration: Duration,
    /// Sent but not measured, first.
    pub warmup: Duration,
    /// Customers `c0..c{customers}`.
    pub customers: u64,
    pub seed: u64,
}

/// What requests are made of: the server's catalog, and its connections.
#[derive(Debug)]
pub struct Target {
    decisions: Vec<DecisionServiceClient<Channel>>,
    customers: Vec<CustomerServiceClient<Channel>>,
    probes: Vec<ProbeServiceClient<Channel>>,
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    placements: Vec<String>,
    customer_attributes: Vec<Attribute>,
    context_attributes: Vec<Attribute>,
    /// Recent (decision id, offer id) pairs, for outcomes.
    shown: Mutex<VecDeque<(String, String)>>,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("`{0}` is not a server address such as http://127.0.0.1:50051")]
    Address(String),
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        source: tonic::transport::Error,
    },
    #[error("the admin token is not a valid header value")]
    Token,
    #[error("populating customers: {0}")]
    Populate(tonic::Status),
}

const SHOWN_KEPT: usize = 4096;

impl Target {
    /// Opens `connections` HTTP/2 connections to `address` for requests drawn from
    /// `catalog` (the one the server runs).
    pub async fn connect(
        address: &str,
        connections: usize,
        token: Option<&str>,
        catalog: &Catalog,
    ) -> Result<Target, LoadError> {
        let endpoint = Channel::from_shared(address.to_string())
            .map_err(|_| LoadError::Address(address.into()))?
            .tcp_nodelay(true);
        let mut channels = Vec::new();
        for _ in 0..connections.max(1) {
            channels.push(
                endpoint
                    .connect()
                    .await
                    .map_err(|source| LoadError::Connect {
                        target: address.into(),
                        source,
                    })?,
            );
        }
        let token = token
            .filter(|t| !t.is_empty())
            .map(|t| format!("Bearer {t}").parse().map_err(|_| LoadError::Token))
            .transpose()?;
        Ok(Target {
            decisions: channels
                .iter()
                .cloned()
                .map(DecisionServiceClient::new)
                .collect(),
            customers: channels
                .iter()
                .cloned()
                .map(CustomerServiceClient::new)
                .collect(),
            probes: channels.into_iter().map(ProbeServiceClient::new).collect(),
            token,
            placements: catalog.placements.iter().map(|p| p.id.clone()).collect(),
            customer_attributes: catalog.schema.customer.attributes().to_vec(),
            // The engine sets `context.channel` from the placement.
            context_attributes: catalog
                .schema
                .context
                .attributes()
                .iter()
                .filter(|a| a.name != "channel")
                .cloned()
                .collect(),
            shown: Mutex::new(VecDeque::with_capacity(SHOWN_KEPT)),
        })
    }

    /// Upserts customers `c0..c{n}` with every attribute set, `concurrency` at a time.
    pub async fn populate(
        self: &Arc<Self>,
        n: u64,
        concurrency: usize,
        seed: u64,
    ) -> Result<(), LoadError> {
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..concurrency.max(1) {
            let (target, next) = (Arc::clone(self), Arc::clone(&next));
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok(());
                    }
                    let attributes = target
                        .customer_attributes
                        .iter()
                        .enumerate()
                        .map(|(k, a)| (a.name.clone(), value(&a.ty, draw(seed, i, k as u64))))
                        .collect();
                    target
                        .upsert(i as usize, format!("c{i}"), attributes)
                        .await?;
                }
            }));
        }
        for task in tasks {
            task.await
                .expect("a populating task does not panic")
                .map_err(LoadError::Populate)?;
        }
        Ok(())
    }

    async fn upsert(
        &self,
        n: usize,
        customer_id: String,
        attributes: std::collections::HashMap<String, proto::Value>,
    ) -> Result<(), tonic::Status> {
        let mut request = tonic::Request::new(proto::UpsertRequest {
            customer_id,
            attributes,
        });
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        let mut client = self.customers[n % self.customers.len()].clone();
        client.upsert(request).await.map(drop)
    }

    fn context(&self, seed: u64, i: u64) -> std::collections::HashMap<String, proto::Value> {
        self.context_attributes
            .iter()
            .enumerate()
            .map(|(k, a)| (a.name.clone(), value(&a.ty, draw(seed, i, 1000 + k as u64))))
            .collect()
    }

    fn remember(&self, decision: &proto::Decision) {
        if let Some(offer) = decision.offers.first() {
            let mut shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
            if shown.len() == SHOWN_KEPT {
                shown.pop_front();
            }
            shown.push_back((decision.decision_id.clone(), offer.offer_id.clone()));
        }
    }

    /// The kind request `i` is sent as: drawn from the mix, except that an outcome due
    /// before anything was shown is sent as a decide, as a real caller would decide first.
    /// Once something was shown, something always is (`remember` replaces the oldest).
    fn op(&self, config: &Config, i: u64) -> Op {
        match config.mix.pick(draw(config.seed, i, 0)) {
            Op::RecordOutcome
                if self
                    .shown
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty() =>
            {
                Op::Decide
            }
            op => op,
        }
    }

    /// Sends request `i` of kind `op` (as chosen by [`Target::op`]).
    async fn call(&self, op: Op, config: &Config, i: u64) -> Result<(), tonic::Status> {
        let seed = config.seed;
        let n = i as usize;
        let customer = format!("c{}", draw(seed, i, 1) % config.customers.max(1));
        let placement = |salt: u64| {
            self.placements[(draw(seed, i, salt) % self.placements.len() as u64) as usize].clone()
        };
        match op {
            Op::Ping => {
                let mut client = self.probes[n % self.probes.len()].clone();
                client.ping(proto::PingRequest {}).await.map(drop)
            }
            Op::Decide => {
                let mut client = self.decisions[n % self.decisions.len()].clone();
                let decision = client
                    .decide(proto::DecideRequest {
                        customer_id: customer,
                        placement: placement(2),
                        context: self.context(seed, i),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                self.remember(&decision);
                Ok(())
            }
            Op::DecideBatch => {
                let first = placement(2);
                let mut second = placement(3);
                if second == first && self.placements.len() > 1 {
                    let at = self
                        .placements
                        .iter()
                        .position(|p| *p == first)
                        .unwrap_or(0);
                    second = self.placements[(at + 1) % self.placements.len()].clone();
                }
                let mut client = self.decisions[n % self.decisions.len()].clone();
                let page = client
                    .decide_batch(proto::DecideBatchRequest {
                        customer_id: customer,
                        placements: [first, second]
                            .into_iter()
                            .map(|placement| proto::PlacementRequest {
                                placement,
                                ..Default::default()
                            })
                            .collect(),
                        context: self.context(seed, i),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                page.decisions.iter().for_each(|d| self.remember(d));
                Ok(())
            }
            Op::RecordOutcome => {
                let shown = {
                    let shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
                    (!shown.is_empty())
                        .then(|| shown[(draw(seed, i, 4) % shown.len() as u64) as usize].clone())
                };
                let Some((decision_id, offer_id)) = shown else {
                    return Err(tonic::Status::internal(
                        "an outcome was due with no decision shown",
                    ));
                };
                let kind = match draw(seed, i, 5) % 10 {
                    0 => proto::OutcomeKind::Click,
                    1 => proto::OutcomeKind::Accept,
                    _ => proto::OutcomeKind::Impression,
                };
                let mut client = self.decisions[n % self.decisions.len()].clone();
                client
                    .record_outcome(proto::Outcome {
                        decision_id,
                        offer_id,
                        kind: kind as i32,
                        ..Default::default()
                    })
                    .await
                    .map(drop)
            }
            Op::Upsert => {
                let k = (draw(seed, i, 6) % self.customer_attributes.len().max(1) as u64) as usize;
                let attributes = self
                    .customer_attributes
                    .get(k)
                    .map(|a| (a.name.clone(), value(&a.ty, draw(seed, i, 7))))
                    .into_iter()
                    .collect();
                self.upsert(n, customer, attributes).await
            }
        }
    }
}

/// A stable pseudo-random number for request `i` and a purpose (`salt`).
fn draw(seed: u64, i: u64, salt: u64) -> u64 {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&i.to_le_bytes());
    bytes[8..].copy_from_slice(&salt.to_le_bytes());
    xxhash_rust::xxh3::xxh3_64_with_seed(&bytes, seed)
}

/// A value of type `ty` drawn from `h`.
fn value(ty: &AttrType, h: u64) -> proto::Value {
    const WORDS: [&str; 6] = ["mobile", "broadband", "tv", "insurance", "en", "de"];
    let kind = match ty {
        AttrType::Bool => Kind::BoolValue(h & 1 == 1),
        AttrType::Int => Kind::IntValue((h % 100) as i64),
        AttrType::Float => Kind::DoubleValue((h % 10_000) as f64 / 10_000.0),
        AttrType::String => Kind::StringValue(WORDS[(h % WORDS.len() as u64) as usize].into()),
        AttrType::Enum(def) => {
            Kind::StringValue(def.variants[(h % def.variants.len() as u64) as usize].to_string())
        }
        AttrType::Set => Kind::StringList(proto::StringList {
            values: WORDS[..(h % 4) as usize]
                .iter()
                .map(|w| w.to_string())
                .collect(),
        }),
        AttrType::Timestamp => Kind::TimestampValue(prost_types::Timestamp {
            seconds: 1_790_000_000 - (h % (365 * 86_400)) as i64,
            nanos: 0,
        }),
    };
    proto::Value { kind: Some(kind) }
}

/// Latencies and errors of one request kind, and the requests of the warm-up.
#[derive(Debug)]
struct Tally {
    latency: Histogram<u64>,
    errors: u64,
    warmup: u64,
    warmup_errors: u64,
}

/// What a run measured, by request kind.
#[derive(Debug)]
struct Recorder {
    measure_from: Instant,
    tallies: Mutex<BTreeMap<Op, Tally>>,
    errors_by_code: Mutex<BTreeMap<String, u64>>,
    /// Open loop: requests not sent because too many were already waiting.
    overloaded: AtomicU64,
}

/// Latencies are recorded in ns, 1 ns to 100 s at 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("the bounds are valid")
}

impl Recorder {
    fn new(measure_from: Instant) -> Recorder {
        Recorder {
            measure_from,
            tallies: Mutex::new(BTreeMap::new()),
            errors_by_code: Mutex::new(BTreeMap::new()),
            overloaded: AtomicU64::new(0),
        }
    }

    /// A request that fell due (or was sent) at `due` and was answered `result` now.
    fn record(&self, op: Op, due: Instant, result: &Result<(), tonic::Status>) {
        let ns = u64::try_from(due.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut tallies = self.tallies.lock().unwrap_or_else(|e| e.into_inner());
        let tally = tallies.entry(op).or_insert_with(|| Tally {
            latency: histogram(),
            errors: 0,
            warmup: 0,
            warmup_errors: 0,
        });
        if due < self.measure_from {
            tally.warmup += 1;
            tally.warmup_errors += u64::from(result.is_err());
            return;
        }
        tally.latency.saturating_record(ns.max(1));
        if let Err(status) = result {
            tally.errors += 1;
            drop(tallies);
            *self
                .errors_by_code
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(format!("{:?}", status.code()))
                .or_default() += 1;
        }
    }
}

/// Runs `config` against `target` and reports what it measured.
pub async fn run(target: Arc<Target>, config: &Config) -> Report {
    let start = Instant::now();
    let measure_from = start + config.warmup;
    let deadline = measure_from + config.duration;
    let recorder = Arc::new(Recorder::new(measure_from));
    let config = Arc::new(config.clone());
    match config.load {
        Load::Closed { concurrency } => {
            let next = Arc::new(AtomicU64::new(0));
            let callers: Vec<_> = (0..concurrency.max(1))
                .map(|_| {
                    let (target, config) = (Arc::clone(&target), Arc::clone(&config));
                    let (recorder, next) = (Arc::clone(&recorder), Arc::clone(&next));
                    tokio::spawn(async move {
                        while Instant::now() < deadline {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let op = target.op(&config, i);
                            let sent = Instant::now();
                            let result = target.call(op, &config, i).await;
                            recorder.record(op, sent, &result);
                        }
                    })
                })
                .collect();
            for caller in callers {
                caller.await.expect("a caller does not panic");
            }
        }
        Load::Open { rate } => {
            // A thread of its own sleeps until each request falls due (tokio's timer
            // only has millisecond resolution) and hands it to the runtime.
            const MAX_WAITING: u64 = 100_000;
            let waiting = Arc::new(AtomicU64::new(0));
            let runtime = tokio::runtime::Handle::current();
            let dispatcher = {
                let (target, config) = (Arc::clone(&target), Arc::clone(&config));
                let (recorder, waiting) = (Arc::clone(&recorder), Arc::clone(&waiting));
                std::thread::spawn(move || {
                    for i in 0u64.. {
                        let due = start + Duration::from_secs_f64(i as f64 / rate.max(1e-9));
                        if due >= deadline {
                            break;
                        }
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        if waiting.load(Ordering::Relaxed) >= MAX_WAITING {
                            if due >= recorder.measure_from {
                                recorder.overloaded.fetch_add(1, Ordering::Relaxed);
                            }
                            continue;
                        }
                        waiting.fetch_add(1, Ordering::Relaxed);
                        let (target, config) = (Arc::clone(&target), Arc::clone(&config));
                        let (recorder, waiting) = (Arc::clone(&recorder), Arc::clone(&waiting));
                        runtime.spawn(async move {
                            let op = target.op(&config, i);
                            let result = target.call(op, &config, i).await;
                            recorder.record(op, due, &result);
                            waiting.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                })
            };
            tokio::task::spawn_blocking(move || dispatcher.join())
                .await
                .expect("the dispatcher's waiter does not panic")
                .expect("the dispatcher does not panic");
            while waiting.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    let elapsed = measure_from.elapsed();
    Report::new(&recorder, &config, elapsed)
}

/// Latency percentiles, in µs.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            p50_us: us(h.value_at_quantile(0.5)),
            p90_us: us(h.value_at_quantile(0.9)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1000.0,
        }
    }
}

/// One request kind's figures.
#[derive(Debug, Clone, Serialize)]
pub struct OpReport {
    pub op: &'static str,
    pub requests: u64,
    pub errors: u64,
    pub per_second: f64,
    pub latency: Latency,
    /// Sent during the warm-up and answered, not in the figures above.
    pub warmup: u64,
    /// Of those, answered with an error.
    pub warmup_errors: u64,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `closed, 16 callers` or `open, 5000/s`.
    pub load: String,
    pub seconds: f64,
    pub requests: u64,
    pub errors: u64,
    pub per_second: f64,
    pub latency: Latency,
    pub ops: Vec<OpReport>,
    pub errors_by_code: BTreeMap<String, u64>,
    /// Open loop: requests dropped because 100,000 were already waiting.
    pub overloaded: u64,
}

impl Report {
    fn new(recorder: &Recorder, config: &Config, elapsed: Duration) -> Report {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let tallies = recorder.tallies.lock().unwrap_or_else(|e| e.into_inner());
        let mut all = histogram();
        let mut ops = Vec::new();
        for (op, tally) in tallies.iter() {
            all.add(&tally.latency)
                .expect("histograms of equal bounds add");
            ops.push(OpReport {
                op: op.name(),
                requests: tally.latency.len(),
                errors: tally.errors,
                per_second: tally.latency.len() as f64 / seconds,
                latency: Latency::of(&tally.latency),
                warmup: tally.warmup,
                warmup_errors: tally.warmup_errors,
            });
        }
        Report {
            load: match config.load {
                Load::Closed { concurrency } => format!("closed, {concurrency} callers"),
                Load::Open { rate } => format!("open, {rate}/s"),
            },
            seconds,
            requests: all.len(),
            errors: ops.iter().map(|o| o.errors).sum(),
            per_second: all.len() as f64 / seconds,
            latency: Latency::of(&all),
            ops,
            errors_by_code: recorder
                .errors_by_code
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            overloaded: recorder.overloaded.load(Ordering::Relaxed),
        }
    }

    /// The report as a table.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut out = format!(
            "{} for {:.1} s: {} requests, {} errors, {:.0}/s\n",
            self.load, self.seconds, self.requests, self.errors, self.per_second
        );
        let _ = writeln!(
            out,
            "{:<8} {:>10} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "op", "requests", "errors", "per s", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs"
        );
        let row = |out: &mut String, name: &str, n: u64, e: u64, rate: f64, l: &Latency| {
            let _ = writeln!(
                out,
                "{name:<8} {n:>10} {e:>7} {rate:>10.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0}",
                l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
            );
        };
        for op in &self.ops {
            row(
                &mut out,
                op.op,
                op.requests,
                op.errors,
                op.per_second,
                &op.latency,
            );
        }
        if self.ops.len() > 1 {
            row(
                &mut out,
                "all",
                self.requests,
                self.errors,
                self.per_second,
                &self.latency,
            );
        }
        for (code, n) in &self.errors_by_code {
            let _ = writeln!(out, "errors {code}: {n}");
        }
        let warmup: u64 = self.ops.iter().map(|o| o.warmup).sum();
        let warmup_errors: u64 = self.ops.iter().map(|o| o.warmup_errors).sum();
        if warmup > 0 {
            let _ = writeln!(
                out,
                "warm-up, not measured: {warmup} requests, {warmup_errors} errors"
            );
        }
        if self.overloaded > 0 {
            let _ = writeln!(
                out,
                "not sent, 100,000 already waiting: {} (the rate is beyond the server)",
                self.overloaded
            );
        }
        out
    }
}

/// One ping run and one run of the mix with the same load: the mix's throughput as a
/// share of the ping ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Round {
    pub ceiling_per_second: f64,
    pub per_second: f64,
    pub share: f64,
}

impl Round {
    pub fn new(ceiling: &Report, run: &Report) -> Round {
        Round {
            ceiling_per_second: ceiling.per_second,
            per_second: run.per_second,
            share: run.per_second / ceiling.per_second.max(f64::MIN_POSITIVE),
        }
    }
}

/// The shares of the ceiling over alternating rounds: a slow spell of the machine hits
/// ping and mix runs alike, and the median is steadier than any one round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shares {
    /// The median (of an even number of rounds, the mean of the middle two).
    pub median: f64,
    pub lowest: f64,
    pub highest: f64,
    pub rounds: usize,
}

impl Shares {
    /// `None` without rounds.
    pub fn of(rounds: &[Round]) -> Option<Shares> {
        let mut shares: Vec<f64> = rounds.iter().map(|r| r.share).collect();
        shares.sort_by(f64::total_cmp);
        let n = shares.len();
        let median = match n {
            0 => return None,
            n if n % 2 == 1 => shares[n / 2],
            n => (shares[n / 2 - 1] + shares[n / 2]) / 2.0,
        };
        Some(Shares {
            median,
            lowest: shares[0],
            highest: shares[n - 1],
            rounds: n,
        })
    }
}

/// The machine a run was measured on: its cores and CPU model (from `/proc/cpuinfo`,
/// empty where there is none).
pub fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_default();
    serde_json::json!({
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": cpu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_of_the_ceiling_is_the_median_over_rounds() {
        let round = |share: f64| Round {
            ceiling_per_second: 100.0,
            per_second: 100.0 * share,
            share,
        };
        assert_eq!(Shares::of(&[]), None);
        let one = Shares::of(&[round(0.8)]).expect("one round");
        assert_eq!((one.median, one.lowest, one.highest), (0.8, 0.8, 0.8));
        let odd = Shares::of(&[round(0.9), round(0.5), round(0.7)]).expect("rounds");
        assert_eq!(
            (odd.median, odd.lowest, odd.highest, odd.rounds),
            (0.7, 0.5, 0.9, 3)
        );
        let even = Shares::of(&[round(0.9), round(0.5), round(0.7), round(0.6)]).expect("rounds");
        assert!((even.median - 0.65).abs() < 1e-12, "{even:?}");
    }

    #[test]
    fn a_mix_is_parsed_by_name_and_picked_by_weight() {
        let mix = Mix::parse("decide=3, batch=1,ping=0").expect("mix");
        assert_eq!(mix, Mix(vec![(Op::Decide, 3), (Op::DecideBatch, 1)]));
        let picks: Vec<Op> = (0..4).map(|d| mix.pick(d)).collect();
        assert_eq!(picks, [Op::Decide, Op::Decide, Op::Decide, Op::DecideBatch]);
        assert!(Mix::parse("decide").is_err());
        let e = Mix::parse("decide=1,dcide=2").expect_err("unknown");
        assert!(e.contains("`dcide`") && e.contains("decide, batch"), "{e}");
        assert!(Mix::parse("decide=0").is_err());
        assert!(Mix::parse("decide=x").is_err());
    }

    #[test]
    fn recording_skips_the_warmup_and_counts_errors_by_code() {
        let recorder = Recorder::new(Instant::now());
        let before = recorder.measure_from - Duration::from_millis(1);
        recorder.record(Op::Decide, before, &Ok(()));
        let now = Instant::now();
        recorder.record(Op::Decide, now, &Ok(()));
        recorder.record(Op::Decide, now, &Err(tonic::Status::unavailable("x")));
        let config = Config {
            mix: Mix::ping(),
            load: Load::Closed { concurrency: 1 },
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            customers: 1,
            seed: 0,
        };
        let report = Report::new(&recorder, &config, Duration::from_secs(1));
        assert_eq!(report.requests, 2);
        assert_eq!(report.errors, 1);
        assert_eq!((report.ops[0].warmup, report.ops[0].warmup_errors), (1, 0));
        assert_eq!(report.errors_by_code.get("Unavailable"), Some(&1));
        assert!(report.table().contains("decide"));
    }

    #[test]
    fn values_have_the_attribute_type() {
        let e = crate::schema::EnumDef::new(["a", "b"]);
        for h in 0..50 {
            match value(&AttrType::Enum(e.clone()), h).kind {
                Some(Kind::StringValue(s)) => assert!(s == "a" || s == "b"),
                other => panic!("{other:?}"),
            }
            assert!(matches!(
                value(&AttrType::Timestamp, h).kind,
                Some(Kind::TimestampValue(_))
            ));
        }
    }
}
