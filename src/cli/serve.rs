//! `nextbest serve`: its flags map onto [`ServeConfig`] and the node's options; the
//! serving is [`server::serve`]'s. What is here is the process's: the runtime, the
//! listeners' addresses, Ctrl-C and SIGTERM, and closing the node at the end.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};

use super::logging::Logging;
use super::{DataDir, RulesDir, duration};
use crate::catalog::Sources;
use crate::cluster::{Cluster, ClusterConfig};
use crate::db::Recovery;
use crate::learn::retrain::{RetrainOptions, attempt};
use crate::server::maintenance::Compaction;
use crate::server::{self, Listeners, Node, Retrained, ServeConfig, Transport};

#[derive(Debug, clap::Args)]
pub(super) struct ServeArgs {
    #[command(flatten)]
    rules: RulesDir,
    #[command(flatten)]
    data: DataDir,
    #[command(flatten)]
    logging: Logging,
    /// The gRPC address; anything but loopback needs --admin-token.
    #[arg(long, env = "NEXTBEST_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Where Prometheus scrapes `/metrics` (plain HTTP; no customer data).
    #[arg(
        long,
        env = "NEXTBEST_METRICS_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    metrics_listen: SocketAddr,
    /// How often to look for changed rule files (`0s` to not watch).
    #[arg(long, env = "NEXTBEST_WATCH_INTERVAL", default_value = "1s", value_parser = duration)]
    watch_interval: Duration,
    /// How often to snapshot the state and erase forgotten customers (`0s`: never).
    #[arg(long, env = "NEXTBEST_COMPACT_INTERVAL", default_value = "1h", value_parser = duration)]
    compact_interval: Duration,
    /// Also compact once this many MB of journal were written since the last snapshot:
    /// a restart replays them, so this bounds restart time on a busy node (`0`: by
    /// interval only).
    #[arg(long, env = "NEXTBEST_COMPACT_JOURNAL_MB", default_value_t = 256)]
    compact_journal_mb: u64,
    /// Customer and admin calls must carry `authorization: Bearer <token>`. Required
    /// to listen on anything but loopback.
    #[arg(long, env = "NEXTBEST_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Serve TLS with this PEM certificate chain (with --tls-key).
    #[arg(long, env = "NEXTBEST_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "NEXTBEST_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Larger request messages are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "NEXTBEST_MAX_MESSAGE_BYTES", default_value_t = server::MAX_MESSAGE_BYTES)]
    max_message_bytes: usize,
    /// Calls running longer are cancelled (a client's shorter deadline wins).
    #[arg(long, env = "NEXTBEST_REQUEST_TIMEOUT", default_value = "10s", value_parser = duration)]
    request_timeout: Duration,
    /// Join a cluster: the NATS servers (`nats://HOST:PORT`, comma-separated) whose
    /// JetStream holds the cluster's writes and decisions (docs/cluster.md). Without it,
    /// an embedded node whose journal is in --data.
    #[arg(
        long,
        env = "NEXTBEST_CLUSTER",
        value_delimiter = ',',
        value_name = "URLS"
    )]
    cluster: Vec<String>,
    /// This node's name in the cluster's logs, metrics and Status (default: the host
    /// name and the gRPC port).
    #[arg(long, env = "NEXTBEST_NODE_ID", requires = "cluster")]
    node_id: Option<String>,
    /// Replicas of the streams the first node of a cluster creates (1 to 5; an odd
    /// number: a majority must acknowledge each write).
    #[arg(long, env = "NEXTBEST_CLUSTER_REPLICAS", default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=5))]
    cluster_replicas: u8,
    /// Replicas of the decisions stream the first node creates (default: as
    /// --cluster-replicas). The decisions are the log for retraining, not state: fewer
    /// replicas cost the NATS servers less per decision.
    #[arg(long, env = "NEXTBEST_CLUSTER_DECISION_REPLICAS", value_parser = clap::value_parser!(u8).range(1..=5))]
    cluster_decision_replicas: Option<u8>,
    /// How long the decisions stream the first node creates keeps decisions.
    #[arg(long, env = "NEXTBEST_CLUSTER_DECISIONS_MAX_AGE", default_value = "7d", value_parser = duration)]
    cluster_decisions_max_age: Duration,
    /// Partitions (subjects) of the write stream the first node creates, by customer id.
    #[arg(long, env = "NEXTBEST_CLUSTER_PARTITIONS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    cluster_partitions: u32,
    /// Once serving, write the bound addresses here as JSON (`{"grpc": "127.0.0.1:50051",
    /// "metrics": "127.0.0.1:9464"}`), for whoever started the server on port 0.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
    /// Retrain this often (off by default): `train` on the journal of the last
    /// --retrain-window, `evaluate` the candidate against the catalog running, and take it
    /// only if the lower bound of its 95% interval (SNIPS, value per slot) beats the
    /// running catalog's measured value. Candidates go under `<data>/retrained/` (the five
    /// newest and the one running are kept); a reload from --rules replaces a taken one.
    /// Embedded nodes only.
    #[arg(long, env = "NEXTBEST_RETRAIN_EVERY", value_name = "DURATION", value_parser = duration)]
    retrain_every: Option<Duration>,
    /// The journal a retraining attempt trains and evaluates on: the decisions of this
    /// long before it.
    #[arg(long, env = "NEXTBEST_RETRAIN_WINDOW", default_value = "7d", value_parser = duration)]
    retrain_window: Duration,
}

