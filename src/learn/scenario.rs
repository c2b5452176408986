//! A simulated world: a population drawn from attribute distributions, traffic over the
//! placements, and a hidden true response model, written in YAML (`scenarios/`).
//!
//! The true probability that a customer accepts an offer is a rule-language formula over
//! `customer.*` and `context.*` (so it can differ per channel), compiled against the
//! catalog's schema like any propensity; a slot below the first is accepted
//! `position_decay` times as often per slot. Every draw is a hash of the seed and what is
//! drawn, so a scenario and a seed give the same world every time.

use std::collections::HashMap;
use std::path::Path;

use marked_yaml::Spanned;
use serde::Deserialize;

use crate::catalog::Catalog;
use crate::expr::{Env, Formula};
use crate::schema::{AttrType, EntitySchema, Value};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    customers: u64,
    days: u64,
    /// RFC 3339; the first simulated day starts here.
    start: Spanned<String>,
    /// Visits per customer per day, over all placements.
    visits_per_day: f64,
    /// Each placement's share of the visits.
    placements: HashMap<Spanned<String>, f64>,
    #[serde(default = "one")]
    position_decay: f64,
    #[serde(default)]
    attributes: HashMap<Spanned<String>, Dist>,
    #[serde(default)]
    context: HashMap<Spanned<String>, Dist>,
    responses: HashMap<Spanned<String>, Response>,
}

const DAY: i64 = 86_400_000;

fn one() -> f64 {
    1.0
}

/// How one attribute is drawn.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Dist {
    /// A number uniform in [low, high) (rounded down for an int attribute).
    Uniform([f64; 2]),
    /// A normal number, clamped to [min, max].
    Normal {
        mean: f64,
        sd: f64,
        #[serde(default = "neg_inf")]
        min: f64,
        #[serde(default = "inf")]
        max: f64,
    },
    /// An enum variant (or a string) with the given weights.
    Choice(HashMap<String, f64>),
    /// `true` with this probability.
    Bool(f64),
    /// Each member independently with its probability.
    Set(HashMap<String, f64>),
    /// A timestamp uniform within [low, high) days from the start of the simulation.
    Days([f64; 2]),
}

fn neg_inf() -> f64 {
    f64::NEG_INFINITY
}
fn inf() -> f64 {
    f64::INFINITY
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Response {
    /// The probability of accepting the offer when shown in the first slot.
    accept: Spanned<String>,
    /// The value of an accept (the outcome's `value`); 1 if not given.
    #[serde(default = "one")]
    value: f64,
    /// Drift: the truth from a given day on, in day order.
    #[serde(default)]
    changes: Vec<Change>,
}

/// A change of an offer's truth (drift), from the start of day `day` (0 is the first
/// simulated day) to the end of the run or the next change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    day: Spanned<u64>,
    accept: Spanned<String>,
    /// The value of an accept from then on; unchanged if not given.
    value: Option<f64>,
}

/// One offer's true response: `accept` and `value` until the first of `changes`.
#[derive(Debug)]
pub struct Truth {
    pub accept: Formula,
    pub value: f64,
    /// From this time on (ms), this accept probability and value.
    pub changes: Vec<(i64, Formula, f64)>,
}

impl Truth {
    /// The accept formula and value in force at `now`.
    pub fn at(&self, now: i64) -> (&Formula, f64) {
        self.changes
            .iter()
            .rev()
            .find(|(from, _, _)| now >= *from)
            .map_or((&self.accept, self.value), |(_, accept, value)| {
                (accept, *value)
            })
    }
}

/// A compiled scenario, against one catalog's schema.
#[derive(Debug)]
pub struct Scenario {
    pub customers: u64,
    pub days: u64,
    pub start: i64,
    pub visits_per_day: f64,
    /// Placement index and cumulative share, in placement order.
    pub placements: Vec<(usize, f64)>,
    pub position_decay: f64,
    /// Per customer (then context) slot: how it is drawn, if at all.
    pub customer: Vec<Option<Dist>>,
    pub context: Vec<Option<Dist>>,
    /// Per offer of the catalog, in catalog order.
    pub truth: Vec<Truth>,
    /// Per offer: whether the scenario named it (the others use `default`).
    pub named: Vec<bool>,
}

