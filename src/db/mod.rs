//! The durable node: the in-memory [`Store`] decide reads, the [`journal`](crate::journal)
//! every write goes through, and the snapshots that make restarts fast.
//!
//! Every write is validated first (a bad one changes nothing and is never logged), then,
//! holding the customer's lock, appended to the journal and applied in memory, so memory
//! and journal see one customer's writes in the same order; the caller is acknowledged
//! once the journal's group commit has made the record durable.
//!
//! `compact` rotates the journal, writes a snapshot of everything before the rotation
//! (customers, the outcome keys that make outcomes idempotent, recent decisions) and
//! rewrites the older journal segments without the records of forgotten customers. A
//! restart loads the newest snapshot and replays the journal from its position.
//!
//! Layout under the data directory: `journal/*.log` (segments) and
//! `state/snapshot-<segment>.bin`.

pub mod budget;
mod generations;
pub mod import;
mod learning;

pub use learning::{CellStatus, LearningStatus, cell_statuses};
mod outcome;
mod recovery;
mod replica;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use arc_swap::ArcSwap;
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::catalog::PlacementIdx;
use crate::decide::{self, Context, Decision, Options};
use crate::journal::{
    self, Entry, ForgetRecord, OutcomeRecord, PendingDecision, Record, UpsertRecord,
};
use crate::schema::{Event, EventKind, Feature, Value, key, time};
use crate::state::{CustomerState, HistoryLimits, StateError, Store};
use crate::storage::{self, Damage, Stats, Writer, WriterOptions};

use generations::{Generations, Recent};
pub use recovery::{Recovery, SnapshotDefect, StreamMark, snapshot_catalog};
pub use replica::{DecisionSink, ReplicaOutcome, StateDigest};

#[derive(Debug, Clone)]
pub struct DbOptions {
    pub writer: WriterOptions,
    /// Outcomes count for a decision within this long after it (ms): the export's join
    /// window, and the longest that retried outcomes are recognised and decisions
    /// remembered.
    pub attribution_window: i64,
    /// At most this many recent decisions are remembered to resolve an outcome's
    /// customer and channel (the latest half of them always are).
    pub remembered_decisions: usize,
    /// At most this many recent outcomes are remembered to recognise retries (the latest
    /// half of them always are): memory is bounded whatever the outcome rate.
    pub remembered_outcomes: usize,
    /// How histories are bounded; `None`: by the catalog the node opens with (its
    /// look-backs). A cluster node sets the fixed default, so that every node trims alike
    /// whatever catalog it opened with.
    pub history_limits: Option<HistoryLimits>,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            writer: WriterOptions::default(),
            attribution_window: 7 * 86_400_000,
            remembered_decisions: 1_000_000,
            remembered_outcomes: 2_000_000,
            history_limits: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(
        "`{}` is in use by another nextbest process (it holds `LOCK` there); stop it first",
        dir.display()
    )]
    Locked { dir: PathBuf },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] storage::WriteError),
    #[error(transparent)]
    Attribute(#[from] StateError),
    #[error("unknown offer `{offer}`{}", suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    UnknownOffer {
        offer: String,
        suggestion: Option<String>,
    },
    /// Erasure met a torn or corrupt frame in a segment it must rewrite: it cannot
    /// rewrite what it cannot read, so it stops rather than drop the rest.
    #[error("erasing from segment {segment}: {damage}")]
    Damaged { segment: u64, damage: Damage },
    /// A file `import` refuses whole.
    #[error("reading the import file: {0}")]
    Import(#[from] import::ImportError),
    #[error("the snapshot `{path}` is unreadable: {reason}")]
    Snapshot {
        path: PathBuf,
        #[source]
        reason: SnapshotDefect,
    },
    /// A time a caller sent, outside what the node accepts.
    #[error(transparent)]
    Time(#[from] time::TimeError),
    /// An outcome whose `decision_id` is no decision id (a UUIDv7).
    #[error("`decision_id`: `{decision}` is not a decision id (decisions are UUIDv7, this is version {})", decision.get_version_num())]
    NotADecision { decision: Uuid },
    /// An outcome's customer or channel other than its decision's.
    #[error(
        "`{field}`: decision `{decision}` was made for `{its}`, not `{given}` (leave it out: the decision's is taken)"
    )]
    NotTheDecisions {
        field: &'static str,
        given: String,
        decision: Uuid,
        its: String,
    },
    /// An outcome's channel that no placement has.
    #[error("`channel`: unknown channel `{channel}`; the catalog's placements are in {channels}")]
    UnknownChannel { channel: String, channels: String },
    /// An outcome of an offer its decision did not show.
    #[error("`offer_id`: decision `{decision}` did not show offer `{offer}`; it showed {}", if shown.is_empty() { "nothing".to_string() } else { shown.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ") })]
    NotShown {
        decision: Uuid,
        offer: String,
        shown: Vec<String>,
    },
}

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DbError {
    let context = context.into();
    move |source| DbError::Io { context, source }
}

