//! Snapshots and restart: write the state as of a journal position; on open, load the
//! newest snapshot and replay the journal from its position.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::budget::{self, Counter, Counters};
use super::generations::Generations;
use super::{Db, DbError, Recent, io};
use crate::decide::BudgetScope;
use crate::journal::{Reader, Record, Replayed};
use crate::schema::{AttrType, EntitySchema, EnumDef};
use crate::schema::{Event, EventKind, key};
use crate::storage::segment::{self, SegmentReader};
use crate::storage::{Damage, Position};

/// What is wrong inside a snapshot file that has a sound frame structure (a checksum
/// that held): a format skew, or a bug in the writer.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotDefect {
    #[error("a customer record is cut short")]
    CutShort,
    /// A customer id that is not UTF-8.
    #[error(transparent)]
    CustomerId(#[from] std::str::Utf8Error),
    /// A customer's packed record that does not carry over to the catalog's attributes.
    #[error("customer `{customer}` does not decode")]
    Undecodable { customer: String },
    #[error(transparent)]
    Postcard(#[from] postcard::Error),
    #[error("unknown snapshot record")]
    UnknownItem,
    #[error("unknown attribute type")]
    UnknownAttributeType,
    #[error("unknown budget scope {0}")]
    UnknownBudgetScope(u8),
    /// The end marker's count differs from the customers read.
    #[error("{announced} customers announced, {found} found")]
    CustomerCount { announced: u64, found: usize },
}

const MAGIC: &[u8; 8] = b"NBSNAP01";
/// The first byte of a frame: a postcard-encoded [`Item`], or a customer as
/// `id length (u32 LE), id, packed record` written without serde for speed.
const ITEM: u8 = 1;
const CUSTOMER: u8 = 2;
/// Outcome keys and decisions are stored in chunks of this many.
const CHUNK: usize = 65_536;

#[derive(Debug, Serialize, Deserialize)]
enum Item {
    Header {
        segment: u64,
        offset: u64,
        created_at: i64,
        /// The customer slots the packed records were written in: name, type name and
        /// enum variants.
        slots: Vec<(String, String, Vec<String>)>,
    },
    Outcomes(Vec<(u128, u32, EventKind)>),
    /// Recent decisions: id, customer, channel key.
    Decisions(Vec<(u128, String, u32)>),
    End {
        customers: u64,
    },
    // Added after `End`: variants are numbered in order.
    /// Budget counters as of the snapshot's position: scope (0 offer, 1 group, 2
    /// channel), key, day, today, total.
    Spending(Vec<(u8, u32, i64, u64, u64)>),
    /// Recent decisions, written instead of `Decisions` since the second wave: id,
    /// customer, channel key and the keys of the offers shown (`None`: not known).
    DecisionsShown(Vec<(u128, String, u32, Option<Vec<u32>>)>),
    /// A cluster node's snapshot: the write stream it was applied from and the last
    /// stream position it reflects (written right after the header).
    Stream(StreamMark),
    /// A cluster node's snapshot: the cluster's catalog in force at that position, as it
    /// was published (its files; written after `Stream`, before the customers), which
    /// the node opens with again.
    Catalog(Vec<u8>),
    /// About how many customers follow (written right before them), so that a restart
    /// sizes its store once instead of growing it step by step.
    Customers(u64),
    /// The adaptive models' weights and the journal's clock as of the position.
    Learning(crate::adaptive::LearningHead),
    /// Impressions waiting for their window to close, after `Learning`, in chunks.
    Pending(Vec<crate::adaptive::Pending>),
    /// How well each cell of the adaptive models predicted, after `Pending`, in chunks.
    Monitors(Vec<(crate::adaptive::CellKey, crate::adaptive::Monitor)>),
    /// Responses the adaptive models learned up to the position (after `Learning`).
    LearningUpdates(u64),
}

/// Where a cluster node's state stands in its cluster's write stream: the stream (its
/// name and creation time, so that a stream deleted and made again is not mistaken for
/// it) and the last position applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamMark {
    pub stream: String,
    /// The stream's creation time, in nanoseconds since the epoch.
    pub created: i64,
    pub position: u64,
    /// The last decisions-stream position remembered.
    pub decisions: u64,
}

