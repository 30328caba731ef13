//! Subscriptions (server-sent events) to a stream, `$all` or a category. They follow this
//! node's store: a stream another section holds is refused with 421 naming that section, and
//! `$all` and category subscriptions carry this node's section's events only.

use std::convert::Infallible;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chorus_aggregate::{Filter, RecordedEvent};
use futures::StreamExt;

use super::extract::{PathParams, QueryParams};
use super::reads::{
    CategoryQuery, ReadQuery, category_read, event_json, paging, read, stream_read, type_filter,
};
use super::{Engine, bad};
use crate::feed::{Feed, SUBSCRIPTIONS_MAX};
use crate::queues::EngineInputs;
use crate::runtime::{Read, ReadAnswer};

/// How often an idle subscription gets a keep-alive comment: a client that hears nothing for
/// a few of these takes the node for dead and reconnects elsewhere.
pub const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(5);

const _: () = assert!(KEEP_ALIVE.as_secs() * 2 < chorus_client::IDLE_LIMIT.as_secs());

/// Server-sent events: the events from `from` on (catch-up), then each new one as the node
/// applies it (live: the subscription sleeps until the engine publishes a new head, `feed`).
/// Each SSE event has the event's JSON as data and its cursor (sequence or position) as id,
/// so a client that reconnects with `Last-Event-ID` continues after the last it saw. At most
/// `SUBSCRIPTIONS_MAX` run at once; one more is answered 503.
fn subscription(
    engine: EngineInputs,
    feed: &Feed,
    from: u64,
    read_at: impl Fn(u64) -> Read + Send + 'static,
    cursor_of: fn(&RecordedEvent) -> u64,
) -> Response {
    let Some(slot) = feed.slot() else {
        let mut response = super::error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "this node serves {SUBSCRIPTIONS_MAX} subscriptions already; try again later or \
                 another node"
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    let state = (engine, from.max(1), read_at, feed.watch(), slot);
    let events = futures::stream::unfold(state, move |state| async move {
        let (engine, cursor, read_at, mut watch, slot) = state;
        loop {
            // Marked before the read: a head that moves during it wakes the wait below.
            watch.mark_seen();
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
                    let state = (engine, next, read_at, watch, slot);
                    return Some((futures::stream::iter(batch), state));
                }
                Ok(ReadAnswer::Events { .. }) => {
                    if !watch.changed().await {
                        return None; // the engine stopped
                    }
                }
                // The node is stopping or its store failed: the subscription ends.
                Ok(_) | Err(_) => return None,
            }
        }
    })
    .flatten();
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

/// Where a subscription starts: after the `Last-Event-ID` a reconnecting client sends (the
/// id of the last event it saw), else at `from`.
fn resume_from(headers: &HeaderMap, from: u64) -> Result<u64, String> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(from);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .and_then(|last| last.checked_add(1))
        .ok_or_else(|| {
            "Last-Event-ID must be the id of an event this subscription sent (a number)".to_owned()
        })
}

pub async fn subscribe_stream(
    State(engine): Engine,
    Extension(feed): Extension<Feed>,
    headers: HeaderMap,
    PathParams(stream): PathParams<String>,
    QueryParams(query): QueryParams<ReadQuery>,
) -> Response {
    let start = stream_read(&stream, &query)
        .and_then(|(stream, from, count)| Ok((stream, resume_from(&headers, from)?, count)));
    match start {
        Ok((stream, from, count)) => {
            // A stream another section holds is refused at once (421), not followed in
            // silence.
            let first = Read::Stream {
                stream: stream.clone(),
                from,
                count: 1,
                backward: false,
            };
            if let Err(response) = read(&engine, first).await {
                return response;
            }
            subscription(
                engine,
                &feed,
                from,
                move |from| Read::Stream {
                    stream: stream.clone(),
                    from,
                    count,
                    backward: false,
                },
                |event| event.sequence,
            )
        }
        Err(problem) => bad(problem),
    }
}

fn subscribe_log(
    engine: EngineInputs,
    feed: &Feed,
    headers: &HeaderMap,
    log_read: Result<(Filter, u64, usize), String>,
) -> Response {
    let start =
        log_read.and_then(|(filter, from, count)| Ok((filter, resume_from(headers, from)?, count)));
    match start {
        Ok((filter, from, count)) => subscription(
            engine,
            feed,
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

pub async fn subscribe_all(
    State(engine): Engine,
    Extension(feed): Extension<Feed>,
    headers: HeaderMap,
    QueryParams(query): QueryParams<ReadQuery>,
) -> Response {
    let log_read = paging(query.from, query.count).map(|(from, count)| (Filter::All, from, count));
    subscribe_log(engine, &feed, &headers, log_read)
}

pub async fn subscribe_category(
    State(engine): Engine,
    Extension(feed): Extension<Feed>,
    headers: HeaderMap,
    PathParams(category): PathParams<String>,
    QueryParams(query): QueryParams<CategoryQuery>,
) -> Response {
    subscribe_log(engine, &feed, &headers, category_read(category, query))
}

pub async fn subscribe_event_type(
    State(engine): Engine,
    Extension(feed): Extension<Feed>,
    headers: HeaderMap,
    PathParams(event_type): PathParams<String>,
    QueryParams(query): QueryParams<ReadQuery>,
) -> Response {
    let log_read = paging(query.from, query.count)
        .and_then(|(from, count)| Ok((type_filter(&event_type)?, from, count)));
    subscribe_log(engine, &feed, &headers, log_read)
}
