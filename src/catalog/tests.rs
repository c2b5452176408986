//! Catalog loading: each validation as a case over a minimal catalog.

use super::*;

const SCHEMA: &str = "\
customer:
  age: { type: int }
  segment: { type: enum, values: [mass, gold], default: mass }
  products: { type: set }
context:
  channel: { type: enum, values: [web, email] }
";

const PLACEMENTS: &str = "\
placements:
  - id: web.banner
    channel: web
    slots: 2
    fallback: basic
    experiment: explore
";

const EXPERIMENTS: &str = "\
experiments:
  - id: explore
    epsilon: 0.1
    window: 1d
    arms:
      - { id: champion, share: 0.5 }
      - { id: challenger, share: 0.5, score: offer.value * 2 }
";

const OFFERS: &str = "\
offers:
  - id: basic
    content:
      web.banner: { title: Hello }
  - id: gold_card
    group: cards
    eligibility: customer.age >= 18 && customer.segment == 'gold'
    propensity: 0.1
    value: 100
    content:
      web.banner: { title: Gold }
";

const MODELS: &str = "\
models:
  - id: response
    predictors:
      - customer.segment
      - { attribute: customer.age, bins: [25, 40, 60] }
      - { attribute: customer.products, members: [tv, broadband] }
      - context.channel
    positive: [accept]
    negative: [reject]
    window: 7d
    prior: 0.1
";

/// The base catalog's files, with models.yaml.
fn sources(texts: &[String; 5]) -> Sources {
    let file = |path: &str, text: &str| SourceFile {
        path: path.to_string(),
        text: text.into(),
    };
    Sources {
        schema: Some(file("schema.yaml", &texts[0])),
        placements: Some(file("placements.yaml", &texts[1])),
        experiments: Some(file("experiments.yaml", &texts[2])),
        offers: vec![file("offers/0.yaml", &texts[3])],
        models: Some(file("models.yaml", &texts[4])),
    }
}

/// Loads the base catalog with `edit` applied to one of its files, and returns each
/// error as `file:line:col: message`.
fn errors(file: &str, from: &str, to: &str) -> Vec<String> {
    let mut texts = [
        SCHEMA.to_string(),
        PLACEMENTS.to_string(),
        EXPERIMENTS.to_string(),
        OFFERS.to_string(),
        MODELS.to_string(),
    ];
    let i = ["schema", "placements", "experiments", "offers", "models"]
        .iter()
        .position(|f| *f == file)
        .expect("a known file");
    assert!(texts[i].contains(from), "`{from}` not in {file}");
    texts[i] = texts[i].replacen(from, to, 1);
    match Catalog::from_sources(sources(&texts)) {
        Ok(_) => Vec::new(),
        Err(e) => e
            .diagnostics
            .iter()
            .map(|d| match d.location {
                Some(l) => format!(
                    "{}:{}:{}: {}",
                    e.files[l.file].path, l.line, l.column, d.error
                ),
                None => d.error.to_string(),
            })
            .collect(),
    }
}

fn check(file: &str, from: &str, to: &str, expected: &[&str]) {
    assert_eq!(
        errors(file, from, to),
        expected,
        "replacing `{from}` with `{to}` in {file}"
    );
}

#[test]
fn the_base_catalog_loads() {
    let c = Catalog::from_yaml(SCHEMA, PLACEMENTS, EXPERIMENTS, &[OFFERS]).expect("loads");
    assert_eq!(c.offers.len(), 2);
    assert_eq!(c.placements[0].offers, vec![0, 1]);
    assert_eq!(c.placements[0].fallback, Some(0));
    assert_eq!(c.placements[0].experiment, Some(0));
    assert_eq!(c.experiments[0].arms[1].id, "challenger");
    assert_eq!(c.version.len(), 12);
    assert_eq!(c.offers[1].value.as_constant(), Some(100.0));
}

#[test]
fn every_offer_is_found_by_its_id_and_its_key() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let c = Catalog::load(root.join("rules")).expect("the sample catalog loads");
    for (i, o) in c.offers.iter().enumerate() {
        assert_eq!(c.offer(&o.id), Some(i), "{}", o.id);
        assert_eq!(c.offer_by_key(o.key), Some(i), "{}", o.id);
    }
    assert_eq!(c.offer("no_such_offer"), None);
    assert_eq!(c.offer_by_key(0), None, "0 stands for none");
}