/// A scenario file that cannot be used, with the place to look.
#[derive(Debug, thiserror::Error)]
#[error("{path}:{line}:{column}: {message}")]
pub struct ScenarioError {
    pub path: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

fn at<T>(path: &Path, s: &Spanned<T>, message: String) -> ScenarioError {
    let (line, column) = s.span().start().map_or((1, 1), |m| (m.line(), m.column()));
    ScenarioError {
        path: path.display().to_string(),
        line,
        column,
        message,
    }
}

fn check_dist(name: &str, dist: &Dist, ty: &AttrType) -> Result<(), String> {
    let fits = match dist {
        Dist::Uniform([a, b]) => matches!(ty, AttrType::Int | AttrType::Float) && a < b,
        Dist::Normal { sd, min, max, .. } => {
            matches!(ty, AttrType::Int | AttrType::Float) && *sd >= 0.0 && min <= max
        }
        Dist::Choice(weights) => {
            if let AttrType::Enum(def) = ty
                && let Some(bad) = weights.keys().find(|v| def.index_of(v).is_none())
            {
                return Err(format!("`{name}` has no variant `{bad}`"));
            }
            matches!(ty, AttrType::Enum(_) | AttrType::String)
                && weights.values().all(|w| *w >= 0.0)
                && weights.values().sum::<f64>() > 0.0
        }
        Dist::Bool(p) => matches!(ty, AttrType::Bool) && (0.0..=1.0).contains(p),
        Dist::Set(members) => {
            matches!(ty, AttrType::Set) && members.values().all(|p| (0.0..=1.0).contains(p))
        }
        Dist::Days([a, b]) => matches!(ty, AttrType::Timestamp) && a < b,
    };
    if fits {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is {}: this distribution does not fit it (or its parameters are out of range)",
            ty.name()
        ))
    }
}

fn dists(
    path: &Path,
    entity: &str,
    schema: &EntitySchema,
    given: &HashMap<Spanned<String>, Dist>,
) -> Result<Vec<Option<Dist>>, ScenarioError> {
    let mut out = vec![None; schema.len()];
    for (name, dist) in given {
        let Some(slot) = schema.slot(name) else {
            return Err(at(
                path,
                name,
                format!("the schema has no attribute `{entity}.{}`", &**name),
            ));
        };
        let ty = &schema.get(slot).expect("slot of the schema").ty;
        check_dist(&format!("{entity}.{}", &**name), dist, ty).map_err(|m| at(path, name, m))?;
        out[slot as usize] = Some(dist.clone());
    }
    Ok(out)
}

