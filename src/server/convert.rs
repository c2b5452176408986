//! Proto values to domain values and back, and domain errors to gRPC statuses (in one
//! place: `status`).

use std::collections::HashMap;

use prost_types::Timestamp;
use tonic::Status;

use super::proto;
use crate::catalog::Catalog;
use crate::cluster::ClusterError;
use crate::db::DbError;
use crate::schema::{AttrType, EntitySchema, EventKind, Value, time};
use crate::state::{self, CustomerState, StateError};
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
            | StateError::TooLarge { .. }
            | StateError::Time(_)),
        ) => Status::invalid_argument(e.to_string()),
        DbError::Time(_)
        | DbError::NotShown { .. }
        | DbError::NotADecision { .. }
        | DbError::NotTheDecisions { .. }
        | DbError::UnknownChannel { .. } => Status::invalid_argument(e.to_string()),
        DbError::UnknownOffer { .. } => Status::not_found(e.to_string()),
        // Only `nextbest import` reads files; the file is the caller's to fix.
        DbError::Import(_) => Status::invalid_argument(e.to_string()),
        DbError::Write(WriteError::Failed(_) | WriteError::Closed | WriteError::Full) => {
            Status::unavailable(format!("{e}; nothing was acknowledged"))
        }
        // The node's own files: the detail (paths on the server, OS errors) is for the
        // operator, so it goes to the log and rides along as the status's source (which
        // is never sent); the caller learns only that the fault is the server's.
        DbError::Io { .. }
        | DbError::Snapshot { .. }
        | DbError::Damaged { .. }
        | DbError::Locked { .. } => {
            tracing::error!(error = %e, "internal error answered UNAVAILABLE");
            let what = match e {
                DbError::Snapshot { .. } => "the node cannot read its snapshot",
                _ => "the node cannot read or write its data directory",
            };
            let mut status = Status::unavailable(format!("{what}; the server log has the detail"));
            status.set_source(std::sync::Arc::new(e));
            status
        }
    }
}

/// A cluster write's or wait's error as a status: the caller's mistakes as an embedded
/// node answers them, the cluster out of reach (or this node behind it) UNAVAILABLE.
pub fn cluster_status(e: ClusterError) -> Status {
    match e {
        ClusterError::Db(e) => status(e),
        e @ (ClusterError::Unavailable(_) | ClusterError::Behind { .. }) => {
            Status::unavailable(e.to_string())
        }
        e @ (ClusterError::Join { .. } | ClusterError::NotAClusterDirectory { .. }) => {
            tracing::error!(error = %e, "cluster error answered UNAVAILABLE");
            Status::unavailable("the node is not in its cluster; the server log has the detail")
        }
    }
}

