//! The simulator: real `Consensus` members on virtual time, in one thread, with a lossy
//! network, crashes, slow nodes and Byzantine members, and checkers on every block.
//!
//! Everything random draws from ChaCha streams derived from one seed, every queue is ordered
//! by (virtual time, insertion number), and no hash map is iterated, so one seed reproduces a
//! run byte for byte; `Sim::trace_hash` fingerprints it.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use std::time::Duration;

use chorus_consensus::codec::{decode_message, encode_message};
use chorus_consensus::harness::member_key;
use chorus_consensus::{
    Block, BlockMode, Config, Consensus, LogRecord, Observation, ObservationHash, PeerId,
    SignedEvent, SyncRequest, SyncResponse,
};
use ed25519_dalek::SigningKey;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::byzantine::{Behaviour, Lie, garbage, lie, phantom_hash};
use crate::checker::{Checker, Violation, ViolationKind};
use crate::network::{Fate, Network, NetworkConfig};

/// `seconds` of virtual time.
pub fn secs(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

/// `millis` of virtual time.
pub fn millis(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// The consensus configuration the simulator uses unless told otherwise: WAN-like gossip
/// (every 20 ms; rounds then last about 140 ms) and a prune window of 24 rounds, so that runs
/// of a few seconds prune (and the checkers see pruning at work) while a node cut off for
/// about 3 s can still catch up by gossip. Further behind needs state transfer, which the
/// engine adds.
pub fn default_consensus_config() -> Config {
    Config {
        gossip_interval_ms: 20,
        prune_window_rounds: 24,
        observation_window_rounds: 64,
        log_records: true,
        ..Config::default()
    }
}

/// Everything a run is made of, fixed before it starts.
#[derive(Clone, Debug)]
pub struct Setup {
    /// Nodes in the group.
    pub nodes: usize,
    /// Behaviour of each node that is not honest, by node index.
    pub byzantine: BTreeMap<usize, Behaviour>,
    /// The consensus configuration of every node (`log_records` is forced on).
    pub consensus: Config,
    /// The network.
    pub network: NetworkConfig,
    /// Payloads each honest node proposes per virtual second while the load is on (above
    /// 1000, rounded down to whole payloads per millisecond).
    pub proposals_per_node_per_sec: u64,
    /// Bytes per proposed payload.
    pub payload_bytes: usize,
    /// How long after the last fault heals every honest proposal must be agreed by every
    /// honest node.
    pub liveness_bound_ms: u64,
    /// Whether to keep a human-readable trace (costly; for replays).
    pub trace_lines: bool,
    /// Each node makes its replay log durable (group commit) every this many virtual ms;
    /// its new events are acknowledged, and may be sent, only then. A crash loses what was
    /// not synced.
    pub log_sync_interval_ms: u64,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            nodes: 4,
            byzantine: BTreeMap::new(),
            consensus: default_consensus_config(),
            network: NetworkConfig::default(),
            proposals_per_node_per_sec: 10,
            payload_bytes: 64,
            liveness_bound_ms: 60_000,
            trace_lines: false,
            log_sync_interval_ms: 10,
        }
    }
}

/// Counters of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Messages handed to the network.
    pub messages_sent: u64,
    /// Messages delivered to a running node.
    pub messages_delivered: u64,
    /// Messages lost at random.
    pub messages_dropped: u64,
    /// Messages blocked by a partition.
    pub messages_partitioned: u64,
    /// Extra copies delivered.
    pub messages_duplicated: u64,
    /// Messages that arrived at a crashed node.
    pub messages_to_crashed: u64,
    /// Messages that failed to decode.
    pub messages_undecodable: u64,
    /// Events honest nodes rejected.
    pub events_rejected: u64,
    /// Fork evidence honest nodes produced.
    pub evidence: u64,
    /// Proposals made by honest nodes (client retries after a crash not counted).
    pub proposals: u64,
    /// Blocks agreed (positions of the agreed sequence).
    pub blocks: u64,
    /// Log records crashes lost (written, not yet synced).
    pub log_records_lost: u64,
    /// Own events crashes lost (created, not yet durable, never sent).
    pub own_events_lost: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
}

/// One honest proposal: who made it and when.
struct Proposal {
    node: usize,
    observation: Observation,
    made_at_ms: u64,
}

