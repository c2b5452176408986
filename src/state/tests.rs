use super::*;
use crate::schema::{Attribute, EnumDef};

fn limits(max_events: usize, max_age: i64) -> HistoryLimits {
    HistoryLimits {
        max_events,
        max_age,
    }
}

#[test]
fn an_event_is_small() {
    assert_eq!(size_of::<Event>(), 24);
}

#[test]
fn history_stays_sorted_and_bounded() {
    let mut h = History::default();
    for at in [5, 1, 3, 9, 7] {
        h.record(
            Event::new(at, "o", None, "web", EventKind::Impression),
            limits(4, 1_000),
            at,
        );
    }
    let ats: Vec<i64> = h.events().iter().map(|e| e.at).collect();
    assert_eq!(ats, [3, 5, 7, 9], "oldest dropped beyond four events");
    h.record(
        Event::new(20, "o", None, "web", EventKind::Click),
        limits(4, 10),
        20,
    );
    let ats: Vec<i64> = h.events().iter().map(|e| e.at).collect();
    assert_eq!(
        ats,
        [20],
        "events more than 10 ms older than the time of the write dropped"
    );
    assert_eq!(h.since(20).len(), 1);
    assert_eq!(h.since(21).len(), 0);
}

/// One event dated far ahead (a time in milliseconds read as seconds, say) once
/// trimmed every earlier event away, as of its own time.
#[test]
fn an_event_far_ahead_evicts_nothing() {
    let mut h = History::default();
    let day = 86_400_000;
    for at in [1, 2, 3] {
        h.record(
            Event::new(at * day, "o", None, "web", EventKind::Accept),
            limits(256, 30 * day),
            at * day,
        );
    }
    h.record(
        Event::new(800 * day, "o", None, "web", EventKind::Impression),
        limits(256, 30 * day),
        4 * day,
    );
    let ats: Vec<i64> = h.events().iter().map(|e| e.at / day).collect();
    assert_eq!(
        ats,
        [1, 2, 3, 800],
        "trimmed as of the write, not the event"
    );
}

fn schema() -> EntitySchema {
    let mut s = EntitySchema::default();
    for (name, ty) in [
        ("age", AttrType::Int),
        ("segment", AttrType::Enum(EnumDef::new(["mass", "gold"]))),
        ("products", AttrType::Set),
        ("seen", AttrType::Timestamp),
        ("score", AttrType::Float),
    ] {
        s.push(Attribute {
            name: name.into(),
            ty,
            default: Value::Missing,
            description: None,
        });
    }
    s
}

fn parse(json: &str) -> Result<Vec<Value>, String> {
    let v: serde_json::Value = serde_json::from_str(json).expect("test json");
    parse_attributes("customer", &schema(), v.as_object().expect("object"))
        .map_err(|e| e.to_string())
}

