//! The gRPC service end to end: a real server on 127.0.0.1:0 over a temporary data
//! directory and a copy of the sample rules, called through the generated clients.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use common::not_run;
use nextbest::server::proto::admin_service_client::AdminServiceClient;
use nextbest::server::proto::customer_service_client::CustomerServiceClient;
use nextbest::server::proto::decision_service_client::DecisionServiceClient;
use nextbest::server::proto::{self, value::Kind};
use nextbest::server::{Listeners, Metrics, Node, ServeConfig, Transport, serve};
use tonic::Code;
use tonic::transport::Channel;

struct Server {
    addr: std::net::SocketAddr,
    metrics_addr: std::net::SocketAddr,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    task: Option<tokio::task::JoinHandle<()>>,
    node: Arc<Node>,
    rules: tempfile::TempDir,
    data: tempfile::TempDir,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let path = entry.expect("entry").path();
        let target = to.join(path.file_name().expect("name"));
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy");
        }
    }
}

fn sample_rules() -> tempfile::TempDir {
    let rules = tempfile::tempdir().expect("tempdir");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"),
        rules.path(),
    );
    rules
}

/// A server on the sample rules and a new data directory.
async fn start() -> Server {
    let data = tempfile::tempdir().expect("tempdir");
    start_on(sample_rules(), data, Transport::default()).await
}

async fn start_on(
    rules: tempfile::TempDir,
    data: tempfile::TempDir,
    transport: Transport,
) -> Server {
    start_with(rules, data, transport, nextbest::db::DbOptions::default()).await
}

async fn start_with(
    rules: tempfile::TempDir,
    data: tempfile::TempDir,
    transport: Transport,
    options: nextbest::db::DbOptions,
) -> Server {
    let (node, _) = Node::open_with(rules.path(), data.path(), options).expect("node");
    serve_node(rules, data, node, transport).await
}

/// Serves an opened node as the binary does ([`serve`]), on two ports of 127.0.0.1:0.
async fn serve_node(
    rules: tempfile::TempDir,
    data: tempfile::TempDir,
    node: Node,
    transport: Transport,
) -> Server {
    let node = Arc::new(node);
    let bind = || async {
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind")
    };
    let listeners = Listeners {
        grpc: bind().await,
        metrics: bind().await,
    };
    let addr = listeners.grpc.local_addr().expect("addr");
    let metrics_addr = listeners.metrics.local_addr().expect("addr");
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let config = ServeConfig {
        transport,
        ..ServeConfig::default()
    };
    let serving = serve(Arc::clone(&node), config, listeners, async move {
        let _ = stopped.wait_for(|s| *s).await;
    });
    Server {
        addr,
        metrics_addr,
        stop: Some(stop),
        task: Some(tokio::spawn(async move {
            serving.await.expect("server");
        })),
        node,
        rules,
        data,
    }
}

impl Server {
    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    /// `GET /metrics`, over a plain socket.
    async fn scrape(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut socket = tokio::net::TcpStream::connect(self.metrics_addr)
            .await
            .expect("connect");
        socket
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .expect("request");
        let mut reply = String::new();
        socket.read_to_string(&mut reply).await.expect("reply");
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        reply
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server stopped cleanly");
        }
    }

    /// Stops, closes the node (flushing the journal) and hands back its directories.
    async fn shut_down(self) -> (tempfile::TempDir, tempfile::TempDir) {
        let (rules, data, closed) = self.shut_down_anyway().await;
        closed.expect("close");
        (rules, data)
    }

    /// As `shut_down`, handing back what closing the node said (its journal may have
    /// failed).
    async fn shut_down_anyway(
        mut self,
    ) -> (
        tempfile::TempDir,
        tempfile::TempDir,
        Result<(), nextbest::db::DbError>,
    ) {
        let _ = self.stop.take().expect("running").send(true);
        self.task
            .take()
            .expect("running")
            .await
            .expect("stopped cleanly");
        // A call cut off by its timeout leaves its write's blocking task behind (waiting
        // for an fsync), holding the node until that returns; `serve` waits for it by
        // dropping its runtime, which a test's runtime does not do. Waited for here, bounded.
        let waited = std::time::Instant::now();
        while Arc::strong_count(&self.node) > 1
            && waited.elapsed() < std::time::Duration::from_secs(10)
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let node = Arc::try_unwrap(self.node).expect("the server let go of the node");
        let closed = node.close();
        (self.rules, self.data, closed)
    }
}

