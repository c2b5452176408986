//! Acknowledged durable outcomes per second with concurrent writers: group commit
//! against one fsync per write, in the same run, on the same disk.
//!
//! `cargo run --release --example bench_outcomes -- [WRITERS] [SECONDS] [DIR]`
//!
//! Each writer records impressions for its own customers and waits for each
//! acknowledgement (the record is on disk) before sending the next, as a service
//! handler does. DIR (default: a temporary directory) decides which disk is measured.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nextbest::catalog::Catalog;
use nextbest::db::{Db, DbOptions, OutcomeInput};
use nextbest::schema::EventKind;
use nextbest::storage::{SyncMode, WriterOptions};

/// The allocator the `nextbest` binary runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn run(
    catalog: &Arc<Catalog>,
    dir: &std::path::Path,
    writers: usize,
    seconds: f64,
    sync: SyncMode,
) -> anyhow::Result<()> {
    let options = DbOptions {
        writer: WriterOptions {
            sync,
            ..WriterOptions::default()
        },
        ..DbOptions::default()
    };
    let (db, _) = Db::open(dir, Arc::clone(catalog), options)?;
    let db = Arc::new(db);
    let offers: Vec<String> = catalog.offers.iter().map(|o| o.id.clone()).collect();
    let done = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut latencies = Vec::new();
    let started = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let (db, done, acked, offers) = (
                Arc::clone(&db),
                Arc::clone(&done),
                Arc::clone(&acked),
                offers.clone(),
            );
            std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
                let mut lat = Vec::new();
                let mut i = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let outcome = OutcomeInput {
                        decision: uuid::Uuid::now_v7(),
                        offer: offers[(i as usize) % offers.len()].clone(),
                        kind: EventKind::Impression,
                        value: None,
                        at: jiff::Timestamp::now().as_millisecond(),
                        customer: Some(format!("w{w}-c{}", i % 1000)),
                        channel: Some("web".into()),
                    };
                    let t = Instant::now();
                    db.record_outcome(&outcome, outcome.at)?;
                    lat.push(t.elapsed());
                    acked.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                Ok(lat)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    done.store(true, Ordering::Relaxed);
    for t in threads {
        latencies.extend(
            t.join()
                .map_err(|_| anyhow::anyhow!("a writer panicked"))??,
        );
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = acked.load(Ordering::Relaxed);
    let fsyncs = db.journal_stats().fsyncs.load(Ordering::Relaxed);
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "{:>12}: {writers} writers, {n} outcomes acknowledged in {elapsed:.1}s = {:.0}/s; \
         {fsyncs} fsyncs ({:.1} outcomes each); ack latency p50 {:.2?} p99 {:.2?}",
        format!("{sync:?}"),
        n as f64 / elapsed,
        n as f64 / fsyncs.max(1) as f64,
        pct(0.5),
        pct(0.99)
    );
    Arc::try_unwrap(db)
        .map_err(|_| anyhow::anyhow!("writers still hold the db"))?
        .close()?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let writers: usize = args.first().map(|s| s.parse()).transpose()?.unwrap_or(64);
    let seconds: f64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5.0);
    let base = match args.get(2) {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let catalog = Arc::new(Catalog::load(&rules).map_err(|e| anyhow::anyhow!("{}", e.render()))?);
    run(
        &catalog,
        &base.path().join("group"),
        writers,
        seconds,
        SyncMode::Group,
    )?;
    run(
        &catalog,
        &base.path().join("every"),
        writers,
        seconds,
        SyncMode::EveryRecord,
    )?;
    Ok(())
}
