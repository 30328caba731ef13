//! The shop on 4 real processes (`shop up --nodes 4`, on loopback): stock and orders sent to
//! different nodes, the saga run by the section, and every node answering the same events.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chorus_node::client::Client;
use serde_json::{Value, json};

const SHOP: &str = env!("CARGO_BIN_EXE_shop");

/// `shop up` as a child, stopped with SIGTERM (so it stops its nodes) even when a test fails.
struct Up {
    child: Child,
    addresses: Vec<String>,
}

impl Up {
    fn start(data_dir: &std::path::Path, nodes: usize) -> Self {
        let mut child = Command::new(SHOP)
            .args(["up", "--nodes", &nodes.to_string(), "--data-dir"])
            .arg(data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("shop up starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut addresses = Vec::new();
        while addresses.len() < nodes {
            let line = lines
                .next()
                .expect("shop up prints every node's address")
                .expect("reads");
            if line.starts_with("http://") {
                addresses.push(line);
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Self { child, addresses }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn send(client: &Client, stream: &str, command: Value, id: &str) {
    let answer = client
        .submit(stream, command, Some(id))
        .await
        .expect("the node answers");
    assert_eq!(answer.status, 201, "{stream}: {}", answer.body);
}

/// The event types of a stream on one node.
async fn types(client: &Client, stream: &str) -> Vec<String> {
    client
        .read(stream, 1, 100)
        .await
        .expect("read")
        .iter()
        .map(|event| event["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_run_the_shop_and_agree() {
    let directory = tempfile::tempdir().expect("temp dir");
    let up = Up::start(&directory.path().join("shop"), 4);
    // The local cluster's API token, as `shop client` finds it.
    let token = chorus_node::local::client_token(&directory.path().join("shop"))
        .expect("shop init wrote a token");
    let clients: Vec<Client> = up
        .addresses
        .iter()
        .map(|address| {
            Client::new(address)
                .expect("client")
                .with_token(token.clone())
        })
        .collect();
    for client in &clients {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !client.healthy().await {
            assert!(
                Instant::now() < deadline,
                "{} never became healthy",
                client.base()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    send(
        &clients[0],
        "Stock@apple",
        json!({"Restock": {"quantity": 3}}),
        &format!("{:032x}", 1),
    )
    .await;
    let place = |quantity: u64| json!({"Place": {"sku": "apple", "quantity": quantity}});
    send(&clients[1], "Order@o1", place(2), &format!("{:032x}", 2)).await;
    send(&clients[2], "Order@o2", place(2), &format!("{:032x}", 3)).await;

    // The saga runs on the section's members: o1 gets stock, o2 is cancelled for want of it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o1 = types(&clients[3], "Order@o1").await;
        let o2 = types(&clients[3], "Order@o2").await;
        if o1 == ["Placed", "Confirmed"] && o2 == ["Placed", "Cancelled"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the saga did not settle: o1 {o1:?}, o2 {o2:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each node hosts the stock-levels projection: one apple left, two reserved for o1.
    for client in &clients {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answer = client
                .get("/projections/stock-levels")
                .await
                .expect("answers");
            assert_eq!(answer.status, 200, "{}", answer.body);
            if answer.body["state"]["apple"] == json!({"available": 1, "reserved": 2}) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {}",
                client.base(),
                answer.body
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The orders-by-article projection wrote its stream, agreed by its section.
    let deadline = Instant::now() + Duration::from_secs(60);
    while types(&clients[0], "OrdersBySku@apple").await != ["Ordered", "Ordered"] {
        assert!(
            Instant::now() < deadline,
            "OrdersBySku@apple was not written"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Clients read it and cannot write it.
    let forged = json!({"event_type": "Ordered", "data": {"order": "x", "quantity": 9}});
    let answer = clients[1]
        .submit("OrdersBySku@apple", forged, Some(&format!("{:032x}", 4)))
        .await
        .expect("the node answers");
    assert_eq!(answer.status, 400, "{}", answer.body);
    // Every node answers the same events, whichever section holds the streams.
    for stream in ["Stock@apple", "Order@o1", "Order@o2", "OrdersBySku@apple"] {
        let first = clients[0].read(stream, 1, 100).await.expect("read");
        for client in &clients[1..] {
            assert_eq!(
                client.read(stream, 1, 100).await.expect("read"),
                first,
                "{stream}"
            );
        }
    }
    drop(up);
}
