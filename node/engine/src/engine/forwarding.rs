//! Commands forwarded to the section responsible for their stream, and the proof of their
//! outcome.
//!
//! One member of that section (the closest to the stream, the next one on each attempt)
//! proposes the command and answers when its block is applied. Its answer alone proves
//! nothing: a faulty member could report a refusal that never happened (and a saga would
//! compensate it) or a commit that never happened (and a client would believe it). So once
//! it answered, other members are asked what their stores recorded (`Confirm`: a confirmer
//! only reads, it never proposes), and the outcome is believed only when `f + 1` members of
//! that section answered the same fate: at least one of them is honest, and an honest
//! member's store holds only agreed outcomes.
//!
//! A confirmer that recorded nothing yet (its store is a block or two behind) is asked again
//! `CONFIRM_RETRY_MS` later; one that does not answer within `CONFIRM_PATIENCE_MS` (down, cut
//! off) is backed up by the next member. When every member asked has answered and no fate
//! has `f + 1`, or the proposer could not carry the command, or nothing is proven within the
//! forward timeout, the command fails and the client may send it again under its id.

use std::collections::{BTreeMap, VecDeque};

use chorus_aggregate::{CommandId, CommandRecord, CommandRequest, StreamKey, StreamOutcome};
use chorus_consensus::{PeerId, faulty_max};
use chorus_routing::XorName;
use tracing::debug;

use super::Engine;
use super::command_path::{CommandOutcome, Waiter};
use super::limits::{CONFIRM_PATIENCE_MS, CONFIRM_RETRY_MS};
use super::wire::Message;

/// A command we forwarded, waiting until its outcome is proven.
pub(super) struct Forwarded {
    /// The stream it addresses: a record under its id for another stream means another
    /// command took the id.
    stream: StreamKey,
    /// The member asked to propose it.
    proposer: PeerId,
    /// Every member asked (the proposer first), and where its answer stands.
    answers: BTreeMap<PeerId, Answer>,
    /// The section's other members, closest to the stream first: asked to confirm when
    /// needed.
    spare: VecDeque<PeerId>,
    /// Answers of one fate that prove it: `f + 1` of the section.
    needed: usize,
    pub(super) since_ms: u64,
}

/// Where one member's answer about a forwarded command stands.
enum Answer {
    /// Asked (first at `since`); no answer yet.
    Asked { since: u64 },
    /// Asked first at `since`; its store had recorded nothing yet when it answered at `at`.
    Undecided { since: u64, at: u64 },
    /// A confirmer with no fate to tell `CONFIRM_PATIENCE_MS` after it was first asked:
    /// backed up by another member (its answer still counts if it comes).
    Silent,
    /// What it says became of the command.
    Given(CommandOutcome),
}

/// What an answer says happened to a command, for matching answers of different members:
/// appended (with the streams' versions; positions and the duplicate flag are each member's
/// own), not applied (refused or invalid, with the reason: a store records both as a
/// refusal), or its id taken. `None` for `Failed`, which is no fate.
#[derive(PartialEq, Eq)]
enum Fate<'a> {
    Appended(&'a [StreamOutcome]),
    NotApplied(&'a str),
    IdTaken,
}

fn fate(outcome: &CommandOutcome) -> Option<Fate<'_>> {
    match outcome {
        CommandOutcome::Committed(appended) | CommandOutcome::AlreadyCommitted(appended) => {
            Some(Fate::Appended(&appended.streams))
        }
        CommandOutcome::Refused(reason) | CommandOutcome::Invalid(reason) => {
            Some(Fate::NotApplied(reason))
        }
        CommandOutcome::IdTaken => Some(Fate::IdTaken),
        CommandOutcome::Failed(_) => None,
    }
}

/// A member's answer about a command on `stream`, as we weigh it: an append that wrote no
/// event to `stream` was another command's under the same id.
fn weighed(outcome: CommandOutcome, stream: &StreamKey) -> CommandOutcome {
    match &outcome {
        CommandOutcome::Committed(appended) | CommandOutcome::AlreadyCommitted(appended)
            if !appended.streams.iter().any(|write| write.stream == *stream) =>
        {
            CommandOutcome::IdTaken
        }
        _ => outcome,
    }
}

