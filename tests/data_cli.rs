//! `nextbest import`, `export`, `forget` and `compact` through the real binary, on the
//! sample catalog and a data directory in a temporary folder.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use nextbest::catalog::Catalog;
use nextbest::db::{Db, DbOptions, OutcomeInput};
use nextbest::decide::{Context, Options, decide};
use nextbest::schema::EventKind;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn nextbest(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nextbest"))
        .arg(args[0])
        .arg("--rules")
        .arg(root().join("rules"))
        .arg("--data")
        .arg(data)
        .args(&args[1..])
        .output()
        .expect("run nextbest")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn import_reports_bad_lines_by_number_and_attribute_and_keeps_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("customers.jsonl");
    std::fs::write(
        &file,
        "{\"id\": \"c1\", \"age\": 38, \"segment\": \"premium\"}\n\
         {\"id\": \"c2\", \"age\": \"old\"}\n\
         {\"id\": \"c3\", \"attributes\": {\"plan\": \"basic\", \"products\": [\"tv\"]}}\n",
    )
    .expect("write");
    let data = dir.path().join("data");
    let out = nextbest(&data, &["import", file.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1), "a refused line fails the run");
    let err = stderr(&out);
    assert!(
        err.contains("customers.jsonl:line 2: attribute `customer.age` must be a whole number"),
        "{err}"
    );
    assert!(err.contains("imported 2 customers, 1 bad lines"), "{err}");

    let strict = nextbest(
        &data,
        &["import", "--strict", file.to_str().expect("utf-8")],
    );
    assert_eq!(strict.status.code(), Some(1));
    assert!(stderr(&strict).contains("imported nothing: 1 bad lines (--strict)"));

    let csv = dir.path().join("more.csv");
    std::fs::write(&csv, "id,age,products\nc4,51,\"mobile,tv\"\n").expect("write");
    let out = nextbest(&data, &["import", csv.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("3 customers in"), "{}", stderr(&out));

    let bad_header = dir.path().join("bad.csv");
    std::fs::write(&bad_header, "id,agee\nc5,1\n").expect("write");
    let out = nextbest(&data, &["import", bad_header.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("line 1: unknown attribute `customer.agee` (did you mean `age`?)"),
        "{}",
        stderr(&out)
    );
}

/// A data directory with decisions and outcomes, written through the library.
fn journal(data: &Path) {
    let catalog = Arc::new(Catalog::load(root().join("rules")).expect("catalog"));
    let (db, _) = Db::open(data, Arc::clone(&catalog), DbOptions::default()).expect("open");
    let text = std::fs::read_to_string(root().join("examples/customers/ada.json")).expect("ada");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    let attributes = json["attributes"].as_object().expect("attributes");
    let now = 1_795_428_000_000;
    for c in 0..30u64 {
        let id = format!("cust-{c}");
        db.upsert_json(&id, attributes, now).expect("upsert");
        for p in 0..catalog.placements.len() {
            let state = db.store().with(&id, |s| s.cloned()).expect("decodes");
            let state = state.expect("customer");
            let context = Context::for_placement(&catalog, p, vec![]);
            let decision_id = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
                uuid::NoContext,
                (now / 1000) as u64 + c,
                p as u32,
            ));
            let d = decide(
                &catalog,
                &state,
                &context,
                p,
                now,
                &Options::new(decision_id),
            );
            let shown: Vec<String> = d
                .offers
                .iter()
                .map(|s| catalog.offers[s.offer].id.clone())
                .collect();
            db.log_decision(&catalog, &state, &context, d).expect("log");
            for (slot, offer) in shown.iter().enumerate() {
                let kind = if (c + slot as u64).is_multiple_of(3) {
                    EventKind::Accept
                } else {
                    EventKind::Impression
                };
                db.record_outcome(
                    &OutcomeInput {
                        decision: decision_id,
                        offer: offer.clone(),
                        kind,
                        value: None,
                        at: now + 1000,
                        customer: None,
                        channel: None,
                    },
                    now + 1000,
                )
                .expect("outcome");
            }
        }
    }
    db.close().expect("close");
}

