//! Snapshots shared through the cluster: every node uploads each snapshot it takes to a
//! JetStream object store (`<PREFIX>_SNAPSHOTS`), as an object of its own
//! (`snapshot.<node>.<position>`), and points the link `snapshot` at it when it is newer
//! than the one linked: the newest snapshot any node took. A node that starts on an
//! empty data directory downloads the linked one first, so it applies only the stream's
//! tail after the snapshot's position instead of the whole stream. A snapshot names the
//! stream (and its creation time) and position it reflects; `Cluster::join` refuses one
//! of another stream.
//!
//! Every snapshot older than the linked one is then erased: its chunks deleted with
//! JetStream's erasing delete, which overwrites their bytes, before the object is. A
//! plain replacement (an object put again under its name) would only purge them, and a
//! purged message's bytes stay in the store's files: a forgotten customer would stay in
//! the snapshots taken before the forget.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_nats::jetstream::{self, consumer::push, object_store};
use tokio_stream::StreamExt;

use super::{Cluster, ClusterConfig, ClusterError};

/// The link to the newest snapshot (before this version, the snapshot itself).
const OBJECT: &str = "snapshot";

/// The object of the snapshot `node` took at `position`.
fn object_name(node: &str, position: u64) -> String {
    format!("{OBJECT}.{node}.{position:020}")
}

/// The cluster's published snapshot: the object the link names (or, put by an earlier
/// version, the object itself); `None` when there is none.
async fn published(
    store: &object_store::ObjectStore,
) -> Result<Option<object_store::ObjectInfo>, String> {
    let found = |r: Result<object_store::ObjectInfo, object_store::InfoError>| match r {
        Ok(info) if info.deleted => Ok(None),
        Ok(info) => Ok(Some(info)),
        Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    };
    let Some(info) = found(store.info(OBJECT).await)? else {
        return Ok(None);
    };
    match info.options.as_ref().and_then(|o| o.link.as_ref()) {
        Some(link) => match &link.name {
            Some(target) => found(store.info(target).await),
            None => Ok(None),
        },
        None => Ok(Some(info)),
    }
}

/// The write-stream position a snapshot object reflects (from its description).
fn position_of(info: &object_store::ObjectInfo) -> Option<u64> {
    info.description
        .as_deref()?
        .rsplit("position=")
        .next()?
        .parse()
        .ok()
}

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
    let published = published(&cluster.snapshot_store)
        .await?
        .as_ref()
        .and_then(position_of)
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

/// Uploads a snapshot this node took, in the background (the applier goes on), links it
/// as the cluster's newest when it is, and erases the snapshots it makes older.
pub(super) fn publish(cluster: &Arc<Cluster>, path: PathBuf, position: u64) {
    let cluster = Arc::clone(cluster);
    let mark = cluster.mark(position);
    tokio::spawn(async move {
        // This node needs nothing before `position` any more: its restart begins at this
        // snapshot, whatever becomes of the upload.
        cluster.record_snapshot_position(position).await;
        // A quiet stream: the state at a position uploaded already is that one's (the
        // decisions remembered since aside, which a new node reads from their stream).
        if cluster.uploaded.fetch_max(position, Ordering::Relaxed) >= position {
            return;
        }
        let description = describe(&mark.stream, mark.created, mark.position);
        let uploaded = async {
            let mut file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| e.to_string())?;
            // What stream it is of, for `bootstrap` to check before downloading.
            let meta = object_store::ObjectMetadata {
                name: object_name(&cluster.config.node_id, position),
                description: Some(description.clone()),
                ..Default::default()
            };
            let info = cluster
                .snapshot_store
                .put(meta, &mut file)
                .await
                .map_err(|e| e.to_string())?;
            link(&cluster, &info, &description, position).await?;
            Ok::<_, String>(info)
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
                if let Err(error) = erase_older(&cluster).await {
                    tracing::warn!(%error, "erasing replaced snapshots");
                }
                match trim(&cluster).await {
                    Ok(0) => {}
                    Ok(purged) => {
                        cluster.stats.trimmed.fetch_add(purged, Ordering::Relaxed);
                        tracing::info!(purged, "trimmed the write stream below every snapshot");
                    }
                    Err(error) => tracing::warn!(%error, "trimming the write stream"),
                }
            }
            Err(error) => {
                // Uploaded again next time.
                cluster.uploaded.fetch_min(position - 1, Ordering::Relaxed);
                tracing::warn!(position, %error, "publishing a snapshot failed");
            }
        }
    });
}

/// The stream (with its creation time) a snapshot's description names.
fn stream_of(description: &str) -> &str {
    description
        .rsplit_once(" position=")
        .map_or(description, |(stream, _)| stream)
}

/// Points the link `snapshot` at `info` (the snapshot at `position`, described by
/// `description`) unless it names a newer snapshot of the same stream already.
async fn link(
    cluster: &Cluster,
    info: &object_store::ObjectInfo,
    description: &str,
    position: u64,
) -> Result<(), String> {
    let store = &cluster.snapshot_store;
    if let Some(current) = published(store).await? {
        let same_stream = current
            .description
            .as_deref()
            .is_some_and(|d| stream_of(d) == stream_of(description));
        if same_stream && position_of(&current).is_some_and(|p| p >= position) {
            return Ok(());
        }
        // An earlier version's snapshot, in the link's place.
        if current.name == OBJECT {
            erase(cluster, &current).await?;
        }
    }
    store
        .add_link(OBJECT, info)
        .await
        .map(|_| ())
        .map_err(|e| format!("linking the snapshot: {e}"))
}