/// For each answer given, how many answers share its fate.
fn alike_counts<'a>(given: &[&'a CommandOutcome]) -> Vec<(&'a CommandOutcome, usize)> {
    given
        .iter()
        .filter_map(|answer| {
            let fate = fate(answer)?;
            let alike = given
                .iter()
                .filter(|other| self::fate(other).as_ref() == Some(&fate))
                .count();
            Some((*answer, alike))
        })
        .collect()
}

/// The outcome `needed` of `given` agree on, if any, as the client should hear it: a
/// member's `Committed` when one says so (the confirmers read it from their stores, so they
/// say `AlreadyCommitted`), else the proposer's answer if it is alike (`AlreadyCommitted`
/// for a command sent again), else, the proposer having lied, a confirmer's answer with an
/// append reported as new.
fn proven(
    given: &[&CommandOutcome],
    proposer: Option<&CommandOutcome>,
    needed: usize,
) -> Option<CommandOutcome> {
    let (answer, _) = alike_counts(given)
        .into_iter()
        .find(|(_, alike)| *alike >= needed)?;
    let fate = fate(answer);
    let committed = given
        .iter()
        .find(|other| matches!(other, CommandOutcome::Committed(_)) && self::fate(other) == fate);
    if let Some(committed) = committed {
        return Some((*committed).clone());
    }
    if let Some(proposer) = proposer.filter(|proposer| self::fate(proposer) == fate) {
        return Some(proposer.clone());
    }
    Some(match answer {
        CommandOutcome::AlreadyCommitted(appended) => CommandOutcome::Committed(appended.clone()),
        other => other.clone(),
    })
}

impl Forwarded {
    fn proposers_answer(&self) -> Option<&CommandOutcome> {
        match self.answers.get(&self.proposer) {
            Some(Answer::Given(outcome)) => Some(outcome),
            _ => None,
        }
    }

    fn given(&self) -> Vec<&CommandOutcome> {
        self.answers
            .values()
            .filter_map(|answer| match answer {
                Answer::Given(outcome) => Some(outcome),
                _ => None,
            })
            .collect()
    }

    /// Members from whom an answer of the leading fate may still come: those asked and
    /// not yet silent, and those that recorded nothing yet.
    fn prospects(&self) -> usize {
        self.answers
            .values()
            .filter(|answer| matches!(answer, Answer::Asked { .. } | Answer::Undecided { .. }))
            .count()
    }

    fn pending(&self) -> bool {
        self.answers
            .values()
            .any(|answer| !matches!(answer, Answer::Given(_)))
    }
}

impl Engine {
    /// Forwards a command to the member of the section responsible for its stream closest to
    /// it (from the `attempt`-th on, cycling), which proposes it, and waits until `f + 1` of
    /// that section's members answer the same fate (`settle_forward` asks the others).
    pub(super) fn forward(&mut self, waiter: Waiter, request: CommandRequest, attempt: u32) {
        let command_id = request.command_id;
        let address = XorName::from_stream_key(&request.stream.qualified());
        let section = self.map.section_for(&address);
        let mut closest: VecDeque<PeerId> = section
            .closest_members(&address, section.len())
            .iter()
            .filter_map(|name| {
                section
                    .members()
                    .find(|(member, _)| *member == name)
                    .map(|(_, key)| PeerId(*key))
            })
            .collect();
        closest.rotate_left(attempt as usize % closest.len().max(1));
        let needed = faulty_max(closest.len()) + 1;
        match (closest.pop_front(), waiter) {
            (Some(proposer), Waiter::Client(_) | Waiter::Manager(_)) => {
                if !self.add_waiter(command_id, waiter) {
                    return; // forwarded already
                }
                let stream = request.stream.clone();
                self.send(proposer, &Message::Forward(request));
                let forward = Forwarded {
                    stream,
                    proposer,
                    answers: [(proposer, Answer::Asked { since: self.now_ms })].into(),
                    spare: closest,
                    needed,
                    since_ms: self.now_ms,
                };
                self.forwarded.insert(command_id, forward);
            }
            // A forwarded command must land at a responsible member: our map disagrees
            // with the sender's, and forwarding on could loop.
            (_, Waiter::Peer(from)) => self.answer_peer(
                from,
                command_id,
                CommandOutcome::Failed("forwarded to a member not responsible".to_owned()),
            ),
            (None, waiter) => self.answer_waiter(
                waiter,
                command_id,
                CommandOutcome::Failed("the responsible section has no member".to_owned()),
            ),
        }
    }

