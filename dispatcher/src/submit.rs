//! Submitting a plan, shared by `opflow run` and `POST /v1/runs`: an existing run for the
//! key is returned as it is; otherwise the plan is compiled against the op registry and
//! stored. An invalid plan changes nothing.

use std::path::Path;

use crate::{
    plan::{self, CompiledPlan, PlanErrors, RegisteredOp},
    store::{Store, StoreError, runs::Submission},
};

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("{0}")]
    Plan(PlanErrors),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Compiles `source` against the registry.
pub async fn compile(store: &Store, source: &str, file: &Path) -> Result<CompiledPlan, SubmitError> {
    let registered: Vec<RegisteredOp> = store
        .registered_ops()
        .await?
        .into_iter()
        .map(|op| RegisteredOp { name: op.name.to_string(), version: op.version })
        .collect();
    plan::compile(source, file, &registered).map_err(SubmitError::Plan)
}

/// Submits a plan; see the module docs.
pub async fn submit(
    store: &Store,
    source: &str,
    file: &Path,
    key: Option<&str>,
) -> Result<Submission, SubmitError> {
    if let Some(key) = key
        && let Some(existing) = store.run_by_key(key, source).await?
    {
        return Ok(existing);
    }
    let compiled = compile(store, source, file).await?;
    Ok(store.submit_run(&compiled, &file.display().to_string(), source, key).await?)
}
