//! Who may call the API. With authentication on, every route but `/healthz`, `/readyz` and
//! `/openapi.json` needs `Authorization: Bearer <token>` (`opflow tokens create`), `/metrics`
//! too (a scraper without a token reads it on `metrics_addr`): reading needs the `read`
//! scope, submitting and canceling runs `submit`, managing webhooks `admin`. A missing or
//! unknown token is 401, a token without the scope 403, both in the API's JSON error shape.
//! A checked token's [`Caller`] goes with the request to its handler.

use axum::{
    extract::{Request, State},
    http::{Method, header},
    middleware::Next,
    response::Response,
};

use super::{error::ApiError, state::ApiState};
pub use crate::store::tokens::Caller;
use crate::store::tokens::Scope;

/// The scope a request needs: managing webhooks (`/v1/webhooks…`) is `admin`, as their
/// secrets and targets are the installation's; otherwise reading is `read`, anything else
/// `submit`.
fn needed(method: &Method, path: &str) -> Scope {
    if path == "/v1/webhooks" || path.starts_with("/v1/webhooks/") {
        return Scope::Admin;
    }
    if matches!(*method, Method::GET | Method::HEAD) { Scope::Read } else { Scope::Submit }
}

/// Middleware: lets the request through if its token has the scope it needs.
pub async fn require_token(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if !state.auth_required {
        return Ok(next.run(request).await);
    }
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token else {
        return Err(ApiError::Unauthorized(
            "this API needs a token: send `Authorization: Bearer <token>` (an administrator creates one with \
             `opflow tokens create <name> --scope read|submit|admin`)"
                .into(),
        ));
    };
    let Some(caller) = state.store.tokens().check(token).await? else {
        return Err(ApiError::Unauthorized(
            "the API token is unknown or revoked; ask for a new one (`opflow tokens create`)".into(),
        ));
    };
    let scope = needed(request.method(), request.uri().path());
    if caller.scope < scope {
        return Err(ApiError::Forbidden(format!(
            "token `{}` has scope `{}`; {} {} needs `{}`",
            caller.name,
            caller.scope.as_str(),
            request.method(),
            request.uri().path(),
            scope.as_str()
        )));
    }
    // Who called, for what is theirs (the idempotency keys of their submissions).
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::ApiAuth;

    #[test]
    fn auto_is_open_on_loopback_only() {
        assert!(!ApiAuth::Auto.required_on("127.0.0.1:7600".parse().unwrap()));
        assert!(!ApiAuth::Auto.required_on("[::1]:7600".parse().unwrap()));
        assert!(ApiAuth::Auto.required_on("0.0.0.0:7600".parse().unwrap()));
        assert!(ApiAuth::Auto.required_on("10.1.2.3:7600".parse().unwrap()));
        assert!(ApiAuth::Required.required_on("127.0.0.1:7600".parse().unwrap()));
        assert!(!ApiAuth::Off.required_on("10.1.2.3:7600".parse().unwrap()));
    }

    #[test]
    fn reading_needs_read_and_the_rest_submit() {
        assert_eq!(needed(&Method::GET, "/v1/runs/x"), Scope::Read);
        assert_eq!(needed(&Method::POST, "/v1/runs"), Scope::Submit);
    }

    #[test]
    fn webhooks_need_admin() {
        assert_eq!(needed(&Method::GET, "/v1/webhooks"), Scope::Admin);
        assert_eq!(needed(&Method::POST, "/v1/webhooks/deliveries/x/redeliver"), Scope::Admin);
        assert_eq!(needed(&Method::GET, "/v1/webhooksx"), Scope::Read);
    }
}
