//! One `RecordOutcomes` batch of N outcomes against N single `RecordOutcome` calls from
//! one caller, interleaved in the same run on the same disk: what one wait for the
//! group commit saves over one wait per outcome.
//!
//! `cargo run --release --example bench_outcome_batch -- [N] [ROUNDS] [DIR]`
//!
//! Every outcome is a fresh impression of a shown offer of its own decision, so each is
//! written (none is a retry). DIR (default: a temporary directory) decides which disk is
//! measured.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nextbest::catalog::Catalog;
use nextbest::db::{Db, DbOptions, OutcomeInput};
use nextbest::schema::EventKind;

/// The allocator the `nextbest` binary runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(100), |a| a.parse())?;
    let rounds: usize = args.next().map_or(Ok(30), |a| a.parse())?;
    let temp = tempfile::tempdir()?;
    let dir = args
        .next()
        .map_or_else(|| temp.path().to_path_buf(), Into::into);
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let catalog = Arc::new(Catalog::load(&rules).map_err(|e| anyhow::anyhow!(e.render()))?);
    let (db, _) = Db::open(&dir, Arc::clone(&catalog), DbOptions::default())?;
    let offer = catalog.offers[0].id.clone();
    let now = jiff::Timestamp::now().as_millisecond();
    // Outcomes of decisions the node does not remember: any offer is taken, and each
    // (decision, offer, kind) is new.
    let outcome = |_: usize| OutcomeInput {
        decision: uuid::Uuid::now_v7(),
        offer: offer.clone(),
        kind: EventKind::Impression,
        value: None,
        at: now,
        customer: None,
        channel: None,
    };
    let fsyncs = || db.journal_stats().fsyncs.load(Ordering::Relaxed);
    let (mut single, mut batch) = (Vec::new(), Vec::new());
    let (mut single_fsyncs, mut batch_fsyncs) = (0, 0);
    for _ in 0..rounds {
        let inputs: Vec<OutcomeInput> = (0..n).map(outcome).collect();
        let (before, started) = (fsyncs(), Instant::now());
        for input in &inputs {
            db.record_outcome(input, now)?;
        }
        single.push(started.elapsed());
        single_fsyncs += fsyncs() - before;

        let inputs: Vec<OutcomeInput> = (0..n).map(outcome).collect();
        let (before, started) = (fsyncs(), Instant::now());
        db.record_outcomes(&inputs, now)
            .map_err(|(i, e)| anyhow::anyhow!("outcome {i:?}: {e}"))?;
        batch.push(started.elapsed());
        batch_fsyncs += fsyncs() - before;
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (single, batch) = (median(single), median(batch));
    println!(
        "{n} outcomes, {rounds} rounds each, median per round, in {}:",
        dir.display()
    );
    println!(
        "  {n} single calls: {:>9.2} ms  ({:.1} fsyncs a round)",
        single.as_secs_f64() * 1e3,
        single_fsyncs as f64 / rounds as f64
    );
    println!(
        "  one batch:       {:>9.2} ms  ({:.1} fsyncs a round)  = {:.1}x faster",
        batch.as_secs_f64() * 1e3,
        batch_fsyncs as f64 / rounds as f64,
        single.as_secs_f64() / batch.as_secs_f64()
    );
    db.close()?;
    Ok(())
}
