//! The YAML decoding toolkit every catalog file is read with: parsing with positions,
//! the locations of nodes, and typed getters over a mapping's keys.
//!
//! One convention for every key, whatever its type:
//! - [`Fields::required`] reports a missing key ([`CatalogError::MissingKey`]);
//!   [`Fields::optional`] gives `None` for it, silently, and the caller picks the default.
//! - A value that is present but wrong is reported ([`CatalogError::Invalid`], at the
//!   value) by both, and gives `None`: the caller goes on with its default so that the
//!   rest of the item is still checked, and the catalog is not built anyway.
//!
//! What a value must be is its type's [`Decode`] impl: add a type (a newtype for a
//! constrained number, say) rather than a helper that checks for the key again.
//!
//! This module knows YAML and positions, not the catalog's grammars: those are the
//! sibling modules, one per file.

use std::collections::HashMap;
use std::str::FromStr;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode, MarkedSequenceNode};
use marked_yaml::{LoaderOptions, Node, Span};

use crate::catalog::diag::scalar_location;
use crate::catalog::{
    CatalogError, Context, Diagnostic, Expected, FirstDefined, Kind, Location, Related, SourceFile,
    YamlError,
};
use crate::expr::{self, ExprKind, did_you_mean};

/// The catalog's files and every error found in them so far.
#[derive(Debug, Default)]
pub(super) struct Decoder {
    pub files: Vec<SourceFile>,
    pub diags: Vec<Diagnostic>,
}

impl Decoder {
    /// Takes `file` in; nodes parsed from it carry the index returned.
    pub fn add(&mut self, file: SourceFile) -> usize {
        self.files.push(file);
        self.files.len() - 1
    }

    pub fn error(&mut self, location: Option<Location>, error: CatalogError) {
        self.error_related(location, error, None);
    }

    /// Reports `error` with a second place it involves (see [`Related`]).
    pub fn error_related(
        &mut self,
        location: Option<Location>,
        error: CatalogError,
        related: Option<Related>,
    ) {
        self.diags.push(Diagnostic {
            error,
            location,
            related,
        });
    }

    /// Parses a file whose top level must be a mapping. An error is reported, and returned
    /// too, so that a caller can tell a duplicate key from a file that is not YAML.
    pub fn parse(&mut self, file: usize) -> Result<MarkedMappingNode, YamlError> {
        let options = LoaderOptions::default().error_on_duplicate_keys(true);
        let (location, error, related) = match marked_yaml::parse_yaml_with_options(
            file,
            self.files[file].text.as_ref(),
            options,
        ) {
            Ok(Node::Mapping(m)) => return Ok(m),
            Ok(other) => (node_loc(&other), YamlError::TopLevelNotMapping, None),
            Err(e) => {
                let (marker, error) = yaml_error(&e);
                let location = marker.map(|m| Location {
                    file,
                    line: m.line(),
                    column: m.column(),
                    len: 1,
                });
                // The first of two keys, underlined as the second is not: its scalar is
                // at hand here, where the scanner's marker is all the second has.
                let related = match &e {
                    marked_yaml::LoadError::DuplicateKey(inner) => {
                        scalar_loc(&inner.prev_key).map(Related::first_defined)
                    }
                    _ => None,
                };
                (location, error, related)
            }
        };
        self.error_related(location, CatalogError::Yaml(error.clone()), related);
        Err(error)
    }

    /// The file parsed again with the last of duplicate keys winning, reporting nothing:
    /// only for the offer names of a file [`parse`](Self::parse) refused for a duplicate
    /// key. The only second parse of any file.
    pub fn parse_allowing_duplicates(&self, file: usize) -> Option<MarkedMappingNode> {
        match marked_yaml::parse_yaml(file, self.files[file].text.as_ref()) {
            Ok(Node::Mapping(m)) => Some(m),
            _ => None,
        }
    }

