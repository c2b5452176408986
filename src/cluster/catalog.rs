//! The cluster's catalog: one key (`catalog`) of a JetStream key-value bucket holds the
//! files of the catalog in force, as the node that published it read them. A reload on
//! any node validates its own rules directory there and publishes it only when it has no
//! error at all; every node watches the key and swaps to each version it sees, so a bad
//! catalog reaches no node and a good one reaches all. A node that joins takes the
//! cluster's catalog (publishing its own when the cluster has none yet).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt;

use super::{Cluster, ClusterError, unavailable};
use crate::catalog::{Catalog, LoadErrors, SourceFile, Sources};

const KEY: &str = "catalog";

/// How long a reload waits for its own node to swap to what it published.
const SWAP_WAIT: Duration = Duration::from_secs(10);

/// A catalog as published: its version and files.
#[derive(Debug, Serialize, Deserialize)]
struct Published {
    version: String,
    /// The node that published it.
    node: String,
    /// Role (`schema`, `placements`, `experiments`, `offers`), path and text.
    files: Vec<(String, String, String)>,
}

impl Published {
    fn of(sources: &Sources, version: &str, node: &str) -> Published {
        let file =
            |role: &str, f: &SourceFile| (role.to_string(), f.path.clone(), f.text.to_string());
        let mut files = Vec::new();
        files.extend(sources.schema.iter().map(|f| file("schema", f)));
        files.extend(sources.placements.iter().map(|f| file("placements", f)));
        files.extend(sources.experiments.iter().map(|f| file("experiments", f)));
        files.extend(sources.offers.iter().map(|f| file("offers", f)));
        Published {
            version: version.to_string(),
            node: node.to_string(),
            files,
        }
    }

    fn sources(&self) -> Sources {
        let mut sources = Sources::default();
        for (role, path, text) in &self.files {
            let file = SourceFile {
                path: path.clone(),
                text: text.as_str().into(),
            };
            match role.as_str() {
                "schema" => sources.schema = Some(file),
                "placements" => sources.placements = Some(file),
                "experiments" => sources.experiments = Some(file),
                _ => sources.offers.push(file),
            }
        }
        sources
    }
}

/// Gets the catalog bucket, making it when there is none.
pub(super) async fn bucket(
    js: &async_nats::jetstream::Context,
    config: &super::ClusterConfig,
) -> Result<kv::Store, String> {
    let name = format!("{}_CATALOG", config.prefix.to_ascii_uppercase());
    super::key_value(js, &name, 10, Duration::ZERO, config.replicas).await
}

/// At join: takes the cluster's catalog when it has one (refused when it changes this
/// node's customer attributes: the stored state is laid out by them), or publishes this
/// node's (`sources`, the rules directory it loaded) when it has none.
pub(super) async fn adopt(cluster: &Cluster, sources: Sources) -> Result<(), String> {
    let local = cluster.db.catalog();
    let mut last_error = String::new();
    for _ in 0..10 {
        match cluster.cluster_catalog().await? {
            Some((_, theirs)) if theirs.version == local.version => return Ok(()),
            Some((_, theirs)) => {
                let version = theirs.version.clone();
                if cluster.db.set_catalog(Arc::new(theirs)) {
                    tracing::info!(%version, rules = %local.version, "took the cluster's catalog instead of the rules directory's");
                    return Ok(());
                }
                return Err(format!(
                    "the cluster's catalog {version} has other customer attributes than this node's rules directory ({}); start the node with the cluster's rules",
                    local.version
                ));
            }
            None => {
                let published = Published::of(&sources, &local.version, &cluster.config.node_id);
                let bytes = serde_json::to_vec(&published).map_err(|e| e.to_string())?;
                // `create`: only if still none (another node may be joining too, and then
                // the next look finds its catalog).
                match cluster.catalog_bucket.create(KEY, bytes.into()).await {
                    Ok(_) => {
                        tracing::info!(version = %local.version, "published this node's catalog as the cluster's");
                        return Ok(());
                    }
                    Err(e) => last_error = e.to_string(),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "publishing this node's catalog as the cluster's: {last_error}"
    ))
}

impl Cluster {
    /// Publishes a catalog (already validated here: `catalog` is built from `sources`)
    /// for every node, and waits until this node has swapped to it.
    pub async fn publish_catalog(
        &self,
        sources: &Sources,
        catalog: &Catalog,
    ) -> Result<(), ClusterError> {
        let published = Published::of(sources, &catalog.version, &self.config.node_id);
        let bytes = serde_json::to_vec(&published).map_err(unavailable)?;
        self.catalog_bucket
            .put(KEY, bytes.into())
            .await
            .map_err(unavailable)?;
        let given_up = Instant::now() + SWAP_WAIT;
        while self.db.catalog().version != catalog.version {
            if Instant::now() >= given_up {
                return Err(ClusterError::Unavailable(format!(
                    "catalog {} was published but this node has not swapped to it in {SWAP_WAIT:?}",
                    catalog.version
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// The cluster's catalog, if one was published.
    pub(super) async fn cluster_catalog(&self) -> Result<Option<(Sources, Catalog)>, String> {
        let Some(entry) = self
            .catalog_bucket
            .entry(KEY)
            .await
            .map_err(|e| format!("reading the cluster's catalog: {e}"))?
        else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        decode(&entry.value).map(Some).map_err(|e| e.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
enum Undecodable {
    #[error("the published catalog is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the published catalog does not load here:\n{0}")]
    Load(String),
}

fn decode(bytes: &[u8]) -> Result<(Sources, Catalog), Undecodable> {
    let published: Published = serde_json::from_slice(bytes)?;
    let sources = published.sources();
    let catalog = Catalog::from_sources(sources.clone())
        .map_err(|e: LoadErrors| Undecodable::Load(e.to_string()))?;
    Ok((sources, catalog))
}

/// Swaps this node to every catalog the cluster publishes, for as long as the process
/// runs.
pub(super) async fn follow(cluster: Arc<Cluster>) {
    loop {
        let mut watch = match cluster.catalog_bucket.watch_with_history(KEY).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "watching the cluster's catalog; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(entry) = watch.next().await {
            let Ok(entry) = entry else { break };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            match decode(&entry.value) {
                Ok((_, catalog)) => {
                    let version = catalog.version.clone();
                    if cluster.db.catalog().version == version {
                        continue;
                    }
                    if cluster.db.set_catalog(Arc::new(catalog)) {
                        cluster.catalog_swaps.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(%version, "swapped to the cluster's catalog");
                    } else {
                        tracing::error!(%version, "the cluster's catalog changes the customer attributes; restart this node to take it");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "the cluster's catalog does not load on this node; kept the one in force")
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
