//! What every page shares: the shell (head, navigation, who is signed in), the pieces
//! pages are made of (status labels, progress bars, times, pagers) and the error page. A
//! status is always written out beside its colour, so colour is never the only signal.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use opflow_api_model::StepCounts;

use crate::{
    api::{auth::Caller, error::ApiError},
    store::tokens::Scope,
};

/// The pages the navigation links to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Runs,
    Assets,
    Ops,
    Schedules,
    Admin,
    None,
}

/// Only the dispatcher's own files; inline styles for bar widths; no frames.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// A whole page: `title` in the tab, `body` in `<main>`, and who is signed in, if anyone.
pub fn shell(title: &str, section: Section, signed_in: Option<&Caller>, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · opflow" }
                link rel="stylesheet" href=(super::static_files::CSS_PATH);
                link rel="icon" type="image/svg+xml" href=(super::static_files::ICON_PATH);
                script src=(super::static_files::JS_PATH) defer {}
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header class="top" {
                    nav aria-label="Main" {
                        a class="brand" href="/" { "opflow" }
                        ul {
                            (nav_link("/", "Runs", section == Section::Runs))
                            (nav_link("/assets", "Assets", section == Section::Assets))
                            (nav_link("/ops", "Ops", section == Section::Ops))
                            (nav_link("/schedules", "Schedules", section == Section::Schedules))
                            @if signed_in.is_none_or(|caller| caller.scope >= Scope::Admin) {
                                (nav_link("/admin", "Admin", section == Section::Admin))
                            }
                        }
                    }
                    @if let Some(caller) = signed_in {
                        form class="who" method="post" action="/logout" {
                            span { "Signed in as " strong { (caller.name) } " (" (caller.scope.as_str()) ")" }
                            " "
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" { (body) }
            }
        }
    };
    respond(StatusCode::OK, markup)
}

fn nav_link(href: &str, label: &str, current: bool) -> Markup {
    html! {
        li { a href=(href) aria-current=[current.then_some("page")] { (label) } }
    }
}

/// `markup` as an HTML answer that is never cached (pages show live state) and keeps to
/// [`CONTENT_SECURITY_POLICY`].
pub fn respond(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    response
}

/// A failed page: the API's error, as a page saying what was wrong and where to go.
#[derive(Debug)]
pub struct PageError(pub ApiError);

impl From<ApiError> for PageError {
    fn from(error: ApiError) -> Self {
        Self(error)
    }
}

impl From<crate::store::StoreError> for PageError {
    fn from(error: crate::store::StoreError) -> Self {
        Self(error.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, message) = match self.0 {
            ApiError::InvalidPlan(errors) => (StatusCode::UNPROCESSABLE_ENTITY, errors.messages().join("\n")),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::PayloadTooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            ApiError::TooManyRequests(m) => (StatusCode::TOO_MANY_REQUESTS, m),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            ApiError::Internal(error) => {
                tracing::error!(%error, "page failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error; see the dispatcher's log".to_owned())
            }
        };
        error_page(status, &message)
    }
}

/// A page for a refusal or failure, without the navigation's signed-in form (the viewer
/// may be unknown here).
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let reason = status.canonical_reason().unwrap_or("Error");
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (status.as_u16()) " " (reason) " · opflow" }
                link rel="stylesheet" href=(super::static_files::CSS_PATH);
                link rel="icon" type="image/svg+xml" href=(super::static_files::ICON_PATH);
            }
            body {
                header class="top" { nav aria-label="Main" { a class="brand" href="/" { "opflow" } } }
                main id="main" {
                    h1 { (status.as_u16()) " " (reason) }
                    p class="error-message" role="alert" { (message) }
                    p { a href="/" { "Back to the runs" } }
                }
            }
        }
    };
    respond(status, markup)
}

/// The symbol written before a status, so it reads without colour.
fn symbol(status: &str) -> &'static str {
    match status {
        "succeeded" | "materialized" | "delivered" | "passed" | "done" => "✓",
        "failed" => "✗",
        "running" | "retrying" => "▶",
        "queued" | "pending" | "waiting" => "…",
        "canceled" | "skipped" => "⊘",
        "stale" | "warn" => "!",
        _ => "•",
    }
}

/// A status as a label: symbol, word and colour (`data-status` for scripts and tests).
pub fn status_label(status: &str) -> Markup {
    html! {
        span class={ "status status-" (status) } data-status=(status) {
            span aria-hidden="true" { (symbol(status)) } " " (status)
        }
    }
}

/// The statuses a bar shows, in its order, each with the counts it sums.
pub const BAR_PARTS: [&str; 6] = ["succeeded", "failed", "skipped", "canceled", "running", "queued"];

fn part_count(counts: &StepCounts, part: &str) -> i64 {
    match part {
        "succeeded" => counts.succeeded,
        "failed" => counts.failed,
        "skipped" => counts.skipped,
        "canceled" => counts.canceled,
        "running" => counts.running,
        "queued" => counts.queued + counts.retrying,
        _ => 0,
    }
}

/// Steps that finished, one way or another.
pub fn finished(counts: &StepCounts) -> i64 {
    counts.succeeded + counts.failed + counts.skipped + counts.canceled
}

/// A progress bar of step counts: one segment per status, widths in percent of `total`,
/// with the numbers written out (`aria-label`, and the text beside it the caller adds).
/// The same shape `ui.js` updates.
pub fn progress_bar(counts: &StepCounts, label: &str) -> Markup {
    let total = counts.total.max(1) as f64;
    let done = finished(counts);
    html! {
        div class="bar" role="progressbar" aria-label=(label) aria-valuemin="0"
            aria-valuemax=(counts.total) aria-valuenow=(done)
            aria-valuetext=(bar_text(counts)) {
            @for part in BAR_PARTS {
                span class={ "seg seg-" (part) } data-part=(part)
                    style=(format!("width:{:.3}%", part_count(counts, part) as f64 * 100.0 / total)) {}
            }
        }
    }
}

