//! `offers/*.yaml`: the offers, with their content per placement, rules, contact policy
//! and budget.
//!
//! ```yaml
//! offers:
//!   - id: gold_card
//!     name: Gold card               # default the id
//!     group: cards
//!     tags: [cards, premium]
//!     active: { from: 2026-01-01T00:00:00Z, until: 2027-01-01T00:00:00Z }
//!     eligibility: customer.age >= 18 && customer.segment == 'gold'
//!     propensity: 0.1               # propensity, value, weight, context_weight: default 1
//!     value: 100
//!     contact_policy: { ... }       # see policy.rs
//!     budget: { per_day: 1000 }
//!     content:                      # at least one placement
//!       web.banner: { title: Gold, cta: Apply }
//! ```
//!
//! Rules may name offers and groups of any file, so the names are gathered from every
//! parsed file ([`vocabulary`]) before any offer is decoded.

use std::collections::{BTreeMap, HashMap};

use marked_yaml::Node;
use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};

use super::placements::Placements;
use super::policy;
use super::rules::Rules;
use super::yaml::{Decoder, Fields, Id, Ids, Items, Timestamp, loc, scalar_loc};
use crate::catalog::{
    CatalogError, Content, Context, Expected, FileRole, Kind, Offer, Owner, Part, PlacementIdx,
    RuleField, Window, YamlError,
};
use crate::expr::{Formula, Predicate, Vocabulary, did_you_mean};
use crate::schema::key;

/// The offers of every offers file, in file order.
#[derive(Debug)]
pub(super) struct Offers {
    pub items: Vec<Offer>,
    ids: Ids,
    /// Every offer was read: each file parsed and each item had a valid id. Otherwise an
    /// unknown offer may be one that was not read, and is not reported again.
    pub complete: bool,
}

impl Offers {
    pub fn new() -> Offers {
        Offers {
            items: Vec::new(),
            ids: Ids::new(Kind::Offer),
            complete: true,
        }
    }

    /// Reads the offers of the file `top`, `None` when it did not parse.
    pub fn file(
        &mut self,
        d: &mut Decoder,
        top: Option<&MarkedMappingNode>,
        rules: &Rules<'_>,
        placements: &Placements,
    ) {
        let Some(top) = top else {
            self.complete = false;
            return;
        };
        let f = d.fields(top, Context::File(FileRole::Offers), &["offers"]);
        let Some(items) = f.required::<Items>(d, "offers") else {
            self.complete = false;
            return;
        };
        self.complete &= items.complete;
        for map in items.maps {
            self.offer(d, map, rules, placements);
        }
    }

    fn offer(
        &mut self,
        d: &mut Decoder,
        map: &MarkedMappingNode,
        rules: &Rules<'_>,
        placements: &Placements,
    ) {
        let f = d.fields(
            map,
            Context::Unnamed(Kind::Offer),
            &[
                "id",
                "name",
                "description",
                "group",
                "tags",
                "active",
                "content",
                "eligibility",
                "propensity",
                "value",
                "weight",
                "context_weight",
                "contact_policy",
                "budget",
            ],
        );
        let Some(Id(id)) = f.required::<Id>(d, "id") else {
            self.complete = false;
            return;
        };
        if !self.ids.claim(d, id) {
            return;
        }
        let owner = Owner::Offer(id.to_string());
        let f = f.named(Context::Of(owner.clone()));
        let eligibility_src = f.optional::<&MarkedScalarNode>(d, "eligibility");
        let eligibility =
            eligibility_src.map_or_else(Predicate::always, |s| rules.eligibility(d, s, &owner));
        let formula = |d: &mut Decoder, field| {
            rules
                .formula(d, &f, field, &owner, false)
                .unwrap_or_else(|| Formula::constant(1.0))
        };
        let group = f.optional::<String>(d, "group");
        let offer = Offer {
            id: id.to_string(),
            key: key(id),
            group_key: group.as_deref().map_or(0, key),
            name: f
                .optional::<String>(d, "name")
                .unwrap_or_else(|| id.to_string()),
            description: f.optional::<String>(d, "description"),
            group,
            tags: f.optional::<Vec<String>>(d, "tags").unwrap_or_default(),
            active: window(d, &f, id.as_str()),
            content: content(d, &f, &owner, placements),
            eligibility,
            eligibility_src: eligibility_src.map(|s| s.to_string()),
            clauses: None,
            propensity: formula(d, RuleField::Propensity),
            value: formula(d, RuleField::Value),
            weight: formula(d, RuleField::Weight),
            context_weight: formula(d, RuleField::ContextWeight),
            contact_policy: policy::offer(d, &f, &owner),
            budget: policy::budget(d, &f, &owner),
        };
        self.items.push(offer);
    }

