//! The persistent form of one customer: attributes by name as [`Feature`]s and the
//! history as plain tuples, so a snapshot written under one schema restores under another
//! (renamed or retyped attributes are dropped and counted, never misread).

use serde::{Deserialize, Serialize};

use super::{CustomerState, History, HistoryLimits};
use crate::schema::{EntitySchema, Event, EventKind, Feature};

/// One customer in a snapshot. Attribute names are indexes into the snapshot's name
/// table (written once in its header) to keep a million customers small.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredCustomer {
    pub id: String,
    pub attributes: Vec<(u32, Feature)>,
    /// `(at, offer, group, channel, kind)`, oldest first.
    pub events: Vec<(i64, u32, u32, u32, EventKind)>,
    /// [`CustomerState::seq`].
    pub seq: u64,
}

impl StoredCustomer {
    /// `state` as stored; attribute `i` of `schema` gets name index `i`.
    pub fn of(state: &CustomerState, schema: &EntitySchema) -> Option<StoredCustomer> {
        let id = state.id.clone()?;
        let attributes = schema
            .attributes()
            .iter()
            .zip(&state.attributes)
            .enumerate()
            .filter_map(|(i, (attr, v))| Some((i as u32, Feature::of(v, &attr.ty)?)))
            .collect();
        let events = state
            .history
            .events()
            .iter()
            .map(|e| (e.at, e.offer, e.group, e.channel, e.kind))
            .collect();
        Some(StoredCustomer {
            id,
            attributes,
            events,
            seq: state.seq,
        })
    }

    /// The state under `schema`, given the snapshot's name table. Returns the state and
    /// how many stored values no longer fit the schema.
    pub fn restore(
        self,
        names: &[String],
        schema: &EntitySchema,
        limits: HistoryLimits,
    ) -> (CustomerState, usize) {
        let mut attributes = vec![crate::schema::Value::Missing; schema.len()];
        let mut dropped = 0;
        for (name, feature) in self.attributes {
            let slot = names.get(name as usize).and_then(|n| schema.slot(n));
            let value = slot.and_then(|s| {
                let ty = &schema.get(s)?.ty;
                Some((s, feature.value(ty)?))
            });
            match value {
                Some((slot, v)) => attributes[slot as usize] = v,
                None => dropped += 1,
            }
        }
        let mut history = History::default();
        for (at, offer, group, channel, kind) in self.events {
            history.record(
                Event {
                    at,
                    offer,
                    group,
                    channel,
                    kind,
                },
                limits,
            );
        }
        (
            CustomerState {
                id: Some(self.id),
                attributes,
                history,
                seq: self.seq,
            },
            dropped,
        )
    }
}
