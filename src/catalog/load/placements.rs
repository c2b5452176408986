//! `placements.yaml`: where offers go, and (in [`policy`](super::policy)) the contact
//! policy across offers.
//!
//! ```yaml
//! placements:
//!   - id: web.banner
//!     channel: web          # a value of the `context.channel` enum
//!     slots: 2              # default 1
//!     fallback: basic       # an offer with content for this placement
//!     one_per_group: true
//!     experiment: explore
//!     score: offer.propensity * offer.value
//! contact_policy: { ... }
//! ```
//!
//! A placement's offers and fallback are known only once every offers file is read:
//! [`decode`] leaves them out, and [`resolve`] fills them in.

use marked_yaml::Node;
use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};

use super::policy;
use super::rules::Rules;
use super::yaml::{Decode, Decoder, Id, Ids, Items, parse_scalar, scalar_loc};
use crate::catalog::{
    CatalogError, Context, Expected, Experiment, FileRole, Kind, Location, MAX_SLOTS, Offer, Owner,
    Part, Placement, PlacementIdx, Policy, RuleField,
};
use crate::expr::did_you_mean;
use crate::schema::{AttrType, Attribute, EnumDef, key};

/// The placements of placements.yaml, before their offers are known.
#[derive(Debug, Default)]
pub(super) struct Placements {
    pending: Vec<Pending>,
    /// Every placement of the file was read: the file parsed and each item had a valid
    /// id. Otherwise an unknown placement may be one that was not read, and is not
    /// reported again: the error that caused it already is.
    pub complete: bool,
}

/// A placement before its fallback offer is resolved.
#[derive(Debug)]
struct Pending {
    placement: Placement,
    /// The id of the fallback offer, and where it is.
    fallback: Option<(String, Option<Location>)>,
}

impl Placements {
    /// The placements of a file that is missing or did not parse: none, and incomplete.
    pub fn unread() -> Placements {
        Placements::default()
    }

    /// The index of placement `id`.
    pub fn position(&self, id: &str) -> Option<PlacementIdx> {
        self.pending.iter().position(|p| p.placement.id == id)
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.pending.iter().map(|p| p.placement.id.as_str())
    }
}

/// The placements and the contact policy of the file `top`.
pub(super) fn decode(
    d: &mut Decoder,
    top: &MarkedMappingNode,
    rules: &Rules<'_>,
    experiments: &[Experiment],
) -> (Placements, Policy) {
    let f = d.fields(
        top,
        Context::File(FileRole::Placements),
        &["placements", "contact_policy"],
    );
    let policy = policy::section(d, &f);
    let channels = match rules
        .schema
        .context
        .slot("channel")
        .and_then(|s| rules.schema.context.get(s))
    {
        Some(Attribute {
            ty: AttrType::Enum(def),
            ..
        }) => Some(def),
        _ => None,
    };
    let mut out = Placements {
        pending: Vec::new(),
        complete: true,
    };
    let mut ids = Ids::new(Kind::Placement);
    let Some(items) = f.required::<Items>(d, "placements") else {
        out.complete = false;
        return (out, policy);
    };
    out.complete &= items.complete;
    for map in items.maps {
        let f = d.fields(
            map,
            Context::Unnamed(Kind::Placement),
            &[
                "id",
                "channel",
                "description",
                "slots",
                "fallback",
                "one_per_group",
                "experiment",
                "score",
            ],
        );
        let Some(Id(id)) = f.required::<Id>(d, "id") else {
            out.complete = false;
            continue;
        };
        if !ids.claim(d, id) {
            continue;
        }
        let owner = Owner::Placement(id.to_string());
        let f = f.named(Context::Of(owner.clone()));
        let channel = match f.required::<&MarkedScalarNode>(d, "channel") {
            None => String::new(),
            Some(c) => {
                if let Some(def) = channels {
                    check_channel(d, def, c, id.as_str());
                }
                c.to_string()
            }
        };
        let slots = f.optional::<Slots>(d, "slots").map_or(1, |s| s.0);
        let experiment = f
            .optional::<&MarkedScalarNode>(d, "experiment")
            .and_then(|e| {
                let found = experiments.iter().position(|x| x.id == e.as_str());
                if found.is_none() {
                    d.error(
                        scalar_loc(e),
                        CatalogError::Dangling {
                            kind: Kind::Experiment,
                            id: e.to_string(),
                            context: f.context().clone(),
                            suggestion: did_you_mean(e, experiments.iter().map(|x| x.id.as_str())),
                        },
                    );
                }
                found
            });
        let fallback = f
            .optional::<&MarkedScalarNode>(d, "fallback")
            .map(|s| (s.to_string(), scalar_loc(s)));
        let placement = Placement {
            id: id.to_string(),
            channel_key: key(&channel),
            channel,
            description: f.optional::<String>(d, "description"),
            slots,
            fallback: None,
            one_per_group: f.optional::<bool>(d, "one_per_group").unwrap_or(false),
            experiment,
            score: rules.formula(d, &f, RuleField::Score, &owner, true),
            offers: Vec::new(),
            plan: Default::default(),
        };
        out.pending.push(Pending {
            placement,
            fallback,
        });
    }
    (out, policy)
}

/// Reports channel `c` of placement `placement` unless the `context.channel` enum `def`
/// has it.
fn check_channel(d: &mut Decoder, def: &EnumDef, c: &MarkedScalarNode, placement: &str) {
    if def.index_of(c).is_some() {
        return;
    }
    d.error(
        scalar_loc(c),
        CatalogError::UnknownChannel {
            channel: c.to_string(),
            placement: placement.to_string(),
            suggestion: did_you_mean(c, def.variants.iter().map(|v| &**v)),
        },
    );
}

/// The placements with their offers (those with content for them, in catalog order) and
/// their fallbacks resolved. `offers_complete` says every offer was read (see
/// [`Placements::complete`]).
pub(super) fn resolve(
    d: &mut Decoder,
    placements: Placements,
    offers: &[Offer],
    offers_complete: bool,
) -> Vec<Placement> {
    let mut out = Vec::with_capacity(placements.pending.len());
    for (idx, p) in placements.pending.into_iter().enumerate() {
        let mut placement = p.placement;
        placement.offers = offers
            .iter()
            .enumerate()
            .filter(|(_, o)| o.content.contains_key(&idx))
            .map(|(i, _)| i)
            .collect();
        if let Some((id, location)) = p.fallback {
            match offers.iter().position(|o| o.id == id) {
                Some(i) if offers[i].content.contains_key(&idx) => placement.fallback = Some(i),
                _ if !offers_complete => {}
                Some(_) => d.error(
                    location,
                    CatalogError::FallbackWithoutContent {
                        offer: id,
                        placement: placement.id.clone(),
                    },
                ),
                None => {
                    let suggestion = did_you_mean(&id, offers.iter().map(|o| o.id.as_str()));
                    d.error(
                        location,
                        CatalogError::Dangling {
                            kind: Kind::Offer,
                            id,
                            context: Context::Part(
                                Part::Fallback,
                                Owner::Placement(placement.id.clone()),
                            ),
                            suggestion,
                        },
                    );
                }
            }
        }
        out.push(placement);
    }
    out
}

/// How many offers a placement shows: 1 to [`MAX_SLOTS`].
#[derive(Debug, Clone, Copy)]
struct Slots(u32);

impl<'n> Decode<'n> for Slots {
    fn decode(d: &mut Decoder, node: &'n Node, key: &str, context: &Context) -> Option<Self> {
        parse_scalar(d, node, key, context, Expected::Slots, |s| {
            s.parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_SLOTS).contains(n))
                .map(Slots)
        })
    }
}
