//! Rule-language tests: semantics as table cases, errors with their spans, and property
//! tests holding the compiled evaluator to the reference evaluator.

use proptest::prelude::*;

use super::*;
use crate::schema::{
    AttrType, Attribute, EntitySchema, EnumDef, Event, EventKind, Schema, Value, key,
};

const DAY: i64 = 86_400_000;
const NOW: i64 = 1_790_000_000_000;

fn attr(name: &str, ty: AttrType, default: Value) -> Attribute {
    Attribute {
        name: name.into(),
        ty,
        default,
        description: None,
    }
}

/// The schema every test here uses. Slots follow this order.
fn schema() -> Schema {
    let mut customer = EntitySchema::default();
    for a in [
        attr("age", AttrType::Int, Value::Missing),
        attr("income", AttrType::Float, Value::Missing),
        attr(
            "segment",
            AttrType::Enum(EnumDef::new(["mass", "gold", "platinum"])),
            Value::Missing,
        ),
        attr("products", AttrType::Set, Value::Missing),
        attr("name", AttrType::String, Value::Missing),
        attr("vip", AttrType::Bool, Value::Missing),
        attr("last_contact", AttrType::Timestamp, Value::Missing),
        attr("churn_risk", AttrType::Float, Value::Float(0.1)),
        attr("tenure_months", AttrType::Int, Value::Int(0)),
    ] {
        customer.push(a);
    }
    let mut context = EntitySchema::default();
    context.push(attr(
        "channel",
        AttrType::Enum(EnumDef::new(["web", "email", "call_center", "app"])),
        Value::Missing,
    ));
    context.push(attr("device", AttrType::String, Value::Missing));
    Schema::new(customer, context)
}

/// A customer record with the given attributes set, the rest missing.
/// A history for offer `o1` of group `g` and others, as the property tests and the
/// history-function cases see it.
fn history() -> Vec<Event> {
    let e = |days: i64, offer: &str, group: Option<&str>, channel: &str, kind| {
        Event::new(NOW - days * DAY, offer, group, channel, kind)
    };
    vec![
        e(40, "o1", Some("g"), "web", EventKind::Impression),
        e(6, "o1", Some("g"), "web", EventKind::Impression),
        e(5, "o1", Some("g"), "email", EventKind::Impression),
        e(5, "o1", Some("g"), "email", EventKind::Reject),
        e(3, "o2", Some("g"), "web", EventKind::Impression),
        e(2, "o3", None, "web", EventKind::Click),
        e(-1, "o1", Some("g"), "web", EventKind::Impression),
    ]
}

fn customer(schema: &Schema, values: &[(&str, Value)]) -> Vec<Value> {
    let mut record = vec![Value::Missing; schema.customer.len()];
    for (name, v) in values {
        let slot = schema
            .customer
            .slot(name)
            .unwrap_or_else(|| panic!("no attribute {name}"));
        record[slot as usize] = v.clone();
    }
    record
}

fn check(src: &str, values: &[(&str, Value)], expected: Option<bool>) {
    let schema = schema();
    let p = Predicate::compile(src, &schema, "eligibility")
        .unwrap_or_else(|e| panic!("`{src}`: {e:?}"));
    let c = customer(&schema, values);
    let ctx = [Value::Enum(2), Value::Str("iPhone".into())];
    assert_eq!(
        p.eval(&Env::new(&c, &ctx, &[], NOW)),
        expected,
        "`{src}` with {values:?}"
    );
}

fn check_num(src: &str, values: &[(&str, Value)], expected: Option<f64>) {
    let schema = schema();
    let f =
        Formula::compile(src, &schema, "score", false).unwrap_or_else(|e| panic!("`{src}`: {e:?}"));
    let c = customer(&schema, values);
    let got = f.eval(&Env::new(&c, &[], &[], NOW));
    match (got, expected) {
        (Some(g), Some(e)) => assert!((g - e).abs() < 1e-9, "`{src}`: got {g}, expected {e}"),
        _ => assert_eq!(got, expected, "`{src}` with {values:?}"),
    }
}

