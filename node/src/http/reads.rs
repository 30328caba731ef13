//! The read routes: a stream, `$all`, a category, and the listings. A node answers every
//! read, also for data other sections hold: a stream another section is responsible for is
//! read from one of its members, `$all` and categories are gathered from every section
//! ([`super::across`], where the order of a gathered read is written down).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chorus_aggregate::{CategoryName, DatabaseName, Filter, RecordedEvent, StreamKey, TypeName};
use serde::Deserialize;
use serde_json::{Value, json};

use super::across::{self, Cursor, SectionPage};
use super::extract::{PathParams, QueryParams};
use super::{Engine, NoQuery, READ_COUNT_DEFAULT, READ_COUNT_MAX, ask, bad, error};
use crate::config::hex;
use crate::peer_reads::{PeerRead, PeerReads};
use crate::queues::EngineInputs;
use crate::runtime::{Input, Read, ReadAnswer};

/// The query of a stream read or subscription, and of a `$all` subscription.
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

/// The query of a stream read: as [`ReadQuery`], and a direction.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamReadQuery {
    /// First sequence number (1 by default forward; the newest event by default backward).
    pub from: Option<u64>,
    /// Most events (`READ_COUNT_DEFAULT` by default, 1 to `READ_COUNT_MAX`).
    pub count: Option<usize>,
    /// `forward` (the default) or `backward` (newest first).
    pub direction: Option<String>,
}

/// The query of a `$all` read: `from` is a position, or a cursor from a gathered page's
/// `next` (`across`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// Where to start (1 by default; 0 reads from the start too).
    pub from: Option<String>,
    /// Most events (`READ_COUNT_DEFAULT` by default, 1 to `READ_COUNT_MAX`).
    pub count: Option<usize>,
}

/// The query of a category read: as [`LogQuery`], with the category's database.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryLogQuery {
    /// Where to start.
    pub from: Option<String>,
    /// Most events.
    pub count: Option<usize>,
    /// The category's database (`default` if absent).
    pub database: Option<String>,
}

/// The query of a category subscription.
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

/// One event as the API shows it: the payload as JSON when it is JSON.
pub fn event_json(event: &RecordedEvent) -> Value {
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
        "correlation_id": event.correlation_id.to_hex(),
        "causation_id": event.causation_id.to_hex(),
        "metadata": event
            .metadata
            .as_deref()
            .and_then(|bytes| serde_json::from_slice::<Value>(bytes).ok()),
        "timestamp_ms": event.timestamp_ms,
    })
}

pub async fn read(engine: &EngineInputs, read: Read) -> Result<ReadAnswer, Response> {
    match ask(engine, |reply| Input::Read(read, reply)).await? {
        // 421 Misdirected Request: this node's section does not hold the stream; the
        // answer names the section that does and its members.
        Ok(ReadAnswer::Elsewhere { prefix, members }) => Err((
            StatusCode::MISDIRECTED_REQUEST,
            Json(json!({
                "error": format!(
                    "this node's section does not hold the stream: section {prefix:?} does; \
                     subscribe at one of its members"
                ),
                "section": prefix,
                "members": members.iter().map(|member| hex(&member.0)).collect::<Vec<_>>(),
            })),
        )
            .into_response()),
        Ok(answer) => Ok(answer),
        Err(problem) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, problem)),
    }
}

/// Where a read starts (1 by default, and for 0) and how many it returns: `count` is
/// `READ_COUNT_DEFAULT` by default and must be 1 to `READ_COUNT_MAX`.
pub fn paging(from: Option<u64>, count: Option<usize>) -> Result<(u64, usize), String> {
    Ok((from.unwrap_or(1).max(1), page_count(count)?))
}

pub fn page_count(count: Option<usize>) -> Result<usize, String> {
    match count.unwrap_or(READ_COUNT_DEFAULT) {
        count @ 1..=READ_COUNT_MAX => Ok(count),
        count => Err(format!(
            "query parameter count is {count}; it must be 1 to {READ_COUNT_MAX}"
        )),
    }
}

