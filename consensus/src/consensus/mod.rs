//! The sans-IO state machine of one member in one group. This module keeps the `Consensus`
//! value, its construction, the inputs that vote and gossip out, and the outputs; the rest is
//! one child module per concern, each with its own `impl Consensus` block:
//!
//! - `receive`: answering sync requests, inserting and checking what peers send, forks;
//! - `create`: our own events and the votes they carry;
//! - `decide`: fame, order and blocks as events arrive, stale slots, pruning;
//! - `aging`: when rounds were decided, so pruning waits `Config::prune_min_age_ms`;
//! - `restore`: restarting from the replay log.

mod aging;
mod create;
mod decide;
mod pace;
mod push;
mod receive;
mod restore;

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use rand::RngCore;

use crate::blocks::{Block, Tallies};
use crate::config::{Config, OBSERVATION_BYTES_MAX};
use crate::error::{SetupError, VoteError};
use crate::event::{Observation, SignedEvent, Vote};
use crate::evidence::ForkEvidence;
use crate::fame::Fame;
use crate::graph::{EventNode, Graph, Slot};
use crate::ids::{EventHash, HashMapPrehashed, HashSetPrehashed, ObservationHash, PeerId};
use crate::log::LogRecord;
use crate::order::Order;
use crate::sync::{Push, SyncRequest, Transmit};

/// One member's consensus on one group: a gossip graph, virtual voting on it, and the blocks
/// it yields. It does no IO, reads no clock and draws no randomness of its own.
///
/// # Call order
///
/// 1. `Consensus::new(config, key, members, now_ms)` creates the member's first event.
/// 2. Drive it with inputs, in any order:
///    - `vote_for(observation)` queues a vote; it rides in our next event.
///    - `tick(now_ms, rng)` emits the timer's sync requests: every `gossip_interval_ms`
///      while anything moves, slowing to `idle_gossip_interval_ms` when nothing does. Work
///      (a vote, new events, a peer ahead of us) queues a sync request at once, from any
///      input (`pace.rs`): drain `poll_transmit` after every input, not only after ticks.
///    - `handle_sync_request(from, request)` answers a peer (the graph does not change).
///    - `handle_sync_response(now_ms, from, response)` inserts what a peer sent, runs the
///      virtual voting and may create a new event of ours.
/// 3. After every input, drain the outputs:
///    - `poll_unpersisted()`: our own new events. Make each durable, then call
///      `handle_persisted(index)`. Our events are never served to peers before that, so a
///      crash cannot make us fork our own chain. (With `Config::log_records`, "durable"
///      means: its log record, and every record before it, is durable.)
///    - `poll_transmit()`: sync requests to send. Deliver the answer to
///      `handle_sync_response`; a lost one is simply forgotten.
///    - `poll_push()`: our new events for a peer that did not ask (`push.rs`); deliver like
///      a sync response.
///    - `poll_block()`: agreed blocks, in order, each once the events of ours it may rest on
///      are durable. Never dropped: drain them (also after `handle_persisted`).
///    - `poll_evidence()`: proofs that a member forked (we also vote to accuse it).
///    - `poll_observation()`: observations others introduced, so the caller can vote too.
///    - `poll_log_record()` (with `Config::log_records`): what changed the graph. Append each
///      record to a durable log, in order; a record holding our new event must be durable
///      before `handle_persisted` for that event. After a crash,
///      `Consensus::restore(config, key, members, log, now_ms)` replays the log and re-emits
///      the blocks from sequence 0 (the caller skips those it already handled).
pub struct Consensus {
    config: Config,
    key: SigningKey,
    me: usize,
    members: Vec<PeerId>,
    /// The members' keys, decompressed once, in member order.
    member_keys: Vec<ed25519_dalek::VerifyingKey>,
    member_index: HashMapPrehashed<PeerId, usize>,
    graph: Graph,
    fame: Fame,
    order: Order,
    tallies: Tallies,
    /// Votes waiting for our next event, oldest first.
    pending_votes: VecDeque<PendingVote>,
    pending_vote_hashes: HashSetPrehashed<ObservationHash>,
    /// For observations carried in full by some event in the graph: the first carrier. Lets
    /// us vote by hash when the carrier is among our new event's ancestors.
    carriers: HashMapPrehashed<ObservationHash, Slot>,
    /// A later event carrying an already-carried observation in full (a re-vote after the
    /// first carrier went stale): promoted when the carrier goes stale.
    spare_carriers: HashMapPrehashed<ObservationHash, Slot>,
    /// Events in the graph that carry votes and are not ordered yet: while any exist, we keep
    /// creating events so the rounds that order them get built.
    unordered_vote_events: HashSet<Slot>,
    /// Parents that peers' events named but we lack, to ask for by hash (oldest first).
    wanted: VecDeque<EventHash>,
    /// Index of our highest durable event; higher ones are not served to peers.
    durable_index: Option<u64>,
    unpersisted: VecDeque<Arc<SignedEvent>>,
    transmits: VecDeque<Transmit>,
    pushes: VecDeque<Push>,
    /// Agreed blocks, each with the index of our latest event when it was decided: it is
    /// output only once that event is durable (see `poll_block`).
    blocks: VecDeque<(Block, Option<u64>)>,
    evidence: VecDeque<ForkEvidence>,
    observations: VecDeque<(ObservationHash, Observation)>,
    log_records: VecDeque<LogRecord>,
    /// True while `restore` replays the log: observations are announced once, at the end.
    replaying: bool,
    accused: HashSet<usize>,
    pace: pace::Pace,
    push: push::PushState,
    /// When recent rounds were decided: pruning waits until they are old enough.
    decided_at: aging::DecidedAt,
    /// The latest consensus timestamp of an ordered event: the clock pruning goes by.
    consensus_time_ms: u64,
    /// Members with an event in the order: pruning waits longer while one has none.
    ordered_creators: aging::OrderedCreators,
    stats: Stats,
}

