//! The sans-IO state machine of one member in one group.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use rand::RngCore;
use tracing::{debug, warn};

use crate::blocks::{Block, Tallies};
use crate::config::{
    Config, EVENT_BYTES_MAX, MEMBERS_MAX, OBSERVATION_BYTES_MAX, SYNC_BYTES_MAX,
    WANTED_PER_SYNC_MAX,
};
use crate::error::{EventError, SetupError, SyncError, VoteError};
use crate::event::{CheckedBody, Observation, SignedEvent, Vote, verify_signatures};
use crate::evidence::ForkEvidence;
use crate::fame::Fame;
use crate::graph::{EventNode, Graph, Slot};
use crate::ids::{EventHash, HashMapPrehashed, HashSetPrehashed, ObservationHash, PeerId};
use crate::log::LogRecord;
use crate::order::Order;
use crate::sync::{SyncReport, SyncRequest, SyncResponse, Transmit};

/// One member's consensus on one group: a gossip graph, virtual voting on it, and the blocks
/// it yields. It does no IO, reads no clock and draws no randomness of its own.
///
/// # Call order
///
/// 1. `Consensus::new(config, key, members, now_ms)` creates the member's first event.
/// 2. Drive it with inputs, in any order:
///    - `vote_for(observation)` queues a vote; it rides in our next event.
///    - `tick(now_ms, rng)` emits a sync request every `gossip_interval_ms`.
///    - `handle_sync_request(from, request)` answers a peer (a pure read).
///    - `handle_sync_response(now_ms, from, response)` inserts what a peer sent, runs the
///      virtual voting and may create a new event of ours.
/// 3. After every input, drain the outputs:
///    - `poll_unpersisted()`: our own new events. Make each durable, then call
///      `handle_persisted(index)`. Our events are never served to peers before that, so a
///      crash cannot make us fork our own chain. (With `Config::log_records`, "durable"
///      means: its log record, and every record before it, is durable.)
///    - `poll_transmit()`: sync requests to send. Deliver the answer to
///      `handle_sync_response`; a lost one is simply forgotten.
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
    /// Agreed blocks, each with the index of our latest event when it was decided: it is
    /// output only once that event is durable (see `poll_block`).
    blocks: VecDeque<(Block, Option<u64>)>,
    evidence: VecDeque<ForkEvidence>,
    observations: VecDeque<(ObservationHash, Observation)>,
    log_records: VecDeque<LogRecord>,
    /// True while `restore` replays the log: observations are announced once, at the end.
    replaying: bool,
    accused: HashSet<usize>,
    next_gossip_ms: u64,
    stats: Stats,
}

/// Encoded size of a sync response without its events: the version byte and the length of
/// the event list.
const RESPONSE_OVERHEAD_BYTES: usize = 1 + 8;

