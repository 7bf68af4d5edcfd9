//! Paged lists: a page of items and the cursor of the next one; `?limit=` and `?cursor=`.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// The most items a page may hold, and how many it holds without `limit`.
pub const MAX_PAGE: u32 = 1000;
pub const DEFAULT_PAGE: u32 = 100;

/// One page of a list; pass `next_cursor` as `cursor` for the next one (absent on the last).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `limit` and `cursor` of a paged list.
///
/// The other queries repeat these two fields rather than `#[serde(flatten)]` this struct:
/// with flatten, a query string's values reach the inner struct as strings and `limit=20`
/// fails to parse as a number.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Paging {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}
