//! The HTTP API (axum). Every handler hands its request to the engine thread and waits for
//! the answer, at most `ANSWER_TIMEOUT`. Errors are JSON `{"error": "..."}` with the status
//! code that fits: 400 for bad input (a pinned `expected_version` the stream has passed
//! included, as EventStoreDB answers it: versions only grow, so the command can never run as
//! it is), 404 for an unknown route, 409 for a command the aggregate refused, 413 for an
//! oversized body, 503 when the node cannot carry a command now (the client may send the
//! same command id again), 504 when no answer came in time.

use std::sync::mpsc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chorus_aggregate::{CommandId, CommandRequest, ExpectedVersion, StreamKey};
use chorus_engine::CommandOutcome;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::runtime::Input;

/// How long a handler waits for the engine (a command waits for agreement).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request body.
pub const BODY_BYTES_MAX: usize = 1 << 20;
/// Most events one read returns.
pub const READ_COUNT_MAX: usize = 1_000;

/// The routes, over the engine thread's input channel.
pub fn router(engine: mpsc::Sender<Input>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/streams/{stream}/commands", post(submit))
        .route("/streams/{stream}", get(read_stream))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(engine)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such route")
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Sends an input built around a reply channel and waits for the reply.
async fn ask<T>(
    engine: &mpsc::Sender<Input>,
    input: impl FnOnce(oneshot::Sender<T>) -> Input,
) -> Result<T, Response> {
    let (reply, answer) = oneshot::channel();
    engine
        .send(input(reply))
        .map_err(|_| error(StatusCode::SERVICE_UNAVAILABLE, "the node is stopping"))?;
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

async fn status(State(engine): State<mpsc::Sender<Input>>) -> Response {
    match ask(&engine, Input::Status).await {
        Ok(status) => Json(status).into_response(),
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
    State(engine): State<mpsc::Sender<Input>>,
    Path(stream): Path<String>,
    body: Result<Json<SubmitBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(body) => body,
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    let stream = match StreamKey::parse(&stream) {
        Ok(stream) => stream,
        Err(problem) => return error(StatusCode::BAD_REQUEST, problem.to_string()),
    };
    let command_id = match &body.command_id {
        Some(text) => match CommandId::from_hex(text) {
            Ok(id) => id,
            Err(problem) => {
                return error(StatusCode::BAD_REQUEST, format!("command_id: {problem}"));
            }
        },
        None => {
            let mut bytes = [0u8; 16];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
            CommandId(bytes)
        }
    };
    let expected = match parse_expected(body.expected_version.as_ref()) {
        Ok(expected) => expected,
        Err(problem) => return error(StatusCode::BAD_REQUEST, problem),
    };
    let mut request = CommandRequest::new(command_id, stream, body.command);
    request.expected = expected;
    let outcome = match ask(&engine, |reply| Input::Submit(request, reply)).await {
        Ok(outcome) => outcome,
        Err(response) => return response,
    };
    let status = match &outcome {
        CommandOutcome::Committed(_) => StatusCode::CREATED,
        CommandOutcome::AlreadyCommitted(_) => StatusCode::OK,
        CommandOutcome::Refused(_) => StatusCode::CONFLICT,
        CommandOutcome::Invalid(_) => StatusCode::BAD_REQUEST,
        CommandOutcome::Failed(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = json!({ "command_id": command_id.to_hex(), "outcome": outcome });
    (status, Json(body)).into_response()
}

/// Paging of a read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    /// First sequence number (1 by default).
    pub from: Option<u64>,
    /// Most events (100 by default, at most `READ_COUNT_MAX`).
    pub count: Option<usize>,
}

async fn read_stream(
    State(engine): State<mpsc::Sender<Input>>,
    Path(stream): Path<String>,
    query: Result<Query<ReadQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    let stream = match StreamKey::parse(&stream) {
        Ok(stream) => stream,
        Err(problem) => return error(StatusCode::BAD_REQUEST, problem.to_string()),
    };
    let from = query.from.unwrap_or(1).max(1);
    let count = query.count.unwrap_or(100).clamp(1, READ_COUNT_MAX);
    let read = ask(&engine, |reply| Input::ReadStream {
        stream,
        from,
        count,
        reply,
    })
    .await;
    match read {
        Ok(Ok(events)) => {
            let events: Vec<Value> = events
                .iter()
                .map(|event| {
                    let payload: Value =
                        serde_json::from_slice(&event.payload).unwrap_or_else(|_| {
                            Value::String(format!("{} bytes", event.payload.len()))
                        });
                    json!({
                        "sequence": event.sequence,
                        "event_id": event.event_id.to_hex(),
                        "type": event.event_type.as_str(),
                        "version": event.event_version,
                        "payload": payload,
                        "command_id": event.command_id.map(|id| id.to_hex()),
                        "timestamp_ms": event.timestamp_ms,
                    })
                })
                .collect();
            Json(json!({ "events": events })).into_response()
        }
        Ok(Err(problem)) => error(StatusCode::INTERNAL_SERVER_ERROR, problem),
        Err(response) => response,
    }
}
