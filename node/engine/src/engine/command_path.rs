//! The command path: route a command (propose it, or forward it to the responsible
//! section), decide and propose it, retry what lost a race or got no block, and answer
//! whoever waits for it.

use std::collections::VecDeque;

use chorus_aggregate::{AppendOutcome, CommandId, CommandRecord, CommandRequest, DispatchError};
use chorus_consensus::{BlockMode, Observation, PeerId};
use chorus_routing::XorName;
use serde::{Deserialize, Serialize};

use crate::membership::name_of;
use crate::proposal::Proposal;

use super::Engine;
use super::limits::STALE_RETRIES_MAX;
use super::wire::Message;

/// A caller's handle for one client request, echoed in the reply.
pub type ClientTicket = u64;

/// The answer to a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandOutcome {
    /// Its events are agreed and durable on the answering member.
    Committed(AppendOutcome),
    /// It was committed before (same command id); nothing new was written.
    AlreadyCommitted(AppendOutcome),
    /// The aggregate refused it.
    Refused(String),
    /// It cannot execute as it is.
    Invalid(String),
    /// Another command was agreed under its id first (an id reused, or taken by a faulty
    /// member). It says nothing about the command itself, so a process manager does not
    /// compensate it; sent again under a new id, it may well commit.
    IdTaken,
    /// The engine could not carry it (forwarding failed, retries exhausted, overload); the
    /// client may send the same command id again.
    Failed(String),
}

/// Who waits for a command's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Waiter {
    Client(ClientTicket),
    Peer(PeerId),
    /// One of the engine's process managers (by index).
    Manager(usize),
}

/// One of our proposals in agreement.
pub(super) struct InFlight {
    pub(super) request: CommandRequest,
    pub(super) attempts: u32,
    /// Supermajority mode: the stream version it was decided at.
    pub(super) decided_at: Option<u64>,
    /// When it was (last) proposed, to propose it again if no block comes.
    pub(super) proposed_at_ms: u64,
}

#[derive(Default)]
pub(super) struct StreamQueue {
    pub(super) active: Option<CommandId>,
    pub(super) waiting: VecDeque<CommandRequest>,
}

/// Whether an agreed request is the command we proposed (the timestamp aside, which
/// Supermajority mode sets when deciding).
pub(super) fn same_command(ours: &CommandRequest, agreed: &CommandRequest) -> bool {
    ours.stream == agreed.stream
        && ours.command == agreed.command
        && ours.not_before_ms == agreed.not_before_ms
        && ours.expected == agreed.expected
        && ours.causation_id == agreed.causation_id
        && ours.correlation_id == agreed.correlation_id
}

pub(super) fn outcome_of_dispatch(error: DispatchError) -> CommandOutcome {
    match error {
        DispatchError::Refused(reason) => CommandOutcome::Refused(reason),
        DispatchError::Conflict(reason) => CommandOutcome::Failed(reason),
        DispatchError::Store(error) => CommandOutcome::Failed(error.to_string()),
        error @ (DispatchError::UnknownCategory { .. } | DispatchError::Invalid(_)) => {
            CommandOutcome::Invalid(error.to_string())
        }
    }
}

impl Engine {
    /// Routes a command: propose it if our section is responsible, else forward it.
    pub(super) fn accept(&mut self, waiter: Waiter, request: CommandRequest) {
        self.route(waiter, request, 0);
    }

    /// `accept` for the `attempt`-th send of a command: a forward goes to the
    /// `attempt`-th closest member of the responsible section (cycling), so a command sent
    /// again does not wait on the same crashed or silent member forever.
    pub(super) fn route(&mut self, waiter: Waiter, mut request: CommandRequest, attempt: u32) {
        let command_id = request.command_id;
        // One form from here on: what we propose is what every member compares with the
        // agreed command and stores (a JSON number or an ignored field could otherwise make
        // our own agreed command look like another one's).
        match self.registry.canonical_command(&request) {
            Ok(command) => request.command = command,
            Err(error) => {
                self.answer_waiter(waiter, command_id, outcome_of_dispatch(error));
                return;
            }
        }
        let address = XorName::from_stream_key(&request.stream.qualified());
        // Our section as agreed decides what we take, not the map (a joiner's or a lagging
        // member's map may still show a section before its split).
        let responsible = self.current.consensus.is_some() && self.state.prefix.matches(&address);
        if responsible && !self.is_active_member() {
            let outcome =
                CommandOutcome::Failed("this node is still joining; send it again".to_owned());
            self.answer_waiter(waiter, command_id, outcome);
            return;
        }
        let section = self.map.section_for(&address);
        if !responsible && section.contains(&name_of(&self.our_id)) {
            let outcome = CommandOutcome::Failed(
                "this node's section map is out of date; send the command again".to_owned(),
            );
            self.answer_waiter(waiter, command_id, outcome);
            return;
        }
        if !responsible {
            self.forward(waiter, request, attempt);
            return;
        }
        if !self.add_waiter(command_id, waiter) {
            return; // proposed or queued already
        }
        let stream = request.stream.qualified();
        self.streams
            .entry(stream.clone())
            .or_default()
            .waiting
            .push_back(request);
        self.start_next(&stream);
    }

