//! What one `opflow bench` invocation runs ([`Workload`], [`BenchOptions`]), and how its
//! figures are rounded.

use std::path::PathBuf;

use opflow_amqp::QueueKind;

/// The workloads, in the order `all` runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workload {
    Raw,
    W1,
    W2,
    W3,
    W4,
    W5,
    W6,
    W7,
    /// Fair sharing between two owners.
    W8,
    /// The HTTP API against a large store.
    Api,
}

impl Workload {
    pub const ALL: [Workload; 10] = [
        Workload::Raw,
        Workload::W1,
        Workload::W2,
        Workload::W3,
        Workload::W4,
        Workload::W5,
        Workload::W6,
        Workload::W7,
        Workload::W8,
        Workload::Api,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Raw => "raw",
            Workload::W1 => "w1",
            Workload::W2 => "w2",
            Workload::W3 => "w3",
            Workload::W4 => "w4",
            Workload::W5 => "w5",
            Workload::W6 => "w6",
            Workload::W7 => "w7",
            Workload::W8 => "w8",
            Workload::Api => "api",
        }
    }

    /// `raw`, `w1`…, `api`, or `all`.
    pub fn parse_list(names: &[String]) -> Result<Vec<Workload>, String> {
        let mut workloads = Vec::new();
        for name in names {
            match name.as_str() {
                "all" => workloads.extend(Self::ALL),
                other => {
                    workloads.push(Self::ALL.into_iter().find(|w| w.name() == other).ok_or_else(|| {
                        format!("unknown workload `{other}`; choose from raw, w1 … w8, api, or all")
                    })?)
                }
            }
        }
        if workloads.is_empty() {
            workloads.extend(Self::ALL);
        }
        workloads.sort();
        workloads.dedup();
        Ok(workloads)
    }
}

/// How to run the benchmarks.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// A tenth of every size; correctness only.
    pub quick: bool,
    /// The queue type of the op queue (and of `raw`'s queues, so the ratio is like for like).
    pub queue_type: QueueKind,
    /// Keep the processes' logs (their directory is printed).
    pub keep_logs: bool,
    /// Where `opflow` and `noop` are.
    pub bin_dir: PathBuf,
    /// The noop op the workers run, when not the Rust one in `bin_dir` (another SDK's).
    pub noop: Option<PathBuf>,
}

impl BenchOptions {
    pub(crate) fn scaled(&self, full: usize) -> usize {
        if self.quick { (full / 10).max(1) } else { full }
    }
}

pub fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}
