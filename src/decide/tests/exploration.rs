//! Exploration over many customers: slot frequencies against the logged propensities,
//! the same draw in every channel and placement; and the fast paths (shared clauses,
//! bitset arbitration) held to plain references on random inputs.

use super::*;

/// Five always-eligible offers with distinct scores, shown on web, email and call_center.
fn exploring(epsilon: f64, slots: u32) -> Catalog {
    let placements = format!(
        "placements:\n  - {{ id: web, channel: web, slots: {slots}, experiment: explore }}\n  \
         - {{ id: email, channel: email, slots: {slots}, experiment: explore }}\n  \
         - {{ id: call, channel: call_center, slots: {slots}, experiment: explore }}\n"
    );
    let offers: String = (1..=5)
        .map(|i| format!("  - id: o{i}\n    value: {i}\n    content: {{ web: {{ t: o{i} }}, email: {{ t: o{i} }}, call: {{ t: o{i} }} }}\n"))
        .collect();
    let experiments = EXPERIMENTS.replace("epsilon: 0.0", &format!("epsilon: {epsilon}"));
    Catalog::from_yaml(
        SCHEMA,
        &placements,
        &experiments,
        &[&format!("offers:\n{offers}")],
    )
    .unwrap_or_else(|e| panic!("{}", e.render()))
}

fn decide_for(catalog: &Catalog, placement: &str, id: &str, now: i64) -> Decision {
    let p = catalog.placement(placement).expect("placement");
    let customer = CustomerState {
        id: Some(id.to_string()),
        ..CustomerState::default()
    };
    decide(
        catalog,
        &customer,
        &Context::for_placement(catalog, p, vec![]),
        p,
        now,
        &Options::new(Uuid::from_u128(9)),
    )
}

#[test]
fn slot_frequencies_match_the_logged_propensities() {
    // Over 100,000 customers, how often each offer lands in each slot must match the sum
    // of the probabilities the policy claims for it, computed here from first principles
    // (the best remaining offer by score gets 1 - eps + eps/K, every other remaining eps/K),
    // and every logged propensity must be that number. Chi-square over the 10 cells.
    let (eps, slots, n) = (0.3, 2, 100_000);
    let catalog = exploring(eps, slots);
    let mut observed = [[0f64; 5]; 2];
    let mut expected = [[0f64; 5]; 2];
    for i in 0..n {
        let d = decide_for(&catalog, "web", &format!("customer-{i}"), NOW);
        assert_eq!(d.offers.len(), 2);
        let mut shown: Vec<usize> = Vec::new();
        for s in &d.offers {
            let remaining: Vec<usize> = (0..5).filter(|o| !shown.contains(o)).collect();
            let best = *remaining.iter().max().expect("offers remain"); // o5 scores highest
            let k = remaining.len() as f64;
            for &o in &remaining {
                expected[s.slot as usize][o] += if o == best {
                    1.0 - eps + eps / k
                } else {
                    eps / k
                };
            }
            let logged_should_be = if s.offer == best {
                1.0 - eps + eps / k
            } else {
                eps / k
            };
            assert!(
                (s.propensity - logged_should_be).abs() < 1e-12,
                "logged {} for {:?}",
                s.propensity,
                s
            );
            observed[s.slot as usize][s.offer] += 1.0;
            shown.push(s.offer);
        }
    }
    let chi2: f64 = (0..2)
        .flat_map(|slot| (0..5).map(move |o| (slot, o)))
        .filter(|&(slot, o)| expected[slot][o] > 0.0)
        .map(|(slot, o)| (observed[slot][o] - expected[slot][o]).powi(2) / expected[slot][o])
        .sum();
    // 8 degrees of freedom (5 - 1 per slot); 26.1 is the 0.1% critical value.
    assert!(
        chi2 < 26.1,
        "chi-square {chi2}: observed {observed:?}, expected {expected:?}"
    );
}

#[test]
fn exploration_is_consistent_across_channels_and_calls() {
    let catalog = exploring(1.0, 1);
    let mut redrawn = 0;
    for i in 0..200 {
        let id = format!("c{i}");
        let shown = |placement: &str, now: i64| {
            let d = decide_for(&catalog, placement, &id, now);
            assert!(d.offers[0].explored);
            d.offers[0].offer
        };
        let web = shown("web", NOW);
        assert_eq!(
            shown("email", NOW + 3_600_000),
            web,
            "email in the same window shows what web showed"
        );
        assert_eq!(
            shown("call", NOW + 7_200_000),
            web,
            "so does the call centre"
        );
        assert_eq!(shown("web", NOW), web, "a repeated call is identical");
        redrawn += usize::from(shown("web", NOW + DAY) != web);
    }
    // Another window redraws: 4 in 5 customers see another offer (allowing for chance).
    assert!(
        redrawn > 120,
        "only {redrawn} of 200 redrew in the next window"
    );
}