/// An outcome as a caller reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeInput {
    pub decision: Uuid,
    pub offer: String,
    pub kind: EventKind,
    pub value: Option<f64>,
    /// Milliseconds since the epoch.
    pub at: i64,
    /// The customer, when the caller knows it; otherwise the decision's, if remembered.
    pub customer: Option<String>,
    /// The channel, when the caller knows it; otherwise the decision's, if remembered.
    pub channel: Option<String>,
}

/// How an outcome was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeAck {
    /// The same (decision, offer, kind) was recorded before: counted once.
    pub duplicate: bool,
    /// The customer whose history it joined, if any.
    pub customer: Option<String>,
}

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compaction {
    pub snapshot: PathBuf,
    pub customers: usize,
    pub segments_rewritten: usize,
    pub records_erased: u64,
    pub forgotten: usize,
}

/// Outcome identity: (decision, offer key, kind).
type OutcomeKey = (u128, u32, EventKind);

/// The catalog in force and the store, its records laid out by that catalog's customer
/// attributes: one value, swapped whole, so that no call reads a store through another
/// catalog's slots. A call holds the view it started with to its end.
#[derive(Debug)]
pub struct View {
    pub catalog: Arc<Catalog>,
    pub store: Arc<Store>,
}

/// What [`Db::set_catalog`] did to the stored customers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Relayout {
    /// Customers carried over to the new catalog's attributes (0: the attributes are
    /// the same, the store was kept as it is).
    pub customers: usize,
    /// Stored values dropped by the copy: their attribute is gone, or changed to a type
    /// they do not convert to.
    pub dropped_values: usize,
    /// How long the copy took (writes and decisions went on meanwhile).
    pub copied: std::time::Duration,
    /// Customers written during the copy, carried over again with writes held back.
    pub taken_again: usize,
    /// How long writes were held back.
    pub paused: std::time::Duration,
    /// Cells of adaptive models whose state was dropped: their model is gone or its
    /// definition changed (a model defined as before keeps what it learned).
    pub model_cells_reset: usize,
    /// The adaptive models are not the old catalog's (one added, removed or changed).
    /// A replay learns under the catalog it opens with, so a node snapshots after such a
    /// swap (`server::Node::reload`): a restart must not replay the records before it
    /// under the new models.
    pub models_changed: bool,
}