struct SimNode {
    key: SigningKey,
    behaviour: Behaviour,
    /// `None` while crashed.
    consensus: Option<Consensus>,
    /// The replay log made durable.
    durable_log: Vec<LogRecord>,
    /// Records written but not yet synced: a crash loses them.
    unsynced_log: Vec<LogRecord>,
    /// Own events whose records are not synced yet: not acknowledged, never sent.
    unsynced_own: Vec<Arc<SignedEvent>>,
    /// Observation hashes of the blocks this node output, in order (what its application
    /// consumed, kept across crashes as a real node keeps its applied state).
    blocks: Vec<ObservationHash>,
    /// Digest of each of those blocks (observation, round, time, voters).
    block_digests: Vec<[u8; 32]>,
    /// Position the node's next block must have: `blocks.len()` while it runs, 0 after a
    /// restart (a restored node re-emits its blocks from the start, in order).
    next_position: usize,
    /// Members this node produced fork evidence against (counted once each).
    accused: std::collections::BTreeSet<usize>,
    /// Our latest durable own event (Byzantine nodes fork it).
    latest_own: Option<Arc<SignedEvent>>,
    /// Gossip and answers are this many times slower.
    slow_factor: u64,
    lie_nonce: u64,
    proposal_counter: u64,
}

impl SimNode {
    fn is_honest(&self) -> bool {
        self.behaviour == Behaviour::Honest
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MessageKind {
    Request,
    Response,
}

enum Item {
    Tick(usize),
    Propose(usize),
    LogSync(usize),
    Deliver {
        from: usize,
        to: usize,
        kind: MessageKind,
        bytes: Arc<Vec<u8>>,
    },
}

struct Scheduled {
    at_ms: u64,
    order: u64,
    item: Item,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ms, self.order) == (other.at_ms, other.order)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    // Reversed: `BinaryHeap` is a max-heap and the earliest item must come first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at_ms, other.order).cmp(&(self.at_ms, self.order))
    }
}

/// Independent random streams, so that (for example) turning on message loss does not change
/// which payloads are proposed.
struct Streams {
    network: ChaCha8Rng,
    gossip: ChaCha8Rng,
    byzantine: ChaCha8Rng,
}

impl Streams {
    fn new(seed: u64) -> Self {
        let stream = |number: u64| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(number);
            rng
        };
        Self {
            network: stream(1),
            gossip: stream(2),
            byzantine: stream(3),
        }
    }
}

struct World {
    now_ms: u64,
    queue: BinaryHeap<Scheduled>,
    next_order: u64,
    nodes: Vec<SimNode>,
    ids: Vec<PeerId>,
    network: Network,
    rng: Streams,
    checker: Checker,
    trace: blake3::Hasher,
    trace_lines: Option<Vec<String>>,
    stats: SimStats,
    proposals: BTreeMap<ObservationHash, Proposal>,
    /// Virtual ms from proposal to agreement (first honest node), per agreed proposal.
    latencies_ms: Vec<u64>,
    quiet_after_ms: Option<u64>,
    load_on: bool,
    config: Config,
    proposal_interval_ms: u64,
    /// Payloads per proposal tick: 1, or rate / 1000 for rates above 1000/s (ticks are then
    /// 1 ms apart).
    proposals_per_tick: u64,
    payload_bytes: usize,
    log_sync_interval_ms: u64,
}

/// A simulated group. Build it with the chained setters, then tell its story:
///
/// ```
/// use chorus_sim::{Behaviour, Sim, secs};
/// let mut sim = Sim::new(7).nodes(4).byzantine(1, Behaviour::Fork);
/// sim.partition(&[0, 1], &[2, 3]);
/// sim.run_for(secs(2));
/// sim.heal();
/// sim.run_until_quiet();
/// sim.assert_agreement();
/// ```
///
/// Node `i` of `n` is Byzantine when `i < byzantine count`. The group starts on the first
/// call that runs or changes it; setters after that are a bug and panic.
pub struct Sim {
    seed: u64,
    setup: Setup,
    world: Option<World>,
}

impl Sim {
    /// A group of 4 honest nodes with default settings, driven by `seed`.
    pub fn new(seed: u64) -> Self {
        Self::with_setup(seed, Setup::default())
    }

