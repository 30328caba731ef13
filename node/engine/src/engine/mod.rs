//! The engine: one node's state machine for the command path.
//!
//! Call order (as for the consensus core): feed inputs (`submit`, `handle_message`, `tick`,
//! `handle_persisted`), then drain every output: `poll_log_record` and `poll_unpersisted` (make
//! them durable, then call `handle_persisted`), `poll_send` (bytes for a peer), `poll_reply`
//! (answers to the caller's clients). Nothing here touches the network or reads a clock:
//! time and randomness come in as arguments. The one IO is the event store, the caller's,
//! lent at construction: inputs read it (to decide commands) and write it (agreed batches,
//! refusals, the section state, transferred state, process-manager checkpoints).
//!
//! The path of a command (design.md, "The command path"):
//!
//! 1. `submit` takes a client's command. If the node's section is responsible for the stream
//!    (routing), it proposes it; otherwise it forwards it to the closest member of the
//!    responsible section and waits for that member's answer.
//! 2. Proposing: in Single mode the command itself; in Supermajority mode the events the node
//!    decides on the stream's current state ([`Proposal::Decided`]). The proposal becomes a
//!    consensus observation; the node votes for it.
//! 3. Supermajority mode: when a member sees another's proposal it decides the command itself
//!    and votes for the proposal only if it decided the very same events.
//! 4. Blocks are applied in order ([`crate::apply::apply_agreed`]); a proposal that lost a race (`Stale`) is
//!    decided again and re-proposed by its originator, a bounded number of times.
//! 5. Once a block's batch cannot be lost (durable in the store, or resting on durable
//!    replay-log records a restart applies again: `poll_reply`), the node answers the
//!    clients and forwarding members that wait for its commands.
//!
//! Around it: membership changes end a *generation* of the section's consensus instance and
//! start the next (or two, on a split) at the change's block (`switch`, and the
//! [`crate::membership`] module doc); a joiner receives the section's state by transfer
//! before it applies anything; process managers run on the section's agreed events and send
//! their commands through the same path (`add_process_manager`).
//!
//! This module keeps the `Engine` value, its construction, the inputs, `tick`, the `poll_*`
//! outputs and `drain`; each concern is a child module with its own `impl Engine` block:
//!
//! - [`wire`]: the messages between engines and their encoding;
//! - [`limits`]: every limit and timeout, with their relations checked at compile time;
//! - `command_path`: route, propose, retry, forward and answer a command;
//! - `seconding`: second others' proposals, apply agreed blocks;
//! - `gossip`: sync requests and responses, and the hint to a member that fell behind;
//! - `generation`: membership votes, their count, the switch to the next generation;
//! - `admission`: who may speak to us and whom we vote to admit;
//! - `removal`: the members we vote out (operator, fork evidence, silence);
//! - `budget`: a token bucket for what peers may make us do;
//! - `joining`: join and leave requests, refreshes of laggards, welcomes, readiness;
//! - `transfer`: a joiner's state transfer, both sides;
//! - `section_updates`: other sections' membership changes, for routing;
//! - `managers`: process managers on the section's agreed events;
//! - `stats`: what the engine reports about itself.

mod admission;
mod budget;
mod command_path;
mod domain_check;
mod forwarding;
mod generation;
mod gossip;
mod joining;
pub mod limits;
mod managers;
mod outbox;
mod removal;
mod schedule;
mod seconding;
mod section_updates;
mod stats;
mod transfer;
mod upgrade;
pub mod wire;

