//! Schedules, pure: what a schedule says (a cron expression in a time zone, an overlap
//! policy, a catch-up window), which nominal ticks it has, and what to do with a tick when
//! it comes due. The store keeps schedules and their ticks; the leader's scheduler
//! (`service::scheduler`) asks this module and does what it says. No I/O here.
//!
//! A tick is decided exactly once: the run it submits carries the idempotency key
//! [`run_key`] (the schedule and the tick's nominal time), so a tick submitted again after
//! a crash, or by a second leader, finds the run the first made.

use std::{fmt, str::FromStr, time::Duration};

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::{Cron, parser::CronParser, parser::Seconds};

/// The owner of every schedule's idempotency keys: a space keeps any token's name out.
pub const KEY_OWNER: &str = "opflow schedule";
/// Longest schedule name.
pub const MAX_NAME_BYTES: usize = 64;
/// The longest cron expression, and the longest time zone name.
pub const MAX_CRON_BYTES: usize = 256;
pub const MAX_TZ_BYTES: usize = 64;
/// The catch-up window unless one is given.
pub const DEFAULT_CATCH_UP: Duration = Duration::from_secs(3600);
/// The longest catch-up window.
pub const MAX_CATCH_UP: Duration = Duration::from_secs(366 * 24 * 3600);

/// What to do with a tick that comes due while an earlier run of the schedule is still
/// queued or running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Record the tick as skipped.
    Skip,
    /// Keep the newest such tick, and submit it when the running run ends.
    BufferOne,
    /// Keep every such tick, and submit them one at a time, in order.
    BufferAll,
    /// Cancel the running run, then submit.
    CancelOther,
    /// Submit anyway: runs of the schedule overlap.
    AllowAll,
}

impl Overlap {
    pub const ALL: [Overlap; 5] =
        [Overlap::Skip, Overlap::BufferOne, Overlap::BufferAll, Overlap::CancelOther, Overlap::AllowAll];

    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Skip => "skip",
            Overlap::BufferOne => "buffer_one",
            Overlap::BufferAll => "buffer_all",
            Overlap::CancelOther => "cancel_other",
            Overlap::AllowAll => "allow_all",
        }
    }
}

impl FromStr for Overlap {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Overlap::ALL.into_iter().find(|o| o.as_str() == text).ok_or_else(|| {
            format!(
                "`{text}` is not an overlap policy; use one of {}",
                Overlap::ALL.map(Overlap::as_str).join(", ")
            )
        })
    }
}

impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A schedule's timing: its cron expression (5 fields, or 6 with seconds first) in a time
/// zone (an IANA name; UTC by default).
#[derive(Debug, Clone)]
pub struct Timing {
    cron: Cron,
    tz: Tz,
}

impl Timing {
    pub fn parse(cron: &str, tz: Option<&str>) -> Result<Self, String> {
        // Bounded before the parser or a message sees them.
        if cron.len() > MAX_CRON_BYTES {
            return Err(format!("the cron expression is {} bytes; at most {MAX_CRON_BYTES}", cron.len()));
        }
        if let Some(tz) = tz.filter(|tz| tz.len() > MAX_TZ_BYTES) {
            return Err(format!(
                "the time zone is {} bytes; an IANA name is at most {MAX_TZ_BYTES}",
                tz.len()
            ));
        }
        let parsed = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(cron)
            .map_err(|e| format!("cron `{}`: {e}", cut(cron)))?;
        let tz = match tz {
            None => Tz::UTC,
            Some(name) => name.parse::<Tz>().map_err(|_| {
                format!(
                    "time zone `{}` is not an IANA name (`UTC`, `Europe/Paris`, `America/New_York`)",
                    cut(name)
                )
            })?,
        };
        Ok(Self { cron: parsed, tz })
    }

