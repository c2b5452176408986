use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::decide::{self, Options};
use crate::storage::segment;

const NOW: i64 = 1_795_428_000_000; // 2026-11-23T10:00:00Z

fn catalog() -> Arc<Catalog> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    Arc::new(Catalog::load(&dir).expect("the sample catalog loads"))
}

fn open(dir: &Path) -> (Db, Recovery) {
    Db::open(dir, catalog(), DbOptions::default()).expect("open")
}

fn ada() -> serde_json::Map<String, serde_json::Value> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/customers/ada.json"),
    )
    .expect("example customer");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["attributes"].as_object().expect("attributes").clone()
}

fn decision_id(n: u64) -> Uuid {
    Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        (NOW / 1000) as u64,
        n as u32,
    ))
}

/// Decides for a customer and logs the decision; returns the shown offer ids.
fn decide_and_log(db: &Db, customer: &str, placement: &str, n: u64) -> (Uuid, Vec<String>) {
    let catalog = db.catalog();
    let p = catalog.placement(placement).expect("placement");
    let state = db
        .store()
        .with(customer, |s| s.cloned())
        .expect("decodes")
        .unwrap_or_else(|| CustomerState::anonymous(vec![]));
    let context = Context::for_placement(&catalog, p, vec![]);
    let id = decision_id(n);
    let d = decide::decide(&catalog, &state, &context, p, NOW, &Options::new(id));
    let shown = d
        .offers
        .iter()
        .map(|s| catalog.offers[s.offer].id.clone())
        .collect();
    db.log_decision(&catalog, &state, &context, d)
        .expect("logged");
    (id, shown)
}

fn outcome(decision: Uuid, offer: &str, kind: EventKind) -> OutcomeInput {
    OutcomeInput {
        decision,
        offer: offer.into(),
        kind,
        value: None,
        at: NOW,
        customer: None,
        channel: None,
    }
}

fn state_of(db: &Db, id: &str) -> Option<CustomerState> {
    db.store().with(id, |s| s.cloned()).expect("decodes")
}

#[test]
fn state_history_and_policy_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (before, shown_after_reject) = {
        let (db, recovery) = open(dir.path());
        assert_eq!(recovery.replayed, 0);
        db.upsert_json("ada", &ada(), NOW).expect("upsert");
        // The sample catalog allows two emails a week.
        for n in 1..=2 {
            let (id, shown) = decide_and_log(&db, "ada", "email.hero", n);
            let ack = db
                .record_outcome(&outcome(id, &shown[0], EventKind::Impression), NOW)
                .expect("outcome");
            assert_eq!(
                ack.customer.as_deref(),
                Some("ada"),
                "resolved from the decision"
            );
        }
        let (_, again) = decide_and_log(&db, "ada", "email.hero", 3);
        assert!(again.is_empty(), "the email cap is reached: {again:?}");
        let state = state_of(&db, "ada").expect("ada");
        assert_eq!(state.history.events().len(), 2);
        db.close().expect("close");
        (state, again)
    };
    let (db, recovery) = open(dir.path());
    assert_eq!(
        recovery.replayed, 6,
        "upsert, 3 decisions, 2 outcomes: {recovery}"
    );
    assert_eq!(state_of(&db, "ada"), Some(before));
    let (_, shown) = decide_and_log(&db, "ada", "email.hero", 3);
    assert_eq!(
        shown, shown_after_reject,
        "the contact policy holds across restarts"
    );
}

#[test]
fn a_bad_attribute_is_refused_by_name_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, _) = open(dir.path());
    db.upsert_json("ada", &ada(), NOW).expect("upsert");
    let before = state_of(&db, "ada");
    let records = db
        .journal_stats()
        .records
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut bad = serde_json::Map::new();
    bad.insert("age".into(), 50.into());
    bad.insert("segmnt".into(), "premium".into());
    let err = db.upsert_json("ada", &bad, NOW).expect_err("refused");
    assert_eq!(
        err.to_string(),
        "unknown attribute `customer.segmnt` (did you mean `segment`?)"
    );
    bad.remove("segmnt");
    bad.insert("plan".into(), "gold".into());
    let err = db.upsert_json("ada", &bad, NOW).expect_err("refused");
    assert!(
        err.to_string().contains("`customer.plan` must be one of"),
        "{err}"
    );
    assert_eq!(state_of(&db, "ada"), before, "age was not changed either");
    db.sync().expect("sync");
    assert_eq!(
        db.journal_stats()
            .records
            .load(std::sync::atomic::Ordering::Relaxed),
        records,
        "nothing was logged"
    );
}