fn check_err(src: &str, expected: &str, span: Span, help: Option<&str>) {
    let errors = Predicate::compile(src, &schema(), "eligibility").expect_err(src);
    let e = &errors[0];
    assert_eq!(e.to_string(), expected, "`{src}`");
    assert_eq!(e.span(), span, "span in `{src}`");
    assert_eq!(e.help().as_deref(), help, "help for `{src}`");
}

#[test]
fn comparisons_and_logic() {
    check("customer.age >= 18", &[("age", Value::Int(30))], Some(true));
    check(
        "18 <= customer.age",
        &[("age", Value::Int(17))],
        Some(false),
    );
    check(
        "customer.age >= 18 && customer.income > 1000",
        &[("age", Value::Int(30)), ("income", Value::Float(1500.0))],
        Some(true),
    );
    check(
        "customer.age > 17.5",
        &[("age", Value::Int(18))],
        Some(true),
    );
    check(
        "customer.segment in [\"gold\", \"platinum\"]",
        &[("segment", Value::Enum(1))],
        Some(true),
    );
    check(
        "customer.segment in [\"gold\", \"platinum\"]",
        &[("segment", Value::Enum(0))],
        Some(false),
    );
    check(
        "customer.segment == 'mass'",
        &[("segment", Value::Enum(0))],
        Some(true),
    );
    check(
        "'platinum' != customer.segment",
        &[("segment", Value::Enum(2))],
        Some(false),
    );
    check(
        "!(\"mortgage\" in customer.products)",
        &[("products", Value::set(["tv", "mortgage"]))],
        Some(false),
    );
    check(
        "\"broadband\" in customer.products",
        &[("products", Value::set(["tv", "broadband"]))],
        Some(true),
    );
    check(
        "customer.vip || customer.age > 60",
        &[("vip", Value::Bool(false)), ("age", Value::Int(61))],
        Some(true),
    );
    check(
        "context.channel == 'call_center' && starts_with(context.device, 'iP')",
        &[],
        Some(true),
    );
    check("lower(context.device) == 'iphone'", &[], Some(true));
    check(
        "lower(customer.name) in ['ada', 'grace']",
        &[("name", Value::Str("ADA".into()))],
        Some(true),
    );
    check(
        "size(customer.products) == 2",
        &[("products", Value::set(["a", "b", "a"]))],
        Some(true),
    );
}

#[test]
fn time_and_durations() {
    let ten_days_ago = Value::Timestamp(NOW - 10 * DAY);
    check(
        "days_since(customer.last_contact) > 7",
        &[("last_contact", ten_days_ago.clone())],
        Some(true),
    );
    check(
        "hours_since(customer.last_contact) < 240.5",
        &[("last_contact", ten_days_ago.clone())],
        Some(true),
    );
    check(
        "now() - customer.last_contact > 7d",
        &[("last_contact", ten_days_ago.clone())],
        Some(true),
    );
    check(
        "customer.last_contact + 12d < now()",
        &[("last_contact", ten_days_ago)],
        Some(false),
    );
    check("7d == 168h", &[], Some(true));
}

#[test]
fn missing_values_never_match_by_accident() {
    // Unknown propagates through comparison and negation, so neither a rule nor its
    // negation matches a customer whose age is unknown.
    check("customer.age >= 18", &[], None);
    check("!(customer.age >= 18)", &[], None);
    check("!(\"mortgage\" in customer.products)", &[], None);
    // A definite answer on one side of && or || decides it (Kleene logic).
    check("customer.age >= 18 && false", &[], Some(false));
    check("customer.age >= 18 || true", &[], Some(true));
    check("customer.age >= 18 || false", &[], None);
    // has() is always definite; defaults count as values.
    check("has(customer.age)", &[], Some(false));
    check("has(customer.age)", &[("age", Value::Int(1))], Some(true));
    check("has(customer.churn_risk)", &[], Some(true));
    check("customer.churn_risk < 0.2", &[], Some(true));
    check("!has(customer.age) || customer.age >= 18", &[], Some(true));
    // A value of the wrong type in state reads as missing, never panics.
    check(
        "customer.age >= 18",
        &[("age", Value::Str("x".into()))],
        None,
    );
}

