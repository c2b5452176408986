//! Snapshots shared through the cluster: every node uploads each snapshot it takes to a
//! JetStream object store (`<PREFIX>_SNAPSHOTS`, object `snapshot`: the newest one any
//! node took), and a node that starts on an empty data directory downloads it first, so
//! it applies only the stream's tail after the snapshot's position instead of the whole
//! stream. A snapshot names the stream (and its creation time) and position it reflects;
//! `Cluster::join` refuses one of another stream.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_nats::jetstream::{self, object_store};

use super::{Cluster, ClusterConfig, ClusterError};

const OBJECT: &str = "snapshot";

/// How long a node's snapshot position protects the stream's records after it: a node
/// away for longer is not waited for (it restarts from the published snapshot).
const NODE_TTL: std::time::Duration = std::time::Duration::from_secs(86_400);

/// Gets the bucket of the nodes' snapshot positions (`<PREFIX>_NODES`, a key a node, each
/// kept [`NODE_TTL`]), making it when there is none.
pub(super) async fn nodes_bucket(
    js: &jetstream::Context,
    config: &ClusterConfig,
) -> Result<jetstream::kv::Store, String> {
    let name = format!("{}_NODES", config.prefix.to_ascii_uppercase());
    super::key_value(js, &name, 1, NODE_TTL, config.replicas).await
}

/// Trims the write stream below what every snapshot still needs: the records up to the
/// smallest of the published snapshot's position and every node's newest snapshot
/// position (nodes not heard of for [`NODE_TTL`] aside). A node restarts from its own
/// snapshot or the published one, and either needs only the records after it.
async fn trim(cluster: &Cluster) -> Result<u64, String> {
    use tokio_stream::StreamExt;
    let published = cluster
        .snapshot_store
        .info(OBJECT)
        .await
        .map_err(|e| e.to_string())?
        .description
        .as_deref()
        .and_then(|d| d.rsplit("position=").next()?.parse::<u64>().ok())
        .ok_or("the published snapshot names no position")?;
    let mut keep = published;
    let mut keys = cluster
        .nodes_bucket
        .keys()
        .await
        .map_err(|e| e.to_string())?;
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| e.to_string())?;
        let position = cluster
            .nodes_bucket
            .get(&key)
            .await
            .map_err(|e| e.to_string())?
            .and_then(|v| std::str::from_utf8(v.as_ref()).ok()?.parse::<u64>().ok());
        if let Some(position) = position {
            keep = keep.min(position);
        }
    }
    if keep == 0 {
        return Ok(0);
    }
    let stream = cluster
        .js
        .get_stream(cluster.config.writes_stream())
        .await
        .map_err(|e| e.to_string())?;
    // Up to, not including, `keep + 1`.
    let purged = stream
        .purge()
        .sequence(keep + 1)
        .await
        .map_err(|e| e.to_string())?;
    Ok(purged.purged)
}

fn bucket_name(config: &ClusterConfig) -> String {
    format!("{}_SNAPSHOTS", config.prefix.to_ascii_uppercase())
}

/// Gets the snapshot store, making it when there is none.
pub(super) async fn store(
    js: &jetstream::Context,
    config: &ClusterConfig,
) -> Result<object_store::ObjectStore, String> {
    let name = bucket_name(config);
    if let Ok(store) = js.get_object_store(&name).await {
        return Ok(store);
    }
    let made = js
        .create_object_store(object_store::Config {
            bucket: name.clone(),
            num_replicas: config.replicas,
            ..Default::default()
        })
        .await;
    js.get_object_store(&name).await.map_err(|e| match made {
        Err(made) => format!("the snapshot store `{name}`: {made}"),
        Ok(_) => format!("the snapshot store `{name}`: {e}"),
    })
}

