//! The section state and the section's agreed domain a node saved in its store, read back
//! from a possibly damaged file, and upgrade votes from the agreed order: an error, never a
//! panic.
#![no_main]

use chorus_engine::{SectionDomain, SectionState, UpgradeProposal};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = SectionState::decode(bytes);
    let _ = SectionDomain::decode(bytes);
    let _ = UpgradeProposal::decode(bytes);
});
