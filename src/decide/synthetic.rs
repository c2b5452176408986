//! Synthetic catalogs and customers of a given size, for benchmarks and tests that measure
//! how decide scales. Not a sample to read: `rules/` is that.

use crate::catalog::Catalog;
use crate::schema::{Event, EventKind, Value};
use crate::state::{CustomerState, History, HistoryLimits};

/// 2026-11-23T10:00:00Z, in ms.
pub const NOW: i64 = 1_795_428_000_000;
const DAY: i64 = 86_400_000;

/// The 20 customer attributes of the synthetic schema.
pub const SCHEMA: &str = "\
customer:
  age: { type: int }
  segment: { type: enum, values: [mass, gold, platinum] }
  products: { type: set, default: [] }
  churn_risk: { type: float, default: 0.1 }
  tenure_months: { type: int, default: 0 }
  income: { type: float }
  region: { type: enum, values: [north, south, east, west] }
  last_contact: { type: timestamp }
  opt_in: { type: bool, default: false }
  a10: { type: int }
  a11: { type: int }
  a12: { type: float }
  a13: { type: float }
  a14: { type: string }
  a15: { type: string }
  a16: { type: bool }
  a17: { type: int }
  a18: { type: float }
  a19: { type: int }
  a20: { type: int }
context:
  channel: { type: enum, values: [web, email, call_center] }
";

/// A catalog of `n` offers on one 3-slot web placement with exploration: each offer has a
/// four-predicate eligibility rule, a propensity expression, a value, an impression cap and
/// one of ten groups.
pub fn catalog(n: usize) -> Catalog {
    let [schema, placements, experiments, offers] = files(n);
    Catalog::from_yaml(&schema, &placements, &experiments, &[&offers])
        .unwrap_or_else(|e| panic!("the synthetic catalog loads: {}", e.render()))
}

/// A catalog of `n` targeted offers on the placement of [`catalog`]: offer `i` is for one
/// segment (`i % 3`), one region (`i / 3 % 4`) and the holders of one product
/// (`p5`..`p9`, `i / 12 % 5`), as campaigns are, besides an age and a risk test. The
/// [`customer`] (gold, east, holding `p7`..`p9`) meets the targeting of 1 in 20 (and
/// their other tests): what the eligibility index is for.
pub fn targeted(n: usize) -> Catalog {
    let [schema, placements, experiments, _] = files(0);
    let mut offers = String::from("offers:\n");
    for i in 0..n {
        offers.push_str(&format!(
            "  - id: o{i}\n    group: g{}\n    eligibility: customer.segment == '{}' && customer.region == '{}' \
             && 'p{}' in customer.products && customer.age >= {} && customer.churn_risk < 0.{}\n    \
             propensity: 0.05 + 0.3 * customer.churn_risk\n    value: {}\n    \
             contact_policy: {{ max_impressions: [{{ count: 3, within: 7d }}] }}\n    content: {{ web: {{ title: o{i} }} }}\n",
            i % 10,
            ["mass", "gold", "platinum"][i % 3],
            ["north", "south", "east", "west"][i / 3 % 4],
            5 + i / 12 % 5,
            18 + i % 10,
            5 + i % 5,
            10 + i % 90
        ));
    }
    Catalog::from_yaml(&schema, &placements, &experiments, &[&offers])
        .unwrap_or_else(|e| panic!("the targeted catalog loads: {}", e.render()))
}

/// The files of [`catalog`]`(n)` written as a rules directory (`offers/synthetic.yaml`).
pub fn write_rules(n: usize, dir: &std::path::Path) -> std::io::Result<()> {
    let [schema, placements, experiments, offers] = files(n);
    std::fs::create_dir_all(dir.join("offers"))?;
    std::fs::write(dir.join("schema.yaml"), schema)?;
    std::fs::write(dir.join("placements.yaml"), placements)?;
    std::fs::write(dir.join("experiments.yaml"), experiments)?;
    std::fs::write(dir.join("offers/synthetic.yaml"), offers)
}

