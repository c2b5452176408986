//! Exports of the journal for retraining and off-policy evaluation.
//!
//! - `dsjson`: Vowpal Wabbit's decision-service JSON (`--cb_explore_adf --dsjson`), one
//!   line per shown slot.
//! - `obp`: the Open Bandit Pipeline's logged bandit feedback as a NumPy `.npz`.
//!
//! Both stream the decisions (outcomes are collected first, see [`join`](super::join)),
//! and both report the IPW estimates of the logging policy and of its greedy part in the
//! [`Summary`], so an external tool's figure can be checked against nextbest's own.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, Write};
use std::path::Path;

use serde_json::{Map, Value as J, json};

use super::join::{Outcomes, Reward, SlotChoice, slot_choices};
use super::{DecisionRecord, Reader, Record};
use crate::catalog::Catalog;
use crate::schema::{AttrType, Feature};
use crate::storage::{Damage, Position};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Dsjson,
    Obp,
}

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub format: Format,
    /// Decisions at or after this time (ms), if set.
    pub from: Option<i64>,
    /// Decisions before this time (ms), if set.
    pub to: Option<i64>,
    pub reward: Reward,
    /// Outcomes count within this long after their decision (ms).
    pub window: i64,
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Decisions in the time range.
    pub decisions: u64,
    /// Rows written: one per shown, non-fallback slot.
    pub events: u64,
    /// Decisions with nothing to learn from (suppressed, or only a fallback shown).
    pub skipped: u64,
    /// Rows left out of an OBP export because their offer is not in the catalog.
    pub unknown_offers: u64,
    pub outcomes: u64,
    /// Mean reward of the rows: the IPW estimate of the logging policy itself.
    pub ipw_logging: f64,
    /// IPW estimate of always showing the best-scoring offer (no exploration).
    pub ipw_greedy: f64,
    /// Damage met while reading the journal (the rest of that segment was skipped).
    pub damage: Vec<String>,
}

/// Called with bytes read so far.
pub type Progress<'a> = &'a mut dyn FnMut(u64);

/// The total size of the journal's segments, for a progress bar.
pub fn journal_bytes(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    for s in crate::storage::segment::list(dir)? {
        total += std::fs::metadata(crate::storage::segment::segment_path(dir, s))?.len();
    }
    Ok(total)
}

/// Exports the journal in `dir` to `out`.
pub fn export(
    dir: &Path,
    catalog: &Catalog,
    options: &ExportOptions,
    out: &Path,
    progress: Progress<'_>,
) -> io::Result<Summary> {
    let outcomes = Outcomes::collect(dir)?;
    let mut summary = Summary {
        outcomes: outcomes.count,
        ..Summary::default()
    };
    let mut sink: Box<dyn Sink> = match options.format {
        Format::Dsjson => Box::new(Dsjson {
            out: BufWriter::new(File::create(out)?),
            catalog,
        }),
        Format::Obp => Box::new(Obp::new(catalog, out)?),
    };
    let sizes = segment_offsets(dir)?;
    let mut reader = Reader::open(dir, Position::default())?;
    let (mut ipw, mut greedy) = (0.0, 0.0);
    let mut n = 0u64;
    while let Some((at, _, record)) = reader.next_record()? {
        if n.is_multiple_of(4096) {
            progress(sizes.get(&at.segment).copied().unwrap_or(0) + at.offset);
        }
        n += 1;
        let Record::Decision(d) = record else {
            continue;
        };
        if options.from.is_some_and(|f| d.at < f) || options.to.is_some_and(|t| d.at >= t) {
            continue;
        }
        summary.decisions += 1;
        let choices = slot_choices(&d);
        if choices.is_empty() {
            summary.skipped += 1;
            continue;
        }
        for choice in &choices {
            let offer = &d.candidates[choice.actions[choice.chosen]].offer;
            let reward = outcomes.reward(&d, offer, options.window, options.reward);
            if !sink.write(&d, choice, reward)? {
                summary.unknown_offers += 1;
                continue;
            }
            summary.events += 1;
            let p = choice.probabilities[choice.chosen];
            ipw += reward;
            if choice.chosen == choice.best {
                greedy += reward / p;
            }
        }
    }
    progress(journal_bytes(dir)?);
    sink.finish(&mut summary)?;
    if summary.events > 0 {
        summary.ipw_logging = ipw / summary.events as f64;
        summary.ipw_greedy = greedy / summary.events as f64;
    }
    summary.damage = outcomes
        .damage
        .iter()
        .chain(&reader.damage)
        .map(Damage::to_string)
        .collect();
    Ok(summary)
}

fn segment_offsets(dir: &Path) -> io::Result<BTreeMap<u64, u64>> {
    let mut out = BTreeMap::new();
    let mut total = 0;
    for s in crate::storage::segment::list(dir)? {
        out.insert(s, total);
        total += std::fs::metadata(crate::storage::segment::segment_path(dir, s))?.len();
    }
    Ok(out)
}

trait Sink {
    /// Writes one row; `false` if it cannot be represented (and was not written).
    fn write(&mut self, d: &DecisionRecord, choice: &SlotChoice, reward: f64) -> io::Result<bool>;
    fn finish(self: Box<Self>, summary: &mut Summary) -> io::Result<()>;
}

