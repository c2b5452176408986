//! `kill -9` of a real `nextbest serve` under write load: after a restart every
//! acknowledged write is there, budgets and contact policies agree with what is there,
//! and what was not acknowledged can be retried without being counted twice.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use nextbest::server::proto::customer_service_client::CustomerServiceClient;
use nextbest::server::proto::decision_service_client::DecisionServiceClient;
use nextbest::server::proto::{self, value::Kind};

/// A multiple of the 16 callers, so that each customer has one writer and the tenures
/// acknowledged for it only grow: with 24, callers 2 and 10 both wrote `c18` (tenure 1
/// and 2), and a later tenure 1 after an acknowledged 2 failed the check without any
/// write being lost.
const CUSTOMERS: usize = 32;

fn int(i: i64) -> proto::Value {
    proto::Value {
        kind: Some(Kind::IntValue(i)),
    }
}

fn impression(d: &proto::Decision) -> proto::Outcome {
    proto::Outcome {
        decision_id: d.decision_id.clone(),
        offer_id: d.offers[0].offer_id.clone(),
        kind: proto::OutcomeKind::Impression as i32,
        ..Default::default()
    }
}

/// A decision for the customer's email hero.
async fn email(
    decisions: &mut DecisionServiceClient<tonic::transport::Channel>,
    customer: &str,
) -> proto::Decision {
    decisions
        .decide(proto::DecideRequest {
            customer_id: customer.into(),
            placement: "email.hero".into(),
            ..Default::default()
        })
        .await
        .expect("decide")
        .into_inner()
}