    /// The keys of `map`, in `context`. Keys not in `allowed` are reported, each with the
    /// allowed key closest to it.
    pub fn fields<'n>(
        &mut self,
        map: &'n MarkedMappingNode,
        context: Context,
        allowed: &[&str],
    ) -> Fields<'n> {
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                self.error(
                    scalar_loc(key),
                    CatalogError::UnknownKey {
                        key: key.to_string(),
                        context: context.clone(),
                        suggestion: did_you_mean(key, allowed.iter().copied()),
                    },
                );
            }
        }
        Fields { map, context }
    }

    /// `node`, the value of `key` in `context`, as a `T`; reported when it is not one.
    pub fn decode<'n, T: Decode<'n>>(
        &mut self,
        node: &'n Node,
        key: &str,
        context: &Context,
    ) -> Option<T> {
        T::decode(self, node, key, context)
    }

    /// Reports that `node`, the value of `key` in `context`, is not what it must be.
    pub fn invalid(&mut self, node: &Node, key: &str, context: &Context, expected: Expected) {
        self.error(
            node_loc(node),
            CatalogError::Invalid {
                key: key.to_string(),
                context: context.clone(),
                expected,
            },
        );
    }

    /// Where an item that is defined again was first defined, for the message.
    pub fn first_defined(&self, at: Option<Location>) -> FirstDefined {
        match at {
            Some(l) => FirstDefined::At {
                path: self.files[l.file].path.clone(),
                line: l.line,
                column: l.column,
            },
            None => FirstDefined::Unknown,
        }
    }

    /// The location of byte span `span` of the expression held in scalar `s`: exact
    /// through plain, quoted and block scalars (see [`scalar_location`]).
    pub fn in_scalar(
        &self,
        s: &MarkedScalarNode,
        span: std::ops::Range<usize>,
    ) -> Option<Location> {
        let m = s.span().start()?;
        let file = m.source();
        let text = &self.files[file].text;
        // The marker counts characters; the expression's spans are bytes.
        let start = text
            .char_indices()
            .nth(m.character())
            .map_or(text.len(), |(b, _)| b);
        Some(scalar_location(file, text, start, s.as_str(), span))
    }
}

/// The keys of one YAML mapping, read through typed getters (see the module's doc for
/// their one convention), and where they are for messages.
#[derive(Debug)]
pub(super) struct Fields<'n> {
    map: &'n MarkedMappingNode,
    context: Context,
}

impl<'n> Fields<'n> {
    /// The same keys, named in `context` from now on: an item once its id is known.
    pub fn named(self, context: Context) -> Fields<'n> {
        Fields { context, ..self }
    }

    pub fn context(&self) -> &Context {
        &self.context
    }

    /// The value of `key` as a `T`; a missing key is reported, as a wrong value is.
    pub fn required<T: Decode<'n>>(&self, d: &mut Decoder, key: &'static str) -> Option<T> {
        let Some(node) = self.map.get_node(key) else {
            // At the mapping's first key: where the missing one would go.
            let location = match self.map.keys().next() {
                Some(first) => scalar_loc(first),
                None => loc(self.map.span(), 1),
            };
            d.error(
                location,
                CatalogError::MissingKey {
                    key,
                    context: self.context.clone(),
                },
            );
            return None;
        };
        d.decode(node, key, &self.context)
    }

    /// The value of `key` as a `T`, `None` when it is missing; a wrong value is reported.
    pub fn optional<T: Decode<'n>>(&self, d: &mut Decoder, key: &str) -> Option<T> {
        d.decode(self.map.get_node(key)?, key, &self.context)
    }
}

/// A type a YAML value decodes to, reporting why it cannot.
pub(super) trait Decode<'n>: Sized {
    /// `node`, the value of `key` in `context`, as `Self`, or `None` once reported.
    fn decode(d: &mut Decoder, node: &'n Node, key: &str, context: &Context) -> Option<Self>;
}

/// Any value, as written: for values whose type depends on another key.
impl<'n> Decode<'n> for &'n Node {
    fn decode(_: &mut Decoder, node: &'n Node, _: &str, _: &Context) -> Option<Self> {
        Some(node)
    }
}

impl<'n> Decode<'n> for &'n MarkedMappingNode {
    fn decode(d: &mut Decoder, node: &'n Node, key: &str, context: &Context) -> Option<Self> {
        let m = node.as_mapping();
        if m.is_none() {
            d.invalid(node, key, context, Expected::Mapping);
        }
        m
    }
}

