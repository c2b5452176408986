//! The node's upkeep while it serves: compaction on a schedule and when the journal has
//! grown (a snapshot for fast restarts, and erasure of forgotten customers), and healing
//! after the journal failed (a full or read-only disk). Both run off the request
//! threads, on tokio's blocking pool, and stop when the server does.
//!
//! What a compaction or a heal does is `db`'s ([`Db::compact`](crate::db::Db::compact),
//! [`Node::heal`]); this module only decides when.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Node;
use crate::setup::now_ms;

/// When to compact; the default never does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compaction {
    /// Compact this often.
    pub every: Option<Duration>,
    /// Also compact once the journal since the last snapshot has this many bytes (looked
    /// at every [`LOOK`]): a restart replays them, so this bounds restart time.
    pub journal_bytes: Option<u64>,
}

impl Compaction {
    /// Whether anything calls for a compaction at all.
    pub fn is_scheduled(&self) -> bool {
        self.every.is_some() || self.journal_bytes.is_some()
    }
}

/// How often the journal's size is looked at.
pub const LOOK: Duration = Duration::from_secs(1);

/// After a failed compaction, the journal's size does not call for another one for this
/// long (the interval still does).
pub const BACK_OFF: Duration = Duration::from_secs(60);

/// How often a node whose journal failed checks whether the disk takes writes again.
pub const HEAL_INTERVAL: Duration = Duration::from_secs(1);

/// Compacts as `schedule` says until `shutdown` resolves; a compaction under way
/// finishes first.
pub async fn compact_when_due(
    node: Arc<Node>,
    schedule: Compaction,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut last = Instant::now();
    let mut failed: Option<Instant> = None;
    loop {
        let next = match (schedule.every, schedule.journal_bytes) {
            (Some(every), None) => last + every,
            (Some(every), Some(_)) => (last + every).min(Instant::now() + LOOK),
            (None, _) => Instant::now() + LOOK,
        };
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep_until(next) => {}
        }
        let timed = schedule.every.is_some_and(|every| last.elapsed() >= every);
        let grown = match schedule.journal_bytes {
            Some(limit) if !timed && failed.is_none_or(|at| at.elapsed() >= BACK_OFF) => {
                let db = node.db();
                match tokio::task::spawn_blocking(move || db.journal_since_snapshot()).await {
                    Ok(Ok(bytes)) if bytes >= limit => Some(bytes),
                    _ => None,
                }
            }
            _ => None,
        };
        if !timed && grown.is_none() {
            continue;
        }
        last = Instant::now();
        if let Some(bytes) = grown {
            eprintln!(
                "compacting: {} MB of journal since the last snapshot",
                bytes >> 20
            );
        }
        let db = node.db();
        failed = None;
        match tokio::task::spawn_blocking(move || db.compact(now_ms())).await {
            Ok(Ok(done)) => eprintln!(
                "compacted: {} customers in `{}`, {} records of {} forgotten customers erased",
                done.customers,
                done.snapshot.display(),
                done.records_erased,
                done.forgotten
            ),
            Ok(Err(e)) => {
                failed = Some(Instant::now());
                eprintln!("compaction failed (the journal is intact): {e}");
            }
            Err(e) => {
                failed = Some(Instant::now());
                eprintln!("the compaction task failed: {e}");
            }
        }
    }
}

/// Heals the node ([`Node::heal`]) whenever its journal has failed, looking every
/// `interval`, until `shutdown` resolves.
pub async fn heal_when_failed(
    node: Arc<Node>,
    interval: Duration,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut reported = false;
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(interval) => {}
        }
        let Some(why) = node.db().failed() else {
            continue;
        };
        if !reported {
            eprintln!("journal failed, writes refused until the disk takes them: {why}");
            reported = true;
        }
        let healing = Arc::clone(&node);
        match tokio::task::spawn_blocking(move || healing.heal()).await {
            Ok(Ok(true)) => {
                eprintln!("journal healed: the data directory was reopened, writes resume");
                reported = false;
            }
            Ok(Ok(false)) | Err(_) => {}
            Ok(Err(e)) => eprintln!("journal still failing: {e}"),
        }
    }
}

/// Writes, syncs and removes a file of 64 KiB in `dir`: whether the disk takes writes.
pub(super) fn probe(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(".probe");
    let written = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(&[0u8; 64 * 1024])?;
        f.sync_all()
    });
    let removed = std::fs::remove_file(&path);
    written.and(removed)
}
