//! Type checking: [`Expr`] against a [`Schema`] to [`Ir`], collecting every error.

use std::sync::Arc;

use super::Vocabulary;
use super::ast::{BinaryOp, Expr, ExprKind, Span, UnaryOp};
use super::error::{ExprError, ExprErrorKind, did_you_mean};
use super::ir::{ArithOp, CmpOp, Count, FUNCTIONS, Func, Ir, Kind, Target, Ty, history_function};
use crate::schema::{AttrType, Entity, EventKind, Schema, Value, key};

/// Type-checks `expr`. `allow_offer` admits the `offer.*` score variables (score formulas).
pub fn check(
    expr: &Expr,
    schema: &Schema,
    allow_offer: bool,
    vocabulary: Option<&Vocabulary>,
) -> Result<(Ir, Ty), Vec<ExprError>> {
    let mut checker = Checker {
        schema,
        allow_offer,
        vocabulary,
        errors: Vec::new(),
    };
    let typed = checker.infer(expr);
    match typed {
        Some(t) if checker.errors.is_empty() => Ok(t),
        _ => Err(checker.errors),
    }
}

struct Checker<'s> {
    schema: &'s Schema,
    allow_offer: bool,
    /// The catalog's offer ids and groups, when known, to check history functions' names.
    vocabulary: Option<&'s Vocabulary>,
    errors: Vec<ExprError>,
}

type Typed = (Ir, Ty);

fn boxed(ir: Ir) -> Box<Ir> {
    Box::new(ir)
}

/// Both operands as floats if either is a float, as ints otherwise; `None` unless numeric.
/// Two operands brought to one numeric kind.
type Promoted = (Ir, Ir, Kind, Ty);

fn promote(a: Typed, b: Typed) -> Result<Promoted, Box<(Typed, Typed)>> {
    match (&a.1, &b.1) {
        (Ty::Int, Ty::Int) => Ok((a.0, b.0, Kind::Int, Ty::Int)),
        (x, y) if x.is_numeric() && y.is_numeric() => {
            Ok((to_float(a), to_float(b), Kind::Float, Ty::Float))
        }
        _ => Err(Box::new((a, b))),
    }
}

fn to_float((ir, ty): Typed) -> Ir {
    match ty {
        Ty::Int => match ir {
            Ir::Const(Value::Int(i)) => Ir::Const(Value::Float(i as f64)),
            ir => Ir::IntToFloat(boxed(ir)),
        },
        _ => ir,
    }
}

/// An enum value as its variant name, so it can meet a string.
fn enum_to_string((ir, ty): Typed) -> Typed {
    match ty {
        Ty::Enum { def, .. } => (Ir::EnumName(boxed(ir), def.variants), Ty::String),
        ty => (ir, ty),
    }
}

fn const_str(ir: &Ir) -> Option<&str> {
    match ir {
        Ir::Const(Value::Str(s)) => Some(s),
        _ => None,
    }
}

fn types(a: &Ty, b: &Ty) -> String {
    format!("`{a}` and `{b}`")
}