#[test]
fn attributes_parse_by_type_and_errors_name_the_attribute() {
    assert_eq!(
        parse(
            r#"{"age": 30, "segment": "gold", "products": ["tv", "mobile"], "seen": "2026-01-01T00:00:00Z"}"#
        ),
        Ok(vec![
            Value::Int(30),
            Value::Enum(1),
            Value::set(["mobile", "tv"]),
            Value::Timestamp(1_767_225_600_000),
            Value::Missing
        ])
    );
    assert_eq!(
        parse(r#"{"agee": 30}"#),
        Err("unknown attribute `customer.agee` (did you mean `age`?)".into())
    );
    assert_eq!(
        parse(r#"{"age": "30"}"#),
        Err("attribute `customer.age` must be a whole number, found `\"30\"`".into())
    );
    assert_eq!(
        parse(r#"{"segment": "platinum"}"#),
        Err(
            "attribute `customer.segment` must be one of `mass`, `gold`, found `\"platinum\"`"
                .into()
        )
    );
    assert!(parse(r#"{"score": "high"}"#).is_err());
    assert!(parse(r#"{"age": 1.5}"#).is_err(), "a float is not an int");
}

#[test]
fn text_attributes_parse_by_type() {
    let s = schema();
    assert_eq!(
        parse_text_attribute("context", &s, "age", "41"),
        Ok((0, Value::Int(41)))
    );
    assert_eq!(
        parse_text_attribute("context", &s, "products", "tv,mobile"),
        Ok((2, Value::set(["tv", "mobile"])))
    );
    assert!(parse_text_attribute("context", &s, "age", "old").is_err());
}

/// A first write that fails (its journal append refused, say) creates no customer.
#[test]
fn a_failed_first_write_leaves_no_customer_behind() {
    let store = Store::new(HistoryLimits::default(), 2);
    let refused: Result<(), StateError> = store.update("new", |state| {
        state.attributes[0] = Value::Int(1);
        Err(StateError::BadEvent {
            index: 0,
            message: "refused".into(),
        })
    });
    assert!(refused.is_err());
    assert!(
        store.is_empty(),
        "no record for a customer nothing durable created"
    );
    store
        .update("old", |state| {
            state.attributes[0] = Value::Int(1);
            Ok::<_, StateError>(())
        })
        .expect("a write");
    let _ = store.update("old", |state| {
        state.attributes[0] = Value::Int(2);
        Err::<(), _>(StateError::BadEvent {
            index: 0,
            message: "refused".into(),
        })
    });
    let kept = store
        .with("old", |s| s.map(|s| s.attributes[0].clone()))
        .expect("decodes");
    assert_eq!(kept, Some(Value::Int(1)), "a failed write changes nothing");
}

#[test]
fn upserts_merge_and_forget_removes() {
    let mut customer = EntitySchema::default();
    for name in ["a", "b"] {
        customer.push(Attribute {
            name: name.into(),
            ty: AttrType::Int,
            default: Value::Missing,
            description: None,
        });
    }
    let schema = Schema::new(customer, EntitySchema::default());
    let store = Store::new(HistoryLimits::default(), 2);
    let write = "a decodable record takes writes";
    store
        .upsert("c1", &schema, vec![Value::Int(1), Value::Missing])
        .expect(write);
    store
        .upsert("c1", &schema, vec![Value::Missing, Value::Int(2)])
        .expect(write);
    store
        .record("c1", Event::new(5, "o", None, "web", EventKind::Accept), 5)
        .expect(write);
    let s = store.with("c1", |s| s.cloned()).expect("decodes");
    let s = s.expect("stored");
    assert_eq!(s.attributes, [Value::Int(1), Value::Int(2)]);
    assert_eq!(s.history.events().len(), 1);
    assert!(store.forget("c1"));
    assert_eq!(store.with("c1", |s| s.is_none()), Ok(true));
}

/// Several threads write each new customer at once (released together by a barrier):
/// whoever creates the record, every write is kept.
#[test]
fn concurrent_first_writes_to_a_new_customer_are_all_kept() {
    const THREADS: usize = 4;
    const CUSTOMERS: usize = 2_000;
    let mut customer = EntitySchema::default();
    for t in 0..THREADS {
        customer.push(Attribute {
            name: format!("a{t}"),
            ty: AttrType::Int,
            default: Value::Missing,
            description: None,
        });
    }
    let schema = Schema::new(customer, EntitySchema::default());
    let store = Store::new(HistoryLimits::default(), THREADS);
    let barrier = std::sync::Barrier::new(THREADS);
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let (store, schema, barrier) = (&store, &schema, &barrier);
            scope.spawn(move || {
                for c in 0..CUSTOMERS {
                    let id = format!("c{c}");
                    barrier.wait();
                    // Half the threads set an attribute first, half record an event.
                    let mut values = vec![Value::Missing; THREADS];
                    values[t] = Value::Int(t as i64);
                    let event = Event::new(t as i64, "o", None, "web", EventKind::Click);
                    let write = "a decodable record takes writes";
                    if t % 2 == 0 {
                        store.upsert(&id, schema, values).expect(write);
                        store.record(&id, event, t as i64).expect(write);
                    } else {
                        store.record(&id, event, t as i64).expect(write);
                        store.upsert(&id, schema, values).expect(write);
                    }
                }
            });
        }
    });
    let want: Vec<Value> = (0..THREADS as i64).map(Value::Int).collect();
    let mut lost = Vec::new();
    for c in 0..CUSTOMERS {
        let id = format!("c{c}");
        let s = store.with(&id, |s| s.cloned()).expect("decodes");
        let s = s.expect("stored");
        let ats: Vec<i64> = s.history.events().iter().map(|e| e.at).collect();
        if s.attributes != want || ats != [0, 1, 2, 3] {
            lost.push((id, s.attributes, ats));
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {CUSTOMERS} customers lost writes, e.g. {:?}",
        lost.len(),
        lost.first()
    );
}

/// A record that passed its checksum but does not decode refuses its customer, counted,
/// without a panic: the other customers are read and written as before, and
/// forgetting it works.
#[test]
fn an_undecodable_record_is_refused_and_counted_and_others_are_served() {
    let store = Store::new(HistoryLimits::default(), 2);
    let ok = CustomerState {
        attributes: vec![Value::Int(1), Value::Missing],
        ..CustomerState::default()
    };
    store.insert("ok", &ok);
    // An unterminated varint where the sequence number should be.
    let skewed: Box<[u8]> = Box::new([0xff, 0xff]);
    store.insert_packed("skewed", &skewed);
    let refused = StateError::Undecodable {
        customer: "skewed".into(),
        reason: "2 bytes that are not a packed record of 2 attributes".into(),
    };
    let ran = std::cell::Cell::new(false);
    assert_eq!(
        store.with("skewed", |_| ran.set(true)),
        Err(refused.clone())
    );
    assert_eq!(
        refused.to_string(),
        "the stored record of customer `skewed` cannot be decoded (2 bytes that are not a packed record of 2 attributes); it is refused until repaired or forgotten"
    );
    assert_eq!(store.undecodable_reads(), 1);

    let read = |s: Option<&CustomerState>| s.map(|s| s.attributes.clone());
    assert_eq!(store.with("ok", read), Ok(Some(ok.attributes.clone())));
    assert_eq!(
        store.with_record("ok", |s| s.map(|(s, _)| s.attributes.clone())),
        Ok(Some(ok.attributes.clone()))
    );
    assert_eq!(store.with("nobody", read), Ok(None));
    assert_eq!(store.undecodable_reads(), 1, "only refusals count");

    assert_eq!(
        store.with_record("skewed", |_| ran.set(true)),
        Err(refused.clone())
    );
    let written = store.update("skewed", |_| {
        ran.set(true);
        Ok::<_, StateError>(())
    });
    assert_eq!(written, Err(refused));
    assert!(!ran.get(), "nothing runs on a refused record");
    let mut record = None;
    store.for_each_packed(|id, bytes| {
        if id == "skewed" {
            record = Some(Box::<[u8]>::from(bytes));
        }
    });
    assert_eq!(
        record,
        Some(skewed),
        "a refused write leaves the record as it was"
    );
    let mut seen = Vec::new();
    store.for_each(|s| seen.push(s.id.clone()));
    assert_eq!(seen, [Some("ok".to_string())], "skipped, and counted");
    assert_eq!(store.undecodable_reads(), 4);

    assert!(store.forget("skewed"), "forgetting decodes nothing");
    assert_eq!(store.with("skewed", read), Ok(None));
}
