//! The typed attribute schema shared by the catalog, the rule language and customer state.
//!
//! A schema names the attributes of two entities, the customer (profile attributes pushed
//! by upstream systems) and the request context (channel, device, intent, ...), and gives
//! each a type, an optional default and a description. Attribute names become slot indices
//! here, once, so that rules and state address values by position and never hash a name on
//! the hot path.
//!
//! This module does not parse YAML (that is `catalog/`'s job) and does not store customers
//! (that is `state/`'s job); it only describes and holds typed values.

pub mod time;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// `text` with its control characters escaped (`\n`, `\u{0}`): what an error message
/// shows of a caller's input, so that a NUL or a newline in an id cannot forge or cut a
/// log line or a terminal's output.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The longest id (customer, offer, placement, channel, decision) a request or an import
/// may carry, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// A stable 32-bit key for an id (offer, group, channel): the same on every machine and
/// across versions, so history recorded under one catalog counts under the next. Never 0,
/// which stands for "none". A catalog refuses two ids with one key (`catalog::load`).
pub fn key(id: &str) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(id.as_bytes()) as u32).max(1)
}

/// What happened to an offer that was shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Impression,
    Click,
    Accept,
    Reject,
    Convert,
}

impl EventKind {
    pub const ALL: [EventKind; 5] = [
        EventKind::Impression,
        EventKind::Click,
        EventKind::Accept,
        EventKind::Reject,
        EventKind::Convert,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Impression => "impression",
            EventKind::Click => "click",
            EventKind::Accept => "accept",
            EventKind::Reject => "reject",
            EventKind::Convert => "convert",
        }
    }
}

/// One interaction, as compact as history needs it: 24 bytes (see the size test).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Milliseconds since the epoch.
    pub at: i64,
    /// [`key`] of the offer id.
    pub offer: u32,
    /// [`key`] of the offer's group when it was shown, 0 for none.
    pub group: u32,
    /// [`key`] of the channel.
    pub channel: u32,
    pub kind: EventKind,
}

impl Event {
    pub fn new(at: i64, offer: &str, group: Option<&str>, channel: &str, kind: EventKind) -> Event {
        Event {
            at,
            offer: key(offer),
            group: group.map_or(0, key),
            channel: key(channel),
            kind,
        }
    }
}

/// Which entity an attribute belongs to. The rule language spells them `customer.x`,
/// `context.x`, and (in score formulas only) `offer.x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Entity {
    Customer = 0,
    Context = 1,
    Offer = 2,
}

impl Entity {
    pub const ALL: [Entity; 3] = [Entity::Customer, Entity::Context, Entity::Offer];

    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Customer => "customer",
            Entity::Context => "context",
            Entity::Offer => "offer",
        }
    }

    pub fn from_name(name: &str) -> Option<Entity> {
        Entity::ALL.into_iter().find(|e| e.as_str() == name)
    }
}

/// The type of a schema attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrType {
    Bool,
    Int,
    Float,
    String,
    /// A closed set of strings; values are stored as the index of the variant.
    Enum(EnumDef),
    /// A set of strings (products held, tags); stored sorted and deduplicated.
    Set,
    /// A point in time, stored as milliseconds since the Unix epoch (UTC).
    Timestamp,
}

impl AttrType {
    /// The name used in `schema.yaml` and in messages.
    pub fn name(&self) -> &'static str {
        match self {
            AttrType::Bool => "bool",
            AttrType::Int => "int",
            AttrType::Float => "float",
            AttrType::String => "string",
            AttrType::Enum(_) => "enum",
            AttrType::Set => "set",
            AttrType::Timestamp => "timestamp",
        }
    }
}

/// The variants of one enum attribute, in declaration order.
#[derive(Debug, Clone, PartialEq)]
pub struct EnumDef {
    pub variants: Arc<[Box<str>]>,
}

impl EnumDef {
    pub fn new(variants: impl IntoIterator<Item = impl Into<Box<str>>>) -> EnumDef {
        EnumDef {
            variants: variants.into_iter().map(Into::into).collect(),
        }
    }

    pub fn index_of(&self, name: &str) -> Option<u32> {
        self.variants
            .iter()
            .position(|v| &**v == name)
            .map(|i| i as u32)
    }
}

/// A typed value of an attribute. `Missing` is an attribute that was never set.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    #[default]
    Missing,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Box<str>),
    /// The index of the variant in the attribute's [`EnumDef`].
    Enum(u32),
    /// INVARIANT: sorted and deduplicated; built by [`Value::set`].
    Set(Box<[Box<str>]>),
    /// Milliseconds since the Unix epoch.
    Timestamp(i64),
}

impl Value {
    /// A set value, sorted and deduplicated so membership is a binary search.
    pub fn set(items: impl IntoIterator<Item = impl Into<Box<str>>>) -> Value {
        let mut v: Vec<Box<str>> = items.into_iter().map(Into::into).collect();
        v.sort_unstable();
        v.dedup();
        Value::Set(v.into_boxed_slice())
    }

    pub fn is_missing(&self) -> bool {
        matches!(self, Value::Missing)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Missing => f.write_str("missing"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Enum(i) => write!(f, "#{i}"),
            Value::Set(items) => write!(f, "{items:?}"),
            Value::Timestamp(ms) => write!(f, "@{ms}"),
        }
    }
}

/// One attribute of an entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribute {
    pub name: String,
    pub ty: AttrType,
    /// Used wherever the attribute is unset; `Missing` when there is none.
    /// INVARIANT: of type `ty` (parsed for it by `default_value` in `catalog::load`).
    pub default: Value,
    pub description: Option<String>,
}