    /// A group built from an explicit setup.
    pub fn with_setup(seed: u64, setup: Setup) -> Self {
        Self {
            seed,
            setup,
            world: None,
        }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The setup.
    pub fn setup(&self) -> &Setup {
        &self.setup
    }

    fn configure(mut self, change: impl FnOnce(&mut Setup)) -> Self {
        assert!(
            self.world.is_none(),
            "setup changed after the simulation started"
        );
        change(&mut self.setup);
        self
    }

    /// Sets the number of nodes.
    pub fn nodes(self, count: usize) -> Self {
        self.configure(|setup| setup.nodes = count)
    }

    /// Makes the first `count` nodes Byzantine with `behaviour`.
    pub fn byzantine(self, count: usize, behaviour: Behaviour) -> Self {
        self.configure(|setup| {
            let first = setup.byzantine.len();
            for node in first..first + count {
                setup.byzantine.insert(node, behaviour);
            }
        })
    }

    /// Sets how blocks are formed.
    pub fn mode(self, mode: BlockMode) -> Self {
        self.configure(|setup| setup.consensus.block_mode = mode)
    }

    /// Sets the network.
    pub fn network(self, network: NetworkConfig) -> Self {
        self.configure(|setup| setup.network = network)
    }

    /// Sets the proposal rate of each honest node.
    pub fn load(self, proposals_per_node_per_sec: u64) -> Self {
        self.configure(|setup| setup.proposals_per_node_per_sec = proposals_per_node_per_sec)
    }

    /// Keeps a human-readable trace.
    pub fn traced(self) -> Self {
        self.configure(|setup| setup.trace_lines = true)
    }

    fn world(&mut self) -> &mut World {
        if self.world.is_none() {
            self.world = Some(World::start(self.seed, &self.setup));
        }
        self.world.as_mut().expect("started above")
    }

    // ---- Faults --------------------------------------------------------------------------

    /// Cuts every link between the two sides, both ways.
    pub fn partition(&mut self, side_a: &[usize], side_b: &[usize]) {
        let world = self.world();
        world.network.block(side_a, side_b);
        world.network.block(side_b, side_a);
        world.fault("partition", format!("partition {side_a:?} | {side_b:?}"));
    }

    /// Cuts the links from `from` to `to` only: `to` still reaches `from`.
    pub fn partition_one_way(&mut self, from: &[usize], to: &[usize]) {
        let world = self.world();
        world.network.block(from, to);
        world.fault("one-way-partition", format!("one-way {from:?} -> {to:?}"));
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        let world = self.world();
        world.network.heal();
        world.note("heal partitions".into());
    }

    /// Sets message loss, duplication and reordering.
    pub fn set_network_rates(&mut self, drop: f64, duplicate: f64, reorder: f64) {
        let world = self.world();
        world.network.set_rates(drop, duplicate, reorder);
        if drop > 0.0 {
            world.fault("drop", format!("drop {drop}"));
        }
        if duplicate > 0.0 {
            world.fault("duplicate", format!("duplicate {duplicate}"));
        }
        if reorder > 0.0 {
            world.fault("reorder", format!("reorder {reorder}"));
        }
        if drop == 0.0 && duplicate == 0.0 && reorder == 0.0 {
            world.note("network rates cleared".into());
        }
    }

    /// Crashes `node`: its state and the log records it had not synced are lost.
    pub fn crash(&mut self, node: usize) {
        let world = self.world();
        if world.nodes[node].consensus.take().is_some() {
            let sim_node = &mut world.nodes[node];
            world.stats.log_records_lost += sim_node.unsynced_log.len() as u64;
            world.stats.own_events_lost += sim_node.unsynced_own.len() as u64;
            sim_node.unsynced_log.clear();
            sim_node.unsynced_own.clear();
            world.fault("crash", format!("crash node {node}"));
        }
    }

    /// Restarts a crashed `node` from its durable log.
    pub fn restart(&mut self, node: usize) {
        self.world().restart(node);
    }

    /// Makes `node` gossip and answer `factor` times slower (1: normal speed).
    pub fn slow(&mut self, node: usize, factor: u64) {
        let world = self.world();
        world.nodes[node].slow_factor = factor.max(1);
        if factor > 1 {
            world.fault("slow", format!("node {node} slowed x{factor}"));
        }
    }

    /// Heals everything that heals: partitions, loss, duplication, reordering, slowness, and
    /// restarts crashed nodes. Byzantine nodes stay Byzantine.
    pub fn heal_all(&mut self) {
        self.heal();
        self.set_network_rates(0.0, 0.0, 0.0);
        let count = self.setup.nodes;
        for node in 0..count {
            self.slow(node, 1);
            if self.world().nodes[node].consensus.is_none() {
                self.restart(node);
            }
        }
    }

    // ---- Running -------------------------------------------------------------------------

    /// Runs `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        let world = self.world();
        let until = world.now_ms + duration.as_millis() as u64;
        world.run_until(until);
    }

    /// Runs until virtual time `at_ms`.
    pub fn run_until(&mut self, at_ms: u64) {
        self.world().run_until(at_ms);
    }

    /// Stops the proposals, then runs until every honest proposal is agreed by every honest
    /// node, at most `liveness_bound_ms`; past that, records a liveness violation. Returns
    /// whether everything was agreed. Call it after the last fault healed.
    pub fn run_until_quiet(&mut self) -> bool {
        let bound = self.setup.liveness_bound_ms;
        let world = self.world();
        world.load_on = false;
        world.note("load stopped; waiting for quiet".into());
        let start = world.now_ms;
        let deadline = start + bound;
        loop {
            if world.all_agreed() {
                world.quiet_after_ms = Some(world.now_ms - start);
                return true;
            }
            if world.now_ms >= deadline {
                break;
            }
            let step = (world.now_ms + 10).min(deadline);
            world.run_until(step);
        }
        let detail = world.liveness_detail(bound);
        let node = world.most_lagging_honest();
        let now = world.now_ms;
        world
            .checker
            .report(ViolationKind::Liveness, node, now, detail);
        false
    }

    // ---- Results -------------------------------------------------------------------------

