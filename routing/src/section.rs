//! Sections and the section map: which group of nodes covers which part of the address space,
//! and how the groups split and merge as nodes join and leave.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::name::XorName;
use crate::prefix::Prefix;

/// The smallest section that may stand on its own: agreement needs n >= 3f + 1 members to
/// tolerate f faulty ones, so 4 tolerates one.
pub const SECTION_SIZE_MIN_DEFAULT: usize = 4;

/// A group of nodes responsible for the addresses its prefix matches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    prefix: Prefix,
    /// Members by name, with their public keys.
    members: BTreeMap<XorName, [u8; 32]>,
}

impl Section {
    /// The part of the address space the section covers.
    pub fn prefix(&self) -> Prefix {
        self.prefix
    }

    /// The members' names and public keys, in name order.
    pub fn members(&self) -> impl Iterator<Item = (&XorName, &[u8; 32])> {
        self.members.iter()
    }

    /// The members' public keys, in name order (the order every node agrees on).
    pub fn member_keys(&self) -> Vec<[u8; 32]> {
        self.members.values().copied().collect()
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the section has no member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether the node named `name` is a member.
    pub fn contains(&self, name: &XorName) -> bool {
        self.members.contains_key(name)
    }

    /// Up to `count` members, closest to `target` first.
    pub fn closest_members(&self, target: &XorName, count: usize) -> Vec<XorName> {
        let mut names: Vec<XorName> = self.members.keys().copied().collect();
        names.sort_by(|a, b| target.cmp_closeness(a, b));
        names.truncate(count);
        names
    }
}

/// How the sections changed when a member joined or left.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// A section split in two.
    Split {
        /// The section that split.
        from: Prefix,
        /// Its two halves (the `0` half first).
        into: [Prefix; 2],
    },
    /// Sections merged into their common parent.
    Merge {
        /// The sections that merged, in prefix order.
        from: Vec<Prefix>,
        /// The section they became.
        into: Prefix,
    },
}

/// The sections of the network. Invariants (checked by [`SectionMap::check`]):
///
/// - the prefixes cover the address space exactly once: every name is matched by exactly one
///   section;
/// - every member sits in the section whose prefix matches its name;
/// - every section but a root section has at least `section_size_min` members;
/// - no section could split (one of its halves would have fewer than `section_size_min`).
///
/// The map is a function of its member set and `section_size_min` alone, whatever the order
/// the members joined and left in: sections split as soon as they can and merge as soon as they
/// must, at prefix boundaries fixed by the names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionMap {
    sections: BTreeMap<Prefix, Section>,
    section_size_min: usize,
}

impl SectionMap {
    /// One empty root section. `section_size_min` below 1 is taken as 1.
    pub fn new(section_size_min: usize) -> Self {
        let root = Section {
            prefix: Prefix::ROOT,
            members: BTreeMap::new(),
        };
        Self {
            sections: BTreeMap::from([(Prefix::ROOT, root)]),
            section_size_min: section_size_min.max(1),
        }
    }

    /// A map holding these members.
    pub fn with_members(section_size_min: usize, public_keys: &[[u8; 32]]) -> Self {
        let mut map = Self::new(section_size_min);
        for key in public_keys {
            map.add_member(*key);
        }
        map
    }

    /// The smallest section size that stands on its own.
    pub fn section_size_min(&self) -> usize {
        self.section_size_min
    }

    /// The sections, in prefix order.
    pub fn sections(&self) -> impl Iterator<Item = &Section> {
        self.sections.values()
    }

    /// The number of sections.
    pub fn section_count(&self) -> usize {
        self.sections.len()
    }

    /// The section with exactly this prefix.
    pub fn section(&self, prefix: &Prefix) -> Option<&Section> {
        self.sections.get(prefix)
    }

    /// The section responsible for `name`: the one whose prefix matches it.
    pub fn section_for(&self, name: &XorName) -> &Section {
        // The sections cover the space exactly once and sort by their lower bounds, so the
        // responsible one is the last whose lower bound is at most `name`.
        let (_, section) = self
            .sections
            .range(..=Prefix::new(256, *name))
            .next_back()
            .unwrap_or_else(|| unreachable!("the root range is always covered"));
        debug_assert!(section.prefix.matches(name));
        section
    }

    /// The section responsible for a stream, by its qualified key.
    pub fn section_for_stream(&self, qualified: &str) -> &Section {
        self.section_for(&XorName::from_stream_key(qualified))
    }

    /// The section `name` is a member of, if any.
    pub fn section_of_member(&self, name: &XorName) -> Option<&Section> {
        let section = self.section_for(name);
        section.contains(name).then_some(section)
    }

