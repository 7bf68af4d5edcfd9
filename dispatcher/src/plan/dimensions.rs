//! An asset's dimensions: its partitions (a list of keys, or a daily range) and the values
//! of its sweep parameters (a list, or a numeric range kept as bounds), each checked and
//! counted without building what it counts, and the NUL characters no text may hold.

use chrono::NaiveDate;
use serde_json::Value;

use super::compiled::{MAX_STEPS, Partitions, SweepValues};

/// The longest daily partition range: a century.
pub const MAX_DAYS: i64 = 36_600;
/// The longest partition key, in bytes: every step of the partition carries it, and its
/// label and the texts built from it (a skipped step's reason) copy it.
pub const MAX_PARTITION_KEY_BYTES: usize = 256;
/// The most parameters one sweep may have.
pub const MAX_SWEEP_PARAMS: usize = 16;
/// The longest sweep parameter name, in bytes.
pub const MAX_SWEEP_NAME_BYTES: usize = 64;
/// The longest sweep value (a string, or a number as written), in bytes: every step of the
/// point carries it in its message, its label and the texts built from them.
pub const MAX_SWEEP_VALUE_BYTES: usize = 1024;

/// What NUL characters in a plan get as an error.
pub(super) const NUL_REASON: &str =
    "holds a NUL character (`\\0`), which cannot be stored; remove it or encode the data (e.g. base64)";

/// Whether any string (or key) in `value` holds a NUL character.
pub(super) fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// The partition keys, built once the plan's step count is known to be within the limit.
pub(super) fn partition_keys(partitions: &Partitions) -> Vec<String> {
    match partitions {
        Partitions::None => Vec::new(),
        Partitions::Static(keys) => keys.clone(),
        Partitions::Daily { start, end } => {
            let days = ((*end - *start).num_days() + 1).max(0) as usize;
            start.iter_days().take(days).map(|d| d.format("%Y-%m-%d").to_string()).collect()
        }
    }
}

/// Checks a `partitions` value; returns it with its number of keys (without building a
/// daily range's keys).
pub(super) fn check_partitions(value: &Value) -> Result<(Partitions, u64), String> {
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(
                    "the list is empty; list at least one partition key or remove `partitions`".into()
                );
            }
            let mut keys = Vec::with_capacity(items.len());
            let mut seen = std::collections::HashSet::new();
            for item in items {
                let key = match item {
                    Value::String(s) if s.contains('\0') => return Err(format!("a key {NUL_REASON}")),
                    Value::String(s) if s.len() > MAX_PARTITION_KEY_BYTES => {
                        return Err(format!(
                            "a key is {} bytes, over the limit of {MAX_PARTITION_KEY_BYTES}; use short keys and \
                             put what they stand for in the op's config or an upstream output",
                            s.len()
                        ));
                    }
                    Value::String(s) if !s.is_empty() => s.clone(),
                    Value::Number(n) => n.to_string(),
                    other => {
                        return Err(format!(
                            "`{other}` is not a partition key; use non-empty strings or numbers"
                        ));
                    }
                };
                if !seen.insert(key.clone()) {
                    return Err(format!("key `{key}` is listed twice; list each partition once"));
                }
                keys.push(key);
            }
            let count = keys.len() as u64;
            Ok((Partitions::Static(keys), count))
        }
        Value::Object(map) => {
            let daily = match (map.len(), map.get("daily")) {
                (1, Some(Value::Object(daily))) => daily,
                _ => {
                    return Err(
                        "expected a list of keys or `{daily: {start: YYYY-MM-DD, end: YYYY-MM-DD}}`".into()
                    );
                }
            };
            if let Some(unknown) = daily.keys().find(|k| *k != "start" && *k != "end") {
                return Err(format!("daily: unknown key `{unknown}`; use `start` and `end`"));
            }
            let date = |key: &str| -> Result<NaiveDate, String> {
                let text = daily
                    .get(key)
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("daily: `{key}` is missing"))?;
                NaiveDate::parse_from_str(text, "%Y-%m-%d")
                    .map_err(|e| format!("daily: {key} `{text}` is not a date like 2026-01-31: {e}"))
            };
            let (start, end) = (date("start")?, date("end")?);
            if start > end {
                return Err(format!("daily: start {start} is after end {end}"));
            }
            let days = (end - start).num_days() + 1;
            if days > MAX_DAYS {
                return Err(format!("daily: {days} days, over the limit of {MAX_DAYS}"));
            }
            Ok((Partitions::Daily { start, end }, days as u64))
        }
        _ => Err("expected a list of keys or `{daily: {start: YYYY-MM-DD, end: YYYY-MM-DD}}`".into()),
    }
}

