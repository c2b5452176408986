//! A cluster of real processes on loopback: three `nats-server` with JetStream (Debian's)
//! and `nextbest serve --cluster` nodes. Writes spread over the nodes converge to one
//! state (equal digests) and the same decisions everywhere; an outcome sent through
//! another node than its decision's finds its customer; the same outcome through two
//! nodes counts once; `kill -9` of a node or of the stream's leader loses no acknowledged
//! write and applies none twice; a fresh node bootstraps from the stream. Every test is
//! bounded in requests and time and stops what it started.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::nats::{NatsCluster, nats_server_path};
use nextbest::server::proto::admin_service_client::AdminServiceClient;
use nextbest::server::proto::customer_service_client::CustomerServiceClient;
use nextbest::server::proto::decision_service_client::DecisionServiceClient;
use nextbest::server::proto::{self, value::Kind};
use tonic::transport::Channel;

/// One cluster test at a time: each runs three NATS servers and three or four nodes, which
/// is all two cores can run without the timeouts the tests measure against.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Whether the cluster tests can run here (under CI they must), holding the test's turn.
fn have_nats() -> Option<std::sync::MutexGuard<'static, ()>> {
    if nats_server_path().is_some() {
        return Some(ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner()));
    }
    common::not_run("nats-server is not installed (apt-get install nats-server)");
    None
}

fn rules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")
}

fn int(i: i64) -> proto::Value {
    proto::Value {
        kind: Some(Kind::IntValue(i)),
    }
}

/// Every node is started with this admin token (a node in a namespace listens off
/// loopback, which needs one) and every customer and admin call carries it.
const TOKEN: &str = "nextbest-cluster-test-token";

#[derive(Debug, Clone, Copy)]
struct Auth;

impl tonic::service::Interceptor for Auth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let value = format!("Bearer {TOKEN}").parse().expect("a header value");
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

type Authed = tonic::service::interceptor::InterceptedService<Channel, Auth>;
type Customers = CustomerServiceClient<Authed>;

/// A `nextbest serve --cluster` child and its clients.
struct Node {
    serve: common::Serve,
    id: String,
    /// The node's last log lines.
    log: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
}

impl Node {
    fn start(nats: &NatsCluster, id: &str, data: &Path, flags: &[&str]) -> Node {
        Node::start_on(nats, id, &rules(), data, flags)
    }

    /// As [`Node::start`], with a rules directory of its own.
    fn start_on(nats: &NatsCluster, id: &str, rules: &Path, data: &Path, flags: &[&str]) -> Node {
        let command = std::process::Command::new(env!("CARGO_BIN_EXE_nextbest"));
        Node::spawn(
            command,
            "127.0.0.1",
            &nats.url_list(),
            id,
            rules,
            data,
            flags,
        )
    }

    /// A node run by `command` (`nextbest`, or `ip netns exec NAME nextbest`), listening
    /// on `host`, joined to the NATS servers `urls`.
    fn spawn(
        command: std::process::Command,
        host: &str,
        urls: &str,
        id: &str,
        rules: &Path,
        data: &Path,
        flags: &[&str],
    ) -> Node {
        let mut all = vec![
            "--cluster",
            urls,
            "--node-id",
            id,
            "--log-level",
            "info",
            "--admin-token",
            TOKEN,
        ];
        all.extend_from_slice(flags);
        let mut serve = common::Serve::start_command(command, host, rules, data, &all);
        let log = serve.drain();
        Node {
            serve,
            id: id.to_string(),
            log,
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.serve.addr))
            .expect("uri")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect")
    }

    async fn customers(&self) -> Customers {
        CustomerServiceClient::with_interceptor(self.channel().await, Auth)
    }

    async fn decisions(&self) -> DecisionServiceClient<Channel> {
        DecisionServiceClient::new(self.channel().await)
    }

    /// The node's last log lines, for a failure's message.
    fn tail(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let lines: Vec<&str> = log
            .iter()
            .rev()
            .take(20)
            .rev()
            .map(String::as_str)
            .collect();
        format!("{}:\n{}", self.id, lines.join("\n"))
    }

    async fn admin(&self) -> AdminServiceClient<Authed> {
        AdminServiceClient::with_interceptor(self.channel().await, Auth)
    }

    async fn status(&self) -> proto::NodeStatus {
        self.admin()
            .await
            .status(proto::StatusRequest {})
            .await
            .expect("status")
            .into_inner()
    }
}

