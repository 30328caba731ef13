//! The typed client over one or more nodes of a cluster.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::Method;
use serde_json::Value;

use crate::error::{ClientError, reason};
use crate::event::{Command, Event, Receipt};
use crate::raw::{Answer, NodeClient};
use crate::subscription::{LogTarget, Subscription, Target};

/// How a command is sent again when no node could carry it: after 503 (the node is busy or
/// cannot reach agreement now), 504 (no answer in time) or a connection error, always under
/// the same command id, so the command applies at most once however often it is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Most times a command is sent.
    pub attempts: u32,
    /// The wait before the second attempt; it doubles after each failure...
    pub first_backoff: Duration,
    /// ...up to this.
    pub backoff_max: Duration,
}

impl Default for Retry {
    /// Ten attempts over about ten seconds.
    fn default() -> Self {
        Self {
            attempts: 10,
            first_backoff: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
        }
    }
}

impl Retry {
    /// The wait after failed attempt `attempt` (from 1), with up to a quarter more at
    /// random, so clients that failed together do not all come back together.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doubled = self
            .first_backoff
            .saturating_mul(1 << attempt.saturating_sub(1).min(16));
        let wait = doubled.min(self.backoff_max);
        let jitter = wait.mul_f64(rand::random::<f64>() / 4.0);
        wait + jitter
    }
}

/// A client of a cluster, given the HTTP addresses of one or more of its nodes. Requests
/// go to one node; a node that cannot be reached, or answers 503, is left for the next.
/// Cheap to clone.
#[derive(Clone)]
pub struct Client {
    nodes: Arc<Vec<NodeClient>>,
    /// The node requests go to now (an index into `nodes`, modulo its length).
    current: Arc<AtomicUsize>,
    retry: Retry,
}

