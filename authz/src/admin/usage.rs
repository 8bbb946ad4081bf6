//! `GET /v1/keys/{id}/usage` (a key's calls per UTC day) and `GET /v1/usage` (totals per plan
//! or tenant), with the checks of their `from` / `to` range.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::routes::{ApiError, KeyId};
use crate::apikey::usage::MAX_RANGE_DAYS;
use crate::apikey::{Day, UsageGroup};

/// Days covered when `from` is not given (today and the 29 days before).
const DEFAULT_DAYS: u32 = 30;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RangeQuery {
    from: Option<String>,
    to: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TotalsQuery {
    group_by: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// `from..=to` from the query: `to` defaults to today, `from` to 29 days before `to`.
fn range(from: Option<&str>, to: Option<&str>, today: Day) -> Result<(Day, Day), ApiError> {
    let day = |name: &str, v: &str| {
        Day::parse(v).ok_or_else(|| {
            ApiError::invalid(format!(
                "{name} must be a UTC date as YYYY-MM-DD, not {:?}",
                v.chars().take(40).collect::<String>()
            ))
        })
    };
    let to = to.map(|v| day("to", v)).transpose()?.unwrap_or(today);
    let from = from
        .map(|v| day("from", v))
        .transpose()?
        .unwrap_or_else(|| to.minus(DEFAULT_DAYS - 1));
    if from > to {
        return Err(ApiError::invalid(format!(
            "from ({from}) must not be after to ({to})"
        )));
    }
    if from.span_to(to) > MAX_RANGE_DAYS {
        return Err(ApiError::invalid(format!(
            "the range covers {} days; at most {MAX_RANGE_DAYS}",
            from.span_to(to)
        )));
    }
    Ok((from, to))
}

fn no_store(body: impl serde::Serialize) -> Response {
    let mut resp = Json(body).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub(super) async fn key_usage(
    State(st): State<AppState>,
    KeyId(id): KeyId,
    query: Result<Query<RangeQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|r| ApiError::invalid(r.body_text()))?;
    let (from, to) = range(q.from.as_deref(), q.to.as_deref(), st.keys.today())?;
    Ok(no_store(st.keys.usage(&id, from, to).await?))
}

pub(super) async fn totals(
    State(st): State<AppState>,
    query: Result<Query<TotalsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|r| ApiError::invalid(r.body_text()))?;
    let group = match q.group_by.as_deref() {
        Some("plan") => UsageGroup::Plan,
        Some("tenant") => UsageGroup::Tenant,
        Some(_) => return Err(ApiError::invalid("group_by must be plan or tenant")),
        None => return Err(ApiError::invalid("group_by is required: plan or tenant")),
    };
    let (from, to) = range(q.from.as_deref(), q.to.as_deref(), st.keys.today())?;
    Ok(no_store(st.keys.usage_totals(group, from, to).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> Day {
        Day::parse(s).unwrap()
    }

    fn message(r: Result<(Day, Day), ApiError>) -> String {
        r.unwrap_err().message().to_string()
    }

    #[test]
    fn ranges_default_to_the_last_30_days_and_are_checked() {
        let today = day("2025-03-10");
        assert_eq!(
            range(None, None, today).unwrap(),
            (day("2025-02-09"), today)
        );
        assert_eq!(
            range(Some("2025-03-01"), None, today).unwrap(),
            (day("2025-03-01"), today)
        );
        assert_eq!(
            range(None, Some("2025-01-31"), today).unwrap(),
            (day("2025-01-02"), day("2025-01-31"))
        );
        assert_eq!(
            range(Some("2024-03-10"), Some("2025-03-10"), today)
                .unwrap()
                .0,
            day("2024-03-10"),
            "366 days is the most"
        );
        assert!(message(range(Some("2024-03-09"), None, today)).contains("367 days; at most 366"));
        assert!(
            message(range(Some("2025-03-11"), None, today))
                .contains("from (2025-03-11) must not be after to (2025-03-10)")
        );
        assert!(
            message(range(Some("yesterday"), None, today))
                .contains("from must be a UTC date as YYYY-MM-DD, not \"yesterday\"")
        );
        assert!(message(range(None, Some("2025-02-30"), today)).starts_with("to must be"));
    }
}
