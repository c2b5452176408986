//! Response models: regularised, importance-weighted logistic regression over the
//! schema's attributes, and its translation into a rule-language expression, so a
//! trained model is compiled, checked and hot-swapped like any hand-written propensity.
//!
//! Features, per customer and context attribute (its default applies when it is unset):
//! numbers standardised (unset reads as the mean), a bool as 0/1, one indicator per enum
//! variant and per set member seen in training. Strings and timestamps are left out:
//! neither has a meaning as a number without more knowledge than the schema carries.

use serde::Serialize;

use crate::schema::{AttrType, Entity, EntitySchema, Schema, Value};

/// At most this many members of one set attribute become features (the most frequent).
const MAX_SET_MEMBERS: usize = 16;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Term {
    /// (x - mean) / sd; 0 when unset.
    Number {
        mean: f64,
        sd: f64,
    },
    Bool,
    /// The enum has this variant (its name, its index in the enum).
    Variant(String, u32),
    Member(String),
}

/// One input of the model: an attribute and how it becomes a number.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Input {
    /// `customer.x` or `context.y`.
    pub name: String,
    #[serde(skip)]
    entity: Entity,
    #[serde(skip)]
    slot: u32,
    pub term: Term,
}

/// Turns a customer and a context into the model's inputs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Encoder {
    pub inputs: Vec<Input>,
    #[serde(skip)]
    defaults: [Vec<Value>; 2],
}

fn value<'a>(values: &'a [Value], defaults: &'a [Value], slot: u32) -> &'a Value {
    match values.get(slot as usize) {
        Some(Value::Missing) | None => defaults.get(slot as usize).unwrap_or(&Value::Missing),
        Some(v) => v,
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(x) if x.is_finite() => Some(*x),
        _ => None,
    }
}

impl Encoder {
    /// The inputs for `schema`, with means, spreads and set members taken from `rows`
    /// (customer values, context values).
    pub fn fit<'a>(
        schema: &Schema,
        rows: impl Iterator<Item = (&'a [Value], &'a [Value])> + Clone,
    ) -> Encoder {
        let defaults = [defaults(&schema.customer), defaults(&schema.context)];
        let mut inputs = Vec::new();
        for (entity, attrs) in [
            (Entity::Customer, &schema.customer),
            (Entity::Context, &schema.context),
        ] {
            let e = entity as usize;
            for (slot, attr) in attrs.attributes().iter().enumerate() {
                let slot = slot as u32;
                let name = format!("{}.{}", entity.as_str(), attr.name);
                let defaults = &defaults[e];
                let read = |(c, x): (&'a [Value], &'a [Value])| {
                    let values = if e == 0 { c } else { x };
                    value(values, defaults, slot).clone()
                };
                let mut push = |term| {
                    inputs.push(Input {
                        name: name.clone(),
                        entity,
                        slot,
                        term,
                    })
                };
                match &attr.ty {
                    AttrType::Int | AttrType::Float => {
                        let (mut n, mut sum, mut sq) = (0.0, 0.0, 0.0);
                        for row in rows.clone() {
                            if let Some(x) = number(&read(row)) {
                                n += 1.0;
                                sum += x;
                                sq += x * x;
                            }
                        }
                        if n < 2.0 {
                            continue;
                        }
                        let mean = sum / n;
                        let sd = (sq / n - mean * mean).max(0.0).sqrt();
                        if sd > 1e-12 {
                            push(Term::Number { mean, sd });
                        }
                    }
                    AttrType::Bool => push(Term::Bool),
                    AttrType::Enum(def) => {
                        for (i, v) in def.variants.iter().enumerate() {
                            push(Term::Variant(v.to_string(), i as u32));
                        }
                    }
                    AttrType::Set => {
                        let mut counts = std::collections::BTreeMap::<String, u64>::new();
                        for row in rows.clone() {
                            if let Value::Set(items) = read(row) {
                                for item in items.iter() {
                                    *counts.entry(item.to_string()).or_default() += 1;
                                }
                            }
                        }
                        let mut members: Vec<_> = counts.into_iter().collect();
                        members.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                        members.truncate(MAX_SET_MEMBERS);
                        members.sort();
                        for (m, _) in members {
                            push(Term::Member(m));
                        }
                    }
                    AttrType::String | AttrType::Timestamp => {}
                }
            }
        }
        Encoder { inputs, defaults }
    }

    /// The number of inputs (the model has one more weight: the intercept).
    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    /// Appends the inputs of one customer and context to `out`.
    pub fn encode(&self, customer: &[Value], context: &[Value], out: &mut Vec<f64>) {
        for input in &self.inputs {
            let e = input.entity as usize;
            let values = if e == 0 { customer } else { context };
            let v = value(values, &self.defaults[e], input.slot);
            out.push(match (&input.term, v) {
                (Term::Number { mean, sd }, v) => number(v).map_or(0.0, |x| (x - mean) / sd),
                (Term::Bool, Value::Bool(b)) => f64::from(u8::from(*b)),
                (Term::Variant(_, index), Value::Enum(i)) => f64::from(u8::from(i == index)),
                (Term::Member(name), Value::Set(items)) => {
                    f64::from(u8::from(items.iter().any(|m| **m == **name)))
                }
                _ => 0.0,
            });
        }
    }
}

