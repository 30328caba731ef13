//! Who may speak to this node and whom it admits: the admission policy its operator sets,
//! the refusal of messages from nodes outside the network map, the throttle on strangers'
//! join requests, and the counters `/metrics` shows.
//!
//! The trust model (ARCHITECTURE.md): a stranger (a node in no section of our map) may only
//! ask to join. A member votes to admit a node only if the node's name falls in the
//! section's prefix and this member's policy approves its key; the section admits it only
//! once more than two thirds of the members voted so (`count_change`). So a stranger is
//! admitted only if the operators of more than two thirds of the members approved it.

use std::collections::{BTreeMap, BTreeSet};

use chorus_consensus::PeerId;
use chorus_routing::Prefix;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::Engine;
use super::budget::Budget;
use super::command_path::CommandOutcome;
use super::limits::{JOIN_REFUSALS_PER_SEC, JOIN_REQUEST_INTERVAL_MIN_MS, STRANGERS_TRACKED_MAX};
use super::wire::Message;
use crate::domain::{DomainFingerprint, NodeDomain};
use crate::membership::{MemberChange, name_of};

/// Whom this member votes to admit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Any node whose name falls in the section (local experiments and the simulator only:
    /// with it, anyone who reaches the gossip port is admitted).
    Open,
    /// Only these keys (the operator approved them).
    AllowList(BTreeSet<PeerId>),
}

impl Admission {
    /// Whether this policy approves `node`.
    pub fn approves(&self, node: &PeerId) -> bool {
        match self {
            Self::Open => true,
            Self::AllowList(allowed) => allowed.contains(node),
        }
    }
}

/// Why a member did not vote to admit a node (sent to it, so the stranger can log why).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinRefusal {
    /// This member's operator has not approved the node's key.
    NotApproved,
    /// The node's name falls outside this member's section.
    WrongSection {
        /// The member's section prefix.
        prefix: Prefix,
    },
    /// This member is not an active member itself (joining, or fetching state).
    NotActive,
    /// The node runs another domain than the member's section.
    OtherDomain {
        /// The domain the section runs.
        section: DomainFingerprint,
    },
}

impl std::fmt::Display for JoinRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotApproved => f.write_str(
                "this node's key is not on the member's allow-list: an operator must admit it \
                 (`chorus admin admit <key>`) on more than two thirds of the section's members",
            ),
            Self::WrongSection { prefix } => write!(
                f,
                "this node's name falls outside the member's section (prefix {prefix})"
            ),
            Self::NotActive => f.write_str("the member is not active itself; ask again later"),
            Self::OtherDomain { section } => write!(
                f,
                "the section runs domain {section}, not this node's: run the section's \
                 application"
            ),
        }
    }
}

/// What the engine refused or dropped from peers since it started, by reason (for
/// `/metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Refusals {
    /// Messages other than a join request from nodes outside the network map.
    pub stranger_messages: u64,
    /// Join requests dropped because the same stranger asked again too soon, or strangers
    /// as a whole asked faster than refusals are sent.
    pub join_requests_throttled: u64,
    /// Join requests this member did not vote for (the reason was sent back).
    pub joins_refused: u64,
    /// Sync requests dropped because the member was over its byte budget.
    pub sync_over_budget: u64,
    /// Sync requests dropped because they named another domain.
    pub other_domain: u64,
}

/// The engine's record of strangers and refusals.
pub(super) struct Speakers {
    /// Per stranger, when its last join request was handled (the oldest is forgotten first
    /// beyond `STRANGERS_TRACKED_MAX`).
    strangers: BTreeMap<PeerId, u64>,
    /// Refusals sent to strangers, across all of them (keys are free: a per-stranger throttle
    /// alone bounds nothing).
    refusal_budget: Budget,
    pub(super) refusals: Refusals,
}

impl Speakers {
    pub(super) fn new(now_ms: u64) -> Self {
        Self {
            strangers: BTreeMap::new(),
            refusal_budget: Budget::new(JOIN_REFUSALS_PER_SEC, JOIN_REFUSALS_PER_SEC, now_ms),
            refusals: Refusals::default(),
        }
    }

