//! The journal: every write the node acknowledges and every decision it makes, in one
//! ordered log of checksummed records (`storage::segment` framing).
//!
//! Records name things by id (customer, offer, placement, attribute) and carry values as
//! [`Feature`]s, never as slots or indexes, so a journal stays readable under any later
//! catalog. The payload of a frame is a format byte followed by the postcard encoding of a
//! [`Record`]; new record kinds are added at the end of the enum. Format 2 (written now)
//! gave outcomes the node's time of acceptance and put a decision's shown offers right
//! after its head, where replay reads them; format 1 (the first wave's journals) is read
//! as it was ([`legacy`]), an outcome's acceptance taken to be its own time.
//!
//! Decision records are built on the decide path only as far as cloning what they need
//! ([`PendingDecision`]); the journal thread turns them into [`DecisionRecord`]s.

pub mod export;
pub mod join;

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::decide::Decision;
use crate::schema::{EntitySchema, EventKind, Feature, Value};
use crate::storage::{Damage, Encode, Position, SegmentReader, segment};

/// The format byte in front of every decision written now.
const FORMAT: u8 = 4;
/// Format 3: a decision did not say which learning state it read; still read, and still
/// written for the other records, whose layout format 4 left as it was (so that nodes of
/// the version before, in a cluster being upgraded, go on applying them).
const FORMAT_3: u8 = 3;
/// Format 2: an outcome carried no inputs for adaptive models either; still read.
const FORMAT_2: u8 = 2;
/// The format of the first wave's journals, still read.
const FORMAT_1: u8 = 1;
/// postcard's tag of [`Record::Decision`]: its index among the variants.
const DECISION_VARIANT: u8 = 3;

/// A record as replay reads it: whole, or a decision's head.
#[derive(Debug, Clone, PartialEq)]
pub enum Replayed {
    Record(Record),
    Decision {
        id: [u8; 16],
        customer: Option<Arc<str>>,
        /// [`key`](crate::schema::key) of the channel.
        channel: u32,
        /// Keys of the offers shown; `None` in a format 1 record, which has them only at
        /// its end.
        shown: Option<Box<[u32]>>,
    },
}

/// The leading fields of a [`DecisionRecord`], in its order: postcard reads a prefix of
/// a struct's encoding as a struct of its first fields.
#[derive(Deserialize)]
struct DecisionHead<'a> {
    id: [u8; 16],
    #[allow(dead_code)]
    at: i64,
    #[serde(borrow)]
    customer: Option<&'a str>,
    #[allow(dead_code)]
    placement: &'a str,
    channel: &'a str,
}

/// A format 2 decision's head: [`DecisionHead`] and the offers shown.
#[derive(Deserialize)]
struct DecisionHeadShown<'a> {
    #[serde(borrow)]
    head: DecisionHead<'a>,
    #[serde(borrow)]
    shown: Vec<ShownHead<'a>>,
}

/// A [`ShownRecord`], borrowed: every field is read (the next one starts after it), only
/// the offer is kept.
#[derive(Deserialize)]
#[allow(dead_code)]
struct ShownHead<'a> {
    offer: &'a str,
    slot: u32,
    score: f64,
    propensity: f64,
    explored: bool,
    fallback: bool,
}

/// One entry of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Record {
    Upsert(UpsertRecord),
    Forget(ForgetRecord),
    Outcome(OutcomeRecord),
    Decision(Box<DecisionRecord>),
}

impl Record {
    /// The customer the record is about, if any: what erasure looks for.
    pub fn customer(&self) -> Option<&str> {
        match self {
            Record::Upsert(r) => Some(&r.customer),
            Record::Forget(r) => Some(&r.customer),
            Record::Outcome(r) => r.customer.as_deref(),
            Record::Decision(r) => r.customer.as_deref(),
        }
    }

    /// Decodes a frame's payload: the writer's sequence number and the record.
    pub fn decode(payload: &[u8]) -> Result<(u64, Record), DecodeError> {
        let (seq, payload) = segment::split_seq(payload).ok_or(DecodeError::TooShort)?;
        Ok((seq, Record::decode_record(payload)?))
    }

