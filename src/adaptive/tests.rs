use super::*;
use crate::schema::AttrType;

fn model(window: i64) -> Model {
    Model::new(definition(window))
}

fn definition(window: i64) -> Definition {
    Definition {
        id: "m".into(),
        description: None,
        predictors: vec![
            Predictor {
                name: "customer.segment".into(),
                entity: Entity::Customer,
                slot: 0,
                encoding: Encoding::Enum(["consumer".into(), "premium".into()].into()),
                default: Value::Missing,
                offset: 0,
            },
            Predictor {
                name: "customer.tenure".into(),
                entity: Entity::Customer,
                slot: 1,
                encoding: Encoding::Bins([12.0, 24.0].into()),
                default: Value::Int(0),
                offset: 0,
            },
            Predictor {
                name: "customer.products".into(),
                entity: Entity::Customer,
                slot: 2,
                encoding: Encoding::Members(["tv".into(), "broadband".into()].into()),
                default: Value::Missing,
                offset: 0,
            },
            Predictor {
                name: "context.page".into(),
                entity: Entity::Context,
                slot: 0,
                encoding: Encoding::Strings(["home".into(), "billing".into()].into()),
                default: Value::Missing,
                offset: 0,
            },
        ],
        positive: Kinds::default().with(EventKind::Accept),
        negative: Kinds::default().with(EventKind::Reject),
        window,
        per_channel: false,
        prior_rate: 0.1,
        probit: Probit::with_prior_rate_for(0.1, 4),
    }
}

#[test]
fn features_from_values_and_from_records_agree() {
    let m = model(60_000);
    // Each with one more feature for none of its values.
    assert_eq!(m.width, 3 + 4 + 3 + 3);
    let types = [
        AttrType::Enum(crate::schema::EnumDef::new(["consumer", "premium"])),
        AttrType::Int,
        AttrType::Set,
        AttrType::String,
    ];
    let rows: Vec<(Vec<Value>, Vec<Value>)> = vec![
        (
            vec![Value::Enum(1), Value::Int(30), Value::set(["tv", "x"])],
            vec![Value::Str("billing".into())],
        ),
        (
            vec![
                Value::Missing,
                Value::Int(12),
                Value::set(["broadband", "tv"]),
            ],
            vec![Value::Str("other".into())],
        ),
        // Unset: the default bin for tenure, nothing for the rest.
        (vec![Value::Missing, Value::Missing, Value::Missing], vec![]),
        (
            vec![Value::Enum(0), Value::Float(f64::NAN)],
            vec![Value::Missing],
        ),
    ];
    for (customer, context) in rows {
        let mut buf = [(0, 0.0); MAX_ACTIVE];
        let from_values: Vec<u32> = m
            .features_of_values(&customer, &context, &mut buf)
            .iter()
            .map(|x| x.0)
            .collect();
        let named: Vec<(String, Feature)> = m
            .predictors
            .iter()
            .zip(&types)
            .filter_map(|(p, ty)| {
                let values = if p.entity == Entity::Customer {
                    &customer
                } else {
                    &context
                };
                let v = values.get(p.slot as usize)?;
                Some((p.name.clone(), Feature::of(v, ty)?))
            })
            .collect();
        assert_eq!(
            from_values,
            m.features_of_record(&named),
            "{customer:?} {context:?}"
        );
    }
    let mut buf = [(0, 0.0); MAX_ACTIVE];
    let x: Vec<u32> = m
        .features_of_values(
            &[Value::Enum(1), Value::Int(24), Value::set(["broadband"])],
            &[Value::Str("home".into())],
            &mut buf,
        )
        .iter()
        .map(|x| x.0)
        .collect();
    // premium = 1; 24 falls in the last bin (3 + 2); broadband is member 1 (7 + 1);
    // home is value 0 (10 + 0).
    assert_eq!(x, vec![1, 5, 8, 10]);
    let mut buf = [(0, 0.0); MAX_ACTIVE];
    let x: Vec<u32> = m
        .features_of_values(
            &[Value::Missing, Value::Missing, Value::set(["x"])],
            &[],
            &mut buf,
        )
        .iter()
        .map(|x| x.0)
        .collect();
    // No segment (2), tenure's default 0 in bin 0 (3), no listed member (9), no page (12).
    assert_eq!(x, vec![2, 3, 9, 12]);
}

