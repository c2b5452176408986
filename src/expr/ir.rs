//! The typed intermediate form the checker produces: every name resolved to a slot, every
//! implicit conversion explicit, every operator tagged with the runtime kind it works on.
//! Both the compiler and the reference evaluator (tests) start from here.

use std::fmt;
use std::sync::Arc;

use crate::schema::{Entity, EnumDef, EventKind, Value};

/// The static type of an expression, as rule authors see it.
#[derive(Debug, Clone, PartialEq)]
pub enum Ty {
    Bool,
    Int,
    Float,
    String,
    /// The values of one enum attribute; `attribute` names it in messages.
    Enum {
        attribute: Arc<str>,
        def: EnumDef,
    },
    Set,
    Timestamp,
    Duration,
    /// A literal list, only allowed on the right of `in`.
    List,
}

impl Ty {
    pub fn is_numeric(&self) -> bool {
        matches!(self, Ty::Int | Ty::Float)
    }

    /// How values of this type are represented at run time.
    pub fn kind(&self) -> Kind {
        match self {
            Ty::Bool => Kind::Bool,
            Ty::Int | Ty::Timestamp | Ty::Duration | Ty::Enum { .. } => Kind::Int,
            Ty::Float => Kind::Float,
            Ty::String => Kind::Str,
            Ty::Set | Ty::List => Kind::Set,
        }
    }
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ty::Bool => f.write_str("bool"),
            Ty::Int => f.write_str("int"),
            Ty::Float => f.write_str("float"),
            Ty::String => f.write_str("string"),
            Ty::Enum { attribute, .. } => write!(f, "enum {attribute}"),
            Ty::Set => f.write_str("set"),
            Ty::Timestamp => f.write_str("timestamp"),
            Ty::Duration => f.write_str("duration"),
            Ty::List => f.write_str("list"),
        }
    }
}

/// Run-time representation: timestamps (ms since the epoch), durations (ms) and enum
/// variants (their index) are all integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Int,
    Float,
    Str,
    Set,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn test(self, ord: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            CmpOp::Eq => ord == Equal,
            CmpOp::Ne => ord != Equal,
            CmpOp::Lt => ord == Less,
            CmpOp::Le => ord != Greater,
            CmpOp::Gt => ord == Greater,
            CmpOp::Ge => ord != Less,
        }
    }

    /// The same comparison with its operands swapped: `k < x` is `x > k`.
    pub fn flip(self) -> CmpOp {
        match self {
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::Le => CmpOp::Ge,
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::Ge => CmpOp::Le,
            same => same,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

/// The built-in functions. `check.rs` holds their signatures, `FUNCTIONS` their names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    DaysSince,
    HoursSince,
    Now,
    Min,
    Max,
    Clamp,
    Abs,
    Exp,
    Ln,
    Sigmoid,
    SizeSet,
    SizeStr,
    Lower,
    StartsWith,
    /// A history function: how many events of a kind, within a duration.
    Count(Count),
}

/// What a history function counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    pub kind: EventKind,
    pub target: Target,
    /// Only events in the request's channel.
    pub here: bool,
}

/// Whose events a history function counts: by [`key`](crate::schema::key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    ThisOffer,
    Offer(u32),
    ThisGroup,
    Group(u32),
}

/// Parses a history function's name:
/// `[group_]{impressions|clicks|accepts|rejects|conversions}[_here]`.
pub fn history_function(name: &str) -> Option<(EventKind, bool, bool)> {
    let (group, rest) = match name.strip_prefix("group_") {
        Some(rest) => (true, rest),
        None => (false, name),
    };
    let (here, kind) = match rest.strip_suffix("_here") {
        Some(kind) => (true, kind),
        None => (false, rest),
    };
    let kind = match kind {
        "impressions" => EventKind::Impression,
        "clicks" => EventKind::Click,
        "accepts" => EventKind::Accept,
        "rejects" => EventKind::Reject,
        "conversions" => EventKind::Convert,
        _ => return None,
    };
    Some((kind, group, here))
}

