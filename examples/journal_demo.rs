//! Fills a data directory with a demo journal on the sample catalog: synthetic
//! customers, decisions in every placement over simulated days, and outcomes drawn from a
//! simple fixed response model. The export scripts under `scripts/` train on it; it is
//! also a worked example of the library's durable API (`Db`).
//!
//! `cargo run --example journal_demo -- DATA_DIR [CUSTOMERS] [DECISIONS] [SEED]`

use std::sync::Arc;

use nextbest::catalog::Catalog;
use nextbest::db::{Db, DbOptions, OutcomeInput};
use nextbest::decide::{Context, Options, decide};
use nextbest::schema::{EventKind, Value};

/// A uniform draw in [0, 1) from a hash of its inputs: reproducible for a seed.
fn uniform(seed: u64, what: &str, n: u64) -> f64 {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(format!("{what}/{n}").as_bytes(), seed);
    (h >> 11) as f64 / (1u64 << 53) as f64
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first() else {
        anyhow::bail!("usage: journal_demo DATA_DIR [CUSTOMERS] [DECISIONS] [SEED]");
    };
    let number = |i: usize, default: u64| -> anyhow::Result<u64> {
        Ok(args
            .get(i)
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(default))
    };
    let (customers, decisions, seed) = (number(1, 500)?, number(2, 5000)?, number(3, 7)?);
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let catalog = Arc::new(Catalog::load(&rules).map_err(|e| anyhow::anyhow!("{}", e.render()))?);
    let (db, recovery) = Db::open(dir.as_ref(), Arc::clone(&catalog), DbOptions::default())?;
    eprintln!("{dir}: {recovery}");
    let start = "2026-11-01T08:00:00Z"
        .parse::<jiff::Timestamp>()?
        .as_millisecond();

    let schema = &catalog.schema.customer;
    let enum_of = |name: &str, n: u64| -> Value {
        let Some(slot) = schema.slot(name) else {
            return Value::Missing;
        };
        match &schema.get(slot).map(|a| &a.ty) {
            Some(nextbest::schema::AttrType::Enum(def)) => {
                let k = (uniform(seed, name, n) * def.variants.len() as f64) as u32;
                Value::Enum(k)
            }
            _ => Value::Missing,
        }
    };
    for c in 0..customers {
        let mut values = vec![Value::Missing; schema.len()];
        let mut set = |name: &str, v: Value| {
            if let Some(slot) = schema.slot(name) {
                values[slot as usize] = v;
            }
        };
        let u = |what: &str| uniform(seed, what, c);
        set("age", Value::Int(18 + (u("age") * 60.0) as i64));
        set("segment", enum_of("segment", c));
        set("region", enum_of("region", c));
        set("plan", enum_of("plan", c));
        set("credit_band", enum_of("credit_band", c));
        set("tenure_months", Value::Int((u("tenure") * 120.0) as i64));
        set("monthly_spend", Value::Float(15.0 + u("spend") * 90.0));
        set("lifetime_value", Value::Float(100.0 + u("ltv") * 1500.0));
        set("data_usage_gb", Value::Float(u("data") * 60.0));
        set("churn_risk", Value::Float(u("churn")));
        set(
            "handset_age_months",
            Value::Int((u("handset") * 48.0) as i64),
        );
        set("marketing_opt_in", Value::Bool(u("optin") < 0.8));
        set("email_verified", Value::Bool(u("email") < 0.9));
        set("fiber_available", Value::Bool(u("fiber") < 0.5));
        let products = ["mobile", "broadband", "tv", "insurance"]
            .into_iter()
            .filter(|p| u(p) < 0.4);
        set("products", Value::set(products));
        set(
            "contract_end",
            Value::Timestamp(start + (u("contract") * 200.0 * 86_400_000.0) as i64),
        );
        db.upsert(&catalog, &format!("cust-{c:05}"), values, start, false)?;
    }
    db.sync()?;

    let churn = schema.slot("churn_risk").map(|s| s as usize);
    let (mut shown, mut accepted) = (0u64, 0u64);
    for n in 0..decisions {
        let now = start + n as i64 * 300_000;
        let customer = format!(
            "cust-{:05}",
            (uniform(seed, "who", n) * customers as f64) as u64
        );
        let placement = (uniform(seed, "where", n) * catalog.placements.len() as f64) as usize;
        let Some(state) = db.store().with(&customer, |s| s.cloned())? else {
            continue;
        };
        let context = Context::for_placement(&catalog, placement, vec![]);
        let id = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            (now / 1000) as u64,
            (n % 1_000_000) as u32 * 1000,
        ));
        let decision = decide(
            &catalog,
            &state,
            &context,
            placement,
            now,
            &Options::new(id),
        );
        let offers: Vec<usize> = decision.offers.iter().map(|s| s.offer).collect();
        db.log_decision(&catalog, &state, &context, decision)?;
        // The response model: retention offers appeal with churn risk, the rest less.
        let risk = churn
            .and_then(|s| match state.attributes.get(s) {
                Some(Value::Float(x)) => Some(*x),
                _ => None,
            })
            .unwrap_or(0.1);
        for (slot, offer) in offers.into_iter().enumerate() {
            let o = &catalog.offers[offer];
            let outcome = |kind, at| OutcomeInput {
                decision: id,
                offer: o.id.clone(),
                kind,
                value: None,
                at,
                customer: None,
                channel: None,
            };
            db.record_outcome(&outcome(EventKind::Impression, now + 1000), now + 1000)?;
            shown += 1;
            let p = match o.group.as_deref() {
                Some("retention") => 0.05 + 0.4 * risk,
                _ => 0.08,
            } / (1.0 + slot as f64);
            if uniform(seed, &o.id, n) < p {
                let mut accept = outcome(EventKind::Accept, now + 60_000);
                accept.value = Some(10.0 + o.id.len() as f64);
                db.record_outcome(&accept, accept.at)?;
                accepted += 1;
            }
        }
    }
    db.close()?;
    eprintln!(
        "{customers} customers, {decisions} decisions, {shown} offers shown, {accepted} accepted"
    );
    Ok(())
}
