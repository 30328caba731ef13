//! Process managers run on the section's agreed events, in order from a checkpoint; their
//! commands go through the command path. A manager handles the next event without waiting
//! for the answers to the previous one's commands, up to `MANAGER_EVENTS_IN_FLIGHT` events
//! with commands unanswered (a saga of many instances moves them all at once; one at a time,
//! each step waited for a block, and a backlog of starts held every later step behind it).
//! Commands to one stream still go one after another in event order: a command is sent only
//! once every earlier command of the manager to its stream is answered, so an aggregate sees
//! a manager's commands in the order of the events that set them off.
//!
//! Scheduled commands (`CommandRequest::not_before_ms`: deadlines, timeouts) do not hold the
//! manager at their event: they wait among the run's timers until the section's agreed time
//! (the latest block's) or this node's clock reaches them, and are then proposed like any
//! command. The clock only prompts: a block whose agreed time is still earlier does not
//! apply them (`Applied::Early`), so the section executes each once, at its agreed time,
//! whichever members proposed it. The checkpoint never passes the event of a timer not yet
//! answered, so a restart schedules it again (its id dedupes a second firing).

use std::collections::{BTreeMap, HashSet};

use chorus_aggregate::{CommandId, CommandRequest, ProcessManager, RecordedEvent, StoreError};
use chorus_routing::XorName;
use tracing::{debug, warn};

use super::command_path::{CommandOutcome, Waiter};
use super::limits::{
    MANAGER_CHECKPOINT_EVERY, MANAGER_EVENTS_IN_FLIGHT, MANAGER_EVENTS_PER_RUN, MANAGER_READ_PAGE,
    MANAGER_RETRY_MS, TIMERS_PER_MANAGER_MAX,
};
use super::{Engine, EngineError};

/// A process manager the engine runs: one event at a time, from its checkpoint.
pub(super) struct ManagerRun {
    pub(super) manager: Box<dyn ProcessManager>,
    /// The next global position of our store to look at.
    pub(super) next_position: u64,
    /// Events handled whose commands are not all answered yet, by position (at most
    /// `MANAGER_EVENTS_IN_FLIGHT`).
    pub(super) in_flight: BTreeMap<u64, ManagerEvent>,
    /// No command can be due before this time (a retry's), unless an answer or a new event
    /// comes first (they reset it): spares a scan of `in_flight` on every step.
    pub(super) wake_at_ms: u64,
    /// Events handled since the checkpoint was last saved.
    pub(super) unsaved: u32,
    /// Scheduled commands of events already handled, not answered yet (at most
    /// `TIMERS_PER_MANAGER_MAX`: a manager with that many takes no new event).
    pub(super) timers: BTreeMap<CommandId, Timer>,
}

/// A scheduled command and the event that set it off (for `on_rejected`).
pub(super) struct Timer {
    pub(super) event: RecordedEvent,
    pub(super) outstanding: Outstanding,
}

impl ManagerRun {
    /// Where the manager must start again after a restart: its next event, or the oldest
    /// event with a command (or a timer) not answered yet.
    fn checkpoint(&self) -> u64 {
        let oldest = self.in_flight.keys().next().copied();
        self.timers
            .values()
            .map(|timer| timer.event.position)
            .chain(oldest)
            .fold(self.next_position, u64::min)
    }

    /// The outstanding command `command_id` of an event in flight or of a timer, with the
    /// event that set it off.
    fn outstanding_mut(
        &mut self,
        command_id: &CommandId,
    ) -> Option<(&RecordedEvent, &mut Outstanding)> {
        let in_flight = self
            .in_flight
            .values_mut()
            .find(|handled| handled.outstanding.contains_key(command_id));
        if let Some(ManagerEvent { event, outstanding }) = in_flight {
            return outstanding
                .get_mut(command_id)
                .map(|found| (&*event, found));
        }
        self.timers
            .get_mut(command_id)
            .map(|timer| (&timer.event, &mut timer.outstanding))
    }

