//! A client's command as the node reads it: JSON, then the aggregate's typed command for its
//! category (what `POST /streams/{stream}/commands` does before anything runs). Bad input is
//! an error, never a panic; what parses is canonical (parsing the canonical form again gives
//! itself).
#![no_main]

use chorus_aggregate::{CommandId, CommandRequest, StreamKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(command) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return;
    };
    let registry = chorus_demo::registry();
    for category in ["BankAccount", "Notebook", "Transfer"] {
        let stream = StreamKey::new(category, "fuzz").expect("a valid stream key");
        let request = CommandRequest::new(CommandId::derive(&[bytes]), stream, command.clone());
        if let Ok(canonical) = registry.canonical_command(&request) {
            let again = CommandRequest::new(
                request.command_id,
                request.stream.clone(),
                canonical.clone(),
            );
            assert_eq!(registry.canonical_command(&again).ok(), Some(canonical));
        }
    }
});