/// A zero duration: the flag's "never".
fn never_if_zero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

impl ServeArgs {
    /// What [`server::serve`] is told.
    fn config(&self) -> anyhow::Result<ServeConfig> {
        if self.request_timeout.is_zero() {
            bail!("--request-timeout: must be more than 0s");
        }
        let mut transport = Transport::default();
        transport.max_message_bytes = self.max_message_bytes;
        transport.request_timeout = self.request_timeout;
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            transport = transport.with_tls(cert, key)?;
        }
        Ok(ServeConfig {
            transport,
            watch: never_if_zero(self.watch_interval),
            compaction: Compaction {
                every: never_if_zero(self.compact_interval),
                journal_bytes: (self.compact_journal_mb > 0)
                    .then(|| self.compact_journal_mb.saturating_mul(1 << 20)),
            },
            reload_on_sighup: true,
            ready_file: self.ready_file.clone(),
            ..ServeConfig::default()
        })
    }

    /// The cluster to join, when `--cluster` names one.
    fn cluster_config(&self) -> Option<ClusterConfig> {
        if self.cluster.is_empty() {
            return None;
        }
        let node_id = self.node_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "node".to_string());
            format!("{host}-{}", self.listen.port())
        });
        Some(ClusterConfig {
            servers: self.cluster.clone(),
            node_id,
            replicas: usize::from(self.cluster_replicas),
            partitions: self.cluster_partitions,
            decision_replicas: self.cluster_decision_replicas.map(usize::from),
            decisions_max_age: self.cluster_decisions_max_age,
            snapshot_every: never_if_zero(self.compact_interval),
            ..ClusterConfig::default()
        })
    }

    pub(super) fn run(self) -> anyhow::Result<ExitCode> {
        self.logging.init();
        let config = self.config()?;
        let cluster = self.cluster_config();
        let retrain = self.retrain_every.filter(|d| !d.is_zero());
        if retrain.is_some() && cluster.is_some() {
            bail!(
                "--retrain-every: not in a cluster yet (a taken candidate must become the cluster's catalog); retrain with `train` and reload"
            );
        }
        if self.retrain_window.as_millis() < 60_000 {
            bail!("--retrain-window: must be at least 1m");
        }
        let (rules, data, listen, metrics_listen) = (
            &self.rules.path,
            &self.data.path,
            self.listen,
            self.metrics_listen,
        );
        let admin_token = self.admin_token.filter(|t| !t.is_empty());
        if !listen.ip().is_loopback() {
            if admin_token.is_none() {
                bail!(
                    "--listen {listen} is not a loopback address: set --admin-token (or NEXTBEST_ADMIN_TOKEN) so that customer data and administration need it"
                );
            }
            if !config.transport.tls() {
                tracing::warn!(
                    %listen,
                    "serving without TLS: the admin token travels in clear; set --tls-cert and --tls-key or terminate TLS in front of nextbest"
                );
            }
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?;
        // A cluster node on an empty directory starts from the cluster's newest snapshot.
        if let Some(config) = &cluster
            && let Some(path) = runtime.block_on(crate::cluster::bootstrap(config, data))?
        {
            tracing::info!(snapshot = %path.display(), "bootstrapped from the cluster's snapshot");
        }
        // A cluster node trims histories by fixed limits, not its rules directory's: every
        // node must trim alike whatever catalog it opened with.
        let options = crate::db::DbOptions {
            history_limits: cluster.is_some().then(crate::state::HistoryLimits::default),
            ..crate::db::DbOptions::default()
        };
        // A cluster node opens with its snapshot's catalog, else the cluster's, when it has
        // one.
        let opening = match &cluster {
            Some(config) => runtime.block_on(crate::cluster::opening_catalog(config, data))?,
            None => None,
        };
        let (node, recovery) = match opening {
            Some(catalog) => {
                tracing::info!(catalog = %catalog.version, "opening with the cluster's catalog");
                Node::open_on(rules, Arc::new(catalog), data, options)?
            }
            None => Node::open_with(rules, data, options)?,
        };
        log_recovery(data, &recovery);
        let node = Arc::new(node.with_admin_token(admin_token));
        runtime.block_on(async {
            if let Some(config) = cluster {
                // What a node publishes as the cluster's catalog when it has none yet.
                let (sources, _) = Sources::read(rules);
                let joined = Cluster::join(config, node.db(), &sources, &recovery).await?;
                node.set_cluster(joined);
            }
            let grpc = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            tracing::info!(
                catalog = %node.db().catalog().version,
                rules = %rules.display(),
                tls = config.transport.tls(),
                grpc = %grpc.local_addr().unwrap_or(listen),
                "serving"
            );
            let metrics = tokio::net::TcpListener::bind(metrics_listen)
                .await
                .with_context(|| format!("listening on {metrics_listen} for metrics"))?;
            tracing::info!(
                metrics = %format_args!("http://{}/metrics", metrics.local_addr().unwrap_or(metrics_listen)),
                "metrics served"
            );
            let listeners = Listeners { grpc, metrics };
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let retraining = retrain.map(|every| {
                let options = RetrainOptions {
                    window: self.retrain_window.as_millis() as i64,
                    gate: true,
                    seed: 0,
                };
                tokio::spawn(retrain_every(Arc::clone(&node), every, options, stopped))
            });
            let served = server::serve(Arc::clone(&node), config, listeners, shutdown_signal()).await;
            // An attempt under way finishes first: it holds the node.
            let _ = stop.send(true);
            if let Some(task) = retraining {
                let _ = task.await;
            }
            served?;
            tracing::info!("drained: no new calls, the ones in flight finished");
            Ok::<_, anyhow::Error>(())
        })?;
        drop(runtime);
        let node = Arc::try_unwrap(node)
            .map_err(|_| anyhow!("the server still holds the node after shutdown"))?;
        node.close().context("flushing the journal")?;
        tracing::info!("journal flushed; stopped");
        Ok(ExitCode::SUCCESS)
    }
}

