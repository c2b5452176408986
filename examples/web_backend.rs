//! A web backend rendering a home page with two placements (the banner and the app card)
//! through one `DecideBatch` per page view, under concurrent traffic: checks that no page
//! shows an offer twice, and reports the latency the backend sees.
//!
//! ```sh
//! cargo run --release -- serve                            # in one terminal
//! cargo run --release --example web_backend               # in another
//! ```
//! Options: `-- [ADDR] [CONCURRENT] [PAGES_EACH]`, default `http://127.0.0.1:50051`, 16
//! and 250. Visitors are `visitor-0` … `visitor-999` (unknown to the store, so decided
//! on the request's context alone) with a device in the context.

use std::time::{Duration, Instant};

use nextbest::server::proto::decision_service_client::DecisionServiceClient;
use nextbest::server::proto::{self, value::Kind};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args
        .first()
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let concurrent: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(16);
    let pages: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(250);
    let channel = tonic::transport::Endpoint::from_shared(addr)?
        .connect()
        .await?;

    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrent)
        .map(|t| {
            let mut client = DecisionServiceClient::new(channel.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(pages);
                for i in 0..pages {
                    let visitor = format!("visitor-{}", (t * pages + i) % 1000);
                    let device = if i % 3 == 0 { "mobile" } else { "desktop" };
                    let page = proto::DecideBatchRequest {
                        customer_id: visitor,
                        placements: ["web.home_banner", "app.card"]
                            .into_iter()
                            .map(|p| proto::PlacementRequest {
                                placement: p.into(),
                                ..Default::default()
                            })
                            .collect(),
                        context: [(
                            "device".to_string(),
                            proto::Value {
                                kind: Some(Kind::StringValue(device.into())),
                            },
                        )]
                        .into(),
                        ..Default::default()
                    };
                    let sent = Instant::now();
                    let reply = client.decide_batch(page).await?.into_inner();
                    latencies.push(sent.elapsed());
                    let mut seen = std::collections::HashSet::new();
                    for d in &reply.decisions {
                        for o in &d.offers {
                            anyhow::ensure!(
                                seen.insert(o.offer_id.clone()),
                                "offer {} twice on one page",
                                o.offer_id
                            );
                        }
                    }
                }
                Ok::<_, anyhow::Error>(latencies)
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "{} pages ({} decisions) from {concurrent} concurrent callers in {elapsed:.2?}: {:.0} pages/s; \
         latency p50 {:.2?}, p99 {:.2?}, max {:.2?}; no offer twice on a page",
        latencies.len(),
        latencies.len() * 2,
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}
