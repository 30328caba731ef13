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

pub mod admin;
mod extract;
mod server;
#[cfg(test)]
mod tests;

use crate::queues::{Drops, EngineInputs, Refused};
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chorus_aggregate::{
    CategoryName, CommandId, CommandRequest, DatabaseName, ExpectedVersion, Filter, RecordedEvent,
    StreamKey,
};
use chorus_engine::CommandOutcome;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::config::parse_hex32;
use crate::http::extract::{JsonBody, PathParams, QueryParams};
use crate::runtime::{Input, Read, ReadAnswer};
use crate::transport::AddressBook;

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

/// The routes, over the engine thread's input channel; the admin routes need `admin_token`;
/// `/status` shows the addresses the transport knows.
pub fn router(
    engine: EngineInputs,
    admin_token: admin::AdminToken,
    addresses: AddressBook,
) -> Router {
    Router::new()
        .merge(admin::routes(admin_token))
        .route("/health", get(health))
        .route("/health/live", get(live))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/streams/{stream}/commands", post(submit))
        .route("/streams/{stream}", get(read_stream))
        .route("/streams/{stream}/subscribe", get(subscribe_stream))
        .route("/all", get(read_all))
        .route("/all/subscribe", get(subscribe_all))
        .route("/categories/{category}", get(read_category))
        .route("/categories/{category}/subscribe", get(subscribe_category))
        .route("/databases", get(list_databases))
        .route("/databases/{database}/categories", get(list_categories))
        .route(
            "/databases/{database}/categories/{category}/streams",
            get(list_streams),
        )
        // After the routes: it applies to the routes added before it.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(axum::middleware::from_fn(server::read_body))
        .layer(Extension(addresses))
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
        CommandOutcome::Invalid(_) | CommandOutcome::IdTaken => StatusCode::BAD_REQUEST,
        CommandOutcome::Failed(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = json!({ "command_id": command_id.to_hex(), "outcome": outcome });
    (status, Json(body)).into_response()
}

/// The query of a stream read or subscription, and of `$all`'s.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    /// First sequence number of a stream, or first global position of `$all` (1 by default;
    /// 0 reads from the start too).
    pub from: Option<u64>,
    /// Most events (`READ_COUNT_DEFAULT` by default, 1 to `READ_COUNT_MAX`); a
    /// subscription's catch-up batch.
    pub count: Option<usize>,
}

/// The query of a category read or subscription.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryQuery {
    /// First global position (1 by default; 0 reads from the start too).
    pub from: Option<u64>,
    /// Most events (`READ_COUNT_DEFAULT` by default, 1 to `READ_COUNT_MAX`); a
    /// subscription's catch-up batch.
    pub count: Option<usize>,
    /// The category's database (`default` if absent).
    pub database: Option<String>,
}

/// Paging of a stream listing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// List streams whose id sorts after this one.
    pub after: Option<String>,
    /// Most streams (`READ_COUNT_DEFAULT` by default, 1 to `READ_COUNT_MAX`).
    pub count: Option<usize>,
}

/// The query of a route that takes no parameters: any is refused, named.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoQuery {}

type Engine = State<EngineInputs>;

fn bad(problem: impl std::fmt::Display) -> Response {
    error(StatusCode::BAD_REQUEST, problem.to_string())
}

/// One event as the API shows it: the payload as JSON when it is JSON.
fn event_json(event: &RecordedEvent) -> Value {
    let payload: Value = serde_json::from_slice(&event.payload)
        .unwrap_or_else(|_| Value::String(format!("{} bytes", event.payload.len())));
    json!({
        "stream": event.stream.to_string(),
        "sequence": event.sequence,
        "position": event.position,
        "event_id": event.event_id.to_hex(),
        "type": event.event_type.as_str(),
        "version": event.event_version,
        "payload": payload,
        "command_id": event.command_id.map(|id| id.to_hex()),
        "timestamp_ms": event.timestamp_ms,
    })
}

