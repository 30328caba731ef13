//! Hosted projections over HTTP: `GET /projections` (each projection's name and position),
//! `GET /projections/{name}` (its state and position; 404 if there is none), and the admin
//! route `POST /admin/projections/{name}/rebuild` (fold everything again from position 0).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;

use super::error;
use super::extract::PathParams;
use crate::projections::Projections;

pub async fn list(Extension(projections): Extension<Projections>) -> Response {
    let names: Vec<_> = projections
        .names()
        .await
        .into_iter()
        .map(|(name, position)| json!({ "name": name, "position": position }))
        .collect();
    Json(json!({ "projections": names })).into_response()
}

pub async fn show(
    Extension(projections): Extension<Projections>,
    PathParams(name): PathParams<String>,
) -> Response {
    match projections.view(&name).await {
        Some(view) => Json(view).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("this node hosts no projection named {name:?}"),
        ),
    }
}

pub async fn rebuild(
    Extension(projections): Extension<Projections>,
    PathParams(name): PathParams<String>,
) -> Response {
    match projections.rebuild(&name).await {
        Ok(view) => Json(view).into_response(),
        Err(reason) if reason.starts_with("no projection") => error(StatusCode::NOT_FOUND, reason),
        Err(reason) => error(StatusCode::INTERNAL_SERVER_ERROR, reason),
    }
}
