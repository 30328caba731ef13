//! The admin API: an operator changes this member's admission policy and asks for removals.
//! Every route needs `Authorization: Bearer <admin_token>` (the node's configuration); a
//! node without a token has the admin API off. 401 without a valid token, 403 when off.
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

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::extract::JsonBody;
use super::{ask, error};
use crate::config::parse_public_key;
use crate::queues::EngineInputs;
use crate::runtime::{AdminRequest, Input};

/// The admin token the routes compare against (`None`: the admin API is off).
#[derive(Clone)]
pub struct AdminToken(pub Option<String>);

/// The admin routes, each behind the token check.
pub fn routes(token: AdminToken) -> Router<EngineInputs> {
    Router::new()
        .route("/admin/admission", get(show))
        .route("/admin/admit", post(admit))
        .route("/admin/remove", post(remove))
        .route(
            "/admin/projections/{name}/rebuild",
            post(super::projections::rebuild),
        )
        .route_layer(axum::middleware::from_fn_with_state(token, authorize))
}

/// Lets a request through only with the node's admin token (compared in constant time).
async fn authorize(State(token): State<AdminToken>, request: Request, next: Next) -> Response {
    let Some(expected) = token.0 else {
        return error(
            StatusCode::FORBIDDEN,
            "the admin API is off: set admin_token in this node's configuration",
        );
    };
    let given = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match given {
        Some(given) if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) => {
            next.run(request).await
        }
        _ => {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "the admin API needs `Authorization: Bearer <admin_token>`",
            );
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            response
        }
    }
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