impl Checker<'_> {
    fn mismatch(&mut self, span: &Span, what: impl Into<String>, expected: &str, found: String) {
        self.errors.push(ExprError::new(
            span.clone(),
            ExprErrorKind::TypeMismatch {
                what: what.into(),
                expected: expected.to_string(),
                found,
            },
        ));
    }

    fn infer(&mut self, e: &Expr) -> Option<Typed> {
        match &e.kind {
            ExprKind::Bool(b) => Some((Ir::Const(Value::Bool(*b)), Ty::Bool)),
            ExprKind::Int(i) => Some((Ir::Const(Value::Int(*i)), Ty::Int)),
            ExprKind::Float(f) => Some((Ir::Const(Value::Float(*f)), Ty::Float)),
            ExprKind::Duration(ms) => Some((Ir::Const(Value::Int(*ms)), Ty::Duration)),
            ExprKind::Str(s) => Some((Ir::Const(Value::Str(s.as_str().into())), Ty::String)),
            ExprKind::List(_) => {
                self.errors
                    .push(ExprError::new(e.span.clone(), ExprErrorKind::ListOutsideIn));
                None
            }
            ExprKind::Path(path) => self.attribute(path, &e.span),
            ExprKind::Unary { op, expr } => {
                let (ir, ty) = self.infer(expr)?;
                match (op, &ty) {
                    (UnaryOp::Not, Ty::Bool) => Some((Ir::Not(boxed(ir)), Ty::Bool)),
                    (UnaryOp::Neg, Ty::Int | Ty::Duration) => {
                        Some((Ir::Neg(Kind::Int, boxed(ir)), ty))
                    }
                    (UnaryOp::Neg, Ty::Float) => Some((Ir::Neg(Kind::Float, boxed(ir)), ty)),
                    (UnaryOp::Not, _) => {
                        self.mismatch(&expr.span, "`!`", "a `bool`", format!("`{ty}`"));
                        None
                    }
                    (UnaryOp::Neg, _) => {
                        self.mismatch(
                            &expr.span,
                            "unary `-`",
                            "a number or duration",
                            format!("`{ty}`"),
                        );
                        None
                    }
                }
            }
            ExprKind::Binary {
                op,
                op_span,
                lhs,
                rhs,
            } => self.binary(*op, op_span, lhs, rhs),
            ExprKind::Cond {
                cond,
                then,
                otherwise,
            } => {
                let c = self.infer(cond);
                let t = self.infer(then);
                let o = self.infer(otherwise);
                let (c, t, o) = (c?, t?, o?);
                if c.1 != Ty::Bool {
                    self.mismatch(
                        &cond.span,
                        "the condition of `?:`",
                        "a `bool`",
                        format!("`{}`", c.1),
                    );
                    return None;
                }
                let (t, o, ty) = self.unify(t, o, &e.span, "the branches of `?:`")?;
                Some((Ir::Cond(ty.kind(), boxed(c.0), boxed(t), boxed(o)), ty))
            }
            ExprKind::Call {
                name,
                name_span,
                args,
            } => self.call(name, name_span, args, &e.span),
        }
    }

    /// Brings two values to one type, for `?:` and `min`/`max`.
    fn unify(&mut self, a: Typed, b: Typed, span: &Span, what: &str) -> Option<(Ir, Ir, Ty)> {
        if a.1 == b.1 {
            return Some((a.0, b.0, a.1));
        }
        match promote(a, b) {
            Ok((a, b, _, ty)) => Some((a, b, ty)),
            Err(pair) => {
                let (a, b) = *pair;
                match (&a.1, &b.1) {
                    (Ty::Enum { .. } | Ty::String, Ty::Enum { .. } | Ty::String) => {
                        let (a, b) = (enum_to_string(a), enum_to_string(b));
                        Some((a.0, b.0, Ty::String))
                    }
                    _ => {
                        self.mismatch(span, what, "values of one type", types(&a.1, &b.1));
                        None
                    }
                }
            }
        }
    }

    fn attribute(&mut self, path: &str, span: &Span) -> Option<Typed> {
        let (root, name) = match path.split_once('.') {
            Some(parts) => parts,
            None => {
                self.errors.push(ExprError::new(
                    span.clone(),
                    ExprErrorKind::BareName {
                        name: path.to_string(),
                    },
                ));
                return None;
            }
        };
        let entity = Entity::from_name(root);
        if entity == Some(Entity::Offer) && !self.allow_offer {
            self.errors.push(ExprError::new(
                span.clone(),
                ExprErrorKind::OfferOutsideScore {
                    name: path.to_string(),
                },
            ));
            return None;
        }
        let found = entity.and_then(|ent| Some((ent, self.schema.entity(ent).slot(name)?)));
        let Some((entity, slot)) = found else {
            let candidates: Vec<String> = Entity::ALL
                .into_iter()
                .filter(|e| *e != Entity::Offer || self.allow_offer)
                .flat_map(|e| {
                    self.schema
                        .entity(e)
                        .names()
                        .map(move |n| format!("{}.{n}", e.as_str()))
                })
                .collect();
            self.errors.push(ExprError::new(
                span.clone(),
                ExprErrorKind::UnknownAttribute {
                    name: path.to_string(),
                    suggestion: did_you_mean(path, candidates.iter().map(String::as_str)),
                },
            ));
            return None;
        };
        let attr = self
            .schema
            .entity(entity)
            .get(slot)
            .expect("a slot found by name exists");
        let ty = match &attr.ty {
            AttrType::Bool => Ty::Bool,
            AttrType::Int => Ty::Int,
            AttrType::Float => Ty::Float,
            AttrType::String => Ty::String,
            AttrType::Enum(def) => Ty::Enum {
                attribute: Arc::from(path),
                def: def.clone(),
            },
            AttrType::Set => Ty::Set,
            AttrType::Timestamp => Ty::Timestamp,
        };
        let ir = Ir::Attr {
            entity,
            slot,
            kind: ty.kind(),
            default: attr.default.clone(),
        };
        Some((ir, ty))
    }

    fn binary(&mut self, op: BinaryOp, op_span: &Span, lhs: &Expr, rhs: &Expr) -> Option<Typed> {
        if op == BinaryOp::In {
            return self.membership(lhs, rhs);
        }
        let a = self.infer(lhs);
        let b = self.infer(rhs);
        let (a, b) = (a?, b?);
        let what = format!("`{}`", op.as_str());
        match op {
            BinaryOp::And | BinaryOp::Or => {
                if a.1 != Ty::Bool || b.1 != Ty::Bool {
                    let (bad, ty) = if a.1 != Ty::Bool {
                        (lhs, &a.1)
                    } else {
                        (rhs, &b.1)
                    };
                    self.mismatch(&bad.span, what, "`bool` operands", format!("`{ty}`"));
                    return None;
                }
                let ir = if op == BinaryOp::And {
                    Ir::And(boxed(a.0), boxed(b.0))
                } else {
                    Ir::Or(boxed(a.0), boxed(b.0))
                };
                Some((ir, Ty::Bool))
            }
            BinaryOp::Eq
            | BinaryOp::Ne
            | BinaryOp::Lt
            | BinaryOp::Le
            | BinaryOp::Gt
            | BinaryOp::Ge => self.comparison(op, a, b, op_span, [&lhs.span, &rhs.span], what),
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Rem => {
                self.arithmetic(op, a, b, op_span, what)
            }
            BinaryOp::In => unreachable!("handled above"),
        }
    }

    fn comparison(
        &mut self,
        op: BinaryOp,
        a: Typed,
        b: Typed,
        op_span: &Span,
        spans: [&Span; 2],
        what: String,
    ) -> Option<Typed> {
        let cmp = match op {
            BinaryOp::Eq => CmpOp::Eq,
            BinaryOp::Ne => CmpOp::Ne,
            BinaryOp::Lt => CmpOp::Lt,
            BinaryOp::Le => CmpOp::Le,
            BinaryOp::Gt => CmpOp::Gt,
            _ => CmpOp::Ge,
        };
        let equality = matches!(cmp, CmpOp::Eq | CmpOp::Ne);
        let done = |kind, x: Ir, y: Ir| Some((Ir::Cmp(cmp, kind, boxed(x), boxed(y)), Ty::Bool));
        let (a, b) = match promote(a, b) {
            Ok((x, y, kind, _)) => return done(kind, x, y),
            Err(pair) => *pair,
        };
        match (&a.1, &b.1) {
            (Ty::Timestamp, Ty::Timestamp)
            | (Ty::Duration, Ty::Duration)
            | (Ty::String, Ty::String) => done(a.1.kind(), a.0, b.0),
            (Ty::Bool, Ty::Bool) if equality => done(Kind::Bool, a.0, b.0),
            (Ty::Enum { def: d1, .. }, Ty::Enum { def: d2, .. }) if equality && d1 == d2 => {
                done(Kind::Int, a.0, b.0)
            }
            // An enum against a string literal compares variant indices, checked here.
            (Ty::Enum { .. }, Ty::String) | (Ty::String, Ty::Enum { .. }) if equality => {
                let (e, s, swapped) = if matches!(a.1, Ty::Enum { .. }) {
                    (a, b, false)
                } else {
                    (b, a, true)
                };
                if let Some(lit) = const_str(&s.0) {
                    let index = self.variant(&e.1, lit, spans[usize::from(!swapped)])?;
                    let k = Ir::Const(Value::Int(index.into()));
                    return if swapped {
                        done(Kind::Int, k, e.0)
                    } else {
                        done(Kind::Int, e.0, k)
                    };
                }
                let (e, s) = (enum_to_string(e), s);
                if swapped {
                    done(Kind::Str, s.0, e.0)
                } else {
                    done(Kind::Str, e.0, s.0)
                }
            }
            (Ty::Enum { .. }, Ty::Enum { .. }) if equality => {
                let (a, b) = (enum_to_string(a), enum_to_string(b));
                done(Kind::Str, a.0, b.0)
            }
            _ => {
                let expected = if equality {
                    "operands of one type"
                } else {
                    "two numbers, timestamps, durations or strings"
                };
                self.mismatch(op_span, what, expected, types(&a.1, &b.1));
                None
            }
        }
    }

    /// The index of `name` among the variants of enum type `ty`, or an error naming them.
    fn variant(&mut self, ty: &Ty, name: &str, span: &Span) -> Option<u32> {
        let Ty::Enum { attribute, def } = ty else {
            return None;
        };
        let index = def.index_of(name);
        if index.is_none() {
            self.errors.push(ExprError::new(
                span.clone(),
                ExprErrorKind::UnknownVariant {
                    value: name.to_string(),
                    attribute: attribute.to_string(),
                    suggestion: did_you_mean(name, def.variants.iter().map(|v| &**v)),
                },
            ));
        }
        index
    }

    fn arithmetic(
        &mut self,
        op: BinaryOp,
        a: Typed,
        b: Typed,
        op_span: &Span,
        what: String,
    ) -> Option<Typed> {
        let aop = match op {
            BinaryOp::Add => ArithOp::Add,
            BinaryOp::Sub => ArithOp::Sub,
            BinaryOp::Mul => ArithOp::Mul,
            BinaryOp::Div => ArithOp::Div,
            _ => ArithOp::Rem,
        };
        let int = |x: Ir, y: Ir, ty| Some((Ir::Arith(aop, Kind::Int, boxed(x), boxed(y)), ty));
        match (aop, &a.1, &b.1) {
            // Division is always real division: 7 / 2 is 3.5, never a surprise 3.
            (ArithOp::Div, x, y) if x.is_numeric() && y.is_numeric() => Some((
                Ir::Arith(aop, Kind::Float, boxed(to_float(a)), boxed(to_float(b))),
                Ty::Float,
            )),
            (ArithOp::Rem, Ty::Int, Ty::Int) => int(a.0, b.0, Ty::Int),
            (ArithOp::Add | ArithOp::Sub | ArithOp::Mul, x, y)
                if x.is_numeric() && y.is_numeric() =>
            {
                let (x, y, kind, ty) = promote(a, b).expect("both operands are numeric");
                Some((Ir::Arith(aop, kind, boxed(x), boxed(y)), ty))
            }
            (ArithOp::Add | ArithOp::Sub, Ty::Timestamp, Ty::Duration) => {
                int(a.0, b.0, Ty::Timestamp)
            }
            (ArithOp::Add, Ty::Duration, Ty::Timestamp) => int(a.0, b.0, Ty::Timestamp),
            (ArithOp::Add | ArithOp::Sub, Ty::Duration, Ty::Duration) => {
                int(a.0, b.0, Ty::Duration)
            }
            (ArithOp::Sub, Ty::Timestamp, Ty::Timestamp) => int(a.0, b.0, Ty::Duration),
            _ => {
                let expected = match aop {
                    ArithOp::Rem => "two `int` operands",
                    ArithOp::Mul | ArithOp::Div => "two numbers",
                    _ => "numbers, or timestamps and durations",
                };
                self.mismatch(op_span, what, expected, types(&a.1, &b.1));
                None
            }
        }
    }

    fn membership(&mut self, lhs: &Expr, rhs: &Expr) -> Option<Typed> {
        let needle = self.infer(lhs);
        if let ExprKind::List(items) = &rhs.kind {
            let items: Vec<Option<Typed>> = items.iter().map(|i| self.infer(i)).collect();
            let needle = needle?;
            if matches!(needle.1, Ty::Set | Ty::List) {
                self.mismatch(
                    &lhs.span,
                    "`in` with a list",
                    "a value on its left",
                    format!("`{}`", needle.1),
                );
                return None;
            }
            let mut values = Vec::with_capacity(items.len());
            let kind = match &needle.1 {
                Ty::Enum { .. } => Kind::Int,
                Ty::Int if items.iter().flatten().any(|i| i.1 == Ty::Float) => Kind::Float,
                ty => ty.kind(),
            };
            let mut ok = true;
            for (item, expr) in items.into_iter().zip(rhs_items(rhs)) {
                let Some((ir, ty)) = item else {
                    ok = false;
                    continue;
                };
                let Ir::Const(value) = ir else {
                    self.errors.push(ExprError::new(
                        expr.span.clone(),
                        ExprErrorKind::NonConstantList,
                    ));
                    ok = false;
                    continue;
                };
                let value = match (&needle.1, &ty, value) {
                    (Ty::Enum { .. }, Ty::String, Value::Str(s)) => {
                        match self.variant(&needle.1, &s, &expr.span) {
                            Some(i) => Value::Int(i.into()),
                            None => {
                                ok = false;
                                continue;
                            }
                        }
                    }
                    (n, t, v) if n == t && kind != Kind::Float => v,
                    (n, t, Value::Int(i)) if n.is_numeric() && t.is_numeric() => {
                        Value::Float(i as f64)
                    }
                    (n, t, v @ Value::Float(_)) if n.is_numeric() && t.is_numeric() => v,
                    (n, t, _) => {
                        self.mismatch(
                            &expr.span,
                            "`in`",
                            &format!("list elements of type `{n}`"),
                            format!("`{t}`"),
                        );
                        ok = false;
                        continue;
                    }
                };
                values.push(value);
            }
            if !ok {
                return None;
            }
            let needle_ir = if kind == Kind::Float {
                to_float(needle)
            } else {
                needle.0
            };
            return Some((Ir::InList(kind, boxed(needle_ir), values), Ty::Bool));
        }
        let set = self.infer(rhs);
        let (needle, set) = (needle?, set?);
        if set.1 != Ty::Set {
            self.mismatch(
                &rhs.span,
                "`in`",
                "a set attribute or a list on its right",
                format!("`{}`", set.1),
            );
            return None;
        }
        let needle = enum_to_string(needle);
        if needle.1 != Ty::String {
            self.mismatch(
                &lhs.span,
                "`in` with a set",
                "a string on its left",
                format!("`{}`", needle.1),
            );
            return None;
        }
        Some((Ir::InSet(boxed(needle.0), boxed(set.0)), Ty::Bool))
    }

    /// `impressions(7d)`, `rejects(30d, 'gold_card')`, `group_impressions_here(1d)`, ...
    fn history(
        &mut self,
        name: &str,
        (kind, group, here): (EventKind, bool, bool),
        args: &[Expr],
        span: &Span,
    ) -> Option<Typed> {
        if !(1..=2).contains(&args.len()) {
            self.errors.push(ExprError::new(
                span.clone(),
                ExprErrorKind::Arity {
                    name: name.to_string(),
                    expected: "1 or 2".to_string(),
                    found: args.len(),
                },
            ));
            return None;
        }
        let (within, ty) = self.infer(&args[0])?;
        if ty != Ty::Duration {
            self.mismatch(
                &args[0].span,
                format!("`{name}`"),
                "a duration such as `7d`",
                format!("`{ty}`"),
            );
            return None;
        }
        let what = if group { "group" } else { "offer" };
        let target = match args.get(1) {
            None if group => Target::ThisGroup,
            None => Target::ThisOffer,
            Some(arg) => {
                let ExprKind::Str(id) = &arg.kind else {
                    self.errors.push(ExprError::new(
                        arg.span.clone(),
                        ExprErrorKind::HistoryTarget {
                            function: name.to_string(),
                            kind: what,
                        },
                    ));
                    return None;
                };
                if let Some(v) = self.vocabulary {
                    let known = if group { &v.groups } else { &v.offers };
                    if !known.iter().any(|k| k == id) {
                        self.errors.push(ExprError::new(
                            arg.span.clone(),
                            ExprErrorKind::UnknownName {
                                kind: what,
                                name: id.clone(),
                                suggestion: did_you_mean(id, known.iter().map(String::as_str)),
                            },
                        ));
                        return None;
                    }
                }
                if group {
                    Target::Group(key(id))
                } else {
                    Target::Offer(key(id))
                }
            }
        };
        let count = Count { kind, target, here };
        Some((
            Ir::Call(Func::Count(count), Kind::Int, vec![within]),
            Ty::Int,
        ))
    }

    /// `adaptive('id')`: a model of the catalog's `models.yaml`, by its id.
    fn adaptive(&mut self, args: &[Expr], span: &Span) -> Option<Typed> {
        let [arg] = args else {
            self.errors.push(ExprError::new(
                span.clone(),
                ExprErrorKind::Arity {
                    name: "adaptive".to_string(),
                    expected: "1".to_string(),
                    found: args.len(),
                },
            ));
            return None;
        };
        let ExprKind::Str(id) = &arg.kind else {
            self.errors
                .push(ExprError::new(arg.span.clone(), ExprErrorKind::ModelId));
            return None;
        };
        let models = self.vocabulary.map_or(&[][..], |v| &v.models[..]);
        let Some(model) = models.iter().find(|m| m.id == *id) else {
            self.errors.push(ExprError::new(
                arg.span.clone(),
                ExprErrorKind::UnknownName {
                    kind: "model",
                    name: id.clone(),
                    suggestion: did_you_mean(id, models.iter().map(|m| m.id.as_str())),
                },
            ));
            return None;
        };
        Some((Ir::Adaptive(Arc::clone(model)), Ty::Float))
    }

    fn call(&mut self, name: &str, name_span: &Span, args: &[Expr], span: &Span) -> Option<Typed> {
        if let Some(parsed) = history_function(name) {
            return self.history(name, parsed, args, span);
        }
        if name == "adaptive" {
            return self.adaptive(args, span);
        }
        let (func, (min, max), expected) = match name {
            "has" => (None, (1, 1), "1"),
            "days_since" => (Some(Func::DaysSince), (1, 1), "1"),
            "hours_since" => (Some(Func::HoursSince), (1, 1), "1"),
            "now" => (Some(Func::Now), (0, 0), "0"),
            "min" => (Some(Func::Min), (2, usize::MAX), "2 or more"),
            "max" => (Some(Func::Max), (2, usize::MAX), "2 or more"),
            "clamp" => (Some(Func::Clamp), (3, 3), "3"),
            "abs" => (Some(Func::Abs), (1, 1), "1"),
            "exp" => (Some(Func::Exp), (1, 1), "1"),
            "ln" => (Some(Func::Ln), (1, 1), "1"),
            "sigmoid" => (Some(Func::Sigmoid), (1, 1), "1"),
            "size" => (Some(Func::SizeSet), (1, 1), "1"),
            "lower" => (Some(Func::Lower), (1, 1), "1"),
            "starts_with" => (Some(Func::StartsWith), (2, 2), "2"),
            _ => {
                self.errors.push(ExprError::new(
                    name_span.clone(),
                    ExprErrorKind::UnknownFunction {
                        name: name.to_string(),
                        suggestion: did_you_mean(name, FUNCTIONS.iter().map(|(n, _)| *n)),
                    },
                ));
                return None;
            }
        };
        if !(min..=max).contains(&args.len()) {
            self.errors.push(ExprError::new(
                span.clone(),
                ExprErrorKind::Arity {
                    name: name.to_string(),
                    expected: expected.to_string(),
                    found: args.len(),
                },
            ));
            return None;
        }
        let Some(func) = func else {
            return self.has(&args[0]);
        };
        let typed: Vec<Option<Typed>> = args.iter().map(|a| self.infer(a)).collect();
        let typed: Vec<Typed> = typed.into_iter().collect::<Option<_>>()?;
        let what = format!("`{name}`");
        let call = |f, kind, args| Ir::Call(f, kind, args);
        match func {
            Func::Count(_) => unreachable!("history functions are checked by `history`"),
            Func::Now => Some((call(func, Kind::Int, vec![]), Ty::Timestamp)),
            Func::DaysSince | Func::HoursSince => {
                let [(ir, ty)] = <[Typed; 1]>::try_from(typed).ok()?;
                if ty != Ty::Timestamp {
                    self.mismatch(&args[0].span, what, "a `timestamp`", format!("`{ty}`"));
                    return None;
                }
                Some((call(func, Kind::Int, vec![ir]), Ty::Float))
            }
            Func::Min | Func::Max | Func::Clamp | Func::Abs => {
                if let Some((i, (_, ty))) =
                    typed.iter().enumerate().find(|(_, t)| !t.1.is_numeric())
                {
                    self.mismatch(&args[i].span, what, "numbers", format!("`{ty}`"));
                    return None;
                }
                let float = typed.iter().any(|t| t.1 == Ty::Float);
                let (kind, ty) = if float {
                    (Kind::Float, Ty::Float)
                } else {
                    (Kind::Int, Ty::Int)
                };
                let irs = typed
                    .into_iter()
                    .map(|t| if float { to_float(t) } else { t.0 })
                    .collect();
                Some((call(func, kind, irs), ty))
            }
            Func::Exp | Func::Ln | Func::Sigmoid => {
                let t = typed.into_iter().next()?;
                if !t.1.is_numeric() {
                    self.mismatch(&args[0].span, what, "a number", format!("`{}`", t.1));
                    return None;
                }
                Some((call(func, Kind::Float, vec![to_float(t)]), Ty::Float))
            }
            Func::SizeSet | Func::SizeStr => {
                let t = enum_to_string(typed.into_iter().next()?);
                let f = match t.1 {
                    Ty::Set => Func::SizeSet,
                    Ty::String => Func::SizeStr,
                    ref ty => {
                        self.mismatch(&args[0].span, what, "a set or a string", format!("`{ty}`"));
                        return None;
                    }
                };
                Some((call(f, Kind::Int, vec![t.0]), Ty::Int))
            }
            Func::Lower | Func::StartsWith => {
                let mut irs = Vec::with_capacity(typed.len());
                for (i, t) in typed.into_iter().enumerate() {
                    let t = enum_to_string(t);
                    if t.1 != Ty::String {
                        self.mismatch(&args[i].span, what.clone(), "strings", format!("`{}`", t.1));
                        return None;
                    }
                    irs.push(t.0);
                }
                let ty = if func == Func::Lower {
                    Ty::String
                } else {
                    Ty::Bool
                };
                Some((call(func, Kind::Str, irs), ty))
            }
        }
    }

    fn has(&mut self, arg: &Expr) -> Option<Typed> {
        let ExprKind::Path(path) = &arg.kind else {
            self.errors.push(ExprError::new(
                arg.span.clone(),
                ExprErrorKind::HasNeedsAttribute,
            ));
            return None;
        };
        let (ir, _) = self.attribute(path, &arg.span)?;
        let Ir::Attr {
            entity,
            slot,
            default,
            ..
        } = ir
        else {
            unreachable!("an attribute path resolves to `Ir::Attr`")
        };
        let has_default = !default.is_missing();
        Some((
            Ir::Has {
                entity,
                slot,
                has_default,
            },
            Ty::Bool,
        ))
    }
}

fn rhs_items(rhs: &Expr) -> &[Expr] {
    match &rhs.kind {
        ExprKind::List(items) => items,
        _ => &[],
    }
}
