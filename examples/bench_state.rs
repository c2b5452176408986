//! Memory and restart figures for BENCHMARKS.md: a data directory with N customers of 20
//! attributes and 20 history events each on the sample catalog.
//!
//! ```text
//! cargo run --release --example bench_state -- fill DIR [N]   # build, snapshot, print RSS
//! cargo run --release --example bench_state -- restart DIR    # reopen, print time and RSS
//! cargo run --release --example bench_state -- relayout DIR   # swap in a catalog with a new
//!                                                              # attribute while deciding
//! cargo run --release --example bench_state -- remember DIR [N [BOUND]]
//!                               # reopen, decide N times remembering up to BOUND decisions,
//!                               # print RSS as they accumulate, then the peak a
//!                               # snapshot of them all adds
//! ```
//! `remember` appends its decisions to DIR's journal, which the next open replays: run it
//! on a copy of a filled directory.
//! Run each phase in its own process so RSS is that of one store, not of two.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use nextbest::catalog::Catalog;
use nextbest::db::{Db, DbOptions};
use nextbest::schema::{AttrType, Event, EventKind, Value};
use nextbest::state::{CustomerState, History, HistoryLimits};

/// The allocator the `nextbest` binary runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const START: i64 = 1_795_428_000_000;

/// Resident set size of this process, from /proc (Linux), in MB.
fn rss_mb() -> f64 {
    status_mb("VmRSS:")
}

/// The highest resident set size this process has had, in MB.
fn peak_mb() -> f64 {
    status_mb("VmHWM:")
}

fn status_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn catalog() -> anyhow::Result<Arc<Catalog>> {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    Ok(Arc::new(
        Catalog::load(&rules).map_err(|e| anyhow::anyhow!("{}", e.render()))?,
    ))
}

fn mix(n: u64, what: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(&n.to_le_bytes(), what)
}

/// Customer `n`: the first 20 attributes of the sample schema, 20 events.
fn customer(catalog: &Catalog, n: u64) -> CustomerState {
    let schema = &catalog.schema.customer;
    let mut attributes = vec![Value::Missing; schema.len()];
    for (slot, attr) in schema.attributes().iter().enumerate().take(20) {
        let h = mix(n, slot as u64);
        attributes[slot] = match &attr.ty {
            AttrType::Bool => Value::Bool(h & 1 == 1),
            AttrType::Int => Value::Int((h % 100) as i64),
            AttrType::Float => Value::Float((h % 10_000) as f64 / 100.0),
            AttrType::String => Value::Str("en".into()),
            AttrType::Enum(def) => Value::Enum((h % def.variants.len() as u64) as u32),
            AttrType::Set => Value::set(["mobile", "broadband"].into_iter().take((h % 3) as usize)),
            AttrType::Timestamp => Value::Timestamp(START - (h % 10_000_000_000) as i64),
        };
    }
    let mut history = History::default();
    let offers = &catalog.offers;
    for e in 0..20u64 {
        let h = mix(n, 100 + e);
        let offer = &offers[(h % offers.len() as u64) as usize];
        history.record(
            Event {
                at: START - (h % (30 * 86_400_000)) as i64,
                offer: offer.key,
                group: offer.group_key,
                channel: nextbest::schema::key(
                    ["web", "email", "app", "call_center"][(h % 4) as usize],
                ),
                kind: EventKind::ALL[(h % 5) as usize],
            },
            HistoryLimits::default(),
            START,
        );
    }
    CustomerState {
        // Named as `nextbest loadgen` names customers, so its requests find them.
        id: Some(format!("c{n}")),
        attributes,
        history,
        seq: 0,
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(phase), Some(dir)) = (args.first(), args.get(1)) else {
        anyhow::bail!("usage: bench_state fill|restart|relayout|remember DIR [N]");
    };
    let dir = Path::new(dir);
    let catalog = catalog()?;
    match phase.as_str() {
        "fill" => {
            let n: u64 = args
                .get(2)
                .map(|s| s.parse())
                .transpose()?
                .unwrap_or(1_000_000);
            let base = rss_mb();
            let (db, _) = Db::open(dir, Arc::clone(&catalog), DbOptions::default())?;
            let started = Instant::now();
            for i in 0..n {
                let c = customer(&catalog, i);
                db.store().insert(c.id.as_deref().unwrap_or_default(), &c);
            }
            let filled = started.elapsed();
            let rss = rss_mb();
            let started = Instant::now();
            let done = db.compact(START)?;
            let snapshot = std::fs::metadata(&done.snapshot)?.len();
            println!(
                "fill: {n} customers in {filled:.2?}; RSS {rss:.0} MB ({:.0} bytes/customer over a {base:.0} MB baseline); \
                 snapshot {:.0} MB written in {:.2?}",
                (rss - base) * 1024.0 * 1024.0 / n as f64,
                snapshot as f64 / 1e6,
                started.elapsed()
            );
            db.close()?;
        }
        "restart" => {
            let base = rss_mb();
            let started = Instant::now();
            let (db, recovery) = Db::open(dir, catalog, DbOptions::default())?;
            let elapsed = started.elapsed();
            let rss = rss_mb();
            println!(
                "restart: ready to serve {} customers in {elapsed:.2?}; RSS {rss:.0} MB ({:.0} bytes/customer); {recovery}",
                db.store().len(),
                (rss - base) * 1024.0 * 1024.0 / db.store().len().max(1) as f64,
            );
        }
        "relayout" => relayout(dir, catalog)?,
        "remember" => {
            let n: u64 = args
                .get(2)
                .map(|s| s.parse())
                .transpose()?
                .unwrap_or(999_999);
            let bound: Option<usize> = args.get(3).map(|s| s.parse()).transpose()?;
            remember(dir, catalog, n, bound)?
        }
        other => anyhow::bail!("unknown phase `{other}`: fill, restart, relayout or remember"),
    }
    Ok(())
}