/// What opening the data directory found: a summary, and a warning for each thing it
/// had to cut, skip or drop.
fn log_recovery(data: &Path, recovery: &Recovery) {
    let data = data.display();
    tracing::info!(
        %data,
        snapshot = recovery.snapshot.as_ref().map(|p| p.display().to_string()),
        customers = recovery.customers_loaded,
        replayed = recovery.replayed,
        took = ?recovery.elapsed,
        "recovered"
    );
    if let Some(at) = &recovery.truncated {
        tracing::warn!(%data, %at, "cut a damaged journal tail");
    }
    for at in &recovery.damage {
        tracing::warn!(%data, %at, "skipped damaged records");
    }
    if recovery.dropped_values > 0 {
        tracing::warn!(
            %data,
            dropped = recovery.dropped_values,
            "dropped stored values that no longer fit the schema"
        );
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down: draining the calls in flight");
}

/// Retraining candidates kept under `<data>/retrained/` besides the one running.
const KEEP_CANDIDATES: usize = 5;

/// Removes all but the `keep` newest candidates under `dir` (named by their attempt's
/// time in ms), never the one `running`.
fn prune_retrained(dir: &Path, running: &Path, keep: usize) -> std::io::Result<()> {
    let mut candidates: Vec<(i64, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|e| {
            let path = e.ok()?.path();
            let at = path.file_name()?.to_str()?.parse().ok()?;
            Some((at, path))
        })
        .collect();
    candidates.sort_unstable_by_key(|c| std::cmp::Reverse(c.0));
    for (_, path) in candidates.into_iter().skip(keep) {
        if path != running {
            std::fs::remove_dir_all(&path)?;
        }
    }
    Ok(())
}

/// `--retrain-every`: an attempt every `every` until `stop`, each off the request threads;
/// a candidate taken becomes the node's catalog and the next attempt starts from it.
async fn retrain_every(
    node: Arc<Node>,
    every: Duration,
    options: RetrainOptions,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut running = node.rules().to_path_buf();
    let mut version = node.db().catalog().version.clone();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(every) => {}
        }
        // A reload from the rules directory since the last attempt: start from it.
        let catalog = node.db().catalog();
        if catalog.version != version {
            running = node.rules().to_path_buf();
            version = catalog.version.clone();
        }
        let now = crate::setup::now_ms();
        let out = node.db().data_dir().join("retrained").join(now.to_string());
        let (from, db, options) = (running.clone(), node.db(), options.clone());
        let tried = tokio::task::spawn_blocking(move || {
            let a = attempt(db.data_dir(), &from, &out, now, &options)?;
            let taken = if a.taken {
                let candidate = crate::catalog::Catalog::load(&out)
                    .map_err(crate::learn::LearnError::Catalog)?;
                Some(db.set_catalog(Arc::new(candidate)))
            } else {
                None
            };
            Ok::<_, crate::learn::LearnError>((a, taken))
        })
        .await;
        let kept = prune_retrained(
            &node.db().data_dir().join("retrained"),
            &running,
            KEEP_CANDIDATES,
        );
        if let Err(e) = kept {
            tracing::warn!(error = %e, "pruning old retraining candidates");
        }
        match tried {
            Ok(Ok((a, taken))) => {
                let (estimate, low, high) = a.estimate.unwrap_or((f64::NAN, f64::NAN, f64::NAN));
                tracing::info!(
                    candidate = %a.candidate,
                    trained = a.trained,
                    estimate, low, high,
                    running = a.running.unwrap_or(f64::NAN),
                    taken = a.taken,
                    reason = a.reason.as_deref().unwrap_or(""),
                    "retraining attempt"
                );
                if taken.is_some() {
                    running = PathBuf::from(&a.candidate);
                    version = node.db().catalog().version.clone();
                    node.count_retrain(Retrained::Taken);
                } else {
                    node.count_retrain(Retrained::Refused);
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "retraining attempt failed");
                node.count_retrain(Retrained::Failed);
            }
            Err(e) => {
                tracing::warn!(error = %e, "retraining attempt panicked");
                node.count_retrain(Retrained::Failed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_keeps_the_newest_candidates_and_the_running_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        for at in [100, 200, 300, 400] {
            std::fs::create_dir_all(dir.path().join(at.to_string()).join("offers")).expect("mkdir");
        }
        std::fs::create_dir(dir.path().join("notes")).expect("mkdir");
        let running = dir.path().join("100");
        prune_retrained(dir.path(), &running, 2).expect("prune");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        // 400 and 300 are the newest; 100 runs; 200 goes; what is not a candidate stays.
        assert_eq!(left, ["100", "300", "400", "notes"]);
    }
}
