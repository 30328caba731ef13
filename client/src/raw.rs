//! One node's HTTP API over hyper's pooled client (keep-alive connections, so a benchmark
//! measures the cluster rather than TCP handshakes): JSON in and out, every failure a
//! readable error.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_rustls::HttpsConnector;
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

/// A node's answer: the HTTP status and the JSON body.
#[derive(Clone, Debug)]
pub struct Answer {
    /// HTTP status code.
    pub status: u16,
    /// The body, parsed (`Value::Null` if empty).
    pub body: Value,
}

/// A client for one node's HTTP API, answers as JSON: the layer [`crate::Client`] builds on,
/// and what tools that need a node's raw answers use. Cheap to clone (the connection pool is
/// shared).
#[derive(Clone)]
pub struct NodeClient {
    http: HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: String,
    /// Sent as `Authorization: Bearer <token>`.
    token: Option<String>,
}

impl NodeClient {
    /// A client for the node at `base` (`http://127.0.0.1:PORT`, or `https://...` for a node
    /// serving TLS with a certificate from [`NodeClient::trusting`]).
    pub fn new(base: &str) -> Result<Self, String> {
        let base = base.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(format!(
                "{base}: a node address starts with http:// or https://"
            ));
        }
        Ok(Self {
            http: pooled(rustls::RootCertStore::empty())?,
            base,
            token: None,
        })
    }

    /// The same client, trusting the certificates in `pem` (a node's self-signed
    /// certificate, or the authority that signed it) for `https://` nodes.
    pub fn trusting(mut self, pem: &[u8]) -> Result<Self, String> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(pem) {
            let certificate =
                certificate.map_err(|error| format!("a trusted certificate: {error}"))?;
            roots
                .add(certificate)
                .map_err(|error| format!("a trusted certificate: {error}"))?;
        }
        if roots.is_empty() {
            return Err("no certificate in the PEM to trust".to_owned());
        }
        self.http = pooled(roots)?;
        Ok(self)
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

/// hyper's pooled client over plain TCP or TLS (trusting `roots` only).
fn pooled(
    roots: rustls::RootCertStore,
) -> Result<HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS: {error}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Ok(HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(connector))
}

/// A `GET` whose body is read as it comes (a subscription): the status and, for 200, the
/// body; for any other status the JSON error.
pub(crate) enum Opened {
    /// 200: the body, streaming.
    Streaming(hyper::body::Incoming),
    /// Another status, and its body.
    Refused(Answer),
}

impl NodeClient {
    /// Opens `GET path` with `headers`, waiting at most `REQUEST_TIMEOUT` for the head.
    pub(crate) async fn open(
        &self,
        path: &str,
        headers: &[(&str, String)],
    ) -> Result<Opened, String> {
        let uri = format!("{}{path}", self.base);
        let mut request = Request::builder().method(Method::GET).uri(&uri);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|error| format!("{uri}: {error}"))?;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| format!("{uri}: no answer in {} s", REQUEST_TIMEOUT.as_secs()))?
            .map_err(|error| format!("{uri}: {error}"))?;
        let status = response.status().as_u16();
        if status == 200 {
            return Ok(Opened::Streaming(response.into_body()));
        }
        let body = tokio::time::timeout(REQUEST_TIMEOUT, response.into_body().collect())
            .await
            .map_err(|_| format!("{uri}: no answer in {} s", REQUEST_TIMEOUT.as_secs()))?
            .map_err(|error| format!("{uri}: {error}"))?
            .to_bytes();
        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok(Opened::Refused(Answer { status, body }))
    }
}