/// A vote waiting for our next event.
enum PendingVote {
    /// We hold the observation (the caller gave it to us).
    Full(ObservationHash, Observation),
    /// An observation some event in our graph carries.
    Known(ObservationHash),
    /// A vote by hash sent whether or not we know the observation: only Byzantine test
    /// members do this.
    #[cfg(feature = "byzantine")]
    Unseen(ObservationHash),
}

impl PendingVote {
    fn hash(&self) -> ObservationHash {
        match self {
            Self::Full(hash, _) | Self::Known(hash) => *hash,
            #[cfg(feature = "byzantine")]
            Self::Unseen(hash) => *hash,
        }
    }
}

/// The consensus view of one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventInfo {
    /// Its creator.
    pub creator: PeerId,
    /// Its index in the creator's chain.
    pub index: u64,
    /// Its round created.
    pub round: u64,
    /// Whether it is its creator's first event in its round.
    pub is_witness: bool,
    /// For a witness, its fame once decided.
    pub famous: Option<bool>,
    /// The round that received it, once ordered.
    pub round_received: Option<u64>,
    /// Creators with a fork among the event's ancestors (it sees none of their events).
    pub sees_fork_by: Vec<PeerId>,
}

/// Counters and gauges, for benchmarks, metrics and the memory-bound test.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Events currently held in memory.
    pub events_held: usize,
    /// Pruned events kept one more window for what later events derive from them (`Graph`,
    /// "retired"): in memory too.
    pub events_retired: usize,
    /// Events inserted since start (ours included).
    pub events_inserted: u64,
    /// Events of ours created since start.
    pub events_created: u64,
    /// Events pruned since start.
    pub events_pruned: u64,
    /// Events rejected since start.
    pub events_rejected: u64,
    /// Events declared stale (never ordered) since start.
    pub events_stale: u64,
    /// Events inserted whose other-parent we had already pruned (retired, `Graph`): a
    /// member that had not pruned it yet built on it.
    pub events_on_pruned_parents: u64,
    /// Blocks produced since start.
    pub blocks: u64,
    /// Highest round seen.
    pub max_round: u64,
    /// Lowest round whose fame is undecided.
    pub undecided_round: u64,
    /// Events waiting for a round that receives them.
    pub events_unordered: usize,
    /// Observations with votes but no block yet.
    pub observations_pending: usize,
    /// Decided observation hashes remembered for de-duplication.
    pub observations_remembered: usize,
    /// Own votes waiting for an event.
    pub votes_pending: usize,
    /// Fame votes held by open elections.
    pub fame_votes_held: usize,
    /// Syncs on work answered since start (`pace.rs`: one awaited at a time).
    pub work_syncs_answered: u64,
    /// Their round trips in total, ms by the caller's clock, from the request's creation to
    /// the answer's insertion: over `work_syncs_answered`, the mean round trip as this
    /// member sees it (thread hops, transport and the peer's engine included).
    pub work_sync_ms_total: u64,
    /// Pushes of our new events sent since start (`Config::push_new_events`).
    pub pushes_sent: u64,
}

impl Consensus {
    /// Creates the member `key` of a group with `members` (order is irrelevant; it is sorted),
    /// and its first event at `now_ms`.
    pub fn new(
        config: Config,
        key: SigningKey,
        members: &[PeerId],
        now_ms: u64,
    ) -> Result<Self, SetupError> {
        let mut consensus = Self::without_events(config, key, members, now_ms)?;
        consensus.create_event(now_ms, None, Vec::new());
        Ok(consensus)
    }

    /// Our member id.
    pub fn our_id(&self) -> PeerId {
        self.members[self.me]
    }