    /// Adds a member (a no-op if it is one already) and splits what can split.
    pub fn add_member(&mut self, public_key: [u8; 32]) -> Vec<MembershipChange> {
        let name = XorName::from_public_key(&public_key);
        let prefix = self.section_for(&name).prefix;
        let section = self
            .sections
            .get_mut(&prefix)
            .unwrap_or_else(|| unreachable!());
        if section.members.insert(name, public_key).is_some() {
            return Vec::new();
        }
        let mut changes = Vec::new();
        self.split_while_possible(prefix, &mut changes);
        changes
    }

    /// Removes a member (a no-op if it is none) and merges what must merge.
    pub fn remove_member(&mut self, name: &XorName) -> Vec<MembershipChange> {
        let prefix = self.section_for(name).prefix;
        let section = self
            .sections
            .get_mut(&prefix)
            .unwrap_or_else(|| unreachable!());
        if section.members.remove(name).is_none() {
            return Vec::new();
        }
        let mut changes = Vec::new();
        self.merge_while_needed(prefix, &mut changes);
        changes
    }

    /// Checks every invariant of the map; the error names the first one broken.
    pub fn check(&self) -> Result<(), String> {
        let mut expected_lower = Some(XorName([0; 32]));
        for (prefix, section) in &self.sections {
            if section.prefix != *prefix {
                return Err(format!("section {prefix} is stored as {}", section.prefix));
            }
            if Some(prefix.lower_bound()) != expected_lower {
                return Err(format!("a gap or an overlap before section {prefix}"));
            }
            expected_lower = successor(prefix.upper_bound());
            if let Some((name, _)) = section
                .members
                .iter()
                .find(|(name, _)| !prefix.matches(name))
            {
                return Err(format!(
                    "member {name} sits in section {prefix}, which does not match it"
                ));
            }
            if !prefix.is_empty() && section.len() < self.section_size_min {
                return Err(format!(
                    "section {prefix} has {} members, fewer than {}",
                    section.len(),
                    self.section_size_min
                ));
            }
            if self.halves_if_splittable(section).is_some() {
                return Err(format!("section {prefix} should have split"));
            }
        }
        match expected_lower {
            None => Ok(()),
            Some(_) => Err("the sections do not reach the end of the address space".to_owned()),
        }
    }

    fn split_while_possible(&mut self, prefix: Prefix, changes: &mut Vec<MembershipChange>) {
        let mut pending = vec![prefix];
        while let Some(prefix) = pending.pop() {
            let Some(section) = self.sections.get(&prefix) else {
                continue;
            };
            let Some([zero, one]) = self.halves_if_splittable(section) else {
                continue;
            };
            self.sections.remove(&prefix);
            changes.push(MembershipChange::Split {
                from: prefix,
                into: [zero.prefix, one.prefix],
            });
            pending.push(zero.prefix);
            pending.push(one.prefix);
            self.sections.insert(zero.prefix, zero);
            self.sections.insert(one.prefix, one);
        }
    }

    /// The two halves of a section when both would keep at least `section_size_min` members.
    fn halves_if_splittable(&self, section: &Section) -> Option<[Section; 2]> {
        let zero_prefix = section.prefix.pushed(false)?;
        let one_prefix = section.prefix.pushed(true)?;
        let (zero, one): (BTreeMap<_, _>, BTreeMap<_, _>) = section
            .members
            .iter()
            .map(|(name, key)| (*name, *key))
            .partition(|(name, _)| zero_prefix.matches(name));
        let both_stand = zero.len() >= self.section_size_min && one.len() >= self.section_size_min;
        both_stand.then_some([
            Section {
                prefix: zero_prefix,
                members: zero,
            },
            Section {
                prefix: one_prefix,
                members: one,
            },
        ])
    }

    fn merge_while_needed(&mut self, mut prefix: Prefix, changes: &mut Vec<MembershipChange>) {
        loop {
            let Some(section) = self.sections.get(&prefix) else {
                return;
            };
            if section.len() >= self.section_size_min {
                return;
            }
            let Some(parent) = prefix.popped() else {
                return; // the root may be small: it is the whole network
            };
            // The section merges with its sibling's whole subtree into their parent.
            let merging: Vec<Prefix> = self
                .sections
                .range(Prefix::new(parent.len(), parent.lower_bound())..)
                .map(|(prefix, _)| *prefix)
                .take_while(|candidate| parent.is_ancestor_of(candidate))
                .collect();
            let mut members = BTreeMap::new();
            for merged in &merging {
                if let Some(section) = self.sections.remove(merged) {
                    members.extend(section.members);
                }
            }
            self.sections.insert(
                parent,
                Section {
                    prefix: parent,
                    members,
                },
            );
            changes.push(MembershipChange::Merge {
                from: merging,
                into: parent,
            });
            prefix = parent;
        }
    }
}

/// The name one above `name`, or `None` after the last name.
fn successor(name: XorName) -> Option<XorName> {
    let mut bytes = name.0;
    for byte in bytes.iter_mut().rev() {
        let (next, overflow) = byte.overflowing_add(1);
        *byte = next;
        if !overflow {
            return Some(XorName(bytes));
        }
    }
    None
}
