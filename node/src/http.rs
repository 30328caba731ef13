//! The HTTP API (axum), served over HTTP/1.1 by `serve`. Every handler hands its request to
//! the engine thread and waits for the answer, at most `ANSWER_TIMEOUT`. Errors are JSON
//! `{"error": "..."}` with the status code that fits: 400 for bad input (a path parameter
//! that is not UTF-8, a query parameter the route does not take or whose value does not
//! parse or validate, named; a body that is not JSON; a pinned `expected_version` the stream
//! has passed included, as EventStoreDB answers it: versions only grow, so the command can
//! never run as it is), 404 for an unknown route, 405 for a method the route does not take
//! (`Allow` names those it does), 408 for a body not complete within `BODY_READ_TIMEOUT`,
//! 409 for a command the aggregate refused, 413 for a body over `BODY_BYTES_MAX` (at once,
//! unread, when its declared length is), 415 for a body not declared JSON, 422 for JSON of
//! the wrong shape, 503 when the node cannot carry a command now (the client may send the
//! same command id again), 504 when no answer came in time. Each route takes exactly its
//! query parameters (a struct that denies unknown fields), except `/health` and `/status`,
//! which ignore any.
//!
//! Two edges are hyper's, not JSON: a connection whose request headers are not complete
//! within `HEADER_READ_TIMEOUT` (or that stays idle that long between requests) is closed
//! without an answer, and a request hyper cannot parse gets hyper's own bodiless 400 or 431.

mod across;
pub mod admin;
mod auth;
mod extract;
mod metrics;
mod projections;
mod reads;
mod server;
mod subscriptions;
#[cfg(test)]
mod tests;

use std::time::Duration;

use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chorus_aggregate::limits::METADATA_BYTES_MAX;
use chorus_aggregate::{CommandId, CommandRequest, ExpectedVersion, MessageId, StreamKey};
use chorus_engine::CommandOutcome;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::config::parse_hex32;
use crate::http::extract::{JsonBody, PathParams, QueryParams};
use crate::http::reads::{
    list_categories, list_databases, list_streams, read_all, read_category, read_event_type,
    read_stream,
};
use crate::http::subscriptions::{
    subscribe_all, subscribe_category, subscribe_event_type, subscribe_stream,
};
use crate::peer_reads::PeerReads;
use crate::queues::{EngineInputs, Refused};
use crate::runtime::Input;
use crate::transport::AddressBook;

pub use crate::http::reads::{category_filter, event_json, page_count, type_filter};
pub use crate::http::server::serve;

/// How long a handler waits for the engine (a command waits for agreement).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request body (a command). A body is read whole before its route sees it, so this
/// bounds what one request holds in memory; a larger declared length is refused unread.
pub const BODY_BYTES_MAX: usize = 1 << 20;
/// How long a client has to send a request's headers, from the moment the server waits for
/// them: a client that trickles them (slowloris) would otherwise hold a connection and its
/// task forever. It also closes a keep-alive connection left idle that long, so a client's
/// pool must drop idle connections sooner (`client::POOL_IDLE_TIMEOUT`).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client has to send a whole body after its headers: `BODY_BYTES_MAX` in this
/// time is about 100 KiB/s, far slower than any client of a cluster needs, while a client
/// that trickles a body cannot hold a connection and a buffer longer.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most events one read returns.
pub const READ_COUNT_MAX: usize = 1_000;
/// Events one read returns when the query does not say.
pub const READ_COUNT_DEFAULT: usize = 100;

const _: () = assert!(READ_COUNT_DEFAULT <= READ_COUNT_MAX);

/// What the HTTP API reaches beside its engine, through the transport: the addresses it
/// knows (shown in `/status`) and reads of other nodes (for data other sections hold).
#[derive(Clone, Default)]
pub struct Network {
    /// The libp2p addresses the transport knows.
    pub addresses: AddressBook,
    /// Reads asked of other nodes.
    pub reads: PeerReads,
}

