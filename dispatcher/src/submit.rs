//! Submitting a plan, shared by `opflow run` and `POST /v1/runs`: an existing run for the
//! key is returned as it is; otherwise the plan is compiled against the op registry and
//! stored. An invalid plan changes nothing.

use std::path::Path;

use opflow_protocol::OpRef;

use crate::{
    plan::{self, CompiledPlan, PlanErrors, RegisteredOp, backfill::LeftOut},
    store::{
        Store, StoreError,
        runs::{IdempotencyKey, RunOptions, Submission},
        webhooks::RunNotify,
    },
};

/// The longest idempotency key accepted.
pub const MAX_KEY_BYTES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("{0}")]
    Plan(PlanErrors),
    #[error("the idempotency key {0}")]
    BadKey(String),
    /// `--partitions` selects nothing of the plan, or names a partition it does not have.
    #[error("--partitions: {0}")]
    Partitions(String),
    /// Two ways of choosing the cells that exclude each other.
    #[error("{0}")]
    Conflict(&'static str),
    #[error("compiling the plan failed unexpectedly (a bug): {0}")]
    Compiler(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Compiles `source` against the registry, on a blocking thread: a large plan takes a
/// while, and must not hold up the async tasks that apply events and serve the API.
pub async fn compile(store: &Store, source: &str, file: &Path) -> Result<CompiledPlan, SubmitError> {
    let registry = store.ops().reuse_from().await?;
    let registered: Vec<RegisteredOp> = registry
        .iter()
        .map(|(op, _)| RegisteredOp { name: op.name.to_string(), version: op.version.clone() })
        .collect();
    let (source, file) = (source.to_owned(), file.to_path_buf());
    // The blocking thread is outside the caller's span: the compile span goes with it.
    let span = tracing::info_span!("compile", bytes = source.len());
    let mut plan =
        tokio::task::spawn_blocking(move || span.in_scope(|| plan::compile(&source, &file, &registered)))
            .await
            .map_err(|panic| SubmitError::Compiler(panic.to_string()))?
            .map_err(SubmitError::Plan)?;
    reuse_across_versions(&mut plan, &registry);
    Ok(plan)
}

/// Gives each asset the other registered versions of its op whose materializations its
/// steps reuse as their own: those its own version's `reuse_from` matches.
fn reuse_across_versions(plan: &mut CompiledPlan, registry: &[(OpRef, Option<String>)]) {
    for asset in &mut plan.assets {
        let requirement = registry
            .iter()
            .find(|(op, _)| op.name.as_str() == asset.op_name && op.version == asset.op_version)
            .and_then(|(_, reuse_from)| reuse_from.as_deref())
            .and_then(|text| semver::VersionReq::parse(text).ok());
        let Some(requirement) = requirement else { continue };
        let mut versions: Vec<semver::Version> = registry
            .iter()
            .filter(|(op, _)| {
                op.name.as_str() == asset.op_name
                    && op.version != asset.op_version
                    && requirement.matches(&op.version)
            })
            .map(|(op, _)| op.version.clone())
            .collect();
        versions.sort();
        asset.reuse_versions = versions;
    }
}

/// Refuses a key that cannot be stored or shown: too long, or holding control characters.
fn check_key(key: &str) -> Result<(), SubmitError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(SubmitError::BadKey(format!("is {} bytes; use 1 to {MAX_KEY_BYTES} bytes", key.len())));
    }
    if key.chars().any(char::is_control) {
        return Err(SubmitError::BadKey(
            "holds control characters (a NUL, a newline, …); use printable text".into(),
        ));
    }
    Ok(())
}

/// The longest owner (team) name, in bytes.
pub const MAX_OWNER_BYTES: usize = 64;

/// Refuses an owner (a team, or a token's name) that cannot be shown as one word: says
/// why, to follow what was refused.
pub fn check_owner(owner: &str) -> Result<(), String> {
    if owner.is_empty() || owner.len() > MAX_OWNER_BYTES {
        return Err(format!("is {} bytes; use 1 to {MAX_OWNER_BYTES}", owner.len()));
    }
    if owner.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("holds spaces or control characters; use one word (`risk`, `ml-infra`)".into());
    }
    Ok(())
}

/// A stored run (or the one found by its key), and the assets of its plan a
/// `--partitions` run left out (empty for a run found by its key).
#[derive(Debug, Clone)]
pub struct Submitted {
    pub submission: Submission,
    pub left_out: Vec<LeftOut>,
}

impl std::ops::Deref for Submitted {
    type Target = Submission;

    fn deref(&self) -> &Submission {
        &self.submission
    }
}

