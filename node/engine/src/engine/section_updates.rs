//! Other sections' membership changes, believed on `f + 1` of their members' word and
//! applied to the routing map.

use chorus_consensus::{PeerId, faulty_max};
use chorus_routing::Prefix;

use crate::membership::{MemberChange, name_of};

use super::Engine;
use super::generation::network_of;
use super::limits::UPDATES_PER_SENDER_MAX;

impl Engine {
    /// Another section's member says its section changed. Applied to our map (routing only)
    /// once `f + 1` members of the section our map has for that prefix (the section itself,
    /// or the one it split from) said the same, so at least one honest member did; never
    /// for our own section, which changes only by our own agreement.
    pub(super) fn on_section_update(
        &mut self,
        from: PeerId,
        prefix: Prefix,
        generation: u64,
        change: MemberChange,
    ) {
        let node = change.node();
        if prefix.overlaps(&self.state.prefix)
            || !prefix.matches(&name_of(&node))
            || self
                .update_generations
                .get(&node)
                .is_some_and(|applied| *applied >= generation)
        {
            return;
        }
        let known = self.map.section_for(&prefix.lower_bound());
        if !(known.prefix() == prefix || known.prefix().is_ancestor_of(&prefix)) {
            return;
        }
        let voters: Vec<PeerId> = known.member_keys().into_iter().map(PeerId).collect();
        if !voters.contains(&from) {
            return;
        }
        let update = (prefix, generation, change);
        let heard = self.updates_heard.entry(from).or_default();
        if !heard.contains(&update) {
            if heard.len() >= UPDATES_PER_SENDER_MAX {
                heard.pop_front();
            }
            heard.push_back(update);
        }
        let senders = self
            .updates_heard
            .values()
            .filter(|heard| heard.contains(&update))
            .count();
        if senders <= faulty_max(voters.len()) {
            return;
        }
        // Applied: forget it and anything older about the same node.
        for heard in self.updates_heard.values_mut() {
            heard.retain(|(_, heard_generation, heard_change)| {
                heard_change.node() != node || *heard_generation > generation
            });
        }
        self.updates_heard.retain(|_, heard| !heard.is_empty());
        self.update_generations.insert(node, generation);
        match change {
            MemberChange::Join(node) => {
                self.map.add_member(node.0);
            }
            MemberChange::Leave(node) => {
                self.map.remove_member(&name_of(&node));
            }
            MemberChange::Refresh(_) => {}
        }
        self.state.network = network_of(&self.map);
    }
}