    /// Registers a waiter once; true when it is the command's first.
    pub(super) fn add_waiter(&mut self, command_id: CommandId, waiter: Waiter) -> bool {
        let waiters = self.waiters.entry(command_id).or_default();
        let first = waiters.is_empty();
        if !waiters.contains(&waiter) {
            waiters.push(waiter);
        }
        first
    }

    /// If no command of ours is in agreement on `stream`, proposes the next queued one;
    /// commands answered without agreement (known ids, local failures) are answered on the
    /// way. A loop, not recursion: a long queue of such commands cannot grow the stack.
    pub(super) fn start_next(&mut self, stream: &str) {
        loop {
            let Some(queue) = self.streams.get_mut(stream) else {
                return;
            };
            if queue.active.is_some() {
                return;
            }
            let Some(next) = queue.waiting.pop_front() else {
                self.streams.remove(stream);
                return;
            };
            queue.active = Some(next.command_id);
            match self.propose(next.clone(), 0) {
                Ok(()) => return,
                Err(outcome) => {
                    if let Some(queue) = self.streams.get_mut(stream) {
                        queue.active = None;
                    }
                    self.answer(next.command_id, &outcome);
                }
            }
        }
    }

    /// Proposes a command for agreement: in Single mode the command; in Supermajority mode
    /// the events we decide, or, when we decide it cannot execute, the command itself, so
    /// that its refusal is agreed on the agreed state rather than answered from our store,
    /// which may lag. `Err` is an answer given without agreement (a command id the store
    /// knows, an encoding or back-pressure failure).
    pub(super) fn propose(
        &mut self,
        request: CommandRequest,
        attempts: u32,
    ) -> Result<(), CommandOutcome> {
        let command_id = request.command_id;
        match self.store.command_record(command_id) {
            Ok(Some(CommandRecord::Appended(outcome))) => {
                return Err(CommandOutcome::AlreadyCommitted(outcome));
            }
            Ok(Some(CommandRecord::Refused { reason, .. })) => {
                return Err(CommandOutcome::Refused(reason));
            }
            Ok(None) => {}
            Err(error) => return Err(CommandOutcome::Failed(error.to_string())),
        }
        self.hold_until_due(&request)?;
        let (proposal, decided_at) = match self.config.consensus.block_mode {
            BlockMode::Single => {
                let mut request = request.clone();
                // A decided observation is never decided again, so a scheduled command must
                // not share its bytes with an early proposal of it (skipped, `schedule`):
                // its time field, which Single mode sets at apply, carries our clock.
                if request.not_before_ms.is_some() {
                    request.timestamp_ms = self.current.clock_ms;
                }
                (Proposal::Command(request), None)
            }
            BlockMode::Supermajority => match self.decide_proposal(&request) {
                Ok(proposal @ Proposal::Decided { version, .. }) => (proposal, Some(version)),
                Ok(proposal) => (proposal, None),
                Err(CommandOutcome::Failed(reason)) => return Err(CommandOutcome::Failed(reason)),
                Err(_) => (Proposal::Command(request.clone()), None),
            },
        };
        let bytes = proposal
            .encode()
            .map_err(|error| CommandOutcome::Invalid(error.to_string()))?;
        self.current
            .consensus
            .as_mut()
            .ok_or_else(|| CommandOutcome::Failed("this node is no member any more".to_owned()))?
            .vote_for(Observation::Payload(bytes.into()))
            .map_err(|error| CommandOutcome::Failed(error.to_string()))?;
        self.proposed.insert(
            command_id,
            InFlight {
                request,
                attempts,
                decided_at,
                proposed_at_ms: self.now_ms,
            },
        );
        Ok(())
    }