/// Uploads a snapshot this node took, in the background (the applier goes on).
pub(super) fn publish(cluster: &Arc<Cluster>, path: PathBuf, position: u64) {
    let cluster = Arc::clone(cluster);
    let mark = cluster.mark(position);
    tokio::spawn(async move {
        // This node needs nothing before `position` any more: its restart begins at this
        // snapshot, whatever becomes of the upload.
        cluster.record_snapshot_position(position).await;
        let uploaded = async {
            let mut file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| e.to_string())?;
            // What stream it is of, for `bootstrap` to check before downloading.
            let meta = object_store::ObjectMetadata {
                name: OBJECT.to_string(),
                description: Some(describe(&mark.stream, mark.created, mark.position)),
                ..Default::default()
            };
            cluster
                .snapshot_store
                .put(meta, &mut file)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        match uploaded {
            Ok(info) => {
                cluster
                    .stats
                    .snapshots_published
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    position,
                    bytes = info.size,
                    "snapshot published to the cluster"
                );
                match trim(&cluster).await {
                    Ok(0) => {}
                    Ok(purged) => {
                        cluster.stats.trimmed.fetch_add(purged, Ordering::Relaxed);
                        tracing::info!(purged, "trimmed the write stream below every snapshot");
                    }
                    Err(error) => tracing::warn!(%error, "trimming the write stream"),
                }
            }
            Err(error) => tracing::warn!(position, %error, "publishing a snapshot failed"),
        }
    });
}

impl Cluster {
    /// Records, under this node's id in the nodes bucket, the position of the snapshot
    /// its restart would begin at: the write stream is never trimmed past it.
    pub(super) async fn record_snapshot_position(&self, position: u64) {
        let node = self.config.node_id.as_str();
        if let Err(error) = self
            .nodes_bucket
            .put(node, position.to_string().into())
            .await
        {
            tracing::warn!(%error, position, "recording this node's snapshot position");
        }
    }
}

/// The snapshot object's description: the stream and position it reflects.
fn describe(stream: &str, created: i64, position: u64) -> String {
    format!("stream={stream} created={created} position={position}")
}

/// Before a node opens an empty data directory: downloads the cluster's newest snapshot
/// into it, if the cluster has one. Returns where it put it. A directory that already
/// holds a snapshot is left alone.
pub async fn bootstrap(
    config: &ClusterConfig,
    data: &Path,
) -> Result<Option<PathBuf>, ClusterError> {
    let state = data.join("state");
    let has_snapshot = std::fs::read_dir(&state).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("snapshot-") && name.ends_with(".bin")
        })
    });
    // A journal with records is an embedded node's: `Cluster::join` refuses it.
    let journal_records = std::fs::read_dir(data.join("journal")).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| e.metadata().is_ok_and(|m| m.len() > 64))
    });
    if has_snapshot || journal_records {
        return Ok(None);
    }
    let join_error = |detail: String| ClusterError::Join {
        servers: config.servers.join(","),
        detail,
    };
    let client = async_nats::ConnectOptions::new()
        .name(format!("nextbest {} bootstrap", config.node_id))
        .connection_timeout(std::time::Duration::from_secs(5))
        .connect(config.servers.as_slice())
        .await
        .map_err(|e| join_error(e.to_string()))?;
    let js = jetstream::new(client);
    let Ok(store) = js.get_object_store(bucket_name(config)).await else {
        return Ok(None);
    };
    // Only a snapshot of the stream the cluster has now (not of one deleted and made
    // again since, which `Cluster::join` would refuse).
    let (Ok(info), Ok(mut stream)) = (
        store.info(OBJECT).await,
        js.get_stream(config.writes_stream()).await,
    ) else {
        return Ok(None);
    };
    let stream_info = stream
        .info()
        .await
        .map_err(|e| join_error(format!("the write stream: {e}")))?;
    let of_this_stream = info.description.as_deref().is_some_and(|d| {
        d.starts_with(&format!(
            "stream={} created={} ",
            config.writes_stream(),
            stream_info.created.unix_timestamp_nanos() as i64
        ))
    });
    if !of_this_stream {
        tracing::warn!(
            snapshot = info.description.as_deref().unwrap_or(""),
            "the cluster's published snapshot is of another write stream; applying the stream from its start"
        );
        return Ok(None);
    }
    let mut object = match store.get(OBJECT).await {
        Ok(object) => object,
        Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(join_error(format!(
                "downloading the cluster's snapshot: {e}"
            )));
        }
    };
    std::fs::create_dir_all(&state)
        .map_err(|e| join_error(format!("creating `{}`: {e}", state.display())))?;
    let path = state.join(format!("snapshot-{:020}.bin", 0));
    let partial = state.join("snapshot.bin.partial");
    let written = async {
        let mut file = tokio::fs::File::create(&partial).await?;
        tokio::io::copy(&mut object, &mut file).await?;
        file.sync_all().await?;
        tokio::fs::rename(&partial, &path).await
    }
    .await;
    written.map_err(|e| {
        join_error(format!(
            "writing the cluster's snapshot to `{}`: {e}",
            path.display()
        ))
    })?;
    Ok(Some(path))
}
