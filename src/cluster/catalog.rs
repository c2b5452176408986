//! The cluster's catalog. A reload on any node validates its own rules directory there
//! and, only when it has no error at all, publishes it twice: into the write stream (on
//! subject `<prefix>.writes.catalog`), where every node swaps to it as it applies it, so
//! that every node changes catalog between the same two writes (the store's layout, budgets
//! and the digest depend on the catalog, and a catalog that changes the customer
//! attributes carries stored customers over by name: that must happen at one point of the
//! stream on every node), and into one key (`catalog`) of a key-value bucket, which a
//! node that starts opens with. A bad catalog reaches no node.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};

use super::{Cluster, ClusterError, unavailable};
use crate::catalog::{Catalog, LoadErrors, SourceFile, Sources};

const KEY: &str = "catalog";

/// The last token of the write stream's subject for catalogs.
pub(super) const SUBJECT: &str = "catalog";

/// Whether a write stream message is a catalog (not a journal record).
pub(super) fn is_catalog(subject: &str) -> bool {
    subject.rsplit('.').next() == Some(SUBJECT)
}

/// How long a reload waits for its own node to swap to what it published.
const SWAP_WAIT: Duration = Duration::from_secs(10);

/// A catalog as published: its version and files.
#[derive(Debug, Serialize, Deserialize)]
struct Published {
    version: String,
    /// The node that published it.
    node: String,
    /// Role (`schema`, `placements`, `experiments`, `models`, `offers`), path and text.
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
        files.extend(sources.models.iter().map(|f| file("models", f)));
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
                "models" => sources.models = Some(file),
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

/// At join: keeps the catalog of the snapshot the node's state was loaded from
/// (`snapshot`, as published; none when the snapshot was unusable), since the records after the snapshot were applied under it on every node
/// and a catalog published since is in the stream after it, where the applier swaps to
/// it. Without one, takes the cluster's catalog when it has one (a node that starts opens
/// with it, see [`opening`], so this finds it in force unless it was published meanwhile),
/// or publishes this node's (`sources`, the rules directory it loaded) when it has none.
pub(super) async fn adopt(
    cluster: &Cluster,
    sources: Sources,
    snapshot: Option<&[u8]>,
) -> Result<(), String> {
    let local = cluster.db.catalog();
    if let Some(bytes) = snapshot
        && version_of(bytes).as_deref() == Some(&*local.version)
    {
        cluster.keep_in_force(bytes);
        return Ok(());
    }
    let mut last_error = String::new();
    for _ in 0..10 {
        match cluster.cluster_catalog().await? {
            Some((bytes, theirs)) if theirs.version == local.version => {
                cluster.keep_in_force(&bytes);
                return Ok(());
            }
            Some((bytes, theirs)) => {
                let version = theirs.version.clone();
                let db = Arc::clone(&cluster.db);
                let relayout =
                    tokio::task::spawn_blocking(move || db.set_catalog(Arc::new(theirs)))
                        .await
                        .map_err(|e| e.to_string())?;
                cluster.keep_in_force(&bytes);
                tracing::info!(%version, rules = %local.version, customers_carried_over = relayout.customers, "took the cluster's catalog instead of the rules directory's");
                return Ok(());
            }
            None => {
                let published = Published::of(&sources, &local.version, &cluster.config.node_id);
                let bytes = serde_json::to_vec(&published).map_err(|e| e.to_string())?;
                // `create`: only if still none (another node may be joining too, and then
                // the next look finds its catalog).
                match cluster
                    .catalog_bucket
                    .create(KEY, bytes.clone().into())
                    .await
                {
                    Ok(_) => {
                        cluster.keep_in_force(&bytes);
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

/// The version a published catalog names, without loading it.
fn version_of(bytes: &[u8]) -> Option<String> {
    serde_json::from_slice::<Published>(bytes)
        .ok()
        .map(|p| p.version)
}

/// The catalog a cluster node opens its data directory `data` with: the one its snapshot
/// was taken under, else the cluster's (the latest published). Opening with it lays the
/// stored customers out by the cluster's attributes from the start (opening with the
/// rules directory's and swapping after would drop, in between, the values of attributes
/// only the cluster's has). `None` when the cluster has none yet.
pub async fn opening(
    config: &super::ClusterConfig,
    data: &std::path::Path,
) -> Result<Option<Catalog>, ClusterError> {
    let join_error = |detail: String| ClusterError::Join {
        servers: config.servers.join(","),
        detail,
    };
    // The records after a snapshot were applied, on every node, under the catalog in
    // force at it: reopen with that one, whatever the cluster published since (the stream
    // brings that after the snapshot's position).
    if let Some(bytes) = crate::db::snapshot_catalog(data) {
        match decode(&bytes) {
            Ok((_, catalog)) => return Ok(Some(catalog)),
            Err(e) => {
                tracing::warn!(error = %e, "the catalog kept in this node's snapshot does not load here; opening with the cluster's")
            }
        }
    }
    let client = async_nats::ConnectOptions::new()
        .name(format!("nextbest {} opening", config.node_id))
        .connection_timeout(Duration::from_secs(5))
        .connect(config.servers.as_slice())
        .await
        .map_err(|e| join_error(e.to_string()))?;
    let js = async_nats::jetstream::new(client);
    let name = format!("{}_CATALOG", config.prefix.to_ascii_uppercase());
    let Ok(bucket) = js.get_key_value(name).await else {
        return Ok(None);
    };
    match bucket.entry(KEY).await {
        Ok(Some(entry)) if entry.operation == kv::Operation::Put => decode(&entry.value)
            .map(|(_, catalog)| Some(catalog))
            .map_err(|e| join_error(e.to_string())),
        Ok(_) => Ok(None),
        Err(e) => Err(join_error(format!("reading the cluster's catalog: {e}"))),
    }
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
        // The stream first: a catalog the stream did not take must not be the one
        // starting nodes open with. A node that starts between the two opens with the one
        // before and swaps when it applies this record.
        let ack = self
            .publish(self.config.catalog_subject(), None, bytes.clone())
            .await?;
        self.catalog_bucket
            .put(KEY, bytes.into())
            .await
            .map_err(unavailable)?;
        self.wait_applied(ack.sequence, SWAP_WAIT)
            .await
            .map_err(|_| {
                ClusterError::Unavailable(format!(
                    "catalog {} was published at position {} but this node has not applied it in {SWAP_WAIT:?}",
                    catalog.version, ack.sequence
                ))
            })
    }

    /// Notes the catalog in force as published (what snapshots keep).
    pub(super) fn keep_in_force(&self, published: &[u8]) {
        *self.in_force.lock().unwrap_or_else(|e| e.into_inner()) = Some(published.into());
    }

    /// The catalog in force as published, once known.
    pub(super) fn catalog_in_force(&self) -> Option<Arc<[u8]>> {
        self.in_force
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The cluster's catalog as published, and loaded, if one was published.
    pub(super) async fn cluster_catalog(&self) -> Result<Option<(Vec<u8>, Catalog)>, String> {
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
        decode(&entry.value)
            .map(|(_, catalog)| Some((entry.value.to_vec(), catalog)))
            .map_err(|e| e.to_string())
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

/// Applies a catalog published into the write stream at `position` (the applier calls it
/// between two records): swaps to it, carrying stored customers over when it changes their
/// attributes. One that does not load here (published by a newer nextbest) is skipped, as
/// it is on every node of this version.
pub(super) fn apply(cluster: &Cluster, position: u64, payload: &[u8]) {
    match decode(payload) {
        Ok((_, catalog)) => {
            let version = catalog.version.clone();
            cluster.keep_in_force(payload);
            if cluster.db.catalog().version == version {
                return;
            }
            let relayout =
                tokio::task::block_in_place(|| cluster.db.set_catalog(Arc::new(catalog)));
            cluster.catalog_swaps.fetch_add(1, Ordering::Relaxed);
            if relayout.customers > 0 {
                tracing::info!(%version, position, customers = relayout.customers, dropped_values = relayout.dropped_values, copied_ms = relayout.copied.as_millis() as u64, "swapped to the cluster's catalog; customers carried over to its attributes");
            } else {
                tracing::info!(%version, position, "swapped to the cluster's catalog");
            }
        }
        Err(e) => {
            tracing::error!(position, error = %e, "the cluster's catalog does not load on this node; kept the one in force")
        }
    }
}