#[test]
fn policies_and_budgets_load() {
    let placements = format!(
        "{PLACEMENTS}contact_policy:\n  fatigue: {{ max_impressions: [{{ count: 5, within: 1d }}] }}\n  \
         channels: {{ web: {{ max_impressions: {{ count: 2, within: 7d }}, budget: {{ per_day: 10 }} }} }}\n  \
         groups: {{ cards: {{ max_impressions: [{{ count: 1, within: 1d, per_channel: true }}] }} }}\n"
    );
    let offers = OFFERS.replace(
        "    value: 100\n",
        "    value: 100\n    budget: { total: 50 }\n",
    );
    let c = Catalog::from_yaml(SCHEMA, &placements, EXPERIMENTS, &[&offers])
        .unwrap_or_else(|e| panic!("{}", e.render()));
    assert_eq!(
        c.policy.fatigue,
        [FrequencyCap {
            count: 5,
            within: 86_400_000,
            per_channel: false
        }]
    );
    assert_eq!(c.policy.channels[0].key, crate::schema::key("web"));
    assert_eq!(
        c.policy.channels[0].budget,
        Budget {
            per_day: Some(10),
            total: None
        }
    );
    assert!(c.policy.groups[0].max_impressions[0].per_channel);
    assert_eq!(
        c.offers[1].budget,
        Budget {
            per_day: None,
            total: Some(50)
        }
    );
    assert_eq!(c.offers[1].group_key, crate::schema::key("cards"));
    assert_eq!(c.placements[0].channel_key, crate::schema::key("web"));
}

#[test]
fn the_history_horizon_is_the_longest_look_back() {
    let horizon = |offers: &str| {
        Catalog::from_yaml(SCHEMA, PLACEMENTS, EXPERIMENTS, &[offers])
            .expect("loads")
            .history_horizon()
    };
    let day = 86_400_000;
    assert_eq!(horizon(OFFERS), 0, "nothing looks at history");
    let with_cap = OFFERS.replace(
        "    value: 100\n",
        "    value: 100\n    contact_policy: { max_impressions: { count: 1, within: 7d } }\n",
    );
    assert_eq!(horizon(&with_cap), 7 * day);
    let with_rule = with_cap.replace(
        "customer.age >= 18",
        "rejects(30d) == 0 && clicks(2d + 1d, 'basic') < 1",
    );
    assert_eq!(horizon(&with_rule), 30 * day);
    let suppression = OFFERS.replace("    value: 100\n", "    value: 100\n    contact_policy: { suppress_after_rejects: { count: 1, within: 10d, for: 60d } }\n");
    assert_eq!(horizon(&suppression), 60 * day);
    let forever = OFFERS.replace(
        "    value: 100\n",
        "    value: 100\n    contact_policy: { stop_after_accept: true }\n",
    );
    assert_eq!(horizon(&forever), i64::MAX);
}

#[test]
fn the_version_is_a_content_hash() {
    let a = Catalog::from_yaml(SCHEMA, PLACEMENTS, EXPERIMENTS, &[OFFERS]).expect("loads");
    let b = Catalog::from_yaml(SCHEMA, PLACEMENTS, EXPERIMENTS, &[OFFERS]).expect("loads");
    let changed = OFFERS.replace("value: 100", "value: 101");
    let c = Catalog::from_yaml(SCHEMA, PLACEMENTS, EXPERIMENTS, &[&changed]).expect("loads");
    assert_eq!(a.version, b.version);
    assert_ne!(a.version, c.version);
}

#[test]
fn structure_errors() {
    check(
        "offers",
        "    group: cards",
        "    gruop: cards",
        &["offers/0.yaml:6:5: unknown key `gruop` in an offer"],
    );
    check(
        "offers",
        "  - id: basic\n",
        "  - name: basic\n",
        &["offers/0.yaml:2:5: missing required key `id` in an offer"],
    );
    check(
        "offers",
        "id: gold_card",
        "id: gold card",
        &["offers/0.yaml:5:9: `id` in an offer must be an id of letters, digits, `_`, `-` and `.`"],
    );
    check(
        "placements",
        "slots: 2",
        "slots: two",
        &[
            "placements.yaml:4:12: `slots` in placement `web.banner` must be a whole number from 1 to 64",
        ],
    );
    check(
        "placements",
        "slots: 2",
        "slots: [2]",
        &["placements.yaml:4:12: `slots` in placement `web.banner` must be a single value"],
    );
    check(
        "offers",
        "    propensity: 0.1\n",
        "    propensity: 0.1\n    contact_policy: { max_impressions: [{ count: 0, within: 7d }] }\n",
        &[
            "offers/0.yaml:9:50: `count` in an impression cap of offer `gold_card` must be a whole number of at least 1",
        ],
    );
    check(
        "offers",
        "    propensity: 0.1\n",
        "    propensity: 0.1\n    contact_policy: { suppress_after_rejects: { count: 1, within: 7 } }\n",
        &[
            "offers/0.yaml:9:49: missing required key `for` in the reject suppression of offer `gold_card`",
            "offers/0.yaml:9:67: `within` in the reject suppression of offer `gold_card` must be a duration such as `7d`, `12h`, `30m`, `45s`",
        ],
    );
}

