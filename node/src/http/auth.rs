//! Which permission each route needs, and the check in front of every route (`access.rs`
//! holds the tokens and scopes): 401 without a valid token (with `WWW-Authenticate:
//! Bearer`), 403 with a token that lacks the scope. Health, status and metrics are open:
//! load balancers, joining nodes and monitoring read them without a token.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath, Query, RawPathParams, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use chorus_aggregate::StreamKey;

use super::error;
use crate::access::{Access, Denied, Permission};

/// A database name no token names: only tokens for every database (`"*"`) reach it, for a
/// path whose database cannot be read.
const UNREADABLE: &str = "\u{0}";

/// Lets a request through if its bearer token may do what its route needs.
pub async fn authorize(
    State(access): State<Arc<Access>>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map(|matched| matched.as_str().to_owned());
    let params = RawPathParams::from_request_parts(&mut parts, &())
        .await
        .ok()
        .map(|params| {
            params
                .iter()
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect::<HashMap<_, _>>()
        });
    let database_query = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
        .ok()
        .and_then(|Query(query)| query.get("database").cloned());
    let needed = permission(
        route.as_deref().unwrap_or_default(),
        &parts.method,
        params.as_ref(),
        database_query,
    );
    let bearer = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match access.check(bearer, &needed) {
        Ok(()) => next.run(Request::from_parts(parts, body)).await,
        Err(Denied::Unauthenticated(reason)) => {
            let mut response = error(StatusCode::UNAUTHORIZED, reason);
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
        Err(Denied::Forbidden(reason)) => error(StatusCode::FORBIDDEN, reason),
    }
}

/// What a request to `route` (the matched path template) needs.
fn permission(
    route: &str,
    method: &Method,
    params: Option<&HashMap<String, String>>,
    database_query: Option<String>,
) -> Permission {
    let param = |name: &str| params.and_then(|params| params.get(name));
    let stream_database = || {
        param("stream")
            .and_then(|stream| StreamKey::parse(stream).ok())
            .map_or_else(
                || UNREADABLE.to_owned(),
                |key| key.database().as_str().to_owned(),
            )
    };
    match route {
        "/health" | "/health/live" | "/status" | "/metrics" => Permission::Open,
        _ if route.starts_with("/admin/") => Permission::Admin,
        "/streams/{stream}/commands" if method == Method::POST => {
            Permission::Write(stream_database())
        }
        "/streams/{stream}" | "/streams/{stream}/subscribe" | "/streams/{stream}/commands" => {
            Permission::Read(stream_database())
        }
        "/categories/{category}" | "/categories/{category}/subscribe" => {
            Permission::Read(database_query.unwrap_or_else(|| "default".to_owned()))
        }
        "/databases/{database}/categories"
        | "/databases/{database}/categories/{category}/streams" => Permission::Read(
            param("database")
                .cloned()
                .unwrap_or_else(|| UNREADABLE.to_owned()),
        ),
        // `$all`, event types, projections and the database listing span every database.
        _ => Permission::ReadAll,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn each_route_needs_what_it_touches() {
        let stream = params(&[("stream", "shop/Order@1")]);
        let cases = [
            ("/health", Method::GET, None, None, Permission::Open),
            ("/metrics", Method::GET, None, None, Permission::Open),
            ("/admin/admit", Method::POST, None, None, Permission::Admin),
            (
                "/streams/{stream}/commands",
                Method::POST,
                Some(&stream),
                None,
                Permission::Write("shop".into()),
            ),
            (
                "/streams/{stream}",
                Method::GET,
                Some(&stream),
                None,
                Permission::Read("shop".into()),
            ),
            (
                "/streams/{stream}/subscribe",
                Method::GET,
                Some(&params(&[("stream", "Order@1")])),
                None,
                Permission::Read("default".into()),
            ),
            (
                "/streams/{stream}",
                Method::GET,
                Some(&params(&[("stream", "no at sign")])),
                None,
                Permission::Read(UNREADABLE.into()),
            ),
            (
                "/categories/{category}",
                Method::GET,
                None,
                Some("shop".to_owned()),
                Permission::Read("shop".into()),
            ),
            (
                "/databases/{database}/categories",
                Method::GET,
                Some(&params(&[("database", "shop")])),
                None,
                Permission::Read("shop".into()),
            ),
            ("/all", Method::GET, None, None, Permission::ReadAll),
            (
                "/types/{event_type}",
                Method::GET,
                None,
                None,
                Permission::ReadAll,
            ),
            (
                "/projections/{name}",
                Method::GET,
                None,
                None,
                Permission::ReadAll,
            ),
            ("/databases", Method::GET, None, None, Permission::ReadAll),
        ];
        for (route, method, params, database, expected) in cases {
            assert_eq!(
                permission(route, &method, params, database),
                expected,
                "{route}"
            );
        }
    }
}