/// The routes, over the engine thread's input channel, behind `access` (`http/auth.rs`).
pub fn router(
    engine: EngineInputs,
    (feed, hosted): (crate::feed::Feed, crate::projections::Projections),
    access: crate::access::Access,
    network: Network,
) -> Router {
    Router::new()
        .merge(admin::routes())
        .route("/health", get(health))
        .route("/health/live", get(live))
        .route("/status", get(status))
        .route("/metrics", get(metrics::metrics))
        .route("/streams/{stream}/commands", post(submit))
        .route("/streams/{stream}", get(read_stream))
        .route("/streams/{stream}/subscribe", get(subscribe_stream))
        .route("/all", get(read_all))
        .route("/all/subscribe", get(subscribe_all))
        .route("/categories/{category}", get(read_category))
        .route("/categories/{category}/subscribe", get(subscribe_category))
        .route("/types/{event_type}", get(read_event_type))
        .route("/types/{event_type}/subscribe", get(subscribe_event_type))
        .route("/projections", get(projections::list))
        .route("/projections/{name}", get(projections::show))
        .route("/databases", get(list_databases))
        .route("/databases/{database}/categories", get(list_categories))
        .route(
            "/databases/{database}/categories/{category}/streams",
            get(list_streams),
        )
        // After the routes: it applies to the routes added before it (not to the
        // fallbacks, which answer 404 and 405 to anyone).
        .route_layer(axum::middleware::from_fn_with_state(
            std::sync::Arc::new(access),
            auth::authorize,
        ))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(axum::middleware::from_fn(server::read_body))
        .layer(Extension(network.addresses))
        .layer(Extension(network.reads))
        .layer(Extension(feed))
        .layer(Extension(hosted))
        .with_state(engine)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such route")
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} {}: method not allowed (the Allow header names those that are)",
            uri.path()
        ),
    )
}

/// Readiness: 200 when the node is an active member in step with its section; 503 while it
/// joins, fetches state or lags (with how far), so a load balancer sends clients elsewhere.
async fn health(State(engine): State<EngineInputs>) -> Response {
    let status = match ask(&engine, Input::Status).await {
        Ok(status) => status,
        Err(response) => return response,
    };
    match status.readiness {
        chorus_engine::Readiness::Ready => Json(json!({ "status": "ready" })).into_response(),
        readiness => {
            let reason = match readiness {
                chorus_engine::Readiness::Behind(lag) => format!(
                    "behind its section by {} rounds and {} positions; catching up",
                    lag.rounds, lag.positions
                ),
                chorus_engine::Readiness::Joining => "joining its section".to_owned(),
                chorus_engine::Readiness::Transferring {
                    events_received,
                    events_expected,
                } => format!(
                    "fetching its section's state ({events_received} of {events_expected} events)"
                ),
                chorus_engine::Readiness::NotAMember => "not a member of any section".to_owned(),
                chorus_engine::Readiness::Ready => unreachable!("matched above"),
            };
            let body = json!({ "error": format!("not ready: {reason}"), "readiness": readiness });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

/// Liveness: the process answers HTTP (whatever its state in the section).
async fn live() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Sends an input built around a reply channel and waits for the reply.
async fn ask<T>(
    engine: &EngineInputs,
    input: impl FnOnce(oneshot::Sender<T>) -> Input,
) -> Result<T, Response> {
    let (reply, answer) = oneshot::channel();
    engine
        .offer_request(input(reply))
        .map_err(|refused| match refused {
            Refused::Busy => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the node is busy (its engine queue is full); try again shortly",
            ),
            Refused::Stopped => error(StatusCode::SERVICE_UNAVAILABLE, "the node is stopping"),
        })?;
    match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(_)) => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the node is stopping",
        )),
        Err(_) => Err(error(
            StatusCode::GATEWAY_TIMEOUT,
            "no answer in time; send the same command id again",
        )),
    }
}

async fn status(
    State(engine): State<EngineInputs>,
    Extension(addresses): Extension<AddressBook>,
) -> Response {
    match ask(&engine, Input::Status).await {
        Ok(mut status) => {
            for member in status
                .map
                .iter_mut()
                .flat_map(|section| &mut section.members)
            {
                member.address = parse_hex32(&member.key)
                    .ok()
                    .and_then(|key| addresses.get(&chorus_consensus::PeerId(key)))
                    .map(|address| address.to_string());
            }
            Json(status).into_response()
        }
        Err(response) => response,
    }
}

