//! Engines in the simulator: many nodes in many sections, each running the real
//! `chorus-engine` (routing, proposals, agreement, applying to a real redb event store) on
//! virtual time over the simulated network, with a client workload and the checkers of the
//! command path.
//!
//! What is modelled today: message delay, loss, duplication, reordering and partitions (the
//! `Network` of the consensus simulator); crashes and restarts (`Engine::restore` from the
//! node's saved section state, replay log and store; own events are acknowledged at once, so
//! a crash loses only what was in memory); a Byzantine member voting for forged proposals
//! (`byzantine.rs`: `propose_raw`, `forge_deposit`, `fork`); members leaving and nodes joining (with state transfer),
//! sections splitting; the transfer saga run by every member. Not yet: loss of unsynced log
//! records at a crash, other Byzantine behaviours.
//!
//! Checkers ([`ClusterSim::violations`], after the run settles; typed [`crate::Violation`]s), per section of the current map:
//! - every listed member is active in it and agrees on its generation and members;
//! - every member holds the same section state (digest of the section's events without
//!   positions, and of its eventless commands);
//! - every command answered `Committed` is in the store of every member of its section;
//! - every event a member wrote is of a stream its section covered when it wrote it;
//! - only commands a client (or the saga, from a stored event) sent have effects, and no
//!   event id is stored twice;
//! - no bank account was ever overdrawn: replaying each account's events, no withdrawal takes
//!   the balance below zero and every event's balance is the running sum.

mod binary;
mod byzantine;
mod checks;
mod plan;
mod seed;