/// Cuts a compiled plan down to the cells `options` asks for (`plan::backfill`); says
/// which assets a `--partitions` cut left out.
pub fn cut(plan: &mut CompiledPlan, options: &RunOptions<'_>) -> Result<Vec<LeftOut>, SubmitError> {
    if options.no_reuse && options.only.is_some() {
        return Err(SubmitError::Conflict(
            "`no_reuse` runs every cell and `only` takes cells from the catalog: ask for one of them",
        ));
    }
    let left_out = match options.partitions {
        Some(selection) => plan.restrict_partitions(selection).map_err(SubmitError::Partitions)?,
        None => Vec::new(),
    };
    if options.no_reuse {
        plan.reusing_nothing();
    }
    if let Some(only) = options.only {
        plan.taking_from_catalog(only);
    }
    Ok(left_out)
}

/// Submits a plan; see the module docs.
pub async fn submit(
    store: &Store,
    source: &str,
    file: &Path,
    key: Option<&str>,
) -> Result<Submitted, SubmitError> {
    let key = key.map(|key| IdempotencyKey { owner: "", key });
    submit_notifying(store, source, file, key, None, RunOptions::default()).await
}

/// Submits a plan whose every step runs, reusing nothing from the asset catalog: a
/// benchmark measures execution, and its plans repeat.
pub async fn submit_without_reuse(
    store: &Store,
    source: &str,
    file: &Path,
) -> Result<Submitted, SubmitError> {
    let owner = RunOptions { no_reuse: true, ..RunOptions::default() };
    submit_notifying(store, source, file, None, None, owner).await
}

/// As [`submit`], with the run's own webhook target stored with the run (`notify` in
/// `POST /v1/runs`; its URL checked by the caller). Its `submit` span (with `compile`
/// inside) records the run it made or found.
#[tracing::instrument(name = "submit", skip_all, fields(keyed = key.is_some(), run_id = tracing::field::Empty))]
pub async fn submit_notifying(
    store: &Store,
    source: &str,
    file: &Path,
    key: Option<IdempotencyKey<'_>>,
    notify: Option<&RunNotify>,
    owner: RunOptions<'_>,
) -> Result<Submitted, SubmitError> {
    if let Some(key) = key {
        check_key(key.key)?;
        if let Some(existing) = store.runs().by_key(key, source).await? {
            tracing::Span::current().record("run_id", tracing::field::display(existing.run_id));
            return Ok(Submitted { submission: existing, left_out: Vec::new() });
        }
    }
    let mut compiled = compile(store, source, file).await?;
    let left_out = cut(&mut compiled, &owner)?;
    let file = crate::store::storable::short_text(&file.display().to_string());
    let submission = store.runs().submit_notifying(&compiled, &file, source, key, notify, owner).await?;
    tracing::Span::current().record("run_id", tracing::field::display(submission.run_id));
    Ok(Submitted { submission, left_out })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_asset_reuses_the_registered_versions_its_version_declares_compatible() {
        let registry: Vec<(OpRef, Option<String>)> = [
            ("noop@1.0.0", None),
            ("noop@1.1.0", None),
            ("noop@1.1.3", Some("^1.1")),
            ("noop@2.0.0", Some("^1.1")),
            ("other@1.1.1", None),
        ]
        .into_iter()
        .map(|(op, r)| (op.parse().unwrap(), r.map(str::to_owned)))
        .collect();
        let registered: Vec<RegisteredOp> = registry
            .iter()
            .map(|(op, _)| RegisteredOp { name: op.name.to_string(), version: op.version.clone() })
            .collect();
        let mut plan = plan::compile(
            "name: p\nassets:\n  - name: a\n    op: noop@1.1.3\n  - name: b\n    op: noop@1.0.0\n",
            Path::new("p.yaml"),
            &registered,
        )
        .unwrap();
        reuse_across_versions(&mut plan, &registry);
        let versions: Vec<String> = plan.assets[0].reuse_versions.iter().map(ToString::to_string).collect();
        assert_eq!(versions, ["1.1.0"], "^1.1 matches 1.1.0 (and itself), not 1.0.0 or 2.0.0");
        assert!(plan.assets[1].reuse_versions.is_empty(), "1.0.0 declares nothing");
    }

    #[test]
    fn owners_are_one_short_word() {
        assert!(check_owner("risk").is_ok() && check_owner("ml-infra_2").is_ok());
        assert!(check_owner("").unwrap_err().contains("0 bytes"));
        assert!(check_owner("two words").unwrap_err().contains("spaces"));
        assert!(check_owner(&"t".repeat(MAX_OWNER_BYTES + 1)).is_err());
    }

    #[test]
    fn keys_must_be_printable_and_short() {
        assert!(check_key("nightly-2026-11-22").is_ok());
        assert!(check_key("a\0b").unwrap_err().to_string().contains("control characters"));
        assert!(check_key(&"k".repeat(MAX_KEY_BYTES + 1)).unwrap_err().to_string().contains("257 bytes"));
        assert!(check_key("").is_err());
    }
}