    /// How long the last successful `run_until_quiet` took, in virtual ms (to 10 ms).
    pub fn quiet_after_ms(&mut self) -> Option<u64> {
        self.world().quiet_after_ms
    }

    /// Virtual time now.
    pub fn now_ms(&mut self) -> u64 {
        self.world().now_ms
    }

    /// Every violation found so far.
    pub fn violations(&mut self) -> Vec<Violation> {
        self.world().checker.violations().to_vec()
    }

    /// Counters.
    pub fn stats(&mut self) -> SimStats {
        let world = self.world();
        let mut stats = world.stats.clone();
        stats.blocks = world.checker.agreed().len() as u64;
        stats
    }

    /// Blocks (observation hashes) node `node` output, in order.
    pub fn blocks(&mut self, node: usize) -> Vec<ObservationHash> {
        self.world().nodes[node].blocks.clone()
    }

    /// Virtual milliseconds from proposal to agreement, per agreed honest proposal, in the
    /// order they were agreed.
    pub fn agreement_latencies_ms(&mut self) -> Vec<u64> {
        self.world().latencies_ms.clone()
    }

    /// What `node` has written but not synced yet: (log records, own events). A crash now
    /// loses exactly this.
    pub fn unsynced(&mut self, node: usize) -> (usize, usize) {
        let sim_node = &self.world().nodes[node];
        (sim_node.unsynced_log.len(), sim_node.unsynced_own.len())
    }

    /// The consensus statistics of `node` (`None` while it is crashed).
    pub fn consensus_stats(&mut self, node: usize) -> Option<chorus_consensus::Stats> {
        self.world().nodes[node]
            .consensus
            .as_ref()
            .map(Consensus::stats)
    }

    /// Whether `observation` has been agreed.
    pub fn is_agreed(&mut self, observation: &ObservationHash) -> bool {
        self.world().checker.is_agreed(observation)
    }

    /// The honest proposals made so far (hashes), oldest first by hash order.
    pub fn proposals(&mut self) -> Vec<ObservationHash> {
        self.world().proposals.keys().copied().collect()
    }

    /// Honest node `node` proposes `payload` now (besides the background load). Returns its
    /// hash, or `None` if the node is down, Byzantine, or refused it.
    pub fn propose(&mut self, node: usize, payload: &[u8]) -> Option<ObservationHash> {
        self.world()
            .propose(node, Observation::payload(payload.to_vec()))
    }

    /// A fingerprint of everything that happened: same seed and same story, same hash.
    pub fn trace_hash(&mut self) -> [u8; 32] {
        *self.world().trace.clone().finalize().as_bytes()
    }

    /// The human-readable trace (with `traced()`).
    pub fn trace_lines(&mut self) -> Vec<String> {
        self.world().trace_lines.clone().unwrap_or_default()
    }

    /// The graph of `node` around now, in Graphviz dot (`None` while it is crashed).
    pub fn dot(&mut self, node: usize, rounds: u64) -> Option<String> {
        self.world().nodes[node]
            .consensus
            .as_ref()
            .map(|consensus| consensus.to_dot(Some(rounds)))
    }

    /// Writes `node`'s graph (last 12 rounds) to the temp directory; says where.
    fn dump_dot(&mut self, node: usize) -> String {
        let Some(dot) = self.dot(node, 12) else {
            return format!("(node {node} is crashed: no graph to dump)");
        };
        let path =
            std::env::temp_dir().join(format!("chorus-sim-seed-{}-node-{node}.dot", self.seed));
        match std::fs::write(&path, dot) {
            Ok(()) => format!("graph of node {node}: {}", path.display()),
            Err(error) => format!("could not write {}: {error}", path.display()),
        }
    }

    /// Indices of the honest nodes.
    pub fn honest_nodes(&self) -> Vec<usize> {
        (0..self.setup.nodes)
            .filter(|node| !self.setup.byzantine.contains_key(node))
            .collect()
    }

    /// Panics with every violation found, if any.
    pub fn assert_no_violations(&mut self) {
        let violations = self.violations();
        if let Some(first) = violations.first() {
            let list: Vec<String> = violations.iter().map(ToString::to_string).collect();
            let dump = self.dump_dot(first.node);
            panic!(
                "seed {}: {} violation(s):\n{}\n{dump}",
                self.seed,
                list.len(),
                list.join("\n")
            );
        }
    }

    /// Panics unless the honest nodes' block sequences are prefixes of one another, and no
    /// checker found anything.
    pub fn assert_agreement(&mut self) {
        self.assert_no_violations();
        let honest = self.honest_nodes();
        let sequences: Vec<Vec<ObservationHash>> =
            honest.iter().map(|&node| self.blocks(node)).collect();
        let longest = sequences
            .iter()
            .max_by_key(|sequence| sequence.len())
            .cloned()
            .unwrap_or_default();
        for (node, sequence) in honest.iter().zip(&sequences) {
            assert_eq!(
                sequence[..],
                longest[..sequence.len()],
                "seed {}: node {node} disagrees",
                self.seed
            );
        }
    }

