//! `nextbest report`: key customer metrics across channels, not per-channel vanity
//! metrics: decisions, impressions, click, accept and conversion rates and value per
//! customer, overall and by channel, offer and experiment arm, each with a 95% interval;
//! and for every experiment whether each challenger beats the champion.
//!
//! Outcomes are attributed to the decision they name (its channel and arm). Rates are
//! per impression with Wilson intervals, which treat impressions as independent. The arm
//! comparison does not: arms split customers, so its unit is the customer (value and
//! accepts per customer), compared with Welch's test.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use super::estimate::{Estimate, Z95, mean};
use crate::catalog::Catalog;
use crate::journal::{Reader, Record};
use crate::schema::EventKind;
use crate::storage::Position;

const DAY: i64 = 86_400_000;

/// One group's metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Kpis {
    pub name: String,
    pub decisions: u64,
    /// Customers with a decision in the group (for an offer: with an impression of it).
    pub customers: u64,
    pub impressions: u64,
    pub clicks: u64,
    pub accepts: u64,
    pub conversions: u64,
    pub rejects: u64,
    /// The sum of the outcomes' values.
    pub value: f64,
    pub click_rate: Estimate,
    pub accept_rate: Estimate,
    pub conversion_rate: Estimate,
    pub value_per_customer: Estimate,
    pub accepts_per_customer: Estimate,
}

/// A challenger arm against its experiment's champion.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub experiment: String,
    pub champion: String,
    pub challenger: String,
    pub metric: &'static str,
    pub champion_value: Estimate,
    pub challenger_value: Estimate,
    /// Challenger minus champion.
    pub difference: Estimate,
    /// Two-sided, Welch's test (normal approximation).
    pub p_value: f64,
    pub verdict: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub overall: Kpis,
    pub by_channel: Vec<Kpis>,
    pub by_offer: Vec<Kpis>,
    pub by_arm: Vec<Kpis>,
    pub comparisons: Vec<Comparison>,
    /// Per UTC day (ms of its start) and channel: decisions and value.
    pub daily: Vec<(i64, String, u64, f64)>,
    /// The catalog's adaptive models learned from the whole journal in its order (as the
    /// node learned them): per model and offer (and channel), responses, positives, the
    /// rolling AUC and calibration, maturity and the reliability curve.
    pub models: Vec<crate::db::CellStatus>,
    pub damage: Vec<String>,
}

#[derive(Default)]
struct Group {
    kpis: Kpis,
    /// Value and accepts per customer of the group.
    customers: HashMap<u32, (f64, u64)>,
}

impl Group {
    fn finish(mut self) -> Kpis {
        let k = &mut self.kpis;
        k.customers = self.customers.len() as u64;
        k.click_rate = wilson(k.clicks, k.impressions);
        k.accept_rate = wilson(k.accepts, k.impressions);
        k.conversion_rate = wilson(k.conversions, k.impressions);
        k.value_per_customer = mean(self.customers.values().map(|v| v.0));
        k.accepts_per_customer = mean(self.customers.values().map(|v| v.1 as f64));
        self.kpis
    }
}

/// The Wilson score interval of `k` successes in `n` trials.
pub fn wilson(k: u64, n: u64) -> Estimate {
    if n == 0 {
        return Estimate::default();
    }
    let (k, n) = (k as f64, n as f64);
    let p = k / n;
    let z2 = Z95 * Z95;
    let center = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / (1.0 + z2 / n);
    Estimate {
        value: p,
        low: (center - half).max(0.0),
        high: (center + half).min(1.0),
    }
}

/// The standard normal distribution function (Abramowitz and Stegun 7.1.26, |error| <
/// 1.5e-7).
pub fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-z * z).exp();
    if x >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

