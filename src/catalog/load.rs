//! YAML files to a [`Catalog`]: read, parse with positions, decode, validate, compile.
//!
//! Decoding walks `marked_yaml` nodes by hand rather than through serde so that one pass
//! can report every error (an unknown key, a wrong type, a dangling reference) with its
//! own position instead of stopping at the first.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode, MarkedSequenceNode};
use marked_yaml::{LoaderOptions, Node};
use sha2::{Digest, Sha256};

use super::diag::scalar_location;
use super::*;
use crate::expr::{self, ExprError, ExprKind, Vocabulary, did_you_mean};
use crate::schema::{AttrType, Attribute, EntitySchema, EnumDef, Value, key};

/// The catalog files, by role. `path`s are what messages show.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub schema: Option<SourceFile>,
    pub placements: Option<SourceFile>,
    pub experiments: Option<SourceFile>,
    pub offers: Vec<SourceFile>,
}

impl Catalog {
    /// Loads the catalog in `dir` (`schema.yaml`, `placements.yaml`, optional
    /// `experiments.yaml`, `offers/*.yaml`), or every error it has.
    pub fn load(dir: impl AsRef<Path>) -> Result<Catalog, LoadErrors> {
        let dir = dir.as_ref();
        let mut io_errors = Vec::new();
        let mut read = |name: &Path, required: bool| -> Option<SourceFile> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => Some(SourceFile {
                    path: path.display().to_string(),
                    text: text.into(),
                }),
                Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    io_errors.push(CatalogError::Io {
                        path: path.display().to_string(),
                        message: e.to_string(),
                    });
                    None
                }
            }
        };
        let mut sources = Sources {
            schema: read(Path::new("schema.yaml"), true),
            placements: read(Path::new("placements.yaml"), true),
            experiments: read(Path::new("experiments.yaml"), false),
            offers: Vec::new(),
        };
        let offers_dir = dir.join("offers");
        match std::fs::read_dir(&offers_dir) {
            Ok(entries) => {
                let mut names: Vec<_> = entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                    .collect();
                names.sort();
                for p in names {
                    let rel = p.strip_prefix(dir).unwrap_or(&p).to_path_buf();
                    sources.offers.extend(read(&rel, true));
                }
            }
            Err(e) => io_errors.push(CatalogError::Io {
                path: offers_dir.display().to_string(),
                message: e.to_string(),
            }),
        }
        let result = Catalog::from_sources(sources);
        if io_errors.is_empty() {
            return result;
        }
        let mut errors = result.err().unwrap_or(LoadErrors {
            diagnostics: Vec::new(),
            files: Vec::new(),
        });
        let io = io_errors.into_iter().map(|error| Diagnostic {
            error,
            location: None,
        });
        errors.diagnostics.splice(0..0, io);
        Err(errors)
    }

    /// Builds a catalog from file contents already in memory.
    pub fn from_sources(sources: Sources) -> Result<Catalog, LoadErrors> {
        let mut l = Loader::default();
        let version = version(&sources);
        let schema_file = sources.schema.map(|f| l.add(f));
        let placements_file = sources.placements.map(|f| l.add(f));
        let experiments_file = sources.experiments.map(|f| l.add(f));
        let offer_files: Vec<usize> = sources.offers.into_iter().map(|f| l.add(f)).collect();

        let schema = schema_file.and_then(|f| l.schema(f));
        // Rules are only checked against a schema that loaded cleanly; against a broken one
        // every rule would report the schema's mistakes again.
        let schema_ok = schema.is_some() && l.diags.is_empty();
        let schema =
            schema.unwrap_or_else(|| Schema::new(EntitySchema::default(), EntitySchema::default()));
        let ctx = RuleCtx {
            schema: &schema,
            check: schema_ok,
            vocabulary: l.vocabulary(&offer_files),
        };

        let experiments = experiments_file
            .map(|f| l.experiments(f, &ctx))
            .unwrap_or_default();
        let (placements, policy) = placements_file
            .map(|f| l.placements(f, &ctx, &experiments))
            .unwrap_or_default();
        l.placements_incomplete |= placements_file.is_none();
        let mut offers = Vec::new();
        let mut seen = HashMap::new();
        for f in offer_files {
            l.offers(f, &ctx, &placements, &mut offers, &mut seen);
        }
        l.key_collisions(&offers);
        let mut placements = l.resolve_placements(placements, &offers);

        if !l.diags.is_empty() {
            // In file order, then by position, as a reader goes through them.
            l.diags
                .sort_by_key(|d| d.location.map(|loc| (loc.file, loc.line, loc.column)));
            return Err(LoadErrors {
                diagnostics: l.diags,
                files: l.files,
            });
        }
        // Every rule compiled: split them into clauses shared across offers.
        let mut clauses = expr::SharedClauses::default();
        let mut offers: Vec<Offer> = offers.into_iter().map(|o| o.offer).collect();
        for offer in &mut offers {
            if let Some(src) = &offer.eligibility_src {
                offer.clauses =
                    clauses.split(&offer.eligibility, src, &schema, Some(&ctx.vocabulary));
            }
        }
        let mut formulas = expr::SharedFormulas::default();
        plan::build(&mut placements, &offers, &policy, &mut formulas);
        let (by_id, by_key) = Catalog::index_offers(&offers);
        Ok(Catalog {
            by_id,
            by_key,
            version: version.into(),
            schema,
            offers,
            placements,
            experiments: experiments.into_iter().map(|(e, _)| e).collect(),
            policy,
            clauses,
            formulas,
        })
    }

    /// Builds a catalog from YAML strings (tests and tools); paths are named after roles.
    pub fn from_yaml(
        schema: &str,
        placements: &str,
        experiments: &str,
        offers: &[&str],
    ) -> Result<Catalog, LoadErrors> {
        let file = |path: String, text: &str| SourceFile {
            path,
            text: Arc::from(text),
        };
        Catalog::from_sources(Sources {
            schema: Some(file("schema.yaml".into(), schema)),
            placements: Some(file("placements.yaml".into(), placements)),
            experiments: Some(file("experiments.yaml".into(), experiments)),
            offers: offers
                .iter()
                .enumerate()
                .map(|(i, t)| file(format!("offers/{i}.yaml"), t))
                .collect(),
        })
    }
}

