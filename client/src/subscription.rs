//! Subscriptions that survive reconnects: server-sent events read as a [`Stream`], resumed
//! after the last event yielded (`Last-Event-ID`) on the same node or, when it cannot be
//! reached, the next. A stream's sequence numbers are its section's, the same on every
//! member, so the resumed subscription yields each event once, in order, whichever node
//! serves it.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};

use crate::client::{Client, Retry};
use crate::error::{ClientError, reason};
use crate::event::Event;
use crate::raw::Opened;

/// A subscription whose connection brought no byte for this long is taken for dead (nodes
/// send a keep-alive comment every 5 s) and opened again.
pub const IDLE_LIMIT: Duration = Duration::from_secs(15);

/// What a subscription follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One stream (`Category@id`), by sequence number: the same on every member of its
    /// section, so the subscription may move to another node.
    Stream(String),
    /// A node's log (`$all`, a category of the default database, or an event type), by
    /// that node's store positions: the subscription stays on its first node (another
    /// node's positions need not be the same), reconnecting there.
    Log(LogTarget),
}

/// Which log a [`Target::Log`] follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogTarget {
    /// Every event the node holds.
    All,
    /// One category.
    Category(String),
    /// One event type.
    EventType(String),
}

impl Target {
    fn path(&self, from: u64) -> String {
        match self {
            Self::Stream(stream) => format!("/streams/{stream}/subscribe?from={from}"),
            Self::Log(LogTarget::All) => format!("/all/subscribe?from={from}"),
            Self::Log(LogTarget::Category(category)) => {
                format!("/categories/{category}/subscribe?from={from}")
            }
            Self::Log(LogTarget::EventType(event_type)) => {
                format!("/types/{event_type}/subscribe?from={from}")
            }
        }
    }

    fn cursor(&self, event: &Event) -> u64 {
        match self {
            Self::Stream(_) => event.sequence,
            Self::Log(_) => event.position,
        }
    }

    /// Whether the subscription may resume on another node.
    fn moves(&self) -> bool {
        matches!(self, Self::Stream(_))
    }
}

type Sse = Pin<Box<dyn Stream<Item = Result<eventsource_stream::Event, String>> + Send>>;

/// A subscription: a [`Stream`] of events that ends only with an error nothing can mend
/// (the request is invalid, or no node holds the stream). Transient failures (a node
/// restarting, dying, busy) are retried with backoff, moving to the next node.
pub struct Subscription {
    inner: Pin<Box<dyn Stream<Item = Result<Event, ClientError>> + Send>>,
}

struct State {
    /// For a log target, a client of its first node only.
    client: Client,
    target: Target,
    /// The cursor of the next event to yield.
    next: u64,
    open: Option<Sse>,
    /// Failures since the last event (for the backoff).
    failures: u32,
    /// Nodes in a row that said they do not hold the stream (421).
    misdirected: usize,
    done: bool,
}

/// What opening a connection came to.
enum Opening {
    Open(Sse),
    /// Try again (after a backoff, at the next node).
    Retry,
    /// This node does not hold the stream (421): the next one may.
    Misdirected(ClientError),
    Fatal(ClientError),
}

impl Subscription {
    pub(crate) fn new(client: Client, target: Target, from: u64) -> Self {
        let client = if target.moves() {
            client
        } else {
            client.pinned()
        };
        let state = State {
            client,
            target,
            next: from.max(1),
            open: None,
            failures: 0,
            misdirected: 0,
            done: false,
        };
        Self {
            inner: Box::pin(futures::stream::unfold(state, step)),
        }
    }
}

impl Stream for Subscription {
    type Item = Result<Event, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(context)
    }
}

/// The next event, reconnecting as often as it takes.
async fn step(mut state: State) -> Option<(Result<Event, ClientError>, State)> {
    if state.done {
        return None;
    }
    let retry = Retry::default();
    loop {
        let Some(open) = state.open.as_mut() else {
            match open(&state.client, &state.target, state.next).await {
                Opening::Open(sse) => state.open = Some(sse),
                Opening::Retry => back_off(&mut state, &retry).await,
                Opening::Misdirected(error) => {
                    state.misdirected += 1;
                    if state.misdirected >= state.client.node_count() {
                        state.done = true;
                        return Some((Err(error), state));
                    }
                    state.client.next_node();
                }
                Opening::Fatal(error) => {
                    state.done = true;
                    return Some((Err(error), state));
                }
            }
            continue;
        };
        match open.next().await {
            Some(Ok(sse)) => {
                let Some(event) = decode(&sse) else {
                    state.open = None;
                    state.done = true;
                    let error = ClientError::Unexpected(format!("a subscription event: {sse:?}"));
                    return Some((Err(error), state));
                };
                let cursor = state.target.cursor(&event);
                // Sent again after a reconnect: yielded already.
                if cursor < state.next {
                    continue;
                }
                state.next = cursor + 1;
                state.failures = 0;
                state.misdirected = 0;
                return Some((Ok(event), state));
            }
            Some(Err(_)) | None => {
                state.open = None;
                back_off(&mut state, &retry).await;
            }
        }
    }
}

async fn back_off(state: &mut State, retry: &Retry) {
    state.failures += 1;
    state.client.next_node();
    tokio::time::sleep(retry.backoff(state.failures)).await;
}

/// Opens the subscription at the current node, after the last event yielded.
async fn open(client: &Client, target: &Target, next: u64) -> Opening {
    let mut headers = Vec::new();
    if next > 1 {
        headers.push(("last-event-id", (next - 1).to_string()));
    }
    let path = target.path(next);
    match client.node().open(&path, &headers).await {
        Ok(Opened::Streaming(body)) => Opening::Open(Box::pin(
            idle_limited(body)
                .eventsource()
                .map(|item| item.map_err(|error| error.to_string())),
        )),
        Ok(Opened::Refused(answer)) => match answer.status {
            503 | 504 => Opening::Retry,
            421 => Opening::Misdirected(ClientError::Invalid {
                status: 421,
                reason: reason(&answer.body),
            }),
            status => Opening::Fatal(ClientError::Invalid {
                status,
                reason: reason(&answer.body),
            }),
        },
        Err(_) => Opening::Retry,
    }
}

/// The body's bytes, ending with an error when none came for `IDLE_LIMIT`.
fn idle_limited(body: hyper::body::Incoming) -> impl Stream<Item = Result<Bytes, String>> + Send {
    let frames = http_body_util::BodyDataStream::new(body);
    futures::stream::unfold(Some(frames), |frames| async move {
        let mut frames = frames?;
        match tokio::time::timeout(IDLE_LIMIT, frames.next()).await {
            Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some(frames))),
            Ok(Some(Err(error))) => Some((Err(error.to_string()), None)),
            Ok(None) => None,
            Err(_) => Some((Err(format!("no byte for {} s", IDLE_LIMIT.as_secs())), None)),
        }
    })
}

/// An SSE event's event, checked against its id.
fn decode(sse: &eventsource_stream::Event) -> Option<Event> {
    let event: Event = serde_json::from_str(&sse.data).ok()?;
    let id: u64 = sse.id.parse().ok()?;
    (id == event.sequence || id == event.position).then_some(event)
}
