use super::ast::Span;

/// Everything that can be wrong with one expression, found at load time. Each variant
/// carries the byte span in the expression it is about; `catalog/` turns that into
/// `file:line:col`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExprError {
    #[error("syntax error: expected {expected}, found {found}")]
    Syntax {
        span: Span,
        expected: String,
        found: String,
    },
    #[error("integer literal `{literal}` does not fit in 64 bits")]
    IntOutOfRange { span: Span, literal: String },
    #[error("unknown escape `\\{escape}` in string literal")]
    BadEscape { span: Span, escape: char },
    #[error("unknown attribute `{name}`")]
    UnknownAttribute {
        span: Span,
        name: String,
        suggestion: Option<String>,
    },
    #[error("unknown name `{name}`: attributes are written `customer.<name>` or `context.<name>`")]
    BareName { span: Span, name: String },
    #[error("`{name}` is only available in score formulas")]
    OfferOutsideScore { span: Span, name: String },
    #[error("unknown function `{name}`")]
    UnknownFunction {
        span: Span,
        name: String,
        suggestion: Option<String>,
    },
    #[error("function `{name}` takes {expected} argument(s), found {found}")]
    Arity {
        span: Span,
        name: String,
        expected: String,
        found: usize,
    },
    #[error("{what} expects {expected}, found {found}")]
    TypeMismatch {
        span: Span,
        what: String,
        expected: String,
        found: String,
    },
    #[error("`{value}` is not a value of enum `{attribute}`")]
    UnknownVariant {
        span: Span,
        value: String,
        attribute: String,
        suggestion: Option<String>,
    },
    #[error("a list is only allowed on the right of `in`")]
    ListOutsideIn { span: Span },
    #[error("unknown {kind} `{name}`")]
    UnknownName {
        span: Span,
        kind: &'static str,
        name: String,
        suggestion: Option<String>,
    },
    #[error("the second argument of `{function}` must be a constant {kind} id")]
    HistoryTarget {
        span: Span,
        function: String,
        kind: &'static str,
    },
    #[error("list elements must be constants")]
    NonConstantList { span: Span },
    #[error("`has` takes an attribute such as `customer.age`")]
    HasNeedsAttribute { span: Span },
    #[error("{what} must be of type `{expected}`, found `{found}`")]
    WrongResult {
        span: Span,
        what: String,
        expected: String,
        found: String,
    },
}

impl ExprError {
    /// The byte range in the expression source this error is about.
    pub fn span(&self) -> Span {
        use ExprError::*;
        match self {
            Syntax { span, .. }
            | IntOutOfRange { span, .. }
            | BadEscape { span, .. }
            | UnknownAttribute { span, .. }
            | BareName { span, .. }
            | OfferOutsideScore { span, .. }
            | UnknownFunction { span, .. }
            | Arity { span, .. }
            | TypeMismatch { span, .. }
            | UnknownVariant { span, .. }
            | NonConstantList { span }
            | UnknownName { span, .. }
            | HistoryTarget { span, .. }
            | ListOutsideIn { span }
            | HasNeedsAttribute { span }
            | WrongResult { span, .. } => span.clone(),
        }
    }

    /// A hint for the author, such as a near-miss name.
    pub fn help(&self) -> Option<String> {
        use ExprError::*;
        match self {
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
            NonConstantList { .. } => {
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
