//! Serving a node: [`run`] serves the gRPC services on one listener; [`serve`] is the
//! whole wiring the binary runs and the tests call: the metrics endpoint, the rules
//! watcher, the [`maintenance`](super::maintenance) tasks and SIGHUP around [`run`]. The
//! listeners come in bound (port 0 in tests) and the shutdown as a future, so the caller
//! owns both; the node comes in opened and goes back to the caller, who closes it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::maintenance::{self, Compaction, HEAL_INTERVAL};
use super::proto::{
    self, admin_service_server::AdminServiceServer, customer_service_server::CustomerServiceServer,
    decision_service_server::DecisionServiceServer, probe_service_server::ProbeServiceServer,
};
use super::{Metrics, Node, Probe, Service, Transport, transport, watch};

/// How [`serve`] serves, beside the node it is given: what the command line's `serve`
/// flags map onto. The default serves with the default transport and nothing in the
/// background but healing.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub transport: Transport,
    /// Look for changed rule files this often (`None`: not at all).
    pub watch: Option<Duration>,
    pub compaction: Compaction,
    /// After the journal failed, look this often whether the disk takes writes again.
    pub heal_interval: Duration,
    /// Reload the catalog on SIGHUP (one process-wide signal: the binary's choice).
    pub reload_on_sighup: bool,
    /// Once listening, write the bound addresses here as JSON,
    /// `{"grpc": "127.0.0.1:50051", "metrics": "127.0.0.1:9464"}` (atomically: the file
    /// appears whole), for whoever started the server on port 0.
    pub ready_file: Option<PathBuf>,
}

impl Default for ServeConfig {
    fn default() -> ServeConfig {
        ServeConfig {
            transport: Transport::default(),
            watch: None,
            compaction: Compaction::default(),
            heal_interval: HEAL_INTERVAL,
            reload_on_sighup: false,
            ready_file: None,
        }
    }
}

/// Where [`serve`] listens: gRPC, and plain HTTP for `/metrics`.
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub metrics: TcpListener,
}

/// Why [`serve`] stopped before its shutdown, or could not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("registering the metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Grpc(#[from] tonic::transport::Error),
    #[error("the metrics endpoint: {0}")]
    Scrapes(std::io::Error),
    #[error("writing the ready file `{}`: {error}", path.display())]
    Ready {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("a background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Serves `node` on `listeners` until `shutdown` resolves, then drains the calls in
/// flight, stops the background tasks and returns; the node is then the caller's alone
/// (to close). Metrics are registered into a registry of this server's own.
pub async fn serve(
    node: Arc<Node>,
    config: ServeConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let registry = prometheus::Registry::new();
    let metrics = Arc::new(Metrics::new(&registry)?);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let addrs = (listeners.grpc.local_addr(), listeners.metrics.local_addr());
    let mut background = tokio::task::JoinSet::new();
    background.spawn(maintenance::heal_when_failed(
        Arc::clone(&node),
        config.heal_interval,
        until_stopped(),
    ));
    if let Some(interval) = config.watch {
        background.spawn(watch::watch(
            Arc::clone(&node),
            Arc::clone(&metrics),
            interval,
            until_stopped(),
        ));
    }
    // A cluster node's applier snapshots; its journal holds no writes to compact.
    if config.compaction.is_scheduled() && node.cluster().is_none() {
        background.spawn(maintenance::compact_when_due(
            Arc::clone(&node),
            config.compaction,
            until_stopped(),
        ));
    }
    if config.reload_on_sighup {
        background.spawn(reload_on_sighup(
            Arc::clone(&node),
            Arc::clone(&metrics),
            until_stopped(),
        ));
    }
    let scrapes = tokio::spawn(super::metrics::serve(
        listeners.metrics,
        registry,
        Arc::clone(&node),
        until_stopped(),
    ));
    let ready = match (&config.ready_file, addrs) {
        (Some(path), (Ok(grpc), Ok(metrics))) => write_ready(path, grpc, metrics),
        (Some(path), (Err(error), _) | (_, Err(error))) => Err(ServeError::Ready {
            path: path.clone(),
            error,
        }),
        (None, _) => Ok(()),
    };
    let served = match ready {
        Ok(()) => {
            let stopping = async {
                shutdown.await;
                let _ = stop.send(true);
            };
            run(listeners.grpc, node, metrics, &config.transport, stopping)
                .await
                .map_err(ServeError::from)
        }
        Err(e) => Err(e),
    };
    // Whatever ended the serving, everything else stops too and lets go of the node.
    let _ = stop.send(true);
    let scraped = scrapes.await;
    while let Some(task) = background.join_next().await {
        task?;
    }
    served?;
    scraped?.map_err(ServeError::Scrapes)
}

/// Writes the ready file through a temporary one beside it, so it appears whole.
fn write_ready(
    path: &std::path::Path,
    grpc: std::net::SocketAddr,
    metrics: std::net::SocketAddr,
) -> Result<(), ServeError> {
    let json = serde_json::json!({ "grpc": grpc.to_string(), "metrics": metrics.to_string() });
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    std::fs::write(&partial, format!("{json}\n"))
        .and_then(|()| std::fs::rename(&partial, path))
        .map_err(|error| ServeError::Ready {
            path: path.to_path_buf(),
            error,
        })
}

/// Reloads the catalog on every SIGHUP until `shutdown` resolves.
async fn reload_on_sighup(
    node: Arc<Node>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            got = hup.recv() => if got.is_none() { return },
        }
        let _ = super::reload(&node, &metrics, "SIGHUP").await;
    }
}