#[test]
fn yaml_errors() {
    check(
        "offers",
        "    value: 100",
        "    value: 100\n   bad: [",
        &[
            "offers/0.yaml:10:7: invalid YAML: while parsing a block collection, did not find expected '-' indicator",
        ],
    );
    check(
        "placements",
        "    channel: web\n",
        "    channel: web\n    channel: email\n",
        &["placements.yaml:4:5: invalid YAML: duplicate key `channel` (first at line 3)"],
    );
}

#[test]
fn references_and_duplicates() {
    check(
        "offers",
        "  - id: gold_card",
        "  - id: basic",
        &["offers/0.yaml:5:9: duplicate offer `basic` (first defined at offers/0.yaml:2:9)"],
    );
    check(
        "placements",
        "fallback: basic",
        "fallback: basik",
        &["placements.yaml:5:15: unknown offer `basik` in the fallback of placement `web.banner`"],
    );
    check(
        "placements",
        "experiment: explore",
        "experiment: explor",
        &["placements.yaml:6:17: unknown experiment `explor` in placement `web.banner`"],
    );
    check(
        "offers",
        "      web.banner: { title: Gold }",
        "      web.baner: { title: Gold }",
        &["offers/0.yaml:11:7: unknown placement `web.baner` in the content of offer `gold_card`"],
    );
    check(
        "placements",
        "channel: web",
        "channel: sms",
        &[
            "placements.yaml:3:14: unknown channel `sms` in placement `web.banner` (channels are the values of `context.channel`)",
        ],
    );
    check(
        "offers",
        "  - id: basic\n    content:\n      web.banner: { title: Hello }\n",
        "  - id: basic\n    content: {}\n",
        &[
            // The offer loads (its id is known), so the placement learns its fallback
            // cannot be shown there.
            "placements.yaml:5:15: fallback offer `basic` of placement `web.banner` has no content for it",
            "offers/0.yaml:3:14: `content` in offer `basic` must be content for at least one placement",
        ],
    );
}

#[test]
fn value_errors() {
    check(
        "experiments",
        "epsilon: 0.1",
        "epsilon: 1.1",
        &["experiments.yaml:3:14: `epsilon` in experiment `explore` must be a number from 0 to 1"],
    );
    check(
        "experiments",
        "share: 0.5 }\n",
        "share: 0.4 }\n",
        &["experiments.yaml:6:7: the arm shares of experiment `explore` add up to 0.9, not 1"],
    );
    check(
        "offers",
        "    propensity: 0.1\n",
        "    propensity: 0.1\n    active: { from: 2027-01-01T00:00:00Z, until: 2026-01-01T00:00:00Z }\n",
        &["offers/0.yaml:9:13: the active window of offer `gold_card` ends before it starts"],
    );
    check(
        "offers",
        "    propensity: 0.1\n",
        "    propensity: 0.1\n    active: { from: yesterday }\n",
        &[
            "offers/0.yaml:9:21: `from` in the active window of offer `gold_card` must be a timestamp such as `2026-01-31T00:00:00Z`",
        ],
    );
    check(
        "schema",
        "default: mass",
        "default: platinum",
        &[
            "schema.yaml:3:57: `default` in attribute `customer.segment` must be a value of type `enum`",
        ],
    );
    check(
        "schema",
        "age: { type: int }",
        "age: { type: integer }",
        &[
            "schema.yaml:2:16: `type` in attribute `customer.age` must be one of bool, int, float, string, enum, set, timestamp (did you mean `int`?)",
        ],
    );
}