#[test]
fn export_writes_both_formats_and_reports_the_same_figures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    journal(&data);
    let mut summaries = Vec::new();
    for (format, file) in [("dsjson", "out.dsjson"), ("obp", "out.npz")] {
        let out_path = dir.path().join(file);
        let out = nextbest(
            &data,
            &[
                "export",
                "--format",
                format,
                "--out",
                out_path.to_str().expect("utf-8"),
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary");
        assert_eq!(summary["decisions"], 120);
        assert!(summary["events"].as_u64().expect("events") >= 120);
        assert!(summary["ipw_logging"].as_f64().expect("ipw") > 0.0);
        summaries.push(summary);
    }
    assert_eq!(summaries[0]["ipw_logging"], summaries[1]["ipw_logging"]);
    let dsjson = std::fs::read_to_string(dir.path().join("out.dsjson")).expect("dsjson");
    let first: serde_json::Value =
        serde_json::from_str(dsjson.lines().next().expect("a line")).expect("json");
    assert!(dsjson.starts_with("{\"_label_cost\":"));
    let a = first["a"].as_array().expect("a");
    let p = first["p"].as_array().expect("p");
    assert_eq!(a.len(), p.len());
    assert_eq!(a[0], first["_label_Action"]);
    assert_eq!(p[0], first["_label_probability"]);
    assert_eq!(
        first["c"]["_multi"].as_array().expect("_multi").len(),
        a.len()
    );

    // Time range and attribution window (decisions at 10:00:00, outcomes a second later).
    let out_path = dir.path().join("range.dsjson");
    let out_path = out_path.to_str().expect("utf-8");
    let summary = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["export", "--format", "dsjson", "--out", out_path];
        all.extend_from_slice(args);
        let out = nextbest(&data, &all);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).expect("summary")
    };
    assert_eq!(
        summary(&["--from", "2026-11-23T10:00:00.001Z"])["decisions"],
        0
    );
    assert_eq!(
        summary(&["--to", "2026-11-23T10:00:00.001Z"])["decisions"],
        120
    );
    assert_eq!(summary(&["--to", "2026-11-23T10:00:00Z"])["decisions"], 0);
    assert_eq!(summary(&["--window", "500ms"])["ipw_logging"], 0.0);
    let accepted = summaries[0]["ipw_logging"].as_f64().expect("ipw");
    let impressions = summary(&["--reward", "impression"])["ipw_logging"]
        .as_f64()
        .expect("ipw");
    assert!(
        (impressions + accepted - 1.0).abs() < 1e-12,
        "each shown offer got exactly one of impression or accept"
    );

    let bad = nextbest(
        &data,
        &[
            "export", "--format", "obp", "--reward", "sale", "--out", "x",
        ],
    );
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("--reward: `sale` is not a reward"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn forget_then_compact_leaves_no_trace_in_the_data_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    journal(&data);
    let out = nextbest(&data, &["forget", "cust-7"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("erased"), "{}", stderr(&out));
    let mut files = vec![data.clone()];
    let mut scanned = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("dir") {
                files.push(entry.expect("entry").path());
            }
        } else {
            let bytes = std::fs::read(&path).expect("read");
            assert!(
                !bytes.windows(6).any(|w| w == b"cust-7"),
                "`cust-7` is still in {}",
                path.display()
            );
            // Every snapshot holds the other customer; segments may not; LOCK is empty.
            assert!(
                bytes.windows(6).any(|w| w == b"cust-8")
                    || path.extension().is_some_and(|e| e == "log")
                    || path.file_name().is_some_and(|n| n == "LOCK") && bytes.is_empty()
            );
            scanned += 1;
        }
    }
    assert!(scanned >= 2, "journal segments and a snapshot");
}
