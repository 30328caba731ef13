//! The engine thread: one OS thread owns the node's `Engine` and its event store, takes
//! inputs from one channel (ticks, peers' messages, HTTP requests) and, after each batch of
//! what was queued, drains the engine: replay-log records are written durably before the own
//! events they hold are acknowledged (so an event is never sent before it is on disk),
//! messages go to the transport, answers to the HTTP handlers. The store's fsyncs block this
//! thread only, never the async runtime.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chorus_aggregate::{CommandRequest, EventStore};
use chorus_consensus::codec::{decode_log_record, encode_log_record};
use chorus_consensus::{Config, Consensus, PeerId, Stats};
use chorus_engine::{CommandOutcome, Engine, EngineConfig, SectionState};
use chorus_routing::SectionMap;
use ed25519_dalek::SigningKey;
use rand::SeedableRng;
use serde::Serialize;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::admission::Policy;
use crate::application::Application;
use crate::config::{Checked, hex};
pub use crate::store_reads::{Read, ReadAnswer};
use crate::store_reads::{answer_peer_read, answer_read};

/// What the engine thread takes (it ticks itself, by its own clock).
pub enum Input {
    /// A message from an authenticated peer.
    Message(PeerId, Vec<u8>),
    /// A client's command; the answer goes back on the channel.
    Submit(CommandRequest, oneshot::Sender<CommandOutcome>),
    /// A read of the node's store.
    Read(Read, oneshot::Sender<Result<ReadAnswer, String>>),
    /// Another node's read (`peer_reads`): served only to a node in the network map.
    PeerRead(PeerId, Read, oneshot::Sender<Result<ReadAnswer, String>>),
    /// The node's status.
    Status(oneshot::Sender<Status>),
    /// An operator's change to the admission policy or membership (admin API).
    Admin(AdminRequest, oneshot::Sender<Result<AdminAnswer, String>>),
}

/// What an operator asks through the admin API.
#[derive(Clone, Copy, Debug)]
pub enum AdminRequest {
    /// Approve this key: this member votes to admit it when it asks to join.
    Admit(PeerId),
    /// Withdraw this key's approval and, if it is a member, vote to remove it.
    Remove(PeerId),
    /// Show the policy.
    Show,
}

/// The answer to an [`AdminRequest`].
#[derive(Clone, Debug, Serialize)]
pub struct AdminAnswer {
    /// The policy now.
    pub policy: crate::admission::PolicyView,
    /// For a removal: whether this member voted to remove a member.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removal: Option<chorus_engine::RemovalRequest>,
}

/// Commands answered since start, by outcome (for `/metrics`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Answered {
    /// Committed.
    pub committed: u64,
    /// Already committed (same id).
    pub already_committed: u64,
    /// Refused by the aggregate.
    pub refused: u64,
    /// Invalid.
    pub invalid: u64,
    /// Failed (retry).
    pub failed: u64,
}

impl Answered {
    fn count(&mut self, outcome: &CommandOutcome) {
        let counter = match outcome {
            CommandOutcome::Committed(_) => &mut self.committed,
            CommandOutcome::AlreadyCommitted(_) => &mut self.already_committed,
            CommandOutcome::Refused(_) => &mut self.refused,
            CommandOutcome::Invalid(_) | CommandOutcome::IdTaken => &mut self.invalid,
            CommandOutcome::Failed(_) => &mut self.failed,
        };
        *counter += 1;
    }
}

/// What `/status` shows.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// The node's public key, hex.
    pub id: String,
    /// The domain it runs: the application's domain version and the fingerprint (first 8
    /// bytes of the digest, hex).
    pub domain: DomainView,
    /// The domain its section agreed on, as far as this node applied the order: its own,
    /// or, during a rolling upgrade, one its code stands in for.
    pub section_domain: DomainView,
    /// Its section's generation.
    pub generation: u64,
    /// Its section's prefix.
    pub prefix: String,
    /// Its section's members, hex.
    pub members: Vec<String>,
    /// Sections in its map.
    pub sections: usize,
    /// Its map: every section, with its members and (as far as this node knows) their
    /// libp2p addresses; what a joining node learns the network from.
    pub map: Vec<SectionView>,
    /// Its store's head position.
    pub head_position: u64,
    /// Whether the node is an active member (not joining, not fetching state).
    pub active: bool,
    /// Whether it can serve its section now, and if not why (what `/health` answers).
    pub readiness: chorus_engine::Readiness,
    /// Consensus figures of the current generation, if a member.
    pub consensus: Option<Stats>,
    /// Commands this node answered since it started, by outcome.
    pub answered: Answered,
    /// The engine's state in figures.
    pub engine: chorus_engine::EngineStats,
}

/// A domain, as `/status` shows it.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct DomainView {
    /// The application's domain version.
    pub version: String,
    /// The fingerprint.
    pub fingerprint: String,
}