#[test]
fn a_retried_outcome_counts_once_even_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, _) = open(dir.path());
    db.upsert_json("ada", &ada(), NOW).expect("upsert");
    let (id, shown) = decide_and_log(&db, "ada", "call_center.next_best", 1);
    let click = outcome(id, &shown[0], EventKind::Click);
    assert!(!db.record_outcome(&click, NOW).expect("first").duplicate);
    assert!(db.record_outcome(&click, NOW).expect("retry").duplicate);
    db.compact(NOW).expect("compact");
    let retry_later = OutcomeInput {
        at: NOW + 5000,
        ..click.clone()
    };
    assert!(
        db.record_outcome(&retry_later, NOW)
            .expect("retry")
            .duplicate
    );
    db.close().expect("close");
    let (db, _) = open(dir.path());
    assert!(
        db.record_outcome(&retry_later, NOW)
            .expect("retry")
            .duplicate
    );
    assert_eq!(state_of(&db, "ada").expect("ada").history.events().len(), 1);
    let err = db
        .record_outcome(&outcome(id, "fiber_broadbnd", EventKind::Click), NOW)
        .expect_err("unknown offer");
    assert_eq!(
        err.to_string(),
        "unknown offer `fiber_broadbnd` (did you mean `fiber_broadband`?)"
    );
}

#[test]
fn compaction_then_replay_gives_the_same_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, _) = open(dir.path());
    let mut attrs = ada();
    for i in 0..50 {
        attrs.insert("age".into(), (20 + i).into());
        db.upsert(
            &db.catalog(),
            &format!("c{i}"),
            crate::state::parse_attributes("customer", &db.catalog().schema.customer, &attrs)
                .expect("valid"),
            NOW,
            false,
        )
        .expect("upsert");
    }
    for i in 0..20 {
        let (id, shown) = decide_and_log(&db, &format!("c{i}"), "app.card", i);
        db.record_outcome(&outcome(id, &shown[0], EventKind::Impression), NOW)
            .expect("outcome");
    }
    db.compact(NOW).expect("compact");
    // Writes after the snapshot are replayed on top of it.
    attrs.insert("age".into(), 99.into());
    db.upsert_json("c3", &attrs, NOW).expect("upsert");
    let (id, shown) = decide_and_log(&db, "c4", "app.card", 99);
    db.record_outcome(&outcome(id, &shown[0], EventKind::Click), NOW)
        .expect("outcome");
    let mut before = Vec::new();
    db.store().for_each(|s| before.push(s.clone()));
    before.sort_by(|a, b| a.id.cmp(&b.id));
    db.close().expect("close");

    let (db, recovery) = open(dir.path());
    assert_eq!(recovery.customers_loaded, 50, "{recovery}");
    assert_eq!(recovery.replayed, 3, "{recovery}");
    let mut after = Vec::new();
    db.store().for_each(|s| after.push(s.clone()));
    after.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(after, before);
}

/// Every file under `dir`, as bytes.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push((path.clone(), std::fs::read(&path).expect("read")));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_forgotten_customer_is_in_no_file_after_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, _) = open(dir.path());
    let secret_id = "erase-me-7f3a9c";
    let mut attrs = ada();
    attrs.insert("language".into(), "xx-secret-lang".into());
    db.upsert_json(secret_id, &attrs, NOW).expect("upsert");
    db.upsert_json("keep-me", &ada(), NOW).expect("upsert");
    let (id, shown) = decide_and_log(&db, secret_id, "web.home_banner", 1);
    db.record_outcome(&outcome(id, &shown[0], EventKind::Impression), NOW)
        .expect("outcome");
    decide_and_log(&db, "keep-me", "web.home_banner", 2);
    db.compact(NOW)
        .expect("a snapshot that still holds the customer");
    db.sync().expect("sync");
    let present = |needle: &str| {
        files(dir.path())
            .iter()
            .filter(|(_, bytes)| contains(bytes, needle.as_bytes()))
            .count()
    };
    assert!(
        present(secret_id) >= 2,
        "journal and snapshot hold the customer"
    );
    assert!(present("xx-secret-lang") >= 2);

    assert!(db.forget(secret_id, NOW).expect("forget"));
    assert!(state_of(&db, secret_id).is_none());
    let done = db.compact(NOW).expect("compact");
    assert_eq!(done.forgotten, 1);
    assert!(done.records_erased >= 4, "{done:?}");
    assert_eq!(present(secret_id), 0, "the id is in no file");
    assert_eq!(present("xx-secret-lang"), 0, "nor their attributes");
    assert!(present("keep-me") >= 2, "others are kept");
    db.close().expect("close");

    let (db, recovery) = open(dir.path());
    assert!(recovery.damage.is_empty(), "{recovery}");
    assert!(state_of(&db, secret_id).is_none());
    assert!(state_of(&db, "keep-me").is_some());
}

