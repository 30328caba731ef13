//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, never for a node): the
//! store's record decoders fed untrusted bytes, as a damaged file would feed them. The
//! decoders are private to the store; this is their one door for the fuzzer.

use crate::codec::{DiskEvent, decode_record};
use crate::store::{CommandRecord, SnapshotRecord, StreamRecord};

/// Decodes `bytes` as every record the store reads back. A decoder must return an error for
/// bad bytes, never panic or allocate beyond its limit; what decodes is dropped.
pub fn decode_store_records(bytes: &[u8]) {
    let _ = DiskEvent::decode(bytes);
    let _ = decode_record::<CommandRecord>("command", bytes);
    let _ = decode_record::<StreamRecord>("stream", bytes);
    let _ = decode_record::<SnapshotRecord>("snapshot", bytes);
    let _ = decode_record::<u64>("router checkpoint", bytes);
}
