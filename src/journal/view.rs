//! Serialize impls that mirror the owned records field for field (postcard encodes
//! fields in order, without names; `&str` and `String`, slices and `Vec`s encode
//! alike). The round-trip test holds the two to the same bytes.

use serde::Serialize;
use serde::ser::{SerializeStruct, Serializer};

use super::PendingDecision;
use crate::schema::{AttrType, EntitySchema, Value};

pub struct Decision<'a>(pub &'a PendingDecision);

impl Serialize for Decision<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let p = self.0;
        let catalog = &*p.catalog;
        let d = &p.decision;
        let placement = &catalog.placements[d.placement];
        let experiment = d.experiment.map(|e| &catalog.experiments[e]);
        let mut st = s.serialize_struct("DecisionRecord", 15)?;
        st.serialize_field("id", d.id.as_bytes())?;
        st.serialize_field("at", &d.at)?;
        st.serialize_field("customer", &p.customer.as_deref())?;
        st.serialize_field("placement", &placement.id)?;
        st.serialize_field("channel", &placement.channel)?;
        st.serialize_field("shown", &Shown(p))?;
        st.serialize_field("catalog_version", &*d.catalog_version)?;
        st.serialize_field("experiment", &experiment.map(|e| &e.id))?;
        st.serialize_field("arm", &experiment.zip(d.arm).map(|(e, a)| &e.arms[a].id))?;
        st.serialize_field("epsilon", &d.epsilon)?;
        st.serialize_field("one_per_group", &placement.one_per_group)?;
        p.with_values(|customer, context| {
            st.serialize_field(
                "features",
                &Features([
                    ("customer", &catalog.schema.customer, customer),
                    ("context", &catalog.schema.context, context),
                ]),
            )
        })?;
        st.serialize_field("candidates", &Candidates(p))?;
        st.serialize_field("suppressed", &d.suppressed)?;
        st.serialize_field("learned", &d.learned)?;
        st.end()
    }
}

struct Features<'a>([(&'static str, &'a EntitySchema, &'a [Value]); 2]);

impl Serialize for Features<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let items = self.0.iter().flat_map(|&(entity, schema, values)| {
            schema
                .attributes()
                .iter()
                .zip(values.iter())
                .filter_map(move |(a, v)| Some((Name(entity, &a.name), feature(v, &a.ty)?)))
        });
        let count = items.clone().count();
        s.collect_seq(Exact(items, count))
    }
}

/// [`Feature`], borrowed: the same variants in the same order.
#[derive(Serialize)]
enum FeatureRef<'a> {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
    Enum(&'a str),
    Set(&'a [Box<str>]),
    Timestamp(i64),
}

/// As [`Feature::of`](crate::schema::Feature::of).
fn feature<'a>(value: &'a Value, ty: &'a AttrType) -> Option<FeatureRef<'a>> {
    Some(match (value, ty) {
        (Value::Missing, _) => return None,
        (Value::Bool(b), _) => FeatureRef::Bool(*b),
        (Value::Int(i), _) => FeatureRef::Int(*i),
        (Value::Float(x), _) => FeatureRef::Float(*x),
        (Value::Str(s), _) => FeatureRef::Str(s),
        (Value::Enum(i), AttrType::Enum(def)) => FeatureRef::Enum(def.variants.get(*i as usize)?),
        (Value::Enum(_), _) => return None,
        (Value::Set(items), _) => FeatureRef::Set(items),
        (Value::Timestamp(ms), _) => FeatureRef::Timestamp(*ms),
    })
}

/// `entity.attribute`, written from a reused buffer.
struct Name<'a>(&'static str, &'a str);

thread_local! {
    static NAME: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

impl Serialize for Name<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        NAME.with(|name| {
            let mut name = name.borrow_mut();
            name.clear();
            name.push_str(self.0);
            name.push('.');
            name.push_str(self.1);
            s.serialize_str(&name)
        })
    }
}

struct Candidates<'a>(&'a PendingDecision);

impl Serialize for Candidates<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let catalog = &*self.0.catalog;
        s.collect_seq(self.0.decision.candidates.iter().map(|c| {
            let o = &catalog.offers[c.offer];
            (&o.id, c.score, &o.group)
        }))
    }
}

struct Shown<'a>(&'a PendingDecision);

impl Serialize for Shown<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let catalog = &*self.0.catalog;
        s.collect_seq(self.0.decision.offers.iter().map(|x| {
            (
                &catalog.offers[x.offer].id,
                x.slot,
                x.score,
                x.propensity,
                x.explored,
                x.fallback,
            )
        }))
    }
}

/// An iterator that reports its exact length (postcard writes it first).
struct Exact<I>(I, usize);

impl<I: Iterator> Iterator for Exact<I> {
    type Item = I::Item;
    fn next(&mut self) -> Option<I::Item> {
        self.0.next()
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.1, Some(self.1))
    }
}
