//! Engines in the simulator: many nodes in many sections, each running the real
//! `chorus-engine` (routing, proposals, agreement, applying to a real redb event store) on
//! virtual time over the simulated network, with a client workload and the checkers of the
//! command path.
//!
//! What is modelled today: message delay, loss, duplication, reordering and partitions (the
//! `Network` of the consensus simulator); crashes and restarts (`Engine::restore` from the
//! node's saved section state, replay log and store; own events are acknowledged at once, so
//! a crash loses only what was in memory); a Byzantine member voting for forged proposals
//! (`propose_raw`, `forge_deposit`); members leaving and nodes joining (with state transfer),
//! sections splitting; the transfer saga run by every member. Not yet: loss of unsynced log
//! records at a crash, other Byzantine behaviours.
//!
//! Checkers ([`ClusterSim::check`], after the run settles), per section of the current map:
//! - every listed member is active in it and agrees on its generation and members;
//! - every member holds the same section state (digest of the section's events without
//!   positions, and of its eventless commands);
//! - every command answered `Committed` is in the store of every member of its section;
//! - every event a member wrote is of a stream its section covered when it wrote it;
//! - only commands a client (or the saga, from a stored event) sent have effects, and no
//!   event id is stored twice;
//! - no bank account was ever overdrawn: replaying each account's events, no withdrawal takes
//!   the balance below zero and every event's balance is the running sum.

use std::collections::BTreeMap;

use chorus_aggregate::{CommandId, CommandRecord, CommandRequest, EventStore, Filter, StreamKey};
use chorus_consensus::{BlockMode, Config, PeerId};
use chorus_demo::bank_account::{BankAccount, BankAccountEvent};
use chorus_engine::{CommandOutcome, Engine, EngineConfig};
use chorus_routing::{SectionMap, XorName};
use ed25519_dalek::SigningKey;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::network::{Fate, Network, NetworkConfig};

/// How a cluster run is set up.
#[derive(Clone, Debug)]
pub struct ClusterSetup {
    /// Number of nodes.
    pub nodes: usize,
    /// Smallest section (sections split when both halves keep this many).
    pub section_size_min: usize,
    /// Exactly this many sections (a power of two dividing `nodes`, at least 4 nodes each):
    /// keys are drawn until every section prefix has `nodes / sections` members, and
    /// `section_size_min` is set so that they neither split nor merge. `None`: keys are drawn
    /// freely and the map is what `section_size_min` makes of them.
    pub sections: Option<usize>,
    /// Single or Supermajority mode.
    pub block_mode: BlockMode,
    /// Gossip interval of every node.
    pub gossip_interval_ms: u64,
    /// The network.
    pub network: NetworkConfig,
    /// Nodes that can join later ([`ClusterSim::add_node`]); the network is sized for them.
    pub spare_nodes: usize,
}

impl Default for ClusterSetup {
    fn default() -> Self {
        Self {
            nodes: 8,
            section_size_min: 3,
            sections: None,
            block_mode: BlockMode::Supermajority,
            gossip_interval_ms: 20,
            network: NetworkConfig::default(),
            spare_nodes: 0,
        }
    }
}

enum Item {
    Deliver {
        from: usize,
        to: usize,
        bytes: Vec<u8>,
    },
    Tick(usize),
}

/// A submitted command and what became of it.
#[derive(Clone, Debug)]
pub struct Submitted {
    /// The node it was sent to.
    pub node: usize,
    /// The command.
    pub request: CommandRequest,
    /// Virtual time of submission.
    pub at_ms: u64,
    /// The answer and its virtual time, once answered.
    pub answer: Option<(CommandOutcome, u64)>,
}

/// A cluster of engines on virtual time.
pub struct ClusterSim {
    setup: ClusterSetup,
    /// The running engines; `None` while a node is crashed.
    engines: Vec<Option<Engine>>,
    keys: Vec<SigningKey>,
    map: SectionMap,
    /// Each node's durable consensus replay log, by generation (own events are acknowledged
    /// at once, so every record is durable when drained).
    logs: Vec<Vec<(u64, chorus_consensus::LogRecord)>>,
    /// Per node, its sections over time: (generation, store head when it started, prefix).
    /// An event at position p was written in the last generation that started below p, and
    /// its stream must be under that generation's prefix.
    histories: Vec<Vec<(u64, u64, chorus_routing::Prefix)>>,
    key_rng: ChaCha8Rng,
    ids: Vec<PeerId>,
    network: Network,
    network_rng: ChaCha8Rng,
    gossip_rng: ChaCha8Rng,
    queue: BTreeMap<(u64, u64), Item>,
    sequence: u64,
    now_ms: u64,
    submitted: Vec<Submitted>,
    /// Whether every engine runs the transfer saga (`run_transfer_saga`).
    saga: bool,
    /// Per node, `Some` while it is paused ([`ClusterSim::pause`]): the messages that reached
    /// it meanwhile, handled when it resumes (a stopped process's socket buffers).
    paused: Vec<Option<Vec<Held>>>,
    _directory: tempfile::TempDir,
}

