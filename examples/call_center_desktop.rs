//! A call-centre agent's screen, in a terminal, against a running `nextbest serve`: the
//! customer's profile and recent history, the three next best actions with their agent
//! scripts and why, then the customer turns the top offer down and the next decision
//! changes because of the contact policy.
//!
//! ```sh
//! cargo run --release -- serve                 # in one terminal
//! cargo run --example call_center_desktop      # in another
//! ```
//! Options: `-- [ADDR] [CUSTOMER_FILE]`, default `http://127.0.0.1:50051` and
//! `examples/customers/ada.json`; `NEXTBEST_ADMIN_TOKEN` if the server has one.

use std::collections::HashMap;

use nextbest::server::proto::customer_service_client::CustomerServiceClient;
use nextbest::server::proto::decision_service_client::DecisionServiceClient;
use nextbest::server::proto::{self, value::Kind};

const PLACEMENT: &str = "call_center.next_best";

/// A JSON attribute as a typed proto value.
fn value(v: &serde_json::Value) -> Option<proto::Value> {
    let kind = match v {
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) if n.is_i64() => Kind::IntValue(n.as_i64()?),
        serde_json::Value::Number(n) => Kind::DoubleValue(n.as_f64()?),
        serde_json::Value::String(s) => match s.parse::<jiff::Timestamp>() {
            Ok(t) => Kind::TimestampValue(prost_types::Timestamp {
                seconds: t.as_second(),
                nanos: t.subsec_nanosecond(),
            }),
            Err(_) => Kind::StringValue(s.clone()),
        },
        serde_json::Value::Array(items) => Kind::StringList(proto::StringList {
            values: items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect(),
        }),
        _ => return None,
    };
    Some(proto::Value { kind: Some(kind) })
}

fn show(v: &proto::Value) -> String {
    match &v.kind {
        Some(Kind::BoolValue(b)) => b.to_string(),
        Some(Kind::IntValue(i)) => i.to_string(),
        Some(Kind::DoubleValue(x)) => format!("{x:.2}"),
        Some(Kind::StringValue(s)) => s.clone(),
        Some(Kind::StringList(l)) => l.values.join(", "),
        Some(Kind::TimestampValue(t)) => jiff::Timestamp::from_second(t.seconds).map_or_else(
            |_| t.seconds.to_string(),
            |t| t.strftime("%Y-%m-%d").to_string(),
        ),
        None => String::new(),
    }
}

fn authorized<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(token) = std::env::var("NEXTBEST_ADMIN_TOKEN")
        && let Ok(header) = format!("Bearer {token}").parse()
    {
        request.metadata_mut().insert("authorization", header);
    }
    request
}

fn print_decision(d: &proto::Decision) {
    println!(
        "\n  Next best actions (catalog {}, {} {}):",
        d.catalog_version,
        if d.experiment.is_empty() {
            "no experiment"
        } else {
            &d.experiment
        },
        d.arm
    );
    if d.offers.is_empty() {
        println!("    nothing to offer now: {}", d.suppressed);
    }
    for o in &d.offers {
        let script = o
            .content
            .get("agent_script")
            .or_else(|| o.content.get("title"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        println!(
            "    {}. {:<28} score {:>7.2}  p={:.3}{}",
            o.slot + 1,
            o.name,
            o.score,
            o.propensity,
            if o.explored { "  (exploring)" } else { "" }
        );
        println!("       \"{script}\"");
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args
        .first()
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let file = args.get(1).cloned().unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples/customers/ada.json").into()
    });
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
    let id = json["id"].as_str().unwrap_or("cust-0042").to_string();
    let attributes: HashMap<String, proto::Value> = json["attributes"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), value(v)?)))
        .collect();

    let mut customers = CustomerServiceClient::connect(addr.clone()).await?;
    let mut decisions = DecisionServiceClient::connect(addr).await?;
    customers
        .upsert(authorized(proto::UpsertRequest {
            customer_id: id.clone(),
            attributes,
        }))
        .await?;
    let profile = customers
        .get(authorized(proto::GetRequest {
            customer_id: id.clone(),
            history_limit: 5,
        }))
        .await?
        .into_inner();
    println!("Incoming call: customer {id}");
    let mut names: Vec<&String> = profile.attributes.keys().collect();
    names.sort();
    for name in names {
        println!("  {name:<20} {}", show(&profile.attributes[name]));
    }
    println!("  recent history:");
    if profile.history.is_empty() {
        println!("    (none)");
    }
    for e in &profile.history {
        let kind = proto::OutcomeKind::try_from(e.kind)
            .map(|k| {
                k.as_str_name()
                    .trim_start_matches("OUTCOME_KIND_")
                    .to_lowercase()
            })
            .unwrap_or_default();
        println!(
            "    {} {} {} via {}",
            show(&proto::Value {
                kind: e.at.map(Kind::TimestampValue)
            }),
            kind,
            e.offer_id,
            e.channel
        );
    }

    let decide = proto::DecideRequest {
        customer_id: id.clone(),
        placement: PLACEMENT.into(),
        explain: true,
        ..Default::default()
    };
    let mut d = decisions.decide(decide.clone()).await?.into_inner();
    print_decision(&d);
    // The agent presents the top offer; the customer says no, until the policy steps in.
    for _ in 0..3 {
        let Some(top) = d.offers.first().cloned() else {
            break;
        };
        println!(
            "\n  The agent presents \"{}\"; the customer declines.",
            top.name
        );
        for kind in [proto::OutcomeKind::Impression, proto::OutcomeKind::Reject] {
            decisions
                .record_outcome(proto::Outcome {
                    decision_id: d.decision_id.clone(),
                    offer_id: top.offer_id.clone(),
                    kind: kind as i32,
                    ..Default::default()
                })
                .await?;
        }
        d = decisions.decide(decide.clone()).await?.into_inner();
        if d.offers.first().map(|o| &o.offer_id) != Some(&top.offer_id) {
            let why = d
                .explanation
                .iter()
                .find(|e| e.offer_id == top.offer_id)
                .map_or("", |e| e.outcome.as_str());
            println!("  \"{}\" is no longer first: {why}", top.name);
            print_decision(&d);
            return Ok(());
        }
        println!("  still the best offer for now (the policy allows another try)");
    }
    print_decision(&d);
    Ok(())
}