#[test]
fn arithmetic_is_total() {
    check_num("0.05 + 0.3 * customer.churn_risk", &[], Some(0.08));
    check_num(
        "customer.tenure_months > 24 ? 1.2 : 1.0",
        &[("tenure_months", Value::Int(30))],
        Some(1.2),
    );
    check_num("7 / 2", &[], Some(3.5));
    check_num("customer.age / 0", &[("age", Value::Int(3))], None);
    check_num("customer.age % 0", &[("age", Value::Int(3))], None);
    check_num(
        "customer.age * 9223372036854775807",
        &[("age", Value::Int(3))],
        None,
    );
    check_num(
        "ln(customer.income)",
        &[("income", Value::Float(0.0))],
        None,
    );
    check_num(
        "exp(customer.income)",
        &[("income", Value::Float(1e6))],
        None,
    );
    check_num(
        "sigmoid(customer.income)",
        &[("income", Value::Float(-1e6))],
        Some(0.0),
    );
    check_num(
        "clamp(customer.income, 0, 1)",
        &[("income", Value::Float(7.0))],
        Some(1.0),
    );
    check_num("clamp(1, 2, 0)", &[], None);
    check_num(
        "min(customer.age, 3, 10) + max(1, 2.5) + abs(-2)",
        &[("age", Value::Int(5))],
        Some(7.5),
    );
    check_num(
        "customer.income",
        &[("income", Value::Float(f64::NAN))],
        None,
    );
}

#[test]
fn constants_fold() {
    let schema = schema();
    let f = Formula::compile("1 + 2 * 3 - max(1, 2)", &schema, "score", false).expect("compiles");
    assert_eq!(f.as_constant(), Some(5.0));
    let f = Formula::compile("lower('AB') == 'ab' ? 0.5 : 1", &schema, "score", false)
        .expect("compiles");
    assert_eq!(f.as_constant(), Some(0.5));
    let f = Formula::compile("1 + customer.age", &schema, "score", false).expect("compiles");
    assert_eq!(f.as_constant(), None);
}

#[test]
fn errors_name_the_problem_and_the_place() {
    check_err(
        "customer.agee >= 18",
        "unknown attribute `customer.agee`",
        0..13,
        Some("did you mean `customer.age`?"),
    );
    check_err(
        "age >= 18",
        "unknown name `age`: attributes are written `customer.<name>` or `context.<name>`",
        0..3,
        None,
    );
    check_err(
        "customer.age >= 18 && dayz_since(customer.last_contact) > 1",
        "unknown function `dayz_since`",
        22..32,
        Some("did you mean `days_since`?"),
    );
    check_err(
        "clamp(customer.age, 1)",
        "function `clamp` takes 3 argument(s), found 2",
        0..22,
        None,
    );
    check_err(
        "customer.age + 'x' > 1",
        "`+` expects numbers, or timestamps and durations, found `int` and `string`",
        13..14,
        None,
    );
    check_err(
        "customer.segment == 'gld'",
        "`gld` is not a value of enum `customer.segment`",
        20..25,
        Some("did you mean `gold`?"),
    );
    check_err(
        "customer.segment in ['gold', 'platnum']",
        "`platnum` is not a value of enum `customer.segment`",
        29..38,
        Some("did you mean `platinum`?"),
    );
    check_err(
        "customer.age in [1, customer.age]",
        "list elements must be constants",
        20..32,
        Some("compare attributes with `==` and combine with `||`"),
    );
    check_err(
        "customer.churn_risk * 2",
        "eligibility must be of type `bool`, found `float`",
        0..23,
        None,
    );
    check_err(
        "offer.value > 1",
        "`offer.value` is only available in score formulas",
        0..11,
        None,
    );
    check_err(
        "has(1)",
        "`has` takes an attribute such as `customer.age`",
        4..5,
        None,
    );
    check_err(
        "!customer.age",
        "`!` expects a `bool`, found `int`",
        1..13,
        None,
    );
}

