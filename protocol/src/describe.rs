//! What an op binary prints for `--describe`: its identity and the configuration it takes.
//! `opflow ops add` reads it to register the op version, so the registry learns about an
//! op from the op itself.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::OpRef;

/// What an op binary prints for `--describe`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OpDescription {
    pub op: OpRef,
    /// One line saying what the op computes.
    pub summary: String,
    /// The keys the op reads from its parameters (plan `config` plus sweep point).
    #[serde(default)]
    pub config: Vec<ConfigField>,
    /// The protocol schema version the op speaks.
    pub schema_version: u32,
    /// The longest a step of this op is expected to run, in milliseconds. RabbitMQ closes
    /// the channel of a consumer that holds a message longer than its `consumer_timeout`,
    /// so `opflow ops add` warns when this is longer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longest_step_ms: Option<u64>,
    /// A semver requirement (`^1.2`) naming the earlier versions of this op whose outputs
    /// this version's equal: a step of this version reuses their materializations as its
    /// own (docs/catalog.md). Absent: only its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuse_from: Option<String>,
}

/// One parameter an op reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConfigField {
    pub name: String,
    /// A JSON type name: `number`, `integer`, `string`, `boolean`, `object`, `array`.
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    /// The value used when the key is absent; `null` means the key is required.
    #[serde(default)]
    pub default: Value,
}

impl OpDescription {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("descriptions serialize infallibly")
    }

    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}
