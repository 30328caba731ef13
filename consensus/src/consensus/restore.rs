//! Restarting a member from its replay log: the records replayed in order, with the checks a
//! record must pass, and the blocks announced again.

use std::collections::{HashSet, VecDeque};

use ed25519_dalek::SigningKey;

use crate::blocks::Tallies;
use crate::config::{Config, MEMBERS_MAX};
use crate::error::{EventError, SetupError};
use crate::event::{CheckedBody, SignedEvent, verify_signatures};
use crate::fame::Fame;
use crate::graph::{Graph, Slot};
use crate::ids::{HashMapPrehashed, HashSetPrehashed, ObservationHash, PeerId};
use crate::log::LogRecord;
use crate::order::Order;

use super::{Consensus, Stats, carried_observation};

impl Consensus {
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
    pub(super) fn replay(&mut self, record: LogRecord) -> Result<(), String> {
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
    pub(super) fn announce_undecided(&mut self) {
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
    pub(super) fn check_logged(&self, event: &SignedEvent) -> Result<(usize, CheckedBody), String> {
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
    pub(super) fn without_events(
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
        let pace = super::pace::Pace::new(now_ms, config.gossip_interval_ms, member_count);
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
            pushes: VecDeque::new(),
            blocks: VecDeque::new(),
            evidence: VecDeque::new(),
            observations: VecDeque::new(),
            log_records: VecDeque::new(),
            replaying: false,
            accused: HashSet::new(),
            pace,
            push: super::push::PushState::new(member_count),
            decided_at: super::aging::DecidedAt::default(),
            consensus_time_ms: 0,
            ordered_creators: super::aging::OrderedCreators::new(member_count),
            stats: Stats::default(),
        })
    }
}
