//! Decide, one behaviour per case, through small catalogs (this file); the statistics of
//! the exploration, its consistency across channels and the agreement of the fast paths
//! with plain references are in `exploration.rs`.

use std::collections::HashMap;

use uuid::Uuid;

use super::*;
use crate::state::{Event, EventKind, History, HistoryLimits};

mod exploration;
mod index;

const DAY: i64 = 86_400_000;
/// 2026-11-23T10:00:00Z.
const NOW: i64 = 1_795_428_000_000;

const SCHEMA: &str = "\
customer:
  age: { type: int }
  segment: { type: enum, values: [mass, gold] }
  risk: { type: float }
context:
  channel: { type: enum, values: [web, email, call_center] }
";

const EXPERIMENTS: &str = "\
experiments:
  - id: explore
    epsilon: 0.0
    window: 1d
    arms: [{ id: champion, share: 1.0 }]
";

/// Placements `web` (2 slots, fallback `basic`) and `email` (1 slot), with `extra` lines
/// added to the `web` placement and `policy` appended to the file.
fn placements(extra: &str, policy: &str) -> String {
    format!(
        "placements:\n  - id: web\n    channel: web\n    slots: 2\n    fallback: basic\n    experiment: explore\n{extra}\
         \n  - id: email\n    channel: email\n    experiment: explore\n{policy}"
    )
}

/// An offer shown on `web` and `email` with the given extra fields (YAML lines).
fn offer(id: &str, fields: &str) -> String {
    format!(
        "  - id: {id}\n{fields}    content:\n      web: {{ title: {id} }}\n      email: {{ title: {id} }}\n"
    )
}

/// The fallback of `web`. It has content there, so it also competes like any offer; its
/// low propensity keeps it behind the others.
const BASIC: &str =
    "  - id: basic\n    propensity: 0.01\n    content:\n      web: { title: basic }\n";

struct Case {
    placements: String,
    experiments: String,
    offers: String,
}

impl Case {
    fn new(offers: &[String]) -> Case {
        Case {
            placements: placements("", ""),
            experiments: EXPERIMENTS.to_string(),
            offers: format!("offers:\n{BASIC}{}", offers.concat()),
        }
    }

    fn placements(mut self, extra: &str, policy: &str) -> Case {
        self.placements = placements(extra, policy);
        self
    }

    fn catalog(&self) -> Catalog {
        Catalog::from_yaml(SCHEMA, &self.placements, &self.experiments, &[&self.offers])
            .unwrap_or_else(|e| panic!("{}", e.render()))
    }
}

/// A customer `c1` with attributes (age, segment, risk) and history.
fn customer(
    age: Option<i64>,
    segment: u32,
    events: &[(i64, &str, &str, EventKind)],
) -> CustomerState {
    let mut history = History::default();
    for &(ago, offer, channel, kind) in events {
        let group = (offer == "g1" || offer == "g2").then_some("grp");
        history.record(
            Event::new(NOW - ago, offer, group, channel, kind),
            HistoryLimits::default(),
            NOW,
        );
    }
    CustomerState {
        id: Some("c1".into()),
        attributes: vec![
            age.map_or(Value::Missing, Value::Int),
            Value::Enum(segment),
            Value::Float(0.5),
        ],
        history,
        seq: 0,
    }
}

fn run(
    catalog: &Catalog,
    placement: &str,
    customer: &CustomerState,
    budgets: &dyn Budgets,
) -> Decision {
    let p = catalog.placement(placement).expect("placement");
    let context = Context::for_placement(catalog, p, vec![]);
    let options = Options {
        explain: true,
        budgets,
        ..Options::new(Uuid::from_u128(7))
    };
    let explained = decide(catalog, customer, &context, p, NOW, &options);
    // Explaining takes the slow paths where there are some; it decides the same.
    let quick = decide(
        catalog,
        customer,
        &context,
        p,
        NOW,
        &Options {
            explain: false,
            ..options
        },
    );
    assert_eq!(
        quick.offers, explained.offers,
        "explaining changed the offers"
    );
    assert_eq!(quick.candidates, explained.candidates);
    explained
}

