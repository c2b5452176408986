//! A JetStream cluster of `nats-server` processes for the cluster tests, a network namespace
//! to cut one of them off from the others, and a std-only NATS request. Std only: every test
//! binary compiles this module.
//!
//! [`NatsCluster::start`] runs N servers on 127.0.0.1, each with its own store directory,
//! client, cluster and monitoring ports and server name `nats-<i>`, routed to each other as
//! the cluster `nextbest-test`. It returns once a stream with N replicas can be created,
//! which on nats-server 2.9.10 means, on every running server:
//!
//! - `/jsz` names the same meta leader (`meta_cluster.leader`, empty while there is none)
//!   and counts all N peers (`meta_cluster.cluster_size`: it reads 2 of 3 while the routes
//!   are still forming);
//! - the meta leader's `/jsz` (only the leader lists `meta_cluster.replicas`) shows every
//!   other running server `current` and not `offline`: stream placement only picks peers
//!   the leader hears from;
//! - `/healthz` answers 200: a meta leader is known, this server is current with it, and
//!   every stream and consumer it holds a replica of is current (after a restart: caught
//!   up). `/healthz` alone is not enough at start: it says ok as soon as the first two
//!   servers elect a leader, before the third has joined.
//!
//! `/healthz` logs a warning on every failed check, so it is asked only once `/jsz` looks
//! ready, which keeps the server logs ([`NatsCluster::logs`]) readable.
//!
//! A single server (`start(1)`) runs without clustering; only its `/healthz` is asked.
//!
//! Dropping a [`NatsCluster`] kills its servers by PID and removes their directory;
//! dropping a [`Netns`] deletes it. Should the test process die without dropping them
//! (SIGKILL from a timeout, an abort), a watchdog `sh` beside each server and namespace
//! does the same within about 2 s, so no server keeps a port or a CPU after the run.
//!
//! [`NatsCluster::start_partitionable`] puts the last server in a [`Netns`]; [`Netns::cut`]
//! then drops every packet between it and the others (and the host's clients) until
//! [`Netns::heal`], while its monitoring endpoint stays reachable over the namespace's
//! control link, so a test can watch the minority side.
//!
//! What nats-server 2.9.10 does, measured with this harness on 3 servers:
//! - after SIGKILL of a stream's leader, the others elect a new one in 4 to 8 s; meanwhile
//!   a publish to the stream's subjects gets "no responders" at once (the leader held the
//!   only subscription); the meta leader, killed, is replaced in 3 to 5 s;
//! - a killed server restarted on its store is ready again (`/healthz` ok) in 2 to 6 s;
//!   all of them restarted on their stores elect a meta leader in about 5 s (the raft
//!   election timeout), where a fresh cluster takes under 1 s;
//! - after [`Netns::cut`], the majority elects a new stream leader in 4 to 9 s; meanwhile
//!   its publishes get no reply at all (they go to the old leader over the stalled
//!   route). The minority side's publishes get no reply (its stream leader cannot reach a
//!   quorum) until it steps down, 10 to 20 s after the cut, and then "no responders"; its
//!   `/jsz` names no meta leader from then on too. A stream info request answered by a
//!   cut-off leader is stale, not refused;
//! - after [`Netns::heal`], the rejoining server's higher raft terms can force new
//!   elections: a stream or the meta group may be leaderless again for several seconds.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The cluster name every server is started with.
pub const CLUSTER_NAME: &str = "nextbest-test";

/// How long [`NatsCluster::start`] and [`NatsCluster::restart`] wait for readiness.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How many times [`NatsCluster::start`] starts over with new ports when a server exits
/// early (most likely: another process took one of its ports in the meantime).
const START_ATTEMPTS: u32 = 5;

/// How many lines of each server's log [`NatsCluster::logs`] shows.
const LOG_LINES: usize = 200;

/// Makes temporary directories and namespaces of one process unique.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The `nats-server` program: `$NATS_SERVER` if set, else the first on `PATH`, else
/// `/usr/sbin/nats-server` (Debian's package) or `/usr/local/bin/nats-server`; `None`
/// where there is none, so a test can say it did not run.
pub fn nats_server_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("nats-server"))
        .chain(["/usr/sbin/nats-server", "/usr/local/bin/nats-server"].map(PathBuf::from))
        .find(|candidate| candidate.is_file())
}

/// A JetStream cluster of `nats-server` processes, named `nats-0` … `nats-<n-1>`; every
/// process is killed and the store directories removed when dropped.
#[derive(Debug)]
pub struct NatsCluster {
    /// Holds one directory per server: `nats-<i>/store`, `nats-<i>/log`, `nats-<i>/out`.
    dir: PathBuf,
    servers: Vec<Server>,
}

/// One server of a [`NatsCluster`]: all it takes to start it again the same way.
#[derive(Debug)]
struct Server {
    name: String,
    /// The address it listens on for clients and routes.
    host: String,
    /// The address its monitoring endpoint listens on: `host`, or in a namespace the
    /// control link's ([`Netns::control_ip`]), which [`Netns::cut`] leaves alone.
    http_host: String,
    /// The namespace it runs in, if any.
    netns: Option<String>,
    client_port: u16,
    cluster_port: u16,
    http_port: u16,
    /// `nats://HOST:CLUSTER_PORT` of the other servers.
    routes: Vec<String>,
    store: PathBuf,
    /// The server's own log (`-l`).
    log: PathBuf,
    /// What it prints to stdout and stderr (before its log is open, say).
    out: PathBuf,
    /// Its configuration file: only where monitoring listens (`http`).
    config: PathBuf,
    child: Option<Child>,
    /// The [`watchdog`] of `child`.
    watchdog: Option<Child>,
}

/// Where a server listens and which namespace it runs in; ports are picked at start.
#[derive(Debug)]
struct Placement {
    host: String,
    http_host: String,
    netns: Option<String>,
}

