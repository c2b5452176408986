//! [`Ir`] to the evaluated form: one node type per run-time kind, so evaluation never
//! checks a type, with fast paths for the shapes rules are made of (an attribute against a
//! constant, an enum in a list, a constant in a set). Constant subtrees are folded.
//!
//! Every `eval` returns `None` for a missing value; see docs/rules.md for the semantics.
//! Nothing here allocates, locks or panics.

use std::cmp::Ordering;
use std::sync::Arc;

use super::Env;
use super::ir::{ArithOp, CmpOp, Func, Ir, Kind};
use crate::schema::{Entity, Value};

/// A string produced by an expression: borrowed, and lower-cased lazily when `lower` is set
/// so that `lower(x) == "abc"` allocates nothing.
#[derive(Debug, Clone, Copy)]
pub struct Str<'a> {
    pub s: &'a str,
    pub lower: bool,
}

impl<'a> Str<'a> {
    fn plain(s: &'a str) -> Str<'a> {
        Str { s, lower: false }
    }

    fn chars(self) -> Chars<'a> {
        Chars {
            inner: self.s.chars(),
            lower: self.lower,
            pending: None,
        }
    }

    fn cmp(self, other: Str<'_>) -> Ordering {
        if !self.lower && !other.lower {
            self.s.cmp(other.s)
        } else {
            self.chars().cmp(other.chars())
        }
    }

    fn starts_with(self, prefix: Str<'_>) -> bool {
        if !self.lower && !prefix.lower {
            return self.s.starts_with(prefix.s);
        }
        let mut subject = self.chars();
        prefix.chars().all(|c| subject.next() == Some(c))
    }

    /// The text this view stands for, owned (used when folding constants only).
    pub fn to_owned_str(self) -> Box<str> {
        self.chars().collect::<String>().into_boxed_str()
    }
}

struct Chars<'a> {
    inner: std::str::Chars<'a>,
    lower: bool,
    pending: Option<std::char::ToLowercase>,
}

impl Iterator for Chars<'_> {
    type Item = char;

    fn next(&mut self) -> Option<char> {
        if let Some(pending) = &mut self.pending {
            if let Some(c) = pending.next() {
                return Some(c);
            }
            self.pending = None;
        }
        let c = self.inner.next()?;
        if !self.lower {
            return Some(c);
        }
        let mut lowered = c.to_lowercase();
        let first = lowered.next();
        self.pending = Some(lowered);
        first
    }
}

type Ent = usize;

#[derive(Debug, Clone)]
pub enum B {
    Const(Option<bool>),
    Attr(Ent, u32, Option<bool>),
    Has(Ent, u32),
    Not(Box<B>),
    And(Box<B>, Box<B>),
    Or(Box<B>, Box<B>),
    CmpBool(CmpOp, Box<B>, Box<B>),
    CmpI(CmpOp, Box<I>, Box<I>),
    CmpIK(CmpOp, Box<I>, i64),
    /// An attribute without default against a constant: the most common predicate.
    CmpAttrIK(CmpOp, Ent, u32, i64),
    CmpF(CmpOp, Box<F>, Box<F>),
    CmpFK(CmpOp, Box<F>, f64),
    CmpAttrFK(CmpOp, Ent, u32, f64),
    CmpS(CmpOp, Box<S>, Box<S>),
    /// Integers below 64 (enum variants) as a bit mask.
    InMask(Box<I>, u64),
    /// INVARIANT: sorted (built by `compile_in_list`).
    InInts(Box<I>, Box<[i64]>),
    InFloats(Box<F>, Box<[f64]>),
    /// INVARIANT: sorted (built by `compile_in_list`).
    InStrs(Box<S>, Box<[Box<str>]>),
    InBools(Box<B>, [bool; 2]),
    InSet(Box<S>, Box<SetN>),
    StartsWith(Box<S>, Box<S>),
    Cond(Box<B>, Box<B>, Box<B>),
}

#[derive(Debug, Clone)]
pub enum I {
    Const(Option<i64>),
    Attr(Ent, u32, Option<i64>),
    Now,
    Neg(Box<I>),
    Arith(ArithOp, Box<I>, Box<I>),
    Cond(Box<B>, Box<I>, Box<I>),
    Min(Box<[I]>),
    Max(Box<[I]>),
    Clamp(Box<[I; 3]>),
    Abs(Box<I>),
    SizeSet(Box<SetN>),
    SizeStr(Box<S>),
}