pub use binary::{Binary, Stamp, StampCommand, StampEvent};
pub use plan::{ClusterPlan, Step};
pub use seed::{ClusterOutcome, LIVENESS_BOUND_MS, SETTLE_BOUND_MS, run_cluster_seed, run_plan};

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chorus_aggregate::{CommandId, CommandRequest, EventStore, StreamKey};
use chorus_consensus::{BlockMode, Config, PeerId};
use chorus_engine::{Admission, CommandOutcome, Engine, EngineConfig};
use chorus_routing::{SectionMap, XorName};
use ed25519_dalek::SigningKey;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::millis;
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
    /// Nodes that can join later ([`ClusterSim::add_node`], [`ClusterSim::add_stranger`]);
    /// the network is sized for them.
    pub spare_nodes: usize,
    /// The liveness rule of every engine (`EngineConfig::remove_silent_after_ms`).
    pub remove_silent_after_ms: Option<u64>,
    /// What every node runs until another binary is installed on it.
    pub binary: Binary,
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
            remove_silent_after_ms: None,
            binary: Binary::default(),
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
    /// The keys every member's operator approved: the founders and the nodes added with
    /// `add_node` (not those added with `add_stranger`).
    approved: BTreeSet<PeerId>,
    /// Per node, the members of its section when last drained (to see who left).
    members_seen: Vec<Vec<PeerId>>,
    /// Nodes some member saw leave its section (by their own request or voted out).
    departed: BTreeSet<PeerId>,
    /// Per node, what it runs from its next (re)start on.
    binaries: Vec<Binary>,
    /// Per node, why its engine halted last (the node then stopped, as its process exits).
    halts: Vec<Option<String>>,
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
        let map = initial_map(&setup, &keys, section_size_min)?;
        let directory = tempfile::tempdir().map_err(|error| error.to_string())?;
        let approved: BTreeSet<PeerId> = keys
            .iter()
            .map(|key| PeerId(key.verifying_key().to_bytes()))
            .collect();
        let engines = start_engines(&setup, &approved, &keys, &map, directory.path())?;
        let histories = keys
            .iter()
            .map(|key| {
                map.section_of_member(&XorName::from_public_key(&key.verifying_key().to_bytes()))
                    .map(|section| (0, 0, section.prefix()))
                    .into_iter()
                    .collect()
            })
            .collect();
        let capacity = setup.nodes + setup.spare_nodes;
        let setup_binary = setup.binary.clone();
        let mut sim = Self {
            network: Network::new(setup.network.clone(), capacity, &mut network_rng),
            setup,
            engines,
            ids: keys
                .iter()
                .map(|key| PeerId(key.verifying_key().to_bytes()))
                .collect(),
            logs: vec![Vec::new(); keys.len()],
            keys,
            map,
            histories,
            key_rng,
            network_rng,
            gossip_rng,
            queue: BTreeMap::new(),
            sequence: 0,
            now_ms: 0,
            submitted: Vec::new(),
            saga: false,
            paused: vec![None; capacity],
            members_seen: vec![Vec::new(); capacity],
            departed: BTreeSet::new(),
            binaries: vec![setup_binary; capacity],
            halts: vec![None; capacity],
            approved,
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
    /// as it was at the start: a joiner need not know the current one), its key approved by
    /// every member's operator first. Returns its index.
    pub fn add_node(&mut self, key: SigningKey) -> Result<usize, String> {
        self.approved.insert(PeerId(key.verifying_key().to_bytes()));
        let admission = Admission::AllowList(self.approved.clone());
        for engine in self.engines.iter_mut().flatten() {
            engine.set_admission(admission.clone());
        }
        self.start_joiner(key)
    }

    /// Starts a node with `key`, which no operator approved, that asks to join as
    /// [`ClusterSim::add_node`]'s do. Returns its index.
    pub fn add_stranger(&mut self, key: SigningKey) -> Result<usize, String> {
        self.start_joiner(key)
    }

    /// Whether `node`'s key was approved (a founder, or added with `add_node`).
    pub fn is_approved(&self, node: usize) -> bool {
        self.approved.contains(&self.ids[node])
    }

    /// Whether some member saw `node` leave its section (by its own request, or voted out).
    pub fn departed(&self, node: usize) -> bool {
        self.departed.contains(&self.ids[node])
    }

    fn start_joiner(&mut self, key: SigningKey) -> Result<usize, String> {
        let node = self.engines.len();
        if node >= self.setup.nodes + self.setup.spare_nodes {
            return Err(format!(
                "no spare node left (the network was sized for {} spare)",
                self.setup.spare_nodes
            ));
        }
        let store = open_store(self._directory.path(), node)?;
        let binary = &self.binaries[node];
        let engine = Engine::join(
            engine_config(&self.setup, &self.approved, binary),
            key.clone(),
            self.map.clone(),
            (binary.registry)(),
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

    /// Cuts every link between the two sides, both ways (as `Sim::partition`).
    pub fn partition(&mut self, side_a: &[usize], side_b: &[usize]) {
        self.network.block(side_a, side_b);
        self.network.block(side_b, side_a);
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        self.network.heal();
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

    /// Crashes every running node at once, then restarts them all from their disks (a power
    /// cut of the whole cluster).
    pub fn crash_all(&mut self) -> Result<(), String> {
        let running: Vec<usize> = (0..self.engines.len())
            .filter(|node| self.is_running(*node))
            .collect();
        for node in &running {
            self.crash(*node);
        }
        for node in &running {
            self.restart(*node)?;
        }
        Ok(())
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

    /// Installs `binary` on `node`: it runs it from its next start (a restart after
    /// [`ClusterSim::crash`], or its join). A rolling upgrade is a crash, an install and a
    /// restart per node.
    pub fn install(&mut self, node: usize, binary: Binary) {
        self.binaries[node] = binary;
    }

    /// Installs `binary` on every node not started yet (joiners to come).
    pub fn install_for_new_nodes(&mut self, binary: &Binary) {
        let started = self.engines.len();
        for slot in self.binaries.iter_mut().skip(started) {
            *slot = binary.clone();
        }
    }

    /// What `node` runs from its next start on.
    pub fn binary(&self, node: usize) -> &Binary {
        &self.binaries[node]
    }

    /// Why `node`'s engine last halted, if it did (the node is then down, as a real node's
    /// process exits: `restart` starts it again).
    pub fn halted(&self, node: usize) -> Option<&str> {
        self.halts[node].as_deref()
    }

    /// Restarts a crashed node from its store and replay log (`Engine::restore`).
    pub fn restart(&mut self, node: usize) -> Result<(), String> {
        if self.engines[node].is_some() {
            return Ok(());
        }
        let store = open_store(self._directory.path(), node)?;
        let binary = &self.binaries[node];
        let engine = Engine::restore(
            engine_config(&self.setup, &self.approved, binary),
            self.keys[node].clone(),
            self.map.clone(),
            (binary.registry)(),
            store,
            self.logs[node].clone(),
            self.now_ms,
        )
        .map_err(|error| error.to_string())?;
        self.engines[node] = Some(engine);
        self.collect(node);
        self.add_saga(node)
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

    /// Runs for `duration` of virtual time (`run_for(secs(2))`, as `Sim::run_for`).
    pub fn run_for(&mut self, duration: Duration) {
        self.run_until(self.now_ms + duration.as_millis() as u64);
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
            self.run_for(millis(10));
        }
        self.submitted
            .iter()
            .all(|submitted| submitted.answer.is_some())
    }

    /// Runs until every section's members hold the same store, or `limit_ms` passed.
    pub fn settle(&mut self, limit_ms: u64) {
        let deadline = self.now_ms + limit_ms;
        while self.now_ms < deadline && !self.stores_agree() {
            self.run_for(millis(50));
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
        if self.members_seen[node] != state.members {
            let map = engine.map();
            let gone = self.members_seen[node].iter().filter(|member| {
                map.section_of_member(&XorName::from_public_key(&member.0))
                    .is_none()
            });
            self.departed.extend(gone);
            self.members_seen[node] = state.members.clone();
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
        // A halted engine's process exits (what it sent last still goes out).
        if let Some(reason) = engine.halted() {
            self.halts[node] = Some(reason.to_owned());
            self.crash(node);
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
}

fn engine_config(
    setup: &ClusterSetup,
    approved: &BTreeSet<PeerId>,
    binary: &Binary,
) -> EngineConfig {
    EngineConfig {
        admission: Admission::AllowList(approved.clone()),
        remove_silent_after_ms: setup.remove_silent_after_ms,
        domain_version: binary.domain_version.clone(),
        upgrades_from: binary.upgrades_from.clone(),
        ..EngineConfig::new(Config {
            block_mode: setup.block_mode,
            gossip_interval_ms: setup.gossip_interval_ms,
            // A node restores from its replay log after a crash.
            log_records: true,
            ..Config::default()
        })
    }
}

/// One engine per key, each with its own store under `directory`, all members of `map`.
fn start_engines(
    setup: &ClusterSetup,
    approved: &BTreeSet<PeerId>,
    keys: &[SigningKey],
    map: &SectionMap,
    directory: &std::path::Path,
) -> Result<Vec<Option<Engine>>, String> {
    keys.iter()
        .enumerate()
        .map(|(index, key)| {
            let engine = Engine::new(
                engine_config(setup, approved, &setup.binary),
                key.clone(),
                map.clone(),
                (setup.binary.registry)(),
                open_store(directory, index)?,
                0,
            )
            .map_err(|error| error.to_string())?;
            Ok(Some(engine))
        })
        .collect()
}

fn open_store(directory: &std::path::Path, node: usize) -> Result<EventStore, String> {
    EventStore::open(directory.join(format!("node-{node}.redb"))).map_err(|error| error.to_string())
}

/// The founders' map, with as many sections as the setup asks for (if it asks).
fn initial_map(
    setup: &ClusterSetup,
    keys: &[SigningKey],
    section_size_min: usize,
) -> Result<SectionMap, String> {
    let public: Vec<[u8; 32]> = keys
        .iter()
        .map(|key| key.verifying_key().to_bytes())
        .collect();
    let map = SectionMap::with_members(section_size_min, &public);
    match setup.sections {
        Some(sections) if map.section_count() != sections => Err(format!(
            "asked for {sections} sections, the map has {}",
            map.section_count()
        )),
        _ => Ok(map),
    }
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