impl<'n> Decode<'n> for &'n MarkedSequenceNode {
    fn decode(d: &mut Decoder, node: &'n Node, key: &str, context: &Context) -> Option<Self> {
        let s = node.as_sequence();
        if s.is_none() {
            d.invalid(node, key, context, Expected::List);
        }
        s
    }
}

/// A single value, kept with its position (rules, ids, references).
impl<'n> Decode<'n> for &'n MarkedScalarNode {
    fn decode(d: &mut Decoder, node: &'n Node, key: &str, context: &Context) -> Option<Self> {
        let s = node.as_scalar();
        if s.is_none() {
            d.invalid(node, key, context, Expected::Scalar);
        }
        s
    }
}

impl<'n> Decode<'n> for String {
    fn decode(d: &mut Decoder, node: &'n Node, key: &str, context: &Context) -> Option<Self> {
        d.decode::<&MarkedScalarNode>(node, key, context)
            .map(|s| s.to_string())
    }
}

/// `true` or `false`.
impl<'n> Decode<'n> for bool {
    fn decode(d: &mut Decoder, node: &'n Node, key: &str, context: &Context) -> Option<Self> {
        parse_scalar(d, node, key, context, Expected::Bool, parse_bool)
    }
}

/// A list of strings; an item that is not one is reported and left out.
impl<'n> Decode<'n> for Vec<String> {
    fn decode(d: &mut Decoder, node: &'n Node, key: &str, context: &Context) -> Option<Self> {
        let seq = d.decode::<&MarkedSequenceNode>(node, key, context)?;
        let mut out = Vec::with_capacity(seq.len());
        for item in seq.iter() {
            match item.as_scalar() {
                Some(s) => out.push(s.to_string()),
                None => d.invalid(item, key, context, Expected::Strings),
            }
        }
        Some(out)
    }
}

/// The id of an offer, placement, experiment or arm: letters, digits, `_`, `-` and `.`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Id<'n>(pub &'n MarkedScalarNode);

impl<'n> Decode<'n> for Id<'n> {
    fn decode(d: &mut Decoder, node: &'n Node, key: &str, context: &Context) -> Option<Self> {
        let s = d.decode::<&MarkedScalarNode>(node, key, context)?;
        let is_id = !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !is_id {
            d.invalid(node, key, context, Expected::Id);
            return None;
        }
        Some(Id(s))
    }
}

/// The items of a list of mappings; an item that is not a mapping is reported and left
/// out.
#[derive(Debug)]
pub(super) struct Items<'n> {
    pub maps: Vec<&'n MarkedMappingNode>,
    /// Every item was a mapping. When one was not, an id may be missing from the catalog
    /// because of that error, and references to it are not reported again.
    pub complete: bool,
}

impl<'n> Decode<'n> for Items<'n> {
    fn decode(d: &mut Decoder, node: &'n Node, key: &str, context: &Context) -> Option<Self> {
        let seq = d.decode::<&MarkedSequenceNode>(node, key, context)?;
        let maps: Vec<_> = seq
            .iter()
            .filter_map(|item| d.decode::<&MarkedMappingNode>(item, key, context))
            .collect();
        let complete = maps.len() == seq.len();
        Some(Items { maps, complete })
    }
}

/// A whole number of at least 1 (caps and budgets).
#[derive(Debug, Clone, Copy)]
pub(super) struct Count<T>(pub T);

impl<'n, T: FromStr + PartialOrd + From<u8>> Decode<'n> for Count<T> {
    fn decode(d: &mut Decoder, node: &'n Node, key: &str, context: &Context) -> Option<Self> {
        parse_scalar(d, node, key, context, Expected::Count, |s| {
            s.parse::<T>().ok().filter(|n| *n >= T::from(1)).map(Count)
        })
    }
}

/// A positive duration in ms, written as the rule language writes one (`7d`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Duration(pub i64);

impl<'n> Decode<'n> for Duration {
    fn decode(d: &mut Decoder, node: &'n Node, key: &str, context: &Context) -> Option<Self> {
        parse_scalar(d, node, key, context, Expected::Duration, |s| {
            parse_duration(s).map(Duration)
        })
    }
}

/// An RFC 3339 timestamp, in ms since the epoch.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timestamp(pub i64);

