//! One update and one prediction of the adaptive learner (`adaptive::learner`), at the
//! feature counts a model of a few customer and context attributes has: issue 20's goal
//! is an update within 2 µs. And one decision over offers whose propensities are an
//! adaptive model against the same catalog with fixed formulas reading the same
//! attributes: the goal is within 1.5 times. Run with `cargo bench --bench adaptive`;
//! figures are in BENCHMARKS.md.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use nextbest::adaptive::Probit;
use nextbest::catalog::{Catalog, SourceFile, Sources};
use nextbest::decide::{Context, Options, decide};
use nextbest::schema::Value;
use nextbest::state::CustomerState;

const SCHEMA: &str = "\
customer:
  segment: { type: enum, values: [mass, gold, premium], default: mass }
  plan: { type: enum, values: [prepaid, basic, plus, unlimited] }
  tenure: { type: int }
  spend: { type: float }
  products: { type: set, default: [] }
context:
  channel: { type: enum, values: [web] }
  device: { type: enum, values: [desktop, mobile, tablet] }
";

const MODELS: &str = "\
models:
  - id: response
    predictors:
      - customer.segment
      - customer.plan
      - { attribute: customer.tenure, bins: [6, 12, 24, 48] }
      - { attribute: customer.spend, bins: [20, 40, 80] }
      - { attribute: customer.products, members: [tv, broadband] }
      - context.device
    positive: [accept]
    window: 7d
    prior: 0.05
";

/// A catalog of `n` offers in one placement, offer `i`'s propensity `propensity(i)`.
fn catalog(n: usize, propensity: impl Fn(usize) -> String) -> Catalog {
    let mut offers = String::from("offers:\n");
    for i in 0..n {
        offers.push_str(&format!(
            "  - id: o{i}\n    propensity: \"{}\"\n    value: {}\n    content: {{ banner: {{ title: T }} }}\n",
            propensity(i),
            10 + i
        ));
    }
    let file = |path: &str, text: &str| SourceFile {
        path: path.into(),
        text: text.into(),
    };
    Catalog::from_sources(Sources {
        schema: Some(file("schema.yaml", SCHEMA)),
        placements: Some(file(
            "placements.yaml",
            "placements:\n  - { id: banner, channel: web, slots: 1, experiment: e }\n",
        )),
        experiments: Some(file(
            "experiments.yaml",
            "experiments:\n  - { id: e, epsilon: 0.1 }\n",
        )),
        models: Some(file("models.yaml", MODELS)),
        offers: vec![file("offers/0.yaml", &offers)],
    })
    .unwrap_or_else(|e| panic!("{}", e.render()))
}

fn decisions(c: &mut Criterion) {
    // The fixed formulas read the same attributes as the model (segment, plan, tenure,
    // spend, products and device), each offer's its own, as trained ones are (a formula
    // several offers share word for word is evaluated once a decision).
    let fixed = |i: usize| {
        format!(
            "0.02 + (customer.segment == 'gold' ? 0.03 : 0.0) + (customer.plan == 'plus' ? 0.01 : 0.0) \
             + 0.001 * min(customer.tenure, 48) + 0.0002 * min(customer.spend, 80) \
             + ('tv' in customer.products ? 0.02 : 0.0) + (context.device == 'mobile' ? 0.01 : 0.0) + 0.000{i}"
        )
    };
    let adaptive = |_: usize| "adaptive('response')".to_string();
    let customer = CustomerState {
        id: Some("c1".into()),
        attributes: vec![
            Value::Enum(1),
            Value::Enum(2),
            Value::Int(30),
            Value::Float(55.0),
            Value::set(["tv"]),
        ],
        ..Default::default()
    };
    let mut group = c.benchmark_group("decide_adaptive");
    for n in [10usize, 50] {
        let kinds: [(&str, &dyn Fn(usize) -> String); 2] =
            [("fixed", &fixed), ("adaptive", &adaptive)];
        for (name, propensity) in kinds {
            let catalog = catalog(n, propensity);
            let p = catalog.placement("banner").expect("placement");
            let context = Context::for_placement(&catalog, p, vec![Value::Missing, Value::Enum(1)]);
            let options = Options::new(uuid::Uuid::nil());
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    decide(
                        &catalog,
                        black_box(&customer),
                        &context,
                        p,
                        1_795_428_000_000,
                        &options,
                    )
                })
            });
        }
    }
    group.finish();
}

fn bench(c: &mut Criterion) {
    let model = Probit {
        forget: 1e-4,
        ..Probit::with_prior_rate_for(0.05, 8)
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

criterion_group!(benches, bench, decisions);
criterion_main!(benches);
