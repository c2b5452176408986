//! `nextbest simulate`, `train` and `evaluate` through the real binary: a small seeded
//! world on the sample catalog, where the truth is known.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value as J;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nextbest"))
        .current_dir(root())
        .args(args)
        .output()
        .expect("run nextbest")
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn fails(args: &[&str]) -> String {
    let out = run(args);
    assert_eq!(out.status.code(), Some(1), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const SPLIT: &str = "2026-11-09T00:00:00Z";

/// The sample catalog as written by hand, without its adaptive model: its two adaptive
/// offers get constants. An adaptive logging policy learns as it goes, which is not what
/// training against a fixed hand-written policy is judged on here.
fn hand_written(dir: &Path) -> String {
    let out = dir.join("hand-written");
    std::fs::create_dir_all(out.join("offers")).expect("dirs");
    for entry in ["schema.yaml", "placements.yaml", "experiments.yaml"] {
        std::fs::copy(root().join("rules").join(entry), out.join(entry)).expect("copy");
    }
    for entry in std::fs::read_dir(root().join("rules/offers")).expect("offers") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        // tv_bundle's 0.06 first in the file, then streaming_addon's 0.09.
        let text = text
            .replacen("adaptive('cross_sell')", "0.06", 1)
            .replace("adaptive('cross_sell')", "0.09");
        std::fs::write(
            out.join("offers").join(path.file_name().expect("name")),
            text,
        )
        .expect("write");
    }
    out.display().to_string()
}

/// The whole loop on 1,000 customers over 14 days: the simulation is reproducible from its
/// seed; the trained catalog loads and carries models; every policy's true value lies
/// within the estimators' reach, the logging policy's IPS is its measured mean, and the
/// trained catalog is truly better than the logging one (that `evaluate` foresees it is
/// shown over 20 larger seeds by scripts/learning_proof.sh).
#[test]
fn simulate_train_evaluate_on_a_known_world() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |p: &str| dir.path().join(p).display().to_string();
    let rules = hand_written(dir.path());
    let simulate = |data: &str| {
        let out = ok(&[
            "simulate",
            "--rules",
            &rules,
            "--scenario",
            "scenarios/telco.yaml",
            "--data",
            data,
            "--seed",
            "5",
            "--customers",
            "1000",
            "--json",
        ]);
        serde_json::from_str::<J>(&out).expect("json")
    };
    let first = simulate(&path("a"));
    assert_eq!(first, simulate(&path("b")), "one seed, one world");
    assert!(
        first["decisions"].as_u64().expect("decisions") > 4000,
        "{first}"
    );
    assert!(first["accepts"].as_u64().expect("accepts") > 300, "{first}");
    // The realised value scatters around its expectation.
    let (value, expected) = (
        first["value"].as_f64().expect("v"),
        first["expected_value"].as_f64().expect("e"),
    );
    assert!(
        (value - expected).abs() < 0.1 * expected,
        "{value} vs {expected}"
    );

    ok(&[
        "train",
        "--rules",
        &rules,
        "--data",
        &path("a"),
        "--out",
        &path("trained"),
        "--to",
        SPLIT,
        "--seed",
        "5",
    ]);
    let trained =
        std::fs::read_to_string(dir.path().join("trained/offers/upsell.yaml")).expect("offers");
    assert!(
        trained.contains("# Trained by `nextbest train`"),
        "{trained}"
    );
    assert!(
        trained.contains("propensity: |-\n      sigmoid("),
        "{trained}"
    );
    ok(&["check", "--rules", &path("trained")]);
    // Deterministic: the same data and seed train the same catalog.
    ok(&[
        "train",
        "--rules",
        &rules,
        "--data",
        &path("a"),
        "--out",
        &path("again"),
        "--to",
        SPLIT,
        "--seed",
        "5",
    ]);
    assert_eq!(
        trained,
        std::fs::read_to_string(dir.path().join("again/offers/upsell.yaml")).expect("offers")
    );

    let out = ok(&[
        "evaluate",
        "--baseline",
        &rules,
        "--data",
        &path("a"),
        "--rules",
        &path("trained"),
        "--reward",
        "value",
        "--from",
        SPLIT,
        "--scenario",
        "scenarios/telco.yaml",
        "--json",
        "-",
    ]);
    let e: J = serde_json::from_str(&out).expect("json");
    let policies = e["policies"].as_array().expect("policies");
    let names: Vec<&str> = policies
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        &names[..3],
        ["logging policy", "uniform random", "champion alone"]
    );
    let overall = |i: usize| &policies[i]["groups"][0];
    let logging = overall(0);
    let on = &policies[0]["on_policy"];
    assert!(
        (logging["ips"]["value"].as_f64().expect("ips") - on["value"].as_f64().expect("on")).abs()
            < 1e-9
    );
    for (i, name) in names.iter().enumerate() {
        let g = overall(i);
        let truth = g["truth"].as_f64().expect("a scenario gives the truth");
        assert_eq!(g["unsupported"].as_f64(), Some(0.0), "{name}");
        for est in ["snips", "dr"] {
            // Four half-widths: a bound no honest estimator misses, whatever the seed.
            let (v, lo, hi) = (
                g[est]["value"].as_f64().expect("value"),
                g[est]["low"].as_f64().expect("low"),
                g[est]["high"].as_f64().expect("high"),
            );
            assert!(
                (v - truth).abs() <= 4.0 * (hi - lo) / 2.0,
                "{name} {est}: {v} [{lo}, {hi}] vs truth {truth}"
            );
        }
        // Per placement and per channel as well.
        let groups = policies[i]["groups"].as_array().expect("groups");
        assert!(
            groups
                .iter()
                .any(|g| g["by"] == "placement" && g["name"] == "email.hero")
        );
        assert!(
            groups
                .iter()
                .any(|g| g["by"] == "channel" && g["name"] == "call_center")
        );
    }
    let truth = |i: usize| overall(i)["truth"].as_f64().expect("truth");
    assert!(
        truth(3) > 1.1 * truth(0),
        "trained {} vs logging {}",
        truth(3),
        truth(0)
    );
    assert!(
        truth(1) < truth(0),
        "uniform random is worse than the logging policy"
    );
}