    /// The first nominal tick strictly after `after`, or `None` if there is none (a pattern
    /// that never matches again).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.tz);
        self.cron.find_next_occurrence(&local, false).ok().map(|t| t.with_timezone(&Utc))
    }

    /// The first nominal tick at or after `at`. (Ticks are whole seconds: past a whole
    /// second, the first is after it.)
    pub fn next_from(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if at.timestamp_subsec_nanos() != 0 {
            return self.next_after(at);
        }
        let local = at.with_timezone(&self.tz);
        self.cron.find_next_occurrence(&local, true).ok().map(|t| t.with_timezone(&Utc))
    }

    /// The last nominal tick at or before `at`, or `None` if there is none.
    pub fn at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&self.tz);
        self.cron.find_previous_occurrence(&local, true).ok().map(|t| t.with_timezone(&Utc))
    }

    /// Up to `n` ticks after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut ticks = Vec::with_capacity(n);
        let mut at = after;
        while ticks.len() < n {
            let Some(next) = self.next_after(at) else { break };
            ticks.push(next);
            at = next;
        }
        ticks
    }

    /// The tick's own daily partition, as the schedule's time zone dates it: `2026-12-06`.
    pub fn partition_of(&self, tick: DateTime<Utc>) -> String {
        self.tz.from_utc_datetime(&tick.naive_utc()).format("%Y-%m-%d").to_string()
    }

    pub fn tz_name(&self) -> &'static str {
        self.tz.name()
    }
}

fn cut(text: &str) -> std::borrow::Cow<'_, str> {
    opflow_protocol::text::cut(text, 128)
}

/// The idempotency key of the run a tick submits (owned by [`KEY_OWNER`]).
pub fn run_key(schedule: &str, tick: DateTime<Utc>) -> String {
    format!("{schedule}@{}", tick.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// Checks a schedule's name: one word, at most [`MAX_NAME_BYTES`].
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(format!("a schedule's name is 1 to {MAX_NAME_BYTES} bytes; this one is {}", name.len()));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(format!("schedule name `{}`: use letters, digits, `-`, `_` and `.`", cut(name)));
    }
    Ok(())
}

/// What the scheduler does with a tick that is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Submit its run.
    Submit,
    /// Cancel the schedule's running runs, then submit.
    CancelThenSubmit,
    /// Keep it, to submit once the running run ends.
    Buffer,
    /// Record it as skipped, saying why.
    Skip(String),
}

/// What to do with the due tick `tick` at `now`: `active` runs of the schedule are queued or
/// running, `buffered` ticks wait already.
pub fn decide(
    tick: DateTime<Utc>,
    now: DateTime<Utc>,
    catch_up: Duration,
    overlap: Overlap,
    active: usize,
    buffered: usize,
) -> Decision {
    let late = (now - tick).to_std().unwrap_or_default();
    if late > catch_up {
        return Decision::Skip(format!(
            "missed by {}, more than the catch-up window of {}",
            humantime::format_duration(Duration::from_secs(late.as_secs())),
            humantime::format_duration(catch_up)
        ));
    }
    if active == 0 && buffered == 0 {
        return Decision::Submit;
    }
    match overlap {
        Overlap::AllowAll => Decision::Submit,
        Overlap::CancelOther => Decision::CancelThenSubmit,
        Overlap::Skip => Decision::Skip("the schedule's last run is still running (overlap: skip)".into()),
        Overlap::BufferOne if buffered > 0 => {
            Decision::Skip("a tick is buffered already behind the running run (overlap: buffer_one)".into())
        }
        Overlap::BufferOne | Overlap::BufferAll => Decision::Buffer,
    }
}

/// What makes a schedule submit: its cron's ticks, or (`on`) a change in the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Each tick of its cron.
    Cron,
    /// `on: stale`: a cell of the plan's assets is older than its freshness policy.
    Stale,
    /// `on: upstream_materialized`: another run materialized an asset the plan reads.
    Upstream,
}