    /// Answers a command of ours and lets the next one on its stream go.
    pub(super) fn finish(&mut self, request: &CommandRequest, outcome: &CommandOutcome) {
        self.proposed.remove(&request.command_id);
        self.answer(request.command_id, outcome);
        let stream = request.stream.qualified();
        if let Some(queue) = self.streams.get_mut(&stream) {
            if queue.active == Some(request.command_id) {
                queue.active = None;
            }
        }
        self.start_next(&stream);
    }

    /// Decides and proposes again a command of ours that lost its race or got no block, or
    /// gives up after `STALE_RETRIES_MAX` attempts.
    pub(super) fn retry(&mut self, command_id: CommandId) {
        let Some(in_flight) = self.proposed.remove(&command_id) else {
            return;
        };
        let outcome = if in_flight.attempts < STALE_RETRIES_MAX {
            match self.propose(in_flight.request.clone(), in_flight.attempts + 1) {
                Ok(()) => return,
                Err(outcome) => outcome,
            }
        } else {
            CommandOutcome::Failed("the stream kept changing; send the command again".to_owned())
        };
        self.finish(&in_flight.request, &outcome);
    }

    /// Gives up on forwards that got no answer and proposes again what got no block.
    pub(super) fn sweep(&mut self) {
        self.sweep_forwarded();
        let now = self.now_ms;
        let proposal_deadline = now.saturating_sub(self.config.proposal_timeout_ms);
        let overdue: Vec<CommandId> = self
            .proposed
            .iter()
            .filter(|(_, in_flight)| in_flight.proposed_at_ms < proposal_deadline)
            .map(|(command_id, _)| *command_id)
            .collect();
        for command_id in overdue {
            self.retry(command_id);
        }
    }

    /// Supermajority mode: the command decided on the stream's current state, at the agreed
    /// time of the stream's last event (0 for a new stream).
    pub(super) fn decide_proposal(
        &self,
        request: &CommandRequest,
    ) -> Result<Proposal, CommandOutcome> {
        let info = self
            .store
            .stream_info(&request.stream)
            .map_err(|error| CommandOutcome::Failed(error.to_string()))?;
        let mut request = request.clone();
        request.timestamp_ms = info.map_or(0, |info| info.last_timestamp_ms);
        request.domain_version = self.section_domain.agreed.version.clone();
        let decision = self
            .registry
            .decide(&self.store, &request)
            .map_err(outcome_of_dispatch)?;
        let events = decision
            .batch
            .writes
            .first()
            .map(|write| write.events.clone())
            .unwrap_or_default();
        Ok(Proposal::Decided {
            request,
            version: decision.version,
            events,
        })
    }

    /// After a switch: our commands in agreement or queued are routed again, in their
    /// per-stream order (proposed anew if our section still covers their stream, forwarded
    /// otherwise). Their ids keep them from applying twice if an old block did take them.
    pub(super) fn reroute_pending(&mut self) {
        let mut requests = Vec::new();
        for (_, mut queue) in std::mem::take(&mut self.streams) {
            if let Some(active) = queue.active.take() {
                if let Some(in_flight) = self.proposed.remove(&active) {
                    requests.push(in_flight.request);
                }
            }
            requests.extend(queue.waiting);
        }
        requests.extend(
            std::mem::take(&mut self.proposed)
                .into_values()
                .map(|in_flight| in_flight.request),
        );
        for request in requests {
            for waiter in self.waiters.remove(&request.command_id).unwrap_or_default() {
                self.accept(waiter, request.clone());
            }
        }
    }

    /// Answers everyone waiting for `command_id`.
    pub(super) fn answer(&mut self, command_id: CommandId, outcome: &CommandOutcome) {
        for waiter in self.waiters.remove(&command_id).unwrap_or_default() {
            self.answer_waiter(waiter, command_id, outcome.clone());
        }
    }

    pub(super) fn answer_waiter(
        &mut self,
        waiter: Waiter,
        command_id: CommandId,
        outcome: CommandOutcome,
    ) {
        match waiter {
            Waiter::Client(ticket) => self.replies.push_back((ticket, outcome)),
            Waiter::Peer(peer) => self.answer_peer(peer, command_id, outcome),
            // Handled by `run_managers`, not here: a manager's reaction sends commands, and
            // sending from inside an answer would re-enter the command path.
            Waiter::Manager(index) => self.manager_answers.push_back((index, command_id, outcome)),
        }
    }

    pub(super) fn answer_peer(
        &mut self,
        peer: PeerId,
        command_id: CommandId,
        outcome: CommandOutcome,
    ) {
        self.send(
            peer,
            &Message::Outcome {
                command_id,
                outcome,
            },
        );
    }
}
