//! The HTTP API's contract: every request body, query and answer of the dispatcher's API,
//! as the handlers (`opflow-dispatcher`'s `api`) read and write them and its CLI sends and
//! reads them. One crate, so that a change to the API is made here, on purpose, and shows
//! in review as a diff of these types and of `docs/openapi.json`, generated from them.
//!
//! It depends on nothing of the dispatcher: the store's rows are converted into these types
//! at the API's edge, so the store changes without an API change.
//!
//! - [`runs`]: submitting, listing, following and canceling runs.
//! - [`assets`]: the asset catalog across runs: cells, materializations, lineage.
//! - [`ops`]: op versions and their queues' demand.
//! - [`schedules`]: plans that run themselves on a cron.
//! - [`webhooks`]: subscriptions, deliveries and a run's own notify target.
//! - [`page`]: paged lists.
//! - [`error`]: the body of every error answer.
//! - [`probes`]: what `/readyz` answers.

pub mod assets;
pub mod error;
pub mod ops;
pub mod page;
pub mod probes;
pub mod runs;
pub mod schedules;
pub mod webhooks;

pub use assets::{
    AssetSummary, CellStatus, CellView, CellsQuery, CheckView, ChecksQuery, FreshnessState, FreshnessSummary,
    HistoryQuery, Lineage, LineageDirection, LineageItem, LineageQuery, Materialization,
};
pub use error::ErrorBody;
pub use ops::{OpVersion, QueueDemand};
pub use page::{DEFAULT_PAGE, MAX_PAGE, Page, Paging};
pub use probes::ReadyStatus;
pub use runs::{
    AssetCounts, AssetInfo, AssetOrder, AssetState, AssetsQuery, CancelResponse, EVENT_KINDS, EventsQuery,
    IDEMPOTENCY_KEY, KeyWait, LeftOutAsset, OnlyCells, OutputsQuery, RunEvent, RunListItem, RunStatus,
    RunSummary, RunsQuery, StepCounts, StepFailure, StepInfo, StepOutput, StepStatus, StepsQuery,
    SubmitRequest, SubmitResponse,
};
pub use schedules::{
    AddScheduleRequest, BackfillRequest, BackfillView, ScheduleDetail, ScheduleView, TickView,
};
pub use webhooks::{
    AddWebhookRequest, AttemptView, CreatedWebhook, DeliveriesQuery, DeliveryDetail, DeliveryView,
    NotifyRequest, WebhookView,
};

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn what_the_cli_sends_is_what_the_handlers_accept() {
        let request = SubmitRequest {
            plan: "name: p".into(),
            file: Some("p.yaml".into()),
            key: None,
            notify: None,
            owner: None,
            priority: None,
            no_reuse: false,
            partitions: None,
            only: None,
        };
        let body = serde_json::to_value(&request).unwrap();
        assert_eq!(
            body,
            json!({"plan": "name: p", "file": "p.yaml"}),
            "absent fields are left out, not null"
        );
        let back: SubmitRequest = serde_json::from_value(body).unwrap();
        assert_eq!(back.file.as_deref(), Some("p.yaml"));
        let unknown = serde_json::from_value::<SubmitRequest>(json!({"plan": "x", "plans": "y"}));
        assert!(unknown.unwrap_err().to_string().contains("plans"), "a misspelt field is refused");
    }

    #[test]
    fn queries_carry_only_what_was_asked() {
        assert_eq!(serde_json::to_value(EventsQuery::default()).unwrap(), json!({}));
        let query = DeliveriesQuery { failed: false, limit: Some(50), cursor: None };
        assert_eq!(serde_json::to_value(query).unwrap(), json!({"limit": 50}));
        let query = OutputsQuery { asset: Some("var".into()), limit: None, cursor: Some("7".into()) };
        assert_eq!(serde_json::to_value(query).unwrap(), json!({"asset": "var", "cursor": "7"}));
        let page: Page<Value> = serde_json::from_value(json!({"items": [1]})).unwrap();
        assert!(page.next_cursor.is_none(), "the last page has no cursor");
    }
}