/// A section of the map, as `/status` shows it.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct SectionView {
    /// Its prefix (`""` for the root).
    pub prefix: String,
    /// Its members.
    pub members: Vec<MemberView>,
}

/// A member, as `/status` shows it.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct MemberView {
    /// Its public key, hex.
    pub key: String,
    /// Its libp2p address, if this node knows it.
    pub address: Option<String>,
}

/// Why the engine thread cannot start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The node's store file could not be opened or read back into an engine (damaged,
    /// or older than its replay log).
    #[error("{path}: {error}")]
    AtFile {
        /// The redb file.
        path: std::path::PathBuf,
        /// What went wrong with it.
        error: Box<RuntimeError>,
    },
    /// The store failed.
    #[error("event store: {0}")]
    Store(#[from] chorus_aggregate::StoreError),
    /// The engine refused to start.
    #[error("engine: {0}")]
    Engine(#[from] chorus_engine::EngineError),
    /// The node cannot take part in its section (it runs another domain).
    #[error("{0}")]
    Halted(String),
    /// A replay-log record on disk does not decode.
    #[error("replay log record {index}: {error}")]
    Log {
        /// Its position in the log.
        index: usize,
        /// Why.
        error: String,
    },
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Opens the store, starts or restores the engine (restore when the store holds a replay log
/// or a saved section state), and returns it ready to run.
pub fn start_engine(
    checked: &Checked,
    key: &SigningKey,
    application: &Application,
    policy: &Policy,
) -> Result<Engine, RuntimeError> {
    let path = checked.config.data_dir.join("node.redb");
    start_engine_from(&path, checked, key, application, policy).map_err(|error| {
        RuntimeError::AtFile {
            path,
            error: Box::new(error),
        }
    })
}

fn start_engine_from(
    path: &std::path::Path,
    checked: &Checked,
    key: &SigningKey,
    application: &Application,
    policy: &Policy,
) -> Result<Engine, RuntimeError> {
    let store = EventStore::open(path)?;
    let mut members: Vec<[u8; 32]> = checked.peers.iter().map(|(peer, _)| peer.0).collect();
    if !checked.config.join {
        members.push(key.verifying_key().to_bytes());
    }
    let map = SectionMap::with_members(checked.config.section_size_min, &members);
    let config = EngineConfig {
        admission: policy.admission(),
        remove_silent_after_ms: checked.remove_silent_after_ms,
        domain_version: application.domain_version().to_owned(),
        upgrades_from: application.upgrades_from_versions().to_vec(),
        ..EngineConfig::new(Config {
            block_mode: checked.block_mode,
            gossip_interval_ms: checked.config.gossip_interval_ms,
            log_records: true,
            ..Config::default()
        })
    };
    let saved = SectionState::load(&store)?;
    let records = store.log_records()?;
    let engine = if records.is_empty() && saved.is_none() {
        // A founder starts the network's generation 0; a joiner asks to be admitted.
        let start = if checked.config.join {
            info!("first start; asking to join");
            Engine::join
        } else {
            info!("first start");
            Engine::new
        };
        start(
            config,
            key.clone(),
            map,
            application.registry(),
            store,
            now_ms(),
        )?
    } else {
        let mut log = Vec::with_capacity(records.len());
        for (index, (generation, bytes)) in records.into_iter().enumerate() {
            let record = decode_log_record(&bytes).map_err(|error| RuntimeError::Log {
                index,
                error: error.to_string(),
            })?;
            log.push((generation, record));
        }
        info!(records = log.len(), "restoring from the replay log");
        Engine::restore(
            config,
            key.clone(),
            map,
            application.registry(),
            store,
            log,
            now_ms(),
        )?
    };
    Ok(engine)
}

/// Most inputs handled before one drain (so answers and gossip are not held back long).
pub const INPUTS_PER_DRAIN_MAX: usize = 256;

/// Runs the engine until `inputs` closes or the store fails (then the node must stop: it can
/// no longer make its own events durable). The engine ticks (gossip, timeouts) every
/// `tick_interval` by this thread's clock, between inputs, so a full input queue never
/// delays a tick. The domain's process managers start here, on the engine thread, from their
/// checkpoints.
pub fn run_engine(
    mut engine: Engine,
    (inputs, outbound, head): (
        crate::queues::EngineReceiver,
        crate::queues::Outbound,
        crate::feed::HeadSender,
    ),
    application: &Application,
    (tick_interval, policy): (Duration, Policy),
) -> Result<(), RuntimeError> {
    for manager in application.process_managers() {
        engine.add_process_manager(manager)?;
    }
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut serving = Serving {
        waiting: BTreeMap::new(),
        next_ticket: 0,
        answered: Answered::default(),
        policy,
    };
    let mut log_generation = engine.section().generation;
    serving.drain(&mut engine, &outbound)?;
    head.publish(engine.store().committed_head());
    let mut next_tick = Instant::now();
    loop {
        let wait = next_tick.saturating_duration_since(Instant::now());
        let Ok(first) = inputs.recv_timeout(wait) else {
            return Ok(());
        };
        // Everything queued meanwhile is handled before one drain: its log records go to
        // disk in one durable transaction instead of one each, and still nothing is sent
        // before it is durable.
        let mut next = first;
        let mut handled = 0;
        while let Some(input) = next.take() {
            handled += 1;
            serving.handle(&mut engine, input);
            if handled < INPUTS_PER_DRAIN_MAX {
                next = inputs.try_recv();
            }
        }
        if Instant::now() >= next_tick {
            engine.tick(now_ms(), &mut rng);
            // A late tick is not made up for: the next one is an interval from now.
            next_tick = Instant::now() + tick_interval;
        }
        serving.drain(&mut engine, &outbound)?;
        // Subscriptions that caught up wake only when the head moved (the store keeps its
        // committed head in memory: no read transaction per batch).
        head.publish(engine.store().committed_head());
        if let Some(reason) = engine.halted() {
            return Err(RuntimeError::Halted(reason.to_owned()));
        }
        // Records of generations before the current one are never replayed again.
        let generation = engine.section().generation;
        if generation > log_generation {
            log_generation = generation;
            if let Err(error) = engine.store().drop_log_records_below(generation) {
                warn!(%error, "old replay-log records not dropped (they are only disk space)");
            }
        }
    }
}

/// What the engine thread keeps for its clients: the commands waiting for an answer, what
/// `/status` reports of the answers, and the admission policy the operator changes.
struct Serving {
    waiting: BTreeMap<u64, oneshot::Sender<CommandOutcome>>,
    next_ticket: u64,
    answered: Answered,
    policy: Policy,
}

impl Serving {
    fn handle(&mut self, engine: &mut Engine, input: Input) {
        let now = now_ms();
        match input {
            Input::Message(from, bytes) => engine.handle_message(now, from, &bytes),
            Input::Submit(request, reply) => {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                match engine.submit(now, ticket, request) {
                    Ok(()) => {
                        self.waiting.insert(ticket, reply);
                    }
                    Err(error) => {
                        let _ = reply.send(CommandOutcome::Failed(error.to_string()));
                    }
                }
            }
            Input::Read(read, reply) => {
                let _ = reply.send(answer_read(engine, read));
            }
            Input::PeerRead(from, read, reply) => {
                let _ = reply.send(answer_peer_read(engine, from, read));
            }
            Input::Status(reply) => {
                let _ = reply.send(status_of(engine, &self.answered));
            }
            Input::Admin(request, reply) => {
                let _ = reply.send(self.admin(engine, now, request));
            }
        }
    }

    /// An operator's request: the policy changes durably first, then the engine votes by it.
    fn admin(
        &mut self,
        engine: &mut Engine,
        now: u64,
        request: AdminRequest,
    ) -> Result<AdminAnswer, String> {
        let removal = match request {
            AdminRequest::Admit(node) => {
                self.policy.admit(node)?;
                info!(peer = %node, "the operator admitted a key");
                None
            }
            AdminRequest::Remove(node) => {
                self.policy.remove(node)?;
                info!(peer = %node, "the operator removed a key");
                Some(engine.request_removal(now, node))
            }
            AdminRequest::Show => None,
        };
        engine.set_admission(self.policy.admission());
        Ok(AdminAnswer {
            policy: self.policy.view(),
            removal,
        })
    }

    fn drain(
        &mut self,
        engine: &mut Engine,
        outbound: &crate::queues::Outbound,
    ) -> Result<(), RuntimeError> {
        drain(engine, outbound, &mut self.waiting, &mut self.answered)
    }
}

/// The node's status as `/status` shows it.
fn status_of(engine: &Engine, answered: &Answered) -> Status {
    let section = engine.section();
    Status {
        id: hex(&engine.id().0),
        domain: DomainView {
            version: engine.domain().version.clone(),
            fingerprint: engine.domain().short(),
        },
        section_domain: DomainView {
            version: engine.section_domain().agreed.version.clone(),
            fingerprint: engine.section_domain().agreed.short(),
        },
        generation: section.generation,
        prefix: section.prefix.to_string(),
        members: section
            .members
            .iter()
            .map(|member| hex(&member.0))
            .collect(),
        sections: engine.map().section_count(),
        map: engine
            .map()
            .sections()
            .map(|section| SectionView {
                prefix: section.prefix().to_string(),
                members: section
                    .member_keys()
                    .iter()
                    .map(|key| MemberView {
                        key: hex(key),
                        address: None,
                    })
                    .collect(),
            })
            .collect(),
        head_position: engine.store().head_position().unwrap_or(0),
        active: engine.is_active_member(),
        readiness: engine.readiness(),
        consensus: engine.consensus().map(Consensus::stats),
        answered: answered.clone(),
        engine: engine.stats(),
    }
}

/// Drains the engine: consensus gossip at once (it never waits for the log:
/// `Engine::poll_gossip`, so the next sync on work does not wait for an fsync), log records
/// durable, then own events acknowledged (which may produce more records), then the other
/// messages and the answers.
fn drain(
    engine: &mut Engine,
    outbound: &crate::queues::Outbound,
    waiting: &mut BTreeMap<u64, oneshot::Sender<CommandOutcome>>,
    answered: &mut Answered,
) -> Result<(), RuntimeError> {
    loop {
        while let Some((peer, bytes)) = engine.poll_gossip() {
            if outbound.send(peer, bytes).is_err() {
                break; // the transport stopped; the node is shutting down
            }
        }
        let mut records = Vec::new();
        while let Some((generation, record)) = engine.poll_log_record() {
            match encode_log_record(&record) {
                Ok(bytes) => records.push((generation, bytes)),
                Err(error) => {
                    // Our own record: failing to encode it is a bug, and going on would send
                    // an event that is not durable.
                    error!(%error, "a replay-log record does not encode; stopping");
                    return Err(RuntimeError::Log {
                        index: 0,
                        error: error.to_string(),
                    });
                }
            }
        }
        let mut latest = None;
        while let Some((generation, event)) = engine.poll_unpersisted() {
            latest = Some((generation, event.header.index));
        }
        engine.store().append_log_records(&records)?;
        match latest {
            Some((generation, index)) => engine.handle_persisted(generation, index),
            None => break,
        }
    }
    while let Some((peer, bytes)) = engine.poll_send() {
        if outbound.send(peer, bytes).is_err() {
            break; // the transport stopped; the node is shutting down
        }
    }
    while let Some((ticket, outcome)) = engine.poll_reply() {
        answered.count(&outcome);
        if let Some(reply) = waiting.remove(&ticket) {
            let _ = reply.send(outcome);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;
    use chorus_aggregate::Filter;

    /// A one-node network's configuration, data in `directory`.
    fn one_node(directory: &std::path::Path) -> Checked {
        NodeConfig {
            data_dir: directory.to_path_buf(),
            listen: "/ip4/127.0.0.1/tcp/0".into(),
            http: "127.0.0.1:0".into(),
            peers: Vec::new(),
            join: false,
            section_size_min: 1,
            block_mode: "supermajority".into(),
            gossip_interval_ms: 20,
            admission: "allow-list".into(),
            admit: Vec::new(),
            admin_token: None,
            remove_silent_after_ms: 0,
            join_from: None,
            auth: Some("open".into()),
            tokens: Vec::new(),
            tls_certificate: None,
            tls_key: None,
            join_trust: None,
        }
        .check()
        .expect("a valid configuration")
    }

    fn demo() -> Application {
        Application::new("demo")
            .aggregate::<chorus_demo::bank_account::BankAccount>()
            .aggregate::<chorus_demo::notebook::Notebook>()
            .aggregate::<chorus_demo::transfer::Transfer>()
            .process_manager(|| chorus_demo::transfer::TransferSaga)
    }

    #[test]
    fn reads_from_other_nodes_are_served_only_to_nodes_in_the_map() {
        let directory = tempfile::tempdir().expect("tempdir");
        let checked = one_node(directory.path());
        let key = SigningKey::from_bytes(&[3; 32]);
        let policy = Policy::load(&checked).expect("policy");
        let engine = start_engine(&checked, &key, &demo(), &policy).expect("engine");
        let member = PeerId(key.verifying_key().to_bytes());
        let stranger = PeerId(SigningKey::from_bytes(&[4; 32]).verifying_key().to_bytes());
        let log = || Read::SectionLog {
            filter: Filter::All,
            from: 1,
            count: 10,
        };
        let refused = answer_peer_read(&engine, stranger, log()).expect_err("refused");
        assert!(refused.contains("outside the network map"), "{refused}");
        assert!(matches!(
            answer_peer_read(&engine, member, log()),
            Ok(ReadAnswer::Events { .. })
        ));
    }

    #[test]
    fn a_damaged_store_file_is_an_error_naming_it() {
        let directory = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            directory.path().join("node.redb"),
            b"not a redb file at all",
        )
        .expect("written");
        let checked = one_node(directory.path());
        let key = SigningKey::from_bytes(&[3; 32]);
        let policy = Policy::load(&checked).expect("policy");
        let error = start_engine(&checked, &key, &demo(), &policy)
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains("node.redb"), "{error}");
    }
}
