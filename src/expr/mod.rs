//! The rule language: parse → type-check → compile → evaluate.
//!
//! Rules are small CEL-like expressions (`customer.age >= 18 && customer.segment in
//! ["gold", "platinum"]`). They are parsed with a pest grammar, checked against the
//! [`Schema`] once at load time (every error collected, each with its span), and compiled
//! to a tree of nodes specialised by run-time kind, with attribute names resolved to slots
//! and constants folded. Evaluating a compiled rule takes no lock, does no I/O, allocates
//! nothing and never panics; a missing value is `None` and propagates (see docs/rules.md).
//!
//! This module knows nothing of YAML or files: spans are byte offsets in the expression,
//! and `catalog/` maps them to `file:line:col`.

mod ast;
mod check;
mod compile;
mod error;
mod ir;
mod parse;
#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;

pub use ast::{Expr, ExprKind, Span};
pub use error::{ExprError, ExprErrorKind, did_you_mean};
pub use ir::{FUNCTIONS, Ty};
pub use parse::parse;

use crate::adaptive::FeatureMemo;
use crate::schema::{Event, Schema, Value};
use std::sync::Arc;

static MISSING: Value = Value::Missing;

/// What a compiled expression reads: the slots of each entity, and the time.
#[derive(Debug, Clone, Copy)]
pub struct Env<'a> {
    // Indexed by `Entity as usize`: customer, context, offer.
    entities: [&'a [Value]; 3],
    /// Now, in milliseconds since the Unix epoch.
    pub now: i64,
    /// The customer's interactions, oldest first, for the history functions.
    history: &'a [Event],
    /// Keys of the offer being decided, its group (0 for none) and the request's channel.
    offer: u32,
    group: u32,
    channel: u32,
    /// Where a decision keeps the features its adaptive models encoded, for its offers.
    memo: Option<&'a FeatureMemo>,
}

impl<'a> Env<'a> {
    pub fn new(
        customer: &'a [Value],
        context: &'a [Value],
        offer: &'a [Value],
        now: i64,
    ) -> Env<'a> {
        Env {
            entities: [customer, context, offer],
            now,
            history: &[],
            offer: 0,
            group: 0,
            channel: 0,
            memo: None,
        }
    }

    /// The same, with a decision's memo of the features its models encode.
    pub fn with_memo(self, memo: &'a FeatureMemo) -> Env<'a> {
        Env {
            memo: Some(memo),
            ..self
        }
    }

    /// The same, with the history the history functions count, and the keys of the offer
    /// being decided, its group and the channel.
    pub fn with_history(
        self,
        history: &'a [Event],
        offer: u32,
        group: u32,
        channel: u32,
    ) -> Env<'a> {
        Env {
            history,
            offer,
            group,
            channel,
            ..self
        }
    }

    /// The same customer, context and time, with the `offer.*` score variables set.
    pub fn with_offer<'b>(&self, offer: &'b [Value]) -> Env<'b>
    where
        'a: 'b,
    {
        Env {
            entities: [self.entities[0], self.entities[1], offer],
            ..*self
        }
    }

    /// The value in a slot; a slot beyond the record reads as missing.
    #[inline]
    fn get(&self, entity: usize, slot: u32) -> &'a Value {
        self.entities
            .get(entity)
            .and_then(|values| values.get(slot as usize))
            .unwrap_or(&MISSING)
    }
}

/// The offer ids and groups of a catalog, for checking the names history functions use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Vocabulary {
    pub offers: Vec<String>,
    pub groups: Vec<String>,
    /// The catalog's adaptive models, for `adaptive('id')`.
    pub models: Vec<Arc<crate::adaptive::Model>>,
}

/// A compiled boolean rule (eligibility).
pub struct Predicate {
    root: compile::BoolFn,
    /// How far back the rule's history functions look (ms); `i64::MAX` if not constant.
    horizon: i64,
    /// The top-level `&&` clauses, each with its source, for explanations. Empty when the
    /// rule is a single clause.
    clauses: Box<[(Box<str>, compile::BoolFn)]>,
}

impl std::fmt::Debug for Predicate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Predicate(..)")
    }
}

impl Predicate {
    /// Parses, checks and compiles `src`; `what` names the rule in messages ("eligibility").
    pub fn compile(src: &str, schema: &Schema, what: &str) -> Result<Predicate, Vec<ExprError>> {
        Predicate::compile_with(src, schema, what, None)
    }

