//! `/v1/schedules[/…]`: plans that run themselves on a cron, or on a change in the catalog
//! (`on: stale`, `on: upstream_materialized`). Adding one compiles its plan
//! (so a plan that would not run is refused now, not at its first tick); the leader's
//! scheduler submits its ticks. A schedule is its owner's: another team's token may read it
//! but not pause, resume or remove it (an admin may).

use std::path::Path as FilePath;

use axum::{
    Extension, Json,
    extract::{Path, State, rejection::JsonRejection},
    http::StatusCode,
};
use chrono::Utc;
use opflow_api_model::{
    AddScheduleRequest, BackfillRequest, BackfillView, ErrorBody, Page, ScheduleDetail, ScheduleView,
    TickView,
};

use super::{auth::Caller, error::ApiError, state::ApiState};
use crate::{
    schedules::{
        self, DEFAULT_CATCH_UP, DEFAULT_DEBOUNCE, MAX_CATCH_UP, MAX_DEBOUNCE, Overlap, Timing, Trigger,
    },
    store::{
        schedules::{BackfillRow, NewSchedule, ScheduleRow},
        tokens::Scope,
    },
};

/// Decided ticks `GET /v1/schedules/{name}` shows.
const TICKS_SHOWN: u32 = 20;
/// Upcoming ticks it shows.
const UPCOMING_SHOWN: usize = 5;

fn view(row: ScheduleRow) -> ScheduleView {
    ScheduleView {
        name: row.name,
        plan: row.plan_name,
        plan_file: row.plan_file,
        cron: row.cron,
        on: Trigger::from_stored(&row.trigger).ok().and_then(Trigger::on).map(str::to_owned),
        missing: row.missing,
        debounce_secs: row.debounce_secs,
        tz: row.tz,
        overlap: row.overlap,
        catch_up_secs: row.catch_up_secs,
        partition_of_tick: row.partition_of_tick,
        owner: row.owner,
        priority: row.priority.and_then(|p| u8::try_from(p).ok()),
        paused: row.paused,
        next_tick_at: row.next_tick_at,
        created_at: row.created_at,
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::NotFound(format!(
        "no schedule `{}`; `opflow schedules list` lists them",
        opflow_protocol::text::cut(name, 64)
    ))
}

#[utoipa::path(post, path = "/v1/schedules", operation_id = "add_schedule", tag = "schedules", request_body = AddScheduleRequest,
    responses((status = 201, description = "The schedule", body = ScheduleView), (status = 400, description = "A malformed request: a bad name, cron, time zone, overlap or catch-up", body = ErrorBody),
        (status = 409, description = "A schedule of that name exists", body = ErrorBody), (status = 422, description = "The plan is invalid", body = ErrorBody)))]