impl Scenario {
    /// Reads and compiles the scenario in `path` against `catalog`.
    pub fn load(path: &Path, catalog: &Catalog) -> Result<Scenario, ScenarioError> {
        let whole = |message: String| ScenarioError {
            path: path.display().to_string(),
            line: 1,
            column: 1,
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| whole(format!("cannot read: {e}")))?;
        let file: File = marked_yaml::from_yaml(0, &text).map_err(|e| {
            let marker = match &e {
                marked_yaml::FromYamlError::ParseYaml(p) => {
                    use marked_yaml::LoadError as L;
                    match p {
                        L::TopLevelMustBeMapping(m)
                        | L::TopLevelMustBeSequence(m)
                        | L::UnexpectedAnchor(m)
                        | L::MappingKeyMustBeScalar(m)
                        | L::UnexpectedTag(m)
                        | L::ScanError(m, _) => Some((m.line(), m.column())),
                        _ => None,
                    }
                }
                marked_yaml::FromYamlError::FromNode(n) => {
                    n.start_mark().map(|m| (m.line(), m.column()))
                }
            };
            let (line, column) = marker.unwrap_or((1, 1));
            ScenarioError {
                path: path.display().to_string(),
                line,
                column,
                message: e.to_string(),
            }
        })?;
        let start = file
            .start
            .parse::<jiff::Timestamp>()
            .map_err(|e| {
                at(
                    path,
                    &file.start,
                    format!("`start` is not an RFC 3339 time: {e}"),
                )
            })?
            .as_millisecond();
        if file.customers == 0
            || file.days == 0
            || file.visits_per_day.is_nan()
            || file.visits_per_day <= 0.0
        {
            return Err(whole(
                "`customers`, `days` and `visits_per_day` must be positive".into(),
            ));
        }
        if !(0.0..=1.0).contains(&file.position_decay) {
            return Err(whole("`position_decay` must be within [0, 1]".into()));
        }
        let mut placements = Vec::new();
        for (id, share) in &file.placements {
            let Some(p) = catalog.placement(id) else {
                return Err(at(
                    path,
                    id,
                    format!("the catalog has no placement `{}`", &**id),
                ));
            };
            if share.is_nan() || *share <= 0.0 {
                return Err(at(
                    path,
                    id,
                    format!("the share of `{}` must be positive", &**id),
                ));
            }
            placements.push((p, *share));
        }
        if placements.is_empty() {
            return Err(whole("`placements` names no placement".into()));
        }
        placements.sort_by_key(|p| p.0);
        let total: f64 = placements.iter().map(|p| p.1).sum();
        let mut cumulative = 0.0;
        for p in &mut placements {
            cumulative += p.1 / total;
            p.1 = cumulative;
        }
        let customer = dists(path, "customer", &catalog.schema.customer, &file.attributes)?;
        let context = dists(path, "context", &catalog.schema.context, &file.context)?;

        for id in file.responses.keys() {
            if **id != "default" && catalog.offer(id).is_none() {
                return Err(at(
                    path,
                    id,
                    format!("the catalog has no offer `{}`", &**id),
                ));
            }
        }
        let formula = |id: &Spanned<String>, accept: &Spanned<String>| {
            Formula::compile(accept, &catalog.schema, "accept", false).map_err(|errors| {
                let message = errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
                at(path, accept, format!("`accept` of `{}`: {message}", &**id))
            })
        };
        let compile = |id: &Spanned<String>, response: &Response| {
            let mut changes = Vec::with_capacity(response.changes.len());
            let (mut after, mut value) = (0, response.value);
            for change in &response.changes {
                let day = *change.day;
                if day <= after || day >= file.days {
                    return Err(at(
                        path,
                        &change.day,
                        format!(
                            "a change of `{}` on day {day}: changes come in day order, after day 0 and before day {} (the scenario's `days`)",
                            &**id, file.days
                        ),
                    ));
                }
                after = day;
                value = change.value.unwrap_or(value);
                let from = start
                    .saturating_add(i64::try_from(day).unwrap_or(i64::MAX).saturating_mul(DAY));
                changes.push((from, formula(id, &change.accept)?, value));
            }
            Ok::<_, ScenarioError>(Truth {
                accept: formula(id, &response.accept)?,
                value: response.value,
                changes,
            })
        };
        let mut truth = Vec::with_capacity(catalog.offers.len());
        let mut named = Vec::with_capacity(catalog.offers.len());
        for offer in &catalog.offers {
            let given = file.responses.get_key_value(offer.id.as_str());
            named.push(given.is_some());
            let Some((id, response)) = given.or_else(|| file.responses.get_key_value("default"))
            else {
                return Err(whole(format!(
                    "`responses` says nothing of offer `{}`: add it or a `default`",
                    offer.id
                )));
            };
            truth.push(compile(id, response)?);
        }
        Ok(Scenario {
            customers: file.customers,
            days: file.days,
            start,
            visits_per_day: file.visits_per_day,
            placements,
            position_decay: file.position_decay,
            customer,
            context,
            truth,
            named,
        })
    }

    /// The true probability that `offer` is accepted in slot `slot`.
    pub fn accept(
        &self,
        offer: usize,
        customer: &[Value],
        context: &[Value],
        now: i64,
        slot: u32,
    ) -> f64 {
        let env = Env::new(customer, context, &[], now);
        let p = self.truth[offer].at(now).0.eval(&env).unwrap_or(0.0);
        (p * self.position_decay.powi(slot as i32)).clamp(0.0, 1.0)
    }

    /// What an accept of `offer` at `now` is worth.
    pub fn value(&self, offer: usize, now: i64) -> f64 {
        self.truth[offer].at(now).1
    }

    /// The true expected reward of showing `offer` in `slot`: the accept probability, times
    /// the accept's value when the reward is the value.
    pub fn expected(
        &self,
        offer: usize,
        customer: &[Value],
        context: &[Value],
        now: i64,
        slot: u32,
        value: bool,
    ) -> f64 {
        let p = self.accept(offer, customer, context, now, slot);
        if value { p * self.value(offer, now) } else { p }
    }
}

