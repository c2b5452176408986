//! `models.yaml`: the adaptive models offers' formulas read with `adaptive('id')`.
//!
//! ```yaml
//! models:
//!   - id: retention
//!     description: Who takes a retention offer.
//!     predictors:
//!       - customer.segment                      # an enum or bool: one feature per value
//!       - { attribute: customer.tenure_months, bins: [6, 12, 24, 48] }
//!       - { attribute: customer.products, members: [broadband, tv] }
//!       - { attribute: customer.language, values: [en, de] }
//!     positive: [accept, convert]
//!     negative: [reject]                        # default none
//!     window: 7d                                # default 7d, from 1m to 365d
//!     prior: 0.05                               # the rate an offer starts from; default 0.05
//!     forget: 0.0001                            # default 0
//!     per_channel: true                         # default false
//! ```

use marked_yaml::Node;
use marked_yaml::types::{MarkedMappingNode, MarkedSequenceNode};

use super::yaml::{Decode, Decoder, Id, Ids, Items, node_loc, parse_scalar, scalar_loc};
use crate::adaptive::{Definition, Encoding, Kinds, MAX_ACTIVE, Model, Predictor, Probit};
use crate::catalog::{
    CatalogError, Context, Expected, FileRole, Kind, Owner, Part, PredictorProblem,
};
use crate::expr::did_you_mean;
use crate::schema::{AttrType, Entity, EventKind, Schema};

const MINUTE: i64 = 60_000;
const DAY: i64 = 86_400_000;

/// The models of the file `top`, checked against `schema`; those with an error are left
/// out (and the catalog is not built).
pub(super) fn decode(d: &mut Decoder, top: &MarkedMappingNode, schema: &Schema) -> Vec<Model> {
    let f = d.fields(top, Context::File(FileRole::Models), &["models"]);
    let mut ids = Ids::new(Kind::Model);
    let mut out = Vec::new();
    let items = f
        .optional::<Items>(d, "models")
        .map_or(Vec::new(), |i| i.maps);
    for map in items {
        let f = d.fields(
            map,
            Context::Unnamed(Kind::Model),
            &[
                "id",
                "description",
                "predictors",
                "positive",
                "negative",
                "window",
                "prior",
                "forget",
                "per_channel",
            ],
        );
        let Some(Id(id)) = f.required::<Id>(d, "id") else {
            continue;
        };
        if !ids.claim(d, id) {
            continue;
        }
        let model = id.to_string();
        let f = f.named(Context::Of(Owner::Model(model.clone())));
        let errors = d.diags.len();
        let predictors = f
            .required::<&MarkedSequenceNode>(d, "predictors")
            .map(|seq| predictors(d, seq, schema, &model))
            .unwrap_or_default();
        let positive = f
            .required::<KindList>(d, "positive")
            .map_or(Kinds::default(), |k| k.0);
        let negative = f
            .optional::<KindList>(d, "negative")
            .map_or(Kinds::default(), |k| k.0);
        if let Some(kind) = positive.iter().find(|k| negative.contains(*k)) {
            d.error(
                node_loc(f_node(map, "negative")),
                CatalogError::KindTwice {
                    model: model.clone(),
                    kind: kind.as_str(),
                },
            );
        }
        let window = f
            .optional::<ResponseWindow>(d, "window")
            .map_or(7 * DAY, |w| w.0);
        let prior = f.optional::<Rate>(d, "prior").map_or(0.05, |r| r.0);
        let forget = f.optional::<Forget>(d, "forget").map_or(0.0, |r| r.0);
        let per_channel = f.optional::<bool>(d, "per_channel").unwrap_or(false);
        let active: u32 = predictors.iter().map(|p| p.encoding.max_active()).sum();
        if active as usize > MAX_ACTIVE {
            d.error(
                node_loc(f_node(map, "predictors")),
                CatalogError::ModelTooWide {
                    model: model.clone(),
                    active,
                    max: MAX_ACTIVE,
                },
            );
        }
        if d.diags.len() > errors {
            continue;
        }
        let probit = Probit {
            forget,
            ..Probit::with_prior_rate_for(prior, predictors.len())
        };
        out.push(Model::new(Definition {
            id: model,
            description: f.optional::<String>(d, "description"),
            predictors,
            positive,
            negative,
            window,
            per_channel,
            prior_rate: prior,
            probit,
        }));
    }
    out
}

fn f_node<'n>(map: &'n MarkedMappingNode, key: &str) -> &'n Node {
    map.get_node(key).expect("read by the caller")
}

