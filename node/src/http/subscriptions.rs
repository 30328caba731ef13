//! Subscriptions (server-sent events) to a stream, `$all` or a category. They follow this
//! node's store: a stream another section holds is refused with 421 naming that section, and
//! `$all` and category subscriptions carry this node's section's events only.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chorus_aggregate::{Filter, RecordedEvent};
use futures::StreamExt;

use super::extract::{PathParams, QueryParams};
use super::reads::{
    CategoryQuery, ReadQuery, category_read, event_json, paging, read, stream_read,
};
use super::{Engine, bad};
use crate::queues::EngineInputs;
use crate::runtime::{Read, ReadAnswer};

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

pub async fn subscribe_stream(
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

pub async fn subscribe_all(
    State(engine): Engine,
    QueryParams(query): QueryParams<ReadQuery>,
) -> Response {
    let log_read = paging(query.from, query.count).map(|(from, count)| (Filter::All, from, count));
    subscribe_log(engine, log_read)
}

pub async fn subscribe_category(
    State(engine): Engine,
    PathParams(category): PathParams<String>,
    QueryParams(query): QueryParams<CategoryQuery>,
) -> Response {
    subscribe_log(engine, category_read(category, query))
}
