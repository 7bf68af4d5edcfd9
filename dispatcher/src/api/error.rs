//! One error type for every handler. Client mistakes (4xx) carry their message and are not
//! logged; internal failures are logged once, here, and answered with a generic body.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use opflow_api_model::ErrorBody;

use crate::{plan::PlanErrors, store::StoreError, submit::SubmitError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid plan")]
    InvalidPlan(PlanErrors),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    TooManyRequests(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::KeyConflict { .. } => ApiError::Conflict(error.to_string()),
            ref timed_out if timed_out.is_statement_timeout() => ApiError::Unavailable(
                "the database took longer than this API allows one statement (the setting \
                 `api_statement_timeout`); try again, or ask for less (a smaller page, a filter)"
                    .into(),
            ),
            other => ApiError::Internal(Box::new(other)),
        }
    }
}

/// A query string that does not parse, in the API's JSON shape (axum's own is plain text).
impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

impl From<SubmitError> for ApiError {
    fn from(error: SubmitError) -> Self {
        match error {
            SubmitError::Plan(errors) => ApiError::InvalidPlan(errors),
            SubmitError::BadKey(_) | SubmitError::Partitions(_) | SubmitError::Conflict(_) => {
                ApiError::BadRequest(error.to_string())
            }
            SubmitError::Compiler(_) => ApiError::Internal(Box::new(error)),
            SubmitError::Store(error) => error.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            ApiError::InvalidPlan(errors) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorBody { error: "invalid plan".to_owned(), problems: Some(errors.messages()) },
            ),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, ErrorBody::new(m)),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, ErrorBody::new(m)),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, ErrorBody::new(m)),
            ApiError::PayloadTooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, ErrorBody::new(m)),
            ApiError::Unauthorized(m) => {
                let body = Json(ErrorBody::new(m));
                return (StatusCode::UNAUTHORIZED, [(axum::http::header::WWW_AUTHENTICATE, "Bearer")], body)
                    .into_response();
            }
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, ErrorBody::new(m)),
            ApiError::TooManyRequests(m) => (StatusCode::TOO_MANY_REQUESTS, ErrorBody::new(m)),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, ErrorBody::new(m)),
            ApiError::Internal(error) => {
                tracing::error!(%error, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorBody::new("internal error; see the dispatcher's log"),
                )
            }
        };
        (status, Json(body)).into_response()
    }
}