/// The predictors of model `model`, each an attribute name or a mapping.
fn predictors(
    d: &mut Decoder,
    seq: &MarkedSequenceNode,
    schema: &Schema,
    model: &str,
) -> Vec<Predictor> {
    let owner = Owner::Model(model.to_string());
    let context = Context::Part(Part::Predictor, owner);
    let mut out: Vec<Predictor> = Vec::new();
    if seq.is_empty() {
        d.invalid(
            &Node::Sequence(seq.clone()),
            "predictors",
            &Context::Of(Owner::Model(model.to_string())),
            Expected::List,
        );
    }
    for item in seq.iter() {
        let (name_node, spec) = match item {
            Node::Scalar(s) => (s, None),
            Node::Mapping(m) => {
                let f = d.fields(
                    m,
                    context.clone(),
                    &["attribute", "bins", "values", "members"],
                );
                let Some(name) =
                    f.required::<&marked_yaml::types::MarkedScalarNode>(d, "attribute")
                else {
                    continue;
                };
                (name, Some((m, f)))
            }
            Node::Sequence(_) => {
                d.invalid(item, "predictors", &context, Expected::PredictorSpec);
                continue;
            }
        };
        let name = name_node.as_str();
        let at = scalar_loc(name_node);
        let Some((entity, slot, attr)) = attribute(schema, name) else {
            let known = [("customer", &schema.customer), ("context", &schema.context)]
                .into_iter()
                .flat_map(|(e, s)| s.names().map(move |n| format!("{e}.{n}")))
                .collect::<Vec<_>>();
            d.error(
                at,
                CatalogError::UnknownPredictor {
                    model: model.to_string(),
                    attribute: name.to_string(),
                    suggestion: did_you_mean(name, known.iter().map(String::as_str)),
                },
            );
            continue;
        };
        let problem = |problem| CatalogError::Predictor {
            model: model.to_string(),
            attribute: name.to_string(),
            problem,
        };
        if out.iter().any(|p| p.name == name) {
            d.error(at, problem(PredictorProblem::Duplicate));
            continue;
        }
        let ty = attr.ty.name();
        let given = |key: &str| spec.as_ref().and_then(|(m, _)| m.get_node(key));
        // The keys each type takes; any other given is refused.
        let takes: &[&'static str] = match &attr.ty {
            AttrType::Int | AttrType::Float => &["bins"],
            AttrType::String => &["values"],
            AttrType::Set => &["members"],
            AttrType::Bool | AttrType::Enum(_) | AttrType::Timestamp => &[],
        };
        let mut refused = false;
        for key in ["bins", "values", "members"] {
            if let Some(node) = given(key)
                && !takes.contains(&key)
            {
                d.error(
                    node_loc(node),
                    problem(PredictorProblem::KeyNotForType { key, ty }),
                );
                refused = true;
            }
        }
        if refused {
            continue;
        }
        let names = |d: &mut Decoder, key: &'static str| -> Option<Box<[Box<str>]>> {
            match spec.as_ref() {
                Some((_, f)) if given(key).is_some() => f.required::<Names>(d, key).map(|n| n.0),
                _ => {
                    d.error(at, problem(PredictorProblem::NeedsNames { ty, key }));
                    None
                }
            }
        };
        let encoding = match &attr.ty {
            AttrType::Bool => Encoding::Bool,
            AttrType::Enum(def) => Encoding::Enum(def.variants.iter().cloned().collect()),
            AttrType::Int | AttrType::Float => match spec.as_ref() {
                Some((_, f)) if given("bins").is_some() => {
                    let Some(Bins(edges)) = f.required::<Bins>(d, "bins") else {
                        continue;
                    };
                    Encoding::Bins(edges)
                }
                _ => {
                    d.error(at, problem(PredictorProblem::NeedsBins { ty }));
                    continue;
                }
            },
            AttrType::String => match names(d, "values") {
                Some(n) => Encoding::Strings(n),
                None => continue,
            },
            AttrType::Set => match names(d, "members") {
                Some(n) => Encoding::Members(n),
                None => continue,
            },
            AttrType::Timestamp => {
                d.error(at, problem(PredictorProblem::Timestamp));
                continue;
            }
        };
        out.push(Predictor {
            name: name.to_string(),
            entity,
            slot,
            encoding,
            default: attr.default.clone(),
            offset: 0,
        });
    }
    out
}