    /// Forgets an answered command.
    fn answered(&mut self, command_id: &CommandId) {
        for handled in self.in_flight.values_mut() {
            if handled.outstanding.remove(command_id).is_some() {
                break;
            }
        }
        self.timers.remove(command_id);
    }
}

/// The event a process manager is handling.
pub(super) struct ManagerEvent {
    pub(super) event: RecordedEvent,
    /// Commands sent for the event and not answered yet.
    pub(super) outstanding: BTreeMap<CommandId, Outstanding>,
}

/// A process manager's command not answered yet.
pub(super) struct Outstanding {
    pub(super) request: CommandRequest,
    /// When to send it (again); `None` while one is on its way.
    pub(super) send_at: Option<u64>,
    /// Sends so far (a command for another section goes to another of its members each
    /// time).
    pub(super) sends: u32,
}

impl Outstanding {
    /// A command to send at `now`, or at its scheduled time if later.
    fn due(request: CommandRequest, now: u64) -> Self {
        let send_at = request.not_before_ms.map_or(now, |at| at.max(now));
        Self {
            request,
            send_at: Some(send_at),
            sends: 0,
        }
    }
}

/// The checkpoint name of a process manager run by the engine.
pub(super) fn manager_checkpoint(name: &str) -> String {
    format!("$engine/manager/{name}")
}

impl Engine {
    /// Runs a process manager on this section's agreed events, from its saved checkpoint (the
    /// first event if none). Every member of a section runs the same managers, and their
    /// commands have ids derived from the event ([`CommandRequest::caused_by`]), so the
    /// section agrees on each command once whoever sends it; the members of another section
    /// dedupe forwarded copies the same way. A refused command is handed to the manager's
    /// `on_rejected` (its compensation); one that failed is sent again after
    /// `MANAGER_RETRY_MS`. Add managers again after a restart: they resume from their
    /// checkpoints (saved without fsync, so a crash may replay events, which the ids absorb).
    pub fn add_process_manager(
        &mut self,
        manager: Box<dyn ProcessManager>,
    ) -> Result<(), EngineError> {
        let next_position = match self
            .store
            .load_checkpoint(&manager_checkpoint(manager.name()))?
        {
            Some(bytes) => u64::from_le_bytes(bytes.as_slice().try_into().map_err(|_| {
                StoreError::Corrupt(format!("checkpoint of process manager {}", manager.name()))
            })?),
            None => 1,
        };
        self.managers.push(ManagerRun {
            manager,
            next_position,
            in_flight: BTreeMap::new(),
            wake_at_ms: 0,
            unsaved: 0,
            timers: BTreeMap::new(),
        });
        self.run_managers();
        Ok(())
    }

    /// Takes the process managers forward: handles the answers to their commands (a
    /// refusal goes to `on_rejected`, a failure is sent again later), hands each manager its
    /// next events of our section while it has room in flight, and sends what is due. Only an
    /// active member runs them (a joiner's store is not complete).
    pub(super) fn run_managers(&mut self) {
        if self.managers.is_empty() || !self.is_active_member() {
            return;
        }
        let now = self.now_ms;
        let Ok(head) = self.store.head_position() else {
            return;
        };
        for _ in 0..MANAGER_EVENTS_PER_RUN {
            let mut progressed = false;
            while let Some((index, command_id, outcome)) = self.manager_answers.pop_front() {
                progressed = true;
                if let Some(run) = self.managers.get_mut(index) {
                    handle_answer(run, command_id, outcome, now);
                }
            }
            for index in 0..self.managers.len() {
                progressed |= self.step_manager(index, now, head);
            }
            if !progressed && self.manager_answers.is_empty() {
                return;
            }
        }
    }

