//! Plan errors. Validation collects every problem before failing, so a user fixes a plan
//! in one pass; each problem names the file, the line where known, and the asset.

use std::{fmt, path::PathBuf};

use opflow_protocol::text::cut;

/// One problem in a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanError {
    pub file: PathBuf,
    /// 1-based, when the problem has a place in the file.
    pub line: Option<usize>,
    pub asset: Option<String>,
    pub kind: PlanErrorKind,
}

/// What is wrong, and what to do about it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanErrorKind {
    #[error("not valid YAML: {0}")]
    Syntax(String),
    #[error("{0}")]
    Shape(String),
    #[error("the plan has no assets; add at least one under `assets:`")]
    NoAssets,
    #[error(
        "{what} name `{name}` is invalid: use lowercase letters, digits, `_` and `-`, starting with a letter or digit, at most 64 characters"
    )]
    BadName { what: &'static str, name: String },
    #[error("asset `{name}` is declared twice (first on line {first_line}); rename one of them")]
    DuplicateAsset { name: String, first_line: usize },
    #[error("needs unknown asset `{missing}`; declare it or fix the name")]
    UnknownDep { missing: String },
    #[error("lists `{dep}` twice in `deps`; list it once")]
    DuplicateDep { dep: String },
    #[error("dependency cycle {cycle}; remove one of these edges")]
    Cycle { cycle: String },
    #[error(
        "`{text}` is not an op reference: {reason}; write it as name@version (`noop@1.0.0`) or name@requirement (`noop@^1.0`)"
    )]
    BadOpRef { text: String, reason: String },
    #[error("op `{op}` is not registered; register it with `opflow ops add <op binary>`")]
    UnknownOp { op: String },
    #[error("no registered version of op `{op}` matches `{requirement}`; registered: {registered}")]
    NoMatchingVersion { op: String, requirement: String, registered: String },
    #[error("sweep: {0}")]
    BadSweep(String),
    #[error("partitions: {0}")]
    BadPartitions(String),
    #[error("{field}: {reason}")]
    BadSetting { field: &'static str, reason: String },
    #[error(
        "`config` is {bytes} bytes as JSON, over the limit of {limit}; every step message carries it, so pass large data as an upstream output or a reference (a path or URL) instead"
    )]
    ConfigTooLarge { bytes: usize, limit: usize },
    #[error("the plan expands to {steps} steps, over the limit of {limit}; split it into several plans")]
    TooManySteps { steps: u64, limit: u64 },
}

/// The longest file name and asset name a problem quotes, in bytes.
pub const MAX_QUOTED_NAME_BYTES: usize = 256;
/// The longest description of one problem, in bytes: a problem may quote what it is about
/// (a name, a value), and the plan chose how long that is.
pub const MAX_PROBLEM_BYTES: usize = 1024;
/// The most problems reported for one plan; past it, one more line says how many more.
pub const MAX_PROBLEMS: usize = 100;

/// Every problem's text is built here, each part cut to its limit, so an error list's size
/// does not grow with what the plan holds: at most [`MAX_PROBLEMS`] lines of at most about
/// 1.5 KiB.
impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", cut(&self.file.display().to_string(), MAX_QUOTED_NAME_BYTES))?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        if let Some(asset) = &self.asset {
            write!(f, "asset `{}`: ", cut(asset, MAX_QUOTED_NAME_BYTES))?;
        }
        write!(f, "{}", cut(&self.kind.to_string(), MAX_PROBLEM_BYTES))
    }
}

impl std::error::Error for PlanError {}

/// Every problem found in a plan, in file order (at most [`MAX_PROBLEMS`] of them, and a
/// count of the rest).
#[derive(Debug, Clone, PartialEq)]
pub struct PlanErrors(pub Vec<PlanError>, pub usize);

impl PlanErrors {
    /// The first [`MAX_PROBLEMS`] of `errors`, and how many more there were.
    pub fn new(mut errors: Vec<PlanError>) -> Self {
        let more = errors.len().saturating_sub(MAX_PROBLEMS);
        errors.truncate(MAX_PROBLEMS);
        Self(errors, more)
    }

    pub fn iter(&self) -> impl Iterator<Item = &PlanError> {
        self.0.iter()
    }

    /// One message per problem, and one saying how many more were not listed.
    pub fn messages(&self) -> Vec<String> {
        let mut messages: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        if self.1 > 0 {
            messages.push(self.more());
        }
        messages
    }

    fn more(&self) -> String {
        format!(
            "… and {} more problems (the first {MAX_PROBLEMS} are listed); fix these and check again",
            self.1
        )
    }

    /// How many problems the plan has, listed or not.
    pub fn len(&self) -> usize {
        self.0.len() + self.1
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty() && self.1 == 0
    }
}

impl fmt::Display for PlanErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.len() > 1 {
            writeln!(f, "the plan has {} problems:", self.len())?;
        }
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        if self.1 > 0 {
            write!(f, "\n{}", self.more())?;
        }
        Ok(())
    }
}

impl std::error::Error for PlanErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_file_line_and_asset() {
        let e = PlanError {
            file: "plans/x.yaml".into(),
            line: Some(12),
            asset: Some("var".into()),
            kind: PlanErrorKind::UnknownDep { missing: "pathz".into() },
        };
        assert_eq!(
            e.to_string(),
            "plans/x.yaml:12: asset `var`: needs unknown asset `pathz`; declare it or fix the name"
        );
    }
}