pub struct Db {
    journal_dir: PathBuf,
    state_dir: PathBuf,
    view: ArcSwap<View>,
    /// Held shared by every write to the store from choosing the view to changing it,
    /// and exclusively by a catalog swap: a write lands in the store the swap carries
    /// over, or in the new one, never in one left behind.
    layout: RwLock<()>,
    /// One catalog swap at a time.
    swapping: Mutex<()>,
    journal: Writer<Entry>,
    /// The outcomes counted, with the sequence number of their record (`PENDING`
    /// while it is being queued; 0 for one restored, which is durable).
    outcomes: Generations<OutcomeKey, u64>,
    /// By decision id, a `Uuid` rather than a `u128`: byte-aligned, it makes a
    /// remembered decision's slot 56 bytes instead of 64.
    decisions: Generations<Uuid, Recent>,
    /// Customers forgotten, with the time of their forget: a decision of theirs made before
    /// it that arrives later (a cluster's decisions stream is not ordered with its writes)
    /// is not remembered again.
    forgotten_at: Generations<Box<str>, i64>,
    /// Forgotten since the last compaction, in order: their records are still in the
    /// journal until the next one.
    forgotten: Mutex<Vec<String>>,
    compaction: Mutex<()>,
    /// Where a restart would start replaying the journal: just after the newest snapshot.
    replay_from: Mutex<storage::Position>,
    spending: budget::Spending,
    /// The adaptive models' state, changed in journal order under `spending`'s lock.
    learning: Mutex<crate::adaptive::Learning>,
    /// The learning state decisions read: its responses learned, shifted left one, the
    /// low bit set while weights are being published (`decide_consistent`).
    published: std::sync::atomic::AtomicU64,
    unnamed: std::sync::atomic::AtomicU64,
    /// The predictor values of recent decisions that showed an offer with an adaptive
    /// model, postcard-encoded: what their outcomes' records carry (see `learning`).
    inputs: Generations<Uuid, Arc<[u8]>>,
    learned: learning::Counts,
    /// Decisions answered but not logged: the journal had failed.
    unlogged: std::sync::atomic::AtomicU64,
    /// Where decisions go instead of the journal: a cluster node's decisions stream.
    decision_sink: std::sync::OnceLock<Box<dyn DecisionSink>>,
    options: DbOptions,
    /// `LOCK` in the data directory, locked while this `Db` (or one reopened from it)
    /// lives: one process per data directory.
    lock: std::fs::File,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("journal", &self.journal_dir)
            .field("customers", &self.view.load().store.len())
            .finish()
    }
}

/// A decision id: a UUIDv7 of the time `at` (ms) it was made, the inverse of
/// [`uuid_time`]; its random bits keep apart the ids of one millisecond. The service passes
/// its clock, not a request's `at` (see `server::decision`).
pub fn decision_id(at: i64) -> Uuid {
    Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        u64::try_from(at.max(0) / 1000).unwrap_or(0),
        u32::try_from(at.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    ))
}

/// The time inside a UUIDv7, in ms (0 for other UUIDs).
pub fn uuid_time(id: Uuid) -> i64 {
    id.get_timestamp().map_or(0, |t| {
        let (secs, nanos) = t.to_unix();
        (secs * 1000 + u64::from(nanos) / 1_000_000) as i64
    })
}

