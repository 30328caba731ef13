//! `chorus demo`: the main job on embedded defaults. Starts a local cluster unless one is
//! running under the data directory, drives a Notebook and BankAccount workload through
//! every node with a progress bar (deposits, withdrawals some of which the accounts refuse,
//! notes, and transfers the saga carries out between accounts), then reads back what was
//! agreed from every node and shows it: balances, notes, transfers, and whether all nodes
//! hold the same streams.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::bench::percentile;
use chorus_node::cli::say;
use chorus_node::client::{Client, outcome_name};
use chorus_node::local::{self, LocalCluster};

/// What `chorus demo` was asked.
#[derive(Clone, Debug, clap::Args)]
pub struct DemoOptions {
    /// Nodes of the cluster it starts.
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// Where the cluster's data lives.
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
    /// Commands to send.
    #[arg(long, default_value_t = 400)]
    pub commands: usize,
    /// Commands in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Keep the cluster it started running at the end (until Ctrl-C).
    #[arg(long)]
    pub keep_running: bool,
    /// How the nodes of a cluster it starts run.
    #[command(flatten)]
    pub local: local::LocalOptions,
}

const ACCOUNTS: [&str; 4] = ["alice", "bob", "carol", "dave"];
const JOURNAL: &str = "Notebook@journal";

/// Runs the demo.
pub async fn run(options: DemoOptions) -> Result<(), String> {
    if options.commands == 0 || options.commands > 1_000_000 {
        return Err("--commands must be between 1 and 1000000".into());
    }
    if options.concurrency == 0 || options.concurrency > 1024 {
        return Err("--concurrency must be between 1 and 1024".into());
    }
    let mut started = None;
    let addresses = match local::running(&options.data_dir).await {
        Some(addresses) => {
            say(&format!(
                "using the cluster running under {} ({} nodes)",
                options.data_dir.display(),
                addresses.len()
            ));
            addresses
        }
        None => {
            say(&format!(
                "starting a local cluster of {} nodes under {} ...",
                options.nodes,
                options.data_dir.display()
            ));
            let configs = local::init(options.nodes, &options.data_dir, &options.local)?;
            let cluster = LocalCluster::start(&configs, Duration::from_secs(60)).await?;
            let addresses = cluster.addresses.clone();
            started = Some(cluster);
            addresses
        }
    };
    for address in &addresses {
        say(&format!("  node {address}"));
    }
    // Ctrl-C or SIGTERM stops the workload and the cluster this demo started.
    let result = tokio::select! {
        result = workload(&options, &addresses) => result,
        () = chorus_node::cli::shutdown_signal() => Err("interrupted".to_owned()),
    };
    if let Some(cluster) = started {
        if options.keep_running && result.is_ok() {
            say("the cluster keeps running; Ctrl-C stops it");
            chorus_node::cli::shutdown_signal().await;
        }
        cluster.stop().await;
        say("cluster stopped (its data stays; `chorus up` runs it again)");
    }
    result
}

/// One command of the workload.
struct Step {
    stream: String,
    command: Value,
}

/// The workload, drawn at random: mostly deposits, then withdrawals (some larger than the
/// balance, which the account refuses), notes, and transfers between accounts.
fn steps(count: usize) -> Vec<Step> {
    let mut rng = rand::thread_rng();
    let account = |rng: &mut rand::rngs::ThreadRng| ACCOUNTS[rng.gen_range(0..ACCOUNTS.len())];
    (0..count)
        .map(|index| {
            let roll = rng.gen_range(0..100);
            if roll < 50 {
                Step {
                    stream: format!("BankAccount@{}", account(&mut rng)),
                    command: json!({"Deposit": {"amount": rng.gen_range(1..=100), "transfer": null}}),
                }
            } else if roll < 70 {
                Step {
                    stream: format!("BankAccount@{}", account(&mut rng)),
                    command: json!({"Withdraw": {"amount": rng.gen_range(1..=150), "transfer": null}}),
                }
            } else if roll < 90 {
                Step {
                    stream: JOURNAL.to_owned(),
                    command: json!({"AddNote": {"text": format!("note {index}"), "author": account(&mut rng)}}),
                }
            } else {
                let from = account(&mut rng);
                let mut to = account(&mut rng);
                while to == from {
                    to = account(&mut rng);
                }
                let id: u64 = rng.r#gen();
                Step {
                    stream: format!("Transfer@t{id:016x}"),
                    command: json!({"StartTransfer": {"from": from, "to": to, "amount": rng.gen_range(1..=50)}}),
                }
            }
        })
        .collect()
}

