//! The simulator: real `Consensus` members on virtual time, in one thread, with a lossy
//! network, crashes, slow nodes and Byzantine members, and checkers on every block.
//!
//! Everything random draws from ChaCha streams derived from one seed, every queue is ordered
//! by (virtual time, insertion number), and no hash map is iterated, so one seed reproduces a
//! run byte for byte; `Sim::trace_hash` fingerprints it.

mod world;

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use std::time::Duration;

use chorus_consensus::{
    BlockMode, Config, Consensus, LogRecord, Observation, ObservationHash, PeerId, SignedEvent,
};
use ed25519_dalek::SigningKey;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::byzantine::Behaviour;
use crate::checker::{Checker, Violation, ViolationKind};
use crate::network::{Network, NetworkConfig};

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
    /// A member that has output nothing yet, running `consensus`.
    fn new(key: SigningKey, behaviour: Behaviour, consensus: Consensus) -> Self {
        SimNode {
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
        }
    }

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
