//! The node's upkeep while it serves: compaction on a schedule and when the journal has
//! grown (a snapshot for fast restarts, and erasure of forgotten customers), and healing
//! after the journal failed (a full or read-only disk). Both run off the request
//! threads, on tokio's blocking pool, and stop when the server does.
//!
//! What a compaction or a heal does is `db`'s ([`Db::compact`](crate::db::Db::compact),
//! [`Node::heal`]); this module only decides when, and logs it: a failure that repeats
//! at every look is logged when it starts, when its cause changes and when it ends
//! ([`Streak`]), not every second.

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
            tracing::info!(
                journal_mb = bytes >> 20,
                "compacting: the journal since the last snapshot has grown"
            );
        }
        let db = node.db();
        failed = None;
        match tokio::task::spawn_blocking(move || db.compact(now_ms())).await {
            Ok(Ok(done)) => tracing::info!(
                customers = done.customers,
                snapshot = %done.snapshot.display(),
                records_erased = done.records_erased,
                forgotten = done.forgotten,
                "compacted"
            ),
            Ok(Err(e)) => {
                failed = Some(Instant::now());
                tracing::error!(error = %e, "compaction failed, the journal is intact");
            }
            Err(e) => {
                failed = Some(Instant::now());
                tracing::error!(error = %e, "the compaction task failed");
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
    // The journal's failure, and then why each heal could not happen yet.
    let mut failure = Streak::default();
    let mut still = Streak::default();
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(interval) => {}
        }
        let Some(why) = node.db().failed() else {
            continue;
        };
        if failure.see(why.to_string()) {
            tracing::error!(error = %why, "journal failed: writes refused until the disk takes them");
        }
        let healing = Arc::clone(&node);
        match tokio::task::spawn_blocking(move || healing.heal()).await {
            Ok(Ok(true)) => {
                let (looks, for_) = failure.end().unwrap_or_default();
                still.end();
                tracing::info!(
                    looks,
                    failed_for = ?for_,
                    "journal healed: the data directory was reopened, writes resume"
                );
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                if still.see(e.to_string()) {
                    tracing::warn!(
                        error = %e,
                        every = ?interval,
                        "journal still failing; looking again until the disk takes writes (logged again only if this changes)"
                    );
                }
            }
            Err(e) => {
                if still.see(e.to_string()) {
                    tracing::error!(error = %e, "the heal task failed");
                }
            }
        }
    }
}

/// A condition seen again at every look (an error, by its message): [`Streak::see`] says
/// whether to log it (it started, or its message changed), [`Streak::end`] how long it
/// lasted, so a failure repeating every second is logged three times, not every second.
#[derive(Debug, Default)]
struct Streak {
    /// The message last seen, how many looks saw the streak and when it started.
    current: Option<(String, u64, Instant)>,
}

impl Streak {
    /// Seen again: true when this starts a streak or changes its message.
    fn see(&mut self, message: String) -> bool {
        match &mut self.current {
            Some((last, looks, _)) => {
                *looks += 1;
                let changed = *last != message;
                *last = message;
                changed
            }
            None => {
                self.current = Some((message, 1, Instant::now()));
                true
            }
        }
    }

    /// Over: how many looks saw it and for how long, if it had started.
    fn end(&mut self) -> Option<(u64, Duration)> {
        self.current
            .take()
            .map(|(_, looks, since)| (looks, since.elapsed()))
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

#[cfg(test)]
mod tests {
    use super::Streak;

    #[test]
    fn a_repeated_error_is_logged_when_it_starts_changes_and_ends() {
        let mut streak = Streak::default();
        let logged: Vec<bool> = [
            "disk full",
            "disk full",
            "disk full",
            "read-only",
            "read-only",
        ]
        .into_iter()
        .map(|e| streak.see(e.to_string()))
        .collect();
        assert_eq!(logged, [true, false, false, true, false]);
        assert_eq!(streak.end().map(|(looks, _)| looks), Some(5));
        assert_eq!(streak.end(), None, "ended once");
        assert!(
            streak.see("disk full".to_string()),
            "a new streak is logged"
        );
    }
}
