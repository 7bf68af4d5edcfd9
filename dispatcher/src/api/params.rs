//! What requests carry besides what their bodies say, read the same way by every handler:
//! the largest body, ids in paths, and the page limit and cursor of paged lists
//! (`?limit=`, `?cursor=`); and, for every route at once, URLs without NUL characters.

use opflow_api_model::{DEFAULT_PAGE, MAX_PAGE};
use opflow_protocol::RunId;
use uuid::Uuid;

use super::error::ApiError;

/// Largest request body: a plan of a few megabytes is already a very large plan.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Refuses, with 400, a request whose path or query holds a NUL character (`%00`): no
/// name, id or cursor holds one, and PostgreSQL refuses it in a statement (a 500 before,
/// e.g. `?asset=a%00b`). One check for every route and parameter.
pub async fn refuse_nul(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let uri = request.uri();
    let holds_nul = |text: &str| text.contains('\0') || text.to_ascii_lowercase().contains("%00");
    if holds_nul(uri.path()) || uri.query().is_some_and(holds_nul) {
        return ApiError::BadRequest(
            "the URL holds a NUL character (%00), which no name, id or cursor holds; remove it".to_owned(),
        )
        .into_response();
    }
    next.run(request).await
}

/// A page's size from `?limit=`: [`DEFAULT_PAGE`] when absent, refused outside
/// 1–[`MAX_PAGE`].
pub fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n @ 1..=MAX_PAGE) => Ok(n),
        Some(n) => Err(ApiError::BadRequest(format!("limit {n} is not between 1 and {MAX_PAGE}"))),
    }
}

/// The answer to a cursor this API did not give out.
pub fn bad_cursor(cursor: &str) -> ApiError {
    ApiError::BadRequest(format!("cursor `{cursor}` is not one this API gave out; start without one"))
}

/// A cursor that is a number (a step id, a sequence number).
pub fn number_cursor<T: std::str::FromStr>(cursor: Option<&str>) -> Result<Option<T>, ApiError> {
    cursor.map(|cursor| cursor.parse::<T>().map_err(|_| bad_cursor(cursor))).transpose()
}

/// The run id in a path.
pub fn run_id(id: &str) -> Result<RunId, ApiError> {
    id.parse().map_err(|_| ApiError::BadRequest(format!("`{id}` is not a run id (a UUID)")))
}

/// Another id in a path: `what` names it in the error (`webhook`, `delivery`).
pub fn uuid(id: &str, what: &str) -> Result<Uuid, ApiError> {
    id.parse().map_err(|_| ApiError::BadRequest(format!("`{id}` is not a {what} id (a UUID)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_default_and_are_bounded() {
        assert_eq!(page_limit(None).unwrap(), DEFAULT_PAGE);
        assert_eq!(page_limit(Some(MAX_PAGE)).unwrap(), MAX_PAGE);
        assert!(page_limit(Some(0)).is_err());
        assert!(page_limit(Some(MAX_PAGE + 1)).unwrap_err().to_string().contains("between 1 and 1000"));
    }

    #[test]
    fn cursors_and_ids_that_do_not_parse_are_bad_requests() {
        assert_eq!(number_cursor::<u32>(Some("42")).unwrap(), Some(42));
        assert!(number_cursor::<u32>(Some("x")).unwrap_err().to_string().contains("start without one"));
        assert!(run_id("nope").unwrap_err().to_string().contains("not a run id"));
        assert!(uuid("nope", "delivery").unwrap_err().to_string().contains("not a delivery id"));
    }
}