/// `POST /v1/schedules`: 201 with the schedule; its first tick is the first after now.
pub async fn add(
    State(state): State<ApiState>,
    caller: Option<Extension<Caller>>,
    body: Result<Json<AddScheduleRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<ScheduleView>), ApiError> {
    let Json(request) = body.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    schedules::check_name(&request.name).map_err(ApiError::BadRequest)?;
    let (trigger, cron) = match (request.on.as_deref(), request.cron.as_deref()) {
        (None, Some(cron)) => (Trigger::Cron, cron),
        (Some(on), None) => (Trigger::from_on(on).map_err(ApiError::BadRequest)?, "* * * * *"),
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest("give `cron` or `on`, not both".into()));
        }
        (None, None) => {
            return Err(ApiError::BadRequest(
                "give `cron` (a cron expression) or `on` (`stale` or `upstream_materialized`)".into(),
            ));
        }
    };
    // A triggered schedule keeps a time zone for its partitions' dates, not a cron.
    let timing = Timing::parse(cron, request.tz.as_deref()).map_err(ApiError::BadRequest)?;
    let debounce = match (request.debounce.as_deref(), trigger) {
        (None, _) => DEFAULT_DEBOUNCE,
        (Some(_), Trigger::Cron) => {
            return Err(ApiError::BadRequest(
                "`debounce` goes with `on`; a cron schedule runs at its ticks".into(),
            ));
        }
        (Some(text), _) => humantime::parse_duration(text).map_err(|e| {
            ApiError::BadRequest(format!(
                "`debounce` `{}`: {e}; write a duration (`30s`, `5m`)",
                opflow_protocol::text::cut(text, 64)
            ))
        })?,
    };
    if debounce > MAX_DEBOUNCE {
        return Err(ApiError::BadRequest("`debounce` is at most 24 hours".into()));
    }
    if trigger != Trigger::Cron && request.partition_of_tick {
        return Err(ApiError::BadRequest("`partition_of_tick` needs a cron: a trigger has no tick".into()));
    }
    let overlap: Overlap = match request.overlap.as_deref() {
        None => Overlap::Skip,
        Some(text) => text.parse().map_err(ApiError::BadRequest)?,
    };
    let catch_up = match request.catch_up.as_deref() {
        None => DEFAULT_CATCH_UP,
        Some(text) => humantime::parse_duration(text).map_err(|e| {
            ApiError::BadRequest(format!(
                "`catch_up` `{}`: {e}; write a duration (`6h`, `30m`)",
                opflow_protocol::text::cut(text, 64)
            ))
        })?,
    };
    if catch_up > MAX_CATCH_UP {
        return Err(ApiError::BadRequest("`catch_up` is at most 366 days".into()));
    }
    if let Some(priority) = request.priority
        && !(1..=crate::plan::MAX_PRIORITY).contains(&priority)
    {
        return Err(ApiError::BadRequest(format!(
            "`priority` is {priority}; use 1 to {}",
            crate::plan::MAX_PRIORITY
        )));
    }
    let file = request.file.as_deref().unwrap_or("schedule");
    if file.len() > crate::plan::MAX_QUOTED_NAME_BYTES {
        return Err(ApiError::BadRequest(format!(
            "`file` is {} bytes, over the limit of {}",
            file.len(),
            crate::plan::MAX_QUOTED_NAME_BYTES
        )));
    }
    // Refused now if it would not run at its first tick.
    let compiled = crate::submit::compile(&state.store, &request.plan, FilePath::new(file)).await?;
    let owner = caller.as_ref().map_or(crate::store::runs::DEFAULT_OWNER, |Extension(caller)| caller.owner());
    let new = NewSchedule {
        name: &request.name,
        plan_name: &compiled.name,
        plan_file: file,
        plan_source: &request.plan,
        cron: request.cron.as_deref(),
        trigger: trigger.as_str(),
        missing: request.missing || trigger != Trigger::Cron,
        debounce_secs: debounce.as_secs() as i64,
        tz: timing.tz_name(),
        overlap: overlap.as_str(),
        catch_up_secs: catch_up.as_secs() as i64,
        partition_of_tick: request.partition_of_tick,
        owner,
        priority: request.priority.map(i16::from),
        next_tick_at: if trigger == Trigger::Cron { timing.next_after(Utc::now()) } else { None },
    };
    if !state.store.schedules().add(&new).await? {
        return Err(ApiError::Conflict(format!(
            "a schedule named `{}` exists; remove it first (`opflow schedules remove {}`) or pick another name",
            request.name, request.name
        )));
    }
    let row = state.store.schedules().get(&request.name).await?.ok_or_else(|| not_found(&request.name))?;
    Ok((StatusCode::CREATED, Json(view(row))))
}

#[utoipa::path(get, path = "/v1/schedules", operation_id = "list_schedules", tag = "schedules",
    responses((status = 200, description = "Every schedule, by name", body = Page<ScheduleView>)))]
/// `GET /v1/schedules`.
pub async fn list(State(state): State<ApiState>) -> Result<Json<Page<ScheduleView>>, ApiError> {
    let items = state.store.schedules().list().await?.into_iter().map(view).collect();
    Ok(Json(Page { items, next_cursor: None }))
}

#[utoipa::path(get, path = "/v1/schedules/{name}", operation_id = "get_schedule", tag = "schedules",
    params(("name" = String, Path, description = "The schedule's name")),
    responses((status = 200, body = ScheduleDetail), (status = 404, description = "No such schedule", body = ErrorBody)))]
