//! Joining and leaving: join requests, refreshes of members that fell behind, welcomes,
//! leave requests, and what the node reports about its own readiness.

use std::collections::{BTreeMap, BTreeSet};

use chorus_consensus::{PeerId, faulty_max};
use chorus_routing::SectionMap;
use tracing::{debug, warn};

use crate::domain::{NodeDomain, SectionDomain};
use crate::membership::{
    Holding, MemberChange, SectionState, TransferTarget, Welcome, name_of, sort_members,
};

use super::Engine;
use super::admission::JoinRefusal;
use super::generation::network_of;
use super::limits::{BEHIND_REPORT_MS, NEW_MEMBER_GRACE_MS, REFRESH_INTERVAL_MIN_MS};
use super::wire::Message;

/// How far behind a member said we are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Lag {
    /// When the hint came (our clock).
    pub told_at_ms: u64,
    /// Rounds between the hinting member's latest and ours.
    pub rounds: u64,
    /// Store positions between the hinting member's head and ours.
    pub positions: u64,
}

/// Whether a node can serve its section now ([`Engine::readiness`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    /// An active member in step with its section.
    Ready,
    /// A member told it lags beyond the prune window; it is being brought back.
    Behind(Lag),
    /// Asking to be admitted (or welcomed again).
    Joining,
    /// Admitted; fetching its section's state.
    Transferring {
        /// Events received so far.
        events_received: u64,
        /// Events the handover promised.
        events_expected: u64,
    },
    /// Not a member of any section.
    NotAMember,
}

/// A joiner waiting to be welcomed.
pub(super) struct Joining {
    /// When it last asked.
    pub(super) asked_at_ms: Option<u64>,
    /// A member brought back by a refresh: the generation it lags in and when it began to
    /// ask (it gives up after `REFRESH_GIVE_UP_MS` without a welcome: the hint may have been
    /// false, and it is asked again if it was not).
    pub(super) refresh: Option<(u64, u64)>,
    /// A lagging member: the members the hint named, asked too (those that joined since
    /// its map was current; their votes count in the generation it missed).
    pub(super) also_ask: BTreeSet<PeerId>,
    /// Per sender, its latest welcome (so a faulty sender cannot crowd out honest ones).
    pub(super) welcomes: BTreeMap<PeerId, Welcome>,
    /// Per member, the latest reason it gave for not admitting us (logged when it changes).
    pub(super) refusals: BTreeMap<PeerId, JoinRefusal>,
}

impl Engine {
    /// Whether this node can serve its section now, and if not, why (for `/health`).
    pub fn readiness(&self) -> Readiness {
        let behind = self
            .current
            .behind
            .filter(|lag| self.now_ms < lag.told_at_ms + BEHIND_REPORT_MS);
        if let Some(lag) = behind {
            return Readiness::Behind(lag);
        }
        if let Some(run) = &self.transfer {
            return Readiness::Transferring {
                events_received: run.events.len() as u64,
                events_expected: self
                    .state
                    .transfer_target()
                    .map_or(0, |target| target.welcome.events),
            };
        }
        if self.joining.is_some() {
            return Readiness::Joining;
        }
        if self.state.members.is_empty() || self.current.consensus.is_none() {
            return Readiness::NotAMember;
        }
        if !self.is_active_member() {
            return Readiness::Joining;
        }
        Readiness::Ready
    }

    /// Asks the section to let this node leave: the member votes for its own leave and asks
    /// the others to. Once agreed, the node is no member any more (it still forwards
    /// commands and answers gossip about the generation it left). A leave that would shrink
    /// a section below `section_size_min` is not applied (merging is not built).
    pub fn leave(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        if self.current.consensus.is_none() {
            return;
        }
        self.ask_to_leave();
        self.drain();
    }

    /// Votes for our own leave and asks the others to (again every `JOIN_RETRY_MS` until it
    /// is agreed: requests get lost).
    pub(super) fn ask_to_leave(&mut self) {
        self.leaving = Some(self.now_ms);
        self.vote_change(MemberChange::Leave(self.our_id));
        for member in self.state.members.clone() {
            if member != self.our_id {
                self.send(member, &Message::LeaveRequest);
            }
        }
    }

