//! `AdminService` (reload, catalog info), and [`reload`]: the one way every trigger
//! reloads the catalog (SIGHUP, the rules watcher, the `Reload` call).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tonic::{Request, Response, Status};

use super::convert::timestamp;
use super::proto::{self, admin_service_server::AdminService};
use super::{Metrics, Node, NodeError, Service};
use crate::catalog::Catalog;

/// Reloads the node's rules directory off the request threads, counts the result
/// (`nextbest_reloads_total`, the version in force) and logs it with its `trigger`. A refused reload leaves the running catalog in force; a
/// reload task that failed ([`NodeError::Task`]) is not counted.
pub async fn reload(
    node: &Arc<Node>,
    metrics: &Metrics,
    trigger: &str,
) -> Result<Arc<Catalog>, NodeError> {
    let reloading = Arc::clone(node);
    let started = std::time::Instant::now();
    let result = match node.cluster() {
        Some(cluster) => node.reload_cluster(cluster).await,
        None => tokio::task::spawn_blocking(move || reloading.reload())
            .await
            .map_err(|e| NodeError::Task(format!("the reload task failed: {e}")))
            .and_then(|reloaded| reloaded),
    };
    match &result {
        Ok(catalog) => {
            metrics.reload(true, &catalog.version);
            tracing::info!(
                trigger,
                catalog = %catalog.version,
                took = ?started.elapsed(),
                "catalog reloaded and in force"
            );
        }
        Err(NodeError::Task(e)) => tracing::error!(trigger, error = %e, "reload failed"),
        Err(NodeError::Cluster(e)) => {
            tracing::error!(trigger, error = %e, "reload not published to the cluster")
        }
        Err(e) => {
            metrics.reload(false, &node.db().catalog().version);
            tracing::warn!(
                trigger,
                error = %e,
                "reload refused, the running catalog stays"
            );
        }
    }
    result
}

#[tonic::async_trait]
impl AdminService for Service {
    async fn reload(
        &self,
        request: Request<proto::ReloadRequest>,
    ) -> Result<Response<proto::ReloadResponse>, Status> {
        async {
            self.authorize(&request)?;
            let result = match reload(&self.node, &self.metrics, "Reload").await {
                Err(NodeError::Task(e)) => return Err(Status::internal(e)),
                // The cluster out of reach: the node's fault, not the rules'.
                Err(NodeError::Cluster(e)) => return Err(super::convert::cluster_status(e)),
                result => result,
            };
            let version = self.node.db().catalog().version.to_string();
            Ok(Response::new(match result {
                Ok(_) => proto::ReloadResponse {
                    version,
                    reloaded: true,
                    errors: Vec::new(),
                },
                Err(NodeError::Catalog(e)) => proto::ReloadResponse {
                    version,
                    reloaded: false,
                    errors: e.errors.lines(),
                },
                Err(e) => proto::ReloadResponse {
                    version,
                    reloaded: false,
                    errors: vec![e.to_string()],
                },
            }))
        }
        .await
    }

    async fn get_catalog(
        &self,
        request: Request<proto::GetCatalogRequest>,
    ) -> Result<Response<proto::CatalogInfo>, Status> {
        async {
            self.authorize(&request)?;
            let db = self.node.db();
            let catalog = db.catalog();
            let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
            let status = if catalog.models.is_empty() {
                crate::db::LearningStatus::default()
            } else {
                db.learning_status()
            };
            let kinds = |k: crate::adaptive::Kinds| k.iter().map(|k| k.as_str().into()).collect();
            let models = catalog
                .models
                .iter()
                .map(|m| proto::ModelInfo {
                    id: m.id.clone(),
                    description: m.description.clone().unwrap_or_default(),
                    predictors: m.reads().map(Into::into).collect(),
                    positive: kinds(m.positive),
                    negative: kinds(m.negative),
                    window_seconds: u64::try_from(m.window / 1000).unwrap_or(0),
                    prior: m.prior_rate,
                    per_channel: m.per_channel,
                    cells: status
                        .cells
                        .iter()
                        .filter(|c| c.model == m.id)
                        .map(|c| proto::ModelCell {
                            offer_id: c.offer.clone(),
                            channel: c.channel.clone().unwrap_or_default(),
                            responses: c.responses,
                            positives: c.positives,
                            base_rate: c.base_rate,
                            auc: c.auc,
                            calibration: c.calibration,
                            recent_responses: c.recent,
                            maturity: c.maturity,
                        })
                        .collect(),
                })
                .collect();
            Ok(Response::new(proto::CatalogInfo {
                models,
                version: catalog.version.to_string(),
                loaded_at: Some(timestamp(self.node.loaded_at.load(Ordering::Relaxed))),
                offers: count(catalog.offers.len()),
                placements: count(catalog.placements.len()),
                experiments: count(catalog.experiments.len()),
                customer_attributes: count(catalog.schema.customer.len()),
                context_attributes: count(catalog.schema.context.len()),
                customers: db.store().len() as u64,
            }))
        }
        .await
    }

    async fn status(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::NodeStatus>, Status> {
        async {
            self.authorize(&request)?;
            let db = self.node.db();
            // A digest reads every customer: off the request threads.
            let digest = super::blocking({
                let db = Arc::clone(&db);
                move || Ok(db.digest())
            })
            .await?;
            let mut status = proto::NodeStatus {
                mode: "embedded".into(),
                catalog_version: db.catalog().version.to_string(),
                digest: digest.digest,
                customers: digest.customers,
                outcomes: digest.outcomes,
                connected: true,
                caught_up: true,
                ..Default::default()
            };
            if let Some(cluster) = self.node.cluster() {
                let s = cluster.status();
                status.node_id = cluster.node_id().to_string();
                status.mode = "cluster".into();
                status.applied_position = s.applied;
                status.stream_position = s.tail;
                status.lag = s.tail.saturating_sub(s.applied);
                status.partition_positions = s.partitions;
                status.decisions_position = s.decisions_applied;
                status.connected = s.connected;
                status.caught_up = s.caught_up;
                status.lag_seconds = cluster.lag_seconds();
                let asked = tokio::time::timeout(
                    std::time::Duration::from_secs(2),
                    cluster.partition_tails(),
                );
                status.partition_tails = asked.await.ok().flatten().unwrap_or_default();
            }
            Ok(Response::new(status))
        }
        .await
    }
}
