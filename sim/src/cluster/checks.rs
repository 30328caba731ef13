//! The checkers of an engine-mode run: stores agree within each section, every acknowledged
//! command is stored exactly once, money is conserved, every saga ran exactly once.

use std::collections::BTreeMap;

use chorus_aggregate::{CommandId, CommandRecord, Filter};
use chorus_demo::bank_account::BankAccountEvent;
use chorus_engine::CommandOutcome;
use chorus_routing::XorName;

use super::ClusterSim;

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

    /// Runs every checker; returns the violations found, each a sentence.
    pub fn check(&self) -> Vec<String> {
        let mut violations = Vec::new();
        let mut submitted: std::collections::BTreeSet<CommandId> = self
            .submitted
            .iter()
            .map(|submitted| submitted.request.command_id)
            .collect();
        submitted.extend(self.saga_commands());
        let map = self.map();
        if let Err(error) = map.check() {
            violations.push(format!("the section map breaks an invariant: {error}"));
        }
        for section in map.sections() {
            let prefix = section.prefix();
            let members = self.listed_members(section);
            let mut views = std::collections::BTreeSet::new();
            for node in &members {
                let Some(engine) = self.engines[*node].as_ref() else {
                    continue;
                };
                if !engine.is_active_member() || engine.section().prefix != prefix {
                    violations.push(format!(
                        "node {node} is listed in section {prefix} but is not active in it"
                    ));
                }
                let state = engine.section();
                views.insert((state.generation, state.prefix, state.members.clone()));
            }
            if views.len() > 1 {
                violations.push(format!(
                    "the members of section {prefix} disagree on its generation or members"
                ));
            }
            let digests: Vec<Option<[u8; 32]>> = members
                .iter()
                .map(|node| self.section_digest(*node, &prefix))
                .collect();
            if !digests.windows(2).all(|pair| pair[0] == pair[1]) {
                violations.push(format!(
                    "the members of section {prefix} hold different stores"
                ));
            }
            for node in &members {
                violations.extend(self.check_store(*node, &submitted));
            }
        }
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
                    violations.push(format!(
                        "command {ticket} was answered committed but node {node} does not hold it"
                    ));
                }
            }
        }
        violations
    }

    /// One member's store: streams route to its section, accounts never overdrawn, only
    /// submitted commands applied, no event twice.
    pub(super) fn check_store(
        &self,
        node: usize,
        submitted: &std::collections::BTreeSet<CommandId>,
    ) -> Vec<String> {
        let mut violations = Vec::new();
        let Some(engine) = self.engines[node].as_ref() else {
            violations.push(format!("node {node} is down; its store was not checked"));
            return violations;
        };
        let store = engine.store();
        let mut balances: BTreeMap<String, u64> = BTreeMap::new();
        let mut event_ids = std::collections::BTreeSet::new();
        let mut from = 1;
        loop {
            let slice = match store.read_log(&Filter::All, from, 1_000) {
                Ok(slice) => slice,
                Err(error) => {
                    violations.push(format!("node {node}: the store does not read: {error}"));
                    return violations;
                }
            };
            for event in &slice.events {
                let stream = event.stream.qualified();
                let section = self.histories[node]
                    .iter()
                    .rev()
                    .find(|(_, start_head, _)| *start_head < event.position)
                    .map(|(_, _, prefix)| *prefix);
                if !section.is_some_and(|prefix| prefix.matches(&XorName::from_stream_key(&stream)))
                {
                    violations.push(format!(
                        "node {node} wrote an event of stream {stream} at position {} while in section {section:?}, which does not cover it",
                        event.position
                    ));
                }
                // Only commands clients sent may have effects: a forged proposal applied
                // under a made-up id shows up here even when its events add up.
                if let Some(command_id) = event.command_id {
                    if !submitted.contains(&command_id) {
                        violations.push(format!(
                            "node {node}: command {command_id}, which no client sent, was applied"
                        ));
                    }
                }
                // The store refuses a second write of the same event ids; this checks that
                // invariant of the store, not double application by the engine, which the
                // command records (one fate per id) prevent.
                if !event_ids.insert(event.event_id) {
                    violations.push(format!(
                        "node {node}: event {} of command {:?} is in the store twice",
                        event.event_id, event.command_id
                    ));
                }
                if event.stream.category().as_str() != "BankAccount" {
                    continue;
                }
                let decoded = chorus_aggregate::domain::decode_event::<BankAccountEvent>(
                    event.event_type.as_str(),
                    event.event_version,
                    &event.payload,
                );
                let balance = balances.entry(stream.clone()).or_default();
                match decoded {
                    Ok(BankAccountEvent::Deposited { amount, balance: after, .. }) => {
                        *balance = balance.saturating_add(amount);
                        if *balance != after {
                            violations.push(format!("node {node}: {stream} deposit to {after}, expected {balance}"));
                        }
                    }
                    Ok(BankAccountEvent::Withdrawn { amount, balance: after, .. }) => {
                        match balance.checked_sub(amount) {
                            Some(left) if left == after => *balance = left,
                            _ => violations.push(format!(
                                "node {node}: {stream} withdrawal of {amount} from {balance} (overdraft or wrong balance)"
                            )),
                        }
                    }
                    Ok(BankAccountEvent::AccountOpened { .. }) => {}
                    Err(error) => violations.push(format!("node {node}: {stream}: {error}")),
                }
            }
            match slice.next {
                Some(next) => from = next,
                None => break,
            }
        }
        violations
    }
}
