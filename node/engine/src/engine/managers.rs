//! Process managers run on the section's agreed events, one event at a time from a
//! checkpoint; their commands go through the command path.

use std::collections::BTreeMap;

use chorus_aggregate::{CommandId, CommandRequest, ProcessManager, RecordedEvent, StoreError};
use chorus_routing::XorName;
use tracing::{debug, warn};

use super::command_path::{CommandOutcome, Waiter};
use super::limits::{MANAGER_CHECKPOINT_EVERY, MANAGER_EVENTS_PER_RUN, MANAGER_RETRY_MS};
use super::{Engine, EngineError};

/// A process manager the engine runs: one event at a time, from its checkpoint.
pub(super) struct ManagerRun {
    pub(super) manager: Box<dyn ProcessManager>,
    /// The next global position of our store to look at.
    pub(super) next_position: u64,
    /// The event being handled and its commands not answered yet.
    pub(super) current: Option<ManagerEvent>,
    /// Events handled since the checkpoint was last saved.
    pub(super) unsaved: u32,
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
    /// A command to send at `now`.
    fn due(request: CommandRequest, now: u64) -> Self {
        Self {
            request,
            send_at: Some(now),
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
            current: None,
            unsaved: 0,
        });
        self.run_managers();
        Ok(())
    }

    /// Takes the process managers forward: handles the answers to their commands (a
    /// refusal goes to `on_rejected`, a failure is sent again later), sends what is due, and
    /// hands each manager its next event of our section once the previous one's commands are
    /// all answered. Only an active member runs them (a joiner's store is not complete).
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
                let Some(run) = self.managers.get_mut(index) else {
                    continue;
                };
                let Some(current) = run.current.as_mut() else {
                    continue;
                };
                let Some(request) = current
                    .outstanding
                    .get(&command_id)
                    .map(|outstanding| outstanding.request.clone())
                else {
                    continue;
                };
                match outcome {
                    CommandOutcome::Committed(_) | CommandOutcome::AlreadyCommitted(_) => {
                        current.outstanding.remove(&command_id);
                    }
                    CommandOutcome::IdTaken => {
                        warn!(%command_id, "a process manager's command id was taken by another command; not compensated");
                        current.outstanding.remove(&command_id);
                    }
                    CommandOutcome::Refused(reason) | CommandOutcome::Invalid(reason) => {
                        current.outstanding.remove(&command_id);
                        for compensation in
                            run.manager.on_rejected(&current.event, &request, &reason)
                        {
                            current.outstanding.insert(
                                compensation.command_id,
                                Outstanding::due(compensation, now),
                            );
                        }
                    }
                    CommandOutcome::Failed(reason) => {
                        debug!(%command_id, %reason, "a process manager's command failed; will retry");
                        if let Some(entry) = current.outstanding.get_mut(&command_id) {
                            entry.send_at = Some(now + MANAGER_RETRY_MS);
                        }
                    }
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

    /// One step of one manager: send its due commands, or finish its event and take the next
    /// one of our section. True if anything moved.
    pub(super) fn step_manager(&mut self, index: usize, now: u64, head: u64) -> bool {
        let prefix = self.state.prefix;
        let Some(run) = self.managers.get_mut(index) else {
            return false;
        };
        if run.current.is_some() {
            return self.step_current_event(index, now, head);
        }
        if run.next_position > head {
            return false; // nothing new in the store
        }
        let filter = run.manager.filter();
        let slice = match self.store.read_log(&filter, run.next_position, 1) {
            Ok(slice) => slice,
            Err(error) => {
                warn!(%error, "a process manager cannot read the store");
                return false;
            }
        };
        let Some(event) = slice.events.into_iter().next() else {
            // Nothing matched in the scanned stretch: skip it.
            let moved = slice.next.is_some_and(|next| next > run.next_position);
            if let Some(next) = slice.next {
                run.next_position = run.next_position.max(next);
            }
            return moved;
        };
        // Only the section that owns an event's stream reacts to it (after a split, each half
        // its own streams).
        if !prefix.matches(&XorName::from_stream_key(&event.stream.qualified())) {
            run.next_position = event.position + 1;
            return true;
        }
        let commands = run.manager.handle(&event);
        run.current = Some(ManagerEvent {
            event,
            outstanding: commands
                .into_iter()
                .map(|request| (request.command_id, Outstanding::due(request, now)))
                .collect(),
        });
        true
    }

    /// A manager's event in hand: sends its commands that are due, or, once all are
    /// answered, moves past the event (saving the checkpoint now and then). True if anything
    /// moved.
    fn step_current_event(&mut self, index: usize, now: u64, head: u64) -> bool {
        let Some(run) = self.managers.get_mut(index) else {
            return false;
        };
        let Some(current) = run.current.as_mut() else {
            return false;
        };
        let due: Vec<(CommandRequest, u32)> = current
            .outstanding
            .values_mut()
            .filter(|outstanding| outstanding.send_at.is_some_and(|at| at <= now))
            .map(|outstanding| {
                outstanding.send_at = None;
                outstanding.sends += 1;
                (outstanding.request.clone(), outstanding.sends - 1)
            })
            .collect();
        if !current.outstanding.is_empty() {
            let sent = !due.is_empty();
            for (request, attempt) in due {
                self.route(Waiter::Manager(index), request, attempt);
            }
            return sent;
        }
        run.next_position = current.event.position + 1;
        run.current = None;
        run.unsaved += 1;
        // Saved when caught up, or every so many events: a checkpoint is a write
        // transaction, and a lost one only replays events whose commands the ids absorb.
        if run.next_position > head || run.unsaved >= MANAGER_CHECKPOINT_EVERY {
            run.unsaved = 0;
            let checkpoint = run.next_position.to_le_bytes();
            let name = manager_checkpoint(run.manager.name());
            if let Err(error) = self.store.save_checkpoint(&name, &checkpoint) {
                debug!(%error, "process manager checkpoint not saved");
            }
        }
        true
    }
}
