//! Registering an op version from its binary: ask the binary to `--describe` itself,
//! declare its queue, and record it in the registry. The registry learns about an op from
//! the op, so the two cannot disagree about its name or version.

use std::{path::Path, process::Stdio, time::Duration};

use lapin::Channel;
use opflow_amqp::{OpQueueSettings, topology};
use opflow_protocol::{OpDescription, SCHEMA_VERSION};

use crate::store::{Store, StoreError, ops::Registration};

/// How long an op binary may take to describe itself.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(
        "cannot run `{binary} --describe`: {cause}; is it an op binary? (build them with `cargo build --workspace --bins`)"
    )]
    Spawn { binary: String, cause: std::io::Error },
    #[error("`{binary} --describe` did not answer within {DESCRIBE_TIMEOUT:?}")]
    Timeout { binary: String },
    #[error("`{binary} --describe` exited with {status}: {stderr}")]
    Failed { binary: String, status: String, stderr: String },
    #[error("`{binary} --describe` printed something that is not an op description: {cause}")]
    BadDescription { binary: String, cause: serde_json::Error },
    #[error(
        "{op} speaks protocol schema version {found}, this dispatcher speaks {SCHEMA_VERSION}; rebuild the op against a matching opflow-worker"
    )]
    SchemaMismatch { op: String, found: u32 },
    #[error(
        "{op} declares reuse_from `{requirement}`, which is not a semver requirement ({cause}); write one like `^1.2`"
    )]
    BadReuseFrom { op: String, requirement: String, cause: semver::Error },
    #[error("declaring the queue of {op}: {cause}")]
    Queue { op: String, cause: topology::TopologyError },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs `binary --describe` and parses what it prints.
pub async fn describe(binary: &Path) -> Result<OpDescription, RegisterError> {
    let name = binary.display().to_string();
    let child = tokio::process::Command::new(binary)
        .arg("--describe")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| RegisterError::Spawn { binary: name.clone(), cause: source })?;
    let output = tokio::time::timeout(DESCRIBE_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| RegisterError::Timeout { binary: name.clone() })?
        .map_err(|source| RegisterError::Spawn { binary: name.clone(), cause: source })?;
    if !output.status.success() {
        return Err(RegisterError::Failed {
            binary: name,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    let text = String::from_utf8_lossy(&output.stdout);
    OpDescription::from_json(&text)
        .map_err(|source| RegisterError::BadDescription { binary: name, cause: source })
}

/// Describes, declares and records one op binary.
pub async fn register(
    store: &Store,
    channel: &Channel,
    binary: &Path,
    settings: OpQueueSettings,
) -> Result<(OpDescription, Registration), RegisterError> {
    let description = describe(binary).await?;
    if description.schema_version != SCHEMA_VERSION {
        return Err(RegisterError::SchemaMismatch {
            op: description.op.to_string(),
            found: description.schema_version,
        });
    }
    if let Some(requirement) = &description.reuse_from
        && let Err(cause) = semver::VersionReq::parse(requirement)
    {
        return Err(RegisterError::BadReuseFrom {
            op: description.op.to_string(),
            requirement: crate::store::storable::short_text(requirement),
            cause,
        });
    }
    // An already registered version keeps the queue settings it was declared with.
    let settings = store.ops().queue_settings(&description.op).await?.unwrap_or(settings);
    // Queue first: a registered op always has its queue.
    topology::declare_op_queue(channel, &description.op, settings)
        .await
        .map_err(|source| RegisterError::Queue { op: description.op.to_string(), cause: source })?;
    let registration = store.ops().register(&description, settings).await?;
    Ok((description, registration))
}
