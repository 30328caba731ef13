//! Engines wired together losslessly in memory: commands sent to any node are routed to the
//! responsible section, agreed, applied exactly once, and answered; every member of a section
//! ends with the same event store.

use std::collections::{BTreeMap, VecDeque};

use chorus_aggregate::{
    AggregateRegistry, CommandId, CommandRequest, EventStore, ExpectedVersion, Repository,
    StreamKey,
};
use chorus_consensus::{BlockMode, Config, PeerId};
use chorus_demo::bank_account::{BankAccount, BankAccountCommand};
use chorus_demo::notebook::{Notebook, NotebookCommand};
use chorus_engine::{Admission, CommandOutcome, Engine, EngineConfig, Message};
use chorus_routing::SectionMap;
use ed25519_dalek::SigningKey;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

const STEP_MS: u64 = 5;

struct Cluster {
    engines: Vec<Engine>,
    ids: Vec<PeerId>,
    _directories: Vec<tempfile::TempDir>,
    now_ms: u64,
    rng: ChaCha8Rng,
    in_flight: VecDeque<(PeerId, PeerId, Vec<u8>)>,
    replies: BTreeMap<u64, CommandOutcome>,
    /// Nodes that neither tick nor receive (a crashed or cut-off node).
    down: std::collections::BTreeSet<usize>,
}

impl Cluster {
    fn new(nodes: usize, section_size_min: usize, block_mode: BlockMode, seed: u64) -> Self {
        Self::with_config(nodes, section_size_min, block_mode, seed, |_| {})
    }

    /// A cluster whose engines' configuration `adjust` changes (admission is open unless it
    /// says otherwise).
    fn with_config(
        nodes: usize,
        section_size_min: usize,
        block_mode: BlockMode,
        seed: u64,
        adjust: impl Fn(&mut EngineConfig),
    ) -> Self {
        Self::with_node_config(nodes, section_size_min, block_mode, seed, |_, config| {
            adjust(config);
        })
    }

    /// Like `with_config`, with `adjust` told which node it configures.
    fn with_node_config(
        nodes: usize,
        section_size_min: usize,
        block_mode: BlockMode,
        seed: u64,
        adjust: impl Fn(usize, &mut EngineConfig),
    ) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let keys: Vec<SigningKey> = (0..nodes)
            .map(|_| {
                let mut secret = [0u8; 32];
                rng.fill_bytes(&mut secret);
                SigningKey::from_bytes(&secret)
            })
            .collect();
        let public: Vec<[u8; 32]> = keys
            .iter()
            .map(|key| key.verifying_key().to_bytes())
            .collect();
        let map = SectionMap::with_members(section_size_min, &public);
        let mut engines = Vec::new();
        let mut directories = Vec::new();
        for (node, key) in keys.into_iter().enumerate() {
            let directory = tempfile::tempdir().expect("temp dir");
            let store = EventStore::open(directory.path().join("events.redb")).expect("store");
            let config = engine_config(block_mode, &|config: &mut EngineConfig| {
                adjust(node, config)
            });
            engines
                .push(Engine::new(config, key, map.clone(), registry(), store, 0).expect("engine"));
            directories.push(directory);
        }
        let ids = engines.iter().map(Engine::id).collect();
        Self {
            engines,
            ids,
            _directories: directories,
            now_ms: 0,
            rng,
            in_flight: VecDeque::new(),
            replies: BTreeMap::new(),
            down: std::collections::BTreeSet::new(),
        }
    }

    /// Starts a node with a fresh key that asks to join (`Engine::join`); returns its index.
    fn add_joiner(&mut self, block_mode: BlockMode) -> usize {
        self.add_joiner_with(block_mode, |_| {})
    }

    /// Like `add_joiner`, with the joiner's configuration changed by `adjust`.
    fn add_joiner_with(
        &mut self,
        block_mode: BlockMode,
        adjust: impl Fn(&mut EngineConfig),
    ) -> usize {
        let mut secret = [0u8; 32];
        self.rng.fill_bytes(&mut secret);
        let directory = tempfile::tempdir().expect("temp dir");
        let store = EventStore::open(directory.path().join("events.redb")).expect("store");
        let map = self.engines[0].map().clone();
        let config = engine_config(block_mode, &adjust);
        let engine = Engine::join(
            config,
            SigningKey::from_bytes(&secret),
            map,
            registry(),
            store,
            self.now_ms,
        )
        .expect("joiner");
        self.ids.push(engine.id());
        self.engines.push(engine);
        self._directories.push(directory);
        let node = self.engines.len() - 1;
        self.collect(node);
        node
    }

    /// Steps for `virtual_ms`.
    fn run_for(&mut self, virtual_ms: u64) {
        let until = self.now_ms + virtual_ms;
        while self.now_ms < until {
            self.step();
        }
    }

    /// The member count each running node sees of its section.
    fn member_counts(&self) -> Vec<usize> {
        (0..self.engines.len())
            .filter(|node| !self.down.contains(node))
            .map(|node| self.engines[node].section().members.len())
            .collect()
    }

    fn submit(&mut self, node: usize, ticket: u64, request: CommandRequest) {
        self.engines[node]
            .submit(self.now_ms, ticket, request)
            .expect("submit");
        self.collect(node);
    }

    /// Drains a node: queues its gossip (which may leave before its events are durable:
    /// only sync requests and responses may), persists its own events at once, queues its
    /// other messages, keeps replies.
    fn collect(&mut self, node: usize) {
        let engine = &mut self.engines[node];
        while let Some((to, bytes)) = engine.poll_gossip() {
            assert!(
                matches!(
                    Message::decode(&bytes),
                    Ok(Message::SyncRequest { .. } | Message::SyncResponse { .. })
                ),
                "poll_gossip gave a message that must wait for the disk"
            );
            self.in_flight.push_back((self.ids[node], to, bytes));
        }
        let mut latest = None;
        while let Some((generation, event)) = engine.poll_unpersisted() {
            latest = Some((generation, event.header.index));
        }
        if let Some((generation, index)) = latest {
            engine.handle_persisted(generation, index);
        }
        while engine.poll_log_record().is_some() {}
        while let Some((to, bytes)) = engine.poll_send() {
            self.in_flight.push_back((self.ids[node], to, bytes));
        }
        while let Some((ticket, outcome)) = engine.poll_reply() {
            // Blocks are applied with deferred commits; nothing may answer ahead of the disk.
            assert!(
                !engine.store().has_deferred_writes(),
                "ticket {ticket} answered before the applied blocks were durable"
            );
            assert!(
                self.replies.insert(ticket, outcome).is_none(),
                "ticket {ticket} answered twice"
            );
        }
    }

    fn step(&mut self) {
        self.now_ms += STEP_MS;
        for node in 0..self.engines.len() {
            if self.down.contains(&node) {
                continue;
            }
            self.engines[node].tick(self.now_ms, &mut self.rng);
            self.collect(node);
        }
        // Deliver everything in flight, and what that sets off, before time moves on.
        let mut delivered = 0;
        while let Some((from, to, bytes)) = self.in_flight.pop_front() {
            let Some(node) = self.ids.iter().position(|id| *id == to) else {
                continue;
            };
            if self.down.contains(&node) {
                continue;
            }
            self.engines[node].handle_message(self.now_ms, from, &bytes);
            self.collect(node);
            delivered += 1;
            assert!(delivered < 1_000_000, "a message storm");
        }
    }

    fn run_until_answered(&mut self, tickets: usize, virtual_ms_max: u64) {
        let deadline = self.now_ms + virtual_ms_max;
        while self.replies.len() < tickets {
            assert!(
                self.now_ms < deadline,
                "only {} of {tickets} commands answered after {virtual_ms_max} virtual ms",
                self.replies.len()
            );
            self.step();
        }
    }

    /// Lets gossip carry the last blocks to every member (answers come as soon as the
    /// answering member applied a block; the others follow), then checks that every member of
    /// a section holds the same store.
    fn settle_and_assert_sections_agree(&mut self) {
        let deadline = self.now_ms + 10_000;
        while self.now_ms < deadline && !self.sections_agree() {
            self.step();
        }
        self.assert_sections_agree();
    }

    fn sections_agree(&self) -> bool {
        let map = self.engines[0].map();
        map.sections().all(|section| {
            let digests: Vec<[u8; 32]> = self
                .engines
                .iter()
                .filter(|engine| {
                    section.contains(&chorus_routing::XorName::from_public_key(&engine.id().0))
                })
                .map(|engine| engine.store().digest().expect("digest"))
                .collect();
            digests.windows(2).all(|pair| pair[0] == pair[1])
        })
    }

    /// Every member of a section holds the same store.
    fn assert_sections_agree(&self) {
        let map = self.engines[0].map();
        for section in map.sections() {
            let digests: Vec<[u8; 32]> = self
                .engines
                .iter()
                .filter(|engine| {
                    section.contains(&chorus_routing::XorName::from_public_key(&engine.id().0))
                })
                .map(|engine| engine.store().digest().expect("digest"))
                .collect();
            if !digests.windows(2).all(|pair| pair[0] == pair[1]) {
                for engine in self.engines.iter().filter(|engine| {
                    section.contains(&chorus_routing::XorName::from_public_key(&engine.id().0))
                }) {
                    let log = engine
                        .store()
                        .read_log(&chorus_aggregate::Filter::All, 1, 10_000)
                        .expect("log");
                    let summary: Vec<String> = log
                        .events
                        .iter()
                        .map(|event| {
                            format!(
                                "{}:{}#{}:{}",
                                event.position,
                                event.stream.id(),
                                event.sequence,
                                &event.event_id.to_hex()[..6]
                            )
                        })
                        .collect();
                    eprintln!("{}: {}", engine.id(), summary.join(" "));
                }
                panic!(
                    "members of section {} hold different stores",
                    section.prefix()
                );
            }
        }
    }

    fn balance(&self, account: &str) -> u64 {
        let stream = StreamKey::new("BankAccount", account).expect("key");
        let section = self.engines[0]
            .map()
            .section_for_stream(&stream.qualified());
        let engine = self
            .engines
            .iter()
            .find(|engine| {
                section.contains(&chorus_routing::XorName::from_public_key(&engine.id().0))
            })
            .expect("a member");
        Repository::<BankAccount>::new(engine.store())
            .load(&stream)
            .expect("load")
            .state
            .balance
    }
}