#[test]
fn every_error_is_reported() {
    let errors = Predicate::compile(
        "customer.agee > 1 && customer.segmnt == 'x' && nope(1)",
        &schema(),
        "eligibility",
    )
    .expect_err("three mistakes");
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            "unknown attribute `customer.agee`",
            "unknown attribute `customer.segmnt`",
            "unknown function `nope`",
        ]
    );
}

#[test]
fn explanations_name_the_first_clause_that_fails() {
    let schema = schema();
    let src = "customer.age >= 18 && customer.segment == 'gold' && has(customer.name)";
    let p = Predicate::compile(src, &schema, "eligibility").expect("compiles");
    let explain = |values: &[(&str, Value)]| {
        let c = customer(&schema, values);
        p.explain(&Env::new(&c, &[], &[], NOW), src)
            .map(|(clause, r)| (clause.to_string(), r))
    };
    assert_eq!(
        explain(&[("age", Value::Int(30)), ("segment", Value::Enum(0))]),
        Some(("customer.segment == 'gold'".into(), Some(false)))
    );
    assert_eq!(
        explain(&[("segment", Value::Enum(1))]),
        Some(("customer.age >= 18".into(), None))
    );
    assert_eq!(
        explain(&[
            ("age", Value::Int(30)),
            ("segment", Value::Enum(1)),
            ("name", Value::Str("x".into()))
        ]),
        None
    );
}

#[test]
fn history_functions_count_events_in_their_window() {
    let schema = schema();
    let history = history();
    let count = |src: &str| {
        let f = Formula::compile(src, &schema, "score", false)
            .unwrap_or_else(|e| panic!("`{src}`: {e:?}"));
        f.eval(&Env::new(&[], &[], &[], NOW).with_history(
            &history,
            key("o1"),
            key("g"),
            key("web"),
        ))
    };
    assert_eq!(
        count("impressions(7d)"),
        Some(2.0),
        "this offer, any channel; the future and the old left out"
    );
    assert_eq!(count("impressions(100d)"), Some(3.0));
    assert_eq!(
        count("impressions_here(7d)"),
        Some(1.0),
        "this offer in this channel"
    );
    assert_eq!(count("rejects(30d)"), Some(1.0));
    assert_eq!(count("impressions(7d, 'o2')"), Some(1.0), "a named offer");
    assert_eq!(count("clicks(7d, 'o3')"), Some(1.0));
    assert_eq!(
        count("group_impressions(7d)"),
        Some(3.0),
        "this offer's group"
    );
    assert_eq!(
        count("group_impressions_here(7d, 'g')"),
        Some(2.0),
        "a named group, this channel"
    );
    assert_eq!(count("accepts(7d)"), Some(0.0));
}

#[test]
fn history_functions_check_their_arguments() {
    let vocabulary = Vocabulary {
        offers: vec!["gold_card".into()],
        groups: vec!["cards".into()],
        ..Vocabulary::default()
    };
    let errors = |src: &str| -> Vec<String> {
        match Predicate::compile_with(src, &schema(), "eligibility", Some(&vocabulary)) {
            Ok(_) => vec![],
            Err(e) => e
                .iter()
                .map(|e| format!("{e} {:?} {}", e.span(), e.help().unwrap_or_default()))
                .collect(),
        }
    };
    assert_eq!(
        errors("impressions(7d, 'gold_card') < 3 && group_impressions(1d, 'cards') == 0"),
        Vec::<String>::new()
    );
    assert_eq!(
        errors("impressions(7d, 'gold_crad') < 3"),
        ["unknown offer `gold_crad` 16..27 did you mean `gold_card`?"]
    );
    assert_eq!(
        errors("group_rejects(7d, 'card') < 3"),
        ["unknown group `card` 18..24 did you mean `cards`?"]
    );
    assert_eq!(
        errors("impressions(7) < 3"),
        ["`impressions` expects a duration such as `7d`, found `int` 12..13 "]
    );
    assert_eq!(
        errors("impressions(7d, customer.name) < 3"),
        ["the second argument of `impressions` must be a constant offer id 16..29 "]
    );
    assert_eq!(
        errors("impressions() < 3"),
        ["function `impressions` takes 1 or 2 argument(s), found 0 0..13 "]
    );
}