/// A short content hash over every file, names included, in a fixed order.
fn version(sources: &Sources) -> String {
    let mut h = Sha256::new();
    let files = [&sources.schema, &sources.placements, &sources.experiments]
        .into_iter()
        .flatten()
        .chain(&sources.offers);
    for f in files {
        let name = Path::new(&f.path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        h.update(name.as_bytes());
        h.update([0]);
        h.update(f.text.as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

struct RuleCtx<'s> {
    schema: &'s Schema,
    /// False when the schema has errors: rules are then not compiled.
    check: bool,
    /// Every offer id and group, for the names history functions use.
    vocabulary: Vocabulary,
}

/// A placement before its fallback offer is resolved.
struct PendingPlacement {
    placement: Placement,
    fallback: Option<(String, Option<Location>)>,
}

struct LoadedOffer {
    offer: Offer,
}

#[derive(Default)]
struct Loader {
    files: Vec<SourceFile>,
    diags: Vec<Diagnostic>,
    /// Some placement (or offer) could not be read at all: its file did not parse, or an
    /// item had no valid id. A reference to an unknown id may then be to that one, and is
    /// not reported: the error that caused it already is. Other errors (a bad rule, a bad
    /// value) leave the item loaded and its id known.
    placements_incomplete: bool,
    offers_incomplete: bool,
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !matches!(s, "true" | "false" | "in")
}

/// Ids of offers, placements, experiments and arms: letters, digits, `_`, `-` and `.`.
fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl Loader {
    fn add(&mut self, file: SourceFile) -> usize {
        self.files.push(file);
        self.files.len() - 1
    }

    fn error(&mut self, location: Option<Location>, error: CatalogError) {
        self.diags.push(Diagnostic { error, location });
    }

    /// Reports `id` as a duplicate if it was `first` defined somewhere; says whether it was.
    fn duplicate(
        &mut self,
        kind: &str,
        id: &MarkedScalarNode,
        first: Option<Option<Location>>,
    ) -> bool {
        let Some(first) = first else { return false };
        let (first, loc) = (self.render(first), self.scalar_loc(id));
        self.error(
            loc,
            CatalogError::Duplicate {
                kind: kind.into(),
                id: id.to_string(),
                first,
            },
        );
        true
    }

    fn byte_of(&self, file: usize, character: usize) -> usize {
        let text = &self.files[file].text;
        text.char_indices()
            .nth(character)
            .map_or(text.len(), |(b, _)| b)
    }

    /// The location of a node: its start, underlined for the width of a scalar.
    fn loc(&self, span: &marked_yaml::Span, width: usize) -> Option<Location> {
        let m = span.start()?;
        Some(Location {
            file: m.source(),
            line: m.line(),
            column: m.column(),
            len: width.max(1),
        })
    }

    fn scalar_loc(&self, s: &MarkedScalarNode) -> Option<Location> {
        let width = if s.as_str().contains('\n') {
            1
        } else {
            s.as_str().chars().count()
        };
        self.loc(s.span(), width)
    }

    fn node_loc(&self, n: &Node) -> Option<Location> {
        match n {
            Node::Scalar(s) => self.scalar_loc(s),
            other => self.loc(other.span(), 1),
        }
    }

    fn render(&self, loc: Option<Location>) -> String {
        match loc {
            Some(l) => format!("{}:{}:{}", self.files[l.file].path, l.line, l.column),
            None => "?".to_string(),
        }
    }

    /// Parses a file whose top level is a mapping.
    fn parse(&mut self, file: usize) -> Option<MarkedMappingNode> {
        let options = LoaderOptions::default().error_on_duplicate_keys(true);
        match marked_yaml::parse_yaml_with_options(file, self.files[file].text.as_ref(), options) {
            Ok(Node::Mapping(m)) => Some(m),
            Ok(other) => {
                let loc = self.node_loc(&other);
                self.error(
                    loc,
                    CatalogError::Yaml {
                        message: "the top level must be a mapping".into(),
                    },
                );
                None
            }
            Err(e) => {
                let (marker, message) = yaml_error(&e);
                let loc = marker.map(|m| Location {
                    file,
                    line: m.line(),
                    column: m.column(),
                    len: 1,
                });
                self.error(loc, CatalogError::Yaml { message });
                None
            }
        }
    }

    /// Reports keys of `map` not in `allowed`, and returns `map`'s lookups.
    fn keys<'n>(
        &mut self,
        map: &'n MarkedMappingNode,
        context: &str,
        allowed: &[&str],
    ) -> Fields<'n> {
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                let loc = self.scalar_loc(key);
                self.error(
                    loc,
                    CatalogError::UnknownKey {
                        key: key.to_string(),
                        context: context.to_string(),
                        suggestion: did_you_mean(key, allowed.iter().copied()),
                    },
                );
            }
        }
        Fields {
            map,
            context: context.to_string(),
        }
    }

    fn invalid(&mut self, node: &Node, key: &str, context: &str, expected: &str) {
        let loc = self.node_loc(node);
        self.error(
            loc,
            CatalogError::Invalid {
                key: key.to_string(),
                context: context.to_string(),
                expected: expected.to_string(),
            },
        );
    }

    fn missing(&mut self, f: &Fields<'_>, key: &str) {
        // At the mapping's first key: where the missing one would go.
        let loc = match f.map.keys().next() {
            Some(first) => self.scalar_loc(first),
            None => self.loc(f.map.span(), 1),
        };
        self.error(
            loc,
            CatalogError::MissingKey {
                key: key.to_string(),
                context: f.context.clone(),
            },
        );
    }

    fn mapping<'n>(
        &mut self,
        node: &'n Node,
        key: &str,
        context: &str,
    ) -> Option<&'n MarkedMappingNode> {
        let m = node.as_mapping();
        if m.is_none() {
            self.invalid(node, key, context, "a mapping");
        }
        m
    }

    fn sequence<'n>(
        &mut self,
        node: &'n Node,
        key: &str,
        context: &str,
    ) -> Option<&'n MarkedSequenceNode> {
        let s = node.as_sequence();
        if s.is_none() {
            self.invalid(node, key, context, "a list");
        }
        s
    }

    /// The mappings of the list under `key`. A missing key (when `required`), a value that
    /// is not a list, and items that are not mappings are reported and skipped.
    /// Says too whether every item was read: false for a missing or malformed list.
    fn list<'n>(
        &mut self,
        f: &Fields<'n>,
        key: &str,
        required: bool,
    ) -> (Vec<&'n MarkedMappingNode>, bool) {
        let Some(node) = f.map.get_node(key) else {
            if required {
                self.missing(f, key);
            }
            return (Vec::new(), !required);
        };
        let Some(seq) = self.sequence(node, key, &f.context) else {
            return (Vec::new(), false);
        };
        let maps: Vec<_> = seq
            .iter()
            .filter_map(|item| self.mapping(item, key, &f.context))
            .collect();
        let complete = maps.len() == seq.len();
        (maps, complete)
    }

    fn scalar<'n>(&mut self, f: &Fields<'n>, key: &str) -> Option<&'n MarkedScalarNode> {
        let node = f.map.get_node(key)?;
        let s = node.as_scalar();
        if s.is_none() {
            self.invalid(node, key, &f.context, "a single value");
        }
        s
    }

    fn string(&mut self, f: &Fields<'_>, key: &str) -> Option<String> {
        self.scalar(f, key).map(|s| s.to_string())
    }

    fn required_id<'n>(&mut self, f: &Fields<'n>, key: &str) -> Option<&'n MarkedScalarNode> {
        if f.map.get_node(key).is_none() {
            self.missing(f, key);
            return None;
        }
        let s = self.scalar(f, key)?;
        if !is_id(s) {
            let loc = self.scalar_loc(s);
            self.error(
                loc,
                CatalogError::Invalid {
                    key: key.into(),
                    context: f.context.clone(),
                    expected: "an id of letters, digits, `_`, `-` and `.`".into(),
                },
            );
            return None;
        }
        Some(s)
    }

    fn parsed<T>(
        &mut self,
        f: &Fields<'_>,
        key: &str,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        let s = self.scalar(f, key)?;
        let v = parse(s.as_str());
        if v.is_none() {
            let loc = self.scalar_loc(s);
            self.error(
                loc,
                CatalogError::Invalid {
                    key: key.into(),
                    context: f.context.clone(),
                    expected: expected.into(),
                },
            );
        }
        v
    }

    fn bool(&mut self, f: &Fields<'_>, key: &str) -> Option<bool> {
        self.parsed(f, key, "`true` or `false`", parse_bool)
    }

    fn count(&mut self, f: &Fields<'_>, key: &str) -> Option<u32> {
        if f.map.get_node(key).is_none() {
            self.missing(f, key);
            return None;
        }
        self.parsed(f, key, "a whole number of at least 1", |s| {
            s.parse::<u32>().ok().filter(|n| *n >= 1)
        })
    }

    fn duration(&mut self, f: &Fields<'_>, key: &str, required: bool) -> Option<i64> {
        if f.map.get_node(key).is_none() {
            if required {
                self.missing(f, key);
            }
            return None;
        }
        self.parsed(
            f,
            key,
            "a duration such as `7d`, `12h`, `30m`, `45s`",
            parse_duration,
        )
    }

    fn fraction(&mut self, f: &Fields<'_>, key: &str) -> Option<f64> {
        self.parsed(f, key, "a number from 0 to 1", |s| {
            s.parse::<f64>().ok().filter(|x| (0.0..=1.0).contains(x))
        })
    }

    fn string_list(&mut self, f: &Fields<'_>, key: &str) -> Vec<String> {
        let Some(node) = f.map.get_node(key) else {
            return Vec::new();
        };
        let Some(seq) = self.sequence(node, key, &f.context) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in seq.iter() {
            match item.as_scalar() {
                Some(s) => out.push(s.to_string()),
                None => self.invalid(item, key, &f.context, "a list of strings"),
            }
        }
        out
    }

    /// The error for an expression held in scalar `s`, at its exact line and column.
    fn rule_errors(
        &mut self,
        s: &MarkedScalarNode,
        errors: Vec<ExprError>,
        what: &str,
        owner: &str,
    ) {
        let Some(m) = s.span().start() else { return };
        let file = m.source();
        let start = self.byte_of(file, m.character());
        for error in errors {
            let loc = scalar_location(
                file,
                &self.files[file].text,
                start,
                s.as_str(),
                error.span(),
            );
            self.error(
                Some(loc),
                CatalogError::Rule {
                    what: what.to_string(),
                    owner: owner.to_string(),
                    error,
                },
            );
        }
    }

    /// A numeric field: a number or an expression; `default` when absent.
    fn formula(
        &mut self,
        ctx: &RuleCtx<'_>,
        f: &Fields<'_>,
        key: &str,
        owner: &str,
        allow_offer: bool,
        default: f64,
    ) -> Formula {
        self.optional_formula(ctx, f, key, owner, allow_offer)
            .unwrap_or_else(|| Formula::constant(default))
    }

    fn optional_formula(
        &mut self,
        ctx: &RuleCtx<'_>,
        f: &Fields<'_>,
        key: &str,
        owner: &str,
        allow_offer: bool,
    ) -> Option<Formula> {
        let s = self.scalar(f, key)?;
        if !ctx.check {
            return None;
        }
        match Formula::compile_with(s, ctx.schema, key, allow_offer, Some(&ctx.vocabulary)) {
            Ok(formula) => Some(formula),
            Err(errors) => {
                self.rule_errors(s, errors, key, owner);
                None
            }
        }
    }

    // ---- schema.yaml ----------------------------------------------------------------------

    fn schema(&mut self, file: usize) -> Option<Schema> {
        let top = self.parse(file)?;
        let top_fields = self.keys(&top, "schema.yaml", &["customer", "context"]);
        let mut entities = [EntitySchema::default(), EntitySchema::default()];
        for (i, name) in ["customer", "context"].into_iter().enumerate() {
            let Some(node) = top_fields.map.get_node(name) else {
                continue;
            };
            let Some(attrs) = self.mapping(node, name, "schema.yaml") else {
                continue;
            };
            for (attr_name, attr_node) in attrs.iter() {
                let qualified = format!("{name}.{}", attr_name.as_str());
                if !is_ident(attr_name) {
                    let loc = self.scalar_loc(attr_name);
                    self.error(
                        loc,
                        CatalogError::Invalid {
                            key: qualified.clone(),
                            context: "schema.yaml".into(),
                            expected:
                                "a name of letters, digits and `_`, not starting with a digit"
                                    .into(),
                        },
                    );
                    continue;
                }
                if let Some(attr) = self.attribute(attr_name, attr_node, &qualified) {
                    entities[i].push(attr);
                }
            }
        }
        let [customer, context] = entities;
        Some(Schema::new(customer, context))
    }

    fn attribute(
        &mut self,
        name: &MarkedScalarNode,
        node: &Node,
        qualified: &str,
    ) -> Option<Attribute> {
        let context = format!("attribute `{qualified}`");
        let map = self.mapping(node, qualified, "schema.yaml")?;
        let f = self.keys(map, &context, &["type", "values", "default", "description"]);
        let Some(ty_node) = self.scalar(&f, "type") else {
            if f.map.get_node("type").is_none() {
                self.missing(&f, "type");
            }
            return None;
        };
        const TYPES: [&str; 7] = ["bool", "int", "float", "string", "enum", "set", "timestamp"];
        let ty = match ty_node.as_str() {
            "bool" => AttrType::Bool,
            "int" => AttrType::Int,
            "float" => AttrType::Float,
            "string" => AttrType::String,
            "set" => AttrType::Set,
            "timestamp" => AttrType::Timestamp,
            "enum" => {
                let values = self.string_list(&f, "values");
                let mut unique = values.clone();
                unique.sort();
                unique.dedup();
                if values.is_empty()
                    || unique.len() != values.len()
                    || !values.iter().all(|v| !v.is_empty())
                {
                    let loc = f
                        .map
                        .get_node("values")
                        .map_or_else(|| self.loc(map.span(), 1), |n| self.node_loc(n));
                    self.error(
                        loc,
                        CatalogError::Invalid {
                            key: "values".into(),
                            context,
                            expected: "a non-empty list of distinct, non-empty strings".into(),
                        },
                    );
                    return None;
                }
                AttrType::Enum(EnumDef::new(values))
            }
            other => {
                let loc = self.scalar_loc(ty_node);
                self.error(
                    loc,
                    CatalogError::Invalid {
                        key: "type".into(),
                        context,
                        expected: format!(
                            "one of {}{}",
                            TYPES.join(", "),
                            did_you_mean(other, TYPES)
                                .map(|s| format!(" (did you mean `{s}`?)"))
                                .unwrap_or_default()
                        ),
                    },
                );
                return None;
            }
        };
        if !matches!(ty, AttrType::Enum(_))
            && let Some(n) = f.map.get_node("values")
        {
            self.invalid(n, "values", &context, "given only for `type: enum`");
        }
        let default = match f.map.get_node("default") {
            None => Value::Missing,
            Some(n) => match default_value(n, &ty) {
                Some(v) => v,
                None => {
                    self.invalid(
                        n,
                        "default",
                        &context,
                        &format!("a value of type `{}`", ty.name()),
                    );
                    Value::Missing
                }
            },
        };
        Some(Attribute {
            name: name.to_string(),
            ty,
            default,
            description: self.string(&f, "description"),
        })
    }

    // ---- experiments.yaml -----------------------------------------------------------------

    fn experiments(
        &mut self,
        file: usize,
        ctx: &RuleCtx<'_>,
    ) -> Vec<(Experiment, Option<Location>)> {
        let Some(top) = self.parse(file) else {
            return Vec::new();
        };
        let f = self.keys(&top, "experiments.yaml", &["experiments"]);
        let mut out: Vec<(Experiment, Option<Location>)> = Vec::new();
        for map in self.list(&f, "experiments", false).0 {
            let f = self.keys(
                map,
                "an experiment",
                &["id", "description", "epsilon", "window", "salt", "arms"],
            );
            let Some(id) = self.required_id(&f, "id") else {
                continue;
            };
            let owner = format!("experiment `{}`", id.as_str());
            if self.duplicate(
                "experiment",
                id,
                out.iter()
                    .find(|(e, _)| e.id == id.as_str())
                    .map(|(_, at)| *at),
            ) {
                continue;
            }
            let f = Fields {
                map,
                context: owner.clone(),
            };
            let epsilon = if f.map.get_node("epsilon").is_some() {
                self.fraction(&f, "epsilon")
            } else {
                Some(0.0)
            };
            let window = self.duration(&f, "window", false).unwrap_or(86_400_000);
            let salt = self.string(&f, "salt").unwrap_or_else(|| id.to_string());
            let arms = self.arms(ctx, &f, &owner);
            let loc = self.scalar_loc(id);
            out.push((
                Experiment {
                    id: id.to_string(),
                    description: self.string(&f, "description"),
                    epsilon: epsilon.unwrap_or(0.0),
                    window,
                    salt,
                    arms,
                },
                loc,
            ));
        }
        out
    }

    fn arms(&mut self, ctx: &RuleCtx<'_>, f: &Fields<'_>, owner: &str) -> Vec<Arm> {
        let Some(node) = f.map.get_node("arms") else {
            // No arms: everyone is in one champion arm.
            return vec![Arm {
                id: "champion".into(),
                share: 1.0,
                epsilon: None,
                score: None,
            }];
        };
        let Some(seq) = self.sequence(node, "arms", owner) else {
            return Vec::new();
        };
        let mut arms: Vec<Arm> = Vec::new();
        for item in seq.iter() {
            let Some(map) = self.mapping(item, "arms", owner) else {
                continue;
            };
            let af = self.keys(
                map,
                &format!("an arm of {owner}"),
                &["id", "share", "epsilon", "score", "description"],
            );
            let Some(id) = self.required_id(&af, "id") else {
                continue;
            };
            let arm_owner = format!("arm `{}` of {owner}", id.as_str());
            if arms.iter().any(|a| a.id == id.as_str()) {
                let loc = self.scalar_loc(id);
                self.error(
                    loc,
                    CatalogError::Duplicate {
                        kind: "arm".into(),
                        id: id.to_string(),
                        first: owner.to_string(),
                    },
                );
                continue;
            }
            let af = Fields {
                map,
                context: arm_owner.clone(),
            };
            if af.map.get_node("share").is_none() {
                self.missing(&af, "share");
            }
            let share = self.parsed(&af, "share", "a number above 0 and at most 1", |s| {
                s.parse::<f64>().ok().filter(|x| *x > 0.0 && *x <= 1.0)
            });
            let epsilon = if af.map.get_node("epsilon").is_some() {
                self.fraction(&af, "epsilon")
            } else {
                None
            };
            let score = self.optional_formula(ctx, &af, "score", &arm_owner, true);
            arms.push(Arm {
                id: id.to_string(),
                share: share.unwrap_or(0.0),
                epsilon,
                score,
            });
        }
        let total: f64 = arms.iter().map(|a| a.share).sum();
        if !arms.is_empty() && (total - 1.0).abs() > 1e-6 {
            let loc = self.node_loc(node);
            self.error(
                loc,
                CatalogError::Inconsistent {
                    message: format!("the arm shares of {owner} add up to {total}, not 1"),
                },
            );
        }
        arms
    }

    // ---- placements.yaml ------------------------------------------------------------------

    fn placements(
        &mut self,
        file: usize,
        ctx: &RuleCtx<'_>,
        experiments: &[(Experiment, Option<Location>)],
    ) -> (Vec<(PendingPlacement, Option<Location>)>, Policy) {
        let Some(top) = self.parse(file) else {
            self.placements_incomplete = true;
            return Default::default();
        };
        let f = self.keys(&top, "placements.yaml", &["placements", "contact_policy"]);
        let policy = self.policy(&f);
        let channels = match ctx
            .schema
            .context
            .slot("channel")
            .and_then(|s| ctx.schema.context.get(s))
        {
            Some(Attribute {
                ty: AttrType::Enum(def),
                ..
            }) => Some(def.clone()),
            _ => None,
        };
        let mut out: Vec<(PendingPlacement, Option<Location>)> = Vec::new();
        let (items, complete) = self.list(&f, "placements", true);
        self.placements_incomplete |= !complete;
        for map in items {
            let f = self.keys(
                map,
                "a placement",
                &[
                    "id",
                    "channel",
                    "description",
                    "slots",
                    "fallback",
                    "one_per_group",
                    "experiment",
                    "score",
                ],
            );
            let Some(id) = self.required_id(&f, "id") else {
                self.placements_incomplete = true;
                continue;
            };
            let owner = format!("placement `{}`", id.as_str());
            if self.duplicate(
                "placement",
                id,
                out.iter()
                    .find(|(p, _)| p.placement.id == id.as_str())
                    .map(|(_, at)| *at),
            ) {
                continue;
            }
            let f = Fields {
                map,
                context: owner.clone(),
            };
            let channel = match self.scalar(&f, "channel") {
                None => {
                    if f.map.get_node("channel").is_none() {
                        self.missing(&f, "channel");
                    }
                    String::new()
                }
                Some(c) => {
                    if let Some(def) = &channels
                        && def.index_of(c).is_none()
                    {
                        let loc = self.scalar_loc(c);
                        self.error(
                            loc,
                            CatalogError::Dangling {
                                kind: "channel".into(),
                                id: c.to_string(),
                                context: format!(
                                    "{owner} (channels are the values of `context.channel`)"
                                ),
                                suggestion: did_you_mean(c, def.variants.iter().map(|v| &**v)),
                            },
                        );
                    }
                    c.to_string()
                }
            };
            let slots = if f.map.get_node("slots").is_some() {
                self.parsed(&f, "slots", "a whole number from 1 to 64", |s| {
                    s.parse::<u32>()
                        .ok()
                        .filter(|n| (1..=MAX_SLOTS).contains(n))
                })
            } else {
                Some(1)
            };
            let experiment = self.scalar(&f, "experiment").and_then(|e| {
                let found = experiments.iter().position(|(x, _)| x.id == e.as_str());
                if found.is_none() {
                    let loc = self.scalar_loc(e);
                    let suggestion =
                        did_you_mean(e, experiments.iter().map(|(x, _)| x.id.as_str()));
                    self.error(
                        loc,
                        CatalogError::Dangling {
                            kind: "experiment".into(),
                            id: e.to_string(),
                            context: owner.clone(),
                            suggestion,
                        },
                    );
                }
                found
            });
            let fallback = self
                .scalar(&f, "fallback")
                .map(|s| (s.to_string(), self.scalar_loc(s)));
            let loc = self.scalar_loc(id);
            let placement = Placement {
                id: id.to_string(),
                channel_key: key(&channel),
                channel,
                description: self.string(&f, "description"),
                slots: slots.unwrap_or(1),
                fallback: None,
                one_per_group: if f.map.get_node("one_per_group").is_some() {
                    self.bool(&f, "one_per_group").unwrap_or(false)
                } else {
                    false
                },
                experiment,
                score: self.optional_formula(ctx, &f, "score", &owner, true),
                offers: Vec::new(),
                plan: Default::default(),
            };
            out.push((
                PendingPlacement {
                    placement,
                    fallback,
                },
                loc,
            ));
        }
        (out, policy)
    }

    /// Two offer ids with one key would share history: refuse them (about one chance in
    /// a million for a catalog of 100 offers).
    fn key_collisions(&mut self, offers: &[LoadedOffer]) {
        let mut seen: HashMap<u32, &str> = HashMap::new();
        for o in offers {
            if let Some(first) = seen.insert(o.offer.key, &o.offer.id) {
                let message = format!(
                    "offer ids `{first}` and `{}` have the same history key; rename one",
                    o.offer.id
                );
                self.error(None, CatalogError::Inconsistent { message });
            }
        }
    }

    /// The offer ids and groups of every offers file, read ahead of compiling any rule so
    /// that rules can name offers in any file. Errors are reported by the full pass.
    fn vocabulary(&self, files: &[usize]) -> Vocabulary {
        let mut v = Vocabulary::default();
        for &file in files {
            let Ok(Node::Mapping(top)) =
                marked_yaml::parse_yaml(file, self.files[file].text.as_ref())
            else {
                continue;
            };
            let Some(offers) = top.get_sequence("offers") else {
                continue;
            };
            for offer in offers.iter().filter_map(Node::as_mapping) {
                v.offers
                    .extend(offer.get_scalar("id").map(|s| s.to_string()));
                v.groups
                    .extend(offer.get_scalar("group").map(|s| s.to_string()));
            }
        }
        v.groups.sort();
        v.groups.dedup();
        v
    }

    /// The `contact_policy` section of placements.yaml: fatigue, channels, groups.
    fn policy(&mut self, f: &Fields<'_>) -> Policy {
        let mut policy = Policy::default();
        let Some(node) = f.map.get_node("contact_policy") else {
            return policy;
        };
        let Some(map) = self.mapping(node, "contact_policy", "placements.yaml") else {
            return policy;
        };
        let pf = self.keys(
            map,
            "the contact policy",
            &["fatigue", "channels", "groups"],
        );
        if let Some(node) = pf.map.get_node("fatigue")
            && let Some(m) = self.mapping(node, "fatigue", "the contact policy")
        {
            let ff = self.keys(m, "the fatigue policy", &["max_impressions"]);
            policy.fatigue = self.frequency_caps(&ff, "the fatigue policy");
        }
        for (section, kind) in [("channels", "channel"), ("groups", "group")] {
            let Some(node) = pf.map.get_node(section) else {
                continue;
            };
            let Some(m) = self.mapping(node, section, "the contact policy") else {
                continue;
            };
            for (id, scope) in m.iter() {
                let owner = format!("{kind} `{}`", id.as_str());
                let Some(sm) = self.mapping(scope, id, "the contact policy") else {
                    continue;
                };
                let sf = self.keys(
                    sm,
                    &format!("the contact policy of {owner}"),
                    &["max_impressions", "budget"],
                );
                let max_impressions = self.frequency_caps(&sf, &owner);
                let budget = self.budget(&sf, &owner);
                let scope = ScopePolicy {
                    id: id.to_string(),
                    key: key(id),
                    max_impressions,
                    budget,
                };
                if kind == "channel" {
                    policy.channels.push(scope);
                } else {
                    policy.groups.push(scope);
                }
            }
        }
        policy
    }

    /// `max_impressions`: one cap or a list of them.
    fn frequency_caps(&mut self, f: &Fields<'_>, owner: &str) -> Vec<FrequencyCap> {
        let mut caps = Vec::new();
        let Some(node) = f.map.get_node("max_impressions") else {
            return caps;
        };
        let nodes: Vec<&Node> = match node {
            Node::Sequence(s) => s.iter().collect(),
            other => vec![other],
        };
        for cap in nodes {
            let Some(m) = self.mapping(cap, "max_impressions", &f.context) else {
                continue;
            };
            let cf = self.keys(
                m,
                &format!("an impression cap of {owner}"),
                &["count", "within", "per_channel"],
            );
            let count = self.count(&cf, "count");
            let within = self.duration(&cf, "within", true);
            let per_channel = if cf.map.get_node("per_channel").is_some() {
                self.bool(&cf, "per_channel").unwrap_or(false)
            } else {
                false
            };
            if let (Some(count), Some(within)) = (count, within) {
                caps.push(FrequencyCap {
                    count,
                    within,
                    per_channel,
                });
            }
        }
        caps
    }

    /// `budget: { per_day: N, total: N }`.
    fn budget(&mut self, f: &Fields<'_>, owner: &str) -> Budget {
        let Some(node) = f.map.get_node("budget") else {
            return Budget::default();
        };
        let Some(m) = self.mapping(node, "budget", owner) else {
            return Budget::default();
        };
        let bf = self.keys(m, &format!("the budget of {owner}"), &["per_day", "total"]);
        let mut number = |k: &str| {
            bf.map.get_node(k)?;
            self.parsed(&bf, k, "a whole number of at least 1", |s| {
                s.parse::<u64>().ok().filter(|n| *n >= 1)
            })
        };
        Budget {
            per_day: number("per_day"),
            total: number("total"),
        }
    }

    /// Fills in each placement's offers and resolves its fallback, now that offers are known.
    fn resolve_placements(
        &mut self,
        pending: Vec<(PendingPlacement, Option<Location>)>,
        offers: &[LoadedOffer],
    ) -> Vec<Placement> {
        let mut out = Vec::with_capacity(pending.len());
        for (idx, (p, _)) in pending.into_iter().enumerate() {
            let mut placement = p.placement;
            placement.offers = offers
                .iter()
                .enumerate()
                .filter(|(_, o)| o.offer.content.contains_key(&idx))
                .map(|(i, _)| i)
                .collect();
            if let Some((id, loc)) = p.fallback {
                match offers.iter().position(|o| o.offer.id == id) {
                    Some(i) if offers[i].offer.content.contains_key(&idx) => {
                        placement.fallback = Some(i)
                    }
                    _ if self.offers_incomplete => {}
                    Some(_) => self.error(
                        loc,
                        CatalogError::Inconsistent {
                            message: format!(
                                "fallback offer `{id}` of placement `{}` has no content for it",
                                placement.id
                            ),
                        },
                    ),
                    None => {
                        let suggestion =
                            did_you_mean(&id, offers.iter().map(|o| o.offer.id.as_str()));
                        self.error(
                            loc,
                            CatalogError::Dangling {
                                kind: "offer".into(),
                                id,
                                context: format!("the fallback of placement `{}`", placement.id),
                                suggestion,
                            },
                        );
                    }
                }
            }
            out.push(placement);
        }
        out
    }

    // ---- offers/*.yaml --------------------------------------------------------------------

    fn offers(
        &mut self,
        file: usize,
        ctx: &RuleCtx<'_>,
        placements: &[(PendingPlacement, Option<Location>)],
        out: &mut Vec<LoadedOffer>,
        seen: &mut HashMap<String, Option<Location>>,
    ) {
        let Some(top) = self.parse(file) else {
            self.offers_incomplete = true;
            return;
        };
        let f = self.keys(&top, "an offers file", &["offers"]);
        let (items, complete) = self.list(&f, "offers", true);
        self.offers_incomplete |= !complete;
        for map in items {
            let f = self.keys(
                map,
                "an offer",
                &[
                    "id",
                    "name",
                    "description",
                    "group",
                    "tags",
                    "active",
                    "content",
                    "eligibility",
                    "propensity",
                    "value",
                    "weight",
                    "context_weight",
                    "contact_policy",
                    "budget",
                ],
            );
            let Some(id) = self.required_id(&f, "id") else {
                self.offers_incomplete = true;
                continue;
            };
            let owner = format!("offer `{}`", id.as_str());
            if self.duplicate("offer", id, seen.get(id.as_str()).copied()) {
                continue;
            }
            let loc = self.scalar_loc(id);
            seen.insert(id.to_string(), loc);
            let f = Fields {
                map,
                context: owner.clone(),
            };

            let eligibility_node = self.scalar(&f, "eligibility");
            let eligibility = match eligibility_node {
                Some(s) if ctx.check => match Predicate::compile_with(
                    s,
                    ctx.schema,
                    "eligibility",
                    Some(&ctx.vocabulary),
                ) {
                    Ok(p) => p,
                    Err(errors) => {
                        self.rule_errors(s, errors, "eligibility", &owner);
                        Predicate::always()
                    }
                },
                _ => Predicate::always(),
            };
            let group = self.string(&f, "group");
            let offer = Offer {
                id: id.to_string(),
                key: key(id),
                group_key: group.as_deref().map_or(0, key),
                name: self.string(&f, "name").unwrap_or_else(|| id.to_string()),
                description: self.string(&f, "description"),
                group,
                tags: self.string_list(&f, "tags"),
                active: self.window(&f, &owner),
                content: self.content(&f, &owner, placements),
                eligibility,
                eligibility_src: eligibility_node.map(|s| s.to_string()),
                clauses: None,
                propensity: self.formula(ctx, &f, "propensity", &owner, false, 1.0),
                value: self.formula(ctx, &f, "value", &owner, false, 1.0),
                weight: self.formula(ctx, &f, "weight", &owner, false, 1.0),
                context_weight: self.formula(ctx, &f, "context_weight", &owner, false, 1.0),
                contact_policy: self.contact_policy(&f, &owner),
                budget: self.budget(&f, &owner),
            };
            out.push(LoadedOffer { offer });
        }
    }

    fn window(&mut self, f: &Fields<'_>, owner: &str) -> Window {
        let Some(node) = f.map.get_node("active") else {
            return Window::default();
        };
        let Some(map) = self.mapping(node, "active", owner) else {
            return Window::default();
        };
        let af = self.keys(
            map,
            &format!("the active window of {owner}"),
            &["from", "until"],
        );
        let ts = "a timestamp such as `2026-01-31T00:00:00Z`";
        let from = self.parsed(&af, "from", ts, parse_timestamp);
        let until = self.parsed(&af, "until", ts, parse_timestamp);
        if let (Some(a), Some(b)) = (from, until)
            && a >= b
        {
            let loc = self.loc(map.span(), 1);
            self.error(
                loc,
                CatalogError::Inconsistent {
                    message: format!("the active window of {owner} ends before it starts"),
                },
            );
        }
        Window { from, until }
    }

    fn content(
        &mut self,
        f: &Fields<'_>,
        owner: &str,
        placements: &[(PendingPlacement, Option<Location>)],
    ) -> BTreeMap<PlacementIdx, Content> {
        let mut out = BTreeMap::new();
        let Some(node) = f.map.get_node("content") else {
            self.missing(f, "content");
            return out;
        };
        let Some(map) = self.mapping(node, "content", owner) else {
            return out;
        };
        for (placement, fields) in map.iter() {
            let Some(idx) = placements
                .iter()
                .position(|(p, _)| p.placement.id == placement.as_str())
            else {
                if self.placements_incomplete {
                    continue;
                }
                let loc = self.scalar_loc(placement);
                let suggestion = did_you_mean(
                    placement,
                    placements.iter().map(|(p, _)| p.placement.id.as_str()),
                );
                self.error(
                    loc,
                    CatalogError::Dangling {
                        kind: "placement".into(),
                        id: placement.to_string(),
                        context: format!("the content of {owner}"),
                        suggestion,
                    },
                );
                continue;
            };
            let context = format!("the `{}` content of {owner}", placement.as_str());
            let Some(fields) = self.mapping(fields, placement, &context) else {
                continue;
            };
            let mut content = Content::new();
            for (k, v) in fields.iter() {
                match v.as_scalar() {
                    Some(s) => {
                        content.insert(k.to_string(), s.to_string());
                    }
                    None => self.invalid(v, k, &context, "a string"),
                }
            }
            out.insert(idx, content);
        }
        if map.is_empty() {
            let loc = self.node_loc(node);
            self.error(
                loc,
                CatalogError::Invalid {
                    key: "content".into(),
                    context: owner.to_string(),
                    expected: "content for at least one placement".into(),
                },
            );
        }
        out
    }

    fn contact_policy(&mut self, f: &Fields<'_>, owner: &str) -> ContactPolicy {
        let mut policy = ContactPolicy::default();
        let Some(node) = f.map.get_node("contact_policy") else {
            return policy;
        };
        let Some(map) = self.mapping(node, "contact_policy", owner) else {
            return policy;
        };
        let context = format!("the contact policy of {owner}");
        let pf = self.keys(
            map,
            &context,
            &[
                "max_impressions",
                "suppress_after_rejects",
                "stop_after_accept",
            ],
        );
        policy.max_impressions = self.frequency_caps(&pf, owner);
        if let Some(node) = pf.map.get_node("suppress_after_rejects")
            && let Some(m) = self.mapping(node, "suppress_after_rejects", &context)
        {
            let sf = self.keys(
                m,
                &format!("the reject suppression of {owner}"),
                &["count", "within", "for"],
            );
            let count = self.count(&sf, "count");
            let within = self.duration(&sf, "within", true);
            let suppress_for = self.duration(&sf, "for", true);
            if let (Some(count), Some(within), Some(suppress_for)) = (count, within, suppress_for) {
                policy.suppress_after_rejects = Some(RejectSuppression {
                    count,
                    within,
                    suppress_for,
                });
            }
        }
        if pf.map.get_node("stop_after_accept").is_some() {
            policy.stop_after_accept = self.bool(&pf, "stop_after_accept").unwrap_or(false);
        }
        policy
    }
}