/// A stream read's parameters.
pub fn stream_read(stream: &str, query: &ReadQuery) -> Result<(StreamKey, u64, usize), String> {
    let (from, count) = paging(query.from, query.count)?;
    let stream = StreamKey::parse(stream).map_err(|problem| problem.to_string())?;
    Ok((stream, from, count))
}

/// A category read's parameters: the category of `database` (`default` if absent).
pub fn category_read(
    category: String,
    query: CategoryQuery,
) -> Result<(Filter, u64, usize), String> {
    let (from, count) = paging(query.from, query.count)?;
    Ok((category_filter(category, query.database)?, from, count))
}

/// The filter of events of type `event_type`.
pub fn type_filter(event_type: &str) -> Result<Filter, String> {
    TypeName::new(event_type)
        .map(Filter::EventType)
        .map_err(|problem| problem.to_string())
}

/// A stream read's direction: backward or not.
fn backward(direction: Option<&str>) -> Result<bool, String> {
    match direction {
        None | Some("forward") => Ok(false),
        Some("backward") => Ok(true),
        Some(other) => Err(format!(
            "query parameter direction is {other:?}; it must be forward or backward"
        )),
    }
}

/// The filter of `category` in `database` (`default` if absent).
pub fn category_filter(category: String, database: Option<String>) -> Result<Filter, String> {
    let database = match database {
        Some(name) => DatabaseName::new(name)
            .map_err(|problem| format!("query parameter database: {problem}"))?,
        None => DatabaseName::default_database(),
    };
    let category = CategoryName::new(category).map_err(|problem| problem.to_string())?;
    Ok(Filter::Category(database, category))
}

pub async fn read_stream(
    State(engine): Engine,
    Extension(reads): Extension<PeerReads>,
    PathParams(stream): PathParams<String>,
    QueryParams(query): QueryParams<StreamReadQuery>,
) -> Response {
    let parsed = backward(query.direction.as_deref()).and_then(|backward| {
        let forward = ReadQuery {
            from: query.from,
            count: query.count,
        };
        let (stream, from, count) = stream_read(&stream, &forward)?;
        // Backward with no `from`: from the newest event.
        let from = if backward && query.from.is_none() {
            u64::MAX
        } else {
            from
        };
        Ok((stream, from, count, backward))
    });
    let (stream, from, count, backward) = match parsed {
        Ok(read) => read,
        Err(problem) => return bad(problem),
    };
    let asked = PeerRead::Stream {
        stream: stream.to_string(),
        from,
        count,
        backward,
    };
    let read = Read::Stream {
        stream,
        from,
        count,
        backward,
    };
    match ask(&engine, |reply| Input::Read(read, reply)).await {
        Ok(Ok(ReadAnswer::Elsewhere { prefix, members })) => {
            across::stream_elsewhere(&reads, &prefix, &members, asked).await
        }
        Ok(Ok(answer)) => page_json(answer),
        Ok(Err(problem)) => error(StatusCode::INTERNAL_SERVER_ERROR, problem),
        Err(response) => response,
    }
}

/// A page of events as JSON, with where the next page starts.
fn page_json(answer: ReadAnswer) -> Response {
    match answer {
        ReadAnswer::Events { events, next } => {
            let events: Vec<Value> = events.iter().map(event_json).collect();
            Json(json!({ "events": events, "next": next })).into_response()
        }
        other => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected answer {other:?}"),
        ),
    }
}

pub async fn read_all(
    State(engine): Engine,
    Extension(reads): Extension<PeerReads>,
    QueryParams(query): QueryParams<LogQuery>,
) -> Response {
    match page_count(query.count) {
        Ok(count) => read_log(&engine, &reads, Filter::All, query.from.as_deref(), count).await,
        Err(problem) => bad(problem),
    }
}

pub async fn read_category(
    State(engine): Engine,
    Extension(reads): Extension<PeerReads>,
    PathParams(category): PathParams<String>,
    QueryParams(query): QueryParams<CategoryLogQuery>,
) -> Response {
    let filter = page_count(query.count)
        .and_then(|count| category_filter(category, query.database).map(|filter| (filter, count)));
    match filter {
        Ok((filter, count)) => {
            read_log(&engine, &reads, filter, query.from.as_deref(), count).await
        }
        Err(problem) => bad(problem),
    }
}