#[test]
fn the_explore_draw_is_shared_by_placements() {
    let catalog = exploring(0.5, 1);
    let mut explored = 0;
    for i in 0..500 {
        let id = format!("c{i}");
        let web = decide_for(&catalog, "web", &id, NOW).offers[0];
        let email = decide_for(&catalog, "email", &id, NOW).offers[0];
        assert_eq!(
            (web.explored, web.offer),
            (email.explored, email.offer),
            "customer {id}"
        );
        explored += usize::from(web.explored);
    }
    assert!(
        (200..300).contains(&explored),
        "{explored} of 500 explored at epsilon 0.5"
    );
}

/// Eligibility through the catalog's shared clauses (memoised per decision) agrees with
/// each rule evaluated whole, for the sample catalog's rules (history functions, sets,
/// timestamps, `||`, missing values) and many random customers, contexts and histories,
/// every offer in turn against one memo, as decide uses it; and so does each offer's
/// plan (clause bits and ids) where its rule is all shared clauses.
#[test]
fn shared_clauses_decide_as_the_whole_rules_do() {
    use crate::learn::scenario::uniform;
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let catalog = Catalog::load(&rules).expect("sample catalog");
    let split = catalog
        .offers
        .iter()
        .filter(|o| o.clauses.is_some())
        .count();
    assert!(split > 15, "most rules split: {split}");
    assert!(
        catalog.clauses.len()
            < catalog
                .offers
                .iter()
                .map(|o| o.clauses.as_ref().map_or(0, |c| c.len()))
                .sum(),
        "some clauses are shared"
    );
    let value = |ty: &AttrType, n: u64, what: &str| -> Value {
        let u = |k: &str| uniform(3, &format!("{what}/{k}"), n);
        if u("missing") < 0.15 {
            return Value::Missing;
        }
        match ty {
            AttrType::Bool => Value::Bool(u("b") < 0.5),
            AttrType::Int => Value::Int((u("i") * 130.0) as i64 - 10),
            AttrType::Float => Value::Float(u("f") * 120.0 - 10.0),
            AttrType::String => Value::Str(if u("s") < 0.5 { "en" } else { "de" }.into()),
            AttrType::Enum(def) => Value::Enum((u("e") * def.variants.len() as f64) as u32),
            AttrType::Set => Value::set(
                [
                    "mobile",
                    "broadband",
                    "tv",
                    "insurance",
                    "smartwatch",
                    "streaming",
                    "paperless",
                ]
                .into_iter()
                .filter(|m| u(m) < 0.4),
            ),
            AttrType::Timestamp => {
                Value::Timestamp(NOW + ((u("t") - 0.5) * 400.0 * DAY as f64) as i64)
            }
        }
    };
    let mut checked = 0;
    let mut plans = 0;
    for n in 0..3000u64 {
        let attributes: Vec<Value> = catalog
            .schema
            .customer
            .attributes()
            .iter()
            .map(|a| value(&a.ty, n, &a.name))
            .collect();
        let context: Vec<Value> = catalog
            .schema
            .context
            .attributes()
            .iter()
            .map(|a| value(&a.ty, n, &format!("context.{}", a.name)))
            .collect();
        let mut history = History::default();
        for j in 0..(n % 12) {
            let offer = &catalog.offers
                [(uniform(5, "offer", n * 16 + j) * catalog.offers.len() as f64) as usize];
            let kind = EventKind::ALL[(uniform(5, "kind", n * 16 + j) * 5.0) as usize];
            let at = NOW - (uniform(5, "at", n * 16 + j) * 120.0 * DAY as f64) as i64;
            history.record(
                Event::new(at, &offer.id, offer.group.as_deref(), "call_center", kind),
                HistoryLimits::default(),
                NOW,
            );
        }
        let mut memo = vec![crate::expr::memo::UNKNOWN; catalog.clauses.len()];
        // The plan's path: clause bits below 64, the byte memo above (its own memo).
        let mut bits = crate::expr::ClauseBits::default();
        let mut plan_memo = vec![crate::expr::memo::UNKNOWN; catalog.clauses.len()];
        let planned: HashMap<usize, (&Planned, &[u32])> = catalog
            .placements
            .iter()
            .flat_map(|p| {
                p.plan.offers.iter().map(|o| {
                    let (start, end) = o.clauses;
                    (
                        o.offer as usize,
                        (o, &p.plan.clauses[start as usize..end as usize]),
                    )
                })
            })
            .collect();
        for (idx, offer) in catalog.offers.iter().enumerate() {
            let env = Env::new(&attributes, &context, &[], NOW).with_history(
                history.events(),
                offer.key,
                offer.group_key,
                crate::schema::key("call_center"),
            );
            let whole = offer.eligibility.matches(&env);
            let shared = match &offer.clauses {
                Some(c) => catalog.clauses.matches(c, &env, &mut memo),
                None => whole,
            };
            assert_eq!(
                shared, whole,
                "offer {} for customer {n}: {attributes:?} {context:?}",
                offer.id
            );
            if let Some((p, ids)) = planned.get(&idx)
                && p.has(flags::SHARED_RULE)
            {
                let by_plan = catalog.clauses.all_in(p.mask, &env, &mut bits)
                    && catalog.clauses.all(ids, &env, &mut plan_memo);
                assert_eq!(
                    by_plan, whole,
                    "offer {} by its plan, customer {n}",
                    offer.id
                );
                plans += 1;
            }
            checked += usize::from(whole);
        }
    }
    assert!(
        checked > 1000,
        "{checked} eligible pairs: the customers reach the rules"
    );
    assert!(plans > 30_000, "{plans} offers checked by their plan");
}

