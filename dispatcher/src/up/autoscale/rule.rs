//! The scaling rule, pure: KEDA's RabbitMQ scaler in `QueueLength` mode with its HPA, as
//! one function of what was observed and what happened before.
//!
//! - **Activation** (0 ↔ 1): an op is active while it has more messages than
//!   `activationValue` (strictly more, as KEDA's `messages > activationValue`). A demand
//!   forecast (steps about to become ready) also wakes an op at zero, to one replica: the
//!   worker starts while the upstream step still runs.
//! - **Scaling** (1 ↔ N): `ceil(messages / value)`, within `[minReplicaCount,
//!   maxReplicaCount]`, where messages are ready **plus unacknowledged**, so a busy worker's
//!   step counts (KEDA's `protocol: http`).
//! - **Scaling up** happens at once. **Scaling down** goes to the highest demand seen over
//!   the last `cooldownPeriod`: to zero only after that long without activity (KEDA's
//!   cooldown), and from N to M ≥ 1 after the same window (the HPA's scale-down
//!   stabilization, which KEDA leaves at 300 s by default; we take it equal to the cooldown).

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use crate::store::ops::ScaleSettings;

/// What the autoscaler saw of an op.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observed {
    /// Ready plus unacknowledged messages.
    pub messages: u64,
    /// Steps about to become ready.
    pub forecast: u64,
}

/// What the rule remembers of an op between looks.
#[derive(Debug, Default)]
pub struct History {
    /// (when, the replicas that moment's demand asked for), over the last cooldown.
    demand: VecDeque<(Instant, u32)>,
}

/// A decision and why, in words for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub desired: u32,
    pub why: String,
}

/// The replicas an op should run now; see the module docs.
pub fn decide(settings: &ScaleSettings, history: &mut History, seen: Observed, now: Instant) -> Decision {
    let min = settings.min_replicas.max(0) as u32;
    let max = (settings.max_replicas.max(1) as u32).max(min);
    let value = settings.target_value.max(1) as u64;
    let activation = settings.activation_value.max(0) as u64;
    let cooldown = Duration::from_secs(settings.cooldown_secs.max(0) as u64);

    // With a minimum of one or more, the HPA scales on the messages alone: KEDA ignores
    // the activation value then.
    let active = seen.messages > activation || (min >= 1 && seen.messages > 0);
    let (asked, why_now) = if active {
        let replicas = seen.messages.div_ceil(value).min(u64::from(max)) as u32;
        (replicas, format!("{} message(s), {value} per replica", seen.messages))
    } else if seen.forecast > 0 {
        (1, format!("{} step(s) about to be ready", seen.forecast))
    } else if seen.messages > 0 {
        (0, format!("{} message(s), not over the activation value {activation}", seen.messages))
    } else {
        (0, format!("no messages (the last {}s: the cooldown)", cooldown.as_secs()))
    };

    history.demand.push_back((now, asked));
    while history.demand.front().is_some_and(|(at, _)| now.duration_since(*at) > cooldown) {
        history.demand.pop_front();
    }
    let highest = history.demand.iter().map(|(_, replicas)| *replicas).max().unwrap_or(0);
    let desired = highest.clamp(min, max);
    let why = if highest > asked {
        format!(
            "{why_now}; keeping the {highest} asked for within the last {}s (cooldown)",
            cooldown.as_secs()
        )
    } else if desired > asked {
        format!("{why_now}; minReplicaCount is {min}")
    } else {
        why_now
    };
    Decision { desired, why }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(min: i32, max: i32, value: i32, activation: i32, cooldown: i32) -> ScaleSettings {
        ScaleSettings {
            min_replicas: min,
            max_replicas: max,
            target_value: value,
            activation_value: activation,
            polling_secs: 1,
            cooldown_secs: cooldown,
            ..ScaleSettings::default()
        }
    }

    fn seen(messages: u64) -> Observed {
        Observed { messages, forecast: 0 }
    }

    #[test]
    fn replicas_are_messages_over_value_within_min_and_max() {
        let s = settings(0, 4, 5, 0, 60);
        let t = Instant::now();
        assert_eq!(decide(&s, &mut History::default(), seen(20), t).desired, 4);
        assert_eq!(decide(&s, &mut History::default(), seen(11), t).desired, 3);
        assert_eq!(decide(&s, &mut History::default(), seen(1000), t).desired, 4);
        assert_eq!(decide(&settings(2, 4, 5, 0, 60), &mut History::default(), seen(0), t).desired, 2);
    }

    #[test]
    fn activation_is_strictly_more_messages_than_the_activation_value() {
        let s = settings(0, 4, 1, 3, 60);
        let t = Instant::now();
        assert_eq!(decide(&s, &mut History::default(), seen(3), t).desired, 0);
        assert_eq!(decide(&s, &mut History::default(), seen(4), t).desired, 4);
        // With a minimum of one, activation no longer matters.
        assert_eq!(decide(&settings(1, 4, 1, 3, 60), &mut History::default(), seen(3), t).desired, 3);
    }

    #[test]
    fn it_scales_up_at_once_and_down_only_after_the_cooldown() {
        let s = settings(0, 4, 1, 0, 60);
        let t = Instant::now();
        let mut history = History::default();
        assert_eq!(decide(&s, &mut history, seen(200), t).desired, 4);
        // The queue drains: demand stays at its recent high for the cooldown.
        let drained = decide(&s, &mut history, seen(0), t + Duration::from_secs(30));
        assert_eq!(drained.desired, 4);
        assert!(drained.why.contains("cooldown"), "{}", drained.why);
        assert_eq!(decide(&s, &mut history, seen(1), t + Duration::from_secs(45)).desired, 4);
        // Past the cooldown of the burst, down to what the last minute asked for.
        assert_eq!(decide(&s, &mut history, seen(0), t + Duration::from_secs(61)).desired, 1);
        assert_eq!(decide(&s, &mut history, seen(0), t + Duration::from_secs(106)).desired, 0);
    }

    #[test]
    fn a_forecast_wakes_an_op_at_zero_to_one_replica() {
        let s = settings(0, 4, 1, 0, 60);
        let d = decide(&s, &mut History::default(), Observed { messages: 0, forecast: 12 }, Instant::now());
        assert_eq!(d.desired, 1);
        assert!(d.why.contains("12 step(s) about to be ready"), "{}", d.why);
    }

    #[test]
    fn a_zero_cooldown_follows_demand_at_once() {
        let s = settings(0, 4, 1, 0, 0);
        let t = Instant::now();
        let mut history = History::default();
        assert_eq!(decide(&s, &mut history, seen(3), t).desired, 3);
        assert_eq!(decide(&s, &mut history, seen(0), t + Duration::from_millis(1)).desired, 0);
    }
}