/// The bytes of a scalar sweep value as a step carries it.
fn scalar_bytes(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len(),
        other => other.to_string().len(),
    }
}

pub(super) fn sweep_values(name: &str, value: &Value) -> Result<SweepValues, String> {
    // The name first, whatever the values' shape: it becomes a key of every step's point.
    if name.contains('\0') {
        return Err(format!("a parameter name {NUL_REASON}"));
    }
    if name.len() > MAX_SWEEP_NAME_BYTES {
        return Err(format!(
            "a parameter name is {} bytes, over the limit of {MAX_SWEEP_NAME_BYTES}",
            name.len()
        ));
    }
    match value {
        Value::Array(items) if items.is_empty() => {
            Err(format!("`{name}` has no values; give at least one or remove the parameter"))
        }
        Value::Array(items) => {
            if let Some(bad) =
                items.iter().find(|v| !matches!(v, Value::Number(_) | Value::String(_) | Value::Bool(_)))
            {
                return Err(format!(
                    "`{name}`: `{bad}` is not a scalar; sweep values are numbers, strings or booleans"
                ));
            }
            if items.iter().any(holds_nul) {
                return Err(format!("`{name}`: a value {NUL_REASON}"));
            }
            if let Some(long) = items.iter().map(scalar_bytes).find(|&bytes| bytes > MAX_SWEEP_VALUE_BYTES) {
                return Err(format!(
                    "`{name}`: a value is {long} bytes, over the limit of {MAX_SWEEP_VALUE_BYTES}; sweep over \
                     short values (names, numbers) and pass large data as config or an upstream output"
                ));
            }
            Ok(SweepValues::List(items.clone()))
        }
        Value::Object(range) => {
            if let Some(unknown) = range.keys().find(|k| !["from", "to", "step"].contains(&k.as_str())) {
                return Err(format!("`{name}`: unknown key `{unknown}`; a range is {{from, to, step}}"));
            }
            let int = |key: &str, default: Option<i64>| -> Result<i64, String> {
                match range.get(key) {
                    None => default.ok_or_else(|| format!("`{name}`: the range needs `{key}`")),
                    Some(v) => {
                        v.as_i64().ok_or_else(|| format!("`{name}`: `{key}` must be an integer, got `{v}`"))
                    }
                }
            };
            let (from, to, step) = (int("from", None)?, int("to", None)?, int("step", Some(1))?);
            if step <= 0 {
                return Err(format!("`{name}`: step must be greater than 0, got {step}"));
            }
            if from > to {
                return Err(format!("`{name}`: the range is empty (from {from} > to {to})"));
            }
            let count = ((to as i128 - from as i128) / step as i128 + 1) as u128;
            if count > u128::from(MAX_STEPS) {
                return Err(format!("`{name}`: {count} values, over the step limit of {MAX_STEPS}"));
            }
            // Kept as bounds: see `SweepValues`.
            Ok(SweepValues::Range { from, step, count: count as u32 })
        }
        other => Err(format!("`{name}`: expected a list of values or {{from, to, step}}, got `{other}`")),
    }
}