    /// A node asks to join. A member of ours asking again gets its welcome again (the first
    /// may have been lost) and is brought back if it lags; any other node is judged by
    /// `on_stranger_join_request` (admission).
    pub(super) fn on_join_request(&mut self, from: PeerId, domain: &NodeDomain) {
        if self.state.members.contains(&from) {
            self.send_welcome(from);
            // A member asking again lags: brought back if our own graph shows it, unless it
            // is new here: welcomed into this very generation and not yet heard from, for at
            // most `NEW_MEMBER_GRACE_MS` (a joiner or a refreshed member still fetching its
            // state has no events yet: it is not behind, only new). A member that took part
            // in this generation and fell behind again is refreshed again: skipping it
            // because of its earlier welcome left it stuck for good.
            let welcomed_now = self.state.handovers.iter().any(|handover| {
                handover.joiner == from && handover.generation == self.state.generation
            });
            let heard_from = self
                .current
                .consensus
                .as_ref()
                .is_some_and(|consensus| consensus.holds_events_of(&from));
            let new_here = welcomed_now
                && !heard_from
                && self.now_ms < self.current.started_ms + NEW_MEMBER_GRACE_MS;
            // And at most once per `REFRESH_INTERVAL_MIN_MS` per member (by our clock): a
            // faulty member can make itself look behind, and each refresh is a switch.
            let refreshed_lately = self
                .refreshed_at
                .get(&from)
                .is_some_and(|at| self.now_ms < at + REFRESH_INTERVAL_MIN_MS);
            // Behind: beyond our window, or not in this generation at all (it missed the
            // switch that started it; an honest member asks only when told it lags, so a
            // member that takes part is not refreshed by a false hint).
            let lags = !new_here
                && !refreshed_lately
                && self.is_active_member()
                && self.current.consensus.as_ref().is_some_and(|consensus| {
                    consensus.lags_beyond_window(&from) || !consensus.holds_events_of(&from)
                });
            if lags {
                self.vote_change(MemberChange::Refresh(from));
            }
            return;
        }
        // A joiner whose join split our section, and that landed in the other half: it counts
        // the welcomes of the members it knew before the split, so we still vouch for the
        // handover we hold (without it, a joiner restarted before it had enough welcomes
        // could gather them from its own half only, never two thirds: it stayed joining).
        // Only while the map still has it: a node that left since asks as a stranger.
        let in_the_network = self.map.section_of_member(&name_of(&from)).is_some();
        if in_the_network
            && self
                .state
                .handovers
                .iter()
                .any(|handover| handover.joiner == from)
        {
            self.send_welcome(from);
            return;
        }
        self.on_stranger_join_request(from, domain);
    }

    /// A member says we lag beyond its prune window: we ask to be welcomed again (each member
    /// votes on what its own graph shows, so a false hint costs a few requests).
    pub(super) fn on_behind(
        &mut self,
        from: PeerId,
        generation: u64,
        (round, head_position): (u64, u64),
        members: Vec<PeerId>,
    ) {
        if generation != self.state.generation
            || !self.state.members.contains(&from)
            || !self.is_active_member()
        {
            return;
        }
        // What operators see (`readiness`): the lag the latest hint shows, kept while hints
        // keep coming.
        let our_round = self
            .current
            .consensus
            .as_ref()
            .map_or(0, |consensus| consensus.stats().max_round);
        let our_head = self.store.head_position().unwrap_or(0);
        self.current.behind = Some(Lag {
            told_at_ms: self.now_ms,
            rounds: round.saturating_sub(our_round),
            positions: head_position.saturating_sub(our_head),
        });
        if self.joining.is_some() {
            return;
        }
        warn!(peer = %from, generation, "a member says we fell too far behind; asking for a state transfer");
        self.joining = Some(Joining {
            asked_at_ms: None,
            refresh: Some((generation, self.now_ms)),
            also_ask: members.into_iter().collect(),
            welcomes: BTreeMap::new(),
            refusals: BTreeMap::new(),
        });
        self.ask_to_join();
    }

    /// Joiner: asks every member of the section covering its name to admit it.
    pub(super) fn ask_to_join(&mut self) {
        let section = self.map.section_for(&name_of(&self.our_id));
        let mut members: BTreeSet<PeerId> = section.member_keys().into_iter().map(PeerId).collect();
        if let Some(joining) = &self.joining {
            members.extend(joining.also_ask.iter().copied());
        }
        for member in members {
            if member != self.our_id {
                self.send(member, &Message::JoinRequest(self.domain.clone()));
            }
        }
        if let Some(joining) = self.joining.as_mut() {
            joining.asked_at_ms = Some(self.now_ms);
        }
    }

