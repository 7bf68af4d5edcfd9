//! Concurrency rules: how many steps sharing a key may be in flight at once, across every
//! run and owner. An asset declares them in its plan:
//!
//! ```yaml
//! concurrency: {key: "prices/{partition}", max: 2, strategy: queue}
//! # or several: concurrency: [{key: "gpu", max: 4}, {key: "{owner}/{region}", max: 1}]
//! ```
//!
//! A key is a template: text with placeholders `{partition}`, `{asset}`, `{plan}`,
//! `{owner}`, `{run}` and the name of any sweep parameter (`{region}`). Keys are global:
//! the same rendered key in two plans is one key, which is how a licence or a database is
//! shared; put `{plan}` or `{asset}` in a key to keep it to one plan or asset.
//!
//! What a rule does when its key is full decides the strategy: `queue` (the step waits),
//! `cancel_newest` (the step that would go over is canceled), `cancel_in_progress` (the
//! oldest step in flight is canceled, and the new one goes when it has stopped). The
//! publisher enforces the rules (`service::window`); this module only parses and renders
//! them.

use std::{fmt, sync::Arc};

use serde_json::{Map, Value};

/// The most rules one asset may declare.
pub const MAX_RULES: usize = 8;

/// The largest `max` of a rule: a larger cap is no cap.
pub const MAX_CONCURRENCY: u32 = 100_000;

/// The longest key template, and the longest rendered key (longer are cut, with a digest).
pub const MAX_KEY_BYTES: usize = 256;

/// What a full key does to a step that would go over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Strategy {
    /// The step waits for a slot.
    #[default]
    Queue,
    /// The oldest step in flight of the key is canceled; the new one goes once it stopped.
    CancelInProgress,
    /// The step that would go over is canceled.
    CancelNewest,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Queue => "queue",
            Strategy::CancelInProgress => "cancel_in_progress",
            Strategy::CancelNewest => "cancel_newest",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Strategy::Queue, Strategy::CancelInProgress, Strategy::CancelNewest]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// One rule of an asset.
#[derive(Debug, Clone, PartialEq)]
pub struct ConcurrencyRule {
    pub key: KeyTemplate,
    pub max: u32,
    pub strategy: Strategy,
}

/// A key template, parsed: literal text and placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Partition,
    Asset,
    Plan,
    Owner,
    Run,
    Sweep(String),
}

/// One cap that applies to a step: its rendered key, the cap, and what a full key does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepKey {
    pub key: Arc<str>,
    pub max: u32,
    pub strategy: Strategy,
}

/// What a step's key is rendered from.
#[derive(Debug, Clone, Copy)]
pub struct KeyContext<'a> {
    pub plan: &'a str,
    pub asset: &'a str,
    pub owner: &'a str,
    pub run: &'a str,
    pub partition: Option<&'a str>,
    pub point: &'a Map<String, Value>,
}

