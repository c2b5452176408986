//! The log writer: one thread owns the open segment; callers queue records and, when they
//! need durability, wait for the fsync that covers them.
//!
//! Every record gets a sequence number, in the order of `append` calls, stored as the
//! first 8 bytes (LE) of its payload: readers can tell which writes a snapshot already
//! holds.
//!
//! Group commit: the thread takes everything queued since its last write, writes it with
//! one `write`, and issues one `fdatasync` if any record in the batch asked for
//! durability; every caller waiting on that batch is released by the same fsync. While
//! it syncs, new records queue up for the next batch, so the number of fsyncs per second
//! stays bounded by the disk while throughput grows with the number of writers.
//!
//! Records that need no acknowledgement (decision records) are written in the same
//! batches and made durable by the next fsync, or within `flush_interval`. When the queue
//! is full, `append` blocks (backpressure) and counts the wait in [`Stats::waits`]:
//! nothing is ever dropped. A caller that must not wait while it holds locks of its own
//! takes a [`Permit`] first ([`Writer::reserve`], which may wait) and appends through it
//! under those locks (which never waits); one that must never wait at all (the decide
//! path) uses [`Writer::try_append`], which refuses with [`WriteError::Full`].
//!
//! After a failed write or fsync the writer stops for good and every later call fails:
//! after a failed fsync the kernel may have dropped the dirty pages, so retrying could
//! acknowledge data that is not on disk.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::segment::{Position, SegmentWriter, frame};

/// A record the writer can put on disk.
pub trait Encode: Send + 'static {
    /// Appends the record's payload (without framing) to `out`.
    fn encode(&self, out: &mut Vec<u8>);
}

/// When the writer fsyncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// One fsync per batch (group commit).
    Group,
    /// One fsync per durable record, as a naive log would do: for comparison in benches.
    EveryRecord,
    /// Never fsync a batch: a "durable" record is one handed to the operating system.
    /// For simulations, whose journals a crash may lose; never for a serving node.
    Never,
}

#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Start a new segment once the current one reaches this size.
    pub segment_bytes: u64,
    /// Fsync records nobody waits for at least this often.
    pub flush_interval: Duration,
    /// At most this many records wait in the queue; then `append` blocks.
    pub queue: usize,
    /// How long records nobody waits for may sit in the queue before they are written...
    pub linger: Duration,
    /// ...unless this many are queued.
    pub wake_at: usize,
    pub sync: SyncMode,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            segment_bytes: 64 << 20,
            flush_interval: Duration::from_millis(200),
            queue: 65_536,
            linger: Duration::from_millis(2),
            wake_at: 1024,
            sync: SyncMode::Group,
        }
    }
}

/// Why a write was not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The write or fsync that stopped the writer, shared by every call refused since.
    #[error("the journal failed and accepts no more writes: {0}")]
    Failed(#[source] Arc<std::io::Error>),
    #[error("the journal is closed")]
    Closed,
    /// Only from [`Writer::try_append`]: the queue had no room and the caller would not wait.
    #[error("the journal's queue is full (the disk is not keeping up)")]
    Full,
}

/// Two failures are the same when their I/O errors say the same (an `io::Error` has no
/// equality of its own).
impl PartialEq for WriteError {
    fn eq(&self, other: &WriteError) -> bool {
        match (self, other) {
            (WriteError::Failed(a), WriteError::Failed(b)) => {
                a.kind() == b.kind() && a.to_string() == b.to_string()
            }
            (WriteError::Closed, WriteError::Closed) | (WriteError::Full, WriteError::Full) => true,
            _ => false,
        }
    }
}

impl Eq for WriteError {}

/// Counters, for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct Stats {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub batches: AtomicU64,
    pub fsyncs: AtomicU64,
    /// Appends that found the queue full and waited.
    pub waits: AtomicU64,
    /// Records [`Writer::try_append`] refused because the queue was full.
    pub refused: AtomicU64,
    /// How long each batch's write (and fsync, when it had one) took.
    pub write_seconds: Durations,
}