fn string(s: &str) -> proto::Value {
    proto::Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

fn int(i: i64) -> proto::Value {
    proto::Value {
        kind: Some(Kind::IntValue(i)),
    }
}

fn double(x: f64) -> proto::Value {
    proto::Value {
        kind: Some(Kind::DoubleValue(x)),
    }
}

fn ada() -> HashMap<String, proto::Value> {
    HashMap::from([
        ("age".to_string(), int(38)),
        ("segment".to_string(), string("consumer")),
        ("tenure_months".to_string(), int(40)),
        ("plan".to_string(), string("basic")),
        ("churn_risk".to_string(), double(0.72)),
        ("monthly_spend".to_string(), double(64.5)),
        (
            "products".to_string(),
            proto::Value {
                kind: Some(Kind::StringList(proto::StringList {
                    values: vec!["mobile".into(), "broadband".into()],
                })),
            },
        ),
        (
            "marketing_opt_in".to_string(),
            proto::Value {
                kind: Some(Kind::BoolValue(true)),
            },
        ),
    ])
}

fn decide_request(customer: &str, placement: &str) -> proto::DecideRequest {
    proto::DecideRequest {
        customer_id: customer.into(),
        placement: placement.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_outcomes_and_customers_round_trip() {
    let server = start().await;
    let channel = server.channel().await;
    let mut customers = CustomerServiceClient::new(channel.clone());
    let mut decisions = DecisionServiceClient::new(channel.clone());

    customers
        .upsert(proto::UpsertRequest {
            customer_id: "ada".into(),
            attributes: ada(),
        })
        .await
        .expect("upsert");
    let got = customers
        .get(proto::GetRequest {
            customer_id: "ada".into(),
            history_limit: 0,
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.attributes.get("segment"), Some(&string("consumer")));
    assert_eq!(got.attributes.get("age"), Some(&int(38)));

    let d = decisions
        .decide(proto::DecideRequest {
            explain: true,
            ..decide_request("ada", "call_center.next_best")
        })
        .await
        .expect("decide")
        .into_inner();
    assert!(!d.offers.is_empty() && d.offers.len() <= 3, "{d:?}");
    assert!(
        d.offers
            .iter()
            .all(|o| o.propensity > 0.0 && o.propensity <= 1.0)
    );
    assert!(!d.offers[0].content.is_empty(), "agent script content");
    assert!(!d.explanation.is_empty());
    assert_eq!(
        d.catalog_version,
        server.node.db().catalog().version.to_string()
    );

    // Two email impressions reach the sample catalog's email cap.
    for _ in 0..2 {
        let email = decisions
            .decide(decide_request("ada", "email.hero"))
            .await
            .expect("decide")
            .into_inner();
        assert_eq!(email.offers.len(), 1);
        let outcome = proto::Outcome {
            decision_id: email.decision_id.clone(),
            offer_id: email.offers[0].offer_id.clone(),
            kind: proto::OutcomeKind::Impression as i32,
            ..Default::default()
        };
        let ack = decisions
            .record_outcome(outcome.clone())
            .await
            .expect("outcome");
        assert!(!ack.into_inner().duplicate);
        let retry = decisions.record_outcome(outcome).await.expect("retry");
        assert!(retry.into_inner().duplicate, "a retry counts once");
    }
    let capped = decisions
        .decide(decide_request("ada", "email.hero"))
        .await
        .expect("decide")
        .into_inner();
    assert!(capped.offers.is_empty(), "the email cap holds: {capped:?}");
    assert!(!capped.suppressed.is_empty());

    let got = customers
        .get(proto::GetRequest {
            customer_id: "ada".into(),
            history_limit: 1,
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.history.len(), 1, "limited to the latest event");
    assert_eq!(got.history[0].channel, "email");

    // A page of two placements shows no offer twice, and agrees with single calls.
    let batch = decisions
        .decide_batch(proto::DecideBatchRequest {
            customer_id: "ada".into(),
            placements: vec![
                proto::PlacementRequest {
                    placement: "web.home_banner".into(),
                    ..Default::default()
                },
                proto::PlacementRequest {
                    placement: "app.card".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        })
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(batch.decisions.len(), 2);
    let first: Vec<&str> = batch.decisions[0]
        .offers
        .iter()
        .map(|o| o.offer_id.as_str())
        .collect();
    assert!(
        batch.decisions[1]
            .offers
            .iter()
            .all(|o| !first.contains(&o.offer_id.as_str()))
    );
    let single = decisions
        .decide(decide_request("ada", "web.home_banner"))
        .await
        .expect("decide")
        .into_inner();
    let single: Vec<&str> = single.offers.iter().map(|o| o.offer_id.as_str()).collect();
    assert_eq!(
        single, first,
        "the first placement of a page decides as a single call"
    );

    let forgotten = customers
        .forget(proto::ForgetRequest {
            customer_id: "ada".into(),
        })
        .await
        .expect("forget")
        .into_inner();
    assert!(forgotten.existed);
    let gone = customers
        .get(proto::GetRequest {
            customer_id: "ada".into(),
            history_limit: 0,
        })
        .await
        .expect_err("forgotten");
    assert_eq!(gone.code(), Code::NotFound);

    let scraped = server.scrape().await;
    for series in [
        "nextbest_decide_seconds_bucket{placement=\"call_center.next_best\"",
        "nextbest_decisions_total{arm=",
        "nextbest_offers_shown_total{channel=\"email\"",
        "nextbest_outcomes_total{kind=\"impression\"} 2",
        "nextbest_catalog_info{version=",
        "nextbest_reloads_total{result=\"ok\"} 1",
        "nextbest_customers 0",
        "nextbest_journal_bytes_total",
        "nextbest_journal_write_seconds_bucket",
        "nextbest_grpc_errors_total{code=\"NOT_FOUND\",method=\"Get\"} 1",
        // The sample's adaptive model, per offer that reads it, and what it learned.
        "nextbest_model_base_rate{",
        "offer=\"tv_bundle\"",
        "nextbest_model_outcomes_total{result=\"positive\"} 0",
        "nextbest_model_maturity{",
        // The process's own, from /proc.
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_cpu_seconds_total ",
        "process_start_time_seconds ",
    ] {
        assert!(
            scraped.contains(series),
            "{series} missing from:\n{scraped}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_statuses_that_name_the_field() {
    let server = start().await;
    let channel = server.channel().await;
    let mut customers = CustomerServiceClient::new(channel.clone());
    let mut decisions = DecisionServiceClient::new(channel.clone());

    let e = decisions
        .decide(decide_request("ada", "web.banner"))
        .await
        .expect_err("unknown placement");
    assert_eq!(e.code(), Code::NotFound);
    assert!(
        e.message().contains("unknown placement `web.banner`"),
        "{}",
        e.message()
    );

    let e = customers
        .upsert(proto::UpsertRequest {
            customer_id: "bob".into(),
            attributes: HashMap::from([("agee".to_string(), int(3))]),
        })
        .await
        .expect_err("unknown attribute");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "unknown attribute `customer.agee` (did you mean `age`?)"
    );

    let e = customers
        .upsert(proto::UpsertRequest {
            customer_id: "bob".into(),
            attributes: HashMap::from([("age".to_string(), string("old"))]),
        })
        .await
        .expect_err("wrong type");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message()
            .contains("`customer.age` must be a whole number"),
        "{}",
        e.message()
    );
    assert_eq!(server.node.db().store().len(), 0, "nothing was stored");

    let e = decisions
        .decide(proto::DecideRequest {
            context: HashMap::from([("device".to_string(), string("toaster"))]),
            ..decide_request("", "web.home_banner")
        })
        .await
        .expect_err("bad enum value");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("`context.device`"), "{}", e.message());

    let e = decisions
        .record_outcome(proto::Outcome {
            decision_id: "not-a-uuid".into(),
            offer_id: "fiber_broadband".into(),
            kind: proto::OutcomeKind::Click as i32,
            ..Default::default()
        })
        .await
        .expect_err("bad id");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("`decision_id`"), "{}", e.message());

    let e = decisions
        .record_outcome(proto::Outcome {
            decision_id: uuid::Uuid::now_v7().to_string(),
            offer_id: "fiber_broadbnd".into(),
            kind: proto::OutcomeKind::Click as i32,
            ..Default::default()
        })
        .await
        .expect_err("unknown offer");
    assert_eq!(e.code(), Code::NotFound);
    assert!(
        e.message().contains("did you mean `fiber_broadband`"),
        "{}",
        e.message()
    );

    let e = decisions
        .record_outcome(proto::Outcome {
            decision_id: uuid::Uuid::now_v7().to_string(),
            offer_id: "fiber_broadband".into(),
            ..Default::default()
        })
        .await
        .expect_err("no kind");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("`kind`"), "{}", e.message());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_a_good_catalog_and_keeps_the_running_one_on_errors() {
    let server = start().await;
    let channel = server.channel().await;
    let mut admin = AdminServiceClient::new(channel.clone());
    let before = admin
        .get_catalog(proto::GetCatalogRequest {})
        .await
        .expect("catalog")
        .into_inner();
    assert_eq!(before.offers, 23);
    // The sample's adaptive model, as declared, with a cell for each offer reading it.
    let [model] = &before.models[..] else {
        panic!("one model: {:?}", before.models);
    };
    assert_eq!(model.id, "cross_sell");
    assert_eq!(model.predictors[0], "customer.segment");
    assert_eq!(
        (model.positive.clone(), model.negative.clone()),
        (
            vec!["accept".to_string(), "convert".into()],
            vec!["reject".to_string()]
        )
    );
    assert_eq!((model.window_seconds, model.prior), (7 * 86_400, 0.07));
    let offers: Vec<&str> = model.cells.iter().map(|c| c.offer_id.as_str()).collect();
    assert_eq!(offers, ["streaming_addon", "tv_bundle"]);
    let cell = &model.cells[0];
    assert_eq!((cell.responses, cell.maturity, cell.auc), (0, 0.0, None));
    // With no feature weighed, below the prior a customer's predictors add up to.
    assert!(cell.base_rate > 0.0 && cell.base_rate < 0.07, "{cell:?}");

    let offers = server.rules.path().join("offers/service.yaml");
    let text = std::fs::read_to_string(&offers).expect("read");
    std::fs::write(&offers, format!("{text}\n# touched\n")).expect("write");
    let good = admin
        .reload(proto::ReloadRequest {})
        .await
        .expect("reload")
        .into_inner();
    assert!(good.reloaded, "{:?}", good.errors);
    assert_ne!(good.version, before.version);

    std::fs::write(
        &offers,
        text.replacen(
            "id: ",
            "id: x\n    eligibility: customer.agee > 1\n    # ",
            1,
        ),
    )
    .expect("write");
    let bad = admin
        .reload(proto::ReloadRequest {})
        .await
        .expect("reload")
        .into_inner();
    assert!(!bad.reloaded);
    assert_eq!(bad.version, good.version, "the running catalog stays");
    assert!(
        bad.errors
            .iter()
            .any(|e| e.contains("service.yaml") && e.contains("customer.agee")),
        "{:?}",
        bad.errors
    );
    server.stop().await;
}

/// Errors without a location (an offers file that cannot be read, two offer ids with one
/// history key) are in the reply as `error: message`, beside located ones as
/// `path:line:col: error: message`: one line per error, none dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_names_every_error_with_or_without_a_location() {
    let server = start().await;
    let mut admin = AdminServiceClient::new(server.channel().await);
    let before = admin
        .get_catalog(proto::GetCatalogRequest {})
        .await
        .expect("catalog")
        .into_inner();

    // A directory named like an offers file: reading it fails, at no line of any file.
    let unreadable = server.rules.path().join("offers/unreadable.yaml");
    std::fs::create_dir(&unreadable).expect("mkdir");
    let reply = admin
        .reload(proto::ReloadRequest {})
        .await
        .expect("reload")
        .into_inner();
    assert!(!reply.reloaded);
    assert_eq!(reply.version, before.version, "the running catalog stays");
    assert_eq!(reply.errors.len(), 1, "{:?}", reply.errors);
    let wanted = format!("error: cannot read `{}`: ", unreadable.display());
    assert!(reply.errors[0].starts_with(&wanted), "{:?}", reply.errors);

    // With a located error as well: both, each on one line, the unlocated one first.
    let offers = server.rules.path().join("offers/service.yaml");
    let text = std::fs::read_to_string(&offers).expect("read");
    std::fs::write(
        &offers,
        text.replacen(
            "    propensity: 0.5\n",
            "    propensity: 0.5\n    eligibility: customer.agee > 1\n",
            1,
        ),
    )
    .expect("write");
    let reply = admin
        .reload(proto::ReloadRequest {})
        .await
        .expect("reload")
        .into_inner();
    assert!(!reply.reloaded);
    assert_eq!(reply.errors.len(), 2, "{:?}", reply.errors);
    assert!(reply.errors[0].starts_with(&wanted), "{:?}", reply.errors);
    let located = format!("{}:", offers.display());
    let (position, message) = reply.errors[1]
        .strip_prefix(&located)
        .and_then(|rest| rest.split_once(": error: "))
        .unwrap_or_else(|| panic!("not `path:line:col: error: message`: {:?}", reply.errors));
    assert!(
        position.split(':').count() == 2 && position.split(':').all(|n| n.parse::<usize>().is_ok()),
        "{position}"
    );
    assert!(message.contains("`customer.agee`"), "{message}");
    assert!(
        reply.errors.iter().all(|e| !e.contains('\n')),
        "{:?}",
        reply.errors
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer() {
    let server = start().await;
    let channel = server.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "nextbest.v1.DecisionService".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let reply = replies
        .message()
        .await
        .expect("a reply")
        .expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("not a service list: {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in [
        "nextbest.v1.DecisionService",
        "nextbest.v1.CustomerService",
        "nextbest.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == service),
            "{service} missing from {names:?}"
        );
    }

    // The older protocol too, which many clients still speak.
    use tonic_reflection::pb::v1alpha as alpha;
    let mut reflection = alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1alpha reflection")
        .into_inner();
    let reply = replies
        .message()
        .await
        .expect("a reply")
        .expect("one message");
    let Some(alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        reply.message_response
    else {
        panic!("not a service list: {reply:?}");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "nextbest.v1.DecisionService")
    );
    server.stop().await;
}

/// `nextbest_reloads_total{result}` in `registry`.
fn reloads(registry: &prometheus::Registry, result: &str) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "nextbest_reloads_total")
        .flat_map(|f| f.get_metric())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "result" && l.value() == result)
        })
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_rule_file_is_reloaded_once_it_holds_still() {
    let server = start().await;
    let registry = prometheus::Registry::new();
    let metrics = Arc::new(Metrics::new(&registry).expect("metrics"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn(nextbest::server::watch::watch(
        Arc::clone(&server.node),
        metrics,
        std::time::Duration::from_millis(50),
        async {
            let _ = stopped.await;
        },
    ));
    let before = server.node.db().catalog().version.to_string();
    let offers = server.rules.path().join("offers/upsell.yaml");
    let text = std::fs::read_to_string(&offers).expect("read");
    std::fs::write(&offers, format!("{text}\n# edited\n")).expect("write");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while server.node.db().catalog().version.to_string() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload after the edit"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let after = server.node.db().catalog().version.to_string();

    // A broken edit is refused once the watcher has tried it; the catalog in force stays.
    std::fs::write(&offers, "offers: [").expect("write");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while reloads(&registry, "refused") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the broken edit was never tried"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(server.node.db().catalog().version.to_string(), after);
    // One reload for each edit.
    assert_eq!(
        (reloads(&registry, "ok"), reloads(&registry, "refused")),
        (1, 1)
    );
    let _ = stop.send(());
    watcher.await.expect("watcher stopped");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_token_customer_and_admin_calls_need_it() {
    let rules = tempfile::tempdir().expect("tempdir");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"),
        rules.path(),
    );
    let data = tempfile::tempdir().expect("tempdir");
    let (node, _) = Node::open(rules.path(), data.path()).expect("node");
    let node = node.with_admin_token(Some("s3cret".into()));
    let server = serve_node(rules, data, node, Transport::default()).await;
    let addr = server.addr;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let upsert = || proto::UpsertRequest {
        customer_id: "ada".into(),
        attributes: ada(),
    };
    let mut customers = CustomerServiceClient::new(channel.clone());
    let e = customers.upsert(upsert()).await.expect_err("no token");
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut wrong = tonic::Request::new(upsert());
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer s3cre7".parse().expect("header"));
    assert_eq!(
        customers.upsert(wrong).await.expect_err("wrong").code(),
        Code::Unauthenticated
    );
    let mut right = tonic::Request::new(upsert());
    right
        .metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().expect("header"));
    customers.upsert(right).await.expect("with the token");
    let e = AdminServiceClient::new(channel.clone())
        .reload(proto::ReloadRequest {})
        .await
        .expect_err("admin needs it too");
    assert_eq!(e.code(), Code::Unauthenticated);
    DecisionServiceClient::new(channel)
        .decide(decide_request("ada", "app.card"))
        .await
        .expect("decisions need no token");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_reports_not_serving_and_cuts_off_endless_streams() {
    let server = start().await;
    let channel = server.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: "nextbest.v1.DecisionService".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    use tonic_health::pb::health_check_response::ServingStatus;
    let first = watch.message().await.expect("status").expect("one");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let Server { stop, task, .. } = server;
    let _ = stop.expect("running").send(true);
    let next = watch.message().await.expect("status").expect("one more");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    // The watch never ends by itself: the drain cuts it off after its grace period
    // instead of waiting forever.
    let grace = nextbest::server::DRAIN_GRACE + std::time::Duration::from_secs(20);
    let stopped = tokio::time::timeout(grace, task.expect("task"));
    stopped.await.expect("the server drained").expect("cleanly");
}

fn outcome(decision: &proto::Decision, kind: proto::OutcomeKind) -> proto::Outcome {
    proto::Outcome {
        decision_id: decision.decision_id.clone(),
        offer_id: decision.offers[0].offer_id.clone(),
        kind: kind as i32,
        ..Default::default()
    }
}

/// What a restart must keep: attributes, history and the budget counters.
async fn observed(server: &Server, channel: Channel) -> (proto::Customer, Vec<(u32, u64, u64)>) {
    let customer = CustomerServiceClient::new(channel)
        .get(proto::GetRequest {
            customer_id: "ada".into(),
            history_limit: 0,
        })
        .await
        .expect("get")
        .into_inner();
    let db = server.node.db();
    let catalog = db.catalog();
    let budgets = db.budgets(jiff::Timestamp::now().as_millisecond());
    use nextbest::decide::{BudgetScope, Budgets};
    let spent = catalog
        .offers
        .iter()
        .map(|o| {
            let s = budgets.spent(BudgetScope::Offer(o.key));
            (o.key, s.today, s.total)
        })
        .collect();
    (customer, spent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_customers_history_budgets_and_retries() {
    let server = start().await;
    let channel = server.channel().await;
    CustomerServiceClient::new(channel.clone())
        .upsert(proto::UpsertRequest {
            customer_id: "ada".into(),
            attributes: ada(),
        })
        .await
        .expect("upsert");
    let mut decisions = DecisionServiceClient::new(channel.clone());
    let email = decisions
        .decide(decide_request("ada", "email.hero"))
        .await
        .expect("decide")
        .into_inner();
    let impression = outcome(&email, proto::OutcomeKind::Impression);
    decisions
        .record_outcome(impression.clone())
        .await
        .expect("impression");
    let call = decisions
        .decide(decide_request("ada", "call_center.next_best"))
        .await
        .expect("decide")
        .into_inner();
    let accept = outcome(&call, proto::OutcomeKind::Accept);
    decisions
        .record_outcome(accept.clone())
        .await
        .expect("accept");
    let before = observed(&server, channel).await;
    assert_eq!(before.0.history.len(), 2, "{:?}", before.0);
    assert!(
        before
            .1
            .iter()
            .any(|&(_, today, total)| today == 1 && total == 1),
        "the impression counts against its offer's budget: {:?}",
        before.1
    );

    let (rules, data) = server.shut_down().await;
    let server = start_on(rules, data, Transport::default()).await;
    let channel = server.channel().await;
    let after = observed(&server, channel.clone()).await;
    assert_eq!(after, before);
    let mut decisions = DecisionServiceClient::new(channel);
    for retry in [impression, accept] {
        let ack = decisions.record_outcome(retry).await.expect("retry");
        assert!(
            ack.into_inner().duplicate,
            "a retry after a restart counts once"
        );
    }
    assert_eq!(observed(&server, server.channel().await).await, before);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_under_outcome_load_keeps_every_acknowledged_outcome() {
    const CUSTOMERS: usize = 24;
    const CALLERS: usize = 16;
    let server = start().await;
    let channel = server.channel().await;
    let mut customers = CustomerServiceClient::new(channel.clone());
    let mut decisions = DecisionServiceClient::new(channel.clone());
    let mut pending = Vec::new();
    for i in 0..CUSTOMERS {
        let id = format!("c{i}");
        customers
            .upsert(proto::UpsertRequest {
                customer_id: id.clone(),
                attributes: ada(),
            })
            .await
            .expect("upsert");
        for placement in ["call_center.next_best", "app.card"] {
            let d = decisions
                .decide(decide_request(&id, placement))
                .await
                .expect("decide")
                .into_inner();
            if d.offers.is_empty() {
                continue;
            }
            for kind in [
                proto::OutcomeKind::Impression,
                proto::OutcomeKind::Click,
                proto::OutcomeKind::Accept,
                proto::OutcomeKind::Convert,
            ] {
                pending.push(outcome(&d, kind));
            }
        }
    }
    let total = pending.len();
    let pending = Arc::new(std::sync::Mutex::new(pending));
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut callers = Vec::new();
    for _ in 0..CALLERS {
        let (pending, acknowledged) = (Arc::clone(&pending), Arc::clone(&acknowledged));
        let mut client = DecisionServiceClient::new(channel.clone());
        callers.push(tokio::spawn(async move {
            loop {
                let Some(next) = pending.lock().expect("lock").pop() else {
                    return;
                };
                match client.record_outcome(next.clone()).await {
                    Ok(_) => acknowledged.lock().expect("lock").push(next),
                    // Refused once draining: not acknowledged, so the client may retry.
                    Err(_) => return,
                }
            }
        }));
    }
    // Shut down while the callers are in full swing.
    while acknowledged.lock().expect("lock").len() < total / 4 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let (rules, data) = server.shut_down().await;
    for caller in callers {
        caller.await.expect("caller");
    }
    let acknowledged = std::mem::take(&mut *acknowledged.lock().expect("lock"));
    assert!(
        acknowledged.len() >= total / 4,
        "{} of {total}",
        acknowledged.len()
    );
    eprintln!(
        "{} of {total} outcomes acknowledged before the shutdown",
        acknowledged.len()
    );

    let server = start_on(rules, data, Transport::default()).await;
    let mut decisions = DecisionServiceClient::new(server.channel().await);
    for outcome in &acknowledged {
        let ack = decisions
            .record_outcome(outcome.clone())
            .await
            .expect("retry");
        assert!(
            ack.into_inner().duplicate,
            "an acknowledged outcome was lost: {outcome:?}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_limit_is_resource_exhausted_and_changes_nothing() {
    let mut transport = Transport::default();
    transport.max_message_bytes = 1024;
    let data = tempfile::tempdir().expect("tempdir");
    let server = start_on(sample_rules(), data, transport).await;
    let mut customers = CustomerServiceClient::new(server.channel().await);
    let mut attributes = ada();
    attributes.insert("segment".into(), string(&"x".repeat(4096)));
    let e = customers
        .upsert(proto::UpsertRequest {
            customer_id: "ada".into(),
            attributes,
        })
        .await
        .expect_err("too large");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("1024"),
        "names the limit: {}",
        e.message()
    );
    assert_eq!(server.node.db().store().len(), 0);
    customers
        .upsert(proto::UpsertRequest {
            customer_id: "ada".into(),
            attributes: ada(),
        })
        .await
        .expect("a message under the limit");
    server.stop().await;
}

/// Every call is counted once, by method and by gRPC's canonical code name, wherever it
/// was refused: by tonic before any handler ran (a message over the limit, a method
/// nobody serves) or by a handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_is_counted_by_method_and_canonical_code() {
    let mut transport = Transport::default();
    transport.max_message_bytes = 1024;
    let data = tempfile::tempdir().expect("tempdir");
    let server = start_on(sample_rules(), data, transport).await;
    let channel = server.channel().await;
    let mut customers = CustomerServiceClient::new(channel.clone());
    let mut decisions = DecisionServiceClient::new(channel.clone());

    let mut attributes = ada();
    attributes.insert("segment".into(), string(&"x".repeat(4096)));
    let e = customers
        .upsert(proto::UpsertRequest {
            customer_id: "ada".into(),
            attributes,
        })
        .await
        .expect_err("too large");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let e = decisions
        .decide(proto::DecideRequest::default())
        .await
        .expect_err("no placement");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    customers
        .upsert(proto::UpsertRequest {
            customer_id: "ada".into(),
            attributes: ada(),
        })
        .await
        .expect("a message under the limit");
    // Paths nobody serves share one label, so a client cannot add series at will.
    for path in [
        "/nextbest.v1.DecisionService/Nope",
        "/no.such.Service/Decide",
    ] {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.expect("ready");
        let e = grpc
            .unary::<proto::PingRequest, proto::PingReply, _>(
                tonic::Request::new(proto::PingRequest {}),
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .expect_err("no such method");
        assert_eq!(e.code(), Code::Unimplemented, "{path}: {e:?}");
    }

    let scraped = server.scrape().await;
    let series = |name: &str| {
        let mut lines: Vec<&str> = scraped
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .collect();
        lines.sort_unstable();
        lines
    };
    assert_eq!(
        series("nextbest_grpc_errors_total"),
        [
            "nextbest_grpc_errors_total{code=\"INVALID_ARGUMENT\",method=\"Decide\"} 1",
            "nextbest_grpc_errors_total{code=\"RESOURCE_EXHAUSTED\",method=\"Upsert\"} 1",
            "nextbest_grpc_errors_total{code=\"UNIMPLEMENTED\",method=\"unknown\"} 2",
        ],
        "{scraped}"
    );
    assert_eq!(
        series("nextbest_grpc_requests_total"),
        [
            "nextbest_grpc_requests_total{code=\"INVALID_ARGUMENT\",method=\"Decide\"} 1",
            "nextbest_grpc_requests_total{code=\"OK\",method=\"Upsert\"} 1",
            "nextbest_grpc_requests_total{code=\"RESOURCE_EXHAUSTED\",method=\"Upsert\"} 1",
            "nextbest_grpc_requests_total{code=\"UNIMPLEMENTED\",method=\"unknown\"} 2",
        ],
        "{scraped}"
    );
    server.stop().await;
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_that_trust_the_certificate_and_only_them() {
    use tonic::transport::{Certificate, ClientTlsConfig};
    let transport = Transport::default()
        .with_tls(&fixture("server.pem"), &fixture("server.key"))
        .expect("tls");
    let data = tempfile::tempdir().expect("tempdir");
    let server = start_on(sample_rules(), data, transport).await;
    let ca = std::fs::read(fixture("ca.pem")).expect("ca");
    let channel = Channel::from_shared(format!("https://{}", server.addr))
        .expect("uri")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name("localhost"),
        )
        .expect("client tls")
        .connect()
        .await
        .expect("a TLS handshake");
    let d = DecisionServiceClient::new(channel)
        .decide(decide_request("nobody", "web.home_banner"))
        .await
        .expect("decide over TLS");
    assert!(!d.into_inner().decision_id.is_empty());

    // Plain HTTP/2 to the TLS port gets no answer (the handshake fails; how the client
    // words that depends on when it notices).
    let plain = Channel::from_shared(format!("http://{}", server.addr))
        .expect("uri")
        .connect()
        .await;
    if let Ok(plain) = plain {
        DecisionServiceClient::new(plain)
            .decide(decide_request("nobody", "web.home_banner"))
            .await
            .expect_err("plain text to a TLS port");
    }
    // A client that does not trust the issuer refuses the server.
    let untrusting = Channel::from_shared(format!("https://{}", server.addr))
        .expect("uri")
        .tls_config(ClientTlsConfig::new().domain_name("localhost"))
        .expect("client tls")
        .connect()
        .await;
    assert!(untrusting.is_err(), "the certificate was not verified");
    server.stop().await;
}

#[test]
fn tls_files_that_are_missing_or_not_a_key_pair_are_refused_by_name() {
    let missing = Transport::default()
        .with_tls(&fixture("nope.pem"), &fixture("server.key"))
        .expect_err("missing");
    assert!(missing.to_string().contains("nope.pem"), "{missing}");
    let swapped = Transport::default()
        .with_tls(&fixture("server.key"), &fixture("server.pem"))
        .expect_err("cert and key swapped");
    assert!(swapped.to_string().contains("server.key"), "{swapped}");
}

/// The sum of a metric's series in a scrape (a histogram's `_count` by that name).
fn total(scrape: &str, name: &str) -> u64 {
    scrape
        .lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .map(|l| {
            let value = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
            value.unwrap_or_else(|| panic!("not a sample: {l}")) as u64
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_drives_every_request_kind_without_errors() {
    use nextbest::loadgen::{self, Config, Load, Mix, Target};
    let server = start().await;
    let catalog = server.node.db().catalog();
    let target = Arc::new(
        Target::connect(&format!("http://{}", server.addr), 2, None, &catalog)
            .await
            .expect("connect"),
    );
    target.populate(50, 8, 7).await.expect("populate");
    assert_eq!(server.node.db().store().len(), 50);
    let mix = Mix::parse("decide=4,batch=2,outcome=2,upsert=1,ping=1").expect("mix");
    for load in [Load::Closed { concurrency: 4 }, Load::Open { rate: 400.0 }] {
        let config = Config {
            mix: mix.clone(),
            load,
            duration: std::time::Duration::from_millis(500),
            warmup: std::time::Duration::from_millis(100),
            customers: 50,
            seed: 7,
        };
        let before = server.scrape().await;
        let report = loadgen::run(Arc::clone(&target), &config).await;
        let table = report.table();

        // What it sent: every kind of the mix (each sent at least once), each answered
        // without an error, in the warm-up too; the kinds add up to the total.
        let ops: Vec<&str> = report.ops.iter().map(|o| o.op).collect();
        assert_eq!(
            ops,
            ["decide", "batch", "outcome", "upsert", "ping"],
            "{table}"
        );
        assert_eq!(report.errors, 0, "{table}");
        assert!(report.ops.iter().all(|o| o.warmup_errors == 0), "{table}");
        let measured: u64 = report.ops.iter().map(|o| o.requests).sum();
        assert_eq!(measured, report.requests, "{table}");
        let sent = |op: &str| {
            let o = report.ops.iter().find(|o| o.op == op).expect("in the mix");
            o.requests + o.warmup
        };
        assert!(report.latency.p50_us > 0.0 && report.latency.p50_us <= report.latency.max_us);
        if let Load::Open { .. } = load {
            // The schedule, not the machine, says how many fall due: 400/s for the
            // 0.6 s of warm-up and measurement. None was dropped.
            let all: u64 = ops.iter().map(|&op| sent(op)).sum();
            assert_eq!((all, report.overloaded), (240, 0), "{table}");
        }

        // What came back: the server counted exactly what the client sent. Every
        // decision (two a batch) wrote a journal record, and so did every upsert and every
        // outcome but a retry (not counted in `nextbest_outcomes_total`); every upsert and
        // outcome was answered OK. A ping leaves no trace.
        server.node.db().sync().expect("sync");
        let after = server.scrape().await;
        let delta = |name: &str| total(&after, name) - total(&before, name);
        let decisions = delta("nextbest_decisions_total");
        assert_eq!(decisions, sent("decide") + 2 * sent("batch"), "{table}");
        let answered = |method: &str| {
            let series = format!(r#"nextbest_grpc_requests_total{{code="OK",method="{method}"}}"#);
            let value = |scrape: &str| {
                scrape
                    .lines()
                    .find_map(|l| l.strip_prefix(&series))
                    .map_or(0, |v| v.trim().parse::<u64>().expect("a count"))
            };
            value(&after) - value(&before)
        };
        assert_eq!(
            answered("RecordOutcome") + answered("Upsert"),
            sent("outcome") + sent("upsert"),
            "{table}"
        );
        assert_eq!(
            delta("nextbest_journal_records_total"),
            decisions + delta("nextbest_outcomes_total") + sent("upsert"),
            "{table}"
        );
    }
    assert_eq!(
        server.node.db().store().len(),
        50,
        "upserts name known customers"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_reloads_good_and_bad_under_full_decide_load_fail_no_decide() {
    const RELOADS: usize = 100;
    const CALLERS: usize = 8;
    let server = start().await;
    let channel = server.channel().await;
    let mut customers = CustomerServiceClient::new(channel.clone());
    customers
        .upsert(proto::UpsertRequest {
            customer_id: "ada".into(),
            attributes: ada(),
        })
        .await
        .expect("upsert");
    let mut admin = AdminServiceClient::new(channel.clone());
    let first = server.node.db().catalog().version.to_string();
    let good_versions = Arc::new(std::sync::Mutex::new(vec![first]));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = (0..CALLERS)
        .map(|i| {
            let mut client = DecisionServiceClient::new(channel.clone());
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let placements = [
                    "call_center.next_best",
                    "email.hero",
                    "web.home_banner",
                    "app.card",
                ];
                let (mut answered, mut versions) = (0u64, std::collections::HashSet::new());
                let mut n = i;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let customer = if n % 2 == 0 { "ada" } else { "" };
                    let d = client
                        .decide(decide_request(customer, placements[n % placements.len()]))
                        .await
                        .expect("no decide fails during reloads")
                        .into_inner();
                    versions.insert(d.catalog_version);
                    answered += 1;
                    n += 1;
                }
                (answered, versions)
            })
        })
        .collect();

    let offers = server.rules.path().join("offers/service.yaml");
    let text = std::fs::read_to_string(&offers).expect("read");
    let mut refused = 0;
    for k in 0..RELOADS {
        let good = k % 2 == 0;
        let content = if good {
            // A new version each time: every good reload changes the catalog.
            format!("{text}\n# reload {k}\n")
        } else {
            text.replacen(
                "id: ",
                "id: x\n    eligibility: customer.agee > 1\n    # ",
                1,
            )
        };
        std::fs::write(&offers, content).expect("write");
        let reply = admin
            .reload(proto::ReloadRequest {})
            .await
            .expect("reload")
            .into_inner();
        assert_eq!(reply.reloaded, good, "{:?}", reply.errors);
        if good {
            good_versions.lock().expect("lock").push(reply.version);
        } else {
            refused += 1;
            assert!(!reply.errors.is_empty());
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let good_versions = good_versions.lock().expect("lock").clone();
    let mut answered = 0;
    let mut seen = std::collections::HashSet::new();
    for caller in callers {
        let (n, versions) = caller.await.expect("caller");
        answered += n;
        seen.extend(versions);
    }
    assert!(
        answered > RELOADS as u64,
        "decides ran throughout: {answered}"
    );
    for version in &seen {
        assert!(
            good_versions.contains(version),
            "{version} is not a good catalog's"
        );
    }
    assert!(seen.len() > 1, "decides saw the catalogs change: {seen:?}");
    assert_eq!(
        server.node.db().catalog().version.to_string(),
        *good_versions.last().expect("one"),
        "the last good catalog is in force"
    );
    let scraped = server.scrape().await;
    let failures = format!("nextbest_reloads_total{{result=\"refused\"}} {refused}");
    assert!(
        scraped.contains(&failures),
        "{failures} missing:\n{scraped}"
    );
    eprintln!(
        "{answered} decides during {RELOADS} reloads ({refused} refused), {} catalogs seen",
        seen.len()
    );
    server.stop().await;
}

type Call = Box<
    dyn Fn(Channel) -> std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>>,
>;

/// One row of the bad-input matrix: a call, the status it must get and a text the
/// message must hold (the field it names).
struct Case {
    rpc: &'static str,
    input: &'static str,
    call: Call,
    code: Code,
    names: &'static str,
}

fn case<F, Fut>(
    rpc: &'static str,
    input: &'static str,
    code: Code,
    names: &'static str,
    call: F,
) -> Case
where
    F: Fn(Channel) -> Fut + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send + 'static,
{
    Case {
        rpc,
        input,
        call: Box::new(move |channel| Box::pin(call(channel))),
        code,
        names,
    }
}

/// A tonic client enforces its own deadline: when it gives up before the server's answer
/// arrives, it says CANCELLED "Timeout expired". For an expired deadline that is as right
/// as the server's DEADLINE_EXCEEDED.
fn gave_up(s: tonic::Status) -> tonic::Status {
    if s.code() == Code::Cancelled && s.message() == "Timeout expired" {
        tonic::Status::deadline_exceeded("deadline passed (the client gave up first)")
    } else {
        s
    }
}

/// `message` with a deadline that has passed by the time it arrives.
fn late<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(std::time::Duration::from_nanos(1));
    request
}

fn with(attributes: &[(&str, proto::Value)]) -> HashMap<String, proto::Value> {
    attributes
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// The counters a refused request must not move.
fn counted_series(scrape: &str) -> Vec<String> {
    let mut lines: Vec<String> = scrape
        .lines()
        .filter(|l| {
            [
                "nextbest_decisions_total",
                "nextbest_offers_shown_total",
                "nextbest_offers_explored_total",
                "nextbest_outcomes_total",
                "nextbest_customers",
                "nextbest_journal_records_total",
                "nextbest_journal_bytes_total",
                "nextbest_decide_seconds_count",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bad_input_matrix_gets_the_right_status_naming_the_field_and_changes_nothing() {
    use proto::OutcomeKind as K;
    let server = start().await;
    let channel = server.channel().await;
    CustomerServiceClient::new(channel.clone())
        .upsert(proto::UpsertRequest {
            customer_id: "ada".into(),
            attributes: ada(),
        })
        .await
        .expect("upsert");
    let d = DecisionServiceClient::new(channel.clone())
        .decide(decide_request("ada", "email.hero"))
        .await
        .expect("decide")
        .into_inner();
    let decision_id = d.decision_id.clone();
    let offer_id = d.offers[0].offer_id.clone();

    let huge = "x".repeat(100_000);
    let too_big = "x".repeat(5 * 1024 * 1024);
    let nan = double(f64::NAN);
    let inf = double(f64::INFINITY);
    let decide = |r: proto::DecideRequest| {
        move |ch: Channel| {
            let r = r.clone();
            async move { DecisionServiceClient::new(ch).decide(r).await.map(drop) }
        }
    };
    let batch = |r: proto::DecideBatchRequest| {
        move |ch: Channel| {
            let r = r.clone();
            async move {
                DecisionServiceClient::new(ch)
                    .decide_batch(r)
                    .await
                    .map(drop)
            }
        }
    };
    let outcome = |o: proto::Outcome| {
        move |ch: Channel| {
            let o = o.clone();
            async move {
                DecisionServiceClient::new(ch)
                    .record_outcome(o)
                    .await
                    .map(drop)
            }
        }
    };
    let upsert = |id: &str, attributes: HashMap<String, proto::Value>| {
        let r = proto::UpsertRequest {
            customer_id: id.into(),
            attributes,
        };
        move |ch: Channel| {
            let r = r.clone();
            async move { CustomerServiceClient::new(ch).upsert(r).await.map(drop) }
        }
    };
    let good_outcome = proto::Outcome {
        decision_id: decision_id.clone(),
        offer_id: offer_id.clone(),
        kind: K::Click as i32,
        ..Default::default()
    };
    let outcomes = |outcomes: Vec<proto::Outcome>| {
        move |ch: Channel| {
            let r = proto::RecordOutcomesRequest {
                outcomes: outcomes.clone(),
            };
            async move {
                DecisionServiceClient::new(ch)
                    .record_outcomes(r)
                    .await
                    .map(drop)
            }
        }
    };
    let now_s = jiff::Timestamp::now().as_second();
    let ts = |seconds: i64, nanos: i32| prost_types::Timestamp { seconds, nanos };
    let timestamp = |seconds: i64, nanos: i32| proto::Value {
        kind: Some(Kind::TimestampValue(ts(seconds, nanos))),
    };
    let unshown = server
        .node
        .db()
        .catalog()
        .offers
        .iter()
        .map(|o| o.id.clone())
        .find(|id| d.offers.iter().all(|s| &s.offer_id != id))
        .expect("an offer the decision did not show");
    let page = |placements: Vec<&str>| proto::DecideBatchRequest {
        customer_id: "ada".into(),
        placements: placements
            .into_iter()
            .map(|p| proto::PlacementRequest {
                placement: p.into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let inline = |attributes| proto::DecideRequest {
        attributes,
        ..decide_request("ada", "app.card")
    };
    let invalid = Code::InvalidArgument;
    let many: HashMap<String, proto::Value> =
        (0..10_000).map(|i| (format!("x{i}"), int(i))).collect();
    let products = proto::Value {
        kind: Some(Kind::StringList(proto::StringList {
            values: (0..2000).map(|i| format!("p{i}")).collect(),
        })),
    };
    let cases = vec![
        case(
            "Decide",
            "no placement",
            invalid,
            "`placement`",
            decide(decide_request("ada", "")),
        ),
        case(
            "Decide",
            "unknown placement",
            Code::NotFound,
            "`web.nope`",
            decide(decide_request("ada", "web.nope")),
        ),
        case(
            "Decide",
            "huge customer id",
            invalid,
            "`customer_id`",
            decide(decide_request(&huge, "app.card")),
        ),
        case(
            "Decide",
            "unknown context attribute",
            invalid,
            "`context.devise`",
            decide(proto::DecideRequest {
                context: with(&[("devise", string("mobile"))]),
                ..decide_request("ada", "app.card")
            }),
        ),
        case(
            "Decide",
            "wrong context type",
            invalid,
            "`context.device`",
            decide(proto::DecideRequest {
                context: with(&[("device", int(3))]),
                ..decide_request("ada", "app.card")
            }),
        ),
        case(
            "Decide",
            "unknown enum value",
            invalid,
            "`context.device`",
            decide(proto::DecideRequest {
                context: with(&[("device", string("fridge"))]),
                ..decide_request("ada", "app.card")
            }),
        ),
        case(
            "Decide",
            "NaN attribute",
            invalid,
            "`customer.monthly_spend`",
            decide(inline(with(&[("monthly_spend", nan.clone())]))),
        ),
        case(
            "Decide",
            "infinite attribute",
            invalid,
            "`customer.monthly_spend`",
            decide(inline(with(&[("monthly_spend", inf.clone())]))),
        ),
        case(
            "Decide",
            "huge string attribute",
            invalid,
            "`customer.language`",
            decide(inline(with(&[("language", string(&huge))]))),
        ),
        case(
            "Decide",
            "too many attributes",
            invalid,
            "unknown attribute `customer.x",
            decide(inline(many.clone())),
        ),
        case(
            "Decide",
            "oversize message",
            Code::ResourceExhausted,
            "4194304",
            decide(inline(with(&[("language", string(&too_big))]))),
        ),
        case(
            "DecideBatch",
            "no placements",
            invalid,
            "`placements`",
            batch(page(vec![])),
        ),
        case(
            "DecideBatch",
            "65 placements",
            invalid,
            "`placements`",
            batch(page(vec!["app.card"; 65])),
        ),
        case(
            "DecideBatch",
            "empty placement",
            invalid,
            "`placements[0].placement`",
            batch(page(vec!["", "app.card"])),
        ),
        case(
            "DecideBatch",
            "unknown second placement",
            Code::NotFound,
            "`web.nope`",
            batch(page(vec!["app.card", "web.nope"])),
        ),
        case(
            "DecideBatch",
            "huge customer id",
            invalid,
            "`customer_id`",
            batch(proto::DecideBatchRequest {
                customer_id: huge.clone(),
                ..page(vec!["app.card"])
            }),
        ),
        case(
            "RecordOutcome",
            "no decision id",
            invalid,
            "`decision_id`",
            outcome(proto::Outcome {
                decision_id: String::new(),
                ..good_outcome.clone()
            }),
        ),
        case(
            "RecordOutcome",
            "decision id not a UUID",
            invalid,
            "`decision_id`",
            outcome(proto::Outcome {
                decision_id: "d-1".into(),
                ..good_outcome.clone()
            }),
        ),
        case(
            "RecordOutcome",
            "no offer id",
            invalid,
            "`offer_id`",
            outcome(proto::Outcome {
                offer_id: String::new(),
                ..good_outcome.clone()
            }),
        ),
        case(
            "RecordOutcome",
            "unknown offer",
            Code::NotFound,
            "`fiber_broadbnd`",
            outcome(proto::Outcome {
                offer_id: "fiber_broadbnd".into(),
                ..good_outcome.clone()
            }),
        ),
        case(
            "RecordOutcome",
            "no kind",
            invalid,
            "`kind`",
            outcome(proto::Outcome {
                kind: K::Unspecified as i32,
                ..good_outcome.clone()
            }),
        ),
        case(
            "RecordOutcome",
            "kind out of range",
            invalid,
            "`kind`",
            outcome(proto::Outcome {
                kind: 99,
                ..good_outcome.clone()
            }),
        ),
        case(
            "RecordOutcome",
            "NaN value",
            invalid,
            "`value`",
            outcome(proto::Outcome {
                value: Some(f64::NAN),
                ..good_outcome.clone()
            }),
        ),
        case(
            "RecordOutcome",
            "infinite value",
            invalid,
            "`value`",
            outcome(proto::Outcome {
                value: Some(f64::NEG_INFINITY),
                ..good_outcome.clone()
            }),
        ),
        case(
            "RecordOutcome",
            "huge channel",
            invalid,
            "`channel`",
            outcome(proto::Outcome {
                channel: huge.clone(),
                ..good_outcome.clone()
            }),
        ),
        case(
            "RecordOutcomes",
            "second of two bad",
            invalid,
            "outcomes[1]: `value`",
            {
                let r = proto::RecordOutcomesRequest {
                    outcomes: vec![
                        good_outcome.clone(),
                        proto::Outcome {
                            value: Some(f64::NAN),
                            ..good_outcome.clone()
                        },
                    ],
                };
                move |ch: Channel| {
                    let r = r.clone();
                    async move {
                        DecisionServiceClient::new(ch)
                            .record_outcomes(r)
                            .await
                            .map(drop)
                    }
                }
            },
        ),
        case(
            "Upsert",
            "no customer id",
            invalid,
            "`customer_id`",
            upsert("", ada()),
        ),
        case(
            "Upsert",
            "huge customer id",
            invalid,
            "`customer_id`",
            upsert(&huge, ada()),
        ),
        case(
            "Upsert",
            "unknown attribute",
            invalid,
            "`customer.agee`",
            upsert("ada", with(&[("agee", int(3))])),
        ),
        case(
            "Upsert",
            "wrong type",
            invalid,
            "`customer.age`",
            upsert("ada", with(&[("age", string("old"))])),
        ),
        case(
            "Upsert",
            "NaN",
            invalid,
            "`customer.monthly_spend`",
            upsert("ada", with(&[("monthly_spend", nan.clone())])),
        ),
        case(
            "Upsert",
            "infinity",
            invalid,
            "`customer.monthly_spend`",
            upsert("ada", with(&[("monthly_spend", inf.clone())])),
        ),
        case(
            "Upsert",
            "huge string",
            invalid,
            "`customer.language`",
            upsert("ada", with(&[("language", string(&huge))])),
        ),
        case(
            "Upsert",
            "set of 2,000 members",
            invalid,
            "`customer.products`",
            upsert("ada", with(&[("products", products.clone())])),
        ),
        case(
            "Upsert",
            "too many attributes",
            invalid,
            "unknown attribute `customer.x",
            upsert("ada", many.clone()),
        ),
        case(
            "Upsert",
            "a huge attribute name",
            invalid,
            "unknown attribute `customer.xxxx",
            upsert("ada", with(&[(huge.as_str(), int(1))])),
        ),
        case(
            "Upsert",
            "oversize message",
            Code::ResourceExhausted,
            "4194304",
            upsert("ada", with(&[("language", string(&too_big))])),
        ),
        case(
            "Get",
            "no customer id",
            invalid,
            "`customer_id`",
            |ch: Channel| async move {
                CustomerServiceClient::new(ch)
                    .get(proto::GetRequest::default())
                    .await
                    .map(drop)
            },
        ),
        case(
            "Get",
            "unknown customer",
            Code::NotFound,
            "`zed`",
            |ch: Channel| async move {
                CustomerServiceClient::new(ch)
                    .get(proto::GetRequest {
                        customer_id: "zed".into(),
                        history_limit: 5,
                    })
                    .await
                    .map(drop)
            },
        ),
        case(
            "Forget",
            "no customer id",
            invalid,
            "`customer_id`",
            |ch: Channel| async move {
                CustomerServiceClient::new(ch)
                    .forget(proto::ForgetRequest::default())
                    .await
                    .map(drop)
            },
        ),
        case("Forget", "huge customer id", invalid, "`customer_id`", {
            let huge = huge.clone();
            move |ch: Channel| {
                let customer_id = huge.clone();
                async move {
                    CustomerServiceClient::new(ch)
                        .forget(proto::ForgetRequest { customer_id })
                        .await
                        .map(drop)
                }
            }
        }),
        // A deadline that passes in flight (1 ns): the server, which still gets the call,
        // refuses to act on it (DEADLINE_EXCEEDED, see
        // `server::tests::a_call_whose_deadline_passed_does_nothing`), unless the tonic
        // client gave up first (CANCELLED "Timeout expired", which `gave_up` reads as
        // the same); either way the state, journal and counters below are unchanged.
        case(
            "Decide",
            "expired deadline",
            Code::DeadlineExceeded,
            "deadline",
            |ch: Channel| async move {
                DecisionServiceClient::new(ch)
                    .decide(late(decide_request("ada", "app.card")))
                    .await
                    .map(drop)
                    .map_err(gave_up)
            },
        ),
        case(
            "DecideBatch",
            "expired deadline",
            Code::DeadlineExceeded,
            "deadline",
            move |ch: Channel| async move {
                DecisionServiceClient::new(ch)
                    .decide_batch(late(proto::DecideBatchRequest {
                        customer_id: "ada".into(),
                        placements: vec![proto::PlacementRequest {
                            placement: "app.card".into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }))
                    .await
                    .map(drop)
                    .map_err(gave_up)
            },
        ),
        case(
            "RecordOutcome",
            "expired deadline",
            Code::DeadlineExceeded,
            "deadline",
            {
                let o = proto::Outcome {
                    kind: K::Accept as i32,
                    ..good_outcome.clone()
                };
                move |ch: Channel| {
                    let o = o.clone();
                    async move {
                        DecisionServiceClient::new(ch)
                            .record_outcome(late(o))
                            .await
                            .map(drop)
                            .map_err(gave_up)
                    }
                }
            },
        ),
        case(
            "Upsert",
            "expired deadline",
            Code::DeadlineExceeded,
            "deadline",
            |ch: Channel| async move {
                CustomerServiceClient::new(ch)
                    .upsert(late(proto::UpsertRequest {
                        customer_id: "ada".into(),
                        attributes: with(&[("language", string("late"))]),
                    }))
                    .await
                    .map(drop)
                    .map_err(gave_up)
            },
        ),
        case(
            "Forget",
            "expired deadline",
            Code::DeadlineExceeded,
            "deadline",
            |ch: Channel| async move {
                CustomerServiceClient::new(ch)
                    .forget(late(proto::ForgetRequest {
                        customer_id: "ada".into(),
                    }))
                    .await
                    .map(drop)
                    .map_err(gave_up)
            },
        ),
        // Times, checked against their documented windows (docs/data.md).
        case(
            "RecordOutcome",
            "at 800 days ahead",
            invalid,
            "`at`",
            outcome(proto::Outcome {
                at: Some(ts(now_s + 800 * 86_400, 0)),
                ..good_outcome.clone()
            }),
        ),
        case(
            "RecordOutcome",
            "at in milliseconds given as seconds",
            invalid,
            "`at`",
            outcome(proto::Outcome {
                at: Some(ts(now_s * 1000, 0)),
                ..good_outcome.clone()
            }),
        ),
        case(
            "RecordOutcome",
            "at older than the history keeps",
            invalid,
            "`at`",
            outcome(proto::Outcome {
                at: Some(ts(86_400, 0)),
                ..good_outcome.clone()
            }),
        ),
        case(
            "RecordOutcome",
            "at with nanos out of range",
            invalid,
            "`at`",
            outcome(proto::Outcome {
                at: Some(ts(now_s, 1_000_000_000)),
                ..good_outcome.clone()
            }),
        ),
        case(
            "RecordOutcome",
            "at that overflows milliseconds",
            invalid,
            "`at`",
            outcome(proto::Outcome {
                at: Some(ts(i64::MAX, 0)),
                ..good_outcome.clone()
            }),
        ),
        case(
            "RecordOutcomes",
            "the second one 800 days ahead",
            invalid,
            "outcomes[1]: `at`",
            outcomes(vec![
                good_outcome.clone(),
                proto::Outcome {
                    at: Some(ts(now_s + 800 * 86_400, 0)),
                    ..good_outcome.clone()
                },
            ]),
        ),
        case(
            "Decide",
            "at in 1970",
            invalid,
            "`at`",
            decide(proto::DecideRequest {
                at: Some(ts(now_s / 1000, 0)),
                ..decide_request("ada", "app.card")
            }),
        ),
        case(
            "Decide",
            "at in milliseconds given as seconds",
            invalid,
            "`at`",
            decide(proto::DecideRequest {
                at: Some(ts(now_s * 1000, 0)),
                ..decide_request("ada", "app.card")
            }),
        ),
        case(
            "DecideBatch",
            "at with negative nanos",
            invalid,
            "`at`",
            batch(proto::DecideBatchRequest {
                at: Some(ts(now_s, -1)),
                ..page(vec!["app.card"])
            }),
        ),
        case(
            "Upsert",
            "timestamp attribute in year 318857",
            invalid,
            "`customer.last_contact`",
            upsert(
                "ada",
                with(&[("last_contact", timestamp(10_i64.pow(13), 0))]),
            ),
        ),
        case(
            "Upsert",
            "timestamp attribute with nanos out of range",
            invalid,
            "`customer.last_contact`",
            upsert(
                "ada",
                with(&[("last_contact", timestamp(now_s, 2_000_000_000))]),
            ),
        ),
        case(
            "Upsert",
            "timestamp attribute as text in year 0",
            invalid,
            "`customer.contract_end`",
            upsert(
                "ada",
                with(&[("contract_end", string("0000-06-01T00:00:00Z"))]),
            ),
        ),
        case(
            "Decide",
            "inline timestamp attribute out of range",
            invalid,
            "`customer.last_contact`",
            decide(inline(with(&[(
                "last_contact",
                timestamp(-10_i64.pow(12), 0),
            )]))),
        ),
        // An outcome must name an offer its decision showed.
        case(
            "RecordOutcome",
            "an offer the decision did not show",
            invalid,
            "`offer_id`",
            outcome(proto::Outcome {
                offer_id: unshown.clone(),
                kind: K::Accept as i32,
                ..good_outcome.clone()
            }),
        ),
        case(
            "RecordOutcomes",
            "the first one of an offer the decision did not show",
            invalid,
            "outcomes[0]: `offer_id`",
            outcomes(vec![
                proto::Outcome {
                    offer_id: unshown.clone(),
                    kind: K::Impression as i32,
                    ..good_outcome.clone()
                },
                good_outcome.clone(),
            ]),
        ),
        case(
            "RecordOutcomes",
            "1,001 outcomes",
            invalid,
            "`outcomes`",
            outcomes(vec![good_outcome.clone(); 1001]),
        ),
        case(
            "RecordOutcome",
            "a decision id that is no UUIDv7",
            invalid,
            "`decision_id`",
            outcome(proto::Outcome {
                decision_id: "0b9b62a4-3c1e-4f6e-9a59-2d1f3c7e8a10".into(),
                ..good_outcome.clone()
            }),
        ),
        case(
            "RecordOutcome",
            "another customer than the decision's",
            invalid,
            "`customer_id`",
            outcome(proto::Outcome {
                customer_id: "grace".into(),
                ..good_outcome.clone()
            }),
        ),
        case(
            "RecordOutcome",
            "another channel than the decision's",
            invalid,
            "`channel`",
            outcome(proto::Outcome {
                channel: "web".into(),
                ..good_outcome.clone()
            }),
        ),
        case(
            "RecordOutcome",
            "a channel no placement has",
            invalid,
            "`channel`",
            outcome(proto::Outcome {
                channel: "fax".into(),
                ..good_outcome.clone()
            }),
        ),
        // Slots: 1 to 64, or unset.
        case(
            "Decide",
            "zero slots",
            invalid,
            "`slots`",
            decide(proto::DecideRequest {
                slots: Some(0),
                ..decide_request("ada", "app.card")
            }),
        ),
        case(
            "Decide",
            "65 slots",
            invalid,
            "`slots`",
            decide(proto::DecideRequest {
                slots: Some(65),
                ..decide_request("ada", "app.card")
            }),
        ),
        case(
            "DecideBatch",
            "zero slots in the second placement",
            invalid,
            "`placements[1].slots`",
            batch(proto::DecideBatchRequest {
                placements: vec![
                    proto::PlacementRequest {
                        placement: "app.card".into(),
                        ..Default::default()
                    },
                    proto::PlacementRequest {
                        placement: "web.home_banner".into(),
                        slots: Some(0),
                        ..Default::default()
                    },
                ],
                ..page(vec![])
            }),
        ),
        // The channel is the placement's.
        case(
            "Decide",
            "a context channel other than the placement's",
            invalid,
            "`context.channel`",
            decide(proto::DecideRequest {
                context: with(&[("channel", string("web"))]),
                ..decide_request("ada", "call_center.next_best")
            }),
        ),
        case(
            "DecideBatch",
            "a placement's context channel other than its own",
            invalid,
            "`placements[0].context.channel`",
            batch(proto::DecideBatchRequest {
                placements: vec![proto::PlacementRequest {
                    placement: "email.hero".into(),
                    context: with(&[("channel", string("app"))]),
                    ..Default::default()
                }],
                ..page(vec![])
            }),
        ),
        case(
            "DecideBatch",
            "a shared context channel other than a placement's",
            invalid,
            "`context.channel`",
            batch(proto::DecideBatchRequest {
                context: with(&[("channel", string("web"))]),
                ..page(vec!["web.home_banner", "app.card"])
            }),
        ),
        // What a caller sent is shown escaped.
        case(
            "Upsert",
            "an attribute name with a NUL and a newline",
            invalid,
            "`customer.agé\\0\\n`",
            upsert("ada", with(&[("agé\0\n", int(3))])),
        ),
        case(
            "Decide",
            "a placement with a newline",
            Code::NotFound,
            "`web\\nspoofed: ok`",
            decide(decide_request("ada", "web\nspoofed: ok")),
        ),
        case(
            "RecordOutcome",
            "an offer id with a carriage return",
            Code::NotFound,
            "`x\\r`",
            outcome(proto::Outcome {
                offer_id: "x\r".into(),
                ..good_outcome.clone()
            }),
        ),
    ];

    server.node.db().sync().expect("sync");
    let get_ada = || async {
        CustomerServiceClient::new(channel.clone())
            .get(proto::GetRequest {
                customer_id: "ada".into(),
                history_limit: 0,
            })
            .await
            .expect("get")
            .into_inner()
    };
    let before = (
        get_ada().await,
        server.node.db().store().len(),
        counted_series(&server.scrape().await),
    );
    let records = || {
        server
            .node
            .db()
            .journal_stats()
            .records
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let records_before = records();
    let mut failures = Vec::new();
    for c in &cases {
        match (c.call)(channel.clone()).await {
            Ok(()) => failures.push(format!("{} / {}: succeeded", c.rpc, c.input)),
            Err(s) if s.code() != c.code || !s.message().contains(c.names) => {
                failures.push(format!(
                    "{} / {}: want {:?} naming {}, got {:?}: {}",
                    c.rpc,
                    c.input,
                    c.code,
                    c.names,
                    s.code(),
                    s.message().chars().take(200).collect::<String>()
                ))
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    server.node.db().sync().expect("sync");
    assert_eq!(records(), records_before, "nothing reached the journal");
    let after = (
        get_ada().await,
        server.node.db().store().len(),
        counted_series(&server.scrape().await),
    );
    assert_eq!(after, before, "no change to state or counters");
    eprintln!("{} bad inputs, each refused as expected", cases.len());
    server.stop().await;
}

/// A small tmpfs at a temporary directory, unmounted when dropped.
struct SmallDisk {
    dir: Option<tempfile::TempDir>,
}

impl SmallDisk {
    /// `None` where this user may not mount (the test then says it did not run).
    fn mount(megabytes: u32) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(SmallDisk { dir: Some(dir) })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = std::process::Command::new("umount")
                .arg(dir.path())
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_keeps_deciding_and_heals() {
    // A read-only disk: `a_read_only_disk_refuses_writes_keeps_deciding_and_recovers`.
    let Some(disk) = SmallDisk::mount(16) else {
        return not_run("mounting a tmpfs needs root");
    };
    let mount = disk.dir.as_ref().expect("mounted").path().to_path_buf();
    // The server's data directory lives on the small disk; the harness owns a TempDir
    // inside it.
    let data = tempfile::tempdir_in(&mount).expect("tempdir");
    let server = start_on(sample_rules(), data, Transport::default()).await;
    let channel = server.channel().await;
    let mut customers = CustomerServiceClient::new(channel.clone());
    let mut decisions = DecisionServiceClient::new(channel.clone());
    let upsert = |language: String| proto::UpsertRequest {
        customer_id: "ada".into(),
        attributes: [
            ("age".to_string(), int(38)),
            ("language".to_string(), string(&language)),
        ]
        .into(),
    };
    let language = |customers: &mut CustomerServiceClient<Channel>| {
        let mut customers = customers.clone();
        async move {
            let got = customers
                .get(proto::GetRequest {
                    customer_id: "ada".into(),
                    history_limit: 0,
                })
                .await
                .expect("get")
                .into_inner();
            match got.attributes.get("language").and_then(|v| v.kind.clone()) {
                Some(Kind::StringValue(s)) => s,
                other => panic!("{other:?}"),
            }
        }
    };
    customers.upsert(upsert("en".into())).await.expect("upsert");

    for round in 0..2 {
        let trouble = format!("full disk {round}");
        let filler = mount.join("filler");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&filler).expect("filler");
            while f.write_all(&[7u8; 1 << 20]).is_ok() {}
        }
        // Writes of 10 KB each reach the disk within a few tries and are refused.
        let mut refused = None;
        let mut last_acknowledged = language(&mut customers).await;
        for k in 0..40 {
            let value = format!("{k}{}", "x".repeat(10_000));
            match customers.upsert(upsert(value.clone())).await {
                Ok(_) => last_acknowledged = value,
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        let refused = refused.unwrap_or_else(|| panic!("{trouble}: no write was refused"));
        assert_eq!(refused.code(), Code::Unavailable, "{trouble}: {refused:?}");
        assert!(
            refused.message().contains("nothing was acknowledged"),
            "{refused:?}"
        );
        let e = customers
            .upsert(upsert("de".into()))
            .await
            .expect_err("still refused");
        assert_eq!(e.code(), Code::Unavailable);
        // Decisions are still answered, from memory, and counted as not logged.
        let d = decisions
            .decide(decide_request("ada", "call_center.next_best"))
            .await
            .expect("decide while the disk is in trouble");
        assert!(!d.into_inner().offers.is_empty());
        let scraped = server.scrape().await;
        assert!(scraped.contains("nextbest_journal_failed 1"), "{scraped}");
        assert!(
            !scraped.contains("nextbest_decisions_unlogged_total 0"),
            "{scraped}"
        );

        // The disk recovers; within a few heal intervals writes are taken again.
        std::fs::remove_file(&filler).expect("free the disk");
        let given_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !server.scrape().await.contains("nextbest_journal_failed 0") {
            assert!(
                std::time::Instant::now() < given_up,
                "{trouble}: never healed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        // Healed from what is durable: the refused writes left no trace.
        assert!(
            language(&mut customers).await == last_acknowledged,
            "{trouble}: a refused write is visible after healing"
        );
        customers
            .upsert(upsert("fr".into()))
            .await
            .expect("writes are taken again");
        assert_eq!(language(&mut customers).await, "fr");
        eprintln!("{trouble}: refused, decided from memory, healed");
    }
    // Everything acknowledged is durable: a restart sees the last value.
    let (rules, data) = server.shut_down().await;
    let server = start_on(rules, data, Transport::default()).await;
    let mut customers = CustomerServiceClient::new(server.channel().await);
    assert_eq!(language(&mut customers).await, "fr");
    let (_rules, data) = server.shut_down().await;
    drop(data);
    drop(disk);
}

/// An ext4 filesystem in a file, on a loop device, mounted at a temporary directory with
/// `errors=remount-ro`; unmounted and detached when dropped.
struct ExtDisk {
    mount: Option<tempfile::TempDir>,
    _image: tempfile::TempDir,
    device: String,
}

fn sh(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl ExtDisk {
    /// `None` where this user may not make one (no root, no loop devices).
    fn mount(megabytes: u32) -> Option<ExtDisk> {
        let image = tempfile::tempdir().ok()?;
        let file = image.path().join("disk.img");
        std::fs::File::create(&file)
            .ok()?
            .set_len(u64::from(megabytes) << 20)
            .ok()?;
        let file = file.to_str()?;
        sh("mkfs.ext4", &["-q", "-F", file])?;
        let device = sh("losetup", &["-f", "--show", file])?;
        let disk = ExtDisk {
            mount: Some(tempfile::tempdir().ok()?),
            _image: image,
            device,
        };
        // A loop device may keep the read-only flag of an earlier user.
        sh("blockdev", &["--setrw", &disk.device])?;
        disk.attach().then_some(disk)
    }

    fn path(&self) -> &Path {
        self.mount.as_ref().expect("mounted").path()
    }

    fn attach(&self) -> bool {
        let path = self.path().to_str().expect("utf-8");
        sh("mount", &["-o", "errors=remount-ro", &self.device, path]).is_some()
    }

    /// What the kernel does on a metadata error: the filesystem turns read-only under
    /// the running server, open files and all.
    fn fail(&self) {
        let name = self.device.trim_start_matches("/dev/");
        std::fs::write(format!("/sys/fs/ext4/{name}/trigger_fs_error"), "1")
            .expect("trigger an ext4 error");
    }

    /// What an operator does: unmount, check, mount again.
    fn repair(&self) {
        let path = self.path().to_str().expect("utf-8");
        sh("umount", &[path]).expect("umount");
        // e2fsck exits 1 when it corrected something.
        let status = std::process::Command::new("e2fsck")
            .args(["-fy", &self.device])
            .output()
            .expect("e2fsck")
            .status
            .code();
        assert!(matches!(status, Some(0 | 1)), "e2fsck: {status:?}");
        assert!(self.attach(), "mount again");
    }
}

impl Drop for ExtDisk {
    fn drop(&mut self) {
        if let Some(mount) = self.mount.take() {
            let _ = sh("umount", &[mount.path().to_str().unwrap_or("")]);
        }
        let _ = sh("losetup", &["-d", &self.device]);
    }
}

/// Waits until the node says its journal works again.
async fn healed(server: &Server, what: &str) {
    let given_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !server.scrape().await.contains("nextbest_journal_failed 0") {
        assert!(std::time::Instant::now() < given_up, "{what}: never healed");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// On a read-only disk: a write is refused with UNAVAILABLE, saying nothing was
/// acknowledged; a decision is still answered; the journal is reported failed.
async fn refused_and_deciding(
    server: &Server,
    channel: Channel,
    write: proto::UpsertRequest,
    what: &str,
) {
    let e = CustomerServiceClient::new(channel.clone())
        .upsert(write)
        .await
        .expect_err("a write to a read-only disk");
    assert_eq!(e.code(), Code::Unavailable, "{what}: {e:?}");
    assert!(e.message().contains("nothing was acknowledged"), "{e:?}");
    let d = DecisionServiceClient::new(channel)
        .decide(decide_request("ada", "call_center.next_best"))
        .await
        .expect("decide on a read-only disk");
    assert!(!d.into_inner().offers.is_empty());
    assert!(
        server.scrape().await.contains("nextbest_journal_failed 1"),
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_disk_refuses_writes_keeps_deciding_and_recovers() {
    let Some(disk) = ExtDisk::mount(64) else {
        return not_run("a loop-mounted ext4 needs root and loop devices");
    };
    let data = tempfile::tempdir_in(disk.path()).expect("tempdir");
    let server = start_on(sample_rules(), data, Transport::default()).await;
    let channel = server.channel().await;
    let mut customers = CustomerServiceClient::new(channel.clone());
    let upsert = |language: &str| proto::UpsertRequest {
        customer_id: "ada".into(),
        attributes: [
            ("age".to_string(), int(38)),
            ("language".to_string(), string(language)),
        ]
        .into(),
    };
    let language = |channel: Channel| async move {
        let got = CustomerServiceClient::new(channel)
            .get(proto::GetRequest {
                customer_id: "ada".into(),
                history_limit: 0,
            })
            .await
            .expect("get")
            .into_inner();
        match got.attributes.get("language").and_then(|v| v.kind.clone()) {
            Some(Kind::StringValue(s)) => s,
            other => panic!("{other:?}"),
        }
    };
    customers.upsert(upsert("en")).await.expect("upsert");
    customers.upsert(upsert("de")).await.expect("upsert");

    // 1. The kernel turns the filesystem read-only (as on a metadata error): writes are
    // refused, nothing acknowledged is lost, decisions go on from memory. The operator
    // stops the node, checks and mounts the disk again, and starts it.
    disk.fail();
    refused_and_deciding(
        &server,
        channel.clone(),
        upsert("xx"),
        "emergency read-only",
    )
    .await;
    let (rules, data, _closed) = server.shut_down_anyway().await;
    disk.repair();
    let server = start_on(rules, data, Transport::default()).await;
    let channel = server.channel().await;
    assert_eq!(
        language(channel.clone()).await,
        "de",
        "every acknowledged write, no refused one"
    );
    let mut customers = CustomerServiceClient::new(channel.clone());
    customers
        .upsert(upsert("fr"))
        .await
        .expect("writes after the repair");

    // 2. The data directory turns read-only under the running node (every file and
    // directory made immutable) and then writable again: the node heals by itself.
    let dir = server.data.path().to_str().expect("utf-8").to_string();
    sh("chattr", &["-R", "+i", &dir]).expect("chattr +i");
    refused_and_deciding(
        &server,
        channel.clone(),
        upsert("xx"),
        "immutable data directory",
    )
    .await;
    sh("chattr", &["-R", "-i", &dir]).expect("chattr -i");
    healed(&server, "immutable data directory").await;
    assert_eq!(
        language(channel.clone()).await,
        "fr",
        "the refused write left no trace"
    );
    customers
        .upsert(upsert("it"))
        .await
        .expect("writes are taken again");
    let (rules, data) = server.shut_down().await;
    let server = start_on(rules, data, Transport::default()).await;
    assert_eq!(language(server.channel().await).await, "it");
    let (_rules, data) = server.shut_down().await;
    drop(data);
    drop(disk);
}

/// Thaws a frozen filesystem when dropped, so a failing test cannot leave it frozen.
struct Frozen(String);

impl Frozen {
    fn freeze(path: &Path) -> Frozen {
        let path = path.to_str().expect("utf-8").to_string();
        sh("fsfreeze", &["-f", &path]).expect("fsfreeze -f");
        Frozen(path)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = sh("fsfreeze", &["-u", &self.0]);
    }
}

/// A write stuck on a frozen disk runs past `--request-timeout`: the caller gets
/// CANCELLED while decisions go on; once the disk thaws, the write completes after all,
/// and retrying it is safe (counted once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_the_request_timeout_is_cancelled_and_its_retry_counts_once() {
    let Some(disk) = ExtDisk::mount(64) else {
        return not_run("a loop-mounted ext4 needs root and loop devices");
    };
    let data = tempfile::tempdir_in(disk.path()).expect("tempdir");
    let mut transport = Transport::default();
    transport.request_timeout = std::time::Duration::from_millis(300);
    let server = start_on(sample_rules(), data, transport).await;
    let channel = server.channel().await;
    let mut customers = CustomerServiceClient::new(channel.clone());
    let mut decisions = DecisionServiceClient::new(channel.clone());
    customers
        .upsert(proto::UpsertRequest {
            customer_id: "ada".into(),
            attributes: ada(),
        })
        .await
        .expect("upsert");
    let d = decisions
        .decide(decide_request("ada", "email.hero"))
        .await
        .expect("decide")
        .into_inner();
    let outcome = proto::Outcome {
        decision_id: d.decision_id.clone(),
        offer_id: d.offers[0].offer_id.clone(),
        kind: proto::OutcomeKind::Impression as i32,
        ..Default::default()
    };

    let frozen = Frozen::freeze(disk.path());
    let started = std::time::Instant::now();
    let e = decisions
        .record_outcome(outcome.clone())
        .await
        .expect_err("an fsync that cannot finish");
    assert_eq!(e.code(), Code::Cancelled, "{e:?}");
    assert!(e.message().contains("Timeout expired"), "{e:?}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    let answered = decisions
        .decide(decide_request("ada", "app.card"))
        .await
        .expect("decide while the disk is frozen");
    assert!(!answered.into_inner().offers.is_empty());
    drop(frozen);

    // The stuck write went through once the disk thawed: the retry is recognised.
    let retry = decisions
        .record_outcome(outcome)
        .await
        .expect("the retry")
        .into_inner();
    assert!(
        retry.duplicate,
        "the cancelled call's write was applied after all"
    );
    let history = customers
        .get(proto::GetRequest {
            customer_id: "ada".into(),
            history_limit: 10,
        })
        .await
        .expect("get")
        .into_inner()
        .history;
    assert_eq!(
        history.len(),
        1,
        "one impression, counted once: {history:?}"
    );
    let (_rules, data) = server.shut_down().await;
    drop(data);
    drop(disk);
}

/// A disk that stops taking writes (frozen, as a stalled or saturated disk is) with
/// writers piled up behind it, the journal's queue full: no request thread waits on
/// them. Decide, health and `/metrics` answer as before (a decision the full queue cannot
/// take is answered and counted unlogged); the writes complete once the disk thaws.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_disk_with_writers_piled_up_stalls_no_decide_health_or_metrics() {
    use std::time::{Duration, Instant};
    let Some(disk) = ExtDisk::mount(64) else {
        not_run("a loop-mounted ext4 needs root and loop devices");
        return;
    };
    let data = tempfile::tempdir_in(disk.path()).expect("tempdir");
    let options = nextbest::db::DbOptions {
        writer: nextbest::storage::WriterOptions {
            queue: 16,
            ..Default::default()
        },
        ..Default::default()
    };
    let server = start_with(sample_rules(), data, Transport::default(), options).await;
    let channel = server.channel().await;
    CustomerServiceClient::new(channel.clone())
        .upsert(proto::UpsertRequest {
            customer_id: "ada".into(),
            attributes: ada(),
        })
        .await
        .expect("upsert");
    // Every answer is awaited with a bound: a hang fails the test instead of stalling it.
    let bound = Duration::from_secs(10);
    let decide = |placement: &'static str| {
        let mut client = DecisionServiceClient::new(channel.clone());
        async move {
            let started = Instant::now();
            tokio::time::timeout(bound, client.decide(decide_request("ada", placement)))
                .await
                .unwrap_or_else(|_| panic!("Decide on {placement} hung"))
                .expect("decide");
            started.elapsed()
        }
    };
    let mut before = Vec::new();
    for _ in 0..20 {
        before.push(decide("call_center.next_best").await);
    }

    let frozen = Frozen::freeze(disk.path());
    let writers: Vec<_> = (0..64)
        .map(|i| {
            let mut client = CustomerServiceClient::new(channel.clone());
            tokio::spawn(async move {
                client
                    .upsert(proto::UpsertRequest {
                        customer_id: format!("writer-{i}"),
                        attributes: with(&[("age", int(30 + i))]),
                    })
                    .await
            })
        })
        .collect();
    // Writers fill the queue, then wait for room.
    let given_up = Instant::now() + Duration::from_secs(20);
    while server
        .node
        .db()
        .journal_stats()
        .waits
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(
            Instant::now() < given_up,
            "the writers never filled the queue"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut during = Vec::new();
    for placement in [
        "call_center.next_best",
        "email.hero",
        "web.home_banner",
        "app.card",
    ]
    .iter()
    .cycle()
    .take(40)
    {
        during.push(decide(placement).await);
    }
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = tokio::time::timeout(
        bound,
        health.check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .expect("health hung")
    .expect("health")
    .into_inner()
    .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let scrape = tokio::time::timeout(bound, server.scrape())
        .await
        .expect("/metrics hung");
    let unlogged = scrape
        .lines()
        .find_map(|l| l.strip_prefix("nextbest_decisions_unlogged_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("the unlogged counter");
    assert!(
        unlogged > 0,
        "the full queue refused decision records: {unlogged}"
    );
    assert!(
        writers.iter().all(|w| !w.is_finished()),
        "no write is acknowledged while the disk is frozen"
    );
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    eprintln!(
        "Decide median {:?} before, {:?} with the disk frozen and {} writers waiting ({} decisions unlogged)",
        median(before),
        median(during),
        writers.len(),
        unlogged
    );
    drop(frozen);
    for w in writers {
        tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("the write completes after the thaw")
            .expect("writer task")
            .expect("acknowledged");
    }
    let (_rules, data) = server.shut_down().await;
    drop(data);
    drop(disk);
}

/// A stored record that passes its checksum but does not decode (a format skew after an
/// upgrade) refuses that customer's reads and writes with DATA_LOSS, counted; everyone
/// else is served, and forgetting the customer still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_record_refuses_its_customer_and_no_one_else() {
    let server = start().await;
    let channel = server.channel().await;
    let mut customers = CustomerServiceClient::new(channel.clone());
    let mut decisions = DecisionServiceClient::new(channel.clone());
    customers
        .upsert(proto::UpsertRequest {
            customer_id: "ada".into(),
            attributes: ada(),
        })
        .await
        .expect("upsert");
    // An unterminated varint where the record's sequence number should be.
    server
        .node
        .db()
        .store()
        .insert_packed("skewed", &[0xff, 0xff]);
    let before = counted_series(&server.scrape().await);

    let refused = |what: &str, result: Result<(), tonic::Status>| {
        let e = result.expect_err(what);
        assert_eq!(e.code(), Code::DataLoss, "{what}: {e:?}");
        assert!(
            e.message()
                .starts_with("the stored record of customer `skewed` cannot be decoded (")
                && e.message()
                    .ends_with("); it is refused until repaired or forgotten"),
            "{what}: {}",
            e.message()
        );
    };
    let outcome = proto::Outcome {
        decision_id: uuid::Uuid::now_v7().to_string(),
        offer_id: "fiber_broadband".into(),
        kind: proto::OutcomeKind::Click as i32,
        customer_id: "skewed".into(),
        channel: "web".into(),
        ..Default::default()
    };
    refused(
        "Decide",
        decisions
            .decide(decide_request("skewed", "call_center.next_best"))
            .await
            .map(drop),
    );
    refused(
        "Decide with attributes",
        decisions
            .decide(proto::DecideRequest {
                attributes: with(&[("age", int(40))]),
                ..decide_request("skewed", "call_center.next_best")
            })
            .await
            .map(drop),
    );
    refused(
        "Get",
        customers
            .get(proto::GetRequest {
                customer_id: "skewed".into(),
                history_limit: 0,
            })
            .await
            .map(drop),
    );
    refused(
        "Upsert",
        customers
            .upsert(proto::UpsertRequest {
                customer_id: "skewed".into(),
                attributes: ada(),
            })
            .await
            .map(drop),
    );
    refused(
        "RecordOutcome",
        decisions.record_outcome(outcome.clone()).await.map(drop),
    );
    let scrape = server.scrape().await;
    assert_eq!(
        counted_series(&scrape),
        before,
        "refused: nothing decided, logged or stored"
    );
    assert!(
        scrape.contains("\nnextbest_undecodable_records_total 5\n"),
        "five refused reads counted: {scrape}"
    );

    let d = decisions
        .decide(decide_request("ada", "call_center.next_best"))
        .await
        .expect("another customer is decided")
        .into_inner();
    assert!(!d.offers.is_empty());
    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "nextbest.v1.DecisionService".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let forgot = customers
        .forget(proto::ForgetRequest {
            customer_id: "skewed".into(),
        })
        .await
        .expect("an undecodable customer can be forgotten")
        .into_inner();
    assert!(forgot.existed);
    let e = customers
        .get(proto::GetRequest {
            customer_id: "skewed".into(),
            history_limit: 0,
        })
        .await
        .expect_err("forgotten");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let ack = decisions
        .record_outcome(outcome)
        .await
        .expect("the refused outcome, retried once the customer is gone")
        .into_inner();
    assert!(!ack.duplicate, "a refused outcome was not counted");
    server.shut_down().await;
}

/// `RecordOutcomes` appends its whole batch and waits once: 100 outcomes cost one group
/// commit, not one fsync after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_outcomes_waits_for_one_fsync() {
    let server = start().await;
    let channel = server.channel().await;
    let mut decisions = DecisionServiceClient::new(channel.clone());
    let offer = server.node.db().catalog().offers[0].id.clone();
    // Decisions this node never made: any offer is taken, and every outcome is new.
    let outcomes: Vec<proto::Outcome> = (0..100)
        .map(|_| proto::Outcome {
            decision_id: uuid::Uuid::now_v7().to_string(),
            offer_id: offer.clone(),
            kind: proto::OutcomeKind::Impression as i32,
            ..Default::default()
        })
        .collect();
    let fsyncs = || {
        server
            .node
            .db()
            .journal_stats()
            .fsyncs
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    server.node.db().sync().expect("sync");
    let before = fsyncs();
    let acks = decisions
        .record_outcomes(proto::RecordOutcomesRequest { outcomes })
        .await
        .expect("the batch")
        .into_inner()
        .acks;
    assert_eq!(acks.len(), 100);
    assert!(acks.iter().all(|a| !a.duplicate));
    let taken = fsyncs() - before;
    assert!(taken <= 2, "a batch of 100 outcomes took {taken} fsyncs");
    server.stop().await;
}

/// A decision reads budgets as they stand today by the node's clock: a request dated
/// tomorrow must not find tomorrow's empty counters and show an offer whose daily budget
/// is spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_dated_tomorrow_reads_todays_budget() {
    let rules = sample_rules();
    let offers = rules.path().join("offers/retention.yaml");
    let text = std::fs::read_to_string(&offers).expect("read");
    let tight = text.replace("per_day: 300, total: 20000", "per_day: 1, total: 20000");
    assert_ne!(text, tight, "the sample's save-desk budget");
    std::fs::write(&offers, tight).expect("write");
    let server = start_on(
        rules,
        tempfile::tempdir().expect("tempdir"),
        Transport::default(),
    )
    .await;
    let channel = server.channel().await;
    CustomerServiceClient::new(channel.clone())
        .upsert(proto::UpsertRequest {
            customer_id: "leaving".into(),
            attributes: with(&[("tenure_months", int(24)), ("credit_band", string("high"))]),
        })
        .await
        .expect("upsert");
    let mut decisions = DecisionServiceClient::new(channel);
    let request = |at: Option<prost_types::Timestamp>| proto::DecideRequest {
        context: with(&[("intent", string("cancel"))]),
        explain: true,
        at,
        ..decide_request("leaving", "call_center.next_best")
    };
    let save = "cancel_save_free_month";
    let d = decisions
        .decide(request(None))
        .await
        .expect("decide")
        .into_inner();
    assert!(
        d.offers.iter().any(|o| o.offer_id == save),
        "the save offer is shown: {:?}",
        d.offers
    );
    decisions
        .record_outcome(proto::Outcome {
            decision_id: d.decision_id.clone(),
            offer_id: save.into(),
            kind: proto::OutcomeKind::Impression as i32,
            ..Default::default()
        })
        .await
        .expect("the one impression the budget allows today");
    let tomorrow = jiff::Timestamp::now().as_second() + 86_400;
    for at in [
        None,
        Some(prost_types::Timestamp {
            seconds: tomorrow,
            nanos: 0,
        }),
    ] {
        let d = decisions
            .decide(request(at))
            .await
            .expect("decide")
            .into_inner();
        let why = d
            .explanation
            .iter()
            .find(|e| e.offer_id == save)
            .map(|e| e.outcome.clone());
        assert!(
            !d.offers.iter().any(|o| o.offer_id == save)
                && why.as_deref().is_some_and(|w| w.contains("budget")),
            "at {at:?}: {why:?}"
        );
    }
    server.stop().await;
}

/// The most common catalog change: a new customer attribute for a new offer's rule. It
/// hot-swaps under write and decide load: no decision fails, every acknowledged write is
/// there, the new attribute is taken and decided on at once, and a restart keeps it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_with_a_new_attribute_hot_swaps_under_write_and_decide_load() {
    const CUSTOMERS: usize = 100;
    const WRITES: usize = 1_500;
    let server = start().await;
    let channel = server.channel().await;
    let mut customers = CustomerServiceClient::new(channel.clone());
    for c in 0..CUSTOMERS {
        let mut attributes = ada();
        attributes.insert("age".into(), int(20));
        customers
            .upsert(proto::UpsertRequest {
                customer_id: format!("c{c}"),
                attributes,
            })
            .await
            .expect("seed");
    }
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let deciders: Vec<_> = (0..2)
        .map(|d| {
            let (mut decisions, done) = (DecisionServiceClient::new(channel.clone()), done.clone());
            tokio::spawn(async move {
                let mut decided = 0usize;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let id = format!("c{}", (decided * 2 + d) % CUSTOMERS);
                    decisions
                        .decide(decide_request(&id, "web.home_banner"))
                        .await
                        .unwrap_or_else(|s| panic!("a decision for {id} failed: {s:?}"));
                    decided += 1;
                }
                decided
            })
        })
        .collect();
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (mut customers, written) = (customers.clone(), written.clone());
            tokio::spawn(async move {
                let mut last = HashMap::new();
                for i in 0..WRITES {
                    let id = format!("c{}", (i * 2 + w) % CUSTOMERS);
                    let age = (21 + i) as i64;
                    customers
                        .upsert(proto::UpsertRequest {
                            customer_id: id.clone(),
                            attributes: [("age".to_string(), int(age))].into(),
                        })
                        .await
                        .unwrap_or_else(|s| panic!("an upsert of {id} failed: {s:?}"));
                    last.insert(id, age);
                    written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                last
            })
        })
        .collect();
    while written.load(std::sync::atomic::Ordering::Relaxed) < WRITES / 2 {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    common::add_loyalty(server.rules.path());
    let mut admin = AdminServiceClient::new(channel.clone());
    let reloaded = admin
        .reload(proto::ReloadRequest {})
        .await
        .expect("reload")
        .into_inner();
    assert!(reloaded.reloaded, "{:?}", reloaded.errors);
    let mut last = HashMap::new();
    for w in writers {
        last.extend(w.await.expect("writer"));
    }
    assert!(
        written.load(std::sync::atomic::Ordering::Relaxed) == 2 * WRITES,
        "every write was acknowledged"
    );
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for d in deciders {
        assert!(d.await.expect("decider") > 0);
    }
    let age_of = |c: proto::Customer| match c.attributes.get("age").and_then(|v| v.kind.clone()) {
        Some(Kind::IntValue(v)) => v,
        other => panic!("no age: {other:?}"),
    };
    for (id, age) in &last {
        let stored = customers
            .get(proto::GetRequest {
                customer_id: id.clone(),
                history_limit: 0,
            })
            .await
            .expect("get")
            .into_inner();
        assert_eq!(age_of(stored), *age, "{id}'s last acknowledged age");
    }
    // The new attribute is taken, and the new offer's rule reads it.
    customers
        .upsert(proto::UpsertRequest {
            customer_id: "c7".into(),
            attributes: [("loyalty_points".to_string(), int(150))].into(),
        })
        .await
        .expect("the new attribute is accepted");
    let mut decisions = DecisionServiceClient::new(channel.clone());
    let shown = |d: proto::Decision| d.offers.into_iter().map(|o| o.offer_id).collect::<Vec<_>>();
    let for_c7 = decisions
        .decide(decide_request("c7", "web.home_banner"))
        .await
        .expect("decide")
        .into_inner();
    assert_eq!(shown(for_c7)[0], "loyalty_reward");
    let for_c8 = decisions
        .decide(decide_request("c8", "web.home_banner"))
        .await
        .expect("decide")
        .into_inner();
    assert!(!shown(for_c8).contains(&"loyalty_reward".to_string()));
    // A restart replays the journal under the new catalog: the same customers.
    let (rules, data) = server.shut_down().await;
    let server = start_on(rules, data, Transport::default()).await;
    let mut customers = CustomerServiceClient::new(server.channel().await);
    let c7 = customers
        .get(proto::GetRequest {
            customer_id: "c7".into(),
            history_limit: 0,
        })
        .await
        .expect("get")
        .into_inner();
    assert!(matches!(
        c7.attributes
            .get("loyalty_points")
            .and_then(|v| v.kind.clone()),
        Some(Kind::IntValue(150))
    ));
    assert_eq!(age_of(c7), last["c7"]);
    server.stop().await;
}
