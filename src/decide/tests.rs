//! Decide, one behaviour per case, through small catalogs; then the statistics of the
//! exploration and its consistency across channels.

use std::collections::HashMap;

use uuid::Uuid;

use super::*;
use crate::state::{Event, EventKind, History, HistoryLimits};

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

// ---- exploration --------------------------------------------------------------------------

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
        };
        let options = Options::new(Uuid::from_u128(1));
        arbitrate(&catalog, &catalog.placements[0], &mut decision, &options, draw);
        let expected = arbitrate_reference(&candidates, slots, one_per_group, epsilon, draw);
        proptest::prop_assert_eq!(decision.offers, expected);
    }
}