async fn read(engine: &EngineInputs, read: Read) -> Result<ReadAnswer, Response> {
    match ask(engine, |reply| Input::Read(read, reply)).await? {
        // 421 Misdirected Request: this node's section does not hold the stream; the
        // answer names the section that does and its members.
        Ok(ReadAnswer::Elsewhere { prefix, members }) => Err((
            StatusCode::MISDIRECTED_REQUEST,
            Json(json!({
                "error": format!(
                    "this node's section does not hold the stream: section {prefix:?} does; \
                     read it from one of its members"
                ),
                "section": prefix,
                "members": members,
            })),
        )
            .into_response()),
        Ok(answer) => Ok(answer),
        Err(problem) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, problem)),
    }
}

/// One page of events as JSON, with where the next page starts.
async fn events_page(engine: &EngineInputs, query: Read) -> Response {
    match read(engine, query).await {
        Ok(ReadAnswer::Events { events, next }) => {
            let events: Vec<Value> = events.iter().map(event_json).collect();
            Json(json!({ "events": events, "next": next })).into_response()
        }
        Ok(other) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected answer {other:?}"),
        ),
        Err(response) => response,
    }
}

/// Where a read starts (1 by default, and for 0) and how many it returns: `count` is
/// `READ_COUNT_DEFAULT` by default and must be 1 to `READ_COUNT_MAX`.
fn paging(from: Option<u64>, count: Option<usize>) -> Result<(u64, usize), String> {
    Ok((from.unwrap_or(1).max(1), page_count(count)?))
}

fn page_count(count: Option<usize>) -> Result<usize, String> {
    match count.unwrap_or(READ_COUNT_DEFAULT) {
        count @ 1..=READ_COUNT_MAX => Ok(count),
        count => Err(format!(
            "query parameter count is {count}; it must be 1 to {READ_COUNT_MAX}"
        )),
    }
}

/// A stream read's parameters.
fn stream_read(stream: &str, query: &ReadQuery) -> Result<(StreamKey, u64, usize), String> {
    let (from, count) = paging(query.from, query.count)?;
    let stream = StreamKey::parse(stream).map_err(|problem| problem.to_string())?;
    Ok((stream, from, count))
}

/// A category read's parameters: the category of `database` (`default` if absent).
fn category_read(category: String, query: CategoryQuery) -> Result<(Filter, u64, usize), String> {
    let (from, count) = paging(query.from, query.count)?;
    let database = match query.database {
        Some(name) => DatabaseName::new(name)
            .map_err(|problem| format!("query parameter database: {problem}"))?,
        None => DatabaseName::default_database(),
    };
    let category = CategoryName::new(category).map_err(|problem| problem.to_string())?;
    Ok((Filter::Category(database, category), from, count))
}

async fn read_stream(
    State(engine): Engine,
    PathParams(stream): PathParams<String>,
    QueryParams(query): QueryParams<ReadQuery>,
) -> Response {
    match stream_read(&stream, &query) {
        Ok((stream, from, count)) => {
            let query = Read::Stream {
                stream,
                from,
                count,
            };
            events_page(&engine, query).await
        }
        Err(problem) => bad(problem),
    }
}

async fn read_log(
    engine: &EngineInputs,
    log_read: Result<(Filter, u64, usize), String>,
) -> Response {
    match log_read {
        Ok((filter, from, count)) => {
            let query = Read::Log {
                filter,
                from,
                count,
            };
            events_page(engine, query).await
        }
        Err(problem) => bad(problem),
    }
}

async fn read_all(State(engine): Engine, QueryParams(query): QueryParams<ReadQuery>) -> Response {
    let log_read = paging(query.from, query.count).map(|(from, count)| (Filter::All, from, count));
    read_log(&engine, log_read).await
}

async fn read_category(
    State(engine): Engine,
    PathParams(category): PathParams<String>,
    QueryParams(query): QueryParams<CategoryQuery>,
) -> Response {
    read_log(&engine, category_read(category, query)).await
}

async fn list_databases(
    State(engine): Engine,
    QueryParams(NoQuery {}): QueryParams<NoQuery>,
) -> Response {
    match read(&engine, Read::Databases).await {
        Ok(ReadAnswer::Names(names)) => Json(json!({ "databases": names })).into_response(),
        Ok(other) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{other:?}")),
        Err(response) => response,
    }
}

async fn list_categories(
    State(engine): Engine,
    PathParams(database): PathParams<String>,
    QueryParams(NoQuery {}): QueryParams<NoQuery>,
) -> Response {
    let database = match DatabaseName::new(database) {
        Ok(database) => database,
        Err(problem) => return bad(problem),
    };
    match read(&engine, Read::Categories(database)).await {
        Ok(ReadAnswer::Names(names)) => Json(json!({ "categories": names })).into_response(),
        Ok(other) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{other:?}")),
        Err(response) => response,
    }
}