    /// As [`Record::decode`], but a decision is only read as far as replay needs it:
    /// its id, customer and channel (a decision record is ~1 KB of features and
    /// candidates that replay would decode only to drop).
    pub fn decode_for_replay(payload: &[u8]) -> Result<(u64, Replayed), DecodeError> {
        let (seq, payload) = segment::split_seq(payload).ok_or(DecodeError::TooShort)?;
        Ok((seq, Record::decode_payload_for_replay(payload)?))
    }

    /// A record as [`Entry`] encodes it (without the writer's sequence number: a
    /// cluster's stream message).
    pub fn decode_payload(payload: &[u8]) -> Result<Record, DecodeError> {
        Record::decode_record(payload)
    }

    /// As [`Record::decode_for_replay`], of a payload without the sequence number.
    pub fn decode_payload_for_replay(payload: &[u8]) -> Result<Replayed, DecodeError> {
        match payload {
            // A decision's head is laid out alike in formats 2 to 4.
            [FORMAT | FORMAT_3 | FORMAT_2, DECISION_VARIANT, rest @ ..] => {
                // postcard encodes a struct as its fields in order: the nested head is
                // the record's first five fields, then its shown offers.
                let (d, _) = postcard::take_from_bytes::<DecisionHeadShown<'_>>(rest)?;
                let shown = d
                    .shown
                    .iter()
                    .map(|s| crate::schema::key(s.offer))
                    .collect();
                Ok(Replayed::Decision {
                    id: d.head.id,
                    customer: d.head.customer.map(Into::into),
                    channel: crate::schema::key(d.head.channel),
                    shown: Some(shown),
                })
            }
            [FORMAT_1, DECISION_VARIANT, rest @ ..] => {
                let (head, _) = postcard::take_from_bytes::<DecisionHead<'_>>(rest)?;
                Ok(Replayed::Decision {
                    id: head.id,
                    customer: head.customer.map(Into::into),
                    channel: crate::schema::key(head.channel),
                    shown: None,
                })
            }
            _ => Ok(Replayed::Record(Record::decode_record(payload)?)),
        }
    }

    fn decode_record(payload: &[u8]) -> Result<Record, DecodeError> {
        match payload.split_first() {
            Some((&FORMAT, rest)) => Ok(postcard::from_bytes(rest)?),
            Some((&FORMAT_3, rest)) => Ok(postcard::from_bytes::<legacy::Record3>(rest)?.into()),
            Some((&FORMAT_2, rest)) => Ok(postcard::from_bytes::<legacy::Record2>(rest)?.into()),
            Some((&FORMAT_1, rest)) => Ok(postcard::from_bytes::<legacy::Record>(rest)?.into()),
            Some((&other, _)) => Err(DecodeError::UnknownFormat(other)),
            None => Err(DecodeError::Empty),
        }
    }
}

/// Why a frame's payload is not a record: a format skew or a bug, since the frame's
/// checksum held. The reader counts it as damage and goes on.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not even the writer's sequence number.
    #[error("record too short")]
    TooShort,
    /// A sequence number and nothing after it.
    #[error("empty record")]
    Empty,
    /// A format byte this build does not know (a journal from a newer nextbest).
    #[error("unknown record format {0}")]
    UnknownFormat(u8),
    /// The format is known but its postcard encoding does not decode.
    #[error(transparent)]
    Postcard(#[from] postcard::Error),
}

impl Encode for Record {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(match self {
            Record::Decision(_) => FORMAT,
            _ => FORMAT_3,
        });
        // Serializing these plain structs into a Vec cannot fail: every sequence has a
        // known length and the writer has no size limit.
        let bytes = postcard::to_extend(self, std::mem::take(out));
        *out = bytes.expect("journal records always serialize");
    }
}

/// Attributes merged into a customer's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpsertRecord {
    pub at: i64,
    pub customer: String,
    pub attributes: Vec<(String, Feature)>,
}