impl Trigger {
    /// As stored (`schedules.trigger`).
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Cron => "cron",
            Trigger::Stale => "stale",
            Trigger::Upstream => "upstream",
        }
    }

    /// As the API and CLI name it (`on`).
    pub fn on(self) -> Option<&'static str> {
        match self {
            Trigger::Cron => None,
            Trigger::Stale => Some("stale"),
            Trigger::Upstream => Some("upstream_materialized"),
        }
    }

    /// From the API's `on`.
    pub fn from_on(text: &str) -> Result<Self, String> {
        match text {
            "stale" => Ok(Trigger::Stale),
            "upstream_materialized" | "upstream-materialized" => Ok(Trigger::Upstream),
            other => Err(format!(
                "`on` is `{}`; use `stale` (when a cell goes stale by its freshness policy) or \
                 `upstream_materialized` (when another run materializes an asset the plan reads)",
                cut(other)
            )),
        }
    }

    /// From `schedules.trigger`.
    pub fn from_stored(text: &str) -> Result<Self, String> {
        [Trigger::Cron, Trigger::Stale, Trigger::Upstream]
            .into_iter()
            .find(|t| t.as_str() == text)
            .ok_or_else(|| format!("trigger `{}` is not one this version knows", cut(text)))
    }
}

/// The debounce of a triggered schedule unless one is given.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_secs(30);
/// The longest debounce.
pub const MAX_DEBOUNCE: Duration = Duration::from_secs(24 * 3600);

/// What a triggered schedule saw at one look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// `cells` of the plan's assets are stale.
    Stale { cells: i64 },
    /// Materializations by other runs of assets the plan reads, the first at `first_at`.
    Upstream { first_at: Option<DateTime<Utc>> },
}

/// Whether a triggered schedule submits now: something to answer, none of its runs queued
/// or running, its last decision (`last`) a debounce ago, and, for upstream
/// materializations, a debounce since the first it has not answered, so that a burst of
/// them (every partition of a day, one after another) makes one run.
pub fn fires(
    cause: Cause,
    now: DateTime<Utc>,
    active: usize,
    debounce: Duration,
    last: Option<DateTime<Utc>>,
) -> bool {
    let passed = |since: DateTime<Utc>| quiet_since(now, since, debounce);
    active == 0
        && last.is_none_or(passed)
        && match cause {
            Cause::Stale { cells } => cells > 0,
            Cause::Upstream { first_at } => first_at.is_some_and(passed),
        }
}

/// Whether `debounce` has passed at `now` since `since`.
pub fn quiet_since(now: DateTime<Utc>, since: DateTime<Utc>, debounce: Duration) -> bool {
    (now - since).to_std().unwrap_or_default() >= debounce
}