async fn connect(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

#[test]
fn sigkill_under_write_load_loses_no_acknowledged_write_and_retries_count_once() {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let data = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    for round in 0..2 {
        let serve = common::Serve::start(&rules, data.path());
        let (acked_upserts, impressions) = runtime.block_on(async {
            let channel = connect(&serve.addr).await;
            let mut customers = CustomerServiceClient::new(channel.clone());
            let mut decisions = DecisionServiceClient::new(channel.clone());
            // Two email decisions a customer, before any impression: each shows an offer.
            let mut impressions = Vec::new();
            for c in 0..CUSTOMERS {
                let id = format!("r{round}c{c}");
                customers
                    .upsert(proto::UpsertRequest {
                        customer_id: id.clone(),
                        attributes: [("tenure_months".to_string(), int(0))].into(),
                    })
                    .await
                    .expect("upsert");
                for _ in 0..2 {
                    let d = email(&mut decisions, &id).await;
                    impressions.push((id.clone(), impression(&d)));
                }
            }
            // The load: impressions and upserts of a growing tenure from 16 callers.
            let pending = Arc::new(Mutex::new(impressions.clone()));
            let acked_outcomes = Arc::new(Mutex::new(Vec::new()));
            let acked_upserts = Arc::new(Mutex::new(HashMap::<String, i64>::new()));
            let callers: Vec<_> = (0..16)
                .map(|t| {
                    let (pending, acked_outcomes) =
                        (Arc::clone(&pending), Arc::clone(&acked_outcomes));
                    let acked_upserts = Arc::clone(&acked_upserts);
                    let mut decisions = DecisionServiceClient::new(channel.clone());
                    let mut customers = CustomerServiceClient::new(channel.clone());
                    tokio::spawn(async move {
                        for k in 1i64.. {
                            let id = format!("r{round}c{}", (t + 16 * k as usize) % CUSTOMERS);
                            let upsert = customers
                                .upsert(proto::UpsertRequest {
                                    customer_id: id.clone(),
                                    attributes: [("tenure_months".to_string(), int(k))].into(),
                                })
                                .await;
                            if upsert.is_err() {
                                return;
                            }
                            {
                                let mut acked = acked_upserts.lock().expect("lock");
                                let last = acked.entry(id).or_default();
                                *last = (*last).max(k);
                            }
                            let next = pending.lock().expect("lock").pop();
                            if let Some((_, outcome)) = next {
                                match decisions.record_outcome(outcome.clone()).await {
                                    Ok(_) => acked_outcomes.lock().expect("lock").push(outcome),
                                    Err(_) => return,
                                }
                            }
                        }
                    })
                })
                .collect();
            while acked_outcomes.lock().expect("lock").len() < impressions.len() / 3 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            serve.signal("KILL");
            for caller in callers {
                caller.await.expect("caller");
            }
            let acked_upserts = acked_upserts.lock().expect("lock").clone();
            let acked_outcomes = acked_outcomes.lock().expect("lock").clone();
            let acked: Vec<_> = impressions
                .into_iter()
                .map(|(id, o)| {
                    let was_acked = acked_outcomes.contains(&o);
                    (id, o, was_acked)
                })
                .collect();
            (acked_upserts, acked)
        });
        drop(serve);

        let serve = common::Serve::start(&rules, data.path());
        runtime.block_on(async {
            let channel = connect(&serve.addr).await;
            let mut customers = CustomerServiceClient::new(channel.clone());
            let mut decisions = DecisionServiceClient::new(channel.clone());
            for (id, last) in &acked_upserts {
                let got = customers
                    .get(proto::GetRequest {
                        customer_id: id.clone(),
                        history_limit: 0,
                    })
                    .await
                    .expect("an acknowledged customer is there")
                    .into_inner();
                let Some(Kind::IntValue(tenure)) = got
                    .attributes
                    .get("tenure_months")
                    .and_then(|v| v.kind.clone())
                else {
                    panic!("{id} has no tenure: {got:?}");
                };
                assert!(
                    tenure >= *last,
                    "{id}: tenure {tenure}, acknowledged {last}"
                );
            }
            // Acknowledged impressions are known; the others are retried and count once.
            for (_, outcome, was_acked) in &impressions {
                let ack = decisions
                    .record_outcome(outcome.clone())
                    .await
                    .expect("retry")
                    .into_inner();
                if *was_acked {
                    assert!(ack.duplicate, "an acknowledged impression was lost");
                }
                let again = decisions
                    .record_outcome(outcome.clone())
                    .await
                    .expect("retry")
                    .into_inner();
                assert!(again.duplicate, "a retry counted twice");
            }
            // Every customer now has exactly its two impressions, and the email cap (2 in
            // 7 days) holds.
            for c in 0..CUSTOMERS {
                let id = format!("r{round}c{c}");
                let got = customers
                    .get(proto::GetRequest {
                        customer_id: id.clone(),
                        history_limit: 0,
                    })
                    .await
                    .expect("get")
                    .into_inner();
                let shown = got
                    .history
                    .iter()
                    .filter(|e| e.kind == proto::OutcomeKind::Impression as i32)
                    .count();
                assert_eq!(shown, 2, "{id}: {:?}", got.history);
                let capped = email(&mut decisions, &id).await;
                assert!(capped.offers.is_empty(), "{id}: the email cap holds");
            }
        });
        serve.signal("TERM");
        let mut serve = serve;
        assert!(serve.child.wait().expect("wait").success());
        // The budget counters agree: every impression of both rounds counted once.
        let catalog = Arc::new(nextbest::catalog::Catalog::load(&rules).expect("catalog"));
        let (db, _) = nextbest::db::Db::open(data.path(), Arc::clone(&catalog), Default::default())
            .expect("open");
        let budgets = db.budgets(jiff::Timestamp::now().as_millisecond());
        use nextbest::decide::{BudgetScope, Budgets};
        let counted: u64 = catalog
            .offers
            .iter()
            .map(|o| budgets.spent(BudgetScope::Offer(o.key)).total)
            .sum();
        assert_eq!(counted, (2 * CUSTOMERS * (round + 1)) as u64);
        db.close().expect("close");
    }
}
