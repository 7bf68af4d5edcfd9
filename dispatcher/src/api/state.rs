//! What the handlers share ([`ApiState`]), and what `/readyz` reports besides the
//! database ([`Readiness`]), which the service sets as it takes or loses the lease.

use std::sync::{Arc, Mutex};

use super::{followers::Followers, metrics::Metrics, stream_limits::StreamLimits};
use crate::store::Store;

/// What handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// On a pool of the API's own: however many requests come, they cannot take the
    /// connections that publishing steps and applying events need.
    pub store: Store,
    /// Whether `/v1/*` needs a token (the `api_auth` setting, resolved for the address).
    pub auth_required: bool,
    /// For readiness: whether this dispatcher leads, and whether its broker session is up.
    pub readiness: Readiness,
    /// Wakes the events streams when their runs get events; ends them on shutdown.
    pub followers: Followers,
    /// The `webhooks_allow_private` setting: whether webhook targets may be internal addresses.
    pub webhooks_allow_private: bool,
    /// What `/metrics` serves; shared with the parts of the service that count.
    pub metrics: Arc<Metrics>,
    /// The event streams each caller holds open, and how many it may.
    pub streams: StreamLimits,
}

/// What `/readyz` reports besides the database: set by the service as it takes or loses
/// the lease and its broker connection. Cheap to clone; clones share the state.
#[derive(Clone, Default)]
pub struct Readiness(Arc<Mutex<ReadinessState>>);

#[derive(Default)]
struct ReadinessState {
    role: Role,
    /// Whether the leader's broker session is down (why goes to the log, not here).
    broker_down: bool,
}

/// Whether this dispatcher publishes and applies (the leader) or stands by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    #[default]
    Standby,
    Leader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Standby => "standby",
            Role::Leader => "leader",
        }
    }
}

impl Readiness {
    fn with<T>(&self, f: impl FnOnce(&mut ReadinessState) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    pub fn set_role(&self, role: Role) {
        self.with(|state| {
            state.role = role;
            if role == Role::Standby {
                state.broker_down = false;
            }
        });
    }

    pub fn broker_up(&self) {
        self.with(|state| state.broker_down = false);
    }

    pub fn broker_down(&self) {
        self.with(|state| state.broker_down = true);
    }

    /// The role, and whether the broker session is down.
    pub(super) fn snapshot(&self) -> (Role, bool) {
        self.with(|state| (state.role, state.broker_down))
    }
}