/// `GET /v1/schedules/{name}`: the schedule, its next ticks, its latest decided ticks.
pub async fn one(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<ScheduleDetail>, ApiError> {
    let row = state.store.schedules().get(&name).await?.ok_or_else(|| not_found(&name))?;
    let timing = row.cron.as_deref().map(|cron| Timing::parse(cron, Some(&row.tz)));
    let upcoming = match (timing.unwrap_or_else(|| Err(String::new())), row.next_tick_at) {
        (Ok(timing), Some(next)) if !row.paused => {
            let mut ticks = vec![next];
            ticks.extend(timing.upcoming(next, UPCOMING_SHOWN - 1));
            ticks
        }
        _ => Vec::new(),
    };
    let ticks = state
        .store
        .schedules()
        .ticks(&name, TICKS_SHOWN)
        .await?
        .into_iter()
        .map(|t| TickView {
            at: t.nominal_at,
            until: t.last_at,
            outcome: t.outcome,
            run_id: t.run_id,
            reason: t.reason,
            decided_at: t.decided_at,
        })
        .collect();
    let backfills = state.store.schedules().backfills(&name).await?.into_iter().map(backfill_view).collect();
    Ok(Json(ScheduleDetail { schedule: view(row), upcoming, ticks, backfills }))
}

/// The schedule `name`, if the caller may change it: its owner's tokens, or an admin's.
async fn changeable(state: &ApiState, caller: Option<&Caller>, name: &str) -> Result<ScheduleRow, ApiError> {
    let row = state.store.schedules().get(name).await?.ok_or_else(|| not_found(name))?;
    if let Some(caller) = caller
        && caller.scope < Scope::Admin
        && caller.owner() != row.owner
    {
        return Err(ApiError::Forbidden(format!(
            "schedule `{name}` is `{}`'s; token `{}` submits for `{}` (an admin may change any schedule)",
            row.owner,
            caller.name,
            caller.owner()
        )));
    }
    Ok(row)
}

#[utoipa::path(post, path = "/v1/schedules/{name}/pause", operation_id = "pause_schedule", tag = "schedules",
    params(("name" = String, Path, description = "The schedule's name")),
    responses((status = 200, body = ScheduleView), (status = 403, description = "Another team's schedule", body = ErrorBody), (status = 404, description = "No such schedule", body = ErrorBody)))]
/// `POST /v1/schedules/{name}/pause`: no tick is decided until it is resumed.
pub async fn pause(
    State(state): State<ApiState>,
    caller: Option<Extension<Caller>>,
    Path(name): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    changeable(&state, caller.as_ref().map(|Extension(c)| c), &name).await?;
    state.store.schedules().pause(&name).await?;
    let row = state.store.schedules().get(&name).await?.ok_or_else(|| not_found(&name))?;
    Ok(Json(view(row)))
}

#[utoipa::path(post, path = "/v1/schedules/{name}/resume", operation_id = "resume_schedule", tag = "schedules",
    params(("name" = String, Path, description = "The schedule's name")),
    responses((status = 200, body = ScheduleView), (status = 403, description = "Another team's schedule", body = ErrorBody), (status = 404, description = "No such schedule", body = ErrorBody)))]
/// `POST /v1/schedules/{name}/resume`: from the first tick after now; the paused ticks are
/// not run.
pub async fn resume(
    State(state): State<ApiState>,
    caller: Option<Extension<Caller>>,
    Path(name): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    let row = changeable(&state, caller.as_ref().map(|Extension(c)| c), &name).await?;
    let next = row
        .cron
        .as_deref()
        .and_then(|cron| Timing::parse(cron, Some(&row.tz)).ok())
        .and_then(|t| t.next_after(Utc::now()));
    state.store.schedules().resume(&name, next).await?;
    let row = state.store.schedules().get(&name).await?.ok_or_else(|| not_found(&name))?;
    Ok(Json(view(row)))
}

#[utoipa::path(delete, path = "/v1/schedules/{name}", operation_id = "remove_schedule", tag = "schedules",
    params(("name" = String, Path, description = "The schedule's name")),
    responses((status = 204, description = "Removed with its ticks; its runs stay"), (status = 403, description = "Another team's schedule", body = ErrorBody), (status = 404, description = "No such schedule", body = ErrorBody)))]