fn registry() -> AggregateRegistry {
    AggregateRegistry::new()
        .register::<BankAccount>()
        .register::<Notebook>()
        .register::<Gauge>()
        .emitted_category(<AccountsByOwner as chorus_aggregate::StreamProjection>::CATEGORY)
}

fn engine_config(block_mode: BlockMode, adjust: &impl Fn(&mut EngineConfig)) -> EngineConfig {
    let mut config = EngineConfig {
        admission: Admission::Open,
        remove_silent_after_ms: None,
        ..EngineConfig::new(Config {
            block_mode,
            gossip_interval_ms: 10,
            ..Config::default()
        })
    };
    adjust(&mut config);
    config
}

fn request(id: &str, stream: &str, command: serde_json::Value) -> CommandRequest {
    CommandRequest::new(
        CommandId::derive(&[id.as_bytes()]),
        StreamKey::parse(stream).expect("key"),
        command,
    )
}

fn bank(command: BankAccountCommand) -> serde_json::Value {
    serde_json::to_value(command).expect("json")
}

fn committed_version(outcome: &CommandOutcome) -> Option<u64> {
    match outcome {
        CommandOutcome::Committed(outcome) => Some(outcome.streams[0].version),
        _ => None,
    }
}

/// Runs a bank workload through a cluster and checks the answers and the stores.
fn bank_workload(cluster: &mut Cluster) {
    let nodes = cluster.engines.len();
    let mut ticket = 0;
    for account in ["a", "b", "c"] {
        let open = bank(BankAccountCommand::OpenAccount {
            owner: account.into(),
        });
        cluster.submit(
            ticket as usize % nodes,
            ticket,
            request(
                &format!("open-{account}"),
                &format!("BankAccount@{account}"),
                open,
            ),
        );
        ticket += 1;
    }
    cluster.run_until_answered(ticket as usize, 30_000);
    // Concurrent deposits on one stream from every node, then overdrafts.
    for round in 0..4 {
        for node in 0..nodes {
            let deposit = bank(BankAccountCommand::Deposit {
                amount: 10,
                transfer: None,
            });
            cluster.submit(
                node,
                ticket,
                request(&format!("d-{round}-{node}"), "BankAccount@a", deposit),
            );
            ticket += 1;
        }
    }
    let overdraft = bank(BankAccountCommand::Withdraw {
        amount: 1_000_000,
        transfer: None,
    });
    cluster.submit(0, ticket, request("overdraft", "BankAccount@b", overdraft));
    ticket += 1;
    let notebook = serde_json::to_value(NotebookCommand::InitiateNotebook { title: "n".into() })
        .expect("json");
    cluster.submit(nodes - 1, ticket, request("note", "Notebook@1", notebook));
    ticket += 1;
    cluster.run_until_answered(ticket as usize, 60_000);

    cluster.settle_and_assert_sections_agree();
    let deposits = 4 * nodes as u64;
    let versions: Vec<u64> = (3..3 + deposits)
        .filter_map(|ticket| committed_version(&cluster.replies[&ticket]))
        .collect();
    assert_eq!(versions.len() as u64, deposits, "{:?}", cluster.replies);
    let mut sorted = versions.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (2..2 + deposits).collect::<Vec<_>>(),
        "each deposit exactly once, densely"
    );
    assert_eq!(cluster.balance("a"), 10 * deposits);
    assert!(
        matches!(&cluster.replies[&(3 + deposits)], CommandOutcome::Refused(reason) if reason.contains("insufficient")),
        "{:?}",
        cluster.replies[&(3 + deposits)]
    );
    assert!(committed_version(&cluster.replies[&(4 + deposits)]).is_some());
}

#[test]
fn a_single_section_in_single_mode_commits_every_command_once() {
    let mut cluster = Cluster::new(4, 4, BlockMode::Single, 1);
    assert_eq!(cluster.engines[0].map().section_count(), 1);
    bank_workload(&mut cluster);
}

#[test]
fn sections_forward_and_agree_in_supermajority_mode() {
    let mut cluster = Cluster::new(8, 3, BlockMode::Supermajority, 2);
    assert!(
        cluster.engines[0].map().section_count() >= 2,
        "the map should have split"
    );
    bank_workload(&mut cluster);
}

#[test]
fn a_repeated_command_id_is_answered_with_its_first_commit() {
    let mut cluster = Cluster::new(4, 4, BlockMode::Supermajority, 3);
    let open = bank(BankAccountCommand::OpenAccount { owner: "a".into() });
    cluster.submit(0, 0, request("open", "BankAccount@a", open.clone()));
    cluster.run_until_answered(1, 30_000);
    cluster.submit(2, 1, request("open", "BankAccount@a", open));
    cluster.run_until_answered(2, 30_000);
    assert!(matches!(cluster.replies[&0], CommandOutcome::Committed(_)));
    assert!(
        matches!(
            &cluster.replies[&1],
            CommandOutcome::AlreadyCommitted(_) | CommandOutcome::Committed(_)
        ),
        "{:?}",
        cluster.replies[&1]
    );
    cluster.settle_and_assert_sections_agree();
    assert_eq!(
        cluster.engines[0].store().head_position().expect("head"),
        1,
        "opened once"
    );
}

#[test]
fn sections_forward_and_agree_in_single_mode() {
    for seed in [4, 5] {
        let mut cluster = Cluster::new(8, 3, BlockMode::Single, seed);
        assert!(
            cluster.engines[0].map().section_count() >= 2,
            "seed {seed}: no split"
        );
        bank_workload(&mut cluster);
    }
}

