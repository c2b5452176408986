//! `nextbest serve` as a process: it serves on the addresses its `--ready-file` gives, and SIGTERM drains
//! it, flushes the journal and exits 0 without losing an acknowledged write.

mod common;

use std::path::Path;
use std::process::Command;

use nextbest::server::proto::customer_service_client::CustomerServiceClient;
use nextbest::server::proto::{self, value::Kind};

/// Customer `grace`, aged 51.
fn grace() -> proto::UpsertRequest {
    proto::UpsertRequest {
        customer_id: "grace".into(),
        attributes: [(
            "age".to_string(),
            proto::Value {
                kind: Some(Kind::IntValue(51)),
            },
        )]
        .into(),
    }
}

#[test]
fn serve_answers_then_drains_on_sigterm_and_keeps_acknowledged_writes() {
    let data = tempfile::tempdir().expect("tempdir");
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let mut serve = common::Serve::start(&rules, data.path());
    let addr = serve.addr.clone();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut customers = CustomerServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        customers.upsert(grace()).await.expect("upsert");
    });
    serve.signal("TERM");
    let status = serve.child.wait().expect("wait");
    assert!(status.success(), "exit {status:?}: {}", serve.rest());

    let catalog = std::sync::Arc::new(nextbest::catalog::Catalog::load(&rules).expect("catalog"));
    let (db, _) = nextbest::db::Db::open(data.path(), catalog, Default::default()).expect("reopen");
    assert!(
        db.store().with("grace", |s| s.is_some()) == Ok(true),
        "the acknowledged upsert is kept"
    );
}