#[test]
fn a_torn_tail_is_cut_and_reported_and_everything_before_it_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (db, _) = open(dir.path());
        for i in 0..10 {
            let mut attrs = serde_json::Map::new();
            attrs.insert("age".into(), (30 + i).into());
            db.upsert_json(&format!("c{i}"), &attrs, NOW)
                .expect("upsert");
        }
        db.close().expect("close");
    }
    let journal = dir.path().join("journal");
    let last = *segment::list(&journal)
        .expect("list")
        .last()
        .expect("a segment");
    let path = segment::segment_path(&journal, last);
    let len = std::fs::metadata(&path).expect("meta").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open")
        .set_len(len - 3)
        .expect("truncate");
    let (db, recovery) = open(dir.path());
    assert_eq!(recovery.replayed, 9, "{recovery}");
    let cut = recovery.truncated.expect("the torn record is reported");
    assert!(cut.reason.contains("torn"), "{cut}");
    assert!(state_of(&db, "c8").is_some() && state_of(&db, "c9").is_none());
    // The journal goes on after the cut.
    let mut attrs = serde_json::Map::new();
    attrs.insert("age".into(), 77.into());
    db.upsert_json("c9", &attrs, NOW).expect("upsert");
    db.close().expect("close");
    let (db, recovery) = open(dir.path());
    assert!(
        recovery.truncated.is_none() && recovery.damage.is_empty(),
        "{recovery}"
    );
    assert_eq!(
        state_of(&db, "c9").expect("c9").attributes[0],
        Value::Int(77)
    );
}

/// The sample catalog with a changed schema: a new first attribute (every slot moves)
/// and the `region` values in another order.
fn changed_catalog(dir: &Path) -> Arc<Catalog> {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    std::fs::create_dir_all(dir.join("offers")).expect("dirs");
    for entry in ["placements.yaml", "experiments.yaml", "models.yaml"] {
        std::fs::copy(rules.join(entry), dir.join(entry)).expect("copy");
    }
    for entry in std::fs::read_dir(rules.join("offers")).expect("offers") {
        let path = entry.expect("entry").path();
        std::fs::copy(
            &path,
            dir.join("offers").join(path.file_name().expect("name")),
        )
        .expect("copy");
    }
    let schema = std::fs::read_to_string(rules.join("schema.yaml")).expect("schema");
    let schema = schema
        .replacen(
            "customer:\n",
            "customer:\n  loyalty_points:\n    type: int\n",
            1,
        )
        .replace(
            "values: [north, south, east, west]",
            "values: [west, east, south, north]",
        );
    assert!(schema.contains("loyalty_points") && schema.contains("[west, east"));
    std::fs::write(dir.join("schema.yaml"), schema).expect("write");
    Arc::new(Catalog::load(dir).expect("the changed catalog loads"))
}

#[test]
fn a_snapshot_restores_under_a_changed_schema_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, _) = open(dir.path());
    db.upsert_json("ada", &ada(), NOW).expect("upsert");
    let (id, shown) = decide_and_log(&db, "ada", "app.card", 1);
    db.record_outcome(&outcome(id, &shown[0], EventKind::Click), NOW)
        .expect("outcome");
    let before = state_of(&db, "ada").expect("ada");
    db.compact(NOW).expect("compact");
    db.close().expect("close");

    let rules = tempfile::tempdir().expect("tempdir");
    let changed = changed_catalog(rules.path());
    let (db, recovery) =
        Db::open(dir.path(), Arc::clone(&changed), DbOptions::default()).expect("open");
    assert_eq!(recovery.customers_loaded, 1, "{recovery}");
    assert_eq!(recovery.dropped_values, 0, "{recovery}");
    let after = state_of(&db, "ada").expect("ada");
    let old = catalog();
    for attr in old.schema.customer.attributes() {
        let was = &before.attributes[old.schema.customer.slot(&attr.name).expect("slot") as usize];
        let now =
            &after.attributes[changed.schema.customer.slot(&attr.name).expect("slot") as usize];
        let ty = &attr.ty;
        let new_ty = &changed
            .schema
            .customer
            .get(changed.schema.customer.slot(&attr.name).expect("slot"))
            .expect("attr")
            .ty;
        assert_eq!(
            Feature::of(was, ty),
            Feature::of(now, new_ty),
            "{}",
            attr.name
        );
    }
    assert_eq!(
        after.attributes[0],
        Value::Missing,
        "the new attribute is unset"
    );
    assert_eq!(after.history, before.history);
}