impl KeyTemplate {
    /// Parses `text` for an asset with `partitioned` keys and the sweep parameters `sweep`.
    pub fn parse(text: &str, partitioned: bool, sweep: &[&str]) -> Result<Self, String> {
        if text.is_empty() {
            return Err("the key is empty; write one such as \"{partition}\" or \"gpu-licence\"".into());
        }
        if text.len() > MAX_KEY_BYTES {
            return Err(format!("the key is {} bytes, over the limit of {MAX_KEY_BYTES}", text.len()));
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or_else(|| format!("`{text}` opens a `{{` it never closes"))?;
            let name = &after[..close];
            let part = match name {
                "partition" if partitioned => Part::Partition,
                "partition" => {
                    return Err(format!("`{text}` names {{partition}}, but the asset has no partitions"));
                }
                "asset" => Part::Asset,
                "plan" => Part::Plan,
                "owner" => Part::Owner,
                "run" => Part::Run,
                _ if sweep.contains(&name) => Part::Sweep(name.to_owned()),
                _ => {
                    let mut known = vec!["partition", "asset", "plan", "owner", "run"];
                    known.extend_from_slice(sweep);
                    return Err(format!(
                        "`{text}` names {{{name}}}, which is neither a field nor a sweep parameter of the asset; use one of {}",
                        known.iter().map(|k| format!("{{{k}}}")).collect::<Vec<_>>().join(", ")
                    ));
                }
            };
            parts.push(part);
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("`{text}` closes a `}}` it never opened"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { text: text.to_owned(), parts })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The key of one step, at most [`MAX_KEY_BYTES`]: a longer one (long partition keys or
    /// sweep values) is cut and ends in a digest of the whole, so distinct keys stay distinct.
    pub fn render(&self, cx: &KeyContext<'_>) -> String {
        let mut key = String::with_capacity(self.text.len() + 16);
        for part in &self.parts {
            match part {
                Part::Text(text) => key.push_str(text),
                Part::Partition => key.push_str(cx.partition.unwrap_or_default()),
                Part::Asset => key.push_str(cx.asset),
                Part::Plan => key.push_str(cx.plan),
                Part::Owner => key.push_str(cx.owner),
                Part::Run => key.push_str(cx.run),
                Part::Sweep(name) => match cx.point.get(name) {
                    Some(Value::String(text)) => key.push_str(text),
                    Some(value) => key.push_str(&value.to_string()),
                    None => {}
                },
            }
        }
        bounded(key)
    }
}

/// `key` if within [`MAX_KEY_BYTES`], else its start and `~` and 16 hex digits of its SHA-256.
fn bounded(key: String) -> String {
    if key.len() <= MAX_KEY_BYTES {
        return key;
    }
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key.as_bytes());
    let digest: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let mut end = MAX_KEY_BYTES - 1 - digest.len();
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}~{digest}", &key[..end])
}

/// A value of the plan quoted in an error, cut short.
fn quoted(text: &str) -> std::borrow::Cow<'_, str> {
    opflow_protocol::text::cut(text, 64)
}

impl fmt::Display for KeyTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Reads an asset's `concurrency` (one rule or a list of them), as the plan or the store
/// holds it. `partitioned` and `sweep` are what its key templates may name.
pub fn rules_of(value: &Value, partitioned: bool, sweep: &[&str]) -> Result<Vec<ConcurrencyRule>, String> {
    let listed: Vec<&Value> = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Array(rules) => rules.iter().collect(),
        Value::Object(_) => vec![value],
        _ => return Err("write a rule `{key: \"{partition}\", max: 2}` or a list of them".into()),
    };
    if listed.len() > MAX_RULES {
        return Err(format!("{} rules, over the limit of {MAX_RULES}", listed.len()));
    }
    listed
        .into_iter()
        .enumerate()
        .map(|(i, rule)| {
            rule_of(rule, partitioned, sweep)
                .map_err(|e| if i == 0 && !value.is_array() { e } else { format!("rule {}: {e}", i + 1) })
        })
        .collect()
}

fn rule_of(value: &Value, partitioned: bool, sweep: &[&str]) -> Result<ConcurrencyRule, String> {
    let Value::Object(fields) = value else {
        return Err("a rule is a mapping `{key: \"{partition}\", max: 2, strategy: queue}`".into());
    };
    if let Some(unknown) = fields.keys().find(|k| !["key", "max", "strategy"].contains(&k.as_str())) {
        return Err(format!("unknown field `{}`; a rule has `key`, `max` and `strategy`", quoted(unknown)));
    }
    let key = match fields.get("key") {
        Some(Value::String(text)) => KeyTemplate::parse(text, partitioned, sweep)?,
        Some(_) => return Err("`key` is text such as \"{partition}\"".into()),
        None => return Err("`key` is missing; write one such as \"{partition}\"".into()),
    };
    let max = match fields.get("max") {
        Some(max) => {
            max.as_u64().filter(|m| (1..=u64::from(MAX_CONCURRENCY)).contains(m)).ok_or_else(|| {
                format!(
                    "`max` is {}; use a whole number from 1 to {MAX_CONCURRENCY}",
                    quoted(&max.to_string())
                )
            })? as u32
        }
        None => return Err("`max` is missing: how many steps of the key may be in flight at once".into()),
    };
    let strategy = match fields.get("strategy") {
        None => Strategy::Queue,
        Some(Value::String(text)) => Strategy::parse(text).ok_or_else(|| {
            format!(
                "`strategy` is `{}`; use queue (the default), cancel_in_progress or cancel_newest",
                quoted(text)
            )
        })?,
        Some(other) => {
            return Err(format!(
                "`strategy` is {}; use queue, cancel_in_progress or cancel_newest",
                quoted(&other.to_string())
            ));
        }
    };
    Ok(ConcurrencyRule { key, max, strategy })
}