impl ClusterSim {
    /// A cluster whose keys, network and gossip all derive from `seed`.
    pub fn new(seed: u64, setup: ClusterSetup) -> Result<Self, String> {
        setup.network.validate()?;
        let mut master = ChaCha8Rng::seed_from_u64(seed);
        let mut key_rng = ChaCha8Rng::seed_from_u64(master.next_u64());
        let mut network_rng = ChaCha8Rng::seed_from_u64(master.next_u64());
        let gossip_rng = ChaCha8Rng::seed_from_u64(master.next_u64());
        let (keys, section_size_min) = draw_keys(&setup, &mut key_rng)?;
        let public: Vec<[u8; 32]> = keys
            .iter()
            .map(|key| key.verifying_key().to_bytes())
            .collect();
        let map = SectionMap::with_members(section_size_min, &public);
        if let Some(sections) = setup.sections {
            if map.section_count() != sections {
                return Err(format!(
                    "asked for {sections} sections, the map has {}",
                    map.section_count()
                ));
            }
        }
        let directory = tempfile::tempdir().map_err(|error| error.to_string())?;
        let mut engines = Vec::with_capacity(keys.len());
        for (index, key) in keys.iter().enumerate() {
            let store = open_store(directory.path(), index)?;
            let engine = Engine::new(
                engine_config(&setup),
                key.clone(),
                map.clone(),
                chorus_demo::registry(),
                store,
                0,
            )
            .map_err(|error| error.to_string())?;
            engines.push(Some(engine));
        }
        let ids = keys
            .iter()
            .map(|key| PeerId(key.verifying_key().to_bytes()))
            .collect();
        let logs = vec![Vec::new(); keys.len()];
        let network = Network::new(
            setup.network.clone(),
            setup.nodes + setup.spare_nodes,
            &mut network_rng,
        );
        let histories = keys
            .iter()
            .map(|key| {
                map.section_of_member(&XorName::from_public_key(&key.verifying_key().to_bytes()))
                    .map(|section| (0, 0, section.prefix()))
                    .into_iter()
                    .collect()
            })
            .collect();
        let setup_nodes = setup.nodes + setup.spare_nodes;
        let mut sim = Self {
            setup,
            engines,
            keys,
            map,
            logs,
            histories,
            key_rng,
            ids,
            network,
            network_rng,
            gossip_rng,
            queue: BTreeMap::new(),
            sequence: 0,
            now_ms: 0,
            submitted: Vec::new(),
            saga: false,
            paused: vec![None; setup_nodes],
            _directory: directory,
        };
        for node in 0..sim.engines.len() {
            // Spread the first ticks over one interval, so nodes do not gossip in lockstep.
            let offset = sim
                .gossip_rng
                .gen_range(0..sim.setup.gossip_interval_ms.max(1));
            sim.schedule(offset, Item::Tick(node));
        }
        Ok(sim)
    }

    /// The section map as it is now: the map of every node some running engine counts as a
    /// member of its section (the map is a function of the member set).
    pub fn map(&self) -> SectionMap {
        let mut members: Vec<[u8; 32]> = self
            .engines
            .iter()
            .flatten()
            .flat_map(|engine| engine.section().members.iter().map(|id| id.0))
            .collect();
        members.sort_unstable();
        members.dedup();
        if members.is_empty() {
            return self.map.clone();
        }
        SectionMap::with_members(self.map.section_size_min(), &members)
    }

    /// Draws a key for a node that may join later and returns it (not yet started).
    pub fn draw_key(&mut self) -> SigningKey {
        let mut secret = [0u8; 32];
        self.key_rng.fill_bytes(&mut secret);
        SigningKey::from_bytes(&secret)
    }

    /// Starts a node with `key` that joins the running network (`Engine::join`, with the map
    /// as it was at the start: a joiner need not know the current one). Returns its index.
    pub fn add_node(&mut self, key: SigningKey) -> Result<usize, String> {
        let node = self.engines.len();
        if node >= self.setup.nodes + self.setup.spare_nodes {
            return Err(format!(
                "no spare node left (the network was sized for {} spare)",
                self.setup.spare_nodes
            ));
        }
        let store = open_store(self._directory.path(), node)?;
        let engine = Engine::join(
            engine_config(&self.setup),
            key.clone(),
            self.map.clone(),
            chorus_demo::registry(),
            store,
            self.now_ms,
        )
        .map_err(|error| error.to_string())?;
        self.ids.push(PeerId(key.verifying_key().to_bytes()));
        self.keys.push(key);
        self.engines.push(Some(engine));
        self.logs.push(Vec::new());
        self.histories.push(Vec::new());
        let offset = self
            .gossip_rng
            .gen_range(0..self.setup.gossip_interval_ms.max(1));
        self.schedule(offset, Item::Tick(node));
        self.collect(node);
        self.add_saga(node)?;
        Ok(node)
    }

    /// Makes every engine, now and after restarts and joins, run the transfer saga
    /// (`TransferSaga`) as a process manager on its section's events.
    pub fn run_transfer_saga(&mut self) -> Result<(), String> {
        self.saga = true;
        for node in 0..self.engines.len() {
            self.add_saga(node)?;
        }
        Ok(())
    }

    fn add_saga(&mut self, node: usize) -> Result<(), String> {
        if !self.saga {
            return Ok(());
        }
        if let Some(engine) = self.engines[node].as_mut() {
            engine
                .add_process_manager(Box::new(chorus_demo::transfer::TransferSaga))
                .map_err(|error| error.to_string())?;
        }
        self.collect(node);
        Ok(())
    }

    /// `node` asks its section to let it leave (`Engine::leave`).
    pub fn leave(&mut self, node: usize) {
        if let Some(engine) = self.engines[node].as_mut() {
            engine.leave(self.now_ms);
            self.collect(node);
        }
    }