    /// As [`Predicate::compile`], checking the offer and group names that history
    /// functions mention against `vocabulary`.
    pub fn compile_with(
        src: &str,
        schema: &Schema,
        what: &str,
        vocabulary: Option<&Vocabulary>,
    ) -> Result<Predicate, Vec<ExprError>> {
        let expr = parse(src).map_err(|e| vec![e])?;
        let (ir, ty) = check::check(&expr, schema, false, vocabulary)?;
        let mut models = Vec::new();
        ir.models(&mut models);
        if !models.is_empty() {
            return Err(vec![adaptive_outside_offer(src)]);
        }
        if ty != Ty::Bool {
            return Err(vec![ExprError::new(
                expr.span,
                ExprErrorKind::WrongResult {
                    what: what.to_string(),
                    expected: "bool".to_string(),
                    found: ty.to_string(),
                },
            )]);
        }
        // The checker maps each `&&` of the source to one `Ir::And`, so the top-level
        // conjuncts of both line up.
        let mut sources = Vec::new();
        conjuncts(&expr, &mut sources);
        let mut irs = Vec::new();
        ir_conjuncts(&ir, &mut irs);
        let clauses = if sources.len() > 1 && sources.len() == irs.len() {
            let src_of = |e: &Expr| src.get(e.span.clone()).unwrap_or("").trim().into();
            sources
                .iter()
                .zip(&irs)
                .map(|(e, ir)| (src_of(e), compile::compile_bool(ir)))
                .collect()
        } else {
            Box::default()
        };
        Ok(Predicate {
            root: compile::compile_bool(&ir),
            clauses,
            horizon: compile::horizon(&ir),
        })
    }

    /// A rule that always holds.
    pub fn always() -> Predicate {
        Predicate {
            root: Box::new(|_| Some(true)),
            clauses: Box::default(),
            horizon: 0,
        }
    }

    /// `Some(true)` or `Some(false)`, or `None` when a missing value left it undecided.
    #[inline]
    pub fn eval(&self, env: &Env<'_>) -> Option<bool> {
        (self.root)(env)
    }

    /// How far back (ms) the rule's history functions look: 0 if it reads no history,
    /// `i64::MAX` if a window is not a constant.
    pub fn horizon(&self) -> i64 {
        self.horizon
    }

    /// Why the rule does not hold: the source of the first top-level clause that is false
    /// or undecided, and which (`Some(false)` or `None`). `None` if the rule holds.
    pub fn explain<'p>(&'p self, env: &Env<'_>, src: &'p str) -> Option<(&'p str, Option<bool>)> {
        let result = self.eval(env);
        if result == Some(true) {
            return None;
        }
        let clause = self
            .clauses
            .iter()
            .map(|(text, clause)| (&**text, clause(env)))
            .find(|(_, r)| *r != Some(true));
        Some(clause.unwrap_or((src, result)))
    }

    /// Whether the rule definitely holds: a rule that is undecided does not match.
    #[inline]
    pub fn matches(&self, env: &Env<'_>) -> bool {
        (self.root)(env) == Some(true)
    }
}

/// The top-level `&&` clauses of a catalog's rules, shared: each distinct clause that reads
/// no history is compiled once, and in one decision evaluated at most once, however many
/// rules contain it (`customer.segment in ['gold', 'platinum']` in 500 offers costs one
/// evaluation and 499 lookups). A clause that reads history depends on the offer being
/// decided and stays the rule's own.
#[derive(Debug, Default)]
pub struct SharedClauses {
    clauses: Vec<Predicate>,
    index: std::collections::HashMap<String, u32>,
}

/// One top-level clause of a rule.
#[derive(Debug)]
pub enum Clause {
    /// An index into the catalog's [`SharedClauses`].
    Shared(u32),
    /// A clause that reads history: evaluated for each rule.
    Own(Predicate),
}

/// What a decision has found out about the shared clauses so far, one byte each.
pub mod memo {
    pub const UNKNOWN: u8 = 0;
    pub const FALSE: u8 = 1;
    pub const TRUE: u8 = 2;
    pub const UNDECIDED: u8 = 3;
}

impl SharedClauses {
    /// The clauses of `rule`, compiled from `src` against `schema`, sharing those seen
    /// before in the same text (the rule's own parse gives them: nothing is parsed again
    /// but a clause not seen before); `None` if one does not compile on its own (then
    /// evaluate the rule whole).
    pub fn split(
        &mut self,
        rule: &Predicate,
        src: &str,
        schema: &Schema,
        vocabulary: Option<&Vocabulary>,
    ) -> Option<Box<[Clause]>> {
        let whole = [src.trim()];
        let texts: Vec<&str> = if rule.clauses.is_empty() {
            whole.to_vec()
        } else {
            rule.clauses.iter().map(|(text, _)| &**text).collect()
        };
        texts
            .into_iter()
            .map(|text| {
                // The exact text: two clauses that read the same compile the same.
                if let Some(&id) = self.index.get(text) {
                    return Some(Clause::Shared(id));
                }
                let p = Predicate::compile_with(text, schema, "eligibility", vocabulary).ok()?;
                if p.horizon() != 0 {
                    return Some(Clause::Own(p));
                }
                let id = u32::try_from(self.clauses.len()).ok()?;
                self.clauses.push(p);
                self.index.insert(text.to_string(), id);
                Some(Clause::Shared(id))
            })
            .collect()
    }