fn encode(item: &Item, payload: &mut Vec<u8>) {
    payload.clear();
    payload.push(ITEM);
    postcard::to_io(item, &mut *payload).expect("snapshot items always serialize");
}

fn describe_slots(schema: &EntitySchema) -> Vec<(String, String, Vec<String>)> {
    schema
        .attributes()
        .iter()
        .map(|a| {
            let variants = match &a.ty {
                AttrType::Enum(def) => def.variants.iter().map(|v| v.to_string()).collect(),
                _ => Vec::new(),
            };
            (a.name.clone(), a.ty.name().to_string(), variants)
        })
        .collect()
}

fn slot_types(slots: &[(String, String, Vec<String>)]) -> Option<Vec<(String, AttrType)>> {
    slots
        .iter()
        .map(|(name, ty, variants)| {
            let ty = match ty.as_str() {
                "bool" => AttrType::Bool,
                "int" => AttrType::Int,
                "float" => AttrType::Float,
                "string" => AttrType::String,
                "enum" => AttrType::Enum(EnumDef::new(variants.iter().map(String::as_str))),
                "set" => AttrType::Set,
                "timestamp" => AttrType::Timestamp,
                _ => return None,
            };
            Some((name.clone(), ty))
        })
        .collect()
}

/// What opening the data directory found and did.
#[derive(Debug, Default)]
pub struct Recovery {
    /// The snapshot loaded, if any.
    pub snapshot: Option<PathBuf>,
    pub customers_loaded: usize,
    /// Journal records replayed after the snapshot.
    pub replayed: u64,
    /// A torn or corrupt tail cut off the last journal segment.
    pub truncated: Option<Damage>,
    /// Damage met while loading the snapshot or replaying (records after it in its file
    /// were skipped).
    pub damage: Vec<Damage>,
    /// Stored attribute values that no longer fit the catalog's schema (renamed or
    /// retyped attributes, removed enum values) and were dropped.
    pub dropped_values: usize,
    pub elapsed: Duration,
    /// The write stream position the snapshot reflects, for a cluster node's.
    pub stream: Option<StreamMark>,
    /// The cluster's catalog in force at that position, as published, for a cluster
    /// node's (none in snapshots written before it was kept).
    pub catalog: Option<Vec<u8>>,
}

impl std::fmt::Display for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.snapshot {
            Some(path) => write!(
                f,
                "loaded {} customers from `{}`",
                self.customers_loaded,
                path.display()
            )?,
            None => f.write_str("no snapshot")?,
        }
        write!(
            f,
            ", replayed {} journal records in {:.2?}",
            self.replayed, self.elapsed
        )?;
        if let Some(t) = &self.truncated {
            write!(f, "; cut a damaged journal tail at {t}")?;
        }
        for d in &self.damage {
            write!(f, "; damage at {d}")?;
        }
        if self.dropped_values > 0 {
            write!(
                f,
                "; dropped {} stored values that no longer fit the schema",
                self.dropped_values
            )?;
        }
        Ok(())
    }
}

/// The cluster catalog the newest snapshot of the data directory `data` was taken under,
/// as published (a cluster node opens with it: the records after the snapshot were
/// applied under it on every node). `None` without a snapshot, for an embedded node's or
/// one written before snapshots kept it, and when the snapshot cannot be read (opening
/// it then says why).
pub fn snapshot_catalog(data: &Path) -> Option<Vec<u8>> {
    let (_, path) = snapshots(&data.join("state")).ok()?.pop()?;
    let mut reader = SegmentReader::open_file(&path, MAGIC, 0).ok()?;
    let mut payload = Vec::new();
    // The catalog comes right after the header and the stream mark.
    for _ in 0..3 {
        reader.next_into(&mut payload).ok()??;
        if payload.first() != Some(&ITEM) {
            return None;
        }
        if let Ok(Item::Catalog(catalog)) = postcard::from_bytes(&payload[1..]) {
            return Some(catalog);
        }
    }
    None
}