    /// One step of one manager: send its due timers, retire its answered events, take its
    /// next events of our section, send its due commands. True if anything moved.
    pub(super) fn step_manager(&mut self, index: usize, now: u64, head: u64) -> bool {
        let fired = self.fire_timers(index, now);
        let Some(run) = self.managers.get_mut(index) else {
            return fired;
        };
        let before = run.in_flight.len();
        run.in_flight
            .retain(|_, handled| !handled.outstanding.is_empty());
        let retired = before - run.in_flight.len();
        run.unsaved = run.unsaved.saturating_add(retired as u32);
        let taken = self.take_events(index, now, head);
        let sent = self.send_due(index, now);
        self.save_checkpoint_if_due(index, head);
        fired || retired > 0 || taken || sent
    }

    /// Reads and handles the manager's next events while it has room in flight. True if it
    /// moved past anything.
    fn take_events(&mut self, index: usize, now: u64, head: u64) -> bool {
        let prefix = self.state.prefix;
        let Some(run) = self.managers.get_mut(index) else {
            return false;
        };
        let room = MANAGER_EVENTS_IN_FLIGHT.saturating_sub(run.in_flight.len());
        if room == 0 || run.next_position > head || run.timers.len() >= TIMERS_PER_MANAGER_MAX {
            return false; // full, nothing new in the store, or no room for its timers
        }
        let filter = run.manager.filter();
        let count = room.min(MANAGER_READ_PAGE);
        let slice = match self.store.read_log(&filter, run.next_position, count) {
            Ok(slice) => slice,
            Err(error) => {
                warn!(%error, "a process manager cannot read the store");
                return false;
            }
        };
        let start = run.next_position;
        for event in slice.events {
            run.next_position = event.position + 1;
            // Only the section that owns an event's stream reacts to it (after a split, each
            // half its own streams).
            if !prefix.matches(&XorName::from_stream_key(&event.stream.qualified())) {
                continue;
            }
            let (scheduled, commands): (Vec<_>, Vec<_>) = run
                .manager
                .handle(&event)
                .into_iter()
                .partition(|request| request.not_before_ms.is_some_and(|at| at > now));
            for request in scheduled {
                run.timers.insert(
                    request.command_id,
                    Timer {
                        event: event.clone(),
                        outstanding: Outstanding::due(request, now),
                    },
                );
            }
            if commands.is_empty() {
                run.unsaved = run.unsaved.saturating_add(1);
                continue;
            }
            run.wake_at_ms = 0;
            let outstanding = commands
                .into_iter()
                .map(|request| (request.command_id, Outstanding::due(request, now)))
                .collect();
            run.in_flight
                .insert(event.position, ManagerEvent { event, outstanding });
        }
        // A stretch the filter skipped, or the page's end: go on from where the read stopped.
        if let Some(next) = slice.next {
            run.next_position = run.next_position.max(next);
        }
        run.next_position > start
    }

    /// Sends the commands of events in flight that are due and first in line for their
    /// stream (every earlier command to it answered). True if any was sent.
    fn send_due(&mut self, index: usize, now: u64) -> bool {
        let Some(run) = self.managers.get_mut(index) else {
            return false;
        };
        if now < run.wake_at_ms {
            return false;
        }
        let mut waited_for: HashSet<String> = HashSet::new();
        let mut wake_at_ms = u64::MAX;
        let mut due: Vec<(CommandRequest, u32)> = Vec::new();
        for outstanding in run
            .in_flight
            .values_mut()
            .flat_map(|handled| handled.outstanding.values_mut())
        {
            if !waited_for.insert(outstanding.request.stream.qualified()) {
                continue; // behind an earlier command to its stream: its answer wakes us
            }
            match outstanding.send_at {
                Some(at) if at <= now => {
                    outstanding.send_at = None;
                    outstanding.sends += 1;
                    due.push((outstanding.request.clone(), outstanding.sends - 1));
                }
                Some(at) => wake_at_ms = wake_at_ms.min(at),
                None => {}
            }
        }
        run.wake_at_ms = wake_at_ms;
        let sent = !due.is_empty();
        for (request, attempt) in due {
            self.route(Waiter::Manager(index), request, attempt);
        }
        sent
    }

