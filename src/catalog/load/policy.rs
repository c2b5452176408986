//! Contact policies and budgets: the `contact_policy` section of `placements.yaml`
//! (fatigue, channels, groups) and the `contact_policy` and `budget` of an offer.
//!
//! ```yaml
//! contact_policy:                       # placements.yaml
//!   fatigue: { max_impressions: [{ count: 5, within: 1d }] }
//!   channels: { web: { max_impressions: { count: 2, within: 7d }, budget: { per_day: 10 } } }
//!   groups: { cards: { max_impressions: [{ count: 1, within: 1d, per_channel: true }] } }
//! ```
//! ```yaml
//! contact_policy:                       # an offer
//!   max_impressions: { count: 1, within: 7d }
//!   suppress_after_rejects: { count: 2, within: 30d, for: 60d }
//!   stop_after_accept: true
//! budget: { per_day: 1000, total: 20000 }
//! ```

use marked_yaml::Node;
use marked_yaml::types::MarkedMappingNode;

use super::yaml::{Count, Decoder, Duration, Fields};
use crate::catalog::{
    Budget, ContactPolicy, Context, FrequencyCap, Owner, Part, Policy, RejectSuppression,
    ScopePolicy,
};
use crate::schema::key;

/// The `contact_policy` section of placements.yaml, whose keys are `f`.
pub(super) fn section(d: &mut Decoder, f: &Fields<'_>) -> Policy {
    let mut policy = Policy::default();
    let Some(map) = f.optional::<&MarkedMappingNode>(d, "contact_policy") else {
        return policy;
    };
    let pf = d.fields(
        map,
        Context::ContactPolicy,
        &["fatigue", "channels", "groups"],
    );
    if let Some(m) = pf.optional::<&MarkedMappingNode>(d, "fatigue") {
        let ff = d.fields(m, Context::Of(Owner::Fatigue), &["max_impressions"]);
        policy.fatigue = frequency_caps(d, &ff, &Owner::Fatigue);
    }
    for section in ["channels", "groups"] {
        let Some(m) = pf.optional::<&MarkedMappingNode>(d, section) else {
            continue;
        };
        for (id, scope) in m.iter() {
            let owner = match section {
                "channels" => Owner::Channel(id.to_string()),
                _ => Owner::Group(id.to_string()),
            };
            let Some(sm) = d.decode::<&MarkedMappingNode>(scope, id, &Context::ContactPolicy)
            else {
                continue;
            };
            let sf = d.fields(
                sm,
                Context::Part(Part::ContactPolicy, owner.clone()),
                &["max_impressions", "budget"],
            );
            let scope = ScopePolicy {
                id: id.to_string(),
                key: key(id),
                max_impressions: frequency_caps(d, &sf, &owner),
                budget: budget(d, &sf, &owner),
            };
            match owner {
                Owner::Channel(_) => policy.channels.push(scope),
                _ => policy.groups.push(scope),
            }
        }
    }
    policy
}

/// The `contact_policy` of an offer, whose keys are `f`.
pub(super) fn offer(d: &mut Decoder, f: &Fields<'_>, owner: &Owner) -> ContactPolicy {
    let mut policy = ContactPolicy::default();
    let Some(map) = f.optional::<&MarkedMappingNode>(d, "contact_policy") else {
        return policy;
    };
    let pf = d.fields(
        map,
        Context::Part(Part::ContactPolicy, owner.clone()),
        &[
            "max_impressions",
            "suppress_after_rejects",
            "stop_after_accept",
        ],
    );
    policy.max_impressions = frequency_caps(d, &pf, owner);
    if let Some(m) = pf.optional::<&MarkedMappingNode>(d, "suppress_after_rejects") {
        let sf = d.fields(
            m,
            Context::Part(Part::RejectSuppression, owner.clone()),
            &["count", "within", "for"],
        );
        let count = sf.required::<Count<u32>>(d, "count");
        let within = sf.required::<Duration>(d, "within");
        let suppress_for = sf.required::<Duration>(d, "for");
        if let (Some(Count(count)), Some(Duration(within)), Some(Duration(suppress_for))) =
            (count, within, suppress_for)
        {
            policy.suppress_after_rejects = Some(RejectSuppression {
                count,
                within,
                suppress_for,
            });
        }
    }
    policy.stop_after_accept = pf.optional::<bool>(d, "stop_after_accept").unwrap_or(false);
    policy
}

/// `max_impressions` of `f`: one cap or a list of them.
fn frequency_caps(d: &mut Decoder, f: &Fields<'_>, owner: &Owner) -> Vec<FrequencyCap> {
    let mut caps = Vec::new();
    let Some(node) = f.optional::<&Node>(d, "max_impressions") else {
        return caps;
    };
    let nodes: Vec<&Node> = match node {
        Node::Sequence(s) => s.iter().collect(),
        other => vec![other],
    };
    for cap in nodes {
        let Some(m) = d.decode::<&MarkedMappingNode>(cap, "max_impressions", f.context()) else {
            continue;
        };
        let cf = d.fields(
            m,
            Context::Part(Part::ImpressionCap, owner.clone()),
            &["count", "within", "per_channel"],
        );
        let count = cf.required::<Count<u32>>(d, "count");
        let within = cf.required::<Duration>(d, "within");
        let per_channel = cf.optional::<bool>(d, "per_channel").unwrap_or(false);
        if let (Some(Count(count)), Some(Duration(within))) = (count, within) {
            caps.push(FrequencyCap {
                count,
                within,
                per_channel,
            });
        }
    }
    caps
}

/// `budget` of `f`: `{ per_day: N, total: N }`.
pub(super) fn budget(d: &mut Decoder, f: &Fields<'_>, owner: &Owner) -> Budget {
    // A budget that is not a mapping is named in its owner's terms, whichever mapping
    // holds it (a channel's is in its contact policy).
    let of_owner = Context::Of(owner.clone());
    let Some(node) = f.optional::<&Node>(d, "budget") else {
        return Budget::default();
    };
    let Some(m) = d.decode::<&MarkedMappingNode>(node, "budget", &of_owner) else {
        return Budget::default();
    };
    let bf = d.fields(
        m,
        Context::Part(Part::Budget, owner.clone()),
        &["per_day", "total"],
    );
    Budget {
        per_day: bf.optional::<Count<u64>>(d, "per_day").map(|c| c.0),
        total: bf.optional::<Count<u64>>(d, "total").map(|c| c.0),
    }
}