use admission::Speakers;
pub use admission::{Admission, JoinRefusal, Refusals};
pub use command_path::{ClientTicket, CommandOutcome};
use command_path::{InFlight, StreamQueue, Waiter};
use domain_check::DomainReports;
use forwarding::Forwarded;
use generation::{Generation, initial_state, network_of};
use joining::Joining;
pub use joining::{Lag, Readiness};
use limits::{
    ANNOUNCE_REPEAT_MS, COMMANDS_IN_FLIGHT_MAX, JOIN_RETRY_MS, REFRESH_GIVE_UP_MS,
    REMOVE_SILENT_AFTER_MS, TRANSFER_TIMEOUT_MS,
};
use managers::ManagerRun;
pub use removal::RemovalRequest;
use removal::Removals;
pub use stats::{EngineStats, OldestProposal};
use transfer::TransferRun;
pub use wire::{Message, MessageError, TransferChunk};

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use chorus_aggregate::{AggregateRegistry, CommandId, CommandRequest, EventStore, StoreError};
use chorus_consensus::{Config, Consensus, LogRecord, PeerId, SignedEvent};
use chorus_routing::{Prefix, SectionMap};
use ed25519_dalek::SigningKey;
use rand::RngCore;
use tracing::{debug, info, warn};

use crate::apply::AgreedProposal;
use crate::domain::{DomainFingerprint, NodeDomain, SectionDomain};
use crate::membership::{Holding, MemberChange, SectionState, name_of};

/// Why the engine cannot start or take a command.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The node is in no section of the map.
    #[error("this node is not a member of any section")]
    NotAMember,
    /// Consensus refused the setup.
    #[error("consensus setup: {0}")]
    Consensus(#[from] chorus_consensus::SetupError),
    /// Too many commands in flight.
    #[error("{COMMANDS_IN_FLIGHT_MAX} commands are waiting already; try again later")]
    Busy,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The replay log holds records of a later generation than the store's section state.
    #[error(
        "the store's section state is generation {saved} but the replay log has records of generation {logged}: the store is older than the log"
    )]
    StaleState {
        /// The generation the store saved.
        saved: u64,
        /// The later generation the log holds.
        logged: u64,
    },
    /// The store's section runs another domain than this node.
    #[error(
        "this node runs domain {this_node} but its store's section runs domain {section}: \
         run the section's application (or another data directory)"
    )]
    OtherDomain {
        /// This node's domain.
        this_node: DomainFingerprint,
        /// The section's, as the store saved it.
        section: DomainFingerprint,
    },
    /// The configuration cannot be run.
    #[error("engine configuration: {0}")]
    Config(String),
    /// The node stopped taking part (`Engine::halted` says why).
    #[error("this node halted: {0}")]
    Halted(String),
}

/// Settings of an engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The consensus settings of the node's section; `block_mode` chooses Single or
    /// Supermajority mode for the command path too.
    pub consensus: Config,
    /// A forwarded command with no answer after this long is answered `Failed` (the client
    /// may send it again; its id keeps it from applying twice).
    pub forward_timeout_ms: u64,
    /// One of our proposals with no block after this long is decided and proposed again
    /// (its votes may have been dropped under back-pressure, or too few members seconded it).
    pub proposal_timeout_ms: u64,
    /// Whom this member votes to admit.
    pub admission: Admission,
    /// The liveness rule: a member none of whose events arrived this long (and this long
    /// into the generation) while the section went on for `SILENT_ROUNDS_MIN` rounds is
    /// voted out (`removal`); `None` turns the rule off.
    pub remove_silent_after_ms: Option<u64>,
    /// The application's domain version: with the registry's aggregates, it makes the
    /// domain fingerprint every member of a section must share.
    pub domain_version: String,
    /// Domain versions this application's code stands in for during a rolling upgrade
    /// (`NodeDomain::upgrades_from`): it may take part in a section that agreed on one of
    /// them, and votes to upgrade the section to its own.
    pub upgrades_from: Vec<String>,
}

impl EngineConfig {
    /// Defaults around a consensus configuration: admission closed (an empty allow-list:
    /// no node is admitted until the caller approves it), silent members voted out after a
    /// minute.
    pub fn new(consensus: Config) -> Self {
        Self {
            consensus,
            forward_timeout_ms: 10_000,
            proposal_timeout_ms: 10_000,
            admission: Admission::AllowList(BTreeSet::new()),
            remove_silent_after_ms: Some(REMOVE_SILENT_AFTER_MS),
            domain_version: "1".to_owned(),
            upgrades_from: Vec::new(),
        }
    }
}

