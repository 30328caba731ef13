//! A small HTTP client for a node's API, used by `chorus client`, `chorus demo` and
//! `chorus bench`: hyper's pooled client (keep-alive connections, so a benchmark measures the
//! cluster rather than TCP handshakes), JSON in and out, every failure a readable error.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// How long a request may take before the client gives up (a command waits for agreement;
/// the node itself answers 504 after 30 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);

/// How long an idle keep-alive connection stays in the pool: less than the node's
/// `HEADER_READ_TIMEOUT`, after which the node closes it, so the pool never picks a
/// connection the node is closing at that moment.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

const _: () = assert!(POOL_IDLE_TIMEOUT.as_secs() < crate::http::HEADER_READ_TIMEOUT.as_secs());

/// A node's answer: the HTTP status and the JSON body.
#[derive(Clone, Debug)]
pub struct Answer {
    /// HTTP status code.
    pub status: u16,
    /// The body, parsed (`Value::Null` if empty).
    pub body: Value,
}

/// A client for one node's HTTP API. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct Client {
    http: HyperClient<HttpConnector, Full<Bytes>>,
    base: String,
    /// Sent as `Authorization: Bearer <token>` (the admin API).
    token: Option<String>,
}

impl Client {
    /// A client for the node at `base` (`http://127.0.0.1:PORT`).
    pub fn new(base: &str) -> Result<Self, String> {
        let base = base.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") {
            return Err(format!("{base}: a node address starts with http://"));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Ok(Self {
            http,
            base,
            token: None,
        })
    }

    /// The same client, sending `token` as a bearer token with every request.
    pub fn with_token(mut self, token: String) -> Self {
        self.token = Some(token);
        self
    }

