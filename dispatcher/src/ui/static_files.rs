//! The UI's stylesheet and script, compiled into the binary: nothing is fetched from
//! anywhere else at run time, and there is no build step.

use axum::{
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};

pub const CSS_PATH: &str = "/static/ui.css";
pub const JS_PATH: &str = "/static/ui.js";
pub const ICON_PATH: &str = "/static/icon.svg";

const CSS: &str = include_str!("static/ui.css");
const JS: &str = include_str!("static/ui.js");
const ICON: &str = include_str!("static/icon.svg");

fn file(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Short: a new dispatcher's files reach open pages within minutes.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// `GET /static/ui.css`.
pub async fn css() -> Response {
    file(CSS, "text/css; charset=utf-8")
}

/// `GET /static/ui.js`.
pub async fn js() -> Response {
    file(JS, "text/javascript; charset=utf-8")
}

/// `GET /static/icon.svg`: the tab's icon.
pub async fn icon() -> Response {
    file(ICON, "image/svg+xml")
}