/// `Db::decide` hands the journal the stored record; what it logs is what logging the
/// same decision by hand logs.
#[test]
fn deciding_through_the_store_logs_the_same_record_as_by_hand() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, _) = open(dir.path());
    db.upsert_json("ada", &ada(), NOW).expect("upsert");
    let catalog = db.catalog();
    let p = catalog
        .placement("call_center.next_best")
        .expect("placement");
    let context = Context::for_placement(&catalog, p, vec![]);
    let options = Options::new(decision_id(1));
    let shown = db
        .decide(
            &db.view(),
            Some("ada"),
            &context,
            p,
            NOW,
            &options,
            |state, d| {
                assert_eq!(state.id.as_deref(), Some("ada"));
                d.offers.len()
            },
        )
        .expect("decided");
    assert_eq!(shown, 3);
    let state = state_of(&db, "ada").expect("ada");
    let by_hand = db.decide_consistent(&catalog, || {
        decide::decide(&catalog, &state, &context, p, NOW, &options)
    });
    db.log_decision(&catalog, &state, &context, by_hand)
        .expect("logged");
    let unknown = db
        .decide(
            &db.view(),
            Some("nobody"),
            &context,
            p,
            NOW,
            &Options::new(decision_id(2)),
            |s, _| s.attributes.is_empty(),
        )
        .expect("decided");
    assert!(unknown, "an unknown customer has no attributes");
    db.close().expect("close");

    let mut reader =
        journal::Reader::open(&dir.path().join("journal"), Default::default()).expect("reader");
    let mut decisions = Vec::new();
    while let Some((_, _, record)) = reader.next_record().expect("read") {
        if let Record::Decision(d) = record {
            decisions.push(d);
        }
    }
    assert_eq!(decisions.len(), 3);
    assert_eq!(decisions[0], decisions[1]);
    let customer = decisions[0]
        .features
        .iter()
        .filter(|(name, _)| name.starts_with("customer."))
        .count();
    assert_eq!(customer, ada().len(), "every attribute ada has");
    assert_eq!(decisions[2].customer.as_deref(), Some("nobody"));
    assert!(
        decisions[2]
            .features
            .iter()
            .all(|(name, _)| name.starts_with("context."))
    );
}

/// The sample's save-desk offer may be shown 300 times a day: impressions count against
/// it, the count survives a restart (snapshot and replay), and a new day starts afresh.
#[test]
fn budgets_count_impressions_and_survive_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, _) = open(dir.path());
    db.upsert_json("ada", &ada(), NOW).expect("upsert");
    let catalog = db.catalog();
    let p = catalog
        .placement("call_center.next_best")
        .expect("placement");
    let intent = catalog.schema.context.slot("intent").expect("intent") as usize;
    let mut context_values = vec![Value::Missing; catalog.schema.context.len()];
    if let crate::schema::AttrType::Enum(def) =
        &catalog.schema.context.get(intent as u32).expect("attr").ty
    {
        context_values[intent] = Value::Enum(def.index_of("cancel").expect("cancel"));
    }
    let context = Context::for_placement(&catalog, p, context_values);
    let save = "cancel_save_free_month";
    let outcome_of = |db: &Db, at: i64| -> String {
        let state = state_of(db, "ada").expect("ada");
        let budgets = db.budgets(at);
        let options = Options {
            explain: true,
            budgets: &budgets,
            ..Options::new(decision_id(9))
        };
        let d = decide::decide(&catalog, &state, &context, p, at, &options);
        let offer = catalog.offer(save).expect("offer");
        d.explanation
            .expect("explained")
            .iter()
            .find(|e| e.offer == offer)
            .map(|e| e.outcome.to_string())
            .expect("the offer is explained")
    };
    assert!(
        !outcome_of(&db, NOW).contains("budget"),
        "{}",
        outcome_of(&db, NOW)
    );
    for i in 0..300u64 {
        db.record_outcome(
            &OutcomeInput {
                customer: None,
                channel: Some("call_center".into()),
                ..outcome(decision_id(1000 + i), save, EventKind::Impression)
            },
            NOW,
        )
        .expect("impression");
    }
    let spent = outcome_of(&db, NOW);
    assert!(spent.contains("spent its daily budget of 300"), "{spent}");
    db.compact(NOW).expect("compact");
    db.record_outcome(
        &OutcomeInput {
            customer: None,
            channel: Some("call_center".into()),
            ..outcome(decision_id(5000), save, EventKind::Impression)
        },
        NOW,
    )
    .expect("one more, after the snapshot");
    db.close().expect("close");

    let (db, _) = open(dir.path());
    assert_eq!(
        outcome_of(&db, NOW),
        spent,
        "counted in the snapshot and the replay"
    );
    let spent = decide::Budgets::spent(&db.budgets(NOW), decide::BudgetScope::Offer(key(save)));
    assert_eq!(spent.today, 301);
    assert_eq!(spent.total, 301);
    let tomorrow = NOW + 86_400_000;
    assert!(!outcome_of(&db, tomorrow).contains("budget"), "a new day");
}