async fn workload(options: &DemoOptions, addresses: &[String]) -> Result<(), String> {
    let token = local::client_token(&options.data_dir);
    let trust = local::client_trust(&options.data_dir);
    let clients: Vec<Client> = addresses
        .iter()
        .map(|address| {
            let client = crate::bench::with_token(Client::new(address)?, token.as_deref());
            local::trusted(client, trust.as_deref())
        })
        .collect::<Result<_, _>>()?;
    set_up(&clients).await?;
    say(&format!(
        "sending {} commands, {} at a time, to every node in turn",
        options.commands, options.concurrency
    ));
    let begin = Instant::now();
    let steps = steps(options.commands);
    let transfers: Vec<String> = steps
        .iter()
        .filter(|step| step.stream.starts_with("Transfer@"))
        .map(|step| step.stream.clone())
        .collect();
    let tally = send(options, &clients, steps).await?;
    let elapsed = begin.elapsed().as_secs_f64();
    say(&format!(
        "{} commands in {elapsed:.1} s ({:.0}/s); latency p50 {:.0} ms, p99 {:.0} ms",
        options.commands,
        options.commands as f64 / elapsed.max(1e-9),
        percentile(&tally.latencies, 0.5),
        percentile(&tally.latencies, 0.99),
    ));
    for (name, count) in &tally.outcomes {
        match tally.examples.get(name) {
            Some(example) => say(&format!("  {name:>16}: {count} (for example: {example})")),
            None => say(&format!("  {name:>16}: {count}")),
        }
    }
    // Transfers finish in the background (the saga withdraws, deposits, completes): give it
    // a moment, then show what every node agreed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    say("what the cluster agreed (read back from every node):");
    let accounts_agree = report_streams(&clients).await?;
    let transfers_agree = report_transfers(&clients, &transfers).await?;
    if accounts_agree && transfers_agree {
        say("every node serves the same streams");
        Ok(())
    } else {
        Err("the nodes serve different streams".into())
    }
}

/// The accounts and the journal (already there if an earlier demo made them).
async fn set_up(clients: &[Client]) -> Result<(), String> {
    for (index, name) in ACCOUNTS.iter().enumerate() {
        let answer = clients[index % clients.len()]
            .submit(
                &format!("BankAccount@{name}"),
                json!({"OpenAccount": {"owner": name}}),
                None,
            )
            .await?;
        if !matches!(answer.status, 201 | 409) {
            return Err(format!("opening {name}: {}", outcome_name(&answer)));
        }
    }
    let answer = clients[0]
        .submit(
            JOURNAL,
            json!({"InitiateNotebook": {"title": "demo journal"}}),
            None,
        )
        .await?;
    if !matches!(answer.status, 201 | 409) {
        return Err(format!("creating the journal: {}", outcome_name(&answer)));
    }
    Ok(())
}

/// What the clients were told: outcomes by name, latencies of decided commands (ms), and one
/// example reason per outcome.
#[derive(Default)]
struct Tally {
    outcomes: BTreeMap<String, usize>,
    latencies: Vec<f64>,
    examples: BTreeMap<String, String>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        for (name, count) in other.outcomes {
            *self.outcomes.entry(name).or_default() += count;
        }
        self.latencies.extend(other.latencies);
        for (name, example) in other.examples {
            self.examples.entry(name).or_insert(example);
        }
    }
}

