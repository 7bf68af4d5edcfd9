//! The API's OpenAPI document, generated from the handlers' own types and `#[utoipa::path]`
//! annotations, so it cannot drift from what the handlers do: served at `/openapi.json`
//! and kept in the repository as `docs/openapi.json`, which a test compares with it.

use axum::{Json, http::header, response::IntoResponse};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "opflow API",
        description = "Submit asset plans as runs, follow them live, read their outputs, cancel them; \
                       the queues' demand for autoscalers. With authentication on, every `/v1` route \
                       needs `Authorization: Bearer <token>` (`opflow tokens create`): reading needs \
                       the `read` scope, submitting and canceling `submit`, managing webhooks `admin`.",
        license(name = "Apache-2.0"),
    ),
    paths(
        super::runs::submit,
        super::runs::list,
        super::runs::status,
        super::runs::steps,
        super::runs::assets,
        super::runs::outputs,
        super::runs::cancel,
        super::events::stream,
        super::ops::list,
        super::queues::list,
        super::queues::one,
        super::assets::list,
        super::assets::one,
        super::assets::cells,
        super::assets::history,
        super::assets::lineage,
        super::assets::checks,
        super::schedules::add,
        super::schedules::list,
        super::schedules::one,
        super::schedules::pause,
        super::schedules::resume,
        super::schedules::remove,
        super::schedules::backfill,
        super::webhooks::add,
        super::webhooks::list,
        super::webhooks::remove,
        super::webhooks::deliveries,
        super::webhooks::delivery,
        super::webhooks::redeliver,
    ),
    components(schemas(opflow_api_model::RunSummary, opflow_api_model::AssetState, opflow_api_model::AssetOrder)),
    modifiers(&BearerToken),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

/// Declares the bearer token scheme the `security` requirement names.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as the repository keeps it: pretty JSON with a final newline.
pub fn document() -> String {
    let mut text = ApiDoc::openapi().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// `GET /openapi.json`.
pub async fn serve() -> impl IntoResponse {
    let value: serde_json::Value = serde_json::from_str(&document()).unwrap_or_default();
    ([(header::CACHE_CONTROL, "no-cache")], Json(value))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// `docs/openapi.json` is what the handlers serve; regenerate it with
    /// `OPFLOW_WRITE_OPENAPI=1 cargo test -p opflow-dispatcher openapi`.
    #[test]
    fn the_openapi_document_in_the_repository_is_the_one_served() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
        let generated = document();
        if std::env::var_os("OPFLOW_WRITE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let kept = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            kept == generated,
            "docs/openapi.json differs from the API's generated document; if the API change is \
             intended, regenerate it with `OPFLOW_WRITE_OPENAPI=1 cargo test -p opflow-dispatcher openapi` \
             and review the diff"
        );
    }

    /// Client generators name a method after its operationId, and OpenAPI validators refuse
    /// a document in which two operations share one.
    #[test]
    fn every_operation_has_an_id_of_its_own() {
        let document: serde_json::Value = serde_json::from_str(&super::document()).unwrap();
        let mut seen = std::collections::BTreeMap::new();
        for (path, item) in document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let id = operation["operationId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{method} {path}: no operationId"));
                if let Some(other) = seen.insert(id.to_owned(), format!("{method} {path}")) {
                    panic!("operationId `{id}` of {method} {path} is also {other}'s");
                }
            }
        }
    }

    #[test]
    fn every_route_of_the_router_is_documented() {
        let document: serde_json::Value = serde_json::from_str(&super::document()).unwrap();
        let paths = document["paths"].as_object().unwrap();
        for (path, method) in [
            ("/v1/runs", "post"),
            ("/v1/runs", "get"),
            ("/v1/runs/{id}", "get"),
            ("/v1/runs/{id}/events", "get"),
            ("/v1/runs/{id}/steps", "get"),
            ("/v1/runs/{id}/assets", "get"),
            ("/v1/runs/{id}/outputs", "get"),
            ("/v1/runs/{id}/cancel", "post"),
            ("/v1/ops", "get"),
            ("/v1/queues", "get"),
            ("/v1/queues/{queue}", "get"),
            ("/v1/webhooks", "post"),
            ("/v1/webhooks", "get"),
            ("/v1/webhooks/{id}", "delete"),
            ("/v1/webhooks/deliveries", "get"),
            ("/v1/webhooks/deliveries/{id}", "get"),
            ("/v1/webhooks/deliveries/{id}/redeliver", "post"),
        ] {
            assert!(
                paths.get(path).and_then(|p| p.get(method)).is_some(),
                "{method} {path} is not documented"
            );
        }
    }
}
