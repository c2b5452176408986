//! The decide hot path on synthetic catalogs of 10, 100 and 1,000 offers, against a
//! hand-written baseline doing the same eligibility, cap, scoring and top-3 work on typed
//! structs, and the eligibility index on 1,000 targeted offers against 50 eligible ones.
//! Catalog compilation is outside the timed loop. Run with
//! `cargo bench --bench decide`; figures are in BENCHMARKS.md.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use nextbest::decide::synthetic::{self, NOW};
use nextbest::decide::{Context, Options, decide};
use nextbest::schema::{EventKind, Value};
use nextbest::state::CustomerState;
use uuid::Uuid;

/// The allocator the `nextbest` binary runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DAY: i64 = 86_400_000;

/// The synthetic catalog's offers as plain Rust data.
struct Offer {
    min_age: i64,
    excluded: String,
    max_risk: f64,
    value: f64,
    group: usize,
    key: u32,
}

struct Customer {
    age: i64,
    segment: u32,
    products: Vec<String>,
    churn_risk: f64,
    /// (offer key, time, kind), oldest first.
    history: Vec<(u32, i64, EventKind)>,
}

fn baseline_offers(n: usize) -> Vec<Offer> {
    (0..n)
        .map(|i| Offer {
            min_age: 18 + (i % 10) as i64,
            excluded: format!("p{}", i % 7),
            max_risk: (5 + i % 5) as f64 / 10.0,
            value: (10 + i % 90) as f64,
            group: i % 10,
            key: nextbest::schema::key(&format!("o{i}")),
        })
        .collect()
}

fn baseline_customer(state: &CustomerState) -> Customer {
    let products = match &state.attributes[2] {
        Value::Set(s) => s.iter().map(|p| p.to_string()).collect(),
        _ => Vec::new(),
    };
    Customer {
        age: 42,
        segment: 1,
        products,
        churn_risk: 0.35,
        history: state
            .history
            .events()
            .iter()
            .map(|e| (e.offer, e.at, e.kind))
            .collect(),
    }
}

/// Eligibility, a 3-in-7-days impression cap, score, and the best 3 with one per group.
fn baseline(offers: &[Offer], c: &Customer, now: i64) -> [Option<(usize, f64)>; 3] {
    let since = now - 7 * DAY;
    let mut seen: Vec<u32> = c
        .history
        .iter()
        .filter(|(_, at, k)| *k == EventKind::Impression && *at >= since)
        .map(|(o, _, _)| *o)
        .collect();
    seen.sort_unstable();
    let mut candidates: Vec<(usize, f64)> = Vec::with_capacity(offers.len());
    for (i, o) in offers.iter().enumerate() {
        let eligible = c.age >= o.min_age
            && (c.segment == 1 || c.segment == 2)
            && !c.products.contains(&o.excluded)
            && c.churn_risk < o.max_risk;
        if !eligible {
            continue;
        }
        let start = seen.partition_point(|k| *k < o.key);
        let count = seen[start..].iter().take_while(|k| **k == o.key).count();
        if count >= 3 {
            continue;
        }
        candidates.push((i, (0.05 + 0.3 * c.churn_risk) * o.value));
    }
    let mut shown: [Option<(usize, f64)>; 3] = [None; 3];
    for slot in 0..3 {
        let taken = |i: usize| {
            shown
                .iter()
                .flatten()
                .any(|(j, _)| *j == i || offers[*j].group == offers[i].group)
        };
        shown[slot] = candidates.iter().filter(|(i, _)| !taken(*i)).fold(
            None,
            |best: Option<(usize, f64)>, &(i, s)| match best {
                Some((_, b)) if b >= s => best,
                _ => Some((i, s)),
            },
        );
    }
    shown
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    for n in [10usize, 100, 1000] {
        let catalog = synthetic::catalog(n);
        let customer = synthetic::customer(n);
        let p = catalog.placement("web").expect("the synthetic placement");
        let context = Context::for_placement(&catalog, p, vec![]);
        let options = Options::new(Uuid::from_u128(1));
        let d = decide(&catalog, &customer, &context, p, NOW, &options);
        assert_eq!(d.offers.len(), 3, "{n} offers: three slots filled");

        let offers = baseline_offers(n);
        let plain = baseline_customer(&customer);
        let expected = baseline(&offers, &plain, NOW);
        assert_eq!(expected.iter().flatten().count(), 3);
        assert_eq!(d.candidates.len(), {
            // Same work: the baseline's candidates are nextbest's candidates.
            let since = NOW - 7 * DAY;
            offers
                .iter()
                .filter(|o| {
                    let seen = plain
                        .history
                        .iter()
                        .filter(|(k, at, kind)| {
                            *k == o.key && *at >= since && *kind == EventKind::Impression
                        })
                        .count();
                    plain.age >= o.min_age
                        && !plain.products.contains(&o.excluded)
                        && plain.churn_risk < o.max_risk
                        && seen < 3
                })
                .count()
        });

        group.bench_with_input(BenchmarkId::new("nextbest", n), &n, |b, _| {
            b.iter(|| {
                decide(
                    black_box(&catalog),
                    black_box(&customer),
                    black_box(&context),
                    p,
                    black_box(NOW),
                    &options,
                )
            })
        });
        group.bench_with_input(BenchmarkId::new("baseline", n), &n, |b, _| {
            b.iter(|| baseline(black_box(&offers), black_box(&plain), black_box(NOW)))
        });
    }
    group.finish();
}