    /// Panics unless every honest proposal is agreed by every honest node.
    pub fn assert_all_agreed(&mut self) {
        let seed = self.seed;
        let world = self.world();
        assert!(
            world.all_agreed(),
            "seed {seed}: {}",
            world.liveness_detail(0)
        );
    }
}

impl World {
    fn start(seed: u64, setup: &Setup) -> Self {
        assert!(setup.nodes >= 1, "a group needs a node");
        if let Err(error) = setup.network.validate() {
            panic!("invalid network configuration: {error}");
        }
        let mut rng = Streams::new(seed);
        let keys: Vec<SigningKey> = (0..setup.nodes)
            .map(|node| member_key(seed, node))
            .collect();
        let ids: Vec<PeerId> = keys
            .iter()
            .map(|key| PeerId(key.verifying_key().to_bytes()))
            .collect();
        let config = Config {
            log_records: true,
            ..setup.consensus.clone()
        };
        let network = Network::new(setup.network.clone(), setup.nodes, &mut rng.network);
        let mut members = ids.clone();
        members.sort_unstable();
        let mut world = Self {
            now_ms: 0,
            queue: BinaryHeap::new(),
            next_order: 0,
            nodes: Vec::new(),
            ids: ids.clone(),
            network,
            checker: Checker::new(members, config.block_mode),
            trace: blake3::Hasher::new(),
            trace_lines: setup.trace_lines.then(Vec::new),
            stats: SimStats::default(),
            proposals: BTreeMap::new(),
            latencies_ms: Vec::new(),
            quiet_after_ms: None,
            load_on: setup.proposals_per_node_per_sec > 0,
            config: config.clone(),
            proposal_interval_ms: (1_000 / setup.proposals_per_node_per_sec.max(1)).max(1),
            proposals_per_tick: (setup.proposals_per_node_per_sec / 1_000).max(1),
            payload_bytes: setup.payload_bytes,
            log_sync_interval_ms: setup.log_sync_interval_ms.max(1),
            rng,
        };
        for (node, key) in keys.into_iter().enumerate() {
            let behaviour = setup
                .byzantine
                .get(&node)
                .copied()
                .unwrap_or(Behaviour::Honest);
            if behaviour != Behaviour::Honest {
                *world.stats.faults.entry(behaviour.name()).or_default() += 1;
            }
            let consensus = Consensus::new(config.clone(), key.clone(), &ids, 0)
                .unwrap_or_else(|error| panic!("invalid setup: {error}"));
            world.nodes.push(SimNode {
                key,
                behaviour,
                consensus: Some(consensus),
                durable_log: Vec::new(),
                unsynced_log: Vec::new(),
                unsynced_own: Vec::new(),
                blocks: Vec::new(),
                block_digests: Vec::new(),
                next_position: 0,
                accused: std::collections::BTreeSet::new(),
                latest_own: None,
                slow_factor: 1,
                lie_nonce: 0,
                proposal_counter: 0,
            });
            world.drain(node);
            // Spread the first ticks and proposals so the nodes do not move in lockstep.
            let phase = world
                .rng
                .gossip
                .gen_range(0..config.gossip_interval_ms.max(1));
            world.schedule(phase, Item::Tick(node));
            let sync_phase = world.rng.gossip.gen_range(0..world.log_sync_interval_ms);
            world.schedule(sync_phase, Item::LogSync(node));
            if behaviour == Behaviour::Honest && setup.proposals_per_node_per_sec > 0 {
                let interval = world.proposal_interval_ms;
                let phase = world.rng.gossip.gen_range(0..interval);
                world.schedule(phase, Item::Propose(node));
            }
        }
        world.setup_note(setup);
        world
    }

    fn setup_note(&mut self, setup: &Setup) {
        let line = format!(
            "setup: {} nodes, byzantine {:?}, mode {:?}, network {:?}, load {}/s/node",
            setup.nodes,
            setup.byzantine,
            setup.consensus.block_mode,
            setup.network,
            setup.proposals_per_node_per_sec
        );
        self.note(line);
    }

    fn note(&mut self, line: String) {
        self.trace.update(line.as_bytes());
        if let Some(lines) = &mut self.trace_lines {
            lines.push(format!("{:>8} ms  {line}", self.now_ms));
        }
    }

    fn fault(&mut self, kind: &'static str, line: String) {
        *self.stats.faults.entry(kind).or_default() += 1;
        self.note(line);
    }

    fn schedule(&mut self, at_ms: u64, item: Item) {
        let order = self.next_order;
        self.next_order += 1;
        self.queue.push(Scheduled { at_ms, order, item });
    }

    fn run_until(&mut self, until_ms: u64) {
        while self.queue.peek().is_some_and(|next| next.at_ms <= until_ms) {
            let Some(next) = self.queue.pop() else { break };
            self.now_ms = next.at_ms;
            self.process(next.item);
        }
        self.now_ms = self.now_ms.max(until_ms);
    }

