//! `nextbest decide` through the real binary, on the sample catalog.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn customer_file() -> PathBuf {
    root().join("examples/customers/ada.json")
}

fn decide(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nextbest"))
        .arg("decide")
        .arg("--rules")
        .arg(root().join("rules"))
        .args(["--at", "2026-11-23T10:00:00Z"])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nextbest");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    child.wait_with_output().expect("wait")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON decision")
}

const PLACEMENTS: [&str; 4] = [
    "call_center.next_best",
    "email.hero",
    "web.home_banner",
    "app.card",
];

#[test]
fn every_placement_answers_for_a_known_customer_with_and_without_explain() {
    let file = customer_file();
    let file = file.to_str().expect("utf-8 path");
    for placement in PLACEMENTS {
        for explain in [false, true] {
            let mut args = vec!["--placement", placement, "--customer", file];
            if explain {
                args.push("--explain");
            }
            let d = json(&decide(&args, None));
            assert_eq!(d["placement"], placement);
            assert_eq!(d["customer"], "cust-0042");
            let offers = d["offers"].as_array().expect("offers");
            assert!(!offers.is_empty(), "{placement}: {d:#}");
            for o in offers {
                let p = o["propensity"].as_f64().expect("propensity");
                assert!(p > 0.0 && p <= 1.0, "{placement}: propensity {p}");
                assert!(o["content"].is_object(), "{placement}: content {o}");
            }
            assert_eq!(d.get("explanation").is_some(), explain, "{placement}");
            assert_eq!(d["experiment"], "nba_explore");
            assert!(d["decision_id"].as_str().is_some_and(|id| id.len() == 36));
        }
    }
}

#[test]
fn every_placement_answers_for_an_anonymous_caller() {
    for placement in PLACEMENTS {
        let d = json(&decide(
            &[
                "--placement",
                placement,
                "--context",
                "device=mobile",
                "--explain",
            ],
            None,
        ));
        assert!(d["customer"].is_null());
        assert!(
            !d["offers"].as_array().expect("offers").is_empty(),
            "{placement}: {d:#}"
        );
    }
}

#[test]
fn the_customer_can_come_from_stdin_and_explains_every_offer() {
    let text = std::fs::read_to_string(customer_file()).expect("customer file");
    let d = json(&decide(
        &[
            "--placement",
            "call_center.next_best",
            "--customer",
            "-",
            "--explain",
        ],
        Some(&text),
    ));
    let explained = d["explanation"].as_array().expect("explanation");
    assert_eq!(explained.len(), 14, "every offer of the placement: {d:#}");
    assert!(explained.iter().any(|e| {
        e["outcome"]
            .as_str()
            .is_some_and(|o| o.starts_with("ineligible: `"))
    }));
}

#[test]
fn bad_input_names_what_is_wrong() {
    let cases: [(&[&str], Option<&str>, &str); 7] = [
        (
            &["--placement", "email.hero", "--customer", "-"],
            Some(r#"{"id": "x", "attributes": {"agee": 3}}"#),
            "unknown attribute `customer.agee` (did you mean `age`?)",
        ),
        (
            &["--placement", "email.hero", "--customer", "-"],
            Some(r#"{"id": "x", "attributes": {"plan": "gold"}}"#),
            "attribute `customer.plan` must be one of",
        ),
        (
            &["--placement", "email.hero", "--context", "device=toaster"],
            None,
            "attribute `context.device` must be one of",
        ),
        (
            &["--placement", "email.heroo"],
            None,
            "unknown placement `email.heroo`",
        ),
        (
            &["--placement", "email.hero", "--customer", "-"],
            Some(r#"{"id": "x", "histroy": []}"#),
            "unknown field `histroy`",
        ),
        (
            &["--placement", "email.hero", "--context", "channel=web"],
            None,
            "`--context channel=web`: placement `email.hero` is in channel `email`",
        ),
        (
            &["--placement", "email.hero", "--customer", "-"],
            Some(r#"{"id": "x", "attributes": {"last_contact": "0000-06-01T00:00:00Z"}}"#),
            "attribute `customer.last_contact` is 0000-06-01T00:00:00Z, outside",
        ),
    ];
    for (args, stdin, expected) in cases {
        let out = decide(args, stdin);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(expected),
            "{args:?}: expected `{expected}` in {stderr}"
        );
    }
}