    /// Two offer ids with one key would share history: refuse them (about one chance in
    /// a million for a catalog of 100 offers).
    pub fn key_collisions(&self, d: &mut Decoder) {
        let mut seen: HashMap<u32, &str> = HashMap::new();
        for o in &self.items {
            if let Some(first) = seen.insert(o.key, &o.id) {
                let error = CatalogError::KeyCollision {
                    first: first.to_string(),
                    second: o.id.clone(),
                };
                d.error(None, error);
            }
        }
    }
}

/// The offer ids and groups of the offers files, each parsed (`tops`, with their file
/// index) before any offer is decoded, so that rules can name offers of any file. Taken
/// as written: errors are reported when the offers are decoded.
pub(super) fn vocabulary(
    d: &Decoder,
    tops: &[(usize, Result<MarkedMappingNode, YamlError>)],
) -> Vocabulary {
    let mut v = Vocabulary::default();
    for (file, top) in tops {
        // A file refused for a duplicate key alone is still YAML: its names are read from
        // it without that check, so that rules naming its offers elsewhere are not
        // reported too.
        let lenient;
        let top = match top {
            Ok(top) => top,
            Err(YamlError::DuplicateKey { .. }) => match d.parse_allowing_duplicates(*file) {
                Some(m) => {
                    lenient = m;
                    &lenient
                }
                None => continue,
            },
            Err(_) => continue,
        };
        let Some(offers) = top.get_sequence("offers") else {
            continue;
        };
        for offer in offers.iter().filter_map(Node::as_mapping) {
            v.offers
                .extend(offer.get_scalar("id").map(|s| s.to_string()));
            v.groups
                .extend(offer.get_scalar("group").map(|s| s.to_string()));
        }
    }
    v.groups.sort();
    v.groups.dedup();
    v
}

/// `active` of offer `offer`, whose keys are `f`: `{ from, until }`, either optional.
fn window(d: &mut Decoder, f: &Fields<'_>, offer: &str) -> Window {
    let Some(map) = f.optional::<&MarkedMappingNode>(d, "active") else {
        return Window::default();
    };
    let owner = Owner::Offer(offer.to_string());
    let af = d.fields(
        map,
        Context::Part(Part::ActiveWindow, owner),
        &["from", "until"],
    );
    let from = af.optional::<Timestamp>(d, "from").map(|t| t.0);
    let until = af.optional::<Timestamp>(d, "until").map(|t| t.0);
    if let (Some(a), Some(b)) = (from, until)
        && a >= b
    {
        let error = CatalogError::EmptyWindow {
            offer: offer.to_string(),
        };
        d.error(loc(map.span(), 1), error);
    }
    Window { from, until }
}

/// `content` of `owner`, whose keys are `f`: the fields to show per placement.
fn content(
    d: &mut Decoder,
    f: &Fields<'_>,
    owner: &Owner,
    placements: &Placements,
) -> BTreeMap<PlacementIdx, Content> {
    let mut out = BTreeMap::new();
    let Some(map) = f.required::<&MarkedMappingNode>(d, "content") else {
        return out;
    };
    for (placement, fields) in map.iter() {
        let Some(idx) = placements.position(placement) else {
            if placements.complete {
                let error = CatalogError::Dangling {
                    kind: Kind::Placement,
                    id: placement.to_string(),
                    context: Context::Part(Part::Content, owner.clone()),
                    suggestion: did_you_mean(placement, placements.ids()),
                };
                d.error(scalar_loc(placement), error);
            }
            continue;
        };
        let context = Context::Part(Part::ContentFor(placement.to_string()), owner.clone());
        let Some(fields) = d.decode::<&MarkedMappingNode>(fields, placement, &context) else {
            continue;
        };
        let mut content = Content::new();
        for (k, v) in fields.iter() {
            match v.as_scalar() {
                Some(s) => {
                    content.insert(k.to_string(), s.to_string());
                }
                None => d.invalid(v, k, &context, Expected::String),
            }
        }
        out.insert(idx, content);
    }
    if map.is_empty() {
        let error = CatalogError::Invalid {
            key: "content".into(),
            context: f.context().clone(),
            expected: Expected::Content,
        };
        d.error(loc(map.span(), 1), error);
    }
    out
}
