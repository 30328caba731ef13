//! What peers send the engine: its messages, and the agreed observation payloads (command
//! and membership proposals). Bad bytes are errors, never panics; a decoded message encodes
//! again.
#![no_main]

use chorus_engine::{MembershipProposal, Message, Proposal};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(message) = Message::decode(bytes) {
        message.encode().expect("a decoded message encodes");
    }
    let _ = Proposal::decode(bytes);
    let _ = MembershipProposal::decode(bytes);
});
