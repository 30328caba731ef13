//! The checks of a batch that need no store: limits, one write per stream, system events.

use std::collections::BTreeSet;

use crate::envelope::{
    AppendBatch, DELETED_EVENT_TYPE, METADATA_EVENT_TYPE, NewEvent, StreamMetadata,
};
use crate::error::StoreError;
use crate::limits::{
    BATCH_BYTES_MAX, BATCH_EVENTS_MAX, BATCH_STREAMS_MAX, EVENT_PAYLOAD_BYTES_MAX,
    METADATA_BYTES_MAX,
};

/// Checks a system event; returns its metadata (`None` for a soft delete).
pub(super) fn check_system_event(event: &NewEvent) -> Result<Option<StreamMetadata>, StoreError> {
    let bad = |reason: &str| StoreError::BadSystemEvent {
        event_type: event.event_type.to_string(),
        reason: reason.to_owned(),
    };
    match event.event_type.as_str() {
        METADATA_EVENT_TYPE => serde_json::from_slice(&event.payload)
            .map(Some)
            .map_err(|error| bad(&format!("the payload is not stream metadata: {error}"))),
        DELETED_EVENT_TYPE if event.payload.is_empty() => Ok(None),
        DELETED_EVENT_TYPE => Err(bad("the payload must be empty")),
        _ => Err(bad(
            "unknown system event; types starting with '$' are reserved",
        )),
    }
}

pub(super) fn check_limits(batch: &AppendBatch) -> Result<(), StoreError> {
    let limit = |what, value, max| {
        if value > max {
            Err(StoreError::LimitExceeded { what, value, max })
        } else {
            Ok(())
        }
    };
    limit(
        "the batch's number of streams",
        batch.writes.len(),
        BATCH_STREAMS_MAX,
    )?;
    limit(
        "the batch's number of events",
        batch.event_count(),
        BATCH_EVENTS_MAX,
    )?;
    let mut bytes = 0usize;
    for write in &batch.writes {
        for event in &write.events {
            limit(
                "an event's payload size in bytes",
                event.payload.len(),
                EVENT_PAYLOAD_BYTES_MAX,
            )?;
            bytes += event.payload.len();
        }
    }
    limit("the batch's payload size in bytes", bytes, BATCH_BYTES_MAX)?;
    limit(
        "the batch's metadata size in bytes",
        batch.metadata.as_ref().map_or(0, Vec::len),
        METADATA_BYTES_MAX,
    )?;
    let mut streams = BTreeSet::new();
    for write in &batch.writes {
        if !streams.insert(&write.stream) {
            return Err(StoreError::StreamWrittenTwice {
                stream: write.stream.clone(),
            });
        }
    }
    Ok(())
}
