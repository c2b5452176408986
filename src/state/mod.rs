//! Customer state: typed, slot-indexed attributes plus the interaction history this
//! engine records, and the concurrent store that owns all locking of it.
//!
//! Decide reads one customer's state as a consistent snapshot (a read guard on one shard
//! of the map, or an owned [`CustomerState`]); writers hold a shard's lock only for the
//! time of one update. This module does not persist anything (the journal issue adds
//! durability) and does not know offers: history refers to offers, groups and channels by
//! their stable [`key`](crate::schema::key).

pub mod packed;
pub(crate) mod table;

use std::collections::HashSet;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use self::table::{Change, Keyed, Table};
use crate::schema::{AttrType, EntitySchema, Schema, Value};
pub use crate::schema::{Event, EventKind};

/// How much history one customer keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// At most this many events; the oldest go first.
    pub max_events: usize,
    /// Events older than this (ms) are dropped: no rule or cap looks further back.
    pub max_age: i64,
}

impl HistoryLimits {
    /// Limits for a catalog: keep what its rules and caps can look at, up to the default
    /// maximum age, and at most the default number of events.
    pub fn for_catalog(catalog: &crate::catalog::Catalog) -> HistoryLimits {
        let default = HistoryLimits::default();
        HistoryLimits {
            max_age: catalog.history_horizon().min(default.max_age),
            ..default
        }
    }
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            max_events: 256,
            max_age: 400 * 86_400_000,
        }
    }
}

/// A customer's interactions, oldest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    // INVARIANT: sorted by `at`, oldest first (maintained by `record`).
    events: Vec<Event>,
}

impl History {
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Adds an event in time order and trims to `limits` as of `now`, when the write was
    /// accepted (the node's clock, as the journal recorded it): never as of the newest
    /// event's own time, so that no single event can evict the others.
    pub fn record(&mut self, event: Event, limits: HistoryLimits, now: i64) {
        let at = self.events.partition_point(|e| e.at <= event.at);
        self.events.insert(at, event);
        let cutoff = now.saturating_sub(limits.max_age);
        let old = self.events.partition_point(|e| e.at < cutoff);
        let over = self.events.len().saturating_sub(limits.max_events);
        self.events.drain(..old.max(over));
    }

    /// Events since `since` (inclusive), oldest first.
    pub fn since(&self, since: i64) -> &[Event] {
        &self.events[self.events.partition_point(|e| e.at < since)..]
    }
}

/// Everything decide knows about one customer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CustomerState {
    /// `None` for an anonymous caller, who is decided on request attributes alone.
    pub id: Option<String>,
    /// One value per customer slot of the catalog's schema.
    pub attributes: Vec<Value>,
    pub history: History,
    /// The journal sequence number of the last write applied to this customer (0 for
    /// none): replay skips what a snapshot already holds by it.
    pub seq: u64,
}

impl CustomerState {
    /// Merges attributes in slot order: missing values leave the stored ones as they are.
    pub fn merge(&mut self, schema: &Schema, values: Vec<Value>) {
        let len = values.len().max(schema.customer.len());
        if self.attributes.len() < len {
            self.attributes.resize(len, Value::Missing);
        }
        for (slot, v) in values.into_iter().enumerate() {
            if !v.is_missing() {
                self.attributes[slot] = v;
            }
        }
    }

    /// An anonymous caller with only the attributes the request carries.
    pub fn anonymous(attributes: Vec<Value>) -> CustomerState {
        CustomerState {
            id: None,
            attributes,
            history: History::default(),
            seq: 0,
        }
    }
}

