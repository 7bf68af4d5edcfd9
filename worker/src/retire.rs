//! Worker recycling: a worker that has run `--max-steps` steps, or whose resident memory
//! has passed `--max-rss-mb`, stops taking steps once the one in hand is settled and exits
//! 0; its supervisor (`opflow up`, Kubernetes) starts a fresh one. Code that leaks (a
//! simulation library, a cache that only grows) then cannot take its node down.

use std::sync::{
    Arc,
    atomic::{AtomicU32, Ordering},
};

/// When a worker retires, and how far it has come. Cheap to clone; clones share the count.
#[derive(Debug, Clone, Default)]
pub(crate) struct Retirement {
    max_steps: Option<u32>,
    max_rss_mb: Option<u32>,
    steps: Arc<AtomicU32>,
}

impl Retirement {
    pub(crate) fn new(max_steps: Option<u32>, max_rss_mb: Option<u32>) -> Self {
        Self { max_steps, max_rss_mb, steps: Arc::default() }
    }

    /// Counts a settled step; returns why the worker should now retire, if it should.
    pub(crate) fn step_settled(&self) -> Option<String> {
        let steps = self.steps.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(max) = self.max_steps
            && steps >= max
        {
            return Some(format!("it has run {steps} steps (--max-steps {max})"));
        }
        let max = self.max_rss_mb?;
        let rss = resident_mb()?;
        (rss > u64::from(max)).then(|| format!("its resident memory is {rss} MiB (--max-rss-mb {max})"))
    }
}

/// This process's resident memory, from `/proc/self/status`.
fn resident_mb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 =
        status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_retires_after_max_steps_and_not_before() {
        let retirement = Retirement::new(Some(3), None);
        assert_eq!(retirement.step_settled(), None);
        assert_eq!(retirement.step_settled(), None);
        assert!(retirement.step_settled().is_some_and(|why| why.contains("3 steps")));
        assert_eq!(Retirement::default().step_settled(), None);
    }

    #[test]
    fn it_retires_past_max_rss() {
        assert!(resident_mb().is_some_and(|mb| mb > 0));
        assert!(Retirement::new(None, Some(1)).step_settled().is_some_and(|why| why.contains("MiB")));
        assert_eq!(Retirement::new(None, Some(1 << 20)).step_settled(), None);
    }
}
