//! Adaptive models on a node: learned from outcomes as journaled, the same after a
//! restart from a snapshot and after a replay of the whole journal.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::catalog::{SourceFile, Sources};
use crate::decide::{self, Options};

const NOW: i64 = 1_795_428_000_000; // 2026-11-23T10:00:00Z
const HOUR: i64 = 3_600_000;

const SCHEMA: &str = "\
customer:
  segment: { type: enum, values: [mass, gold], default: mass }
  tenure: { type: int }
context:
  channel: { type: enum, values: [web] }
  device: { type: enum, values: [desktop, mobile] }
";

const PLACEMENTS: &str = "\
placements:
  - { id: banner, channel: web, slots: 1, experiment: explore }
";

const EXPERIMENTS: &str = "\
experiments:
  - { id: explore, epsilon: 0.5 }
";

const OFFERS: &str = "\
offers:
  - id: card
    propensity: adaptive('response')
    value: 10
    content: { banner: { title: Card } }
  - id: loan
    propensity: adaptive('response') * 0.9
    value: 10
    content: { banner: { title: Loan } }
  - id: fixed
    propensity: 0.05
    value: 10
    content: { banner: { title: Fixed } }
";

const MODELS: &str = "\
models:
  - id: response
    predictors:
      - customer.segment
      - { attribute: customer.tenure, bins: [12, 24] }
      - context.device
    positive: [accept]
    negative: [reject]
    window: 1h
    prior: 0.1
";

fn catalog() -> Arc<Catalog> {
    let file = |path: &str, text: &str| SourceFile {
        path: path.into(),
        text: text.into(),
    };
    Arc::new(
        Catalog::from_sources(Sources {
            schema: Some(file("schema.yaml", SCHEMA)),
            placements: Some(file("placements.yaml", PLACEMENTS)),
            experiments: Some(file("experiments.yaml", EXPERIMENTS)),
            models: Some(file("models.yaml", MODELS)),
            offers: vec![file("offers/0.yaml", OFFERS)],
        })
        .expect("the catalog loads"),
    )
}

fn id(at: i64, n: u32) -> Uuid {
    Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        (at / 1000) as u64,
        ((at % 1000) as u32) * 1_000_000 + n,
    ))
}

/// Decision `i`'s world: its customer is gold (every third), it comes on mobile (every
/// other); gold customers on mobile take an offer often, others rarely.
fn truth(i: u64) -> (bool, bool) {
    ((i % 50).is_multiple_of(3), i.is_multiple_of(2))
}

/// Decides `n` times from `start`, one decision a second, and reports an impression of
/// each shown adaptive offer and, for some, an accept or a reject; returns how many
/// outcomes were recorded.
fn traffic(db: &Db, start: i64, n: u64) -> usize {
    let catalog = db.catalog();
    let p = catalog.placement("banner").expect("placement");
    let device = catalog.schema.context.slot("device").expect("device") as usize;
    let mut recorded = 0;
    for i in 0..n {
        let at = start + i as i64 * 1000;
        let customer = format!("c{}", i % 50);
        let (gold, mobile) = truth(i);
        if i < 50 {
            let mut values = vec![Value::Missing; catalog.schema.customer.len()];
            values[0] = Value::Enum(u32::from(gold));
            values[1] = Value::Int((i % 40) as i64);
            db.upsert(&catalog, &customer, values, at, false)
                .expect("upsert");
        }
        let mut context = Context::for_placement(&catalog, p, vec![]);
        context.values[device] = Value::Enum(u32::from(mobile));
        let decision = id(at, i as u32);
        let view = db.view();
        let shown = db
            .decide(
                &view,
                Some(&customer),
                &context,
                p,
                at,
                &Options::new(decision),
                |_, d| {
                    d.offers
                        .iter()
                        .map(|s| catalog.offers[s.offer].id.clone())
                        .collect::<Vec<_>>()
                },
            )
            .expect("decides");
        // Every offer's outcomes, `fixed`'s too: they teach no model but move the clock
        // that closes windows, on the node as on replay.
        for offer in &shown {
            let mut kinds = vec![EventKind::Impression];
            let roll = xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()) % 100;
            let rate = if gold && mobile { 60 } else { 5 };
            if roll < rate {
                kinds.push(EventKind::Accept);
            } else if roll.is_multiple_of(4) {
                kinds.push(EventKind::Reject);
            }
            for (k, kind) in kinds.into_iter().enumerate() {
                let input = OutcomeInput {
                    decision,
                    offer: offer.clone(),
                    kind,
                    value: None,
                    at: at + 100,
                    customer: None,
                    channel: None,
                };
                db.record_outcome(&input, at + 100 + k as i64)
                    .expect("outcome");
                recorded += 1;
            }
        }
    }
    recorded
}