    /// Virtual time now.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.engines.len()
    }

    /// The network, to partition, heal and change rates.
    pub fn network_mut(&mut self) -> &mut Network {
        &mut self.network
    }

    /// Every submitted command, in submission order.
    pub fn submitted(&self) -> &[Submitted] {
        &self.submitted
    }

    /// Whether `node` is running (not crashed).
    pub fn is_running(&self, node: usize) -> bool {
        self.engines.get(node).is_some_and(Option::is_some)
    }

    /// The engine of `node` (which must be running).
    pub fn engine(&self, node: usize) -> &Engine {
        self.engines[node]
            .as_ref()
            .expect("the node is running (restart it first)")
    }

    /// Crashes `node`: its engine stops, what it held in memory is gone (commands it was
    /// answering get no answer: their clients see `Failed`), its event store and its replay
    /// log stay on disk.
    pub fn crash(&mut self, node: usize) {
        self.paused[node] = None;
        if self.engines[node].take().is_none() {
            return;
        }
        for submitted in &mut self.submitted {
            if submitted.node == node && submitted.answer.is_none() {
                submitted.answer = Some((
                    CommandOutcome::Failed("the node crashed".to_owned()),
                    self.now_ms,
                ));
            }
        }
    }

    /// Pauses `node` as SIGSTOP would: it keeps its memory but neither ticks nor handles
    /// messages; what reaches it meanwhile waits (up to `PAUSED_MESSAGES_MAX`, then dropped,
    /// as a full socket buffer would) and is handled, in order, when it resumes.
    pub fn pause(&mut self, node: usize) {
        if self.paused[node].is_none() {
            self.paused[node] = Some(Vec::new());
        }
    }

    /// Resumes a paused node (SIGCONT): it handles the messages that waited, then runs on.
    pub fn resume(&mut self, node: usize) {
        let Some(held) = self.paused[node].take() else {
            return;
        };
        for (from, bytes) in held {
            self.schedule(
                0,
                Item::Deliver {
                    from,
                    to: node,
                    bytes,
                },
            );
        }
    }

    /// Each node's store head position (`None` while it is crashed or its store fails).
    pub fn heads(&self) -> Vec<Option<u64>> {
        self.engines
            .iter()
            .map(|engine| {
                engine
                    .as_ref()
                    .and_then(|engine| engine.store().head_position().ok())
            })
            .collect()
    }

    /// Whether `node` is paused.
    pub fn is_paused(&self, node: usize) -> bool {
        self.paused[node].is_some()
    }

    /// Restarts a crashed node from its store and replay log (`Engine::restore`).
    pub fn restart(&mut self, node: usize) -> Result<(), String> {
        if self.engines[node].is_some() {
            return Ok(());
        }
        let store = open_store(self._directory.path(), node)?;
        let engine = Engine::restore(
            engine_config(&self.setup),
            self.keys[node].clone(),
            self.map.clone(),
            chorus_demo::registry(),
            store,
            self.logs[node].clone(),
            self.now_ms,
        )
        .map_err(|error| error.to_string())?;
        self.engines[node] = Some(engine);
        self.collect(node);
        self.add_saga(node)
    }

    /// A Byzantine node's move: `from` sends `to` arbitrary bytes (a forged welcome, section
    /// update or transfer chunk, say), over the network like any message.
    pub fn send_raw(&mut self, from: usize, to: usize, bytes: Vec<u8>) {
        match self.network.route(from, to, &mut self.network_rng) {
            Fate::Delivered(delays) => {
                for delay in delays {
                    self.schedule(
                        delay,
                        Item::Deliver {
                            from,
                            to,
                            bytes: bytes.clone(),
                        },
                    );
                }
            }
            Fate::Dropped | Fate::Partitioned => {}
        }
    }

    /// A Byzantine member's move: `node` votes for arbitrary observation bytes (a forged
    /// proposal, say). Returns whether its consensus took the vote.
    pub fn propose_raw(&mut self, node: usize, bytes: Vec<u8>) -> bool {
        let Some(engine) = self.engines[node].as_mut() else {
            return false;
        };
        let taken = engine.vote_for_raw(bytes);
        self.collect(node);
        taken
    }

    /// A Byzantine member's forgery that only the event check can catch: `node` proposes a
    /// valid command (a deposit of 1 on `stream`, which must be in its section, under the
    /// command id `id`) at the stream's current version and time, but with events that claim
    /// a deposit of `claimed`. Returns whether its consensus took the vote.
    pub fn forge_deposit(
        &mut self,
        node: usize,
        stream: &StreamKey,
        id: &str,
        claimed: u64,
    ) -> bool {
        use chorus_demo::bank_account::BankAccountCommand;
        let Some(engine) = self.engines[node].as_ref() else {
            return false;
        };
        let Ok(info) = engine.store().stream_info(stream) else {
            return false;
        };
        let (version, timestamp_ms) =
            info.map_or((0, 0), |info| (info.version, info.last_timestamp_ms));
        let balance = chorus_aggregate::Repository::<BankAccount>::new(engine.store())
            .load(stream)
            .map_or(0, |loaded| loaded.state.balance);
        let Ok(body) = serde_json::to_value(BankAccountCommand::Deposit {
            amount: 1,
            transfer: None,
        }) else {
            return false;
        };
        let mut request = command(id, stream, body);
        request.timestamp_ms = timestamp_ms;
        let Ok(lie) = chorus_aggregate::domain::encode_event(&BankAccountEvent::Deposited {
            amount: claimed,
            balance: balance.saturating_add(claimed),
            transfer: None,
        }) else {
            return false;
        };
        let forged = chorus_engine::Proposal::Decided {
            events: vec![chorus_aggregate::NewEvent {
                event_id: chorus_aggregate::EventId::for_command(request.command_id, 0),
                event_type: lie.event_type,
                event_version: lie.event_version,
                payload: lie.payload,
                supersedes: None,
            }],
            request,
            version,
        };
        match forged.encode() {
            Ok(bytes) => self.propose_raw(node, bytes),
            Err(_) => false,
        }
    }

    /// Sends a client command to `node`; returns its ticket (index in `submitted`).
    pub fn submit(&mut self, node: usize, request: CommandRequest) -> usize {
        let ticket = self.submitted.len();
        self.submitted.push(Submitted {
            node,
            request: request.clone(),
            at_ms: self.now_ms,
            answer: None,
        });
        let result = match self.engines[node].as_mut() {
            Some(_) if self.paused[node].is_some() => Err("the node is stopped".to_owned()),
            Some(engine) => engine
                .submit(self.now_ms, ticket as u64, request)
                .map_err(|error| error.to_string()),
            None => Err("the node is down".to_owned()),
        };
        if let Err(error) = result {
            self.submitted[ticket].answer = Some((CommandOutcome::Failed(error), self.now_ms));
        }
        self.collect(node);
        ticket
    }

    /// Runs the queue until `until_ms`.
    pub fn run_until(&mut self, until_ms: u64) {
        while let Some((&(at_ms, sequence), _)) = self.queue.first_key_value() {
            if at_ms > until_ms {
                break;
            }
            let item = self
                .queue
                .remove(&(at_ms, sequence))
                .unwrap_or_else(|| unreachable!("the key was just read"));
            self.now_ms = at_ms;
            self.handle(item);
        }
        self.now_ms = self.now_ms.max(until_ms);
    }

    /// Runs for `duration_ms` of virtual time.
    pub fn run_for(&mut self, duration_ms: u64) {
        self.run_until(self.now_ms + duration_ms);
    }

    /// Runs until every submitted command is answered, or `limit_ms` passed; true if all were.
    pub fn run_until_answered(&mut self, limit_ms: u64) -> bool {
        let deadline = self.now_ms + limit_ms;
        while self.now_ms < deadline {
            if self
                .submitted
                .iter()
                .all(|submitted| submitted.answer.is_some())
            {
                return true;
            }
            self.run_for(10);
        }
        self.submitted
            .iter()
            .all(|submitted| submitted.answer.is_some())
    }

    /// Runs until every section's members hold the same store, or `limit_ms` passed.
    pub fn settle(&mut self, limit_ms: u64) {
        let deadline = self.now_ms + limit_ms;
        while self.now_ms < deadline && !self.stores_agree() {
            self.run_for(50);
        }
    }

    fn schedule(&mut self, delay_ms: u64, item: Item) {
        self.sequence += 1;
        self.queue
            .insert((self.now_ms + delay_ms, self.sequence), item);
    }

    fn handle(&mut self, item: Item) {
        match item {
            Item::Tick(node) if self.paused[node].is_some() => {
                self.schedule(self.setup.gossip_interval_ms.max(1), Item::Tick(node));
            }
            Item::Deliver { from, to, bytes } if self.paused[to].is_some() => {
                if let Some(held) = self.paused[to].as_mut() {
                    if held.len() < PAUSED_MESSAGES_MAX {
                        held.push((from, bytes));
                    }
                }
            }
            Item::Tick(node) => {
                if let Some(engine) = self.engines[node].as_mut() {
                    engine.tick(self.now_ms, &mut self.gossip_rng);
                    self.collect(node);
                }
                self.schedule(self.setup.gossip_interval_ms.max(1), Item::Tick(node));
            }
            Item::Deliver { from, to, bytes } => {
                let from_id = self.ids[from];
                if let Some(engine) = self.engines[to].as_mut() {
                    engine.handle_message(self.now_ms, from_id, &bytes);
                    self.collect(to);
                }
            }
        }
    }

    /// Drains a node: its own events are durable at once (no crash model yet), its messages
    /// go to the network, its answers to the submitted commands.
    fn collect(&mut self, node: usize) {
        let Some(engine) = self.engines[node].as_mut() else {
            return;
        };
        // The log records first (they hold the own events), then the acknowledgement: the
        // order a real node must keep, or a crash could lose an event already sent.
        while let Some(record) = engine.poll_log_record() {
            self.logs[node].push(record);
        }
        let mut latest = None;
        while let Some((generation, event)) = engine.poll_unpersisted() {
            latest = Some((generation, event.header.index));
        }
        if let Some((generation, index)) = latest {
            engine.handle_persisted(generation, index);
            while let Some(record) = engine.poll_log_record() {
                self.logs[node].push(record);
            }
        }
        let state = engine.section();
        if !state.members.is_empty()
            && self.histories[node]
                .last()
                .is_none_or(|(generation, _, _)| *generation != state.generation)
        {
            self.histories[node].push((state.generation, state.start_head, state.prefix));
        }
        let mut sends = Vec::new();
        while let Some(send) = engine.poll_send() {
            sends.push(send);
        }
        while let Some((ticket, outcome)) = engine.poll_reply() {
            if let Some(submitted) = self.submitted.get_mut(ticket as usize) {
                if submitted.answer.is_none() {
                    submitted.answer = Some((outcome, self.now_ms));
                }
            }
        }
        for (to, bytes) in sends {
            let Some(to) = self.ids.iter().position(|id| *id == to) else {
                continue;
            };
            match self.network.route(node, to, &mut self.network_rng) {
                Fate::Delivered(delays) => {
                    for delay in delays {
                        self.schedule(
                            delay,
                            Item::Deliver {
                                from: node,
                                to,
                                bytes: bytes.clone(),
                            },
                        );
                    }
                }
                Fate::Dropped | Fate::Partitioned => {}
            }
        }
    }

    /// The running nodes that are active members of the section with `prefix`.
    fn members(&self, prefix: &chorus_routing::Prefix) -> Vec<usize> {
        (0..self.engines.len())
            .filter(|node| {
                self.engines[*node].as_ref().is_some_and(|engine| {
                    engine.is_active_member() && engine.section().prefix == *prefix
                })
            })
            .collect()
    }

    /// The nodes the current map counts as members of the section with `prefix`, running or
    /// not.
    fn listed_members(&self, section: &chorus_routing::Section) -> Vec<usize> {
        (0..self.engines.len())
            .filter(|node| section.contains(&XorName::from_public_key(&self.ids[*node].0)))
            .collect()
    }

    fn section_digest(&self, node: usize, prefix: &chorus_routing::Prefix) -> Option<[u8; 32]> {
        self.engines[node].as_ref().and_then(|engine| {
            chorus_engine::membership::store_section_digest(engine.store(), prefix).ok()
        })
    }

    fn stores_agree(&self) -> bool {
        let map = self.map();
        map.sections().all(|section| {
            let listed = self.listed_members(section);
            let active = self.members(&section.prefix());
            let digests: Vec<Option<[u8; 32]>> = listed
                .iter()
                .map(|node| self.section_digest(*node, &section.prefix()))
                .collect();
            listed
                .iter()
                .all(|node| self.engines[*node].is_none() || active.contains(node))
                && digests.windows(2).all(|pair| pair[0] == pair[1])
        })
    }

    /// With the saga running, the ids of the commands it may send: for every event some store
    /// holds, the ids `CommandRequest::caused_by` derives for its first three commands. A
    /// command the saga sent has one of them; a forged one under a made-up id does not.
    fn saga_commands(&self) -> Vec<CommandId> {
        use chorus_aggregate::ProcessManager;
        if !self.saga {
            return Vec::new();
        }
        let name = chorus_demo::transfer::TransferSaga.name().to_owned();
        let mut ids = Vec::new();
        for engine in self.engines.iter().flatten() {
            let mut from = 1;
            while let Ok(slice) = engine.store().read_log(&Filter::All, from, 1_000) {
                for event in &slice.events {
                    for index in 0..3u64 {
                        ids.push(CommandId::derive(&[
                            name.as_bytes(),
                            &event.event_id.0,
                            &index.to_le_bytes(),
                        ]));
                    }
                }
                match slice.next {
                    Some(next) => from = next,
                    None => break,
                }
            }
        }
        ids
    }

    /// Runs every checker; returns the violations found, each a sentence.
    pub fn check(&self) -> Vec<String> {
        let mut violations = Vec::new();
        let mut submitted: std::collections::BTreeSet<CommandId> = self
            .submitted
            .iter()
            .map(|submitted| submitted.request.command_id)
            .collect();
        submitted.extend(self.saga_commands());
        let map = self.map();
        if let Err(error) = map.check() {
            violations.push(format!("the section map breaks an invariant: {error}"));
        }
        for section in map.sections() {
            let prefix = section.prefix();
            let members = self.listed_members(section);
            let mut views = std::collections::BTreeSet::new();
            for node in &members {
                let Some(engine) = self.engines[*node].as_ref() else {
                    continue;
                };
                if !engine.is_active_member() || engine.section().prefix != prefix {
                    violations.push(format!(
                        "node {node} is listed in section {prefix} but is not active in it"
                    ));
                }
                let state = engine.section();
                views.insert((state.generation, state.prefix, state.members.clone()));
            }
            if views.len() > 1 {
                violations.push(format!(
                    "the members of section {prefix} disagree on its generation or members"
                ));
            }
            let digests: Vec<Option<[u8; 32]>> = members
                .iter()
                .map(|node| self.section_digest(*node, &prefix))
                .collect();
            if !digests.windows(2).all(|pair| pair[0] == pair[1]) {
                violations.push(format!(
                    "the members of section {prefix} hold different stores"
                ));
            }
            for node in &members {
                violations.extend(self.check_store(*node, &submitted));
            }
        }
        for (ticket, submitted) in self.submitted.iter().enumerate() {
            let Some((CommandOutcome::Committed(_), _)) = &submitted.answer else {
                continue;
            };
            let section = map.section_for_stream(&submitted.request.stream.qualified());
            for node in self.listed_members(section) {
                let Some(engine) = self.engines[node].as_ref() else {
                    continue;
                };
                let record = engine.store().command_record(submitted.request.command_id);
                if !matches!(record, Ok(Some(CommandRecord::Appended(_)))) {
                    violations.push(format!(
                        "command {ticket} was answered committed but node {node} does not hold it"
                    ));
                }
            }
        }
        violations
    }

    /// One member's store: streams route to its section, accounts never overdrawn, only
    /// submitted commands applied, no event twice.
    fn check_store(
        &self,
        node: usize,
        submitted: &std::collections::BTreeSet<CommandId>,
    ) -> Vec<String> {
        let mut violations = Vec::new();
        let Some(engine) = self.engines[node].as_ref() else {
            violations.push(format!("node {node} is down; its store was not checked"));
            return violations;
        };
        let store = engine.store();
        let mut balances: BTreeMap<String, u64> = BTreeMap::new();
        let mut event_ids = std::collections::BTreeSet::new();
        let mut from = 1;
        loop {
            let slice = match store.read_log(&Filter::All, from, 1_000) {
                Ok(slice) => slice,
                Err(error) => {
                    violations.push(format!("node {node}: the store does not read: {error}"));
                    return violations;
                }
            };
            for event in &slice.events {
                let stream = event.stream.qualified();
                let section = self.histories[node]
                    .iter()
                    .rev()
                    .find(|(_, start_head, _)| *start_head < event.position)
                    .map(|(_, _, prefix)| *prefix);
                if !section.is_some_and(|prefix| prefix.matches(&XorName::from_stream_key(&stream)))
                {
                    violations.push(format!(
                        "node {node} wrote an event of stream {stream} at position {} while in section {section:?}, which does not cover it",
                        event.position
                    ));
                }
                // Only commands clients sent may have effects: a forged proposal applied
                // under a made-up id shows up here even when its events add up.
                if let Some(command_id) = event.command_id {
                    if !submitted.contains(&command_id) {
                        violations.push(format!(
                            "node {node}: command {command_id}, which no client sent, was applied"
                        ));
                    }
                }
                // The store refuses a second write of the same event ids; this checks that
                // invariant of the store, not double application by the engine, which the
                // command records (one fate per id) prevent.
                if !event_ids.insert(event.event_id) {
                    violations.push(format!(
                        "node {node}: event {} of command {:?} is in the store twice",
                        event.event_id, event.command_id
                    ));
                }
                if event.stream.category().as_str() != "BankAccount" {
                    continue;
                }
                let decoded = chorus_aggregate::domain::decode_event::<BankAccountEvent>(
                    event.event_type.as_str(),
                    event.event_version,
                    &event.payload,
                );
                let balance = balances.entry(stream.clone()).or_default();
                match decoded {
                    Ok(BankAccountEvent::Deposited { amount, balance: after, .. }) => {
                        *balance = balance.saturating_add(amount);
                        if *balance != after {
                            violations.push(format!("node {node}: {stream} deposit to {after}, expected {balance}"));
                        }
                    }
                    Ok(BankAccountEvent::Withdrawn { amount, balance: after, .. }) => {
                        match balance.checked_sub(amount) {
                            Some(left) if left == after => *balance = left,
                            _ => violations.push(format!(
                                "node {node}: {stream} withdrawal of {amount} from {balance} (overdraft or wrong balance)"
                            )),
                        }
                    }
                    Ok(BankAccountEvent::AccountOpened { .. }) => {}
                    Err(error) => violations.push(format!("node {node}: {stream}: {error}")),
                }
            }
            match slice.next {
                Some(next) => from = next,
                None => break,
            }
        }
        violations
    }
}