#[test]
fn rule_errors_point_into_the_file() {
    check(
        "offers",
        "customer.age >= 18",
        "impressions(7d, 'gold_crad') < 2",
        &["offers/0.yaml:7:34: unknown offer `gold_crad` in eligibility of offer `gold_card`"],
    );
    check(
        "offers",
        "customer.age >= 18",
        "customer.agee >= 18",
        &[
            "offers/0.yaml:7:18: unknown attribute `customer.agee` in eligibility of offer `gold_card`",
        ],
    );
    check(
        "offers",
        "propensity: 0.1",
        "propensity: customer.segment",
        &[
            "offers/0.yaml:8:17: propensity must be of type `float`, found `enum customer.segment` in propensity of offer `gold_card`",
        ],
    );
    check(
        "experiments",
        "score: offer.value * 2",
        "score: offer.valeu * 2",
        &[
            "experiments.yaml:7:46: unknown attribute `offer.valeu` in score of arm `challenger` of experiment `explore`",
        ],
    );
}

#[test]
fn every_error_is_reported_across_files() {
    let offers = OFFERS.replace("customer.age >= 18", "customer.agee >= 18");
    let placements = PLACEMENTS.replace("slots: 2", "slotz: 2");
    let experiments = EXPERIMENTS.replace("epsilon: 0.1", "epsilon: -1");
    let e = Catalog::from_yaml(SCHEMA, &placements, &experiments, &[&offers])
        .expect_err("three mistakes");
    assert_eq!(e.diagnostics.len(), 3, "{}", e.render());
    let rendered = e.render();
    for needle in [
        "placements.yaml:4:5",
        "experiments.yaml:3:14",
        "offers/0.yaml:7:18",
        "3 error(s)",
    ] {
        assert!(
            rendered.contains(needle),
            "{needle} missing from:\n{rendered}"
        );
    }
}

#[test]
fn a_bad_rule_does_not_hide_a_dangling_reference() {
    // The offer with the bad rule still loads, so its id is known and the misspelt
    // fallback is reported beside the rule error.
    let offers = OFFERS.replace("customer.age >= 18", "customer.agee >= 18");
    let placements = PLACEMENTS.replace("fallback: basic", "fallback: basik");
    let e =
        Catalog::from_yaml(SCHEMA, &placements, EXPERIMENTS, &[&offers]).expect_err("two mistakes");
    assert_eq!(e.diagnostics.len(), 2, "{}", e.render());
}

#[test]
fn a_broken_schema_does_not_flood_rules_with_errors() {
    let schema = SCHEMA.replace("age: { type: int }", "age: { type: nope }");
    let e =
        Catalog::from_yaml(&schema, PLACEMENTS, EXPERIMENTS, &[OFFERS]).expect_err("bad schema");
    assert_eq!(e.diagnostics.len(), 1, "{}", e.render());
}