/// A customer forgotten (erasure): their state is dropped now and their records are
/// removed from the journal by the next compaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForgetRecord {
    pub at: i64,
    pub customer: String,
}

/// What happened to an offer that was shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    pub decision: [u8; 16],
    pub offer: String,
    pub kind: EventKind,
    /// The outcome's value to the business (revenue, margin), when known.
    pub value: Option<f64>,
    /// When it happened, as the caller said: milliseconds since the epoch.
    pub at: i64,
    /// Resolved when recorded: the customer whose history it joins (none for an
    /// anonymous visitor or a decision the node no longer remembers), the channel and the
    /// offer's group.
    pub customer: Option<String>,
    pub channel: Option<String>,
    pub group: Option<String>,
    /// When the node accepted it (its clock, ms): the customer's history is trimmed as of
    /// this time, on the node that took it and on every replay alike.
    pub accepted: i64,
    /// The decision's values of the predictors of the offer's adaptive models (`customer.x`,
    /// `context.y`), as the node that took the outcome remembered them: what the models
    /// learn from, the same on replay and on every node. `None` when the offer has no
    /// model or the node did not know the decision's values (an attribute unset with no
    /// default is left out of a list that is there).
    pub inputs: Option<Vec<(String, Feature)>>,
}

impl OutcomeRecord {
    pub fn decision_id(&self) -> Uuid {
        Uuid::from_bytes(self.decision)
    }

    /// The outcome as adaptive models learn it.
    pub fn response(&self) -> crate::adaptive::Response<'_> {
        let decision = self.decision_id();
        crate::adaptive::Response {
            decision: decision.as_u128(),
            decided: crate::db::uuid_time(decision),
            offer: crate::schema::key(&self.offer),
            channel: self.channel.as_deref().map_or(0, crate::schema::key),
            kind: self.kind,
            accepted: self.accepted,
            inputs: self.inputs.as_deref(),
        }
    }
}

/// A decision as made: enough to replay the policy's choice and evaluate others offline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub id: [u8; 16],
    pub at: i64,
    pub customer: Option<String>,
    pub placement: String,
    pub channel: String,
    /// Here, after the head, so that replay reads which offers an outcome may name
    /// without decoding the rest.
    pub shown: Vec<ShownRecord>,
    pub catalog_version: String,
    pub experiment: Option<String>,
    pub arm: Option<String>,
    pub epsilon: f64,
    /// The placement showed at most one offer per group.
    pub one_per_group: bool,
    /// Every customer and context attribute that had a value, as `customer.x` /
    /// `context.y`: all the catalog's rules could read.
    pub features: Vec<(String, Feature)>,
    /// Every offer that passed eligibility, policy and budgets, in catalog order.
    pub candidates: Vec<CandidateRecord>,
    pub suppressed: Option<String>,
    /// With adaptive models: the learning state its scores read, as the number of
    /// responses learned before it (`adaptive::Learning::updates`), so that replay scores
    /// it as it was scored. `None` without models (or in journals before format 4).
    pub learned: Option<u64>,
}

