//! Members run the same domain. The trust model: a node that cannot run its section's
//! agreed domain (it is neither that domain's code nor code that stands in for it,
//! `NodeDomain::can_run`) is faulty or misconfigured, and must neither take part nor be
//! taken in. So:
//!
//! - at start, the store's section must run a domain we can run
//!   (`EngineError::OtherDomain`, naming both);
//! - a join request names the joiner's domain and what it stands in for, and a member
//!   refuses a joiner that cannot run the section's (`JoinRefusal::OtherDomain`);
//! - every sync request names the section's agreed digest as its sender applied it; a
//!   member drops a request naming a domain its section never agreed on (and that is not
//!   its own) and tells the sender the section's (`Message::DomainDiffers`), at most once
//!   per `DOMAIN_NOTICE_INTERVAL_MS` per peer.
//!
//! Upgrades (`upgrade.rs`) change the agreed domain at one block.
//!
//! A node that `f + 1` members of its section (at least one honest) told the section runs
//! another domain halts (`Engine::halted`): it cannot take part, and says why. Fewer reports
//! prove nothing (up to `f` members may lie), and are only logged.

use std::collections::BTreeMap;

use chorus_consensus::PeerId;
use tracing::warn;

use super::Engine;
use super::admission::JoinRefusal;
use super::limits::DOMAIN_NOTICE_INTERVAL_MS;
use super::wire::Message;
use crate::domain::{DOMAIN_VERSION_BYTES_MAX, DomainFingerprint, NodeDomain, SectionDomain};
use crate::membership::name_of;

/// What this node heard about other domains.
#[derive(Default)]
pub(super) struct DomainReports {
    /// Per member of our section, the other domain it says the section runs.
    reported: BTreeMap<PeerId, DomainFingerprint>,
    /// Per peer, when we last told it our domain (bounded by the map: only nodes in it may
    /// send sync requests).
    told_at: BTreeMap<PeerId, u64>,
    /// Why this node stopped taking part, once it did.
    pub(super) halted: Option<String>,
}

impl Engine {
    /// A member's start: the store's section runs a domain this node can run (ours, or one
    /// our code stands in for; the agreed domain is saved now if the store names none yet),
    /// or we refuse to start, naming both. Before anything is sent.
    pub(super) fn adopt_domain(&mut self) -> Result<(), super::EngineError> {
        self.check_domain_version()?;
        match SectionDomain::load(&self.store)? {
            Some(section) if !self.domain.can_run(&section.agreed) => {
                Err(super::EngineError::OtherDomain {
                    this_node: self.domain.runs.clone(),
                    section: section.agreed,
                })
            }
            Some(section) => {
                self.section_domain = section;
                Ok(())
            }
            None => Ok(self.section_domain.save(&self.store)?),
        }
    }

    /// A domain version longer than peers decode is a configuration error.
    pub(super) fn check_domain_version(&self) -> Result<(), super::EngineError> {
        let versions = std::iter::once(&self.domain.runs.version).chain(&self.domain.upgrades_from);
        for version in versions {
            if version.len() > DOMAIN_VERSION_BYTES_MAX {
                return Err(super::EngineError::Config(format!(
                    "the domain version {version:?} is {} bytes; at most \
                     {DOMAIN_VERSION_BYTES_MAX}",
                    version.len()
                )));
            }
        }
        Ok(())
    }

    /// The domain this node runs.
    pub fn domain(&self) -> &DomainFingerprint {
        &self.domain.runs
    }

    /// The domain our section agreed on (with the earlier ones), as far as this node applied
    /// the order.
    pub fn section_domain(&self) -> &SectionDomain {
        &self.section_domain
    }

    /// Why this node cannot take part in its section, if it cannot: more than `f` of the
    /// section's members said the section runs another domain, or the section agreed on an
    /// upgrade this node's code cannot run. The caller should stop the node with this
    /// message; the engine does nothing more.
    pub fn halted(&self) -> Option<&str> {
        self.domain_reports.halted.as_deref()
    }

    /// A sync request named `digest`: whether we serve it. We do for our section's agreed
    /// domain and the earlier ones (a member that has not applied an upgrade yet catches up
    /// to it), and for our own (a member that applied an upgrade we have not reached yet).
    /// Otherwise the request is dropped and counted, and the sender told our section's domain
    /// (throttled per peer).
    pub(super) fn same_domain(&mut self, from: PeerId, digest: &[u8; 32]) -> bool {
        if self.section_domain.knows(digest) || self.domain.runs.digest == *digest {
            return true;
        }
        self.speakers.refusals.other_domain += 1;
        let reports = &mut self.domain_reports;
        let due = reports
            .told_at
            .get(&from)
            .is_none_or(|at| self.now_ms >= at + DOMAIN_NOTICE_INTERVAL_MS);
        if due {
            reports.told_at.insert(from, self.now_ms);
            let ours = self.section_domain.agreed.clone();
            warn!(peer = %from, section = %ours, "a sync request from a node running another domain dropped");
            self.send(from, &Message::DomainDiffers(ours));
        }
        false
    }

    /// A join request's domain: the refusal to send if the joiner cannot run our section's.
    pub(super) fn domain_refusal(&self, theirs: &NodeDomain) -> Option<JoinRefusal> {
        (!theirs.can_run(&self.section_domain.agreed)).then(|| JoinRefusal::OtherDomain {
            section: self.section_domain.agreed.clone(),
        })
    }

    /// A member (or a member we asked to admit us) says its section runs `theirs`. Once
    /// `f + 1` members of the section covering our name said the same, we halt.
    pub(super) fn on_domain_differs(&mut self, from: PeerId, theirs: DomainFingerprint) {
        if self.domain.can_run(&theirs) || self.domain_reports.halted.is_some() {
            return;
        }
        let section: Vec<PeerId> = if self.state.members.is_empty() {
            self.map
                .section_for(&name_of(&self.our_id))
                .member_keys()
                .into_iter()
                .map(PeerId)
                .collect()
        } else {
            self.state.members.clone()
        };
        if !section.contains(&from) {
            return;
        }
        if self.domain_reports.reported.get(&from) != Some(&theirs) {
            warn!(peer = %from, section = %theirs, ours = %self.domain.runs, "a member says its section runs another domain");
        }
        self.domain_reports.reported.insert(from, theirs.clone());
        let agreeing = section
            .iter()
            .filter(|member| self.domain_reports.reported.get(member) == Some(&theirs))
            .count();
        let faulty_max = section.len().saturating_sub(1) / 3;
        if agreeing > faulty_max {
            self.halt(format!(
                "this node runs domain {} but its section runs domain {theirs} ({agreeing} of \
                 its {} members say so): run the section's application, or upgrade the \
                 section first",
                self.domain.runs,
                section.len()
            ));
        }
    }

    /// Stops taking part, for `reason` (said once; the first reason stays). Every command
    /// waiting here is answered `Failed` (sent again elsewhere, it applies at most once).
    pub(super) fn halt(&mut self, reason: String) {
        if self.domain_reports.halted.is_some() {
            return;
        }
        tracing::error!(%reason, "halted");
        let outcome = super::CommandOutcome::Failed(format!("this node halted: {reason}"));
        let waiting: Vec<_> = self.waiters.keys().copied().collect();
        for command_id in waiting {
            self.answer(command_id, &outcome);
        }
        self.domain_reports.halted = Some(reason);
    }
}