#[derive(Debug, Clone)]
pub enum F {
    Const(Option<f64>),
    Attr(Ent, u32, Option<f64>),
    FromI(Box<I>),
    Neg(Box<F>),
    Arith(ArithOp, Box<F>, Box<F>),
    Cond(Box<B>, Box<F>, Box<F>),
    Min(Box<[F]>),
    Max(Box<[F]>),
    Clamp(Box<[F; 3]>),
    Abs(Box<F>),
    Exp(Box<F>),
    Ln(Box<F>),
    Sigmoid(Box<F>),
    /// Milliseconds per unit: days or hours since a timestamp.
    Since(Box<I>, f64),
}

#[derive(Debug, Clone)]
pub enum S {
    Const(Option<Box<str>>),
    Attr(Ent, u32, Option<Box<str>>),
    EnumName(Box<I>, Arc<[Box<str>]>),
    Lower(Box<S>),
    Cond(Box<B>, Box<S>, Box<S>),
}

#[derive(Debug, Clone)]
pub enum SetN {
    Attr(Ent, u32, Option<Box<[Box<str>]>>),
    Cond(Box<B>, Box<SetN>, Box<SetN>),
}

/// A float result, or missing when it is NaN or infinite.
#[inline]
fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

#[inline]
fn cmp_i(op: CmpOp, a: i64, b: i64) -> bool {
    match op {
        CmpOp::Eq => a == b,
        CmpOp::Ne => a != b,
        CmpOp::Lt => a < b,
        CmpOp::Le => a <= b,
        CmpOp::Gt => a > b,
        CmpOp::Ge => a >= b,
    }
}

#[inline]
fn cmp_f(op: CmpOp, a: f64, b: f64) -> bool {
    match op {
        CmpOp::Eq => a == b,
        CmpOp::Ne => a != b,
        CmpOp::Lt => a < b,
        CmpOp::Le => a <= b,
        CmpOp::Gt => a > b,
        CmpOp::Ge => a >= b,
    }
}

#[inline]
fn read_int(v: &Value, default: Option<i64>) -> Option<i64> {
    match v {
        Value::Int(i) | Value::Timestamp(i) => Some(*i),
        Value::Enum(e) => Some(i64::from(*e)),
        Value::Missing => default,
        _ => None,
    }
}

#[inline]
fn read_float(v: &Value, default: Option<f64>) -> Option<f64> {
    match v {
        Value::Float(f) => finite(*f),
        Value::Missing => default,
        _ => None,
    }
}