#[test]
fn serve_refuses_to_listen_off_loopback_without_a_token() {
    let out = Command::new(env!("CARGO_BIN_EXE_nextbest"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data"])
        .env_remove("NEXTBEST_ADMIN_TOKEN")
        .arg(tempfile::tempdir().expect("tempdir").path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not a loopback address: set --admin-token"),
        "{err}"
    );
}

#[test]
fn serve_refuses_to_start_with_a_tls_key_that_is_missing_or_alone() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    let serve = |extra: &[&std::ffi::OsStr]| {
        let out = Command::new(env!("CARGO_BIN_EXE_nextbest"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(tempfile::tempdir().expect("tempdir").path())
            .args(extra)
            .env_remove("NEXTBEST_TLS_CERT")
            .env_remove("NEXTBEST_TLS_KEY")
            .output()
            .expect("run");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let cert = fixtures.join("server.pem");
    let err = serve(&["--tls-cert".as_ref(), cert.as_os_str()]);
    assert!(err.contains("--tls-key"), "{err}");
    let missing = fixtures.join("missing.key");
    let err = serve(&[
        "--tls-cert".as_ref(),
        cert.as_os_str(),
        "--tls-key".as_ref(),
        missing.as_os_str(),
    ]);
    assert!(err.contains("missing.key"), "{err}");
}

#[test]
fn sighup_reloads_the_catalog() {
    let data = tempfile::tempdir().expect("tempdir");
    let rules = tempfile::tempdir().expect("tempdir");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    for dir in ["", "offers"] {
        std::fs::create_dir_all(rules.path().join(dir)).expect("mkdir");
        for entry in std::fs::read_dir(source.join(dir)).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_file() {
                std::fs::copy(
                    &path,
                    rules.path().join(dir).join(path.file_name().expect("name")),
                )
                .expect("copy");
            }
        }
    }
    let mut serve = common::Serve::start(rules.path(), data.path());
    let addr = serve.addr.clone();
    let version = || {
        tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(async {
                use nextbest::server::proto::admin_service_client::AdminServiceClient;
                AdminServiceClient::connect(format!("http://{addr}"))
                    .await
                    .expect("connect")
                    .get_catalog(proto::GetCatalogRequest {})
                    .await
                    .expect("catalog")
                    .into_inner()
                    .version
            })
    };
    let before = version();
    let offers = rules.path().join("offers/upsell.yaml");
    let text = std::fs::read_to_string(&offers).expect("read");
    std::fs::write(&offers, format!("{text}\n# edited\n")).expect("write");
    serve.signal("HUP");
    let given_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while version() == before {
        assert!(
            std::time::Instant::now() < given_up,
            "no reload within 30 s of SIGHUP"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    serve.signal("TERM");
    assert!(serve.child.wait().expect("wait").success());
}

/// A busy node compacts when its journal has grown past `--compact-journal-mb`, without
/// waiting for the interval, so that a restart never replays more than that.
#[test]
fn serve_compacts_when_the_journal_has_grown() {
    use nextbest::server::proto::decision_service_client::DecisionServiceClient;
    let data = tempfile::tempdir().expect("tempdir");
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let flags = ["--compact-interval", "0s", "--compact-journal-mb", "1"];
    let mut serve = common::Serve::start_with(&rules, data.path(), &flags);
    let addr = serve.addr.clone();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let snapshots = || {
        std::fs::read_dir(data.path().join("state"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    runtime.block_on(async {
        let endpoint = format!("http://{addr}");
        let mut customers = CustomerServiceClient::connect(endpoint.clone())
            .await
            .expect("connect");
        customers.upsert(grace()).await.expect("upsert");
        let mut decisions = DecisionServiceClient::connect(endpoint)
            .await
            .expect("connect");
        // Until more than 1 MB of decision records (each with the customer's features).
        let journal = || -> u64 {
            std::fs::read_dir(data.path().join("journal"))
                .expect("journal")
                .map(|e| e.expect("entry").metadata().expect("metadata").len())
                .sum()
        };
        let mut calls = 0;
        while journal() < 1_300_000 && snapshots() == 0 {
            calls += 1;
            assert!(calls < 50_000, "the journal does not grow");
            decisions
                .decide(proto::DecideRequest {
                    customer_id: "grace".into(),
                    placement: "call_center.next_best".into(),
                    ..Default::default()
                })
                .await
                .expect("decide");
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while snapshots() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no compaction within 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The interval never calls for it (`0s`): the journal's size did, and what a restart
    // replays now is what came after.
    serve.signal("TERM");
    assert!(serve.child.wait().expect("wait").success());
    let catalog = std::sync::Arc::new(nextbest::catalog::Catalog::load(&rules).expect("catalog"));
    let (db, _) = nextbest::db::Db::open(data.path(), catalog, Default::default()).expect("reopen");
    assert_eq!(db.store().len(), 1);
    let replayed = db.journal_since_snapshot().expect("journal");
    assert!(replayed < 1 << 20, "{replayed} bytes after the snapshot");
}

/// `--log-format json` writes one JSON object a line with a level, a timestamp and a
/// message, and what is logged inside a call carries the call's span and its method.
#[test]
fn json_logs_are_one_object_a_line_and_name_the_call() {
    use nextbest::server::proto::admin_service_client::AdminServiceClient;
    let data = tempfile::tempdir().expect("tempdir");
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let flags = ["--log-format", "json", "--log-level", "info"];
    let mut serve = common::Serve::start_with(&rules, data.path(), &flags);
    let first: serde_json::Value =
        serde_json::from_str(&serve.next_line()).expect("the first line is JSON");
    assert_eq!(first["level"], "INFO", "{first}");
    let at = first["timestamp"].as_str().expect("a timestamp");
    assert!(at.parse::<jiff::Timestamp>().is_ok(), "{at} is RFC 3339");
    assert!(
        first["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{first}"
    );
    let addr = serve.addr.clone();
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            AdminServiceClient::connect(format!("http://{addr}"))
                .await
                .expect("connect")
                .reload(proto::ReloadRequest {})
                .await
                .expect("reload")
        });
    serve.signal("TERM");
    assert!(serve.child.wait().expect("wait").success());
    let lines: Vec<serde_json::Value> = serve
        .rest()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["span"]["method"] == "Reload" && l["trigger"] == "Reload"),
        "no event of the Reload call in {lines:?}"
    );
}

/// `--retrain-every`: on a simulated journal, the node trains a candidate, evaluates it
/// against the catalog running, logs the attempt with its figures, counts it and, when
/// the gate passes, decides with it from then on.
#[test]
fn serve_retrains_behind_a_gate_and_logs_and_counts_every_attempt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The hand-written catalog (the sample's adaptive offers with constants), so that
    // training has something to beat.
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(rules.join("offers")).expect("dirs");
    for f in ["schema.yaml", "placements.yaml", "experiments.yaml"] {
        std::fs::copy(root.join("rules").join(f), rules.join(f)).expect("copy");
    }
    for entry in std::fs::read_dir(root.join("rules/offers")).expect("offers") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path)
            .expect("read")
            .replace("adaptive('cross_sell')", "0.06");
        std::fs::write(
            rules.join("offers").join(path.file_name().expect("name")),
            text,
        )
        .expect("write");
    }
    let data = dir.path().join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_nextbest"))
        .current_dir(root)
        .args([
            "simulate",
            "--scenario",
            "scenarios/telco.yaml",
            "--customers",
            "1000",
        ])
        .arg("--rules")
        .arg(&rules)
        .arg("--data")
        .arg(&data)
        .output()
        .expect("simulate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The simulated days are weeks ago: a window that reaches them.
    let flags = [
        "--retrain-every",
        "1s",
        "--retrain-window",
        "400d",
        "--log-format",
        "json",
    ];
    let mut serve = common::Serve::start_with(&rules, &data, &flags);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let attempt = loop {
        assert!(std::time::Instant::now() < deadline, "no attempt in 120 s");
        let line: serde_json::Value =
            serde_json::from_str(&serve.next_line()).expect("a JSON line");
        if line["message"] == "retraining attempt" {
            break line;
        }
        assert_ne!(line["level"], "WARN", "{line}");
    };
    assert!(
        attempt["trained"].as_u64().is_some_and(|n| n > 0),
        "{attempt}"
    );
    let (low, running) = (
        attempt["low"].as_f64().expect("a lower bound"),
        attempt["running"].as_f64().expect("the running value"),
    );
    assert_eq!(attempt["taken"].as_bool(), Some(low > running), "{attempt}");
    let candidate = attempt["candidate"].as_str().expect("a candidate");
    assert!(Path::new(candidate).join("offers").is_dir(), "{candidate}");
    // Counted once logged.
    let result = if low > running { "taken" } else { "refused" };
    let series = format!("nextbest_retrain_attempts_total{{result=\"{result}\"}} ");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let scraped = common::scrape(&serve.metrics_addr);
        if scraped.contains(&series) && !scraped.contains(&format!("{series}0\n")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series} not counted: {scraped}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    serve.signal("TERM");
    assert!(serve.child.wait().expect("wait").success());
}