/// What a bar shows, in words: `812 of 1,000 finished: 800 succeeded, 12 failed; 20 running`.
pub fn bar_text(counts: &StepCounts) -> String {
    let mut parts = Vec::new();
    for part in BAR_PARTS {
        let n = part_count(counts, part);
        if n > 0 {
            parts.push(format!("{} {part}", thousands(n)));
        }
    }
    let mut text = format!("{} of {} finished", thousands(finished(counts)), thousands(counts.total));
    if !parts.is_empty() {
        text.push_str(": ");
        text.push_str(&parts.join(", "));
    }
    text
}

pub use crate::human::count as thousands;

/// A moment as UTC, in a `<time>` element whose `datetime` a script may show locally.
pub fn time(at: Option<DateTime<Utc>>) -> Markup {
    match at {
        Some(at) => html! {
            time datetime=(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)) {
                (at.format("%Y-%m-%d %H:%M:%S UTC"))
            }
        },
        None => html! { span class="none" { "—" } },
    }
}

/// A span of time for people: `850 ms`, `12.3 s`, `4 min 05 s`, `3 h 02 min`, `2 d 4 h`.
pub fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "—".to_owned();
    }
    if seconds < 1.0 {
        return format!("{:.0} ms", seconds * 1000.0);
    }
    if seconds < 60.0 {
        return format!("{seconds:.1} s");
    }
    let whole = seconds.round() as u64;
    if whole < 3_600 {
        format!("{} min {:02} s", whole / 60, whole % 60)
    } else if whole < 86_400 {
        format!("{} h {:02} min", whole / 3600, whole % 3600 / 60)
    } else {
        format!("{} d {} h", whole / 86_400, whole % 86_400 / 3600)
    }
}

/// How long between two moments, or until now for one not finished.
pub fn elapsed(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> String {
    match from {
        Some(from) => duration((to.unwrap_or_else(Utc::now) - from).num_milliseconds() as f64 / 1000.0),
        None => "—".to_owned(),
    }
}

/// Steps per second as people read it.
pub fn rate(per_second: Option<f64>) -> String {
    match per_second {
        Some(rate) if rate >= 100.0 => format!("{rate:.0}/s"),
        Some(rate) if rate >= 1.0 => format!("{rate:.1}/s"),
        Some(rate) if rate > 0.0 => format!("{:.1}/min", rate * 60.0),
        _ => "—".to_owned(),
    }
}

/// A link to the next page of a list, keeping its filters.
pub fn next_page(base: &str, filters: &[(&str, Option<String>)], cursor: Option<&str>) -> Markup {
    let Some(cursor) = cursor else { return html! {} };
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in filters {
        if let Some(value) = value {
            query.append_pair(name, value);
        }
    }
    query.append_pair("cursor", cursor);
    html! { p class="pager" { a href={ (base) "?" (query.finish()) } rel="next" { "Next page →" } } }
}

/// Text cut to `max` characters for a table cell, with the whole in its `title`.
pub fn cut(text: &str, max: usize) -> Markup {
    match text.char_indices().nth(max) {
        None => html! { (text) },
        Some((at, _)) => html! { span title=(text) { (&text[..at]) "…" } },
    }
}

/// Text cut to `max` characters, for a message that quotes what a visitor typed.
pub fn cut_text(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((at, _)) => format!("{}…", &text[..at]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_durations_read_as_people_write_them() {
        assert_eq!(duration(0.25), "250 ms");
        assert_eq!(duration(12.34), "12.3 s");
        assert_eq!(duration(245.0), "4 min 05 s");
        assert_eq!(duration(3.0 * 3600.0 + 120.0), "3 h 02 min");
        assert_eq!(duration(2.0 * 86_400.0 + 4.0 * 3600.0), "2 d 4 h");
        assert_eq!(duration(f64::NAN), "—");
        assert_eq!(rate(Some(812.4)), "812/s");
        assert_eq!(rate(Some(0.5)), "30.0/min");
        assert_eq!(rate(None), "—");
    }

    #[test]
    fn a_bar_says_in_words_what_its_colours_show() {
        let counts = StepCounts {
            total: 1_000,
            succeeded: 800,
            failed: 12,
            running: 20,
            queued: 5,
            retrying: 3,
            ..Default::default()
        };
        assert_eq!(
            bar_text(&counts),
            "812 of 1,000 finished: 800 succeeded, 12 failed, 20 running, 8 queued"
        );
        let markup = progress_bar(&counts, "run").into_string();
        assert!(markup.contains(r#"aria-valuenow="812""#), "{markup}");
        assert!(markup.contains(r#"data-part="succeeded" style="width:80.000%""#), "{markup}");
    }

    #[test]
    fn a_status_is_written_out_beside_its_colour() {
        let label = status_label("failed").into_string();
        assert!(
            label.contains("status-failed") && label.contains("✗") && label.contains(" failed"),
            "{label}"
        );
    }

    #[test]
    fn a_long_text_is_cut_with_the_whole_in_its_title() {
        assert_eq!(cut("short", 10).into_string(), "short");
        let cut = cut("ééééé", 2).into_string();
        assert_eq!(cut, r#"<span title="ééééé">éé…</span>"#);
    }
}
