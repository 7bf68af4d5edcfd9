//! YAML → raw plan: the file's shape, with line numbers, before any meaning is checked.
//! Shape errors (unknown keys, missing keys, wrong types, duplicate keys, bad syntax) come
//! from the YAML deserializer, which reports where they are.

use std::{fmt, marker::PhantomData, path::Path};

use serde::{
    Deserialize, Deserializer,
    de::{MapAccess, Visitor},
};
use serde_json::Value;
use serde_saphyr::Spanned;

use super::error::{PlanError, PlanErrorKind, PlanErrors};

/// The largest plan file accepted, before any parsing.
pub const MAX_PLAN_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlan {
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// How much of its owner's share a run of this plan asks for: 1 to 10.
    #[serde(default)]
    pub priority: Option<Spanned<i64>>,
    pub assets: Vec<RawAsset>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAsset {
    pub name: Spanned<String>,
    pub op: Spanned<String>,
    #[serde(default)]
    pub deps: Vec<Spanned<String>>,
    /// A list of keys, or `{daily: {start, end}}`; interpreted in `validate`.
    #[serde(default)]
    pub partitions: Option<Spanned<Value>>,
    /// Parameter → list of values or `{from, to, step}`, in file order.
    #[serde(default)]
    pub sweep: Option<Spanned<Ordered<Spanned<Value>>>>,
    #[serde(default)]
    pub config: Option<Spanned<Value>>,
    #[serde(default)]
    pub retry: Option<Spanned<RawRetry>>,
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
    /// One concurrency rule or a list; interpreted in `validate` (`concurrency`).
    #[serde(default)]
    pub concurrency: Option<Spanned<Value>>,
    /// `auto` (the default) or `never`: whether a step may be satisfied from an earlier
    /// materialization with the same memo key.
    #[serde(default)]
    pub reuse: Option<Spanned<String>>,
    /// The checks the op reports (`check_result`) that the plan declares: `{name,
    /// blocking}` each.
    #[serde(default)]
    pub checks: Vec<Spanned<RawCheck>>,
    /// `{max_age, warn_after}` or `{deadline, tz}`; interpreted in `validate` (`freshness`).
    #[serde(default)]
    pub freshness: Option<Spanned<RawFreshness>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFreshness {
    #[serde(default)]
    pub max_age: Option<String>,
    #[serde(default)]
    pub warn_after: Option<String>,
    #[serde(default)]
    pub deadline: Option<String>,
    #[serde(default)]
    pub tz: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    pub name: String,
    #[serde(default)]
    pub blocking: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    #[serde(default)]
    pub max: Option<u32>,
    #[serde(default)]
    pub backoff: Option<String>,
}

/// A YAML mapping kept in file order (serde_json's map sorts its keys).
#[derive(Debug)]
pub struct Ordered<V>(pub Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Ordered<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OrderedVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for OrderedVisitor<V> {
            type Value = Ordered<V>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of parameter names to values")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some((key, value)) = map.next_entry::<String, V>()? {
                    entries.push((key, value));
                }
                Ok(Ordered(entries))
            }
        }
        deserializer.deserialize_map(OrderedVisitor(PhantomData))
    }
}

/// Parses the plan text. A YAML or shape error is the only error reported: nothing else
/// can be checked without the plan's shape.
pub fn parse(source: &str, file: &Path) -> Result<RawPlan, PlanErrors> {
    if source.len() > MAX_PLAN_BYTES {
        return Err(PlanErrors::new(vec![PlanError {
            file: file.to_path_buf(),
            line: None,
            asset: None,
            kind: PlanErrorKind::Shape(format!(
                "the plan file is {} bytes, over the limit of {MAX_PLAN_BYTES}; use partitions and sweeps instead of listing steps",
                source.len()
            )),
        }]));
    }
    if let Some(at) = source.find('\0') {
        let line = source[..at].matches('\n').count() + 1;
        return Err(PlanErrors::new(vec![PlanError {
            file: file.to_path_buf(),
            line: Some(line),
            asset: enclosing_asset(source, line),
            kind: PlanErrorKind::Shape(
                "the plan holds a NUL character, which a plan may not; remove it (is this a binary file?)"
                    .into(),
            ),
        }]));
    }
    // YAML 1.2 booleans only: a partition or sweep value `no`, `y` or `off` is a string,
    // not YAML 1.1's `false` (the "Norway problem").
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    serde_saphyr::from_str_with_options::<RawPlan>(source, options).map_err(|error| {
        let line = error.location().map(|l| l.line() as usize).filter(|&l| l > 0);
        let message = plain_message(&error);
        let kind = if let Some(breach) = budget_breach(&error) {
            PlanErrorKind::Shape(format!(
                "the YAML is too large or too deep once its anchors and aliases are expanded ({breach:?}); \
                 write the values out, or use partitions and sweeps instead of repeating aliases"
            ))
        } else if is_syntax_error(&message) {
            PlanErrorKind::Syntax(message)
        } else {
            PlanErrorKind::Shape(message)
        };
        let asset = line.and_then(|line| enclosing_asset(source, line));
        PlanErrors::new(vec![PlanError { file: file.to_path_buf(), line, asset, kind }])
    })
}

/// The YAML parser's resource limit that `error` reports hitting, if that is what it is:
/// an alias bomb ("billion laughs") or absurd nesting, refused before it eats the memory.
fn budget_breach(mut error: &serde_saphyr::Error) -> Option<&serde_saphyr::budget::BudgetBreach> {
    loop {
        match error {
            serde_saphyr::Error::Budget { breach, .. } => return Some(breach),
            serde_saphyr::Error::AliasError { error: inner, .. }
            | serde_saphyr::Error::WithSnippet { error: inner, .. } => error = inner,
            _ => return None,
        }
    }
}

/// The deserializer's message without its snippet or its own `line N column M:` prefix
/// (the location is reported by `PlanError`).
fn plain_message(error: &serde_saphyr::Error) -> String {
    let text = error.without_snippet().to_string();
    let text = text.lines().next().unwrap_or_default().trim();
    let text = text.strip_prefix("error: ").unwrap_or(text);
    let text = match text.strip_prefix("line ").and_then(|rest| rest.split_once(": ")) {
        Some((position, message)) if position.contains("column") => message,
        _ => text,
    };
    // The location is reported separately; drop a trailing copy of it.
    match text.rfind(" at line ") {
        Some(at) if text[at..].contains("column") => text[..at].to_owned(),
        _ => text.to_owned(),
    }
}

/// The asset whose `- name:` entry comes last at or before `line`, if any: a best guess at
/// which asset a shape error is in, since the deserializer cannot say.
fn enclosing_asset(source: &str, line: usize) -> Option<String> {
    source
        .lines()
        .take(line)
        .filter_map(|l| l.trim_start().strip_prefix('-')?.trim_start().strip_prefix("name:"))
        .map(|name| name.trim().trim_matches(['"', '\'']).to_owned())
        .filter(|name| !name.is_empty())
        .last()
}

fn is_syntax_error(message: &str) -> bool {
    // serde's data-model errors (unknown field, missing field, invalid type, duplicate key)
    // are shape errors; the rest come from the YAML scanner or parser.
    !["unknown field", "missing field", "invalid type", "duplicate", "invalid value", "expected"]
        .iter()
        .any(|m| message.contains(m))
}
