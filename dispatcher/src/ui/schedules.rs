//! The schedules pages: `/schedules` (each schedule: when it runs, its state, its next
//! tick, its latest decided tick) and `/schedules/{name}` (its next ticks, its decided ticks
//! with their runs or why none, its backfills), read through the API's handlers.

use axum::{
    Extension,
    extract::{Path, State},
    response::Response,
};
use maud::{Markup, html};
use opflow_api_model::{ScheduleView, TickView};

use super::{
    page::{self, PageError, Section, status_label},
    session::Viewer,
};
use crate::api::{self, state::ApiState};

fn schedule_href(name: &str) -> String {
    format!("/schedules/{}", percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC))
}

/// When a schedule runs, in words.
fn when(s: &ScheduleView) -> String {
    match (&s.cron, &s.on) {
        (Some(cron), _) => format!("{cron} ({})", s.tz),
        (None, Some(on)) => format!(
            "on {on}, at most once per {}",
            humantime::format_duration(std::time::Duration::from_secs(s.debounce_secs.max(0) as u64))
        ),
        (None, None) => "—".into(),
    }
}

fn state_label(s: &ScheduleView) -> Markup {
    status_label(if s.paused { "paused" } else { "active" })
}

/// `GET /schedules`.
pub async fn list(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
) -> Result<Response, PageError> {
    let axum::Json(schedules) = api::schedules::list(State(state)).await?;
    let body = html! {
        h1 { "Schedules" }
        @if schedules.items.is_empty() {
            p class="none" { "No schedule yet: " code { "opflow schedules add <name> <plan.yaml> --cron \"0 * * * *\"" } "." }
        } @else {
            table {
                thead { tr {
                    th scope="col" { "Schedule" } th scope="col" { "Plan" } th scope="col" { "When" }
                    th scope="col" { "State" } th scope="col" { "Next tick" } th scope="col" { "Owner" }
                } }
                tbody {
                    @for s in &schedules.items {
                        tr data-schedule-name=(s.name) {
                            th scope="row" { a href=(schedule_href(&s.name)) { (s.name) } }
                            td { (s.plan) }
                            td class="mono" { (when(s)) @if s.missing { " · only what is missing or stale" } }
                            td { (state_label(s)) }
                            td { (page::time(s.next_tick_at)) }
                            td { (s.owner) }
                        }
                    }
                }
            }
        }
    };
    Ok(page::shell("Schedules", Section::Schedules, viewer.caller(), body))
}

fn tick_row(tick: &TickView) -> Markup {
    html! {
        tr data-tick-outcome=(tick.outcome) {
            td { (page::time(Some(tick.at))) @if let Some(until) = tick.until { " to " (page::time(Some(until))) } }
            td { (status_label(&tick.outcome)) }
            td {
                @if let Some(run) = tick.run_id { a class="mono" href={ "/runs/" (run) } { (run) } } @else { "—" }
            }
            td { (page::cut(tick.reason.as_deref().unwrap_or(""), 200)) }
        }
    }
}

/// `GET /schedules/{name}`.
pub async fn show(
    State(state): State<ApiState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
) -> Result<Response, PageError> {
    let axum::Json(detail) = api::schedules::one(State(state), Path(name)).await?;
    let s = &detail.schedule;
    let body = html! {
        p { a href="/schedules" { "← Schedules" } }
        h1 { span { (s.name) } }
        section class="panel" aria-label="About this schedule" {
            dl class="facts" {
                dt { "Plan" } dd { a href={ "/?plan=" (url::form_urlencoded::byte_serialize(s.plan.as_bytes()).collect::<String>()) } { (s.plan) } " (" (s.plan_file) ")" }
                dt { "When" } dd class="mono" { (when(s)) }
                dt { "State" } dd { (state_label(s)) }
                dt { "Overlap" } dd { (s.overlap) }
                dt { "Runs" } dd { @if s.missing { "only what is missing, failed, changed or stale (--missing)" } @else { "the whole plan" } }
                dt { "Owner" } dd { (s.owner) }
            }
        }
        @if !detail.upcoming.is_empty() {
            section aria-labelledby="upcoming-heading" {
                h2 id="upcoming-heading" { "Next ticks" }
                ul { @for at in &detail.upcoming { li { (page::time(Some(*at))) } } }
            }
        }
        section aria-labelledby="ticks-heading" {
            h2 id="ticks-heading" { "Decided" }
            @if detail.ticks.is_empty() {
                p class="none" { "Nothing decided yet." }
            } @else {
                table {
                    thead { tr {
                        th scope="col" { "Tick" } th scope="col" { "Outcome" } th scope="col" { "Run" } th scope="col" { "Why" }
                    } }
                    tbody { @for tick in &detail.ticks { (tick_row(tick)) } }
                }
            }
        }
        @if !detail.backfills.is_empty() {
            section aria-labelledby="backfills-heading" {
                h2 id="backfills-heading" { "Backfills" }
                table {
                    thead { tr {
                        th scope="col" { "From" } th scope="col" { "To" } th scope="col" class="num" { "Submitted" }
                        th scope="col" { "Next tick" } th scope="col" { "Done" }
                    } }
                    tbody {
                        @for b in &detail.backfills {
                            tr {
                                td { (page::time(Some(b.from))) } td { (page::time(Some(b.to))) }
                                td class="num" { (page::thousands(i64::from(b.submitted))) }
                                td { (page::time(b.next_at)) } td { (page::time(b.done_at)) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page::shell(&s.name, Section::Schedules, viewer.caller(), body))
}