/// A bad attribute in a request or an upsert (the record is left unchanged), or a stored
/// record that cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StateError {
    #[error("unknown attribute `{entity}.{name}`{}", suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    UnknownAttribute {
        entity: &'static str,
        name: String,
        suggestion: Option<String>,
    },
    #[error("attribute `{entity}.{name}` must be {expected}, found {found}")]
    WrongType {
        entity: &'static str,
        name: String,
        expected: String,
        found: String,
    },
    #[error("history event {index}: {message}")]
    BadEvent { index: usize, message: String },
    #[error(
        "attribute `{entity}.{name}` is too large: {found}; the limit is {MAX_VALUE_BYTES} bytes of text and {MAX_SET_MEMBERS} set members"
    )]
    TooLarge {
        entity: &'static str,
        name: String,
        found: String,
    },
    /// A timestamp value out of range (the field is `entity.name`). Not a `source`: the
    /// message says it all, once.
    #[error("attribute {0}")]
    Time(crate::schema::time::TimeError),
    #[error(
        "the stored record of customer `{customer}` cannot be decoded ({reason}); it is refused until repaired or forgotten"
    )]
    Undecodable { customer: String, reason: String },
}

impl From<crate::schema::time::TimeError> for StateError {
    fn from(e: crate::schema::time::TimeError) -> StateError {
        StateError::Time(e)
    }
}

/// An unknown attribute, named (shortened if long and escaped: the name is the caller's
/// input).
pub(crate) fn unknown(entity: &'static str, schema: &EntitySchema, name: &str) -> StateError {
    const SHOWN: usize = 64;
    if name.chars().count() > SHOWN {
        let short: String = name.chars().take(SHOWN).collect();
        return StateError::UnknownAttribute {
            entity,
            name: format!("{}…", crate::schema::printable(&short)),
            suggestion: None,
        };
    }
    StateError::UnknownAttribute {
        entity,
        name: crate::schema::printable(name).into_owned(),
        suggestion: crate::expr::did_you_mean(name, schema.names()),
    }
}

/// The most text one attribute value may hold (a string, or a set's members together).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// The most members one set value may hold.
pub const MAX_SET_MEMBERS: usize = 1024;

/// Refuses values that would make a customer record (and every decision logging it)
/// grow without bound, and timestamps outside the range of [`time::value`].
///
/// [`time::value`]: crate::schema::time::value
pub(crate) fn within_limits(
    entity: &'static str,
    name: &str,
    value: Value,
) -> Result<Value, StateError> {
    let found = match &value {
        Value::Timestamp(ms) => {
            crate::schema::time::value(&format!("{entity}.{name}"), *ms)?;
            return Ok(value);
        }
        Value::Str(s) if s.len() > MAX_VALUE_BYTES => format!("{} bytes of text", s.len()),
        Value::Set(members) if members.len() > MAX_SET_MEMBERS => {
            format!("{} members", members.len())
        }
        Value::Set(members) if members.iter().map(|m| m.len()).sum::<usize>() > MAX_VALUE_BYTES => {
            format!(
                "{} bytes of text",
                members.iter().map(|m| m.len()).sum::<usize>()
            )
        }
        _ => return Ok(value),
    };
    Err(StateError::TooLarge {
        entity,
        name: name.to_string(),
        found,
    })
}

