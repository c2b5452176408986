//! The replication delay of a cluster, as a caller sees it: upsert through node A, then at
//! once `Decide` through node B with the write's `position` as `min_position`, which B
//! answers only once it has applied the write. That decide's latency, minus the same
//! decide's without a position to wait for, is the delay (within the jitter of one round
//! trip). Optionally under a background write load through A.
//!
//! ```sh
//! bash scripts/cluster.sh up                                   # three nodes
//! cargo run --release --example replication_lag -- http://127.0.0.1:50051 http://127.0.0.1:50052
//! ```
//! Options: `-- A B [SAMPLES] [BACKGROUND_WRITERS]`, default 2000 samples and 0 writers.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nextbest::server::proto::customer_service_client::CustomerServiceClient;
use nextbest::server::proto::decision_service_client::DecisionServiceClient;
use nextbest::server::proto::{self, value::Kind};

fn int(i: i64) -> proto::Value {
    proto::Value {
        kind: Some(Kind::IntValue(i)),
    }
}

async fn connect(addr: &str) -> anyhow::Result<tonic::transport::Channel> {
    Ok(tonic::transport::Endpoint::from_shared(addr.to_string())?
        .connect()
        .await?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = args
        .first()
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let b = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:50052".into());
    let samples: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(2000);
    let writers: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(0);
    let (channel_a, channel_b) = (connect(&a).await?, connect(&b).await?);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut background = Vec::new();
    for w in 0..writers {
        let mut client = CustomerServiceClient::new(channel_a.clone());
        let stop = stop.clone();
        background.push(tokio::spawn(async move {
            let mut n = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = client
                    .upsert(proto::UpsertRequest {
                        customer_id: format!("load{w}-{}", n % 1000),
                        attributes: [("age".to_string(), int(n % 90))].into(),
                    })
                    .await;
                n += 1;
            }
        }));
    }

    let mut customers = CustomerServiceClient::new(channel_a);
    let mut decisions = DecisionServiceClient::new(channel_b);
    let decide = |min_position: u64| proto::DecideRequest {
        customer_id: "lag-probe".into(),
        placement: "web.home_banner".into(),
        min_position,
        ..Default::default()
    };
    let mut waited = Histogram::<u64>::new(3)?;
    let mut plain = Histogram::<u64>::new(3)?;
    for i in 0..samples {
        let position = customers
            .upsert(proto::UpsertRequest {
                customer_id: "lag-probe".into(),
                attributes: [("age".to_string(), int((i % 90) as i64))].into(),
            })
            .await?
            .into_inner()
            .position;
        let started = Instant::now();
        decisions.decide(decide(position)).await?;
        waited.record(started.elapsed().as_micros() as u64)?;
        let started = Instant::now();
        decisions.decide(decide(0)).await?;
        plain.record(started.elapsed().as_micros() as u64)?;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in background {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let q = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q);
    println!("{samples} samples, {writers} background writers through A; Decide on B (µs):");
    println!(
        "  with min_position: p50 {} p99 {} max {}",
        q(&waited, 0.5),
        q(&waited, 0.99),
        waited.max()
    );
    println!(
        "  without:           p50 {} p99 {} max {}",
        q(&plain, 0.5),
        q(&plain, 0.99),
        plain.max()
    );
    println!(
        "  replication delay ≈ p50 {} µs, p99 {} µs (difference of the quantiles)",
        q(&waited, 0.5).saturating_sub(q(&plain, 0.5)),
        q(&waited, 0.99).saturating_sub(q(&plain, 0.99))
    );
    Ok(())
}