/// schema.yaml, placements.yaml, experiments.yaml and the offers of [`catalog`]`(n)`.
fn files(n: usize) -> [String; 4] {
    let placements = "placements:\n  - { id: web, channel: web, slots: 3, one_per_group: true, experiment: x }\n";
    let experiments = "experiments:\n  - { id: x, epsilon: 0.1, window: 1d, arms: [{ id: champion, share: 1.0 }] }\n";
    let mut offers = String::from("offers:\n");
    for i in 0..n {
        offers.push_str(&format!(
            "  - id: o{i}\n    group: g{}\n    eligibility: customer.age >= {} && customer.segment in ['gold', 'platinum'] \
             && !('p{}' in customer.products) && customer.churn_risk < 0.{}\n    \
             propensity: 0.05 + 0.3 * customer.churn_risk\n    value: {}\n    \
             contact_policy: {{ max_impressions: [{{ count: 3, within: 7d }}] }}\n    content: {{ web: {{ title: o{i} }} }}\n",
            i % 10,
            18 + i % 10,
            i % 7,
            5 + i % 5,
            10 + i % 90
        ));
    }
    [
        SCHEMA.to_string(),
        placements.to_string(),
        experiments.to_string(),
        offers,
    ]
}

/// A customer with all 20 attributes set who passes every synthetic rule, and 50 history
/// events, two a day over the last 25 days, spread over offers `o0`..`o{n_offers}`.
pub fn customer(n_offers: usize) -> CustomerState {
    let attributes = vec![
        Value::Int(42),
        Value::Enum(1),
        Value::set(["p7", "p8", "p9"]),
        Value::Float(0.35),
        Value::Int(30),
        Value::Float(3200.0),
        Value::Enum(2),
        Value::Timestamp(NOW - 12 * DAY),
        Value::Bool(true),
        Value::Int(1),
        Value::Int(2),
        Value::Float(0.3),
        Value::Float(0.4),
        Value::Str("x".into()),
        Value::Str("y".into()),
        Value::Bool(false),
        Value::Int(7),
        Value::Float(0.5),
        Value::Int(9),
        Value::Int(10),
    ];
    let mut history = History::default();
    let limits = HistoryLimits::default();
    for j in 0..50usize {
        let offer = format!("o{}", (j * 7) % n_offers.max(1));
        let kind = if j % 5 == 4 {
            EventKind::Click
        } else {
            EventKind::Impression
        };
        let channel = if j % 2 == 0 { "web" } else { "email" };
        history.record(
            Event::new(NOW - (j as i64) * DAY / 2, &offer, None, channel, kind),
            limits,
            NOW,
        );
    }
    CustomerState {
        id: Some("customer-42".into()),
        attributes,
        history,
        seq: 0,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_customer_meets_the_targeting_of_one_targeted_offer_in_twenty() {
        let catalog = super::targeted(1000);
        let p = catalog.placement("web").expect("web");
        let context = crate::decide::Context::for_placement(&catalog, p, vec![]);
        let mut options = crate::decide::Options::new(uuid::Uuid::from_u128(1));
        options.explain = true;
        let d = crate::decide::decide(
            &catalog,
            &super::customer(1000),
            &context,
            p,
            super::NOW,
            &options,
        );
        // Capped by the history's impressions, or a candidate: past the targeting.
        let eligible = d
            .explanation
            .expect("explained")
            .iter()
            .filter(|e| !matches!(e.outcome, crate::decide::Outcome::Ineligible { .. }))
            .count();
        // Gold (1), east (2), and p7..p9.
        let targeted = (0..1000usize)
            .filter(|i| i % 3 == 1 && i / 3 % 4 == 2 && 5 + i / 12 % 5 >= 7)
            .count();
        assert_eq!(eligible, targeted);
        assert!((40..=60).contains(&targeted), "{targeted}");
        assert!(catalog.placements[p].plan.index.is_some());
    }

    #[test]
    fn the_written_rules_load_as_the_same_catalog() {
        let dir = tempfile::tempdir().expect("tempdir");
        super::write_rules(12, dir.path()).expect("write");
        let loaded = crate::catalog::Catalog::load(dir.path()).expect("loads");
        assert_eq!(loaded.offers.len(), 12);
        assert_eq!(loaded.placements.len(), 1);
    }
}