    fn process(&mut self, item: Item) {
        match item {
            Item::Tick(node) => self.on_tick(node),
            Item::Propose(node) => self.on_propose(node),
            Item::LogSync(node) => self.on_log_sync(node),
            Item::Deliver {
                from,
                to,
                kind,
                bytes,
            } => self.on_deliver(from, to, kind, &bytes),
        }
    }

    fn on_tick(&mut self, node: usize) {
        let interval = self.nodes[node]
            .consensus
            .as_ref()
            .map_or(20, |consensus| consensus.config().gossip_interval_ms.max(1));
        let next = self.now_ms + interval * self.nodes[node].slow_factor;
        self.schedule(next, Item::Tick(node));
        let now = self.now_ms;
        let behaviour = self.nodes[node].behaviour;
        let Some(consensus) = self.nodes[node].consensus.as_mut() else {
            return;
        };
        if behaviour == Behaviour::PhantomVotes && self.rng.byzantine.gen_bool(0.5) {
            consensus.vote_for_unseen(phantom_hash(&mut self.rng.byzantine));
        }
        consensus.tick(now, &mut self.rng.gossip);
        self.drain(node);
    }

    fn on_propose(&mut self, node: usize) {
        if !self.load_on {
            return;
        }
        // A little jitter so slow proposal streams do not line up with gossip ticks (fast
        // ones propose every millisecond, where jitter would distort the rate).
        let jitter = if self.proposal_interval_ms >= 10 {
            self.rng.gossip.gen_range(0..=2)
        } else {
            0
        };
        self.schedule(
            self.now_ms + self.proposal_interval_ms + jitter,
            Item::Propose(node),
        );
        for _ in 0..self.proposals_per_tick {
            let counter = self.nodes[node].proposal_counter;
            self.nodes[node].proposal_counter += 1;
            let mut payload =
                format!("node {node} proposal {counter} at {} ms ", self.now_ms).into_bytes();
            payload.resize(self.payload_bytes.max(payload.len()), b'.');
            self.propose(node, Observation::payload(payload));
        }
    }

    /// Honest `node` votes for `observation`; remembered for the liveness check if accepted.
    fn propose(&mut self, node: usize, observation: Observation) -> Option<ObservationHash> {
        if !self.nodes[node].is_honest() {
            return None;
        }
        let consensus = self.nodes[node].consensus.as_mut()?;
        let hash = consensus.vote_for(observation.clone()).ok()?;
        self.stats.proposals += 1;
        self.proposals.insert(
            hash,
            Proposal {
                node,
                observation,
                made_at_ms: self.now_ms,
            },
        );
        Some(hash)
    }

    /// Sends `bytes` from `from` to `to` through the network.
    fn send(&mut self, from: usize, to: usize, kind: MessageKind, bytes: Vec<u8>, extra_ms: u64) {
        self.stats.messages_sent += 1;
        match self.network.route(from, to, &mut self.rng.network) {
            Fate::Dropped => self.stats.messages_dropped += 1,
            Fate::Partitioned => self.stats.messages_partitioned += 1,
            Fate::Delivered(delays) => {
                self.stats.messages_duplicated += delays.len() as u64 - 1;
                let bytes = Arc::new(bytes);
                for delay in delays {
                    self.schedule(
                        self.now_ms + delay + extra_ms,
                        Item::Deliver {
                            from,
                            to,
                            kind,
                            bytes: Arc::clone(&bytes),
                        },
                    );
                }
            }
        }
    }

    fn on_deliver(&mut self, from: usize, to: usize, kind: MessageKind, bytes: &[u8]) {
        self.trace.update(&self.now_ms.to_le_bytes());
        self.trace.update(&[from as u8, to as u8, kind as u8]);
        self.trace.update(bytes);
        if self.nodes[to].consensus.is_none() {
            self.stats.messages_to_crashed += 1;
            return;
        }
        self.stats.messages_delivered += 1;
        match kind {
            MessageKind::Request => self.on_request(from, to, bytes),
            MessageKind::Response => self.on_response(from, to, bytes),
        }
    }

