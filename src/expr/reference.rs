//! A plain tree-walking evaluator over [`Ir`], written for clarity, not speed. The property
//! tests hold the compiled evaluator to it.

use super::Env;
use super::ir::{ArithOp, Func, Ir, Kind, Target};
use crate::schema::Value;

/// A dynamically typed result; `None` is missing.
#[derive(Debug, Clone, PartialEq)]
pub enum R {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Set(Vec<String>),
}

fn from_value(v: &Value, kind: Kind) -> Option<R> {
    Some(match (v, kind) {
        (Value::Bool(b), Kind::Bool) => R::Bool(*b),
        (Value::Int(i) | Value::Timestamp(i), Kind::Int) => R::Int(*i),
        (Value::Enum(e), Kind::Int) => R::Int(i64::from(*e)),
        (Value::Float(f), Kind::Float) if f.is_finite() => R::Float(*f),
        (Value::Str(s), Kind::Str) => R::Str(s.to_string()),
        (Value::Set(s), Kind::Set) => R::Set(s.iter().map(|x| x.to_string()).collect()),
        _ => return None,
    })
}

fn fin(x: f64) -> Option<R> {
    x.is_finite().then_some(R::Float(x))
}

pub fn eval(ir: &Ir, env: &Env<'_>) -> Option<R> {
    match ir {
        Ir::Const(v) => match v {
            Value::Bool(b) => Some(R::Bool(*b)),
            Value::Int(i) => Some(R::Int(*i)),
            Value::Float(f) => fin(*f),
            Value::Str(s) => Some(R::Str(s.to_string())),
            _ => None,
        },
        Ir::Attr {
            entity,
            slot,
            kind,
            default,
        } => {
            let v = env.get(*entity as usize, *slot);
            if v.is_missing() {
                from_value(default, *kind)
            } else {
                from_value(v, *kind)
            }
        }
        Ir::Has {
            entity,
            slot,
            has_default,
        } => Some(R::Bool(
            *has_default || !env.get(*entity as usize, *slot).is_missing(),
        )),
        Ir::Not(a) => match eval(a, env)? {
            R::Bool(b) => Some(R::Bool(!b)),
            _ => None,
        },
        Ir::Neg(_, a) => match eval(a, env)? {
            R::Int(i) => i.checked_neg().map(R::Int),
            R::Float(f) => fin(-f),
            _ => None,
        },
        Ir::And(a, b) => {
            let (a, b) = (eval(a, env), eval(b, env));
            match (a, b) {
                (Some(R::Bool(false)), _) | (_, Some(R::Bool(false))) => Some(R::Bool(false)),
                (Some(R::Bool(true)), Some(R::Bool(true))) => Some(R::Bool(true)),
                _ => None,
            }
        }
        Ir::Or(a, b) => {
            let (a, b) = (eval(a, env), eval(b, env));
            match (a, b) {
                (Some(R::Bool(true)), _) | (_, Some(R::Bool(true))) => Some(R::Bool(true)),
                (Some(R::Bool(false)), Some(R::Bool(false))) => Some(R::Bool(false)),
                _ => None,
            }
        }
        Ir::Cmp(op, _, a, b) => {
            let ord = match (eval(a, env)?, eval(b, env)?) {
                (R::Bool(x), R::Bool(y)) => x.cmp(&y),
                (R::Int(x), R::Int(y)) => x.cmp(&y),
                (R::Float(x), R::Float(y)) => {
                    // NaN never reaches here: every float result is finite or missing.
                    x.partial_cmp(&y)?
                }
                (R::Str(x), R::Str(y)) => x.cmp(&y),
                _ => return None,
            };
            Some(R::Bool(op.test(ord)))
        }
        Ir::Arith(op, _, a, b) => match (eval(a, env)?, eval(b, env)?) {
            (R::Int(x), R::Int(y)) => match op {
                ArithOp::Add => x.checked_add(y),
                ArithOp::Sub => x.checked_sub(y),
                ArithOp::Mul => x.checked_mul(y),
                ArithOp::Rem => x.checked_rem(y),
                ArithOp::Div => None,
            }
            .map(R::Int),
            (R::Float(x), R::Float(y)) => fin(match op {
                ArithOp::Add => x + y,
                ArithOp::Sub => x - y,
                ArithOp::Mul => x * y,
                ArithOp::Div => x / y,
                ArithOp::Rem => x % y,
            }),
            _ => None,
        },
        Ir::IntToFloat(a) => match eval(a, env)? {
            R::Int(i) => Some(R::Float(i as f64)),
            _ => None,
        },
        Ir::EnumName(a, names) => match eval(a, env)? {
            R::Int(i) => names
                .get(usize::try_from(i).ok()?)
                .map(|n| R::Str(n.to_string())),
            _ => None,
        },
        Ir::InList(_, needle, items) => {
            let needle = eval(needle, env)?;
            let items: Vec<Option<R>> = items
                .iter()
                .map(|v| eval(&Ir::Const(v.clone()), env))
                .collect();
            Some(R::Bool(items.iter().any(|i| i.as_ref() == Some(&needle))))
        }
        Ir::InSet(needle, set) => match (eval(needle, env)?, eval(set, env)?) {
            (R::Str(x), R::Set(items)) => Some(R::Bool(items.contains(&x))),
            _ => None,
        },
        Ir::Cond(_, c, t, e) => match eval(c, env)? {
            R::Bool(true) => eval(t, env),
            R::Bool(false) => eval(e, env),
            _ => None,
        },
        Ir::Call(func, _, args) => call(*func, args, env),
        Ir::Adaptive(model) => Some(R::Float(model.predict(
            env.offer,
            env.channel,
            env.entities[0],
            env.entities[1],
        ))),
    }
}

