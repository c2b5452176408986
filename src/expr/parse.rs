//! Source text to [`Expr`], with the grammar in `grammar.pest`.

use pest::Parser as _;
use pest::iterators::Pair;

use super::ast::{BinaryOp, Expr, ExprKind, Span, UnaryOp};
use super::error::{ExprError, ExprErrorKind};

#[derive(pest_derive::Parser)]
#[grammar = "expr/grammar.pest"]
struct Grammar;

/// Parses one expression. Never panics, whatever the input.
pub fn parse(src: &str) -> Result<Expr, ExprError> {
    let mut pairs = Grammar::parse(Rule::expression, src).map_err(|e| syntax_error(src, e))?;
    let expression = pairs.next().expect("the grammar yields one `expression`");
    let ternary = expression
        .into_inner()
        .next()
        .expect("`expression` holds a `ternary`");
    build(ternary)
}

fn syntax_error(src: &str, e: pest::error::Error<Rule>) -> ExprError {
    let pos = match e.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((p, _)) => p,
    };
    let expected = match &e.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => {
            let mut names: Vec<&str> = positives.iter().map(|r| rule_name(*r)).collect();
            names.sort_unstable();
            names.dedup();
            match names.as_slice() {
                [] => "an expression".to_string(),
                [one] => one.to_string(),
                [init @ .., last] => format!("{} or {last}", init.join(", ")),
            }
        }
        pest::error::ErrorVariant::CustomError { message } => message.clone(),
    };
    let (found, span) = match src[pos..].chars().next() {
        Some(c) => (format!("`{c}`"), pos..pos + c.len_utf8()),
        None => ("end of expression".to_string(), pos..pos),
    };
    ExprError::new(span, ExprErrorKind::Syntax { expected, found })
}

fn rule_name(rule: Rule) -> &'static str {
    match rule {
        Rule::EOI => "end of expression",
        Rule::or_op => "`||`",
        Rule::and_op => "`&&`",
        Rule::rel_op => "a comparison",
        Rule::add_op | Rule::mul_op => "an operator",
        Rule::question | Rule::colon => "`?:`",
        Rule::unary_op
        | Rule::ternary
        | Rule::or_expr
        | Rule::and_expr
        | Rule::rel_expr
        | Rule::add_expr
        | Rule::mul_expr
        | Rule::unary => "an expression",
        Rule::int | Rule::float | Rule::duration => "a number",
        Rule::string => "a string",
        Rule::boolean => "`true` or `false`",
        Rule::call | Rule::path | Rule::ident => "a name",
        Rule::list => "a list",
        _ => "an expression",
    }
}

fn span_of(pair: &Pair<'_, Rule>) -> Span {
    let s = pair.as_span();
    s.start()..s.end()
}