/// Welch's comparison of two samples' means: the difference b - a with its interval, and
/// the two-sided p-value.
pub fn welch(a: &[f64], b: &[f64]) -> (Estimate, f64) {
    let stats = |xs: &[f64]| {
        let n = xs.len() as f64;
        let m = xs.iter().sum::<f64>() / n.max(1.0);
        let v = if n > 1.0 {
            xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        (n, m, v)
    };
    let ((na, ma, va), (nb, mb, vb)) = (stats(a), stats(b));
    let diff = mb - ma;
    let se = (va / na.max(1.0) + vb / nb.max(1.0)).sqrt();
    let p = if se > 0.0 {
        2.0 * (1.0 - normal_cdf((diff / se).abs()))
    } else if diff == 0.0 {
        1.0
    } else {
        0.0
    };
    (
        Estimate {
            value: diff,
            low: diff - Z95 * se,
            high: diff + Z95 * se,
        },
        p,
    )
}

/// Reads the journal of the data directory `data` (decisions at or after `from` and
/// before `to`, with their outcomes) and computes the report; `catalog` says which arm of
/// each experiment is the champion (the first).
pub fn report(
    data: &Path,
    catalog: &Catalog,
    (from, to): (Option<i64>, Option<i64>),
) -> std::io::Result<Report> {
    let journal = data.join("journal");
    if !journal.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("`{}` has no journal", data.display()),
        ));
    }
    let mut customers: HashMap<String, u32> = HashMap::new();
    let mut names: [Vec<String>; 3] = Default::default(); // channel, offer, arm
    let mut index: [HashMap<String, usize>; 3] = Default::default();
    let mut intern = |kind: usize, name: &str| -> usize {
        if let Some(&i) = index[kind].get(name) {
            return i;
        }
        names[kind].push(name.to_string());
        index[kind].insert(name.to_string(), names[kind].len() - 1);
        names[kind].len() - 1
    };
    let mut overall = Group::default();
    let mut groups: [Vec<Group>; 3] = Default::default();
    // Decision -> (channel, arm, customer, day).
    let mut decisions: HashMap<u128, (usize, Option<usize>, Option<u32>, i64)> = HashMap::new();
    let mut daily: HashMap<(i64, usize), (u64, f64)> = HashMap::new();
    let mut learning = crate::adaptive::Learning::default();
    let mut reader = Reader::open(&journal, Position::default())?;
    while let Some((_, _, record)) = reader.next_record()? {
        match record {
            Record::Decision(d) => {
                if from.is_some_and(|f| d.at < f) || to.is_some_and(|t| d.at >= t) {
                    continue;
                }
                let channel = intern(0, &d.channel);
                let arm = match (&d.experiment, &d.arm) {
                    (Some(e), Some(a)) => Some(intern(2, &format!("{e}/{a}"))),
                    _ => None,
                };
                let n = customers.len() as u32;
                let customer = d
                    .customer
                    .as_ref()
                    .map(|c| *customers.entry(c.clone()).or_insert(n));
                let day = d.at.div_euclid(DAY) * DAY;
                decisions.insert(d.decision_id().as_u128(), (channel, arm, customer, day));
                daily.entry((day, channel)).or_default().0 += 1;
                for kind in [0, 2] {
                    let Some(i) = (if kind == 0 { Some(channel) } else { arm }) else {
                        continue;
                    };
                    if groups[kind].len() <= i {
                        groups[kind].resize_with(i + 1, Group::default);
                    }
                    let g = &mut groups[kind][i];
                    g.kpis.decisions += 1;
                    if let Some(c) = customer {
                        g.customers.entry(c).or_default();
                    }
                }
                overall.kpis.decisions += 1;
                if let Some(c) = customer {
                    overall.customers.entry(c).or_default();
                }
            }
            Record::Outcome(o) => {
                catalog.learn(&mut learning, &o.response());
                let Some(&(channel, arm, customer, day)) =
                    decisions.get(&uuid::Uuid::from_bytes(o.decision).as_u128())
                else {
                    continue;
                };
                let offer = intern(1, &o.offer);
                if groups[1].len() <= offer {
                    groups[1].resize_with(offer + 1, Group::default);
                }
                let value = o.value.unwrap_or(0.0);
                let accepted = u64::from(o.kind == EventKind::Accept);
                let targets = [Some(&mut overall)].into_iter().flatten();
                let (by_channel, rest) = groups.split_at_mut(1);
                let (by_offer, by_arm) = rest.split_at_mut(1);
                let mut touched: Vec<&mut Group> = targets.collect();
                touched.push(&mut by_channel[0][channel]);
                touched.push(&mut by_offer[0][offer]);
                if let Some(a) = arm {
                    touched.push(&mut by_arm[0][a]);
                }
                for (k, g) in touched.into_iter().enumerate() {
                    let is_offer = k == 2;
                    let kpis = &mut g.kpis;
                    match o.kind {
                        EventKind::Impression => kpis.impressions += 1,
                        EventKind::Click => kpis.clicks += 1,
                        EventKind::Accept => kpis.accepts += 1,
                        EventKind::Convert => kpis.conversions += 1,
                        EventKind::Reject => kpis.rejects += 1,
                    }
                    kpis.value += value;
                    if let Some(c) = customer {
                        // An offer's customers are those who saw it.
                        if is_offer
                            && o.kind != EventKind::Impression
                            && !g.customers.contains_key(&c)
                        {
                            continue;
                        }
                        let entry = g.customers.entry(c).or_default();
                        entry.0 += value;
                        entry.1 += accepted;
                    }
                }
                daily.entry((day, channel)).or_default().1 += value;
            }
            Record::Upsert(_) | Record::Forget(_) => {}
        }
    }
    let mut by_arm_groups: HashMap<String, Vec<f64>> = HashMap::new();
    let mut accepts_by_arm: HashMap<String, Vec<f64>> = HashMap::new();
    for (i, g) in groups[2].iter().enumerate() {
        by_arm_groups.insert(
            names[2][i].clone(),
            g.customers.values().map(|v| v.0).collect(),
        );
        accepts_by_arm.insert(
            names[2][i].clone(),
            g.customers.values().map(|v| v.1 as f64).collect(),
        );
    }
    let mut finish = |kind: usize| -> Vec<Kpis> {
        let mut out: Vec<Kpis> = std::mem::take(&mut groups[kind])
            .into_iter()
            .enumerate()
            .map(|(i, g)| {
                let mut k = g.finish();
                k.name = names[kind][i].clone();
                k
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    };
    let by_channel = finish(0);
    let by_offer = finish(1);
    let by_arm = finish(2);
    let mut comparisons = Vec::new();
    for e in &catalog.experiments {
        let Some(champion) = e.arms.first() else {
            continue;
        };
        let key = |arm: &str| format!("{}/{arm}", e.id);
        for challenger in &e.arms[1..] {
            for (metric, samples) in [
                ("value per customer", &by_arm_groups),
                ("accepts per customer", &accepts_by_arm),
            ] {
                let (Some(a), Some(b)) = (
                    samples.get(&key(&champion.id)),
                    samples.get(&key(&challenger.id)),
                ) else {
                    continue;
                };
                let (difference, p_value) = welch(a, b);
                let verdict = if a.len() < 30 || b.len() < 30 {
                    format!("too few customers to tell ({} and {})", a.len(), b.len())
                } else if p_value < 0.05 && difference.value > 0.0 {
                    format!(
                        "the challenger `{}` beats the champion (p = {p_value:.3})",
                        challenger.id
                    )
                } else if p_value < 0.05 {
                    format!(
                        "the champion `{}` beats the challenger (p = {p_value:.3})",
                        champion.id
                    )
                } else {
                    format!("no significant difference (p = {p_value:.3})")
                };
                comparisons.push(Comparison {
                    experiment: e.id.clone(),
                    champion: champion.id.clone(),
                    challenger: challenger.id.clone(),
                    metric,
                    champion_value: mean(a.iter().copied()),
                    challenger_value: mean(b.iter().copied()),
                    difference,
                    p_value,
                    verdict,
                });
            }
        }
    }
    let mut overall = overall.finish();
    overall.name = "all".into();
    let mut daily: Vec<_> = daily
        .into_iter()
        .map(|((day, c), (n, v))| (day, names[0][c].clone(), n, v))
        .collect();
    daily.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    Ok(Report {
        from,
        to,
        overall,
        by_channel,
        by_offer,
        by_arm,
        comparisons,
        daily,
        models: crate::db::cell_statuses(catalog, &learning),
        damage: reader.damage.iter().map(ToString::to_string).collect(),
    })
}

fn pct(e: &Estimate) -> String {
    format!(
        "{:.2}% [{:.2}, {:.2}]",
        100.0 * e.value,
        100.0 * e.low,
        100.0 * e.high
    )
}

fn num(e: &Estimate) -> String {
    format!("{:.2} [{:.2}, {:.2}]", e.value, e.low, e.high)
}

/// The report as terminal tables.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let header = |out: &mut String, by: &str| {
        let _ = writeln!(
            out,
            "{:<28} {:>8} {:>8} {:>9} {:>7} {:>26} {:>26} {:>26}",
            by,
            "decide",
            "people",
            "shown",
            "accept",
            "accept rate [95% CI]",
            "conversion rate",
            "value per customer"
        );
    };
    // An offer has impressions, not decisions of its own.
    let row = |out: &mut String, k: &Kpis, decisions: bool| {
        let _ = writeln!(
            out,
            "{:<28} {:>8} {:>8} {:>9} {:>7} {:>26} {:>26} {:>26}",
            k.name,
            if decisions {
                k.decisions.to_string()
            } else {
                "-".into()
            },
            k.customers,
            k.impressions,
            k.accepts,
            pct(&k.accept_rate),
            pct(&k.conversion_rate),
            num(&k.value_per_customer)
        );
    };
    header(&mut out, "overall");
    row(&mut out, &r.overall, true);
    for (by, groups) in [
        ("channel", &r.by_channel),
        ("experiment arm", &r.by_arm),
        ("offer", &r.by_offer),
    ] {
        let _ = writeln!(out);
        header(&mut out, by);
        for k in groups {
            row(&mut out, k, by != "offer");
        }
    }
    if !r.comparisons.is_empty() {
        let _ = writeln!(
            out,
            "\nchallenger vs champion (unit: the customer; Welch's test)"
        );
    }
    for c in &r.comparisons {
        let _ = writeln!(
            out,
            "{} {} vs {}: {} {} vs {}; difference {}: {}",
            c.experiment,
            c.challenger,
            c.champion,
            c.metric,
            num(&c.challenger_value),
            num(&c.champion_value),
            num(&c.difference),
            c.verdict
        );
    }
    if !r.models.is_empty() {
        let _ = writeln!(
            out,
            "\nadaptive models (rolling: recent responses weigh most, each scored before it was learned)"
        );
        let _ = writeln!(
            out,
            "{:<16} {:<24} {:<12} {:>9} {:>9} {:>9} {:>7} {:>11} {:>8}",
            "model",
            "offer",
            "channel",
            "responses",
            "positives",
            "base rate",
            "AUC",
            "calibration",
            "maturity"
        );
    }
    for c in &r.models {
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        let _ = writeln!(
            out,
            "{:<16} {:<24} {:<12} {:>9} {:>9} {:>9.4} {:>7} {:>11} {:>8.2}",
            c.model,
            c.offer,
            c.channel.as_deref().unwrap_or("-"),
            c.responses,
            c.positives,
            c.base_rate,
            opt(c.auc),
            opt(c.calibration),
            c.maturity
        );
    }
    for d in &r.damage {
        let _ = writeln!(out, "damage: {d}");
    }
    out
}