/// Decides on `web` and compares the shown offer ids and each offer's explanation.
fn check(case: Case, customer: &CustomerState, shown: &[&str], explained: &[(&str, &str)]) {
    check_with(case, customer, &NoBudgets, shown, explained);
}

fn check_with(
    case: Case,
    customer: &CustomerState,
    budgets: &dyn Budgets,
    shown: &[&str],
    explained: &[(&str, &str)],
) {
    let catalog = case.catalog();
    let d = run(&catalog, "web", customer, budgets);
    let ids: Vec<&str> = d
        .offers
        .iter()
        .map(|s| catalog.offers[s.offer].id.as_str())
        .collect();
    assert_eq!(ids, shown, "shown offers");
    let explanation = d.explanation.as_ref().expect("explained");
    for (offer, expected) in explained {
        let idx = catalog.offer(offer).expect("offer");
        let got = explanation
            .iter()
            .find(|e| e.offer == idx)
            .map(|e| e.outcome.to_string());
        assert_eq!(got.as_deref(), Some(*expected), "explanation of `{offer}`");
    }
}

fn anyone() -> CustomerState {
    customer(Some(30), 0, &[])
}

#[test]
fn highest_score_first_and_ties_in_catalog_order() {
    let offers = [
        offer("a", "    value: 1\n"),
        offer("b", "    value: 3\n"),
        offer("c", "    value: 3\n"),
    ];
    check(
        Case::new(&offers),
        &anyone(),
        &["b", "c"],
        &[
            ("a", "lost arbitration with score 1"),
            ("b", "shown in slot 0"),
        ],
    );
}

#[test]
fn inactive_offers_are_skipped() {
    let offers = [
        offer(
            "past",
            "    value: 9\n    active: { until: 2026-11-01T00:00:00Z }\n",
        ),
        offer(
            "future",
            "    value: 9\n    active: { from: 2026-12-01T00:00:00Z }\n",
        ),
        offer(
            "now",
            "    active: { from: 2026-11-01T00:00:00Z, until: 2026-12-01T00:00:00Z }\n",
        ),
    ];
    check(
        Case::new(&offers),
        &anyone(),
        &["now", "basic"],
        &[
            ("past", "inactive: outside its active window"),
            ("future", "inactive: outside its active window"),
        ],
    );
}

#[test]
fn eligibility_names_the_failing_clause() {
    let offers = [
        offer(
            "adults",
            "    eligibility: customer.age >= 18 && customer.segment == 'gold'\n",
        ),
        offer("all", "    value: 0.5\n"),
    ];
    check(
        Case::new(&offers),
        &customer(Some(30), 0, &[]),
        &["all", "basic"],
        &[(
            "adults",
            "ineligible: `customer.segment == 'gold'` is false",
        )],
    );
    check(
        Case::new(&offers),
        &customer(None, 1, &[]),
        &["all", "basic"],
        &[(
            "adults",
            "ineligible: `customer.age >= 18` is undecided (a value it reads is missing)",
        )],
    );
    check(
        Case::new(&offers),
        &customer(Some(30), 1, &[]),
        &["adults", "all"],
        &[],
    );
}