/// Rules as the store keeps them, readable by [`rules_of`].
pub fn to_value(rules: &[ConcurrencyRule]) -> Value {
    Value::Array(
        rules
            .iter()
            .map(
                |r| serde_json::json!({"key": r.key.as_str(), "max": r.max, "strategy": r.strategy.as_str()}),
            )
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn render(template: &str, partition: Option<&str>, point: Value) -> String {
        let point = point.as_object().cloned().unwrap_or_default();
        let key = KeyTemplate::parse(template, partition.is_some(), &["region", "vol"]).unwrap();
        key.render(&KeyContext { plan: "p", asset: "a", owner: "risk", run: "r1", partition, point: &point })
    }

    #[test]
    fn keys_render_fields_and_sweep_values() {
        assert_eq!(render("{partition}", Some("2026-01-03"), json!({})), "2026-01-03");
        assert_eq!(render("{plan}/{asset}:{owner}@{run}", None, json!({})), "p/a:risk@r1");
        assert_eq!(render("gpu-{region}-{vol}", None, json!({"region": "eu", "vol": 0.5})), "gpu-eu-0.5");
        assert_eq!(render("licence", None, json!({})), "licence");
    }

    #[test]
    fn a_long_key_is_cut_to_the_limit_and_stays_distinct() {
        let long = |c: &str| {
            render("{partition}/{region}", Some(&"p".repeat(200)), json!({"region": c.repeat(900)}))
        };
        let (a, b) = (long("a"), long("b"));
        assert!(a.len() <= MAX_KEY_BYTES && b.len() <= MAX_KEY_BYTES, "{} {}", a.len(), b.len());
        assert_ne!(a, b, "the digest tells keys apart that the cut would merge");
        assert_eq!(a, long("a"), "the same step always gets the same key");
    }

    #[test]
    fn errors_quote_plan_values_cut_short() {
        let huge = "x".repeat(10_000);
        for bad in [
            json!({"key": "k", "max": huge}),
            json!({"key": "k", "max": 1, "strategy": huge}),
            json!({"key": "k", "max": 1, huge.clone(): 1}),
        ] {
            let error = rules_of(&bad, false, &[]).unwrap_err();
            assert!(error.len() < 300, "{} bytes", error.len());
        }
    }

    #[test]
    fn bad_templates_say_what_to_write() {
        let bad = |t: &str, partitioned| KeyTemplate::parse(t, partitioned, &["region"]).unwrap_err();
        assert!(bad("{partition}", false).contains("no partitions"));
        assert!(bad("{region", true).contains("never closes"));
        assert!(bad("a}", true).contains("never opened"));
        assert!(bad("{colour}", true).contains("{region}"));
        assert!(bad("", true).contains("empty"));
    }

    #[test]
    fn one_rule_or_a_list_and_every_field_checked() {
        let rules = rules_of(&json!({"key": "{partition}", "max": 2}), true, &[]).unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!((rules[0].max, rules[0].strategy), (2, Strategy::Queue));
        let rules = rules_of(
            &json!([{"key": "gpu", "max": 4, "strategy": "cancel_newest"},
                    {"key": "{run}", "max": 1, "strategy": "cancel_in_progress"}]),
            false,
            &[],
        )
        .unwrap();
        assert_eq!(rules[1].strategy, Strategy::CancelInProgress);
        assert_eq!(rules_of(&to_value(&rules), false, &[]).unwrap(), rules);
        for (bad, says) in [
            (json!({"key": "k"}), "`max` is missing"),
            (json!({"max": 1}), "`key` is missing"),
            (json!({"key": "k", "max": 0}), "from 1 to"),
            (json!({"key": "k", "max": 1, "strategy": "drop"}), "cancel_newest"),
            (json!({"key": "k", "max": 1, "limit": 2}), "unknown field `limit`"),
            (json!([{"key": "k", "max": 1}, 3]), "rule 2:"),
            (json!("k"), "a list of them"),
        ] {
            let error = rules_of(&bad, false, &[]).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }
}