#[test]
fn a_data_directory_is_open_in_one_place_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = open(dir.path());
    let second = Db::open(dir.path(), catalog(), DbOptions::default()).expect_err("locked");
    assert!(matches!(second, DbError::Locked { .. }), "{second}");
    assert!(
        second
            .to_string()
            .contains("in use by another nextbest process")
    );
    // Reopening is for a failed journal only: a working one would share its files.
    assert!(matches!(first.0.reopen(), Err(DbError::Locked { .. })));
    first.0.close().expect("close");
    let third = open(dir.path());
    third.0.close().expect("close");
}

/// Replay reads a decision only as far as its id, customer and channel: what it reads
/// must be exactly what the whole record says, for known and anonymous callers, and every
/// other record must come back whole.
#[test]
fn replay_reads_the_same_decision_heads_as_whole_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, _) = open(dir.path());
    db.upsert_json("ada", &ada(), NOW).expect("upsert");
    let catalog = db.catalog();
    for n in 0..40u64 {
        let placement = &catalog.placements[(n % 4) as usize].id;
        decide_and_log(&db, if n % 3 == 0 { "ada" } else { "nobody" }, placement, n);
        let p = catalog.placement(placement).expect("placement");
        let context = Context::for_placement(&catalog, p, vec![]);
        db.decide(
            &db.view(),
            None,
            &context,
            p,
            NOW,
            &Options::new(decision_id(100 + n)),
            |_, _| (),
        )
        .expect("anonymous decide");
    }
    db.sync().expect("sync");
    let journal_dir = dir.path().join("journal");
    let mut whole = journal::Reader::open(&journal_dir, Default::default()).expect("reader");
    let mut light = journal::Reader::open(&journal_dir, Default::default()).expect("reader");
    let (mut decisions, mut anonymous) = (0, 0);
    while let Some((at, seq, record)) = whole.next_record().expect("read") {
        let (at2, seq2, replayed) = light.next_for_replay().expect("read").expect("as many");
        assert_eq!((at, seq), (at2, seq2));
        match (record, replayed) {
            (
                Record::Decision(d),
                journal::Replayed::Decision {
                    id,
                    customer,
                    channel,
                    shown,
                },
            ) => {
                let keys: Box<[u32]> = d.shown.iter().map(|s| key(&s.offer)).collect();
                assert_eq!(
                    (d.id, d.customer.as_deref(), key(&d.channel), Some(keys)),
                    (id, customer.as_deref(), channel, shown)
                );
                decisions += 1;
                anonymous += usize::from(d.customer.is_none());
            }
            (record, journal::Replayed::Record(r)) => assert_eq!(record, r),
            (record, other) => panic!("{record:?} read as {other:?}"),
        }
    }
    assert!(light.next_for_replay().expect("read").is_none());
    assert_eq!(decisions, 80);
    assert!(
        anonymous >= 40 && decisions - anonymous >= 10,
        "{anonymous} anonymous"
    );
    // And a restart replays them: outcomes naming only their decision find the customer.
    db.close().expect("close");
    let (db, recovery) = open(dir.path());
    assert!(recovery.replayed >= 81, "{recovery}");
    let (id, shown) = decide_and_log(&db, "ada", "email.hero", 500);
    db.close().expect("close");
    let (db, _) = open(dir.path());
    let ack = db
        .record_outcome(
            &OutcomeInput {
                decision: id,
                offer: shown[0].clone(),
                kind: EventKind::Impression,
                value: None,
                at: NOW + 1000,
                customer: None,
                channel: None,
            },
            NOW,
        )
        .expect("outcome");
    assert_eq!(
        ack.customer.as_deref(),
        Some("ada"),
        "the replayed decision was remembered"
    );
}

/// What a restart would replay: the journal since the newest snapshot, across a
/// compaction and a reopen.
#[test]
fn the_journal_since_the_snapshot_is_what_a_restart_replays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, _) = open(dir.path());
    let empty = db.journal_since_snapshot().expect("size");
    db.upsert_json("ada", &ada(), NOW).expect("upsert");
    for i in 0..20 {
        decide_and_log(&db, "ada", "app.card", i);
    }
    db.sync().expect("sync");
    let written = db.journal_since_snapshot().expect("size");
    assert!(
        written > empty + 20 * 200,
        "20 decisions of features: {empty} -> {written} bytes"
    );
    db.close().expect("close");
    let (db, recovery) = open(dir.path());
    assert_eq!(recovery.replayed, 21);
    assert_eq!(
        db.journal_since_snapshot().expect("size"),
        written,
        "a restart replays it all again: no snapshot yet"
    );
    db.compact(NOW).expect("compact");
    let after = db.journal_since_snapshot().expect("size");
    assert!(after < written / 10, "{after} bytes left after compacting");
    db.close().expect("close");
    let (db, recovery) = open(dir.path());
    assert_eq!(recovery.replayed, 0, "{recovery}");
    assert_eq!(db.journal_since_snapshot().expect("size"), after);
}