#[test]
fn score_formulas_see_offer_variables() {
    let schema = schema();
    let f = Formula::compile("offer.propensity * offer.value * 2", &schema, "score", true)
        .expect("compiles");
    let offer = [
        Value::Float(0.5),
        Value::Float(10.0),
        Value::Float(1.0),
        Value::Float(1.0),
    ];
    assert_eq!(f.eval(&Env::new(&[], &[], &offer, NOW)), Some(10.0));
}

// ---- property tests -----------------------------------------------------------------------

fn leaf<T: Clone + std::fmt::Debug + 'static>(options: Vec<T>) -> BoxedStrategy<T> {
    proptest::sample::select(options).boxed()
}

fn int_expr() -> BoxedStrategy<String> {
    let leaves = prop_oneof![
        (-5i64..100).prop_map(|i| i.to_string()),
        leaf(vec![
            "customer.age".to_string(),
            "customer.tenure_months".into(),
            "9223372036854775807".into(),
            "size(customer.products)".into(),
            "size(customer.name)".into(),
            "impressions(7d)".into(),
            "group_impressions_here(30d)".into(),
            "rejects(10d, 'o1')".into(),
            "clicks(1d + 1d, 'o3')".into()
        ]),
    ];
    leaves
        .prop_recursive(3, 16, 3, |inner| {
            prop_oneof![
                (inner.clone(), leaf(vec!["+", "-", "*", "%"]), inner.clone())
                    .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
                inner.clone().prop_map(|a| format!("-({a})")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("min({a}, {b})")),
                (inner.clone(), inner.clone(), inner.clone())
                    .prop_map(|(a, b, c)| format!("clamp({a}, {b}, {c})")),
                inner.clone().prop_map(|a| format!("abs({a})")),
                (bool_leaf(), inner.clone(), inner)
                    .prop_map(|(c, a, b)| format!("({c} ? {a} : {b})")),
            ]
        })
        .boxed()
}

fn float_expr() -> BoxedStrategy<String> {
    let leaves = prop_oneof![
        (-50.0f64..50.0).prop_map(|f| format!("{f:.3}")),
        leaf(vec![
            "customer.income".to_string(),
            "customer.churn_risk".into(),
            "days_since(customer.last_contact)".into()
        ]),
        int_expr().prop_map(|i| format!("({i} / 3)")),
    ];
    leaves
        .prop_recursive(3, 16, 3, |inner| {
            prop_oneof![
                (inner.clone(), leaf(vec!["+", "-", "*", "/"]), inner.clone())
                    .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
                (inner.clone(), int_expr()).prop_map(|(a, b)| format!("({a} * {b})")),
                (leaf(vec!["exp", "ln", "sigmoid", "abs"]), inner.clone())
                    .prop_map(|(f, a)| format!("{f}({a})")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("max({a}, {b})")),
                (bool_leaf(), inner.clone(), inner)
                    .prop_map(|(c, a, b)| format!("({c} ? {a} : {b})")),
            ]
        })
        .boxed()
}

fn str_expr() -> BoxedStrategy<String> {
    let leaves = leaf(vec![
        "customer.name".to_string(),
        "context.device".into(),
        "'Ada'".into(),
        "'ÉCOLE'".into(),
        // An enum meets a string through its variant name; bare, it only meets its variants.
        "lower(customer.segment)".into(),
        "''".into(),
    ]);
    leaves
        .prop_recursive(2, 6, 2, |inner| {
            prop_oneof![
                inner.clone().prop_map(|a| format!("lower({a})")),
                (bool_leaf(), inner.clone(), inner)
                    .prop_map(|(c, a, b)| format!("({c} ? {a} : {b})")),
            ]
        })
        .boxed()
}

