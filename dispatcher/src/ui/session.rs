//! Who is looking at the UI, with the API's own tokens and scopes: a browser signs in once
//! with a token (`/login`), kept in an `HttpOnly`, `SameSite=Strict` cookie, and every page
//! and action is then checked as the API checks that token. A reader sees; a submitter
//! may cancel and re-run; an admin sees webhook deliveries too. The API itself never reads
//! the cookie: it takes `Authorization: Bearer` only, so no other site can drive it
//! through a signed-in browser.
//!
//! Actions are forms that `POST`: besides the cookie's `SameSite=Strict`, one whose
//! `Origin` (or `Sec-Fetch-Site`) says it came from another site is refused, which also
//! guards an installation without tokens on loopback.

use axum::{
    Extension, Form,
    extract::{Query, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Redirect, Response},
};
use maud::html;
use serde::Deserialize;

use super::page::{self, error_page};
use crate::{
    api::{auth::Caller, state::ApiState},
    store::tokens::Scope,
};

/// The cookie that holds a signed-in browser's token.
pub const COOKIE: &str = "opflow_token";
/// Longer than any token, shorter than what a header may hold.
const MAX_TOKEN_BYTES: usize = 512;

/// Who is looking: a checked token, or anyone on an installation without tokens.
#[derive(Debug, Clone)]
pub struct Viewer {
    caller: Option<Caller>,
}

impl Viewer {
    /// Anyone, with every scope: an installation without tokens.
    pub fn open() -> Self {
        Self { caller: None }
    }

    /// The signed-in token, if the installation has tokens.
    pub fn caller(&self) -> Option<&Caller> {
        self.caller.as_ref()
    }

    /// Whether this viewer may do what `scope` allows.
    pub fn may(&self, scope: Scope) -> bool {
        self.caller.as_ref().is_none_or(|caller| caller.scope >= scope)
    }

    /// 403 unless the viewer may do what `scope` allows; `what` names the action.
    pub fn require(&self, scope: Scope, what: &str) -> Result<(), page::PageError> {
        match &self.caller {
            Some(caller) if caller.scope < scope => {
                Err(page::PageError(crate::api::error::ApiError::Forbidden(format!(
                    "token `{}` has scope `{}`; {what} needs `{}`. Sign in with another token.",
                    caller.name,
                    caller.scope.as_str(),
                    scope.as_str()
                ))))
            }
            _ => Ok(()),
        }
    }

    /// Whose runs this viewer submits: its token's team or name, or `local`.
    pub fn owner(&self) -> &str {
        self.caller.as_ref().map_or(crate::store::runs::DEFAULT_OWNER, |caller| caller.owner())
    }
}

/// The value of cookie `name` in a request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(key, value)| (key == name).then_some(value))
}

/// Whether a form post came from another site: its `Sec-Fetch-Site` says so, or its
/// `Origin` is not this host.
fn cross_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return true;
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match (origin, host) {
        (None, _) => false,
        (Some(origin), Some(host)) => {
            let authority = origin.split_once("://").map_or("", |(_, rest)| rest);
            authority != host
        }
        (Some(_), None) => true,
    }
}

/// Middleware on every page but the sign-in page and the static files: finds the viewer
/// (sending a browser without a token to `/login`), refuses a cross-site post, and lets
/// the page check the scope of what it does.
pub async fn require_viewer(State(state): State<ApiState>, mut request: Request, next: Next) -> Response {
    if request.method() == Method::POST && cross_site(request.headers()) {
        return error_page(
            StatusCode::FORBIDDEN,
            "this form was sent from another site; open the page in opflow itself and send it from there",
        );
    }
    if !state.auth_required {
        request.extensions_mut().insert(Viewer::open());
        return next.run(request).await;
    }
    let token = cookie(request.headers(), COOKIE).filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN_BYTES);
    let caller = match token {
        Some(token) => match state.store.tokens().check(token).await {
            Ok(caller) => caller,
            Err(error) => return page::PageError::from(error).into_response(),
        },
        None => None,
    };
    let Some(caller) = caller else {
        if request.method() == Method::GET || request.method() == Method::HEAD {
            let next = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
            let query =
                url::form_urlencoded::Serializer::new(String::new()).append_pair("next", &next).finish();
            return Redirect::to(&format!("/login?{query}")).into_response();
        }
        return error_page(
            StatusCode::UNAUTHORIZED,
            "sign in first: your session has ended or its token was revoked",
        );
    };
    if caller.scope < Scope::Read {
        return error_page(StatusCode::FORBIDDEN, "this token may not read");
    }
    request.extensions_mut().insert(Viewer { caller: Some(caller) });
    next.run(request).await
}