/// One node's engine.
pub struct Engine {
    config: EngineConfig,
    key: SigningKey,
    our_id: PeerId,
    /// Our section as agreed (durable in the store).
    state: SectionState,
    /// What lives for our section's current generation: its consensus instance, membership
    /// votes, deferred seconds, lag hints.
    current: Generation,
    /// The previous generation's instance, kept to answer the sync requests of members that
    /// have not reached the change yet (they need its events to decide it). It creates no
    /// event and outputs nothing.
    retired: Option<(u64, Consensus)>,
    /// When we last asked to leave; asked again until the leave is agreed.
    leaving: Option<u64>,
    /// Per node, the generation of the latest section update applied to our map about it (so
    /// an older update that arrives late does not undo a newer one).
    update_generations: BTreeMap<PeerId, u64>,
    /// Joiner, or a lagging member asking to be brought back: welcomes heard, by content,
    /// with their senders.
    joining: Option<Joining>,
    /// Per member, when a refresh of it last took effect here.
    refreshed_at: BTreeMap<PeerId, u64>,
    /// Joiner: the state transfer under way.
    transfer: Option<TransferRun>,
    /// Section updates heard from other sections, by content, with their senders.
    /// Per sender its latest `UPDATES_PER_SENDER_MAX` updates, so faulty senders cannot
    /// crowd out honest ones.
    updates_heard: BTreeMap<PeerId, VecDeque<(Prefix, u64, MemberChange)>>,
    /// Our last section update, sent once more after `ANNOUNCE_REPEAT_MS` (messages get lost).
    announcement: Option<(u64, Vec<PeerId>, Message)>,
    map: SectionMap,
    registry: AggregateRegistry,
    /// Shared with the caller's readers (hosted projections), which only read it and save
    /// their own checkpoints.
    store: Arc<EventStore>,
    now_ms: u64,
    waiters: BTreeMap<CommandId, Vec<Waiter>>,
    /// Our own proposals not yet applied.
    proposed: BTreeMap<CommandId, InFlight>,
    /// Commands we forwarded, and the member whose answer we wait for.
    forwarded: BTreeMap<CommandId, Forwarded>,
    /// Per stream (qualified key), the one command of ours in agreement and the ones queued
    /// behind it: our commands on one stream are proposed one at a time, so they never race
    /// each other for a version.
    streams: BTreeMap<String, StreamQueue>,
    /// Agreed proposals not applied yet: consensus hands each block out once, so a batch
    /// whose apply failed is kept and applied again, before anything later, until it goes.
    unapplied: Vec<AgreedProposal>,
    /// Messages for peers: consensus gossip (which may leave at once) and the rest.
    outbox: outbox::Outbox,
    replies: VecDeque<(ClientTicket, CommandOutcome)>,
    /// Strangers we heard from, and what we refused.
    speakers: Speakers,
    /// Members we vote to remove.
    removals: Removals,
    /// Process managers run on our section's events.
    managers: Vec<ManagerRun>,
    /// Answers to managers' commands, for `run_managers` to handle.
    manager_answers: VecDeque<(usize, CommandId, CommandOutcome)>,
    /// The domain this node runs, and those it stands in for (`domain_check`).
    domain: NodeDomain,
    /// The domain our section agreed on, as far as we applied the order (`upgrade`).
    section_domain: SectionDomain,
    /// What members said of other domains, and whether we halted.
    domain_reports: DomainReports,
}

impl Engine {
    /// Starts the engine of the node `key`, member of the section `map` puts it in, over
    /// `store`, at generation 0 (the network's start). For a node's first start only: after a
    /// crash, use [`Engine::restore`] (a new start would sign a new first event and fork the
    /// node's own chain). A node joining a running network uses [`Engine::join`].
    pub fn new(
        config: EngineConfig,
        key: SigningKey,
        map: SectionMap,
        registry: AggregateRegistry,
        store: EventStore,
        now_ms: u64,
    ) -> Result<Self, EngineError> {
        let state = initial_state(&key, &map)?;
        let current = Generation::start(&config, &key, &state, now_ms)?;
        let mut engine = Self::assemble(config, key, state, map, registry, store, now_ms);
        engine.current = current;
        engine.adopt_domain()?;
        Ok(engine)
    }

