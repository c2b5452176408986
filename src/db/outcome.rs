//! Outcomes: the checks an outcome must pass before anything is written (its offer, its
//! time, its decision's shown offers, customer and channel), and the write itself: room in
//! the journal first, then the outcome's identity, then, under the customer's lock, the
//! record, the history and the budget counters, in journal order. A retry is acknowledged
//! once the write it repeats is durable.

use super::*;

/// An outcome whose identity is claimed and whose record is not yet queued.
const PENDING: u64 = u64::MAX;

/// An outcome that passed every check, with what the node resolved for it.
#[derive(Debug)]
pub(super) struct CheckedOutcome {
    pub(super) key: u32,
    pub(super) group: Option<String>,
    pub(super) group_key: u32,
    pub(super) customer: Option<String>,
    pub(super) channel: Option<String>,
    /// The decision's predictor values, for an offer with adaptive models.
    pub(super) inputs: Option<Vec<(String, Feature)>>,
    /// The catalog has adaptive models: the outcome goes through learning (every one does,
    /// as on replay: any outcome moves the journal's clock that closes windows).
    pub(super) learns: bool,
}

/// The record an outcome that passed its checks writes; `now` is when it was accepted.
pub(super) fn outcome_record(input: &OutcomeInput, outcome: &CheckedOutcome, now: i64) -> Record {
    Record::Outcome(OutcomeRecord {
        decision: input.decision.into_bytes(),
        offer: input.offer.clone(),
        kind: input.kind,
        value: input.value,
        at: input.at,
        customer: outcome.customer.clone(),
        channel: outcome.channel.clone(),
        group: outcome.group.clone(),
        accepted: now,
        inputs: outcome.inputs.clone(),
    })
}

impl CheckedOutcome {
    pub(super) fn identity(&self, input: &OutcomeInput) -> OutcomeKey {
        (input.decision.as_u128(), self.key, input.kind)
    }
}

impl Db {
    /// Records an outcome durably and adds it to the customer's history; `now` is the
    /// node's clock, recorded as when it was accepted. A retry of the same (decision,
    /// offer, kind) is acknowledged without being counted again.
    pub fn record_outcome(&self, input: &OutcomeInput, now: i64) -> Result<OutcomeAck, DbError> {
        self.record_outcomes(std::slice::from_ref(input), now)
            .map(|mut acks| acks.remove(0))
            .map_err(|(_, e)| e)
    }