/// An offer of the catalog that the decision did not show.
fn unshown(db: &Db, shown: &[String]) -> String {
    db.catalog()
        .offers
        .iter()
        .map(|o| o.id.clone())
        .find(|id| !shown.contains(id))
        .expect("the sample catalog has more offers than a placement shows")
}

/// An outcome must name an offer its decision showed, when the node knows the decision:
/// right after deciding, after a restart (replayed from the journal) and after a
/// compaction (restored from the snapshot). Nothing refused is journaled or counted.
#[test]
fn an_outcome_of_an_offer_the_decision_did_not_show_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, _) = open(dir.path());
    db.upsert_json("ada", &ada(), NOW).expect("upsert");
    let (id, shown) = decide_and_log(&db, "ada", "call_center.next_best", 1);
    let other = unshown(&db, &shown);
    let refused = |db: &Db, when: &str| {
        db.sync().expect("sync");
        let records = db
            .journal_stats()
            .records
            .load(std::sync::atomic::Ordering::Relaxed);
        let e = db
            .record_outcome(&outcome(id, &other, EventKind::Accept), NOW)
            .expect_err(when);
        assert!(matches!(e, DbError::NotShown { .. }), "{when}: {e}");
        assert!(e.to_string().starts_with("`offer_id`: decision"), "{e}");
        assert!(e.to_string().contains(&format!("`{}`", shown[0])), "{e}");
        db.sync().expect("sync");
        assert_eq!(
            db.journal_stats()
                .records
                .load(std::sync::atomic::Ordering::Relaxed),
            records,
            "{when}: nothing journaled"
        );
    };
    refused(&db, "just decided");
    db.close().expect("close");
    let (db, _) = open(dir.path());
    refused(&db, "replayed");
    db.compact(NOW).expect("compact");
    db.close().expect("close");
    let (db, recovery) = open(dir.path());
    assert!(recovery.snapshot.is_some(), "{recovery}");
    refused(&db, "from the snapshot");
    assert!(
        !db.record_outcome(&outcome(id, &shown[0], EventKind::Accept), NOW)
            .expect("a shown offer")
            .duplicate
    );
    assert_eq!(state_of(&db, "ada").expect("ada").history.events().len(), 1);
    // A decision the node does not know (too old, or from another node's memory): any
    // offer of the catalog is taken, as docs/data.md says.
    let unknown = decision_id(999);
    db.record_outcome(&outcome(unknown, &other, EventKind::Impression), NOW)
        .expect("an unknown decision's outcome");
}

/// A batch of outcomes is checked whole before anything is written (one bad outcome
/// refuses all and changes nothing), and costs one wait for the disk, not one per
/// outcome.
#[test]
fn a_batch_of_outcomes_is_all_or_nothing_and_waits_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, _) = open(dir.path());
    db.upsert_json("ada", &ada(), NOW).expect("upsert");
    let decisions: Vec<(Uuid, Vec<String>)> = (0..100)
        .map(|n| decide_and_log(&db, "ada", "web.home_banner", 10 + n))
        .collect();
    db.sync().expect("sync");
    let stats = db.journal_stats();
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let mut batch: Vec<OutcomeInput> = decisions
        .iter()
        .map(|(id, shown)| outcome(*id, &shown[0], EventKind::Impression))
        .collect();
    batch[60].at = NOW + 800 * 86_400_000;
    let records = count(&stats.records);
    let (index, e) = db
        .record_outcomes(&batch, NOW)
        .expect_err("one outcome 800 days ahead");
    assert_eq!(index, Some(60));
    assert!(matches!(e, DbError::Time(_)), "{e}");
    db.sync().expect("sync");
    assert_eq!(
        count(&stats.records),
        records,
        "nothing of the batch was written"
    );
    assert!(
        state_of(&db, "ada")
            .expect("ada")
            .history
            .events()
            .is_empty()
    );

    batch[60].at = NOW;
    let fsyncs = count(&stats.fsyncs);
    let acks = db.record_outcomes(&batch, NOW).expect("the batch");
    assert_eq!(acks.len(), 100);
    assert!(acks.iter().all(|a| !a.duplicate));
    let batch_fsyncs = count(&stats.fsyncs) - fsyncs;
    assert_eq!(
        state_of(&db, "ada").expect("ada").history.events().len(),
        100
    );
    // Clicks on 20 of them, one call each: each waits for its own fsync.
    let fsyncs = count(&stats.fsyncs);
    for input in &batch[..20] {
        let click = OutcomeInput {
            kind: EventKind::Click,
            ..input.clone()
        };
        assert!(!db.record_outcome(&click, NOW).expect("click").duplicate);
    }
    let single_fsyncs = count(&stats.fsyncs) - fsyncs;
    assert!(
        batch_fsyncs <= 2 && single_fsyncs >= 20,
        "a batch of 100 took {batch_fsyncs} fsyncs, 20 single calls {single_fsyncs}"
    );
}

