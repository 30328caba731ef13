//! Members run the same domain. The trust model: a node whose domain fingerprint differs
//! from its section's is faulty or misconfigured, and must neither take part nor be taken
//! in. So:
//!
//! - at start, the fingerprint the store saved for the section must be ours
//!   (`EngineError::OtherDomain`, naming both);
//! - a join request names the joiner's fingerprint, and a member refuses another one
//!   (`JoinRefusal::OtherDomain`);
//! - every sync request names the sender's digest; a member drops a request naming another
//!   and tells the sender its own (`Message::DomainDiffers`), at most once per
//!   `DOMAIN_NOTICE_INTERVAL_MS` per peer.
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
use crate::domain::{DOMAIN_VERSION_BYTES_MAX, DomainFingerprint};
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
    /// A member's start: the store's section runs our domain (saved now if the store names
    /// none yet), or we refuse to start, naming both. Before anything is sent.
    pub(super) fn adopt_domain(&self) -> Result<(), super::EngineError> {
        self.check_domain_version()?;
        match DomainFingerprint::load(&self.store)? {
            Some(section) if section != self.domain => Err(super::EngineError::OtherDomain {
                this_node: self.domain.clone(),
                section,
            }),
            Some(_) => Ok(()),
            None => Ok(self.domain.save(&self.store)?),
        }
    }

    /// A domain version longer than peers decode is a configuration error.
    pub(super) fn check_domain_version(&self) -> Result<(), super::EngineError> {
        let length = self.domain.version.len();
        if length > DOMAIN_VERSION_BYTES_MAX {
            return Err(super::EngineError::Config(format!(
                "the domain version is {length} bytes; at most {DOMAIN_VERSION_BYTES_MAX}"
            )));
        }
        Ok(())
    }

    /// The domain this node runs.
    pub fn domain(&self) -> &DomainFingerprint {
        &self.domain
    }

    /// Why this node cannot take part in its section, if it cannot: more than `f` of the
    /// section's members said the section runs another domain. The caller should stop the
    /// node with this message.
    pub fn halted(&self) -> Option<&str> {
        self.domain_reports.halted.as_deref()
    }

    /// A sync request named `digest`: whether it is our domain. If not, the request is
    /// dropped and counted, and the sender told our domain (throttled per peer).
    pub(super) fn same_domain(&mut self, from: PeerId, digest: &[u8; 32]) -> bool {
        if *digest == self.domain.digest {
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
            warn!(peer = %from, ours = %self.domain, "a sync request from a node running another domain dropped");
            let ours = self.domain.clone();
            self.send(from, &Message::DomainDiffers(ours));
        }
        false
    }

    /// A join request's domain: the refusal to send if it is not ours.
    pub(super) fn domain_refusal(&self, theirs: &DomainFingerprint) -> Option<JoinRefusal> {
        (*theirs != self.domain).then(|| JoinRefusal::OtherDomain {
            section: self.domain.clone(),
        })
    }

    /// A member (or a member we asked to admit us) says its section runs `theirs`. Once
    /// `f + 1` members of the section covering our name said the same, we halt.
    pub(super) fn on_domain_differs(&mut self, from: PeerId, theirs: DomainFingerprint) {
        if theirs == self.domain || self.domain_reports.halted.is_some() {
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
            warn!(peer = %from, section = %theirs, ours = %self.domain, "a member says its section runs another domain");
        }
        self.domain_reports.reported.insert(from, theirs.clone());
        let agreeing = section
            .iter()
            .filter(|member| self.domain_reports.reported.get(member) == Some(&theirs))
            .count();
        let faulty_max = section.len().saturating_sub(1) / 3;
        if agreeing > faulty_max {
            let reason = format!(
                "this node runs domain {} but its section runs domain {theirs} ({agreeing} of \
                 its {} members say so): run the section's application, or upgrade the \
                 section first",
                self.domain,
                section.len()
            );
            tracing::error!(%reason, "halted");
            self.domain_reports.halted = Some(reason);
        }
    }
}