#[test]
fn impression_caps_across_and_per_channel() {
    let capped = offer(
        "a",
        "    value: 9\n    contact_policy: { max_impressions: [{ count: 2, within: 7d }] }\n",
    );
    let per_channel = offer(
        "p",
        "    value: 8\n    contact_policy: { max_impressions: { count: 1, within: 1d, per_channel: true } }\n",
    );
    let offers = [capped, per_channel, offer("z", "")];
    let twice = [
        (DAY, "a", "email", EventKind::Impression),
        (2 * DAY, "a", "web", EventKind::Impression),
    ];
    check(
        Case::new(&offers),
        &customer(Some(1), 0, &twice),
        &["p", "z"],
        &[(
            "a",
            "capped: the offer reached its cap of 2 impression(s) in 7d (2 seen)",
        )],
    );
    let old = [
        (DAY, "a", "web", EventKind::Impression),
        (8 * DAY, "a", "web", EventKind::Impression),
    ];
    check(
        Case::new(&offers),
        &customer(Some(1), 0, &old),
        &["a", "p"],
        &[],
    );
    let elsewhere = [(3_600_000, "p", "email", EventKind::Impression)];
    check(
        Case::new(&offers),
        &customer(Some(1), 0, &elsewhere),
        &["a", "p"],
        &[],
    );
    let here = [(3_600_000, "p", "web", EventKind::Impression)];
    check(
        Case::new(&offers),
        &customer(Some(1), 0, &here),
        &["a", "z"],
        &[(
            "p",
            "capped: the offer reached its cap of 1 impression(s) in 1d in this channel (1 seen)",
        )],
    );
}

#[test]
fn rejects_suppress_for_a_while_and_accepts_stop() {
    let offers = [
        offer(
            "r",
            "    value: 9\n    contact_policy: { suppress_after_rejects: { count: 2, within: 30d, for: 10d } }\n",
        ),
        offer(
            "s",
            "    value: 8\n    contact_policy: { stop_after_accept: true }\n",
        ),
        offer("z", ""),
    ];
    let two_rejects = [
        (DAY, "r", "web", EventKind::Reject),
        (5 * DAY, "r", "email", EventKind::Reject),
    ];
    check(
        Case::new(&offers),
        &customer(Some(1), 0, &two_rejects),
        &["s", "z"],
        &[(
            "r",
            "capped: suppressed after 2 reject(s), the last 24h ago",
        )],
    );
    let long_ago = [
        (11 * DAY, "r", "web", EventKind::Reject),
        (12 * DAY, "r", "web", EventKind::Reject),
    ];
    check(
        Case::new(&offers),
        &customer(Some(1), 0, &long_ago),
        &["r", "s"],
        &[],
    );
    let one = [(DAY, "r", "web", EventKind::Reject)];
    check(
        Case::new(&offers),
        &customer(Some(1), 0, &one),
        &["r", "s"],
        &[],
    );
    let accepted = [(300 * DAY, "s", "call_center", EventKind::Accept)];
    check(
        Case::new(&offers),
        &customer(Some(1), 0, &accepted),
        &["r", "z"],
        &[("s", "capped: already accepted")],
    );
}

#[test]
fn group_caps_count_every_offer_of_the_group() {
    let offers = [
        offer("g1", "    value: 9\n    group: grp\n"),
        offer("g2", "    value: 8\n    group: grp\n"),
        offer("z", ""),
    ];
    let policy =
        "contact_policy:\n  groups:\n    grp: { max_impressions: { count: 1, within: 7d } }\n";
    let case = || Case::new(&offers).placements("", policy);
    let seen = [(DAY, "g2", "email", EventKind::Impression)];
    check(
        case(),
        &customer(Some(1), 0, &seen),
        &["z", "basic"],
        &[(
            "g1",
            "capped: group `grp` reached its cap of 1 impression(s) in 7d (1 seen)",
        )],
    );
    check(case(), &anyone(), &["g1", "g2"], &[]);
}