/// Arbitration as first written: for each slot, scan every candidate and ask whether an
/// offer shown so far, or its group, takes it. The bitset arbitration must agree.
fn arbitrate_reference(
    candidates: &[Candidate],
    slots: u32,
    one_per_group: bool,
    epsilon: f64,
    draw: Option<(Unit, i64)>,
) -> Vec<Shown> {
    let mut shown: Vec<Shown> = Vec::new();
    let mut groups: Vec<u32> = Vec::new();
    for slot in 0..slots {
        let taken = |c: &Candidate| {
            shown.iter().any(|s| s.offer == c.offer)
                || (one_per_group && c.group != 0 && groups.contains(&c.group))
        };
        let mut best: Option<&Candidate> = None;
        let mut remaining = 0;
        for c in candidates.iter().filter(|c| !taken(c)) {
            remaining += 1;
            if best.is_none_or(|b| c.score > b.score) {
                best = Some(c);
            }
        }
        let Some(best) = best.copied() else { break };
        let explored = draw.is_some_and(|(unit, window)| unit.explores(window, slot, epsilon));
        let chosen = match draw {
            Some((unit, window)) if explored => candidates
                .iter()
                .filter(|c| !taken(c))
                .max_by_key(|c| unit.rank(window, c.key))
                .copied()
                .unwrap_or(best),
            _ => best,
        };
        groups.push(chosen.group);
        shown.push(Shown {
            offer: chosen.offer,
            slot,
            score: chosen.score,
            propensity: propensity(epsilon, chosen.offer == best.offer, remaining),
            explored,
            fallback: false,
        });
    }
    shown
}

proptest::proptest! {
    #[test]
    fn arbitration_agrees_with_the_first_written(
        drawn in proptest::collection::vec((0u8..6, 0u32..5, 1u32..1000), 0..150),
        slots in 1u32..6,
        one_per_group: bool,
        epsilon in proptest::sample::select(vec![0.0, 0.3, 1.0]),
        unit in 0u64..1_000_000,
    ) {
        // Few distinct scores and groups: ties and shared groups everywhere.
        let candidates: Vec<Candidate> = drawn
            .iter()
            .enumerate()
            .map(|(i, &(score, group, key))| Candidate {
                offer: i,
                score: f64::from(score),
                group,
                key,
            })
            .collect();
        let mut catalog = exploring(epsilon, slots);
        catalog.placements[0].one_per_group = one_per_group;
        let draw = Some((Unit::new("salt", &unit.to_string()), 7));
        let mut decision = Decision {
            id: Uuid::from_u128(1),
            at: NOW,
            catalog_version: catalog.version.clone(),
            placement: 0,
            experiment: Some(0),
            arm: Some(0),
            epsilon,
            offers: Vec::new(),
            candidates: candidates.clone(),
            suppressed: None,
            explanation: None,
            learned: None,
        };
        let options = Options::new(Uuid::from_u128(1));
        arbitrate(&catalog, &catalog.placements[0], &mut decision, &options, draw);
        let expected = arbitrate_reference(&candidates, slots, one_per_group, epsilon, draw);
        proptest::prop_assert_eq!(decision.offers, expected);
    }
}