fn defaults(schema: &EntitySchema) -> Vec<Value> {
    schema
        .attributes()
        .iter()
        .map(|a| a.default.clone())
        .collect()
}

/// A fitted logistic model: P(y = 1 | x) = σ(w₀ + Σ wᵢ xᵢ) over an [`Encoder`]'s inputs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Logistic {
    /// The intercept first, then one weight per input.
    pub weights: Vec<f64>,
}

pub fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Training rows: inputs (row-major, `width` per row), labels in [0, 1] and weights.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    pub width: usize,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    pub w: Vec<f64>,
}

impl Rows {
    pub fn new(width: usize) -> Rows {
        Rows {
            width,
            ..Rows::default()
        }
    }

    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    fn row(&self, i: usize) -> &[f64] {
        &self.x[i * self.width..(i + 1) * self.width]
    }

    /// The weighted mean log loss of `model` over the rows.
    pub fn log_loss(&self, model: &Logistic) -> f64 {
        let (mut loss, mut total) = (0.0, 0.0);
        for i in 0..self.len() {
            let p = model.predict_inputs(self.row(i)).clamp(1e-12, 1.0 - 1e-12);
            let y = self.y[i];
            loss -= self.w[i] * (y * p.ln() + (1.0 - y) * (1.0 - p).ln());
            total += self.w[i];
        }
        if total > 0.0 { loss / total } else { 0.0 }
    }
}

impl Logistic {
    pub fn predict_inputs(&self, x: &[f64]) -> f64 {
        let z = self.weights[0]
            + self.weights[1..]
                .iter()
                .zip(x)
                .map(|(w, x)| w * x)
                .sum::<f64>();
        sigmoid(z)
    }

    /// Fits by Newton's method the weights minimising the weighted log loss plus
    /// `lambda / 2 · |w|²` (the intercept is not penalised). Deterministic: no random
    /// start, no sampling.
    pub fn fit(rows: &Rows, lambda: f64) -> Logistic {
        let d = rows.width + 1;
        let mut beta = vec![0.0; d];
        // Start from the weighted base rate: one step less, and exact when nothing else
        // explains the label.
        let (sy, sw) = (0..rows.len()).fold((0.0, 0.0), |(a, b), i| {
            (a + rows.w[i] * rows.y[i], b + rows.w[i])
        });
        if sw > 0.0 {
            let rate = (sy / sw).clamp(1e-6, 1.0 - 1e-6);
            beta[0] = (rate / (1.0 - rate)).ln();
        }
        let objective = |beta: &[f64]| {
            let model = Logistic {
                weights: beta.to_vec(),
            };
            let total: f64 = rows.w.iter().sum();
            rows.log_loss(&model) * total
                + 0.5 * lambda * beta[1..].iter().map(|b| b * b).sum::<f64>()
        };
        let mut current = objective(&beta);
        let mut x = vec![0.0; d];
        for _ in 0..100 {
            let mut gradient = vec![0.0; d];
            let mut hessian = vec![0.0; d * d];
            for i in 0..rows.len() {
                x[0] = 1.0;
                x[1..].copy_from_slice(rows.row(i));
                let p = sigmoid(beta.iter().zip(&x).map(|(b, x)| b * x).sum());
                let w = rows.w[i];
                let g = w * (p - rows.y[i]);
                let h = w * p * (1.0 - p);
                for j in 0..d {
                    if x[j] == 0.0 {
                        continue;
                    }
                    gradient[j] += g * x[j];
                    let hx = h * x[j];
                    for k in j..d {
                        hessian[j * d + k] += hx * x[k];
                    }
                }
            }
            for j in 0..d {
                for k in 0..j {
                    hessian[j * d + k] = hessian[k * d + j];
                }
                let penalty = if j == 0 { 1e-9 } else { lambda };
                hessian[j * d + j] += penalty;
                if j > 0 {
                    gradient[j] += lambda * beta[j];
                }
            }
            let Some(step) = solve_cholesky(&hessian, &gradient, d) else {
                break;
            };
            // Halve the step until the objective does not grow (Newton can overshoot far
            // from the optimum).
            let mut t = 1.0;
            let mut next;
            loop {
                next = beta
                    .iter()
                    .zip(&step)
                    .map(|(b, s)| b - t * s)
                    .collect::<Vec<_>>();
                let value = objective(&next);
                if value <= current + 1e-12 || t < 1e-6 {
                    current = value;
                    break;
                }
                t *= 0.5;
            }
            let moved = step.iter().map(|s| (t * s).abs()).fold(0.0, f64::max);
            beta = next;
            if moved < 1e-9 {
                break;
            }
        }
        Logistic { weights: beta }
    }
}