    /// Starts a node that joins a running network: `map` is what it knows of the network
    /// (it need not be current), `store` should hold nothing of the section it joins. It asks
    /// the section covering its name to admit it (again every `JOIN_RETRY_MS`), then fetches
    /// the section's state and takes part from the generation it was admitted to.
    pub fn join(
        config: EngineConfig,
        key: SigningKey,
        map: SectionMap,
        registry: AggregateRegistry,
        store: EventStore,
        now_ms: u64,
    ) -> Result<Self, EngineError> {
        let our_id = PeerId(key.verifying_key().to_bytes());
        let section = map.section_for(&name_of(&our_id));
        let state = SectionState {
            generation: 0,
            prefix: section.prefix(),
            members: Vec::new(),
            network: network_of(&map),
            holding: Holding::Nothing,
            start_head: 0,
            handovers: Vec::new(),
        };
        let mut engine = Self::assemble(config, key, state, map, registry, store, now_ms);
        engine.check_domain_version()?;
        engine.joining = Some(Joining {
            refresh: None,
            also_ask: BTreeSet::new(),
            asked_at_ms: None,
            welcomes: BTreeMap::new(),
            refusals: BTreeMap::new(),
        });
        engine.ask_to_join();
        Ok(engine)
    }

    /// Restarts the engine of the node `key` after a crash, from its event store (which holds
    /// its section state) and its consensus replay log (the records `poll_log_record` gave,
    /// with their generation, made durable; `Config::log_records` must be on). Only the
    /// current generation's records are replayed; consensus outputs every block of it again
    /// from the first, and since every command's fate is recorded in the store (appended or
    /// refused), those already applied change nothing: the store catches up with the blocks
    /// it missed and nothing is applied twice. `map` is used only if the store holds no
    /// section state yet (generation 0, or a joiner never welcomed).
    pub fn restore(
        config: EngineConfig,
        key: SigningKey,
        map: SectionMap,
        registry: AggregateRegistry,
        store: EventStore,
        log: impl IntoIterator<Item = (u64, LogRecord)>,
        now_ms: u64,
    ) -> Result<Self, EngineError> {
        let state = match SectionState::load(&store)? {
            Some(state) => state,
            None => match initial_state(&key, &map) {
                Ok(state) => state,
                Err(EngineError::NotAMember) => {
                    info!(
                        "the store holds no section state and the map has no section with this \
                         node: asking to join the section its name falls in"
                    );
                    return Self::join(config, key, map, registry, store, now_ms);
                }
                Err(error) => return Err(error),
            },
        };
        let map = SectionMap::with_members(
            map.section_size_min(),
            &state.network.iter().map(|id| id.0).collect::<Vec<_>>(),
        );
        let generation = state.generation;
        let mut records = Vec::new();
        for (record_generation, record) in log {
            // A generation is saved before its instance logs anything, so a later one in the
            // log means the store is older than the log (a store restored from a backup, say):
            // starting the saved generation again could sign a second first event in the
            // later one.
            if record_generation > generation {
                return Err(EngineError::StaleState {
                    saved: generation,
                    logged: record_generation,
                });
            }
            if record_generation == generation {
                records.push(record);
            }
        }
        // Nothing of this generation made durable means nothing of ours was sent in it: a new
        // first event forks nothing.
        let current = if records.is_empty() {
            Generation::start(&config, &key, &state, now_ms)?
        } else {
            Generation::restore(&config, &key, &state, records, now_ms)?
        };
        let mut engine = Self::assemble(config, key, state, map, registry, store, now_ms);
        engine.current = current;
        engine.adopt_domain()?;
        if engine.state.transfer_target().is_some() {
            engine.start_transfer(0);
        }
        engine.drain();
        Ok(engine)
    }

