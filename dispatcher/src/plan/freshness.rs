//! Freshness policies: how old an asset's cells may grow before they are stale. An asset
//! says `freshness: {max_age: 2h}` (a cell is stale once its materialization is older; it
//! warns from `warn_after`, three quarters of that unless given) or `freshness: {deadline:
//! "0 6 * * *", tz: Europe/Paris}` (each period between two ticks must materialize it: a
//! cell not materialized since the last tick warns, one not materialized since the tick
//! before is stale, as it missed the last deadline). Pure: the catalog compares its cells'
//! materialization times with the [`Thresholds`] a policy gives for a moment.

use std::{fmt, time::Duration};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::schedules::Timing;

/// The shortest `max_age`: a second (the scheduler looks each second).
pub const MIN_MAX_AGE: Duration = Duration::from_secs(1);
/// The longest `max_age`: ten years.
pub const MAX_MAX_AGE: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// An asset's freshness policy, as the catalog stores it (`catalog_assets.freshness`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FreshnessPolicy {
    /// Stale once older than `max_age`; warns once older than `warn_after`.
    MaxAge { max_age_secs: u64, warn_after_secs: u64 },
    /// Materialized again between each two ticks of `cron` in `tz`.
    Deadline { cron: String, tz: String },
}

/// A cell whose current materialization is older than `stale_before` is stale; older than
/// `warn_before`, it warns; else it is fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub stale_before: DateTime<Utc>,
    pub warn_before: DateTime<Utc>,
}

/// A materialized cell's freshness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Freshness {
    Fresh,
    Warn,
    Stale,
}

impl Freshness {
    pub fn as_str(self) -> &'static str {
        match self {
            Freshness::Fresh => "fresh",
            Freshness::Warn => "warn",
            Freshness::Stale => "stale",
        }
    }
}

impl Thresholds {
    /// The freshness of a cell materialized at `at`.
    pub fn of(&self, at: DateTime<Utc>) -> Freshness {
        if at < self.stale_before {
            Freshness::Stale
        } else if at < self.warn_before {
            Freshness::Warn
        } else {
            Freshness::Fresh
        }
    }
}

impl FreshnessPolicy {
    /// `max_age`, warning from `warn_after` (three quarters of `max_age` when `None`).
    pub fn max_age(max_age: Duration, warn_after: Option<Duration>) -> Result<Self, String> {
        if !(MIN_MAX_AGE..=MAX_MAX_AGE).contains(&max_age) {
            return Err(format!(
                "max_age {} is out of range: from {} to {}",
                humantime::format_duration(max_age),
                humantime::format_duration(MIN_MAX_AGE),
                humantime::format_duration(MAX_MAX_AGE)
            ));
        }
        let warn_after = warn_after.unwrap_or(max_age * 3 / 4);
        if warn_after > max_age {
            return Err(format!(
                "warn_after {} is longer than max_age {}: a cell warns before it is stale",
                humantime::format_duration(warn_after),
                humantime::format_duration(max_age)
            ));
        }
        Ok(FreshnessPolicy::MaxAge { max_age_secs: max_age.as_secs(), warn_after_secs: warn_after.as_secs() })
    }

    /// A deadline: `cron` in `tz` (UTC when `None`); checked as schedules check theirs.
    pub fn deadline(cron: &str, tz: Option<&str>) -> Result<Self, String> {
        Timing::parse(cron, tz)?;
        Ok(FreshnessPolicy::Deadline { cron: cron.to_owned(), tz: tz.unwrap_or("UTC").to_owned() })
    }

    /// The thresholds at `now`; `None` when a deadline's cron has no two ticks before `now`
    /// (nothing is due yet) or the stored policy no longer parses.
    pub fn thresholds(&self, now: DateTime<Utc>) -> Option<Thresholds> {
        match self {
            FreshnessPolicy::MaxAge { max_age_secs, warn_after_secs } => {
                let ago = |secs: u64| now - chrono::Duration::seconds(secs.min(i64::MAX as u64) as i64);
                Some(Thresholds { stale_before: ago(*max_age_secs), warn_before: ago(*warn_after_secs) })
            }
            FreshnessPolicy::Deadline { cron, tz } => {
                let timing = Timing::parse(cron, Some(tz)).ok()?;
                let last = timing.at_or_before(now)?;
                let before = timing.at_or_before(last - chrono::Duration::seconds(1))?;
                Some(Thresholds { stale_before: before, warn_before: last })
            }
        }
    }
}