/// A command sent over HTTP.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    /// The command, as its aggregate's JSON (`{"Deposit": {"amount": 5, "transfer": null}}`).
    pub command: Value,
    /// 32 hex digits; sending the same id again never applies the command twice. A random
    /// one if absent.
    #[serde(default)]
    pub command_id: Option<String>,
    /// `"any"` (the default), `"no_stream"`, or a version number.
    #[serde(default)]
    pub expected_version: Option<Value>,
    /// The request the command belongs to (32 hex digits; the command id if absent), kept
    /// with its events and passed on by process managers to the commands they send.
    #[serde(default)]
    pub correlation_id: Option<String>,
    /// What caused it (32 hex digits, an event's or a command's id; the command id if
    /// absent), kept with its events.
    #[serde(default)]
    pub causation_id: Option<String>,
    /// Free-form metadata, a JSON object of at most `METADATA_BYTES_MAX` bytes, kept with
    /// its events and returned on reads.
    #[serde(default)]
    pub metadata: Option<Value>,
}

/// The command a body asks for, or what is wrong with it (named).
fn command_request(stream: &str, body: SubmitBody) -> Result<CommandRequest, String> {
    let stream = StreamKey::parse(stream).map_err(|problem| problem.to_string())?;
    let command_id = match &body.command_id {
        Some(text) => {
            CommandId::from_hex(text).map_err(|problem| format!("command_id: {problem}"))?
        }
        None => {
            let mut bytes = [0u8; 16];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
            CommandId(bytes)
        }
    };
    let message_id = |name: &str, text: &Option<String>| match text {
        Some(text) => MessageId::from_hex(text).map_err(|problem| format!("{name}: {problem}")),
        None => Ok(MessageId::from(command_id)),
    };
    let correlation_id = message_id("correlation_id", &body.correlation_id)?;
    let causation_id = message_id("causation_id", &body.causation_id)?;
    if let Some(metadata) = &body.metadata {
        let size = serde_json::to_vec(metadata).map_or(usize::MAX, |bytes| bytes.len());
        if !metadata.is_object() || size > METADATA_BYTES_MAX {
            return Err(format!(
                "metadata must be a JSON object of at most {METADATA_BYTES_MAX} bytes"
            ));
        }
    }
    let mut request = CommandRequest::new(command_id, stream, body.command);
    request.expected = parse_expected(body.expected_version.as_ref())?;
    request.correlation_id = correlation_id;
    request.causation_id = causation_id;
    request.metadata = body.metadata;
    Ok(request)
}

fn parse_expected(value: Option<&Value>) -> Result<ExpectedVersion, String> {
    match value {
        None => Ok(ExpectedVersion::Any),
        Some(Value::String(text)) if text == "any" => Ok(ExpectedVersion::Any),
        Some(Value::String(text)) if text == "no_stream" => Ok(ExpectedVersion::NoStream),
        Some(Value::Number(number)) => number
            .as_u64()
            .map(ExpectedVersion::Exact)
            .ok_or_else(|| "expected_version must be a whole number".to_owned()),
        Some(other) => Err(format!(
            "expected_version {other}: use \"any\", \"no_stream\" or a version number"
        )),
    }
}

async fn submit(
    State(engine): State<EngineInputs>,
    PathParams(stream): PathParams<String>,
    QueryParams(NoQuery {}): QueryParams<NoQuery>,
    JsonBody(body): JsonBody<SubmitBody>,
) -> Response {
    let request = match command_request(&stream, body) {
        Ok(request) => request,
        Err(problem) => return error(StatusCode::BAD_REQUEST, problem),
    };
    let command_id = request.command_id;
    let outcome = match ask(&engine, |reply| Input::Submit(request, reply)).await {
        Ok(outcome) => outcome,
        Err(response) => return response,
    };
    let status = match &outcome {
        CommandOutcome::Committed(_) => StatusCode::CREATED,
        CommandOutcome::AlreadyCommitted(_) => StatusCode::OK,
        CommandOutcome::Refused(_) => StatusCode::CONFLICT,
        CommandOutcome::Invalid(_) | CommandOutcome::IdTaken => StatusCode::BAD_REQUEST,
        CommandOutcome::Failed(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = json!({ "command_id": command_id.to_hex(), "outcome": outcome });
    (status, Json(body)).into_response()
}

/// The query of a route that takes no parameters: any is refused, named.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoQuery {}

type Engine = State<EngineInputs>;

fn bad(problem: impl std::fmt::Display) -> Response {
    error(StatusCode::BAD_REQUEST, problem.to_string())
}