    /// A member's answer about a command we forwarded: the proposer's, or a confirmer's.
    pub(super) fn on_outcome(
        &mut self,
        from: PeerId,
        command_id: CommandId,
        outcome: CommandOutcome,
    ) {
        let now = self.now_ms;
        let Some(forward) = self.forwarded.get_mut(&command_id) else {
            debug!(peer = %from, %command_id, "an answer nobody asked for");
            return;
        };
        let Some(answer) = forward.answers.get_mut(&from) else {
            debug!(peer = %from, %command_id, "an answer this peer was not asked for");
            return;
        };
        if matches!(answer, Answer::Given(_)) {
            return; // a repeat: its first answer stands
        }
        let no_fate = fate(&outcome).is_none();
        if from == forward.proposer && no_fate {
            // It could not carry the command (busy, not responsible, ...): its reason stands,
            // and the client may send the command again.
            self.forwarded.remove(&command_id);
            self.answer(command_id, &outcome);
            return;
        }
        *answer = match answer {
            Answer::Asked { since } | Answer::Undecided { since, .. } if no_fate => {
                Answer::Undecided {
                    since: *since,
                    at: now,
                }
            }
            _ if no_fate => Answer::Silent,
            _ => Answer::Given(weighed(outcome, &forward.stream)),
        };
        self.settle_forward(command_id);
    }

    /// Answers a forwarded command once its outcome is proven; else, once the proposer
    /// answered, asks as many more members as a proof still needs (counting those that may
    /// yet answer), and fails it when nobody is left to ask.
    fn settle_forward(&mut self, command_id: CommandId) {
        let now = self.now_ms;
        let Some(forward) = self.forwarded.get_mut(&command_id) else {
            return;
        };
        let given = forward.given();
        if let Some(outcome) = proven(&given, forward.proposers_answer(), forward.needed) {
            self.forwarded.remove(&command_id);
            self.answer(command_id, &outcome);
            return;
        }
        if forward.proposers_answer().is_none() {
            return;
        }
        let leading = alike_counts(&given)
            .into_iter()
            .map(|(_, alike)| alike)
            .max()
            .unwrap_or(0);
        let mut prospects = leading + forward.prospects();
        let mut confirmers = Vec::new();
        while prospects < forward.needed {
            let Some(peer) = forward.spare.pop_front() else {
                break;
            };
            forward.answers.insert(peer, Answer::Asked { since: now });
            confirmers.push(peer);
            prospects += 1;
        }
        if confirmers.is_empty() && !forward.pending() {
            self.forwarded.remove(&command_id);
            let outcome = CommandOutcome::Failed(
                "the responsible section's members disagree on this command; send it again"
                    .to_owned(),
            );
            self.answer(command_id, &outcome);
            return;
        }
        for peer in confirmers {
            self.send(peer, &Message::Confirm(command_id));
        }
    }

    /// A node that forwarded a command to our section asks what our store recorded for it.
    pub(super) fn on_confirm(&mut self, from: PeerId, command_id: CommandId) {
        let outcome = match self.store.command_record(command_id) {
            Ok(Some(CommandRecord::Appended(outcome))) => CommandOutcome::AlreadyCommitted(outcome),
            Ok(Some(CommandRecord::Refused { reason, .. })) => CommandOutcome::Refused(reason),
            Ok(None) => CommandOutcome::Failed("not decided here yet".to_owned()),
            Err(error) => CommandOutcome::Failed(error.to_string()),
        };
        self.answer_peer(from, command_id, outcome);
    }