impl Client {
    /// A client of the nodes at these addresses (`http://HOST:PORT`), tried in turn.
    pub fn new<S: AsRef<str>>(nodes: &[S]) -> Result<Self, ClientError> {
        if nodes.is_empty() {
            return Err(ClientError::Usage("no node address given".into()));
        }
        let nodes = nodes
            .iter()
            .map(|base| NodeClient::new(base.as_ref()).map_err(ClientError::Usage))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            nodes: Arc::new(nodes),
            current: Arc::new(AtomicUsize::new(0)),
            retry: Retry::default(),
        })
    }

    /// The same client, sending `token` as a bearer token.
    #[must_use]
    pub fn with_token(self, token: &str) -> Self {
        let nodes = self
            .nodes
            .iter()
            .map(|node| node.clone().with_token(token.to_owned()))
            .collect();
        Self {
            nodes: Arc::new(nodes),
            ..self
        }
    }

    /// The same client, trusting the certificates in `pem` for `https://` nodes (a local
    /// cluster's `cluster.crt`).
    pub fn trusting(self, pem: &[u8]) -> Result<Self, ClientError> {
        let nodes = self
            .nodes
            .iter()
            .map(|node| node.clone().trusting(pem))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ClientError::Usage)?;
        Ok(Self {
            nodes: Arc::new(nodes),
            ..self
        })
    }

    /// The same client, retrying commands as `retry` says.
    #[must_use]
    pub fn with_retry(self, retry: Retry) -> Self {
        Self { retry, ..self }
    }

    /// The node requests go to now.
    pub(crate) fn node(&self) -> &NodeClient {
        &self.nodes[self.current.load(Ordering::Relaxed) % self.nodes.len()]
    }

    /// How many nodes the client knows.
    pub(crate) fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Leaves the current node for the next.
    pub(crate) fn next_node(&self) {
        self.current.fetch_add(1, Ordering::Relaxed);
    }

    /// A client of the current node only.
    pub(crate) fn pinned(&self) -> Self {
        Self {
            nodes: Arc::new(vec![self.node().clone()]),
            current: Arc::new(AtomicUsize::new(0)),
            retry: self.retry,
        }
    }

    /// Sends `command` to `stream` under a new random command id (see [`Client::send`]).
    pub async fn submit(
        &self,
        stream: &str,
        command: &impl serde::Serialize,
    ) -> Result<Receipt, ClientError> {
        self.send(&Command::new(stream, command)?).await
    }

    /// Sets a stream's retention rules (agreed like any command, so every member hides the
    /// same events): reads show at most `max_count` of its newest events, none older than
    /// `max_age_ms` before the newest agreed time.
    pub async fn set_stream_metadata(
        &self,
        stream: &str,
        max_count: Option<u64>,
        max_age_ms: Option<u64>,
    ) -> Result<Receipt, ClientError> {
        let command =
            serde_json::json!({"$metadata": {"max_count": max_count, "max_age_ms": max_age_ms}});
        self.submit(stream, &command).await
    }

    /// Soft-deletes a stream: reads no longer show its events; a later command starts it
    /// again after them.
    pub async fn delete_stream(&self, stream: &str) -> Result<Receipt, ClientError> {
        self.submit(stream, &serde_json::json!({"$delete": {}}))
            .await
    }

    /// Sends a command and waits until it is agreed and durable on the answering node.
    /// Sent again under the same id after 503, 504 or a connection error (with backoff,
    /// moving to the next node), so it applies at most once. A refusal by the aggregate is
    /// [`ClientError::Refused`]; a command that can never run as it is,
    /// [`ClientError::Invalid`].
    pub async fn send(&self, command: &Command) -> Result<Receipt, ClientError> {
        let path = format!("/streams/{}/commands", command.stream);
        let body = command.body();
        let mut last = String::new();
        for attempt in 1..=self.retry.attempts.max(1) {
            if attempt > 1 {
                tokio::time::sleep(self.retry.backoff(attempt - 1)).await;
            }
            let answer = match self.node().request(Method::POST, &path, Some(&body)).await {
                Ok(answer) => answer,
                Err(error) => {
                    last = error;
                    self.next_node();
                    continue;
                }
            };
            match answer.status {
                200 | 201 => return receipt(command, answer),
                409 => {
                    return Err(ClientError::Refused {
                        reason: refusal(&answer.body),
                    });
                }
                503 | 504 => {
                    last = format!("{} {}", answer.status, reason(&answer.body));
                    self.next_node();
                }
                status => {
                    return Err(ClientError::Invalid {
                        status,
                        reason: reason(&answer.body),
                    });
                }
            }
        }
        Err(ClientError::Unavailable {
            attempts: self.retry.attempts.max(1),
            last,
        })
    }

    /// A stream's events from sequence `from` on, at most `count` (1 to 1,000).
    pub async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        count: usize,
    ) -> Result<Vec<Event>, ClientError> {
        let path = format!("/streams/{stream}?from={from}&count={count}");
        Ok(self.read_page(&path).await?.events)
    }

    /// A stream's events newest first, from sequence `from` down (the newest when `None`),
    /// at most `count`.
    pub async fn read_stream_backward(
        &self,
        stream: &str,
        from: Option<u64>,
        count: usize,
    ) -> Result<Vec<Event>, ClientError> {
        let from = from.map_or_else(String::new, |from| format!("&from={from}"));
        let path = format!("/streams/{stream}?direction=backward&count={count}{from}");
        Ok(self.read_page(&path).await?.events)
    }

    /// A page of a category's events (of the `default` database) from `from` (a page's
    /// `next`; the start when `None`), at most `count`. Across sections the pages are
    /// gathered from every section (README: the order of a gathered read).
    pub async fn read_category(
        &self,
        category: &str,
        from: Option<&str>,
        count: usize,
    ) -> Result<Page, ClientError> {
        self.read_page(&log_path(&format!("/categories/{category}"), from, count))
            .await
    }

    /// A page of the events of one type, as [`Client::read_category`].
    pub async fn read_event_type(
        &self,
        event_type: &str,
        from: Option<&str>,
        count: usize,
    ) -> Result<Page, ClientError> {
        self.read_page(&log_path(&format!("/types/{event_type}"), from, count))
            .await
    }

    /// A page of every event of the cluster (`$all`), as [`Client::read_category`].
    pub async fn read_all(&self, from: Option<&str>, count: usize) -> Result<Page, ClientError> {
        self.read_page(&log_path("/all", from, count)).await
    }

    /// A read, from the current node or, if it cannot be reached, the next ones.
    async fn read_page(&self, path: &str) -> Result<Page, ClientError> {
        let mut last = String::new();
        for _ in 0..self.node_count() {
            match self.node().get(path).await {
                Ok(answer) if answer.status == 200 => return page_of(&answer.body),
                Ok(answer) if answer.status == 503 => {
                    last = reason(&answer.body);
                }
                Ok(answer) => {
                    return Err(ClientError::Invalid {
                        status: answer.status,
                        reason: reason(&answer.body),
                    });
                }
                Err(error) => last = error,
            }
            self.next_node();
        }
        Err(ClientError::Unavailable {
            attempts: u32::try_from(self.node_count()).unwrap_or(u32::MAX),
            last,
        })
    }

    /// A stream's events from sequence `from` on, then each new one as it is agreed: a
    /// [`futures::Stream`] that reconnects by itself (to the next node when one dies) and
    /// resumes after the last event it yielded, so it yields every event once, in order.
    pub fn subscribe_stream(&self, stream: &str, from: u64) -> Subscription {
        Subscription::new(self.clone(), Target::Stream(stream.to_owned()), from)
    }

    /// A log's events (`$all`, a category or an event type) from position `from` of the
    /// current node's store, then each new one: as [`Client::subscribe_stream`], except that
    /// it stays on that node (positions are a node's own), reconnecting there after a
    /// failure.
    pub fn subscribe_log(&self, log: LogTarget, from: u64) -> Subscription {
        Subscription::new(self.clone(), Target::Log(log), from)
    }
}

fn receipt(command: &Command, answer: Answer) -> Result<Receipt, ClientError> {
    let outcome = answer.body["outcome"].clone();
    if outcome.get("Committed").is_none() && outcome.get("AlreadyCommitted").is_none() {
        return Err(ClientError::Unexpected(answer.body.to_string()));
    }
    Ok(Receipt {
        command_id: command.command_id.clone(),
        duplicate: answer.status == 200,
        outcome,
    })
}

/// The aggregate's reason in a 409 answer (`{"outcome": {"Refused": "..."}}`).
fn refusal(body: &Value) -> String {
    body["outcome"]["Refused"]
        .as_str()
        .map_or_else(|| reason(body), str::to_owned)
}

/// A page of events and where the next one starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Page {
    /// The events.
    pub events: Vec<Event>,
    /// Pass it back as `from` for the next page; `None` at the end (for now).
    pub next: Option<String>,
}

fn page_of(body: &Value) -> Result<Page, ClientError> {
    let events = serde_json::from_value(body["events"].clone())
        .map_err(|error| ClientError::Unexpected(format!("events: {error}")))?;
    let next = match &body["next"] {
        Value::Null => None,
        Value::String(cursor) => Some(cursor.clone()),
        other => Some(other.to_string()),
    };
    Ok(Page { events, next })
}

fn log_path(route: &str, from: Option<&str>, count: usize) -> String {
    match from {
        Some(from) => format!("{route}?from={from}&count={count}"),
        None => format!("{route}?count={count}"),
    }
}