/// The lookups of one YAML mapping, named for messages.
struct Fields<'n> {
    map: &'n MarkedMappingNode,
    context: String,
}

fn parse_bool(s: &str) -> Option<bool> {
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

fn default_value(node: &Node, ty: &AttrType) -> Option<Value> {
    if let AttrType::Set = ty {
        let items: Option<Vec<&str>> = node
            .as_sequence()?
            .iter()
            .map(|n| n.as_scalar().map(|s| s.as_str()))
            .collect();
        return Some(Value::set(items?));
    }
    let s = node.as_scalar()?.as_str();
    match ty {
        AttrType::Bool => parse_bool(s).map(Value::Bool),
        AttrType::Int => s.parse().ok().map(Value::Int),
        AttrType::Float => s
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Value::Float),
        AttrType::String => Some(Value::Str(s.into())),
        AttrType::Enum(def) => def.index_of(s).map(Value::Enum),
        AttrType::Timestamp => parse_timestamp(s).map(Value::Timestamp),
        AttrType::Set => None,
    }
}

fn yaml_error(e: &marked_yaml::LoadError) -> (Option<marked_yaml::Marker>, String) {
    use marked_yaml::LoadError::*;
    match e {
        TopLevelMustBeMapping(m) => (Some(*m), "the top level must be a mapping".into()),
        TopLevelMustBeSequence(m) => (Some(*m), "the top level must be a list".into()),
        UnexpectedAnchor(m) => (Some(*m), "anchors and aliases are not supported".into()),
        MappingKeyMustBeScalar(m) => (Some(*m), "mapping keys must be plain strings".into()),
        UnexpectedTag(m) => (Some(*m), "tags are not supported".into()),
        ScanError(m, inner) => (Some(*m), inner.info().to_string()),
        DuplicateKey(inner) => (
            inner.key.span().start().copied(),
            format!(
                "duplicate key `{}` (first at line {})",
                inner.key.as_str(),
                inner.prev_key.span().start().map_or(0, |m| m.line())
            ),
        ),
        #[allow(unreachable_patterns)]
        _ => (None, e.to_string()),
    }
}