fn bool_leaf() -> BoxedStrategy<String> {
    leaf(vec![
        "true".to_string(),
        "customer.vip".into(),
        "has(customer.age)".into(),
        "customer.segment in ['gold', 'platinum']".into(),
        "customer.age in [1, 70, 18]".into(),
        "'tv' in customer.products".into(),
        "context.channel == 'web'".into(),
    ])
}

fn bool_expr() -> BoxedStrategy<String> {
    let atoms = prop_oneof![
        bool_leaf(),
        (
            int_expr(),
            leaf(vec!["==", "!=", "<", "<=", ">", ">="]),
            int_expr()
        )
            .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
        (float_expr(), leaf(vec!["<", ">=", "=="]), float_expr())
            .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
        (str_expr(), leaf(vec!["==", "<", "!="]), str_expr())
            .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
        (str_expr(), str_expr()).prop_map(|(a, b)| format!("starts_with({a}, {b})")),
        str_expr().prop_map(|a| format!("{a} in customer.products")),
        str_expr().prop_map(|a| format!("{a} in ['ada', 'Ada', 'école', 'gold']")),
        (float_expr(), 0i64..5).prop_map(|(a, b)| format!("{a} in [0.5, {b}.0, 1]")),
        leaf(vec![
            "now() - customer.last_contact > 7d".to_string(),
            "customer.last_contact + 1h >= now()".into()
        ]),
    ]
    .prop_map(|a| format!("({a})"));
    atoms
        .prop_recursive(3, 24, 2, |inner| {
            prop_oneof![
                inner.clone().prop_map(|a| format!("!({a})")),
                (
                    inner.clone(),
                    leaf(vec!["&&", "||", "==", "!="]),
                    inner.clone()
                )
                    .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
                (inner.clone(), inner.clone(), inner)
                    .prop_map(|(c, a, b)| format!("({c} ? {a} : {b})")),
            ]
        })
        .boxed()
}

fn maybe<T: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = T> + 'static,
    f: fn(T) -> Value,
) -> BoxedStrategy<Value> {
    prop_oneof![1 => Just(Value::Missing), 4 => s.prop_map(f)].boxed()
}

fn customer_values() -> impl Strategy<Value = Vec<Value>> {
    let word = leaf(vec![
        "tv", "Ada", "ada", "ÉCOLE", "école", "gold", "", "mortgage",
    ]);
    (
        maybe(
            prop_oneof![-3i64..80, Just(i64::MAX), Just(i64::MIN)],
            Value::Int,
        ),
        maybe(
            prop_oneof![-100.0f64..100.0, Just(0.0), Just(f64::NAN)],
            Value::Float,
        ),
        maybe(0u32..4, Value::Enum),
        maybe(
            proptest::collection::vec(word.clone(), 0..4),
            |v: Vec<&str>| Value::set(v),
        ),
        maybe(word.clone(), |s: &str| Value::Str(s.into())),
        maybe(any::<bool>(), Value::Bool),
        maybe(
            prop_oneof![
                Just(NOW - 10 * DAY),
                Just(NOW),
                Just(NOW - 3_600_000),
                Just(i64::MIN)
            ],
            Value::Timestamp,
        ),
        maybe(-1.0f64..1.0, Value::Float),
        maybe(-3i64..40, Value::Int),
        maybe(word, |s: &str| Value::Str(s.into())),
        maybe(0u32..4, Value::Enum),
    )
        .prop_map(|(a, b, c, d, e, f, g, h, i, j, k)| vec![a, b, c, d, e, f, g, h, i, j, k])
}