/// A uniform draw in [0, 1) from a hash of the seed and what is drawn.
pub fn uniform(seed: u64, what: &str, n: u64) -> f64 {
    let mut key = Vec::with_capacity(what.len() + 8);
    key.extend_from_slice(what.as_bytes());
    key.extend_from_slice(&n.to_le_bytes());
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(&key, seed);
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Draws one value of `dist` for an attribute of type `ty` (`what` names the draw).
pub fn draw(dist: &Dist, ty: &AttrType, seed: u64, what: &str, n: u64, start: i64) -> Value {
    let u = |k: &str| uniform(seed, &format!("{what}/{k}"), n);
    let number = |x: f64| match ty {
        AttrType::Int => Value::Int(x.floor() as i64),
        _ => Value::Float(x),
    };
    match dist {
        Dist::Uniform([a, b]) => number(a + (b - a) * u("u")),
        Dist::Normal { mean, sd, min, max } => {
            // Box-Muller.
            let (u1, u2) = (u("n1").max(1e-300), u("n2"));
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            number((mean + sd * z).clamp(*min, *max))
        }
        Dist::Choice(weights) => {
            let mut names: Vec<_> = weights.iter().collect();
            names.sort_by(|a, b| a.0.cmp(b.0));
            let total: f64 = names.iter().map(|(_, w)| **w).sum();
            let mut x = u("c") * total;
            let mut chosen = names[names.len() - 1].0;
            for (name, w) in &names {
                if x < **w {
                    chosen = name;
                    break;
                }
                x -= **w;
            }
            match ty {
                AttrType::Enum(def) => def.index_of(chosen).map_or(Value::Missing, Value::Enum),
                _ => Value::Str(chosen.as_str().into()),
            }
        }
        Dist::Bool(p) => Value::Bool(u("b") < *p),
        Dist::Set(members) => {
            let mut names: Vec<_> = members.iter().collect();
            names.sort_by(|a, b| a.0.cmp(b.0));
            Value::set(
                names
                    .into_iter()
                    .filter(|(m, p)| u(m) < **p)
                    .map(|(m, _)| m.as_str()),
            )
        }
        Dist::Days([a, b]) => {
            Value::Timestamp(start + ((a + (b - a) * u("d")) * 86_400_000.0) as i64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(changes: &str) -> Result<Scenario, ScenarioError> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let catalog = Catalog::load(root.join("rules")).expect("the sample catalog loads");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("drift.yaml");
        let text = format!(
            "customers: 10\ndays: 28\nstart: 2026-11-02T00:00:00Z\nvisits_per_day: 1\n\
             placements:\n  web.home_banner: 1\n\
             responses:\n  default: {{ accept: \"0.01\" }}\n  plus_upgrade:\n    accept: \"0.3\"\n    value: 60\n{changes}"
        );
        std::fs::write(&path, text).expect("write");
        Scenario::load(&path, &catalog)
    }

    #[test]
    fn a_change_takes_over_from_its_day_and_keeps_the_value_unless_it_says_one() {
        let scenario = load(
            "    changes:\n      - { day: 14, accept: \"0.05\" }\n      - { day: 21, accept: \"0.1\", value: 30 }\n",
        )
        .expect("loads");
        let offer = scenario
            .named
            .iter()
            .position(|n| *n)
            .expect("plus_upgrade");
        let day = |d: i64| scenario.start + d * DAY;
        let at = |now: i64| scenario.accept(offer, &[], &[], now, 0);
        assert_eq!((at(day(0)), scenario.value(offer, day(0))), (0.3, 60.0));
        assert_eq!(at(day(14) - 1), 0.3, "the last moment of day 13");
        assert_eq!((at(day(14)), scenario.value(offer, day(14))), (0.05, 60.0));
        assert_eq!((at(day(27)), scenario.value(offer, day(27))), (0.1, 30.0));
    }

    #[test]
    fn changes_out_of_order_or_past_the_run_say_where() {
        for (changes, line) in [
            (
                "    changes:\n      - { day: 14, accept: \"0.05\" }\n      - { day: 7, accept: \"0.1\" }\n",
                14,
            ),
            ("    changes:\n      - { day: 28, accept: \"0.05\" }\n", 13),
            ("    changes:\n      - { day: 0, accept: \"0.05\" }\n", 13),
        ] {
            let e = load(changes).expect_err(changes);
            assert_eq!(e.line, line, "{e}");
            assert!(e.message.contains("day order"), "{e}");
        }
        let e =
            load("    changes:\n      - { day: 3, accept: \"nope(\" }\n").expect_err("bad formula");
        assert_eq!(e.line, 13, "{e}");
        assert!(e.message.contains("`accept` of `plus_upgrade`"), "{e}");
    }
}