/// Finding an offer by id, as every outcome and export row does: the catalog's index
/// against the linear scan it replaced, for the last offer of the catalog.
fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("offer_by_id");
    for n in [10usize, 100, 1000] {
        let catalog = synthetic::catalog(n);
        let id = catalog.offers[n - 1].id.clone();
        group.bench_with_input(BenchmarkId::new("index", n), &n, |b, _| {
            b.iter(|| black_box(&catalog).offer(black_box(&id)))
        });
        group.bench_with_input(BenchmarkId::new("scan", n), &n, |b, _| {
            b.iter(|| {
                black_box(&catalog)
                    .offers
                    .iter()
                    .position(|o| o.id == *black_box(&id))
            })
        });
    }
    group.finish();
}

/// The eligibility index: 1,000 targeted offers of which the customer meets the targeting
/// of 1 in 20 (`synthetic::targeted`), with the index and visiting every offer, against
/// the 50-offer catalog every offer of which is eligible: the goal is the 1,000 within
/// twice the 50.
fn index(c: &mut Criterion) {
    let mut group = c.benchmark_group("eligibility_index");
    let customer = synthetic::customer(1000);
    let options = Options::new(Uuid::from_u128(1));
    let without_index = |mut catalog: nextbest::catalog::Catalog| {
        for p in &mut catalog.placements {
            p.plan.index = None;
        }
        catalog
    };
    // The worst case of the index, every offer eligible: against the same without it.
    let cases = [
        ("all_eligible", 50, synthetic::catalog(50)),
        ("all_eligible", 1000, synthetic::catalog(1000)),
        (
            "all_eligible_without_index",
            1000,
            without_index(synthetic::catalog(1000)),
        ),
        ("targeted", 1000, synthetic::targeted(1000)),
        (
            "targeted_without_index",
            1000,
            without_index(synthetic::targeted(1000)),
        ),
    ];
    for (name, n, catalog) in &cases {
        let p = catalog.placement("web").expect("the synthetic placement");
        let context = Context::for_placement(catalog, p, vec![]);
        let d = decide(catalog, &customer, &context, p, NOW, &options);
        assert_eq!(d.offers.len(), 3, "{name}: three slots filled");
        group.bench_with_input(BenchmarkId::new(*name, n), n, |b, _| {
            b.iter(|| {
                decide(
                    black_box(catalog),
                    black_box(&customer),
                    black_box(&context),
                    p,
                    black_box(NOW),
                    &options,
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench, lookup, index);
criterion_main!(benches);
