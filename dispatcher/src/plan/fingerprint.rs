//! Fingerprints of what computes a cell and of what it produced, for the asset catalog:
//! SHA-256 of canonical JSON, so that the same config or output written with its keys in
//! another order, or re-encoded, has the same fingerprint.
//!
//! JSON is canonical here because `serde_json`'s map keeps its keys sorted (the crate's
//! `preserve_order` feature is off; a test below fails if anything turns it on) and its
//! numbers print the shortest form that reads back the same.

use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

/// A SHA-256 fingerprint.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a JSON value's canonical text.
    pub fn of_json(value: &Value) -> Self {
        let mut hasher = Sha256::new();
        // Writing into a hasher cannot fail, and a `Value` always serializes.
        serde_json::to_writer(HashWriter(&mut hasher), value).expect("a JSON value serializes");
        Self(hasher.finalize().into())
    }

    /// What computes an asset's cells: its op, the op's version and the asset's config.
    /// A cell materialized under another definition is stale.
    pub fn of_definition(op_name: &str, op_version: &str, config: &Value) -> Self {
        Self::of_json(&serde_json::json!({ "op": op_name, "version": op_version, "config": config }))
    }

    /// A step's effective config: the asset's config with the step's partition and point.
    pub fn of_effective_config(config: &Value, partition: Option<&str>, point: &Map<String, Value>) -> Self {
        Self::of_json(&serde_json::json!({ "config": config, "partition": partition, "point": point }))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The first `n` bytes in hex, for people.
    pub fn short(&self, n: usize) -> String {
        self.0[..n.min(32)].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({})", self.short(8))
    }
}

/// A sweep point as the catalog keys a cell by it: its canonical JSON, '' without a sweep.
pub fn point_key(point: &Map<String, Value>) -> String {
    if point.is_empty() { String::new() } else { Value::Object(point.clone()).to_string() }
}

struct HashWriter<'a>(&'a mut Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn key_order_and_spacing_do_not_change_a_fingerprint() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2.5], "x": "s"}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":"s","y":[1,2.5]},"b":1}"#).unwrap();
        assert_eq!(Fingerprint::of_json(&a), Fingerprint::of_json(&b));
        assert_ne!(
            Fingerprint::of_json(&a),
            Fingerprint::of_json(&json!({"b": 2, "a": {"x": "s", "y": [1, 2.5]}}))
        );
    }

    #[test]
    fn the_same_number_written_two_ways_has_one_fingerprint() {
        let a: Value = serde_json::from_str(r#"{"vol": 0.20}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"vol": 2e-1}"#).unwrap();
        assert_eq!(Fingerprint::of_json(&a), Fingerprint::of_json(&b));
    }

    #[test]
    fn definition_covers_op_version_and_config() {
        let base = Fingerprint::of_definition("price", "1.0.0", &json!({"n": 1}));
        assert_ne!(base, Fingerprint::of_definition("price", "1.0.1", &json!({"n": 1})));
        assert_ne!(base, Fingerprint::of_definition("price", "1.0.0", &json!({"n": 2})));
        assert_ne!(base, Fingerprint::of_definition("report", "1.0.0", &json!({"n": 1})));
    }

    #[test]
    fn effective_config_covers_partition_and_point() {
        let point: Map<String, Value> = [("vol".to_owned(), json!(0.2))].into_iter().collect();
        let base = Fingerprint::of_effective_config(&json!({}), Some("2026-01-01"), &point);
        assert_ne!(base, Fingerprint::of_effective_config(&json!({}), Some("2026-01-02"), &point));
        assert_ne!(base, Fingerprint::of_effective_config(&json!({}), Some("2026-01-01"), &Map::new()));
        assert_ne!(base, Fingerprint::of_effective_config(&json!({}), None, &point));
    }

    #[test]
    fn point_keys_are_canonical() {
        let point: Map<String, Value> =
            [("b".to_owned(), json!(2)), ("a".to_owned(), json!("x"))].into_iter().collect();
        assert_eq!(point_key(&point), r#"{"a":"x","b":2}"#);
        assert_eq!(point_key(&Map::new()), "");
    }
}
