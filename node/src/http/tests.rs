//! The API's edges. In process: every error is `{"error": "..."}` with a fitting status (a
//! wrong method, a path that does not decode, a bad body, a query parameter the route does
//! not take or cannot parse). Over loopback TCP, served as `chorus node` serves it: an
//! oversized body is refused at once, and a client that sends too slowly is cut off.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use super::{BODY_BYTES_MAX, BODY_READ_TIMEOUT, HEADER_READ_TIMEOUT, Network, router, serve};
use crate::access::{Access, TokenConfig};
use crate::runtime::{Input, Read, ReadAnswer};

const STREAM: &str = "/streams/BankAccount@alice";
const COMMANDS: &str = "/streams/BankAccount@alice/commands";
const COMMAND: &str = r#"{"command": {"Deposit": {"amount": 1, "transfer": null}}}"#;

/// The router over a stand-in engine thread that answers every read with an empty page or
/// listing and drops every other input (a command then gets 503, "the node is stopping").
/// The thread ends when the router (the last sender) is dropped.
fn router_over_empty_store() -> Router {
    router_with(crate::feed::Feed::new(0).1, Arc::default())
}

/// As `router_over_empty_store`, over `feed`, noting where each stream or log read starts
/// in `reads_from`.
fn router_with(feed: crate::feed::Feed, reads_from: Arc<Mutex<Vec<u64>>>) -> Router {
    let (engine, inputs) = crate::queues::EngineInputs::new(64);
    std::thread::spawn(move || {
        while let Some(input) = inputs.recv() {
            if let Input::Read(read, reply) = input {
                let answer = match read {
                    Read::Stream { from, .. }
                    | Read::Log { from, .. }
                    | Read::SectionLog { from, .. } => {
                        reads_from.lock().expect("not poisoned").push(from);
                        ReadAnswer::Events {
                            events: Vec::new(),
                            next: None,
                        }
                    }
                    Read::Map => ReadAnswer::Map {
                        own: chorus_routing::Prefix::ROOT,
                        sections: vec![(chorus_routing::Prefix::ROOT, Vec::new())],
                    },
                    Read::Databases | Read::Categories(_) => ReadAnswer::Names(Vec::new()),
                    Read::Streams { .. } => ReadAnswer::Streams(Vec::new()),
                };
                let _ = reply.send(Ok(answer));
            }
        }
    });
    router(
        engine,
        (feed, crate::projections::Projections::none()),
        open_access(Some(ADMIN_TOKEN)),
        Network::default(),
    )
}

const ADMIN_TOKEN: &str = "an-admin-token-for-tests";

/// Reads and writes open to anyone (the edges under test are elsewhere), the admin API
/// behind `admin_token`.
fn open_access(admin_token: Option<&str>) -> Access {
    Access::new(Some("open"), &[], admin_token).expect("valid")
}

/// One request through the router; a body is sent as JSON.
async fn exchange(method: &str, uri: &str, body: Option<&str>) -> (StatusCode, String) {
    let mut request = Request::builder().method(method).uri(uri);
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let body = body.map_or_else(Body::empty, |text| Body::from(text.to_owned()));
    send(request.body(body).expect("a valid request")).await
}

/// One request through a fresh router: the status and the body (none for a subscription:
/// its body never ends).
async fn send(request: Request<Body>) -> (StatusCode, String) {
    let response = router_over_empty_store()
        .oneshot(request)
        .await
        .expect("the router is infallible");
    let status = response.status();
    let content_type = response.headers().get("content-type").cloned();
    if content_type.is_some_and(|value| value == "text/event-stream") {
        return (status, String::new());
    }
    (status, body_text(response).await)
}