fn build(pair: Pair<'_, Rule>) -> Result<Expr, ExprError> {
    let span = span_of(&pair);
    match pair.as_rule() {
        Rule::ternary => {
            let mut inner = pair.into_inner();
            let cond = build(inner.next().expect("ternary has a condition"))?;
            if inner.next().is_none() {
                return Ok(cond);
            }
            let then = build(inner.next().expect("ternary has a then branch"))?;
            inner.next(); // colon
            let otherwise = build(inner.next().expect("ternary has an else branch"))?;
            Ok(Expr {
                kind: ExprKind::Cond {
                    cond: Box::new(cond),
                    then: Box::new(then),
                    otherwise: Box::new(otherwise),
                },
                span,
            })
        }
        Rule::or_expr | Rule::and_expr | Rule::rel_expr | Rule::add_expr | Rule::mul_expr => {
            let mut inner = pair.into_inner();
            let mut lhs = build(inner.next().expect("an operand comes first"))?;
            while let Some(op) = inner.next() {
                let op_span = span_of(&op);
                let op = binary_op(op.as_str());
                let rhs = build(inner.next().expect("an operator is followed by an operand"))?;
                let span = lhs.span.start..rhs.span.end;
                lhs = Expr {
                    kind: ExprKind::Binary {
                        op,
                        op_span,
                        lhs: Box::new(lhs),
                        rhs: Box::new(rhs),
                    },
                    span,
                };
            }
            Ok(lhs)
        }
        Rule::unary => {
            let mut ops = Vec::new();
            let mut operand = None;
            for p in pair.into_inner() {
                if p.as_rule() == Rule::unary_op {
                    ops.push((span_of(&p).start, p.as_str() == "!"));
                } else {
                    operand = Some(build(p)?);
                }
            }
            let mut expr = operand.expect("a unary chain ends in an operand");
            // Each operator's span runs to the end of the chain, closing parenthesis included.
            for (start, not) in ops.into_iter().rev() {
                expr = fold_unary(start..span.end, not, expr);
            }
            Ok(expr)
        }
        Rule::boolean => Ok(Expr {
            kind: ExprKind::Bool(pair.as_str() == "true"),
            span,
        }),
        Rule::int => match pair.as_str().parse::<i64>() {
            Ok(i) => Ok(Expr {
                kind: ExprKind::Int(i),
                span,
            }),
            Err(_) => Err(ExprError::new(
                span,
                ExprErrorKind::IntOutOfRange {
                    literal: pair.as_str().to_string(),
                },
            )),
        },
        Rule::float => Ok(Expr {
            // The grammar only admits digits, a point and an exponent, which always parse;
            // an overlong exponent parses to infinity, which the checker folds to missing.
            kind: ExprKind::Float(pair.as_str().parse::<f64>().unwrap_or(f64::INFINITY)),
            span,
        }),
        Rule::duration => {
            let text = pair.as_str();
            let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            let unit_ms: i64 = match &text[digits.len()..] {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                _ => 86_400_000, // "d", the only other unit the grammar admits
            };
            let ms = digits
                .parse::<i64>()
                .ok()
                .and_then(|n| n.checked_mul(unit_ms))
                .ok_or_else(|| {
                    ExprError::new(
                        span.clone(),
                        ExprErrorKind::IntOutOfRange {
                            literal: text.to_string(),
                        },
                    )
                })?;
            Ok(Expr {
                kind: ExprKind::Duration(ms),
                span,
            })
        }
        Rule::string => {
            let inner = pair.into_inner().next().expect("a string has its contents");
            let start = span_of(&inner).start;
            Ok(Expr {
                kind: ExprKind::Str(unescape(inner.as_str(), start)?),
                span,
            })
        }
        Rule::path => Ok(Expr {
            kind: ExprKind::Path(pair.as_str().to_string()),
            span,
        }),
        Rule::call => {
            let mut inner = pair.into_inner();
            let name = inner.next().expect("a call starts with its name");
            let name_span = span_of(&name);
            let name = name.as_str().to_string();
            let args = inner.map(build).collect::<Result<_, _>>()?;
            Ok(Expr {
                kind: ExprKind::Call {
                    name,
                    name_span,
                    args,
                },
                span,
            })
        }
        Rule::list => Ok(Expr {
            kind: ExprKind::List(pair.into_inner().map(build).collect::<Result<_, _>>()?),
            span,
        }),
        other => unreachable!("the grammar yields no `{other:?}` here"),
    }
}

/// Applies one prefix operator; a minus before a number literal becomes a negative literal,
/// so that `-9223372036854775808` and constant folding need no special case.
fn fold_unary(span: Span, not: bool, expr: Expr) -> Expr {
    let kind = match (not, expr.kind) {
        (false, ExprKind::Int(i)) if i != i64::MIN => ExprKind::Int(-i),
        (false, ExprKind::Float(f)) => ExprKind::Float(-f),
        (not, kind) => ExprKind::Unary {
            op: if not { UnaryOp::Not } else { UnaryOp::Neg },
            expr: Box::new(Expr {
                kind,
                span: expr.span,
            }),
        },
    };
    Expr { kind, span }
}

fn unescape(raw: &str, start: usize) -> Result<String, ExprError> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.char_indices();
    while let Some((_, c)) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        // The grammar guarantees a character after every backslash.
        let Some((i, e)) = chars.next() else { break };
        out.push(match e {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            '\\' | '"' | '\'' => e,
            _ => {
                return Err(ExprError::new(
                    start + i - 1..start + i + e.len_utf8(),
                    ExprErrorKind::BadEscape { escape: e },
                ));
            }
        });
    }
    Ok(out)
}

