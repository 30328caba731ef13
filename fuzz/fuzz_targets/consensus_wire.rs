//! A peer's sync messages (the consensus wire codec): bad bytes are errors, never panics;
//! what decodes encodes again.
#![no_main]

use chorus_consensus::codec::{decode_message, encode_message};
use chorus_consensus::{SyncRequest, SyncResponse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(request) = decode_message::<SyncRequest>(bytes) {
        encode_message(&request).expect("a decoded request encodes");
    }
    if let Ok(response) = decode_message::<SyncResponse>(bytes) {
        encode_message(&response).expect("a decoded response encodes");
    }
});
