//! A sync-request flood from one member, with real processes (issue 15).
//!
//! The adversary is a member of the section: it holds a member's key (so the others let it
//! speak) and sends sync requests that claim to know nothing, as fast as the connection
//! takes them, to every other member. Each such request asks for every event the member
//! holds. Here the test process is that member: it stops member 3 and speaks the engine
//! protocol with member 3's key.
//!
//! The bound: while the flood runs, the three honest members keep committing, and every
//! deposit sent one after another commits within `COMMIT_BOUND` (the members answer the
//! flooder's requests only within `SYNC_BYTES_PER_MEMBER_PER_SEC` and count the rest as
//! `sync_over_budget` refusals in `/metrics`). The commit times before and during the flood
//! are printed, not asserted (the machines are shared).

#[path = "../node/src/frames.rs"]
mod frames;
mod support;

use std::io;
use std::time::{Duration, Instant};

use chorus_consensus::{PeerId, SyncRequest};
use chorus_engine::Message;
use futures::{AsyncRead, AsyncWrite, StreamExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, StreamProtocol, identity, noise, tcp, yamux};
use serde_json::json;
use support::{Nodes, command_id, deposit, http, json_of, open_accounts, parse_key, try_http};

/// The engine protocol the nodes speak.
const PROTOCOL: StreamProtocol = StreamProtocol::new("/chorus/engine/5");
/// Deposits timed before and during the flood.
const DEPOSITS: usize = 20;
/// The longest a deposit may take to commit while the flood runs.
const COMMIT_BOUND: Duration = Duration::from_secs(5);
/// Largest frame, as the node's transport has it.
const FRAME_BYTES_MAX: usize = chorus_consensus::SYNC_BYTES_MAX + 1024;
/// Sync requests the flooder keeps in flight to each member.
const IN_FLIGHT: usize = 64;