/// Why the cluster is not ready.
#[derive(Debug)]
enum NotReady {
    /// Not yet: wait more.
    Waiting(String),
    /// A server exited: waiting is pointless.
    Exited(String),
}

impl NatsCluster {
    /// Starts `n` servers on 127.0.0.1 forming one JetStream cluster and waits (30 s at
    /// most, then panics with their logs) until a stream with `n` replicas can be created.
    pub fn start(n: usize) -> NatsCluster {
        let placements = (0..n)
            .map(|_| Placement {
                host: "127.0.0.1".to_string(),
                http_host: "127.0.0.1".to_string(),
                netns: None,
            })
            .collect();
        NatsCluster::start_placed(placements)
    }

    /// As [`NatsCluster::start`], but the last server runs in a new [`Netns`], listening on
    /// [`Netns::ns_ip`]; the others listen on [`Netns::host_ip`], which is reachable both
    /// from the host and from the namespace, so [`NatsCluster::urls`] works on either side.
    /// Panics where namespaces cannot be made (see [`Netns::create`]).
    pub fn start_partitionable(n: usize) -> (NatsCluster, Netns) {
        assert!(n >= 2, "a partitionable cluster needs at least 2 servers");
        let netns = Netns::new();
        let placements = (0..n)
            .map(|i| {
                if i + 1 == n {
                    Placement {
                        host: netns.ns_ip().to_string(),
                        http_host: netns.control_ip().to_string(),
                        netns: Some(netns.name().to_string()),
                    }
                } else {
                    Placement {
                        host: netns.host_ip().to_string(),
                        http_host: netns.host_ip().to_string(),
                        netns: None,
                    }
                }
            })
            .collect();
        (NatsCluster::start_placed(placements), netns)
    }