/// The whole body of `response`, as text.
async fn body_text(response: axum::response::Response) -> String {
    let body = response
        .into_body()
        .collect()
        .await
        .expect("the body")
        .to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// The request gets `status` and an error of the API's shape that mentions `needle`.
async fn check_error(method: &str, uri: &str, body: Option<&str>, status: u16, needle: &str) {
    let (answered, text) = exchange(method, uri, body).await;
    assert_eq!(answered.as_u16(), status, "{method} {uri}: {text}");
    assert_error_shape(&text, needle, &format!("{method} {uri}"));
}

fn assert_error_shape(text: &str, needle: &str, what: &str) {
    let value: Value = serde_json::from_str(text)
        .unwrap_or_else(|problem| panic!("{what}: not JSON ({problem}): {text:?}"));
    let object = value.as_object().expect("an object");
    assert_eq!(object.len(), 1, "{what}: only `error`: {text}");
    let message = object["error"].as_str().expect("`error` is a string");
    assert!(
        message.contains(needle),
        "{what}: {message:?} should mention {needle:?}"
    );
}

#[tokio::test]
async fn every_rejection_is_a_json_error_with_a_fitting_status() {
    // Proves the framework's own rejections (method, path, content type, JSON) answer in
    // the API's error shape.
    let cases: [(&str, &str, Option<&str>, u16, &str); 11] = [
        ("DELETE", STREAM, None, 405, "DELETE"),
        ("GET", COMMANDS, None, 405, "GET"),
        ("POST", "/all", Some("{}"), 405, "POST"),
        ("PUT", "/health", None, 405, "PUT"),
        ("GET", "/nowhere", None, 404, "no such route"),
        (
            "POST",
            "/streams/%FF%FE/commands",
            Some(COMMAND),
            400,
            "UTF-8",
        ),
        ("GET", "/streams/%FF%FE", None, 400, "UTF-8"),
        ("GET", "/categories/%C3%28/subscribe", None, 400, "UTF-8"),
        ("POST", COMMANDS, Some("{\"command\":"), 400, "EOF"),
        ("POST", COMMANDS, Some(r#"{"comand": {}}"#), 422, "`comand`"),
        (
            "POST",
            COMMANDS,
            Some(r#"{"command": {}, "x": 2}"#),
            422,
            "`x`",
        ),
    ];
    for (method, uri, body, status, needle) in cases {
        check_error(method, uri, body, status, needle).await;
    }
    // A 405 still names the methods the route takes.
    let delete = Request::delete(STREAM)
        .body(Body::empty())
        .expect("a valid request");
    let response = router_over_empty_store()
        .oneshot(delete)
        .await
        .expect("the router is infallible");
    let allow = response.headers().get("allow");
    assert_eq!(
        allow.map(|value| value.as_bytes()),
        Some(&b"GET,HEAD"[..]),
        "{:?}",
        response.headers()
    );
    // A body that is not declared JSON.
    let request = Request::post(COMMANDS)
        .header("content-type", "text/plain")
        .body(Body::from(COMMAND))
        .expect("a valid request");
    let (status, text) = send(request).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{text}");
    assert_error_shape(&text, "application/json", "text/plain command");
}

#[tokio::test]
async fn each_route_takes_exactly_its_query_parameters() {
    // Proves an unknown or unparsable query parameter is a 400 naming it, on every route
    // that takes a query, while each route's own parameters still work.
    let rejected = [
        ("/streams/BankAccount@alice?database=Bad!", "database"),
        ("/streams/BankAccount@alice?database=default", "database"),
        ("/streams/BankAccount@alice?from=x", "from"),
        ("/streams/BankAccount@alice?count=-1", "count"),
        ("/streams/BankAccount@alice?count=0", "count"),
        ("/streams/BankAccount@alice?count=1001", "count"),
        (
            "/streams/BankAccount@alice/subscribe?database=x",
            "database",
        ),
        ("/all?database=Bad!", "database"),
        ("/all?after=3", "after"),
        ("/all/subscribe?database=Bad!", "database"),
        ("/categories/BankAccount?database=Bad!", "database"),
        ("/categories/BankAccount?databse=default", "databse"),
        ("/categories/BankAccount?from=1&from=2", "from"),
        ("/categories/BankAccount/subscribe?database=", "database"),
        ("/databases?count=5", "count"),
        ("/databases/default/categories?after=a", "after"),
        (
            "/databases/default/categories/BankAccount/streams?from=1",
            "from",
        ),
        (
            "/databases/default/categories/BankAccount/streams?count=many",
            "count",
        ),
        ("/metrics?format=json", "format"),
    ];
    for (uri, needle) in rejected {
        check_error("GET", uri, None, 400, needle).await;
    }
    let uri = format!("{COMMANDS}?expected_version=1");
    check_error("POST", &uri, Some(COMMAND), 400, "expected_version").await;
    let accepted = [
        "/streams/BankAccount@alice?from=2&count=1000",
        "/streams/BankAccount@alice/subscribe?from=3&count=10",
        "/all?from=0&count=1",
        "/all/subscribe?from=5",
        "/categories/BankAccount?database=default&from=1&count=5",
        "/categories/BankAccount/subscribe?database=default&from=1",
        "/databases",
        "/databases/default/categories",
        "/databases/default/categories/BankAccount/streams?after=alice&count=10",
    ];
    for uri in accepted {
        let (status, text) = exchange("GET", uri, None).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {text}");
    }
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_as_json_whether_declared_or_streamed() {
    // Proves a declared length over `BODY_BYTES_MAX` is refused without waiting for the body
    // (this one never ends), and a body without a length is cut off once it passes the limit.
    let never_ending =
        Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
    let declared = Request::post(COMMANDS)
        .header("content-type", "application/json")
        .header("content-length", "2000000000")
        .body(never_ending)
        .expect("a valid request");
    let (status, text) = tokio::time::timeout(Duration::from_secs(10), send(declared))
        .await
        .expect("answered without reading the body");
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
    assert_error_shape(&text, &BODY_BYTES_MAX.to_string(), "declared 2 GB");

    let chunk = Bytes::from(vec![b' '; 64 * 1024]);
    let chunks = BODY_BYTES_MAX / chunk.len() + 1;
    let streamed =
        futures::stream::iter(std::iter::repeat_n(chunk, chunks).map(Ok::<Bytes, std::io::Error>));
    let streamed = Request::post(COMMANDS)
        .header("content-type", "application/json")
        .body(Body::from_stream(streamed))
        .expect("a valid request");
    let (status, text) = send(streamed).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
    assert_error_shape(
        &text,
        &BODY_BYTES_MAX.to_string(),
        "streamed 1 MiB + 64 KiB",
    );
}

/// The router served on a loopback port the way `chorus node` serves it, on a runtime of
/// its own that stops (with every connection) when this is dropped.
struct Loopback {
    address: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

impl Loopback {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("binds");
        let address = listener.local_addr().expect("an address");
        runtime.spawn(serve(
            listener,
            router_over_empty_store(),
            None,
            std::future::pending(),
        ));
        Self {
            address,
            _runtime: runtime,
        }
    }

    /// A connection that has sent `head` (and what follows it, if anything).
    fn send(&self, head: &str) -> TcpStream {
        let mut stream = TcpStream::connect(self.address).expect("connects");
        stream.write_all(head.as_bytes()).expect("writes");
        stream
    }
}

/// What came back on a connection.
#[derive(Debug)]
enum Outcome {
    /// An answer: the status and the body.
    Answered(u16, String),
    /// The server closed the connection without an answer.
    Closed,
}

/// Reads the server's answer while sending `trickle` one byte every half second, as a slow
/// client would; gives up (failing the test) after `bound`.
fn trickle_until_answered(stream: &mut TcpStream, trickle: u8, bound: Duration) -> Outcome {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("a read timeout");
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        if let Some(answer) = complete_answer(&received) {
            return answer;
        }
        match stream.read(&mut buffer) {
            Ok(0) if received.is_empty() => return Outcome::Closed,
            Ok(0) => panic!(
                "closed within an answer: {:?}",
                String::from_utf8_lossy(&received)
            ),
            Ok(read) => received.extend_from_slice(&buffer[..read]),
            Err(problem)
                if matches!(problem.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                assert!(
                    started.elapsed() < bound,
                    "neither answered nor closed within {bound:?}"
                );
                // The server may have closed its side already; the next read tells.
                let _ = stream.write_all(&[trickle]);
            }
            Err(_) if received.is_empty() => return Outcome::Closed,
            Err(problem) => panic!("{problem} within an answer"),
        }
    }
}

/// The answer in `received` once all of it (head and `Content-Length` bytes) is there.
fn complete_answer(received: &[u8]) -> Option<Outcome> {
    let text = String::from_utf8_lossy(received);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    if body.len() < length {
        return None;
    }
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some(Outcome::Answered(status, body[..length].to_owned()))
}

#[test]
fn a_huge_content_length_is_answered_413_at_once() {
    // Proves the issue's case over a real connection: 2 GB declared, 2 bytes sent, and the
    // answer comes without waiting for the rest.
    let server = Loopback::start();
    let mut stream = server.send(
        "POST /streams/BankAccount@alice/commands HTTP/1.1\r\nHost: x\r\n\
         Content-Type: application/json\r\nContent-Length: 2000000000\r\n\r\n{}",
    );
    match trickle_until_answered(&mut stream, b' ', Duration::from_secs(10)) {
        Outcome::Answered(status, body) => {
            assert_eq!(status, 413, "{body}");
            assert_error_shape(&body, "bytes", "declared 2 GB over TCP");
        }
        Outcome::Closed => panic!("closed without an answer"),
    }
}

#[test]
fn a_client_sending_its_headers_too_slowly_is_cut_off() {
    // Proves the headers must be complete within `HEADER_READ_TIMEOUT`, however steadily a
    // slow client (slowloris) trickles them.
    let server = Loopback::start();
    let mut stream = server.send("GET /all HTTP/1.1\r\nHost: x\r\nX-Slow: ");
    let bound = HEADER_READ_TIMEOUT + Duration::from_secs(20);
    match trickle_until_answered(&mut stream, b'a', bound) {
        Outcome::Closed => {}
        Outcome::Answered(status, body) => {
            assert_eq!(status, 408, "{body}");
            assert_error_shape(&body, "", "slow headers");
        }
    }
}

#[test]
fn a_client_sending_its_body_too_slowly_gets_408() {
    // Proves the body must be complete within `BODY_READ_TIMEOUT` after the headers, however
    // steadily a slow client trickles it.
    let server = Loopback::start();
    let mut stream = server.send(
        "POST /streams/BankAccount@alice/commands HTTP/1.1\r\nHost: x\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"command\": ",
    );
    let bound = BODY_READ_TIMEOUT + Duration::from_secs(20);
    match trickle_until_answered(&mut stream, b' ', bound) {
        Outcome::Answered(status, body) => {
            assert_eq!(status, 408, "{body}");
            assert_error_shape(&body, "body", "slow body");
        }
        Outcome::Closed => panic!("closed without an answer"),
    }
}

#[tokio::test]
async fn a_full_engine_queue_answers_503_at_once_and_counts_it() {
    // A queue with no room and an engine that never takes from it: every request is refused
    // without waiting for an answer.
    let (engine, inputs) = crate::queues::EngineInputs::new(0);
    let drops = std::sync::Arc::clone(&engine.drops);
    let app = router(
        engine,
        (
            crate::feed::Feed::new(0).1,
            crate::projections::Projections::none(),
        ),
        open_access(None),
        Network::default(),
    );
    let request = Request::builder()
        .method("POST")
        .uri(COMMANDS)
        .header("content-type", "application/json")
        .body(Body::from(COMMAND))
        .expect("a valid request");
    let response = app
        .oneshot(request)
        .await
        .expect("the router is infallible");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_error_shape(&body_text(response).await, "busy", "a full queue");
    assert_eq!(crate::queues::Drops::read(&drops.client_requests), 1);
    drop(inputs);
}

#[tokio::test]
async fn the_admin_api_needs_the_token_and_is_off_without_one() {
    let admit = |token: Option<&str>, body: &str| {
        let mut request = Request::builder()
            .method("POST")
            .uri("/admin/admit")
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        request
            .body(Body::from(body.to_owned()))
            .expect("a valid request")
    };
    let key = "11".repeat(32);
    let body = format!(r#"{{"node": "{key}"}}"#);
    for (token, why) in [
        (None, "no token"),
        (Some("wrong-token-of-some-length"), "a wrong token"),
    ] {
        let (status, text) = send(admit(token, &body)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{why}: {text}");
        assert_error_shape(&text, "Bearer", why);
    }
    // Authorized, the body is checked: a key that is not 64 hex digits is named.
    let (status, text) = send(admit(Some(ADMIN_TOKEN), r#"{"node": "abc"}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert_error_shape(&text, "node", "a short key");
    // A node without a token has the admin API off, whatever the request carries.
    let (engine, inputs) = crate::queues::EngineInputs::new(1);
    let response = router(
        engine,
        (
            crate::feed::Feed::new(0).1,
            crate::projections::Projections::none(),
        ),
        open_access(None),
        Network::default(),
    )
    .oneshot(admit(Some(ADMIN_TOKEN), &body))
    .await
    .expect("the router is infallible");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_error_shape(&body_text(response).await, "admin_token", "admin API off");
    drop(inputs);
}

#[tokio::test]
async fn a_subscription_resumes_after_its_last_event_id_and_refuses_a_bad_one() {
    for uri in [
        "/streams/BankAccount@alice/subscribe?from=2",
        "/all/subscribe?from=2",
        "/categories/BankAccount/subscribe?from=2",
    ] {
        let reads_from = Arc::default();
        // The feed's sender is dropped: once caught up, the subscription ends (as when the
        // node stops), so its body can be read to the end.
        let app = router_with(crate::feed::Feed::new(0).1, Arc::clone(&reads_from));
        let request = Request::builder()
            .uri(uri)
            .header("last-event-id", "7")
            .body(Body::empty())
            .expect("a request");
        let response = app.oneshot(request).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::OK, "{uri}");
        body_text(response).await;
        let starts = reads_from.lock().expect("not poisoned").clone();
        assert!(
            !starts.is_empty() && starts.iter().all(|from| *from == 8),
            "{uri}: {starts:?}"
        );

        for bad in ["x", "-1", "18446744073709551615"] {
            let request = Request::builder()
                .uri(uri)
                .header("last-event-id", bad)
                .body(Body::empty())
                .expect("a request");
            let (status, text) = send(request).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri} {bad}: {text}");
            assert_error_shape(&text, "Last-Event-ID", uri);
        }
    }
}

#[tokio::test]
async fn subscriptions_beyond_the_cap_are_answered_503_with_retry_after() {
    let (_head, feed) = crate::feed::Feed::new(0);
    let held: Vec<_> = (0..crate::feed::SUBSCRIPTIONS_MAX)
        .map(|_| feed.slot().expect("a slot"))
        .collect();
    let app = router_with(feed.clone(), Arc::default());
    let request = Request::builder()
        .uri("/all/subscribe")
        .body(Body::empty())
        .expect("a request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    assert_error_shape(&body_text(response).await, "subscriptions", "the cap");
    drop(held);
    let request = Request::builder()
        .uri("/all/subscribe")
        .body(Body::empty())
        .expect("a request");
    let response = app.oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_bad_envelope_is_refused_naming_the_field() {
    let big = format!(
        r#"{{"command": {{}}, "metadata": {{"x": "{}"}}}}"#,
        "y".repeat(5_000)
    );
    let cases = [
        (
            r#"{"command": {}, "metadata": [1, 2]}"#.to_owned(),
            "metadata",
        ),
        (
            r#"{"command": {}, "metadata": "text"}"#.to_owned(),
            "metadata",
        ),
        (big, "metadata"),
        (
            r#"{"command": {}, "correlation_id": "nothex"}"#.to_owned(),
            "correlation_id",
        ),
        (
            r#"{"command": {}, "causation_id": "12"}"#.to_owned(),
            "causation_id",
        ),
    ];
    for (body, needle) in cases {
        check_error("POST", COMMANDS, Some(&body), 400, needle).await;
    }
}

#[tokio::test]
async fn a_read_direction_is_forward_or_backward_and_nothing_else() {
    check_error(
        "GET",
        "/streams/BankAccount@alice?direction=sideways",
        None,
        400,
        "direction",
    )
    .await;
    check_error("GET", "/types/Bad%20Type", None, 400, "").await;
    for uri in [
        "/streams/BankAccount@alice?direction=backward",
        "/streams/BankAccount@alice?direction=forward&from=3",
        "/types/Deposited?from=2&count=5",
    ] {
        let (status, text) = exchange("GET", uri, None).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {text}");
    }
}

/// A router over an empty store whose API needs these tokens.
fn router_with_tokens(tokens: &[TokenConfig]) -> Router {
    let (engine, inputs) = crate::queues::EngineInputs::new(64);
    std::thread::spawn(move || {
        while let Some(input) = inputs.recv() {
            if let Input::Read(_, reply) = input {
                let answer = ReadAnswer::Events {
                    events: Vec::new(),
                    next: None,
                };
                let _ = reply.send(Ok(answer));
            }
        }
    });
    router(
        engine,
        (
            crate::feed::Feed::new(0).1,
            crate::projections::Projections::none(),
        ),
        Access::new(None, tokens, None).expect("valid"),
        Network::default(),
    )
}

#[tokio::test]
async fn without_a_token_401_with_the_wrong_scope_403_both_as_json() {
    let token = |name: &str, read: &[&str], write: &[&str]| TokenConfig {
        name: name.to_owned(),
        secret: format!("{name}-0123456789abcdef"),
        read: read.iter().map(|name| (*name).to_owned()).collect(),
        write: write.iter().map(|name| (*name).to_owned()).collect(),
        admin: false,
    };
    let app = router_with_tokens(&[
        token("reader", &["default"], &[]),
        token("shopper", &[], &["shop"]),
    ]);
    let call = |method: &str, uri: &str, bearer: Option<&str>| {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json");
        if let Some(name) = bearer {
            request = request.header("authorization", format!("Bearer {name}-0123456789abcdef"));
        }
        let body = if method == "POST" {
            Body::from(COMMAND)
        } else {
            Body::empty()
        };
        let app = app.clone();
        let request = request.body(body).expect("a request");
        async move {
            let response = app.oneshot(request).await.expect("infallible");
            let status = response.status();
            let challenge = response.headers().get("www-authenticate").cloned();
            (status, challenge, body_text(response).await)
        }
    };
    // No token, or an unknown one: 401 with a Bearer challenge, for reads and writes.
    for (method, uri, bearer) in [
        ("POST", COMMANDS, None),
        ("GET", STREAM, None),
        ("GET", "/all", Some("stranger")),
    ] {
        let (status, challenge, text) = call(method, uri, bearer).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri}: {text}");
        assert_eq!(
            challenge.as_ref().map(|value| value.as_bytes()),
            Some(&b"Bearer"[..])
        );
        assert_error_shape(&text, "Bearer", uri);
    }
    // A token without the scope: 403 naming what it may not do.
    for (method, uri, bearer, needle) in [
        ("POST", COMMANDS, Some("reader"), "write"),
        ("GET", "/all", Some("reader"), "every database"),
        ("GET", "/streams/shop%2FOrder@1", Some("shopper"), "read"),
        ("POST", COMMANDS, Some("shopper"), "\"default\""),
    ] {
        let (status, _, text) = call(method, uri, bearer).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {uri}: {text}");
        assert_error_shape(&text, needle, uri);
    }
    // The right scope goes through to the route; health and status need no token.
    let (status, _, text) = call("GET", STREAM, Some("reader")).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let (status, _, _) = call("GET", "/health/live", None).await;
    assert_eq!(status, StatusCode::OK);
}