    /// Records outcomes durably, all or none acknowledged: every one is checked before
    /// any is appended (a bad one refuses the batch and changes nothing), then all are
    /// appended and one wait covers them (a batch of 100 costs one group commit, not
    /// 100). A refusal names the index of the outcome it is about; a failed journal
    /// names none (nothing was acknowledged, and a heal rebuilds memory from what is
    /// durable).
    pub fn record_outcomes(
        &self,
        inputs: &[OutcomeInput],
        now: i64,
    ) -> Result<Vec<OutcomeAck>, (Option<usize>, DbError)> {
        let catalog = self.catalog();
        let checked = inputs
            .iter()
            .enumerate()
            .map(|(i, input)| {
                self.check_outcome(&catalog, input, now)
                    .map_err(|e| (Some(i), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut acks = Vec::with_capacity(checked.len());
        let mut counted = Vec::with_capacity(checked.len());
        // The highest record to wait for: this call's own, and the first writes its
        // retries repeat (acknowledged only once those are durable).
        let mut last = 0;
        let mut failed = None;
        for (i, outcome) in checked.into_iter().enumerate() {
            let input = &inputs[i];
            let identity = outcome.identity(input);
            let joined = outcome.channel.is_some();
            // Room first, then the identity: from claiming it to queueing its record
            // nothing waits for the disk, so a retry that finds it pending finds its
            // record queued a moment later.
            let permit = match self.journal.reserve() {
                Ok(permit) => permit,
                Err(e) => {
                    failed = Some((None, e.into()));
                    break;
                }
            };
            if !self.outcomes.insert_new(identity, PENDING) {
                drop(permit);
                match self.first_write(&identity) {
                    Some(seq) => last = last.max(seq),
                    None => {
                        // The first write failed: the journal has; say so.
                        failed = Some((
                            None,
                            self.journal
                                .sync()
                                .err()
                                .map_or(DbError::Write(storage::WriteError::Closed), DbError::from),
                        ));
                        break;
                    }
                }
                acks.push(OutcomeAck {
                    duplicate: true,
                    customer: outcome.customer.filter(|_| joined),
                });
                continue;
            }
            counted.push(identity);
            let customer = outcome.customer.clone();
            let is_last = i + 1 == inputs.len();
            match self.append_outcome(input, outcome, now, permit, is_last) {
                Ok(seq) => {
                    self.outcomes.update(&identity, seq);
                    last = last.max(seq);
                }
                Err(e) => {
                    failed = Some((None, e));
                    break;
                }
            }
            acks.push(OutcomeAck {
                duplicate: false,
                customer: customer.filter(|_| joined),
            });
        }
        let waited = match failed {
            Some(failure) => Err(failure),
            None => self.journal.wait(last).map_err(|e| (None, e.into())),
        };
        if let Err(e) = waited {
            // Only the journal fails here (every refusal came from the checks, before
            // anything was appended). Outcomes of this call already applied in memory are
            // not acknowledged; the node heals by reopening its directory, rebuilding
            // memory, these identities included, from what is durable.
            for identity in &counted {
                self.outcomes.remove(identity);
            }
            return Err(e);
        }
        Ok(acks)
    }

    /// The sequence number of the first write of an outcome a retry repeats, once its
    /// record is queued (a moment after its identity was claimed: it yields meanwhile);
    /// `None` if that write failed.
    fn first_write(&self, identity: &OutcomeKey) -> Option<u64> {
        loop {
            match self.outcomes.get(identity) {
                Some(PENDING) => std::thread::yield_now(),
                other => return other,
            }
        }
    }

    /// Everything about an outcome that can be refused, before anything is written:
    /// the offer, the time, and that its decision (when remembered) showed the offer.
    pub(super) fn check_outcome(
        &self,
        catalog: &Catalog,
        input: &OutcomeInput,
        now: i64,
    ) -> Result<CheckedOutcome, DbError> {
        let Some(index) = catalog.offer(&input.offer) else {
            return Err(DbError::UnknownOffer {
                offer: crate::schema::printable(&input.offer).into_owned(),
                suggestion: crate::expr::did_you_mean(
                    &input.offer,
                    catalog.offers.iter().map(|o| o.id.as_str()),
                ),
            });
        };
        // As old as the longest history any catalog keeps, whatever this one's look-back
        // (which may be none at all): an outcome is data for retraining beyond the history.
        let horizon = self
            .options
            .attribution_window
            .max(HistoryLimits::default().max_age);
        time::outcome("at", input.at, now, horizon)?;
        if input.decision.get_version_num() != 7 {
            return Err(DbError::NotADecision {
                decision: input.decision,
            });
        }
        time::not_ahead("decision_id", uuid_time(input.decision), now)?;
        let offer = &catalog.offers[index];
        let recent = self.decisions.get(&input.decision);
        if let Some(channel) = &input.channel
            && !catalog.placements.iter().any(|p| p.channel == *channel)
        {
            let mut channels: Vec<&str> = catalog
                .placements
                .iter()
                .map(|p| p.channel.as_str())
                .collect();
            channels.sort_unstable();
            channels.dedup();
            return Err(DbError::UnknownChannel {
                channel: crate::schema::printable(channel).into_owned(),
                channels: channels.join(", "),
            });
        }
        // A caller's customer and channel must be the decision's, when it is known: they
        // decide whose history and which channel's caps and budgets count the outcome.
        if let Some(r) = &recent {
            if let Some(c) = &input.customer
                && **c != *r.customer()
            {
                return Err(DbError::NotTheDecisions {
                    field: "customer_id",
                    given: crate::schema::printable(c).into_owned(),
                    decision: input.decision,
                    its: r.customer().to_string(),
                });
            }
            if let Some(ch) = &input.channel
                && key(ch) != r.channel()
            {
                let its = catalog
                    .placements
                    .iter()
                    .find(|p| p.channel_key == r.channel())
                    .map_or_else(|| format!("{:08x}", r.channel()), |p| p.channel.clone());
                return Err(DbError::NotTheDecisions {
                    field: "channel",
                    given: crate::schema::printable(ch).into_owned(),
                    decision: input.decision,
                    its,
                });
            }
        }
        if let Some(shown) = recent.as_ref().and_then(|r| r.shown())
            && !shown.clone().any(|k| k == offer.key)
        {
            return Err(DbError::NotShown {
                decision: input.decision,
                offer: offer.id.clone(),
                shown: shown
                    .map(|k| {
                        catalog
                            .offer_by_key(k)
                            .map_or_else(|| format!("{k:08x}"), |o| catalog.offers[o].id.clone())
                    })
                    .collect(),
            });
        }
        let customer = input
            .customer
            .clone()
            .or_else(|| recent.as_ref().map(|r| r.customer().to_string()));
        let channel = input.channel.clone().or_else(|| {
            let key = recent.as_ref()?.channel();
            catalog
                .placements
                .iter()
                .find(|p| p.channel_key == key)
                .map(|p| p.channel.clone())
        });
        // A customer whose stored record does not decode refuses the outcome here, before
        // anything of its batch is written.
        if let (Some(c), Some(_)) = (&customer, &channel) {
            self.store().with(c, |_| ())?;
        }
        let learns = !catalog.models.is_empty();
        Ok(CheckedOutcome {
            key: offer.key,
            group: offer.group.clone(),
            group_key: offer.group_key,
            customer,
            channel,
            inputs: learns
                .then(|| self.inputs_for(catalog, input.decision, index))
                .flatten(),
            learns,
        })
    }

    /// Appends one checked outcome (not a retry) and applies it to the customer's
    /// history and the budget counters, in journal order. Room in the journal's queue is
    /// taken first, so nothing here waits for the disk while holding the customer's or
    /// the counters' lock (decide reads neither lock, but other writers would queue).
    fn append_outcome(
        &self,
        input: &OutcomeInput,
        outcome: CheckedOutcome,
        now: i64,
        permit: storage::Permit<'_, Entry>,
        last: bool,
    ) -> Result<u64, DbError> {
        let record = outcome_record(input, &outcome, now);
        // What the models learn from: the record as journaled (see `learning`).
        let learned = match (&record, outcome.learns) {
            (Record::Outcome(r), true) => Some(r.clone()),
            _ => None,
        };
        // An impression counts against budgets, in journal order (see `budget`).
        let impression = (input.kind == EventKind::Impression).then(|| {
            budget::scopes(
                outcome.key,
                outcome.group_key,
                outcome.channel.as_deref().map_or(0, key),
            )
        });
        let append = |record: Record| -> Result<u64, DbError> {
            let ordered = impression.is_some() || learned.is_some();
            let mut counters = ordered.then(|| self.spending.lock());
            // Only a call's last record is waited for (one group commit for them all).
            let seq = permit.append(Entry::Record(record), last)?;
            if let (Some(counters), Some(scopes)) = (counters.as_mut(), &impression) {
                counters.count(scopes, input.at);
            }
            if let Some(r) = &learned {
                self.learn(r);
            }
            Ok(seq)
        };
        match (&outcome.customer, &outcome.channel) {
            (Some(c), Some(ch)) => {
                let event = Event {
                    at: input.at,
                    offer: outcome.key,
                    group: outcome.group_key,
                    channel: key(ch),
                    kind: input.kind,
                };
                let (_layout, view) = self.for_write();
                let limits = view.store.limits();
                view.store.update(c, |state| {
                    let seq = append(record)?;
                    state.history.record(event, limits, now);
                    state.seq = seq;
                    Ok::<_, DbError>(seq)
                })
            }
            _ => append(record),
        }
    }
}