    fn start_placed(placements: Vec<Placement>) -> NatsCluster {
        let n = placements.len();
        assert!(n > 0, "a cluster needs at least one server");
        let program = nats_server_path()
            .expect("nats-server is not installed (apt-get install -y nats-server)");
        let dir = unique_temp_dir("nextbest-nats");
        let mut last_failure = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let mut cluster = NatsCluster::prepare(&dir, &placements);
            for i in 0..n {
                cluster.spawn(i, &program);
            }
            match cluster.wait_until_ready(READY_TIMEOUT) {
                Ok(()) => return cluster,
                Err(NotReady::Exited(why)) if attempt < START_ATTEMPTS => {
                    // Most likely a port was taken between picking and binding: new ports.
                    last_failure = why;
                    // Kills what still runs and removes the directory, made again next time.
                    drop(cluster);
                }
                Err(NotReady::Exited(why) | NotReady::Waiting(why)) => {
                    let earlier = if last_failure.is_empty() {
                        String::new()
                    } else {
                        format!(" (the attempt before: {last_failure})")
                    };
                    panic!(
                        "nats cluster not ready at attempt {attempt}{earlier}: {why}\n{}",
                        cluster.logs()
                    );
                }
            }
        }
        unreachable!("the last attempt panics or returns")
    }

    /// The servers, not started yet, with fresh ports and directories under `dir`.
    fn prepare(dir: &Path, placements: &[Placement]) -> NatsCluster {
        std::fs::create_dir_all(dir).expect("create the cluster's temporary directory");
        // All ports are held until every one is picked, so none is picked twice.
        let mut held = Vec::new();
        let mut pick = |p: &Placement| {
            // A namespace has ports of its own: any port free here is free there too.
            let bind = if p.netns.is_some() {
                "127.0.0.1"
            } else {
                &p.host
            };
            let listener = TcpListener::bind((bind, 0)).expect("bind a free port");
            let port = listener.local_addr().expect("the bound address").port();
            held.push(listener);
            port
        };
        let ports: Vec<[u16; 3]> = placements
            .iter()
            .map(|p| [pick(p), pick(p), pick(p)])
            .collect();
        drop(held);
        let servers = placements
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let name = format!("nats-{i}");
                let own = dir.join(&name);
                std::fs::create_dir_all(own.join("store")).expect("create a store directory");
                let config = own.join("nats.conf");
                let http = format!("http: \"{}:{}\"\n", p.http_host, ports[i][2]);
                std::fs::write(&config, http).expect("write a nats-server configuration");
                let routes = placements
                    .iter()
                    .zip(&ports)
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, (other, [_, cluster, _]))| format!("nats://{}:{cluster}", other.host))
                    .collect();
                Server {
                    name,
                    host: p.host.clone(),
                    http_host: p.http_host.clone(),
                    netns: p.netns.clone(),
                    client_port: ports[i][0],
                    cluster_port: ports[i][1],
                    http_port: ports[i][2],
                    routes,
                    store: own.join("store"),
                    log: own.join("log"),
                    out: own.join("out"),
                    config,
                    child: None,
                    watchdog: None,
                }
            })
            .collect();
        NatsCluster {
            dir: dir.to_path_buf(),
            servers,
        }
    }

    /// Starts server `i` with its arguments (the same each time).
    fn spawn(&mut self, i: usize, program: &Path) {
        let server = &mut self.servers[i];
        assert!(server.child.is_none(), "{} is already running", server.name);
        if let Some(mut old) = server.watchdog.take() {
            let _ = old.kill();
            let _ = old.wait();
        }
        let mut command = match &server.netns {
            // `ip netns exec` execs the program: the child's PID is nats-server's own.
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(program);
                command
            }
            None => Command::new(program),
        };
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&server.out)
            .expect("open the server's output file");
        let err = out.try_clone().expect("clone the output file");
        command
            .args(["-a", &server.host])
            .args(["-p", &server.client_port.to_string()])
            // Only where monitoring listens (`http: HOST:PORT`): `-m` alone listens on `-a`.
            .arg("-c")
            .arg(&server.config)
            .arg("-js")
            .arg("-sd")
            .arg(&server.store)
            .args(["-n", &server.name])
            .arg("-l")
            .arg(&server.log)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if !server.routes.is_empty() {
            command
                .args(["--cluster_name", CLUSTER_NAME])
                .arg("--cluster")
                .arg(format!("nats://{}:{}", server.host, server.cluster_port))
                .arg("--routes")
                .arg(server.routes.join(","));
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("run {} for {}: {e}", program.display(), server.name));
        // Should this process die without dropping the cluster (SIGKILL, a `static`), the
        // watchdog kills the server and removes the directory; it ends with the server.
        server.watchdog = watchdog(
            r#"while kill -0 "$1" && kill -0 "$2"; do sleep 1; done 2>/dev/null
               kill -0 "$1" 2>/dev/null || { kill -9 "$2"; sleep 1; rm -rf "$3"; }"#,
            &[&child.id().to_string(), &self.dir.to_string_lossy()],
        );
        server.child = Some(child);
    }

    /// Waits until [`NatsCluster::check_ready`] passes, at most `timeout`.
    fn wait_until_ready(&mut self, timeout: Duration) -> Result<(), NotReady> {
        let given_up = Instant::now() + timeout;
        loop {
            let why = match self.check_ready() {
                Ok(()) => return Ok(()),
                Err(NotReady::Waiting(why)) => why,
                Err(exited) => return Err(exited),
            };
            if Instant::now() >= given_up {
                return Err(NotReady::Waiting(format!(
                    "not ready in {} s: {why}",
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether a stream with a replica on every running server can be created now; see
    /// the module's documentation.
    fn check_ready(&mut self) -> Result<(), NotReady> {
        let n = self.servers.len();
        for server in &mut self.servers {
            if let Some(child) = &mut server.child
                && let Some(status) = child.try_wait().expect("wait for a nats-server")
            {
                server.child = None;
                return Err(NotReady::Exited(format!(
                    "{} exited ({status}); the end of its log:\n{}{}",
                    server.name,
                    tail(&server.log, 20),
                    tail(&server.out, 20)
                )));
            }
        }
        let running: Vec<usize> = (0..n)
            .filter(|&i| self.servers[i].child.is_some())
            .collect();
        if n > 1 {
            self.check_meta(&running)?;
        }
        for &i in &running {
            let (status, body) = http_get(
                &self.servers[i].http_host,
                self.servers[i].http_port,
                "/healthz",
                Duration::from_secs(1),
            )
            .map_err(NotReady::Waiting)?;
            if status != 200 {
                return Err(NotReady::Waiting(format!(
                    "{} /healthz {status}: {}",
                    self.servers[i].name,
                    body.trim()
                )));
            }
        }
        Ok(())
    }

    /// Whether the `running` servers agree on a meta leader that sees them all current.
    fn check_meta(&self, running: &[usize]) -> Result<(), NotReady> {
        let n = self.servers.len();
        let mut leader = None;
        for &i in running {
            let server = &self.servers[i];
            let jsz = self
                .get_json(i, "/jsz", Duration::from_secs(1))
                .map_err(NotReady::Waiting)?;
            let meta = jsz.get("meta_cluster");
            let named = meta
                .and_then(|m| m.get("leader"))
                .and_then(Json::as_str)
                .unwrap_or("");
            if named.is_empty() {
                return Err(NotReady::Waiting(format!(
                    "{} knows no meta leader",
                    server.name
                )));
            }
            let size = meta
                .and_then(|m| m.get("cluster_size"))
                .and_then(Json::as_u64);
            if size != Some(n as u64) {
                let size = size.map_or("no".to_string(), |size| size.to_string());
                return Err(NotReady::Waiting(format!(
                    "{} counts {size} meta peers, not {n}",
                    server.name
                )));
            }
            match leader {
                None => leader = Some(named.to_string()),
                Some(ref l) if l != named => {
                    return Err(NotReady::Waiting(format!(
                        "{} names meta leader {named}, another server {l}",
                        server.name
                    )));
                }
                Some(_) => {}
            }
        }
        let leader = leader.unwrap_or_default();
        let Some(l) = running
            .iter()
            .copied()
            .find(|&i| self.servers[i].name == leader)
        else {
            return Err(NotReady::Waiting(format!(
                "meta leader {leader} is not a running server"
            )));
        };
        let jsz = self
            .get_json(l, "/jsz", Duration::from_secs(1))
            .map_err(NotReady::Waiting)?;
        let replicas = jsz
            .get("meta_cluster")
            .and_then(|m| m.get("replicas"))
            .map(Json::items)
            .unwrap_or_default();
        for &i in running {
            let name = &self.servers[i].name;
            if i == l {
                continue;
            }
            let current = replicas.iter().any(|r| {
                r.get("name").and_then(Json::as_str) == Some(name.as_str())
                    && r.get("current").and_then(Json::as_bool) == Some(true)
                    && r.get("offline").and_then(Json::as_bool) != Some(true)
            });
            if !current {
                return Err(NotReady::Waiting(format!(
                    "meta leader {leader} does not see {name} current"
                )));
            }
        }
        Ok(())
    }

    /// `path` on server `i`'s monitoring port, parsed.
    fn get_json(&self, i: usize, path: &str, timeout: Duration) -> Result<Json, String> {
        let server = &self.servers[i];
        let (status, body) = http_get(&server.http_host, server.http_port, path, timeout)?;
        if status != 200 {
            return Err(format!("{} {path}: {status} {}", server.name, body.trim()));
        }
        Json::parse(&body).map_err(|e| format!("{} {path}: {e}", server.name))
    }

    /// How many servers the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether the cluster has no server (never: [`NatsCluster::start`] wants one).
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Server `i`'s name, `nats-<i>`, as `/jsz` and stream cluster info name it.
    pub fn name(&self, i: usize) -> &str {
        &self.servers[i].name
    }

    /// The index of the server called `name` (`nats-<i>`).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.servers.iter().position(|s| s.name == name)
    }

    /// Server `i`'s client URL, `nats://HOST:PORT`.
    pub fn url(&self, i: usize) -> String {
        let server = &self.servers[i];
        format!("nats://{}:{}", server.host, server.client_port)
    }

    /// Every server's client URL, `nats://HOST:PORT`, in index order; a namespaced server's
    /// is on [`Netns::ns_ip`], reachable from the host while not cut.
    pub fn urls(&self) -> Vec<String> {
        (0..self.servers.len()).map(|i| self.url(i)).collect()
    }

    /// [`NatsCluster::urls`] joined with commas, as `nextbest serve --cluster` takes them.
    pub fn url_list(&self) -> String {
        self.urls().join(",")
    }

    /// `HOST:PORT` of server `i`'s monitoring endpoint (`/jsz`, `/healthz`, `/varz`).
    pub fn monitor_addr(&self, i: usize) -> String {
        let server = &self.servers[i];
        format!("{}:{}", server.http_host, server.http_port)
    }

    /// Server `i`'s store directory (`-sd`); it survives [`NatsCluster::kill`].
    pub fn store_dir(&self, i: usize) -> &Path {
        &self.servers[i].store
    }

    /// Whether server `i` is running (started and not killed, and has not exited).
    pub fn is_running(&mut self, i: usize) -> bool {
        let server = &mut self.servers[i];
        match &mut server.child {
            Some(child) => match child.try_wait().expect("wait for a nats-server") {
                Some(_) => {
                    server.child = None;
                    false
                }
                None => true,
            },
            None => false,
        }
    }

    /// The PID of server `i`: nats-server's own, also in a namespace. Panics if it is not
    /// running.
    pub fn pid(&self, i: usize) -> u32 {
        let server = &self.servers[i];
        server
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", server.name))
            .id()
    }

    /// Kills server `i` with SIGKILL (by its PID, never by name) and waits for it to exit.
    /// Its ports and store directory stay, for [`NatsCluster::restart`].
    pub fn kill(&mut self, i: usize) {
        let server = &mut self.servers[i];
        let mut child = server
            .child
            .take()
            .unwrap_or_else(|| panic!("{} is not running", server.name));
        // Err only when it has exited already, which is what was wanted.
        let _ = child.kill();
        child.wait().expect("wait for a killed nats-server");
        if let Some(mut watchdog) = server.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }

    /// Starts server `i` again, after [`NatsCluster::kill`], with the same ports, store
    /// directory and arguments, and waits (30 s at most, then panics with the logs) until
    /// it has rejoined: the cluster is ready as at start and `/healthz` says its streams
    /// are current (its last entries may still be unapplied: see
    /// [`NatsCluster::wait_stream_synced`]). A namespaced server cut off by [`Netns::cut`]
    /// cannot rejoin: use [`NatsCluster::restart_no_wait`], then heal and
    /// [`NatsCluster::wait_ready`]. Restarted while cut off, it may name itself leader of
    /// a stream it led before (stale, as [`NatsCluster::stream_leader`] allows for).
    pub fn restart(&mut self, i: usize) {
        self.restart_no_wait(i);
        self.wait_ready_or_panic(&format!("{} restarted", self.servers[i].name));
    }

    /// Starts server `i` again as [`NatsCluster::restart`] does, without waiting.
    pub fn restart_no_wait(&mut self, i: usize) {
        let program = nats_server_path().expect("nats-server is not installed");
        self.spawn(i, &program);
    }

    /// Waits (30 s at most, then panics with the logs) until every running server is ready
    /// as at start: one meta leader that sees the others current, every `/healthz` ok.
    pub fn wait_ready(&mut self) {
        self.wait_ready_or_panic("waited");
    }

    fn wait_ready_or_panic(&mut self, what: &str) {
        if let Err(NotReady::Exited(why) | NotReady::Waiting(why)) =
            self.wait_until_ready(READY_TIMEOUT)
        {
            panic!("{what}, nats cluster not ready: {why}\n{}", self.logs());
        }
    }

    /// The raw JSON of server `i`'s `/jsz?accounts=true&streams=true`: its view of the meta
    /// group (`meta_cluster`; only the meta leader lists `replicas`) and, under
    /// `account_details[].stream_detail[]`, each stream it holds a replica of with
    /// `cluster.leader`. Panics if the server does not answer in 2 s.
    pub fn jsz(&self, i: usize) -> String {
        let server = &self.servers[i];
        let (status, body) = http_get(
            &server.http_host,
            server.http_port,
            "/jsz?accounts=true&streams=true",
            Duration::from_secs(2),
        )
        .unwrap_or_else(|e| panic!("{} /jsz: {e}", server.name));
        assert_eq!(status, 200, "{} /jsz: {body}", server.name);
        body
    }

    /// The index of the server that leads the meta group, by the running servers that
    /// answer: one that names itself, and that no fewer others name than any other claimant.
    pub fn meta_leader(&self) -> Option<usize> {
        self.leader_by(|jsz| {
            jsz.get("meta_cluster")
                .and_then(|m| m.get("leader"))
                .and_then(Json::as_str)
                .map(str::to_string)
        })
    }

    /// The index of the server that leads `stream` (in any account), by the running
    /// servers that answer within 1 s: one that names itself leader in its `/jsz` stream
    /// details; if several do (an old leader cut off may still believe it leads for a
    /// while), the one most other servers name. `None` while no server claims it (during
    /// an election, or if no replica answers).
    pub fn stream_leader(&self, stream: &str) -> Option<usize> {
        self.leader_by(|jsz| {
            stream_detail(jsz, stream)
                .and_then(|s| s.get("cluster"))
                .and_then(|c| c.get("leader"))
                .and_then(Json::as_str)
                .map(str::to_string)
        })
    }

    /// Waits (30 s at most, then panics with the logs) until every running server that
    /// holds a replica of `stream` reports the same last sequence and message count in its
    /// `/jsz`. `/healthz` ok is not that: a follower applies the last entries only once
    /// it learns they are committed, with the leader's next append or heartbeat (up to
    /// 1 s later on an idle stream).
    pub fn wait_stream_synced(&self, stream: &str) {
        let given_up = Instant::now() + READY_TIMEOUT;
        loop {
            let mut states = Vec::new();
            for (i, server) in self.servers.iter().enumerate() {
                if server.child.is_none() {
                    continue;
                }
                let path = "/jsz?accounts=true&streams=true";
                let state = self.get_json(i, path, Duration::from_secs(1)).map(|jsz| {
                    stream_detail(&jsz, stream)
                        .and_then(|s| s.get("state"))
                        .map(|state| {
                            let number = |key| state.get(key).and_then(Json::as_u64);
                            (number("last_seq"), number("messages"))
                        })
                });
                states.push((server.name.as_str(), state));
            }
            let held: Vec<_> = states
                .iter()
                .filter_map(|(_, state)| state.as_ref().ok().copied().flatten())
                .collect();
            let answered = states.iter().all(|(_, state)| state.is_ok());
            if answered && !held.is_empty() && held.iter().all(|h| *h == held[0]) {
                return;
            }
            assert!(
                Instant::now() < given_up,
                "stream {stream} not in sync in {} s: {states:?}\n{}",
                READY_TIMEOUT.as_secs(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The leader by the claims `leader_of` reads from each answering server's `/jsz`.
    fn leader_by(&self, leader_of: impl Fn(&Json) -> Option<String>) -> Option<usize> {
        let mut named = Vec::new();
        for i in 0..self.servers.len() {
            // One that exited unnoticed does not answer either.
            if self.servers[i].child.is_none() {
                continue;
            }
            let path = "/jsz?accounts=true&streams=true";
            if let Ok(jsz) = self.get_json(i, path, Duration::from_secs(1))
                && let Some(leader) = leader_of(&jsz).filter(|l| !l.is_empty())
            {
                named.push((i, leader));
            }
        }
        named
            .iter()
            .filter(|(i, leader)| *leader == self.servers[*i].name)
            .map(|(i, _)| *i)
            .max_by_key(|&i| {
                named
                    .iter()
                    .filter(|(_, leader)| *leader == self.servers[i].name)
                    .count()
            })
    }

    /// The last 200 lines of each server's log, and anything it printed, for a failing
    /// test to show.
    pub fn logs(&self) -> String {
        let mut logs = String::new();
        for server in &self.servers {
            let _ = write!(
                logs,
                "--- {} ({}, the last {LOG_LINES} lines at most) ---\n{}",
                server.name,
                server.log.display(),
                tail(&server.log, LOG_LINES)
            );
            let out = tail(&server.out, LOG_LINES);
            if !out.is_empty() {
                let _ = write!(logs, "--- {} stdout and stderr ---\n{out}", server.name);
            }
        }
        logs
    }

    /// Kills and waits for every server still running.
    fn stop_all(&mut self) {
        for server in &mut self.servers {
            for mut child in [server.child.take(), server.watchdog.take()]
                .into_iter()
                .flatten()
            {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        self.stop_all();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The entry of `stream` (in any account) under `account_details[].stream_detail[]` of a
/// `/jsz?accounts=true&streams=true` answer.
fn stream_detail<'a>(jsz: &'a Json, stream: &str) -> Option<&'a Json> {
    jsz.get("account_details")
        .map(Json::items)
        .unwrap_or_default()
        .iter()
        .flat_map(|account| {
            account
                .get("stream_detail")
                .map(Json::items)
                .unwrap_or_default()
        })
        .find(|s| s.get("name").and_then(Json::as_str) == Some(stream))
}

/// The last `lines` lines of the file at `path` (none if it cannot be read), each ending
/// in a newline.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|line| format!("{line}\n"))
        .collect()
}

/// A new directory under the system's temporary directory, unique to this process, call
/// and moment: `PREFIX-PID-COUNTER-NANOS`.
fn unique_temp_dir(prefix: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{count}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    dir
}

/// A network namespace joined to the host by two veth pairs. The data link, which
/// [`Netns::cut`] partitions: host end `10.R.S.1/30` ([`Netns::host_ip`]), namespace end
/// `10.R.S.2/30` ([`Netns::ns_ip`]). The control link, never cut, to watch the namespace
/// during a partition: host end `10.R.S.5/30`, namespace end `10.R.S.6/30`
/// ([`Netns::control_ip`]). R and S come from this process's PID and a counter, skipping
/// any `10.R.S.*` in use on the host, so parallel tests do not collide.
///
/// A process in the namespace bound to `ns_ip` (not `0.0.0.0`) is reachable only over the
/// data link, and one on the host bound to `host_ip` is reached from the namespace only
/// over it; the host reaches `host_ip` itself locally, never across the pair.
///
/// Dropping it deletes both pairs and the namespace, cut or not, and whether or not
/// processes still run in it (they keep a namespace without links until they exit).
#[derive(Debug)]
pub struct Netns {
    name: String,
    host_if: String,
    ns_if: String,
    control_host_if: String,
    host_ip: String,
    ns_ip: String,
    control_ip: String,
    cut: std::cell::Cell<bool>,
    /// Deletes the namespace should this process die without dropping it.
    watchdog: Option<Child>,
}

impl Netns {
    /// A new namespace; panics where one cannot be made (see [`Netns::create`]).
    pub fn new() -> Netns {
        Netns::create().unwrap_or_else(|e| panic!("create a network namespace: {e}"))
    }

    /// A new namespace, or why there cannot be one (no `ip` or `tc` from iproute2, not
    /// root), so a test can say it did not run.
    pub fn create() -> Result<Netns, String> {
        let pid = std::process::id();
        let mut last = String::new();
        for _ in 0..16 {
            // Names of network interfaces are 15 bytes at most: nbt + 7 digits + 1 + 3.
            let count = COUNTER.fetch_add(1, Ordering::Relaxed) % 1000;
            let name = format!("nbt{pid}n{count}");
            let prefix = free_subnet(pid, count)?;
            if let Err(e) = ip(&["netns", "add", &name]) {
                if e.contains("exists") {
                    // Left over by an earlier process with this PID: another name.
                    last = e;
                    continue;
                }
                return Err(e);
            }
            // From here on, dropping `netns` undoes what was done.
            let mut netns = Netns {
                host_if: format!("nbt{pid}h{count}"),
                ns_if: format!("nbt{pid}p{count}"),
                control_host_if: format!("nbt{pid}c{count}"),
                name,
                host_ip: format!("{prefix}1"),
                ns_ip: format!("{prefix}2"),
                control_ip: format!("{prefix}6"),
                cut: std::cell::Cell::new(false),
                watchdog: None,
            };
            netns.link(&netns.host_if, &netns.ns_if, &netns.host_ip, &netns.ns_ip)?;
            let control_ns_if = format!("nbt{pid}q{count}");
            let control_host_ip = format!("{prefix}5");
            netns.link(
                &netns.control_host_if,
                &control_ns_if,
                &control_host_ip,
                &netns.control_ip,
            )?;
            ip(&["-n", &netns.name, "link", "set", "lo", "up"])?;
            netns.watchdog = watchdog(
                r#"while kill -0 "$1"; do sleep 1; done 2>/dev/null
                   ip link del "$2"; ip link del "$3"; ip netns del "$4""#,
                &[&netns.host_if, &netns.control_host_if, &netns.name],
            );
            // Fails now, not at the first cut, where `tc` is missing.
            tc(&["qdisc", "show", "dev", &netns.host_if])?;
            return Ok(netns);
        }
        Err(format!("no free namespace name: {last}"))
    }

    /// A veth pair from the host (`host_if`, `host_ip`/30) into the namespace (`ns_if`,
    /// `ns_ip`/30), both ends up.
    fn link(&self, host_if: &str, ns_if: &str, host_ip: &str, ns_ip: &str) -> Result<(), String> {
        let name = &self.name;
        ip(&[
            "link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", name,
        ])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", host_if])?;
        ip(&["link", "set", host_if, "up"])?;
        ip(&[
            "-n",
            name,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            ns_if,
        ])?;
        ip(&["-n", name, "link", "set", ns_if, "up"])
    }

    /// The namespace's name (for `ip netns exec NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host end of the data link, `10.R.S.1`: the host, as the namespace reaches it.
    pub fn host_ip(&self) -> &str {
        &self.host_ip
    }

    /// The namespace end of the data link, `10.R.S.2`: the namespace, as the host reaches
    /// it until [`Netns::cut`].
    pub fn ns_ip(&self) -> &str {
        &self.ns_ip
    }

    /// The namespace end of the control link, `10.R.S.6`, which [`Netns::cut`] leaves
    /// alone: bind what the test watches during a partition here (a namespaced nats-server's
    /// monitoring listens here), and nothing the partition is meant to stop.
    pub fn control_ip(&self) -> &str {
        &self.control_ip
    }

    /// `ip netns exec NAME program`: add arguments and run it in the namespace. `ip` execs
    /// `program`, so the child's PID is the program's own.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Partitions the data link: every packet either way is dropped, silently, as by a
    /// broken network (a `pfifo` queue of length 0 on both ends: this kernel has neither
    /// netfilter nor `netem`). Connections are not reset: they stall, and a connect times
    /// out, until [`Netns::heal`]. Traffic within each side, and over the control link, is
    /// untouched. Cutting twice is cutting once.
    pub fn cut(&self) {
        let queue = ["root", "pfifo", "limit", "0"];
        let host = [&["qdisc", "replace", "dev", &self.host_if][..], &queue].concat();
        let ns = [
            &["-n", &self.name, "qdisc", "replace", "dev", &self.ns_if][..],
            &queue,
        ]
        .concat();
        for args in [host, ns] {
            tc(&args).unwrap_or_else(|e| panic!("cut {}: {e}", self.name));
        }
        self.cut.set(true);
    }

    /// Undoes [`Netns::cut`]: packets flow again, and stalled TCP connections carry on at
    /// their next retransmission, which backs off: after a long cut, seconds later.
    /// Healing what is not cut does nothing.
    pub fn heal(&self) {
        if !self.cut.get() {
            return;
        }
        let host = ["qdisc", "del", "dev", &self.host_if, "root"];
        let ns = ["-n", &self.name, "qdisc", "del", "dev", &self.ns_if, "root"];
        for args in [&host[..], &ns[..]] {
            tc(args).unwrap_or_else(|e| panic!("heal {}: {e}", self.name));
        }
        self.cut.set(false);
    }

    /// Whether [`Netns::cut`] is in force.
    pub fn is_cut(&self) -> bool {
        self.cut.get()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        // Deleting one end deletes its pair; the namespace's own may outlive `netns del`.
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["link", "del", &self.control_host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A `sh -c script` with this process's PID as `$1` and `args` as `$2`…, its output
/// discarded: it polls `kill -0 "$1"` to notice that this process died without cleaning
/// up (SIGKILL, an abort, a `static` never dropped) and cleans up for it, by PID and
/// path, never by name. `None` if `sh` cannot be run (the cleanup then rests on `Drop`).
fn watchdog(script: &str, args: &[&str]) -> Option<Child> {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("nextbest-test-watchdog")
        .arg(std::process::id().to_string())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

/// `10.R.S.` such that no host interface has an address in `10.R.S.0/24`, tried from a
/// start picked from `pid` and `count`, so parallel test processes try different ones.
fn free_subnet(pid: u32, count: u32) -> Result<String, String> {
    let output = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .map_err(|e| format!("run ip (iproute2): {e}"))?;
    let used = String::from_utf8_lossy(&output.stdout).into_owned();
    // R in 100..=227, S in 0..=255: 32768 prefixes.
    let start = pid.wrapping_mul(64).wrapping_add(count) % 32768;
    (0..32768)
        .map(|k| (start + k) % 32768)
        .map(|key| format!("10.{}.{}.", 100 + key / 256, key % 256))
        .find(|prefix| !used.contains(&format!(" {prefix}")))
        .ok_or_else(|| "no free 10.R.S.0/24 for a namespace".to_string())
}

/// Runs `ip ARGS`; the error is its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

/// Runs `tc ARGS`; the error is its stderr.
fn tc(args: &[&str]) -> Result<(), String> {
    run("tc", args)
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run {program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {} ({})",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim(),
            output.status
        ))
    }
}

/// `GET path` over HTTP/1.0 from `host:port`: the status code and the body. Each of
/// connecting, sending and reading takes `timeout` at most.
fn http_get(host: &str, port: u16, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let addr = resolve(&format!("{host}:{port}"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("set timeouts: {e}"))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n")
        .map_err(|e| format!("send GET {path} to {addr}: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("read GET {path} from {addr}: {e}"))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {path} from {addr}: no end of headers"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("GET {path} from {addr}: no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// The first address of `host:port`.
fn resolve(addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("resolve {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolve {addr}: no address"))
}

/// A NATS request over a new connection to `url` (`nats://HOST:PORT`): subscribes to an
/// inbox, publishes `body` to `subject` with the inbox as reply subject, and returns the
/// payload of the first reply, within 5 s; panics otherwise. For the JetStream API, e.g.
/// `$JS.API.STREAM.INFO.<name>` with an empty body, or `$JS.API.STREAM.CREATE.<name>`
/// with the config; a publish to a stream's subject returns its ack or `{"error":…}`
/// (2.9.10 writes `{"stream":"S", "seq":N}`, with a space: parse, do not match text). See
/// [`try_request`].
pub fn js_request(url: &str, subject: &str, body: &str) -> String {
    try_request(url, subject, body, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("request {subject} at {url}: {e}"))
}

/// As [`js_request`], with a bound, and the failure returned: cannot connect, `-ERR` from
/// the server, no responders (nothing subscribes to `subject`: the server says so at
/// once), or no reply within `timeout` (what a cut-off server's clients see).
pub fn try_request(
    url: &str,
    subject: &str,
    body: &str,
    timeout: Duration,
) -> Result<String, String> {
    let given_up = Instant::now() + timeout;
    let left = || {
        given_up
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no reply in {} ms", timeout.as_millis()))
    };
    let host_port = url
        .strip_prefix("nats://")
        .unwrap_or(url)
        .trim_end_matches('/');
    let addr = resolve(host_port)?;
    let stream = TcpStream::connect_timeout(&addr, left()?)
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let mut writer = stream
        .try_clone()
        .map_err(|e| format!("clone the socket: {e}"))?;
    writer
        .set_write_timeout(Some(timeout))
        .map_err(|e| format!("set timeouts: {e}"))?;
    let mut reader = BufReader::new(stream);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let inbox = format!("_INBOX.nbt.{}.{count}", std::process::id());
    let mut greeted = false;
    loop {
        reader
            .get_ref()
            .set_read_timeout(Some(left()?))
            .map_err(|e| format!("set timeouts: {e}"))?;
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return Err(format!("{addr} closed the connection")),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("no reply in {} ms", timeout.as_millis()));
            }
            Err(e) => return Err(format!("read from {addr}: {e}")),
        }
        let line = line.trim_end();
        let mut words = line.split_ascii_whitespace();
        let op = words.next().unwrap_or("").to_ascii_uppercase();
        let args: Vec<&str> = words.collect();
        match op.as_str() {
            "INFO" if !greeted => {
                greeted = true;
                let request = format!(
                    "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true,\
                     \"no_responders\":true,\"name\":\"nextbest-test\"}}\r\n\
                     SUB {inbox} 1\r\nPUB {subject} {inbox} {}\r\n{body}\r\nPING\r\n",
                    body.len()
                );
                writer
                    .write_all(request.as_bytes())
                    .map_err(|e| format!("send to {addr}: {e}"))?;
            }
            "INFO" | "+OK" | "PONG" => {}
            "PING" => writer
                .write_all(b"PONG\r\n")
                .map_err(|e| format!("send to {addr}: {e}"))?,
            "-ERR" => return Err(format!("{addr} says {line}")),
            "MSG" | "HMSG" => {
                let sizes: Vec<usize> = args
                    .iter()
                    .rev()
                    .take(if op == "MSG" { 1 } else { 2 })
                    .map(|n| n.parse().map_err(|_| format!("bad {op} line {line:?}")))
                    .collect::<Result<_, _>>()?;
                let (header_len, total) = match sizes[..] {
                    [total] => (0, total),
                    [total, header] => (header, total),
                    _ => return Err(format!("bad {op} line {line:?}")),
                };
                if header_len > total {
                    return Err(format!("bad {op} line {line:?}"));
                }
                reader
                    .get_ref()
                    .set_read_timeout(Some(left()?))
                    .map_err(|e| format!("set timeouts: {e}"))?;
                let mut message = vec![0; total + 2];
                reader
                    .read_exact(&mut message)
                    .map_err(|e| format!("read a message from {addr}: {e}"))?;
                let headers = String::from_utf8_lossy(&message[..header_len]).into_owned();
                let payload = String::from_utf8_lossy(&message[header_len..total]).into_owned();
                // `NATS/1.0 503` with no payload: no responders.
                let status = headers.lines().next().unwrap_or("").trim();
                if payload.is_empty() && status.starts_with("NATS/1.0 503") {
                    return Err(format!("no responders for {subject}"));
                }
                if payload.is_empty() && !status.is_empty() && status != "NATS/1.0" {
                    return Err(format!("status {status} for {subject}"));
                }
                return Ok(payload);
            }
            _ => return Err(format!("unexpected line from {addr}: {line:?}")),
        }
    }
}

/// A JSON value, as far as the monitoring endpoints need: numbers are kept as written.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, as written.
    Number(String),
    /// A string, unescaped.
    String(String),
    /// An array's items.
    Array(Vec<Json>),
    /// An object's members, in order.
    Object(Vec<(String, Json)>),
}

impl Json {
    /// Parses one JSON document (trailing whitespace allowed).
    pub(crate) fn parse(text: &str) -> Result<Json, String> {
        let mut parser = JsonParser {
            bytes: text.as_bytes(),
            at: 0,
        };
        let value = parser.value(0)?;
        parser.space();
        if parser.at != parser.bytes.len() {
            return Err(format!("json: trailing text at byte {}", parser.at));
        }
        Ok(value)
    }

    /// The member `key` of an object.
    pub(crate) fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The items of an array; none for anything else.
    pub(crate) fn items(&self) -> &[Json] {
        match self {
            Json::Array(items) => items,
            _ => &[],
        }
    }

    /// The text of a string.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    /// A number that is a whole, non-negative one.
    pub(crate) fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Number(n) => n.parse().ok(),
            _ => None,
        }
    }

    /// A `true` or `false`.
    pub(crate) fn as_bool(&self) -> Option<bool> {
        match self {
            Json::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

/// A recursive-descent JSON parser over bytes.
#[derive(Debug)]
struct JsonParser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl JsonParser<'_> {
    fn space(&mut self) {
        while self.bytes.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn error(&self, what: &str) -> String {
        format!("json: {what} at byte {}", self.at)
    }

    fn eat(&mut self, byte: u8) -> Result<(), String> {
        self.space();
        if self.bytes.get(self.at) == Some(&byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected {:?}", byte as char)))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, String> {
        if depth > 64 {
            return Err(self.error("nested too deep"));
        }
        self.space();
        match self.bytes.get(self.at) {
            Some(b'{') => {
                self.at += 1;
                let mut members = Vec::new();
                self.space();
                if self.bytes.get(self.at) == Some(&b'}') {
                    self.at += 1;
                    return Ok(Json::Object(members));
                }
                loop {
                    self.space();
                    let key = self.string()?;
                    self.eat(b':')?;
                    members.push((key, self.value(depth + 1)?));
                    self.space();
                    match self.bytes.get(self.at) {
                        Some(b',') => self.at += 1,
                        Some(b'}') => {
                            self.at += 1;
                            return Ok(Json::Object(members));
                        }
                        _ => return Err(self.error("expected ',' or '}'")),
                    }
                }
            }
            Some(b'[') => {
                self.at += 1;
                let mut items = Vec::new();
                self.space();
                if self.bytes.get(self.at) == Some(&b']') {
                    self.at += 1;
                    return Ok(Json::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.space();
                    match self.bytes.get(self.at) {
                        Some(b',') => self.at += 1,
                        Some(b']') => {
                            self.at += 1;
                            return Ok(Json::Array(items));
                        }
                        _ => return Err(self.error("expected ',' or ']'")),
                    }
                }
            }
            Some(b'"') => self.string().map(Json::String),
            Some(b't') => self.word("true", Json::Bool(true)),
            Some(b'f') => self.word("false", Json::Bool(false)),
            Some(b'n') => self.word("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.at;
                while self
                    .bytes
                    .get(self.at)
                    .is_some_and(|b| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                {
                    self.at += 1;
                }
                let number = std::str::from_utf8(&self.bytes[start..self.at])
                    .map_err(|_| self.error("bad number"))?;
                Ok(Json::Number(number.to_string()))
            }
            _ => Err(self.error("expected a value")),
        }
    }

    fn word(&mut self, word: &str, value: Json) -> Result<Json, String> {
        if self.bytes[self.at..].starts_with(word.as_bytes()) {
            self.at += word.len();
            Ok(value)
        } else {
            Err(self.error("expected a value"))
        }
    }

    fn string(&mut self) -> Result<String, String> {
        if self.bytes.get(self.at) != Some(&b'"') {
            return Err(self.error("expected a string"));
        }
        self.at += 1;
        let mut out = Vec::new();
        loop {
            let Some(&byte) = self.bytes.get(self.at) else {
                return Err(self.error("unterminated string"));
            };
            self.at += 1;
            match byte {
                b'"' => break,
                b'\\' => {
                    let Some(&escaped) = self.bytes.get(self.at) else {
                        return Err(self.error("unterminated string"));
                    };
                    self.at += 1;
                    let plain = match escaped {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let code = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&code)
                                && self.bytes[self.at..].starts_with(b"\\u")
                            {
                                self.at += 2;
                                let low = self.hex4()?;
                                0x10000
                                    + ((code - 0xD800) << 10)
                                    + (low.wrapping_sub(0xDC00) & 0x3FF)
                            } else {
                                code
                            };
                            char::from_u32(code).unwrap_or('\u{FFFD}')
                        }
                        _ => return Err(self.error("bad escape")),
                    };
                    let mut buf = [0; 4];
                    out.extend_from_slice(plain.encode_utf8(&mut buf).as_bytes());
                }
                _ => out.push(byte),
            }
        }
        String::from_utf8(out).map_err(|_| self.error("string is not UTF-8"))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self
            .bytes
            .get(self.at..self.at + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u32::from_str_radix(d, 16).ok())
            .ok_or_else(|| self.error("bad \\u escape"))?;
        self.at += 4;
        Ok(digits)
    }
}
