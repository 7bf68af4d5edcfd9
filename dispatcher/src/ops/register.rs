//! Registering an op version from the op itself: run its command with `--describe` (a Rust
//! binary, or a Python op's command), or read the description it wrote to a file; declare
//! its queue, and record it in the registry. The registry learns about an op from the op,
//! so the two cannot disagree about its name or version.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use lapin::Channel;
use opflow_amqp::{OpQueueSettings, topology};
use opflow_protocol::{OpDescription, SCHEMA_VERSION};

use crate::store::{Store, StoreError, ops::Registration};

/// The largest description file `opflow ops add --description` reads: a description is a
/// few KiB; anything near this is not one.
const MAX_DESCRIPTION_BYTES: u64 = 1024 * 1024;

/// How long an op binary may take to describe itself.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(
        "cannot run `{binary} --describe`: {cause}; is it an op? (build the Rust ops with `cargo build --workspace --bins`; \
         install a Python op's package, e.g. with scripts/python-ops.sh, and name its command)"
    )]
    Spawn { binary: String, cause: std::io::Error },
    #[error("cannot read the op description {file}: {cause}")]
    ReadFile { file: String, cause: std::io::Error },
    #[error(
        "{file} is {size} bytes, not an op description (at most {MAX_DESCRIPTION_BYTES} bytes); write it with the op's `--describe`"
    )]
    FileTooLarge { file: String, size: u64 },
    #[error("`{binary} --describe` did not answer within {DESCRIBE_TIMEOUT:?}")]
    Timeout { binary: String },
    #[error("`{binary} --describe` exited with {status}: {stderr}")]
    Failed { binary: String, status: String, stderr: String },
    #[error("`{binary} --describe` printed something that is not an op description: {cause}")]
    BadDescription { binary: String, cause: serde_json::Error },
    #[error(
        "{file} is not an op description: {cause}; write it with the op's own `--describe` (`my-op --describe > {file}`)"
    )]
    BadDescriptionFile { file: String, cause: serde_json::Error },
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

/// Where an op's description comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpSource {
    /// The op's command (a binary, or e.g. `python -m my_op`), run with `--describe`.
    Command { program: PathBuf, args: Vec<OsString> },
    /// A file holding what the op printed for `--describe` (for an op whose runtime the
    /// registering machine lacks, e.g. a Python op registered from its image).
    DescriptionFile(PathBuf),
}

impl OpSource {
    /// An op binary (or script) run with no arguments but `--describe`.
    pub fn binary(path: impl Into<PathBuf>) -> Self {
        OpSource::Command { program: path.into(), args: Vec::new() }
    }

    /// The op's description: by running it, or from its file.
    pub async fn describe(&self) -> Result<OpDescription, RegisterError> {
        match self {
            OpSource::Command { program, args } => describe_command(program, args).await,
            OpSource::DescriptionFile(file) => {
                let name = file.display().to_string();
                let size = tokio::fs::metadata(file)
                    .await
                    .map_err(|cause| RegisterError::ReadFile { file: name.clone(), cause })?
                    .len();
                if size > MAX_DESCRIPTION_BYTES {
                    return Err(RegisterError::FileTooLarge { file: name, size });
                }
                let text = tokio::fs::read_to_string(file)
                    .await
                    .map_err(|cause| RegisterError::ReadFile { file: name.clone(), cause })?;
                OpDescription::from_json(&text)
                    .map_err(|cause| RegisterError::BadDescriptionFile { file: name, cause })
            }
        }
    }
}

impl std::fmt::Display for OpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpSource::Command { program, args } => {
                write!(f, "{}", program.display())?;
                for arg in args {
                    write!(f, " {}", arg.to_string_lossy())?;
                }
                Ok(())
            }
            OpSource::DescriptionFile(file) => write!(f, "{}", file.display()),
        }
    }
}

/// Runs `binary --describe` and parses what it prints.
pub async fn describe(binary: &Path) -> Result<OpDescription, RegisterError> {
    describe_command(binary, &[]).await
}

/// Runs `program args… --describe` and parses what it prints.
async fn describe_command(program: &Path, args: &[OsString]) -> Result<OpDescription, RegisterError> {
    let source = OpSource::Command { program: program.to_path_buf(), args: args.to_vec() };
    let name = source.to_string();
    let child = tokio::process::Command::new(program)
        .args(args)
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

/// Describes, declares and records one op.
pub async fn register(
    store: &Store,
    channel: &Channel,
    source: &OpSource,
    settings: OpQueueSettings,
) -> Result<(OpDescription, Registration), RegisterError> {
    let description = source.describe().await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_description_file_is_read_as_the_op_wrote_it_and_anything_else_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("op.json");
        std::fs::write(
            &file,
            r#"{"op": "loss-aggregate@1.0.0", "summary": "losses", "schema_version": 1, "unknown": true}"#,
        )
        .unwrap();
        let described = OpSource::DescriptionFile(file.clone()).describe().await.unwrap();
        assert_eq!(described.op.to_string(), "loss-aggregate@1.0.0");

        std::fs::write(&file, r#"{"op": "loss-aggregate@1.0.0"}"#).unwrap();
        let refused = OpSource::DescriptionFile(file.clone()).describe().await.unwrap_err().to_string();
        assert!(refused.contains("is not an op description") && refused.contains("--describe"), "{refused}");

        std::fs::write(&file, vec![b' '; MAX_DESCRIPTION_BYTES as usize + 1]).unwrap();
        let large = OpSource::DescriptionFile(file.clone()).describe().await.unwrap_err().to_string();
        assert!(large.contains("not an op description (at most 1048576 bytes)"), "{large}");

        let missing = OpSource::DescriptionFile(dir.path().join("none.json")).describe().await.unwrap_err();
        assert!(missing.to_string().starts_with("cannot read the op description"), "{missing}");
    }

    #[tokio::test]
    async fn a_command_is_run_with_its_arguments_and_named_whole_in_errors() {
        let source = OpSource::Command { program: "sh".into(), args: vec!["-c".into(), "exit 3".into()] };
        let error = source.describe().await.unwrap_err().to_string();
        assert!(error.starts_with("`sh -c exit 3 --describe` exited with"), "{error}");
    }
}
