//! Ready steps satisfied from the asset catalog instead of published: a step whose memo key
//! matches an earlier materialization (docs/catalog.md), and in a backfill run
//! (`--missing`, `--failed`) a step whose cell the catalog holds as it should be. Each
//! becomes a success with the earlier output, applied like a worker's (so it unlocks its
//! downstream), and its outbox row goes.
//!
//! Identical steps in flight at once (two runs asking for the same memo key) run once:
//! the first one missed goes on, the others wait (`service::identical`) until it ends, and
//! are then looked up again, which finds what it made.

use std::{collections::HashMap, sync::Arc};

use tokio_util::sync::CancellationToken;

use super::{applier::Applier, window::PublishWindow};
use crate::{
    plan::{
        Only, Reuse,
        backfill::{StepDefinition, why_run},
        fingerprint::Fingerprint,
    },
    store::{
        StoreError,
        catalog::{CellQuery, MemoAnswer, MemoQuery, REUSED_BY_DISPATCHER},
        lease::LeaderStore,
        outbox::OutboxRow,
        run_plan::RunPlan,
        storable::StorableEvent,
    },
};

/// How the publisher treats a ready step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    /// Publish it as it is.
    Publish,
    /// Look its memo key up first.
    Memo,
    /// Decide by its cell in the catalog first (a backfill).
    Cell(Only),
}

/// How a ready step is looked at: a step already held was looked up when it was first held
/// (and missed), so it is published; else by its asset's `reuse`.
pub fn look(held: bool, reuse: Reuse) -> Look {
    match reuse {
        _ if held => Look::Publish,
        Reuse::Never => Look::Publish,
        Reuse::Memo => Look::Memo,
        Reuse::Missing => Look::Cell(Only::Missing),
        Reuse::Failed => Look::Cell(Only::Failed),
    }
}

/// What one call of [`satisfy`] found, for `opflow_catalog_lookups_total`.
#[derive(Debug, Default)]
struct Lookups {
    reused: u64,
    missed: u64,
    unkeyable: u64,
    waiting: u64,
    taken: u64,
    runs: u64,
}

/// The success a step satisfied from the catalog is applied as.
fn reused_success(row: &OutboxRow, output: serde_json::Value) -> StorableEvent {
    StorableEvent::from(opflow_protocol::Event::new(
        row.run_id,
        row.step_id,
        row.attempt,
        REUSED_BY_DISPATCHER,
        opflow_protocol::EventKind::Succeeded { output },
    ))
}