    fn assemble(
        config: EngineConfig,
        key: SigningKey,
        state: SectionState,
        map: SectionMap,
        registry: AggregateRegistry,
        store: EventStore,
        now_ms: u64,
    ) -> Self {
        Self {
            domain: NodeDomain {
                runs: DomainFingerprint::of_shapes(&config.domain_version, &registry.shapes()),
                upgrades_from: config.upgrades_from.clone(),
            },
            // Until the store or a welcome says what the section agreed on.
            section_domain: SectionDomain::new(DomainFingerprint::of_shapes(
                &config.domain_version,
                &registry.shapes(),
            )),
            domain_reports: DomainReports::default(),
            config,
            our_id: PeerId(key.verifying_key().to_bytes()),
            key,
            state,
            current: Generation::without_consensus(now_ms),
            retired: None,
            leaving: None,
            update_generations: BTreeMap::new(),
            joining: None,
            refreshed_at: BTreeMap::new(),
            transfer: None,
            updates_heard: BTreeMap::new(),
            announcement: None,
            map,
            registry,
            store: Arc::new(store),
            now_ms,
            waiters: BTreeMap::new(),
            proposed: BTreeMap::new(),
            forwarded: BTreeMap::new(),
            streams: BTreeMap::new(),
            unapplied: Vec::new(),
            outbox: outbox::Outbox::default(),
            replies: VecDeque::new(),
            speakers: Speakers::new(now_ms),
            removals: Removals::default(),
            managers: Vec::new(),
            manager_answers: VecDeque::new(),
        }
    }

    /// This node's id (its public key).
    pub fn id(&self) -> PeerId {
        self.our_id
    }

    /// The node's event store.
    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// The node's event store, to share with readers on other threads (hosted
    /// projections).
    pub fn shared_store(&self) -> Arc<EventStore> {
        Arc::clone(&self.store)
    }

    /// The section map the node routes by.
    pub fn map(&self) -> &SectionMap {
        &self.map
    }

    /// The node's section as agreed: generation, prefix, members (empty if the node is no
    /// member), how much of its state the store holds.
    pub fn section(&self) -> &SectionState {
        &self.state
    }

    /// Whether the node takes part in its section's agreement with a complete store (a
    /// member, welcomed and done transferring).
    pub fn is_active_member(&self) -> bool {
        self.current.consensus.is_some() && self.state.holds_state()
    }

    /// The consensus instance of the node's section (for status and tests); `None` while the
    /// node is no member.
    pub fn consensus(&self) -> Option<&Consensus> {
        self.current.consensus.as_ref()
    }

    /// Byzantine hook (feature `byzantine`, for the simulator): votes for arbitrary
    /// observation bytes, as a faulty member that proposes what it likes would. Honest code
    /// never calls it. Returns whether consensus took the vote.
    #[cfg(feature = "byzantine")]
    pub fn vote_for_raw(&mut self, bytes: Vec<u8>) -> bool {
        let taken = self.current.consensus.as_mut().is_some_and(|consensus| {
            consensus
                .vote_for(chorus_consensus::Observation::Payload(bytes.into()))
                .is_ok()
        });
        self.drain();
        taken
    }

    /// Takes a client's command; its answer comes out of `poll_reply` with `ticket`.
    pub fn submit(
        &mut self,
        now_ms: u64,
        ticket: ClientTicket,
        request: CommandRequest,
    ) -> Result<(), EngineError> {
        self.now_ms = self.now_ms.max(now_ms);
        if let Some(reason) = self.halted() {
            return Err(EngineError::Halted(reason.to_owned()));
        }
        let category = request.stream.category().as_str();
        if self.registry.is_emitted_category(category) {
            let outcome = CommandOutcome::Invalid(format!(
                "{category} streams are written by a projection: clients read them"
            ));
            self.replies.push_back((ticket, outcome));
            return Ok(());
        }
        if self.waiters.len() >= COMMANDS_IN_FLIGHT_MAX {
            return Err(EngineError::Busy);
        }
        self.accept(Waiter::Client(ticket), request);
        self.drain();
        Ok(())
    }

