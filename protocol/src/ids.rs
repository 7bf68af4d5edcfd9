//! Identifiers: newtypes so a run id can never be passed where a step id is expected, and
//! the `name@version` reference that pins a step to exactly one op build.

use std::{fmt, str::FromStr};

use semver::Version;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// One execution of a plan. Time-ordered (UUIDv7), so newer runs sort last.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(transparent)]
pub struct RunId(Uuid);

impl RunId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for RunId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for RunId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// A step's position in its run's topological order, starting at 0.
///
/// Unique within a run; `(RunId, StepId)` names a step globally. An index rather than a
/// UUID keeps a 200,000-step run's rows and messages small and lets the store address the
/// steps of an asset as a contiguous range.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(transparent)]
pub struct StepId(pub u32);

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Unique per event, so the dispatcher can drop a duplicate delivery of the same event.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The longest op name; queue names built from it stay far below AMQP's 255-byte limit.
pub const MAX_OP_NAME_LEN: usize = 64;

/// An op's name: lowercase ASCII letters, digits and `-`, starting with a letter.
///
/// The name becomes part of a queue name and a Kubernetes object name, which is why the
/// alphabet is this narrow.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpNameError {
    #[error("op name is empty")]
    Empty,
    #[error("op name `{0}` is longer than {MAX_OP_NAME_LEN} characters")]
    TooLong(String),
    #[error("op name `{0}` may only hold lowercase letters, digits and `-`, and must start with a letter")]
    BadCharacters(String),
}

impl OpName {
    pub fn new(name: impl Into<String>) -> Result<Self, OpNameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(OpNameError::Empty);
        }
        if name.len() > MAX_OP_NAME_LEN {
            return Err(OpNameError::TooLong(name));
        }
        let mut chars = name.chars();
        let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !starts_with_letter || !rest_ok || name.ends_with('-') {
            return Err(OpNameError::BadCharacters(name));
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OpName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for OpName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for OpName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        OpName::new(s).map_err(serde::de::Error::custom)
    }
}

/// An op name as a JSON Schema: the alphabet [`OpName::new`] accepts.
pub const OP_NAME_PATTERN: &str = "^[a-z]([a-z0-9-]{0,62}[a-z0-9])?$";

/// `name@version` as a JSON Schema: an op name, `@`, a semver version.
pub const OP_REF_PATTERN: &str = "^[a-z]([a-z0-9-]{0,62}[a-z0-9])?@(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?(\\+[0-9A-Za-z.-]+)?$";

impl schemars::JsonSchema for OpName {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "OpName".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": OP_NAME_PATTERN,
            "maxLength": MAX_OP_NAME_LEN,
            "description": "An op's name: lowercase ASCII letters, digits and `-`, starting with a letter and not ending with `-`.",
        })
    }
}

impl schemars::JsonSchema for OpRef {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "OpRef".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": OP_REF_PATTERN,
            "description": "Exactly one build of an op: `name@version`, e.g. `price-paths@1.4.2`.",
        })
    }
}

/// Exactly one build of an op: `name@version`, e.g. `price-paths@1.4.2`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpRef {
    pub name: OpName,
    pub version: Version,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpRefError {
    #[error("`{0}` is not of the form name@version (e.g. noop@1.0.0)")]
    MissingAt(String),
    #[error(transparent)]
    Name(#[from] OpNameError),
    #[error("`{text}`: `{version}` is not a semver version: {reason}")]
    Version { text: String, version: String, reason: String },
}

impl OpRef {
    pub fn new(name: OpName, version: Version) -> Self {
        Self { name, version }
    }
}

impl fmt::Display for OpRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

impl FromStr for OpRef {
    type Err = OpRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, version) = s.split_once('@').ok_or_else(|| OpRefError::MissingAt(s.to_owned()))?;
        let name = OpName::new(name)?;
        let version = Version::parse(version).map_err(|e| OpRefError::Version {
            text: s.to_owned(),
            version: version.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Self { name, version })
    }
}

impl Serialize for OpRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for OpRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_names_are_narrow() {
        assert!(OpName::new("price-paths").is_ok());
        assert!(OpName::new("noop2").is_ok());
        for bad in ["", "Price", "9lives", "has space", "trailing-", "under_score", "dot.ted"] {
            assert!(OpName::new(bad).is_err(), "{bad} should be rejected");
        }
        assert!(matches!(OpName::new("a".repeat(65)), Err(OpNameError::TooLong(_))));
    }

    #[test]
    fn op_ref_round_trips_through_text_and_json() {
        let op: OpRef = "price-paths@1.4.2".parse().unwrap();
        assert_eq!(op.name.as_str(), "price-paths");
        assert_eq!(op.version, Version::new(1, 4, 2));
        assert_eq!(op.to_string(), "price-paths@1.4.2");
        let json = serde_json::to_string(&op).unwrap();
        assert_eq!(json, r#""price-paths@1.4.2""#);
        assert_eq!(serde_json::from_str::<OpRef>(&json).unwrap(), op);
    }

    #[test]
    fn op_ref_errors_say_what_is_wrong() {
        let err = "noop".parse::<OpRef>().unwrap_err();
        assert!(err.to_string().contains("name@version"), "{err}");
        let err = "noop@1.x".parse::<OpRef>().unwrap_err();
        assert!(err.to_string().contains("not a semver version"), "{err}");
    }
}