pub async fn read_event_type(
    State(engine): Engine,
    Extension(reads): Extension<PeerReads>,
    PathParams(event_type): PathParams<String>,
    QueryParams(query): QueryParams<LogQuery>,
) -> Response {
    let filter = page_count(query.count)
        .and_then(|count| type_filter(&event_type).map(|filter| (filter, count)));
    match filter {
        Ok((filter, count)) => {
            read_log(&engine, &reads, filter, query.from.as_deref(), count).await
        }
        Err(problem) => bad(problem),
    }
}

/// This node's section's part of a gathered read, as JSON events and where it goes on.
async fn own_section_page(
    engine: &EngineInputs,
    filter: Filter,
    from: u64,
    count: usize,
) -> Result<(Vec<Value>, Option<u64>), Vec<String>> {
    match read(
        engine,
        Read::SectionLog {
            filter,
            from,
            count,
        },
    )
    .await
    {
        Ok(ReadAnswer::Events { events, next }) => {
            Ok((events.iter().map(event_json).collect(), next))
        }
        Ok(other) => Err(vec![format!("unexpected answer {other:?}")]),
        Err(_) => Err(vec!["this node could not read its own store".into()]),
    }
}

/// The read another section's member is asked for its part of `$all` or a category.
fn peer_log_read(filter: &Filter, from: u64, count: usize) -> PeerRead {
    let (database, category, event_type) = match filter {
        Filter::Category(database, category) => (
            Some(database.as_str().to_owned()),
            Some(category.as_str().to_owned()),
            None,
        ),
        Filter::EventType(event_type) => (None, None, Some(event_type.as_str().to_owned())),
        Filter::All | Filter::Stream(_) => (None, None, None),
    };
    PeerRead::Log {
        database,
        category,
        event_type,
        from,
        count,
    }
}

/// `$all` or a category: this node's own log in a network of one section, else gathered
/// from every section.
async fn read_log(
    engine: &EngineInputs,
    reads: &PeerReads,
    filter: Filter,
    from: Option<&str>,
    count: usize,
) -> Response {
    let cursor = match Cursor::parse(from) {
        Ok(cursor) => cursor,
        Err(problem) => return bad(problem),
    };
    let (own, sections) = match read(engine, Read::Map).await {
        Ok(ReadAnswer::Map { own, sections }) => (own, sections),
        Ok(other) => return page_json(other),
        Err(response) => return response,
    };
    if sections.len() <= 1 {
        let from = cursor.start_of(&own);
        return match read(
            engine,
            Read::Log {
                filter,
                from,
                count,
            },
        )
        .await
        {
            Ok(answer) => page_json(answer),
            Err(response) => response,
        };
    }
    let pages = sections.into_iter().map(|(prefix, members)| {
        let from = cursor.start_of(&prefix);
        let filter = filter.clone();
        async move {
            let page = if prefix == own {
                own_section_page(engine, filter, from, count).await
            } else {
                across::ask_section(reads, &members, peer_log_read(&filter, from, count)).await
            };
            page.map(|(events, next)| SectionPage {
                prefix,
                from,
                events,
                next,
            })
            .map_err(|problems| (prefix, problems))
        }
    });
    let mut gathered = Vec::new();
    for page in futures::future::join_all(pages).await {
        match page {
            Ok(page) => gathered.push(page),
            Err((prefix, problems)) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "no member of section {:?} answered, so the read would miss its \
                         events; try again: {}",
                        prefix.to_string(),
                        problems.join("; ")
                    ),
                );
            }
        }
    }
    let (events, next) = across::merge(&gathered, count);
    Json(json!({ "events": events, "next": next })).into_response()
}

pub async fn list_databases(
    State(engine): Engine,
    QueryParams(NoQuery {}): QueryParams<NoQuery>,
) -> Response {
    match read(&engine, Read::Databases).await {
        Ok(ReadAnswer::Names(names)) => Json(json!({ "databases": names })).into_response(),
        Ok(other) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{other:?}")),
        Err(response) => response,
    }
}

pub async fn list_categories(
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

pub async fn list_streams(
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