    /// The number of distinct shared clauses: the size of a decision's memo.
    pub fn len(&self) -> usize {
        self.clauses.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clauses.is_empty()
    }

    /// Whether every clause definitely holds (as [`Predicate::matches`] of the whole
    /// rule), looking shared clauses up in `memo` (one byte per shared clause, [`memo`]
    /// values, all `UNKNOWN` at the start of a decision) and filling it in.
    #[inline]
    pub fn matches(&self, clauses: &[Clause], env: &Env<'_>, memo: &mut [u8]) -> bool {
        clauses.iter().all(|clause| match clause {
            Clause::Shared(id) => self.holds(*id, env, memo),
            Clause::Own(p) => p.matches(env),
        })
    }

    /// Whether shared clause `id` definitely holds, from `memo` or evaluated into it.
    #[inline]
    fn holds(&self, id: u32, env: &Env<'_>, memo: &mut [u8]) -> bool {
        let known = &mut memo[id as usize];
        if *known == memo::UNKNOWN {
            *known = match self.clauses[id as usize].eval(env) {
                Some(true) => memo::TRUE,
                Some(false) => memo::FALSE,
                None => memo::UNDECIDED,
            };
        }
        *known == memo::TRUE
    }

    /// Whether every shared clause in `mask` (bit `id` for clause `id`, ids below 64)
    /// definitely holds, as [`matches`]: clauses not yet in `bits` are evaluated, in id
    /// order, until one does not hold, and recorded there. A rule of clauses the decision
    /// has already seen costs two bit operations.
    ///
    /// [`matches`]: SharedClauses::matches
    #[inline]
    pub fn all_in(&self, mask: u64, env: &Env<'_>, bits: &mut ClauseBits) -> bool {
        let mut unknown = mask & !bits.known;
        while unknown != 0 {
            let id = unknown.trailing_zeros();
            unknown &= unknown - 1;
            bits.known |= 1 << id;
            if self.clauses[id as usize].eval(env) == Some(true) {
                bits.truth |= 1 << id;
            } else {
                return false;
            }
        }
        mask & bits.truth == mask
    }

    /// Whether shared clause `id` definitely holds, found out once per decision and kept
    /// where the decision's other tests look for it: in `bits` for ids below 64 (as
    /// [`all_in`](SharedClauses::all_in)), in `memo` above.
    #[inline]
    pub fn holds_kept(
        &self,
        id: u32,
        env: &Env<'_>,
        memo: &mut [u8],
        bits: &mut ClauseBits,
    ) -> bool {
        if id < 64 {
            self.all_in(1 << id, env, bits)
        } else {
            self.holds(id, env, memo)
        }
    }

    /// Whether every one of the shared clauses `ids` definitely holds, as [`matches`]
    /// (`ids` from [`Clause::Shared`]).
    ///
    /// [`matches`]: SharedClauses::matches
    #[inline]
    pub fn all(&self, ids: &[u32], env: &Env<'_>, memo: &mut [u8]) -> bool {
        ids.iter().all(|&id| self.holds(id, env, memo))
    }
}

/// What a decision knows about the shared clauses with ids below 64, for
/// [`SharedClauses::all_in`]: which it has evaluated, and which of those hold.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClauseBits {
    known: u64,
    truth: u64,
}

/// The error for `adaptive(...)` where no offer is being scored, at its first mention.
pub fn adaptive_outside_offer(src: &str) -> ExprError {
    let start = src.find("adaptive").unwrap_or(0);
    ExprError::new(
        start..start + "adaptive".len().min(src.len() - start),
        ExprErrorKind::AdaptiveOutsideOffer,
    )
}

/// Score formulas that several offers share word for word (a default propensity such as
/// `0.05 + 0.3 * customer.churn_risk`): compiled once, and evaluated at most once per
/// decision. Only formulas that read no history are shared: those read the same customer
/// and context for every offer of a decision.
#[derive(Debug, Default)]
pub struct SharedFormulas {
    formulas: Vec<Formula>,
}

impl SharedFormulas {
    /// Shares `formula`; its id. `None` if it reads history.
    pub fn add(&mut self, formula: &Formula) -> Option<u32> {
        // Adaptive models score each offer by its own weights.
        if formula.horizon() != 0 || !formula.models.is_empty() {
            return None;
        }
        let id = u32::try_from(self.formulas.len()).ok()?;
        self.formulas.push(formula.clone());
        Some(id)
    }