    /// Saves the manager's checkpoint when it has caught up, or every so many events: a
    /// checkpoint is a write transaction, and a lost one only replays events whose commands
    /// the ids absorb.
    fn save_checkpoint_if_due(&mut self, index: usize, head: u64) {
        let Some(run) = self.managers.get_mut(index) else {
            return;
        };
        let caught_up = run.in_flight.is_empty() && run.next_position > head;
        if run.unsaved == 0 || !(caught_up || run.unsaved >= MANAGER_CHECKPOINT_EVERY) {
            return;
        }
        run.unsaved = 0;
        let checkpoint = run.checkpoint().to_le_bytes();
        let name = manager_checkpoint(run.manager.name());
        if let Err(error) = self.store.save_checkpoint(&name, &checkpoint) {
            debug!(%error, "process manager checkpoint not saved");
        }
    }

    /// Sends a manager's timers that are due by the section's agreed time or by our clock
    /// (the block decides: `Applied::Early`). True if any was sent.
    fn fire_timers(&mut self, index: usize, now: u64) -> bool {
        let time = now.max(self.current.clock_ms);
        let Some(run) = self.managers.get_mut(index) else {
            return false;
        };
        let due: Vec<(CommandRequest, u32)> = run
            .timers
            .values_mut()
            .map(|timer| &mut timer.outstanding)
            .filter(|outstanding| outstanding.send_at.is_some_and(|at| at <= time))
            .map(|outstanding| {
                outstanding.send_at = None;
                outstanding.sends += 1;
                (outstanding.request.clone(), outstanding.sends - 1)
            })
            .collect();
        let fired = !due.is_empty();
        for (request, attempt) in due {
            self.route(Waiter::Manager(index), request, attempt);
        }
        fired
    }
}

/// Handles the answer to one of a manager's commands: done, compensated (`on_rejected`; a
/// compensation is sent at once), or sent again after `MANAGER_RETRY_MS`.
fn handle_answer(run: &mut ManagerRun, command_id: CommandId, outcome: CommandOutcome, now: u64) {
    let Some((event, outstanding)) = run.outstanding_mut(&command_id) else {
        return;
    };
    let (event, request) = (event.clone(), outstanding.request.clone());
    // An answer may free the next command to its stream, or bring a compensation.
    run.wake_at_ms = 0;
    match outcome {
        CommandOutcome::Committed(_) | CommandOutcome::AlreadyCommitted(_) => {
            run.answered(&command_id);
        }
        CommandOutcome::IdTaken => {
            warn!(%command_id, "a process manager's command id was taken by another command; not compensated");
            run.answered(&command_id);
        }
        CommandOutcome::Refused(reason) | CommandOutcome::Invalid(reason) => {
            run.answered(&command_id);
            for compensation in run.manager.on_rejected(&event, &request, &reason) {
                let outstanding = Outstanding::due(compensation, now);
                let compensation_id = outstanding.request.command_id;
                match run.in_flight.get_mut(&event.position) {
                    Some(handled) if handled.event.event_id == event.event_id => {
                        handled.outstanding.insert(compensation_id, outstanding);
                    }
                    // A timer's compensation is a timer too (due now, or when scheduled).
                    _ => {
                        run.timers.insert(
                            compensation_id,
                            Timer {
                                event: event.clone(),
                                outstanding,
                            },
                        );
                    }
                }
            }
        }
        CommandOutcome::Failed(reason) => {
            debug!(%command_id, %reason, "a process manager's command failed; will retry");
            if let Some((_, outstanding)) = run.outstanding_mut(&command_id) {
                outstanding.send_at = Some(now + MANAGER_RETRY_MS);
            }
        }
    }
}