impl B {
    pub fn eval(&self, env: &Env<'_>) -> Option<bool> {
        match self {
            B::Const(b) => *b,
            B::Attr(e, s, d) => match env.get(*e, *s) {
                Value::Bool(b) => Some(*b),
                Value::Missing => *d,
                _ => None,
            },
            B::Has(e, s) => Some(!env.get(*e, *s).is_missing()),
            B::Not(a) => a.eval(env).map(|b| !b),
            // Kleene logic: a definite `false` decides `&&` even if the other side is missing.
            B::And(a, b) => match a.eval(env) {
                Some(false) => Some(false),
                x => match (x, b.eval(env)) {
                    (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                },
            },
            B::Or(a, b) => match a.eval(env) {
                Some(true) => Some(true),
                x => match (x, b.eval(env)) {
                    (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                },
            },
            B::CmpBool(op, a, b) => Some(op.test(a.eval(env)?.cmp(&b.eval(env)?))),
            B::CmpI(op, a, b) => Some(cmp_i(*op, a.eval(env)?, b.eval(env)?)),
            B::CmpIK(op, a, k) => Some(cmp_i(*op, a.eval(env)?, *k)),
            B::CmpAttrIK(op, e, s, k) => Some(cmp_i(*op, read_int(env.get(*e, *s), None)?, *k)),
            B::CmpF(op, a, b) => Some(cmp_f(*op, a.eval(env)?, b.eval(env)?)),
            B::CmpFK(op, a, k) => Some(cmp_f(*op, a.eval(env)?, *k)),
            B::CmpAttrFK(op, e, s, k) => Some(cmp_f(*op, read_float(env.get(*e, *s), None)?, *k)),
            B::CmpS(op, a, b) => Some(op.test(a.eval(env)?.cmp(b.eval(env)?))),
            B::InMask(a, mask) => {
                let i = a.eval(env)?;
                Some((0..64).contains(&i) && mask & (1 << i) != 0)
            }
            B::InInts(a, list) => Some(list.binary_search(&a.eval(env)?).is_ok()),
            B::InFloats(a, list) => {
                let x = a.eval(env)?;
                Some(list.contains(&x))
            }
            B::InStrs(a, list) => {
                let x = a.eval(env)?;
                Some(if x.lower {
                    list.iter().any(|s| x.cmp(Str::plain(s)).is_eq())
                } else {
                    list.binary_search_by(|s| (**s).cmp(x.s)).is_ok()
                })
            }
            B::InBools(a, has) => Some(has[usize::from(a.eval(env)?)]),
            B::InSet(needle, set) => {
                let x = needle.eval(env)?;
                let set = set.eval(env)?;
                Some(if x.lower {
                    set.iter().any(|s| x.cmp(Str::plain(s)).is_eq())
                } else {
                    set.binary_search_by(|s| (**s).cmp(x.s)).is_ok()
                })
            }
            B::StartsWith(a, b) => Some(a.eval(env)?.starts_with(b.eval(env)?)),
            B::Cond(c, t, e) => {
                if c.eval(env)? {
                    t.eval(env)
                } else {
                    e.eval(env)
                }
            }
        }
    }
}

impl I {
    pub fn eval(&self, env: &Env<'_>) -> Option<i64> {
        match self {
            I::Const(i) => *i,
            I::Attr(e, s, d) => read_int(env.get(*e, *s), *d),
            I::Now => Some(env.now),
            I::Neg(a) => a.eval(env)?.checked_neg(),
            I::Arith(op, a, b) => {
                let (a, b) = (a.eval(env)?, b.eval(env)?);
                match op {
                    ArithOp::Add => a.checked_add(b),
                    ArithOp::Sub => a.checked_sub(b),
                    ArithOp::Mul => a.checked_mul(b),
                    ArithOp::Rem => a.checked_rem(b),
                    // The checker types every division as float.
                    ArithOp::Div => None,
                }
            }
            I::Cond(c, t, e) => {
                if c.eval(env)? {
                    t.eval(env)
                } else {
                    e.eval(env)
                }
            }
            I::Min(args) => args
                .iter()
                .try_fold(i64::MAX, |m, a| Some(m.min(a.eval(env)?))),
            I::Max(args) => args
                .iter()
                .try_fold(i64::MIN, |m, a| Some(m.max(a.eval(env)?))),
            I::Clamp(args) => {
                let [x, lo, hi] = &**args;
                let (x, lo, hi) = (x.eval(env)?, lo.eval(env)?, hi.eval(env)?);
                (lo <= hi).then(|| x.clamp(lo, hi))
            }
            I::Abs(a) => a.eval(env)?.checked_abs(),
            I::SizeSet(set) => Some(set.eval(env)?.len() as i64),
            I::SizeStr(s) => Some(s.eval(env)?.chars().count() as i64),
        }
    }
}

impl F {
    pub fn eval(&self, env: &Env<'_>) -> Option<f64> {
        match self {
            F::Const(f) => *f,
            F::Attr(e, s, d) => read_float(env.get(*e, *s), *d),
            F::FromI(a) => Some(a.eval(env)? as f64),
            F::Neg(a) => Some(-a.eval(env)?),
            F::Arith(op, a, b) => {
                let (a, b) = (a.eval(env)?, b.eval(env)?);
                finite(match op {
                    ArithOp::Add => a + b,
                    ArithOp::Sub => a - b,
                    ArithOp::Mul => a * b,
                    ArithOp::Div => a / b,
                    ArithOp::Rem => a % b,
                })
            }
            F::Cond(c, t, e) => {
                if c.eval(env)? {
                    t.eval(env)
                } else {
                    e.eval(env)
                }
            }
            F::Min(args) => args
                .iter()
                .try_fold(f64::INFINITY, |m, a| Some(m.min(a.eval(env)?))),
            F::Max(args) => args
                .iter()
                .try_fold(f64::NEG_INFINITY, |m, a| Some(m.max(a.eval(env)?))),
            F::Clamp(args) => {
                let [x, lo, hi] = &**args;
                let (x, lo, hi) = (x.eval(env)?, lo.eval(env)?, hi.eval(env)?);
                (lo <= hi).then(|| x.clamp(lo, hi))
            }
            F::Abs(a) => Some(a.eval(env)?.abs()),
            F::Exp(a) => finite(a.eval(env)?.exp()),
            F::Ln(a) => finite(a.eval(env)?.ln()),
            F::Sigmoid(a) => finite(1.0 / (1.0 + (-a.eval(env)?).exp())),
            F::Since(t, unit) => Some(env.now.checked_sub(t.eval(env)?)? as f64 / unit),
        }
    }
}

impl S {
    pub fn eval<'a>(&'a self, env: &Env<'a>) -> Option<Str<'a>> {
        match self {
            S::Const(s) => s.as_deref().map(Str::plain),
            S::Attr(e, s, d) => match env.get(*e, *s) {
                Value::Str(s) => Some(Str::plain(s)),
                Value::Missing => d.as_deref().map(Str::plain),
                _ => None,
            },
            S::EnumName(a, names) => {
                let i = usize::try_from(a.eval(env)?).ok()?;
                names.get(i).map(|n| Str::plain(n))
            }
            S::Lower(a) => Some(Str {
                lower: true,
                ..a.eval(env)?
            }),
            S::Cond(c, t, e) => {
                if c.eval(env)? {
                    t.eval(env)
                } else {
                    e.eval(env)
                }
            }
        }
    }
}

impl SetN {
    pub fn eval<'a>(&'a self, env: &Env<'a>) -> Option<&'a [Box<str>]> {
        match self {
            SetN::Attr(e, s, d) => match env.get(*e, *s) {
                Value::Set(items) => Some(items),
                Value::Missing => d.as_deref(),
                _ => None,
            },
            SetN::Cond(c, t, e) => {
                if c.eval(env)? {
                    t.eval(env)
                } else {
                    e.eval(env)
                }
            }
        }
    }
}

// ---- compilation --------------------------------------------------------------------------

fn ent(e: Entity) -> Ent {
    e as usize
}

fn b(ir: &Ir) -> Box<B> {
    Box::new(compile_bool(ir))
}
fn i(ir: &Ir) -> Box<I> {
    Box::new(compile_int(ir))
}
fn f(ir: &Ir) -> Box<F> {
    Box::new(compile_float(ir))
}
fn s(ir: &Ir) -> Box<S> {
    Box::new(compile_str(ir))
}

/// The environment constant subtrees are folded in: they read no attribute and no clock.
fn empty_env() -> Env<'static> {
    Env::new(&[], &[], &[], 0)
}

pub fn compile_bool(ir: &Ir) -> B {
    if ir.is_constant() && !matches!(ir, Ir::Const(_)) {
        return B::Const(compile_bool_raw(ir).eval(&empty_env()));
    }
    compile_bool_raw(ir)
}

fn compile_bool_raw(ir: &Ir) -> B {
    match ir {
        Ir::Const(Value::Bool(v)) => B::Const(Some(*v)),
        Ir::Const(_) => B::Const(None),
        Ir::Attr {
            entity,
            slot,
            default,
            ..
        } => B::Attr(
            ent(*entity),
            *slot,
            match default {
                Value::Bool(v) => Some(*v),
                _ => None,
            },
        ),
        Ir::Has {
            has_default: true, ..
        } => B::Const(Some(true)),
        Ir::Has { entity, slot, .. } => B::Has(ent(*entity), *slot),
        Ir::Not(a) => B::Not(b(a)),
        Ir::And(x, y) => B::And(b(x), b(y)),
        Ir::Or(x, y) => B::Or(b(x), b(y)),
        Ir::Cmp(op, kind, x, y) => compile_cmp(*op, *kind, x, y),
        Ir::InList(kind, needle, items) => compile_in_list(*kind, needle, items),
        Ir::InSet(needle, set) => B::InSet(s(needle), Box::new(compile_set(set))),
        Ir::Cond(_, c, t, e) => B::Cond(b(c), b(t), b(e)),
        Ir::Call(Func::StartsWith, _, args) => B::StartsWith(s(&args[0]), s(&args[1])),
        other => unreachable!("the checker types `{other:?}` as bool"),
    }
}

fn compile_cmp(op: CmpOp, kind: Kind, x: &Ir, y: &Ir) -> B {
    // Put a constant operand on the right so the fast paths see one shape.
    let (op, x, y) = if x.is_constant() && !y.is_constant() {
        (op.flip(), y, x)
    } else {
        (op, x, y)
    };
    match kind {
        Kind::Int => match (compile_int(x), compile_int(y)) {
            (I::Attr(e, s, None), I::Const(Some(k))) => B::CmpAttrIK(op, e, s, k),
            (a, I::Const(Some(k))) => B::CmpIK(op, Box::new(a), k),
            (a, c) => B::CmpI(op, Box::new(a), Box::new(c)),
        },
        Kind::Float => match (compile_float(x), compile_float(y)) {
            (F::Attr(e, s, None), F::Const(Some(k))) => B::CmpAttrFK(op, e, s, k),
            (a, F::Const(Some(k))) => B::CmpFK(op, Box::new(a), k),
            (a, c) => B::CmpF(op, Box::new(a), Box::new(c)),
        },
        Kind::Bool => B::CmpBool(op, b(x), b(y)),
        Kind::Str => B::CmpS(op, s(x), s(y)),
        Kind::Set => unreachable!("the checker never compares sets"),
    }
}

fn compile_in_list(kind: Kind, needle: &Ir, items: &[Value]) -> B {
    match kind {
        Kind::Int => {
            let mut ints: Vec<i64> = items
                .iter()
                .filter_map(|v| match v {
                    Value::Int(i) => Some(*i),
                    _ => None,
                })
                .collect();
            ints.sort_unstable();
            ints.dedup();
            if ints.iter().all(|i| (0..64).contains(i)) {
                B::InMask(i(needle), ints.iter().fold(0u64, |m, i| m | 1 << i))
            } else {
                B::InInts(i(needle), ints.into_boxed_slice())
            }
        }
        Kind::Float => B::InFloats(
            f(needle),
            items
                .iter()
                .filter_map(|v| match v {
                    Value::Float(x) => Some(*x),
                    _ => None,
                })
                .collect(),
        ),
        Kind::Str => {
            let mut strs: Vec<Box<str>> = items
                .iter()
                .filter_map(|v| match v {
                    Value::Str(x) => Some(x.clone()),
                    _ => None,
                })
                .collect();
            strs.sort_unstable();
            strs.dedup();
            B::InStrs(s(needle), strs.into_boxed_slice())
        }
        Kind::Bool => {
            let has = |want: bool| items.contains(&Value::Bool(want));
            B::InBools(b(needle), [has(false), has(true)])
        }
        Kind::Set => unreachable!("the checker rejects sets left of `in`"),
    }
}

pub fn compile_int(ir: &Ir) -> I {
    if ir.is_constant() && !matches!(ir, Ir::Const(_)) {
        return I::Const(compile_int_raw(ir).eval(&empty_env()));
    }
    compile_int_raw(ir)
}

fn compile_int_raw(ir: &Ir) -> I {
    match ir {
        Ir::Const(Value::Int(v)) => I::Const(Some(*v)),
        Ir::Const(_) => I::Const(None),
        Ir::Attr {
            entity,
            slot,
            default,
            ..
        } => I::Attr(ent(*entity), *slot, read_int(default, None)),
        Ir::Neg(_, a) => I::Neg(i(a)),
        Ir::Arith(op, _, x, y) => I::Arith(*op, i(x), i(y)),
        Ir::Cond(_, c, t, e) => I::Cond(b(c), i(t), i(e)),
        Ir::Call(Func::Now, _, _) => I::Now,
        Ir::Call(Func::Min, _, args) => I::Min(args.iter().map(compile_int).collect()),
        Ir::Call(Func::Max, _, args) => I::Max(args.iter().map(compile_int).collect()),
        Ir::Call(Func::Clamp, _, args) => I::Clamp(Box::new([
            compile_int(&args[0]),
            compile_int(&args[1]),
            compile_int(&args[2]),
        ])),
        Ir::Call(Func::Abs, _, args) => I::Abs(i(&args[0])),
        Ir::Call(Func::SizeSet, _, args) => I::SizeSet(Box::new(compile_set(&args[0]))),
        Ir::Call(Func::SizeStr, _, args) => I::SizeStr(s(&args[0])),
        other => unreachable!("the checker types `{other:?}` as int"),
    }
}

pub fn compile_float(ir: &Ir) -> F {
    if ir.is_constant() && !matches!(ir, Ir::Const(_)) {
        return F::Const(compile_float_raw(ir).eval(&empty_env()));
    }
    compile_float_raw(ir)
}

fn compile_float_raw(ir: &Ir) -> F {
    match ir {
        Ir::Const(Value::Float(v)) => F::Const(finite(*v)),
        Ir::Const(_) => F::Const(None),
        Ir::Attr {
            entity,
            slot,
            default,
            ..
        } => F::Attr(ent(*entity), *slot, read_float(default, None)),
        Ir::IntToFloat(a) => F::FromI(i(a)),
        Ir::Neg(_, a) => F::Neg(f(a)),
        Ir::Arith(op, _, x, y) => F::Arith(*op, f(x), f(y)),
        Ir::Cond(_, c, t, e) => F::Cond(b(c), f(t), f(e)),
        Ir::Call(Func::Min, _, args) => F::Min(args.iter().map(compile_float).collect()),
        Ir::Call(Func::Max, _, args) => F::Max(args.iter().map(compile_float).collect()),
        Ir::Call(Func::Clamp, _, args) => F::Clamp(Box::new([
            compile_float(&args[0]),
            compile_float(&args[1]),
            compile_float(&args[2]),
        ])),
        Ir::Call(Func::Abs, _, args) => F::Abs(f(&args[0])),
        Ir::Call(Func::Exp, _, args) => F::Exp(f(&args[0])),
        Ir::Call(Func::Ln, _, args) => F::Ln(f(&args[0])),
        Ir::Call(Func::Sigmoid, _, args) => F::Sigmoid(f(&args[0])),
        Ir::Call(Func::DaysSince, _, args) => F::Since(i(&args[0]), 86_400_000.0),
        Ir::Call(Func::HoursSince, _, args) => F::Since(i(&args[0]), 3_600_000.0),
        other => unreachable!("the checker types `{other:?}` as float"),
    }
}

pub fn compile_str(ir: &Ir) -> S {
    if ir.is_constant() && !matches!(ir, Ir::Const(_)) {
        let raw = compile_str_raw(ir);
        return S::Const(raw.eval(&empty_env()).map(Str::to_owned_str));
    }
    compile_str_raw(ir)
}

fn compile_str_raw(ir: &Ir) -> S {
    match ir {
        Ir::Const(Value::Str(v)) => S::Const(Some(v.clone())),
        Ir::Const(_) => S::Const(None),
        Ir::Attr {
            entity,
            slot,
            default,
            ..
        } => S::Attr(
            ent(*entity),
            *slot,
            match default {
                Value::Str(v) => Some(v.clone()),
                _ => None,
            },
        ),
        Ir::EnumName(a, names) => S::EnumName(i(a), names.clone()),
        Ir::Cond(_, c, t, e) => S::Cond(b(c), s(t), s(e)),
        Ir::Call(Func::Lower, _, args) => S::Lower(s(&args[0])),
        other => unreachable!("the checker types `{other:?}` as string"),
    }
}

fn compile_set(ir: &Ir) -> SetN {
    match ir {
        Ir::Attr {
            entity,
            slot,
            default,
            ..
        } => SetN::Attr(
            ent(*entity),
            *slot,
            match default {
                Value::Set(v) => Some(v.clone()),
                _ => None,
            },
        ),
        Ir::Cond(_, c, t, e) => {
            SetN::Cond(b(c), Box::new(compile_set(t)), Box::new(compile_set(e)))
        }
        other => unreachable!("the checker types `{other:?}` as set"),
    }
}
