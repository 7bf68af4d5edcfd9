//! The administrator's page (admin scope): API tokens (make one, shown once; revoke one),
//! webhook subscriptions (add one, its secret shown once; remove one) and the latest
//! deliveries, a failed one sent again with a click. What `opflow tokens` and `opflow
//! webhooks` do, through the same store and the API's own webhook handlers.

use axum::{
    Extension, Json,
    body::Bytes,
    extract::{Path, State},
    response::{IntoResponse, Redirect, Response},
};
use maud::{Markup, html};
use opflow_api_model::{AddWebhookRequest, DeliveriesQuery};

use super::{
    page::{self, PageError, Section, status_label},
    session::Viewer,
};
use crate::{
    api::{self, error::ApiError, state::ApiState},
    store::tokens::Scope,
    webhooks::EVENTS,
};

/// Deliveries listed, newest first.
const DELIVERIES_SHOWN: u32 = 50;

/// A form's fields, in order, repeated names kept (the events of a subscription).
fn fields(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.trim().to_owned())).collect()
}

fn one<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
}

/// `GET /admin`.
pub async fn show(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
) -> Result<Response, PageError> {
    viewer.require(Scope::Admin, "the administration page")?;
    let tokens = state.store.tokens().list().await?;
    let Json(webhooks) = api::webhooks::list(State(state.clone())).await?;
    let query = DeliveriesQuery { failed: false, limit: Some(DELIVERIES_SHOWN), cursor: None };
    let Json(deliveries) =
        api::webhooks::deliveries(State(state.clone()), Ok(axum::extract::Query(query))).await?;
    let body = html! {
        h1 { "Administration" }
        @if !state.auth_required {
            p class="notice" { "This API needs no token here (the setting " code { "api_auth" } "), so tokens are not asked for; they still work for the API." }
        }
        section aria-labelledby="tokens-heading" {
            h2 id="tokens-heading" { "API tokens" }
            @if tokens.is_empty() {
                p class="none" { "No tokens." }
            } @else {
                table {
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Scope" } th scope="col" { "Team" }
                        th scope="col" { "Created" } th scope="col" { "Last used" } th scope="col" { "" }
                    } }
                    tbody {
                        @for token in &tokens {
                            tr data-token=(token.name) {
                                th scope="row" { (token.name) }
                                td { (token.scope.as_str()) }
                                td { (token.team.as_deref().unwrap_or("—")) }
                                td { (page::time(Some(token.created_at))) }
                                td { (page::time(token.last_used_at)) }
                                td {
                                    @if let Some(at) = token.revoked_at {
                                        "revoked " (page::time(Some(at)))
                                    } @else {
                                        form method="post" action={ "/admin/tokens/" (encode(&token.name)) "/revoke" } {
                                            button type="submit" class="danger" { "Revoke" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            form class="filters" method="post" action="/admin/tokens" aria-label="Make a token" {
                label { "Name" input type="text" name="name" required maxlength="64" size="16"; }
                label { "Scope"
                    select name="scope" {
                        option value="read" { "read" } option value="submit" { "submit" } option value="admin" { "admin" }
                    }
                }
                label { "Team (optional)" input type="text" name="team" maxlength="64" size="14"; }
                button type="submit" { "Make a token" }
            }
        }
        section aria-labelledby="webhooks-heading" {
            h2 id="webhooks-heading" { "Webhooks" }
            @if webhooks.items.is_empty() {
                p class="none" { "No subscriptions." }
            } @else {
                table {
                    thead { tr { th scope="col" { "URL" } th scope="col" { "Events" } th scope="col" { "Since" } th scope="col" { "" } } }
                    tbody {
                        @for hook in &webhooks.items {
                            tr {
                                td class="mono" { (page::cut(&hook.url, 80)) }
                                td { (hook.events.join(", ")) }
                                td { (page::time(Some(hook.created_at))) }
                                td {
                                    form method="post" action={ "/admin/webhooks/" (hook.id) "/remove" } {
                                        button type="submit" class="danger" { "Remove" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            form class="filters" method="post" action="/admin/webhooks" aria-label="Subscribe a URL" {
                label { "URL" input type="url" name="url" required size="40" placeholder="https://ci.example.com/opflow"; }
                fieldset {
                    legend { "Events" }
                    @for event in EVENTS {
                        label { input type="checkbox" name="events" value=(event) checked[event.starts_with("run.")]; " " (event) }
                    }
                }
                button type="submit" { "Subscribe" }
            }
        }
        section aria-labelledby="deliveries-heading" {
            h2 id="deliveries-heading" { "Deliveries" }
            (deliveries_table(&deliveries.items, true))
        }
    };
    Ok(page::shell("Administration", Section::Admin, viewer.caller(), body))
}

fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Deliveries as a table; with `redeliver`, a failed one has a button to send it again.
pub fn deliveries_table(deliveries: &[opflow_api_model::DeliveryView], redeliver: bool) -> Markup {
    html! {
        @if deliveries.is_empty() {
            p class="none" { "None." }
        } @else {
            table {
                thead { tr {
                    th scope="col" { "Event" } th scope="col" { "Run" } th scope="col" { "URL" } th scope="col" { "Status" }
                    th scope="col" class="num" { "Attempts" } th scope="col" { "Last answer" } th scope="col" { "Created" }
                    @if redeliver { th scope="col" { "" } }
                } }
                tbody {
                    @for d in deliveries {
                        tr {
                            td { (d.event) }
                            td { a href={ "/runs/" (d.run_id) } class="mono" { (d.run_id.to_string().get(..8).unwrap_or_default()) } }
                            td class="mono" { (page::cut(&d.url, 60)) }
                            td { (status_label(&d.status)) }
                            td class="num" { (d.attempts) }
                            td {
                                @if let Some(code) = d.last_http_status { "HTTP " (code) " " }
                                @if let Some(error) = &d.last_error { (page::cut(error, 80)) }
                            }
                            td { (page::time(Some(d.created_at))) }
                            @if redeliver {
                                td {
                                    @if d.status == "failed" {
                                        form method="post" action={ "/admin/deliveries/" (d.id) "/redeliver" } {
                                            button type="submit" { "Send again" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A page showing a secret once, with where to go next.
fn shown_once(viewer: &Viewer, title: &str, what: Markup, secret: &str) -> Response {
    let body = html! {
        h1 { (title) }
        (what)
        p { "It is shown only now; keep it safe:" }
        pre class="mono" id="secret" { (secret) }
        p { a href="/admin" { "Back to the administration page" } }
    };
    page::shell(title, Section::Admin, viewer.caller(), body)
}

/// `POST /admin/tokens`: makes a token and shows it once.
pub async fn create_token(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
    body: Bytes,
) -> Result<Response, PageError> {
    viewer.require(Scope::Admin, "making a token")?;
    let fields = fields(&body);
    let bad = |m: String| PageError(ApiError::BadRequest(m));
    let name = one(&fields, "name").ok_or_else(|| bad("a token needs a name".into()))?;
    crate::submit::check_owner(name)
        .map_err(|why| bad(format!("token name `{}` {why}", page::cut_text(name, 64))))?;
    let team = one(&fields, "team");
    if let Some(team) = team {
        crate::submit::check_owner(team)
            .map_err(|why| bad(format!("team `{}` {why}", page::cut_text(team, 64))))?;
    }
    let scope = match one(&fields, "scope") {
        Some("read") => Scope::Read,
        Some("submit") => Scope::Submit,
        Some("admin") => Scope::Admin,
        _ => return Err(bad("the scope is read, submit or admin".into())),
    };
    let Some(token) = state.store.tokens().create(name, scope, team).await? else {
        return Err(PageError(ApiError::Conflict(format!(
            "a token named `{name}` exists; pick another name, or revoke it first"
        ))));
    };
    let what = html! {
        p { "Token " strong { (name) } " with scope " (scope.as_str()) ", for team " (team.unwrap_or(name)) "." }
    };
    Ok(shown_once(&viewer, "Token made", what, &token))
}

/// `POST /admin/tokens/{name}/revoke`.
pub async fn revoke_token(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
) -> Result<Response, PageError> {
    viewer.require(Scope::Admin, "revoking a token")?;
    if !state.store.tokens().revoke(&name).await? {
        return Err(PageError(ApiError::NotFound(format!(
            "no live token named `{}`",
            page::cut_text(&name, 64)
        ))));
    }
    Ok(Redirect::to("/admin").into_response())
}

/// `POST /admin/webhooks`: subscribes a URL and shows its secret once.
pub async fn add_webhook(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
    body: Bytes,
) -> Result<Response, PageError> {
    viewer.require(Scope::Admin, "subscribing a webhook")?;
    let fields = fields(&body);
    let url = one(&fields, "url").unwrap_or_default().to_owned();
    let events = fields.iter().filter(|(k, _)| k == "events").map(|(_, v)| v.clone()).collect();
    let request = AddWebhookRequest { url, events, secret: None };
    let (_, Json(created)) = api::webhooks::add(State(state), Ok(Json(request))).await?;
    let what = html! {
        p { "Subscribed " code { (created.webhook.url) } " to " (created.webhook.events.join(", ")) ". Deliveries are signed (Standard Webhooks) with this secret." }
    };
    Ok(shown_once(&viewer, "Webhook subscribed", what, &created.secret))
}

/// `POST /admin/webhooks/{id}/remove`.
pub async fn remove_webhook(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    viewer.require(Scope::Admin, "removing a webhook")?;
    api::webhooks::remove(State(state), Path(id)).await?;
    Ok(Redirect::to("/admin").into_response())
}

/// `POST /admin/deliveries/{id}/redeliver`.
pub async fn redeliver(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    viewer.require(Scope::Admin, "sending a delivery again")?;
    let _queued = api::webhooks::redeliver(State(state), Path(id)).await?;
    Ok(Redirect::to("/admin#deliveries-heading").into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_keeps_repeated_fields_and_drops_empty_ones() {
        let f = fields(b"url=https%3A%2F%2Fx.example%2Fh&events=run.failed&events=check.failed&team=+");
        assert_eq!(one(&f, "url"), Some("https://x.example/h"));
        assert_eq!(one(&f, "team"), None);
        let events: Vec<&str> = f.iter().filter(|(k, _)| k == "events").map(|(_, v)| v.as_str()).collect();
        assert_eq!(events, ["run.failed", "check.failed"]);
    }
}