    /// Whether a stranger's join request is handled now (at most one per
    /// `JOIN_REQUEST_INTERVAL_MIN_MS` per stranger).
    fn take_join_request(&mut self, from: PeerId, now_ms: u64) -> bool {
        if self
            .strangers
            .get(&from)
            .is_some_and(|at| now_ms < at + JOIN_REQUEST_INTERVAL_MIN_MS)
        {
            return false;
        }
        if self.strangers.len() >= STRANGERS_TRACKED_MAX && !self.strangers.contains_key(&from) {
            let oldest = self
                .strangers
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(peer, _)| *peer);
            if let Some(oldest) = oldest {
                self.strangers.remove(&oldest);
            }
        }
        self.strangers.insert(from, now_ms);
        true
    }
}

impl Engine {
    /// The admission policy this member votes by.
    pub fn admission(&self) -> &Admission {
        &self.config.admission
    }

    /// Replaces the admission policy (the operator changed it). Joins already agreed stand;
    /// a removal is [`Engine::request_removal`].
    pub fn set_admission(&mut self, admission: Admission) {
        self.config.admission = admission;
    }

    /// What the engine refused from peers since it started.
    pub fn refusals(&self) -> Refusals {
        self.speakers.refusals
    }

    /// Whether `from` is in our network map: a member of our section (this generation or the
    /// retired one) or of a section our map knows. Only such nodes may speak to us (and the
    /// node serves its reads only to them).
    pub fn is_known(&self, from: &PeerId) -> bool {
        self.state.members.contains(from)
            || self
                .retired
                .as_ref()
                .is_some_and(|(_, consensus)| consensus.members().contains(from))
            || self.map.section_of_member(&name_of(from)).is_some()
    }

    /// Whether `message` from `from` is one we take. A stranger may only ask to join; its
    /// other messages are counted and dropped, and a forwarded command is answered with the
    /// reason (its sender may be a node that left, with a client waiting).
    pub(super) fn may_speak(&mut self, from: PeerId, message: &Message) -> bool {
        if matches!(message, Message::JoinRequest(_)) || self.is_known(&from) {
            return true;
        }
        self.speakers.refusals.stranger_messages += 1;
        debug!(peer = %from, "a message from a node outside the network map dropped");
        if let Message::Forward(request) = message {
            if self.speakers.refusal_budget.take(1, self.now_ms) {
                let outcome = CommandOutcome::Failed(
                    "refused: this node takes forwarded commands only from nodes in its \
                     network map"
                        .to_owned(),
                );
                self.answer_peer(from, request.command_id, outcome);
            }
        }
        false
    }

    /// A node that is no member of our section asks to join: if it may (its name falls in
    /// our prefix, our policy approves it, we are active), we vote to admit it; otherwise we
    /// tell it why. Strangers are throttled, each and as a whole.
    pub(super) fn on_stranger_join_request(&mut self, from: PeerId, domain: &NodeDomain) {
        if !self.speakers.take_join_request(from, self.now_ms) {
            self.speakers.refusals.join_requests_throttled += 1;
            return;
        }
        let refusal = if !self.is_active_member() {
            JoinRefusal::NotActive
        } else if !self.state.prefix.matches(&name_of(&from)) {
            JoinRefusal::WrongSection {
                prefix: self.state.prefix,
            }
        } else if let Some(refusal) = self.domain_refusal(domain) {
            refusal
        } else if !self.config.admission.approves(&from) {
            JoinRefusal::NotApproved
        } else {
            self.vote_change(MemberChange::Join(from));
            return;
        };
        self.speakers.refusals.joins_refused += 1;
        debug!(peer = %from, %refusal, "join request refused");
        if self.speakers.refusal_budget.take(1, self.now_ms) {
            self.send(from, &Message::JoinRefused(refusal));
        } else {
            self.speakers.refusals.join_requests_throttled += 1;
        }
    }

    /// Joiner: a member says it will not vote for us. Logged once per member and reason (it
    /// repeats on every retry); we keep asking, since an operator may admit us meanwhile.
    pub(super) fn on_join_refused(&mut self, from: PeerId, refusal: JoinRefusal) {
        let asked = self
            .map
            .section_for(&name_of(&self.our_id))
            .contains(&name_of(&from))
            || self
                .joining
                .as_ref()
                .is_some_and(|joining| joining.also_ask.contains(&from));
        let Some(joining) = self.joining.as_mut().filter(|_| asked) else {
            return;
        };
        if joining.refusals.get(&from) != Some(&refusal) {
            warn!(peer = %from, %refusal, "a member refused to admit this node");
            joining.refusals.insert(from, refusal.clone());
        }
        if let JoinRefusal::OtherDomain { section } = refusal {
            self.on_domain_differs(from, section);
        }
    }
}