/// Each adaptive model's reliability curves (one line per offer, the most answered
/// first, at most eight), against the diagonal a calibrated model follows, as an SVG.
fn reliability_plot(model: &str, cells: &[&crate::db::CellStatus]) -> String {
    use plotters::prelude::*;
    let mut svg = String::new();
    let mut cells: Vec<&&crate::db::CellStatus> =
        cells.iter().filter(|c| !c.reliability.is_empty()).collect();
    if cells.is_empty() {
        return String::new();
    }
    cells.sort_by_key(|c| std::cmp::Reverse(c.responses));
    cells.truncate(8);
    let top = cells
        .iter()
        .flat_map(|c| &c.reliability)
        .map(|b| b.predicted.max(b.observed))
        .fold(0.0f64, f64::max)
        .clamp(0.05, 1.0)
        * 1.05;
    let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
        let root = SVGBackend::with_string(&mut svg, (760, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("Reliability of `{model}`: observed against predicted"),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..top, 0.0..top)?;
        chart
            .configure_mesh()
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 13))
            .x_desc("predicted response rate")
            .y_desc("observed response rate")
            .draw()?;
        chart.draw_series(LineSeries::new(
            vec![(0.0, 0.0), (top, top)],
            BLACK.mix(0.4).stroke_width(1),
        ))?;
        for (i, c) in cells.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points: Vec<(f64, f64)> = c
                .reliability
                .iter()
                .filter(|b| b.weight >= 5.0)
                .map(|b| (b.predicted, b.observed))
                .collect();
            let label = match &c.channel {
                Some(ch) => format!("{} ({ch})", c.offer),
                None => c.offer.clone(),
            };
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    })();
    if let Err(e) = drawn {
        return format!("<p>plot not drawn: {}</p>", html_escape(&e.to_string()));
    }
    svg
}