/// Every function a rule may call, with a one-line signature for messages and docs.
/// `has` is listed here but is a special form: its argument is an attribute, not a value.
pub const FUNCTIONS: &[(&str, &str)] = &[
    ("has", "has(attribute) -> bool"),
    ("days_since", "days_since(timestamp) -> float"),
    ("hours_since", "hours_since(timestamp) -> float"),
    ("now", "now() -> timestamp"),
    ("min", "min(number, number, ...) -> number"),
    ("max", "max(number, number, ...) -> number"),
    ("clamp", "clamp(number, low, high) -> number"),
    ("abs", "abs(number) -> number"),
    ("exp", "exp(number) -> float"),
    ("ln", "ln(number) -> float"),
    ("sigmoid", "sigmoid(number) -> float"),
    ("size", "size(set | string) -> int"),
    ("lower", "lower(string) -> string"),
    ("starts_with", "starts_with(string, prefix) -> bool"),
    ("adaptive", "adaptive('model') -> float"),
    ("impressions", "impressions(duration [, offer]) -> int"),
    ("clicks", "clicks(duration [, offer]) -> int"),
    ("accepts", "accepts(duration [, offer]) -> int"),
    ("rejects", "rejects(duration [, offer]) -> int"),
    ("conversions", "conversions(duration [, offer]) -> int"),
    (
        "impressions_here",
        "impressions_here(duration [, offer]) -> int",
    ),
    (
        "group_impressions",
        "group_impressions(duration [, group]) -> int",
    ),
    (
        "group_impressions_here",
        "group_impressions_here(duration [, group]) -> int",
    ),
];

/// A typed, resolved expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Ir {
    /// A constant of the expression's kind (`Value::Missing` for a folded missing value).
    Const(Value),
    /// Reads a slot; `default` stands in when the slot is unset.
    Attr {
        entity: Entity,
        slot: u32,
        kind: Kind,
        default: Value,
    },
    /// Whether the slot holds a value (its default counts).
    Has {
        entity: Entity,
        slot: u32,
        has_default: bool,
    },
    Not(Box<Ir>),
    Neg(Kind, Box<Ir>),
    And(Box<Ir>, Box<Ir>),
    Or(Box<Ir>, Box<Ir>),
    Cmp(CmpOp, Kind, Box<Ir>, Box<Ir>),
    Arith(ArithOp, Kind, Box<Ir>, Box<Ir>),
    IntToFloat(Box<Ir>),
    /// The name of an enum variant, as a string.
    EnumName(Box<Ir>, Arc<[Box<str>]>),
    /// Membership in a literal list of constants of the needle's kind.
    InList(Kind, Box<Ir>, Vec<Value>),
    /// Membership of a string in a set.
    InSet(Box<Ir>, Box<Ir>),
    Cond(Kind, Box<Ir>, Box<Ir>, Box<Ir>),
    /// A built-in function; `kind` is the kind its numeric arguments were unified to.
    Call(Func, Kind, Vec<Ir>),
    /// `adaptive('id')`: the model's prediction for the offer being decided (float).
    Adaptive(Arc<crate::adaptive::Model>),
}

impl Ir {
    /// The adaptive models it reads, each once, in the order it names them.
    pub fn models(&self, out: &mut Vec<Arc<crate::adaptive::Model>>) {
        match self {
            Ir::Adaptive(m) => {
                if !out.iter().any(|o| Arc::ptr_eq(o, m)) {
                    out.push(Arc::clone(m));
                }
            }
            Ir::Const(_) | Ir::Attr { .. } | Ir::Has { .. } => {}
            Ir::Not(a) | Ir::Neg(_, a) | Ir::IntToFloat(a) | Ir::EnumName(a, _) => a.models(out),
            Ir::InList(_, a, _) => a.models(out),
            Ir::And(a, b)
            | Ir::Or(a, b)
            | Ir::Cmp(_, _, a, b)
            | Ir::Arith(_, _, a, b)
            | Ir::InSet(a, b) => {
                a.models(out);
                b.models(out);
            }
            Ir::Cond(_, c, t, e) => {
                c.models(out);
                t.models(out);
                e.models(out);
            }
            Ir::Call(_, _, args) => args.iter().for_each(|a| a.models(out)),
        }
    }

    /// Whether the value depends on nothing but the expression itself, so it can be folded.
    pub fn is_constant(&self) -> bool {
        match self {
            Ir::Const(_) => true,
            Ir::Attr { .. } | Ir::Has { .. } | Ir::Adaptive(_) => false,
            Ir::Not(a) | Ir::Neg(_, a) | Ir::IntToFloat(a) | Ir::EnumName(a, _) => a.is_constant(),
            Ir::InList(_, a, _) => a.is_constant(),
            Ir::And(a, b)
            | Ir::Or(a, b)
            | Ir::Cmp(_, _, a, b)
            | Ir::Arith(_, _, a, b)
            | Ir::InSet(a, b) => a.is_constant() && b.is_constant(),
            Ir::Cond(_, c, t, e) => c.is_constant() && t.is_constant() && e.is_constant(),
            Ir::Call(Func::Now | Func::DaysSince | Func::HoursSince | Func::Count(_), _, _) => {
                false
            }
            Ir::Call(_, _, args) => args.iter().all(Ir::is_constant),
        }
    }
}
