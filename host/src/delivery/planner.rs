//! Planning input records with the component: in batches, with a failing
//! batch planned again in halves so that only the records the component
//! fails on become record errors. Runs wherever the component instance is
//! (its own thread during a run, the caller's in a dry run).

use destination_types::{PlanOutcome, RecordError, RecordFate};

use crate::engine::Configured;
use crate::input::{Input, Item};

use super::RunError;

/// A record error for a record the component could not plan.
fn component_error(failure: &str) -> PlanOutcome {
    PlanOutcome::Invalid(RecordError {
        code: "component-error".into(),
        message: format!("the record could not be planned: {failure}"),
        audiences: Vec::new(),
        fate: RecordFate::Rejected,
    })
}

/// Plans a batch: one outcome per record. When the component fails on a
/// batch (a trap, a deadline, the memory cap, an answer of the wrong
/// length), the batch is planned again in halves, down to single records,
/// so that only the records it fails on become `component-error` record
/// errors; after a trap the next call gets a fresh instance. Halving stops
/// after a few failed calls more than one bad record needs (a component
/// that fails on everything would otherwise cost a deadline per record):
/// what is left then fails whole.
fn plan_batch(destination: &mut Configured, texts: &[String]) -> Vec<PlanOutcome> {
    let depth = usize::BITS - texts.len().leading_zeros();
    let mut failures_left = 4 * depth as usize + 8;
    plan_halving(destination, texts, &mut failures_left)
}

fn plan_halving(
    destination: &mut Configured,
    texts: &[String],
    failures_left: &mut usize,
) -> Vec<PlanOutcome> {
    if texts.is_empty() {
        return Vec::new();
    }
    let failure = match destination.plan(texts) {
        Ok(outcomes) if outcomes.len() == texts.len() => return outcomes,
        Ok(outcomes) => format!(
            "the component returned {} outcomes for {} records",
            outcomes.len(),
            texts.len()
        ),
        Err(e) => e.to_string(),
    };
    *failures_left = failures_left.saturating_sub(1);
    if texts.len() == 1 || *failures_left == 0 {
        tracing::error!("planning {} records failed: {failure}", texts.len());
        return texts.iter().map(|_| component_error(&failure)).collect();
    }
    tracing::warn!(
        "planning a batch of {} records failed ({failure}); planning it in halves",
        texts.len()
    );
    let (first, second) = texts.split_at(texts.len() / 2);
    let mut outcomes = plan_halving(destination, first, failures_left);
    outcomes.extend(plan_halving(destination, second, failures_left));
    outcomes
}

/// Plans input records ([`plan_batch`]); records the reader refused are
/// record errors without asking the component. Input order is kept.
pub(crate) fn plan_items(
    destination: &mut Configured,
    items: Vec<Item>,
) -> Vec<(Item, PlanOutcome)> {
    let texts: Vec<String> = items
        .iter()
        .filter(|item| item.refused.is_none())
        .map(|item| item.text.clone())
        .collect();
    let mut outcomes = plan_batch(destination, &texts).into_iter();
    items
        .into_iter()
        .map(|item| {
            let outcome = match &item.refused {
                Some(refused) => PlanOutcome::Invalid(RecordError {
                    code: refused.code.into(),
                    message: refused.message.clone(),
                    audiences: Vec::new(),
                    fate: RecordFate::Rejected,
                }),
                None => outcomes
                    .next()
                    .unwrap_or_else(|| component_error("no outcome for the record")),
            };
            (item, outcome)
        })
        .collect()
}

/// Plans every record of `input` in batches and hands each outcome to
/// `emit` as it comes (a dry run), reading the input exactly as a run does.
pub fn plan_stream(
    destination: &mut Configured,
    input: Input,
    batch: usize,
    mut emit: impl FnMut(&Item, &PlanOutcome) -> std::io::Result<()>,
) -> Result<(), RunError> {
    let mut items = input.into_items();
    loop {
        let mut pending = Vec::with_capacity(batch.max(1));
        let mut failure = None;
        for item in items.by_ref() {
            match item {
                Ok(item) => pending.push(item),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
            if pending.len() >= batch.max(1) {
                break;
            }
        }
        if pending.is_empty() && failure.is_none() {
            return Ok(());
        }
        // What was read before a read error is still shown.
        for (item, outcome) in plan_items(destination, pending) {
            emit(&item, &outcome).map_err(RunError::Output)?;
        }
        if let Some(e) = failure {
            return Err(e.into());
        }
    }
}
