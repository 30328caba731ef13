//! The client against fake nodes (plain TCP servers that answer as scripted): a command is
//! sent again under the same id after 503 and connection errors, moving to the next node;
//! refusals are final; a subscription resumes after the last event it yielded, on the next
//! node, and never yields an event twice.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chorus_client::{Client, ClientError, Command, Retry};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What a fake node saw of one request: its request line and headers, and its body.
#[derive(Clone, Debug)]
struct Seen {
    head: String,
    body: String,
}

type Script = Arc<dyn Fn(usize, &Seen) -> String + Send + Sync>;

/// A fake node: answers the `n`-th request (from 0) with `script(n, request)`, a whole
/// HTTP response, then closes the connection. Returns its address and what it saw.
async fn fake_node(script: Script) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        let mut count = 0;
        while let Ok((socket, _)) = listener.accept().await {
            let request = read_request(socket).await;
            let Some((mut socket, request)) = request else {
                continue;
            };
            log.lock().expect("not poisoned").push(request.clone());
            let response = script(count, &request);
            count += 1;
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    });
    (address, seen)
}

async fn read_request(socket: TcpStream) -> Option<(TcpStream, Seen)> {
    let mut reader = BufReader::new(socket);
    let mut head = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().ok()?;
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.ok()?;
    let body = String::from_utf8_lossy(&body).into_owned();
    Some((reader.into_inner(), Seen { head, body }))
}

fn json_response(status: u16, body: &Value) -> String {
    let text = body.to_string();
    format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    )
}

fn committed() -> Value {
    json!({"command_id": "x", "outcome": {"Committed": {"first_position": 1}}})
}

/// An address nothing listens on.
fn dead_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("http://{}", listener.local_addr().expect("address"))
}

fn quick() -> Retry {
    Retry {
        attempts: 5,
        first_backoff: Duration::from_millis(1),
        backoff_max: Duration::from_millis(5),
    }
}

#[tokio::test]
async fn a_command_is_sent_again_under_its_id_past_dead_and_busy_nodes() {
    let (busy, busy_seen) = fake_node(Arc::new(|_, _| {
        json_response(503, &json!({"error": "busy"}))
    }))
    .await;
    let (good, good_seen) = fake_node(Arc::new(|_, _| json_response(201, &committed()))).await;
    let client = Client::new(&[dead_address(), busy, good])
        .expect("client")
        .with_retry(quick());
    let command =
        Command::new("Stock@apple", &json!({"Restock": {"quantity": 3}})).expect("command");
    let receipt = client.send(&command).await.expect("committed");
    assert_eq!(receipt.command_id, command.command_id);
    assert!(!receipt.duplicate);
    let bodies: Vec<Value> = busy_seen
        .lock()
        .expect("not poisoned")
        .iter()
        .chain(good_seen.lock().expect("not poisoned").iter())
        .map(|seen| serde_json::from_str(&seen.body).expect("JSON"))
        .collect();
    assert_eq!(bodies.len(), 2, "one attempt at each live node");
    for body in bodies {
        assert_eq!(
            body["command_id"],
            json!(command.command_id),
            "the same id each time"
        );
    }
}

#[tokio::test]
async fn refusals_are_final_and_exhausted_retries_say_so() {
    let (refusing, seen) = fake_node(Arc::new(|_, _| {
        json_response(
            409,
            &json!({"command_id": "x", "outcome": {"Refused": "out of stock"}}),
        )
    }))
    .await;
    let client = Client::new(&[refusing])
        .expect("client")
        .with_retry(quick());
    let error = client
        .submit("Stock@apple", &json!({"Reserve": {}}))
        .await
        .expect_err("refused");
    assert!(
        matches!(&error, ClientError::Refused { reason } if reason == "out of stock"),
        "{error}"
    );
    assert_eq!(
        seen.lock().expect("not poisoned").len(),
        1,
        "not sent again"
    );

    let client = Client::new(&[dead_address()])
        .expect("client")
        .with_retry(quick());
    let error = client
        .submit("Stock@apple", &json!({"Restock": {"quantity": 1}}))
        .await
        .expect_err("nobody there");
    assert!(
        matches!(error, ClientError::Unavailable { attempts: 5, .. }),
        "{error}"
    );
}

fn sse_event(sequence: u64) -> String {
    let event = json!({
        "stream": "Stock@apple", "sequence": sequence, "position": sequence + 10,
        "event_id": format!("{sequence:032x}"), "type": "Restocked", "version": 1,
        "payload": {"quantity": sequence}, "command_id": null, "timestamp_ms": 5,
    });
    format!("id: {sequence}\ndata: {event}\n\n")
}

fn sse_response(sequences: &[u64]) -> String {
    let events: String = sequences
        .iter()
        .map(|sequence| sse_event(*sequence))
        .collect();
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{events}"
    )
}