/// Shared features: one namespace per entity. Numbers stay numbers, strings and enum
/// values become `name=value` indicator features, set members `name=member`, and
/// timestamps the signed number of days from the decision (`name_days`).
fn shared_features(d: &DecisionRecord) -> Map<String, J> {
    let mut namespaces: BTreeMap<&str, Map<String, J>> = BTreeMap::new();
    for (name, feature) in &d.features {
        let (entity, attr) = name.split_once('.').unwrap_or(("context", name));
        let ns = namespaces.entry(entity).or_default();
        match feature {
            Feature::Bool(b) => {
                ns.insert(attr.to_string(), json!(if *b { 1 } else { 0 }));
            }
            Feature::Int(i) => {
                ns.insert(attr.to_string(), json!(i));
            }
            Feature::Float(x) => {
                ns.insert(attr.to_string(), json!(x));
            }
            Feature::Str(s) | Feature::Enum(s) => {
                ns.insert(format!("{attr}={s}"), json!(1));
            }
            Feature::Set(items) => {
                for item in items {
                    ns.insert(format!("{attr}={item}"), json!(1));
                }
            }
            Feature::Timestamp(ms) => {
                ns.insert(
                    format!("{attr}_days"),
                    json!((*ms - d.at) as f64 / 86_400_000.0),
                );
            }
        }
    }
    let mut c = Map::new();
    c.insert(
        "placement".into(),
        json!({ format!("id={}", d.placement): 1, format!("channel={}", d.channel): 1 }),
    );
    for (entity, ns) in namespaces {
        c.insert(entity.to_string(), J::Object(ns));
    }
    c
}

/// Action features: the offer's id, group and tags (from the current catalog when it
/// still has the offer), and the score the policy gave it.
fn action_features(catalog: &Catalog, d: &DecisionRecord, candidate: usize) -> J {
    let c = &d.candidates[candidate];
    let mut offer = Map::new();
    offer.insert(format!("id={}", c.offer), json!(1));
    if let Some(g) = &c.group {
        offer.insert(format!("group={g}"), json!(1));
    }
    if let Some(o) = catalog.offer(&c.offer) {
        for tag in &catalog.offers[o].tags {
            offer.insert(format!("tag={tag}"), json!(1));
        }
    }
    json!({ "offer": offer, "policy": { "score": c.score } })
}

struct Dsjson<'a> {
    out: BufWriter<File>,
    catalog: &'a Catalog,
}

impl Sink for Dsjson<'_> {
    fn write(&mut self, d: &DecisionRecord, choice: &SlotChoice, reward: f64) -> io::Result<bool> {
        // Action ids are 1-based positions in `_multi`; `a` lists the chosen one first
        // and `p` gives the policy's probability of each id in `a`'s order.
        let chosen = choice.chosen + 1;
        let mut a = vec![chosen];
        a.extend((1..=choice.actions.len()).filter(|&id| id != chosen));
        let p: Vec<f64> = a.iter().map(|id| choice.probabilities[id - 1]).collect();
        let mut c = shared_features(d);
        c.insert(
            "_multi".into(),
            choice
                .actions
                .iter()
                .map(|&i| action_features(self.catalog, d, i))
                .collect(),
        );
        let id = d.decision_id();
        let event_id = if choice.slot == 0 {
            id.to_string()
        } else {
            format!("{id}-{}", choice.slot)
        };
        let timestamp = jiff::Timestamp::from_millisecond(d.at)
            .map(|t| t.to_string())
            .unwrap_or_default();
        // The keys in the order the decision service writes them (tools that sniff
        // lines look for `{"_label_cost":` at the start).
        let cost = if reward == 0.0 { 0.0 } else { -reward };
        let fields: [(&str, J); 10] = [
            ("_label_cost", json!(cost)),
            ("_label_probability", json!(p[0])),
            ("_label_Action", json!(chosen)),
            ("_labelIndex", json!(chosen - 1)),
            ("Timestamp", json!(timestamp)),
            ("Version", json!("1")),
            ("EventId", json!(event_id)),
            ("a", json!(a)),
            ("c", J::Object(c)),
            ("p", json!(p)),
        ];
        for (i, (name, value)) in fields.iter().enumerate() {
            self.out.write_all(if i == 0 { b"{" } else { b"," })?;
            serde_json::to_writer(&mut self.out, name)?;
            self.out.write_all(b":")?;
            serde_json::to_writer(&mut self.out, value)?;
        }
        self.out.write_all(b"}\n")?;
        Ok(true)
    }

    fn finish(mut self: Box<Self>, _: &mut Summary) -> io::Result<()> {
        self.out.flush()
    }
}

/// One numeric context column of the OBP export.
enum Column {
    Number(String),
    Indicator(String, String),
    Days(String),
}