#[test]
fn missing_files_are_named() {
    let dir = std::env::temp_dir().join(format!("nextbest-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let e = Catalog::load(&dir).expect_err("nothing there");
    let text = e.render();
    assert!(text.contains("schema.yaml"), "{text}");
    assert!(text.contains("placements.yaml"), "{text}");
    assert!(text.contains("offers"), "{text}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn errors_are_typed() {
    let placements = PLACEMENTS.replace("slots: 2", "slots: 65");
    let e = Catalog::from_yaml(SCHEMA, &placements, EXPERIMENTS, &[OFFERS]).expect_err("65 slots");
    assert!(
        matches!(
            &e.diagnostics[0].error,
            CatalogError::Invalid {
                key,
                context: Context::Of(Owner::Placement(placement)),
                expected: Expected::Slots,
            } if key == "slots" && placement == "web.banner"
        ),
        "{:?}",
        e.diagnostics[0].error
    );
    let offers = OFFERS.replace("propensity: 0.1", "propensity: customer.agee");
    let e = Catalog::from_yaml(SCHEMA, PLACEMENTS, EXPERIMENTS, &[&offers]).expect_err("typo");
    assert!(
        matches!(
            &e.diagnostics[0].error,
            CatalogError::Rule {
                field: RuleField::Propensity,
                owner: Owner::Offer(id),
                ..
            } if id == "gold_card"
        ),
        "{:?}",
        e.diagnostics[0].error
    );
}

/// A second offers file whose rule names an offer of the first.
const MORE_OFFERS: &str = "\
offers:
  - id: gold_upgrade
    eligibility: impressions(30d, 'gold_card') > 0
    content:
      web.banner: { title: Upgrade }
";

#[test]
fn rules_name_offers_of_any_file() {
    let c = Catalog::from_yaml(SCHEMA, PLACEMENTS, EXPERIMENTS, &[OFFERS, MORE_OFFERS])
        .unwrap_or_else(|e| panic!("{}", e.render()));
    assert_eq!(c.offers.len(), 3);
    // A file refused for a duplicate key still names its offers: the rule that names one
    // is not reported beside the duplicate.
    let offers = OFFERS.replace("    value: 100\n", "    value: 100\n    value: 101\n");
    let e = Catalog::from_yaml(SCHEMA, PLACEMENTS, EXPERIMENTS, &[&offers, MORE_OFFERS])
        .expect_err("a duplicate key");
    assert_eq!(
        e.lines(),
        ["offers/0.yaml:10:5: error: invalid YAML: duplicate key `value` (first at line 9)"]
    );
}

/// The rendering of the catalog with `experiments` and `offers`, which has errors.
fn rendered(experiments: &str, offers: &[&str]) -> String {
    Catalog::from_yaml(SCHEMA, PLACEMENTS, experiments, offers)
        .expect_err("an error")
        .render()
}

#[test]
fn a_duplicate_points_at_its_first_definition() {
    // In the same file: a second label in the one snippet.
    let same = OFFERS.replace("  - id: gold_card", "  - id: basic");
    assert_eq!(
        rendered(EXPERIMENTS, &[&same]),
        "\
offers/0.yaml:5:9: error: duplicate offer `basic` (first defined at offers/0.yaml:2:9)
  |
2 |   - id: basic
  |         ----- first defined here
...
5 |   - id: basic
  |         ^^^^^

1 error(s); the catalog was not loaded
"
    );
    // In another file: a snippet of that file, headed by its path.
    let other = MORE_OFFERS.replace("gold_upgrade", "gold_card");
    assert_eq!(
        rendered(EXPERIMENTS, &[OFFERS, &other]),
        "\
offers/1.yaml:2:9: error: duplicate offer `gold_card` (first defined at offers/0.yaml:5:9)
  |
2 |   - id: gold_card
  |         ^^^^^^^^^
  |
 ::: offers/0.yaml:5:9
  |
5 |   - id: gold_card
  |         --------- first defined here

1 error(s); the catalog was not loaded
"
    );
    // An arm, named in the message by its experiment, and a key given twice.
    let arms = EXPERIMENTS.replace("id: challenger", "id: champion");
    let text = rendered(&arms, &[OFFERS]);
    assert!(
        text.contains(
            "\
6 |       - { id: champion, share: 0.5 }
  |               -------- first defined here
7 |       - { id: champion, share: 0.5, score: offer.value * 2 }
  |               ^^^^^^^^
"
        ),
        "{text}"
    );
    let key = OFFERS.replace("    value: 100\n", "    value: 100\n    value: 101\n");
    let text = rendered(EXPERIMENTS, &[&key]);
    assert!(
        text.contains(
            "\
 9 |     value: 100
   |     ----- first defined here
10 |     value: 101
   |     ^
"
        ),
        "{text}"
    );
    // Tools get the place too.
    let e = Catalog::from_yaml(SCHEMA, PLACEMENTS, EXPERIMENTS, &[OFFERS, &other])
        .expect_err("a duplicate");
    assert_eq!(
        e.to_json()["errors"][0]["related"],
        serde_json::json!({
            "label": "first defined here",
            "path": "offers/0.yaml",
            "line": 5,
            "column": 9,
            "length": 9,
        })
    );
}

#[test]
fn a_file_that_cannot_be_read_keeps_its_io_error() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let e = Catalog::load(dir.path()).expect_err("no files");
    let schema = dir.path().join("schema.yaml");
    let first = &e.diagnostics[0].error;
    assert_eq!(
        first.to_string(),
        format!(
            "cannot read `{}`: No such file or directory (os error 2)",
            schema.display()
        )
    );
    // Shared as an `Arc`, as the journal writer shares its own.
    let source = std::error::Error::source(first)
        .and_then(|s| s.downcast_ref::<std::sync::Arc<std::io::Error>>())
        .expect("the io::Error as the source");
    assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
}

#[test]
fn models_load_and_offers_read_them() {
    let offers = OFFERS.replace("propensity: 0.1", "propensity: adaptive('response') * 1.5");
    let texts = [
        SCHEMA.to_string(),
        PLACEMENTS.to_string(),
        EXPERIMENTS.to_string(),
        offers,
        MODELS.to_string(),
    ];
    let c = Catalog::from_sources(sources(&texts)).expect("loads");
    assert_eq!(c.models.len(), 1);
    let m = &c.models[0];
    // 2 segments, 4 age bins, 2 members, 2 channels, each with one for none of them.
    assert_eq!(m.width, 14);
    assert_eq!(m.window, 7 * 86_400_000);
    let gold = c.offer("gold_card").expect("offer");
    assert_eq!(c.models_of(gold).len(), 1);
    assert!(c.models_of(c.offer("basic").expect("offer")).is_empty());
    assert_eq!(
        m.cells().map(|(k, _)| k).collect::<Vec<_>>(),
        vec![(c.offers[gold].key, 0)]
    );
    // Scored by the model: its prior rate, times 1.5.
    let p = c.offers[gold]
        .propensity
        .eval(&crate::expr::Env::new(&[], &[], &[], 0).with_history(&[], c.offers[gold].key, 0, 0));
    assert!((p.expect("a score") - 0.15).abs() < 1e-6, "{p:?}");
}

#[test]
fn model_errors_point_into_the_file() {
    check(
        "models",
        "customer.segment",
        "customer.segmnt",
        &[
            "models.yaml:4:9: unknown attribute `customer.segmnt` in the predictors of model `response`",
        ],
    );
    check(
        "models",
        "{ attribute: customer.age, bins: [25, 40, 60] }",
        "customer.age",
        &[
            "models.yaml:5:9: predictor `customer.age` of model `response` is of type `int` and needs `bins` (the edges between its ranges)",
        ],
    );
    check(
        "models",
        "bins: [25, 40, 60]",
        "bins: [40, 25]",
        &[
            "models.yaml:5:42: `bins` in a predictor of model `response` must be a non-empty list of increasing numbers",
        ],
    );
    check(
        "models",
        "members: [tv, broadband]",
        "bins: [1]",
        &[
            "models.yaml:6:47: predictor `customer.products` of model `response` is of type `set`, which does not take `bins`",
        ],
    );
    check(
        "models",
        "negative: [reject]",
        "negative: [accept]",
        &[
            "models.yaml:9:15: outcome kind `accept` of model `response` is both positive and negative",
        ],
    );
    check(
        "models",
        "window: 7d",
        "window: 10s",
        &["models.yaml:10:13: `window` in model `response` must be a duration from `1m` to `365d`"],
    );
    check(
        "models",
        "prior: 0.1",
        "prior: 1",
        &["models.yaml:11:12: `prior` in model `response` must be a number above 0 and below 1"],
    );
    check(
        "models",
        "positive: [accept]",
        "positive: [accepted]",
        &[
            "models.yaml:8:15: `positive` in model `response` must be a non-empty list of distinct response kinds (click, accept, reject, convert; an impression opens the wait for one)",
        ],
    );
    check(
        "offers",
        "propensity: 0.1",
        "propensity: adaptive('respons')",
        &["offers/0.yaml:8:26: unknown model `respons` in propensity of offer `gold_card`"],
    );
    check(
        "offers",
        "propensity: 0.1",
        "propensity: adaptive(customer.age)",
        &[
            "offers/0.yaml:8:26: the argument of `adaptive` must be a model id in quotes, e.g. `adaptive('retention')` in propensity of offer `gold_card`",
        ],
    );
    check(
        "offers",
        "customer.age >= 18",
        "adaptive('response') > 0.5",
        &[
            "offers/0.yaml:7:18: `adaptive` is only available in an offer's propensity, value, weight and context_weight in eligibility of offer `gold_card`",
        ],
    );
    check(
        "experiments",
        "score: offer.value * 2",
        "score: offer.value * adaptive('response')",
        &[
            "experiments.yaml:7:60: `adaptive` is only available in an offer's propensity, value, weight and context_weight in score of arm `challenger` of experiment `explore`",
        ],
    );
}

#[test]
fn a_changed_model_has_another_fingerprint() {
    let load = |models: &str| {
        let texts = [
            SCHEMA.to_string(),
            PLACEMENTS.to_string(),
            EXPERIMENTS.to_string(),
            OFFERS.to_string(),
            models.to_string(),
        ];
        Catalog::from_sources(sources(&texts))
            .expect("loads")
            .models[0]
            .fingerprint
    };
    let same = MODELS.replace(
        "    prior: 0.1\n",
        "    prior: 0.1\n    description: the same model\n",
    );
    assert_eq!(load(MODELS), load(&same));
    assert_ne!(
        load(MODELS),
        load(&MODELS.replace("prior: 0.1", "prior: 0.2"))
    );
    assert_ne!(
        load(MODELS),
        load(&MODELS.replace("[25, 40, 60]", "[25, 40, 65]"))
    );
}