#[tokio::test]
async fn a_subscription_resumes_on_the_next_node_after_its_last_event_without_duplicates() {
    // Node A serves 1 and 2 and drops the connection; node B, asked to resume after 2,
    // sends 2 again (as a node may around a reconnect), then 3 and 4.
    let (a, a_seen) = fake_node(Arc::new(|_, _| sse_response(&[1, 2]))).await;
    let (b, b_seen) = fake_node(Arc::new(|_, request: &Seen| {
        if request
            .head
            .to_ascii_lowercase()
            .contains("last-event-id: 2")
        {
            sse_response(&[2, 3, 4])
        } else {
            json_response(400, &json!({"error": "expected Last-Event-ID: 2"}))
        }
    }))
    .await;
    let client = Client::new(&[a, b]).expect("client");
    let mut subscription = client.subscribe_stream("Stock@apple", 1);
    let mut sequences = Vec::new();
    while sequences.len() < 4 {
        let event = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("events keep coming")
            .expect("not ended")
            .expect("an event");
        sequences.push(event.sequence);
    }
    assert_eq!(sequences, [1, 2, 3, 4]);
    assert!(
        a_seen.lock().expect("not poisoned")[0]
            .head
            .contains("from=1")
    );
    assert!(!b_seen.lock().expect("not poisoned").is_empty());
}

#[tokio::test]
async fn a_subscription_no_node_can_serve_ends_with_the_reason() {
    let (misdirected, _) = fake_node(Arc::new(|_, _| {
        json_response(421, &json!({"error": "section 1 holds the stream"}))
    }))
    .await;
    let client = Client::new(&[misdirected]).expect("client");
    let mut subscription = client.subscribe_stream("Stock@apple", 1);
    let first = subscription.next().await.expect("an item");
    assert!(
        matches!(&first, Err(ClientError::Invalid { status: 421, reason }) if reason.contains("section 1")),
        "{first:?}"
    );
    assert!(subscription.next().await.is_none(), "and it ends");
}

#[tokio::test]
async fn log_reads_page_on_with_the_nodes_cursor() {
    let (node, seen) = fake_node(Arc::new(|count, _| {
        let next = if count == 0 {
            json!("0:3,1:2")
        } else {
            Value::Null
        };
        json_response(200, &json!({"events": [], "next": next}))
    }))
    .await;
    let client = Client::new(&[node]).expect("client");
    let first = client
        .read_event_type("Deposited", None, 3)
        .await
        .expect("a page");
    assert_eq!(first.next.as_deref(), Some("0:3,1:2"));
    let last = client
        .read_event_type("Deposited", first.next.as_deref(), 3)
        .await
        .expect("a page");
    assert_eq!(last.next, None);
    let heads: Vec<String> = seen
        .lock()
        .expect("not poisoned")
        .iter()
        .map(|seen| seen.head.lines().next().unwrap_or_default().to_owned())
        .collect();
    assert!(
        heads[0].starts_with("GET /types/Deposited?count=3 "),
        "{heads:?}"
    );
    assert!(
        heads[1].starts_with("GET /types/Deposited?from=0:3,1:2&count=3 "),
        "{heads:?}"
    );
}

#[tokio::test]
async fn a_log_subscription_stays_on_its_node_and_resumes_there_by_position() {
    // The node serves positions 11 and 12, drops the connection, and serves 12 again and 13
    // when asked to resume after 12. The second node is never asked.
    let (a, a_seen) = fake_node(Arc::new(|_, request: &Seen| {
        if request
            .head
            .to_ascii_lowercase()
            .contains("last-event-id: 12")
        {
            sse_log_response(&[12, 13])
        } else {
            sse_log_response(&[11, 12])
        }
    }))
    .await;
    let (b, b_seen) = fake_node(Arc::new(|_, _| json_response(500, &json!({"error": "no"})))).await;
    let client = Client::new(&[a, b]).expect("client");
    let mut subscription =
        client.subscribe_log(chorus_client::LogTarget::EventType("Restocked".into()), 11);
    let mut positions = Vec::new();
    while positions.len() < 3 {
        let event = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("events keep coming")
            .expect("not ended")
            .expect("an event");
        positions.push(event.position);
    }
    assert_eq!(positions, [11, 12, 13]);
    assert!(
        a_seen.lock().expect("not poisoned")[0]
            .head
            .starts_with("GET /types/Restocked/subscribe?from=11 ")
    );
    assert!(
        b_seen.lock().expect("not poisoned").is_empty(),
        "the other node was asked"
    );
}

fn sse_log_response(positions: &[u64]) -> String {
    let events: String = positions
        .iter()
        .map(|position| {
            let event = json!({
                "stream": "Stock@apple", "sequence": 1, "position": position,
                "event_id": format!("{position:032x}"), "type": "Restocked", "version": 1,
                "payload": {}, "command_id": null, "timestamp_ms": 5,
            });
            format!("id: {position}\ndata: {event}\n\n")
        })
        .collect();
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{events}"
    )
}
