//! The packed form of one customer: how the store holds a million of them in a few
//! hundred bytes each.
//!
//! Layout (all integers LEB128 varints, signed ones zigzagged):
//!
//! ```text
//! seq
//! n_attributes, then per set attribute: (slot << 4 | tag), payload
//!     tag 1/2 bool false/true · 3 int · 4 float (8 bytes LE) · 5 string (len, UTF-8)
//!     6 enum (index) · 7 set (count, then len + UTF-8 each) · 8 timestamp (ms)
//! n_keys, the distinct offer/group/channel keys the history uses (4 bytes LE each)
//! n_events, then per event, oldest first: at (first absolute, then the delta in ms),
//!     offer (key index), group (key index + 1, 0 for none), channel << 3 | kind
//! ```
//!
//! The per-customer key table turns each 32-bit key into a one-byte index, so an event
//! takes about seven bytes instead of 24. Values carry their tag, so a packed record
//! decodes without a schema; slots and enum indexes are those of the schema that wrote
//! it ([`remap`] carries a record over to another schema).

use super::{CustomerState, History};
use crate::schema::{AttrType, EntitySchema, Event, EventKind, Feature, Value};

fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_signed(out: &mut Vec<u8>, v: i64) {
    put(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

/// Appends `bytes` after their length: as a string value is packed, and as the store puts
/// a customer's id before its record.
pub(super) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Splits what [`put_bytes`] wrote from what follows it.
pub(super) fn split_bytes(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut c = Cursor(bytes);
    let n = c.get_usize()?;
    let head = c.bytes(n)?;
    Some((head, c.0))
}

/// A cursor over packed bytes; every read is checked.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    #[inline]
    fn get(&mut self) -> Option<u64> {
        // Most numbers here (counts, slots, key indexes) fit in one byte.
        let (&first, rest) = self.0.split_first()?;
        if first < 0x80 {
            self.0 = rest;
            return Some(u64::from(first));
        }
        self.get_long()
    }

    fn get_long(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.0.split_first()?;
            self.0 = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }

    fn get_signed(&mut self) -> Option<i64> {
        let v = self.get()?;
        Some((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    fn get_usize(&mut self) -> Option<usize> {
        usize::try_from(self.get()?).ok()
    }

    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn get_str(&mut self) -> Option<&'a str> {
        let n = self.get_usize()?;
        std::str::from_utf8(self.bytes(n)?).ok()
    }
}

/// No schema has this many attributes; a larger slot is damage.
const MAX_SLOTS: usize = 1 << 16;

const BOOL_FALSE: u64 = 1;
const BOOL_TRUE: u64 = 2;
const INT: u64 = 3;
const FLOAT: u64 = 4;
const STR: u64 = 5;
const ENUM: u64 = 6;
const SET: u64 = 7;
const TIMESTAMP: u64 = 8;

/// Packs `state` (its id is the store's key and is not repeated) into `out`.
pub fn encode(state: &CustomerState, out: &mut Vec<u8>) {
    out.clear();
    put(out, state.seq);
    encode_values(&state.attributes, out);
    encode_history(state.history.events(), out);
}

/// Appends the set values of `values` (slot order) to `out`, as in a packed record.
pub fn encode_values(values: &[Value], out: &mut Vec<u8>) {
    let present = values.iter().filter(|v| !v.is_missing()).count();
    put(out, present as u64);
    for (slot, v) in values.iter().enumerate() {
        let slot = (slot as u64) << 4;
        match v {
            Value::Missing => {}
            Value::Bool(b) => put(out, slot | if *b { BOOL_TRUE } else { BOOL_FALSE }),
            Value::Int(i) => {
                put(out, slot | INT);
                put_signed(out, *i);
            }
            Value::Float(x) => {
                put(out, slot | FLOAT);
                out.extend_from_slice(&x.to_le_bytes());
            }
            Value::Str(s) => {
                put(out, slot | STR);
                put_str(out, s);
            }
            Value::Enum(i) => {
                put(out, slot | ENUM);
                put(out, u64::from(*i));
            }
            Value::Set(items) => {
                put(out, slot | SET);
                put(out, items.len() as u64);
                for item in items.iter() {
                    put_str(out, item);
                }
            }
            Value::Timestamp(ms) => {
                put(out, slot | TIMESTAMP);
                put_signed(out, *ms);
            }
        }
    }
}

fn encode_history(events: &[Event], out: &mut Vec<u8>) {
    let mut keys: Vec<u32> = Vec::new();
    let mut index = |key: u32| -> u64 {
        match keys.iter().position(|&k| k == key) {
            Some(i) => i as u64,
            None => {
                keys.push(key);
                keys.len() as u64 - 1
            }
        }
    };
    // Indexes first (they decide the key table), then the bytes.
    let coded: Vec<(u64, u64, u64)> = events
        .iter()
        .map(|e| {
            let offer = index(e.offer);
            let group = if e.group == 0 { 0 } else { index(e.group) + 1 };
            let channel = index(e.channel) << 3 | kind_code(e.kind);
            (offer, group, channel)
        })
        .collect();
    put(out, keys.len() as u64);
    for k in &keys {
        out.extend_from_slice(&k.to_le_bytes());
    }
    put(out, events.len() as u64);
    let mut last = 0i64;
    for (i, (e, (offer, group, channel))) in events.iter().zip(coded).enumerate() {
        if i == 0 {
            put_signed(out, e.at);
        } else {
            // History is sorted oldest first, so deltas are never negative.
            put(out, e.at.saturating_sub(last) as u64);
        }
        last = e.at;
        put(out, offer);
        put(out, group);
        put(out, channel);
    }
}

fn kind_code(kind: EventKind) -> u64 {
    EventKind::ALL.iter().position(|&k| k == kind).unwrap_or(0) as u64
}

/// Unpacks into `into`, reusing its allocations; `width` is the schema's number of
/// customer slots. `None` if the bytes are not a packed record.
pub fn decode(bytes: &[u8], width: usize, into: &mut CustomerState) -> Option<()> {
    let mut c = Cursor(bytes);
    into.seq = c.get()?;
    decode_values_from(&mut c, width, &mut into.attributes)?;
    decode_history(&mut c, into.history.events_mut())?;
    c.0.is_empty().then_some(())
}

/// Decodes values written by [`encode_values`] at the start of `bytes` into `into`
/// (`width` slots at least); returns the bytes after them.
pub fn decode_values<'a>(bytes: &'a [u8], width: usize, into: &mut Vec<Value>) -> Option<&'a [u8]> {
    let mut c = Cursor(bytes);
    decode_values_from(&mut c, width, into)?;
    Some(c.0)
}

/// Decodes the values of a whole packed record at the start of `bytes` (skipping its
/// history); returns the bytes after the record.
pub fn decode_record_values<'a>(
    bytes: &'a [u8],
    width: usize,
    into: &mut Vec<Value>,
) -> Option<&'a [u8]> {
    let mut c = Cursor(bytes);
    c.get()?;
    decode_values_from(&mut c, width, into)?;
    skip_history(&mut c)?;
    Some(c.0)
}