#[test]
fn bad_inputs_are_refused_with_the_place_to_look() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scenario = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(root().join("scenarios/telco.yaml")).expect("scenario");
    std::fs::write(
        &scenario,
        text.replace(
            "  age: { uniform: [18, 85] }",
            "  agee: { uniform: [18, 85] }",
        ),
    )
    .expect("write");
    let data = dir.path().join("data").display().to_string();
    let err = fails(&[
        "simulate",
        "--scenario",
        scenario.to_str().expect("utf-8"),
        "--data",
        &data,
    ]);
    let line = text
        .lines()
        .position(|l| l.starts_with("  age:"))
        .expect("age")
        + 1;
    assert!(
        err.contains(&format!(
            "bad.yaml:{line}:3: the schema has no attribute `customer.agee`"
        )),
        "{err}"
    );
    std::fs::write(
        &scenario,
        text.replace(
            "sigmoid(-3 + 0.15 * customer.roaming_days_90d)",
            "sigmoid(-3 + customer.roaming)",
        ),
    )
    .expect("write");
    let err = fails(&[
        "simulate",
        "--scenario",
        scenario.to_str().expect("utf-8"),
        "--data",
        &data,
    ]);
    assert!(
        err.contains("`accept` of `roaming_pass`") && err.contains("roaming"),
        "{err}"
    );
    std::fs::write(
        &scenario,
        text.replace("  age: { uniform: [18, 85] }", "  age: { bool: 0.5 }"),
    )
    .expect("write");
    let err = fails(&[
        "simulate",
        "--scenario",
        scenario.to_str().expect("utf-8"),
        "--data",
        &data,
    ]);
    assert!(
        err.contains("`customer.age` is int: this distribution does not fit it"),
        "{err}"
    );

    // A data directory that already holds something is not written into.
    std::fs::create_dir_all(dir.path().join("full")).expect("mkdir");
    std::fs::write(dir.path().join("full/x"), "x").expect("write");
    let full = dir.path().join("full").display().to_string();
    let err = fails(&[
        "simulate",
        "--scenario",
        "scenarios/telco.yaml",
        "--data",
        &full,
    ]);
    assert!(
        err.contains("is not empty: simulate writes a fresh data directory"),
        "{err}"
    );
    let err = fails(&["train", "--data", &data, "--out", &full]);
    assert!(
        err.contains("is not empty: train writes a new catalog directory"),
        "{err}"
    );
    // No journal, no estimate.
    let err = fails(&["evaluate", "--data", &full, "--rules", "rules"]);
    assert!(err.contains("has no journal"), "{err}");
}