fn open(dir: &Path) -> Db {
    Db::open(dir, catalog(), DbOptions::default())
        .expect("open")
        .0
}

fn card_rate(db: &Db, gold: bool, mobile: bool) -> f64 {
    let catalog = db.catalog();
    let card = &catalog.offers[catalog.offer("card").expect("card")];
    let customer = [Value::Enum(u32::from(gold)), Value::Int(30)];
    let context = [Value::Enum(0), Value::Enum(u32::from(mobile))];
    catalog.models[0].predict(card.key, 0, &customer, &context)
}

#[test]
fn models_learn_from_outcomes_and_restarts_and_replays_learn_the_same() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (first, at_snapshot, last);
    {
        let db = open(dir.path());
        let prior = card_rate(&db, true, true);
        assert!((prior - 0.1).abs() < 1e-6, "{prior}");
        assert!(traffic(&db, NOW, 400) > 100);
        first = db.learning();
        db.compact(NOW + HOUR).expect("compact");
        at_snapshot = db.learning();
        assert_eq!(at_snapshot, first);
        // More after the snapshot; the first windows close on the way.
        traffic(&db, NOW + 2 * HOUR, 400);
        last = db.learning();
        let status = db.learning_status();
        assert!(
            status.positives > 20 && status.negatives > 100,
            "{status:?}"
        );
        let card = status
            .cells
            .iter()
            .find(|c| c.offer == "card")
            .expect("card learned");
        assert!(card.responses > 50, "{card:?}");
        // Scored before it learned each response, it ranked takers above the rest, and
        // its predictions were about as high as the rates it met.
        let auc = card.auc.expect("positives and negatives");
        assert!(auc > 0.6, "{card:?}");
        let calibration = card.calibration.expect("responses");
        assert!((0.6..1.6).contains(&calibration), "{card:?}");
        // Decayed, with a half-life of 1000 responses.
        let n = card.responses as f64;
        assert!(card.recent <= n && card.recent > 0.9 * n, "{card:?}");
        assert_eq!(card.maturity, (card.positives as f64 / 200.0).min(1.0));
        // It learned who takes the card (its features add up: it cannot say 60% for gold
        // on mobile and 5% for either alone, but it ranks them).
        let (hot, cold) = (card_rate(&db, true, true), card_rate(&db, false, false));
        assert!(
            hot > 0.15 && cold < 0.05,
            "gold on mobile {hot}, mass on desktop {cold}"
        );
        // Decisions score by what it learned: the score is the published prediction.
        let catalog = db.catalog();
        let p = catalog.placement("banner").expect("placement");
        let state = db
            .store()
            .with("c0", |s| s.cloned())
            .expect("decodes")
            .expect("c0");
        let mut context = Context::for_placement(&catalog, p, vec![]);
        context.values[1] = Value::Enum(1);
        let d = decide::decide(
            &catalog,
            &state,
            &context,
            p,
            NOW + 3 * HOUR,
            &Options::new(id(NOW, 1)),
        );
        let card = catalog.offer("card").expect("card");
        let scored = d
            .candidates
            .iter()
            .find(|c| c.offer == card)
            .expect("a candidate");
        let predicted = catalog.models[0].predict(
            catalog.offers[card].key,
            0,
            &state.attributes,
            &context.values,
        );
        assert_eq!(scored.score, predicted * 10.0);
        db.close().expect("close");
    }
    // A restart: the snapshot, then the journal after it.
    {
        let db = open(dir.path());
        assert_eq!(db.learning(), last, "restart from the snapshot");
        assert_eq!(db.learning_digest(), last.digest());
        assert!(card_rate(&db, true, true) > 0.15, "published on restart");
        db.close().expect("close");
    }
    // A replay of the whole journal, without the snapshot.
    for entry in std::fs::read_dir(dir.path().join("state")).expect("state dir") {
        std::fs::remove_file(entry.expect("entry").path()).expect("remove snapshot");
    }
    let db = open(dir.path());
    assert_eq!(db.learning(), last, "replay of the whole journal");
    db.close().expect("close");
}