/// Every customer's state, by id.
fn all_states(db: &Db) -> std::collections::BTreeMap<String, CustomerState> {
    let mut out = std::collections::BTreeMap::new();
    db.store().for_each(|s| {
        out.insert(
            s.id.clone().expect("a stored customer has an id"),
            s.clone(),
        );
    });
    out
}

/// Upserts and outcomes race to create each new customer (released together by a
/// barrier): memory holds every write, as a replay of the journal does.
#[test]
fn concurrent_first_writes_are_in_memory_as_in_the_journal() {
    const THREADS: usize = 4;
    const CUSTOMERS: usize = 400;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = DbOptions::default();
    // Durability is not under test: the journal is read back after `close`.
    options.writer.sync = storage::writer::SyncMode::Never;
    let (db, _) = Db::open(dir.path(), catalog(), options).expect("open");
    let catalog = db.catalog();
    let slot = |name: &str| catalog.schema.customer.slot(name).expect("attribute") as usize;
    let (age, tenure) = (slot("age"), slot("tenure_months"));
    let barrier = std::sync::Barrier::new(THREADS);
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let (db, catalog, barrier) = (&db, &catalog, &barrier);
            scope.spawn(move || {
                for c in 0..CUSTOMERS {
                    let id = format!("c{c}");
                    barrier.wait();
                    if t < 2 {
                        let mut values = vec![Value::Missing; catalog.schema.customer.len()];
                        values[[age, tenure][t]] = Value::Int(c as i64);
                        db.upsert(catalog, &id, values, NOW, false).expect("upsert");
                    } else {
                        let offer = ["fiber_broadband", "tv_bundle"][t - 2];
                        db.record_outcome(
                            &OutcomeInput {
                                customer: Some(id),
                                channel: Some("web".into()),
                                ..outcome(
                                    decision_id((c * THREADS + t) as u64),
                                    offer,
                                    EventKind::Click,
                                )
                            },
                            NOW,
                        )
                        .expect("outcome");
                    }
                }
            });
        }
    });
    let in_memory = all_states(&db);
    db.close().expect("close");
    let (db, recovery) = open(dir.path());
    assert_eq!(
        recovery.replayed,
        (THREADS * CUSTOMERS) as u64,
        "{recovery}"
    );
    let replayed = all_states(&db);
    assert_eq!(replayed.len(), CUSTOMERS);
    for (id, state) in &replayed {
        assert!(
            !state.attributes[age].is_missing() && !state.attributes[tenure].is_missing(),
            "replayed `{id}` has both attributes"
        );
        assert_eq!(state.history.events().len(), 2, "replayed `{id}`");
    }
    let differ: Vec<&String> = replayed
        .iter()
        .filter(|(id, s)| in_memory.get(*id) != Some(s))
        .map(|(id, _)| id)
        .collect();
    assert!(
        differ.is_empty(),
        "{} of {CUSTOMERS} customers differ in memory from the journal, e.g. `{}`: {:?} in memory, {:?} replayed",
        differ.len(),
        differ[0],
        in_memory.get(differ[0]),
        replayed.get(differ[0]),
    );
}