#[test]
fn garbage_from_a_peer_changes_nothing() {
    let mut cluster = Cluster::new(4, 4, BlockMode::Supermajority, 6);
    let stranger = PeerId([9; 32]);
    for garbage in [
        &b""[..],
        b"\x00",
        b"\x03{not json",
        b"\x01\x01\x02",
        &[4u8; 100],
    ] {
        cluster.engines[0].handle_message(0, stranger, garbage);
    }
    // An answer for a command nobody forwarded to that peer is ignored.
    let forged = chorus_engine::Message::Outcome {
        command_id: CommandId::derive(&[b"nothing"]),
        outcome: CommandOutcome::Refused("no".into()),
    };
    cluster.engines[0].handle_message(0, stranger, &forged.encode().expect("encode"));
    cluster.collect(0);
    assert!(cluster.replies.is_empty());
    assert_eq!(cluster.engines[0].store().head_position().expect("head"), 0);
    // The engine still works.
    let open = bank(BankAccountCommand::OpenAccount { owner: "a".into() });
    cluster.submit(0, 0, request("open", "BankAccount@a", open));
    cluster.run_until_answered(1, 30_000);
    assert!(matches!(cluster.replies[&0], CommandOutcome::Committed(_)));
}

#[test]
fn a_forward_to_a_silent_member_is_answered_failed_in_time() {
    let mut cluster = Cluster::new(8, 3, BlockMode::Single, 7);
    // A stream whose responsible section does not hold node 0.
    let map = cluster.engines[0].map().clone();
    let own = chorus_routing::XorName::from_public_key(&cluster.ids[0].0);
    let (stream, section) = (0..1_000)
        .map(|index| format!("BankAccount@s{index}"))
        .map(|stream| {
            let key = StreamKey::parse(&stream).expect("key");
            (stream, map.section_for_stream(&key.qualified()).clone())
        })
        .find(|(_, section)| !section.contains(&own))
        .expect("a stream of another section");
    // Every member of that section is cut off.
    for (node, id) in cluster.ids.clone().iter().enumerate() {
        if section.contains(&chorus_routing::XorName::from_public_key(&id.0)) {
            cluster.down.insert(node);
        }
    }
    let open = bank(BankAccountCommand::OpenAccount { owner: "x".into() });
    cluster.submit(0, 0, request("silent", &stream, open));
    cluster.run_until_answered(1, 20_000);
    assert!(
        matches!(&cluster.replies[&0], CommandOutcome::Failed(reason) if reason.contains("no answer")),
        "{:?}",
        cluster.replies[&0]
    );
}

