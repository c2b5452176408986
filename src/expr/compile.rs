//! [`Ir`] to the evaluated form: a tree of closures, one per node, typed by run-time kind
//! so evaluation never checks a type.
//!
//! Closures rather than an enum walked by one big `match`: each node's code is small, with
//! its own call site, so the processor predicts the dispatch and no node pays the prologue
//! of a function that handles every kind of node (measured: a 10-node score went from 63
//! to under 20 ns; BENCHMARKS.md). The shapes rules are made of get fast paths: an
//! attribute compared with a constant reads the slot inline, `&&` and `||` chains are
//! flattened into one loop, arithmetic with a constant operand does not call a child for
//! it, an enum in a list is a bit mask. Constant subtrees are folded at compile time.
//!
//! Strings and sets stay a small enum ([`S`], [`SetN`]): they borrow from the record and
//! from their own constants, which a boxed closure cannot return.
//!
//! Every evaluation returns `None` for a missing value; see docs/rules.md for the
//! semantics. Nothing here allocates, locks or panics.

use std::cmp::Ordering;
use std::sync::Arc;

use super::Env;
use super::ir::{ArithOp, CmpOp, Count, Func, Ir, Kind, Target};
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
        } else if self.s.is_ascii() && other.s.is_ascii() {
            // On ASCII, Unicode lower-casing is ASCII lower-casing, byte for byte.
            self.ascii_bytes().cmp(other.ascii_bytes())
        } else {
            self.chars().cmp(other.chars())
        }
    }

    fn eq(self, other: Str<'_>) -> bool {
        if !self.lower && !other.lower {
            self.s == other.s
        } else if self.s.is_ascii() && other.s.is_ascii() {
            // Lower-casing keeps an ASCII string's length: unequal lengths differ.
            self.s.len() == other.s.len() && self.ascii_bytes().eq(other.ascii_bytes())
        } else {
            self.chars().eq(other.chars())
        }
    }

    fn ascii_bytes(self) -> impl Iterator<Item = u8> + 'a {
        let lower = self.lower;
        self.s
            .bytes()
            .map(move |b| if lower { b.to_ascii_lowercase() } else { b })
    }

    fn starts_with(self, prefix: Str<'_>) -> bool {
        if !self.lower && !prefix.lower {
            return self.s.starts_with(prefix.s);
        }
        if self.s.is_ascii() && prefix.s.is_ascii() {
            let mut subject = self.ascii_bytes();
            return prefix.ascii_bytes().all(|c| subject.next() == Some(c));
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

/// A compiled boolean expression.
pub type BoolFn = Box<dyn Fn(&Env<'_>) -> Option<bool> + Send + Sync>;
/// A compiled integer expression (ints, timestamps, durations, enum variants).
pub type IntFn = NumFn<i64>;
/// A compiled float expression.
pub type FloatFn = NumFn<f64>;
/// A compiled float expression that clones share.
pub type SharedFloatFn = Arc<dyn Fn(&Env<'_>) -> Option<f64> + Send + Sync>;
/// A compiled numeric expression of type `T`.
pub type NumFn<T> = Box<dyn Fn(&Env<'_>) -> Option<T> + Send + Sync>;

pub enum S {
    Const(Option<Box<str>>),
    Attr(Ent, u32, Option<Box<str>>),
    EnumName(IntFn, Arc<[Box<str>]>),
    Lower(Box<S>),
    Cond(BoolFn, Box<S>, Box<S>),
}

pub enum SetN {
    Attr(Ent, u32, Option<Box<[Box<str>]>>),
    Cond(BoolFn, Box<SetN>, Box<SetN>),
}

/// A float result, or missing when it is NaN or infinite.
#[inline]
fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// A comparison of two numbers; a NaN never gets here (float results are finite).
#[inline]
fn cmp_num<T: PartialOrd>(op: CmpOp, a: T, b: T) -> bool {
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

#[inline]
fn arith_i(op: ArithOp, a: i64, b: i64) -> Option<i64> {
    match op {
        ArithOp::Add => a.checked_add(b),
        ArithOp::Sub => a.checked_sub(b),
        ArithOp::Mul => a.checked_mul(b),
        ArithOp::Rem => a.checked_rem(b),
        // The checker types every division as float.
        ArithOp::Div => None,
    }
}

#[inline]
fn arith_f(op: ArithOp, a: f64, b: f64) -> Option<f64> {
    finite(match op {
        ArithOp::Add => a + b,
        ArithOp::Sub => a - b,
        ArithOp::Mul => a * b,
        ArithOp::Div => a / b,
        ArithOp::Rem => a % b,
    })
}

/// Kleene conjunction over a flattened chain: a definite `false` decides it.
#[inline]
fn all(parts: &[BoolFn], env: &Env<'_>) -> Option<bool> {
    let mut known = true;
    for p in parts {
        match p(env) {
            Some(false) => return Some(false),
            Some(true) => {}
            None => known = false,
        }
    }
    known.then_some(true)
}

/// Kleene disjunction over a flattened chain: a definite `true` decides it.
#[inline]
fn any(parts: &[BoolFn], env: &Env<'_>) -> Option<bool> {
    let mut known = true;
    for p in parts {
        match p(env) {
            Some(true) => return Some(true),
            Some(false) => {}
            None => known = false,
        }
    }
    known.then_some(false)
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
                let i = usize::try_from(a(env)?).ok()?;
                names.get(i).map(|n| Str::plain(n))
            }
            S::Lower(a) => Some(Str {
                lower: true,
                ..a.eval(env)?
            }),
            S::Cond(c, t, e) => {
                if c(env)? {
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
                if c(env)? {
                    t.eval(env)
                } else {
                    e.eval(env)
                }
            }
        }
    }
}

/// How far back the history functions in `ir` look, in ms: 0 for none, `i64::MAX` when a
/// window is not a constant.
pub fn horizon(ir: &Ir) -> i64 {
    let children: Vec<&Ir> = match ir {
        Ir::Call(Func::Count(_), _, args) => {
            return match fold_int(&args[0]) {
                Some(Some(ms)) => ms.max(0),
                _ => i64::MAX,
            };
        }
        Ir::Const(_) | Ir::Attr { .. } | Ir::Has { .. } | Ir::Adaptive(_) => vec![],
        Ir::Not(a)
        | Ir::Neg(_, a)
        | Ir::IntToFloat(a)
        | Ir::EnumName(a, _)
        | Ir::InList(_, a, _) => vec![a],
        Ir::And(a, b)
        | Ir::Or(a, b)
        | Ir::Cmp(_, _, a, b)
        | Ir::Arith(_, _, a, b)
        | Ir::InSet(a, b) => vec![a, b],
        Ir::Cond(_, c, t, e) => vec![c, t, e],
        Ir::Call(_, _, args) => args.iter().collect(),
    };
    children.into_iter().map(horizon).max().unwrap_or(0)
}

/// How many of the customer's events match a history function, within `within` ms before
/// now. History is sorted by time, so only the window's events are looked at.
fn count_events(env: &Env<'_>, count: Count, within: i64) -> i64 {
    let since = env.now.saturating_sub(within);
    let start = env.history.partition_point(|e| e.at < since);
    env.history[start..]
        .iter()
        .take_while(|e| e.at <= env.now)
        .filter(|e| {
            e.kind == count.kind
                && (!count.here || e.channel == env.channel)
                && match count.target {
                    Target::ThisOffer => e.offer == env.offer,
                    Target::Offer(k) => e.offer == k,
                    Target::ThisGroup => env.group != 0 && e.group == env.group,
                    Target::Group(k) => e.group == k,
                }
        })
        .count() as i64
}

/// Byte equality without a call to `memcmp` for short strings, where the call costs more
/// than the comparison (set members such as product codes are short and often of equal
/// length). The loop accumulates differences so it is not turned back into `bcmp`.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    if a.len() > 32 {
        return a == b;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Sets up to this size are scanned; larger ones are binary-searched.
const SCAN_LIMIT: usize = 16;

/// Whether `x`, from an expression, is in the sorted list or set `items`.
#[inline]
fn contains(items: &[Box<str>], x: Str<'_>) -> bool {
    if x.lower {
        items.iter().any(|s| x.eq(Str::plain(s)))
    } else if items.len() <= SCAN_LIMIT {
        // Slice equality compares lengths before bytes, so members of another length cost
        // one comparison and no call to `memcmp`, which dominates for short strings.
        items
            .iter()
            .any(|s| same_bytes(s.as_bytes(), x.s.as_bytes()))
    } else {
        items.binary_search_by(|s| (**s).cmp(x.s)).is_ok()
    }
}

// ---- compilation --------------------------------------------------------------------------

fn ent(e: Entity) -> Ent {
    e as usize
}

/// The environment constant subtrees are folded in: they read no attribute and no clock.
fn empty_env() -> Env<'static> {
    Env::new(&[], &[], &[], 0)
}

/// The value of a constant subtree, or `None` if it reads anything.
fn fold_int(ir: &Ir) -> Option<Option<i64>> {
    ir.is_constant().then(|| compile_int_raw(ir)(&empty_env()))
}

fn fold_float(ir: &Ir) -> Option<Option<f64>> {
    ir.is_constant()
        .then(|| compile_float_raw(ir)(&empty_env()))
}

pub fn compile_bool(ir: &Ir) -> BoolFn {
    if ir.is_constant() && !matches!(ir, Ir::Const(_)) {
        let v = compile_bool_raw(ir)(&empty_env());
        return Box::new(move |_| v);
    }
    compile_bool_raw(ir)
}

/// The operands of a chain of `&&` (or `||`), left to right.
fn flatten<'i>(ir: &'i Ir, and: bool, out: &mut Vec<&'i Ir>) {
    match (ir, and) {
        (Ir::And(a, b), true) | (Ir::Or(a, b), false) => {
            flatten(a, and, out);
            flatten(b, and, out);
        }
        _ => out.push(ir),
    }
}

fn compile_bool_raw(ir: &Ir) -> BoolFn {
    match ir {
        Ir::Const(v) => {
            let v = match v {
                Value::Bool(b) => Some(*b),
                _ => None,
            };
            Box::new(move |_| v)
        }
        Ir::Attr {
            entity,
            slot,
            default,
            ..
        } => {
            let (e, s) = (ent(*entity), *slot);
            let d = match default {
                Value::Bool(v) => Some(*v),
                _ => None,
            };
            Box::new(move |env| match env.get(e, s) {
                Value::Bool(b) => Some(*b),
                Value::Missing => d,
                _ => None,
            })
        }
        Ir::Has {
            has_default: true, ..
        } => Box::new(|_| Some(true)),
        Ir::Has { entity, slot, .. } => {
            let (e, s) = (ent(*entity), *slot);
            Box::new(move |env| Some(!env.get(e, s).is_missing()))
        }
        Ir::Not(a) => {
            let a = compile_bool(a);
            Box::new(move |env| a(env).map(|b| !b))
        }
        Ir::And(..) | Ir::Or(..) => {
            let and = matches!(ir, Ir::And(..));
            let mut operands = Vec::new();
            flatten(ir, and, &mut operands);
            let parts: Box<[BoolFn]> = operands.into_iter().map(compile_bool).collect();
            if and {
                Box::new(move |env| all(&parts, env))
            } else {
                Box::new(move |env| any(&parts, env))
            }
        }
        Ir::Cmp(op, kind, x, y) => compile_cmp(*op, *kind, x, y),
        Ir::InList(kind, needle, items) => compile_in_list(*kind, needle, items),
        Ir::InSet(needle, set) => {
            if let (
                S::Const(Some(k)),
                Ir::Attr {
                    entity,
                    slot,
                    default,
                    ..
                },
            ) = (compile_str(needle), &**set)
            {
                // A constant in a set attribute: one closure, the slot read inline.
                let (e, s) = (ent(*entity), *slot);
                let d = match default {
                    Value::Set(v) => Some(v.clone()),
                    _ => None,
                };
                return Box::new(move |env| {
                    let items = match env.get(e, s) {
                        Value::Set(items) => items,
                        Value::Missing => d.as_deref()?,
                        _ => return None,
                    };
                    Some(contains(items, Str::plain(&k)))
                });
            }
            let (needle, set) = (compile_str(needle), compile_set(set));
            Box::new(move |env| Some(contains(set.eval(env)?, needle.eval(env)?)))
        }
        Ir::Cond(_, c, t, e) => {
            let (c, t, e) = (compile_bool(c), compile_bool(t), compile_bool(e));
            Box::new(move |env| if c(env)? { t(env) } else { e(env) })
        }
        Ir::Call(Func::StartsWith, _, args) => {
            let (a, b) = (compile_str(&args[0]), compile_str(&args[1]));
            Box::new(move |env| Some(a.eval(env)?.starts_with(b.eval(env)?)))
        }
        other => unreachable!("the checker types `{other:?}` as bool"),
    }
}

fn compile_cmp(op: CmpOp, kind: Kind, x: &Ir, y: &Ir) -> BoolFn {
    // Put a constant operand on the right so the fast paths see one shape.
    let (op, x, y) = if x.is_constant() && !y.is_constant() {
        (op.flip(), y, x)
    } else {
        (op, x, y)
    };
    match kind {
        Kind::Int => compare_numbers(op, x, y, fold_int, read_int, compile_int),
        Kind::Float => compare_numbers(op, x, y, fold_float, read_float, compile_float),
        Kind::Bool => {
            let (x, y) = (compile_bool(x), compile_bool(y));
            Box::new(move |env| Some(op.test(x(env)?.cmp(&y(env)?))))
        }
        Kind::Str => {
            let (x, y) = (compile_str(x), compile_str(y));
            match op {
                CmpOp::Eq => Box::new(move |env| Some(x.eval(env)?.eq(y.eval(env)?))),
                CmpOp::Ne => Box::new(move |env| Some(!x.eval(env)?.eq(y.eval(env)?))),
                _ => Box::new(move |env| Some(op.test(x.eval(env)?.cmp(y.eval(env)?)))),
            }
        }
        Kind::Set => unreachable!("the checker never compares sets"),
    }
}

/// A comparison of two ints or two floats, with the right operand folded when constant
/// and an attribute on the left read inline.
fn compare_numbers<T: Copy + PartialOrd + Send + Sync + 'static>(
    op: CmpOp,
    x: &Ir,
    y: &Ir,
    fold: fn(&Ir) -> Option<Option<T>>,
    read: fn(&Value, Option<T>) -> Option<T>,
    compile: fn(&Ir) -> NumFn<T>,
) -> BoolFn {
    match (x, fold(y)) {
        (_, Some(None)) => Box::new(|_| None),
        (
            Ir::Attr {
                entity,
                slot,
                default,
                ..
            },
            Some(Some(k)),
        ) => {
            let (e, s, d) = (ent(*entity), *slot, read(default, None));
            Box::new(move |env| Some(cmp_num(op, read(env.get(e, s), d)?, k)))
        }
        (x, Some(Some(k))) => {
            let x = compile(x);
            Box::new(move |env| Some(cmp_num(op, x(env)?, k)))
        }
        (x, None) => {
            let (x, y) = (compile(x), compile(y));
            Box::new(move |env| Some(cmp_num(op, x(env)?, y(env)?)))
        }
    }
}

fn compile_in_list(kind: Kind, needle: &Ir, items: &[Value]) -> BoolFn {
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
            let small = ints.iter().all(|i| (0..64).contains(i));
            if small
                && let Ir::Attr {
                    entity,
                    slot,
                    default,
                    ..
                } = needle
            {
                // An enum attribute in a list of variants: one load and a bit test.
                let mask = ints.iter().fold(0u64, |m, i| m | 1 << i);
                let (e, s, d) = (ent(*entity), *slot, read_int(default, None));
                return Box::new(move |env| {
                    let i = read_int(env.get(e, s), d)?;
                    Some((0..64).contains(&i) && mask & (1 << i) != 0)
                });
            }
            let needle = compile_int(needle);
            let ints = ints.into_boxed_slice();
            Box::new(move |env| Some(ints.binary_search(&needle(env)?).is_ok()))
        }
        Kind::Float => {
            let floats: Box<[f64]> = items
                .iter()
                .filter_map(|v| match v {
                    Value::Float(x) => Some(*x),
                    _ => None,
                })
                .collect();
            let needle = compile_float(needle);
            Box::new(move |env| {
                let x = needle(env)?;
                Some(floats.contains(&x))
            })
        }
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
            let strs = strs.into_boxed_slice();
            let needle = compile_str(needle);
            Box::new(move |env| Some(contains(&strs, needle.eval(env)?)))
        }
        Kind::Bool => {
            let has = [
                items.contains(&Value::Bool(false)),
                items.contains(&Value::Bool(true)),
            ];
            let needle = compile_bool(needle);
            Box::new(move |env| Some(has[usize::from(needle(env)?)]))
        }
        Kind::Set => unreachable!("the checker rejects sets left of `in`"),
    }
}