    /// A message from a peer. Bad input is logged and dropped; it never stops the engine.
    pub fn handle_message(&mut self, now_ms: u64, from: PeerId, bytes: &[u8]) {
        self.now_ms = self.now_ms.max(now_ms);
        if self.halted().is_some() {
            return;
        }
        let message = match Message::decode(bytes) {
            Ok(message) => message,
            Err(error) => {
                warn!(peer = %from, %error, "undecodable engine message");
                return;
            }
        };
        if !self.may_speak(from, &message) {
            self.drain();
            return;
        }
        self.heard_from(from);
        match message {
            Message::SyncRequest {
                generation,
                domain,
                request,
            } => self.on_sync_request(from, (generation, &domain), &request),
            Message::SyncResponse {
                generation,
                response,
            } => self.on_sync_response(from, generation, response),
            Message::Forward(request) => {
                if self.waiters.len() >= COMMANDS_IN_FLIGHT_MAX {
                    let outcome = CommandOutcome::Failed("the member is busy".to_owned());
                    self.answer_peer(from, request.command_id, outcome);
                } else {
                    self.accept(Waiter::Peer(from), request);
                }
            }
            Message::Outcome {
                command_id,
                outcome,
            } => self.on_outcome(from, command_id, outcome),
            Message::Confirm(command_id) => self.on_confirm(from, command_id),
            Message::Behind {
                generation,
                round,
                head_position,
                members,
            } => self.on_behind(from, generation, (round, head_position), members),
            Message::JoinRequest(domain) => self.on_join_request(from, &domain),
            Message::DomainDiffers(domain) => self.on_domain_differs(from, domain),
            Message::JoinRefused(refusal) => self.on_join_refused(from, refusal),
            Message::ForkEvidence(evidence) => self.on_fork_evidence(from, &evidence),
            Message::LeaveRequest => {
                if self.state.members.contains(&from) {
                    self.vote_change(MemberChange::Leave(from));
                }
            }
            Message::Welcome(welcome) => self.on_welcome(from, welcome),
            Message::TransferRequest {
                generation,
                position,
            } => self.on_transfer_request(from, generation, position),
            Message::TransferChunk(chunk) => self.on_transfer_chunk(from, chunk),
            Message::SectionUpdate {
                prefix,
                generation,
                change,
            } => self.on_section_update(from, prefix, generation, change),
        }
        self.drain();
    }

    /// Time passed: gossip as the consensus schedule says, retry what waited too long.
    pub fn tick(&mut self, now_ms: u64, rng: &mut impl RngCore) {
        self.now_ms = self.now_ms.max(now_ms);
        if self.halted().is_some() {
            return;
        }
        if let Some(consensus) = self.current.consensus.as_mut() {
            consensus.tick(now_ms, rng);
        }
        let gave_up = self.joining.as_ref().is_some_and(|joining| {
            joining
                .refresh
                .is_some_and(|(_, since)| now_ms >= since + REFRESH_GIVE_UP_MS)
        });
        if gave_up {
            self.joining = None;
        }
        if let Some(joining) = &self.joining {
            if joining
                .asked_at_ms
                .is_none_or(|at| now_ms >= at + JOIN_RETRY_MS)
            {
                self.ask_to_join();
            }
        }
        if self
            .leaving
            .is_some_and(|at| now_ms >= at + JOIN_RETRY_MS && self.current.consensus.is_some())
        {
            self.ask_to_leave();
        }
        if let Some(transfer) = &self.transfer {
            if now_ms >= transfer.requested_at_ms + TRANSFER_TIMEOUT_MS {
                let next = transfer.source + 1;
                debug!("state transfer timed out; asking another member");
                self.start_transfer(next);
            }
        }
        if let Some((at, _, _)) = &self.announcement {
            if now_ms >= at + ANNOUNCE_REPEAT_MS {
                if let Some((_, peers, message)) = self.announcement.take() {
                    for peer in peers {
                        self.send(peer, &message);
                    }
                }
            }
        }
        self.watch_silence();
        self.vote_removals();
        self.repeat_evidence();
        self.sweep();
        // `drain` ends by running the process managers.
        self.drain();
    }