async fn list_streams(
    State(engine): Engine,
    PathParams((database, category)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<ListQuery>,
) -> Response {
    let count = match page_count(query.count) {
        Ok(count) => count,
        Err(problem) => return bad(problem),
    };
    let (database, category) = match (DatabaseName::new(database), CategoryName::new(category)) {
        (Ok(database), Ok(category)) => (database, category),
        (Err(problem), _) | (_, Err(problem)) => return bad(problem),
    };
    let listing = Read::Streams {
        database,
        category,
        after: query.after,
        count,
    };
    match read(&engine, listing).await {
        Ok(ReadAnswer::Streams(streams)) => {
            let after = (streams.len() == count)
                .then(|| streams.last().map(|info| info.stream.id().to_owned()))
                .flatten();
            let streams: Vec<Value> = streams
                .iter()
                .map(|info| {
                    json!({
                        "stream": info.stream.to_string(),
                        "version": info.version,
                        "last_timestamp_ms": info.last_timestamp_ms,
                    })
                })
                .collect();
            Json(json!({ "streams": streams, "next_after": after })).into_response()
        }
        Ok(other) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{other:?}")),
        Err(response) => response,
    }
}

/// How often a subscription looks for new events once it has caught up.
pub const SUBSCRIPTION_POLL: Duration = Duration::from_millis(100);

/// Server-sent events: the events from `from` on (catch-up), then each new one as the node
/// applies it (live; the node is polled every `SUBSCRIPTION_POLL`). Each SSE event has the
/// event's JSON as data and its cursor (sequence or position) as id, so a client that
/// reconnects continues from the id after the last it saw.
fn subscription(
    engine: EngineInputs,
    from: u64,
    read_at: impl Fn(u64) -> Read + Send + 'static,
    cursor_of: fn(&RecordedEvent) -> u64,
) -> Response {
    let events = futures::stream::unfold(
        (engine, from.max(1), read_at),
        move |(engine, cursor, read_at)| async move {
            loop {
                match read(&engine, read_at(cursor)).await {
                    Ok(ReadAnswer::Events { events, .. }) if !events.is_empty() => {
                        let next = events.last().map_or(cursor, |last| cursor_of(last) + 1);
                        let batch: Vec<Result<Event, Infallible>> = events
                            .iter()
                            .map(|event| {
                                Ok(Event::default()
                                    .id(cursor_of(event).to_string())
                                    .data(event_json(event).to_string()))
                            })
                            .collect();
                        return Some((futures::stream::iter(batch), (engine, next, read_at)));
                    }
                    Ok(ReadAnswer::Events { .. }) => tokio::time::sleep(SUBSCRIPTION_POLL).await,
                    // The node is stopping or its store failed: the subscription ends.
                    Ok(_) | Err(_) => return None,
                }
            }
        },
    )
    .flatten();
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn subscribe_stream(
    State(engine): Engine,
    PathParams(stream): PathParams<String>,
    QueryParams(query): QueryParams<ReadQuery>,
) -> Response {
    match stream_read(&stream, &query) {
        Ok((stream, from, count)) => {
            // A stream another section holds is refused at once (421), not followed in
            // silence.
            let first = Read::Stream {
                stream: stream.clone(),
                from,
                count: 1,
            };
            if let Err(response) = read(&engine, first).await {
                return response;
            }
            subscription(
                engine,
                from,
                move |from| Read::Stream {
                    stream: stream.clone(),
                    from,
                    count,
                },
                |event| event.sequence,
            )
        }
        Err(problem) => bad(problem),
    }
}

fn subscribe_log(engine: EngineInputs, log_read: Result<(Filter, u64, usize), String>) -> Response {
    match log_read {
        Ok((filter, from, count)) => subscription(
            engine,
            from,
            move |from| Read::Log {
                filter: filter.clone(),
                from,
                count,
            },
            |event| event.position,
        ),
        Err(problem) => bad(problem),
    }
}

async fn subscribe_all(
    State(engine): Engine,
    QueryParams(query): QueryParams<ReadQuery>,
) -> Response {
    let log_read = paging(query.from, query.count).map(|(from, count)| (Filter::All, from, count));
    subscribe_log(engine, log_read)
}

async fn subscribe_category(
    State(engine): Engine,
    PathParams(category): PathParams<String>,
    QueryParams(query): QueryParams<CategoryQuery>,
) -> Response {
    subscribe_log(engine, category_read(category, query))
}

/// Prometheus text format: the node's section, store, consensus and command figures.
async fn metrics(State(engine): Engine, QueryParams(NoQuery {}): QueryParams<NoQuery>) -> Response {
    let status = match ask(&engine, Input::Status).await {
        Ok(status) => status,
        Err(response) => return response,
    };
    let mut text = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        text.push_str(&format!(
            "# HELP chorus_{name} {help}\n# TYPE chorus_{name} {kind}\n"
        ));
        for (labels, value) in samples {
            text.push_str(&format!("chorus_{name}{labels} {value}\n"));
        }
    };
    metric(
        "generation",
        "gauge",
        "The node's section generation.",
        &[("", status.generation)],
    );
    metric(
        "section_members",
        "gauge",
        "Members of the node's section.",
        &[("", status.members.len() as u64)],
    );
    metric(
        "sections",
        "gauge",
        "Sections in the node's map.",
        &[("", status.sections as u64)],
    );
    metric(
        "active_member",
        "gauge",
        "1 if the node is an active member of its section.",
        &[("", u64::from(status.active))],
    );
    metric(
        "store_head_position",
        "gauge",
        "Global position of the last event in the node's store.",
        &[("", status.head_position)],
    );
    let drops = &engine.drops;
    metric(
        "dropped_total",
        "counter",
        "Requests and messages the node's bounded queues refused or dropped, by queue.",
        &[
            (
                "{queue=\"client_requests\"}",
                Drops::read(&drops.client_requests),
            ),
            (
                "{queue=\"peer_messages\"}",
                Drops::read(&drops.peer_messages),
            ),
            (
                "{queue=\"outbound_messages\"}",
                Drops::read(&drops.outbound_messages),
            ),
        ],
    );
    let refusals = &status.engine.refusals;
    metric(
        "peer_refusals_total",
        "counter",
        "Peer messages the engine refused or dropped, by reason: strangers' messages other \
         than a join request, strangers' join requests over the throttle, joins this member \
         did not vote for, members' sync requests over their byte budget.",
        &[
            ("{reason=\"stranger_message\"}", refusals.stranger_messages),
            (
                "{reason=\"join_request_throttled\"}",
                refusals.join_requests_throttled,
            ),
            ("{reason=\"join_refused\"}", refusals.joins_refused),
            ("{reason=\"sync_over_budget\"}", refusals.sync_over_budget),
        ],
    );
    let answered = &status.answered;
    metric(
        "commands_answered_total",
        "counter",
        "Commands answered by this node since it started, by outcome.",
        &[
            ("{outcome=\"committed\"}", answered.committed),
            (
                "{outcome=\"already_committed\"}",
                answered.already_committed,
            ),
            ("{outcome=\"refused\"}", answered.refused),
            ("{outcome=\"invalid\"}", answered.invalid),
            ("{outcome=\"failed\"}", answered.failed),
        ],
    );
    if let Some(stats) = &status.consensus {
        let figures: [(&str, &str, &str, u64); 6] = [
            (
                "consensus_events_held",
                "gauge",
                "Events in the gossip graph of the current generation.",
                stats.events_held as u64,
            ),
            (
                "consensus_events_created_total",
                "counter",
                "Events this node created in the current generation.",
                stats.events_created,
            ),
            (
                "consensus_events_rejected_total",
                "counter",
                "Events rejected in the current generation.",
                stats.events_rejected,
            ),
            (
                "consensus_blocks_total",
                "counter",
                "Blocks agreed in the current generation.",
                stats.blocks,
            ),
            (
                "consensus_max_round",
                "gauge",
                "Highest round seen in the current generation.",
                stats.max_round,
            ),
            (
                "consensus_undecided_round",
                "gauge",
                "First round whose fame is undecided.",
                stats.undecided_round,
            ),
        ];
        for (name, kind, help, value) in figures {
            metric(name, kind, help, &[("", value)]);
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