    /// On each tick: asks again the confirmers that had recorded nothing, backs up those
    /// that do not answer, and fails the forwards with no proof after the forward timeout.
    pub(super) fn sweep_forwarded(&mut self) {
        let now = self.now_ms;
        let mut again = Vec::new();
        let mut unsettled = Vec::new();
        for (command_id, forward) in &mut self.forwarded {
            for (peer, answer) in &mut forward.answers {
                let since = match answer {
                    Answer::Asked { since } | Answer::Undecided { since, .. } => *since,
                    Answer::Silent | Answer::Given(_) => continue,
                };
                if *peer != forward.proposer && now >= since + CONFIRM_PATIENCE_MS {
                    *answer = Answer::Silent;
                    unsettled.push(*command_id);
                } else if let Answer::Undecided { at, .. } = answer {
                    if now >= *at + CONFIRM_RETRY_MS {
                        *answer = Answer::Asked { since };
                        again.push((*peer, *command_id));
                    }
                }
            }
        }
        unsettled.dedup();
        for (peer, command_id) in again {
            self.send(peer, &Message::Confirm(command_id));
        }
        for command_id in unsettled {
            self.settle_forward(command_id);
        }
        let deadline = now.saturating_sub(self.config.forward_timeout_ms);
        let expired: Vec<(CommandId, bool)> = self
            .forwarded
            .iter()
            .filter(|(_, forward)| forward.since_ms < deadline)
            .map(|(command_id, forward)| (*command_id, forward.proposers_answer().is_some()))
            .collect();
        for (command_id, answered) in expired {
            self.forwarded.remove(&command_id);
            let reason = if answered {
                "no outcome proven by enough members of the responsible section in time"
            } else {
                "no answer from the responsible section"
            };
            let outcome = CommandOutcome::Failed(format!("{reason}; send the command again"));
            self.answer(command_id, &outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use chorus_aggregate::AppendOutcome;

    use super::*;

    fn stream(id: &str) -> StreamKey {
        StreamKey::new("BankAccount", id).expect("key")
    }

    fn appended(id: &str, version: u64, position: u64) -> AppendOutcome {
        AppendOutcome {
            first_position: position,
            last_position: position,
            streams: vec![StreamOutcome {
                stream: stream(id),
                version,
            }],
            duplicate: false,
        }
    }

    #[test]
    fn an_outcome_is_proven_only_by_enough_alike_fates() {
        let refused = CommandOutcome::Refused("insufficient funds".into());
        let other_reason = CommandOutcome::Refused("closed".into());
        let failed = CommandOutcome::Failed("busy".into());
        assert_eq!(proven(&[&refused, &other_reason], None, 2), None);
        assert_eq!(proven(&[&failed, &failed], None, 2), None);
        assert_eq!(
            proven(&[&other_reason, &refused, &refused], None, 2),
            Some(refused.clone())
        );
        // Appends alike by stream versions; positions are each member's own.
        let here = CommandOutcome::Committed(appended("a", 3, 10));
        let there = CommandOutcome::AlreadyCommitted(appended("a", 3, 12));
        let behind = CommandOutcome::AlreadyCommitted(appended("a", 2, 12));
        assert_eq!(proven(&[&here, &behind], Some(&here), 2), None);
        assert_eq!(proven(&[&here, &there], Some(&here), 2), Some(here));
    }

    #[test]
    fn a_proposer_that_lied_is_outvoted_and_the_append_is_reported_as_new() {
        let lie = CommandOutcome::Refused("forged".into());
        let confirmed = CommandOutcome::AlreadyCommitted(appended("a", 1, 5));
        assert_eq!(
            proven(&[&lie, &confirmed, &confirmed], Some(&lie), 2),
            Some(CommandOutcome::Committed(appended("a", 1, 5)))
        );
        // A command sent again: the proposer's own `AlreadyCommitted` stands.
        assert_eq!(
            proven(&[&confirmed, &confirmed], Some(&confirmed), 2),
            Some(confirmed.clone())
        );
    }

    #[test]
    fn an_append_to_another_stream_under_the_id_is_the_id_taken() {
        let elsewhere = CommandOutcome::AlreadyCommitted(appended("b", 1, 5));
        assert_eq!(weighed(elsewhere, &stream("a")), CommandOutcome::IdTaken);
        let here = CommandOutcome::AlreadyCommitted(appended("a", 1, 5));
        assert_eq!(weighed(here.clone(), &stream("a")), here);
    }
}
