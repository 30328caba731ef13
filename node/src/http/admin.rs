//! The admin API: an operator changes this member's admission policy and asks for removals.
//! Every route needs `Authorization: Bearer <admin_token>` (the node's configuration) or an
//! API token with `admin = true`; a node with neither has the admin API off. 401 without a
//! valid token, 403 when off (`http/auth.rs`).
//!
//! - `GET /admin/admission`: the policy (`open` or `allow-list`, the approved keys, the keys
//!   removed at run time).
//! - `POST /admin/admit` `{"node": "<key hex>"}`: approve a key; this member votes to admit
//!   it when it asks to join (the section admits it once more than two thirds of its
//!   members approved it).
//! - `POST /admin/remove` `{"node": "<key hex>"}`: withdraw the approval and, if the node is
//!   a member, vote to remove it (`"removal": "voted"`); it is removed once more than two
//!   thirds of the members voted so.
//! - `POST /admin/projections/{name}/rebuild`: fold a hosted projection again from position
//!   0.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::extract::JsonBody;
use super::{ask, error};
use crate::config::parse_public_key;
use crate::queues::EngineInputs;
use crate::runtime::{AdminRequest, Input};

/// The admin routes (the router's access check lets through only the admin token or an
/// API token with `admin = true`).
pub fn routes() -> Router<EngineInputs> {
    Router::new()
        .route("/admin/admission", get(show))
        .route("/admin/admit", post(admit))
        .route("/admin/remove", post(remove))
        .route(
            "/admin/projections/{name}/rebuild",
            post(super::projections::rebuild),
        )
}

/// The body of `admit` and `remove`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeBody {
    /// The node's public key, 64 hex digits.
    node: String,
}

async fn show(State(engine): State<EngineInputs>) -> Response {
    answer(&engine, AdminRequest::Show).await
}

async fn admit(State(engine): State<EngineInputs>, JsonBody(body): JsonBody<NodeBody>) -> Response {
    match parse_public_key(&body.node) {
        Ok(node) => answer(&engine, AdminRequest::Admit(node)).await,
        Err(reason) => error(StatusCode::BAD_REQUEST, format!("node: {reason}")),
    }
}

async fn remove(
    State(engine): State<EngineInputs>,
    JsonBody(body): JsonBody<NodeBody>,
) -> Response {
    match parse_public_key(&body.node) {
        Ok(node) => answer(&engine, AdminRequest::Remove(node)).await,
        Err(reason) => error(StatusCode::BAD_REQUEST, format!("node: {reason}")),
    }
}

async fn answer(engine: &EngineInputs, request: AdminRequest) -> Response {
    match ask(engine, |reply| Input::Admin(request, reply)).await {
        Ok(Ok(answer)) => Json(answer).into_response(),
        // The policy file could not be written: nothing changed.
        Ok(Err(reason)) => error(StatusCode::INTERNAL_SERVER_ERROR, reason),
        Err(response) => response,
    }
}