fn binary_op(s: &str) -> BinaryOp {
    match s {
        "||" => BinaryOp::Or,
        "&&" => BinaryOp::And,
        "==" => BinaryOp::Eq,
        "!=" => BinaryOp::Ne,
        "<" => BinaryOp::Lt,
        "<=" => BinaryOp::Le,
        ">" => BinaryOp::Gt,
        ">=" => BinaryOp::Ge,
        "in" => BinaryOp::In,
        "+" => BinaryOp::Add,
        "-" => BinaryOp::Sub,
        "*" => BinaryOp::Mul,
        "/" => BinaryOp::Div,
        "%" => BinaryOp::Rem,
        other => unreachable!("the grammar admits no operator `{other}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders the tree in a compact prefix form so cases read as data.
    fn sexp(e: &Expr) -> String {
        match &e.kind {
            ExprKind::Bool(b) => b.to_string(),
            ExprKind::Int(i) => i.to_string(),
            ExprKind::Float(f) => format!("{f:?}"),
            ExprKind::Str(s) => format!("{s:?}"),
            ExprKind::Duration(ms) => format!("{ms}ms"),
            ExprKind::List(items) => {
                format!("[{}]", items.iter().map(sexp).collect::<Vec<_>>().join(" "))
            }
            ExprKind::Path(p) => p.clone(),
            ExprKind::Call { name, args, .. } => {
                let args: Vec<_> = args.iter().map(sexp).collect();
                format!("({name} {})", args.join(" "))
            }
            ExprKind::Unary { op, expr } => format!("({op:?} {})", sexp(expr)),
            ExprKind::Binary { op, lhs, rhs, .. } => {
                format!("({} {} {})", op.as_str(), sexp(lhs), sexp(rhs))
            }
            ExprKind::Cond {
                cond,
                then,
                otherwise,
            } => format!("(? {} {} {})", sexp(cond), sexp(then), sexp(otherwise)),
        }
    }

    fn check(src: &str, expected: &str) {
        let e = parse(src).unwrap_or_else(|e| panic!("`{src}`: {e}"));
        assert_eq!(sexp(&e), expected, "parsing `{src}`");
    }

    fn check_err(src: &str, expected: &str, span: Span) {
        let e = parse(src).expect_err(src);
        assert_eq!(e.to_string(), expected, "parsing `{src}`");
        assert_eq!(e.span(), span, "span of the error in `{src}`");
    }

    #[test]
    fn precedence_and_associativity() {
        check("1 + 2 * 3", "(+ 1 (* 2 3))");
        check("1 - 2 - 3", "(- (- 1 2) 3)");
        check("a.b || c.d && !e.f", "(|| a.b (&& c.d (Not e.f)))");
        check("x.y > 1 ? 1.2 : 1.0", "(? (> x.y 1) 1.2 1.0)");
        check("a.b ? 1 : c.d ? 2 : 3", "(? a.b 1 (? c.d 2 3))");
        check("-(1 + 2)", "(Neg (+ 1 2))");
        check("- -3", "3");
        check("-customer.age", "(Neg customer.age)");
        let e = parse("!(a.b || c.d)").expect("parses");
        assert_eq!(e.span, 0..13, "a negation spans its closing parenthesis");
    }

    #[test]
    fn literals() {
        check(
            "7d + 12h + 30m + 5s + 10ms",
            "(+ (+ (+ (+ 604800000ms 43200000ms) 1800000ms) 5000ms) 10ms)",
        );
        check("1.5e3", "1500.0");
        check(r#""a\"b" == 'it\'s'"#, r#"(== "a\"b" "it's")"#);
        check("[1, 2, 3,]", "[1 2 3]");
        check("[]", "[]");
        check("-9223372036854775807", "-9223372036854775807");
    }

    #[test]
    fn keywords_are_not_names_but_prefixes_are() {
        check("customer.index in [1]", "(in customer.index [1])");
        check("infinity.x", "infinity.x");
        check("true_love.x", "true_love.x");
    }

    #[test]
    fn calls_and_paths() {
        check(
            "days_since(customer.last_contact) > 7",
            "(> (days_since customer.last_contact) 7)",
        );
        check("min(1, max(2, 3))", "(min 1 (max 2 3))");
        check("now()", "(now )");
        check(
            r#"!("mortgage" in customer.products)"#,
            r#"(Not (in "mortgage" customer.products))"#,
        );
    }

    #[test]
    fn syntax_errors_point_at_the_offending_token() {
        check_err(
            "customer.age >= ",
            "syntax error: expected an expression, found end of expression",
            16..16,
        );
        check_err(
            "customer.age >> 1",
            "syntax error: expected an expression, found `>`",
            14..15,
        );
        check_err(
            "a.b < c.d < 3",
            "syntax error: expected `&&`, `?:`, `||`, an operator or end of expression, found `<`",
            10..11,
        );
        check_err(
            "99999999999999999999",
            "integer literal `99999999999999999999` does not fit in 64 bits",
            0..20,
        );
        check_err(r#""a\qb""#, r"unknown escape `\q` in string literal", 2..4);
    }
}