/// Solves `a · x = b` for a symmetric positive definite `a` (n × n, row-major).
fn solve_cholesky(a: &[f64], b: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut sum = a[i * n + j];
            for k in 0..j {
                sum -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                if sum <= 0.0 || !sum.is_finite() {
                    return None;
                }
                l[i * n + i] = sum.sqrt();
            } else {
                l[i * n + j] = sum / l[j * n + j];
            }
        }
    }
    let mut y = vec![0.0; n];
    for i in 0..n {
        let s: f64 = (0..i).map(|k| l[i * n + k] * y[k]).sum();
        y[i] = (b[i] - s) / l[i * n + i];
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|k| l[k * n + i] * x[k]).sum();
        x[i] = (y[i] - s) / l[i * n + i];
    }
    Some(x)
}

/// A number as the rule language reads it, to six significant digits.
fn literal(x: f64) -> String {
    let rounded: f64 = format!("{x:.5e}").parse().unwrap_or(x);
    format!("{rounded:?}")
}

/// The model as a rule-language expression over the encoder's attributes:
/// `sigmoid(w₀ + …)`, reading exactly what [`Encoder::encode`] reads (an unset attribute
/// contributes nothing, as its input is 0). Weights smaller than `1e-6` are left out, and
/// so are weights beyond the encoder's inputs (`train`'s slot: the formula is the first
/// slot's).
pub fn expression(encoder: &Encoder, model: &Logistic) -> String {
    let mut intercept = model.weights[0];
    let mut terms = Vec::new();
    for (input, &w) in encoder.inputs.iter().zip(&model.weights[1..]) {
        if w.abs() < 1e-6 {
            continue;
        }
        let name = &input.name;
        let term = match &input.term {
            Term::Number { mean, sd } => {
                // w · (x - mean) / sd, with x unset reading as the mean.
                let a = w / sd;
                format!(
                    "(has({name}) ? {} * ({name} - {}) : 0.0)",
                    literal(a),
                    literal(*mean)
                )
            }
            Term::Bool => format!("(has({name}) && {name} ? {} : 0.0)", literal(w)),
            Term::Variant(v, _) => {
                format!("(has({name}) && {name} == '{v}' ? {} : 0.0)", literal(w))
            }
            Term::Member(m) => format!("(has({name}) && '{m}' in {name} ? {} : 0.0)", literal(w)),
        };
        terms.push(term);
    }
    if !intercept.is_finite() {
        intercept = 0.0;
    }
    let mut out = format!("sigmoid({}", literal(intercept));
    for t in terms {
        out.push_str("\n  + ");
        out.push_str(&t);
    }
    out.push(')');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::expr::{Env, Formula};
    use crate::learn::scenario::uniform;

    fn catalog() -> Catalog {
        Catalog::from_yaml(
            "customer:\n  age: { type: int }\n  spend: { type: float, default: 10 }\n  vip: { type: bool }\n  \
             tier: { type: enum, values: [a, b, c] }\n  products: { type: set, default: [] }\n  name: { type: string }\n\
             context:\n  channel: { type: enum, values: [web, email] }\n",
            "placements:\n  - { id: p, channel: web, slots: 1 }\n",
            "experiments: []\n",
            &["offers:\n  - id: o\n    content: { p: { title: T } }\n"],
        )
        .expect("catalog")
    }

    /// Rows drawn from a known logistic model: the fit recovers its weights, and the
    /// formula written for it computes exactly what the model predicts, for customers
    /// with and without each attribute.
    #[test]
    fn the_fit_recovers_a_known_model_and_its_formula_predicts_the_same() {
        let catalog = catalog();
        let mut people = Vec::new();
        for n in 0..6000u64 {
            let u = |what: &str| uniform(7, what, n);
            let mut customer = vec![
                Value::Int(18 + (u("age") * 60.0) as i64),
                Value::Float(u("spend") * 100.0),
                Value::Bool(u("vip") < 0.3),
                Value::Enum((u("tier") * 3.0) as u32),
                Value::set(["tv", "phone"].into_iter().filter(|p| u(p) < 0.4)),
                Value::Str("x".into()),
            ];
            // Some customers lack attributes: the encoder and the formula must agree.
            if u("missing") < 0.1 {
                customer[0] = Value::Missing;
                customer[1] = Value::Missing;
                customer[2] = Value::Missing;
                customer[3] = Value::Missing;
            }
            let context = vec![Value::Enum(u32::from(u("ch") < 0.5))];
            people.push((customer, context));
        }
        let encoder = Encoder::fit(
            &catalog.schema,
            people.iter().map(|(c, x)| (&c[..], &x[..])),
        );
        let names: Vec<String> = encoder
            .inputs
            .iter()
            .map(|i| match &i.term {
                Term::Variant(v, _) | Term::Member(v) => format!("{}={v}", i.name),
                _ => i.name.clone(),
            })
            .collect();
        assert_eq!(
            names,
            [
                "customer.age",
                "customer.spend",
                "customer.vip",
                "customer.tier=a",
                "customer.tier=b",
                "customer.tier=c",
                "customer.products=phone",
                "customer.products=tv",
                "context.channel=web",
                "context.channel=email",
            ]
        );
        // The truth, over the encoded inputs.
        let truth = [-1.0, 0.8, 0.0, 1.2, 0.0, 0.5, -0.5, 0.0, 0.9, 0.3, -0.3];
        let mut rows = Rows::new(encoder.len());
        let mut x = Vec::new();
        for (n, (c, ctx)) in people.iter().enumerate() {
            x.clear();
            encoder.encode(c, ctx, &mut x);
            let p = Logistic {
                weights: truth.to_vec(),
            }
            .predict_inputs(&x);
            rows.x.extend_from_slice(&x);
            rows.y
                .push(f64::from(u8::from(uniform(9, "y", n as u64) < p)));
            rows.w.push(1.0);
        }
        let model = Logistic::fit(&rows, 1.0);
        // Collinear one-hots (tier, channel) shift weight between the intercept and the
        // indicators; compare what is identified: predictions, and the numeric weights.
        for (i, want) in [(1, 0.8), (2, 0.0), (3, 1.2), (7, 0.0), (8, 0.9)] {
            assert!(
                (model.weights[i] - want).abs() < 0.2,
                "weight {i}: {} vs {want}",
                model.weights[i]
            );
        }
        let loss = rows.log_loss(&model);
        let true_loss = rows.log_loss(&Logistic {
            weights: truth.to_vec(),
        });
        assert!(
            loss <= true_loss + 1e-9,
            "the fit is no worse than the truth on its data"
        );

        let src = expression(&encoder, &model);
        let formula = Formula::compile(&src, &catalog.schema, "propensity", false)
            .unwrap_or_else(|e| panic!("{src}: {e:?}"));
        for (c, ctx) in &people[..500] {
            x.clear();
            encoder.encode(c, ctx, &mut x);
            let want = model.predict_inputs(&x);
            let got = formula
                .eval(&Env::new(c, ctx, &[], 0))
                .expect("never missing");
            assert!((got - want).abs() < 1e-4, "{got} vs {want} for {c:?}");
        }
    }

    #[test]
    fn cholesky_solves_a_small_system() {
        // [[4, 2], [2, 3]] x = [2, 1]  =>  x = [0.5, 0]
        let x = solve_cholesky(&[4.0, 2.0, 2.0, 3.0], &[2.0, 1.0], 2).expect("positive definite");
        assert!((x[0] - 0.5).abs() < 1e-12 && x[1].abs() < 1e-12);
        assert!(solve_cholesky(&[0.0, 0.0, 0.0, 0.0], &[1.0, 1.0], 2).is_none());
    }
}