    /// The next replay-log record to make durable (with `Config::log_records`), with the
    /// generation it belongs to ([`Engine::restore`] replays the current generation's).
    pub fn poll_log_record(&mut self) -> Option<(u64, LogRecord)> {
        let generation = self.state.generation;
        self.current
            .consensus
            .as_mut()
            .and_then(Consensus::poll_log_record)
            .map(|record| (generation, record))
    }

    /// The next own event to make durable before it may be sent, with its generation.
    pub fn poll_unpersisted(&mut self) -> Option<(u64, std::sync::Arc<SignedEvent>)> {
        let generation = self.state.generation;
        self.current
            .consensus
            .as_mut()
            .and_then(Consensus::poll_unpersisted)
            .map(|event| (generation, event))
    }

    /// Own events of `generation` up to `index` are durable.
    pub fn handle_persisted(&mut self, generation: u64, index: u64) {
        if generation == self.state.generation {
            if let Some(consensus) = self.current.consensus.as_mut() {
                consensus.handle_persisted(index);
            }
        }
        self.drain();
    }

    /// Drains consensus: gossip to send, proposals to second, blocks to apply, and a
    /// membership change to make once the blocks before it are applied.
    fn drain(&mut self) {
        // A halted engine takes nothing more out of consensus: it cannot run the section's
        // domain, and applying a block under it would diverge.
        if self.halted().is_some() {
            return;
        }
        self.send_sync_requests();
        let Some(consensus) = self.current.consensus.as_mut() else {
            self.run_managers();
            return;
        };
        // Fork evidence: consensus votes the accusation itself; the engine votes the
        // offender out (`removal`).
        let mut evidence = Vec::new();
        while let Some(fork) = consensus.poll_evidence() {
            evidence.push(fork);
        }
        let mut observations = Vec::new();
        while let Some((hash, observation)) = consensus.poll_observation() {
            observations.push((hash, observation));
        }
        for fork in evidence {
            self.accuse(&fork);
        }
        self.take_blocks();
        // A joiner applies nothing before its store holds the state the generation starts
        // from.
        if !self.unapplied.is_empty() && self.state.holds_state() {
            self.apply();
        }
        if !self.make_upgrades() {
            return;
        }
        // After the blocks, so proposals are judged on the freshest store; before a switch,
        // so a second goes to the instance that carries the observation.
        for (hash, observation) in observations {
            self.consider_second(hash, &observation);
        }
        if self.unapplied.is_empty() && self.state.holds_state() {
            if let Some(change) = self.current.pending_change {
                // A switch starts a new `Generation`: the change is no longer pending there.
                if self.switch(change.change) {
                    self.drain();
                    return;
                }
            }
        }
        self.vote_upgrade();
        self.run_managers();
        // Seconds and proposals made above sync at once (`Consensus::tick`).
        self.send_sync_requests();
    }

    /// An agreed upgrade, once the blocks before it are applied; then the blocks after it,
    /// and so on. False if this node halted (it can run nothing more).
    fn make_upgrades(&mut self) -> bool {
        while self.unapplied.is_empty()
            && self.state.holds_state()
            && self.current.pending_upgrade.is_some()
        {
            // The store failed: the upgrade waits (and the blocks after it); the rest of
            // the drain goes on, so that no observation taken out is lost.
            if !self.upgrade() {
                break;
            }
            if self.halted().is_some() {
                return false;
            }
            self.take_blocks();
            if !self.unapplied.is_empty() {
                self.apply();
            }
        }
        true
    }
}