/// `customer.x` or `context.y` in the schema: its entity, slot and attribute.
fn attribute<'s>(
    schema: &'s Schema,
    name: &str,
) -> Option<(Entity, u32, &'s crate::schema::Attribute)> {
    let (entity, attr) = name.split_once('.')?;
    let (entity, attrs) = match entity {
        "customer" => (Entity::Customer, &schema.customer),
        "context" => (Entity::Context, &schema.context),
        _ => return None,
    };
    let slot = attrs.slot(attr)?;
    Some((entity, slot, attrs.get(slot)?))
}

/// A non-empty list of outcome kinds, each once.
struct KindList(Kinds);

impl<'n> Decode<'n> for KindList {
    fn decode(d: &mut Decoder, node: &'n Node, key: &str, context: &Context) -> Option<Self> {
        let list = node.as_sequence().and_then(|seq| {
            let mut kinds = Kinds::default();
            for item in seq.iter() {
                let s = item.as_scalar()?;
                // An impression opens the wait for a response: it is neither.
                let kind = EventKind::ALL
                    .into_iter()
                    .filter(|k| *k != EventKind::Impression)
                    .find(|k| k.as_str() == s.as_str())?;
                if kinds.contains(kind) {
                    return None;
                }
                kinds = kinds.with(kind);
            }
            (!kinds.is_empty()).then_some(kinds)
        });
        if list.is_none() {
            d.invalid(node, key, context, Expected::OutcomeKinds);
        }
        list.map(KindList)
    }
}

/// A non-empty list of increasing, finite numbers.
struct Bins(Box<[f64]>);

impl<'n> Decode<'n> for Bins {
    fn decode(d: &mut Decoder, node: &'n Node, key: &str, context: &Context) -> Option<Self> {
        let edges = node.as_sequence().and_then(|seq| {
            let edges: Option<Vec<f64>> = seq
                .iter()
                .map(|i| {
                    i.as_scalar()?
                        .as_str()
                        .parse::<f64>()
                        .ok()
                        .filter(|x| x.is_finite())
                })
                .collect();
            let edges = edges?;
            (!edges.is_empty() && edges.windows(2).all(|w| w[0] < w[1])).then_some(edges)
        });
        if edges.is_none() {
            d.invalid(node, key, context, Expected::Bins);
        }
        edges.map(|e| Bins(e.into()))
    }
}

/// A non-empty list of distinct, non-empty strings.
struct Names(Box<[Box<str>]>);

impl<'n> Decode<'n> for Names {
    fn decode(d: &mut Decoder, node: &'n Node, key: &str, context: &Context) -> Option<Self> {
        let names = node.as_sequence().and_then(|seq| {
            let names: Option<Vec<Box<str>>> = seq
                .iter()
                .map(|i| {
                    let s = i.as_scalar()?.as_str();
                    (!s.is_empty()).then(|| Box::from(s))
                })
                .collect();
            let names = names?;
            let mut sorted = names.clone();
            sorted.sort();
            sorted.dedup();
            (!names.is_empty() && sorted.len() == names.len()).then_some(names)
        });
        if names.is_none() {
            d.invalid(node, key, context, Expected::Names);
        }
        names.map(|n| Names(n.into()))
    }
}

/// A prior response rate, strictly between 0 and 1.
struct Rate(f64);

impl<'n> Decode<'n> for Rate {
    fn decode(d: &mut Decoder, node: &'n Node, key: &str, context: &Context) -> Option<Self> {
        parse_scalar(d, node, key, context, Expected::Rate, |s| {
            s.parse::<f64>()
                .ok()
                .filter(|x| *x > 0.0 && *x < 1.0)
                .map(Rate)
        })
    }
}

/// Forgetting, from 0 to 0.5.
struct Forget(f64);

impl<'n> Decode<'n> for Forget {
    fn decode(d: &mut Decoder, node: &'n Node, key: &str, context: &Context) -> Option<Self> {
        parse_scalar(d, node, key, context, Expected::Forget, |s| {
            s.parse::<f64>()
                .ok()
                .filter(|x| (0.0..=0.5).contains(x))
                .map(Forget)
        })
    }
}

/// A response window, from a minute to 365 days.
struct ResponseWindow(i64);

impl<'n> Decode<'n> for ResponseWindow {
    fn decode(d: &mut Decoder, node: &'n Node, key: &str, context: &Context) -> Option<Self> {
        let s = node.as_scalar().map(|s| s.as_str().to_string());
        let w = s
            .as_deref()
            .and_then(super::yaml::parse_duration)
            .filter(|w| (MINUTE..=365 * DAY).contains(w));
        if w.is_none() {
            d.invalid(node, key, context, Expected::ResponseWindow);
        }
        w.map(ResponseWindow)
    }
}
