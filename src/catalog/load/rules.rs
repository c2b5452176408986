//! The rules of a catalog's files: each compiled where it is read, against the schema,
//! with every error of the rule language placed at its exact line and column in the file.

use marked_yaml::types::MarkedScalarNode;

use super::yaml::{Decoder, Fields};
use crate::catalog::{CatalogError, Owner, RuleField};
use crate::expr::{ExprError, Formula, Predicate, Vocabulary};
use crate::schema::Schema;

/// What the rules of a catalog are compiled against.
#[derive(Debug)]
pub(super) struct Rules<'s> {
    pub schema: &'s Schema,
    /// False when the schema has errors: rules are then not compiled, as against a broken
    /// schema every rule would report the schema's mistakes again.
    pub check: bool,
    /// Every offer id and group, for the names history functions use.
    pub vocabulary: Vocabulary,
}

impl Rules<'_> {
    /// The eligibility rule held in `s`; `always` when it has errors (reported) or is not
    /// checked.
    pub fn eligibility(&self, d: &mut Decoder, s: &MarkedScalarNode, owner: &Owner) -> Predicate {
        if !self.check {
            return Predicate::always();
        }
        let field = RuleField::Eligibility;
        match Predicate::compile_with(s, self.schema, field.as_str(), Some(&self.vocabulary)) {
            Ok(p) => p,
            Err(errors) => {
                report(d, s, errors, field, owner);
                Predicate::always()
            }
        }
    }

    /// The numeric field `field` of `f`: a number or an expression; `None` when it is
    /// missing, has errors (reported) or is not checked. `allow_offer` lets it read the
    /// offer's own variables (a score).
    pub fn formula(
        &self,
        d: &mut Decoder,
        f: &Fields<'_>,
        field: RuleField,
        owner: &Owner,
        allow_offer: bool,
    ) -> Option<Formula> {
        let s = f.optional::<&MarkedScalarNode>(d, field.as_str())?;
        if !self.check {
            return None;
        }
        let vocabulary = Some(&self.vocabulary);
        match Formula::compile_with(s, self.schema, field.as_str(), allow_offer, vocabulary) {
            // A model learns from the outcomes of the offers it scores: in a placement's or
            // an arm's score it would have none of its own.
            Ok(formula) if !formula.models().is_empty() && !matches!(owner, Owner::Offer(_)) => {
                let error = crate::expr::adaptive_outside_offer(s);
                report(d, s, vec![error], field, owner);
                None
            }
            Ok(formula) => Some(formula),
            Err(errors) => {
                report(d, s, errors, field, owner);
                None
            }
        }
    }
}

/// Reports each error of the rule held in scalar `s`, at its exact line and column.
fn report(
    d: &mut Decoder,
    s: &MarkedScalarNode,
    errors: Vec<ExprError>,
    field: RuleField,
    owner: &Owner,
) {
    for error in errors {
        let Some(location) = d.in_scalar(s, error.span()) else {
            return;
        };
        d.error(
            Some(location),
            CatalogError::Rule {
                field,
                owner: owner.clone(),
                error,
            },
        );
    }
}