/// A request's time in ms: nanos in range and representable (the caller checks the
/// window its field allows).
pub fn millis(field: &str, ts: &Timestamp) -> Result<i64, Status> {
    time::from_parts(field, ts.seconds, ts.nanos)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// A decision's time, `now` when the request has none.
pub fn decision_time(at: Option<&Timestamp>, now: impl FnOnce() -> i64) -> Result<i64, Status> {
    let Some(at) = at else {
        return Ok(now());
    };
    let ms = millis("at", at)?;
    time::decision("at", ms).map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(ms)
}

pub fn timestamp(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Typed attributes of one entity, in slot order; the error names the attribute. Every
/// attribute is checked before any is kept, with the checks and messages of
/// `state::parse_attributes` (which reads JSON for the CLI and imports).
pub fn values(
    entity: &'static str,
    schema: &EntitySchema,
    attributes: &HashMap<String, proto::Value>,
) -> Result<Vec<Value>, Status> {
    let invalid = |e: StateError| Status::invalid_argument(e.to_string());
    let mut values = vec![Value::Missing; schema.len()];
    for (name, v) in attributes {
        let Some(slot) = schema.slot(name) else {
            return Err(invalid(state::unknown(entity, schema, name)));
        };
        let attr = schema.get(slot).expect("a slot found by name exists");
        let value = value(entity, name, v, &attr.ty).map_err(invalid)?;
        values[slot as usize] = state::within_limits(entity, name, value).map_err(invalid)?;
    }
    Ok(values)
}

/// One proto value as the attribute's type, converted directly (no JSON between: it
/// would lose what it cannot represent, and costs time on every Decide).
fn value(
    entity: &'static str,
    name: &str,
    v: &proto::Value,
    ty: &AttrType,
) -> Result<Value, StateError> {
    use proto::value::Kind;
    let wrong = || StateError::WrongType {
        entity,
        name: name.to_string(),
        expected: state::expected(ty),
        found: describe(v),
    };
    Ok(match (&v.kind, ty) {
        (None, _) => Value::Missing,
        (Some(Kind::BoolValue(b)), AttrType::Bool) => Value::Bool(*b),
        (Some(Kind::IntValue(i)), AttrType::Int) => Value::Int(*i),
        (Some(Kind::IntValue(i)), AttrType::Float) => Value::Float(*i as f64),
        (Some(Kind::DoubleValue(x)), AttrType::Float) if x.is_finite() => Value::Float(*x),
        (Some(Kind::StringValue(s)), AttrType::String) => Value::Str(s.as_str().into()),
        (Some(Kind::StringValue(s)), AttrType::Enum(def)) => {
            Value::Enum(def.index_of(s).ok_or_else(wrong)?)
        }
        (Some(Kind::StringValue(s)), AttrType::Timestamp) => Value::Timestamp(
            s.parse::<jiff::Timestamp>()
                .map_err(|_| wrong())?
                .as_millisecond(),
        ),
        (Some(Kind::TimestampValue(t)), AttrType::Timestamp) => Value::Timestamp(time::from_parts(
            &format!("{entity}.{name}"),
            t.seconds,
            t.nanos,
        )?),
        (Some(Kind::StringList(l)), AttrType::Set) => {
            Value::set(l.values.iter().map(String::as_str))
        }
        _ => return Err(wrong()),
    })
}

/// A proto value as an error shows it.
fn describe(v: &proto::Value) -> String {
    use proto::value::Kind;
    match &v.kind {
        None => "nothing".to_string(),
        Some(Kind::BoolValue(b)) => format!("`{b}`"),
        Some(Kind::IntValue(i)) => format!("`{i}`"),
        Some(Kind::DoubleValue(x)) => format!("`{x}`"),
        Some(Kind::StringValue(s)) => state::shown(&format!("{s:?}")),
        Some(Kind::StringList(l)) => state::shown(&format!("{:?}", l.values)),
        Some(Kind::TimestampValue(t)) => format!("the timestamp `{}s {}ns`", t.seconds, t.nanos),
    }
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
            .offer_by_key(key)
            .map_or_else(|| format!("{key:08x}"), |o| catalog.offers[o].id.clone())
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
            WriteError::Failed(std::sync::Arc::new(std::io::Error::from_raw_os_error(28))),
            WriteError::Closed,
        ] {
            let s = status(DbError::Write(e));
            assert_eq!(s.code(), tonic::Code::Unavailable);
            assert!(s.message().ends_with("nothing was acknowledged"), "{s:?}");
        }
    }

    #[test]
    fn an_internal_error_keeps_its_paths_out_of_the_reply_and_in_its_source() {
        let e = DbError::Io {
            context: "reading `/srv/nextbest/data/journal`".into(),
            source: std::io::Error::other("Input/output error (os error 5)"),
        };
        let s = status(e);
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert!(!s.message().contains("/srv"), "{s:?}");
        assert!(!s.message().contains("os error"), "{s:?}");
        let source = std::error::Error::source(&s).expect("the detail stays on the status");
        assert!(
            source.to_string().contains("/srv/nextbest/data/journal"),
            "{source}"
        );
    }
}