fn same_float(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs()),
        (x, y) => x == y,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn compiled_predicates_agree_with_the_reference(src in bool_expr(), values in customer_values()) {
        let schema = schema();
        let expr = parse(&src).map_err(|e| TestCaseError::fail(format!("`{src}`: {e}")))?;
        let (ir, _) = check::check(&expr, &schema, false, None).map_err(|e| TestCaseError::fail(format!("`{src}`: {e:?}")))?;
        let compiled = compile::compile_bool(&ir);
        let (customer, context) = values.split_at(9);
        let history = history();
        let env = Env::new(customer, context, &[], NOW).with_history(&history, key("o1"), key("g"), key("web"));
        let expected = match reference::eval(&ir, &env) {
            Some(reference::R::Bool(b)) => Some(b),
            None => None,
            other => return Err(TestCaseError::fail(format!("reference gave {other:?}"))),
        };
        prop_assert_eq!(compiled(&env), expected, "`{}` with {:?}", src, values);
    }

    #[test]
    fn compiled_formulas_agree_with_the_reference(src in float_expr(), values in customer_values()) {
        let schema = schema();
        let expr = parse(&src).map_err(|e| TestCaseError::fail(format!("`{src}`: {e}")))?;
        let (ir, ty) = check::check(&expr, &schema, false, None).map_err(|e| TestCaseError::fail(format!("`{src}`: {e:?}")))?;
        prop_assert_eq!(ty, Ty::Float);
        let compiled = compile::compile_float(&ir);
        let (customer, context) = values.split_at(9);
        let history = history();
        let env = Env::new(customer, context, &[], NOW).with_history(&history, key("o1"), key("g"), key("web"));
        let expected = match reference::eval(&ir, &env) {
            Some(reference::R::Float(f)) => Some(f),
            None => None,
            other => return Err(TestCaseError::fail(format!("reference gave {other:?}"))),
        };
        let got = compiled(&env);
        prop_assert!(same_float(got, expected), "`{}` with {:?}: compiled {:?}, reference {:?}", src, values, got, expected);
    }

    #[test]
    fn the_parser_never_panics(src in "\\PC{0,64}") {
        let _ = Predicate::compile(&src, &schema(), "eligibility");
    }

    #[test]
    fn the_checker_never_panics_on_token_soup(tokens in proptest::collection::vec(leaf(vec![
        "customer.age", "customer.segment", "customer.products", "context.device", "customer.last_contact",
        "(", ")", "[", "]", ",", "&&", "||", "!", "-", "+", "*", "/", "%", "==", "<", "in", "?", ":",
        "1", "2.5", "7d", "'gold'", "true", "min", "clamp", "size", "lower", "has", "now", "days_since",
    ]), 0..24)) {
        let src = tokens.join(" ");
        let _ = Predicate::compile(&src, &schema(), "eligibility");
        let _ = Formula::compile(&src, &schema(), "score", true);
    }
}

/// Long chains of constants fold in linear time: each operand used to be folded and then
/// compiled again, twice the work per link (a 41-term `1+…+1` from the fuzzer ran for
/// minutes). At 64 links, exponential work would never finish.
#[test]
fn long_constant_chains_fold_once() {
    let schema = crate::decide::synthetic::catalog(1).schema;
    let env = Env::new(&[], &[], &[], 0);
    let ints = format!("{}1", "1+".repeat(63));
    let f = Formula::compile(&ints, &schema, "value", false).expect("compiles");
    assert_eq!(f.as_constant(), Some(64.0));
    let floats = format!("{}1.0", "1.5*".repeat(63));
    let f = Formula::compile(&floats, &schema, "value", false).expect("compiles");
    let got = f.eval(&env).expect("a number");
    assert!((got / 1.5f64.powi(63) - 1.0).abs() < 1e-12, "{got}");
    let mixed = format!("customer.age + {}1", "2*".repeat(63));
    let f = Formula::compile(&mixed, &schema, "value", false).expect("compiles");
    let customer = [crate::schema::Value::Int(1)];
    assert_eq!(
        f.eval(&Env::new(&customer, &[], &[], 0)),
        None,
        "2^63 overflows: missing"
    );
    let rule = format!("{}1 > 3", "1+".repeat(63));
    assert!(
        Predicate::compile(&rule, &schema, "eligibility")
            .expect("compiles")
            .matches(&env)
    );
}