/// The idempotency key of a triggered schedule's run: the schedule and what it answers (the
/// first materialization it had not seen, or its count of stale-cell runs), so that a look
/// repeated after a crash finds the run the first made.
pub fn trigger_key(schedule: &str, trigger: Trigger, answered: i64) -> String {
    format!("{schedule}@{}#{answered}", trigger.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_triggered_schedule_fires_once_quiet_and_never_beside_its_own_run() {
        let now = at("2026-12-06T12:00:00Z");
        let debounce = Duration::from_secs(30);
        let stale = Cause::Stale { cells: 3 };
        assert!(fires(stale, now, 0, debounce, None));
        assert!(!fires(Cause::Stale { cells: 0 }, now, 0, debounce, None), "nothing stale");
        assert!(!fires(stale, now, 1, debounce, None), "its run still runs");
        let recently = Some(at("2026-12-06T11:59:45Z"));
        assert!(!fires(stale, now, 0, debounce, recently), "decided 15 s ago");
        assert!(fires(stale, now, 0, debounce, Some(at("2026-12-06T11:59:30Z"))));
        let upstream = |first_at| Cause::Upstream { first_at };
        assert!(!fires(upstream(None), now, 0, debounce, None));
        let burst = upstream(Some(at("2026-12-06T11:59:50Z")));
        assert!(!fires(burst, now, 0, debounce, None), "the burst goes on");
        let quiet = upstream(Some(at("2026-12-06T11:59:00Z")));
        assert!(fires(quiet, now, 0, debounce, None));
        assert!(!fires(quiet, now, 0, debounce, recently), "decided 15 s ago");
        assert_eq!(trigger_key("daily", Trigger::Upstream, 42), "daily@upstream#42");
        assert_eq!(Trigger::from_on("upstream_materialized"), Ok(Trigger::Upstream));
        assert!(Trigger::from_on("sometimes").unwrap_err().contains("use `stale`"));
        for t in [Trigger::Cron, Trigger::Stale, Trigger::Upstream] {
            assert_eq!(Trigger::from_stored(t.as_str()), Ok(t));
        }
    }

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn ticks_follow_the_cron_in_its_time_zone() {
        let hourly = Timing::parse("0 * * * *", None).unwrap();
        assert_eq!(hourly.next_after(at("2026-12-06T10:00:00Z")), Some(at("2026-12-06T11:00:00Z")));
        assert_eq!(hourly.next_from(at("2026-12-06T10:00:00Z")), Some(at("2026-12-06T10:00:00Z")));
        let every_second = Timing::parse("* * * * * *", None).unwrap();
        assert_eq!(every_second.next_from(at("2026-12-06T10:00:39.717Z")), Some(at("2026-12-06T10:00:40Z")));
        assert_eq!(every_second.next_after(at("2026-12-06T10:00:39.717Z")), Some(at("2026-12-06T10:00:40Z")));
        let seconds = Timing::parse("*/2 * * * * *", None).unwrap();
        assert_eq!(
            seconds.upcoming(at("2026-12-06T10:00:00Z"), 2),
            [at("2026-12-06T10:00:02Z"), at("2026-12-06T10:00:04Z")]
        );
        // 01:00 in Paris is midnight UTC in winter.
        let paris = Timing::parse("0 1 * * *", Some("Europe/Paris")).unwrap();
        assert_eq!(paris.next_after(at("2026-12-06T10:00:00Z")), Some(at("2026-12-07T00:00:00Z")));
        assert_eq!(paris.partition_of(at("2026-12-06T23:30:00Z")), "2026-12-07");
        assert_eq!(paris.tz_name(), "Europe/Paris");
    }

    #[test]
    fn a_bad_cron_or_zone_says_which() {
        let error = Timing::parse("61 * * * *", None).unwrap_err();
        assert!(error.contains("cron `61 * * * *`"), "{error}");
        let error = Timing::parse("0 * * * *", Some("Mars/Olympus")).unwrap_err();
        assert!(error.contains("Mars/Olympus") && error.contains("IANA"), "{error}");
        let long = Timing::parse(&"* ".repeat(100_000), None).unwrap_err();
        assert!(long.contains("200000 bytes") && long.len() < 100, "{long}");
        let long = Timing::parse("0 * * * *", Some(&"Z".repeat(10_000))).unwrap_err();
        assert!(long.contains("10000 bytes") && long.len() < 100, "{long}");
        assert!(check_name("hourly-risk_v2.1").is_ok());
        assert!(check_name("two words").is_err());
        assert!(check_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn a_tick_is_decided_by_lateness_then_overlap() {
        let now = at("2026-12-06T10:00:00Z");
        let hour = Duration::from_secs(3600);
        let late = decide(at("2026-12-06T08:00:00Z"), now, hour, Overlap::AllowAll, 0, 0);
        assert!(
            matches!(&late, Decision::Skip(why) if why.contains("missed by 2h") && why.contains("1h")),
            "{late:?}"
        );
        let due = at("2026-12-06T09:59:59Z");
        assert_eq!(decide(due, now, hour, Overlap::Skip, 0, 0), Decision::Submit);
        assert!(matches!(decide(due, now, hour, Overlap::Skip, 1, 0), Decision::Skip(_)));
        assert_eq!(decide(due, now, hour, Overlap::AllowAll, 3, 0), Decision::Submit);
        assert_eq!(decide(due, now, hour, Overlap::CancelOther, 1, 0), Decision::CancelThenSubmit);
        assert_eq!(decide(due, now, hour, Overlap::BufferOne, 1, 0), Decision::Buffer);
        assert!(matches!(decide(due, now, hour, Overlap::BufferOne, 1, 1), Decision::Skip(_)));
        assert_eq!(decide(due, now, hour, Overlap::BufferAll, 1, 5), Decision::Buffer);
        // Buffered ticks go first: a new one waits behind them even with nothing running.
        assert_eq!(decide(due, now, hour, Overlap::BufferAll, 0, 1), Decision::Buffer);
        assert_eq!(run_key("hourly", at("2026-12-06T10:00:00Z")), "hourly@2026-12-06T10:00:00Z");
    }
}