fn engine_config(setup: &ClusterSetup) -> EngineConfig {
    EngineConfig::new(Config {
        block_mode: setup.block_mode,
        gossip_interval_ms: setup.gossip_interval_ms,
        // A node restores from its replay log after a crash.
        log_records: true,
        ..Config::default()
    })
}

fn open_store(directory: &std::path::Path, node: usize) -> Result<EventStore, String> {
    EventStore::open(directory.join(format!("node-{node}.redb"))).map_err(|error| error.to_string())
}

/// The nodes' keys, and the `section_size_min` to build the map with.
fn draw_keys(
    setup: &ClusterSetup,
    rng: &mut ChaCha8Rng,
) -> Result<(Vec<SigningKey>, usize), String> {
    let mut draw = || {
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        SigningKey::from_bytes(&secret)
    };
    let Some(sections) = setup.sections else {
        return Ok((
            (0..setup.nodes).map(|_| draw()).collect(),
            setup.section_size_min,
        ));
    };
    if !sections.is_power_of_two() || setup.nodes % sections != 0 || setup.nodes / sections < 4 {
        return Err(format!(
            "{sections} sections of {} nodes: sections must be a power of two dividing the \
             nodes, with at least 4 nodes each",
            setup.nodes
        ));
    }
    let per_section = setup.nodes / sections;
    let bits = sections.trailing_zeros() as usize;
    let mut buckets: Vec<Vec<SigningKey>> = (0..sections).map(|_| Vec::new()).collect();
    // Each draw lands in a given bucket with probability 1/sections: this ends quickly.
    while buckets.iter().any(|bucket| bucket.len() < per_section) {
        let key = draw();
        let name = XorName::from_public_key(&key.verifying_key().to_bytes());
        let bucket = (0..bits).fold(0, |index, bit| index * 2 + usize::from(name.bit(bit)));
        if buckets[bucket].len() < per_section {
            buckets[bucket].push(key);
        }
    }
    // A section of `per_section` cannot split (no two halves both reach the minimum), and
    // two siblings together always can (each half has `per_section`).
    Ok((buckets.into_iter().flatten().collect(), per_section / 2 + 1))
}