/// Open Bandit Pipeline's logged bandit feedback: `n_rounds`, `n_actions`, `action`,
/// `position`, `reward`, `pscore`, `context` (n_rounds × dim) and `action_context`
/// (n_actions × n_actions, one-hot offer ids). Actions are the catalog's offer indexes.
/// Context columns come from the schema: numbers and bools as they are (0 when unset),
/// one indicator per enum value, days from the decision for timestamps; free strings and
/// sets are left out. Context rows are spooled to a temporary file while streaming.
struct Obp<'a> {
    catalog: &'a Catalog,
    out: &'a Path,
    columns: Vec<Column>,
    action: Vec<i64>,
    position: Vec<i64>,
    reward: Vec<f64>,
    pscore: Vec<f64>,
    context: BufWriter<File>,
}

impl<'a> Obp<'a> {
    fn new(catalog: &'a Catalog, out: &'a Path) -> io::Result<Obp<'a>> {
        let mut columns = Vec::new();
        for (entity, schema) in [
            ("customer", &catalog.schema.customer),
            ("context", &catalog.schema.context),
        ] {
            for attr in schema.attributes() {
                let name = format!("{entity}.{}", attr.name);
                match &attr.ty {
                    AttrType::Bool | AttrType::Int | AttrType::Float => {
                        columns.push(Column::Number(name))
                    }
                    AttrType::Enum(def) => {
                        for v in def.variants.iter() {
                            columns.push(Column::Indicator(name.clone(), v.to_string()));
                        }
                    }
                    AttrType::Timestamp => columns.push(Column::Days(name)),
                    AttrType::String | AttrType::Set => {}
                }
            }
        }
        Ok(Obp {
            catalog,
            out,
            columns,
            action: Vec::new(),
            position: Vec::new(),
            reward: Vec::new(),
            pscore: Vec::new(),
            context: BufWriter::new(tempfile::tempfile()?),
        })
    }
}

impl Sink for Obp<'_> {
    fn write(&mut self, d: &DecisionRecord, choice: &SlotChoice, reward: f64) -> io::Result<bool> {
        let offer = &d.candidates[choice.actions[choice.chosen]].offer;
        let Some(action) = self.catalog.offer(offer) else {
            return Ok(false);
        };
        self.action.push(action as i64);
        self.position.push(i64::from(choice.slot));
        self.reward.push(reward);
        self.pscore.push(choice.probabilities[choice.chosen]);
        let find = |name: &str| d.features.iter().find(|(n, _)| n == name).map(|(_, f)| f);
        for column in &self.columns {
            let x = match column {
                Column::Number(name) => match find(name) {
                    Some(Feature::Bool(b)) => f64::from(u8::from(*b)),
                    Some(Feature::Int(i)) => *i as f64,
                    Some(Feature::Float(x)) => *x,
                    _ => 0.0,
                },
                Column::Indicator(name, value) => match find(name) {
                    Some(Feature::Enum(v)) if v == value => 1.0,
                    _ => 0.0,
                },
                Column::Days(name) => match find(name) {
                    Some(Feature::Timestamp(ms)) => (*ms - d.at) as f64 / 86_400_000.0,
                    _ => 0.0,
                },
            };
            self.context.write_all(&x.to_le_bytes())?;
        }
        Ok(true)
    }

    fn finish(self: Box<Self>, _: &mut Summary) -> io::Result<()> {
        use zip::write::SimpleFileOptions;
        let n = self.action.len();
        let n_actions = self.catalog.offers.len();
        let options = SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(true);
        let mut zip = zip::ZipWriter::new(File::create(self.out)?);
        let mut entry =
            |name: &str, descr: &str, shape: &[usize], data: &mut dyn Read| -> io::Result<()> {
                zip.start_file(format!("{name}.npy"), options)
                    .map_err(io::Error::other)?;
                zip.write_all(&npy_header(descr, shape))?;
                io::copy(data, &mut zip)?;
                Ok(())
            };
        let le_i64 = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let le_f64 = |v: &[f64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        entry("n_rounds", "<i8", &[], &mut &(n as i64).to_le_bytes()[..])?;
        entry(
            "n_actions",
            "<i8",
            &[],
            &mut &(n_actions as i64).to_le_bytes()[..],
        )?;
        entry("action", "<i8", &[n], &mut &le_i64(&self.action)[..])?;
        entry("position", "<i8", &[n], &mut &le_i64(&self.position)[..])?;
        entry("reward", "<f8", &[n], &mut &le_f64(&self.reward)[..])?;
        entry("pscore", "<f8", &[n], &mut &le_f64(&self.pscore)[..])?;
        let mut context = self.context.into_inner().map_err(|e| e.into_error())?;
        context.rewind()?;
        entry("context", "<f8", &[n, self.columns.len()], &mut context)?;
        let identity: Vec<f64> = (0..n_actions * n_actions)
            .map(|i| {
                if i / n_actions == i % n_actions {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        entry(
            "action_context",
            "<f8",
            &[n_actions, n_actions],
            &mut &le_f64(&identity)[..],
        )?;
        zip.finish().map_err(io::Error::other)?;
        Ok(())
    }
}

/// A NumPy `.npy` v1.0 header for a C-ordered array.
fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let shape = match shape {
        [] => "()".to_string(),
        [n] => format!("({n},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + dict + '\n' is a multiple of 64.
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}
