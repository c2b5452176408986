//! Acknowledged outcomes per second through a running node, embedded or in a cluster:
//! first decides for `DECISIONS` customers (not measured), then `WRITERS` concurrent
//! callers record one impression of each decision's first offer (every one a new
//! outcome, none a retry) and the rate of acknowledgements is printed, with latency
//! quantiles.
//!
//! ```sh
//! cargo run --release -- serve                                          # or a cluster node
//! cargo run --release --example bench_writes -- http://127.0.0.1:50051 20000 64
//! ```

use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use nextbest::server::proto::decision_service_client::DecisionServiceClient;
use nextbest::server::proto::{self};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args
        .first()
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let decisions: usize = args
        .get(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    let writers: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let run = std::process::id();
    let channels = {
        let mut channels = Vec::new();
        for _ in 0..4 {
            channels.push(
                tonic::transport::Endpoint::from_shared(addr.clone())?
                    .connect()
                    .await?,
            );
        }
        channels
    };

    // The decisions to record outcomes of.
    let shown = Arc::new(tokio::sync::Mutex::new(Vec::with_capacity(decisions)));
    let mut tasks = Vec::new();
    for t in 0..16 {
        let mut client = DecisionServiceClient::new(channels[t % channels.len()].clone());
        let shown = shown.clone();
        tasks.push(tokio::spawn(async move {
            for i in (t..decisions).step_by(16) {
                let d = client
                    .decide(proto::DecideRequest {
                        customer_id: format!("bw{run}-{i}"),
                        placement: "web.home_banner".into(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                if let Some(o) = d.offers.first() {
                    shown.lock().await.push((d.decision_id, o.offer_id.clone()));
                }
            }
            Ok::<_, tonic::Status>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let shown = Arc::new(std::mem::take(&mut *shown.lock().await));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));

    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut client = DecisionServiceClient::new(channels[w % channels.len()].clone());
        let (shown, next) = (shown.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Histogram::<u64>::new(3).expect("histogram");
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((decision_id, offer_id)) = shown.get(i) else {
                    break;
                };
                let at = Instant::now();
                let ack = client
                    .record_outcome(proto::Outcome {
                        decision_id: decision_id.clone(),
                        offer_id: offer_id.clone(),
                        kind: proto::OutcomeKind::Impression as i32,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                assert!(!ack.duplicate, "every outcome is new");
                latencies
                    .record(at.elapsed().as_micros() as u64)
                    .expect("record");
            }
            Ok::<_, tonic::Status>(latencies)
        }));
    }
    let mut latencies = Histogram::<u64>::new(3)?;
    for t in tasks {
        latencies.add(t.await??)?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} acknowledged outcomes with {writers} writers in {secs:.2} s: {:.0}/s; latency µs p50 {} p99 {} max {}",
        shown.len(),
        shown.len() as f64 / secs,
        latencies.value_at_quantile(0.5),
        latencies.value_at_quantile(0.99),
        latencies.max()
    );
    Ok(())
}
