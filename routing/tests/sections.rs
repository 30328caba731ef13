//! Properties of the section map under any sequence of joins and leaves: the sections cover
//! every address exactly once, lookups agree with brute force, sizes respect the minimum, and
//! the map depends only on who the members are, never on the order they came and went.

use std::collections::BTreeSet;

use chorus_routing::{MembershipChange, Prefix, SectionMap, XorName};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Step {
    Join(u16),
    Leave(u16),
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(
        prop_oneof![
            3 => (0u16..200).prop_map(Step::Join),
            2 => (0u16..200).prop_map(Step::Leave),
        ],
        0..300,
    )
}

fn key(index: u16) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..2].copy_from_slice(&index.to_le_bytes());
    key
}

fn name(index: u16) -> XorName {
    XorName::from_public_key(&key(index))
}

/// The section of `probe` found by scanning every section.
fn brute_force(map: &SectionMap, probe: &XorName) -> Vec<Prefix> {
    map.sections()
        .filter(|section| section.prefix().matches(probe))
        .map(|section| section.prefix())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_address_is_covered_by_exactly_one_section(
        steps in steps(),
        section_size_min in 1usize..6,
        probes in proptest::collection::vec(any::<[u8; 32]>(), 20),
    ) {
        let mut map = SectionMap::new(section_size_min);
        let mut members = BTreeSet::new();
        for step in steps {
            let changes = match step {
                Step::Join(index) => {
                    members.insert(index);
                    map.add_member(key(index))
                }
                Step::Leave(index) => {
                    members.remove(&index);
                    map.remove_member(&name(index))
                }
            };
            prop_assert!(map.check().is_ok(), "{:?} after {:?}", map.check(), changes);
            for probe in &probes {
                let probe = XorName(*probe);
                let covering = brute_force(&map, &probe);
                prop_assert_eq!(covering.len(), 1, "{} covered by {:?}", probe, covering);
                prop_assert_eq!(map.section_for(&probe).prefix(), covering[0]);
            }
            // Every member is found where it lives, and the sections hold exactly the members.
            let total: usize = map.sections().map(|section| section.len()).sum();
            prop_assert_eq!(total, members.len());
            for index in &members {
                prop_assert!(map.section_of_member(&name(*index)).is_some());
            }
        }
        // Order does not matter: the same members joined at once give the same map.
        let keys: Vec<[u8; 32]> = members.iter().map(|index| key(*index)).collect();
        prop_assert_eq!(&SectionMap::with_members(section_size_min, &keys), &map);
    }

    #[test]
    fn streams_route_to_the_section_covering_their_name(
        count in 0u16..120, stream in "[a-z]{1,8}",
    ) {
        let keys: Vec<[u8; 32]> = (0..count).map(key).collect();
        let map = SectionMap::with_members(4, &keys);
        let qualified = format!("default/Notebook@{stream}");
        let section = map.section_for_stream(&qualified);
        prop_assert!(section.prefix().matches(&XorName::from_stream_key(&qualified)));
    }
}

#[test]
fn sections_split_when_both_halves_can_stand_and_merge_when_one_cannot() {
    let mut map = SectionMap::new(4);
    let mut changes = Vec::new();
    let mut index = 0;
    // Join until the root splits.
    while map.section_count() == 1 {
        changes = map.add_member(key(index));
        index += 1;
    }
    assert!(matches!(
        changes.as_slice(),
        [MembershipChange::Split { from, .. }, ..] if from.is_empty()
    ));
    assert!(
        index >= 8,
        "a split needs 4 members on each side, had {index} in all"
    );
    map.check().expect("valid map");
    // Leave from the smaller half until it merges back.
    let smallest = map
        .sections()
        .min_by_key(|section| section.len())
        .expect("two sections")
        .prefix();
    let leaving: Vec<XorName> = map
        .section(&smallest)
        .expect("section")
        .members()
        .map(|(name, _)| *name)
        .collect();
    let merged = map.remove_member(&leaving[0]);
    assert!(
        merged
            .iter()
            .any(|change| matches!(change, MembershipChange::Merge { .. })),
        "{merged:?}"
    );
    map.check().expect("valid map");
    assert!(map.section_of_member(&leaving[0]).is_none());
    assert_eq!(
        map.sections().map(|section| section.len()).sum::<usize>(),
        index as usize - 1
    );
}

#[test]
fn a_small_network_is_one_root_section() {
    let keys: Vec<[u8; 32]> = (0..3).map(key).collect();
    let map = SectionMap::with_members(4, &keys);
    assert_eq!(map.section_count(), 1);
    assert_eq!(map.section_for(&name(0)).len(), 3);
    map.check().expect("a root below the minimum is allowed");
    // Closest members come out sorted by XOR distance to the target.
    let target = name(1);
    let closest = map.section_for(&target).closest_members(&target, 3);
    assert_eq!(closest[0], target);
    assert!(target.cmp_closeness(&closest[1], &closest[2]).is_lt());
}
