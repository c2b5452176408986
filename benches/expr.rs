//! Rule evaluation against hand-written Rust doing the same work on the same record.
//!
//! Each group holds one compiled rule (`compiled`) and a closure (`closure`) that reads the
//! same slots, matches the same value variants and treats missing values the same way:
//! the ratio between the two is the cost of interpretation. Run with
//! `cargo bench --bench expr`; figures are in BENCHMARKS.md.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use nextbest::expr::{Env, Formula, Predicate};
use nextbest::schema::{AttrType, Attribute, EntitySchema, EnumDef, Schema, Value};

/// The allocator the `nextbest` binary runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DAY: i64 = 86_400_000;
const NOW: i64 = 1_790_000_000_000;

fn schema() -> Schema {
    let attr = |name: &str, ty: AttrType, default: Value| Attribute {
        name: name.into(),
        ty,
        default,
        description: None,
    };
    let mut customer = EntitySchema::default();
    for a in [
        attr("age", AttrType::Int, Value::Missing),
        attr(
            "segment",
            AttrType::Enum(EnumDef::new(["mass", "gold", "platinum"])),
            Value::Missing,
        ),
        attr("products", AttrType::Set, Value::Missing),
        attr("last_contact", AttrType::Timestamp, Value::Missing),
        attr("churn_risk", AttrType::Float, Value::Float(0.1)),
        attr("tenure_months", AttrType::Int, Value::Int(0)),
        attr("income", AttrType::Float, Value::Missing),
        attr("email_verified", AttrType::Bool, Value::Missing),
    ] {
        customer.push(a);
    }
    let mut context = EntitySchema::default();
    context.push(attr(
        "channel",
        AttrType::Enum(EnumDef::new(["web", "email", "call_center"])),
        Value::Missing,
    ));
    context.push(attr("device", AttrType::String, Value::Missing));
    Schema::new(customer, context)
}

fn customer() -> Vec<Value> {
    vec![
        Value::Int(42),
        Value::Enum(1),
        Value::set(["broadband", "mobile", "tv"]),
        Value::Timestamp(NOW - 12 * DAY),
        Value::Float(0.35),
        Value::Int(30),
        Value::Float(3200.0),
        Value::Bool(true),
    ]
}

fn context() -> Vec<Value> {
    vec![Value::Enum(2), Value::Str("iPhone".into())]
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) | Value::Timestamp(i) => Some(*i),
        _ => None,
    }
}

fn float(v: &Value, default: Option<f64>) -> Option<f64> {
    match v {
        Value::Float(f) if f.is_finite() => Some(*f),
        Value::Missing => default,
        _ => None,
    }
}

fn bench_predicate(
    c: &mut Criterion,
    name: &str,
    src: &str,
    closure: impl Fn(&[Value], &[Value], i64) -> Option<bool>,
) {
    let schema = schema();
    let rule = Predicate::compile(src, &schema, "eligibility").expect("the bench rule compiles");
    let (cu, cx) = (customer(), context());
    let env = Env::new(&cu, &cx, &[], NOW);
    assert_eq!(
        rule.eval(&env),
        closure(&cu, &cx, NOW),
        "{name}: the closure must do the same work"
    );
    assert_eq!(
        rule.eval(&env),
        Some(true),
        "{name}: the bench customer must pass every predicate"
    );
    let mut group = c.benchmark_group(name);
    group.bench_function("compiled", |b| {
        b.iter(|| black_box(&rule).eval(black_box(&env)))
    });
    group.bench_function("closure", |b| {
        b.iter(|| closure(black_box(&cu), black_box(&cx), black_box(NOW)))
    });
    group.finish();
}

fn rules(c: &mut Criterion) {
    // The four-predicate rule of the issue: a comparison, an enum list, a set, a time.
    bench_predicate(
        c,
        "eligibility_4",
        "customer.age >= 18 && customer.segment in ['gold', 'platinum'] \
         && !('mortgage' in customer.products) && days_since(customer.last_contact) > 7",
        |cu, _, now| {
            let age = int(&cu[0])? >= 18;
            let seg = match cu[1] {
                Value::Enum(e) => e == 1 || e == 2,
                _ => return None,
            };
            let products = match &cu[2] {
                Value::Set(s) => s.binary_search_by(|p| (**p).cmp("mortgage")).is_err(),
                _ => return None,
            };
            let days = (now - int(&cu[3])?) as f64 / DAY as f64 > 7.0;
            Some(age && seg && products && days)
        },
    );
    // Five predicates with a float, a default, a string function and a presence test.
    bench_predicate(
        c,
        "eligibility_5",
        "customer.income > 2000.0 && customer.churn_risk < 0.5 && customer.segment != 'mass' \
         && lower(context.device) == 'iphone' && has(customer.email_verified)",
        |cu, cx, _| {
            let income = float(&cu[6], None)? > 2000.0;
            let churn = float(&cu[4], Some(0.1))? < 0.5;
            let seg = match cu[1] {
                Value::Enum(e) => e != 0,
                _ => return None,
            };
            let device = match &cx[1] {
                Value::Str(s) if s.is_ascii() => s.eq_ignore_ascii_case("iphone"),
                Value::Str(s) => s.chars().flat_map(char::to_lowercase).eq("iphone".chars()),
                _ => return None,
            };
            let has = !cu[7].is_missing();
            Some(income && churn && seg && device && has)
        },
    );
}

fn scores(c: &mut Criterion) {
    let schema = schema();
    let src = "(0.05 + 0.3 * customer.churn_risk) * (customer.tenure_months > 24 ? 1.2 : 1.0)";
    let formula =
        Formula::compile(src, &schema, "propensity", false).expect("the bench formula compiles");
    let (cu, cx) = (customer(), context());
    let env = Env::new(&cu, &cx, &[], NOW);
    let closure = |cu: &[Value]| -> Option<f64> {
        let churn = float(&cu[4], Some(0.1))?;
        let tenure = match &cu[5] {
            Value::Int(i) => *i,
            Value::Missing => 0,
            _ => return None,
        };
        let x = (0.05 + 0.3 * churn) * if tenure > 24 { 1.2 } else { 1.0 };
        x.is_finite().then_some(x)
    };
    assert_eq!(formula.eval(&env), closure(&cu));
    let mut group = c.benchmark_group("score");
    group.bench_function("compiled", |b| {
        b.iter(|| black_box(&formula).eval(black_box(&env)))
    });
    group.bench_function("closure", |b| b.iter(|| closure(black_box(&cu))));
    group.finish();
}

criterion_group!(benches, rules, scores);
criterion_main!(benches);