#[test]
fn time_moves_on_in_supermajority_mode() {
    let mut cluster = Cluster::new(4, 4, BlockMode::Supermajority, 8);
    cluster.now_ms = 1_700_000_000_000;
    let open = bank(BankAccountCommand::OpenAccount { owner: "a".into() });
    cluster.submit(0, 0, request("open", "BankAccount@a", open));
    cluster.run_until_answered(1, 30_000);
    let deposit = bank(BankAccountCommand::Deposit {
        amount: 1,
        transfer: None,
    });
    cluster.submit(1, 1, request("deposit", "BankAccount@a", deposit));
    cluster.run_until_answered(2, 30_000);
    cluster.settle_and_assert_sections_agree();
    let log = cluster.engines[0]
        .store()
        .read_log(&chorus_aggregate::Filter::All, 1, 10)
        .expect("log");
    assert_eq!(log.events.len(), 2);
    assert!(
        log.events
            .iter()
            .all(|event| event.timestamp_ms >= 1_700_000_000_000),
        "{:?}",
        log.events
            .iter()
            .map(|event| event.timestamp_ms)
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_long_queue_of_commands_answered_without_agreement_does_not_grow_the_stack() {
    let mut cluster = Cluster::new(4, 4, BlockMode::Single, 9);
    // 3,000 command ids already committed on one stream of node 0's store, written directly
    // in one group commit: this test is about the engine's queue, not agreement.
    let stream = StreamKey::parse("BankAccount@q").expect("key");
    let opened = chorus_aggregate::domain::encode_event(
        &chorus_demo::bank_account::BankAccountEvent::AccountOpened { owner: "q".into() },
    )
    .expect("encode");
    let batches: Vec<chorus_aggregate::AppendBatch> = (0..3_000)
        .map(|index| {
            let command_id = CommandId::derive(&[format!("known-{index}").as_bytes()]);
            let event = chorus_aggregate::NewEvent {
                event_id: chorus_aggregate::EventId::for_command(command_id, 0),
                event_type: opened.event_type.clone(),
                event_version: opened.event_version,
                payload: opened.payload.clone(),
                supersedes: None,
            };
            chorus_aggregate::AppendBatch::single(
                command_id,
                stream.clone(),
                ExpectedVersion::Any,
                vec![event],
                1,
            )
        })
        .collect();
    let written = cluster.engines[0]
        .store()
        .append_group(&batches)
        .expect("group");
    assert!(written.iter().all(Result::is_ok));
    // One new command in agreement on the stream, and the 3,000 known ones queued behind it.
    let deposit = bank(BankAccountCommand::Deposit {
        amount: 1,
        transfer: None,
    });
    cluster.submit(0, 0, request("new", "BankAccount@q", deposit.clone()));
    for index in 0..3_000u64 {
        cluster.submit(
            0,
            1 + index,
            request(&format!("known-{index}"), "BankAccount@q", deposit.clone()),
        );
    }
    cluster.run_until_answered(3_001, 60_000);
    assert!((1..=3_000).all(|ticket| matches!(
        cluster.replies[&ticket],
        CommandOutcome::AlreadyCommitted(_)
    )));
}

#[test]
fn every_engine_message_round_trips_and_damaged_bytes_are_errors() {
    use chorus_engine::engine::TransferChunk;
    use chorus_engine::membership::EventlessCommand;
    use chorus_engine::{MemberChange, Message, Welcome};
    let peer = PeerId([3; 32]);
    let stream = StreamKey::new("BankAccount", "x").expect("key");
    let domain = chorus_engine::DomainFingerprint::of("1", &chorus_demo::registry())
        .expect("a short version");
    let messages = vec![
        Message::JoinRequest(chorus_engine::domain::NodeDomain {
            runs: domain.clone(),
            upgrades_from: vec!["0".to_owned()],
        }),
        Message::DomainDiffers(domain.clone()),
        Message::LeaveRequest,
        Message::Confirm(CommandId::derive(&[b"confirm"])),
        Message::Welcome(Welcome {
            generation: 2,
            prefix: chorus_routing::Prefix::ROOT,
            members: vec![peer],
            events: 5,
            commands: 1,
            bytes: 40,
            digest: [7; 32],
            numbering: Some(chorus_engine::membership::Numbering {
                head: 12,
                digest: [8; 32],
            }),
            domain: Some(chorus_engine::domain::SectionDomain::new(domain.clone())),
        }),
        Message::TransferRequest {
            generation: 2,
            position: 9,
        },
        Message::TransferChunk(TransferChunk {
            generation: 2,
            position: 9,
            events: Vec::new(),
            commands: vec![EventlessCommand {
                command_id: CommandId::derive(&[b"c"]),
                stream,
                refusal: Some("no".into()),
            }],
            next: Some(12),
        }),
        Message::SectionUpdate {
            prefix: chorus_routing::Prefix::ROOT,
            generation: 3,
            change: MemberChange::Leave(peer),
        },
        Message::SectionUpdate {
            prefix: chorus_routing::Prefix::ROOT,
            generation: 4,
            change: MemberChange::Refresh(peer),
        },
        Message::Behind {
            generation: 5,
            round: 77,
            head_position: 1_234,
            members: vec![peer, PeerId([4; 32])],
        },
        Message::Outcome {
            command_id: CommandId::derive(&[b"o"]),
            outcome: CommandOutcome::Refused("no".into()),
        },
        Message::Outcome {
            command_id: CommandId::derive(&[b"p"]),
            outcome: CommandOutcome::IdTaken,
        },
        Message::JoinRefused(chorus_engine::JoinRefusal::NotApproved),
        Message::JoinRefused(chorus_engine::JoinRefusal::WrongSection {
            prefix: chorus_routing::Prefix::ROOT,
        }),
        Message::ForkEvidence(Box::new(fork_evidence())),
    ];
    for message in messages {
        let bytes = message.encode().expect("encodes");
        let decoded = Message::decode(&bytes).expect("decodes");
        assert_eq!(
            decoded.encode().expect("encodes again"),
            bytes,
            "{message:?} round trips"
        );
        // Every strict prefix of a message with a body is an error, never a panic.
        for cut in 1..bytes.len() {
            if bytes.len() > 1 {
                assert!(
                    Message::decode(&bytes[..cut]).is_err(),
                    "{message:?} cut at {cut} decoded"
                );
            }
        }
    }
    // Requests carry no body; gossip needs its generation.
    assert!(Message::decode(&[5, 0]).is_err());
    assert!(Message::decode(&[1, 0, 0]).is_err());
    assert!(Message::decode(&[200]).is_err());
    // A hint naming more members than any section has is refused.
    let crowd = Message::Behind {
        generation: 1,
        round: 1,
        head_position: 1,
        members: (0..=chorus_engine::engine::limits::BEHIND_MEMBERS_MAX)
            .map(|index| PeerId([(index % 251) as u8; 32]))
            .collect(),
    };
    let bytes = crowd.encode().expect("encodes");
    assert!(Message::decode(&bytes).is_err());
}

/// A test aggregate with a float in its command: readings of a gauge.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Gauge;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
enum GaugeCommand {
    Record { reading: f64 },
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum GaugeEvent {
    Recorded { reading: f64 },
}

impl chorus_aggregate::domain::DomainEvent for GaugeEvent {}

impl chorus_aggregate::Aggregate for Gauge {
    const CATEGORY: &'static str = "Gauge";
    const SCHEMA_VERSION: u32 = 1;
    type Command = GaugeCommand;
    type Event = GaugeEvent;
    type Error = std::convert::Infallible;

    fn handle(
        &self,
        command: &GaugeCommand,
        _context: &chorus_aggregate::domain::CommandContext,
    ) -> Result<Vec<GaugeEvent>, Self::Error> {
        let GaugeCommand::Record { reading } = command;
        Ok(vec![GaugeEvent::Recorded { reading: *reading }])
    }

    fn apply(self, _event: &GaugeEvent) -> Self {
        self
    }
}

/// Events stored under `command_id` on a member of `stream`'s section.
fn stored_for(cluster: &Cluster, stream: &str, command_id: CommandId) -> usize {
    let stream = StreamKey::parse(stream).expect("key");
    let section = cluster.engines[0]
        .map()
        .section_for_stream(&stream.qualified());
    let engine = cluster
        .engines
        .iter()
        .find(|engine| section.contains(&chorus_routing::XorName::from_public_key(&engine.id().0)))
        .expect("a member");
    engine
        .store()
        .read_stream(&stream, 1, chorus_aggregate::Direction::Forward, 10_000)
        .map(|slice| {
            slice
                .events
                .iter()
                .filter(|event| event.command_id == Some(command_id))
                .count()
        })
        .unwrap_or(0)
}

/// The answer to a command and what the store shows agree: committed means stored once,
/// invalid means nothing stored, and a resend of the same id gives the same kind of answer.
fn assert_answer_matches_store(cluster: &mut Cluster, stream: &str, command: serde_json::Value) {
    let first = cluster.replies.len() as u64;
    let request = request(&format!("{stream}{command}"), stream, command.clone());
    let command_id = request.command_id;
    cluster.submit(first as usize % 4, first, request.clone());
    cluster.run_until_answered(first as usize + 1, 30_000);
    // The answering member applied the block; the others (the one the resend goes to, the
    // one read below) may follow later.
    cluster.settle_and_assert_sections_agree();
    cluster.submit((first as usize + 1) % 4, first + 1, request);
    cluster.run_until_answered(first as usize + 2, 30_000);
    let (answer, again) = (&cluster.replies[&first], &cluster.replies[&(first + 1)]);
    let stored = stored_for(cluster, stream, command_id);
    match answer {
        CommandOutcome::Committed(_) => {
            assert_eq!(stored, 1, "{command}: committed but stored {stored} times");
            assert!(
                matches!(again, CommandOutcome::AlreadyCommitted(_)),
                "{command}: the resend answered {again:?}"
            );
        }
        CommandOutcome::Invalid(_) | CommandOutcome::Refused(_) | CommandOutcome::IdTaken => {
            assert_eq!(stored, 0, "{command}: answered {answer:?} but stored");
            assert_eq!(
                std::mem::discriminant(answer),
                std::mem::discriminant(again),
                "{command}: answered {answer:?}, then {again:?}"
            );
        }
        CommandOutcome::AlreadyCommitted(_) | CommandOutcome::Failed(_) => {
            panic!("{command}: a fresh command answered {answer:?}")
        }
    }
}

#[test]
fn a_command_with_a_field_its_type_does_not_know_is_refused_and_not_stored() {
    let mut cluster = Cluster::new(4, 4, BlockMode::Supermajority, 5);
    let open = bank(BankAccountCommand::OpenAccount { owner: "f".into() });
    cluster.submit(0, 0, request("open-f", "BankAccount@f", open));
    cluster.run_until_answered(1, 30_000);
    let deposit: serde_json::Value = serde_json::from_str(
        r#"{"Deposit": {"amount": 5, "transfer": null, "note": 1180591620717411303424}}"#,
    )
    .expect("json");
    cluster.submit(1, 1, request("note", "BankAccount@f", deposit));
    cluster.run_until_answered(2, 30_000);
    match &cluster.replies[&1] {
        CommandOutcome::Invalid(reason) => {
            assert!(reason.contains("Deposit.note"), "{reason}");
        }
        other => panic!("answered {other:?}"),
    }
    assert_eq!(
        stored_for(&cluster, "BankAccount@f", CommandId::derive(&[b"note"])),
        0
    );
}

#[test]
fn a_float_in_a_command_is_answered_as_it_is_stored() {
    // 123456789.123456789 is the number that was once answered "id used by another
    // command" although it was stored: the proposer compared a float read back from the
    // wire with a different last digit.
    let mut cluster = Cluster::new(4, 4, BlockMode::Supermajority, 6);
    for reading in [
        "123456789.123456789",
        "0.1",
        "1e-300",
        "-2.5e300",
        "3.141592653589793238",
    ] {
        let command: serde_json::Value =
            serde_json::from_str(&format!(r#"{{"Record": {{"reading": {reading}}}}}"#))
                .expect("json");
        assert_answer_matches_store(&mut cluster, "Gauge@g", command.clone());
        let last = cluster.replies.len() as u64 - 2;
        assert!(
            matches!(cluster.replies[&last], CommandOutcome::Committed(_)),
            "{reading}: {:?}",
            cluster.replies[&last]
        );
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// For arbitrary JSON in a command (extra fields, odd numbers, wrong types), the answer
    /// agrees with the store.
    #[test]
    fn the_answer_to_any_command_body_agrees_with_the_store(
        extra in proptest::option::of(json_value()),
        reading in json_value(),
    ) {
        let mut cluster = Cluster::new(4, 4, BlockMode::Supermajority, 7);
        let mut record = serde_json::json!({"Record": {"reading": reading}});
        if let Some(extra) = extra {
            record["Record"]["extra"] = extra;
        }
        assert_answer_matches_store(&mut cluster, "Gauge@p", record);
    }
}

fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(serde_json::Value::from),
        // Numbers as a client writes them: more digits than an f64 keeps, beyond u64.
        "-?[0-9]{1,30}(\\.[0-9]{1,20})?(e-?[0-9]{1,2})?"
            .prop_filter_map("a JSON number", |text| serde_json::from_str(&text).ok()),
        "[a-z]{0,8}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(serde_json::Value::from),
            proptest::collection::btree_map("[a-z]{1,4}", inner, 0..3)
                .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Runs `virtual_ms` while a client opens an account every 100 ms (numbered from `opened`,
/// which counts them; each one's ticket is its number).
fn run_with_load(cluster: &mut Cluster, opened: &mut u64, virtual_ms: u64) {
    for _ in 0..virtual_ms / 100 {
        let open = bank(BankAccountCommand::OpenAccount { owner: "o".into() });
        let id = format!("open{opened}");
        let stream = format!("BankAccount@{id}");
        cluster.submit(*opened as usize % 3, *opened, request(&id, &stream, open));
        *opened += 1;
        cluster.run_for(100);
    }
}

/// Opens an account every 100 ms for a second, lets the section settle two seconds, and
/// returns how many of those ten were committed.
fn load_then_count_committed(cluster: &mut Cluster, opened: &mut u64) -> usize {
    let first = *opened;
    run_with_load(cluster, opened, 1_000);
    cluster.run_for(2_000);
    (first..*opened)
        .filter(|ticket| {
            matches!(
                cluster.replies.get(ticket),
                Some(CommandOutcome::Committed(_))
            )
        })
        .count()
}

/// Every founding member's allow-list: the founders only.
fn founders_only(cluster: &Cluster) -> Admission {
    Admission::AllowList(cluster.ids.iter().copied().collect())
}

#[test]
fn a_stranger_may_only_ask_to_join_and_is_admitted_only_with_more_than_two_thirds_approving() {
    let mode = BlockMode::Supermajority;
    let mut cluster = Cluster::new(4, 4, mode, 21);
    let founders = founders_only(&cluster);
    for engine in &mut cluster.engines {
        engine.set_admission(founders.clone());
    }
    let stranger = cluster.add_joiner(mode);
    let stranger_id = cluster.ids[stranger];
    // A command forwarded by the stranger is refused with the reason, and never applied.
    let open = bank(BankAccountCommand::OpenAccount { owner: "s".into() });
    let forward = chorus_engine::Message::Forward(request("smuggled", "BankAccount@s", open));
    cluster.engines[0].handle_message(
        cluster.now_ms,
        stranger_id,
        &forward.encode().expect("encode"),
    );
    let answers: Vec<_> = std::iter::from_fn(|| cluster.engines[0].poll_send())
        .filter(|(to, _)| *to == stranger_id)
        .map(|(_, bytes)| chorus_engine::Message::decode(&bytes).expect("decodes"))
        .collect();
    assert!(
        matches!(&answers[..], [chorus_engine::Message::Outcome { outcome: CommandOutcome::Failed(reason), .. }] if reason.contains("network map")),
        "{answers:?}"
    );
    assert_eq!(cluster.engines[0].refusals().stranger_messages, 1);
    // Not approved anywhere: refused by every member, for as long as it asks.
    cluster.run_for(3_000);
    assert_eq!(cluster.member_counts()[..4], [4, 4, 4, 4]);
    assert_eq!(
        cluster.engines[stranger].readiness(),
        chorus_engine::Readiness::Joining
    );
    for engine in &cluster.engines[..4] {
        assert!(
            engine.refusals().joins_refused >= 1,
            "{:?}",
            engine.refusals()
        );
    }
    assert_eq!(cluster.engines[0].store().head_position().expect("head"), 0);
    // Approved by two of four members: not more than two thirds, still refused.
    let mut approving = founders_only(&cluster);
    if let Admission::AllowList(keys) = &mut approving {
        keys.insert(stranger_id);
    }
    for node in 0..2 {
        cluster.engines[node].set_admission(approving.clone());
    }
    cluster.run_for(3_000);
    assert_eq!(cluster.member_counts()[..4], [4, 4, 4, 4]);
    // A third approves: admitted, and it takes part.
    cluster.engines[2].set_admission(approving);
    cluster.run_for(5_000);
    assert_eq!(cluster.member_counts(), [5, 5, 5, 5, 5]);
    assert!(cluster.engines[stranger].is_active_member());
}

#[test]
fn a_member_silent_past_the_span_is_voted_out_and_a_shorter_silence_is_not() {
    let mode = BlockMode::Supermajority;
    let mut cluster = Cluster::with_config(4, 4, mode, 22, |config| {
        config.remove_silent_after_ms = Some(2_000);
    });
    // A section votes a member out only while it has work (an idle one makes no rounds,
    // and nobody waits on anyone): clients open an account every 100 ms while it should.
    let mut opened = 0;
    run_with_load(&mut cluster, &mut opened, 500);
    // A restart shorter than the span: nothing happens.
    cluster.down.insert(3);
    run_with_load(&mut cluster, &mut opened, 1_500);
    cluster.down.remove(&3);
    run_with_load(&mut cluster, &mut opened, 3_000);
    assert_eq!(cluster.member_counts(), [4, 4, 4, 4]);
    // Idle, a member gone for longer than the span is kept: nobody waits on it.
    cluster.down.insert(3);
    cluster.run_for(4_000);
    assert_eq!(cluster.member_counts(), [4, 4, 4]);
    // With work, the three others vote it out and go on committing.
    run_with_load(&mut cluster, &mut opened, 4_000);
    assert_eq!(cluster.member_counts(), [3, 3, 3]);
    let committed_after = load_then_count_committed(&mut cluster, &mut opened);
    assert!(committed_after > 0, "nothing committed after the removal");
}

#[test]
fn an_operator_removal_takes_more_than_two_thirds_of_the_members() {
    let mode = BlockMode::Supermajority;
    let mut cluster = Cluster::new(4, 4, mode, 23);
    let target = cluster.ids[3];
    for node in 0..2 {
        let now = cluster.now_ms;
        assert_eq!(
            cluster.engines[node].request_removal(now, target),
            chorus_engine::RemovalRequest::Voted
        );
    }
    cluster.run_for(3_000);
    assert_eq!(cluster.member_counts(), [4, 4, 4, 4]);
    let now = cluster.now_ms;
    cluster.engines[2].request_removal(now, target);
    cluster.run_for(3_000);
    assert_eq!(cluster.member_counts()[..3], [3, 3, 3]);
    assert!(
        cluster.engines[3].section().members.is_empty(),
        "the removed node knows it left"
    );
    let now = cluster.now_ms;
    assert_eq!(
        cluster.engines[0].request_removal(now, target),
        chorus_engine::RemovalRequest::NotAMember
    );
}

// Members that vote for a change rounds apart still get it agreed. A vote not agreed within
// the consensus's observation window (64 rounds: well under a second under load) is
// forgotten; each member voted once per generation, so a laggard's refresh that one member
// saw a second later than the others was never agreed (tests/node_lagging.rs, double stall).
// Now each votes again while its cause lasts.
#[test]
fn votes_for_a_change_made_many_rounds_apart_are_agreed() {
    let mode = BlockMode::Supermajority;
    let mut cluster = Cluster::new(4, 4, mode, 25);
    let target = cluster.ids[3];
    for node in 0..2 {
        let now = cluster.now_ms;
        cluster.engines[node].request_removal(now, target);
    }
    let round = |cluster: &Cluster| {
        cluster.engines[0]
            .consensus()
            .map_or(0, |consensus| consensus.stats().undecided_round)
    };
    let voted_at = round(&cluster);
    let window = chorus_consensus::Config::default().observation_window_rounds;
    let mut opened = 0;
    while round(&cluster) < voted_at + 2 * window {
        run_with_load(&mut cluster, &mut opened, 500);
        assert!(cluster.now_ms < 600_000, "the section stopped deciding");
    }
    assert_eq!(cluster.member_counts(), [4, 4, 4, 4], "two votes of four");
    let now = cluster.now_ms;
    cluster.engines[2].request_removal(now, target);
    run_with_load(&mut cluster, &mut opened, 3_000);
    assert_eq!(cluster.member_counts()[..3], [3, 3, 3]);
}

/// Two events one key signed at one index: a fork.
fn fork_evidence() -> chorus_consensus::ForkEvidence {
    use chorus_consensus::SignedEvent;
    let key = SigningKey::from_bytes(&[5; 32]);
    let (a, _) = SignedEvent::create(&key, 0, None, None, 1, Vec::new());
    let (b, _) = SignedEvent::create(&key, 0, None, None, 2, Vec::new());
    let header = |event: SignedEvent| chorus_consensus::SignedHeader {
        header: event.header,
        signature: event.signature,
    };
    chorus_consensus::ForkEvidence::new(header(a), header(b))
}

#[test]
fn a_member_flooding_sync_requests_gets_no_more_than_its_byte_budget() {
    use chorus_engine::engine::limits::SYNC_BYTES_PER_MEMBER_PER_SEC;
    let mode = BlockMode::Supermajority;
    let mut cluster = Cluster::new(4, 4, mode, 24);
    let mut opened = 0;
    run_with_load(&mut cluster, &mut opened, 2_000);
    // Member 1 asks member 0 for everything, again and again, within one millisecond.
    let flooder = cluster.ids[1];
    let generation = cluster.engines[0].section().generation;
    let request = chorus_engine::Message::SyncRequest {
        generation,
        domain: cluster.engines[0].domain().digest,
        request: chorus_consensus::SyncRequest {
            known: vec![0; 4],
            wanted: Vec::new(),
        },
    }
    .encode()
    .expect("encodes");
    let floods = 5_000;
    let mut sizes = Vec::new();
    for _ in 0..floods {
        cluster.engines[0].handle_message(cluster.now_ms, flooder, &request);
        while let Some((to, bytes)) = cluster.engines[0].poll_send() {
            if to == flooder && bytes.first() == Some(&2) {
                sizes.push(bytes.len() as u64);
            }
        }
    }
    let sent: u64 = sizes.iter().sum();
    let largest = sizes.iter().copied().max().unwrap_or(0);
    assert!(largest > 0, "the first requests are answered");
    assert!(
        sent <= SYNC_BYTES_PER_MEMBER_PER_SEC + largest,
        "{sent} bytes answered in one instant; the budget is {SYNC_BYTES_PER_MEMBER_PER_SEC}"
    );
    let dropped = cluster.engines[0].refusals().sync_over_budget;
    assert_eq!(
        dropped as usize + sizes.len(),
        floods,
        "every request answered or counted"
    );
    assert!(
        dropped > 0,
        "{} responses of up to {largest} bytes",
        sizes.len()
    );
    // The section goes on committing (the flooder included).
    let committed = load_then_count_committed(&mut cluster, &mut opened);
    assert_eq!(committed, 10, "of 10 accounts opened after the flood");
}

#[test]
fn fork_evidence_a_member_made_up_removes_nobody() {
    // The adversary: member 1 (a faulty member may send anything) claims member 3 forked,
    // with two headers naming member 3 as creator in this generation's group but signed with
    // its own key (it has no other). Every member checks the signatures: no honest one votes.
    let mode = BlockMode::Supermajority;
    let mut cluster = Cluster::new(4, 4, mode, 25);
    let victim = cluster.ids[3];
    let liar = cluster.ids[1];
    let group = chorus_engine::membership::group_id(&chorus_routing::Prefix::ROOT, 0);
    let mut evidence = fork_evidence();
    for header in [&mut evidence.first, &mut evidence.second] {
        header.header.creator = victim;
        header.header.group = group;
    }
    let message = chorus_engine::Message::ForkEvidence(Box::new(evidence))
        .encode()
        .expect("encodes");
    for node in [0, 2, 3] {
        let now = cluster.now_ms;
        cluster.engines[node].handle_message(now, liar, &message);
        cluster.collect(node);
    }
    // The liar votes the victim out itself: had members 0 and 2 believed the evidence, three
    // of four votes would remove it.
    let now = cluster.now_ms;
    cluster.engines[1].request_removal(now, victim);
    cluster.collect(1);
    let mut opened = 0;
    run_with_load(&mut cluster, &mut opened, 3_000);
    assert_eq!(cluster.member_counts(), [4, 4, 4, 4]);
}

#[test]
fn fork_evidence_reaches_a_member_that_was_cut_off_when_it_was_first_passed_on() {
    // Member 3 forked (two headers it signed at one index of this generation's group).
    // Members 0 and 1 hold the evidence while member 2 is cut off: their first pass-on to
    // member 2 is lost, and 2 of 4 votes remove nobody. Passed on again, it reaches member 2
    // once it is back, and the third vote removes member 3.
    let mode = BlockMode::Supermajority;
    let seed = 26;
    let mut cluster = Cluster::new(4, 4, mode, seed);
    let mut opened = 0;
    run_with_load(&mut cluster, &mut opened, 1_000);
    let forker_key = {
        // The harness draws the keys first from the seeded generator: the fourth is member 3's.
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut secret = [0u8; 32];
        for _ in 0..4 {
            rng.fill_bytes(&mut secret);
        }
        SigningKey::from_bytes(&secret)
    };
    let forker = cluster.ids[3];
    assert_eq!(PeerId(forker_key.verifying_key().to_bytes()), forker);
    let group = chorus_engine::membership::group_id(&chorus_routing::Prefix::ROOT, 0);
    let twin = |at_ms: u64| {
        let (event, _) = chorus_consensus::SignedEvent::create_hashed(
            group,
            &forker_key,
            0,
            None,
            None,
            at_ms,
            Vec::new(),
            Vec::new(),
        );
        chorus_consensus::SignedHeader {
            header: event.header,
            signature: event.signature,
        }
    };
    let evidence = chorus_consensus::ForkEvidence::new(twin(1), twin(2));
    let message = chorus_engine::Message::ForkEvidence(Box::new(evidence))
        .encode()
        .expect("encodes");
    cluster.down.insert(2);
    for (node, from) in [(0, 1), (1, 0)] {
        let now = cluster.now_ms;
        cluster.engines[node].handle_message(now, cluster.ids[from], &message);
        cluster.collect(node);
    }
    run_with_load(&mut cluster, &mut opened, 1_000);
    assert_eq!(
        cluster.member_counts(),
        [4, 4, 4],
        "two votes removed nobody"
    );
    cluster.down.remove(&2);
    run_with_load(&mut cluster, &mut opened, 5_000);
    assert_eq!(
        cluster.member_counts()[..3],
        [3, 3, 3],
        "the forker was not voted out"
    );
}

fn other_domain(config: &mut EngineConfig) {
    config.domain_version = "2".to_owned();
}

#[test]
fn a_founder_running_another_domain_halts_naming_both_and_the_others_go_on() {
    let mode = BlockMode::Supermajority;
    let mut cluster = Cluster::with_node_config(4, 4, mode, 31, |node, config| {
        if node == 3 {
            other_domain(config);
        }
    });
    let mut opened = 0;
    // Nodes 0 to 2 take the load: three of four members are more than two thirds.
    assert_eq!(load_then_count_committed(&mut cluster, &mut opened), 10);
    let reason = cluster.engines[3].halted().expect("the odd founder halts");
    let (ours, theirs) = (cluster.engines[3].domain(), cluster.engines[0].domain());
    assert_ne!(ours, theirs);
    for named in [ours, theirs] {
        assert!(reason.contains(&named.to_string()), "{reason}");
    }
    for engine in &cluster.engines[..3] {
        assert_eq!(engine.halted(), None);
    }
    // It halted on f + 1 = 2 members' word: each refused its sync requests (a halted engine
    // sends nothing more, so the third may never have heard from it).
    let refusing = cluster.engines[..3]
        .iter()
        .filter(|engine| engine.refusals().other_domain >= 1)
        .count();
    assert!(refusing >= 2, "{refusing} members refused its requests");
}

#[test]
fn a_joiner_running_another_domain_is_refused_and_halts() {
    let mode = BlockMode::Supermajority;
    let mut cluster = Cluster::new(4, 4, mode, 32);
    let joiner = cluster.add_joiner_with(mode, other_domain);
    cluster.run_for(3_000);
    assert_eq!(cluster.member_counts()[..4], [4, 4, 4, 4]);
    let reason = cluster.engines[joiner].halted().expect("the joiner halts");
    assert!(
        reason.contains(&cluster.engines[0].domain().to_string()),
        "{reason}"
    );
    assert!(!cluster.engines[joiner].is_active_member());
    for engine in &cluster.engines[..4] {
        assert!(
            engine.refusals().joins_refused >= 1,
            "{:?}",
            engine.refusals()
        );
    }
    // The same joiner with the section's domain would be admitted (admission is open here).
    let twin = cluster.add_joiner(mode);
    cluster.run_for(5_000);
    assert!(cluster.engines[twin].is_active_member());
}

#[test]
fn a_store_of_another_domain_is_refused_at_start_naming_both() {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().join("events.redb");
    let key = SigningKey::from_bytes(&[9; 32]);
    let map = SectionMap::with_members(1, &[key.verifying_key().to_bytes()]);
    let mode = BlockMode::Supermajority;
    let store = EventStore::open(&path).expect("store");
    let first = Engine::new(
        engine_config(mode, &|_| {}),
        key.clone(),
        map.clone(),
        registry(),
        store,
        0,
    )
    .expect("engine");
    let section = first.domain().clone();
    drop(first);
    let store = EventStore::open(&path).expect("store");
    let refused = Engine::restore(
        engine_config(mode, &other_domain),
        key.clone(),
        map.clone(),
        registry(),
        store,
        Vec::new(),
        0,
    );
    let Err(error) = refused else {
        panic!("a node of another domain started on the section's store");
    };
    let message = error.to_string();
    assert!(message.contains(&section.to_string()), "{message}");
    assert!(message.contains("version \"2\""), "{message}");
    // With the section's domain it starts.
    let store = EventStore::open(&path).expect("store");
    Engine::restore(
        engine_config(mode, &|_| {}),
        key,
        map,
        registry(),
        store,
        Vec::new(),
        0,
    )
    .expect("the section's own domain starts");
}

#[test]
fn a_commands_envelope_is_agreed_and_stored_alike_on_every_member() {
    for mode in [BlockMode::Supermajority, BlockMode::Single] {
        let mut cluster = Cluster::new(4, 4, mode, 33);
        let open = bank(BankAccountCommand::OpenAccount { owner: "e".into() });
        let mut request = request("enveloped", "BankAccount@e", open);
        request.correlation_id = CommandId::derive(&[b"the request"]).into();
        request.metadata = Some(serde_json::json!({"user": "ada", "trace": [1, 2]}));
        cluster.submit(1, 0, request.clone());
        cluster.run_until_answered(1, 30_000);
        assert!(
            matches!(cluster.replies[&0], CommandOutcome::Committed(_)),
            "{mode:?}"
        );
        cluster.settle_and_assert_sections_agree();
        let key = StreamKey::parse("BankAccount@e").expect("key");
        for engine in &cluster.engines {
            let events = engine
                .store()
                .read_stream(&key, 1, chorus_aggregate::Direction::Forward, 10)
                .expect("read")
                .events;
            assert_eq!(events.len(), 1, "{mode:?}");
            let event = &events[0];
            assert_eq!(event.correlation_id, request.correlation_id);
            assert_eq!(event.causation_id, request.command_id.into());
            let metadata: serde_json::Value =
                serde_json::from_slice(event.metadata.as_deref().expect("metadata")).expect("JSON");
            assert_eq!(
                metadata,
                serde_json::json!({"user": "ada", "trace": [1, 2]})
            );
        }
        // Metadata that is not an object never reaches the store.
        let mut bad = request;
        bad.command_id = CommandId::derive(&[b"bad envelope"]);
        bad.metadata = Some(serde_json::json!([1]));
        cluster.submit(2, 1, bad);
        cluster.run_until_answered(2, 30_000);
        assert!(
            matches!(cluster.replies[&1], CommandOutcome::Invalid(_)),
            "{:?}",
            cluster.replies[&1]
        );
    }
}

#[test]
fn stream_metadata_and_soft_delete_are_agreed_and_hide_the_same_events_on_every_member() {
    let mut cluster = Cluster::new(4, 4, BlockMode::Supermajority, 34);
    let open = bank(BankAccountCommand::OpenAccount { owner: "r".into() });
    cluster.submit(0, 0, request("retained-open", "BankAccount@r", open));
    // Deposits only once the account is open (one agreed before the opening is refused).
    cluster.run_until_answered(1, 30_000);
    for number in 1..=4u64 {
        let deposit = bank(BankAccountCommand::Deposit {
            amount: number,
            transfer: None,
        });
        cluster.submit(
            (number % 4) as usize,
            number,
            request(&format!("retained-{number}"), "BankAccount@r", deposit),
        );
    }
    cluster.run_until_answered(5, 30_000);
    let key = StreamKey::parse("BankAccount@r").expect("key");
    let visible = |cluster: &Cluster| -> Vec<Vec<u64>> {
        cluster
            .engines
            .iter()
            .map(|engine| {
                engine
                    .store()
                    .read_stream(&key, 1, chorus_aggregate::Direction::Forward, 100)
                    .expect("read")
                    .events
                    .iter()
                    .filter(|event| !event.event_type.is_system())
                    .map(|event| event.sequence)
                    .collect()
            })
            .collect()
    };
    // Keep the two newest: every member shows the same two.
    let retain = serde_json::json!({"$metadata": {"max_count": 2}});
    cluster.submit(2, 5, request("retain-two", "BankAccount@r", retain));
    cluster.run_until_answered(6, 30_000);
    assert!(
        matches!(cluster.replies[&5], CommandOutcome::Committed(_)),
        "{:?}",
        cluster.replies[&5]
    );
    cluster.settle_and_assert_sections_agree();
    let shown = visible(&cluster);
    assert!(shown.iter().all(|events| *events == shown[0]), "{shown:?}");
    assert!(
        shown[0].len() <= 2 && shown[0].iter().all(|sequence| *sequence >= 4),
        "{shown:?}"
    );
    // A misspelt rule is invalid and changes nothing.
    let misspelt = serde_json::json!({"$metadata": {"max_cout": 2}});
    cluster.submit(3, 6, request("misspelt", "BankAccount@r", misspelt));
    cluster.run_until_answered(7, 30_000);
    assert!(
        matches!(cluster.replies[&6], CommandOutcome::Invalid(_)),
        "{:?}",
        cluster.replies[&6]
    );
    // Soft-deleted: no member shows any of its events.
    let delete = serde_json::json!({"$delete": {}});
    cluster.submit(1, 7, request("delete-r", "BankAccount@r", delete));
    cluster.run_until_answered(8, 30_000);
    assert!(
        matches!(cluster.replies[&7], CommandOutcome::Committed(_)),
        "{:?}",
        cluster.replies[&7]
    );
    cluster.settle_and_assert_sections_agree();
    assert!(
        visible(&cluster).iter().all(Vec::is_empty),
        "{:?}",
        visible(&cluster)
    );
}

/// How long after an account opens its welcome deposit is scheduled.
const WELCOME_DELAY_MS: u64 = 2_000;

/// A process manager with a timeout: each opened account gets a deposit of 1, scheduled
/// `WELCOME_DELAY_MS` after the opening's agreed time.
struct WelcomeDeposit;

impl chorus_aggregate::ProcessManager for WelcomeDeposit {
    fn name(&self) -> &str {
        "welcome-deposit"
    }

    fn filter(&self) -> chorus_aggregate::Filter {
        chorus_aggregate::Filter::EventType(
            chorus_aggregate::TypeName::new("AccountOpened").expect("type"),
        )
    }

    fn handle(&mut self, event: &chorus_aggregate::RecordedEvent) -> Vec<CommandRequest> {
        let deposit = BankAccountCommand::Deposit {
            amount: 1,
            transfer: None,
        };
        CommandRequest::caused_by(self.name(), event, 0, event.stream.clone(), &deposit)
            .map(|request| request.not_before(event.timestamp_ms + WELCOME_DELAY_MS))
            .into_iter()
            .collect()
    }
}

/// The events of `account` on every engine: (type, agreed time).
fn account_events(cluster: &Cluster, account: &str) -> Vec<Vec<(String, u64)>> {
    let stream = StreamKey::new("BankAccount", account).expect("key");
    cluster
        .engines
        .iter()
        .map(|engine| {
            engine
                .store()
                .read_stream(&stream, 1, chorus_aggregate::Direction::Forward, 100)
                .expect("read")
                .events
                .iter()
                .map(|event| (event.event_type.as_str().to_owned(), event.timestamp_ms))
                .collect()
        })
        .collect()
}

#[test]
fn a_scheduled_command_executes_once_at_the_agreed_time_and_not_before() {
    for (seed, mode) in [(41, BlockMode::Single), (42, BlockMode::Supermajority)] {
        let mut cluster = Cluster::new(4, 4, mode, seed);
        for engine in &mut cluster.engines {
            engine
                .add_process_manager(Box::new(WelcomeDeposit))
                .expect("manager");
        }
        let open = bank(BankAccountCommand::OpenAccount {
            owner: "o".to_owned(),
        });
        cluster.submit(0, 1, request("open-w", "BankAccount@w", open));
        cluster.run_until_answered(1, 10_000);
        cluster.run_for(WELCOME_DELAY_MS / 2);
        assert_eq!(cluster.balance("w"), 0, "seed {seed}: deposited early");
        cluster.run_for(WELCOME_DELAY_MS * 2);
        let histories = account_events(&cluster, "w");
        for history in &histories {
            assert_eq!(history, &histories[0], "seed {seed}: members differ");
        }
        let [(opened, opened_at), (deposited, deposited_at)] = histories[0].as_slice() else {
            panic!(
                "seed {seed}: not one opening and one deposit: {:?}",
                histories[0]
            );
        };
        assert_eq!(
            (opened.as_str(), deposited.as_str()),
            ("AccountOpened", "Deposited")
        );
        assert!(
            *deposited_at >= opened_at + WELCOME_DELAY_MS,
            "seed {seed}: deposited at {deposited_at}, opened at {opened_at}"
        );
    }
}

/// A stream projection: each opened account is listed in its owner's `Owners@<owner>`.
struct AccountsByOwner;

impl chorus_aggregate::StreamProjection for AccountsByOwner {
    const CATEGORY: &'static str = "Owners";

    fn name(&self) -> &str {
        "accounts-by-owner"
    }

    fn filter(&self) -> chorus_aggregate::Filter {
        chorus_aggregate::Filter::EventType(
            chorus_aggregate::TypeName::new("AccountOpened").expect("type"),
        )
    }

    fn emit(&self, event: &chorus_aggregate::RecordedEvent) -> Vec<chorus_aggregate::Emitted> {
        let opened: serde_json::Value = serde_json::from_slice(&event.payload).expect("json");
        vec![chorus_aggregate::Emitted {
            stream_id: opened["owner"].as_str().unwrap_or("nobody").to_owned(),
            event_type: "Listed".to_owned(),
            data: serde_json::json!({"account": event.stream.id()}),
        }]
    }
}

#[test]
fn a_stream_projection_writes_the_same_streams_on_every_member_once() {
    use chorus_aggregate::StreamProjection;
    for (seed, mode) in [(44, BlockMode::Single), (45, BlockMode::Supermajority)] {
        // Two sections: outputs may belong to another section than their sources.
        let mut cluster = Cluster::new(8, 3, mode, seed);
        assert!(
            cluster.member_counts().iter().all(|members| *members < 8),
            "one section"
        );
        for engine in &mut cluster.engines {
            engine
                .add_process_manager(Box::new(chorus_aggregate::Emitter(AccountsByOwner)))
                .expect("projection");
        }
        for index in 0..6u64 {
            let open = bank(BankAccountCommand::OpenAccount {
                owner: format!("owner{}", index % 2),
            });
            let node = (index % 8) as usize;
            cluster.submit(
                node,
                index + 1,
                request(
                    &format!("open{index}"),
                    &format!("BankAccount@acc{index}"),
                    open,
                ),
            );
        }
        cluster.run_until_answered(6, 30_000);
        cluster.run_for(3_000);
        for owner in ["owner0", "owner1"] {
            let stream = StreamKey::new(AccountsByOwner::CATEGORY, owner).expect("key");
            let section = cluster.engines[0]
                .map()
                .section_for_stream(&stream.qualified());
            let listed: Vec<Vec<String>> = cluster
                .engines
                .iter()
                .filter(|engine| {
                    section.contains(&chorus_routing::XorName::from_public_key(&engine.id().0))
                })
                .map(|engine| {
                    engine
                        .store()
                        .read_stream(&stream, 1, chorus_aggregate::Direction::Forward, 100)
                        .expect("read")
                        .events
                        .iter()
                        .map(|event| String::from_utf8_lossy(&event.payload).into_owned())
                        .collect()
                })
                .collect();
            assert!(listed.len() >= 3, "seed {seed}: {} members", listed.len());
            assert_eq!(listed[0].len(), 3, "seed {seed}: {owner}: {:?}", listed[0]);
            for member in &listed {
                assert_eq!(member, &listed[0], "seed {seed}: members differ");
            }
        }
        // A client cannot write there.
        let forged = request(
            "forged",
            "Owners@owner0",
            serde_json::json!({"event_type": "Listed", "data": {}}),
        );
        cluster.submit(0, 100, forged);
        cluster.run_until_answered(7, 10_000);
        assert!(
            matches!(&cluster.replies[&100], CommandOutcome::Invalid(reason) if reason.contains("projection")),
            "{:?}",
            cluster.replies[&100]
        );
    }
}

/// A process manager that answers each opened account (but the pool) with two deposits: one
/// into the account itself, one into the shared `BankAccount@pool`.
struct DepositTwice;

impl chorus_aggregate::ProcessManager for DepositTwice {
    fn name(&self) -> &str {
        "deposit-twice"
    }

    fn filter(&self) -> chorus_aggregate::Filter {
        chorus_aggregate::Filter::EventType(
            chorus_aggregate::TypeName::new("AccountOpened").expect("type"),
        )
    }

    fn handle(&mut self, event: &chorus_aggregate::RecordedEvent) -> Vec<CommandRequest> {
        if event.stream.id() == "pool" {
            return Vec::new();
        }
        let deposit = BankAccountCommand::Deposit {
            amount: 1,
            transfer: None,
        };
        let pool = StreamKey::new("BankAccount", "pool").expect("key");
        [(0, event.stream.clone()), (1, pool)]
            .into_iter()
            .map(|(index, stream)| {
                CommandRequest::caused_by(self.name(), event, index, stream, &deposit)
                    .expect("command")
            })
            .collect()
    }
}

#[test]
fn a_process_manager_moves_many_events_at_once_and_keeps_each_streams_commands_in_order() {
    const ACCOUNTS: usize = 20;
    let mut cluster = Cluster::new(4, 4, BlockMode::Supermajority, 43);
    let open = |owner: &str| {
        bank(BankAccountCommand::OpenAccount {
            owner: owner.to_owned(),
        })
    };
    cluster.submit(0, 0, request("open-pool", "BankAccount@pool", open("pool")));
    for account in 1..=ACCOUNTS {
        let stream = format!("BankAccount@m{account}");
        let id = format!("open-m{account}");
        cluster.submit(
            account % 4,
            account as u64,
            request(&id, &stream, open("m")),
        );
    }
    cluster.run_until_answered(ACCOUNTS + 1, 30_000);
    // The managers start over a store holding every opening: each takes them all at once.
    let waiting_before = cluster.engines[0].stats().waiting;
    for engine in &mut cluster.engines {
        engine
            .add_process_manager(Box::new(DepositTwice))
            .expect("manager");
    }
    // Every account's own deposit is on its way, and only the first of the pool's: the
    // others wait for the one before them to be answered.
    assert_eq!(
        cluster.engines[0].stats().waiting - waiting_before,
        ACCOUNTS + 1
    );
    for node in 0..4 {
        cluster.collect(node);
    }
    let deadline = cluster.now_ms + 60_000;
    while cluster.balance("pool") < ACCOUNTS as u64 {
        assert!(
            cluster.now_ms < deadline,
            "the pool has {}",
            cluster.balance("pool")
        );
        cluster.step();
    }
    cluster.settle_and_assert_sections_agree();
    for account in 1..=ACCOUNTS {
        assert_eq!(
            cluster.balance(&format!("m{account}")),
            1,
            "account m{account}"
        );
    }
    assert_eq!(cluster.balance("pool"), ACCOUNTS as u64);
    // The pool's deposits came in the order of the openings that set them off.
    let store = cluster.engines[0].store();
    let openings = chorus_aggregate::Filter::EventType(
        chorus_aggregate::TypeName::new("AccountOpened").expect("type"),
    );
    let opened: Vec<chorus_aggregate::MessageId> = store
        .read_log(&openings, 1, 100)
        .expect("read")
        .events
        .iter()
        .filter(|event| event.stream.id() != "pool")
        .map(|event| event.event_id.into())
        .collect();
    let pool = StreamKey::new("BankAccount", "pool").expect("key");
    let deposits: Vec<chorus_aggregate::MessageId> = store
        .read_stream(&pool, 1, chorus_aggregate::Direction::Forward, 100)
        .expect("read")
        .events
        .iter()
        .filter(|event| event.event_type.as_str() == "Deposited")
        .map(|event| event.causation_id)
        .collect();
    assert_eq!(deposits, opened);
}