/// The report's figures add up against the simulation that wrote the journal, the arms
/// are compared customer by customer, and the HTML page carries its plots.
#[test]
fn report_counts_what_the_simulation_did() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data").display().to_string();
    let sim: J = serde_json::from_str(&ok(&[
        "simulate",
        "--scenario",
        "scenarios/telco.yaml",
        "--data",
        &data,
        "--seed",
        "2",
        "--customers",
        "400",
        // Past the sample model's 7-day window, so impressions without a response are
        // learned as negatives.
        "--days",
        "10",
        "--json",
    ]))
    .expect("json");
    let html = dir.path().join("report.html");
    let r: J = serde_json::from_str(&ok(&[
        "report",
        "--data",
        &data,
        "--html",
        html.to_str().expect("utf-8"),
        "--json",
    ]))
    .expect("json");
    let overall = &r["overall"];
    for (kpi, want) in [
        ("decisions", "decisions"),
        ("impressions", "impressions"),
        ("accepts", "accepts"),
    ] {
        assert_eq!(overall[kpi], sim[want], "{kpi}");
    }
    assert!(
        (overall["value"].as_f64().expect("v") - sim["value"].as_f64().expect("v")).abs() < 1e-6
    );
    let sum = |by: &str, kpi: &str| -> u64 {
        r[by]
            .as_array()
            .expect("groups")
            .iter()
            .map(|g| g[kpi].as_u64().expect("n"))
            .sum()
    };
    assert_eq!(
        sum("by_channel", "impressions"),
        sum("by_offer", "impressions")
    );
    assert_eq!(
        sum("by_channel", "decisions"),
        sim["decisions"].as_u64().expect("n")
    );
    assert_eq!(
        sum("by_arm", "accepts"),
        sim["accepts"].as_u64().expect("n")
    );
    let rate = &overall["accept_rate"];
    assert!(
        rate["low"].as_f64() < rate["value"].as_f64()
            && rate["value"].as_f64() < rate["high"].as_f64()
    );
    let comparisons = r["comparisons"].as_array().expect("comparisons");
    assert_eq!(
        comparisons.len(),
        2,
        "value and accepts per customer, challenger vs champion"
    );
    assert_eq!(comparisons[0]["champion"], "champion");
    assert!(
        comparisons[0]["verdict"]
            .as_str()
            .expect("verdict")
            .contains("p = ")
    );
    // The sample's adaptive model, learned again from the journal: a cell per offer
    // reading it, with what the simulated node learned.
    let models = r["models"].as_array().expect("models");
    let cells: Vec<&str> = models
        .iter()
        .map(|c| c["offer"].as_str().expect("offer"))
        .collect();
    assert_eq!(cells, ["streaming_addon", "tv_bundle"]);
    for c in models {
        let (n, k) = (
            c["responses"].as_u64().expect("n"),
            c["positives"].as_u64().expect("k"),
        );
        assert!(n > 20 && k > 0 && k < n, "{c}");
        let auc = c["auc"].as_f64().expect("auc");
        assert!(auc > 0.5 && auc < 1.0, "{c}");
        let calibration = c["calibration"].as_f64().expect("calibration");
        assert!((0.5..2.0).contains(&calibration), "{c}");
        assert_eq!(c["maturity"].as_f64(), Some((k as f64 / 200.0).min(1.0)));
    }
    let page = std::fs::read_to_string(&html).expect("html");
    assert_eq!(
        page.matches("<svg").count(),
        5,
        "arms, channels, days, offers, the model's reliability"
    );
    assert!(page.contains("Challenger vs champion") && page.contains("roaming_pass"));
    assert!(page.contains("Reliability of `cross_sell`"));
}

/// A candidate that shows an offer the logging catalog never had cannot be judged on
/// that share: evaluate says how much and warns, rather than printing a confident number.
#[test]
fn a_candidate_without_support_is_flagged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data").display().to_string();
    ok(&[
        "simulate",
        "--scenario",
        "scenarios/telco.yaml",
        "--data",
        &data,
        "--customers",
        "150",
        "--days",
        "3",
    ]);
    let candidate = dir.path().join("candidate");
    std::fs::create_dir_all(candidate.join("offers")).expect("mkdir");
    for entry in walk(&root().join("rules")) {
        let to = candidate.join(entry.strip_prefix(root().join("rules")).expect("inside"));
        std::fs::copy(&entry, to).expect("copy");
    }
    std::fs::write(
        candidate.join("offers/brand_new.yaml"),
        "offers:\n  - id: brand_new\n    propensity: 0.9\n    value: 1000\n    content:\n      email.hero: { title: New }\n",
    )
    .expect("write");
    let e: J = serde_json::from_str(&ok(&[
        "evaluate",
        "--data",
        &data,
        "--rules",
        candidate.to_str().expect("utf-8"),
        "--json",
        "-",
    ]))
    .expect("json");
    let policies = e["policies"].as_array().expect("policies");
    let new = policies.last().expect("the candidate");
    let email = new["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| g["name"] == "email.hero")
        .expect("email.hero");
    assert!(
        email["unsupported"].as_f64().expect("share") > 0.5,
        "{email}"
    );
    assert_eq!(policies[0]["groups"][0]["unsupported"].as_f64(), Some(0.0));
    let warnings = e["warnings"].as_array().expect("warnings");
    assert!(
        warnings.iter().any(|w| w
            .as_str()
            .is_some_and(|w| w.contains("could never have shown there (no support)"))),
        "{warnings:?}"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
