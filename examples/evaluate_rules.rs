//! Loads the sample catalog and shows which offers' eligibility rules hold for one
//! customer, and each offer's default score terms: the library used directly, without the
//! command line.
//!
//! `cargo run --example evaluate_rules`

use nextbest::catalog::Catalog;
use nextbest::expr::Env;
use nextbest::schema::Value;

fn main() -> anyhow::Result<()> {
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let catalog = Catalog::load(&rules).map_err(|e| anyhow::anyhow!("{}", e.render()))?;
    let schema = &catalog.schema;
    let now = "2026-11-23T10:00:00Z"
        .parse::<jiff::Timestamp>()?
        .as_millisecond();

    // A customer record is one value per slot; unset slots are missing.
    let mut customer = vec![Value::Missing; schema.customer.len()];
    let mut set = |name: &str, value: Value| -> anyhow::Result<()> {
        let slot = schema
            .customer
            .slot(name)
            .ok_or_else(|| anyhow::anyhow!("no attribute `{name}`"))?;
        customer[slot as usize] = value;
        Ok(())
    };
    set("age", Value::Int(38))?;
    set("tenure_months", Value::Int(40))?;
    set("churn_risk", Value::Float(0.72))?;
    set("plan", Value::Enum(1))?; // basic
    set("data_usage_gb", Value::Float(22.0))?;
    set("products", Value::set(["mobile", "broadband"]))?;
    set("marketing_opt_in", Value::Bool(true))?;
    set("email_verified", Value::Bool(true))?;

    let mut context = vec![Value::Missing; schema.context.len()];
    let channel = schema
        .context
        .slot("channel")
        .ok_or_else(|| anyhow::anyhow!("no context.channel"))?;
    context[channel as usize] = Value::Enum(0); // call_center

    let env = Env::new(&customer, &context, &[], now);
    for offer in &catalog.offers {
        let eligible = offer.eligibility.eval(&env);
        let terms = [
            &offer.propensity,
            &offer.value,
            &offer.weight,
            &offer.context_weight,
        ]
        .map(|f| f.eval(&env));
        let score = terms.iter().try_fold(1.0, |acc, t| t.map(|t| acc * t));
        println!(
            "{:<24} eligible: {:<11} score: {}",
            offer.id,
            match eligible {
                Some(true) => "yes",
                Some(false) => "no",
                None => "undecided",
            },
            score.map_or("missing".to_string(), |s| format!("{s:.2}"))
        );
    }
    Ok(())
}