#[test]
fn history_functions_see_this_offer_and_this_channel() {
    let offers = [
        offer(
            "a",
            "    value: 9\n    eligibility: impressions_here(7d) < 1 && rejects(30d, 'b') == 0\n",
        ),
        offer(
            "b",
            "    value: 8\n    propensity: \"clicks(7d) > 0 ? 2 : 1\"\n",
        ),
        offer("z", ""),
    ];
    check(Case::new(&offers), &anyone(), &["a", "b"], &[]);
    let seen_on_email = [(DAY, "a", "email", EventKind::Impression)];
    check(
        Case::new(&offers),
        &customer(Some(1), 0, &seen_on_email),
        &["a", "b"],
        &[],
    );
    let seen_here = [(DAY, "a", "web", EventKind::Impression)];
    check(
        Case::new(&offers),
        &customer(Some(1), 0, &seen_here),
        &["b", "z"],
        &[("a", "ineligible: `impressions_here(7d) < 1` is false")],
    );
    let b_rejected = [(DAY, "b", "web", EventKind::Reject)];
    check(
        Case::new(&offers),
        &customer(Some(1), 0, &b_rejected),
        &["b", "z"],
        &[("a", "ineligible: `rejects(30d, 'b') == 0` is false")],
    );
    let b_clicked = [(DAY, "b", "email", EventKind::Click)];
    check(
        Case::new(&offers),
        &customer(Some(1), 0, &b_clicked),
        &["b", "a"],
        &[("b", "shown in slot 0")],
    );
}

#[test]
fn one_offer_per_group_where_the_placement_asks() {
    let offers = [
        offer("g1", "    value: 9\n    group: grp\n"),
        offer("g2", "    value: 8\n    group: grp\n"),
        offer("z", ""),
    ];
    check(
        Case::new(&offers).placements("    one_per_group: true\n", ""),
        &anyone(),
        &["g1", "z"],
        &[("g2", "lost arbitration with score 8")],
    );
    check(Case::new(&offers), &anyone(), &["g1", "g2"], &[]);
}

#[test]
fn channel_caps_and_fatigue_suppress_the_whole_placement() {
    let offers = [offer("a", "")];
    let channel =
        "contact_policy:\n  channels:\n    web: { max_impressions: { count: 2, within: 7d } }\n";
    let two = [
        (DAY, "a", "web", EventKind::Impression),
        (DAY, "x", "web", EventKind::Impression),
    ];
    let catalog = Case::new(&offers).placements("", channel).catalog();
    let d = run(&catalog, "web", &customer(Some(1), 0, &two), &NoBudgets);
    assert!(d.offers.is_empty(), "not even the fallback");
    assert_eq!(
        d.suppressed.as_deref(),
        Some("channel `web` reached its cap of 2 impression(s) in 7d (2 seen)")
    );
    assert_eq!(
        run(&catalog, "email", &customer(Some(1), 0, &two), &NoBudgets)
            .offers
            .len(),
        1,
        "email is another channel"
    );

    let fatigue = "contact_policy:\n  fatigue: { max_impressions: [{ count: 3, within: 1d }] }\n";
    let three = [
        (1, "a", "web", EventKind::Impression),
        (2, "b", "email", EventKind::Impression),
        (3, "c", "call_center", EventKind::Impression),
    ];
    let catalog = Case::new(&offers).placements("", fatigue).catalog();
    let d = run(&catalog, "email", &customer(Some(1), 0, &three), &NoBudgets);
    assert_eq!(
        d.suppressed.as_deref(),
        Some("the customer reached its cap of 3 impression(s) in 1d (3 seen)")
    );
}