/// Parses JSON attribute values against one entity's schema into slot order.
/// Every attribute is checked before any is kept: one bad value refuses them all.
pub fn parse_attributes(
    entity: &'static str,
    schema: &EntitySchema,
    json: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<Value>, StateError> {
    let mut values = vec![Value::Missing; schema.len()];
    for (name, v) in json {
        let Some(slot) = schema.slot(name) else {
            return Err(unknown(entity, schema, name));
        };
        let attr = schema.get(slot).expect("a slot found by name exists");
        let value = json_value(v, &attr.ty).ok_or_else(|| StateError::WrongType {
            entity,
            name: name.clone(),
            expected: expected(&attr.ty),
            found: describe(v),
        })?;
        values[slot as usize] = within_limits(entity, name, value)?;
    }
    Ok(values)
}

/// Parses `name=value` text (the CLI's `--context`) against one entity's schema.
pub fn parse_text_attribute(
    entity: &'static str,
    schema: &EntitySchema,
    name: &str,
    text: &str,
) -> Result<(u32, Value), StateError> {
    let slot = schema
        .slot(name)
        .ok_or_else(|| unknown(entity, schema, name))?;
    let attr = schema.get(slot).expect("a slot found by name exists");
    let json = match &attr.ty {
        AttrType::String | AttrType::Enum(_) | AttrType::Timestamp => {
            serde_json::Value::String(text.to_string())
        }
        AttrType::Set => serde_json::Value::Array(
            text.split(',')
                .filter(|s| !s.is_empty())
                .map(|s| serde_json::Value::String(s.trim().to_string()))
                .collect(),
        ),
        _ => serde_json::from_str(text).unwrap_or(serde_json::Value::String(text.to_string())),
    };
    let value = json_value(&json, &attr.ty).ok_or_else(|| StateError::WrongType {
        entity,
        name: name.to_string(),
        expected: expected(&attr.ty),
        found: shown(text),
    })?;
    Ok((slot, within_limits(entity, name, value)?))
}

fn json_value(v: &serde_json::Value, ty: &AttrType) -> Option<Value> {
    use serde_json::Value as J;
    Some(match (v, ty) {
        (J::Null, _) => Value::Missing,
        (J::Bool(b), AttrType::Bool) => Value::Bool(*b),
        (J::Number(n), AttrType::Int) => Value::Int(n.as_i64()?),
        (J::Number(n), AttrType::Float) => Value::Float(n.as_f64().filter(|f| f.is_finite())?),
        (J::String(s), AttrType::String) => Value::Str(s.as_str().into()),
        (J::String(s), AttrType::Enum(def)) => Value::Enum(def.index_of(s)?),
        (J::String(s), AttrType::Timestamp) => {
            Value::Timestamp(s.parse::<jiff::Timestamp>().ok()?.as_millisecond())
        }
        (J::Array(items), AttrType::Set) => {
            let strs: Option<Vec<&str>> = items.iter().map(|i| i.as_str()).collect();
            Value::set(strs?)
        }
        _ => return None,
    })
}

pub(crate) fn expected(ty: &AttrType) -> String {
    match ty {
        AttrType::Enum(def) => {
            let names: Vec<String> = def.variants.iter().map(|v| format!("`{v}`")).collect();
            format!("one of {}", names.join(", "))
        }
        AttrType::Set => "a list of strings".to_string(),
        AttrType::Timestamp => "an RFC 3339 timestamp string".to_string(),
        AttrType::Float => "a finite number".to_string(),
        AttrType::Int => "a whole number".to_string(),
        other => format!("a {}", other.name()),
    }
}

fn describe(v: &serde_json::Value) -> String {
    shown(&v.to_string())
}

/// A caller's value as an error shows it: in backticks, escaped, at most 40 characters.
pub(crate) fn shown(text: &str) -> String {
    if text.chars().count() > 40 {
        let short: String = text.chars().take(40).collect();
        format!("`{}…`", crate::schema::printable(&short))
    } else {
        format!("`{}`", crate::schema::printable(text))
    }
}

/// One customer as the store holds it, in one allocation: the id's length (LEB128), the
/// id, then the [packed](packed) state. A slot of the store's table is this one boxed
/// slice, 16 bytes, where a `DashMap` entry of id and record took 32 and the id had an
/// allocation of its own.
#[derive(Clone, PartialEq, Eq)]
struct Record(Box<[u8]>);

thread_local! {
    /// The buffer a record is packed into before it is copied into its own allocation.
    static PACKING: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Record {
    fn new(id: &[u8], packed: &[u8]) -> Record {
        let mut bytes = Vec::with_capacity(id.len() + packed.len() + 2);
        packed::put_bytes(&mut bytes, id);
        bytes.extend_from_slice(packed);
        Record(bytes.into_boxed_slice())
    }

    fn packing(id: &[u8], state: &CustomerState) -> Record {
        let mut buffer = PACKING.take();
        packed::encode(state, &mut buffer);
        let record = Record::new(id, &buffer);
        PACKING.set(buffer);
        record
    }

    /// The id and the packed state.
    fn split(&self) -> (&[u8], &[u8]) {
        // `new` wrote both: nothing is missing.
        packed::split_bytes(&self.0).unwrap_or_default()
    }

    fn packed(&self) -> &[u8] {
        self.split().1
    }

    /// The id as text (it was stored from a `str`) and the packed state.
    fn parts(&self) -> (&str, &[u8]) {
        let (id, packed) = self.split();
        (std::str::from_utf8(id).unwrap_or_default(), packed)
    }
}

impl Keyed for Record {
    type Key = [u8];
    fn key(&self) -> &[u8] {
        self.split().0
    }
}

/// The in-memory customer store: a concurrent map from customer id to the customer's
/// [packed](packed) state, a few hundred bytes each, in a [`Table`] of [`Record`]s.
///
/// Readers get a decoded copy (into a per-thread scratch state, so a read allocates only
/// for string values) and hold no lock while they use it; writers decode, change and
/// re-encode one customer under its shard's write lock.
///
/// A stored record that does not decode (it passed its checksum, but another version of
/// the format wrote it, say) refuses its customer with [`StateError::Undecodable`] on
/// every read and write, counted in [`Store::undecodable_reads`]; everyone else is served,
/// and [`Store::forget`], which decodes nothing, still removes it.
pub struct Store {
    customers: Table<Record>,
    limits: HistoryLimits,
    /// The number of customer slots of the schema the records are written in.
    width: usize,
    /// Reads and writes refused because the customer's record does not decode.
    undecodable: AtomicU64,
    /// While on ([`Store::track_changes`]), the ids of customers changed since: what a
    /// copy made meanwhile must take again.
    tracking: AtomicBool,
    changed: Mutex<HashSet<Box<str>>>,
}

impl Default for Store {
    fn default() -> Store {
        Store::new(HistoryLimits::default(), 0)
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("customers", &self.customers.len())
            .finish()
    }
}

thread_local! {
    /// Decoded states to reuse: reading a customer allocates nothing for its history.
    static SCRATCH: std::cell::RefCell<Vec<CustomerState>> = const { std::cell::RefCell::new(Vec::new()) };
}

thread_local! {
    /// A packed record's bytes, reused by [`Store::with_record`].
    static RECORD: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

fn scratch() -> CustomerState {
    SCRATCH
        .with(|pool| pool.borrow_mut().pop())
        .unwrap_or_default()
}

fn recycle(state: CustomerState) {
    SCRATCH.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < 4 {
            pool.push(state);
        }
    });
}

impl Store {
    /// An empty store for records of `width` customer slots.
    pub fn new(limits: HistoryLimits, width: usize) -> Store {
        Store {
            customers: Table::unbounded(),
            limits,
            width,
            undecodable: AtomicU64::new(0),
            tracking: AtomicBool::new(false),
            changed: Mutex::new(HashSet::new()),
        }
    }

    pub fn len(&self) -> usize {
        self.customers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn limits(&self) -> HistoryLimits {
        self.limits
    }

    /// Reads and writes refused since the store was made because the customer's stored
    /// record does not decode.
    pub fn undecodable_reads(&self) -> u64 {
        self.undecodable.load(Ordering::Relaxed)
    }

    fn unpack(&self, id: &str, bytes: &[u8], into: &mut CustomerState) -> Result<(), StateError> {
        let slot = into.id.get_or_insert_with(String::new);
        slot.clear();
        slot.push_str(id);
        packed::decode(bytes, self.width, into).ok_or_else(|| {
            self.undecodable.fetch_add(1, Ordering::Relaxed);
            StateError::Undecodable {
                customer: id.to_string(),
                reason: format!(
                    "{} bytes that are not a packed record of {} attributes",
                    bytes.len(),
                    self.width
                ),
            }
        })
    }

    /// Merges the given attributes (already parsed against `schema`) into a customer,
    /// creating it if needed. Missing values in `values` leave the stored ones as they are.
    pub fn upsert(&self, id: &str, schema: &Schema, values: Vec<Value>) -> Result<(), StateError> {
        self.update(id, |state| {
            state.merge(schema, values);
            Ok(())
        })
    }

    /// Records an interaction accepted at `now`; an unknown customer is created with no
    /// attributes.
    pub fn record(&self, id: &str, event: Event, now: i64) -> Result<(), StateError> {
        self.update(id, |state| {
            state.history.record(event, self.limits, now);
            Ok(())
        })
    }

    /// Runs `f` on a customer's state, creating it empty if needed, holding the lock on
    /// that customer: updates to one customer happen in the order of their `update` calls
    /// (the durable layer appends to the journal inside `f` for that reason). When the
    /// stored record does not decode, `f` is not run and the record stays as it is: the
    /// error is `f`'s own type, so that a caller's `f` and the refusal share one `?`. A
    /// customer created for an `f` that fails is not kept.
    pub fn update<T, E: From<StateError>>(
        &self,
        id: &str,
        f: impl FnOnce(&mut CustomerState) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut state = scratch();
        let result = self.customers.modify(id.as_bytes(), |entry| {
            match entry {
                Some(record) => {
                    if let Err(refused) = self.unpack(id, record.packed(), &mut state) {
                        return (Err(refused.into()), Change::Keep);
                    }
                }
                None => {
                    state.id = Some(id.to_string());
                    state.attributes.clear();
                    state.attributes.resize(self.width, Value::Missing);
                    state.history.events_mut().clear();
                    state.seq = 0;
                }
            }
            match f(&mut state) {
                Ok(done) => (
                    Ok(done),
                    Change::Put(Record::packing(id.as_bytes(), &state)),
                ),
                Err(refused) => (Err(refused), Change::Keep),
            }
        });
        self.note(id);
        recycle(state);
        result
    }

    /// Puts a whole state in place (restoring a snapshot).
    pub fn insert(&self, id: &str, state: &CustomerState) {
        self.customers.put(Record::packing(id.as_bytes(), state));
        self.note(id);
    }

    /// Makes room for `customers` more at once (a restart that knows how many it loads).
    pub fn reserve(&self, customers: usize) {
        self.customers.reserve(customers);
    }

    /// Puts a packed record in place as it is (a snapshot of the same schema).
    pub fn insert_packed(&self, id: &str, bytes: &[u8]) {
        self.customers.put(Record::new(id.as_bytes(), bytes));
        self.note(id);
    }

    /// Records a change to `id` while changes are tracked. Called after the change: a
    /// change made before tracking began is in any copy begun after it.
    fn note(&self, id: &str) {
        if self.tracking.load(Ordering::SeqCst) {
            self.changed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.into());
        }
    }

    /// From now on, records which customers change, until [`Store::changes`].
    pub fn track_changes(&self) {
        self.changed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.tracking.store(true, Ordering::SeqCst);
    }

    /// Stops tracking and returns the customers changed since [`Store::track_changes`].
    pub fn changes(&self) -> HashSet<Box<str>> {
        self.tracking.store(false, Ordering::SeqCst);
        std::mem::take(&mut *self.changed.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Carries the customer `id` over from `old` (laid out as `remapping` expects) into
    /// this store again, or removes it here when `old` no longer has it.
    pub fn take_again(&self, old: &Store, id: &str, remapping: &packed::Remapping) {
        match old.customers.view(id.as_bytes(), |entry| {
            entry.map(|r| carried(r, remapping).0)
        }) {
            Some(record) => {
                self.customers.put(record);
            }
            None => {
                self.customers.remove(id.as_bytes());
            }
        }
    }

    /// Runs `f` on a copy of one customer's state, taken under a short read lock; refused
    /// (and `f` not run) when the stored record does not decode.
    pub fn with<R>(
        &self,
        id: &str,
        f: impl FnOnce(Option<&CustomerState>) -> R,
    ) -> Result<R, StateError> {
        let mut state = scratch();
        let found = self.customers.view(id.as_bytes(), |entry| match entry {
            Some(record) => self.unpack(id, record.packed(), &mut state).map(|()| true),
            None => Ok(false),
        });
        let result = found.map(|found| f(found.then_some(&state)));
        recycle(state);
        result
    }

    /// As [`Store::with`], and also hands `f` the customer's packed record as stored (a
    /// copy): the decision journal takes it instead of re-packing the values.
    pub fn with_record<R>(
        &self,
        id: &str,
        f: impl FnOnce(Option<(&CustomerState, &[u8])>) -> R,
    ) -> Result<R, StateError> {
        let mut state = scratch();
        let mut record = RECORD.take();
        let found = self.customers.view(id.as_bytes(), |entry| match entry {
            Some(stored) => {
                let bytes = stored.packed();
                self.unpack(id, bytes, &mut state).map(|()| {
                    record.clear();
                    record.extend_from_slice(bytes);
                    true
                })
            }
            None => Ok(false),
        });
        let result = found.map(|found| f(found.then_some((&state, &record[..]))));
        RECORD.set(record);
        recycle(state);
        result
    }

    /// Calls `f` on every customer, each shard under its read lock in turn: each state
    /// is consistent, the whole is not a point-in-time view. A customer whose record does
    /// not decode is skipped (and counted).
    pub fn for_each(&self, mut f: impl FnMut(&CustomerState)) {
        let mut state = scratch();
        self.customers.for_each(|record| {
            let (id, packed) = record.parts();
            if self.unpack(id, packed, &mut state).is_ok() {
                f(&state);
            }
        });
        recycle(state);
    }

    /// Calls `f` on every customer's id and packed record, as stored: a snapshot carries
    /// a record that does not decode over as it is.
    pub fn for_each_packed(&self, mut f: impl FnMut(&str, &[u8])) {
        self.customers.for_each(|record| {
            let (id, packed) = record.parts();
            f(id, packed)
        });
    }

    /// A new store holding every record carried over by `remapping` while this one goes
    /// on serving reads and taking writes (see [`Store::track_changes`]), and how many
    /// values no longer fit and were dropped. A record that does not decode is kept as it is: its
    /// customer stays refused.
    pub fn remapped(&self, remapping: &packed::Remapping) -> (Store, usize) {
        let customers = Table::new(self.len());
        let mut dropped = 0;
        // The ids first, then one record at a time: iterating holds a shard's lock for the
        // whole shard, which would hold that shard's writers back for as long as carrying
        // it over takes (half a second of a million customers here).
        let mut ids: Vec<Box<[u8]>> = Vec::with_capacity(self.len());
        self.customers
            .for_each(|record| ids.push(record.key().into()));
        for id in ids {
            // Gone since: it was changed, and is taken again (or not) at the end.
            let Some((record, n)) = self
                .customers
                .view(&id, |entry| entry.map(|r| carried(r, remapping)))
            else {
                continue;
            };
            dropped += n;
            customers.put(record);
        }
        let store = Store {
            customers,
            limits: self.limits,
            width: remapping.width(),
            undecodable: AtomicU64::new(self.undecodable.load(Ordering::Relaxed)),
            tracking: AtomicBool::new(false),
            changed: Mutex::new(HashSet::new()),
        };
        (store, dropped)
    }

    pub fn forget(&self, id: &str) -> bool {
        let known = self.customers.remove(id.as_bytes());
        self.note(id);
        known
    }
}

/// `record` carried over by `remapping`, and how many of its values were dropped; as it
/// is when it does not decode.
fn carried(record: &Record, remapping: &packed::Remapping) -> (Record, usize) {
    let (id, bytes) = record.split();
    match remapping.apply(bytes) {
        Some((bytes, dropped)) => (Record::new(id, &bytes), dropped),
        None => (record.clone(), 0),
    }
}

#[cfg(test)]
mod tests;