/// A message that reached a paused node: (sender, bytes).
type Held = (usize, Vec<u8>);

/// Most messages a paused node holds for when it resumes (a socket buffer's worth).
pub const PAUSED_MESSAGES_MAX: usize = 10_000;

/// A command request for the workload: `command` on `stream`, identified by `id`.
pub fn command(id: &str, stream: &StreamKey, command: serde_json::Value) -> CommandRequest {
    CommandRequest::new(CommandId::derive(&[id.as_bytes()]), stream.clone(), command)
}

/// What one random engine-mode run did and found.
#[derive(Clone, Debug, Default)]
pub struct ClusterOutcome {
    /// The seed.
    pub seed: u64,
    /// What the seed decided and what happened, one line each.
    pub story: Vec<String>,
    /// Commands sent, and those answered `Committed`.
    pub commands: usize,
    /// Commands answered `Committed`.
    pub committed: usize,
    /// Commands never answered within the liveness bound.
    pub unanswered: usize,
    /// What the checkers found (a panic of the simulated code counts as one).
    pub violations: Vec<String>,
}

/// Virtual time a run waits, after its faults healed, for every command to be answered.
pub const LIVENESS_BOUND_MS: u64 = 120_000;

/// One random engine-mode run: the seed decides the cluster (8 to 16 nodes in 1, 2 or 4
/// sections, the mode, whether the transfer saga runs), the network (loss, duplication,
/// reordering), a fault schedule (a partition, a crash and restart, a member stopped twice
/// in a row, a crash of every node, a Byzantine member's forged proposal), membership changes (a member leaving, a node joining) and the workload
/// (deposits, withdrawals, transfers);
/// then everything heals, every command must be answered within `LIVENESS_BOUND_MS`, and the
/// checkers run. A panic in the simulated code is a violation of the seed.
pub fn run_cluster_seed(seed: u64) -> ClusterOutcome {
    let result = std::panic::catch_unwind(|| run_cluster_seed_inner(seed));
    match result {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(error)) => ClusterOutcome {
            seed,
            violations: vec![format!("the run could not be set up: {error}")],
            ..ClusterOutcome::default()
        },
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| (*text).to_owned()))
                .unwrap_or_else(|| "a panic".to_owned());
            ClusterOutcome {
                seed,
                violations: vec![format!("panic: {message}")],
                ..ClusterOutcome::default()
            }
        }
    }
}

