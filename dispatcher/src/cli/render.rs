//! Human-readable output for the CLI: tables, run summaries, step outputs, and progress
//! while waiting. `--json` output bypasses all of this.

use std::{io::IsTerminal, path::Path, time::Duration};

use serde_json::Value;

use super::exit::InvalidInput;
use opflow_api_model::RunSummary;

use crate::{plan::MAX_PLAN_BYTES, store::runs::RunProgressRow};

/// Reads a plan file; a missing or unreadable file is invalid input, and so is one over
/// [`MAX_PLAN_BYTES`], found without reading more than one byte past the limit (a plan
/// path may name a device or a file of any size).
pub fn read_plan(file: &Path) -> Result<String, InvalidInput> {
    use std::io::Read;
    let unreadable =
        |e: std::io::Error| InvalidInput(format!("cannot read plan file {}: {e}", file.display()));
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .map_err(unreadable)?
        .take(MAX_PLAN_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() > MAX_PLAN_BYTES {
        return Err(InvalidInput(format!(
            "plan file {} is over the limit of {MAX_PLAN_BYTES} bytes; use partitions and sweeps instead of listing steps",
            file.display()
        )));
    }
    String::from_utf8(bytes)
        .map_err(|_| InvalidInput(format!("plan file {} is not UTF-8 text", file.display())))
}

/// Prints rows under a header, columns padded to their widest cell.
pub fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:w$}")).collect();
        say!("  {}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// A run's state, for people.
pub fn summary(s: &RunSummary) {
    let took = match (s.finished_at, s.created_at) {
        (Some(end), start) => format!(" in {:.2}s", (end - start).num_milliseconds() as f64 / 1000.0),
        _ => String::new(),
    };
    say!("run {}: {}{took}", s.run_id, s.status.as_str());
    let key = s.key.as_deref().map(|k| format!(", key {k}")).unwrap_or_default();
    say!("  plan   {} ({}){key}", s.plan, s.plan_file);
    say!("  owner  {}, priority {}", s.owner, s.priority);
    let c = &s.steps;
    say!(
        "  steps  {} total: {} succeeded, {} failed, {} skipped, {} canceled, {} running, {} queued, {} waiting, {} retrying",
        c.total,
        c.succeeded,
        c.failed,
        c.skipped,
        c.canceled,
        c.running,
        c.queued,
        c.waiting,
        c.retrying
    );
    if c.reused > 0 {
        say!("         {} of the succeeded reused an earlier materialization instead of running", c.reused);
    }
    // Steps waiting for a key are in the run store too: the window's share is the rest.
    let for_keys: i64 = s.waiting_for_keys.iter().map(|w| w.waiting).sum();
    let for_window = s.behind_window.saturating_sub(for_keys);
    if for_window > 0 {
        let behind = if s.behind_window >= 10_001 { "over 10,000".to_owned() } else { count(for_window) };
        say!(
            "  queue  {behind} of the queued steps wait for room in their op's publish window, taking turns with \
             other owners' steps (docs/fair-sharing.md)"
        );
    }
    for w in &s.waiting_for_keys {
        say!(
            "  key    {} wait for concurrency key `{}`: {} of max {} in flight, over every run",
            count(w.waiting),
            w.key,
            count(w.in_flight),
            count(w.max)
        );
    }
    let a = &s.assets;
    if a.total > 1 {
        say!(
            "  assets {} total: {} done, {} running, {} waiting; {} with failed steps",
            count(a.total),
            count(a.done),
            count(a.running),
            count(a.waiting),
            count(a.failed)
        );
    }
    for f in &s.failures {
        say!("  failed step {} ({}), attempt {}: {}", f.step_id, f.asset, f.attempt, f.error);
    }
}

pub use crate::human::count;

/// Seconds for people: `0.84s`, `12.3s`, `4m05s`, `2h03m`.
pub fn seconds(s: f64) -> String {
    let whole = s.max(0.0) as u64;
    match whole {
        0..10 => format!("{s:.2}s"),
        10..60 => format!("{s:.1}s"),
        60..3600 => format!("{}m{:02}s", whole / 60, whole % 60),
        _ => format!("{}h{:02}m", whole / 3600, (whole % 3600) / 60),
    }
}

/// One step's output on one line: top-level scalars as `key=value`, the rest compact.
pub fn output_line(output: &Value) -> String {
    match output {
        Value::Object(map) => {
            map.iter().map(|(k, v)| format!("{k}={}", scalar(v))).collect::<Vec<_>>().join("  ")
        }
        other => scalar(other),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => {
                if f.abs() >= 1000.0 {
                    format!("{f:.0}")
                } else {
                    format!("{f:.4}")
                }
            }
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        Value::Array(items) if items.len() > 4 => format!("[{} values]", items.len()),
        other => other.to_string(),
    }
}

/// Shows progress while a run is in flight: a bar on a terminal, a line every ten seconds
/// otherwise.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    last_line: std::time::Instant,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} steps {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self { bar, last_line: std::time::Instant::now() }
    }

    pub fn update(&mut self, p: &RunProgressRow, quiet: bool) {
        let done = (p.steps_succeeded + p.steps_failed + p.steps_skipped + p.steps_canceled) as u64;
        let msg = if p.steps_failed > 0 { format!("({} failed)", p.steps_failed) } else { String::new() };
        match &self.bar {
            Some(bar) => {
                bar.set_length(p.steps_total as u64);
                bar.set_position(done);
                bar.set_message(msg);
            }
            None if !quiet && self.last_line.elapsed() >= Duration::from_secs(10) => {
                eprintln!("  {done}/{} steps done {msg}", p.steps_total);
                self.last_line = std::time::Instant::now();
            }
            None => {}
        }
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn counts_read_in_groups_of_three() {
        assert_eq!(count(0), "0");
        assert_eq!(count(870), "870");
        assert_eq!(count(9_120), "9,120");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(-12_000), "-12,000");
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(seconds(0.842), "0.84s");
        assert_eq!(seconds(12.34), "12.3s");
        assert_eq!(seconds(245.0), "4m05s");
        assert_eq!(seconds(7380.0), "2h03m");
    }

    #[test]
    fn outputs_read_as_key_value_pairs() {
        let line =
            output_line(&json!({"var_95": 152342.123, "ratio": 0.123456, "n": 9, "q": [1, 2, 3, 4, 5]}));
        assert_eq!(line, "n=9  q=[5 values]  ratio=0.1235  var_95=152342");
    }
}