impl DecisionRecord {
    pub fn decision_id(&self) -> Uuid {
        Uuid::from_bytes(self.id)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateRecord {
    pub offer: String,
    pub score: f64,
    pub group: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShownRecord {
    pub offer: String,
    pub slot: u32,
    pub score: f64,
    pub propensity: f64,
    pub explored: bool,
    pub fallback: bool,
}

/// A decision as the decide path hands it over: the customer and context values packed
/// into one buffer (one allocation instead of one per string and set), no formatting.
#[derive(Debug)]
pub struct PendingDecision {
    pub catalog: Arc<Catalog>,
    pub customer: Option<Arc<str>>,
    /// The customer's values, then the context's: each
    /// [packed](crate::state::packed::encode_values), or the customer's whole packed
    /// record as the store holds it (`record` is set) followed by the context's values.
    values: Vec<u8>,
    record: bool,
    pub decision: Decision,
}

thread_local! {
    /// Decoded customer and context values, reused by the journal thread.
    static VALUES: std::cell::RefCell<(Vec<Value>, Vec<Value>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

impl PendingDecision {
    pub fn new(
        catalog: Arc<Catalog>,
        customer: &crate::state::CustomerState,
        context: &[Value],
        decision: Decision,
    ) -> PendingDecision {
        let mut values = Vec::with_capacity(256);
        crate::state::packed::encode_values(&customer.attributes, &mut values);
        crate::state::packed::encode_values(context, &mut values);
        PendingDecision {
            catalog,
            customer: customer.id.as_deref().map(Arc::from),
            values,
            record: false,
            decision,
        }
    }

    /// A decision made on a stored customer's attributes exactly as stored: `record` is
    /// the customer's packed record (`Store::with_record`), copied instead of re-packing
    /// the values.
    pub fn from_record(
        catalog: Arc<Catalog>,
        customer: Arc<str>,
        record: &[u8],
        context: &[Value],
        decision: Decision,
    ) -> PendingDecision {
        let mut values = Vec::with_capacity(record.len() + 64);
        values.extend_from_slice(record);
        crate::state::packed::encode_values(context, &mut values);
        PendingDecision {
            catalog,
            customer: Some(customer),
            values,
            record: true,
            decision,
        }
    }

    /// Runs `f` on the decoded customer and context values.
    fn with_values<R>(&self, f: impl FnOnce(&[Value], &[Value]) -> R) -> R {
        VALUES.with(|cell| {
            let mut cell = cell.borrow_mut();
            let (customer, context) = &mut *cell;
            let schema = &self.catalog.schema;
            let width = schema.customer.len();
            let rest = if self.record {
                crate::state::packed::decode_record_values(&self.values, width, customer)
            } else {
                crate::state::packed::decode_values(&self.values, width, customer)
            };
            let rest = rest.expect("values packed by PendingDecision decode");
            crate::state::packed::decode_values(rest, schema.context.len(), context)
                .expect("values packed by PendingDecision decode");
            f(customer, context)
        })
    }

    pub fn record(&self) -> DecisionRecord {
        let catalog = &*self.catalog;
        let d = &self.decision;
        let placement = &catalog.placements[d.placement];
        let experiment = d.experiment.map(|e| &catalog.experiments[e]);
        let mut features = Vec::new();
        self.with_values(|customer, context| {
            push_features(
                &mut features,
                "customer",
                &catalog.schema.customer,
                customer,
            );
            push_features(&mut features, "context", &catalog.schema.context, context);
        });
        DecisionRecord {
            id: d.id.into_bytes(),
            at: d.at,
            customer: self.customer.as_deref().map(str::to_string),
            placement: placement.id.clone(),
            channel: placement.channel.clone(),
            catalog_version: d.catalog_version.to_string(),
            experiment: experiment.map(|e| e.id.clone()),
            arm: experiment.zip(d.arm).map(|(e, a)| e.arms[a].id.clone()),
            epsilon: d.epsilon,
            one_per_group: placement.one_per_group,
            features,
            candidates: d
                .candidates
                .iter()
                .map(|c| {
                    let o = &catalog.offers[c.offer];
                    CandidateRecord {
                        offer: o.id.clone(),
                        score: c.score,
                        group: o.group.clone(),
                    }
                })
                .collect(),
            shown: d
                .offers
                .iter()
                .map(|s| ShownRecord {
                    offer: catalog.offers[s.offer].id.clone(),
                    slot: s.slot,
                    score: s.score,
                    propensity: s.propensity,
                    explored: s.explored,
                    fallback: s.fallback,
                })
                .collect(),
            suppressed: d.suppressed.clone(),
            learned: d.learned,
        }
    }
}

fn push_features(
    out: &mut Vec<(String, Feature)>,
    entity: &str,
    schema: &EntitySchema,
    values: &[Value],
) {
    for (attr, value) in schema.attributes().iter().zip(values) {
        if let Some(f) = Feature::of(value, &attr.ty) {
            out.push((format!("{entity}.{}", attr.name), f));
        }
    }
}

pub mod legacy;

/// What the journal thread is handed.
#[derive(Debug)]
pub enum Entry {
    Record(Record),
    Decision(Box<PendingDecision>),
}

impl Encode for Entry {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Entry::Record(r) => r.encode(out),
            Entry::Decision(d) => {
                out.push(FORMAT);
                let view = RecordView::Decision(view::Decision(d));
                let bytes = postcard::to_extend(&view, std::mem::take(out));
                *out = bytes.expect("journal records always serialize");
            }
        }
    }
}

/// [`Record::Decision`] as borrowed views of a [`PendingDecision`]: the same bytes as
/// `Record::Decision(Box::new(pending.record()))` without building the owned record.
#[derive(Serialize)]
enum RecordView<'a> {
    #[allow(dead_code)]
    Upsert(()),
    #[allow(dead_code)]
    Forget(()),
    #[allow(dead_code)]
    Outcome(()),
    Decision(view::Decision<'a>),
}

mod view;

/// Reads records in order from a position on, across segments. Damage (a torn or
/// corrupt frame, a record that does not decode) is collected in [`Reader::damage`]; the
/// rest of a damaged segment is skipped and reading goes on with the next one.
#[derive(Debug)]
pub struct Reader {
    dir: std::path::PathBuf,
    segments: std::vec::IntoIter<u64>,
    current: Option<SegmentReader>,
    start: Position,
    buf: Vec<u8>,
    pub damage: Vec<Damage>,
}

impl Reader {
    pub fn open(dir: &Path, from: Position) -> std::io::Result<Reader> {
        let segments: Vec<u64> = segment::list(dir)?
            .into_iter()
            .filter(|&s| s >= from.segment)
            .collect();
        Ok(Reader {
            dir: dir.to_path_buf(),
            segments: segments.into_iter(),
            current: None,
            start: from,
            buf: Vec::new(),
            damage: Vec::new(),
        })
    }

    /// The next record, where it starts and its sequence number.
    pub fn next_record(&mut self) -> std::io::Result<Option<(Position, u64, Record)>> {
        self.next_with(Record::decode)
    }

    /// As [`Reader::next_record`], with decisions read only as far as replay needs.
    pub fn next_for_replay(&mut self) -> std::io::Result<Option<(Position, u64, Replayed)>> {
        self.next_with(Record::decode_for_replay)
    }

    fn next_with<T>(
        &mut self,
        decode: impl Fn(&[u8]) -> Result<(u64, T), DecodeError>,
    ) -> std::io::Result<Option<(Position, u64, T)>> {
        loop {
            let Some(reader) = self.current.as_mut() else {
                let Some(segment) = self.segments.next() else {
                    return Ok(None);
                };
                let mut reader = SegmentReader::open(&self.dir, segment)?;
                if segment == self.start.segment {
                    reader.seek(self.start.offset)?;
                }
                self.current = Some(reader);
                continue;
            };
            match reader.next_into(&mut self.buf)? {
                Some(at) => match decode(&self.buf) {
                    Ok((seq, record)) => return Ok(Some((at, seq, record))),
                    Err(reason) => self.damage.push(Damage {
                        at,
                        bytes: (self.buf.len() + segment::HEADER) as u64,
                        reason: format!("undecodable record: {reason}"),
                    }),
                },
                None => {
                    if let Some(d) = reader.damage() {
                        self.damage.push(d.clone());
                    }
                    self.current = None;
                }
            }
        }
    }
}

/// Where a journal ends, as [`recover`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    /// Where the next record goes.
    pub position: Position,
    /// The highest sequence number on disk (0 for none).
    pub seq: u64,
    /// The torn or corrupt tail cut off the last segment.
    pub cut: Option<Damage>,
}

/// Finds where the journal in `dir` ends, cutting a torn or corrupt tail off the last
/// segment.
pub fn recover(dir: &Path) -> std::io::Result<End> {
    std::fs::create_dir_all(dir)?;
    let segments = segment::list(dir)?;
    let Some(&last) = segments.last() else {
        return Ok(End {
            position: Position::default(),
            seq: 0,
            cut: None,
        });
    };
    let mut seq = 0;
    let mut buf = Vec::new();
    // The last sequence number is in the newest segment that holds a record.
    for &older in segments.iter().rev().skip(1) {
        if seq > 0 {
            break;
        }
        let mut reader = SegmentReader::open(dir, older)?;
        while reader.next_into(&mut buf)?.is_some() {
            seq = segment::split_seq(&buf).map_or(seq, |(s, _)| s);
        }
    }
    let mut reader = SegmentReader::open(dir, last)?;
    while reader.next_into(&mut buf)?.is_some() {
        seq = segment::split_seq(&buf).map_or(seq, |(s, _)| s);
    }
    let damage = reader.damage().cloned();
    let end = Position {
        segment: last,
        offset: reader.offset().max(segment::MAGIC.len() as u64),
    };
    if damage.is_some() && reader.offset() == 0 {
        // Not even a header: start the segment over.
        std::fs::write(segment::segment_path(dir, last), segment::MAGIC)?;
    }
    Ok(End {
        position: end,
        seq,
        cut: damage,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::schema::Value;
    use crate::storage::{Writer, WriterOptions};

    fn upsert(i: usize) -> Record {
        Record::Upsert(UpsertRecord {
            at: i as i64,
            customer: format!("customer-{i}"),
            attributes: vec![("age".into(), Feature::Int(i as i64)); i % 5],
        })
    }

    /// A journal of `n` records in one segment; returns where each frame ends.
    fn journal(dir: &Path, n: usize) -> Vec<u64> {
        let writer =
            Writer::start(dir, Position::default(), 0, WriterOptions::default()).expect("writer");
        for i in 0..n {
            writer.append(upsert(i), false).expect("append");
        }
        writer.close().expect("close");
        let mut reader = Reader::open(dir, Position::default()).expect("reader");
        let mut starts = Vec::new();
        while let Some((at, _, _)) = reader.next_record().expect("read") {
            starts.push(at.offset);
        }
        let len = std::fs::metadata(segment::segment_path(dir, 1))
            .expect("meta")
            .len();
        starts.remove(0);
        starts.push(len);
        starts
    }

    fn read_back(dir: &Path) -> (Vec<Record>, Vec<Damage>) {
        let mut reader = Reader::open(dir, Position::default()).expect("reader");
        let mut out = Vec::new();
        while let Some((_, _, r)) = reader.next_record().expect("read") {
            out.push(r);
        }
        (out, reader.damage)
    }

    /// A first-wave (format 1) journal reads as it was: an outcome's acceptance is its
    /// own time, a decision's shown offers come from the end of its record (replay's
    /// head has none).
    #[test]
    #[allow(clippy::type_complexity)]
    fn format_1_records_read_as_they_were_written() {
        #[derive(Serialize)]
        enum Old {
            #[allow(dead_code)]
            Upsert(()),
            #[allow(dead_code)]
            Forget(()),
            Outcome(
                (
                    [u8; 16],
                    String,
                    EventKind,
                    Option<f64>,
                    i64,
                    Option<String>,
                    Option<String>,
                    Option<String>,
                ),
            ),
            Decision(
                (
                    [u8; 16],
                    i64,
                    Option<String>,
                    String,
                    String,
                    String,
                    Option<String>,
                    Option<String>,
                    f64,
                    bool,
                    Vec<(String, Feature)>,
                    Vec<CandidateRecord>,
                    Vec<ShownRecord>,
                    Option<String>,
                ),
            ),
        }
        let frame = |old: &Old| {
            let mut payload = 7u64.to_le_bytes().to_vec();
            payload.push(FORMAT_1);
            payload.extend(postcard::to_allocvec(old).expect("serializes"));
            payload
        };
        let outcome = frame(&Old::Outcome((
            [1; 16],
            "gold_card".into(),
            EventKind::Accept,
            Some(12.5),
            1_795_428_000_000,
            Some("ada".into()),
            Some("web".into()),
            None,
        )));
        let Ok((7, Record::Outcome(o))) = Record::decode(&outcome) else {
            panic!("a format 1 outcome decodes")
        };
        assert_eq!(
            (o.at, o.accepted, o.value),
            (1_795_428_000_000, 1_795_428_000_000, Some(12.5))
        );
        let shown = ShownRecord {
            offer: "gold_card".into(),
            slot: 0,
            score: 1.5,
            propensity: 0.9,
            explored: false,
            fallback: false,
        };
        let decision = frame(&Old::Decision((
            [2; 16],
            5,
            Some("ada".into()),
            "web.home_banner".into(),
            "web".into(),
            "abc".into(),
            None,
            None,
            0.1,
            true,
            vec![("customer.age".into(), Feature::Int(38))],
            vec![],
            vec![shown.clone()],
            None,
        )));
        let Ok((7, Record::Decision(d))) = Record::decode(&decision) else {
            panic!("a format 1 decision decodes")
        };
        assert_eq!(
            (d.shown, d.catalog_version.as_str(), d.features.len()),
            (vec![shown], "abc", 1)
        );
        assert_eq!(
            Record::decode_for_replay(&decision).expect("replay head"),
            (
                7,
                Replayed::Decision {
                    id: [2; 16],
                    customer: Some("ada".into()),
                    channel: crate::schema::key("web"),
                    shown: None,
                }
            )
        );
    }

    /// A format 2 journal reads as it was: its outcomes carried no inputs for adaptive
    /// models (they read as unknown, so nothing is learned from them), and a format 3
    /// outcome keeps the ones it carries.
    #[test]
    #[allow(clippy::type_complexity)]
    fn format_2_outcomes_read_without_inputs() {
        #[derive(Serialize)]
        enum Old {
            #[allow(dead_code)]
            Upsert(()),
            #[allow(dead_code)]
            Forget(()),
            Outcome(
                (
                    [u8; 16],
                    String,
                    EventKind,
                    Option<f64>,
                    i64,
                    Option<String>,
                    Option<String>,
                    Option<String>,
                    i64,
                ),
            ),
        }
        let mut payload = 9u64.to_le_bytes().to_vec();
        payload.push(FORMAT_2);
        payload.extend(
            postcard::to_allocvec(&Old::Outcome((
                [1; 16],
                "gold_card".into(),
                EventKind::Impression,
                None,
                1_795_428_000_000,
                Some("ada".into()),
                Some("web".into()),
                None,
                1_795_428_001_000,
            )))
            .expect("serializes"),
        );
        let Ok((9, Record::Outcome(o))) = Record::decode(&payload) else {
            panic!("a format 2 outcome decodes")
        };
        assert_eq!((o.accepted, o.inputs), (1_795_428_001_000, None));
        let now = OutcomeRecord {
            inputs: Some(vec![("customer.age".into(), Feature::Int(38))]),
            ..o
        };
        let mut encoded = Vec::new();
        Entry::Record(Record::Outcome(now.clone())).encode(&mut encoded);
        // Its layout is format 3's still, and written so: a node of the version before
        // applies it.
        assert_eq!(encoded[0], FORMAT_3);
        let mut framed = 9u64.to_le_bytes().to_vec();
        framed.extend(encoded);
        assert_eq!(
            Record::decode(&framed).expect("format 3"),
            (9, Record::Outcome(now))
        );
    }

    /// The borrowed encoding of a pending decision is byte for byte the encoding of the
    /// owned record it stands for, for every placement of the sample catalog.
    #[test]
    fn a_pending_decision_encodes_as_its_record() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let catalog = Arc::new(Catalog::load(root.join("rules")).expect("sample catalog"));
        let text = std::fs::read_to_string(root.join("examples/customers/ada.json")).expect("ada");
        let json: serde_json::Value = serde_json::from_str(&text).expect("json");
        let mut attributes = crate::state::parse_attributes(
            "customer",
            &catalog.schema.customer,
            json["attributes"].as_object().expect("attributes"),
        )
        .expect("valid");
        attributes[catalog.schema.customer.slot("language").expect("language") as usize] =
            Value::Str("pt".into());
        let state = crate::state::CustomerState {
            id: Some("ada".into()),
            attributes,
            ..Default::default()
        };
        for placement in 0..catalog.placements.len() {
            let context = crate::decide::Context::for_placement(&catalog, placement, vec![]);
            let id = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);
            let options = crate::decide::Options::new(id);
            let mut decision = crate::decide::decide(
                &catalog,
                &state,
                &context,
                placement,
                1_795_428_000_000,
                &options,
            );
            // Every other one names the learning state it read.
            decision.learned = placement.is_multiple_of(2).then_some(7 + placement as u64);
            let pending =
                PendingDecision::new(Arc::clone(&catalog), &state, &context.values, decision);
            let record = Record::Decision(Box::new(pending.record()));
            let (mut owned, mut borrowed) = (Vec::new(), Vec::new());
            record.encode(&mut owned);
            Entry::Decision(Box::new(pending)).encode(&mut borrowed);
            assert_eq!(borrowed, owned, "placement {placement}");
            let mut framed = 5u64.to_le_bytes().to_vec();
            framed.extend(&owned);
            assert_eq!(
                Record::decode(&framed).expect("decodes"),
                (5, record.clone())
            );
            // Formats 3 and 2 laid a decision out the same but for the last field
            // (postcard's `None` is one zero byte): it reads as a decision naming no state.
            if let Record::Decision(d) = &record
                && d.learned.is_none()
            {
                for format in [FORMAT_3, FORMAT_2] {
                    let mut old = 5u64.to_le_bytes().to_vec();
                    old.push(format);
                    old.extend(&owned[1..owned.len() - 1]);
                    assert_eq!(
                        Record::decode(&old).expect("formats 3 and 2"),
                        (5, record.clone())
                    );
                }
            }
            assert!(
                matches!(&record, Record::Decision(d) if d.features.len() > 20 && !d.candidates.is_empty())
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Cutting the segment anywhere keeps exactly the records that end before the
        /// cut, reports the rest, and recovery makes the journal appendable again.
        #[test]
        fn truncation_keeps_every_complete_record(n in 1usize..40, cut in any::<prop::sample::Index>()) {
            let dir = tempfile::tempdir().expect("tempdir");
            let ends = journal(dir.path(), n);
            let path = segment::segment_path(dir.path(), 1);
            let len = *ends.last().expect("records");
            let cut = segment::MAGIC.len() as u64 + cut.index((len - segment::MAGIC.len() as u64) as usize) as u64;
            std::fs::OpenOptions::new().write(true).open(&path).expect("open").set_len(cut).expect("cut");
            let complete = ends.iter().filter(|&&e| e <= cut).count();
            let (records, damage) = read_back(dir.path());
            prop_assert_eq!(records, (0..complete).map(upsert).collect::<Vec<_>>());
            let at_boundary = ends.contains(&cut) || cut == segment::MAGIC.len() as u64;
            prop_assert_eq!(damage.is_empty(), at_boundary);
            let end = recover(dir.path()).expect("recover");
            prop_assert_eq!(end.cut.is_none(), at_boundary);
            prop_assert_eq!(end.position.offset, if complete == 0 { segment::MAGIC.len() as u64 } else { ends[complete - 1] });
        }

        /// Flipping any byte after the header loses the record holding it and the rest of
        /// the segment, never an earlier record, and is always reported.
        #[test]
        fn corruption_is_detected(n in 1usize..40, at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let dir = tempfile::tempdir().expect("tempdir");
            let ends = journal(dir.path(), n);
            let path = segment::segment_path(dir.path(), 1);
            let mut bytes = std::fs::read(&path).expect("read");
            let at = segment::MAGIC.len() + at.index(bytes.len() - segment::MAGIC.len());
            bytes[at] ^= 1 << bit;
            std::fs::write(&path, bytes).expect("write");
            let intact = ends.iter().filter(|&&e| e <= at as u64).count();
            let (records, damage) = read_back(dir.path());
            prop_assert_eq!(records, (0..intact).map(upsert).collect::<Vec<_>>());
            prop_assert_eq!(damage.len(), 1);
        }
    }
}
