//! `DecisionService`: decide (one placement or a page of them) and record outcomes.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::{self, decision_time, millis, status, timestamp};
use super::proto::{self, decision_service_server::DecisionService};
use super::{
    Deadline, MAX_BATCH_OUTCOMES, MAX_PAGE_PLACEMENTS, Service, blocking, optional, required, slots,
};
use crate::catalog::{Catalog, OfferIdx, PlacementIdx};
use crate::db::{Db, OutcomeInput, View, decision_id};
use crate::decide::{self, Context, Decision, Options};
use crate::schema::{Value, printable};
use crate::setup::now_ms;
use crate::state::CustomerState;

impl Service {
    fn placement(catalog: &Catalog, id: &str) -> Result<PlacementIdx, Status> {
        catalog.placement(id).ok_or_else(|| {
            let ids: Vec<&str> = catalog.placements.iter().map(|p| p.id.as_str()).collect();
            Status::not_found(format!(
                "unknown placement `{}`; the catalog has {}",
                printable(id),
                ids.join(", ")
            ))
        })
    }

    /// A placement's context as a request gives it: a `context.channel` other than the
    /// placement's is refused (`field` names where it came from).
    fn context(
        catalog: &Catalog,
        placement: PlacementIdx,
        values: Vec<Value>,
        field: &str,
    ) -> Result<Context, Status> {
        if let Some(given) = Context::conflicting_channel(catalog, placement, &values) {
            let p = &catalog.placements[placement];
            return Err(Status::invalid_argument(format!(
                "`{field}` is `{}`, but placement `{}` is in channel `{}`: the channel is the placement's (leave it unset)",
                printable(&given),
                p.id,
                p.channel
            )));
        }
        Ok(Context::for_placement(catalog, placement, values))
    }

    /// One decision, logged; `exclude` are offers already on the page.
    #[allow(clippy::too_many_arguments)]
    fn decide_one(
        db: &Db,
        view: &View,
        customer: Option<&str>,
        inline: Option<&[Value]>,
        placement: PlacementIdx,
        context: Context,
        at: i64,
        slots: Option<u32>,
        explain: bool,
        exclude: &[OfferIdx],
    ) -> Result<(proto::Decision, Vec<OfferIdx>), Status> {
        let catalog = &view.catalog;
        // Budgets count real impressions: a decision served now reads today's counts,
        // whatever `at` the request gave (a later day's would read nothing spent yet).
        let budgets = db.budgets(now_ms());
        let options = Options {
            explain,
            slots,
            exclude,
            budgets: &budgets,
            // The id carries when the decision was made, by the node's clock, never the
            // caller's `at`: the node remembers decisions (and their outcomes' identities)
            // by the id's time, and an outcome's `decision_id` may be no later than now.
            ..Options::new(decision_id(now_ms()))
        };
        let reply = |_: &CustomerState, d: &Decision| {
            (
                decision_reply(catalog, d),
                d.offers.iter().map(|s| s.offer).collect::<Vec<_>>(),
            )
        };
        match inline {
            None => db
                .decide(view, customer, &context, placement, at, &options, reply)
                .map_err(status),
            Some(values) => {
                let stored = customer.map(|id| view.store.with(id, |s| s.cloned()));
                let mut state = stored
                    .transpose()
                    .map_err(|e| status(e.into()))?
                    .flatten()
                    .unwrap_or_else(|| CustomerState {
                        id: customer.map(str::to_string),
                        ..CustomerState::default()
                    });
                state.merge(&catalog.schema, values.to_vec());
                let d = db.decide_consistent(catalog, || {
                    decide::decide(catalog, &state, &context, placement, at, &options)
                });
                let out = reply(&state, &d);
                let logged = db.log_decision(catalog, &state, &context, d);
                db.count_unlogged(logged.err());
                Ok(out)
            }
        }
    }
}

