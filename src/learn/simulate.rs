//! `nextbest simulate`: a scenario's customers visit the placements for its days, and
//! every visit goes through the real node: [`Db::decide`] with the real contact policies,
//! budgets and exploration, the decision journaled, an impression recorded for every
//! offer shown and an accept drawn from the scenario's true response model.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use super::LearnError;
use super::retrain::{Attempt, RetrainOptions, attempt};
use super::scenario::{Scenario, draw, uniform};
use crate::catalog::Catalog;
use crate::db::{Db, OutcomeInput};
use crate::decide::{Context, Decision, Options};
use crate::schema::{EventKind, Value};

const DAY: i64 = 86_400_000;

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
    /// The same figures day by day, with what the best policy could have had.
    pub per_day: Vec<Day>,
    /// Retraining attempts, when the simulation retrains.
    pub retrains: Vec<Attempt>,
}

/// One simulated day.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Day {
    pub day: u64,
    pub decisions: u64,
    pub impressions: u64,
    pub accepts: u64,
    pub value: f64,
    pub expected_value: f64,
    /// The sum over decisions of the true expected value of the best choice among the
    /// decision's candidates (every offer that passed eligibility, contact policies and
    /// budgets), slot by slot: what a policy that knew the truth would have had. The
    /// ratio `expected_value / best_value` is how close the policy came.
    pub best_value: f64,
    /// The catalog version the day was decided with.
    pub catalog: String,
    /// Impressions by offer id.
    pub shown: std::collections::BTreeMap<String, u64>,
}

/// Retraining during a simulation: every `every_days` days (from the first such day on),
/// an [`attempt`] on the journal so far, taken into the node when it passes.
#[derive(Debug, Clone)]
pub struct Retraining {
    pub every_days: u64,
    pub options: RetrainOptions,
    /// The rules directory the simulation starts with.
    pub rules: PathBuf,
    /// Where the candidates are written (one directory each).
    pub work: PathBuf,
}

/// Runs `scenario` with `seed` against `db`, deciding with its catalog.
pub fn run(
    db: &Db,
    scenario: &Scenario,
    seed: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Summary, LearnError> {
    run_with(db, scenario, seed, None, progress)
}

/// As [`run`], retraining as `retraining` says.
pub fn run_with(
    db: &Db,
    scenario: &Scenario,
    seed: u64,
    retraining: Option<&Retraining>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Summary, LearnError> {
    let mut summary = Summary {
        seed,
        customers: scenario.customers,
        days: scenario.days,
        ..Summary::default()
    };
    let mut rules = retraining.map(|r| r.rules.clone());
    let first = db.view();
    let catalog = &first.catalog;
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

    let whole = scenario.visits_per_day.floor() as u64;
    let part = scenario.visits_per_day - whole as f64;
    let mut n = 0u64;
    for day in 0..scenario.days {
        progress(day, scenario.days);
        let day_start = scenario.start + day as i64 * DAY;
        if let (Some(r), Some(running)) = (retraining, &rules)
            && day > 0
            && day.is_multiple_of(r.every_days)
        {
            db.sync()?;
            let out = r.work.join(format!("day{day:03}"));
            let a = attempt(db.data_dir(), running, &out, day_start, &r.options)?;
            if a.taken {
                let candidate = Catalog::load(&out).map_err(LearnError::Catalog)?;
                db.set_catalog(Arc::new(candidate));
                rules = Some(out);
            }
            summary.retrains.push(a);
        }
        // The catalog in force today (a retrained one from the day it was taken).
        let view = db.view();
        let catalog = &view.catalog;
        let mut today = Day {
            day,
            catalog: catalog.version.to_string(),
            ..Day::default()
        };
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
                    let best =
                        best_value(scenario, catalog, d, &state.attributes, &context.values, at);
                    let shown = d
                        .offers
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
                        .collect::<Vec<_>>();
                    (shown, best)
                },
            )?;
            let (shown, best) = shown;
            summary.decisions += 1;
            summary.empty += u64::from(shown.is_empty());
            today.decisions += 1;
            let expected: f64 = shown.iter().map(|s| s.3).sum();
            today.best_value += best.max(expected);
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
                today.impressions += 1;
                today.expected_value += expected;
                *today.shown.entry(offer.id.clone()).or_default() += 1;
                if uniform(seed, "accept", n * 64 + u64::from(slot)) < accept {
                    let value = scenario.value(index, at);
                    outcome.kind = EventKind::Accept;
                    outcome.value = Some(value);
                    outcome.at = at + 60_000;
                    db.record_outcome(&outcome, outcome.at)?;
                    summary.accepts += 1;
                    summary.value += value;
                    today.accepts += 1;
                    today.value += value;
                }
            }
        }
        summary.per_day.push(today);
    }
    progress(scenario.days, scenario.days);
    db.sync()?;
    Ok(summary)
}

/// The true expected value of the best choice a decision could have made: its candidates
/// ranked by their true expected value, one per slot of the placement (one per group
/// where the placement says so), each in the slot it would take.
fn best_value(
    scenario: &Scenario,
    catalog: &Catalog,
    d: &Decision,
    customer: &[Value],
    context: &[Value],
    at: i64,
) -> f64 {
    let p = &catalog.placements[d.placement];
    let mut ranked: Vec<(f64, usize, u32)> = d
        .candidates
        .iter()
        .map(|c| {
            let ev =
                scenario.accept(c.offer, customer, context, at, 0) * scenario.value(c.offer, at);
            (ev, c.offer, c.group)
        })
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut groups = Vec::new();
    let mut total = 0.0;
    let mut slot = 0u32;
    for (_, offer, group) in ranked {
        if slot >= p.slots {
            break;
        }
        if p.one_per_group && group != 0 {
            if groups.contains(&group) {
                continue;
            }
            groups.push(group);
        }
        total += scenario.accept(offer, customer, context, at, slot) * scenario.value(offer, at);
        slot += 1;
    }
    total
}