    /// The number of shared formulas: the size of a decision's memo.
    pub fn len(&self) -> usize {
        self.formulas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.formulas.is_empty()
    }

    /// Formula `id`'s value for `env` (as [`Formula::eval`]), from `memo` (one entry per
    /// shared formula, all `None` at the start of a decision) or evaluated and kept there.
    #[inline]
    pub fn eval(&self, id: u32, env: &Env<'_>, memo: &mut [Option<Option<f64>>]) -> Option<f64> {
        *memo[id as usize].get_or_insert_with(|| self.formulas[id as usize].eval(env))
    }
}

fn conjuncts<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    match &e.kind {
        ExprKind::Binary {
            op: ast::BinaryOp::And,
            lhs,
            rhs,
            ..
        } => {
            conjuncts(lhs, out);
            conjuncts(rhs, out);
        }
        _ => out.push(e),
    }
}

fn ir_conjuncts<'i>(ir: &'i ir::Ir, out: &mut Vec<&'i ir::Ir>) {
    match ir {
        ir::Ir::And(a, b) => {
            ir_conjuncts(a, out);
            ir_conjuncts(b, out);
        }
        _ => out.push(ir),
    }
}

/// A compiled numeric expression (propensity, value, weight, score formulas). Cloning
/// shares the compiled code.
#[derive(Clone)]
pub struct Formula {
    root: compile::SharedFloatFn,
    /// Set when the formula reads nothing, so callers can skip evaluating it.
    constant: Option<Option<f64>>,
    /// As [`Predicate::horizon`].
    horizon: i64,
    /// The source, trimmed; empty for [`Formula::constant`].
    src: Box<str>,
    /// The adaptive models it reads.
    models: Arc<[Arc<crate::adaptive::Model>]>,
}

impl std::fmt::Debug for Formula {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.constant {
            Some(c) => write!(f, "Formula({c:?})"),
            None => f.write_str("Formula(..)"),
        }
    }
}

impl Formula {
    /// Parses, checks and compiles `src`. `allow_offer` admits the `offer.*` score variables.
    pub fn compile(
        src: &str,
        schema: &Schema,
        what: &str,
        allow_offer: bool,
    ) -> Result<Formula, Vec<ExprError>> {
        Formula::compile_with(src, schema, what, allow_offer, None)
    }

    /// As [`Formula::compile`], checking history functions' names against `vocabulary`.
    pub fn compile_with(
        src: &str,
        schema: &Schema,
        what: &str,
        allow_offer: bool,
        vocabulary: Option<&Vocabulary>,
    ) -> Result<Formula, Vec<ExprError>> {
        let expr = parse(src).map_err(|e| vec![e])?;
        let (ir, ty) = check::check(&expr, schema, allow_offer, vocabulary)?;
        let ir = match ty {
            Ty::Float => ir,
            Ty::Int => ir::Ir::IntToFloat(Box::new(ir)),
            other => {
                return Err(vec![ExprError::new(
                    expr.span,
                    ExprErrorKind::WrongResult {
                        what: what.to_string(),
                        expected: "float".to_string(),
                        found: other.to_string(),
                    },
                )]);
            }
        };
        let root = compile::compile_float(&ir);
        let constant = ir.is_constant().then(|| root(&Env::new(&[], &[], &[], 0)));
        let horizon = compile::horizon(&ir);
        let mut models = Vec::new();
        ir.models(&mut models);
        Ok(Formula {
            root: root.into(),
            constant,
            horizon,
            src: src.trim().into(),
            models: models.into(),
        })
    }

    pub fn constant(x: f64) -> Formula {
        let v = x.is_finite().then_some(x);
        Formula {
            root: Arc::new(move |_| v),
            constant: Some(v),
            horizon: 0,
            src: "".into(),
            models: Arc::new([]),
        }
    }

    /// The adaptive models it reads (`adaptive('id')`).
    pub fn models(&self) -> &[Arc<crate::adaptive::Model>] {
        &self.models
    }

    /// The source it was compiled from, trimmed (empty for [`Formula::constant`]).
    pub fn src(&self) -> &str {
        &self.src
    }

    /// As [`Predicate::horizon`].
    pub fn horizon(&self) -> i64 {
        self.horizon
    }

    /// The constant this formula always yields, if it reads nothing.
    pub fn as_constant(&self) -> Option<f64> {
        self.constant.flatten()
    }

    #[inline]
    pub fn eval(&self, env: &Env<'_>) -> Option<f64> {
        // Most values and weights are constants: a predictable branch, not a call.
        match self.constant {
            Some(c) => c,
            None => (self.root)(env),
        }
    }
}