#[test]
fn budgets_read_the_counters() {
    let offers = [
        offer(
            "a",
            "    value: 9\n    budget: { per_day: 10, total: 100 }\n",
        ),
        offer("g1", "    value: 5\n    group: grp\n"),
        offer("z", ""),
    ];
    let policy = "contact_policy:\n  groups:\n    grp: { budget: { total: 50 } }\n";
    let case = || Case::new(&offers).placements("", policy);
    let key = crate::schema::key;
    let mut spent = HashMap::new();
    check_with(case(), &anyone(), &spent, &["a", "g1"], &[]);
    spent.insert(
        BudgetScope::Offer(key("a")),
        Spent {
            today: 10,
            total: 10,
        },
    );
    check_with(
        case(),
        &anyone(),
        &spent,
        &["g1", "z"],
        &[("a", "over budget: the offer spent its daily budget of 10")],
    );
    spent.insert(
        BudgetScope::Offer(key("a")),
        Spent {
            today: 0,
            total: 100,
        },
    );
    spent.insert(
        BudgetScope::Group(key("grp")),
        Spent {
            today: 0,
            total: 50,
        },
    );
    check_with(
        case(),
        &anyone(),
        &spent,
        &["z", "basic"],
        &[
            ("a", "over budget: the offer spent its total budget of 100"),
            (
                "g1",
                "over budget: group `grp` spent its total budget of 50",
            ),
        ],
    );
}

#[test]
fn the_fallback_shows_when_nothing_qualifies() {
    let offers = [offer("a", "    eligibility: customer.age > 100\n")];
    let mut case = Case::new(&offers);
    case.offers = case
        .offers
        .replace("    propensity: 0.01\n", "    eligibility: \"false\"\n");
    let catalog = case.catalog();
    let d = run(&catalog, "web", &anyone(), &NoBudgets);
    assert_eq!(d.offers.len(), 1);
    let p = catalog.placement("web").expect("web");
    let none = Options {
        slots: Some(0),
        ..Options::new(Uuid::from_u128(2))
    };
    let asked_for_nothing = decide(
        &catalog,
        &anyone(),
        &Context::for_placement(&catalog, p, vec![]),
        p,
        NOW,
        &none,
    );
    assert!(
        asked_for_nothing.offers.is_empty(),
        "no slots asked for, no fallback either"
    );
    let shown = d.offers[0];
    assert!(shown.fallback);
    assert_eq!(
        (catalog.offers[shown.offer].id.as_str(), shown.propensity),
        ("basic", 1.0)
    );
}

#[test]
fn a_missing_score_term_drops_the_offer() {
    let offers = [
        offer("a", "    value: 10 / (customer.age - 30)\n"),
        offer("b", ""),
    ];
    check(
        Case::new(&offers),
        &anyone(),
        &["b", "basic"],
        &[("a", "no score: `value` is missing")],
    );
    check(
        Case::new(&offers),
        &customer(Some(31), 0, &[]),
        &["a", "b"],
        &[],
    );
}

/// A propensity several offers write the same way is evaluated once per decision and
/// scores each of them as its own would; one that reads history is not shared, since it
/// counts each offer's own events.
#[test]
fn shared_propensities_score_as_each_offers_own() {
    let offers = [
        offer(
            "a",
            "    propensity: 0.1 + customer.risk / 10\n    value: 3\n",
        ),
        offer(
            "b",
            "    propensity: 0.1 + customer.risk / 10\n    value: 2\n",
        ),
        offer("c", "    propensity: 0.5 / (1 + impressions(7d))\n"),
        offer(
            "d",
            "    propensity: 0.5 / (1 + impressions(7d))\n    value: 0.8\n",
        ),
        offer("e", "    propensity: customer.age / 100\n    value: 0.1\n"),
        offer("f", "    propensity: customer.age / 100\n    value: 0.2\n"),
    ];
    let case = Case::new(&offers);
    let catalog = case.catalog();
    assert_eq!(
        catalog.formulas.len(),
        2,
        "a/b and e/f share; c/d read history"
    );
    let seen_c = customer(Some(30), 0, &[(DAY, "c", "web", EventKind::Impression)]);
    let d = run(&catalog, "web", &seen_c, &NoBudgets);
    let scores: Vec<(&str, f64)> = d
        .candidates
        .iter()
        .map(|c| (catalog.offers[c.offer].id.as_str(), c.score))
        .collect();
    let expected = [
        ("basic", 0.01),
        ("a", (0.1 + 0.5 / 10.0) * 3.0),
        ("b", (0.1 + 0.5 / 10.0) * 2.0),
        ("c", 0.5 / 2.0),
        ("d", 0.5 * 0.8),
        ("e", 0.3 * 0.1),
        ("f", 0.3 * 0.2),
    ];
    assert_eq!(scores.len(), expected.len(), "{scores:?}");
    for ((id, score), (want_id, want)) in scores.iter().zip(expected) {
        assert_eq!(*id, want_id);
        assert!((score - want).abs() < 1e-12, "{id}: {score} != {want}");
    }
    // Missing for one is missing for all that share it.
    check(
        case,
        &customer(None, 0, &[]),
        &["c", "a"],
        &[
            ("e", "no score: `propensity` is missing"),
            ("f", "no score: `propensity` is missing"),
        ],
    );
}