/// Most self-ancestors sent along with one wanted event.
const WANTED_CHAIN_DEPTH_MAX: usize = 64;

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

    /// Rebuilds the member `key` from its replay log (the records `poll_log_record` gave,
    /// oldest first): every record is checked and replayed as it happened, so the member
    /// continues its own chain after its last durable event and never forks it. If the log
    /// holds no event of ours, our first event is created at `now_ms`.
    ///
    /// The blocks agreed before the crash are output again from sequence 0, in the same
    /// order; votes that were queued but in no durable event are lost (vote again). A record
    /// that does not replay is `SetupError::CorruptLog`.
    pub fn restore(
        config: Config,
        key: SigningKey,
        members: &[PeerId],
        log: impl IntoIterator<Item = LogRecord>,
        now_ms: u64,
    ) -> Result<Self, SetupError> {
        if !config.log_records {
            // Without a log, a second crash would replay this stale one and sign again at
            // indices already sent: a fork.
            return Err(SetupError::Config(
                "restore needs log_records: a restored member must keep logging".into(),
            ));
        }
        let mut consensus = Self::without_events(config, key, members, now_ms)?;
        consensus.replaying = true;
        for (position, record) in log.into_iter().enumerate() {
            consensus
                .replay(record)
                .map_err(|reason| SetupError::CorruptLog {
                    record: position,
                    reason,
                })?;
        }
        consensus.replaying = false;
        consensus.announce_undecided();
        if consensus.graph.head(consensus.me).is_none() {
            consensus.create_event(now_ms, None, Vec::new());
        }
        Ok(consensus)
    }

    /// Replays one log record: the same insertions and consensus steps as when it was
    /// written.
    fn replay(&mut self, record: LogRecord) -> Result<(), String> {
        let mut new_witness = false;
        for event in record.received {
            let (creator, body) = self.check_logged(&event)?;
            if creator == self.me {
                return Err("our own event logged as received".into());
            }
            new_witness |= self
                .insert(event, creator, body)
                .map_err(|error| error.to_string())?;
        }
        if new_witness {
            self.advance_consensus();
        }
        if let Some(event) = record.created {
            let (creator, body) = self.check_logged(&event)?;
            if creator != self.me {
                return Err(format!("event of {} logged as ours", event.header.creator));
            }
            // Our events in the log form one chain; anything else would be a fork we serve.
            let head = self.graph.head(self.me).map(|slot| {
                let node = self.graph.get(slot);
                (node.index, node.hash)
            });
            let extends = match head {
                None => event.header.index == 0 && event.header.self_parent.is_none(),
                Some((index, hash)) => {
                    event.header.index == index + 1 && event.header.self_parent == Some(hash)
                }
            };
            if !extends {
                return Err(format!(
                    "our event at index {} does not extend our chain (head {:?})",
                    event.header.index,
                    head.map(|(index, _)| index)
                ));
            }
            // Its votes were taken from the queue when it was created.
            let sent: HashSetPrehashed<ObservationHash> = body
                .votes_tree
                .leaves()
                .iter()
                .map(|leaf| ObservationHash(*leaf))
                .collect();
            self.pending_votes
                .retain(|vote| !sent.contains(&vote.hash()));
            self.pending_vote_hashes.retain(|hash| !sent.contains(hash));
            let index = event.header.index;
            let is_witness = self
                .insert(event, self.me, body)
                .map_err(|error| error.to_string())?;
            self.stats.events_created += 1;
            self.durable_index = Some(index);
            if is_witness {
                self.advance_consensus();
            }
        }
        Ok(())
    }

    /// After a replay: announces the observations others carry that are not decided yet, in
    /// graph order, so the caller can second them again. (During the replay nothing is
    /// announced: the queue would fill with long-decided history and drop the live part.)
    fn announce_undecided(&mut self) {
        let mut carried: Vec<(Slot, ObservationHash)> = self
            .carriers
            .iter()
            .map(|(hash, slot)| (*slot, *hash))
            .collect();
        carried.sort_unstable();
        for (slot, hash) in carried {
            let Some(node) = self.graph.node(slot) else {
                continue;
            };
            if self.observations.len() >= self.config.output_queue_max {
                break;
            }
            if node.creator == self.me {
                continue;
            }
            if let Some(observation) = carried_observation(node, &hash) {
                self.observations.push_back((hash, observation));
            }
        }
    }

    /// The receipt checks, for an event read back from the log.
    fn check_logged(&self, event: &SignedEvent) -> Result<(usize, CheckedBody), String> {
        let hash = event.header.hash();
        let (creator, body) = self
            .check_received(event, hash)
            .map_err(|error| error.to_string())?
            .ok_or_else(|| format!("event {hash} logged twice"))?;
        if !verify_signatures(&[(event, body.hash, &self.member_keys[creator])])[0] {
            return Err(EventError::BadSignature(body.hash).to_string());
        }
        Ok((creator, body))
    }

    /// A member with an empty graph.
    fn without_events(
        config: Config,
        key: SigningKey,
        members: &[PeerId],
        now_ms: u64,
    ) -> Result<Self, SetupError> {
        config.validate().map_err(SetupError::Config)?;
        let mut members = members.to_vec();
        members.sort_unstable();
        if members.is_empty() || members.len() > MEMBERS_MAX {
            return Err(SetupError::Members(format!(
                "{} members; expected 1..={MEMBERS_MAX}",
                members.len()
            )));
        }
        if members.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err(SetupError::Members("duplicate member".into()));
        }
        let mut member_keys = Vec::with_capacity(members.len());
        for member in &members {
            match ed25519_dalek::VerifyingKey::from_bytes(&member.0) {
                Ok(key) if !key.is_weak() => member_keys.push(key),
                _ => {
                    return Err(SetupError::Members(format!(
                        "{member} is not a valid ed25519 key"
                    )));
                }
            }
        }
        let our_id = PeerId(key.verifying_key().to_bytes());
        let me = members
            .binary_search(&our_id)
            .map_err(|_| SetupError::NotAMember(our_id))?;
        let member_index = members
            .iter()
            .enumerate()
            .map(|(index, member)| (*member, index))
            .collect();
        let member_count = members.len();
        Ok(Self {
            graph: Graph::new(member_count),
            fame: Fame::new(config.coin_round_period),
            order: Order::new(),
            tallies: Tallies::new(
                config.block_mode,
                member_count,
                config.observation_window_rounds,
                config.pending_observations_per_member_max,
            ),
            config,
            key,
            me,
            members,
            member_keys,
            member_index,
            pending_votes: VecDeque::new(),
            pending_vote_hashes: HashSetPrehashed::default(),
            carriers: HashMapPrehashed::default(),
            spare_carriers: HashMapPrehashed::default(),
            unordered_vote_events: HashSet::new(),
            wanted: VecDeque::new(),
            durable_index: None,
            unpersisted: VecDeque::new(),
            transmits: VecDeque::new(),
            blocks: VecDeque::new(),
            evidence: VecDeque::new(),
            observations: VecDeque::new(),
            log_records: VecDeque::new(),
            replaying: false,
            accused: HashSet::new(),
            next_gossip_ms: now_ms,
            stats: Stats::default(),
        })
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

    /// Time has passed: every `gossip_interval_ms`, queue a sync request to a random peer.
    pub fn tick(&mut self, now_ms: u64, rng: &mut impl RngCore) {
        if now_ms < self.next_gossip_ms || self.members.len() < 2 {
            return;
        }
        self.next_gossip_ms = now_ms.saturating_add(self.config.gossip_interval_ms);
        let peer = self.random_peer(rng);
        if self.transmits.len() < self.config.output_queue_max {
            self.transmits.push_back(Transmit {
                to: self.members[peer],
                request: self.sync_request(),
            });
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

    /// Answers a peer's sync request with the events it lacks, parents first, at most
    /// `events_per_sync_max`. A pure read: nothing changes.
    pub fn handle_sync_request(
        &self,
        from: &PeerId,
        request: &SyncRequest,
    ) -> Result<SyncResponse, SyncError> {
        if !self.member_index.contains_key(from) {
            return Err(SyncError::NotAMember(*from));
        }
        if request.known.len() != self.members.len() {
            return Err(SyncError::WrongClockLength {
                got: request.known.len(),
                expected: self.members.len(),
            });
        }
        if request.wanted.len() > WANTED_PER_SYNC_MAX {
            return Err(SyncError::TooManyWanted {
                got: request.wanted.len(),
                max: WANTED_PER_SYNC_MAX,
            });
        }
        let limit = self.config.events_per_sync_max;
        let mut chosen: HashSetPrehashed<EventHash> = HashSetPrehashed::default();
        let mut slots: Vec<Slot> = Vec::new();
        // A wanted event comes with those of its self-ancestors the requester may lack (a
        // missing fork branch is usually more than one level deep). An ancestor below both
        // the requester's next index for its creator and the creator's first fork is on the
        // one chain the requester holds: the walk stops there, so held ancestors never crowd
        // out missing events. (A pruned ancestor also ends the walk.)
        for hash in &request.wanted {
            let mut next = self.graph.slot_of(hash);
            let mut depth = 0;
            while let Some((slot, node)) = next
                .filter(|_| depth < WANTED_CHAIN_DEPTH_MAX)
                .and_then(|slot| Some((slot, self.graph.node(slot)?)))
            {
                let held = node.index < request.known[node.creator]
                    && node.index < self.graph.first_fork_index(node.creator);
                if depth > 0 && held {
                    break;
                }
                if chosen.insert(node.hash) {
                    slots.push(slot);
                }
                depth += 1;
                next = node.self_parent;
            }
        }
        for (creator, &known) in request.known.iter().enumerate() {
            for slot in self.graph.slots_of_creator_from(creator, known, limit) {
                let Some(node) = self.graph.node(slot) else {
                    continue;
                };
                let durable = self
                    .durable_index
                    .is_some_and(|durable| node.index <= durable);
                if (creator != self.me || durable) && chosen.insert(node.hash) {
                    slots.push(slot);
                }
            }
        }
        // Slots are in insertion order, which is topological: sorting and cutting keeps
        // every sent event's missing parents before it or already held (see ARCHITECTURE.md,
        // "Sync"), and the oldest missing events go first, so every answer lets the
        // requester insert something. The cut is by count and by bytes, so the answer always
        // fits one message (an answer we could not encode would leave the requester asking
        // for it forever); every event fits, since EVENT_BYTES_MAX is far below
        // SYNC_BYTES_MAX.
        slots.sort_unstable();
        let mut bytes = RESPONSE_OVERHEAD_BYTES;
        let mut events = Vec::new();
        for slot in slots {
            let event = &self.graph.get(slot).event;
            bytes += event.encoded_len_max();
            if events.len() >= limit || bytes > SYNC_BYTES_MAX {
                break;
            }
            events.push(Arc::clone(event));
        }
        Ok(SyncResponse { events })
    }

    /// Inserts the events a peer sent (checking each), runs the virtual voting, and, if there
    /// is anything to agree on, creates our next event with the peer's latest as other-parent.
    pub fn handle_sync_response(
        &mut self,
        now_ms: u64,
        from: &PeerId,
        response: SyncResponse,
    ) -> Result<SyncReport, SyncError> {
        let Some(&from_index) = self.member_index.get(from) else {
            return Err(SyncError::NotAMember(*from));
        };
        if response.events.len() > self.config.events_per_sync_max {
            warn!(peer = %from, events = response.events.len(), "sync response exceeds events_per_sync_max");
            return Err(SyncError::TooManyEvents {
                got: response.events.len(),
                max: self.config.events_per_sync_max,
            });
        }
        let mut report = SyncReport::default();
        let mut checked: Vec<(Arc<SignedEvent>, usize, CheckedBody)> = Vec::new();
        // Each header is hashed once here; the checks below reuse the hash.
        let hashes: Vec<EventHash> = response
            .events
            .iter()
            .map(|event| event.header.hash())
            .collect();
        let sent: HashSetPrehashed<EventHash> = hashes.iter().copied().collect();
        for (event, hash) in response.events.into_iter().zip(hashes) {
            match self.check_received(&event, hash) {
                Ok(None) => report.duplicates += 1,
                Ok(Some((creator, body))) => checked.push((event, creator, body)),
                Err(error) => report.rejected.push(error),
            }
        }
        let items: Vec<_> = checked
            .iter()
            .map(|(event, creator, body)| (event.as_ref(), body.hash, &self.member_keys[*creator]))
            .collect();
        let valid = verify_signatures(&items);
        let mut new_witness = false;
        let mut inserted = Vec::new();
        for ((event, creator, body), signature_ok) in checked.into_iter().zip(valid) {
            if !signature_ok {
                report.rejected.push(EventError::BadSignature(body.hash));
                continue;
            }
            // A second copy in the same response (checked only after the signature, so a
            // forged copy sent first cannot shadow the genuine one).
            if self.graph.contains(&body.hash) {
                report.duplicates += 1;
                continue;
            }
            let logged = self.config.log_records.then(|| Arc::clone(&event));
            match self.insert(event, creator, body) {
                Ok(is_witness) => {
                    report.inserted += 1;
                    new_witness |= is_witness;
                    inserted.extend(logged);
                }
                Err(error) => report.rejected.push(error),
            }
        }
        for error in &report.rejected {
            self.stats.events_rejected += 1;
            // Only the roots of what is missing: a parent that was itself in the response (and
            // failed for want of its own parent) would only crowd the wanted list.
            if let EventError::UnknownParent { parent, .. } = error {
                if !sent.contains(parent) {
                    self.want(*parent);
                }
            }
            if error.is_misbehaviour() {
                warn!(peer = %from, %error, "peer sent an invalid event");
            } else {
                debug!(peer = %from, %error, "event not inserted");
            }
        }
        if new_witness {
            self.advance_consensus();
        }
        if self.wants_new_event() {
            if let Some(other_parent) = self.graph.head(from_index) {
                self.create_event(now_ms, Some(other_parent), inserted);
                report.created_event = true;
                return Ok(report);
            }
        }
        if !inserted.is_empty() {
            self.log_records.push_back(LogRecord {
                received: inserted,
                created: None,
            });
        }
        Ok(report)
    }

    /// Remembers a missing parent to ask for by hash; the oldest wish makes room.
    fn want(&mut self, hash: EventHash) {
        if self.wanted.contains(&hash) {
            return;
        }
        if self.wanted.len() >= WANTED_PER_SYNC_MAX {
            self.wanted.pop_front();
        }
        self.wanted.push_back(hash);
    }

    /// Stateless checks and membership; `Ok(None)` for an event we already hold.
    fn check_received(
        &self,
        event: &SignedEvent,
        hash: EventHash,
    ) -> Result<Option<(usize, CheckedBody)>, EventError> {
        if self.graph.contains(&hash) {
            return Ok(None);
        }
        let creator = *self
            .member_index
            .get(&event.header.creator)
            .ok_or(EventError::NotAMember(event.header.creator))?;
        if event.header.group != self.config.group {
            return Err(EventError::WrongGroup(hash));
        }
        let body = event.check_body_hashed(hash)?;
        Ok(Some((creator, body)))
    }

    /// Inserts a checked event; returns whether it is a witness.
    fn insert(
        &mut self,
        event: Arc<SignedEvent>,
        creator: usize,
        body: CheckedBody,
    ) -> Result<bool, EventError> {
        let CheckedBody { hash, votes_tree } = body;
        let has_votes = !event.votes.is_empty();
        // Observations carried in full for the first time: remember the carrier (for votes
        // by hash) and tell the caller (so it can second them).
        let mut first_carried = Vec::new();
        let mut carried_again = Vec::new();
        for (vote, leaf) in event.votes.iter().zip(votes_tree.leaves()) {
            let observation_hash = ObservationHash(*leaf);
            if let Vote::Full(observation) = vote {
                if self.tallies.is_decided(&observation_hash) {
                    continue;
                }
                if self.carriers.contains_key(&observation_hash) {
                    carried_again.push(observation_hash);
                } else {
                    first_carried.push((observation_hash, observation));
                }
            }
        }
        let tree = has_votes.then_some(votes_tree);
        let inserted = self.graph.insert(Arc::clone(&event), hash, creator, tree)?;
        let slot = inserted.slot;
        self.stats.events_inserted += 1;
        if !self.wanted.is_empty() {
            self.wanted.retain(|wanted| *wanted != hash);
        }
        if let Some(fork) = inserted.fork {
            self.on_fork(creator, fork);
        }
        for observation_hash in carried_again {
            self.spare_carriers.insert(observation_hash, slot);
        }
        for (observation_hash, observation) in first_carried {
            self.carriers.insert(observation_hash, slot);
            if creator != self.me
                && !self.replaying
                && self.observations.len() < self.config.output_queue_max
            {
                self.observations
                    .push_back((observation_hash, observation.clone()));
            }
        }
        if has_votes {
            self.unordered_vote_events.insert(slot);
        }
        self.order.add_pending(slot);
        Ok(self.graph.get(slot).is_witness)
    }

    fn on_fork(&mut self, creator: usize, fork: ForkEvidence) {
        warn!(offender = %self.members[creator], index = fork.first.header.index, "member forked its chain");
        if self.accused.insert(creator) {
            let offender = self.members[creator];
            if self.evidence.len() < self.config.output_queue_max {
                self.evidence.push_back(fork);
            }
            // Our own input: the queue bound is the only possible refusal, and an accusation
            // is worth exceeding it by one.
            let observation = Observation::Accusation { offender };
            let hash = observation.hash();
            if self.pending_vote_hashes.insert(hash) {
                self.pending_votes
                    .push_back(PendingVote::Full(hash, observation));
            }
        }
    }

    /// We create an event when we have votes to send, or when the graph holds votes that are
    /// not ordered yet (someone has to build the rounds that order them). Otherwise we stay
    /// quiet, so an idle group stops growing its graph.
    fn wants_new_event(&self) -> bool {
        !self.pending_votes.is_empty() || !self.unordered_vote_events.is_empty()
    }

    /// Creates, signs and inserts our next event; logs it after the peer's events `received`.
    fn create_event(
        &mut self,
        now_ms: u64,
        other_parent: Option<Slot>,
        received: Vec<Arc<SignedEvent>>,
    ) {
        let self_parent = self.graph.head(self.me);
        let (index, created_at_ms, self_parent_hash) =
            match self_parent.map(|slot| self.graph.get(slot)) {
                Some(parent) => (
                    parent.index + 1,
                    now_ms.max(parent.created_at_ms()),
                    Some(parent.hash),
                ),
                None => (0, now_ms, None),
            };
        let (votes, hashes) = if self_parent.is_some() {
            self.take_votes(self_parent, other_parent)
        } else {
            (Vec::new(), Vec::new())
        };
        let other_parent_hash = other_parent.map(|slot| self.graph.get(slot).hash);
        let (event, body) = SignedEvent::create_hashed(
            self.config.group,
            &self.key,
            index,
            self_parent_hash,
            other_parent_hash,
            created_at_ms,
            votes,
            hashes,
        );
        let event = Arc::new(event);
        match self.insert(Arc::clone(&event), self.me, body) {
            Ok(is_witness) => {
                self.stats.events_created += 1;
                if self.config.log_records {
                    self.log_records.push_back(LogRecord {
                        received,
                        created: Some(Arc::clone(&event)),
                    });
                }
                self.unpersisted.push_back(event);
                if is_witness {
                    self.advance_consensus();
                }
            }
            // Our own event built on our own graph cannot fail the graph checks; if it did,
            // dropping it is the safe answer (nothing was sent).
            Err(error) => {
                debug_assert!(false, "own event rejected: {error}");
                if !received.is_empty() {
                    self.log_records.push_back(LogRecord {
                        received,
                        created: None,
                    });
                }
            }
        }
    }

    /// Takes up to `votes_per_event_max` pending votes, and no more than fit an event of
    /// `EVENT_BYTES_MAX` (peers refuse larger events, so a larger one of ours would wedge our
    /// chain); votes by hash where the observation's carrier is an ancestor of the new event
    /// (so the vote is sure to count).
    fn take_votes(
        &mut self,
        self_parent: Option<Slot>,
        other_parent: Option<Slot>,
    ) -> (Vec<Vote>, Vec<ObservationHash>) {
        let count = self
            .pending_votes
            .len()
            .min(self.config.votes_per_event_max);
        let mut votes = Vec::with_capacity(count);
        let mut hashes = Vec::with_capacity(count);
        let mut bytes = SignedEvent::ENCODED_OVERHEAD_MAX;
        let graph = &self.graph;
        let parents: Vec<&EventNode> = [self_parent, other_parent]
            .into_iter()
            .flatten()
            .map(|slot| graph.get(slot))
            .collect();
        while votes.len() < count {
            let Some(pending_vote) = self.pending_votes.pop_front() else {
                break;
            };
            let hash = pending_vote.hash();
            let carrier = self
                .carriers
                .get(&hash)
                .and_then(|&carrier| graph.node(carrier));
            let carried_by_ancestor = carrier.is_some_and(|carrier| {
                !graph.is_forked(carrier.creator)
                    && parents
                        .iter()
                        .any(|parent| graph.is_ancestor(parent, carrier))
            });
            let vote = if carried_by_ancestor {
                Vote::ByHash(hash)
            } else {
                match &pending_vote {
                    PendingVote::Full(_, observation) => Vote::Full(observation.clone()),
                    #[cfg(feature = "byzantine")]
                    PendingVote::Unseen(hash) => Vote::ByHash(*hash),
                    PendingVote::Known(_) => {
                        match carrier.and_then(|carrier| carried_observation(carrier, &hash)) {
                            Some(observation) => Vote::Full(observation),
                            // Decided or pruned meanwhile: nothing left to vote for.
                            None => {
                                self.pending_vote_hashes.remove(&hash);
                                continue;
                            }
                        }
                    }
                }
            };
            let vote_bytes = SignedEvent::vote_encoded_len_max(&vote);
            if bytes + vote_bytes > EVENT_BYTES_MAX {
                // The next event takes it.
                self.pending_votes.push_front(pending_vote);
                break;
            }
            bytes += vote_bytes;
            self.pending_vote_hashes.remove(&hash);
            votes.push(vote);
            hashes.push(hash);
        }
        (votes, hashes)
    }

    /// Runs fame elections; orders the events of newly decided rounds, tallies their votes
    /// into blocks, and prunes what no future decision needs.
    fn advance_consensus(&mut self) {
        let decided_rounds = self.fame.update(&self.graph);
        if decided_rounds.is_empty() {
            return;
        }
        for decided in &decided_rounds {
            for &(slot, famous) in &decided.fame {
                if let Some(node) = self.graph.node_mut(slot) {
                    node.famous = Some(famous);
                }
            }
            let (ordered, stale) = self.order.receive(&self.graph, decided);
            for slot in stale {
                self.on_stale(slot);
            }
            for ordered_event in ordered {
                self.unordered_vote_events.remove(&ordered_event.slot);
                let node = self.graph.get(ordered_event.slot);
                let blocks = self.tallies.tally_event(
                    node,
                    ordered_event.round_received,
                    ordered_event.timestamp_ms,
                );
                if let Some(node) = self.graph.node_mut(ordered_event.slot) {
                    node.round_received = Some(ordered_event.round_received);
                    // Tallied: the proofs are cut, the tree is no longer needed.
                    node.votes_tree = None;
                }
                for block in blocks {
                    self.carriers.remove(&block.observation_hash);
                    self.spare_carriers.remove(&block.observation_hash);
                    self.stats.blocks += 1;
                    let own_head = self
                        .graph
                        .head(self.me)
                        .map(|slot| self.graph.get(slot).index);
                    self.blocks.push_back((block, own_head));
                }
            }
            self.tallies.expire(decided.round);
        }
        let last_decided = self.fame.next_round.saturating_sub(1);
        self.prune(last_decided);
    }

    /// An event no round will ever receive: its votes never count. If it is ours, vote again.
    fn on_stale(&mut self, slot: Slot) {
        self.stats.events_stale += 1;
        self.unordered_vote_events.remove(&slot);
        let node = self.graph.get(slot);
        debug!(event = %node.hash, round = node.round, "event is stale and will never be ordered");
        // Its full votes will never be tallied, so it can no longer carry their observations:
        // forget it as a carrier (every member does, at the same point of the order), so that
        // a re-vote goes out in full and is announced again for seconding.
        // A spare carrier (a re-vote that arrived first) takes over and is announced again.
        if let Some(tree) = &node.votes_tree {
            for (vote, leaf) in node.event.votes.iter().zip(tree.leaves()) {
                let hash = ObservationHash(*leaf);
                if !matches!(vote, Vote::Full(_)) || self.carriers.get(&hash) != Some(&slot) {
                    continue;
                }
                self.carriers.remove(&hash);
                let spare = self
                    .spare_carriers
                    .remove(&hash)
                    .filter(|&spare| spare != slot);
                if let Some(spare) = spare.filter(|&spare| self.graph.node(spare).is_some()) {
                    self.carriers.insert(hash, spare);
                    let spare_creator = self.graph.get(spare).creator;
                    if let (true, Some(observation)) = (
                        spare_creator != self.me && !self.replaying,
                        carried_observation(self.graph.get(spare), &hash),
                    ) {
                        if self.observations.len() < self.config.output_queue_max {
                            self.observations.push_back((hash, observation));
                        }
                    }
                }
            }
        }
        let node = self.graph.get(slot);
        if node.creator == self.me {
            let event = Arc::clone(&node.event);
            for vote in &event.votes {
                // Back-pressure can refuse a re-vote; the observation is then as lost as if
                // we had never voted, which the caller's own retry logic covers.
                let _ = match vote {
                    Vote::Full(observation) => self.vote_for(observation.clone()).map(|_| ()),
                    Vote::ByHash(hash) => self.vote_for_hash(*hash),
                };
            }
        }
    }

    fn prune(&mut self, last_decided: u64) {
        let cutoff = last_decided.saturating_sub(self.config.prune_window_rounds);
        if cutoff <= self.graph.pruned_below_round {
            return;
        }
        let forget_below = cutoff.saturating_sub(self.config.prune_window_rounds);
        let dropped = self.graph.prune_below(cutoff, forget_below);
        self.stats.events_pruned += dropped as u64;
        let graph = &self.graph;
        self.carriers.retain(|_, slot| graph.node(*slot).is_some());
        self.spare_carriers
            .retain(|_, slot| graph.node(*slot).is_some());
        self.unordered_vote_events
            .retain(|slot| graph.node(*slot).is_some());
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

    /// Marks our own events up to `index` durable: from now on they may be sent to peers.
    pub fn handle_persisted(&mut self, index: u64) {
        self.durable_index = Some(
            self.durable_index
                .map_or(index, |durable| durable.max(index)),
        );
    }

    /// Our next own event to make durable (then call `handle_persisted`).
    pub fn poll_unpersisted(&mut self) -> Option<Arc<SignedEvent>> {
        self.unpersisted.pop_front()
    }

    /// The next sync request to deliver.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
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
        (node.index == index).then(|| Arc::clone(&node.event))
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
