//! Format 1: the records of the first wave's journals, as they were laid out, and
//! how each reads as today's.

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
            })),
        }
    }
}
