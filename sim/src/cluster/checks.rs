//! The checkers of an engine-mode run: each section's members agree on it and hold the same
//! store, every acknowledged command is stored, every event is of the writer's section and of a
//! command someone sent, no event id twice, no account overdrawn or misbalanced.

use std::collections::{BTreeMap, BTreeSet};

use chorus_aggregate::{CommandId, CommandRecord, EventId, Filter, RecordedEvent};
use chorus_demo::bank_account::BankAccountEvent;
use chorus_engine::CommandOutcome;
use chorus_routing::XorName;

use super::ClusterSim;
use crate::{Violation, ViolationKind};

impl ClusterSim {
    /// The running nodes that are active members of the section with `prefix`.
    pub(super) fn members(&self, prefix: &chorus_routing::Prefix) -> Vec<usize> {
        (0..self.engines.len())
            .filter(|node| {
                self.engines[*node].as_ref().is_some_and(|engine| {
                    engine.is_active_member() && engine.section().prefix == *prefix
                })
            })
            .collect()
    }

    /// The nodes the current map counts as members of the section with `prefix`, running or
    /// not.
    pub(super) fn listed_members(&self, section: &chorus_routing::Section) -> Vec<usize> {
        (0..self.engines.len())
            .filter(|node| section.contains(&XorName::from_public_key(&self.ids[*node].0)))
            .collect()
    }

    pub(super) fn section_digest(
        &self,
        node: usize,
        prefix: &chorus_routing::Prefix,
    ) -> Option<[u8; 32]> {
        self.engines[node].as_ref().and_then(|engine| {
            chorus_engine::membership::store_section_digest(engine.store(), prefix).ok()
        })
    }

    pub(super) fn stores_agree(&self) -> bool {
        let map = self.map();
        map.sections().all(|section| {
            let listed = self.listed_members(section);
            let active = self.members(&section.prefix());
            let digests: Vec<Option<[u8; 32]>> = listed
                .iter()
                .map(|node| self.section_digest(*node, &section.prefix()))
                .collect();
            listed
                .iter()
                .all(|node| self.engines[*node].is_none() || active.contains(node))
                && digests.windows(2).all(|pair| pair[0] == pair[1])
        })
    }

    /// With the saga running, the ids of the commands it may send: for every event some store
    /// holds, the ids `CommandRequest::caused_by` derives for its first three commands. A
    /// command the saga sent has one of them; a forged one under a made-up id does not.
    pub(super) fn saga_commands(&self) -> Vec<CommandId> {
        use chorus_aggregate::ProcessManager;
        if !self.saga {
            return Vec::new();
        }
        let name = chorus_demo::transfer::TransferSaga.name().to_owned();
        let mut ids = Vec::new();
        for engine in self.engines.iter().flatten() {
            let mut from = 1;
            while let Ok(slice) = engine.store().read_log(&Filter::All, from, 1_000) {
                for event in &slice.events {
                    for index in 0..3u64 {
                        ids.push(CommandId::derive(&[
                            name.as_bytes(),
                            &event.event_id.0,
                            &index.to_le_bytes(),
                        ]));
                    }
                }
                match slice.next {
                    Some(next) => from = next,
                    None => break,
                }
            }
        }
        ids
    }

    /// A violation found now on `node`.
    fn found(&self, kind: ViolationKind, node: usize, detail: String) -> Violation {
        Violation {
            kind,
            at_ms: self.now_ms,
            node,
            detail,
        }
    }

    /// Runs every checker on the cluster as it is now (call it once the run settled).
    pub fn violations(&self) -> Vec<Violation> {
        let mut violations = Vec::new();
        let mut submitted: BTreeSet<CommandId> = self
            .submitted
            .iter()
            .map(|submitted| submitted.request.command_id)
            .collect();
        submitted.extend(self.saga_commands());
        let map = self.map();
        if let Err(error) = map.check() {
            violations.push(self.found(
                ViolationKind::Membership,
                0,
                format!("the section map breaks an invariant: {error}"),
            ));
        }
        for section in map.sections() {
            violations.extend(self.check_section(section));
            for node in self.listed_members(section) {
                violations.extend(self.check_store(node, &submitted));
            }
        }
        violations.extend(self.check_committed(&map));
        violations
    }

