//! Formats 1 to 3: the records of older journals, as they were laid out, and how each
//! reads as today's. Format 1 is the first wave's; format 2 had no inputs in an outcome;
//! format 3 no learning state in a decision.

use serde::Deserialize;

use super::{CandidateRecord, DecisionRecord, ForgetRecord, ShownRecord, UpsertRecord};
use crate::schema::{EventKind, Feature};

#[derive(Deserialize)]
pub(super) enum Record {
    Upsert(UpsertRecord),
    Forget(ForgetRecord),
    Outcome(OutcomeRecord),
    Decision(Box<Decision>),
}

#[derive(Deserialize)]
pub(super) struct OutcomeRecord {
    decision: [u8; 16],
    offer: String,
    kind: EventKind,
    value: Option<f64>,
    at: i64,
    customer: Option<String>,
    channel: Option<String>,
    group: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct Decision {
    id: [u8; 16],
    at: i64,
    customer: Option<String>,
    placement: String,
    channel: String,
    catalog_version: String,
    experiment: Option<String>,
    arm: Option<String>,
    epsilon: f64,
    one_per_group: bool,
    features: Vec<(String, Feature)>,
    candidates: Vec<CandidateRecord>,
    shown: Vec<ShownRecord>,
    suppressed: Option<String>,
}

impl From<Record> for super::Record {
    fn from(r: Record) -> super::Record {
        match r {
            Record::Upsert(r) => super::Record::Upsert(r),
            Record::Forget(r) => super::Record::Forget(r),
            // Format 1 kept no time of acceptance; the outcome's own is the best known.
            Record::Outcome(o) => super::Record::Outcome(super::OutcomeRecord {
                decision: o.decision,
                offer: o.offer,
                kind: o.kind,
                value: o.value,
                at: o.at,
                customer: o.customer,
                channel: o.channel,
                group: o.group,
                accepted: o.at,
                inputs: None,
            }),
            Record::Decision(d) => super::Record::Decision(Box::new(DecisionRecord {
                id: d.id,
                at: d.at,
                customer: d.customer,
                placement: d.placement,
                channel: d.channel,
                shown: d.shown,
                catalog_version: d.catalog_version,
                experiment: d.experiment,
                arm: d.arm,
                epsilon: d.epsilon,
                one_per_group: d.one_per_group,
                features: d.features,
                candidates: d.candidates,
                suppressed: d.suppressed,
                learned: None,
            })),
        }
    }
}

/// Format 2: as format 3 but for the outcome, which carried no inputs.
#[derive(Deserialize)]
pub(super) enum Record2 {
    Upsert(UpsertRecord),
    Forget(ForgetRecord),
    Outcome(Outcome2),
    Decision(Box<Decision3>),
}

/// Format 3: as today's but for the decision, which did not say what it learned from.
#[derive(Deserialize)]
pub(super) enum Record3 {
    Upsert(UpsertRecord),
    Forget(ForgetRecord),
    Outcome(super::OutcomeRecord),
    Decision(Box<Decision3>),
}

/// A decision of formats 2 and 3.
#[derive(Deserialize)]
pub(super) struct Decision3 {
    id: [u8; 16],
    at: i64,
    customer: Option<String>,
    placement: String,
    channel: String,
    shown: Vec<ShownRecord>,
    catalog_version: String,
    experiment: Option<String>,
    arm: Option<String>,
    epsilon: f64,
    one_per_group: bool,
    features: Vec<(String, Feature)>,
    candidates: Vec<CandidateRecord>,
    suppressed: Option<String>,
}

impl From<Decision3> for DecisionRecord {
    fn from(d: Decision3) -> DecisionRecord {
        DecisionRecord {
            id: d.id,
            at: d.at,
            customer: d.customer,
            placement: d.placement,
            channel: d.channel,
            shown: d.shown,
            catalog_version: d.catalog_version,
            experiment: d.experiment,
            arm: d.arm,
            epsilon: d.epsilon,
            one_per_group: d.one_per_group,
            features: d.features,
            candidates: d.candidates,
            suppressed: d.suppressed,
            learned: None,
        }
    }
}

impl From<Record3> for super::Record {
    fn from(r: Record3) -> super::Record {
        match r {
            Record3::Upsert(r) => super::Record::Upsert(r),
            Record3::Forget(r) => super::Record::Forget(r),
            Record3::Outcome(o) => super::Record::Outcome(o),
            Record3::Decision(d) => super::Record::Decision(Box::new((*d).into())),
        }
    }
}

#[derive(Deserialize)]
pub(super) struct Outcome2 {
    decision: [u8; 16],
    offer: String,
    kind: EventKind,
    value: Option<f64>,
    at: i64,
    customer: Option<String>,
    channel: Option<String>,
    group: Option<String>,
    accepted: i64,
}

impl From<Record2> for super::Record {
    fn from(r: Record2) -> super::Record {
        match r {
            Record2::Upsert(r) => super::Record::Upsert(r),
            Record2::Forget(r) => super::Record::Forget(r),
            Record2::Outcome(o) => super::Record::Outcome(super::OutcomeRecord {
                decision: o.decision,
                offer: o.offer,
                kind: o.kind,
                value: o.value,
                at: o.at,
                customer: o.customer,
                channel: o.channel,
                group: o.group,
                accepted: o.accepted,
                inputs: None,
            }),
            Record2::Decision(d) => super::Record::Decision(Box::new((*d).into())),
        }
    }
}
