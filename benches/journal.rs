//! What durability costs the decide path, on the sample catalog and its example
//! customer (`examples/customers/ada.json`, 20 attributes, history added to 20 events):
//!
//! - `decide`: the decision alone, on a state the caller already holds;
//! - `log`: what `Db::log_decision` costs its caller (journal thread idle meanwhile);
//! - `decide+log saturated`: both, as fast as one thread can (the journal's capacity);
//! - `read`, `read+decide`: decoding the packed customer from the store (`Store::with`);
//! - `read+decide+log`: `Db::decide`, the service's path (the stored record is logged as
//!   it is, instead of re-packing the values), with the journal thread idle meanwhile,
//!   and `… busy` with it writing on the other core;
//! - `encode`: the journal thread's work for one decision record.
//!
//! `cargo bench --bench journal`; figures in BENCHMARKS.md.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use nextbest::catalog::Catalog;
use nextbest::db::{Db, DbOptions};
use nextbest::decide::{Context, Options, decide};
use nextbest::schema::{Event, EventKind};
use nextbest::state::HistoryLimits;
use nextbest::storage::WriterOptions;

/// The allocator the `nextbest` binary runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NOW: i64 = 1_795_428_000_000;
/// Decisions timed between two drains of the journal queue.
const CHUNK: u64 = 1_000;

/// A node on the sample catalog holding the example customer with 20 history events.
fn node(catalog: &Arc<Catalog>, writer: WriterOptions) -> (Db, tempfile::TempDir) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("tempdir");
    let options = DbOptions {
        writer,
        ..DbOptions::default()
    };
    let (db, _) = Db::open(dir.path(), Arc::clone(catalog), options).expect("db");
    let text = std::fs::read_to_string(root.join("examples/customers/ada.json")).expect("ada");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    let attributes = json["attributes"].as_object().expect("attributes");
    db.upsert_json("ada", attributes, NOW).expect("upsert");
    let limits = HistoryLimits::for_catalog(catalog);
    let history = db.store().update("ada", |s| {
        for i in 0..20i64 {
            let offer = &catalog.offers[i as usize % catalog.offers.len()];
            let event = Event {
                at: NOW - (i + 1) * 5 * 86_400_000,
                offer: offer.key,
                group: offer.group_key,
                channel: nextbest::schema::key("web"),
                kind: EventKind::Impression,
            };
            s.history.record(event, limits, NOW);
        }
        Ok::<_, nextbest::state::StateError>(())
    });
    history.expect("ada decodes");
    (db, dir)
}

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let catalog = Arc::new(Catalog::load(root.join("rules")).expect("the sample catalog"));
    let (db, _dir) = node(&catalog, WriterOptions::default());
    // A node whose journal thread stays idle while a chunk of 1,000 decisions is timed
    // (it writes them in between, outside the timing): the cost on the decide path by
    // itself, as on a machine where the journal thread has a core of its own.
    let (quiet, _quiet_dir) = node(
        &catalog,
        WriterOptions {
            linger: std::time::Duration::from_secs(60),
            wake_at: 1 << 20,
            queue: 1 << 20,
            ..WriterOptions::default()
        },
    );
    let state = db.store().with("ada", |s| s.cloned()).expect("decodes");
    let state = state.expect("ada");
    let placement = catalog
        .placement("call_center.next_best")
        .expect("placement");
    let context = Context::for_placement(&catalog, placement, vec![]);
    let n = std::cell::Cell::new(0u64);
    let id = || {
        n.set(n.get() + 1);
        uuid::Uuid::from_u128((u128::from(NOW as u64) << 80) | 0x7000 << 64 | u128::from(n.get()))
    };
    // A decision for the example customer, with a fresh id each time.
    let make = || {
        decide(
            &catalog,
            &state,
            &context,
            placement,
            NOW,
            &Options::new(id()),
        )
    };

    let mut group = c.benchmark_group("journal");
    group.bench_function("decide", |b| b.iter(|| black_box(make())));
    // What `log_decision` costs the caller: decisions are made outside the timing, logged
    // in chunks of 1,000 to the quiet node, whose queue is drained in between (outside
    // the timing).
    group.bench_function("log", |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let chunk = left.min(CHUNK);
                let decisions: Vec<_> = (0..chunk).map(|_| make()).collect();
                let started = std::time::Instant::now();
                for d in decisions {
                    quiet
                        .log_decision(&catalog, &state, &context, d)
                        .expect("logged");
                }
                total += started.elapsed();
                quiet.sync().expect("drained");
                left -= chunk;
            }
            total
        })
    });
    // Saturated: as fast as the caller can, so the journal thread's capacity (and the
    // queue's backpressure) sets the pace.
    group.bench_function("decide+log saturated", |b| {
        b.iter(|| {
            let d = make();
            db.log_decision(&catalog, &state, &context, d)
                .expect("logged");
        })
    });
    group.bench_function("read", |b| {
        b.iter(|| {
            db.store()
                .with("ada", |s| black_box(s.map(|s| s.history.events().len())))
        })
    });
    group.bench_function("read+decide", |b| {
        b.iter(|| {
            db.store().with("ada", |s| {
                let s = s.expect("ada");
                black_box(decide(
                    &catalog,
                    s,
                    &context,
                    placement,
                    NOW,
                    &Options::new(id()),
                ))
            })
        })
    });
    // The service's path: `Db::decide` reads the customer, decides and logs the decision
    // with the customer's packed record as stored; same chunking as `log`, once with the
    // quiet node and once with the journal thread writing on the other core meanwhile.
    let service_path = |db: &Db, iters: u64| {
        let mut total = std::time::Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let chunk = left.min(CHUNK);
            let started = std::time::Instant::now();
            for _ in 0..chunk {
                let options = Options::new(id());
                db.decide(
                    &db.view(),
                    Some("ada"),
                    &context,
                    placement,
                    NOW,
                    &options,
                    |_, d| black_box(d.offers.len()),
                )
                .expect("decided");
            }
            total += started.elapsed();
            db.sync().expect("drained");
            left -= chunk;
        }
        total
    };
    group.bench_function("read+decide+log busy", |b| {
        b.iter_custom(|iters| service_path(&db, iters))
    });
    group.bench_function("read+decide+log", |b| {
        b.iter_custom(|iters| service_path(&quiet, iters))
    });
    let pending =
        nextbest::journal::Entry::Decision(Box::new(nextbest::journal::PendingDecision::new(
            Arc::clone(&catalog),
            &state,
            &context.values,
            make(),
        )));
    let mut buf = Vec::new();
    group.bench_function("encode", |b| {
        b.iter(|| {
            buf.clear();
            nextbest::storage::Encode::encode(&pending, &mut buf);
            black_box(buf.len())
        })
    });
    group.finish();
    let waits = db
        .journal_stats()
        .waits
        .load(std::sync::atomic::Ordering::Relaxed);
    let records = db
        .journal_stats()
        .records
        .load(std::sync::atomic::Ordering::Relaxed);
    let bytes = db
        .journal_stats()
        .bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "journal: {records} records, {} bytes each on average; {waits} appends waited for room",
        bytes / records.max(1)
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
