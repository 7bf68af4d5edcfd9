//! The web UI, served by the dispatcher beside its API (the `ui` setting): runs with live
//! progress, the asset catalog with its lineage, the ops with their replicas, and the
//! schedules with their ticks.
//!
//! Pages are HTML made on the server ([`page`], with `maud`), which read in full without
//! JavaScript; one small script ([`static_files`]) follows a running run over
//! [`live`], a stream of the run's aggregates. Pages read through the API's own handlers,
//! so they show what the API shows and cost what it costs, one page at a time.
//!
//! - [`session`]: who is looking, with the API's tokens and scopes (a cookie after `/login`).
//! - [`runs`]: `/` (the runs), `/runs/{id}` (a run), `/runs/{id}/steps/{step}`, and the
//!   cancel and re-run actions; [`live`]: `/runs/{id}/live`.
//! - [`catalog`]: `/assets` and `/assets/{asset}`; [`ops`]: `/ops`; [`schedules`]:
//!   `/schedules` and `/schedules/{name}`; [`admin`]: `/admin` (tokens, webhooks,
//!   deliveries; admin scope).
//! - [`graph`]: a plan's or a lineage's assets drawn as SVG.

pub mod admin;
pub mod catalog;
pub mod graph;
pub mod live;
pub mod ops;
pub mod page;
pub mod runs;
pub mod schedules;
pub mod session;
pub mod static_files;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    routing::{get, post},
};

use crate::api::state::ApiState;

/// The UI's routes, to merge with the API's (`api::router`). Every page but `/login` and
/// the static files needs a viewer ([`session::require_viewer`]).
pub fn router(state: ApiState) -> Router {
    let pages = Router::new()
        .route("/", get(runs::list))
        .route("/runs/{id}", get(runs::show))
        .route("/runs/{id}/live", get(live::stream))
        .route("/runs/{id}/steps/{step}", get(runs::step))
        .route("/runs/{id}/cancel", post(runs::cancel))
        .route("/runs/{id}/rerun", post(runs::rerun))
        .route("/assets", get(catalog::list))
        .route("/assets/{asset}", get(catalog::show))
        .route("/ops", get(ops::list))
        .route("/schedules", get(schedules::list))
        .route("/schedules/{name}", get(schedules::show))
        .route("/admin", get(admin::show))
        .route("/admin/tokens", post(admin::create_token))
        .route("/admin/tokens/{name}/revoke", post(admin::revoke_token))
        .route("/admin/webhooks", post(admin::add_webhook))
        .route("/admin/webhooks/{id}/remove", post(admin::remove_webhook))
        .route("/admin/deliveries/{id}/redeliver", post(admin::redeliver))
        .route("/logout", post(session::logout))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), session::require_viewer));
    Router::new()
        .route("/login", get(session::login_form).post(session::login))
        .route(static_files::CSS_PATH, get(static_files::css))
        .route(static_files::JS_PATH, get(static_files::js))
        .route(static_files::ICON_PATH, get(static_files::icon))
        // Browsers ask for it whatever the page says.
        .route("/favicon.ico", get(static_files::icon))
        .merge(pages)
        // Forms are small: a token, a filter.
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(axum::middleware::from_fn(crate::api::params::refuse_nul))
        .with_state(state)
}

/// The largest form a page sends.
const MAX_FORM_BYTES: usize = 16 * 1024;
