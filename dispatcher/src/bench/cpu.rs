//! CPU time per step by component (dispatcher, PostgreSQL, RabbitMQ, workers), read from the
//! processes' own kernel counters rather than from wall time, so that a figure holds even
//! when the machine is busy with other work.
//!
//! A process's counter is `utime + stime` of `/proc/<pid>/stat` (fields 14 and 15): the CPU
//! time of all its threads, including threads that have exited, in clock ticks
//! (`sysconf(_SC_CLK_TCK)`, 100 per second on Linux). A snapshot is taken when a workload
//! is submitted and another when its run has ended; a process alive at both counts the
//! difference, one that appeared in between counts all of its time (all of it fell inside
//! the window), one that exited in between is missing and is counted in `exited`.

use std::collections::HashMap;

use serde::Serialize;

/// The processes of one component, by pid.
#[derive(Debug, Clone, Default)]
pub struct Component {
    pids: Vec<u32>,
}

impl Component {
    pub fn new(pids: impl IntoIterator<Item = u32>) -> Self {
        Self { pids: pids.into_iter().collect() }
    }
}

/// The CPU ticks of each process of each component at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// component name → (pid → ticks); a process already gone when read is left out.
    ticks: HashMap<&'static str, HashMap<u32, u64>>,
}

impl Snapshot {
    /// Reads the counters of every process of `components`.
    pub fn take(components: &[(&'static str, Component)]) -> Self {
        let ticks = components
            .iter()
            .map(|(name, component)| {
                let pids = component.pids.iter().filter_map(|&pid| Some((pid, cpu_ticks(pid)?))).collect();
                (*name, pids)
            })
            .collect();
        Self { ticks }
    }
}

/// CPU microseconds per step of each component between two snapshots (`default`: not
/// measured).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuPerStep {
    pub dispatcher: Option<f64>,
    pub postgres: Option<f64>,
    pub broker: Option<f64>,
    pub workers: Option<f64>,
    /// The sum of those that were read.
    pub total: f64,
    /// Processes read at the start that had exited by the end: their time is missing.
    pub exited: usize,
}

/// The component names [`CpuPerStep`] reports, in its order.
pub const COMPONENTS: [&str; 4] = ["dispatcher", "postgres", "broker", "workers"];

/// µs of CPU per step of each component from `start` to `end`. A component with no process
/// read at either end is `None` (not measured), never 0.
pub fn per_step(start: &Snapshot, end: &Snapshot, steps: u64) -> CpuPerStep {
    let tick_us = 1_000_000.0 / clock_ticks_per_s() as f64;
    let mut exited = 0;
    let mut us = |name: &str| {
        let before = start.ticks.get(name);
        let after = end.ticks.get(name);
        if before.is_none_or(HashMap::is_empty) && after.is_none_or(HashMap::is_empty) {
            return None;
        }
        let empty = HashMap::new();
        let (before, after) = (before.unwrap_or(&empty), after.unwrap_or(&empty));
        exited += before.keys().filter(|pid| !after.contains_key(pid)).count();
        let ticks: u64 = after
            .iter()
            .map(|(pid, &at_end)| at_end.saturating_sub(before.get(pid).copied().unwrap_or(0)))
            .sum();
        Some(ticks as f64 * tick_us / steps.max(1) as f64)
    };
    let [dispatcher, postgres, broker, workers] = COMPONENTS.map(&mut us);
    let total = [dispatcher, postgres, broker, workers].into_iter().flatten().sum();
    CpuPerStep { dispatcher, postgres, broker, workers, total, exited }
}

/// The CPU time `pids` have used so far, in microseconds (those that cannot be read count
/// nothing); `None` when none can be read.
pub fn micros(pids: &[u32]) -> Option<u64> {
    let ticks: Vec<u64> = pids.iter().filter_map(|pid| cpu_ticks(*pid)).collect();
    (!ticks.is_empty()).then(|| ticks.iter().sum::<u64>() * 1_000_000 / clock_ticks_per_s())
}

/// `utime + stime` of `pid` in clock ticks; `None` off Linux, once it exited, or if not
/// permitted.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    parse_stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `utime + stime` from the text of `/proc/<pid>/stat`. The command name (field 2) is in
/// parentheses and may hold spaces and parentheses itself, so fields are counted from the
/// last `)`: the state (field 3) is the first after it, `utime` the 12th, `stime` the 13th.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second of the `/proc` counters.
fn clock_ticks_per_s() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// The RabbitMQ node's Erlang VM on this machine: the `beam.smp` processes started with
/// `-s rabbit boot` (`rabbitmqctl` runs a `beam.smp` of its own, which is left out).
pub fn rabbitmq_node_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "beam.smp")
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|cmdline| cmdline.split(|b| *b == 0).any(|arg| arg == b"rabbit"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utime_and_stime_even_with_parentheses_in_the_name() {
        let stat = "2987 (beam (smp) x) S 2950 2987 2987 0 -1 4194560 83231 0 0 0 \
                    1234 567 0 0 20 0 40 0 1612 3141922816 34867 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some(1234 + 567));
        assert_eq!(parse_stat_ticks("12 (cut) S 1 2"), None);
        assert_eq!(parse_stat_ticks("no parentheses"), None);
    }

    #[test]
    fn reads_this_process_and_counts_per_step() {
        let pid = std::process::id();
        assert!(cpu_ticks(pid).is_some());
        assert_eq!(cpu_ticks(u32::MAX), None);
        let snapshot = |dispatcher: u64, gone: Option<u64>, new: Option<u64>| {
            let mut workers = HashMap::from([(1, 10)]);
            workers.extend(gone.map(|t| (2, t)));
            workers.extend(new.map(|t| (3, t)));
            Snapshot {
                ticks: HashMap::from([
                    ("dispatcher", HashMap::from([(9, dispatcher)])),
                    ("workers", workers),
                ]),
            }
        };
        let (start, end) = (snapshot(100, Some(5), None), snapshot(150, None, Some(20)));
        let cpu = per_step(&start, &end, 10);
        let tick_us = 1_000_000.0 / clock_ticks_per_s() as f64;
        assert_eq!(cpu.dispatcher, Some(50.0 * tick_us / 10.0));
        // Worker 1 spent nothing, worker 3 started in between (all 20 ticks), 2 exited.
        assert_eq!(cpu.workers, Some(20.0 * tick_us / 10.0));
        assert_eq!((cpu.postgres, cpu.broker, cpu.exited), (None, None, 1));
        assert_eq!(cpu.total, 70.0 * tick_us / 10.0);
    }
}