#[test]
fn a_reload_keeps_a_model_defined_alike_and_resets_a_changed_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    traffic(&db, NOW, 200);
    let learned = db.learning();
    assert!(learned.cells().count() > 0);
    // The same files: kept, and still what decisions read.
    let relayout = db.set_catalog(catalog());
    assert_eq!(relayout.model_cells_reset, 0);
    assert_eq!(db.learning(), learned);
    assert!(card_rate(&db, true, true) > 0.15);
    // Another prior: another model, starting again.
    let file = |path: &str, text: &str| SourceFile {
        path: path.into(),
        text: text.into(),
    };
    let changed = Catalog::from_sources(Sources {
        schema: Some(file("schema.yaml", SCHEMA)),
        placements: Some(file("placements.yaml", PLACEMENTS)),
        experiments: Some(file("experiments.yaml", EXPERIMENTS)),
        models: Some(file(
            "models.yaml",
            &MODELS.replace("prior: 0.1", "prior: 0.2"),
        )),
        offers: vec![file("offers/0.yaml", OFFERS)],
    })
    .expect("loads");
    let relayout = db.set_catalog(Arc::new(changed));
    assert_eq!(relayout.model_cells_reset, learned.cells().count());
    assert_eq!(db.learning().cells().count(), 0);
    let rate = card_rate(&db, true, true);
    assert!((rate - 0.2).abs() < 1e-6, "{rate}");
    db.close().expect("close");
}

/// A decision scored, then outcomes learned (on a busy node, by other requests), then the
/// decision journaled: the journal holds the outcomes before it. Its record names the
/// learning state it read, and replay scores it with that state, so the logging catalog
/// replayed still reproduces its logged distribution.
#[test]
fn a_decision_scored_before_outcomes_were_learned_replays_as_it_was_scored() {
    use crate::journal::join::Reward;
    use crate::learn::replay::{Mode, Target, read};
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    let catalog = db.catalog();
    let p = catalog.placement("banner").expect("placement");
    // Customers alike (exploration draws by customer, so one would see one offer).
    for i in 0..=200 {
        let customer = if i == 200 {
            "mass".to_string()
        } else {
            format!("m{i}")
        };
        db.upsert(
            &catalog,
            &customer,
            vec![Value::Enum(0), Value::Int(3)],
            NOW,
            false,
        )
        .expect("upsert");
    }
    // Decisions whose `card` will be rejected.
    let mut shown_card = Vec::new();
    for i in 0..200u32 {
        let decision = id(NOW + 1000, i);
        let context = Context::for_placement(&catalog, p, vec![]);
        let card = db
            .decide(
                &db.view(),
                Some(&format!("m{i}")),
                &context,
                p,
                NOW + 1000,
                &Options::new(decision),
                |_, d| {
                    d.offers
                        .iter()
                        .any(|s| catalog.offers[s.offer].id == "card")
                },
            )
            .expect("decides");
        if card {
            shown_card.push(decision);
        }
    }
    assert!(
        shown_card.len() > 40,
        "card shown {} times",
        shown_card.len()
    );
    // Scored now: `card` (prior 0.1) beats `loan` (0.9 of it) for this customer.
    let state = db
        .store()
        .with("mass", |s| s.cloned())
        .expect("decodes")
        .expect("stored");
    let context = Context::for_placement(&catalog, p, vec![]);
    let late = id(NOW + 2000, 0);
    let scored = db.decide_consistent(&catalog, || {
        decide::decide(
            &catalog,
            &state,
            &context,
            p,
            NOW + 2000,
            &Options::new(late),
        )
    });
    let learned = scored.learned.expect("a learning state named");
    assert_eq!(learned, db.learning().updates());
    let best = |d: &Decision| {
        let c = d
            .candidates
            .iter()
            .max_by(|a, b| a.score.total_cmp(&b.score))
            .expect("candidates");
        catalog.offers[c.offer].id.clone()
    };
    assert_eq!(best(&scored), "card");
    // Meanwhile `card` is rejected over and over, and learned: now `loan` scores higher.
    for decision in &shown_card {
        let input = OutcomeInput {
            decision: *decision,
            offer: "card".into(),
            kind: EventKind::Reject,
            value: None,
            at: NOW + 2000,
            customer: None,
            channel: None,
        };
        db.record_outcome(&input, NOW + 2000).expect("outcome");
    }
    let again = decide::decide(
        &catalog,
        &state,
        &context,
        p,
        NOW + 2000,
        &Options::new(late),
    );
    assert_eq!(
        best(&again),
        "loan",
        "the rejects moved the scores: {:?}",
        again.candidates
    );
    // Only then is the decision journaled.
    db.log_decision(&catalog, &state, &context, scored)
        .expect("logged");
    db.close().expect("close");

    let log = read(
        dir.path(),
        &catalog,
        &[Target::new(
            "same",
            Arc::into_inner(self::catalog()).expect("unshared"),
            Mode::AsWritten,
        )],
        Reward::Value,
        HOUR,
        (None, None),
    )
    .expect("read");
    let slot = log
        .slots
        .iter()
        .find(|s| s.decision == late.as_u128())
        .expect("the late decision's slot");
    let sorted = |d: &[(u32, f64)]| {
        let mut d = d.to_vec();
        d.sort_by_key(|a| a.0);
        d
    };
    assert_eq!(sorted(&slot.logged), sorted(&slot.targets[0]), "{slot:?}");
}
