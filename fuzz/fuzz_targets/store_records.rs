//! The event store's records (events, commands, streams, snapshots, checkpoints) read back
//! from a possibly damaged file: errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    chorus_aggregate::fuzzing::decode_store_records(bytes);
});