/// An asset's `freshness` as the plan writes it: `max_age` (and `warn_after`), or
/// `deadline` (and `tz`), not both.
pub(super) fn of_plan(raw: &super::parse::RawFreshness) -> Result<FreshnessPolicy, String> {
    let duration = |field: &str, text: &str| {
        humantime::parse_duration(text).map_err(|e| {
            format!(
                "{field} `{}` is not a duration like 30m or 2h: {e}",
                opflow_protocol::text::cut(text, 64)
            )
        })
    };
    match (&raw.max_age, &raw.deadline) {
        (Some(max_age), None) => {
            if raw.tz.is_some() {
                return Err("`tz` goes with `deadline`, not `max_age`".into());
            }
            let warn_after = raw.warn_after.as_deref().map(|w| duration("warn_after", w)).transpose()?;
            FreshnessPolicy::max_age(duration("max_age", max_age)?, warn_after)
        }
        (None, Some(deadline)) => {
            if raw.warn_after.is_some() {
                return Err("`warn_after` goes with `max_age`; a deadline warns from its last tick".into());
            }
            FreshnessPolicy::deadline(deadline, raw.tz.as_deref())
        }
        (Some(_), Some(_)) => Err("give `max_age` or `deadline`, not both".into()),
        (None, None) => Err("give `max_age` (e.g. `{max_age: 2h}`) or `deadline` (a cron expression)".into()),
    }
}

impl fmt::Display for FreshnessPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let human = |secs: u64| humantime::format_duration(Duration::from_secs(secs));
        match self {
            FreshnessPolicy::MaxAge { max_age_secs, warn_after_secs } => {
                write!(f, "max_age {}, warn after {}", human(*max_age_secs), human(*warn_after_secs))
            }
            FreshnessPolicy::Deadline { cron, tz } => write!(f, "deadline `{cron}` ({tz})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 6, h, m, 0).unwrap()
    }

    #[test]
    fn max_age_warns_from_three_quarters_and_is_stale_past_it() {
        let policy = FreshnessPolicy::max_age(Duration::from_secs(2 * 3600), None).unwrap();
        let t = policy.thresholds(at(12, 0)).unwrap();
        assert_eq!(t.of(at(11, 0)), Freshness::Fresh);
        assert_eq!(t.of(at(10, 29)), Freshness::Warn);
        assert_eq!(t.of(at(10, 0)), Freshness::Warn);
        assert_eq!(t.of(at(9, 59)), Freshness::Stale);
        let explicit =
            FreshnessPolicy::max_age(Duration::from_secs(3600), Some(Duration::from_secs(60))).unwrap();
        assert_eq!(explicit.thresholds(at(12, 0)).unwrap().of(at(11, 58)), Freshness::Warn);
    }

    #[test]
    fn a_bad_max_age_or_warn_after_is_refused_saying_why() {
        let e = FreshnessPolicy::max_age(Duration::ZERO, None).unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        let e = FreshnessPolicy::max_age(Duration::from_secs(60), Some(Duration::from_secs(61))).unwrap_err();
        assert!(e.contains("longer than max_age"), "{e}");
    }

    #[test]
    fn a_deadline_warns_until_the_period_materializes_it_and_is_stale_once_missed() {
        // Due every day at 06:00: at 12:00 the last tick was 06:00 today, the one before it
        // 06:00 yesterday.
        let policy = FreshnessPolicy::deadline("0 6 * * *", None).unwrap();
        let t = policy.thresholds(at(12, 0)).unwrap();
        assert_eq!(t.of(at(7, 0)), Freshness::Fresh);
        assert_eq!(t.of(at(6, 0)), Freshness::Fresh);
        assert_eq!(t.of(at(5, 59)), Freshness::Warn);
        assert_eq!(
            t.of(at(0, 0) - chrono::Duration::hours(18) - chrono::Duration::seconds(1)),
            Freshness::Stale
        );
        // In a zone: 06:00 in Paris is 05:00 UTC in December.
        let paris = FreshnessPolicy::deadline("0 6 * * *", Some("Europe/Paris")).unwrap();
        assert_eq!(paris.thresholds(at(12, 0)).unwrap().warn_before, at(5, 0));
        assert!(FreshnessPolicy::deadline("0 6 * *", None).is_err());
        assert!(FreshnessPolicy::deadline("0 6 * * *", Some("Mars/Olympus")).is_err());
    }

    #[test]
    fn a_policy_is_stored_as_json_and_read_back() {
        for policy in [
            FreshnessPolicy::max_age(Duration::from_secs(7200), None).unwrap(),
            FreshnessPolicy::deadline("*/5 * * * *", Some("UTC")).unwrap(),
        ] {
            let json = serde_json::to_value(&policy).unwrap();
            assert_eq!(serde_json::from_value::<FreshnessPolicy>(json).unwrap(), policy);
        }
        assert_eq!(
            FreshnessPolicy::max_age(Duration::from_secs(7200), None).unwrap().to_string(),
            "max_age 2h, warn after 1h 30m"
        );
    }
}