    /// The group's members, sorted.
    pub fn members(&self) -> &[PeerId] {
        &self.members
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Queues our vote for `observation`; it rides in our next event. Voting twice for the
    /// same observation while the first vote is still queued is a no-op.
    pub fn vote_for(&mut self, observation: Observation) -> Result<ObservationHash, VoteError> {
        if observation.payload_len() > OBSERVATION_BYTES_MAX {
            return Err(VoteError::TooLarge {
                bytes: observation.payload_len(),
                max: OBSERVATION_BYTES_MAX,
            });
        }
        if self.pending_votes.len() >= self.config.votes_pending_max {
            return Err(VoteError::Backpressure(self.pending_votes.len()));
        }
        let hash = observation.hash();
        if self.pending_vote_hashes.insert(hash) {
            self.pending_votes
                .push_back(PendingVote::Full(hash, observation));
            self.pace_new_vote();
        }
        Ok(hash)
    }

    /// Queues our vote for an observation that an event in our graph carries (one that
    /// `poll_observation` reported): the cheap way to second another member's proposal, since
    /// the vote usually goes out by hash.
    pub fn vote_for_hash(&mut self, hash: ObservationHash) -> Result<(), VoteError> {
        if self.tallies.is_decided(&hash) {
            return Ok(());
        }
        if !self.carriers.contains_key(&hash) {
            return Err(VoteError::UnknownObservation(hash));
        }
        if self.pending_votes.len() >= self.config.votes_pending_max {
            return Err(VoteError::Backpressure(self.pending_votes.len()));
        }
        if self.pending_vote_hashes.insert(hash) {
            self.pending_votes.push_back(PendingVote::Known(hash));
            self.pace_new_vote();
        }
        Ok(())
    }

    /// Our vector clock: what to send a peer to learn what we lack.
    pub fn sync_request(&self) -> SyncRequest {
        let known = (0..self.members.len())
            .map(|creator| {
                self.graph
                    .head(creator)
                    .map_or(0, |slot| self.graph.get(slot).index + 1)
            })
            .collect();
        SyncRequest {
            known,
            wanted: self.wanted.iter().copied().collect(),
        }
    }

    /// A random other member to gossip with, skipping those that lag beyond the window: they
    /// cannot insert what we send nor send what we can insert, so gossip with them is work
    /// for nothing (their way back is a state transfer). If every other member lags, any.
    fn random_peer(&self, rng: &mut impl RngCore) -> usize {
        let lagging = |index: usize| self.index_lags_beyond_window(index);
        let candidates = (0..self.members.len())
            .filter(|&index| index != self.me && !lagging(index))
            .count();
        if candidates == 0 {
            let others = self.members.len() as u64 - 1;
            let pick = (rng.next_u64() % others) as usize;
            return if pick >= self.me { pick + 1 } else { pick };
        }
        let pick = (rng.next_u64() % candidates as u64) as usize;
        (0..self.members.len())
            .filter(|&index| index != self.me && !lagging(index))
            .nth(pick)
            .unwrap_or_else(|| unreachable!("pick is below the candidate count"))
    }

    /// Whether `member` has fallen behind by more than the prune window, as far as our graph
    /// tells: we pruned something, and its latest event we hold (kept only because it is its
    /// latest) is of a round below what we keep, or we hold none. Such a member cannot catch
    /// up by gossip: the ancestry of our recent events is gone here, and its next events
    /// would build on parents we dropped. Local evidence (members prune at different times),
    /// for the caller's own decisions, such as voting to give the member a state transfer.
    pub fn lags_beyond_window(&self, member: &PeerId) -> bool {
        self.member_index
            .get(member)
            .is_some_and(|&index| self.index_lags_beyond_window(index))
    }

    /// `lags_beyond_window` by member index.
    fn index_lags_beyond_window(&self, index: usize) -> bool {
        let horizon = self.graph.pruned_below_round;
        if horizon == 0 {
            return false;
        }
        self.graph
            .head(index)
            .is_none_or(|slot| self.graph.get(slot).round < horizon)
    }

    /// Whether we hold any event created by `member` (each creator's latest event is kept
    /// through pruning, so this stays true once it took part).
    pub fn holds_events_of(&self, member: &PeerId) -> bool {
        self.member_index
            .get(member)
            .is_some_and(|&index| self.graph.head(index).is_some())
    }

    /// The index of `member`'s latest event we hold (`None` if none, or not a member): the
    /// caller watches it to tell a silent member from one that takes part.
    pub fn latest_index_of(&self, member: &PeerId) -> Option<u64> {
        let &index = self.member_index.get(member)?;
        let slot = self.graph.head(index)?;
        Some(self.graph.get(slot).index)
    }

    /// Marks our own events up to `index` durable: from now on they may be sent to peers.
    pub fn handle_persisted(&mut self, index: u64) {
        let before = self.durable_index;
        self.durable_index = Some(
            self.durable_index
                .map_or(index, |durable| durable.max(index)),
        );
        if self.durable_index != before {
            self.push_new_events();
        }
    }

    /// Our next own event to make durable (then call `handle_persisted`).
    pub fn poll_unpersisted(&mut self) -> Option<Arc<SignedEvent>> {
        self.unpersisted.pop_front()
    }

    /// The next sync request to deliver.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next push of our new events to deliver (`Config::push_new_events`).
    pub fn poll_push(&mut self) -> Option<Push> {
        self.pushes.pop_front()
    }

    /// The next record for the replay log (only with `Config::log_records`).
    pub fn poll_log_record(&mut self) -> Option<LogRecord> {
        self.log_records.pop_front()
    }

    /// Byzantine test members only: queues a vote by hash for `hash` whether or not any event
    /// carries it (honest members never vote for what they have not seen).
    #[cfg(feature = "byzantine")]
    pub fn vote_for_unseen(&mut self, hash: ObservationHash) {
        if self.pending_vote_hashes.insert(hash) {
            self.pending_votes.push_back(PendingVote::Unseen(hash));
        }
    }

    /// The next agreed block, in order, once every event of ours it may rest on is durable
    /// (acknowledged with `handle_persisted`).
    pub fn poll_block(&mut self) -> Option<Block> {
        // A decision may rest on our latest events; until they are durable a crash could
        // replace them by others at the same indices (they were never sent, so peers would
        // not see a fork), and the decision could differ after the restart. So a block waits
        // until every event of ours it may rest on is durable.
        let (_, own_head) = self.blocks.front()?;
        let durable = own_head.is_none_or(|head| self.durable_index.is_some_and(|d| d >= head));
        if !durable {
            return None;
        }
        self.blocks.pop_front().map(|(block, _)| block)
    }

    /// The next piece of fork evidence found.
    pub fn poll_evidence(&mut self) -> Option<ForkEvidence> {
        self.evidence.pop_front()
    }

    /// The next observation another member introduced (carried in full for the first time),
    /// with its hash for `vote_for_hash`.
    pub fn poll_observation(&mut self) -> Option<(ObservationHash, Observation)> {
        self.observations.pop_front()
    }

    /// True when nothing is left to agree on: no pending votes, no unordered votes.
    pub fn is_quiet(&self) -> bool {
        !self.wants_new_event() && self.unpersisted.is_empty()
    }

    /// Current statistics.
    pub fn stats(&self) -> Stats {
        Stats {
            events_held: self.graph.event_count(),
            events_retired: self.graph.retired_count(),
            max_round: self.graph.max_round(),
            undecided_round: self.fame.next_round,
            events_unordered: self.order.pending_count(),
            observations_pending: self.tallies.pending_count(),
            observations_remembered: self.tallies.decided_remembered(),
            votes_pending: self.pending_votes.len(),
            fame_votes_held: self.fame.votes_held(),
            ..self.stats.clone()
        }
    }

    /// What the graph says about one event (for debugging, tests and UIs).
    pub fn event_info(&self, hash: &EventHash) -> Option<EventInfo> {
        let node = self.graph.get(self.graph.slot_of(hash)?);
        Some(EventInfo {
            creator: self.members[node.creator],
            index: node.index,
            round: node.round,
            is_witness: node.is_witness,
            famous: node.famous,
            round_received: node.round_received,
            sees_fork_by: node
                .fork_seen
                .iter()
                .flat_map(|forks| {
                    forks
                        .iter()
                        .enumerate()
                        .filter(|(_, seen)| **seen)
                        .map(|(creator, _)| self.members[creator])
                })
                .collect(),
        })
    }

    /// Our own event at `index`, if still held (for recovery and tests).
    pub fn own_event(&self, index: u64) -> Option<Arc<SignedEvent>> {
        let head = self.graph.head(self.me)?;
        let mut node = self.graph.node(head)?;
        while node.index > index {
            node = self.graph.node(node.self_parent?)?;
        }
        (node.index == index && !node.retired).then(|| Arc::clone(&node.event))
    }

    /// The graph in Graphviz dot, for the last `rounds` rounds (all held rounds if `None`).
    pub fn to_dot(&self, rounds: Option<u64>) -> String {
        crate::dot::render(&self.graph, &self.members, rounds)
    }
}

/// The observation `carrier` carries in full under `hash`, if any.
fn carried_observation(carrier: &EventNode, hash: &ObservationHash) -> Option<Observation> {
    carrier.event.votes.iter().find_map(|vote| match vote {
        Vote::Full(observation) if observation.hash() == *hash => Some(observation.clone()),
        _ => None,
    })
}
