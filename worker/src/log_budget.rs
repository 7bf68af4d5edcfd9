//! What one attempt of a step may send of log lines and progress reports. Every event goes
//! through the dispatcher's one queue and into the run store, so one chatty step must not
//! flood them for everyone: past the budget, lines are dropped, counted, and said in one
//! line when the step ends.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The most bytes of log lines and progress messages one attempt of a step reports.
pub const LOG_BUDGET_BYTES: u64 = 1024 * 1024;
/// The most log lines and progress reports one attempt of a step sends.
pub const LOG_BUDGET_LINES: u64 = 10_000;

/// One attempt's budget: what it spent, and what it dropped (over the budget, or because
/// the worker's queue of events was full). Shared by the attempt's context clones, so
/// counted with atomics; never blocks.
#[derive(Debug, Default)]
pub struct LogBudget {
    bytes: AtomicU64,
    lines: AtomicU64,
    spent: AtomicBool,
    dropped: AtomicU64,
}

impl LogBudget {
    /// Whether a line of `bytes` may be sent: counted as spent if so, as dropped if not.
    pub fn admit(&self, bytes: usize) -> bool {
        let lines = self.lines.fetch_add(1, Ordering::Relaxed) + 1;
        let spent = self.bytes.fetch_add(bytes as u64, Ordering::Relaxed) + bytes as u64;
        if lines <= LOG_BUDGET_LINES && spent <= LOG_BUDGET_BYTES {
            return true;
        }
        self.spent.store(true, Ordering::Relaxed);
        self.dropped.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Counts a line that was admitted but could not be queued.
    pub fn lost(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// The line saying what was dropped and why, if anything was.
    pub fn notice(&self) -> Option<String> {
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped == 0 {
            return None;
        }
        let why = if self.spent.load(Ordering::Relaxed) {
            format!(
                "past the step's log budget ({LOG_BUDGET_LINES} lines or {} MiB of log lines and progress messages)",
                LOG_BUDGET_BYTES / (1024 * 1024)
            )
        } else {
            "sent faster than the worker could publish them".to_owned()
        };
        Some(format!(
            "{dropped} log lines and progress reports of this step were dropped, {why}; log less, or write long \
             output to the op's own storage"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_past_the_byte_budget_are_dropped_and_counted() {
        let budget = LogBudget::default();
        assert_eq!(budget.notice(), None);
        let line = 512;
        let fit = (LOG_BUDGET_BYTES / line as u64) as usize;
        assert!((0..fit).all(|_| budget.admit(line)), "{fit} lines of {line} bytes fit");
        assert!(!budget.admit(line));
        assert!(!budget.admit(0), "once over, even an empty line is dropped");
        let notice = budget.notice().expect("something was dropped");
        assert!(notice.starts_with("2 log lines") && notice.contains("log budget"), "{notice}");
    }

    #[test]
    fn lines_past_the_line_budget_are_dropped() {
        let budget = LogBudget::default();
        assert!((0..LOG_BUDGET_LINES).all(|_| budget.admit(1)));
        assert!(!budget.admit(1));
    }

    #[test]
    fn lines_lost_to_a_full_queue_are_said_as_such() {
        let budget = LogBudget::default();
        assert!(budget.admit(10));
        budget.lost();
        let notice = budget.notice().expect("one was lost");
        assert!(notice.starts_with("1 log lines") && notice.contains("faster than"), "{notice}");
    }
}