fn snapshots(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let n = path.file_name().and_then(|n| n.to_str()).and_then(|n| {
            n.strip_prefix("snapshot-")?
                .strip_suffix(".bin")?
                .parse()
                .ok()
        });
        if let Some(n) = n {
            out.push((n, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Writes the state as of `position` (every record before it is reflected; records
/// after it may be too, which replay tolerates) and removes older snapshots.
pub(super) fn write_snapshot(
    db: &Db,
    position: Position,
    spending: &Counters,
    learning: &crate::adaptive::Learning,
    now: i64,
    stream: Option<(&StreamMark, Option<&[u8]>)>,
) -> Result<(PathBuf, usize), DbError> {
    let view = db.view();
    let schema = &view.catalog.schema.customer;
    let path = db
        .state_dir
        .join(format!("snapshot-{:020}.bin", position.segment));
    let mut customers = 0usize;
    segment::write_atomic(&path, |w| {
        let mut payload = Vec::with_capacity(4096);
        let mut frame = Vec::with_capacity(4096);
        let mut put = |w: &mut dyn Write, item: &Item| {
            encode(item, &mut payload);
            frame.clear();
            segment::frame(&mut frame, &payload);
            w.write_all(&frame)
        };
        w.write_all(MAGIC)?;
        put(
            w,
            &Item::Header {
                segment: position.segment,
                offset: position.offset,
                created_at: now,
                slots: describe_slots(schema),
            },
        )?;
        if let Some((mark, catalog)) = stream {
            put(w, &Item::Stream(mark.clone()))?;
            if let Some(catalog) = catalog {
                put(w, &Item::Catalog(catalog.to_vec()))?;
            }
        }
        put(w, &Item::Customers(view.store.len() as u64))?;
        let mut result = Ok(());
        let mut customer = Vec::with_capacity(4096);
        let mut framed = Vec::with_capacity(4096);
        view.store.for_each_packed(|id, packed| {
            if result.is_ok() {
                customers += 1;
                customer.clear();
                customer.push(CUSTOMER);
                customer.extend_from_slice(&(id.len() as u32).to_le_bytes());
                customer.extend_from_slice(id.as_bytes());
                customer.extend_from_slice(packed);
                framed.clear();
                segment::frame(&mut framed, &customer);
                result = w.write_all(&framed);
            }
        });
        result?;
        // A chunk at a time: a million remembered decisions copied whole took ~160 MB.
        let mut put_item = |item: &Item| put(w, item);
        put_chunked(&db.outcomes, |key, _| key, Item::Outcomes, &mut put_item)?;
        put_chunked(
            &db.decisions,
            |id, r| {
                (
                    id.as_u128(),
                    r.customer().to_string(),
                    r.channel(),
                    r.shown().map(Iterator::collect),
                )
            },
            Item::DecisionsShown,
            &mut put_item,
        )?;
        let counters: Vec<_> = spending
            .iter()
            .map(|(scope, c)| {
                let (kind, key) = match *scope {
                    BudgetScope::Offer(k) => (0u8, k),
                    BudgetScope::Group(k) => (1, k),
                    BudgetScope::Channel(k) => (2, k),
                };
                (kind, key, c.day, c.today, c.total)
            })
            .collect();
        put(w, &Item::Spending(counters))?;
        let (head, pending) = learning.to_snapshot();
        if head.clock != 0 || !head.cells.is_empty() || !pending.is_empty() {
            put(w, &Item::Learning(head))?;
            put(w, &Item::LearningUpdates(learning.updates()))?;
            for chunk in pending.chunks(CHUNK) {
                put(w, &Item::Pending(chunk.to_vec()))?;
            }
            for chunk in learning.monitors_snapshot().chunks(CHUNK / 64) {
                put(w, &Item::Monitors(chunk.to_vec()))?;
            }
        }
        put(
            w,
            &Item::End {
                customers: customers as u64,
            },
        )
    })
    .map_err(io(format!("writing `{}`", path.display())))?;
    for (n, old) in snapshots(&db.state_dir).map_err(io("listing snapshots"))? {
        if n < position.segment {
            std::fs::remove_file(&old).map_err(io(format!("removing `{}`", old.display())))?;
        }
    }
    Ok((path, customers))
}

/// Writes the entries of a bounded memory as items of up to [`CHUNK`] each, going through
/// it a shard's copy at a time ([`Generations::for_each_shard`]).
fn put_chunked<K: Eq + std::hash::Hash + Clone, V: Clone, T>(
    memory: &Generations<K, V>,
    mut entry: impl FnMut(K, V) -> T,
    item: impl Fn(Vec<T>) -> Item,
    put: &mut impl FnMut(&Item) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut result = Ok(());
    memory.for_each_shard(|shard| {
        for (k, v) in shard {
            if result.is_err() {
                return;
            }
            chunk.push(entry(k, v));
            if chunk.len() == CHUNK {
                result = put(&item(std::mem::take(&mut chunk)));
                chunk.reserve(CHUNK);
            }
        }
    });
    result?;
    if chunk.is_empty() {
        Ok(())
    } else {
        put(&item(chunk))
    }
}

/// Loads the newest snapshot and replays the journal after it.
pub(super) fn restore(db: &mut Db) -> Result<Recovery, DbError> {
    let started = Instant::now();
    let mut recovery = Recovery::default();
    let mut from = Position::default();
    let list = snapshots(&db.state_dir).map_err(io("listing snapshots"))?;
    if let Some((_, path)) = list.last() {
        match load_snapshot(db, path, &mut recovery)? {
            Some(position) => {
                from = position;
                recovery.snapshot = Some(path.clone());
            }
            None => {
                // Unusable: start from an empty state and replay the whole journal,
                // which segments are never deleted from.
                let catalog = db.catalog();
                let store =
                    crate::state::Store::new(db.store().limits(), catalog.schema.customer.len());
                db.view.store(Arc::new(super::View {
                    catalog,
                    store: Arc::new(store),
                }));
                db.outcomes.clear();
                db.decisions.clear();
                db.inputs.clear();
                db.spending.lock().clear();
                *db.learning.lock().unwrap_or_else(|e| e.into_inner()) = Default::default();
                recovery.customers_loaded = 0;
                recovery.stream = None;
                recovery.catalog = None;
            }
        }
    }
    let mut reader = Reader::open(&db.journal_dir, from).map_err(io("reading the journal"))?;
    // With adaptive models a decision is read whole: its values are kept for the
    // records of outcomes that come after the restart.
    let whole = !db.catalog().models.is_empty();
    loop {
        let next = if whole {
            reader
                .next_record()
                .map(|r| r.map(|(p, seq, r)| (p, seq, Replayed::Record(r))))
        } else {
            reader.next_for_replay()
        };
        let Some((_, seq, record)) = next.map_err(io("reading the journal"))? else {
            break;
        };
        match record {
            Replayed::Record(record) => {
                apply(db, seq, record, &mut recovery.dropped_values, false);
            }
            // A decision only tells which customer and channel its outcomes belong to.
            Replayed::Decision {
                id,
                customer: Some(customer),
                channel,
                shown,
            } => {
                db.decisions.insert(
                    Uuid::from_bytes(id),
                    Recent::new(&customer, channel, shown.as_deref()),
                );
            }
            Replayed::Decision { customer: None, .. } => {}
        }
        recovery.replayed += 1;
    }
    recovery.damage.append(&mut reader.damage);
    *db.replay_from.get_mut().unwrap_or_else(|e| e.into_inner()) = from;
    recovery.elapsed = started.elapsed();
    Ok(recovery)
}

/// Loads one snapshot; `None` (with the damage reported) if it is incomplete.
fn load_snapshot(
    db: &Db,
    path: &Path,
    recovery: &mut Recovery,
) -> Result<Option<Position>, DbError> {
    let view = db.view();
    let schema = &view.catalog.schema.customer;
    let current = describe_slots(schema);
    // The slots of the snapshot when they differ from the catalog's.
    let mut remap: Option<crate::state::packed::Remapping> = None;
    let mut reader = SegmentReader::open_file(path, MAGIC, 0)
        .map_err(io(format!("opening `{}`", path.display())))?;
    let mut payload = Vec::new();
    let mut position = None;
    let bad = |reason: SnapshotDefect| DbError::Snapshot {
        path: path.to_path_buf(),
        reason,
    };
    while reader
        .next_into(&mut payload)
        .map_err(io(format!("reading `{}`", path.display())))?
        .is_some()
    {
        let item: Item = match payload.split_first() {
            Some((&CUSTOMER, rest)) => {
                let (len, rest) = rest
                    .split_first_chunk::<4>()
                    .ok_or_else(|| bad(SnapshotDefect::CutShort))?;
                let len = u32::from_le_bytes(*len) as usize;
                if rest.len() < len || position.is_none() {
                    return Err(bad(SnapshotDefect::CutShort));
                }
                let (id, packed) = rest.split_at(len);
                let id = std::str::from_utf8(id).map_err(|e| bad(e.into()))?;
                match &remap {
                    None => view.store.insert_packed(id, packed),
                    Some(remapping) => {
                        let (bytes, dropped) = remapping.apply(packed).ok_or_else(|| {
                            bad(SnapshotDefect::Undecodable {
                                customer: id.to_string(),
                            })
                        })?;
                        recovery.dropped_values += dropped;
                        view.store.insert_packed(id, &bytes);
                    }
                }
                recovery.customers_loaded += 1;
                continue;
            }
            Some((&ITEM, rest)) => postcard::from_bytes(rest).map_err(|e| bad(e.into()))?,
            _ => return Err(bad(SnapshotDefect::UnknownItem)),
        };
        match item {
            Item::Header {
                segment,
                offset,
                slots,
                ..
            } => {
                if slots != current {
                    let from = slot_types(&slots)
                        .ok_or_else(|| bad(SnapshotDefect::UnknownAttributeType))?;
                    remap = Some(crate::state::packed::Remapping::new(&from, schema));
                }
                position = Some(Position { segment, offset });
            }
            Item::Outcomes(keys) => {
                for k in keys {
                    db.outcomes.insert(k, 0);
                }
            }
            Item::Spending(counters) => {
                let mut spending = db.spending.lock();
                for (kind, key, day, today, total) in counters {
                    let scope = match kind {
                        0 => BudgetScope::Offer(key),
                        1 => BudgetScope::Group(key),
                        2 => BudgetScope::Channel(key),
                        _ => return Err(bad(SnapshotDefect::UnknownBudgetScope(kind))),
                    };
                    spending.set(scope, Counter { day, today, total });
                }
            }
            Item::Decisions(recent) => {
                for (id, customer, channel) in recent {
                    db.decisions
                        .insert(Uuid::from_u128(id), Recent::new(&customer, channel, None));
                }
            }
            Item::DecisionsShown(recent) => {
                for (id, customer, channel, shown) in recent {
                    db.decisions.insert(
                        Uuid::from_u128(id),
                        Recent::new(&customer, channel, shown.as_deref()),
                    );
                }
            }
            Item::Learning(head) => db
                .learning
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .restore_head(head),
            Item::Pending(pending) => db
                .learning
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .restore_pending(pending),
            Item::LearningUpdates(updates) => db
                .learning
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .restore_updates(updates),
            Item::Monitors(monitors) => db
                .learning
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .restore_monitors(monitors),
            Item::Stream(mark) => recovery.stream = Some(mark),
            Item::Catalog(catalog) => recovery.catalog = Some(catalog),
            Item::Customers(about) => {
                // A count no file of this size can hold is not believed: each customer
                // takes more than 8 bytes of it.
                let most = std::fs::metadata(path).map_or(0, |m| m.len() / 8);
                view.store
                    .reserve(usize::try_from(about.min(most)).unwrap_or(0));
            }
            Item::End { customers } => {
                if customers as usize != recovery.customers_loaded {
                    return Err(bad(SnapshotDefect::CustomerCount {
                        announced: customers,
                        found: recovery.customers_loaded,
                    }));
                }
                return Ok(position);
            }
        }
    }
    recovery
        .damage
        .push(reader.damage().cloned().unwrap_or_else(|| Damage {
            at: Position::default(),
            bytes: 0,
            reason: format!("`{}` ends before its end marker", path.display()),
        }));
    Ok(None)
}

/// An upsert record's attributes (by name) in `schema`'s slots, and how many of them no
/// longer fit it (the attribute is gone, or changed to a type the value does not
/// convert to).
pub(super) fn values_by_name(
    schema: &EntitySchema,
    attributes: &[(String, crate::schema::Feature)],
) -> (Vec<crate::schema::Value>, usize) {
    let mut values = vec![crate::schema::Value::Missing; schema.len()];
    let mut dropped = 0;
    for (name, feature) in attributes {
        let value = schema
            .slot(name)
            .and_then(|slot| Some((slot, feature.value(&schema.get(slot)?.ty)?)));
        match value {
            Some((slot, v)) => values[slot as usize] = v,
            None => dropped += 1,
        }
    }
    (values, dropped)
}

/// Applies one journal record to the in-memory state, as the write did, unless the
/// customer's state already holds it (a snapshot taken after the write). Values that no
/// longer fit the schema are counted in `dropped`. With `dedupe` (a cluster's stream,
/// where two nodes may publish the same outcome) an outcome whose identity is already
/// counted is skipped whole, and the identity remembers `seq`; returns whether the
/// record changed anything.
pub(super) fn apply(db: &Db, seq: u64, record: Record, dropped: &mut usize, dedupe: bool) -> bool {
    let (_layout, view) = db.for_write();
    let (catalog, store) = (&view.catalog, &view.store);
    match record {
        Record::Upsert(r) => {
            let schema = &catalog.schema;
            let (values, lost) = values_by_name(&schema.customer, &r.attributes);
            *dropped += lost;
            // A customer whose stored record does not decode stays refused (counted, as
            // when serving); its journal records stay for a repair.
            let _refused = store.update(&r.customer, |state| {
                if seq > state.seq {
                    state.merge(schema, values);
                    state.seq = seq;
                }
                Ok::<_, crate::state::StateError>(())
            });
            true
        }
        Record::Forget(r) => {
            // A record that does not decode holds no sequence number to go by: the
            // forget applies, as it does when serving.
            let newer = store
                .with(&r.customer, |s| s.is_some_and(|s| s.seq > seq))
                .unwrap_or(false);
            if !newer {
                store.forget(&r.customer);
            }
            // Marked forgotten first: a decision of theirs arriving meanwhile (a cluster
            // node's decisions stream) sees the mark, after it is kept, and drops itself.
            db.forgotten_at.insert(r.customer.as_str().into(), r.at);
            db.forget_inputs(&r.customer);
            db.decisions.retain(|_, d| *d.customer() != *r.customer);
            db.forgotten
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(r.customer);
            true
        }
        Record::Outcome(r) => {
            let offer = key(&r.offer);
            let identity = (Uuid::from_bytes(r.decision).as_u128(), offer, r.kind);
            if dedupe {
                if !db.outcomes.insert_new(identity, seq) {
                    return false;
                }
            } else {
                db.outcomes.insert(identity, 0);
            }
            if r.kind == EventKind::Impression {
                let group = r.group.as_deref().map_or(0, key);
                let channel = r.channel.as_deref().map_or(0, key);
                db.spending
                    .lock()
                    .count(&budget::scopes(offer, group, channel), r.at);
            }
            if let (Some(customer), Some(channel)) = (&r.customer, &r.channel) {
                let event = Event {
                    at: r.at,
                    offer,
                    group: r.group.as_deref().map_or(0, key),
                    channel: key(channel),
                    kind: r.kind,
                };
                let limits = store.limits();
                let _refused = store.update(customer, |state| {
                    if seq > state.seq {
                        state.history.record(event, limits, r.accepted);
                        state.seq = seq;
                    }
                    Ok::<_, crate::state::StateError>(())
                });
            }
            db.learn(&r);
            true
        }
        Record::Decision(r) => {
            db.keep_record_inputs(catalog, &r);
            if let Some(customer) = &r.customer {
                db.remember(
                    r.decision_id().as_u128(),
                    Recent::with_shown(
                        customer,
                        key(&r.channel),
                        r.shown.iter().map(|s| key(&s.offer)),
                    ),
                );
            }
            true
        }
    }
}