fn call(func: Func, args: &[Ir], env: &Env<'_>) -> Option<R> {
    let vals: Option<Vec<R>> = args.iter().map(|a| eval(a, env)).collect();
    let vals = vals?;
    let float = |r: &R| match r {
        R::Float(f) => Some(*f),
        _ => None,
    };
    match func {
        Func::Now => Some(R::Int(env.now)),
        Func::Count(c) => {
            let R::Int(within) = vals[0] else { return None };
            let matching = env.history.iter().filter(|e| {
                let target = match c.target {
                    Target::ThisOffer => e.offer == env.offer,
                    Target::Offer(k) => e.offer == k,
                    Target::ThisGroup => env.group != 0 && e.group == env.group,
                    Target::Group(k) => e.group == k,
                };
                target
                    && e.kind == c.kind
                    && (!c.here || e.channel == env.channel)
                    && e.at >= env.now.saturating_sub(within)
                    && e.at <= env.now
            });
            Some(R::Int(matching.count() as i64))
        }
        Func::DaysSince | Func::HoursSince => {
            let R::Int(t) = vals[0] else { return None };
            let unit = if func == Func::DaysSince {
                86_400_000.0
            } else {
                3_600_000.0
            };
            Some(R::Float(env.now.checked_sub(t)? as f64 / unit))
        }
        Func::Min | Func::Max => {
            let mut best = vals[0].clone();
            for v in &vals[1..] {
                let better = match (v, &best) {
                    (R::Int(x), R::Int(y)) => (func == Func::Min) == (x < y),
                    (R::Float(x), R::Float(y)) => (func == Func::Min) == (x < y),
                    _ => return None,
                };
                if better {
                    best = v.clone();
                }
            }
            Some(best)
        }
        Func::Clamp => match (&vals[0], &vals[1], &vals[2]) {
            (R::Int(x), R::Int(lo), R::Int(hi)) if lo <= hi => Some(R::Int(*x.max(lo).min(hi))),
            (R::Float(x), R::Float(lo), R::Float(hi)) if lo <= hi => {
                Some(R::Float(x.max(*lo).min(*hi)))
            }
            _ => None,
        },
        Func::Abs => match vals[0] {
            R::Int(i) => i.checked_abs().map(R::Int),
            R::Float(f) => Some(R::Float(f.abs())),
            _ => None,
        },
        Func::Exp => fin(float(&vals[0])?.exp()),
        Func::Ln => fin(float(&vals[0])?.ln()),
        Func::Sigmoid => fin(1.0 / (1.0 + (-float(&vals[0])?).exp())),
        Func::SizeSet => match &vals[0] {
            R::Set(s) => Some(R::Int(s.len() as i64)),
            _ => None,
        },
        Func::SizeStr => match &vals[0] {
            R::Str(s) => Some(R::Int(s.chars().count() as i64)),
            _ => None,
        },
        Func::Lower => match &vals[0] {
            R::Str(s) => Some(R::Str(s.chars().flat_map(char::to_lowercase).collect())),
            _ => None,
        },
        Func::StartsWith => match (&vals[0], &vals[1]) {
            (R::Str(s), R::Str(p)) => Some(R::Bool(s.starts_with(p.as_str()))),
            _ => None,
        },
    }
}
