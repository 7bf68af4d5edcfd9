//! The HTTP API's contract: every request body, query and answer of the dispatcher's API,
//! as the handlers (`opflow-dispatcher`'s `api`) read and write them and its CLI sends and
//! reads them. One crate, so that a change to the API is made here, on purpose, and shows
//! in review as a diff of these types and of `docs/openapi.json`, generated from them.
//!
//! It depends on nothing of the dispatcher: the store's rows are converted into these types
//! at the API's edge, so the store changes without an API change.
//!
//! - [`runs`]: submitting, listing, following and canceling runs.
//! - [`ops`]: op versions and their queues' demand.
//! - [`webhooks`]: subscriptions, deliveries and a run's own notify target.
//! - [`page`]: paged lists.
//! - [`error`]: the body of every error answer.
//! - [`probes`]: what `/readyz` answers.

pub mod error;
pub mod ops;
pub mod page;
pub mod probes;
pub mod runs;
pub mod webhooks;

pub use error::ErrorBody;
pub use ops::{OpVersion, QueueDemand};
pub use page::{DEFAULT_PAGE, MAX_PAGE, Page, Paging};
pub use probes::ReadyStatus;
pub use runs::{
    AssetInfo, CancelResponse, EVENT_KINDS, EventsQuery, IDEMPOTENCY_KEY, OutputsQuery, RunEvent,
    RunListItem, RunStatus, RunSummary, RunsQuery, StepCounts, StepFailure, StepInfo, StepOutput, StepStatus,
    StepsQuery, SubmitRequest, SubmitResponse,
};
pub use webhooks::{
    AddWebhookRequest, AttemptView, CreatedWebhook, DeliveriesQuery, DeliveryDetail, DeliveryView,
    NotifyRequest, WebhookView,
};
