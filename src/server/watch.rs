//! Reloading the catalog when its files change: the rules directory is polled (names,
//! sizes and modification times), and a change is acted on once it has held still for
//! one interval, so an editor's or a deploy's burst of writes gives one reload. Polling
//! instead of inotify works on every filesystem (bind mounts, network volumes) and needs
//! no dependency; a reload lands within about two intervals of the last write.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{Metrics, Node};

/// A fingerprint of every file under `dir`; `None` if it cannot be read.
fn fingerprint(dir: &Path) -> Option<u64> {
    fn walk(
        dir: &Path,
        out: &mut Vec<(std::path::PathBuf, u64, Option<std::time::SystemTime>)>,
    ) -> Option<()> {
        for entry in std::fs::read_dir(dir).ok()? {
            let entry = entry.ok()?;
            let meta = entry.metadata().ok()?;
            if meta.is_dir() {
                walk(&entry.path(), out)?;
            } else {
                out.push((entry.path(), meta.len(), meta.modified().ok()));
            }
        }
        Some(())
    }
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    files.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    files.hash(&mut h);
    Some(h.finish())
}

/// Watches the node's rules directory every `interval` until `shutdown` resolves. The
/// files as they are when this is called are the baseline (taken now, not when the
/// returned future first runs).
pub fn watch(
    node: Arc<Node>,
    metrics: Arc<Metrics>,
    interval: Duration,
    shutdown: impl Future<Output = ()> + Send,
) -> impl Future<Output = ()> + Send {
    let rules = node.rules().to_path_buf();
    let seen = fingerprint(&rules);
    watching(node, metrics, interval, shutdown, rules, seen)
}

async fn watching(
    node: Arc<Node>,
    metrics: Arc<Metrics>,
    interval: Duration,
    shutdown: impl Future<Output = ()> + Send,
    rules: std::path::PathBuf,
    mut seen: Option<u64>,
) {
    let mut pending: Option<u64> = None;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(interval) => {}
        }
        let now = fingerprint(&rules);
        if now == seen {
            pending = None;
            continue;
        }
        // Changed: wait until it holds still for one interval.
        if pending != now {
            pending = now;
            continue;
        }
        seen = now;
        pending = None;
        // Refused or not, it is reported and counted there; the next change tries again.
        let _ = super::reload(&node, &metrics, "rules changed").await;
    }
}