/// `DELETE /v1/schedules/{name}`: 204; its runs stay.
pub async fn remove(
    State(state): State<ApiState>,
    caller: Option<Extension<Caller>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    changeable(&state, caller.as_ref().map(|Extension(c)| c), &name).await?;
    if state.store.schedules().remove(&name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(&name))
    }
}

fn backfill_view(row: BackfillRow) -> BackfillView {
    BackfillView {
        id: row.id,
        schedule: row.schedule,
        from: row.from_at,
        to: row.to_at,
        next_at: row.next_at,
        max_in_flight: row.max_in_flight,
        submitted: row.submitted,
        created_at: row.created_at,
        done_at: row.done_at,
    }
}

/// A moment of a backfill's range: RFC 3339, or a date (its midnight, UTC).
fn moment(name: &str, text: &str) -> Result<chrono::DateTime<Utc>, ApiError> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(date.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    Err(ApiError::BadRequest(format!(
        "`{name}` `{}` is neither a time (`2026-01-01T00:00:00Z`) nor a date (`2026-01-01`)",
        opflow_protocol::text::cut(text, 64)
    )))
}

/// The most runs of one backfill in flight at once.
const MAX_BACKFILL_IN_FLIGHT: u32 = 1_000;
const DEFAULT_BACKFILL_IN_FLIGHT: u32 = 4;

#[utoipa::path(post, path = "/v1/schedules/{name}/backfill", operation_id = "backfill_schedule", tag = "schedules",
    params(("name" = String, Path, description = "The schedule's name")), request_body = BackfillRequest,
    responses((status = 201, description = "The backfill; its ticks are submitted a few at a time", body = BackfillView),
        (status = 400, description = "A bad range or limit", body = ErrorBody), (status = 403, description = "Another team's schedule", body = ErrorBody),
        (status = 404, description = "No such schedule", body = ErrorBody)))]
/// `POST /v1/schedules/{name}/backfill`: submits the schedule's ticks over a past range,
/// at most `max_in_flight` runs at once, beside its own ticks and other backfills. A tick
/// the schedule ran already is found by its key, not run again.
pub async fn backfill(
    State(state): State<ApiState>,
    caller: Option<Extension<Caller>>,
    Path(name): Path<String>,
    body: Result<Json<BackfillRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<BackfillView>), ApiError> {
    let Json(request) = body.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let row = changeable(&state, caller.as_ref().map(|Extension(c)| c), &name).await?;
    let (from, to) = (moment("from", &request.from)?, moment("to", &request.to)?);
    if from > to {
        return Err(ApiError::BadRequest("`from` is after `to`".into()));
    }
    if to > Utc::now() {
        return Err(ApiError::BadRequest(
            "`to` is in the future; a backfill runs past ticks (the schedule runs the coming ones)".into(),
        ));
    }
    let max_in_flight = request.max_in_flight.unwrap_or(DEFAULT_BACKFILL_IN_FLIGHT);
    if !(1..=MAX_BACKFILL_IN_FLIGHT).contains(&max_in_flight) {
        return Err(ApiError::BadRequest(format!("`max_in_flight` is 1 to {MAX_BACKFILL_IN_FLIGHT}")));
    }
    let Some(cron) = row.cron.as_deref() else {
        return Err(ApiError::BadRequest(format!(
            "schedule `{name}` runs on a trigger, not a cron: it has no ticks to backfill; \
             `opflow run --missing` runs what its plan lacks"
        )));
    };
    let timing = Timing::parse(cron, Some(&row.tz)).map_err(ApiError::BadRequest)?;
    let Some(first) = timing.next_from(from).filter(|first| *first <= to) else {
        return Err(ApiError::BadRequest(format!("schedule `{name}` has no tick from {from} to {to}")));
    };
    let added = state.store.schedules().add_backfill(&name, from, to, first, max_in_flight as i32).await?;
    Ok((StatusCode::CREATED, Json(backfill_view(added))))
}