/// The attributes of one entity, addressed by slot (their position).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EntitySchema {
    attrs: Vec<Attribute>,
    // INVARIANT: maps every `attrs[i].name` to `i`; maintained by `push`.
    index: HashMap<String, u32>,
}

impl EntitySchema {
    /// Adds an attribute and returns its slot, or `None` if the name is taken.
    pub fn push(&mut self, attr: Attribute) -> Option<u32> {
        if self.index.contains_key(&attr.name) {
            return None;
        }
        let slot = self.attrs.len() as u32;
        self.index.insert(attr.name.clone(), slot);
        self.attrs.push(attr);
        Some(slot)
    }

    pub fn slot(&self, name: &str) -> Option<u32> {
        self.index.get(name).copied()
    }

    pub fn get(&self, slot: u32) -> Option<&Attribute> {
        self.attrs.get(slot as usize)
    }

    pub fn attributes(&self) -> &[Attribute] {
        &self.attrs
    }

    pub fn len(&self) -> usize {
        self.attrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.attrs.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.attrs.iter().map(|a| a.name.as_str())
    }
}

/// A value with its type spelled out and enum variants by name: the form values take on
/// disk (journal, snapshots) and in exports, so they stay readable under another schema.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Enum(String),
    Set(Vec<String>),
    /// Milliseconds since the Unix epoch.
    Timestamp(i64),
}

impl Feature {
    /// The feature of a value of type `ty`; `None` for a missing value.
    pub fn of(value: &Value, ty: &AttrType) -> Option<Feature> {
        Some(match (value, ty) {
            (Value::Missing, _) => return None,
            (Value::Bool(b), _) => Feature::Bool(*b),
            (Value::Int(i), _) => Feature::Int(*i),
            (Value::Float(x), _) => Feature::Float(*x),
            (Value::Str(s), _) => Feature::Str(s.to_string()),
            (Value::Enum(i), AttrType::Enum(def)) => {
                Feature::Enum(def.variants.get(*i as usize)?.to_string())
            }
            (Value::Enum(_), _) => return None,
            (Value::Set(items), _) => Feature::Set(items.iter().map(|s| s.to_string()).collect()),
            (Value::Timestamp(ms), _) => Feature::Timestamp(*ms),
        })
    }

    /// The value of this feature for an attribute of type `ty`, or `None` when the types
    /// differ (the schema changed) or the enum has no such variant any more.
    pub fn value(&self, ty: &AttrType) -> Option<Value> {
        Some(match (self, ty) {
            (Feature::Bool(b), AttrType::Bool) => Value::Bool(*b),
            (Feature::Int(i), AttrType::Int) => Value::Int(*i),
            (Feature::Int(i), AttrType::Float) => Value::Float(*i as f64),
            (Feature::Float(x), AttrType::Float) => Value::Float(*x),
            (Feature::Str(s), AttrType::String) => Value::Str(s.as_str().into()),
            (Feature::Enum(s), AttrType::Enum(def)) => Value::Enum(def.index_of(s)?),
            (Feature::Set(items), AttrType::Set) => Value::set(items.iter().map(String::as_str)),
            (Feature::Timestamp(ms), AttrType::Timestamp) => Value::Timestamp(*ms),
            _ => return None,
        })
    }
}

/// The customer and context attributes of a catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    pub customer: EntitySchema,
    pub context: EntitySchema,
    /// The score variables of an offer, visible to score formulas as `offer.*`.
    pub offer: EntitySchema,
}

/// The slots of the `offer.*` score variables, in the order of [`Schema::offer`].
pub mod offer_slot {
    pub const PROPENSITY: u32 = 0;
    pub const VALUE: u32 = 1;
    pub const WEIGHT: u32 = 2;
    pub const CONTEXT_WEIGHT: u32 = 3;
    pub const NAMES: [&str; 4] = ["propensity", "value", "weight", "context_weight"];
}

impl Schema {
    pub fn new(customer: EntitySchema, context: EntitySchema) -> Schema {
        let mut offer = EntitySchema::default();
        for name in offer_slot::NAMES {
            offer.push(Attribute {
                name: name.to_string(),
                ty: AttrType::Float,
                default: Value::Missing,
                description: None,
            });
        }
        Schema {
            customer,
            context,
            offer,
        }
    }

    pub fn entity(&self, entity: Entity) -> &EntitySchema {
        match entity {
            Entity::Customer => &self.customer,
            Entity::Context => &self.context,
            Entity::Offer => &self.offer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(printable("agé"), "agé");
        assert_eq!(printable("agé\u{0}\n\t"), "agé\\0\\n\\t");
        assert!(matches!(printable("plain"), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn set_values_are_sorted_and_deduplicated() {
        assert_eq!(
            Value::set(["tv", "broadband", "tv"]),
            Value::Set(vec!["broadband".into(), "tv".into()].into_boxed_slice())
        );
    }

    #[test]
    fn slots_follow_declaration_order_and_names_are_unique() {
        let mut s = EntitySchema::default();
        let attr = |name: &str| Attribute {
            name: name.into(),
            ty: AttrType::Int,
            default: Value::Missing,
            description: None,
        };
        assert_eq!(s.push(attr("a")), Some(0));
        assert_eq!(s.push(attr("b")), Some(1));
        assert_eq!(s.push(attr("a")), None);
        assert_eq!(s.slot("b"), Some(1));
    }
}