    fn on_request(&mut self, from: usize, to: usize, bytes: &[u8]) {
        let Ok(request) = decode_message::<SyncRequest>(bytes) else {
            self.stats.messages_undecodable += 1;
            return;
        };
        let from_id = self.ids[from];
        let node = &mut self.nodes[to];
        let Some(consensus) = node.consensus.as_ref() else {
            return;
        };
        let Ok(response) = consensus.handle_sync_request(&from_id, &request) else {
            self.stats.messages_undecodable += 1;
            return;
        };
        let reply = match node.behaviour {
            Behaviour::Honest => Lie::Response(response),
            behaviour => {
                node.lie_nonce += 1;
                lie(
                    behaviour,
                    response,
                    self.config.events_per_sync_max,
                    &node.key,
                    node.latest_own.as_ref(),
                    from,
                    node.lie_nonce,
                    &mut self.rng.byzantine,
                )
            }
        };
        let honest = node.is_honest();
        let bytes = match reply {
            Lie::Response(response) => match encode_message(&response) {
                Ok(bytes) => bytes,
                // An honest response always fits (the consensus cuts it to the limit): if
                // not, that is a bug worth a panic, which the sweep reports with the seed.
                Err(error) if honest => panic!("node {to} cannot encode its response: {error}"),
                // A lie grown past the limit is not sent.
                Err(_) => return,
            },
            Lie::Bytes(bytes) => bytes,
            Lie::Nothing => return,
        };
        let extra = (self.nodes[to].slow_factor - 1) * 10;
        self.send(to, from, MessageKind::Response, bytes, extra);
    }

    fn on_response(&mut self, from: usize, to: usize, bytes: &[u8]) {
        let Ok(response) = decode_message::<SyncResponse>(bytes) else {
            self.stats.messages_undecodable += 1;
            return;
        };
        let now = self.now_ms;
        let from_id = self.ids[from];
        let honest = self.nodes[to].is_honest();
        let Some(consensus) = self.nodes[to].consensus.as_mut() else {
            return;
        };
        match consensus.handle_sync_response(now, &from_id, response) {
            Ok(report) if honest => self.stats.events_rejected += report.rejected.len() as u64,
            Ok(_) => {}
            Err(_) => self.stats.messages_undecodable += 1,
        }
        self.drain(to);
    }

    /// Drains `node`'s outputs: log records (synced before an own event is acknowledged),
    /// requests to send, blocks (checked), evidence, and observations to second.
    fn drain(&mut self, node: usize) {
        let mut requests = Vec::new();
        let mut blocks = Vec::new();
        let mut seconds = Vec::new();
        let mut evidence_found = Vec::new();
        {
            let sim_node = &mut self.nodes[node];
            let Some(consensus) = sim_node.consensus.as_mut() else {
                return;
            };
            while let Some(record) = consensus.poll_log_record() {
                sim_node.unsynced_log.push(record);
            }
            while let Some(event) = consensus.poll_unpersisted() {
                // Acknowledged at the next group commit (`on_log_sync`).
                sim_node.unsynced_own.push(event);
            }
            while let Some(transmit) = consensus.poll_transmit() {
                requests.push(transmit);
            }
            while let Some(block) = consensus.poll_block() {
                blocks.push(block);
            }
            while let Some(evidence) = consensus.poll_evidence() {
                if sim_node.behaviour == Behaviour::Honest {
                    evidence_found.push(evidence.first.header.creator);
                }
            }
            while let Some((hash, _)) = consensus.poll_observation() {
                seconds.push(hash);
            }
            for hash in seconds {
                // Back-pressure only drops a second; the proposer's own vote stands.
                let _ = consensus.vote_for_hash(hash);
            }
        }
        for block in blocks {
            self.on_block(node, &block);
        }
        for offender in evidence_found {
            self.on_evidence(node, offender);
        }
        for transmit in requests {
            let Some(to) = self.ids.iter().position(|id| *id == transmit.to) else {
                continue;
            };
            let bytes = if self.nodes[node].behaviour == Behaviour::Garbage
                && self.rng.byzantine.gen_bool(0.5)
            {
                garbage(&mut self.rng.byzantine)
            } else {
                match encode_message(&transmit.request) {
                    Ok(bytes) => bytes,
                    Err(error) => panic!("node {node} cannot encode its request: {error}"),
                }
            };
            self.send(node, to, MessageKind::Request, bytes, 0);
        }
    }

    fn on_block(&mut self, node: usize, block: &Block) {
        let sim_node = &mut self.nodes[node];
        if !sim_node.is_honest() {
            return;
        }
        let position = block.sequence as usize;
        let digest = block_digest(block);
        if position != sim_node.next_position {
            let detail = format!(
                "block numbered {position} where {} was due",
                sim_node.next_position
            );
            self.checker
                .report(ViolationKind::Sequence, node, self.now_ms, detail);
            return;
        }
        sim_node.next_position += 1;
        if let Some(known) = sim_node.block_digests.get(position) {
            // A restored node re-emits what it output before the crash: it must match.
            if *known != digest {
                let detail = format!(
                    "restored node re-emitted {} at {position}, unlike the block it had",
                    block.observation_hash
                );
                self.checker
                    .report(ViolationKind::Sequence, node, self.now_ms, detail);
            }
            return;
        }
        sim_node.blocks.push(block.observation_hash);
        sim_node.block_digests.push(digest);
        self.trace.update(&(node as u64).to_le_bytes());
        self.trace.update(&digest);
        if let Some(lines) = &mut self.trace_lines {
            lines.push(format!(
                "{:>8} ms  node {node} block {} {}",
                self.now_ms, block.sequence, block.observation_hash
            ));
        }
        let newly_agreed = self.checker.agreed().len() == position;
        self.checker
            .on_block(node, position, block, digest, self.now_ms);
        if newly_agreed {
            if let Some(proposal) = self.proposals.get(&block.observation_hash) {
                self.latencies_ms.push(self.now_ms - proposal.made_at_ms);
            }
        }
    }

