//! Resident memory of a process, from `/proc`: what `opflow bench` reports for the plan
//! compiler (w5) and for the dispatcher and a worker under load (w6).

/// Current resident set (`VmRSS`) of `pid` in MiB; `None` off Linux or once it exited.
pub fn rss_mb(pid: u32) -> Option<f64> {
    status_kib(pid, "VmRSS:").map(|kib| kib as f64 / 1024.0)
}

/// Peak resident set (`VmHWM`) of `pid` in MiB.
pub fn peak_rss_mb(pid: u32) -> Option<f64> {
    status_kib(pid, "VmHWM:").map(|kib| kib as f64 / 1024.0)
}

/// Resets this process's peak resident set to its current one (`clear_refs` 5), so that a
/// later [`peak_rss_mb`] measures only what came after.
pub fn reset_own_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        let (rss, peak) = (rss_mb(pid).unwrap(), peak_rss_mb(pid).unwrap());
        assert!(rss > 0.0 && peak >= rss, "rss {rss} peak {peak}");
        assert_eq!(rss_mb(u32::MAX), None);
    }
}