/// Serves the node on `listener` until `shutdown` resolves, then stops accepting,
/// finishes the calls in flight and returns. Health reports SERVING from the start (the
/// node is loaded and recovered before this is called) and NOT_SERVING while draining.
pub async fn run(
    listener: TcpListener,
    node: Arc<Node>,
    metrics: Arc<Metrics>,
    transport: &Transport,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    match node.cluster() {
        // A cluster node serves once it has applied what the stream held when it joined
        // (it answers meanwhile, from a state that lags the cluster's).
        Some(cluster) if !cluster.caught_up() => {
            set_not_serving(&health).await;
            let (health, cluster) = (health.clone(), Arc::clone(cluster));
            tokio::spawn(async move {
                cluster.wait_caught_up().await;
                tracing::info!(position = cluster.applied(), "caught up with the cluster");
                set_serving(&health).await;
            });
        }
        _ => set_serving(&health).await,
    }
    // Reflection in both versions: grpcurl speaks v1, many other clients (Python's
    // grpcio-reflection, older grpcurl, GUI tools) still only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::DESCRIPTOR)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .expect("the descriptor sets built with the crate are valid");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("the descriptor sets built with the crate are valid");
    metrics.reload(true, &node.db().catalog().version);
    let calls = metrics.calls(&[
        proto::DESCRIPTOR,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]);
    let service = Service { node, metrics };
    let (draining_started, drain_started) = tokio::sync::oneshot::channel::<()>();
    let draining = async move {
        shutdown.await;
        set_not_serving(&health).await;
        let _ = draining_started.send(());
    };
    let limit = transport.max_message_bytes;
    let serving = transport
        .builder()?
        // First, so outermost: it counts the code the client gets, the oversize one
        // already rewritten by the next layer.
        .layer(calls)
        .layer(tower::util::MapResponseLayer::new(
            transport::oversize_is_resource_exhausted,
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(DecisionServiceServer::new(service.clone()).max_decoding_message_size(limit))
        .add_service(CustomerServiceServer::new(service.clone()).max_decoding_message_size(limit))
        .add_service(AdminServiceServer::new(service).max_decoding_message_size(limit))
        .add_service(ProbeServiceServer::new(Probe))
        .serve_with_incoming_shutdown(
            // Without TCP_NODELAY, small replies wait for delayed ACKs: ~40 ms a call.
            tokio_stream::StreamExt::map(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                |accepted| accepted.map(transport::Unvectored),
            ),
            draining,
        );
    // Streams that never end (a client watching health) would hold the drain forever:
    // calls still open `DRAIN_GRACE` after the shutdown signal are cut off.
    let given_up = async {
        if drain_started.await.is_ok() {
            tokio::time::sleep(DRAIN_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let served = tokio::select! {
        served = serving => served,
        () = given_up => {
            tracing::warn!(grace = ?DRAIN_GRACE, "drain: calls still open after the grace were cut off");
            Ok(())
        }
    };
    served
}

/// Every service SERVING, the server as a whole (`""`, what load balancers and probes
/// ask) included.
async fn set_serving(health: &tonic_health::server::HealthReporter) {
    use tonic_health::ServingStatus::Serving;
    health.set_service_status("", Serving).await;
    health.set_serving::<DecisionServiceServer<Service>>().await;
    health.set_serving::<CustomerServiceServer<Service>>().await;
    health.set_serving::<AdminServiceServer<Service>>().await;
}

/// Every service NOT_SERVING, the server as a whole included.
async fn set_not_serving(health: &tonic_health::server::HealthReporter) {
    use tonic_health::ServingStatus::NotServing;
    health.set_service_status("", NotServing).await;
    health
        .set_not_serving::<DecisionServiceServer<Service>>()
        .await;
    health
        .set_not_serving::<CustomerServiceServer<Service>>()
        .await;
    health
        .set_not_serving::<AdminServiceServer<Service>>()
        .await;
}

/// How long a shutdown waits for calls in flight.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);