fn run_cluster_seed_inner(seed: u64) -> Result<ClusterOutcome, String> {
    use chorus_demo::bank_account::BankAccountCommand;

    let mut plan = ChaCha8Rng::seed_from_u64(seed ^ 0xc1u64.rotate_left(56));
    let sections = [1usize, 2, 4][plan.gen_range(0..3)];
    let per_section = plan.gen_range(4..=(16 / sections).max(4));
    let block_mode = if plan.gen_bool(0.5) {
        BlockMode::Supermajority
    } else {
        BlockMode::Single
    };
    let network = NetworkConfig {
        drop_probability: plan.gen_range(0.0..0.1),
        duplicate_probability: plan.gen_range(0.0..0.1),
        reorder_probability: plan.gen_range(0.0..0.2),
        ..NetworkConfig::default()
    };
    let nodes = sections * per_section;
    let mut story = vec![format!(
        "{nodes} nodes in {sections} section(s), {block_mode:?} mode, drop {:.2} duplicate {:.2} reorder {:.2}",
        network.drop_probability, network.duplicate_probability, network.reorder_probability
    )];
    let setup = ClusterSetup {
        nodes,
        sections: Some(sections),
        block_mode,
        network,
        spare_nodes: 1,
        ..ClusterSetup::default()
    };
    let mut sim = ClusterSim::new(seed, setup)?;
    if plan.gen_bool(0.5) {
        sim.run_transfer_saga()?;
        story.push("every member runs the transfer saga".to_owned());
    }
    let accounts = plan.gen_range(2..8);
    let account = |index: usize| {
        StreamKey::new("BankAccount", &format!("a{index}")).map_err(|e| e.to_string())
    };
    for index in 0..accounts {
        let open = serde_json::to_value(BankAccountCommand::OpenAccount {
            owner: format!("o{index}"),
        })
        .map_err(|error| error.to_string())?;
        let node = plan.gen_range(0..nodes);
        sim.submit(
            node,
            command(&format!("open{index}"), &account(index)?, open),
        );
    }
    // The fault schedule, at fixed virtual times within a 3 s load phase.
    let partitioned = plan.gen_bool(0.5).then(|| plan.gen_range(0..nodes));
    let crashed = plan.gen_bool(0.5).then(|| plan.gen_range(0..nodes));
    let forger = plan.gen_bool(0.5).then(|| plan.gen_range(0..nodes));
    let leaver = plan.gen_bool(0.4).then(|| plan.gen_range(0..nodes));
    let joins = plan.gen_bool(0.4);
    // One member stopped twice in a row (SIGSTOP, SIGCONT), and a crash of every node.
    let stalled = plan.gen_bool(0.4).then(|| plan.gen_range(0..nodes));
    let crash_all = plan.gen_bool(0.2);
    let load_ms = 3_000;
    for step in 0..load_ms / 100 {
        let now = step * 100;
        if now == 500 {
            if let Some(node) = partitioned {
                let others: Vec<usize> = (0..nodes).filter(|other| *other != node).collect();
                sim.network_mut().block(&[node], &others);
                sim.network_mut().block(&others, &[node]);
                story.push(format!("{now} ms: node {node} cut off"));
            }
            if let Some(node) = crashed {
                sim.crash(node);
                story.push(format!("{now} ms: node {node} crashed"));
            }
        }
        if let Some(node) = stalled {
            if now == 600 || now == 1_700 {
                sim.pause(node);
                story.push(format!("{now} ms: node {node} stopped"));
            }
            if now == 1_400 || now == 2_500 {
                sim.resume(node);
                story.push(format!("{now} ms: node {node} continues"));
            }
        }
        if now == 2_700 && crash_all {
            let running: Vec<usize> = (0..sim.node_count())
                .filter(|node| sim.is_running(*node))
                .collect();
            for node in &running {
                sim.crash(*node);
            }
            for node in &running {
                sim.restart(*node)?;
            }
            story.push(format!("{now} ms: every node crashed and restarted"));
        }
        if now == 1_000 {
            if let Some(node) = forger {
                // A stream of the forger's own section, so the forgery reaches its section.
                let own = XorName::from_public_key(&sim.ids[node].0);
                let target = (0..accounts).find_map(|index| {
                    let stream = account(index).ok()?;
                    sim.map()
                        .section_for_stream(&stream.qualified())
                        .contains(&own)
                        .then_some(stream)
                });
                if let Some(stream) = target {
                    let taken = sim.forge_deposit(node, &stream, &format!("forged{seed}"), 1_000);
                    story.push(format!(
                        "{now} ms: node {node} proposes a forged deposit on {stream} (vote taken: {taken})"
                    ));
                }
            }
        }
        if now == 1_500 {
            if let Some(node) = leaver {
                sim.leave(node);
                story.push(format!("{now} ms: node {node} asks to leave"));
            }
            if joins {
                let key = sim.draw_key();
                let node = sim.add_node(key)?;
                story.push(format!("{now} ms: node {node} joins"));
            }
        }
        if now == 2_000 {
            if partitioned.is_some() {
                sim.network_mut().heal();
                story.push(format!("{now} ms: partition healed"));
            }
            if let Some(node) = crashed {
                sim.restart(node)?;
                story.push(format!("{now} ms: node {node} restarted"));
            }
        }
        // Now and then a transfer between two accounts (the saga moves the money, if it runs).
        if accounts >= 2 && plan.gen_bool(0.1) {
            let from = plan.gen_range(0..accounts);
            let to = (from + plan.gen_range(1..accounts)) % accounts;
            let start =
                serde_json::to_value(chorus_demo::transfer::TransferCommand::StartTransfer {
                    from: format!("a{from}"),
                    to: format!("a{to}"),
                    amount: plan.gen_range(1..30),
                })
                .map_err(|error| error.to_string())?;
            let stream = StreamKey::new("Transfer", &format!("t{step}"))
                .map_err(|error| error.to_string())?;
            let node = plan.gen_range(0..nodes);
            sim.submit(node, command(&format!("t{step}"), &stream, start));
        }
        // Two commands per 100 ms on random accounts from random nodes.
        for _ in 0..2 {
            let index = plan.gen_range(0..accounts);
            let body = if plan.gen_bool(0.3) {
                BankAccountCommand::Withdraw {
                    amount: plan.gen_range(1..40),
                    transfer: None,
                }
            } else {
                BankAccountCommand::Deposit {
                    amount: plan.gen_range(1..20),
                    transfer: None,
                }
            };
            let json = serde_json::to_value(body).map_err(|error| error.to_string())?;
            let node = plan.gen_range(0..nodes);
            sim.submit(
                node,
                command(
                    &format!("c{step}-{index}-{}", sim.submitted().len()),
                    &account(index)?,
                    json,
                ),
            );
        }
        sim.run_for(100);
    }
    let answered = sim.run_until_answered(LIVENESS_BOUND_MS);
    sim.settle(30_000);
    let mut violations = sim.check();
    let unanswered = sim
        .submitted()
        .iter()
        .filter(|submitted| submitted.answer.is_none())
        .count();
    if !answered {
        let examples: Vec<String> = sim
            .submitted()
            .iter()
            .filter(|submitted| submitted.answer.is_none())
            .take(3)
            .map(|submitted| {
                format!(
                    "{} on {} sent to node {} at {} ms (node: {})",
                    submitted.request.command_id,
                    submitted.request.stream,
                    submitted.node,
                    submitted.at_ms,
                    sim.engines[submitted.node]
                        .as_ref()
                        .map_or("down".to_owned(), |engine| format!("{:?}", engine.stats()))
                )
            })
            .collect();
        violations.push(format!(
            "{unanswered} commands unanswered {LIVENESS_BOUND_MS} virtual ms after the faults healed (first: {})",
            examples.join("; ")
        ));
    }
    let committed = sim
        .submitted()
        .iter()
        .filter(|submitted| matches!(submitted.answer, Some((CommandOutcome::Committed(_), _))))
        .count();
    if committed == 0 {
        violations.push("no command was committed".to_owned());
    }
    Ok(ClusterOutcome {
        seed,
        story,
        commands: sim.submitted().len(),
        committed,
        unanswered,
        violations,
    })
}