    /// Panics with every violation found, if any.
    pub fn assert_no_violations(&self) {
        let violations = self.violations();
        assert!(
            violations.is_empty(),
            "{} violation(s):\n{}",
            violations.len(),
            violations
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    /// One section: every listed member is active in it, they agree on its generation and
    /// members, and they hold the same store.
    fn check_section(&self, section: &chorus_routing::Section) -> Vec<Violation> {
        let prefix = section.prefix();
        let members = self.listed_members(section);
        let first = members.first().copied().unwrap_or(0);
        let mut violations = Vec::new();
        let mut views = BTreeSet::new();
        for node in &members {
            let Some(engine) = self.engines[*node].as_ref() else {
                continue;
            };
            if !engine.is_active_member() || engine.section().prefix != prefix {
                violations.push(self.found(
                    ViolationKind::Membership,
                    *node,
                    format!("listed in section {prefix} but not active in it"),
                ));
            }
            if let Some(reason) = engine.halted() {
                violations.push(self.found(
                    ViolationKind::Membership,
                    *node,
                    format!("listed in section {prefix} but halted: {reason}"),
                ));
            }
            let state = engine.section();
            views.insert((
                state.generation,
                state.prefix,
                state.members.clone(),
                engine.section_domain().agreed.clone(),
            ));
        }
        if views.len() > 1 {
            violations.push(self.found(
                ViolationKind::Membership,
                first,
                format!(
                    "the members of section {prefix} disagree on its generation, members or \
                     agreed domain"
                ),
            ));
        }
        let digests: Vec<Option<[u8; 32]>> = members
            .iter()
            .map(|node| self.section_digest(*node, &prefix))
            .collect();
        if !digests.windows(2).all(|pair| pair[0] == pair[1]) {
            violations.push(self.found(
                ViolationKind::Divergence,
                first,
                format!("the members of section {prefix} hold different stores"),
            ));
        }
        violations
    }

    /// Every command answered `Committed` is in the store of every member of its section.
    fn check_committed(&self, map: &chorus_routing::SectionMap) -> Vec<Violation> {
        let mut violations = Vec::new();
        for (ticket, submitted) in self.submitted.iter().enumerate() {
            let Some((CommandOutcome::Committed(_), _)) = &submitted.answer else {
                continue;
            };
            let section = map.section_for_stream(&submitted.request.stream.qualified());
            for node in self.listed_members(section) {
                let Some(engine) = self.engines[node].as_ref() else {
                    continue;
                };
                let record = engine.store().command_record(submitted.request.command_id);
                if !matches!(record, Ok(Some(CommandRecord::Appended(_)))) {
                    violations.push(self.found(
                        ViolationKind::Lost,
                        node,
                        format!("command {ticket} was answered committed but is not stored here"),
                    ));
                }
            }
        }
        violations
    }

    /// One member's store: streams route to its section, only submitted commands applied, no
    /// event twice, accounts never overdrawn.
    fn check_store(&self, node: usize, submitted: &BTreeSet<CommandId>) -> Vec<Violation> {
        let Some(engine) = self.engines[node].as_ref() else {
            let detail = "down when the run ended; its store was not checked".to_owned();
            return vec![self.found(ViolationKind::Liveness, node, detail)];
        };
        let mut violations = Vec::new();
        let mut balances: BTreeMap<String, u64> = BTreeMap::new();
        let mut event_ids = BTreeSet::new();
        let mut from = 1;
        loop {
            let slice = match engine.store().read_log(&Filter::All, from, 1_000) {
                Ok(slice) => slice,
                Err(error) => {
                    let detail = format!("the store does not read: {error}");
                    violations.push(self.found(ViolationKind::Domain, node, detail));
                    return violations;
                }
            };
            for event in &slice.events {
                violations.extend(self.check_event(node, event, submitted, &mut event_ids));
                violations.extend(self.check_balance(node, event, &mut balances));
            }
            match slice.next {
                Some(next) => from = next,
                None => return violations,
            }
        }
    }

    /// One stored event: of a stream its section covered when written, of a command a client
    /// (or the saga) sent, and stored once.
    fn check_event(
        &self,
        node: usize,
        event: &RecordedEvent,
        submitted: &BTreeSet<CommandId>,
        event_ids: &mut BTreeSet<EventId>,
    ) -> Vec<Violation> {
        let mut violations = Vec::new();
        let stream = event.stream.qualified();
        let section = self.histories[node]
            .iter()
            .rev()
            .find(|(_, start_head, _)| *start_head < event.position)
            .map(|(_, _, prefix)| *prefix);
        if !section.is_some_and(|prefix| prefix.matches(&XorName::from_stream_key(&stream))) {
            violations.push(self.found(
                ViolationKind::Routing,
                node,
                format!(
                    "wrote an event of stream {stream} at position {} while in section \
                     {section:?}, which does not cover it",
                    event.position
                ),
            ));
        }
        // Only commands clients sent may have effects: a forged proposal applied under a
        // made-up id shows up here even when its events add up.
        if let Some(command_id) = event.command_id {
            if !submitted.contains(&command_id) {
                violations.push(self.found(
                    ViolationKind::Forgery,
                    node,
                    format!("command {command_id}, which no client sent, was applied"),
                ));
            }
        }
        // The store refuses a second write of the same event ids; this checks that invariant
        // of the store, not double application by the engine, which the command records (one
        // fate per id) prevent.
        if !event_ids.insert(event.event_id) {
            violations.push(self.found(
                ViolationKind::Duplicate,
                node,
                format!(
                    "event {} of command {:?} is in the store twice",
                    event.event_id, event.command_id
                ),
            ));
        }
        violations
    }

    /// A `BankAccount` event keeps its account's running balance, never below zero.
    fn check_balance(
        &self,
        node: usize,
        event: &RecordedEvent,
        balances: &mut BTreeMap<String, u64>,
    ) -> Option<Violation> {
        if event.stream.category().as_str() != "BankAccount" {
            return None;
        }
        let stream = event.stream.qualified();
        let decoded = chorus_aggregate::domain::decode_event::<BankAccountEvent>(
            event.event_type.as_str(),
            event.event_version,
            &event.payload,
        );
        let balance = balances.entry(stream.clone()).or_default();
        let detail = match decoded {
            Ok(BankAccountEvent::Deposited {
                amount,
                balance: after,
                ..
            }) => {
                *balance = balance.saturating_add(amount);
                (*balance != after)
                    .then(|| format!("{stream} deposit to {after}, expected {balance}"))
            }
            Ok(BankAccountEvent::Withdrawn {
                amount,
                balance: after,
                ..
            }) => match balance.checked_sub(amount) {
                Some(left) if left == after => {
                    *balance = left;
                    None
                }
                _ => Some(format!(
                    "{stream} withdrawal of {amount} from {balance} (overdraft or wrong balance)"
                )),
            },
            Ok(BankAccountEvent::AccountOpened { .. }) => None,
            Err(error) => Some(format!("{stream}: {error}")),
        };
        detail.map(|detail| self.found(ViolationKind::Domain, node, detail))
    }
}
