//! The section state and the domain fingerprint a node saved in its store, read back from a possibly damaged file: an
//! error, never a panic.
#![no_main]

use chorus_engine::{DomainFingerprint, SectionState};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = SectionState::decode(bytes);
    let _ = DomainFingerprint::decode(bytes);
});