/// A histogram of durations in atomics: cumulative counts below fixed bounds (10 µs to
/// about 1.5 s, ×2.5 apart), their count and their sum. Read it whenever; each field is
/// exact, the three are not one snapshot.
#[derive(Debug, Default)]
pub struct Durations {
    /// `below[i]`: observations of at most `BOUNDS[i]` seconds.
    below: [AtomicU64; Durations::BOUNDS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Durations {
    /// The upper bounds of the buckets, in seconds.
    pub const BOUNDS: [f64; 14] = [
        1e-5, 2.5e-5, 6.25e-5, 1.5625e-4, 3.906e-4, 9.766e-4, 2.441e-3, 6.104e-3, 1.526e-2,
        3.815e-2, 9.537e-2, 0.2384, 0.5960, 1.490,
    ];

    pub fn observe(&self, d: Duration) {
        let seconds = d.as_secs_f64();
        for (bound, below) in Self::BOUNDS.iter().zip(&self.below) {
            if seconds <= *bound {
                below.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Cumulative counts per bound, the count and the sum in seconds.
    pub fn read(&self) -> ([u64; Durations::BOUNDS.len()], u64, f64) {
        (
            self.below.each_ref().map(|b| b.load(Ordering::Relaxed)),
            self.count.load(Ordering::Relaxed),
            self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        )
    }
}

/// A record's sequence number: the order of `append` calls, from 1.
pub type Seq = u64;

enum Item<R> {
    Record {
        record: R,
        durable: bool,
    },
    /// Makes everything before it durable.
    Sync,
    Rotate,
}

struct Queue<R> {
    items: Vec<Item<R>>,
    /// Room promised to [`Permit`]s not yet used: counted as taken.
    reserved: usize,
    /// The sequence number of the last queued item.
    queued: Seq,
    /// Every item up to here is written (in the page cache).
    written: Seq,
    /// Every item up to here is on disk.
    durable: Seq,
    failed: Option<Arc<std::io::Error>>,
    closing: bool,
    /// Someone waits for an item in the queue (durable record, sync, rotation).
    urgent: bool,
    /// The highest sequence number someone waits to see durable: a record appended
    /// without `durable` and waited for later gets its fsync now, not at the next
    /// `flush_interval`.
    wanted: Seq,
    /// The writer thread is waiting for work (and needs a wake-up).
    idle: bool,
    /// The last rotation: its sequence number and the first position of the new segment.
    rotated: (Seq, Position),
}

struct Shared<R> {
    queue: Mutex<Queue<R>>,
    /// Signalled when there is work for the thread.
    work: Condvar,
    /// Signalled when `written`/`durable` advance or the writer fails.
    done: Condvar,
    /// Signalled when the queue has room.
    space: Condvar,
    stats: Stats,
    options: WriterOptions,
}

impl<R> Shared<R> {
    fn lock(&self) -> MutexGuard<'_, Queue<R>> {
        // A panic while holding the lock leaves the queue consistent (every field is
        // updated in one step), so a poisoned lock is still usable.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Appends records to the segments of one directory from a background thread.
pub struct Writer<R: Encode> {
    shared: Arc<Shared<R>>,
    thread: Option<JoinHandle<()>>,
}

impl<R: Encode> std::fmt::Debug for Writer<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("options", &self.shared.options)
            .finish()
    }
}

impl<R: Encode> Writer<R> {
    /// Starts writing after `position` (the end of the good data in its segment, as
    /// recovery found it); a position at segment 0 starts a fresh segment 1. Sequence
    /// numbers continue after `last`, the highest one on disk.
    pub fn start(
        dir: &Path,
        position: Position,
        last: Seq,
        options: WriterOptions,
    ) -> std::io::Result<Self> {
        let segment = if position.segment == 0 {
            SegmentWriter::create(dir, 1)?
        } else {
            SegmentWriter::reopen(dir, position.segment, position.offset)?
        };
        let start = segment.position();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                items: Vec::new(),
                reserved: 0,
                queued: last,
                written: last,
                durable: last,
                failed: None,
                closing: false,
                urgent: false,
                wanted: last,
                idle: false,
                rotated: (0, start),
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            space: Condvar::new(),
            stats: Stats::default(),
            options,
        });
        let thread = {
            let shared = Arc::clone(&shared);
            let dir = dir.to_path_buf();
            std::thread::Builder::new()
                .name("nextbest-journal".into())
                .spawn(move || run(&shared, dir, segment))?
        };
        Ok(Writer {
            shared,
            thread: Some(thread),
        })
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Queues a record; blocks while the queue is full. The returned number can be
    /// passed to [`Writer::wait`].
    pub fn append(&self, record: R, durable: bool) -> Result<Seq, WriteError> {
        self.push(Item::Record { record, durable }, Room::Wait)
    }

    /// Queues a record if the queue has room now; never waits. A full queue refuses it
    /// with [`WriteError::Full`] (counted in [`Stats::refused`]).
    pub fn try_append(&self, record: R, durable: bool) -> Result<Seq, WriteError> {
        self.push(Item::Record { record, durable }, Room::Try)
    }

    /// Queues a record and waits until it is on disk.
    pub fn append_durable(&self, record: R) -> Result<(), WriteError> {
        let seq = self.append(record, true)?;
        self.wait(seq)
    }

    /// Takes room for one record, waiting while the queue is full: the append through
    /// the permit then never waits, so it can be made while holding other locks.
    pub fn reserve(&self) -> Result<Permit<'_, R>, WriteError> {
        let shared = &*self.shared;
        let mut q = self.room(shared.lock())?;
        q.reserved += 1;
        Ok(Permit {
            writer: self,
            used: false,
        })
    }

    /// Waits for room in the queue (counting the wait); fails once the writer has.
    fn room<'q>(
        &'q self,
        mut q: MutexGuard<'q, Queue<R>>,
    ) -> Result<MutexGuard<'q, Queue<R>>, WriteError> {
        let shared = &*self.shared;
        let full = |q: &Queue<R>| q.items.len() + q.reserved >= shared.options.queue;
        if full(&q) {
            shared.stats.waits.fetch_add(1, Ordering::Relaxed);
            while full(&q) && q.failed.is_none() && !q.closing {
                q = shared.space.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        }
        Self::open(&q)?;
        Ok(q)
    }

    fn open(q: &Queue<R>) -> Result<(), WriteError> {
        if let Some(e) = &q.failed {
            return Err(WriteError::Failed(e.clone()));
        }
        if q.closing {
            return Err(WriteError::Closed);
        }
        Ok(())
    }

    fn push(&self, item: Item<R>, room: Room) -> Result<Seq, WriteError> {
        let shared = &*self.shared;
        let mut q = shared.lock();
        match room {
            Room::Wait => q = self.room(q)?,
            Room::Reserved => {
                q.reserved -= 1;
                Self::open(&q)?;
            }
            Room::Try => {
                Self::open(&q)?;
                // An eighth of the queue is left to writes someone waits for: records
                // that never wait must not take every slot a waiting writer is woken for.
                let limit = shared.options.queue - shared.options.queue / 8;
                if q.items.len() + q.reserved >= limit.max(1) {
                    shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                    return Err(WriteError::Full);
                }
            }
            Room::Control => Self::open(&q)?,
        }
        // Records nobody waits for do not wake the writer: it picks them up within
        // `linger`, or as soon as `wake_at` are queued, in one write.
        let urgent = !matches!(item, Item::Record { durable: false, .. });
        q.items.push(item);
        q.queued += 1;
        q.urgent |= urgent;
        let seq = q.queued;
        let wake = q.idle && (q.urgent || q.items.len() >= shared.options.wake_at);
        if wake {
            q.idle = false;
        }
        drop(q);
        if wake {
            shared.work.notify_one();
        }
        Ok(seq)
    }

    /// Waits until record `seq` (and so every record before it) is on disk.
    pub fn wait(&self, seq: Seq) -> Result<(), WriteError> {
        let shared = &*self.shared;
        let mut q = shared.lock();
        loop {
            if q.durable >= seq {
                return Ok(());
            }
            if let Some(e) = &q.failed {
                return Err(WriteError::Failed(e.clone()));
            }
            if q.wanted < seq {
                q.wanted = seq;
                q.urgent = true;
                if q.idle {
                    q.idle = false;
                    shared.work.notify_one();
                }
            }
            q = shared.done.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Waits until everything queued so far is on disk.
    pub fn sync(&self) -> Result<(), WriteError> {
        let seq = self.push(Item::Sync, Room::Wait)?;
        self.wait(seq)
    }

    /// Closes the current segment and starts the next; returns where the new one starts.
    /// Every record appended before this call is in an earlier segment.
    pub fn rotate(&self) -> Result<Position, WriteError> {
        let seq = self.queue_rotation()?;
        self.rotated(seq)
    }

    /// Queues a rotation without waiting, not even for room (it is no record), so it can
    /// be queued while holding a lock that appenders take; wait for it with
    /// [`Writer::rotated`] after letting go.
    pub fn queue_rotation(&self) -> Result<Seq, WriteError> {
        self.push(Item::Rotate, Room::Control)
    }

    /// Waits for the rotation queued as `seq`; returns where the new segment starts.
    pub fn rotated(&self, seq: Seq) -> Result<Position, WriteError> {
        self.wait(seq)?;
        let q = self.shared.lock();
        debug_assert!(q.rotated.0 >= seq);
        Ok(q.rotated.1)
    }

    /// Writes and syncs everything queued, then stops the thread.
    pub fn close(mut self) -> Result<(), WriteError> {
        self.stop()
    }

    /// Why the writer stopped taking writes, once it has failed.
    pub fn failed(&self) -> Option<Arc<std::io::Error>> {
        self.shared.lock().failed.clone()
    }

    fn stop(&mut self) -> Result<(), WriteError> {
        {
            let mut q = self.shared.lock();
            q.closing = true;
        }
        self.shared.work.notify_one();
        self.shared.space.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        match &self.shared.lock().failed {
            Some(e) => Err(WriteError::Failed(e.clone())),
            None => Ok(()),
        }
    }
}

/// How [`Writer::push`] finds room for an item.
#[derive(Clone, Copy)]
enum Room {
    /// Wait while the queue is full.
    Wait,
    /// Room was taken by a [`Permit`].
    Reserved,
    /// Refuse when the queue is full (or all but its last eighth is taken).
    Try,
    /// A control item (a rotation): queued whatever the room, never waiting.
    Control,
}

/// Room for one record in a [`Writer`]'s queue ([`Writer::reserve`]); given back if
/// dropped unused.
pub struct Permit<'a, R: Encode> {
    writer: &'a Writer<R>,
    used: bool,
}

impl<R: Encode> std::fmt::Debug for Permit<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit").field("used", &self.used).finish()
    }
}