impl Db {
    /// Opens (creating if needed) the data directory: loads the newest snapshot, replays
    /// the journal after it, cuts a torn tail, and starts the journal writer.
    pub fn open(
        dir: &Path,
        catalog: Arc<Catalog>,
        options: DbOptions,
    ) -> Result<(Db, Recovery), DbError> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating `{}`", dir.display())))?;
        let path = dir.join("LOCK");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(format!("opening `{}`", path.display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(DbError::Locked {
                    dir: dir.to_path_buf(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(io(format!("locking `{}`", path.display()))(e));
            }
        }
        Db::open_locked(dir, catalog, options, lock)
    }

    /// Opens this node's directory again, as [`Db::open`] does, once its journal has
    /// failed (a node healing): the directory's lock passes to the new `Db`. Refused
    /// while the journal works, whose files the new one would share.
    pub fn reopen(&self) -> Result<(Db, Recovery), DbError> {
        let dir = self.journal_dir.parent().unwrap_or(Path::new("."));
        if self.failed().is_none() {
            return Err(DbError::Locked {
                dir: dir.to_path_buf(),
            });
        }
        let lock = self
            .lock
            .try_clone()
            .map_err(io("sharing the data directory's lock"))?;
        Db::open_locked(dir, self.catalog(), self.options.clone(), lock)
    }

    fn open_locked(
        dir: &Path,
        catalog: Arc<Catalog>,
        options: DbOptions,
        lock: std::fs::File,
    ) -> Result<(Db, Recovery), DbError> {
        let journal_dir = dir.join("journal");
        let state_dir = dir.join("state");
        for d in [&journal_dir, &state_dir] {
            std::fs::create_dir_all(d).map_err(io(format!("creating `{}`", d.display())))?;
        }
        let end = journal::recover(&journal_dir).map_err(io("recovering the journal"))?;
        let store = Store::new(
            options
                .history_limits
                .unwrap_or_else(|| HistoryLimits::for_catalog(&catalog)),
            catalog.schema.customer.len(),
        );
        let mut db = Db {
            journal: Writer::start(&journal_dir, end.position, end.seq, options.writer.clone())
                .map_err(io("starting the journal writer"))?,
            journal_dir,
            state_dir,
            view: ArcSwap::from_pointee(View {
                catalog,
                store: Arc::new(store),
            }),
            layout: RwLock::new(()),
            swapping: Mutex::new(()),
            outcomes: Generations::new(options.remembered_outcomes),
            decisions: Generations::new(options.remembered_decisions),
            forgotten_at: Generations::new(100_000),
            forgotten: Mutex::new(Vec::new()),
            compaction: Mutex::new(()),
            replay_from: Mutex::new(storage::Position::default()),
            spending: budget::Spending::default(),
            learning: Mutex::new(crate::adaptive::Learning::default()),
            published: std::sync::atomic::AtomicU64::new(0),
            unnamed: std::sync::atomic::AtomicU64::new(0),
            inputs: Generations::new(options.remembered_decisions),
            learned: learning::Counts::default(),
            unlogged: std::sync::atomic::AtomicU64::new(0),
            decision_sink: std::sync::OnceLock::new(),
            options,
            lock,
        };
        let mut recovery = recovery::restore(&mut db)?;
        recovery.truncated = end.cut;
        db.spending.publish(&[&db.catalog()]);
        db.relearn(&db.catalog(), || ());
        Ok((db, recovery))
    }

    /// The data directory it was opened on.
    pub fn data_dir(&self) -> &Path {
        self.journal_dir.parent().unwrap_or(&self.journal_dir)
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        Arc::clone(&self.view.load().catalog)
    }

    /// The catalog in force and the store laid out by it: a call decides on one view.
    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// For a write: the view in force, which no swap replaces while the guard is held.
    fn for_write(&self) -> (RwLockReadGuard<'_, ()>, Arc<View>) {
        let guard = self.layout.read().unwrap_or_else(|e| e.into_inner());
        (guard, self.view.load_full())
    }

    /// Puts a new catalog in force for every later call; calls in flight finish on the
    /// view they started with. When the customer attributes differ, every stored customer
    /// is carried over to the new ones by name (enum values by variant name; a value whose
    /// attribute is gone or changed to a type it does not convert to is dropped) into a
    /// new store, while decisions read the old one and writes go on into it, their
    /// customers noted; then, with writes held back for a moment, the customers written
    /// meanwhile are carried over again and the new view swapped in. No write is lost:
    /// it lands in the old store before it is last copied, or in the new one.
    pub fn set_catalog(&self, catalog: Arc<Catalog>) -> Relayout {
        let _one_at_a_time = self.swapping.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.view.load_full();
        let mut relayout = Relayout::default();
        let remapping = (current.catalog.schema.customer != catalog.schema.customer).then(|| {
            let from: Vec<_> = current
                .catalog
                .schema
                .customer
                .attributes()
                .iter()
                .map(|a| (a.name.clone(), a.ty.clone()))
                .collect();
            crate::state::packed::Remapping::new(&from, &catalog.schema.customer)
        });
        let store = match &remapping {
            None => Arc::clone(&current.store),
            Some(remapping) => {
                let started = std::time::Instant::now();
                current.store.track_changes();
                let (store, dropped_values) = current.store.remapped(remapping);
                relayout.copied = started.elapsed();
                relayout.dropped_values = dropped_values;
                Arc::new(store)
            }
        };
        let held = std::time::Instant::now();
        let _no_writes = self.layout.write().unwrap_or_else(|e| e.into_inner());
        if let Some(remapping) = &remapping {
            let changed = current.store.changes();
            relayout.taken_again = changed.len();
            for id in &changed {
                store.take_again(&current.store, id, remapping);
            }
            relayout.customers = store.len();
        }
        // Cells for both catalogs' budgets before the swap: decisions on either find theirs.
        self.spending.publish(&[&catalog, &current.catalog]);
        let fingerprints = |c: &Catalog| c.models.iter().map(|m| m.fingerprint).collect::<Vec<_>>();
        relayout.models_changed = fingerprints(&catalog) != fingerprints(&current.catalog);
        let new = Arc::clone(&catalog);
        relayout.model_cells_reset = self.relearn(&new, || {
            self.view.store(Arc::new(View { catalog, store }));
        });
        relayout.paused = held.elapsed();
        relayout
    }

    /// The budget counters as a decision at `now` reads them.
    pub fn budgets(&self, now: i64) -> budget::SpentAt {
        self.spending.at(now)
    }

    /// The store decide reads (the current view's).
    pub fn store(&self) -> Arc<Store> {
        Arc::clone(&self.view.load().store)
    }

    pub fn journal_stats(&self) -> &Stats {
        self.journal.stats()
    }

    /// Merges attributes (parsed against `catalog`'s schema) into a customer. With
    /// `wait`, returns once the change is durable; without, call [`Db::sync`] later. When
    /// another catalog came into force since the values were parsed, they are carried
    /// over to its attributes by name, as the journal record is on replay.
    pub fn upsert(
        &self,
        catalog: &Catalog,
        id: &str,
        mut values: Vec<Value>,
        at: i64,
        wait: bool,
    ) -> Result<(), DbError> {
        let record = Db::upsert_record(catalog, id, &values, at);
        // Room first: the append under the customer's lock never waits for the disk.
        let permit = self.journal.reserve()?;
        let (_layout, view) = self.for_write();
        let schema = &view.catalog.schema;
        if schema.customer != catalog.schema.customer
            && let Record::Upsert(r) = &record
        {
            values = recovery::values_by_name(&schema.customer, &r.attributes).0;
        }
        let seq = view.store.update(id, |state| {
            let seq = permit.append(Entry::Record(record), false)?;
            state.merge(schema, values);
            state.seq = seq;
            Ok::<_, DbError>(seq)
        })?;
        if wait {
            self.journal.wait(seq)?;
        }
        Ok(())
    }

    /// The record an upsert of these values (in `catalog`'s slots) writes: attributes
    /// by name, so that it outlives the catalog.
    pub fn upsert_record(catalog: &Catalog, id: &str, values: &[Value], at: i64) -> Record {
        let attributes: Vec<(String, Feature)> = catalog
            .schema
            .customer
            .attributes()
            .iter()
            .zip(values)
            .filter_map(|(a, v)| Some((a.name.clone(), Feature::of(v, &a.ty)?)))
            .collect();
        Record::Upsert(UpsertRecord {
            at,
            customer: id.to_string(),
            attributes,
        })
    }

    /// Parses JSON attributes and upserts them, durably. One bad attribute refuses all.
    pub fn upsert_json(
        &self,
        id: &str,
        attributes: &serde_json::Map<String, serde_json::Value>,
        at: i64,
    ) -> Result<(), DbError> {
        let catalog = self.catalog();
        let values =
            crate::state::parse_attributes("customer", &catalog.schema.customer, attributes)?;
        self.upsert(&catalog, id, values, at, true)
    }

    /// Waits until every write so far is durable.
    pub fn sync(&self) -> Result<(), DbError> {
        Ok(self.journal.sync()?)
    }

    /// Forgets a customer: their state goes now, durably; their journal records go at
    /// the next compaction. Returns whether the customer was known.
    pub fn forget(&self, id: &str, at: i64) -> Result<bool, DbError> {
        let record = Record::Forget(ForgetRecord {
            at,
            customer: id.to_string(),
        });
        // Room first, as for every write: nothing waits for the disk holding the layout
        // lock (a swap waiting for it would hold back writers that hold room).
        let permit = self.journal.reserve()?;
        let (layout, view) = self.for_write();
        let seq = permit.append(Entry::Record(record), true)?;
        let known = view.store.forget(id);
        drop(layout);
        self.forget_inputs(id);
        self.decisions.retain(|_, r| r.customer() != id);
        self.forgotten
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id.to_string());
        self.journal.wait(seq)?;
        Ok(known)
    }

    /// Hands a decision to the journal (no I/O here: the journal thread encodes and
    /// writes it) and remembers it for its outcomes. Never waits: when the journal's
    /// queue is full (the disk is not keeping up) the decision is not logged and the
    /// error says so (count it with [`Db::count_unlogged`]): deciding does not stall
    /// behind the disk.
    pub fn log_decision(
        &self,
        catalog: &Arc<Catalog>,
        customer: &CustomerState,
        context: &Context,
        decision: Decision,
    ) -> Result<(), DbError> {
        let channel = catalog.placements[decision.placement].channel_key;
        self.keep_inputs(catalog, &customer.attributes, &context.values, &decision);
        if let Some(id) = customer.id.as_deref() {
            self.remember(
                decision.id.as_u128(),
                Recent::with_shown(id, channel, shown_keys(catalog, &decision)),
            );
        }
        let pending =
            PendingDecision::new(Arc::clone(catalog), customer, &context.values, decision);
        self.log_pending(Box::new(pending))
    }

    /// Decides for a customer as stored (an unknown id, or none, is a caller with no
    /// attributes and no history) and logs the decision, handing the journal the
    /// customer's packed record as it is. `respond` sees the decision before it goes to
    /// the journal: build the reply there. A caller that adds request attributes to the
    /// stored ones decides itself, through [`Db::decide_consistent`], and calls
    /// [`Db::log_decision`].
    #[allow(clippy::too_many_arguments)]
    pub fn decide<R>(
        &self,
        view: &View,
        customer: Option<&str>,
        context: &Context,
        placement: PlacementIdx,
        now: i64,
        options: &Options<'_>,
        respond: impl FnOnce(&CustomerState, &Decision) -> R,
    ) -> Result<R, DbError> {
        let catalog = &view.catalog;
        let channel = catalog.placements[placement].channel_key;
        let mut respond = Some(respond);
        if let Some(id) = customer {
            let done = view.store.with_record(id, |found| {
                let (state, record) = found?;
                let decision = self.decide_consistent(catalog, || {
                    decide::decide(catalog, state, context, placement, now, options)
                });
                let reply = respond.take()?(state, &decision);
                self.keep_inputs(catalog, &state.attributes, &context.values, &decision);
                let id: Arc<str> = Arc::from(id);
                self.remember(
                    decision.id.as_u128(),
                    Recent::with_shown(&id, channel, shown_keys(catalog, &decision)),
                );
                let pending = PendingDecision::from_record(
                    Arc::clone(catalog),
                    id,
                    record,
                    &context.values,
                    decision,
                );
                let queued = self.log_pending(Box::new(pending));
                self.count_unlogged(queued.err());
                Some(reply)
            })?;
            if let Some(reply) = done {
                return Ok(reply);
            }
        }
        // Anonymous, or not in the store.
        let state = CustomerState {
            id: customer.map(str::to_string),
            ..CustomerState::default()
        };
        let decision = self.decide_consistent(catalog, || {
            decide::decide(catalog, &state, context, placement, now, options)
        });
        let respond = respond
            .take()
            .expect("not called: the customer was not found");
        let reply = respond(&state, &decision);
        let logged = self.log_decision(catalog, &state, context, decision);
        self.count_unlogged(logged.err());
        Ok(reply)
    }

    /// Hands a decision to the cluster's decisions stream when the node has one, to the
    /// journal otherwise; never waits.
    fn log_pending(&self, pending: Box<PendingDecision>) -> Result<(), DbError> {
        match self.decision_sink.get() {
            Some(sink) => sink.send(pending),
            None => {
                self.journal.try_append(Entry::Decision(pending), false)?;
                Ok(())
            }
        }
    }

    /// A decision the journal refused (it failed: disk full or read-only) is answered
    /// all the same, from memory, and counted here: deciding must not stop because
    /// logging did.
    pub fn count_unlogged(&self, error: Option<DbError>) {
        if error.is_some() {
            self.unlogged
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Decisions answered but not logged since the node opened.
    pub fn unlogged_decisions(&self) -> u64 {
        self.unlogged.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Why the journal takes no more writes, once it has failed.
    pub fn failed(&self) -> Option<Arc<std::io::Error>> {
        self.journal.failed()
    }

    fn remember(&self, decision: u128, recent: Recent) {
        self.decisions.insert(Uuid::from_u128(decision), recent);
    }

    /// The bytes of journal a restart would replay now: what was written since the newest
    /// snapshot. Restart time grows with it (see `serve --compact-journal-mb`).
    pub fn journal_since_snapshot(&self) -> Result<u64, DbError> {
        let from = *self.replay_from.lock().unwrap_or_else(|e| e.into_inner());
        let mut bytes = 0u64;
        for number in
            storage::segment::list(&self.journal_dir).map_err(io("listing the journal"))?
        {
            if number < from.segment {
                continue;
            }
            let path = storage::segment::segment_path(&self.journal_dir, number);
            let len = match std::fs::metadata(&path) {
                Ok(m) => m.len(),
                // Erased or rotated away meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
                Err(e) => return Err(io(format!("reading `{}`", path.display()))(e)),
            };
            let skip = if number == from.segment {
                from.offset
            } else {
                0
            };
            bytes += len.saturating_sub(skip);
        }
        Ok(bytes)
    }

    /// Snapshots the state, then erases forgotten customers from the older segments.
    pub fn compact(&self, now: i64) -> Result<Compaction, DbError> {
        let _one_at_a_time = self.compaction.lock().unwrap_or_else(|e| e.into_inner());
        let forgotten: Vec<String> = self
            .forgotten
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let cutoff = now - self.options.attribution_window;
        self.outcomes
            .retain(|(d, _, _), _| uuid_time(Uuid::from_u128(*d)) >= cutoff);
        self.decisions.retain(|d, _| uuid_time(*d) >= cutoff);
        self.inputs.retain(|d, _| uuid_time(*d) >= cutoff);
        // Budget counters exactly as of the rotation: no impression is counted while it
        // happens (see `budget`).
        // The rotation is queued holding the counters (no impression is counted in
        // between) and waited for after letting go: the disk is never waited for under
        // a lock appenders take.
        let (rotation, spending, learning) = {
            let counters = self.spending.lock();
            (
                self.journal.queue_rotation()?,
                counters.counters().clone(),
                self.learning(),
            )
        };
        let position = self.journal.rotated(rotation)?;
        let (snapshot, customers) =
            recovery::write_snapshot(self, position, &spending, &learning, now, None)?;
        *self.replay_from.lock().unwrap_or_else(|e| e.into_inner()) = position;
        let erase: HashSet<&str> = forgotten.iter().map(String::as_str).collect();
        let (segments_rewritten, records_erased) = if erase.is_empty() {
            (0, 0)
        } else {
            erase_customers(&self.journal_dir, position.segment, &erase)?
        };
        self.forgotten
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..forgotten.len());
        Ok(Compaction {
            snapshot,
            customers,
            segments_rewritten,
            records_erased,
            forgotten: forgotten.len(),
        })
    }

    /// Makes everything durable and stops the journal writer.
    pub fn close(self) -> Result<(), DbError> {
        Ok(self.journal.close()?)
    }
}

/// The keys of the offers a decision showed (its fallback included): the offers its
/// outcomes may name.
fn shown_keys<'a>(
    catalog: &'a Catalog,
    decision: &'a Decision,
) -> impl ExactSizeIterator<Item = u32> + 'a {
    decision.offers.iter().map(|s| catalog.offers[s.offer].key)
}

/// Rewrites the segments before `before` without the records of `customers`; returns
/// how many segments changed and how many records went.
fn erase_customers(
    dir: &Path,
    before: u64,
    customers: &HashSet<&str>,
) -> Result<(usize, u64), DbError> {
    use storage::segment::{self, MAGIC, SegmentReader};
    let mut rewritten = 0;
    let mut erased = 0;
    for number in segment::list(dir).map_err(io("listing the journal"))? {
        if number >= before {
            break;
        }
        let mut reader = SegmentReader::open(dir, number).map_err(io("reading the journal"))?;
        let mut kept = Vec::new();
        let mut payload = Vec::new();
        let mut dropped = 0;
        while reader
            .next_into(&mut payload)
            .map_err(io("reading the journal"))?
            .is_some()
        {
            let gone = Record::decode(&payload)
                .ok()
                .and_then(|(_, r)| r.customer().map(|c| customers.contains(c)))
                .unwrap_or(false);
            if gone {
                dropped += 1;
            } else {
                segment::frame(&mut kept, &payload);
            }
        }
        if let Some(damage) = reader.damage() {
            return Err(DbError::Damaged {
                segment: number,
                damage: damage.clone(),
            });
        }
        if dropped > 0 {
            let path = segment::segment_path(dir, number);
            segment::write_atomic(&path, |w| {
                w.write_all(MAGIC)?;
                w.write_all(&kept)
            })
            .map_err(io(format!("rewriting `{}`", path.display())))?;
            rewritten += 1;
            erased += dropped;
        }
    }
    Ok((rewritten, erased))
}

#[cfg(test)]
mod learning_tests;
#[cfg(test)]
mod tests;
