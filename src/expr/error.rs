use super::ast::Span;

/// Everything that can be wrong with one expression, found at load time: what is wrong
/// and the byte span in the expression it is about (cedar's shape: one kind, one
/// location); `catalog/` turns the span into `file:line:col`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{kind}")]
pub struct ExprError {
    pub kind: ExprErrorKind,
    /// The byte range in the expression source this error is about.
    pub span: Span,
}

/// What is wrong with an expression; [`ExprError`] adds where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExprErrorKind {
    #[error("syntax error: expected {expected}, found {found}")]
    Syntax { expected: String, found: String },
    #[error("integer literal `{literal}` does not fit in 64 bits")]
    IntOutOfRange { literal: String },
    #[error("unknown escape `\\{escape}` in string literal")]
    BadEscape { escape: char },
    #[error("unknown attribute `{name}`")]
    UnknownAttribute {
        name: String,
        suggestion: Option<String>,
    },
    #[error("unknown name `{name}`: attributes are written `customer.<name>` or `context.<name>`")]
    BareName { name: String },
    #[error("`{name}` is only available in score formulas")]
    OfferOutsideScore { name: String },
    #[error("unknown function `{name}`")]
    UnknownFunction {
        name: String,
        suggestion: Option<String>,
    },
    #[error("function `{name}` takes {expected} argument(s), found {found}")]
    Arity {
        name: String,
        expected: String,
        found: usize,
    },
    #[error("{what} expects {expected}, found {found}")]
    TypeMismatch {
        what: String,
        expected: String,
        found: String,
    },
    #[error("`{value}` is not a value of enum `{attribute}`")]
    UnknownVariant {
        value: String,
        attribute: String,
        suggestion: Option<String>,
    },
    #[error("a list is only allowed on the right of `in`")]
    ListOutsideIn,
    #[error("unknown {kind} `{name}`")]
    UnknownName {
        kind: &'static str,
        name: String,
        suggestion: Option<String>,
    },
    #[error("the second argument of `{function}` must be a constant {kind} id")]
    HistoryTarget {
        function: String,
        kind: &'static str,
    },
    #[error(
        "the argument of `adaptive` must be a model id in quotes, e.g. `adaptive('retention')`"
    )]
    ModelId,
    #[error(
        "`adaptive` is only available in an offer's propensity, value, weight and context_weight"
    )]
    AdaptiveOutsideOffer,
    #[error("list elements must be constants")]
    NonConstantList,
    #[error("`has` takes an attribute such as `customer.age`")]
    HasNeedsAttribute,
    #[error("{what} must be of type `{expected}`, found `{found}`")]
    WrongResult {
        what: String,
        expected: String,
        found: String,
    },
}

impl ExprError {
    pub fn new(span: Span, kind: ExprErrorKind) -> ExprError {
        ExprError { kind, span }
    }

    /// The byte range in the expression source this error is about.
    pub fn span(&self) -> Span {
        self.span.clone()
    }

    /// A hint for the author, such as a near-miss name.
    pub fn help(&self) -> Option<String> {
        use ExprErrorKind::*;
        match &self.kind {
            UnknownAttribute {
                suggestion: Some(s),
                ..
            }
            | UnknownFunction {
                suggestion: Some(s),
                ..
            }
            | UnknownVariant {
                suggestion: Some(s),
                ..
            }
            | UnknownName {
                suggestion: Some(s),
                ..
            } => Some(format!("did you mean `{s}`?")),
            NonConstantList => {
                Some("compare attributes with `==` and combine with `||`".to_string())
            }
            _ => None,
        }
    }
}

/// The closest of `candidates` to `name`, if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.to_string())
}