fn skip_history(c: &mut Cursor<'_>) -> Option<()> {
    let n_keys = c.get_usize()?;
    c.bytes(n_keys.checked_mul(4)?)?;
    for _ in 0..c.get()? {
        for _ in 0..4 {
            c.get()?;
        }
    }
    Some(())
}

fn decode_values_from(c: &mut Cursor<'_>, width: usize, into: &mut Vec<Value>) -> Option<()> {
    into.clear();
    into.resize(width, Value::Missing);
    for _ in 0..c.get()? {
        let head = c.get()?;
        let slot = usize::try_from(head >> 4).ok().filter(|&s| s < MAX_SLOTS)?;
        let value = match head & 0xf {
            BOOL_FALSE => Value::Bool(false),
            BOOL_TRUE => Value::Bool(true),
            INT => Value::Int(c.get_signed()?),
            FLOAT => Value::Float(f64::from_le_bytes(c.bytes(8)?.try_into().ok()?)),
            STR => Value::Str(c.get_str()?.into()),
            ENUM => Value::Enum(u32::try_from(c.get()?).ok()?),
            SET => {
                let n = c.get_usize()?;
                let mut items = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    items.push(Box::<str>::from(c.get_str()?));
                }
                Value::Set(items.into_boxed_slice())
            }
            TIMESTAMP => Value::Timestamp(c.get_signed()?),
            _ => return None,
        };
        if slot >= into.len() {
            into.resize(slot + 1, Value::Missing);
        }
        into[slot] = value;
    }
    Some(())
}

fn decode_history(c: &mut Cursor<'_>, events: &mut Vec<Event>) -> Option<()> {
    let n_keys = c.get_usize()?;
    let table = c.bytes(n_keys.checked_mul(4)?)?;
    let key = |i: u64| -> Option<u32> {
        let i = usize::try_from(i).ok()?.checked_mul(4)?;
        Some(u32::from_le_bytes(table.get(i..i + 4)?.try_into().ok()?))
    };
    events.clear();
    let mut at = 0i64;
    for i in 0..c.get()? {
        at = if i == 0 {
            c.get_signed()?
        } else {
            at.saturating_add(i64::try_from(c.get()?).ok()?)
        };
        let offer = key(c.get()?)?;
        let group = match c.get()? {
            0 => 0,
            g => key(g - 1)?,
        };
        let channel = c.get()?;
        events.push(Event {
            at,
            offer,
            group,
            channel: key(channel >> 3)?,
            kind: *EventKind::ALL.get(usize::try_from(channel & 7).ok()?)?,
        });
    }
    Some(())
}