/// Satisfies what it can of `rows` from the catalog, in one lookup of each kind, and
/// returns the rows still to publish; a step identical to one that runs waits for it in
/// `window.identical`. A row already held was looked up when it was first held (see
/// [`look`]). A lookup that fails for another reason than an outage publishes its rows.
pub async fn satisfy(
    store: &LeaderStore,
    applier: &Applier,
    window: &mut PublishWindow,
    rows: Vec<(OutboxRow, Arc<RunPlan>)>,
    cancel: &CancellationToken,
) -> Result<Vec<(OutboxRow, Arc<RunPlan>)>, StoreError> {
    let mut memo = MemoQuery::default();
    let mut memo_asked = Vec::new();
    let mut cells = CellQuery::default();
    let mut cells_asked = Vec::new();
    let mut keep = Vec::with_capacity(rows.len());
    for (row, plan) in rows {
        if window.identical.waits(row.seq) {
            continue;
        }
        match look(window.holds(row.seq), plan.reuse(row.step_id)) {
            Look::Publish => keep.push((row, plan)),
            Look::Memo => {
                memo.push(row.run_id.as_uuid(), &plan, row.step_id);
                memo_asked.push((row, plan));
            }
            Look::Cell(only) => {
                cells.push(row.run_id.as_uuid(), &plan, row.step_id);
                cells_asked.push((row, plan, only));
            }
        }
    }
    let catalog = store.catalog();
    let memo_answers = match catalog.memo_answers(&memo).await {
        Ok(answers) => answers,
        Err(error) if error.is_transient() => return Err(error),
        Err(error) => {
            tracing::warn!(%error, steps = memo.len(), "looking up earlier materializations failed; running the steps");
            Vec::new()
        }
    };
    let answers = match catalog.cells_of(&cells).await {
        Ok(answers) => answers,
        Err(error) if error.is_transient() => return Err(error),
        Err(error) => {
            tracing::warn!(%error, steps = cells.len(), "looking up a backfill's cells failed; running the steps");
            Vec::new()
        }
    };
    let (mut events, mut seqs) = (Vec::new(), Vec::new());
    let mut counted = Lookups::default();
    let mut memo_answers: HashMap<usize, _> = memo_answers.into_iter().map(|a| (a.position, a)).collect();
    for (position, (row, plan)) in memo_asked.into_iter().enumerate() {
        match memo_answers.remove(&position) {
            Some(MemoAnswer { hit: Some(hit), .. }) => {
                tracing::debug!(run_id = %row.run_id, step_id = %row.step_id, materialization = hit.materialization,
                    "satisfied from an earlier materialization");
                events.push(reused_success(&row, hit.output));
                seqs.push(row.seq);
                counted.reused += 1;
            }
            Some(MemoAnswer { key: Some(key), hit: None, .. }) => {
                match window.identical.run_or_wait(key, row, plan) {
                    Some(runs) => {
                        keep.push(runs);
                        counted.missed += 1;
                    }
                    None => counted.waiting += 1,
                }
            }
            Some(MemoAnswer { key: None, .. }) => {
                tracing::debug!(run_id = %row.run_id, step_id = %row.step_id,
                    "no memo key: a materialization it reads is not in the catalog; it runs");
                keep.push((row, plan));
                counted.unkeyable += 1;
            }
            // The lookup failed (logged above): it runs.
            None => keep.push((row, plan)),
        }
    }
    let mut answers: HashMap<usize, _> = answers.into_iter().map(|a| (a.position, a)).collect();
    for (position, (row, plan, only)) in cells_asked.into_iter().enumerate() {
        let taken = answers.remove(&position).and_then(|answer| {
            let asset = &plan.plan().assets[plan.asset_index(row.step_id)];
            let (partition, point) = plan.partition_and_point(row.step_id);
            let config_hash = Fingerprint::of_effective_config(&asset.config, partition, &point);
            let op_version = asset.op_version.to_string();
            let now = StepDefinition {
                op_name: &asset.op_name,
                op_version: &op_version,
                reuse_versions: &asset.reuse_versions,
                config_hash: config_hash.as_bytes(),
            };
            match why_run(only, answer.facts.as_ref(), now, answer.upstream_runs) {
                None => answer.output,
                Some(why) => {
                    tracing::debug!(run_id = %row.run_id, step_id = %row.step_id, %why, "a backfill runs the step");
                    None
                }
            }
        });
        match taken {
            Some(output) => {
                events.push(reused_success(&row, output));
                seqs.push(row.seq);
                counted.taken += 1;
            }
            None => {
                keep.push((row, plan));
                counted.runs += 1;
            }
        }
    }
    let metrics = &applier.metrics;
    for (result, n) in [
        ("reused", counted.reused),
        ("missed", counted.missed),
        ("unkeyable", counted.unkeyable),
        ("waiting", counted.waiting),
        ("taken", counted.taken),
        ("runs", counted.runs),
    ] {
        metrics.catalog_lookups(result, n);
    }
    if events.is_empty() {
        return Ok(keep);
    }
    // Cancelled: what was applied stays; the rest keep their rows for the next leader.
    if applier.apply(&events, cancel).await.is_some() {
        tracing::info!(steps = events.len(), "steps satisfied from the catalog");
        if let Err(error) = store.outbox().forget(&seqs).await {
            tracing::debug!(%error, "could not remove the outbox rows of reused steps; rounds drop them");
        }
    }
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_is_looked_up_once_and_as_its_asset_says() {
        assert_eq!(look(false, Reuse::Memo), Look::Memo);
        assert_eq!(look(false, Reuse::Never), Look::Publish);
        assert_eq!(look(false, Reuse::Missing), Look::Cell(Only::Missing));
        assert_eq!(look(false, Reuse::Failed), Look::Cell(Only::Failed));
        // Held: it was looked up (and missed) when first held.
        for reuse in [Reuse::Memo, Reuse::Never, Reuse::Missing, Reuse::Failed] {
            assert_eq!(look(true, reuse), Look::Publish);
        }
    }
}