    /// The node's base address.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request; the path starts with `/`.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, String> {
        let uri = format!("{}{path}", self.base);
        let bytes = body.map_or_else(Bytes::new, |body| Bytes::from(body.to_string()));
        let mut request = Request::builder()
            .method(method)
            .uri(&uri)
            .header("content-type", "application/json");
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(bytes))
            .map_err(|error| format!("{uri}: {error}"))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|error| format!("{uri}: {error}"))?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|error| format!("{uri}: {error}"))?
                .to_bytes();
            let body = if body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&body).map_err(|error| {
                    format!(
                        "{uri}: the answer is not JSON ({error}): {}",
                        String::from_utf8_lossy(&body)
                    )
                })?
            };
            Ok(Answer { status, body })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("{uri}: no answer in {} s", REQUEST_TIMEOUT.as_secs()))?
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Answer, String> {
        self.request(Method::GET, path, None).await
    }

    /// Sends a command to a stream (`command_id`: 32 hex digits, random when `None`).
    pub async fn submit(
        &self,
        stream: &str,
        command: Value,
        command_id: Option<&str>,
    ) -> Result<Answer, String> {
        let mut body = json!({ "command": command });
        if let Some(id) = command_id {
            body["command_id"] = Value::String(id.to_owned());
        }
        self.request(
            Method::POST,
            &format!("/streams/{stream}/commands"),
            Some(&body),
        )
        .await
    }

    /// Sends a command body as the API takes it (`command`, `command_id`,
    /// `expected_version`).
    pub async fn submit_body(&self, stream: &str, body: &Value) -> Result<Answer, String> {
        self.request(
            Method::POST,
            &format!("/streams/{stream}/commands"),
            Some(body),
        )
        .await
    }

    /// Reads a stream's events from sequence `from` on, at most `count`.
    pub async fn read(&self, stream: &str, from: u64, count: usize) -> Result<Vec<Value>, String> {
        let answer = self
            .get(&format!("/streams/{stream}?from={from}&count={count}"))
            .await?;
        if answer.status != 200 {
            return Err(format!("{stream}: {} {}", answer.status, answer.body));
        }
        Ok(answer.body["events"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Whether the node process answers (`/health/live`; `/health` also says whether it is
    /// ready to serve).
    pub async fn healthy(&self) -> bool {
        matches!(
            self.get("/health/live").await,
            Ok(Answer { status: 200, .. })
        )
    }
}

/// What an answer's outcome was, in one word (`Committed`, `Refused`, ...), or the error.
pub fn outcome_name(answer: &Answer) -> String {
    answer.body["outcome"]
        .as_object()
        .and_then(|outcome| outcome.keys().next().cloned())
        .or_else(|| {
            answer.body["error"]
                .as_str()
                .map(|error| format!("error: {error}"))
        })
        .unwrap_or_else(|| format!("status {}", answer.status))
}

/// What `chorus client` does.
#[derive(Debug, clap::Subcommand)]
pub enum ClientAction {
    /// Send a command, for example
    /// `chorus client send BankAccount@alice '{"Deposit": {"amount": 5, "transfer": null}}'`;
    /// prints the answer (the command id and its outcome) as JSON.
    Send {
        /// The stream (`Category@id`).
        stream: String,
        /// The command, as its aggregate's JSON.
        command: String,
        /// The command id (32 hex digits; sending the same id again never applies it twice).
        /// Random if absent.
        #[arg(long)]
        id: Option<String>,
        /// `any` (the default), `no_stream`, or the version the stream must be at.
        #[arg(long)]
        expected_version: Option<String>,
    },
    /// Print a stream's events, one JSON object per line.
    Read {
        /// The stream (`Category@id`).
        stream: String,
        /// First sequence number.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Most events.
        #[arg(long, default_value_t = 100)]
        count: usize,
    },
    /// Print a stream's events, then each new one as it is agreed, until Ctrl-C.
    Tail {
        /// The stream (`Category@id`).
        stream: String,
        /// First sequence number.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Milliseconds between polls for new events.
        #[arg(long, default_value_t = 250)]
        poll_ms: u64,
    },
    /// Print the node's status as JSON.
    Status,
}

/// The node `chorus client` talks to: `--node`, else node 0 of the local cluster.
fn pick_node(node: Option<String>, data_dir: &Path) -> Result<String, String> {
    if let Some(node) = node {
        return Ok(node);
    }
    let path = data_dir.join("node-0").join("node.toml");
    let checked = crate::config::NodeConfig::load(&path).map_err(|error| {
        format!(
            "no --node given and no local cluster under {} ({error})",
            data_dir.display()
        )
    })?;
    Ok(format!("http://{}", checked.config.http))
}

/// Runs `chorus client`. A command the node does not commit is an error (exit code 1), with
/// the node's answer printed.
pub async fn run_cli(
    node: Option<String>,
    data_dir: &Path,
    action: ClientAction,
) -> Result<(), String> {
    let client = Client::new(&pick_node(node, data_dir)?)?;
    match action {
        ClientAction::Send {
            stream,
            command,
            id,
            expected_version,
        } => send(&client, &stream, &command, id, expected_version).await,
        ClientAction::Read {
            stream,
            from,
            count,
        } => {
            for event in client.read(&stream, from, count).await? {
                crate::cli::say(&event.to_string());
            }
            Ok(())
        }
        ClientAction::Tail {
            stream,
            from,
            poll_ms,
        } => {
            tail(
                &client,
                &stream,
                from,
                Duration::from_millis(poll_ms.max(10)),
            )
            .await
        }
        ClientAction::Status => {
            let answer = client.get("/status").await?;
            crate::cli::say(&answer.body.to_string());
            if answer.status == 200 {
                Ok(())
            } else {
                Err(format!("status {}", answer.status))
            }
        }
    }
}

/// `chorus client send`: `expected_version` is a number or a name (`no_stream`, ...).
async fn send(
    client: &Client,
    stream: &str,
    command: &str,
    id: Option<String>,
    expected_version: Option<String>,
) -> Result<(), String> {
    let command: Value = serde_json::from_str(command)
        .map_err(|error| format!("the command is not JSON: {error}"))?;
    let mut body = json!({ "command": command });
    if let Some(id) = id {
        body["command_id"] = Value::String(id);
    }
    if let Some(expected) = expected_version {
        body["expected_version"] = match expected.parse::<u64>() {
            Ok(version) => json!(version),
            Err(_) => Value::String(expected),
        };
    }
    let answer = client.submit_body(stream, &body).await?;
    crate::cli::say(&answer.body.to_string());
    if (200..300).contains(&answer.status) {
        Ok(())
    } else {
        Err(format!("{} ({})", outcome_name(&answer), answer.status))
    }
}

/// `chorus client tail`: prints the stream's events from `from`, then polls for new ones
/// every `poll` until Ctrl-C.
async fn tail(client: &Client, stream: &str, from: u64, poll: Duration) -> Result<(), String> {
    let mut next = from.max(1);
    loop {
        let events = tokio::select! {
            () = crate::cli::shutdown_signal() => return Ok(()),
            events = client.read(stream, next, 1_000) => events?,
        };
        for event in &events {
            crate::cli::say(&event.to_string());
            next = next.max(event["sequence"].as_u64().unwrap_or(next) + 1);
        }
        if events.is_empty() {
            tokio::select! {
                () = crate::cli::shutdown_signal() => return Ok(()),
                () = tokio::time::sleep(poll) => {}
            }
        }
    }
}