fn response(
    decision: u128,
    kind: EventKind,
    accepted: i64,
    inputs: &[(String, Feature)],
) -> Response<'_> {
    Response {
        decision,
        decided: 1_000_000,
        offer: 7,
        channel: 3,
        kind,
        accepted,
        inputs: Some(inputs),
    }
}

#[test]
fn an_impression_without_a_response_is_a_negative_once_its_window_closes() {
    let m = Arc::new(model(60_000));
    let all = [Arc::clone(&m)];
    let inputs = vec![(
        "customer.segment".to_string(),
        Feature::Enum("premium".into()),
    )];
    let mut l = Learning::default();
    let got = l.learn(
        &all,
        &all,
        &response(1, EventKind::Impression, 1_000_010, &inputs),
    );
    assert_eq!((got.positives, got.negatives), (0, 0));
    assert_eq!(l.pending(), 1);
    // Another decision's outcome within the window closes nothing.
    let later = Response {
        decided: 1_050_000,
        ..response(2, EventKind::Impression, 1_050_000, &inputs)
    };
    let got = l.learn(&all, &all, &later);
    assert_eq!(got.negatives, 0);
    // One after it closes the first decision's window: a negative, learned once.
    let got = l.learn(
        &all,
        &all,
        &response(3, EventKind::Click, 1_060_001, &inputs),
    );
    assert_eq!(got.negatives, 1);
    assert_eq!(l.pending(), 1);
    let cell = CellKey {
        model: m.fingerprint,
        offer: 7,
        channel: 0,
    };
    assert_eq!(
        l.weights(&cell).map(|w| (w.responses, w.positives)),
        Some((1, 0))
    );
    // A late accept of the first decision teaches nothing: its window is closed.
    let got = l.learn(
        &all,
        &all,
        &response(1, EventKind::Accept, 1_060_002, &inputs),
    );
    assert_eq!((got.positives, got.skipped), (0, 1));
}

#[test]
fn a_response_resolves_its_impression_once() {
    let m = Arc::new(model(60_000));
    let all = [Arc::clone(&m)];
    let inputs = vec![];
    let mut l = Learning::default();
    l.learn(
        &all,
        &all,
        &response(1, EventKind::Impression, 1_000_010, &inputs),
    );
    let got = l.learn(
        &all,
        &all,
        &response(1, EventKind::Accept, 1_000_020, &inputs),
    );
    assert_eq!(got.positives, 1);
    // A reject after the accept, and the window closing, learn nothing more.
    let got = l.learn(
        &all,
        &all,
        &response(1, EventKind::Reject, 1_000_030, &inputs),
    );
    assert_eq!((got.positives, got.negatives), (0, 0));
    let got = l.learn(
        &all,
        &all,
        &response(9, EventKind::Click, 2_000_000, &inputs),
    );
    assert_eq!(got.negatives, 0);
    assert_eq!(l.pending(), 0);
    // A response with no impression before it is learned too.
    let reject = Response {
        decided: 1_990_000,
        ..response(4, EventKind::Reject, 2_000_010, &inputs)
    };
    let got = l.learn(&all, &all, &reject);
    assert_eq!(got.negatives, 1);
}

#[test]
fn an_outcome_without_the_decisions_values_is_skipped() {
    let m = Arc::new(model(60_000));
    let all = [Arc::clone(&m)];
    let mut l = Learning::default();
    let r = Response {
        inputs: None,
        ..response(1, EventKind::Accept, 1_000_010, &[])
    };
    let got = l.learn(&all, &all, &r);
    assert_eq!((got.positives, got.skipped), (0, 1));
    assert_eq!(
        l,
        Learning {
            clock: 1_000_010,
            ..Learning::default()
        }
    );
}

#[test]
fn a_snapshot_restores_the_state_exactly() {
    let m = Arc::new(model(60_000));
    let all = [Arc::clone(&m)];
    let inputs = vec![("customer.tenure".to_string(), Feature::Int(13))];
    let mut l = Learning::default();
    for d in 0..50u128 {
        let kind = match d % 3 {
            0 => EventKind::Impression,
            1 => EventKind::Accept,
            _ => EventKind::Reject,
        };
        l.learn(
            &all,
            &all,
            &response(d, kind, 1_000_000 + d as i64 * 10, &inputs),
        );
    }
    let (head, pending) = l.to_snapshot();
    let head: LearningHead =
        postcard::from_bytes(&postcard::to_allocvec(&head).expect("encodes")).expect("decodes");
    let mut back = Learning::default();
    back.restore_head(head);
    back.restore_pending(pending);
    back.restore_monitors(l.monitors_snapshot());
    back.restore_updates(l.updates());
    assert_eq!(back, l);
    assert_eq!(back.digest(), l.digest());
    // And both go on alike.
    let a = l.learn(
        &all,
        &all,
        &response(99, EventKind::Click, 3_000_000, &inputs),
    );
    let b = back.learn(
        &all,
        &all,
        &response(99, EventKind::Click, 3_000_000, &inputs),
    );
    assert_eq!(a, b);
    assert_eq!(back, l);
}