impl<'n> Decode<'n> for Timestamp {
    fn decode(d: &mut Decoder, node: &'n Node, key: &str, context: &Context) -> Option<Self> {
        parse_scalar(d, node, key, context, Expected::Timestamp, |s| {
            parse_timestamp(s).map(Timestamp)
        })
    }
}

/// A number from 0 to 1 (an epsilon).
#[derive(Debug, Clone, Copy)]
pub(super) struct Fraction(pub f64);

impl<'n> Decode<'n> for Fraction {
    fn decode(d: &mut Decoder, node: &'n Node, key: &str, context: &Context) -> Option<Self> {
        parse_scalar(d, node, key, context, Expected::Fraction, |s| {
            s.parse::<f64>()
                .ok()
                .filter(|x| (0.0..=1.0).contains(x))
                .map(Fraction)
        })
    }
}

/// A single value turned into a `T` by `parse`; `expected` is reported when it does not
/// parse. What the [`Decode`] impls of constrained values are made of.
pub(super) fn parse_scalar<T>(
    d: &mut Decoder,
    node: &Node,
    key: &str,
    context: &Context,
    expected: Expected,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Option<T> {
    let s = d.decode::<&MarkedScalarNode>(node, key, context)?;
    let v = parse(s.as_str());
    if v.is_none() {
        d.invalid(node, key, context, expected);
    }
    v
}

/// The ids of one kind read so far, and where, to refuse a second item with one.
#[derive(Debug)]
pub(super) struct Ids {
    kind: Kind,
    first: HashMap<String, Option<Location>>,
}

impl Ids {
    pub fn new(kind: Kind) -> Ids {
        Ids {
            kind,
            first: HashMap::new(),
        }
    }

    /// Takes `id` for the item being read; when an earlier item has it, reports the
    /// duplicate and says false.
    pub fn claim(&mut self, d: &mut Decoder, id: &MarkedScalarNode) -> bool {
        if let Some(&at) = self.first.get(id.as_str()) {
            let first = d.first_defined(at);
            d.error_related(
                scalar_loc(id),
                CatalogError::Duplicate {
                    kind: self.kind,
                    id: id.to_string(),
                    first,
                },
                at.map(Related::first_defined),
            );
            return false;
        }
        self.first.insert(id.to_string(), scalar_loc(id));
        true
    }
}

/// The location of a node: its start, underlined for the width of a one-line scalar.
pub(super) fn node_loc(n: &Node) -> Option<Location> {
    match n {
        Node::Scalar(s) => scalar_loc(s),
        other => loc(other.span(), 1),
    }
}

pub(super) fn scalar_loc(s: &MarkedScalarNode) -> Option<Location> {
    let width = if s.as_str().contains('\n') {
        1
    } else {
        s.as_str().chars().count()
    };
    loc(s.span(), width)
}

/// The start of `span`, underlined for `width` characters (at least 1).
pub(super) fn loc(span: &Span, width: usize) -> Option<Location> {
    let m = span.start()?;
    Some(Location {
        file: m.source(),
        line: m.line(),
        column: m.column(),
        len: width.max(1),
    })
}

pub(super) fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// `7d`, `12h`, `30m`, `45s`, `500ms`, as the rule language writes durations; positive.
pub fn parse_duration(s: &str) -> Option<i64> {
    match expr::parse(s.trim()) {
        Ok(e) => match e.kind {
            ExprKind::Duration(ms) if ms > 0 => Some(ms),
            _ => None,
        },
        Err(_) => None,
    }
}

/// An RFC 3339 timestamp (`2026-01-31T00:00:00Z`, any offset), in ms since the epoch.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    s.trim()
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

fn yaml_error(e: &marked_yaml::LoadError) -> (Option<marked_yaml::Marker>, YamlError) {
    use marked_yaml::LoadError::*;
    match e {
        TopLevelMustBeMapping(m) => (Some(*m), YamlError::TopLevelNotMapping),
        TopLevelMustBeSequence(m) => (Some(*m), YamlError::TopLevelNotList),
        UnexpectedAnchor(m) => (Some(*m), YamlError::Anchor),
        MappingKeyMustBeScalar(m) => (Some(*m), YamlError::KeyNotScalar),
        UnexpectedTag(m) => (Some(*m), YamlError::Tag),
        ScanError(m, inner) => (Some(*m), YamlError::Syntax(inner.info().to_string())),
        DuplicateKey(inner) => (
            inner.key.span().start().copied(),
            YamlError::DuplicateKey {
                key: inner.key.as_str().to_string(),
                first_line: inner.prev_key.span().start().map_or(0, |m| m.line()),
            },
        ),
        #[allow(unreachable_patterns)]
        _ => (None, YamlError::Other(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `key` of the mapping `yaml` with `get`, and returns the value and each
    /// error as `line:col: message`.
    fn read<T>(
        yaml: &str,
        get: impl for<'n> Fn(&Fields<'n>, &mut Decoder) -> Option<T>,
    ) -> (Option<T>, Vec<String>) {
        let mut d = Decoder::default();
        let file = d.add(SourceFile {
            path: "t.yaml".into(),
            text: yaml.into(),
        });
        let top = d.parse(file).expect("a mapping");
        let f = d.fields(
            &top,
            Context::File(crate::catalog::FileRole::Schema),
            &["a", "b"],
        );
        let value = get(&f, &mut d);
        let errors = d
            .diags
            .iter()
            .map(|e| {
                let l = e.location.expect("located");
                format!("{}:{}: {}", l.line, l.column, e.error)
            })
            .collect();
        (value, errors)
    }

    #[test]
    fn a_missing_key_is_an_error_only_when_required() {
        let (v, errors) = read("b: 1\n", |f, d| f.optional::<Count<u32>>(d, "a"));
        assert!(v.is_none());
        assert_eq!(errors, [""; 0]);
        let (v, errors) = read("b: 1\n", |f, d| f.required::<Count<u32>>(d, "a"));
        assert!(v.is_none());
        assert_eq!(errors, ["1:1: missing required key `a` in schema.yaml"]);
    }

    #[test]
    fn a_wrong_value_is_an_error_either_way() {
        for required in [false, true] {
            let (v, errors) = read("a: 0\n", |f, d| {
                if required {
                    f.required::<Count<u32>>(d, "a")
                } else {
                    f.optional::<Count<u32>>(d, "a")
                }
            });
            assert!(v.is_none());
            assert_eq!(
                errors,
                ["1:4: `a` in schema.yaml must be a whole number of at least 1"]
            );
        }
        let (v, errors) = read("a: [1]\n", |f, d| f.optional::<Duration>(d, "a"));
        assert!(v.is_none());
        assert_eq!(errors, ["1:4: `a` in schema.yaml must be a single value"]);
    }

    #[test]
    fn values_decode_to_their_types() {
        let (v, errors) = read("a: 7d\n", |f, d| f.required::<Duration>(d, "a"));
        assert_eq!((v.map(|d| d.0), errors.len()), (Some(7 * 86_400_000), 0));
        let (v, errors) = read("a: [x, [y], z]\n", |f, d| f.optional::<Vec<String>>(d, "a"));
        assert_eq!(v, Some(vec!["x".to_string(), "z".to_string()]));
        assert_eq!(
            errors,
            ["1:8: `a` in schema.yaml must be a list of strings"]
        );
        let (v, errors) = read("a: [{ b: 1 }, 2]\n", |f, d| {
            f.required::<Items>(d, "a")
                .map(|items| (items.maps.len(), items.complete))
        });
        assert_eq!(v, Some((1, false)));
        assert_eq!(errors, ["1:15: `a` in schema.yaml must be a mapping"]);
    }

    #[test]
    fn unknown_keys_are_reported_with_the_closest_allowed_one() {
        let (_, errors) = read("a: 1\nbb: 2\n", |_, _| None::<()>);
        assert_eq!(errors, ["2:1: unknown key `bb` in schema.yaml"]);
        let mut d = Decoder::default();
        let file = d.add(SourceFile {
            path: "t.yaml".into(),
            text: "bb: 1\n".into(),
        });
        let top = d.parse(file).expect("a mapping");
        d.fields(&top, Context::ContactPolicy, &["b"]);
        assert_eq!(
            d.diags[0].error.help().as_deref(),
            Some("did you mean `b`?")
        );
    }
}
