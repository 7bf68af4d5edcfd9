//! The step message: everything a worker needs to run one attempt of one step, so that a
//! worker never has to call back to the dispatcher or read the database.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{
    DecodeError, SCHEMA_VERSION,
    codec::{decode, encode},
    ids::{OpRef, RunId, StepId},
};

/// One attempt of one step, as published to its op version's queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepMessage {
    /// Schema version; see [`SCHEMA_VERSION`].
    pub v: u32,
    pub run_id: RunId,
    pub step_id: StepId,
    /// 1 for the first attempt; the dispatcher increments it for each retry. A broker
    /// redelivery of the same message keeps the same attempt.
    pub attempt: u32,
    /// The exact op build that must run this step.
    pub op: OpRef,
    /// The asset this step materializes.
    pub asset: String,
    /// The partition, for a partitioned asset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// The sweep point, for an asset with a parameter sweep: parameter name → value.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub point: Map<String, Value>,
    /// The asset's `config` from the plan, as written there.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub config: Value,
    /// The outputs of the upstream steps this step depends on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<StepInput>,
    /// How long the handler may run before the attempt fails as timed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// The output of one upstream step, handed to its downstream steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepInput {
    pub asset: String,
    pub step_id: StepId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub point: Map<String, Value>,
    pub output: Value,
}

impl StepMessage {
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode("step message", bytes)
    }

    /// The parameters the op runs with: the asset's `config` object with the sweep point's
    /// values laid over it (a sweep parameter wins over a config key of the same name).
    /// A non-object config is returned unchanged when there is no sweep point.
    pub fn params(&self) -> Value {
        if self.point.is_empty() {
            return self.config.clone();
        }
        let mut merged = match &self.config {
            Value::Object(map) => map.clone(),
            _ => Map::new(),
        };
        merged.extend(self.point.iter().map(|(k, v)| (k.clone(), v.clone())));
        Value::Object(merged)
    }

    /// A short human label: `asset[partition]{k=v,…}`.
    pub fn label(&self) -> String {
        step_label(&self.asset, self.partition.as_deref(), &self.point)
    }
}

/// The longest [`step_label`], in bytes. Labels are copied into texts built from them
/// (the error of every step skipped below a failed one, log lines, answers), so they are
/// bounded where they are built, whatever the partition keys and sweep values hold.
pub const MAX_LABEL_BYTES: usize = 512;

/// A short human label for a step: `asset`, `asset[partition]`, `asset{vol=0.2,seed=1}`;
/// at most [`MAX_LABEL_BYTES`] (a longer one is cut, saying so: [`crate::text::cut`]).
pub fn step_label(asset: &str, partition: Option<&str>, point: &Map<String, Value>) -> String {
    let label = full_label(asset, partition, point);
    match crate::text::cut(&label, MAX_LABEL_BYTES) {
        std::borrow::Cow::Borrowed(_) => label,
        std::borrow::Cow::Owned(cut) => cut,
    }
}

fn full_label(asset: &str, partition: Option<&str>, point: &Map<String, Value>) -> String {
    let mut label = asset.to_owned();
    if let Some(p) = partition {
        label.push('[');
        label.push_str(p);
        label.push(']');
    }
    if !point.is_empty() {
        label.push('{');
        for (i, (k, v)) in point.iter().enumerate() {
            if i > 0 {
                label.push(',');
            }
            label.push_str(k);
            label.push('=');
            match v {
                Value::String(s) => label.push_str(s),
                other => label.push_str(&other.to_string()),
            }
        }
        label.push('}');
    }
    label
}

impl StepMessage {
    /// A message for the current schema version, without partition, point, inputs or timeout.
    pub fn new(run_id: RunId, step_id: StepId, attempt: u32, op: OpRef, asset: impl Into<String>) -> Self {
        Self {
            v: SCHEMA_VERSION,
            run_id,
            step_id,
            attempt,
            op,
            asset: asset.into(),
            partition: None,
            point: Map::new(),
            config: Value::Null,
            inputs: Vec::new(),
            timeout_ms: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sample() -> StepMessage {
        let mut m =
            StepMessage::new(RunId::new(), StepId(7), 1, "price-paths@1.0.0".parse().unwrap(), "paths");
        m.partition = Some("aave".into());
        m.point = json!({"vol": 0.4, "seed": 3}).as_object().unwrap().clone();
        m.config = json!({"drift": 0.01, "vol": 0.1});
        m
    }

    #[test]
    fn a_label_is_bounded_whatever_its_parts_hold() {
        let long = "é".repeat(10_000);
        let point = json!({"a": long, "b": long}).as_object().unwrap().clone();
        let label = step_label("asset", Some(&long), &point);
        assert!(label.len() <= MAX_LABEL_BYTES, "{} bytes", label.len());
        assert!(label.starts_with("asset[é") && label.contains("(cut from"), "{label}");
        assert_eq!(step_label("a", Some("p"), &Map::new()), "a[p]");
    }

    #[test]
    fn round_trips() {
        let m = sample();
        assert_eq!(StepMessage::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn sweep_point_overrides_config() {
        assert_eq!(sample().params(), json!({"drift": 0.01, "vol": 0.4, "seed": 3}));
    }

    #[test]
    fn label_names_partition_and_point() {
        assert_eq!(sample().label(), "paths[aave]{seed=3,vol=0.4}");
    }

    #[test]
    fn empty_fields_are_left_out_of_the_wire_form() {
        let m = StepMessage::new(RunId::new(), StepId(0), 1, "noop@1.0.0".parse().unwrap(), "a");
        let text = String::from_utf8(m.encode()).unwrap();
        for absent in ["partition", "point", "config", "inputs", "timeout_ms"] {
            assert!(!text.contains(absent), "{absent} in {text}");
        }
    }
}