#[test]
fn a_sync_flood_from_one_member_does_not_stop_the_others_committing() {
    let directory = tempfile::tempdir().expect("temp dir");
    let mut nodes = Nodes::start(directory.path(), 4);
    let first = nodes.addresses[0].clone();
    let account = "BankAccount@flooded".to_owned();
    open_accounts(&first, std::slice::from_ref(&account));
    let before = timed_deposits(&first, &account, 0);

    // The flooder: member 3's key, member 3 stopped.
    let status = json_of(&http(&first, "GET", "/status", None).1);
    let generation = status["generation"].as_u64().expect("a generation");
    let members = status["members"].as_array().map_or(0, Vec::len);
    let targets: Vec<(PeerId, Multiaddr)> = status["map"][0]["members"]
        .as_array()
        .expect("the map")
        .iter()
        .map(|member| {
            let key = parse_key(member["key"].as_str().expect("a key"));
            let address = member["address"].as_str().expect("an address");
            (PeerId(key), address.parse().expect("a multiaddr"))
        })
        .collect();
    let secret = node_secret(&nodes.configs[3]);
    let flooder_id = PeerId(
        ed25519_dalek::SigningKey::from_bytes(&secret)
            .verifying_key()
            .to_bytes(),
    );
    nodes.kill(3);
    let victims: Vec<(PeerId, Multiaddr)> = targets
        .into_iter()
        .filter(|(peer, _)| *peer != flooder_id)
        .collect();
    assert_eq!(victims.len(), 3, "three honest members to flood");
    // The flooder is a member running the section's domain: its requests are served, within
    // its budget.
    let domain =
        chorus_engine::DomainFingerprint::of(chorus_demo::DOMAIN_VERSION, &chorus_demo::registry())
            .expect("a short version");
    let request = Message::SyncRequest {
        generation,
        domain: domain.digest,
        request: SyncRequest {
            known: vec![0; members],
            wanted: Vec::new(),
        },
    }
    .encode()
    .expect("encodes");

    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let flood = runtime.spawn(flood(secret, victims, request, stopped));
    std::thread::sleep(Duration::from_secs(1));
    let during = timed_deposits(&first, &account, DEPOSITS);
    let _ = stop.send(());
    let sent = runtime.block_on(flood).expect("the flood ran");

    let refused: u64 = nodes.addresses[..3]
        .iter()
        .map(|address| {
            let metrics = http(address, "GET", "/metrics", None).1;
            metrics
                .lines()
                .find(|line| {
                    line.starts_with("chorus_peer_refusals_total{reason=\"sync_over_budget\"}")
                })
                .and_then(|line| line.rsplit(' ').next())
                .and_then(|value| value.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    let median = |times: &[Duration]| {
        let mut sorted = times.to_vec();
        sorted.sort();
        sorted[sorted.len() / 2].as_secs_f64() * 1_000.0
    };
    println!(
        "{}",
        json!({
            "flood_requests_sent": sent,
            "sync_over_budget": refused,
            "commit_p50_ms_before": median(&before),
            "commit_p50_ms_during": median(&during),
            "commit_max_ms_during": during.iter().max().map(|time| time.as_secs_f64() * 1_000.0),
        })
    );
    assert!(sent >= 1_000, "the flood sent only {sent} requests");
    assert!(refused > 0, "no member held the flooder to its budget");
    for (index, time) in during.iter().enumerate() {
        assert!(
            *time <= COMMIT_BOUND,
            "deposit {index} took {time:?} during the flood"
        );
    }
    nodes.stop();
}

/// Sends `DEPOSITS` deposits one after another (ids from `first_id`); how long each took to
/// commit.
fn timed_deposits(address: &str, account: &str, first_id: usize) -> Vec<Duration> {
    (0..DEPOSITS)
        .map(|index| {
            let body = json!({"command": deposit(), "command_id": command_id(first_id + index)});
            let started = Instant::now();
            loop {
                let answer = try_http(
                    address,
                    "POST",
                    &format!("/streams/{account}/commands"),
                    Some(&body.to_string()),
                );
                if matches!(answer, Ok((200 | 201, _))) {
                    break started.elapsed();
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "deposit {index}: {answer:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .collect()
}

/// Floods every victim with `request`, `IN_FLIGHT` at a time each, until `stop`; returns how
/// many it sent.
async fn flood(
    secret: [u8; 32],
    victims: Vec<(PeerId, Multiaddr)>,
    request: Vec<u8>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> u64 {
    let keypair = identity::Keypair::ed25519_from_bytes(secret).expect("a key");
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                Frames,
                [(PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(10))
                    .with_max_concurrent_streams(4 * IN_FLIGHT),
            )
        })
        .expect("behaviour")
        .build();
    let mut peers = Vec::new();
    for (peer, address) in &victims {
        let key = identity::ed25519::PublicKey::try_from_bytes(&peer.0).expect("a key");
        let id = identity::PublicKey::from(key).to_peer_id();
        swarm.add_peer_address(id, address.clone());
        peers.push(id);
    }
    let mut in_flight: std::collections::HashMap<libp2p::PeerId, usize> =
        peers.iter().map(|peer| (*peer, 0)).collect();
    let mut sent = 0u64;
    loop {
        for peer in &peers {
            while in_flight[peer] < IN_FLIGHT {
                swarm.behaviour_mut().send_request(peer, request.clone());
                *in_flight.get_mut(peer).expect("a victim") += 1;
                sent += 1;
            }
        }
        tokio::select! {
            _ = &mut stop => return sent,
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(request_response::Event::Message { peer, message, .. }) => {
                    match message {
                        request_response::Message::Response { .. } => {
                            if let Some(count) = in_flight.get_mut(&peer) {
                                *count = count.saturating_sub(1);
                            }
                        }
                        // The members' answers (sync responses) come as requests: acknowledge.
                        request_response::Message::Request { channel, .. } => {
                            let _ = swarm.behaviour_mut().send_response(channel, Vec::new());
                        }
                    }
                }
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure { peer, .. }) => {
                    if let Some(count) = in_flight.get_mut(&peer) {
                        *count = count.saturating_sub(1);
                    }
                }
                _ => {}
            },
        }
    }
}

/// The engine protocol's frames, by the node's own code (`node/src/frames.rs`).
#[derive(Clone, Default)]
struct Frames;

impl request_response::Codec for Frames {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        frames::read_frame(io, FRAME_BYTES_MAX).await
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        frames::read_frame(io, FRAME_BYTES_MAX).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Vec<u8>,
    ) -> io::Result<()> {
        frames::write_frame(io, &request, FRAME_BYTES_MAX).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Vec<u8>,
    ) -> io::Result<()> {
        frames::write_frame(io, &response, FRAME_BYTES_MAX).await
    }
}

/// A node's secret key, from `node.key` (hex) in the data directory its configuration names.
fn node_secret(config: &std::path::Path) -> [u8; 32] {
    let text = std::fs::read_to_string(config).expect("config");
    let table: toml::Table = toml::from_str(&text).expect("config parses");
    let data_dir = table["data_dir"].as_str().expect("a data_dir");
    let key =
        std::fs::read_to_string(std::path::Path::new(data_dir).join("node.key")).expect("node.key");
    parse_key(key.trim())
}