/// The type of each slot of the schema a packed record was written under, for
/// [`Remapping`].
pub type SlotTypes = [(String, AttrType)];

/// Where one slot's value goes when a record is carried over to another schema.
#[derive(Debug, Clone)]
enum Move {
    /// The attribute is gone: its value is dropped.
    Gone,
    /// Same name, same type: the value moves as it is.
    Same(usize),
    /// Enums both: the old variant index to the new one (`None`: the variant is gone).
    Enum(usize, Vec<Option<u32>>),
    /// Another type: through its [`Feature`] (by name), dropped if it does not convert.
    Convert(usize, AttrType, AttrType),
}

/// How to carry packed records from the schema `from` to `to`, worked out once for a
/// store or a snapshot: values move by attribute name, enum values by variant name; a
/// value whose attribute is gone, or whose type changed to one it does not convert to, is
/// dropped. The history is copied as it is (it names offers, groups and channels by
/// key, whatever the schema).
#[derive(Debug, Clone)]
pub struct Remapping {
    moves: Vec<Move>,
    width: usize,
}

impl Remapping {
    pub fn new(from: &SlotTypes, to: &EntitySchema) -> Remapping {
        let moves = from
            .iter()
            .map(|(name, ty)| {
                let Some((slot, new)) = to
                    .slot(name)
                    .and_then(|slot| Some((slot as usize, &to.get(slot)?.ty)))
                else {
                    return Move::Gone;
                };
                match (ty, new) {
                    (AttrType::Enum(old), AttrType::Enum(new)) => {
                        Move::Enum(slot, old.variants.iter().map(|v| new.index_of(v)).collect())
                    }
                    (old, new) if old == new => Move::Same(slot),
                    (old, new) => Move::Convert(slot, old.clone(), new.clone()),
                }
            })
            .collect();
        Remapping {
            moves,
            width: to.len(),
        }
    }

    /// The number of slots of the schema records are carried to.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Carries one packed record over; returns the new bytes and how many values were
    /// dropped, `None` if the bytes are not a packed record of the `from` schema.
    pub fn apply(&self, bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
        let mut c = Cursor(bytes);
        let seq = c.get()?;
        let mut old = Vec::new();
        decode_values_from(&mut c, self.moves.len(), &mut old)?;
        let history = c.0;
        let mut check = Cursor(history);
        skip_history(&mut check)?;
        if !check.0.is_empty() {
            return None;
        }
        let mut new = vec![Value::Missing; self.width];
        // Values in slots past the `from` schema's have no name to move by.
        let mut dropped = old[self.moves.len().min(old.len())..]
            .iter()
            .filter(|v| !v.is_missing())
            .count();
        for (value, to) in old.into_iter().zip(&self.moves) {
            if value.is_missing() {
                continue;
            }
            let moved = match to {
                Move::Gone => None,
                Move::Same(slot) => Some((*slot, value)),
                Move::Enum(slot, variants) => match value {
                    Value::Enum(i) => variants
                        .get(i as usize)
                        .copied()
                        .flatten()
                        .map(|i| (*slot, Value::Enum(i))),
                    _ => None,
                },
                Move::Convert(slot, from, to) => Feature::of(&value, from)
                    .and_then(|f| f.value(to))
                    .map(|v| (*slot, v)),
            };
            match moved {
                Some((slot, v)) => new[slot] = v,
                None => dropped += 1,
            }
        }
        let mut out = Vec::with_capacity(bytes.len() + 8);
        put(&mut out, seq);
        encode_values(&new, &mut out);
        out.extend_from_slice(history);
        Some((out, dropped))
    }
}

/// Carries one packed record from the schema `from` to `to` (see [`Remapping`]).
#[cfg(test)]
fn remap(bytes: &[u8], from: &SlotTypes, to: &EntitySchema) -> Option<(Vec<u8>, usize)> {
    Remapping::new(from, to).apply(bytes)
}