/// Decides `n` times over the stored customers in turn, each decision remembered for the
/// outcomes that may name it up to `bound` (the default, a million, holds all of 999,999;
/// a bound of 2 measures the same work remembering nothing), and prints RSS as they
/// accumulate.
fn remember(dir: &Path, catalog: Arc<Catalog>, n: u64, bound: Option<usize>) -> anyhow::Result<()> {
    let defaults = DbOptions::default();
    let options = DbOptions {
        remembered_decisions: bound.unwrap_or(defaults.remembered_decisions),
        ..defaults
    };
    let bound = options.remembered_decisions;
    let (db, _) = Db::open(dir, catalog, options)?;
    let customers = db.store().len() as u64;
    anyhow::ensure!(
        customers > 0,
        "no customers in {}: run `fill` first",
        dir.display()
    );
    let view = db.view();
    let placement = view
        .catalog
        .placement("web.home_banner")
        .expect("placement");
    let context = nextbest::decide::Context::for_placement(&view.catalog, placement, vec![]);
    let report = |made: u64| {
        println!(
            "remember: {customers} customers, {made} decisions made (remembering up to {bound}): RSS {:.0} MB",
            rss_mb()
        )
    };
    report(0);
    let started = Instant::now();
    for i in 0..n {
        let id = format!("c{}", i % customers);
        let options = nextbest::decide::Options::new(nextbest::db::decision_id(START));
        db.decide(
            &view,
            Some(&id),
            &context,
            placement,
            START,
            &options,
            |_, d| d.offers.len(),
        )?;
        // Bound the journal's queue (up to 65,536 decision records of ~2 KB, whose
        // memory the allocator keeps): what is measured is what stays.
        if (i + 1) % 1000 == 0 {
            db.sync()?;
        }
        if i + 1 == n / 2 {
            report(i + 1);
        }
    }
    let elapsed = started.elapsed();
    db.sync()?;
    report(n);
    println!("remember: {n} decisions in {elapsed:.2?}");
    // A snapshot with every decision remembered: what it adds to the peak.
    let before = peak_mb();
    let started = Instant::now();
    db.compact(START)?;
    println!(
        "remember: snapshot in {:.2?}; peak RSS {before:.0} MB before it, {:.0} MB after; RSS {:.0} MB",
        started.elapsed(),
        peak_mb(),
        rss_mb()
    );
    Ok(())
}

