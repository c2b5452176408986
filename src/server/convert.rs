//! Proto values to domain values and back, and domain errors to gRPC statuses (in one
//! place: `status`).

use std::collections::HashMap;

use prost_types::Timestamp;
use tonic::Status;

use super::proto;
use crate::catalog::Catalog;
use crate::db::DbError;
use crate::schema::{AttrType, EntitySchema, EventKind, Value};
use crate::state::{CustomerState, StateError};
use crate::storage::WriteError;

/// Every error the service returns goes through here.
pub fn status(e: DbError) -> Status {
    match e {
        // DATA_LOSS rather than FAILED_PRECONDITION: the server's own stored record is
        // unreadable (a format skew or corruption), which is what gRPC's table keeps
        // DATA_LOSS for; FAILED_PRECONDITION names a state the caller is to fix, maps to
        // HTTP 400 and would hide a server fault from alerts on server-side codes. Not
        // INVALID_ARGUMENT either, as the other `Attribute` errors are: the request is
        // fine. A retry fails alike until the customer is repaired or forgotten.
        DbError::Attribute(e @ StateError::Undecodable { .. }) => Status::data_loss(e.to_string()),
        DbError::Attribute(
            e @ (StateError::UnknownAttribute { .. }
            | StateError::WrongType { .. }
            | StateError::BadEvent { .. }
            | StateError::TooLarge { .. }),
        ) => Status::invalid_argument(e.to_string()),
        DbError::UnknownOffer { .. } => Status::not_found(e.to_string()),
        DbError::Write(WriteError::Failed(_) | WriteError::Closed) => {
            Status::unavailable(format!("{e}; nothing was acknowledged"))
        }
        DbError::Io { .. } | DbError::Snapshot { .. } | DbError::Locked { .. } => {
            Status::unavailable(e.to_string())
        }
    }
}

pub fn millis(ts: &Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.nanos) / 1_000_000)
}

pub fn timestamp(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A proto value as the JSON `state::parse_attributes` reads, so both paths share one
/// set of checks and messages.
fn json(v: &proto::Value) -> serde_json::Value {
    use proto::value::Kind;
    match &v.kind {
        None => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => (*b).into(),
        Some(Kind::IntValue(i)) => (*i).into(),
        Some(Kind::DoubleValue(x)) => serde_json::Number::from_f64(*x).map_or(
            serde_json::Value::String(x.to_string()),
            serde_json::Value::Number,
        ),
        Some(Kind::StringValue(s)) => s.clone().into(),
        Some(Kind::StringList(l)) => l.values.clone().into(),
        Some(Kind::TimestampValue(t)) => jiff::Timestamp::from_millisecond(millis(t))
            .map_or(serde_json::Value::Null, |t| t.to_string().into()),
    }
}

/// Typed attributes of one entity, in slot order; the error names the attribute.
pub fn values(
    entity: &'static str,
    schema: &EntitySchema,
    attributes: &HashMap<String, proto::Value>,
) -> Result<Vec<Value>, Status> {
    let map: serde_json::Map<String, serde_json::Value> = attributes
        .iter()
        .map(|(k, v)| (k.clone(), json(v)))
        .collect();
    crate::state::parse_attributes(entity, schema, &map)
        .map_err(|e: StateError| Status::invalid_argument(e.to_string()))
}

/// A domain value as a proto value.
pub fn proto_value(v: &Value, ty: &AttrType) -> Option<proto::Value> {
    use proto::value::Kind;
    let kind = match (v, ty) {
        (Value::Missing, _) => return None,
        (Value::Bool(b), _) => Kind::BoolValue(*b),
        (Value::Int(i), _) => Kind::IntValue(*i),
        (Value::Float(x), _) => Kind::DoubleValue(*x),
        (Value::Str(s), _) => Kind::StringValue(s.to_string()),
        (Value::Enum(i), AttrType::Enum(def)) => {
            Kind::StringValue(def.variants.get(*i as usize)?.to_string())
        }
        (Value::Enum(_), _) => return None,
        (Value::Set(items), _) => Kind::StringList(proto::StringList {
            values: items.iter().map(|s| s.to_string()).collect(),
        }),
        (Value::Timestamp(ms), _) => Kind::TimestampValue(timestamp(*ms)),
    };
    Some(proto::Value { kind: Some(kind) })
}

pub fn kind(k: i32) -> Result<EventKind, Status> {
    use proto::OutcomeKind as K;
    Ok(match K::try_from(k) {
        Ok(K::Impression) => EventKind::Impression,
        Ok(K::Click) => EventKind::Click,
        Ok(K::Accept) => EventKind::Accept,
        Ok(K::Reject) => EventKind::Reject,
        Ok(K::Convert) => EventKind::Convert,
        _ => {
            return Err(Status::invalid_argument(format!(
                "`kind`: {k} is not an outcome kind (impression, click, accept, reject, convert)"
            )));
        }
    })
}

pub fn proto_kind(k: EventKind) -> proto::OutcomeKind {
    use proto::OutcomeKind as K;
    match k {
        EventKind::Impression => K::Impression,
        EventKind::Click => K::Click,
        EventKind::Accept => K::Accept,
        EventKind::Reject => K::Reject,
        EventKind::Convert => K::Convert,
    }
}

/// A stored customer for `Get`: attributes by name, the latest `limit` events first.
pub fn customer(catalog: &Catalog, state: &CustomerState, limit: usize) -> proto::Customer {
    let schema = &catalog.schema.customer;
    let attributes = schema
        .attributes()
        .iter()
        .zip(&state.attributes)
        .filter_map(|(a, v)| Some((a.name.clone(), proto_value(v, &a.ty)?)))
        .collect();
    let name_of_offer = |key: u32| {
        catalog
            .offers
            .iter()
            .find(|o| o.key == key)
            .map_or_else(|| format!("{key:08x}"), |o| o.id.clone())
    };
    let name_of_group = |key: u32| {
        if key == 0 {
            return String::new();
        }
        catalog
            .offers
            .iter()
            .find(|o| o.group_key == key)
            .and_then(|o| o.group.clone())
            .unwrap_or_else(|| format!("{key:08x}"))
    };
    let name_of_channel = |key: u32| {
        catalog
            .placements
            .iter()
            .find(|p| p.channel_key == key)
            .map_or_else(|| format!("{key:08x}"), |p| p.channel.clone())
    };
    let events = state.history.events();
    let take = if limit == 0 { events.len() } else { limit };
    proto::Customer {
        customer_id: state.id.clone().unwrap_or_default(),
        attributes,
        history: events
            .iter()
            .rev()
            .take(take)
            .map(|e| proto::HistoryEvent {
                at: Some(timestamp(e.at)),
                offer_id: name_of_offer(e.offer),
                group: name_of_group(e.group),
                channel: name_of_channel(e.channel),
                kind: proto_kind(e.kind) as i32,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_or_closed_journal_is_unavailable_and_says_nothing_was_acknowledged() {
        for e in [
            WriteError::Failed("No space left on device (os error 28)".into()),
            WriteError::Closed,
        ] {
            let s = status(DbError::Write(e));
            assert_eq!(s.code(), tonic::Code::Unavailable);
            assert!(s.message().ends_with("nothing was acknowledged"), "{s:?}");
        }
    }
}