impl History {
    pub(super) fn events_mut(&mut self) -> &mut Vec<Event> {
        &mut self.events
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::schema::{Attribute, EnumDef};

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Missing),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<f64>().prop_map(Value::Float),
            ".{0,12}".prop_map(|s| Value::Str(s.into())),
            (0u32..300).prop_map(Value::Enum),
            prop::collection::vec("[a-z]{0,6}", 0..4).prop_map(Value::set),
            any::<i64>().prop_map(Value::Timestamp),
        ]
    }

    fn event() -> impl Strategy<Value = Event> {
        (
            -1_000_000_000_000i64..4_000_000_000_000,
            1u32..6,
            0u32..4,
            prop::sample::select(vec![7u32, 0xffff_fffe]),
            0usize..5,
        )
            .prop_map(|(at, offer, group, channel, kind)| Event {
                at,
                offer: offer * 0x0101_0101,
                group,
                channel,
                kind: EventKind::ALL[kind],
            })
    }

    proptest! {
        /// Whatever a customer holds comes back exactly (floats bit for bit).
        #[test]
        fn packing_round_trips(
            attributes in prop::collection::vec(value(), 0..40),
            mut events in prop::collection::vec(event(), 0..40),
            seq in any::<u64>(),
        ) {
            events.sort_by_key(|e| e.at);
            let mut history = History::default();
            *history.events_mut() = events;
            let state = CustomerState { id: None, attributes, history, seq };
            let mut bytes = Vec::new();
            encode(&state, &mut bytes);
            let mut back = CustomerState::default();
            prop_assert!(decode(&bytes, state.attributes.len(), &mut back).is_some());
            prop_assert_eq!(format!("{:?}", back), format!("{:?}", state));
        }

        /// Garbage never panics the decoder.
        #[test]
        fn decoding_garbage_is_safe(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let mut state = CustomerState::default();
            let _ = decode(&bytes, 5, &mut state);
        }
    }

    #[test]
    fn a_typical_customer_is_a_few_hundred_bytes() {
        let mut history = History::default();
        for i in 0..20i64 {
            history.record(
                Event::new(
                    1_795_428_000_000 - i * 3_600_000 * 7,
                    ["a", "b", "c", "d", "e", "f", "g"][i as usize % 7],
                    Some(["g1", "g2", "g3"][i as usize % 3]),
                    ["web", "email", "app", "call_center"][i as usize % 4],
                    EventKind::ALL[i as usize % 5],
                ),
                crate::state::HistoryLimits::default(),
                1_795_428_000_000,
            );
        }
        let mut attributes = Vec::new();
        for i in 0..20 {
            attributes.push(match i % 5 {
                0 => Value::Int(40),
                1 => Value::Float(0.25),
                2 => Value::Enum(2),
                3 => Value::Bool(true),
                _ => Value::Timestamp(1_795_428_000_000),
            });
        }
        let state = CustomerState {
            id: None,
            attributes,
            history,
            seq: 123_456,
        };
        let mut bytes = Vec::new();
        encode(&state, &mut bytes);
        assert!(bytes.len() < 330, "{} bytes", bytes.len());
    }

    #[test]
    fn remapping_moves_values_by_name_and_drops_what_no_longer_fits() {
        let attr = |name: &str, ty: AttrType| Attribute {
            name: name.into(),
            ty,
            default: Value::Missing,
            description: None,
        };
        let from = vec![
            ("age".to_string(), AttrType::Int),
            (
                "tier".to_string(),
                AttrType::Enum(EnumDef::new(["a", "b", "c"])),
            ),
            ("gone".to_string(), AttrType::Bool),
            ("score".to_string(), AttrType::Float),
        ];
        let mut to = EntitySchema::default();
        to.push(attr("tier", AttrType::Enum(EnumDef::new(["c", "b"]))));
        to.push(attr("score", AttrType::String));
        to.push(attr("age", AttrType::Int));
        let state = CustomerState {
            attributes: vec![
                Value::Int(7),
                Value::Enum(2),
                Value::Bool(true),
                Value::Float(0.5),
            ],
            seq: 9,
            ..CustomerState::default()
        };
        let mut state = state;
        for at in [1_000, 2_500] {
            state.history.events_mut().push(Event {
                at,
                offer: 77,
                group: 0,
                channel: 5,
                kind: EventKind::Click,
            });
        }
        let mut bytes = Vec::new();
        encode(&state, &mut bytes);
        assert!(
            remap(&bytes[..bytes.len() - 1], &from, &to).is_none(),
            "a cut record is no record"
        );
        let (moved, dropped) = remap(&bytes, &from, &to).expect("remaps");
        let mut back = CustomerState::default();
        decode(&moved, to.len(), &mut back).expect("decodes");
        assert_eq!(
            back.attributes,
            [Value::Enum(0), Value::Missing, Value::Int(7)]
        );
        assert_eq!(dropped, 2, "`gone` is gone and `score` changed type");
        assert_eq!(back.seq, 9);
        assert_eq!(
            back.history.events(),
            state.history.events(),
            "the history moves whole"
        );
    }
}
