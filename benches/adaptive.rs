//! One update and one prediction of the adaptive learner (`learn::adaptive`), at the
//! feature counts a model of a few customer and context attributes has: issue 20's goal
//! is an update within 2 µs. Run with `cargo bench --bench adaptive`; figures are in
//! BENCHMARKS.md.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use nextbest::learn::adaptive::Probit;

fn bench(c: &mut Criterion) {
    let model = Probit {
        forget: 1e-4,
        ..Probit::with_prior_rate(0.05)
    };
    let mut group = c.benchmark_group("adaptive");
    for active in [8usize, 32] {
        // `active` features set among 4 times as many (one-hot enums, bins).
        let mut weights = model.weights(active * 4);
        let x: Vec<(u32, f64)> = (0..active).map(|i| ((i * 4) as u32, 1.0)).collect();
        let mut positive = false;
        group.bench_with_input(BenchmarkId::new("update", active), &active, |b, _| {
            b.iter(|| {
                positive = !positive;
                model.update(&mut weights, black_box(&x), positive);
            })
        });
        group.bench_with_input(BenchmarkId::new("predict", active), &active, |b, _| {
            b.iter(|| model.predict(&weights, black_box(&x)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
