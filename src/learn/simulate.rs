//! `nextbest simulate`: a scenario's customers visit the placements for its days, and
//! every visit goes through the real node: [`Db::decide`] with the real contact policies,
//! budgets and exploration, the decision journaled, an impression recorded for every
//! offer shown and an accept drawn from the scenario's true response model.

use serde::Serialize;

use super::scenario::{Scenario, draw, uniform};
use crate::db::{Db, DbError, OutcomeInput};
use crate::decide::{Context, Options};
use crate::schema::{EventKind, Value};

/// What a simulation did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub seed: u64,
    pub customers: u64,
    pub days: u64,
    pub decisions: u64,
    /// Decisions that showed nothing (suppressed by a contact policy, or no offer).
    pub empty: u64,
    pub impressions: u64,
    pub accepts: u64,
    /// The sum of the accepts' values.
    pub value: f64,
    /// The sum over impressions of their true expected value (accept probability times
    /// value): what the realised `value` scatters around.
    pub expected_value: f64,
}

/// Runs `scenario` with `seed` against `db`, deciding with its catalog.
pub fn run(
    db: &Db,
    scenario: &Scenario,
    seed: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Summary, DbError> {
    let mut summary = Summary {
        seed,
        customers: scenario.customers,
        days: scenario.days,
        ..Summary::default()
    };
    let view = db.view();
    let catalog = &view.catalog;
    let schema = &catalog.schema;
    let customer_id = |c: u64| format!("sim-{c:07}");
    for c in 0..scenario.customers {
        let values = scenario
            .customer
            .iter()
            .enumerate()
            .map(
                |(slot, dist)| match (dist, schema.customer.get(slot as u32)) {
                    (Some(dist), Some(attr)) => {
                        draw(dist, &attr.ty, seed, &attr.name, c, scenario.start)
                    }
                    _ => Value::Missing,
                },
            )
            .collect();
        db.upsert(catalog, &customer_id(c), values, scenario.start, false)?;
    }
    db.sync()?;

    const DAY: i64 = 86_400_000;
    let whole = scenario.visits_per_day.floor() as u64;
    let part = scenario.visits_per_day - whole as f64;
    let mut n = 0u64;
    for day in 0..scenario.days {
        progress(day, scenario.days);
        let day_start = scenario.start + day as i64 * DAY;
        // Who visits when and where today, in time order.
        let mut visits = Vec::new();
        for c in 0..scenario.customers {
            let key = day * scenario.customers + c;
            let count = whole + u64::from(uniform(seed, "visits", key) < part);
            for v in 0..count {
                let k = key * 64 + v;
                let at = day_start + (uniform(seed, "when", k) * DAY as f64) as i64;
                let u = uniform(seed, "where", k);
                let placement = scenario
                    .placements
                    .iter()
                    .find(|(_, cumulative)| u < *cumulative)
                    .map_or(scenario.placements[scenario.placements.len() - 1].0, |p| {
                        p.0
                    });
                visits.push((at, c, placement));
            }
        }
        visits.sort_unstable();
        for (at, c, placement) in visits {
            n += 1;
            let context = scenario
                .context
                .iter()
                .enumerate()
                .map(
                    |(slot, dist)| match (dist, schema.context.get(slot as u32)) {
                        (Some(dist), Some(attr)) => {
                            draw(dist, &attr.ty, seed, &attr.name, n, scenario.start)
                        }
                        _ => Value::Missing,
                    },
                )
                .collect();
            let context = Context::for_placement(catalog, placement, context);
            let mut random = [0u8; 10];
            random.copy_from_slice(
                &xxhash_rust::xxh3::xxh3_128_with_seed(&n.to_le_bytes(), seed).to_le_bytes()[..10],
            );
            let id = uuid::Builder::from_unix_timestamp_millis(at as u64, &random).into_uuid();
            let budgets = db.budgets(at);
            let options = Options {
                budgets: &budgets,
                ..Options::new(id)
            };
            let shown = db.decide(
                &view,
                Some(&customer_id(c)),
                &context,
                placement,
                at,
                &options,
                |state, d| {
                    d.offers
                        .iter()
                        .map(|s| {
                            let accept = scenario.accept(
                                s.offer,
                                &state.attributes,
                                &context.values,
                                at,
                                s.slot,
                            );
                            // What `Scenario::expected` gives with the value as reward.
                            let expected = accept * scenario.value(s.offer, at);
                            (s.offer, s.slot, accept, expected)
                        })
                        .collect::<Vec<_>>()
                },
            )?;
            summary.decisions += 1;
            summary.empty += u64::from(shown.is_empty());
            for (index, slot, accept, expected) in shown {
                let offer = &catalog.offers[index];
                let mut outcome = OutcomeInput {
                    decision: id,
                    offer: offer.id.clone(),
                    kind: EventKind::Impression,
                    value: None,
                    at: at + 1_000,
                    customer: None,
                    channel: None,
                };
                db.record_outcome(&outcome, outcome.at)?;
                summary.impressions += 1;
                summary.expected_value += expected;
                if uniform(seed, "accept", n * 64 + u64::from(slot)) < accept {
                    let value = scenario.value(index, at);
                    outcome.kind = EventKind::Accept;
                    outcome.value = Some(value);
                    outcome.at = at + 60_000;
                    db.record_outcome(&outcome, outcome.at)?;
                    summary.accepts += 1;
                    summary.value += value;
                }
            }
        }
    }
    progress(scenario.days, scenario.days);
    db.sync()?;
    Ok(summary)
}