/// Horizontal bars with 95% error bars, as an SVG.
fn bars(title: &str, axis: &str, items: &[(String, Estimate)], percent: bool) -> String {
    use plotters::prelude::*;
    let mut svg = String::new();
    let height = 100 + 26 * items.len().max(2) as u32;
    let scale = if percent { 100.0 } else { 1.0 };
    let max = items
        .iter()
        .map(|(_, e)| e.high * scale)
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.05;
    let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
        let root = SVGBackend::with_string(&mut svg, (760, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let n = items.len().max(1) as u32;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(210)
            .build_cartesian_2d(0.0..max, (0..n).into_segmented())?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 13))
            .y_labels(items.len())
            .y_label_formatter(&|v| match v {
                // The first item on top.
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => (n - 1)
                    .checked_sub(*i)
                    .and_then(|i| items.get(i as usize))
                    .map_or(String::new(), |(name, _)| name.clone()),
                SegmentValue::Last => String::new(),
            })
            .x_desc(axis)
            .draw()?;
        let blue = RGBColor(110, 150, 210);
        chart.draw_series(
            Histogram::horizontal(&chart)
                .style(blue.filled())
                .margin(5)
                .data(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, (_, e))| (n - 1 - i as u32, e.value * scale)),
                ),
        )?;
        chart.draw_series(items.iter().enumerate().map(|(i, (_, e))| {
            let y = SegmentValue::CenterOf(n - 1 - i as u32);
            PathElement::new(
                vec![(e.low * scale, y.clone()), (e.high * scale, y)],
                BLACK.stroke_width(2),
            )
        }))?;
        root.present()?;
        Ok(())
    })();
    if let Err(e) = drawn {
        return format!("<p>plot not drawn: {}</p>", html_escape(&e.to_string()));
    }
    svg
}