/// A catalog with other customer attributes swaps in while upserts (each parsed against
/// the catalog in force when it began), outcomes and decisions race it, back and forth:
/// every decision reads its customer through the catalog it decides with, no write is
/// lost, and memory ends as a replay of the journal under the last catalog.
#[test]
fn a_catalog_with_other_attributes_swaps_in_while_writes_and_decisions_race() {
    const WRITERS: usize = 2;
    const WRITES: usize = 3_000;
    const CUSTOMERS: usize = 50;
    const SWAPS: usize = 10;
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = tempfile::tempdir().expect("tempdir");
    let mut options = DbOptions::default();
    options.writer.sync = storage::writer::SyncMode::Never;
    let original = catalog();
    let changed = changed_catalog(rules.path());
    let (db, _) = Db::open(dir.path(), Arc::clone(&original), options).expect("open");
    db.upsert_json("ada", &ada(), NOW).expect("upsert");
    let ada_age = ada()["age"].as_i64().expect("ada has an age");
    let done = std::sync::atomic::AtomicBool::new(false);
    let decided = std::sync::atomic::AtomicUsize::new(0);
    let relayouts = std::thread::scope(|scope| {
        let (db, done, decided) = (&db, &done, &decided);
        let writers: Vec<_> = (0..WRITERS)
            .map(|t| {
                scope.spawn(move || {
                    for i in 0..WRITES {
                        let catalog = db.catalog();
                        let schema = &catalog.schema.customer;
                        let mut values = vec![Value::Missing; schema.len()];
                        values[schema.slot("age").expect("age") as usize] = Value::Int(i as i64);
                        let id = format!("w{t}-{}", i % CUSTOMERS);
                        db.upsert(&catalog, &id, values, NOW, false)
                            .expect("upsert");
                        if i % 10 == 0 {
                            db.record_outcome(
                                &OutcomeInput {
                                    customer: Some(id),
                                    channel: Some("web".into()),
                                    ..outcome(
                                        decision_id((i * WRITERS + t) as u64),
                                        "tv_bundle",
                                        EventKind::Click,
                                    )
                                },
                                NOW,
                            )
                            .expect("outcome");
                        }
                    }
                })
            })
            .collect();
        scope.spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let view = db.view();
                let p = view.catalog.placement("app.card").expect("placement");
                let context = Context::for_placement(&view.catalog, p, vec![]);
                let age = db
                    .decide(
                        &view,
                        Some("ada"),
                        &context,
                        p,
                        NOW,
                        &Options::new(decision_id(7)),
                        |state, _| {
                            let slot = view.catalog.schema.customer.slot("age").expect("age");
                            state.attributes[slot as usize].clone()
                        },
                    )
                    .expect("decided");
                assert_eq!(age, Value::Int(ada_age), "ada read through another layout");
                decided.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Each decision is logged: a paced reader leaves the journal to the writers.
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        });
        let mut relayouts = Vec::new();
        for n in 0..SWAPS {
            std::thread::sleep(std::time::Duration::from_millis(5));
            let next = if n % 2 == 0 { &changed } else { &original };
            relayouts.push(db.set_catalog(Arc::clone(next)));
        }
        for w in writers {
            w.join().expect("writer");
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        relayouts
    });
    assert!(decided.load(std::sync::atomic::Ordering::Relaxed) > 0);
    assert!(relayouts.iter().all(|r| r.customers > 0), "{relayouts:?}");
    // Back and forth between two catalogs that share every attribute: nothing dropped.
    assert!(
        relayouts.iter().all(|r| r.dropped_values == 0),
        "{relayouts:?}"
    );
    let last = db.set_catalog(Arc::clone(&changed));
    assert!(
        last.customers > 0,
        "the last swap (to `changed`) carried customers over"
    );
    let age = changed.schema.customer.slot("age").expect("age") as usize;
    let in_memory = all_states(&db);
    for t in 0..WRITERS {
        for c in 0..CUSTOMERS {
            let id = format!("w{t}-{c}");
            let last_write = (WRITES - CUSTOMERS + c) as i64;
            assert_eq!(
                in_memory[&id].attributes[age],
                Value::Int(last_write),
                "`{id}`'s last upsert"
            );
        }
    }
    db.close().expect("close");
    let (db, _) = Db::open(dir.path(), changed, DbOptions::default()).expect("reopen");
    assert_eq!(
        all_states(&db),
        in_memory,
        "memory is what the journal replays to"
    );
}

#[test]
fn a_cluster_snapshot_keeps_the_catalog_in_force_for_the_restart_to_open_with() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mark = StreamMark {
        stream: "NEXTBEST_WRITES".into(),
        created: 1,
        position: 42,
        decisions: 7,
    };
    let published = br#"{"version":"v1","node":"n","files":[]}"#;
    {
        let (db, _) = open(dir.path());
        assert_eq!(snapshot_catalog(dir.path()), None, "no snapshot yet");
        db.upsert_json("c1", &ada(), NOW).expect("upsert");
        db.snapshot_replicated(&mark, Some(published), NOW)
            .expect("snapshot");
        db.close().expect("close");
    }
    assert_eq!(
        snapshot_catalog(dir.path()).as_deref(),
        Some(&published[..])
    );
    let (_, recovery) = open(dir.path());
    assert_eq!(recovery.stream, Some(mark.clone()));
    assert_eq!(recovery.catalog.as_deref(), Some(&published[..]));
    assert_eq!(recovery.customers_loaded, 1);

    // A snapshot without one (taken before snapshots kept it): none, and it still loads.
    let (db, _) = open(dir.path());
    db.snapshot_replicated(&mark, None, NOW).expect("snapshot");
    db.close().expect("close");
    assert_eq!(snapshot_catalog(dir.path()), None);
    let (_, recovery) = open(dir.path());
    assert_eq!(recovery.catalog, None);
    assert_eq!(recovery.customers_loaded, 1);
}