#[test]
fn retain_drops_the_state_of_models_no_longer_defined() {
    let m = Arc::new(model(60_000));
    let other = Arc::new(model(120_000));
    assert_ne!(m.fingerprint, other.fingerprint);
    let all = [Arc::clone(&m)];
    let mut l = Learning::default();
    l.learn(&all, &all, &response(1, EventKind::Accept, 1_000_010, &[]));
    assert_eq!(l.retain(&[Arc::clone(&m)]), 0);
    assert_eq!(l.cells().count(), 1);
    assert_eq!(l.retain(&[other]), 1);
    assert_eq!(l.cells().count(), 0);
}

#[test]
fn published_weights_are_what_decisions_predict_from() {
    let m = Arc::new(model(60_000));
    m.set_cells([(7, 0)]);
    let all = [Arc::clone(&m)];
    // Every predictor sets one feature, unset or not: the prior rate holds.
    let prior = m.predict(7, 3, &[], &[]);
    assert!((prior - 0.1).abs() < 1e-6, "{prior}");
    let mut l = Learning::default();
    for d in 0..20u128 {
        let got = l.learn(&all, &all, &response(d, EventKind::Accept, 1_000_010, &[]));
        l.publish(&all, &got.changed);
    }
    assert!(m.predict(7, 3, &[], &[]) > 0.5);
    // An offer without a cell predicts from the prior.
    assert_eq!(m.predict(8, 3, &[], &[]), prior);
}

#[test]
fn a_window_the_clock_closed_never_opens_again() {
    let m = Arc::new(model(60_000));
    let all = [Arc::clone(&m)];
    let mut l = Learning::default();
    l.learn(
        &all,
        &all,
        &response(1, EventKind::Impression, 1_000_010, &[]),
    );
    // Another decision's outcome, journaled with a later time, closes the window.
    let later = Response {
        decided: 1_050_000,
        ..response(2, EventKind::Click, 1_070_000, &[])
    };
    assert_eq!(l.learn(&all, &all, &later).negatives, 1);
    // An accept whose own time is within the window but which reached the journal after
    // it: the negative stands, and no second impression is opened.
    let got = l.learn(&all, &all, &response(1, EventKind::Accept, 1_059_000, &[]));
    assert_eq!((got.positives, got.skipped), (0, 1));
    assert_eq!(l.pending(), 0);
}

#[test]
fn a_decisions_memo_predicts_as_encoding_afresh_for_each_model() {
    // Two models with different features, read in turn by the offers of one decision:
    // each read through the memo is the prediction of the model's own features.
    let a = Arc::new(model(60_000));
    let mut def = definition(60_000);
    def.id = "b".into();
    def.predictors.remove(0);
    def.probit = Probit::with_prior_rate_for(0.3, 3);
    def.prior_rate = 0.3;
    let b = Arc::new(Model::new(def));
    a.set_cells([(7, 0), (8, 0)]);
    b.set_cells([(7, 0)]);
    let all = [Arc::clone(&a)];
    let mut l = Learning::default();
    let inputs = [(
        "customer.segment".to_string(),
        Feature::Enum("premium".into()),
    )];
    for d in 0..5u128 {
        let got = l.learn(
            &all,
            &all,
            &response(d, EventKind::Accept, 1_000_010, &inputs),
        );
        l.publish(&all, &got.changed);
    }
    let customer = [Value::Enum(1), Value::Int(30), Value::set(["tv"])];
    let context = [Value::Str("billing".into())];
    let memo = FeatureMemo::default();
    for (m, offer) in [(&a, 7), (&b, 7), (&a, 8), (&a, 7), (&b, 9)] {
        let fresh = m.predict(offer, 0, &customer, &context);
        assert_eq!(
            m.predict_memo(offer, 0, &customer, &context, &memo),
            fresh,
            "{} {offer}",
            m.id
        );
    }
    assert_ne!(
        a.predict(7, 0, &customer, &context),
        b.predict(7, 0, &customer, &context)
    );
}
