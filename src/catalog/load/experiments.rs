//! `experiments.yaml`: epsilon-greedy tests and their champion/challenger arms.
//!
//! ```yaml
//! experiments:
//!   - id: explore
//!     epsilon: 0.1          # default 0
//!     window: 1d            # default 1d
//!     salt: explore         # default the id
//!     arms:                 # default one `champion` arm with every customer
//!       - { id: champion, share: 0.5 }
//!       - { id: challenger, share: 0.5, score: offer.value * 2 }
//! ```

use marked_yaml::Node;
use marked_yaml::types::{MarkedMappingNode, MarkedSequenceNode};

use super::rules::Rules;
use super::yaml::{
    Decode, Decoder, Duration, Fields, Fraction, Id, Ids, Items, loc, parse_scalar, scalar_loc,
};
use crate::catalog::{
    Arm, CatalogError, Context, Expected, Experiment, FileRole, FirstDefined, Kind, Location,
    Owner, Part, Related, RuleField,
};

/// The experiments of the file `top`; those without a valid id, or with one taken, are
/// left out.
pub(super) fn decode(
    d: &mut Decoder,
    top: &MarkedMappingNode,
    rules: &Rules<'_>,
) -> Vec<Experiment> {
    let f = d.fields(top, Context::File(FileRole::Experiments), &["experiments"]);
    let mut ids = Ids::new(Kind::Experiment);
    let mut out = Vec::new();
    let items = f
        .optional::<Items>(d, "experiments")
        .map_or(Vec::new(), |i| i.maps);
    for map in items {
        let f = d.fields(
            map,
            Context::Unnamed(Kind::Experiment),
            &["id", "description", "epsilon", "window", "salt", "arms"],
        );
        let Some(Id(id)) = f.required::<Id>(d, "id") else {
            continue;
        };
        if !ids.claim(d, id) {
            continue;
        }
        let owner = Owner::Experiment(id.to_string());
        let f = f.named(Context::Of(owner));
        let epsilon = f.optional::<Fraction>(d, "epsilon").map_or(0.0, |e| e.0);
        let window = f
            .optional::<Duration>(d, "window")
            .map_or(86_400_000, |w| w.0);
        let salt = f
            .optional::<String>(d, "salt")
            .unwrap_or_else(|| id.to_string());
        let arms = arms(d, rules, &f, id.as_str());
        out.push(Experiment {
            id: id.to_string(),
            description: f.optional::<String>(d, "description"),
            epsilon,
            window,
            salt,
            arms,
        });
    }
    out
}

/// The `arms` of experiment `experiment`, whose keys are `f`.
fn arms(d: &mut Decoder, rules: &Rules<'_>, f: &Fields<'_>, experiment: &str) -> Vec<Arm> {
    let Some(seq) = f.optional::<&MarkedSequenceNode>(d, "arms") else {
        // No arms: everyone is in one champion arm. (A value that is not a list is
        // reported, and then the catalog is not built.)
        return vec![Arm {
            id: "champion".into(),
            share: 1.0,
            epsilon: None,
            score: None,
        }];
    };
    let owner = Owner::Experiment(experiment.to_string());
    let mut arms: Vec<Arm> = Vec::new();
    // Where each arm's id is, in the order of `arms`.
    let mut arm_ids: Vec<Option<Location>> = Vec::new();
    for item in seq.iter() {
        let Some(map) = d.decode::<&MarkedMappingNode>(item, "arms", f.context()) else {
            continue;
        };
        let af = d.fields(
            map,
            Context::Part(Part::Arm, owner.clone()),
            &["id", "share", "epsilon", "score", "description"],
        );
        let Some(Id(id)) = af.required::<Id>(d, "id") else {
            continue;
        };
        // Arms are told apart within their experiment, so the first is named by it.
        if let Some(first) = arms.iter().position(|a| a.id == id.as_str()) {
            d.error_related(
                scalar_loc(id),
                CatalogError::Duplicate {
                    kind: Kind::Arm,
                    id: id.to_string(),
                    first: FirstDefined::In(owner.clone()),
                },
                arm_ids[first].map(Related::first_defined),
            );
            continue;
        }
        let arm_owner = Owner::Arm {
            id: id.to_string(),
            experiment: experiment.to_string(),
        };
        let af = af.named(Context::Of(arm_owner.clone()));
        let share = af.required::<Share>(d, "share");
        let epsilon = af.optional::<Fraction>(d, "epsilon").map(|e| e.0);
        let score = rules.formula(d, &af, RuleField::Score, &arm_owner, true);
        arms.push(Arm {
            id: id.to_string(),
            share: share.map_or(0.0, |s| s.0),
            epsilon,
            score,
        });
        arm_ids.push(scalar_loc(id));
    }
    let total: f64 = arms.iter().map(|a| a.share).sum();
    if !arms.is_empty() && (total - 1.0).abs() > 1e-6 {
        d.error(
            loc(seq.span(), 1),
            CatalogError::ArmShares {
                experiment: experiment.to_string(),
                total,
            },
        );
    }
    arms
}

/// An arm's share of the customers: above 0 and at most 1.
#[derive(Debug, Clone, Copy)]
struct Share(f64);

impl<'n> Decode<'n> for Share {
    fn decode(d: &mut Decoder, node: &'n Node, key: &str, context: &Context) -> Option<Self> {
        parse_scalar(d, node, key, context, Expected::Share, |s| {
            s.parse::<f64>()
                .ok()
                .filter(|x| *x > 0.0 && *x <= 1.0)
                .map(Share)
        })
    }
}