    /// Honest `node` found that `offender` forked: a violation if the offender is honest.
    fn on_evidence(&mut self, node: usize, offender: PeerId) {
        let Some(offender) = self.ids.iter().position(|id| *id == offender) else {
            return;
        };
        if !self.nodes[node].accused.insert(offender) {
            return;
        }
        self.stats.evidence += 1;
        if self.nodes[offender].is_honest() {
            let detail = format!("honest node {offender} forked its chain");
            self.checker
                .report(ViolationKind::HonestFork, node, self.now_ms, detail);
        }
    }

    /// Group commit: the node's unsynced log records become durable, and its events in them
    /// are acknowledged (from now on they may be sent).
    fn on_log_sync(&mut self, node: usize) {
        self.schedule(self.now_ms + self.log_sync_interval_ms, Item::LogSync(node));
        let sim_node = &mut self.nodes[node];
        let Some(consensus) = sim_node.consensus.as_mut() else {
            return;
        };
        sim_node.durable_log.append(&mut sim_node.unsynced_log);
        if let Some(latest) = sim_node.unsynced_own.pop() {
            consensus.handle_persisted(latest.header.index);
            sim_node.latest_own = Some(latest);
            sim_node.unsynced_own.clear();
            // Blocks that waited for these events to be durable are out now.
            self.drain(node);
        }
    }

    fn restart(&mut self, node: usize) {
        if self.nodes[node].consensus.is_some() {
            return;
        }
        *self.stats.faults.entry("restart").or_default() += 1;
        self.note(format!("restart node {node}"));
        let config = self.config.clone();
        let sim_node = &mut self.nodes[node];
        let log = sim_node.durable_log.clone();
        match Consensus::restore(config, sim_node.key.clone(), &self.ids, log, self.now_ms) {
            Ok(consensus) => {
                sim_node.consensus = Some(consensus);
                sim_node.next_position = 0;
            }
            Err(error) => {
                let detail = format!("restore failed: {error}");
                self.checker
                    .report(ViolationKind::Restore, node, self.now_ms, detail);
                return;
            }
        }
        self.drain(node);
        // The client retries what it proposed through this node and has not seen agreed.
        let retries: Vec<Observation> = self
            .proposals
            .iter()
            .filter(|(hash, proposal)| proposal.node == node && !self.checker.is_agreed(hash))
            .map(|(_, proposal)| proposal.observation.clone())
            .collect();
        if let Some(consensus) = self.nodes[node].consensus.as_mut() {
            for observation in retries {
                let _ = consensus.vote_for(observation);
            }
        }
    }

    /// Every honest proposal agreed, and every honest node holding all of them.
    fn all_agreed(&self) -> bool {
        let mut needed = 0;
        for hash in self.proposals.keys() {
            match self.checker.position(hash) {
                Some(position) => needed = needed.max(position + 1),
                None => return false,
            }
        }
        self.nodes
            .iter()
            .filter(|node| node.is_honest())
            // What the node has output since its last restart, not what it held before.
            .all(|node| node.consensus.is_some() && node.next_position >= needed)
    }

    fn liveness_detail(&self, bound_ms: u64) -> String {
        let missing: Vec<&Proposal> = self
            .proposals
            .iter()
            .filter(|(hash, _)| !self.checker.is_agreed(hash))
            .map(|(_, proposal)| proposal)
            .collect();
        let oldest = missing.iter().map(|proposal| proposal.made_at_ms).min();
        let lengths: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, node)| node.is_honest())
            .map(|(index, node)| format!("node {index}: {}", node.next_position))
            .collect();
        format!(
            "{} of {} honest proposals not agreed {bound_ms} ms after the last fault healed \
             (oldest made at {oldest:?} ms); agreed {}; blocks per honest node: {}",
            missing.len(),
            self.proposals.len(),
            self.checker.agreed().len(),
            lengths.join(", ")
        )
    }

    fn most_lagging_honest(&self) -> usize {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, node)| node.is_honest())
            .min_by_key(|(_, node)| node.next_position)
            .map_or(0, |(index, _)| index)
    }
}

/// What every honest node must agree on about a block: its observation, position, round,
/// timestamp, and who voted in which event.
fn block_digest(block: &Block) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&block.sequence.to_le_bytes());
    hasher.update(&block.observation_hash.0);
    hasher.update(&block.round_received.to_le_bytes());
    hasher.update(&block.timestamp_ms.to_le_bytes());
    for vote in &block.proof {
        hasher.update(&vote.event.header.hash().0);
    }
    *hasher.finalize().as_bytes()
}