    /// Joiner: a welcome. Believed once more than two thirds of the members of the section
    /// the joiner knows sent the same one (over channels authenticated by their keys), so the
    /// digest it promises is the section's, not a minority's; then the joiner starts the
    /// generation's consensus instance and fetches the state, which must match that digest.
    pub(super) fn on_welcome(&mut self, from: PeerId, welcome: Welcome) {
        let Some(joining) = self.joining.as_ref() else {
            return;
        };
        let voters: Vec<PeerId> = self
            .map
            .section_for(&name_of(&self.our_id))
            .member_keys()
            .into_iter()
            .map(PeerId)
            .collect();
        if !voters.contains(&from) || !self.welcome_is_plausible(joining, &welcome) {
            debug!(peer = %from, "implausible welcome ignored");
            return;
        }
        let Some(joining) = self.joining.as_mut() else {
            return;
        };
        joining.welcomes.insert(from, welcome.clone());
        let alike: Vec<(&PeerId, &Welcome)> = joining
            .welcomes
            .iter()
            .filter(|(_, heard)| heard.same_state(&welcome))
            .collect();
        if alike.len() * 3 <= voters.len() * 2 {
            return;
        }
        let sources: Vec<PeerId> = alike.iter().map(|(sender, _)| **sender).collect();
        // The numbering is kept only when f + 1 of them vouch for the same one.
        let numbering = alike
            .iter()
            .filter_map(|(_, heard)| heard.numbering)
            .find(|numbering| {
                let vouching = alike
                    .iter()
                    .filter(|(_, heard)| heard.numbering == Some(*numbering))
                    .count();
                vouching > faulty_max(voters.len())
            });
        let welcome = Welcome {
            numbering,
            ..welcome
        };
        // Our map: what we knew, with our section as the welcome says it is now.
        let mut network: Vec<[u8; 32]> = network_of(&self.map)
            .into_iter()
            .filter(|member| !welcome.prefix.matches(&name_of(member)))
            .map(|member| member.0)
            .collect();
        network.extend(welcome.members.iter().map(|member| member.0));
        let map = SectionMap::with_members(self.map.section_size_min(), &network);
        // The domain the generation starts from (a welcome of an earlier release names none:
        // its members admitted joiners of their own domain only).
        let section_domain = welcome
            .domain
            .clone()
            .unwrap_or_else(|| SectionDomain::new(self.domain.runs.clone()));
        if !self.domain.can_run(&section_domain.agreed) {
            self.halt(format!(
                "this node runs domain {} but was welcomed into a section that runs domain {}: \
                 run the section's application",
                self.domain.runs, section_domain.agreed
            ));
            return;
        }
        let state = SectionState {
            generation: welcome.generation,
            prefix: welcome.prefix,
            members: welcome.members.clone(),
            network: network_of(&map),
            holding: Holding::Fetching(Box::new(TransferTarget { welcome, sources })),
            start_head: 0,
            handovers: Vec::new(),
        };
        if let Err(error) = section_domain
            .save(&self.store)
            .and_then(|()| state.save(&self.store))
        {
            warn!(%error, "section state not saved; will ask to join again");
            return;
        }
        self.section_domain = section_domain;
        self.enter_welcomed(map, state);
    }

    /// Whether a welcome could be true: it names us, in a section our name falls in, with its
    /// members in order, and (for a lagging member) to a later generation than the one it is
    /// in: a welcome from its own admission sent again, or one to the generation it reached
    /// by itself meanwhile, must not start that instance a second time (it would sign a
    /// second first event).
    fn welcome_is_plausible(&self, joining: &Joining, welcome: &Welcome) -> bool {
        let our_name = name_of(&self.our_id);
        let mut sorted = welcome.members.clone();
        sort_members(&mut sorted);
        let later = joining.refresh.is_none_or(|(generation, _)| {
            welcome.generation > generation && welcome.generation > self.state.generation
        });
        later
            && welcome.members.contains(&self.our_id)
            && sorted == welcome.members
            && welcome.prefix.matches(&our_name)
            && welcome
                .members
                .iter()
                .all(|member| welcome.prefix.matches(&name_of(member)))
    }

    /// Enters the generation a believed welcome (saved as `state`) names, and starts
    /// fetching the section's state.
    fn enter_welcomed(&mut self, map: SectionMap, state: SectionState) {
        let refreshed = self
            .joining
            .take()
            .is_some_and(|joining| joining.refresh.is_some());
        let old_generation = self.state.generation;
        let previous = self.enter_generation(map, state);
        if refreshed {
            // The generation we lagged in is over for us: what it did not apply, the
            // transfer brings; our pending commands go to the new one.
            self.retired = previous
                .consensus
                .map(|consensus| (old_generation, consensus));
            self.unapplied.clear();
            self.reroute_pending();
        }
        self.start_transfer(0);
    }
}