impl<R: Encode> Permit<'_, R> {
    /// Queues a record in the room taken; never waits. Fails only when the writer has
    /// failed or is closing.
    pub fn append(mut self, record: R, durable: bool) -> Result<Seq, WriteError> {
        self.used = true;
        self.writer
            .push(Item::Record { record, durable }, Room::Reserved)
    }
}

impl<R: Encode> Drop for Permit<'_, R> {
    fn drop(&mut self) {
        if !self.used {
            let shared = &*self.writer.shared;
            shared.lock().reserved -= 1;
            shared.space.notify_one();
        }
    }
}

impl<R: Encode> Drop for Writer<R> {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn run<R: Encode>(shared: &Shared<R>, dir: PathBuf, mut segment: SegmentWriter) {
    let options = &shared.options;
    let mut batch: Vec<Item<R>> = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut payload: Vec<u8> = Vec::with_capacity(4096);
    // Written but not yet synced, and when the last sync was.
    let mut dirty = false;
    let mut synced_at = Instant::now();
    loop {
        let (last, closing, waited_for) = {
            let mut q = shared.lock();
            while !q.closing && !q.urgent && q.items.len() < options.wake_at {
                let wait = match (q.items.is_empty(), dirty) {
                    (false, _) => options.linger,
                    (true, true) => options.flush_interval.saturating_sub(synced_at.elapsed()),
                    (true, false) => options.flush_interval,
                };
                q.idle = true;
                let (guard, timeout) = shared
                    .work
                    .wait_timeout(q, wait)
                    .unwrap_or_else(|e| e.into_inner());
                q = guard;
                q.idle = false;
                if timeout.timed_out() && (dirty || !q.items.is_empty()) {
                    break;
                }
            }
            q.urgent = false;
            std::mem::swap(&mut batch, &mut q.items);
            (q.queued, q.closing, q.wanted > q.durable)
        };
        shared.space.notify_all();
        // Records nobody waits for are synced at least every `flush_interval`.
        let overdue = dirty && synced_at.elapsed() >= options.flush_interval;
        let writing = Instant::now();
        let result = write_batch(
            shared,
            &dir,
            &mut segment,
            &mut batch,
            &mut buf,
            &mut payload,
            last,
            closing || overdue || waited_for,
        );
        shared.stats.write_seconds.observe(writing.elapsed());
        match result {
            Ok(synced) => {
                dirty = !synced;
                if synced {
                    synced_at = Instant::now();
                }
                let mut q = shared.lock();
                q.written = last;
                if synced {
                    q.durable = last;
                }
                drop(q);
                shared.done.notify_all();
            }
            Err(e) => {
                let mut q = shared.lock();
                q.failed = Some(Arc::new(e));
                q.items.clear();
                drop(q);
                shared.done.notify_all();
                shared.space.notify_all();
                return;
            }
        }
        if closing && shared.lock().items.is_empty() {
            return;
        }
    }
}

/// Writes one batch; returns whether everything written so far is on disk.
#[allow(clippy::too_many_arguments)]
fn write_batch<R: Encode>(
    shared: &Shared<R>,
    dir: &Path,
    segment: &mut SegmentWriter,
    batch: &mut Vec<Item<R>>,
    buf: &mut Vec<u8>,
    payload: &mut Vec<u8>,
    last: Seq,
    force_sync: bool,
) -> std::io::Result<bool> {
    let options = &shared.options;
    let stats = &shared.stats;
    let first = last + 1 - batch.len() as u64;
    let mut need_sync = force_sync;
    buf.clear();
    for (i, item) in batch.drain(..).enumerate() {
        match item {
            Item::Record { record, durable } => {
                payload.clear();
                payload.extend_from_slice(&(first + i as u64).to_le_bytes());
                record.encode(payload);
                frame(buf, payload);
                stats.records.fetch_add(1, Ordering::Relaxed);
                need_sync |= durable;
                if durable && options.sync == SyncMode::EveryRecord {
                    flush(segment, buf, stats)?;
                    segment.sync()?;
                    stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                    let mut q = shared.lock();
                    q.durable = first + i as u64;
                    q.written = q.durable;
                    drop(q);
                    shared.done.notify_all();
                }
            }
            Item::Sync => need_sync = true,
            Item::Rotate => {
                flush(segment, buf, stats)?;
                segment.sync()?;
                stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                *segment = SegmentWriter::create(dir, segment.segment + 1)?;
                shared.lock().rotated = (first + i as u64, segment.position());
            }
        }
        if segment.len + buf.len() as u64 >= options.segment_bytes {
            flush(segment, buf, stats)?;
            segment.sync()?;
            stats.fsyncs.fetch_add(1, Ordering::Relaxed);
            *segment = SegmentWriter::create(dir, segment.segment + 1)?;
        }
    }
    flush(segment, buf, stats)?;
    stats.batches.fetch_add(1, Ordering::Relaxed);
    if need_sync && options.sync != SyncMode::Never {
        segment.sync()?;
        stats.fsyncs.fetch_add(1, Ordering::Relaxed);
    }
    Ok(need_sync)
}

fn flush(segment: &mut SegmentWriter, buf: &mut Vec<u8>, stats: &Stats) -> std::io::Result<()> {
    if !buf.is_empty() {
        segment.write(buf)?;
        stats.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        buf.clear();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Bytes(Vec<u8>);

    impl Encode for Bytes {
        fn encode(&self, out: &mut Vec<u8>) {
            out.extend_from_slice(&self.0);
        }
    }

    fn writer(dir: &Path, options: WriterOptions) -> Arc<Writer<Bytes>> {
        Arc::new(Writer::start(dir, Position::default(), 0, options).expect("writer"))
    }

    /// A writer that leaves records nobody waits for in the queue (for seconds).
    fn lingering(dir: &Path, queue: usize) -> Arc<Writer<Bytes>> {
        writer(
            dir,
            WriterOptions {
                queue,
                linger: Duration::from_secs(30),
                flush_interval: Duration::from_secs(30),
                wake_at: 1000,
                ..WriterOptions::default()
            },
        )
    }

    /// Records nobody waits for leave the last eighth of the queue to writers, and a
    /// rotation queues whatever the room (compaction queues it holding the budget lock).
    #[test]
    fn try_append_leaves_room_for_writers_and_a_rotation_always_queues() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = lingering(dir.path(), 16);
        for i in 0..14u8 {
            w.try_append(Bytes(vec![i]), false).expect("room");
        }
        assert_eq!(w.try_append(Bytes(vec![14]), false), Err(WriteError::Full));
        let a = w.reserve().expect("a writer's room");
        let b = w.reserve().expect("a writer's room");
        let rotation = w.queue_rotation().expect("a rotation with the queue full");
        a.append(Bytes(vec![15]), false).expect("append");
        b.append(Bytes(vec![16]), false).expect("append");
        assert_eq!(w.stats().waits.load(Ordering::Relaxed), 0, "nobody waited");
        w.rotated(rotation).expect("rotated");
    }

    #[test]
    fn a_full_queue_refuses_try_append_and_a_permit_never_waits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = lingering(dir.path(), 3);
        w.try_append(Bytes(b"a".to_vec()), false).expect("room");
        let permit = w.reserve().expect("room for one more");
        let unused = w.reserve().expect("room for the last");
        assert_eq!(
            w.try_append(Bytes(b"b".to_vec()), false),
            Err(WriteError::Full),
            "reserved room counts as taken"
        );
        drop(unused);
        w.try_append(Bytes(b"c".to_vec()), false)
            .expect("an unused permit gives its room back");
        assert_eq!(
            w.try_append(Bytes(b"d".to_vec()), false),
            Err(WriteError::Full)
        );
        let seq = permit
            .append(Bytes(b"e".to_vec()), false)
            .expect("a permit's append never waits, even with the queue full");
        assert_eq!(seq, 3);
        assert_eq!(w.stats().refused.load(Ordering::Relaxed), 2);
        assert_eq!(w.stats().waits.load(Ordering::Relaxed), 0, "nobody waited");
        w.wait(seq).expect("written");
        assert_eq!(w.stats().records.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn concurrent_durable_appends_share_fsyncs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = writer(dir.path(), WriterOptions::default());
        let threads: Vec<_> = (0..32)
            .map(|t| {
                let w = Arc::clone(&w);
                std::thread::spawn(move || {
                    for i in 0..50u8 {
                        w.append_durable(Bytes(vec![t, i])).expect("durable");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("writer thread");
        }
        let records = w.stats().records.load(Ordering::Relaxed);
        let fsyncs = w.stats().fsyncs.load(Ordering::Relaxed);
        assert_eq!(records, 1600);
        assert!(fsyncs < records, "{fsyncs} fsyncs for {records} records");
    }

    #[test]
    fn records_nobody_waits_for_are_synced_within_the_flush_interval() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = writer(
            dir.path(),
            WriterOptions {
                flush_interval: Duration::from_millis(20),
                ..WriterOptions::default()
            },
        );
        w.append(Bytes(b"decision".to_vec()), false)
            .expect("append");
        // Nobody waits: only the flush interval can bring the fsync.
        let given_up = Instant::now() + Duration::from_secs(10);
        while w.stats().fsyncs.load(Ordering::Relaxed) == 0 {
            assert!(
                Instant::now() < given_up,
                "no fsync came for a lingering record"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn waiting_for_a_record_appended_without_durable_syncs_it_now() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The interval would leave the record unsynced for an hour.
        let w = writer(
            dir.path(),
            WriterOptions {
                flush_interval: Duration::from_secs(3600),
                ..WriterOptions::default()
            },
        );
        let seq = w.append(Bytes(b"upsert".to_vec()), false).expect("append");
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = Arc::clone(&w);
        std::thread::spawn(move || {
            let _ = tx.send(waiter.wait(seq));
        });
        let synced = rx.recv_timeout(Duration::from_secs(30));
        assert_eq!(
            synced,
            Ok(Ok(())),
            "the waiter was left for the flush interval"
        );
        assert_eq!(w.stats().fsyncs.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn rotation_starts_a_new_segment_after_every_earlier_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = writer(dir.path(), WriterOptions::default());
        w.append(Bytes(b"one".to_vec()), false).expect("append");
        let at = w.rotate().expect("rotate");
        assert_eq!(at.segment, 2);
        w.append_durable(Bytes(b"two".to_vec())).expect("append");
        assert_eq!(
            crate::storage::segment::list(dir.path()).expect("list"),
            [1, 2]
        );
    }
}