/// One call, answered within 20 s, or the test fails naming it.
async fn within<T>(
    nodes: &[Node],
    what: &str,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> T {
    let tails = || nodes.iter().map(Node::tail).collect::<Vec<_>>().join("\n");
    match tokio::time::timeout(Duration::from_secs(20), call).await {
        Ok(Ok(reply)) => reply.into_inner(),
        Ok(Err(status)) => panic!("{what}: {status:?}\n{}", tails()),
        Err(_) => panic!("{what}: no answer in 20 s\n{}", tails()),
    }
}

/// Runs a test's calls, at most 3 minutes: a call that hangs fails the test with the
/// nodes' last log lines instead of holding it.
fn bounded<T>(
    runtime: &tokio::runtime::Runtime,
    nodes: &[Node],
    calls: impl Future<Output = T>,
) -> T {
    runtime.block_on(async {
        match tokio::time::timeout(Duration::from_secs(180), calls).await {
            Ok(done) => done,
            Err(_) => panic!(
                "the test's calls did not end in 3 minutes\n{}",
                nodes.iter().map(Node::tail).collect::<Vec<_>>().join("\n")
            ),
        }
    })
}

/// Waits (30 s at most) until every node has applied `position` and all digests agree;
/// returns the digest.
async fn converged(nodes: &[&Node], position: u64) -> proto::NodeStatus {
    let given_up = Instant::now() + Duration::from_secs(30);
    loop {
        let mut statuses = Vec::new();
        for n in nodes {
            statuses.push(n.status().await);
        }
        let applied = statuses.iter().all(|s| s.applied_position >= position);
        let equal = statuses.windows(2).all(|w| w[0].digest == w[1].digest);
        if applied && equal && statuses.iter().all(|s| s.caught_up) {
            return statuses.remove(0);
        }
        assert!(
            Instant::now() < given_up,
            "the nodes did not converge on position {position} in 30 s: {:#?}\n{}",
            statuses
                .iter()
                .zip(nodes)
                .map(|(s, n)| (
                    &n.id,
                    s.applied_position,
                    &s.digest,
                    s.customers,
                    s.outcomes
                ))
                .collect::<Vec<_>>(),
            nodes
                .iter()
                .map(|n| n.tail())
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn upsert(client: &mut Customers, id: &str, age: i64) -> Result<u64, tonic::Status> {
    client
        .upsert(proto::UpsertRequest {
            customer_id: id.to_string(),
            attributes: [
                ("age".to_string(), int(age)),
                ("tenure_months".to_string(), int(age % 40)),
            ]
            .into(),
        })
        .await
        .map(|r| r.into_inner().position)
}

async fn age_of(client: &mut Customers, id: &str) -> Option<i64> {
    let customer = client
        .get(proto::GetRequest {
            customer_id: id.to_string(),
            history_limit: 0,
        })
        .await
        .ok()?
        .into_inner();
    match customer.attributes.get("age")?.kind {
        Some(Kind::IntValue(v)) => Some(v),
        _ => None,
    }
}

async fn history_len(client: &mut Customers, id: &str) -> usize {
    client
        .get(proto::GetRequest {
            customer_id: id.to_string(),
            history_limit: 0,
        })
        .await
        .expect("get")
        .into_inner()
        .history
        .len()
}

fn impression(decision: &proto::Decision) -> proto::Outcome {
    proto::Outcome {
        decision_id: decision.decision_id.clone(),
        offer_id: decision.offers[0].offer_id.clone(),
        kind: proto::OutcomeKind::Impression as i32,
        ..Default::default()
    }
}

#[test]
fn three_nodes_apply_the_same_writes_read_their_own_and_decide_alike() {
    let Some(_turn) = have_nats() else {
        return;
    };
    let nats = NatsCluster::start(3);
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tmp")).collect();
    let nodes: Vec<Node> = (0..3)
        .map(|i| Node::start(&nats, &format!("node-{i}"), dirs[i].path(), &[]))
        .collect();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    bounded(&runtime, &nodes, async {
        let mut customers = Vec::new();
        let mut decisions = Vec::new();
        for n in &nodes {
            customers.push(n.customers().await);
            decisions.push(n.decisions().await);
        }
        let mut last = 0;
        let mut shown = Vec::new();
        for c in 0..30usize {
            let id = format!("c{c}");
            let (w, d, o) = (c % 3, (c + 1) % 3, (c + 2) % 3);
            // Written through one node, read back at once through it.
            let position = upsert(&mut customers[w], &id, 20 + c as i64)
                .await
                .expect("upsert");
            assert!(position > last, "positions grow: {position} after {last}");
            last = position;
            assert_eq!(age_of(&mut customers[w], &id).await, Some(20 + c as i64));
            // Decided through another, which waits for the write's position first.
            let decision = decisions[d]
                .decide(proto::DecideRequest {
                    customer_id: id.clone(),
                    placement: "email.hero".into(),
                    min_position: position,
                    ..Default::default()
                })
                .await
                .expect("decide")
                .into_inner();
            assert_eq!(age_of(&mut customers[d], &id).await, Some(20 + c as i64));
            assert!(!decision.offers.is_empty(), "email.hero shows an offer");
            // Its impression through a third, naming only the decision: the decision
            // reaches it through the decisions stream, with its customer.
            let ack = decisions[o]
                .record_outcome(impression(&decision))
                .await
                .expect("outcome")
                .into_inner();
            assert!(!ack.duplicate, "the first impression counts");
            last = last.max(ack.position);
            // The same impression through the node that decided: counted once.
            let again = decisions[d]
                .record_outcome(impression(&decision))
                .await
                .expect("outcome again")
                .into_inner();
            assert!(
                again.duplicate,
                "the same outcome through another node is a duplicate"
            );
            shown.push((id, decision));
        }
        let status = converged(&nodes.iter().collect::<Vec<_>>(), last).await;
        assert_eq!(status.customers, 30);
        assert_eq!(
            status.outcomes, 30,
            "one impression a decision, counted once"
        );
        for (i, n) in nodes.iter().enumerate() {
            let s = n.status().await;
            assert_eq!(s.mode, "cluster");
            assert_eq!(s.node_id, format!("node-{i}"));
            assert_eq!(s.lag, 0);
            assert_eq!(s.lag_seconds, 0.0);
            // Every partition applied as far as the stream holds it.
            assert_eq!(s.partition_tails.len(), 16);
            assert_eq!(s.partition_tails, s.partition_positions);
            assert!(s.partition_positions.iter().filter(|p| **p > 0).count() > 1);
        }
        // Every node holds the impression in the decided customer's history.
        for (id, _) in &shown {
            for client in customers.iter_mut() {
                assert_eq!(history_len(client, id).await, 1, "{id}'s history");
            }
        }
        // The same decision everywhere, for the same customer at the same time.
        let at = prost_types::Timestamp {
            seconds: 1_800_000_000,
            nanos: 0,
        };
        for (id, _) in shown.iter().take(10) {
            let mut offers = Vec::new();
            for client in decisions.iter_mut() {
                let d = client
                    .decide(proto::DecideRequest {
                        customer_id: id.clone(),
                        placement: "web.home_banner".into(),
                        at: Some(at),
                        ..Default::default()
                    })
                    .await
                    .expect("decide")
                    .into_inner();
                offers.push(
                    d.offers
                        .iter()
                        .map(|o| (o.offer_id.clone(), o.propensity.to_bits()))
                        .collect::<Vec<_>>(),
                );
            }
            assert!(offers.windows(2).all(|w| w[0] == w[1]), "{id}: {offers:?}");
        }
    });
}

/// Upserts `writes` times through `nodes` in turn from `tasks` writers; returns each
/// customer's last acknowledged age and the highest position acknowledged. A write
/// refused (a node killed meanwhile, an election) is retried through the next node, up to
/// 30 s; `during` runs once a third of them are acknowledged.
async fn write_load(
    clients: Vec<Customers>,
    writes: usize,
    during: impl Future<Output = ()>,
) -> (HashMap<String, i64>, u64) {
    let clients = std::sync::Arc::new(tokio::sync::Mutex::new(clients));
    let acked = std::sync::Arc::new(std::sync::Mutex::new((HashMap::new(), 0u64, 0usize)));
    let third = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    const TASKS: usize = 8;
    for t in 0..TASKS {
        let (clients, acked, third) = (clients.clone(), acked.clone(), third.clone());
        tasks.spawn(async move {
            let mut k = t;
            for i in 0..writes / TASKS {
                // One customer per task and slot: its writes are ordered by this task.
                let id = format!("w{t}-{}", i % 10);
                let age = (i * 7 + t) as i64;
                let given_up = Instant::now() + Duration::from_secs(30);
                loop {
                    let mut client = {
                        let c = clients.lock().await;
                        k = (k + 1) % c.len();
                        c[k].clone()
                    };
                    match tokio::time::timeout(
                        Duration::from_secs(5),
                        upsert(&mut client, &id, age),
                    )
                    .await
                    {
                        Ok(Ok(position)) => {
                            let mut a = acked.lock().expect("lock");
                            a.0.insert(id.clone(), age);
                            a.1 = a.1.max(position);
                            a.2 += 1;
                            if a.2 == writes / 3 {
                                third.notify_one();
                            }
                            break;
                        }
                        Ok(Err(s))
                            if s.code() == tonic::Code::Unavailable
                                || s.code() == tonic::Code::Unknown
                                || s.code() == tonic::Code::Cancelled => {}
                        Err(_) => {}
                        Ok(Err(s)) => panic!("upsert {id}: {s:?}"),
                    }
                    assert!(
                        Instant::now() < given_up,
                        "no node took {id}'s write in 30 s"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
    }
    // A writer that fails before a third is written ends the wait too: its panic is
    // reported below.
    let _ = tokio::time::timeout(Duration::from_secs(60), third.notified()).await;
    during.await;
    while let Some(t) = tasks.join_next().await {
        t.expect("writer");
    }
    let a = acked.lock().expect("lock");
    (a.0.clone(), a.1)
}

#[test]
fn kill9_of_a_node_under_write_load_loses_nothing_and_a_fresh_node_bootstraps() {
    let Some(_turn) = have_nats() else {
        return;
    };
    let nats = NatsCluster::start(3);
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().expect("tmp")).collect();
    // Node 2 snapshots every second: it restarts from its snapshot plus the stream's tail.
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            let flags: &[&str] = if i == 2 {
                &["--compact-interval", "1s"]
            } else {
                &[]
            };
            Node::start(&nats, &format!("node-{i}"), dirs[i].path(), flags)
        })
        .collect();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (acked, last) = bounded(&runtime, &nodes, async {
        let mut clients = Vec::new();
        for n in &nodes {
            clients.push(n.customers().await);
        }
        // Enough for a snapshot of node 2 before the kill.
        for c in 0..50 {
            upsert(&mut clients[2], &format!("early{c}"), c)
                .await
                .expect("upsert");
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let victim = nodes[2].serve.child.id();
        write_load(clients, 600, async move {
            let killed = std::process::Command::new("kill")
                .args(["-KILL", &victim.to_string()])
                .status()
                .expect("kill");
            assert!(killed.success());
        })
        .await
    });
    assert!(
        std::fs::read_dir(dirs[2].path().join("state"))
            .expect("state dir")
            .any(|e| e.is_ok()),
        "node 2 took a snapshot before it was killed"
    );
    // Restarted on its directory, and a new node on an empty one.
    let _ = nodes[2].serve.child.wait();
    let restarted = Node::start(&nats, "node-2", dirs[2].path(), &[]);
    nodes[2] = restarted;
    nodes.push(Node::start(&nats, "node-3", dirs[3].path(), &[]));
    // The new node started from the snapshot node 2 published, not from nothing.
    assert!(
        dirs[3]
            .path()
            .join("state/snapshot-00000000000000000000.bin")
            .exists(),
        "node 3 bootstrapped from the cluster's snapshot"
    );
    bounded(&runtime, &nodes, async {
        let status = converged(&nodes.iter().collect::<Vec<_>>(), last).await;
        assert_eq!(status.customers as usize, 50 + acked.len());
        for n in &nodes {
            let mut client = n.customers().await;
            for (id, age) in &acked {
                assert_eq!(
                    age_of(&mut client, id).await,
                    Some(*age),
                    "{id} on {}",
                    n.id
                );
            }
        }
    });
}

#[test]
fn kill9_of_the_stream_leader_pauses_writes_and_loses_none() {
    let Some(_turn) = have_nats() else {
        return;
    };
    let mut nats = NatsCluster::start(3);
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tmp")).collect();
    let nodes: Vec<Node> = (0..3)
        .map(|i| Node::start(&nats, &format!("node-{i}"), dirs[i].path(), &[]))
        .collect();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let leader = nats
        .stream_leader("NEXTBEST_WRITES")
        .expect("the write stream has a leader");
    let (acked, last, impressions) = bounded(&runtime, &nodes, async {
        let mut clients = Vec::new();
        let mut deciders = Vec::new();
        for n in &nodes {
            clients.push(n.customers().await);
            deciders.push(n.decisions().await);
        }
        let killing = &mut nats;
        let (acked, last) = write_load(clients, 600, async move {
            killing.kill(leader);
        })
        .await;
        // Outcomes after the election, each retried until acknowledged: counted once.
        let mut impressions = 0;
        let mut last = last;
        for c in 0..20 {
            let id = format!("w0-{}", c % 10);
            let d = within(
                &nodes,
                "decide",
                deciders[c % 3].decide(proto::DecideRequest {
                    customer_id: id.clone(),
                    placement: "email.hero".into(),
                    ..Default::default()
                }),
            )
            .await;
            for attempt in 0..2 {
                let ack = within(
                    &nodes,
                    "an impression",
                    deciders[(c + attempt + 1) % 3].record_outcome(impression(&d)),
                )
                .await;
                assert_eq!(ack.duplicate, attempt == 1);
                last = last.max(ack.position);
            }
            impressions += 1;
        }
        (acked, last, impressions)
    });
    nats.restart(leader);
    bounded(&runtime, &nodes, async {
        let status = converged(&nodes.iter().collect::<Vec<_>>(), last).await;
        assert_eq!(status.customers as usize, acked.len());
        assert_eq!(status.outcomes, impressions, "each impression counted once");
        for n in &nodes {
            let mut client = n.customers().await;
            for (id, age) in &acked {
                assert_eq!(
                    age_of(&mut client, id).await,
                    Some(*age),
                    "{id} on {}",
                    n.id
                );
            }
        }
    });
}

/// A copy of the sample rules directory.
fn copy_rules() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tmp");
    let copy = std::process::Command::new("cp")
        .arg("-r")
        .arg(rules().join("."))
        .arg(dir.path())
        .status()
        .expect("cp");
    assert!(copy.success());
    dir
}

/// Three nodes, each on a copy of the sample rules of its own (to reload) and a new data
/// directory; the directories live as long as the returned guards.
fn nodes_on_own_rules(
    nats: &NatsCluster,
) -> (Vec<tempfile::TempDir>, Vec<tempfile::TempDir>, Vec<Node>) {
    let rules: Vec<tempfile::TempDir> = (0..3).map(|_| copy_rules()).collect();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tmp")).collect();
    let nodes = (0..3)
        .map(|i| {
            Node::start_on(
                nats,
                &format!("node-{i}"),
                rules[i].path(),
                dirs[i].path(),
                &[],
            )
        })
        .collect();
    (rules, dirs, nodes)
}

#[test]
fn a_reload_on_one_node_reaches_every_node_and_a_bad_catalog_none() {
    let Some(_turn) = have_nats() else {
        return;
    };
    let nats = NatsCluster::start(3);
    let (rules, _dirs, nodes) = nodes_on_own_rules(&nats);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    bounded(&runtime, &nodes, async {
        let first = nodes[0].status().await.catalog_version;
        for n in &nodes {
            assert_eq!(
                n.status().await.catalog_version,
                first,
                "one catalog at the start"
            );
        }
        // A change on node 0's rules, reloaded there.
        let offers = rules[0].path().join("offers");
        let file = std::fs::read_dir(&offers)
            .expect("offers")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "yaml"))
            .expect("an offers file");
        let mut text = std::fs::read_to_string(&file).expect("read");
        text.push_str("\n# changed on node 0\n");
        std::fs::write(&file, text).expect("write");
        let started = Instant::now();
        let reloaded = nodes[0]
            .admin()
            .await
            .reload(proto::ReloadRequest {})
            .await
            .expect("reload")
            .into_inner();
        assert!(reloaded.reloaded, "{:?}", reloaded.errors);
        assert_ne!(reloaded.version, first);
        let given_up = Instant::now() + Duration::from_secs(10);
        for n in &nodes {
            while n.status().await.catalog_version != reloaded.version {
                assert!(Instant::now() < given_up, "{} did not swap in 10 s", n.id);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        eprintln!(
            "catalog propagation: {:?} from Reload to every node",
            started.elapsed()
        );
        // A broken catalog on node 1: refused there, and no node changes.
        std::fs::write(rules[1].path().join("placements.yaml"), "placements: [").expect("write");
        let refused = nodes[1]
            .admin()
            .await
            .reload(proto::ReloadRequest {})
            .await
            .expect("reload")
            .into_inner();
        assert!(!refused.reloaded);
        assert!(!refused.errors.is_empty());
        tokio::time::sleep(Duration::from_millis(300)).await;
        for n in &nodes {
            assert_eq!(
                n.status().await.catalog_version,
                reloaded.version,
                "{}",
                n.id
            );
        }
        // A node that joins takes the cluster's catalog, not its own rules directory's.
        let late_dir = tempfile::tempdir().expect("tmp");
        let late = Node::start(&nats, "node-late", late_dir.path(), &[]);
        assert_eq!(late.status().await.catalog_version, reloaded.version);
    });
}

#[test]
fn a_catalog_with_a_new_attribute_hot_swaps_on_every_node_under_write_and_decide_load() {
    let Some(_turn) = have_nats() else {
        return;
    };
    let nats = NatsCluster::start(3);
    let (rules, _dirs, nodes) = nodes_on_own_rules(&nats);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    bounded(&runtime, &nodes, async {
        let mut clients = Vec::new();
        let mut deciders = Vec::new();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        for (i, n) in nodes.iter().enumerate() {
            clients.push(n.customers().await);
            let (mut decisions, done) = (n.decisions().await, done.clone());
            deciders.push(tokio::spawn(async move {
                let mut decided = 0usize;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let id = format!("w{}-{}", decided % 8, decided % 10);
                    decisions
                        .decide(proto::DecideRequest {
                            customer_id: id.clone(),
                            placement: "web.home_banner".into(),
                            ..Default::default()
                        })
                        .await
                        .unwrap_or_else(|s| panic!("node-{i}: a decision for {id} failed: {s:?}"));
                    decided += 1;
                }
                decided
            }));
        }
        let mut version = String::new();
        let (last, position) = write_load(clients, 800, async {
            common::add_loyalty(rules[0].path());
            let reloaded = nodes[0]
                .admin()
                .await
                .reload(proto::ReloadRequest {})
                .await
                .expect("reload")
                .into_inner();
            assert!(reloaded.reloaded, "{:?}", reloaded.errors);
            version = reloaded.version;
        })
        .await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        for d in deciders {
            assert!(d.await.expect("decider") > 0);
        }
        let all: Vec<&Node> = nodes.iter().collect();
        converged(&all, position).await;
        for n in &nodes {
            assert_eq!(n.status().await.catalog_version, version, "{}", n.id);
            let mut client = n.customers().await;
            for (id, age) in &last {
                assert_eq!(
                    age_of(&mut client, id).await,
                    Some(*age),
                    "{id} on {}",
                    n.id
                );
            }
        }
        // The new attribute through node 2, decided on through node 1.
        let written = nodes[2]
            .customers()
            .await
            .upsert(proto::UpsertRequest {
                customer_id: "w3-3".into(),
                attributes: [("loyalty_points".to_string(), int(150))].into(),
            })
            .await
            .expect("the new attribute is taken")
            .into_inner();
        let decision = nodes[1]
            .decisions()
            .await
            .decide(proto::DecideRequest {
                customer_id: "w3-3".into(),
                placement: "web.home_banner".into(),
                min_position: written.position,
                ..Default::default()
            })
            .await
            .expect("decide")
            .into_inner();
        assert_eq!(decision.offers[0].offer_id, "loyalty_reward");
        // A node started later on the sample rules opens with the cluster's catalog and
        // reaches the same state.
        let late_dir = tempfile::tempdir().expect("tmp");
        let late = Node::start(&nats, "node-late", late_dir.path(), &[]);
        let mut all: Vec<&Node> = nodes.iter().collect();
        all.push(&late);
        converged(&all, written.position).await;
        assert_eq!(late.status().await.catalog_version, version);
        // The stream's catalogs are no journal records: the cluster's journal reads whole.
        let out = tempfile::tempdir().expect("tmp");
        let export = std::process::Command::new(env!("CARGO_BIN_EXE_nextbest"))
            .args([
                "export",
                "--format",
                "dsjson",
                "--cluster",
                &nats.url_list(),
                "--out",
            ])
            .arg(out.path().join("x.json"))
            .arg("--rules")
            .arg(rules[0].path())
            .output()
            .expect("run export");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&export.stdout),
            String::from_utf8_lossy(&export.stderr)
        );
        assert!(export.status.success(), "{said}");
        assert!(!said.contains("undecodable"), "{said}");
        let lines = std::fs::read_to_string(out.path().join("x.json")).expect("the export");
        assert!(lines.lines().count() > 0, "the decisions are exported");
    });
}

fn string(s: &str) -> proto::Value {
    proto::Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

/// A new customer who qualifies for the save desk's offer, and the call-centre decision
/// for them when they call to cancel.
async fn save_desk_decision(
    customers: &mut Customers,
    decisions: &mut DecisionServiceClient<Channel>,
    id: &str,
) -> proto::Decision {
    customers
        .upsert(proto::UpsertRequest {
            customer_id: id.to_string(),
            attributes: [
                ("tenure_months".to_string(), int(24)),
                ("credit_band".to_string(), string("high")),
            ]
            .into(),
        })
        .await
        .expect("upsert");
    decisions
        .decide(proto::DecideRequest {
            customer_id: id.to_string(),
            placement: "call_center.next_best".into(),
            context: [("intent".to_string(), string("cancel"))].into(),
            ..Default::default()
        })
        .await
        .expect("decide")
        .into_inner()
}

#[test]
fn a_daily_budget_is_exhausted_on_every_node_by_impressions_through_all() {
    let Some(_turn) = have_nats() else {
        return;
    };
    // The save desk's offer with a budget of 20 impressions a day.
    let rules = copy_rules();
    let file = rules.path().join("offers/retention.yaml");
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(text.contains("budget: { per_day: 300, total: 20000 }"));
    std::fs::write(
        &file,
        text.replace(
            "budget: { per_day: 300, total: 20000 }",
            "budget: { per_day: 20 }",
        ),
    )
    .expect("write");
    let nats = NatsCluster::start(3);
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tmp")).collect();
    let nodes: Vec<Node> = (0..3)
        .map(|i| {
            Node::start_on(
                &nats,
                &format!("node-{i}"),
                rules.path(),
                dirs[i].path(),
                &[],
            )
        })
        .collect();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    bounded(&runtime, &nodes, async {
        const OFFER: &str = "cancel_save_free_month";
        let mut tasks = tokio::task::JoinSet::new();
        for (i, n) in nodes.iter().enumerate() {
            let (mut customers, mut decisions) = (n.customers().await, n.decisions().await);
            tasks.spawn(async move {
                // Fresh customers who qualify, decided and shown here until the offer has
                // not been shown 20 times in a row; impressions recorded here.
                let (mut shown, mut missed, mut last) = (0u64, 0, 0u64);
                for c in 0..400 {
                    let id = format!("b{i}-{c}");
                    let d = save_desk_decision(&mut customers, &mut decisions, &id).await;
                    match d.offers.iter().find(|o| o.offer_id == OFFER) {
                        Some(o) => {
                            missed = 0;
                            let ack = decisions
                                .record_outcome(proto::Outcome {
                                    decision_id: d.decision_id.clone(),
                                    offer_id: o.offer_id.clone(),
                                    kind: proto::OutcomeKind::Impression as i32,
                                    ..Default::default()
                                })
                                .await
                                .expect("impression")
                                .into_inner();
                            assert!(!ack.duplicate);
                            shown += 1;
                            last = last.max(ack.position);
                        }
                        None => {
                            missed += 1;
                            if missed == 20 {
                                break;
                            }
                        }
                    }
                }
                assert_eq!(
                    missed, 20,
                    "node {i} still shows the offer after 400 customers"
                );
                (shown, last)
            });
        }
        let (mut shown, mut last) = (0, 0);
        while let Some(t) = tasks.join_next().await {
            let (s, l) = t.expect("a node's loop");
            shown += s;
            last = last.max(l);
        }
        assert!(shown >= 20, "the budget is spent: {shown} impressions");
        eprintln!(
            "budget of 20 a day through 3 nodes: {shown} impressions, over-delivery {}",
            shown - 20
        );
        converged(&nodes.iter().collect::<Vec<_>>(), last).await;
        // Exhausted everywhere now: no node shows it to a new qualifying customer.
        for (i, n) in nodes.iter().enumerate() {
            let (mut customers, mut decisions) = (n.customers().await, n.decisions().await);
            let id = format!("after{i}");
            let d = save_desk_decision(&mut customers, &mut decisions, &id).await;
            assert!(d.offers.iter().all(|o| o.offer_id != OFFER), "node {i}");
        }
    });
}

/// A node's `/metrics` value of one series (one sample, whatever its labels).
fn metric(node: &Node, name: &str) -> f64 {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(&node.serve.metrics_addr).expect("connect to /metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: nextbest\r\n\r\n").expect("request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read /metrics");
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no `{name}` in {}'s /metrics", node.id))
}

/// Whether server `i` names itself the leader of `stream` (its own `/jsz`).
fn claims_stream_leadership(nats: &NatsCluster, i: usize, stream: &str) -> bool {
    let jsz: serde_json::Value = serde_json::from_str(&nats.jsz(i)).expect("/jsz is JSON");
    let name = nats.name(i);
    jsz["account_details"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
        .any(|s| s["name"] == stream && s["cluster"]["leader"] == name)
}

/// Makes server `i` the leader of `stream`, asking its leader to step down until it is
/// (each step-down elects one of the other replicas).
async fn lead_from(nats: &NatsCluster, i: usize, stream: &str) {
    let client = async_nats::connect(nats.url(0))
        .await
        .expect("connect to NATS");
    let given_up = Instant::now() + Duration::from_secs(60);
    while !claims_stream_leadership(nats, i, stream) {
        assert!(
            Instant::now() < given_up,
            "{} does not lead {stream} after 60 s of step-downs",
            nats.name(i)
        );
        let subject = format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}");
        // Refused or unanswered during an election: tried again.
        let _ = client.request(subject, "".into()).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let elected = Instant::now() + Duration::from_secs(10);
        while nats.stream_leader(stream).is_none() && Instant::now() < elected {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    nats.wait_stream_synced(stream);
}

/// Whether this process may make network namespaces (root); under CI it must.
fn may_partition() -> bool {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if root {
        return true;
    }
    common::not_run("network namespaces need root");
    false
}

#[test]
fn a_partition_refuses_writes_on_the_minority_side_and_heals_without_loss() {
    let Some(_turn) = have_nats() else {
        return;
    };
    if !may_partition() {
        return;
    }
    // NATS servers 0 and 1 and nodes 0 and 1 on the host; server 2 and node 2 in a
    // namespace whose link the test cuts. Node 2 is reached over the namespace's control
    // link, which the cut leaves alone.
    let (nats, netns) = NatsCluster::start_partitionable(3);
    let majority = format!("{},{}", nats.url(0), nats.url(1));
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tmp")).collect();
    let command = || std::process::Command::new(env!("CARGO_BIN_EXE_nextbest"));
    let mut nodes: Vec<Node> = (0..2)
        .map(|i| {
            Node::spawn(
                command(),
                "127.0.0.1",
                &majority,
                &format!("node-{i}"),
                &rules(),
                dirs[i].path(),
                &[],
            )
        })
        .collect();
    nodes.push(Node::spawn(
        netns.command(env!("CARGO_BIN_EXE_nextbest")),
        netns.control_ip(),
        &nats.url(2),
        "node-2",
        &rules(),
        dirs[2].path(),
        &[],
    ));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    bounded(&runtime, &nodes, async {
        let mut clients = Vec::new();
        for n in &nodes {
            clients.push(n.customers().await);
        }
        let mut last = 0;
        for c in 0..30 {
            last = upsert(&mut clients[c % 3], &format!("p{c}"), c as i64)
                .await
                .expect("upsert before the cut");
        }
        converged(&nodes.iter().collect::<Vec<_>>(), last).await;

        // The cut-off server leads the write stream: for the 10-20 s until it notices it
        // lost its quorum (JetStream 2.9), it stores a write sent to it and delivers it
        // to the consumers on its side although the write is never committed. Node 2
        // must not apply it (src/cluster/commit.rs): after the heal it would lack the
        // majority's write of the same position, and the digests would differ.
        lead_from(&nats, 2, "NEXTBEST_WRITES").await;
        netns.cut();
        // The minority side: its writes are refused, nothing acknowledged...
        let started = Instant::now();
        let refused = tokio::time::timeout(
            Duration::from_secs(20),
            upsert(&mut clients[2], "minority", 1),
        )
        .await
        .expect("the minority answers");
        let status = refused.expect_err("no quorum: the write must be refused");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        eprintln!(
            "minority write refused in {:?}: {}",
            started.elapsed(),
            status.message()
        );
        // ...and it keeps deciding from memory, counted as stale.
        let stale_before = metric(&nodes[2], "nextbest_cluster_stale_decisions_total");
        let decided = nodes[2]
            .decisions()
            .await
            .decide(proto::DecideRequest {
                customer_id: "p2".into(),
                placement: "email.hero".into(),
                ..Default::default()
            })
            .await
            .expect("the minority decides");
        assert!(!decided.into_inner().offers.is_empty());
        assert!(
            metric(&nodes[2], "nextbest_cluster_stale_decisions_total") > stale_before,
            "a decision on the minority side is counted stale"
        );
        // The majority side takes writes (after an election, if the leader was cut off).
        let mut acked = HashMap::new();
        for c in 0..30usize {
            let id = format!("m{c}");
            let given_up = Instant::now() + Duration::from_secs(30);
            loop {
                match tokio::time::timeout(
                    Duration::from_secs(6),
                    upsert(&mut clients[c % 2], &id, c as i64),
                )
                .await
                {
                    Ok(Ok(position)) => {
                        last = last.max(position);
                        acked.insert(id.clone(), c as i64);
                        break;
                    }
                    Ok(Err(s)) if s.code() == tonic::Code::Unavailable => {}
                    Err(_) => {}
                    Ok(Err(s)) => panic!("upsert {id}: {s:?}"),
                }
                assert!(
                    Instant::now() < given_up,
                    "the majority took no write in 30 s"
                );
            }
        }
        netns.heal();
        // Healed: the minority catches up, and every digest agrees.
        let given_up = Instant::now() + Duration::from_secs(60);
        while nodes[2].status().await.applied_position < last {
            assert!(
                Instant::now() < given_up,
                "node 2 did not catch up in 60 s after the heal\n{}",
                nodes[2].tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        converged(&nodes.iter().collect::<Vec<_>>(), last).await;
        for n in &nodes {
            let mut client = n.customers().await;
            for (id, age) in &acked {
                assert_eq!(
                    age_of(&mut client, id).await,
                    Some(*age),
                    "{id} on {}",
                    n.id
                );
            }
        }
    });
    // The namespace goes after the node in it.
    drop(nodes.pop());
}

/// The same traffic: customers, email decisions at given times, impressions and accepts.
async fn traffic(
    customers: &mut Customers,
    decisions: &mut DecisionServiceClient<Channel>,
    start_ms: i64,
) {
    let at = |ms: i64| prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    };
    for c in 0..20i64 {
        let id = format!("x{c}");
        upsert(customers, &id, 25 + c).await.expect("upsert");
        let decided = start_ms + c * 10;
        let d = within(
            &[],
            "decide",
            decisions.decide(proto::DecideRequest {
                customer_id: id.clone(),
                placement: "email.hero".into(),
                at: Some(at(decided)),
                ..Default::default()
            }),
        )
        .await;
        let kinds: &[proto::OutcomeKind] = if c % 3 == 0 {
            &[proto::OutcomeKind::Impression, proto::OutcomeKind::Accept]
        } else {
            &[proto::OutcomeKind::Impression]
        };
        for (k, kind) in kinds.iter().enumerate() {
            within(
                &[],
                "outcome",
                decisions.record_outcome(proto::Outcome {
                    decision_id: d.decision_id.clone(),
                    offer_id: d.offers[0].offer_id.clone(),
                    kind: *kind as i32,
                    at: Some(at(decided + 1000 + k as i64)),
                    ..Default::default()
                }),
            )
            .await;
        }
    }
}

/// `nextbest export --format dsjson` with these flags; the lines with each decision's
/// `EventId` blanked (ids are random; everything else is the traffic's).
fn export(flags: &[&str], out: &Path) -> Vec<String> {
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_nextbest"))
        .args(["export", "--format", "dsjson", "--rules"])
        .arg(rules())
        .arg("--out")
        .arg(out)
        .args(flags)
        .status()
        .expect("run export");
    assert!(status.success(), "export {flags:?}");
    std::fs::read_to_string(out)
        .expect("read the export")
        .lines()
        .map(|line| {
            let mut v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            v["EventId"] = serde_json::Value::Null;
            v.to_string()
        })
        .collect()
}

#[test]
fn the_same_traffic_through_a_cluster_and_an_embedded_node_exports_the_same_dsjson() {
    let Some(_turn) = have_nats() else {
        return;
    };
    let nats = NatsCluster::start(3);
    let dir = tempfile::tempdir().expect("tmp");
    let (cluster_data, embedded_data) = (dir.path().join("cluster"), dir.path().join("embedded"));
    let node = Node::start(&nats, "node-0", &cluster_data, &[]);
    let mut embedded =
        common::Serve::start_with(&rules(), &embedded_data, &["--admin-token", TOKEN]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let start_ms = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
        / 1000
        - 3600)
        * 1000;
    let nodes = [node];
    bounded(&runtime, &nodes, async {
        let channel = Channel::from_shared(format!("http://{}", embedded.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let mut customers = CustomerServiceClient::with_interceptor(channel.clone(), Auth);
        let mut decisions = DecisionServiceClient::new(channel);
        traffic(&mut customers, &mut decisions, start_ms).await;
        let (mut customers, mut decisions) =
            (nodes[0].customers().await, nodes[0].decisions().await);
        traffic(&mut customers, &mut decisions, start_ms).await;
    });
    // The embedded node flushes its journal as it stops.
    embedded.signal("TERM");
    let _ = embedded.child.wait();
    let from_files = export(
        &["--data", embedded_data.to_str().expect("utf-8")],
        &dir.path().join("a.json"),
    );
    // Decisions reach their stream in batches, a moment after they are answered.
    let urls = nats.url_list();
    let given_up = Instant::now() + Duration::from_secs(10);
    let from_cluster = loop {
        let lines = export(&["--cluster", &urls], &dir.path().join("b.json"));
        if lines.len() >= from_files.len() || Instant::now() >= given_up {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // A line per explored-or-not decision the export keeps (fallbacks are left out).
    assert!(from_files.len() >= 10, "{} lines", from_files.len());
    assert_eq!(from_files, from_cluster);
}

#[test]
fn a_cluster_node_refuses_an_embedded_nodes_data_directory() {
    let Some(_turn) = have_nats() else {
        return;
    };
    let nats = NatsCluster::start(3);
    let data = tempfile::tempdir().expect("tmp");
    // An embedded node's directory: a customer, journaled and then snapshotted.
    let mut embedded = common::Serve::start_with(&rules(), data.path(), &["--admin-token", TOKEN]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let channel = Channel::from_shared(format!("http://{}", embedded.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let mut customers = CustomerServiceClient::with_interceptor(channel, Auth);
        upsert(&mut customers, "ada", 38).await.expect("upsert");
    });
    embedded.signal("TERM");
    let _ = embedded.child.wait();
    for compacted in [false, true] {
        if compacted {
            let done = std::process::Command::new(env!("CARGO_BIN_EXE_nextbest"))
                .args(["compact", "--rules"])
                .arg(rules())
                .arg("--data")
                .arg(data.path())
                .output()
                .expect("compact");
            assert!(
                done.status.success(),
                "{}",
                String::from_utf8_lossy(&done.stderr)
            );
        }
        let refused = std::process::Command::new(env!("CARGO_BIN_EXE_nextbest"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .args(["--rules"])
            .arg(rules())
            .arg("--data")
            .arg(data.path())
            .args(["--cluster", &nats.url_list(), "--node-id", "intruder"])
            .output()
            .expect("run serve");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "compacted {compacted}: {stderr}");
        assert!(
            stderr.contains("holds an embedded node's snapshot or journal"),
            "compacted {compacted}: {stderr}"
        );
    }
}

/// The write stream's first position, as JetStream answers.
fn stream_first(nats: &NatsCluster) -> u64 {
    let info = common::nats::js_request(&nats.url(0), "$JS.API.STREAM.INFO.NEXTBEST_WRITES", "");
    let v: serde_json::Value = serde_json::from_str(&info).expect("stream info is JSON");
    v["state"]["first_seq"].as_u64().expect("first_seq")
}

/// Nodes 0 to 2 on `dirs`, each snapshotting (and publishing, and trimming) every second.
fn snapshotting_nodes(nats: &NatsCluster, dirs: &[tempfile::TempDir]) -> Vec<Node> {
    (0..3)
        .map(|i| {
            Node::start(
                nats,
                &format!("node-{i}"),
                dirs[i].path(),
                &["--compact-interval", "1s"],
            )
        })
        .collect()
}

#[test]
fn the_write_stream_is_trimmed_below_every_snapshot_and_nodes_still_join() {
    let Some(_turn) = have_nats() else {
        return;
    };
    let nats = NatsCluster::start(3);
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().expect("tmp")).collect();
    let mut nodes = snapshotting_nodes(&nats, &dirs);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let last = bounded(&runtime, &nodes, async {
        let mut last = 0;
        for n in &nodes {
            let mut client = n.customers().await;
            for c in 0..40 {
                last = upsert(&mut client, &format!("t{}-{c}", n.id), c)
                    .await
                    .expect("upsert");
            }
        }
        converged(&nodes.iter().collect::<Vec<_>>(), last).await;
        // What the nodes applied: the writes, and barriers after them (`commit`).
        let mut applied = u64::MAX;
        for n in &nodes {
            applied = applied.min(n.status().await.applied_position);
        }
        (last, applied)
    });
    let (last, applied) = last;
    // Every node snapshots (each second, the stream quiet or not) and publishes; the
    // stream is then trimmed below the lowest of them.
    let given_up = Instant::now() + Duration::from_secs(30);
    while stream_first(&nats) <= 1 {
        assert!(
            Instant::now() < given_up,
            "the write stream was not trimmed in 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        stream_first(&nats) <= applied + 1,
        "nothing a snapshot needs is trimmed"
    );
    // A restarted node (its own snapshot) and a new one (the published snapshot) both
    // join, and every digest agrees.
    drop(nodes.remove(0));
    nodes.insert(0, Node::start(&nats, "node-0", dirs[0].path(), &[]));
    nodes.push(Node::start(&nats, "node-3", dirs[3].path(), &[]));
    bounded(&runtime, &nodes, async {
        let status = converged(&nodes.iter().collect::<Vec<_>>(), last).await;
        assert_eq!(status.customers, 120);
    });
}

#[test]
fn a_node_restarts_on_the_catalog_of_its_snapshot_whatever_the_bucket_holds() {
    let Some(_turn) = have_nats() else {
        return;
    };
    let nats = NatsCluster::start(3);
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tmp")).collect();
    let mut nodes = snapshotting_nodes(&nats, &dirs);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let last = bounded(&runtime, &nodes, async {
        let mut client = nodes[0].customers().await;
        let mut last = 0;
        for c in 0..20 {
            last = upsert(&mut client, &format!("s{c}"), c)
                .await
                .expect("upsert");
        }
        converged(&nodes.iter().collect::<Vec<_>>(), last).await;
        // Two reloads racing on two nodes can leave the bucket (what a starting node
        // without a snapshot opens with) holding another catalog than the last the
        // stream applied: put one there as that race would.
        let client = async_nats::connect(nats.url(0)).await.expect("connect");
        let bucket = async_nats::jetstream::new(client)
            .get_key_value("NEXTBEST_CATALOG")
            .await
            .expect("the catalog bucket");
        let entry = bucket
            .get("catalog")
            .await
            .expect("read")
            .expect("a catalog");
        let mut published: serde_json::Value = serde_json::from_slice(&entry).expect("JSON");
        let files = published["files"].as_array_mut().expect("files");
        let schema = files
            .iter_mut()
            .find(|f| f[0] == "schema")
            .expect("a schema file");
        let text = format!(
            "{}\n# changed by another reload\n",
            schema[2].as_str().expect("text")
        );
        schema[2] = text.into();
        bucket
            .put(
                "catalog",
                serde_json::to_vec(&published).expect("JSON").into(),
            )
            .await
            .expect("put");
        last
    });
    // Node 0 snapshots every second: wait for one past the writes, then restart it.
    std::thread::sleep(Duration::from_secs(3));
    drop(nodes.remove(0));
    nodes.insert(0, Node::start(&nats, "node-0", dirs[0].path(), &[]));
    bounded(&runtime, &nodes, async {
        let status = converged(&nodes.iter().collect::<Vec<_>>(), last).await;
        assert_eq!(status.customers, 20);
        let mut versions = Vec::new();
        for n in &nodes {
            versions.push(n.status().await.catalog_version);
        }
        assert!(
            versions.windows(2).all(|w| w[0] == w[1]),
            "every node on one catalog: {versions:?}"
        );
    });
}

/// Every file under `roots` whose bytes hold `needle` (files replaced while scanned are
/// skipped: their successors are scanned next time).
fn files_holding(roots: &[&Path], needle: &[u8]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = roots.iter().map(|r| r.to_path_buf()).collect();
    let mut holding = Vec::new();
    while let Some(path) = files.pop() {
        if path.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                files.extend(entries.filter_map(Result::ok).map(|e| e.path()));
            }
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            holding.push(path);
        }
    }
    holding
}

#[test]
fn a_forgotten_customer_leaves_no_trace_in_any_nodes_or_servers_files() {
    let Some(_turn) = have_nats() else {
        return;
    };
    const ID: &str = "erase-me-5d1c7a";
    const VALUE: &str = "x-canary-93be41";
    let nats = NatsCluster::start(3);
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tmp")).collect();
    let nodes = snapshotting_nodes(&nats, &dirs);
    let mut roots: Vec<&Path> = dirs.iter().map(|d| d.path()).collect();
    roots.extend((0..3).map(|i| nats.store_dir(i)));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // Other customers' traffic, through every node: decisions batched with the forgotten
    // customer's, and what keeps the streams (and their Raft logs) moving.
    let others = |round: usize| {
        let nodes = &nodes;
        async move {
            let mut last = 0;
            for (i, n) in nodes.iter().enumerate() {
                let id = format!("other-{round}-{i}");
                last = upsert(&mut n.customers().await, &id, 30)
                    .await
                    .expect("upsert");
                n.decisions()
                    .await
                    .decide(proto::DecideRequest {
                        customer_id: id,
                        placement: "email.hero".into(),
                        min_position: last,
                        ..Default::default()
                    })
                    .await
                    .expect("decide");
            }
            last
        }
    };
    bounded(&runtime, &nodes, async {
        others(0).await;
        let position = within(
            &nodes,
            "upsert the customer to forget",
            nodes[0].customers().await.upsert(proto::UpsertRequest {
                customer_id: ID.into(),
                attributes: [
                    ("age".to_string(), int(41)),
                    ("language".to_string(), string(VALUE)),
                ]
                .into(),
            }),
        )
        .await
        .position;
        // Decided on node 1 beside another customer (one batch, most likely), shown
        // through node 2.
        let (mut a, mut b) = (nodes[1].decisions().await, nodes[1].decisions().await);
        let request = |customer_id: &str| proto::DecideRequest {
            customer_id: customer_id.into(),
            placement: "email.hero".into(),
            min_position: position,
            ..Default::default()
        };
        let (decision, _) = tokio::join!(a.decide(request(ID)), b.decide(request("other-0-0")));
        let decision = decision.expect("decide").into_inner();
        within(
            &nodes,
            "an impression through another node",
            nodes[2]
                .decisions()
                .await
                .record_outcome(impression(&decision)),
        )
        .await;
        others(1).await;
    });
    // Before the forget: in the nodes' snapshots, the published snapshot and the
    // decisions stream's files (the scan finds what it looks for).
    let given_up = Instant::now() + Duration::from_secs(20);
    loop {
        let holding = files_holding(&roots, VALUE.as_bytes());
        let found = |part: &str| holding.iter().any(|p| p.to_string_lossy().contains(part));
        if found("OBJ_NEXTBEST_SNAPSHOTS")
            && found("NEXTBEST_DECISIONS")
            && dirs
                .iter()
                .all(|d| holding.iter().any(|p| p.starts_with(d.path())))
        {
            break;
        }
        assert!(
            Instant::now() < given_up,
            "the customer's value is not in every snapshot and stream in 20 s: {holding:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let last = bounded(&runtime, &nodes, async {
        within(
            &nodes,
            "forget",
            nodes[2].customers().await.forget(proto::ForgetRequest {
                customer_id: ID.into(),
            }),
        )
        .await;
        others(2).await
    });
    // Erased from the decisions stream and the snapshot store, purged from the write
    // stream by trimming; NATS compacts each stream's Raft log on its own schedule
    // (about every 2 minutes), the traffic going on meanwhile.
    let started = Instant::now();
    let mut round = 3;
    let mut seen = Vec::new();
    loop {
        let mut holding = files_holding(&roots, ID.as_bytes());
        holding.extend(files_holding(&roots, VALUE.as_bytes()));
        holding.sort();
        holding.dedup();
        if holding.is_empty() {
            break;
        }
        if holding != seen {
            eprintln!(
                "{:?} after the forget, holding the customer: {holding:#?}",
                started.elapsed()
            );
            seen = holding.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "4 minutes after the forget, still holding the customer: {holding:#?}\n{}",
            nodes.iter().map(Node::tail).collect::<Vec<_>>().join("\n")
        );
        bounded(&runtime, &nodes, others(round));
        round += 1;
        std::thread::sleep(Duration::from_secs(5));
    }
    eprintln!(
        "no trace of the customer {:?} after the forget",
        started.elapsed()
    );
    let erased: f64 = nodes
        .iter()
        .map(|n| metric(n, "nextbest_cluster_erased_decisions_total"))
        .sum();
    assert!(
        erased >= 1.0,
        "the forgotten customer's decision was erased: {erased}"
    );
    // The other customers' decisions are all still there, and the nodes agree.
    bounded(&runtime, &nodes, async {
        converged(&nodes.iter().collect::<Vec<_>>(), last).await;
    });
    let out = tempfile::tempdir().expect("tmp");
    let exported = std::process::Command::new(env!("CARGO_BIN_EXE_nextbest"))
        .args(["export", "--format", "dsjson", "--rules"])
        .arg(rules())
        .arg("--out")
        .arg(out.path().join("e.json"))
        .args(["--cluster", &nats.url_list()])
        .output()
        .expect("run export");
    assert!(exported.status.success(), "{exported:?}");
    let summary: serde_json::Value =
        serde_json::from_slice(&exported.stdout).expect("export's summary is JSON");
    let lines = std::fs::read_to_string(out.path().join("e.json")).expect("the export");
    assert!(!lines.contains(ID) && !lines.contains(VALUE));
    // Every round decided once per node, and one more beside the forgotten customer's.
    assert_eq!(summary["decisions"], 3 * round + 1, "{summary}");
}

#[test]
fn adaptive_models_learn_alike_on_every_node_from_outcomes_taken_by_any() {
    let Some(_turn) = have_nats() else {
        return;
    };
    let nats = NatsCluster::start(3);
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().expect("tmp")).collect();
    let nodes: Vec<Node> = (0..2)
        .map(|i| Node::start(&nats, &format!("node-{i}"), dirs[i].path(), &[]))
        .collect();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    bounded(&runtime, &nodes, async {
        let mut customers = nodes[0].customers().await;
        let mut deciders = nodes[0].decisions().await;
        let mut takers = nodes[1].decisions().await;
        let mut last = 0;
        let mut taught = 0;
        for c in 0..40usize {
            // TV customers: the sample's `streaming_addon` (adaptive) is theirs.
            let id = format!("tv{c}");
            let written = customers
                .upsert(proto::UpsertRequest {
                    customer_id: id.clone(),
                    attributes: [
                        ("tenure_months".to_string(), int(c as i64)),
                        (
                            "products".to_string(),
                            proto::Value {
                                kind: Some(Kind::StringList(proto::StringList {
                                    values: vec!["tv".into()],
                                })),
                            },
                        ),
                    ]
                    .into(),
                })
                .await
                .expect("upsert")
                .into_inner()
                .position;
            // Decided on one node, its outcome taken by the other, which knows the
            // decision (and the values its model read) from the decisions stream only.
            let decision = deciders
                .decide(proto::DecideRequest {
                    customer_id: id.clone(),
                    placement: "web.home_banner".into(),
                    min_position: written,
                    ..Default::default()
                })
                .await
                .expect("decide")
                .into_inner();
            let Some(shown) = decision
                .offers
                .iter()
                .find(|o| o.offer_id == "streaming_addon")
            else {
                continue;
            };
            let kind = if c % 3 == 0 {
                proto::OutcomeKind::Accept
            } else {
                proto::OutcomeKind::Reject
            };
            let outcome = proto::Outcome {
                decision_id: decision.decision_id.clone(),
                offer_id: shown.offer_id.clone(),
                kind: kind as i32,
                ..Default::default()
            };
            // The taking node waits for the decision to reach it through the decisions
            // stream (`await_decisions`).
            let ack = takers
                .record_outcome(outcome)
                .await
                .expect("outcome")
                .into_inner();
            last = last.max(ack.position);
            taught += 1;
        }
        assert!(taught >= 10, "streaming_addon shown {taught} times of 40");
        // The digests, which include the learning state, agree.
        converged(&nodes.iter().collect::<Vec<_>>(), last).await;
        let mut figures = Vec::new();
        for n in &nodes {
            let catalog = n
                .admin()
                .await
                .get_catalog(proto::GetCatalogRequest {})
                .await
                .expect("catalog")
                .into_inner();
            let cell = catalog.models[0]
                .cells
                .iter()
                .find(|c| c.offer_id == "streaming_addon")
                .cloned()
                .expect("a cell");
            figures.push((
                cell.responses,
                cell.positives,
                cell.base_rate.to_bits(),
                metric(n, "nextbest_model_outcomes_total{result=\"skipped\"}"),
            ));
        }
        // Every outcome taught, on both nodes, the same to the bit.
        assert_eq!(figures[0], figures[1]);
        assert_eq!(figures[0].0, taught as u64, "{figures:?}");
        assert_eq!(figures[0].3, 0.0, "{figures:?}");
    });
}