/// The sample rules with one more customer attribute, first (every slot moves), in `dir`.
fn with_new_attribute(dir: &Path) -> anyhow::Result<Arc<Catalog>> {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    std::fs::create_dir_all(dir.join("offers"))?;
    for name in ["placements.yaml", "experiments.yaml"] {
        std::fs::copy(rules.join(name), dir.join(name))?;
    }
    for entry in std::fs::read_dir(rules.join("offers"))? {
        let path = entry?.path();
        std::fs::copy(
            &path,
            dir.join("offers")
                .join(path.file_name().unwrap_or_default()),
        )?;
    }
    let schema = std::fs::read_to_string(rules.join("schema.yaml"))?;
    std::fs::write(
        dir.join("schema.yaml"),
        schema.replacen(
            "customer:\n",
            "customer:\n  loyalty_points:\n    type: int\n",
            1,
        ),
    )?;
    Ok(Arc::new(
        Catalog::load(dir).map_err(|e| anyhow::anyhow!("{}", e.render()))?,
    ))
}

/// Reopens `dir`, then swaps in a catalog with a new attribute while one thread decides
/// for stored customers without pause, and another upserts stored customers: how long the
/// copy took, how long writes were held back, what decisions saw.
fn relayout(dir: &Path, catalog: Arc<Catalog>) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (db, _) = Db::open(dir, catalog, DbOptions::default())?;
    let rules = tempfile::tempdir()?;
    let changed = with_new_attribute(rules.path())?;
    let before = rss_mb();
    let swapping = AtomicBool::new(true);
    let customers = db.store().len() as u64;
    let (relayout, latencies, writes, peak) = std::thread::scope(|scope| {
        let decider = scope.spawn(|| {
            let mut latencies = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
            let mut n = 0u64;
            while swapping.load(Ordering::Relaxed) {
                let view = db.view();
                let placement = view
                    .catalog
                    .placement("web.home_banner")
                    .expect("placement");
                let context =
                    nextbest::decide::Context::for_placement(&view.catalog, placement, vec![]);
                let id = format!("c{}", mix(n, 7) % customers.max(1));
                let started = Instant::now();
                let _ = db.decide(
                    &view,
                    Some(&id),
                    &context,
                    placement,
                    START,
                    &nextbest::decide::Options::new(nextbest::db::decision_id(START)),
                    |_, d| d.offers.len(),
                );
                let _ = latencies.record(started.elapsed().as_nanos() as u64);
                n += 1;
            }
            latencies
        });
        let writer = scope.spawn(|| {
            let mut latencies = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
            let mut n = 0u64;
            while swapping.load(Ordering::Relaxed) {
                let catalog = db.catalog();
                let schema = &catalog.schema.customer;
                let mut values = vec![Value::Missing; schema.len()];
                values[schema.slot("age").expect("age") as usize] = Value::Int((n % 90) as i64);
                let id = format!("c{}", mix(n, 9) % customers.max(1));
                let started = Instant::now();
                db.upsert(&catalog, &id, values, START, false)
                    .expect("upsert");
                let _ = latencies.record(started.elapsed().as_nanos() as u64);
                n += 1;
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
            latencies
        });
        let sampler = scope.spawn(|| {
            let mut peak = 0f64;
            while swapping.load(Ordering::Relaxed) {
                peak = peak.max(rss_mb());
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            peak
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        let relayout = db.set_catalog(changed);
        std::thread::sleep(std::time::Duration::from_millis(200));
        swapping.store(false, Ordering::Relaxed);
        (
            relayout,
            decider.join().expect("decider"),
            writer.join().expect("writer"),
            sampler.join().expect("sampler"),
        )
    });
    println!(
        "relayout: {} customers carried over to a new attribute layout in {:.2?}; {} written \
         meanwhile taken again, writes held back {:.2?}; \
         {} values dropped; RSS {before:.0} MB before, {peak:.0} MB at the peak, {:.0} MB after; \
         {} decisions meanwhile on the other core: p50 {:.1} µs, p99 {:.1} µs, max {:.1} ms; \
         {} upserts (one per 100 µs): p99 {:.1} µs, max {:.1} ms",
        relayout.customers,
        relayout.copied,
        relayout.taken_again,
        relayout.paused,
        relayout.dropped_values,
        rss_mb(),
        latencies.len(),
        latencies.value_at_quantile(0.5) as f64 / 1e3,
        latencies.value_at_quantile(0.99) as f64 / 1e3,
        latencies.max() as f64 / 1e6,
        writes.len(),
        writes.value_at_quantile(0.99) as f64 / 1e3,
        writes.max() as f64 / 1e6,
    );
    Ok(())
}