pub fn compile_int(ir: &Ir) -> IntFn {
    if ir.is_constant() && !matches!(ir, Ir::Const(_)) {
        let v = compile_int_raw(ir)(&empty_env());
        return Box::new(move |_| v);
    }
    compile_int_raw(ir)
}

fn compile_int_raw(ir: &Ir) -> IntFn {
    match ir {
        Ir::Const(v) => {
            let v = match v {
                Value::Int(i) => Some(*i),
                _ => None,
            };
            Box::new(move |_| v)
        }
        Ir::Attr {
            entity,
            slot,
            default,
            ..
        } => {
            let (e, s, d) = (ent(*entity), *slot, read_int(default, None));
            Box::new(move |env| read_int(env.get(e, s), d))
        }
        Ir::Neg(_, a) => {
            let a = compile_int(a);
            Box::new(move |env| a(env)?.checked_neg())
        }
        Ir::Arith(op, _, x, y) => {
            let op = *op;
            match (fold_int(x), fold_int(y)) {
                // Both folded already: never compile a folded operand again, or a chain
                // of constants (`1+1+…+1`) costs twice as much per link.
                (Some(a), Some(b)) => {
                    let v = a.zip(b).and_then(|(a, b)| arith_i(op, a, b));
                    Box::new(move |_| v)
                }
                (_, Some(Some(k))) => {
                    let x = compile_int(x);
                    Box::new(move |env| arith_i(op, x(env)?, k))
                }
                (Some(Some(k)), _) => {
                    let y = compile_int(y);
                    Box::new(move |env| arith_i(op, k, y(env)?))
                }
                _ => {
                    let (x, y) = (compile_int(x), compile_int(y));
                    Box::new(move |env| arith_i(op, x(env)?, y(env)?))
                }
            }
        }
        Ir::Cond(_, c, t, e) => {
            let (c, t, e) = (compile_bool(c), compile_int(t), compile_int(e));
            Box::new(move |env| if c(env)? { t(env) } else { e(env) })
        }
        Ir::Call(Func::Now, _, _) => Box::new(|env| Some(env.now)),
        Ir::Call(Func::Count(count), _, args) => {
            let count = *count;
            match fold_int(&args[0]) {
                Some(Some(within)) => Box::new(move |env| Some(count_events(env, count, within))),
                Some(None) => Box::new(|_| None),
                None => {
                    let within = compile_int(&args[0]);
                    Box::new(move |env| Some(count_events(env, count, within(env)?)))
                }
            }
        }
        Ir::Call(Func::Min, _, args) => {
            let args: Box<[IntFn]> = args.iter().map(compile_int).collect();
            Box::new(move |env| args.iter().try_fold(i64::MAX, |m, a| Some(m.min(a(env)?))))
        }
        Ir::Call(Func::Max, _, args) => {
            let args: Box<[IntFn]> = args.iter().map(compile_int).collect();
            Box::new(move |env| args.iter().try_fold(i64::MIN, |m, a| Some(m.max(a(env)?))))
        }
        Ir::Call(Func::Clamp, _, args) => {
            let (x, lo, hi) = (
                compile_int(&args[0]),
                compile_int(&args[1]),
                compile_int(&args[2]),
            );
            Box::new(move |env| {
                let (x, lo, hi) = (x(env)?, lo(env)?, hi(env)?);
                (lo <= hi).then(|| x.clamp(lo, hi))
            })
        }
        Ir::Call(Func::Abs, _, args) => {
            let a = compile_int(&args[0]);
            Box::new(move |env| a(env)?.checked_abs())
        }
        Ir::Call(Func::SizeSet, _, args) => {
            let set = compile_set(&args[0]);
            Box::new(move |env| Some(set.eval(env)?.len() as i64))
        }
        Ir::Call(Func::SizeStr, _, args) => {
            let s = compile_str(&args[0]);
            Box::new(move |env| Some(s.eval(env)?.chars().count() as i64))
        }
        other => unreachable!("the checker types `{other:?}` as int"),
    }
}

