//! The eligibility index (`catalog::plan::Index`) changes what a decision visits, never
//! what it decides: on random catalogs and customers, a decision with the index and one
//! visiting every offer are equal; and a decision that explains itself (which visits
//! every offer, to say why each is ineligible) is the same decision, explained.

use proptest::prelude::*;
use uuid::Uuid;

use super::{DAY, NOW};
use crate::catalog::Catalog;
use crate::decide::{Context, Options, decide};
use crate::schema::{EventKind, Value};
use crate::state::{CustomerState, Event, History, HistoryLimits};

const SCHEMA: &str = "\
customer:
  age: { type: int }
  segment: { type: enum, values: [mass, gold, platinum] }
  region: { type: enum, values: [north, south, east, west] }
  vip: { type: bool }
  products: { type: set, default: [] }
context:
  channel: { type: enum, values: [web, email] }
";

/// The clauses rules are made of: discrete tests, a comparison, the context, and one
/// that reads history (never indexed).
const CLAUSES: [&str; 11] = [
    "customer.segment == 'gold'",
    "customer.segment in ['gold', 'platinum']",
    "customer.region == 'east'",
    "customer.region != 'north'",
    "customer.vip",
    "!customer.vip",
    "'p1' in customer.products",
    "!('p2' in customer.products)",
    "customer.age >= 30",
    "context.channel == 'web'",
    "impressions(7d) < 2",
];

fn catalog(rules: &[Vec<usize>], epsilon: f64) -> Catalog {
    let placements = "placements:\n  - { id: web, channel: web, slots: 3, one_per_group: true, experiment: x }\n";
    let experiments = format!(
        "experiments:\n  - {{ id: x, epsilon: {epsilon}, window: 1d, arms: [{{ id: champion, share: 1.0 }}] }}\n"
    );
    let mut offers = String::from("offers:\n");
    for (i, clauses) in rules.iter().enumerate() {
        offers.push_str(&format!("  - id: o{i}\n    group: g{}\n", i % 4));
        if !clauses.is_empty() {
            let rule: Vec<&str> = clauses.iter().map(|&c| CLAUSES[c]).collect();
            offers.push_str(&format!("    eligibility: \"{}\"\n", rule.join(" && ")));
        }
        offers.push_str(&format!(
            "    propensity: {}\n    value: {}\n    content: {{ web: {{ title: o{i} }} }}\n",
            0.01 + (i % 13) as f64 / 20.0,
            1 + i % 7
        ));
    }
    Catalog::from_yaml(SCHEMA, placements, &experiments, &[&offers])
        .unwrap_or_else(|e| panic!("the random catalog loads: {}", e.render()))
}

/// A customer; `None` leaves an attribute unset (its rules are then undecided).
fn customer(
    age: Option<i64>,
    segment: Option<u32>,
    region: Option<u32>,
    vip: Option<bool>,
    products: &[&str],
    impressions: &[usize],
) -> CustomerState {
    let mut history = History::default();
    for (j, offer) in impressions.iter().enumerate() {
        history.record(
            Event::new(
                NOW - (j as i64 + 1) * DAY / 4,
                &format!("o{offer}"),
                None,
                "web",
                EventKind::Impression,
            ),
            HistoryLimits::default(),
            NOW,
        );
    }
    CustomerState {
        id: Some("c".into()),
        attributes: vec![
            age.map_or(Value::Missing, Value::Int),
            segment.map_or(Value::Missing, Value::Enum),
            region.map_or(Value::Missing, Value::Enum),
            vip.map_or(Value::Missing, Value::Bool),
            Value::set(products.iter().copied()),
        ],
        history,
        seq: 0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn the_index_decides_exactly_as_visiting_every_offer(
        rules in proptest::collection::vec(
            proptest::collection::vec(0..CLAUSES.len(), 0..4), 32..100),
        epsilon in proptest::sample::select(vec![0.0, 0.3]),
        age in proptest::option::of(18i64..60),
        segment in proptest::option::of(0u32..3),
        region in proptest::option::of(0u32..4),
        vip in proptest::option::of(any::<bool>()),
        products in proptest::sample::subsequence(vec!["p1", "p2", "p3"], 0..3),
        impressions in proptest::collection::vec(0usize..32, 0..12),
        channel in 0u32..2,
        id in any::<u128>(),
    ) {
        let indexed = catalog(&rules, epsilon);
        let mut every = catalog(&rules, epsilon);
        let p = indexed.placement("web").expect("web");
        every.placements[p].plan.index = None;
        prop_assert!(
            indexed.placements[p].plan.index.is_some(),
            "a placement of 32 offers or more is indexed"
        );
        let customer = customer(age, segment, region, vip, &products, &impressions);
        let context = Context::for_placement(
            &indexed,
            p,
            vec![Value::Enum(channel)],
        );
        let quiet = Options::new(Uuid::from_u128(id));
        let with = decide(&indexed, &customer, &context, p, NOW, &quiet);
        let without = decide(&every, &customer, &context, p, NOW, &quiet);
        prop_assert_eq!(&with, &without);
        let explaining = Options { explain: true, ..quiet };
        let mut explained = decide(&indexed, &customer, &context, p, NOW, &explaining);
        prop_assert_eq!(&explained, &decide(&every, &customer, &context, p, NOW, &explaining));
        prop_assert!(explained.explanation.is_some());
        explained.explanation = None;
        prop_assert_eq!(with, explained);
    }
}