#[derive(Debug, Default, Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
    error: Option<String>,
}

/// Only a path on this site: never another site, whatever the link said.
fn local_path(next: Option<&str>) -> &str {
    match next {
        Some(path) if path.starts_with('/') && !path.starts_with("//") && !path.contains('\\') => path,
        _ => "/",
    }
}

/// `GET /login`: the sign-in form.
pub async fn login_form(State(state): State<ApiState>, Query(query): Query<LoginQuery>) -> Response {
    let next = local_path(query.next.as_deref()).to_owned();
    if !state.auth_required {
        return Redirect::to(&next).into_response();
    }
    let markup = html! {
        h1 { "Sign in" }
        @if let Some(error) = &query.error {
            p class="error-message" role="alert" { (page::cut(error, 200)) }
        }
        form class="login" method="post" action="/login" {
            input type="hidden" name="next" value=(next);
            label for="token" { "API token" }
            input id="token" name="token" type="password" autocomplete="current-password" required autofocus;
            p class="hint" { "An administrator makes one with " code { "opflow tokens create <name> --scope read|submit|admin" } "." }
            button type="submit" { "Sign in" }
        }
    };
    page::shell("Sign in", page::Section::None, None, markup)
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    token: String,
    next: Option<String>,
}

/// `POST /login`: checks the token, then keeps it in the session cookie.
pub async fn login(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if cross_site(&headers) {
        return error_page(StatusCode::FORBIDDEN, "this sign-in was sent from another site");
    }
    let next = local_path(form.next.as_deref()).to_owned();
    let token = form.token.trim();
    let again = |why: &str| {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("next", &next)
            .append_pair("error", why)
            .finish();
        Redirect::to(&format!("/login?{query}")).into_response()
    };
    if token.is_empty()
        || token.len() > MAX_TOKEN_BYTES
        || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.~+/=".contains(&b))
    {
        return again("that is not an API token");
    }
    match state.store.tokens().check(token).await {
        Ok(Some(_)) => {}
        Ok(None) => return again("the token is unknown or revoked; ask for a new one"),
        Err(error) => return page::PageError::from(error).into_response(),
    }
    let mut response = Redirect::to(&next).into_response();
    // Behind a TLS proxy, the cookie goes only over TLS too.
    let secure = headers.get("x-forwarded-proto").is_some_and(|proto| proto.as_bytes() == b"https");
    let cookie = format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `POST /logout`: forgets the session cookie.
pub async fn logout(viewer: Option<Extension<Viewer>>) -> Response {
    drop(viewer);
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("opflow_token=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; opflow_token=opf_x_y"), ("cookie", "b=2")]);
        assert_eq!(cookie(&h, COOKIE), Some("opf_x_y"));
        assert_eq!(cookie(&headers(&[("cookie", "xopflow_token=1")]), COOKIE), None);
        assert_eq!(cookie(&HeaderMap::new(), COOKIE), None);
    }

    #[test]
    fn a_post_from_another_site_is_told_apart() {
        assert!(!cross_site(&headers(&[("host", "127.0.0.1:7600"), ("origin", "http://127.0.0.1:7600")])));
        assert!(!cross_site(&headers(&[("host", "127.0.0.1:7600")])));
        assert!(cross_site(&headers(&[("host", "127.0.0.1:7600"), ("origin", "http://evil.example")])));
        assert!(cross_site(&headers(&[("host", "127.0.0.1:7600"), ("origin", "null")])));
        assert!(cross_site(&headers(&[("host", "127.0.0.1:7600"), ("sec-fetch-site", "cross-site")])));
        assert!(cross_site(&headers(&[("host", "127.0.0.1:7600"), ("sec-fetch-site", "same-site")])));
        assert!(!cross_site(&headers(&[("sec-fetch-site", "same-origin")])));
    }

    #[test]
    fn after_signing_in_a_browser_goes_only_to_a_page_of_this_site() {
        assert_eq!(local_path(Some("/runs/x?y=1")), "/runs/x?y=1");
        assert_eq!(local_path(Some("//evil.example/")), "/");
        assert_eq!(local_path(Some("https://evil.example/")), "/");
        assert_eq!(local_path(Some("/\\evil.example")), "/");
        assert_eq!(local_path(None), "/");
    }

    #[test]
    fn a_viewer_may_what_its_scope_allows() {
        let reader = Viewer { caller: Some(Caller { name: "r".into(), scope: Scope::Read, team: None }) };
        assert!(reader.may(Scope::Read) && !reader.may(Scope::Submit));
        assert!(reader.require(Scope::Submit, "canceling a run").is_err());
        assert!(Viewer::open().may(Scope::Admin));
    }
}