fn decision_reply(catalog: &Catalog, d: &Decision) -> proto::Decision {
    let p = &catalog.placements[d.placement];
    let experiment = d.experiment.map(|e| &catalog.experiments[e]);
    proto::Decision {
        decision_id: d.id.to_string(),
        at: Some(timestamp(d.at)),
        catalog_version: d.catalog_version.to_string(),
        placement: p.id.clone(),
        channel: p.channel.clone(),
        experiment: experiment.map(|e| e.id.clone()).unwrap_or_default(),
        arm: experiment
            .zip(d.arm)
            .map(|(e, a)| e.arms[a].id.clone())
            .unwrap_or_default(),
        epsilon: d.epsilon,
        offers: d
            .offers
            .iter()
            .map(|s| {
                let o = &catalog.offers[s.offer];
                proto::ShownOffer {
                    offer_id: o.id.clone(),
                    slot: s.slot,
                    name: o.name.clone(),
                    content: o
                        .content
                        .get(&d.placement)
                        .map(|c| c.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                        .unwrap_or_default(),
                    score: s.score,
                    propensity: s.propensity,
                    explored: s.explored,
                    fallback: s.fallback,
                }
            })
            .collect(),
        suppressed: d.suppressed.clone().unwrap_or_default(),
        explanation: d
            .explanation
            .iter()
            .flatten()
            .map(|e| proto::Explanation {
                offer_id: catalog.offers[e.offer].id.clone(),
                outcome: e.outcome.to_string(),
            })
            .collect(),
    }
}

/// Request attributes over the stored ones, if the request has any.
fn inline_attributes(
    catalog: &Catalog,
    attributes: &std::collections::HashMap<String, proto::Value>,
) -> Result<Option<Vec<Value>>, Status> {
    if attributes.is_empty() {
        return Ok(None);
    }
    convert::values("customer", &catalog.schema.customer, attributes).map(Some)
}

#[tonic::async_trait]
impl DecisionService for Service {
    async fn decide(
        &self,
        request: Request<proto::DecideRequest>,
    ) -> Result<Response<proto::Decision>, Status> {
        async {
            let deadline = Deadline::of(&request);
            let r = request.into_inner();
            // One `Db` (and catalog) for the whole call: a heal may swap the node's.
            let db = self.node.db();
            let view = db.view();
            let catalog = &view.catalog;
            let placement = Self::placement(catalog, required("placement", &r.placement)?)?;
            // The call's span (opened by the calls layer) names the placement and, once
            // made, the decision; never the customer or their attributes.
            let span = tracing::Span::current();
            span.record("placement", r.placement.as_str());
            let customer = optional("customer_id", &r.customer_id)?;
            let context = convert::values("context", &catalog.schema.context, &r.context)?;
            let context = Self::context(catalog, placement, context, "context.channel")?;
            let inline = inline_attributes(catalog, &r.attributes)?;
            let at = decision_time(r.at.as_ref(), now_ms)?;
            let slots = slots("slots", r.slots)?;
            self.read_position(r.min_position, deadline).await?;
            deadline.check()?;
            let started = std::time::Instant::now();
            let (reply, _) = Self::decide_one(
                &db,
                &view,
                customer,
                inline.as_deref(),
                placement,
                context,
                at,
                slots,
                r.explain,
                &[],
            )?;
            self.metrics
                .decision(&reply, started.elapsed().as_secs_f64());
            span.record("decision_id", reply.decision_id.as_str());
            tracing::debug!(shown = reply.offers.len(), "decided");
            Ok(Response::new(reply))
        }
        .await
    }

    async fn decide_batch(
        &self,
        request: Request<proto::DecideBatchRequest>,
    ) -> Result<Response<proto::DecideBatchResponse>, Status> {
        async {
            let deadline = Deadline::of(&request);
            let r = request.into_inner();
            let db = self.node.db();
            let view = db.view();
            let catalog = &view.catalog;
            let customer = optional("customer_id", &r.customer_id)?;
            if r.placements.is_empty() || r.placements.len() > MAX_PAGE_PLACEMENTS {
                return Err(Status::invalid_argument(format!(
                    "`placements` has {} entries; a page has 1 to {MAX_PAGE_PLACEMENTS}",
                    r.placements.len()
                )));
            }
            let shared = convert::values("context", &catalog.schema.context, &r.context)?;
            let inline = inline_attributes(catalog, &r.attributes)?;
            let at = decision_time(r.at.as_ref(), now_ms)?;
            // Check every placement before deciding any.
            let mut requests = Vec::with_capacity(r.placements.len());
            for (i, p) in r.placements.iter().enumerate() {
                // The field's full name is spelled out only for an error.
                let id = required("placement", &p.placement).map_err(|e| {
                    Status::invalid_argument(e.message().replacen(
                        "`placement`",
                        &format!("`placements[{i}].placement`"),
                        1,
                    ))
                })?;
                let placement = Self::placement(catalog, id)?;
                let mut context = shared.clone();
                let own = convert::values("context", &catalog.schema.context, &p.context)?;
                let own_channel = Context::conflicting_channel(catalog, placement, &own).is_some();
                for (slot, v) in own.into_iter().enumerate() {
                    if !v.is_missing() {
                        context[slot] = v;
                    }
                }
                let field = if own_channel {
                    format!("placements[{i}].context.channel")
                } else {
                    "context.channel".to_string()
                };
                let context = Self::context(catalog, placement, context, &field)?;
                let slots = slots(&format!("placements[{i}].slots"), p.slots)?;
                requests.push((placement, context, slots));
            }
            // A page's placements and decision ids on the call's span, comma-separated
            // (joined only when the span is logged at all).
            let span = tracing::Span::current();
            let logged = !span.is_disabled();
            if logged {
                let ids: Vec<&str> = r.placements.iter().map(|p| p.placement.as_str()).collect();
                span.record("placement", ids.join(",").as_str());
            }
            self.read_position(r.min_position, deadline).await?;
            deadline.check()?;
            let mut shown = Vec::new();
            let mut decisions = Vec::with_capacity(requests.len());
            for (placement, context, slots) in requests {
                let exclude = if r.allow_repeats {
                    Vec::new()
                } else {
                    shown.clone()
                };
                let started = std::time::Instant::now();
                let (reply, offers) = Self::decide_one(
                    &db,
                    &view,
                    customer,
                    inline.as_deref(),
                    placement,
                    context,
                    at,
                    slots,
                    r.explain,
                    &exclude,
                )?;
                shown.extend(offers);
                self.metrics
                    .decision(&reply, started.elapsed().as_secs_f64());
                decisions.push(reply);
            }
            if logged {
                let ids: Vec<&str> = decisions.iter().map(|d| d.decision_id.as_str()).collect();
                span.record("decision_id", ids.join(",").as_str());
            }
            tracing::debug!(decisions = decisions.len(), "decided a page");
            Ok(Response::new(proto::DecideBatchResponse { decisions }))
        }
        .await
    }

    async fn record_outcome(
        &self,
        request: Request<proto::Outcome>,
    ) -> Result<Response<proto::OutcomeAck>, Status> {
        async {
            let deadline = Deadline::of(&request);
            let input = outcome_input(request.into_inner())?;
            let (mut acks, position) = self
                .outcomes(vec![input], deadline)
                .await
                .map_err(|(_, s)| s)?;
            let mut ack = acks.remove(0);
            ack.position = position;
            Ok(Response::new(ack))
        }
        .await
    }

    async fn record_outcomes(
        &self,
        request: Request<proto::RecordOutcomesRequest>,
    ) -> Result<Response<proto::RecordOutcomesResponse>, Status> {
        async {
            let deadline = Deadline::of(&request);
            let outcomes = request.into_inner().outcomes;
            if outcomes.len() > MAX_BATCH_OUTCOMES {
                return Err(Status::invalid_argument(format!(
                    "`outcomes` has {} entries; a call carries at most {MAX_BATCH_OUTCOMES}",
                    outcomes.len()
                )));
            }
            let inputs = outcomes
                .into_iter()
                .enumerate()
                .map(|(i, o)| {
                    outcome_input(o).map_err(|s| {
                        Status::new(s.code(), format!("outcomes[{i}]: {}", s.message()))
                    })
                })
                .collect::<Result<Vec<_>, Status>>()?;
            let (acks, position) =
                self.outcomes(inputs, deadline)
                    .await
                    .map_err(|(i, s)| match i {
                        Some(i) => Status::new(s.code(), format!("outcomes[{i}]: {}", s.message())),
                        None => s,
                    })?;
            Ok(Response::new(proto::RecordOutcomesResponse {
                acks,
                position,
            }))
        }
        .await
    }
}

impl Service {
    /// Records checked outcomes through the node's cluster, or its own journal (on the
    /// blocking pool: it waits for an fsync), counting them; the acks, and the cluster
    /// position of the last (0 on an embedded node). A refusal names the index of the
    /// outcome it is about, when it is about one.
    async fn outcomes(
        &self,
        inputs: Vec<OutcomeInput>,
        deadline: Deadline,
    ) -> Result<(Vec<proto::OutcomeAck>, u64), (Option<usize>, Status)> {
        let kinds: Vec<_> = inputs.iter().map(|i| i.kind).collect();
        let (acks, position) = match self.node.cluster() {
            Some(cluster) => {
                deadline.check().map_err(|s| (None, s))?;
                let (acks, written) = cluster
                    .record_outcomes(&inputs, now_ms())
                    .await
                    .map_err(|(i, e)| (i, convert::cluster_status(e)))?;
                (acks, written.position)
            }
            None => {
                let node = Arc::clone(&self.node);
                let acks = blocking(move || {
                    deadline.check()?;
                    Ok(node.db().record_outcomes(&inputs, now_ms()))
                })
                .await
                .map_err(|s| (None, s))?
                .map_err(|(i, e)| (i, status(e)))?;
                (acks, 0)
            }
        };
        let acks = kinds
            .into_iter()
            .zip(acks)
            .map(|(kind, a)| {
                self.metrics.outcome(kind, a.duplicate);
                proto::OutcomeAck {
                    duplicate: a.duplicate,
                    position,
                }
            })
            .collect();
        Ok((acks, position))
    }
}

fn outcome_input(o: proto::Outcome) -> Result<OutcomeInput, Status> {
    let decision =
        uuid::Uuid::parse_str(required("decision_id", &o.decision_id)?).map_err(|e| {
            Status::invalid_argument(format!(
                "`decision_id`: `{}` is not a UUID: {e}",
                printable(&o.decision_id)
            ))
        })?;
    Ok(OutcomeInput {
        decision,
        offer: required("offer_id", &o.offer_id)?.to_string(),
        kind: convert::kind(o.kind)?,
        value: match o.value {
            Some(v) if !v.is_finite() => {
                return Err(Status::invalid_argument(format!(
                    "`value` must be a finite number, found {v}"
                )));
            }
            v => v,
        },
        at: o
            .at
            .as_ref()
            .map_or_else(|| Ok(now_ms()), |t| millis("at", t))?,
        customer: optional("customer_id", &o.customer_id)?.map(str::to_string),
        channel: optional("channel", &o.channel)?.map(str::to_string),
    })
}