pub fn compile_float(ir: &Ir) -> FloatFn {
    if ir.is_constant() && !matches!(ir, Ir::Const(_)) {
        let v = compile_float_raw(ir)(&empty_env());
        return Box::new(move |_| v);
    }
    compile_float_raw(ir)
}

fn compile_float_raw(ir: &Ir) -> FloatFn {
    match ir {
        Ir::Adaptive(model) => {
            let model = Arc::clone(model);
            Box::new(move |env| {
                let (customer, context) = (env.entities[0], env.entities[1]);
                Some(match env.memo {
                    Some(memo) => {
                        model.predict_memo(env.offer, env.channel, customer, context, memo)
                    }
                    None => model.predict(env.offer, env.channel, customer, context),
                })
            })
        }
        Ir::Const(v) => {
            let v = match v {
                Value::Float(f) => finite(*f),
                _ => None,
            };
            Box::new(move |_| v)
        }
        Ir::Attr {
            entity,
            slot,
            default,
            ..
        } => {
            let (e, s, d) = (ent(*entity), *slot, read_float(default, None));
            Box::new(move |env| read_float(env.get(e, s), d))
        }
        Ir::IntToFloat(a) => {
            let a = compile_int(a);
            Box::new(move |env| Some(a(env)? as f64))
        }
        Ir::Neg(_, a) => {
            let a = compile_float(a);
            Box::new(move |env| Some(-a(env)?))
        }
        Ir::Arith(op, _, x, y) => {
            let op = *op;
            match (fold_float(x), fold_float(y)) {
                // As for ints: a folded operand is never compiled again.
                (Some(a), Some(b)) => {
                    let v = a.zip(b).and_then(|(a, b)| arith_f(op, a, b));
                    Box::new(move |_| v)
                }
                (_, Some(Some(k))) => {
                    let x = compile_float(x);
                    Box::new(move |env| arith_f(op, x(env)?, k))
                }
                (Some(Some(k)), _) => {
                    let y = compile_float(y);
                    Box::new(move |env| arith_f(op, k, y(env)?))
                }
                _ => {
                    let (x, y) = (compile_float(x), compile_float(y));
                    Box::new(move |env| arith_f(op, x(env)?, y(env)?))
                }
            }
        }
        Ir::Cond(_, c, t, e) => {
            let c = compile_bool(c);
            match (fold_float(t), fold_float(e)) {
                // `cond ? 1.2 : 1.0`, the usual shape of a weight: no calls for the branches.
                (Some(t), Some(e)) => Box::new(move |env| if c(env)? { t } else { e }),
                _ => {
                    let (t, e) = (compile_float(t), compile_float(e));
                    Box::new(move |env| if c(env)? { t(env) } else { e(env) })
                }
            }
        }
        Ir::Call(Func::Min, _, args) => {
            let args: Box<[FloatFn]> = args.iter().map(compile_float).collect();
            Box::new(move |env| {
                args.iter()
                    .try_fold(f64::INFINITY, |m, a| Some(m.min(a(env)?)))
            })
        }
        Ir::Call(Func::Max, _, args) => {
            let args: Box<[FloatFn]> = args.iter().map(compile_float).collect();
            Box::new(move |env| {
                args.iter()
                    .try_fold(f64::NEG_INFINITY, |m, a| Some(m.max(a(env)?)))
            })
        }
        Ir::Call(Func::Clamp, _, args) => {
            let (x, lo, hi) = (
                compile_float(&args[0]),
                compile_float(&args[1]),
                compile_float(&args[2]),
            );
            Box::new(move |env| {
                let (x, lo, hi) = (x(env)?, lo(env)?, hi(env)?);
                (lo <= hi).then(|| x.clamp(lo, hi))
            })
        }
        Ir::Call(func @ (Func::Abs | Func::Exp | Func::Ln | Func::Sigmoid), _, args) => {
            let a = compile_float(&args[0]);
            match func {
                Func::Abs => Box::new(move |env| Some(a(env)?.abs())),
                Func::Exp => Box::new(move |env| finite(a(env)?.exp())),
                Func::Ln => Box::new(move |env| finite(a(env)?.ln())),
                _ => Box::new(move |env| finite(1.0 / (1.0 + (-a(env)?).exp()))),
            }
        }
        Ir::Call(func @ (Func::DaysSince | Func::HoursSince), _, args) => {
            let unit = if *func == Func::DaysSince {
                86_400_000.0
            } else {
                3_600_000.0
            };
            if let Ir::Attr {
                entity,
                slot,
                default,
                ..
            } = &args[0]
            {
                let (e, s, d) = (ent(*entity), *slot, read_int(default, None));
                return Box::new(move |env| {
                    Some(env.now.checked_sub(read_int(env.get(e, s), d)?)? as f64 / unit)
                });
            }
            let t = compile_int(&args[0]);
            Box::new(move |env| Some(env.now.checked_sub(t(env)?)? as f64 / unit))
        }
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
        Ir::EnumName(a, names) => S::EnumName(compile_int(a), names.clone()),
        Ir::Cond(_, c, t, e) => S::Cond(
            compile_bool(c),
            Box::new(compile_str(t)),
            Box::new(compile_str(e)),
        ),
        Ir::Call(Func::Lower, _, args) => S::Lower(Box::new(compile_str(&args[0]))),
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
        Ir::Cond(_, c, t, e) => SetN::Cond(
            compile_bool(c),
            Box::new(compile_set(t)),
            Box::new(compile_set(e)),
        ),
        other => unreachable!("the checker types `{other:?}` as set"),
    }
}
