//! The replay log's records as read back from disk: bad bytes are errors, never panics.
#![no_main]

use chorus_consensus::codec::{decode_log_record, encode_log_record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(record) = decode_log_record(bytes) {
        encode_log_record(&record).expect("a decoded record encodes");
    }
});