/// Erases every snapshot the linked one makes older: of the same stream and an earlier
/// position, or of another stream. Later ones are kept (another node's, being linked).
async fn erase_older(cluster: &Cluster) -> Result<(), String> {
    let store = &cluster.snapshot_store;
    let Some(linked) = published(store).await? else {
        return Ok(());
    };
    let (Some(stream), Some(position)) = (
        linked.description.as_deref().map(stream_of),
        position_of(&linked),
    ) else {
        return Ok(());
    };
    let mut objects = store.list().await.map_err(|e| e.to_string())?;
    let mut older = Vec::new();
    while let Some(object) = objects.next().await {
        let object = object.map_err(|e| e.to_string())?;
        let is_snapshot = object.name.starts_with(&format!("{OBJECT}."));
        let older_one = object
            .description
            .as_deref()
            .is_none_or(|d| stream_of(d) != stream)
            || position_of(&object).is_none_or(|p| p < position);
        if is_snapshot && object.name != linked.name && older_one {
            older.push(object);
        }
    }
    for object in older {
        erase(cluster, &object).await?;
        cluster
            .stats
            .erased_snapshots
            .fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Deletes a snapshot object, its chunks first with JetStream's erasing delete (their
/// bytes overwritten on every replica; async-nats sends no `no_erase`).
async fn erase(cluster: &Cluster, object: &object_store::ObjectInfo) -> Result<(), String> {
    let bucket = bucket_name(&cluster.config);
    let fail = |e: &dyn std::fmt::Display| format!("erasing snapshot `{}`: {e}", object.name);
    let stream = cluster
        .js
        .get_stream(format!("OBJ_{bucket}"))
        .await
        .map_err(|e| fail(&e))?;
    // Where its chunks are: their headers say, without their bytes.
    let consumer = stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: cluster.js.client().new_inbox(),
            filter_subject: format!("$O.{bucket}.C.{}", object.nuid),
            headers_only: true,
            ..Default::default()
        })
        .await
        .map_err(|e| fail(&e))?;
    let mut sequences = Vec::new();
    if consumer.cached_info().num_pending > 0 {
        let mut chunks = consumer.messages().await.map_err(|e| fail(&e))?;
        loop {
            let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), chunks.next())
                .await
                .map_err(|_| fail(&"its chunks were not delivered in 10 s"))?
                .ok_or_else(|| fail(&"the consumer ended"))?
                .map_err(|e| fail(&e))?;
            let info = chunk.info().map_err(|e| fail(&e))?;
            sequences.push(info.stream_sequence);
            if info.pending == 0 {
                break;
            }
        }
    }
    for sequence in sequences {
        match stream.delete_message(sequence).await {
            Ok(_) => {}
            // Another node's erasure of the same snapshot.
            Err(e) if e.to_string().contains("no message found") => {}
            Err(e) => return Err(fail(&e)),
        }
    }
    match cluster.snapshot_store.delete(&object.name).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == object_store::DeleteErrorKind::NotFound => Ok(()),
        Err(e) => Err(fail(&e)),
    }
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
    let Ok(mut stream) = js.get_stream(config.writes_stream()).await else {
        return Ok(None);
    };
    let stream_info = stream
        .info()
        .await
        .map_err(|e| join_error(format!("the write stream: {e}")))?;
    let this_stream = format!(
        "stream={} created={} ",
        config.writes_stream(),
        stream_info.created.unix_timestamp_nanos() as i64
    );
    std::fs::create_dir_all(&state)
        .map_err(|e| join_error(format!("creating `{}`: {e}", state.display())))?;
    let path = state.join(format!("snapshot-{:020}.bin", 0));
    let partial = state.join("snapshot.bin.partial");
    // A snapshot being downloaded can be erased midway, a newer one linked instead: then
    // the newer one is downloaded.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let Some(info) = published(&store).await.map_err(join_error)? else {
            return Ok(None);
        };
        let description = info.description.as_deref().unwrap_or("");
        // Only a snapshot of the stream the cluster has now (not of one deleted and made
        // again since, which `Cluster::join` would refuse).
        if !description.starts_with(&this_stream) {
            tracing::warn!(
                snapshot = description,
                "the cluster's published snapshot is of another write stream; applying the stream from its start"
            );
            return Ok(None);
        }
        let downloaded = async {
            let mut object = store.get(&info.name).await.map_err(|e| e.to_string())?;
            let mut file = tokio::fs::File::create(&partial)
                .await
                .map_err(|e| e.to_string())?;
            let mut buffer = vec![0; 128 * 1024];
            loop {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let read = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    object.read(&mut buffer),
                )
                .await
                .map_err(|_| "no chunk arrived for 10 s".to_string())?
                .map_err(|e| e.to_string())?;
                if read == 0 {
                    break;
                }
                file.write_all(&buffer[..read])
                    .await
                    .map_err(|e| format!("writing `{}`: {e}", partial.display()))?;
            }
            file.sync_all()
                .await
                .map_err(|e| format!("writing `{}`: {e}", partial.display()))?;
            tokio::fs::rename(&partial, &path)
                .await
                .map_err(|e| format!("writing `{}`: {e}", path.display()))
        }
        .await;
        match downloaded {
            Ok(()) => return Ok(Some(path)),
            Err(e) if attempts >= 3 => {
                return Err(join_error(format!(
                    "downloading the cluster's snapshot `{}`: {e}",
                    info.name
                )));
            }
            Err(e) => tracing::warn!(
                snapshot = info.name,
                error = e,
                "downloading the cluster's snapshot; trying again"
            ),
        }
    }
}