/// Value per day, one line per channel, as an SVG.
fn daily_plot(r: &Report) -> String {
    use plotters::prelude::*;
    let mut svg = String::new();
    let channels: Vec<&str> = r.by_channel.iter().map(|k| k.name.as_str()).collect();
    let (Some(first), Some(last)) = (r.daily.first(), r.daily.last()) else {
        return String::new();
    };
    let (d0, d1) = (first.0 / DAY, last.0 / DAY);
    let max = r.daily.iter().map(|d| d.3).fold(0.0f64, f64::max).max(1e-9) * 1.1;
    let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
        let root = SVGBackend::with_string(&mut svg, (760, 360)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Value per day, by channel", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(d0..d1 + 1, 0.0..max)?;
        chart
            .configure_mesh()
            .x_label_formatter(&|d| {
                jiff::Timestamp::from_millisecond(d * DAY)
                    .map(|t| t.strftime("%m-%d").to_string())
                    .unwrap_or_default()
            })
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 13))
            .x_desc("day (UTC)")
            .y_desc("value")
            .draw()?;
        for (i, channel) in channels.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points: Vec<(i64, f64)> = r
                .daily
                .iter()
                .filter(|d| d.1 == *channel)
                .map(|d| (d.0 / DAY, d.3))
                .collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(channel.to_string())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    })();
    if let Err(e) = drawn {
        return format!("<p>plot not drawn: {}</p>", html_escape(&e.to_string()));
    }
    svg
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The report as one self-contained HTML page: tables and SVG plots, no script, no
/// external resource.
pub fn html(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::from(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>nextbest report</title>\n<style>\
         body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:1em 0}\
         td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}\
         .verdict{font-weight:bold}</style></head><body>\n<h1>nextbest report</h1>\n",
    );
    let range = |t: Option<i64>| {
        t.and_then(|t| jiff::Timestamp::from_millisecond(t).ok())
            .map_or("-".to_string(), |t| t.to_string())
    };
    let _ = writeln!(
        out,
        "<p>Decisions from {} to {}. Rates are per impression (Wilson 95% intervals); value per customer over the customers with a decision in the group.</p>",
        range(r.from),
        range(r.to)
    );
    let table = |out: &mut String, title: &str, groups: &[&Kpis]| {
        let _ = writeln!(
            out,
            "<h2>{title}</h2><table><tr><th>{title}</th><th>decisions</th><th>customers</th><th>impressions</th><th>accepts</th><th>accept rate</th><th>conversion rate</th><th>value</th><th>value per customer</th></tr>"
        );
        for k in groups {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td></tr>",
                html_escape(&k.name),
                k.decisions,
                k.customers,
                k.impressions,
                k.accepts,
                pct(&k.accept_rate),
                pct(&k.conversion_rate),
                k.value,
                num(&k.value_per_customer)
            );
        }
        out.push_str("</table>\n");
    };
    table(&mut out, "overall", &[&r.overall]);
    if !r.comparisons.is_empty() {
        out.push_str("<h2>Challenger vs champion</h2><table><tr><th>experiment</th><th>metric</th><th>champion</th><th>challenger</th><th>difference</th><th>p</th><th>verdict</th></tr>\n");
        for c in &r.comparisons {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}: {}</td><td>{}: {}</td><td>{}</td><td>{:.3}</td><td class=\"verdict\">{}</td></tr>",
                html_escape(&c.experiment),
                c.metric,
                html_escape(&c.champion),
                num(&c.champion_value),
                html_escape(&c.challenger),
                num(&c.challenger_value),
                num(&c.difference),
                c.p_value,
                html_escape(&c.verdict)
            );
        }
        out.push_str("</table>\n");
    }
    let named = |groups: &[Kpis], f: fn(&Kpis) -> Estimate| -> Vec<(String, Estimate)> {
        groups.iter().map(|k| (k.name.clone(), f(k))).collect()
    };
    out.push_str(&bars(
        "Value per customer, by experiment arm",
        "value per customer",
        &named(&r.by_arm, |k| k.value_per_customer),
        false,
    ));
    out.push_str(&bars(
        "Accept rate, by channel",
        "accept rate (%)",
        &named(&r.by_channel, |k| k.accept_rate),
        true,
    ));
    out.push_str(&daily_plot(r));
    table(
        &mut out,
        "channel",
        &r.by_channel.iter().collect::<Vec<_>>(),
    );
    table(
        &mut out,
        "experiment arm",
        &r.by_arm.iter().collect::<Vec<_>>(),
    );
    let mut offers: Vec<&Kpis> = r.by_offer.iter().collect();
    offers.sort_by(|a, b| b.accept_rate.value.total_cmp(&a.accept_rate.value));
    out.push_str(&bars(
        "Accept rate, by offer",
        "accept rate (%)",
        &offers
            .iter()
            .map(|k| (k.name.clone(), k.accept_rate))
            .collect::<Vec<_>>(),
        true,
    ));
    table(&mut out, "offer", &offers);
    if !r.models.is_empty() {
        out.push_str("<h2>Adaptive models</h2><p>Learned from the whole journal in its order by this catalog's models, as the node learned them if it ran this catalog throughout. AUC and calibration are rolling (recent responses weigh most, half-life 1,000 responses), each response scored by the weights before it was learned from; calibration is the positive rate over the mean prediction (1 is calibrated); maturity is positives over 200.</p>\n<table><tr><th>model</th><th>offer</th><th>channel</th><th>responses</th><th>positives</th><th>base rate</th><th>AUC</th><th>calibration</th><th>maturity</th></tr>\n");
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        for c in &r.models {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{}</td><td>{}</td><td>{:.2}</td></tr>",
                html_escape(&c.model),
                html_escape(&c.offer),
                html_escape(c.channel.as_deref().unwrap_or("-")),
                c.responses,
                c.positives,
                c.base_rate,
                opt(c.auc),
                opt(c.calibration),
                c.maturity
            );
        }
        out.push_str("</table>\n");
        let mut models: Vec<&str> = r.models.iter().map(|c| c.model.as_str()).collect();
        models.dedup();
        for m in models {
            let cells: Vec<_> = r.models.iter().filter(|c| c.model == m).collect();
            out.push_str(&reliability_plot(m, &cells));
        }
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_a_worked_example() {
        // 10 of 100: the Wilson interval is [0.0552, 0.1744] (Newcombe 1998, method 3).
        let e = wilson(10, 100);
        assert!(
            (e.low - 0.0552).abs() < 5e-4 && (e.high - 0.1744).abs() < 5e-4,
            "{e:?}"
        );
        // 0 of 20 still has room above zero.
        let z = wilson(0, 20);
        assert_eq!(z.low, 0.0);
        assert!(z.high > 0.1 && z.high < 0.2);
    }

    #[test]
    fn the_normal_distribution_function_is_accurate() {
        for (x, want) in [
            (0.0, 0.5),
            (1.959_964, 0.975),
            (-1.0, 0.158_655_3),
            (3.0, 0.998_650_1),
        ] {
            assert!(
                (normal_cdf(x) - want).abs() < 2e-7,
                "{x}: {}",
                normal_cdf(x)
            );
        }
    }

    #[test]
    fn welch_finds_a_real_difference_and_not_a_fake_one() {
        let a: Vec<f64> = (0..400).map(|i| f64::from(i % 10)).collect();
        let same: Vec<f64> = (0..300).map(|i| f64::from((i + 3) % 10)).collect();
        let (d, p) = welch(&a, &same);
        assert!(d.covers(0.0) && p > 0.5, "{d:?} {p}");
        let more: Vec<f64> = a.iter().map(|x| x + 1.0).collect();
        let (d, p) = welch(&a, &more);
        assert!((d.value - 1.0).abs() < 1e-12 && p < 1e-6, "{d:?} {p}");
        assert!(d.low > 0.0);
    }
}