#[test]
fn placements_and_arms_override_the_score() {
    let offers = [
        offer("cheap", "    propensity: 0.9\n    value: 1\n"),
        offer("dear", "    propensity: 0.1\n    value: 20\n"),
    ];
    check(Case::new(&offers), &anyone(), &["dear", "cheap"], &[]);
    let by_propensity = "    score: offer.propensity\n";
    check(
        Case::new(&offers).placements(by_propensity, ""),
        &anyone(),
        &["cheap", "dear"],
        &[],
    );
    let mut case = Case::new(&offers);
    case.experiments = EXPERIMENTS.replace(
        "arms: [{ id: champion, share: 1.0 }]",
        "arms: [{ id: challenger, share: 1.0, score: offer.propensity }]",
    );
    check(case, &anyone(), &["cheap", "dear"], &[]);
}

#[test]
fn slots_and_exclusions_from_the_caller() {
    let offers = [
        offer("a", "    value: 3\n"),
        offer("b", "    value: 2\n"),
        offer("c", ""),
    ];
    let catalog = Case::new(&offers).catalog();
    let p = catalog.placement("web").expect("web");
    let context = Context::for_placement(&catalog, p, vec![]);
    let exclude = [catalog.offer("a").expect("a")];
    let options = Options {
        slots: Some(3),
        exclude: &exclude,
        explain: true,
        ..Options::new(Uuid::from_u128(1))
    };
    let d = decide(&catalog, &anyone(), &context, p, NOW, &options);
    let ids: Vec<&str> = d
        .offers
        .iter()
        .map(|s| catalog.offers[s.offer].id.as_str())
        .collect();
    assert_eq!(ids, ["b", "c", "basic"]);
    let explained = d.explanation.expect("explained");
    let of_a = explained
        .iter()
        .find(|e| e.offer == exclude[0])
        .map(|e| &e.outcome);
    assert_eq!(of_a, Some(&Outcome::Excluded), "{explained:?}");
}

#[test]
fn without_exploration_the_policy_is_deterministic() {
    let offers = [offer("a", "    value: 3\n"), offer("b", "    value: 2\n")];
    let d = run(&Case::new(&offers).catalog(), "web", &anyone(), &NoBudgets);
    assert!(
        d.offers.iter().all(|s| s.propensity == 1.0 && !s.explored),
        "{d:?}"
    );
    assert_eq!(d.candidates.len(), 3, "basic, a and b all qualify");
}

#[test]
fn anonymous_callers_decide_on_the_request_alone() {
    let offers = [
        offer(
            "adults",
            "    value: 5\n    eligibility: customer.age >= 18\n",
        ),
        offer("all", ""),
    ];
    let anonymous = CustomerState::anonymous(vec![]);
    check(
        Case::new(&offers),
        &anonymous,
        &["all", "basic"],
        &[(
            "adults",
            "ineligible: `customer.age >= 18` is undecided (a value it reads is missing)",
        )],
    );
    let with_age = CustomerState::anonymous(vec![Value::Int(40)]);
    check(Case::new(&offers), &with_age, &["adults", "all"], &[]);
}