/// Sends `steps` from `options.concurrency` workers spread over the nodes, with a progress
/// bar.
async fn send(
    options: &DemoOptions,
    clients: &[Client],
    steps: Vec<Step>,
) -> Result<Tally, String> {
    let progress = ProgressBar::new(options.commands as u64).with_style(
        ProgressStyle::with_template("  {bar:40} {pos}/{len} commands, {per_sec}, eta {eta}")
            .map_err(|error| error.to_string())?,
    );
    let queue: StepQueue = Arc::new(Mutex::new(steps.into_iter()));
    let mut tasks = Vec::new();
    for worker in 0..options.concurrency {
        let client = clients[worker % clients.len()].clone();
        let queue = Arc::clone(&queue);
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while let Some(step) = next_step(&queue).await {
                let sent = Instant::now();
                let name = match client.submit(&step.stream, step.command, None).await {
                    Ok(answer) => {
                        // Latency of what the cluster decided (committed or refused), not
                        // of errors.
                        if matches!(answer.status, 200 | 201 | 409) {
                            tally.latencies.push(sent.elapsed().as_secs_f64() * 1_000.0);
                        }
                        let name = outcome_name(&answer);
                        if let Some(reason) = answer.body["outcome"]["Refused"].as_str() {
                            tally
                                .examples
                                .entry(name.clone())
                                .or_insert_with(|| reason.to_owned());
                        }
                        name
                    }
                    Err(error) => {
                        tally.examples.entry("unreachable".into()).or_insert(error);
                        "unreachable".into()
                    }
                };
                *tally.outcomes.entry(name).or_default() += 1;
                progress.inc(1);
            }
            tally
        }));
    }
    let mut tally = Tally::default();
    for task in tasks {
        tally.add(
            task.await
                .map_err(|error| format!("a client task failed: {error}"))?,
        );
    }
    progress.finish_and_clear();
    Ok(tally)
}

/// Prints each account's balance and the journal's notes as every node serves them; true if
/// every node served the same.
async fn report_streams(clients: &[Client]) -> Result<bool, String> {
    let mut all_agree = true;
    let mut total = 0;
    let mut streams: Vec<String> = ACCOUNTS
        .iter()
        .map(|name| format!("BankAccount@{name}"))
        .collect();
    streams.push(JOURNAL.to_owned());
    for stream in &streams {
        let (events, agree) = read_everywhere(clients, stream).await?;
        all_agree &= agree;
        let last = events.last().cloned().unwrap_or(Value::Null);
        let detail = if stream.starts_with("BankAccount@") {
            let balance = last["payload"]["balance"].as_u64();
            total += balance.unwrap_or(0);
            format!(
                "balance {}",
                balance.map_or_else(|| "?".to_owned(), |balance| balance.to_string())
            )
        } else {
            format!(
                "{} notes",
                events
                    .iter()
                    .filter(|event| event["type"] == "NoteAdded")
                    .count()
            )
        };
        say(&format!(
            "  {stream:<22} {:>5} events, {detail:<14} {}",
            events.len(),
            if agree {
                "same on every node"
            } else {
                "NODES DIFFER"
            }
        ));
    }
    say(&format!("  money in all accounts: {total}"));
    Ok(all_agree)
}

/// Prints how many transfers reached each state; true if every node served the same.
async fn report_transfers(clients: &[Client], transfers: &[String]) -> Result<bool, String> {
    let mut all_agree = true;
    let mut transfer_states: BTreeMap<String, usize> = BTreeMap::new();
    for stream in transfers {
        let (events, agree) = read_everywhere(clients, stream).await?;
        all_agree &= agree;
        let state = events
            .last()
            .and_then(|event| event["type"].as_str())
            .unwrap_or("not started")
            .to_owned();
        *transfer_states.entry(state).or_default() += 1;
    }
    if !transfers.is_empty() {
        let states: Vec<String> = transfer_states
            .iter()
            .map(|(state, count)| format!("{count} {state}"))
            .collect();
        say(&format!(
            "  transfers (carried out by the saga): {}",
            states.join(", ")
        ));
    }
    Ok(all_agree)
}

/// A stream as every node serves it (all pages), and whether they all serve the same. Nodes
/// apply agreed blocks at slightly different moments, so a difference is read again a few
/// times before it counts.
async fn read_everywhere(clients: &[Client], stream: &str) -> Result<(Vec<Value>, bool), String> {
    let mut last = Vec::new();
    for _ in 0..20 {
        let mut held = Vec::new();
        for client in clients {
            held.push(read_all(client, stream).await?);
        }
        let agree = held.windows(2).all(|pair| pair[0] == pair[1]);
        last = held.into_iter().next().unwrap_or_default();
        if agree {
            return Ok((last, true));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok((last, false))
}

async fn read_all(client: &Client, stream: &str) -> Result<Vec<Value>, String> {
    let mut events = Vec::new();
    loop {
        let page = client.read(stream, events.len() as u64 + 1, 1_000).await?;
        let done = page.len() < 1_000;
        events.extend(page);
        if done {
            return Ok(events);
        }
    }
}

/// The workload, as a queue the workers take from.
type StepQueue = Arc<Mutex<std::vec::IntoIter<Step>>>;

async fn next_step(queue: &StepQueue) -> Option<Step> {
    queue.lock().await.next()
}
