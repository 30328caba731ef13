//! Catch-up subscriptions: a consumer starts from a global position, receives the history after
//! it, then new events as they are committed, without gap or duplicate.
//!
//! Why no gap: positions are assigned inside the one write transaction that commits them, so
//! every read sees a prefix of the global order; a subscription that has delivered everything
//! up to position p reads next from p + 1. Why no duplicate: the cursor only moves forward.
//! Catch-up and live are the same loop; "live" is only waiting on the store's head.

use std::time::Duration;

use crate::envelope::{Filter, RecordedEvent};
use crate::error::StoreError;
use crate::store::{Direction, EventStore};

/// A position-tracking reader of one filter. Holds no reference to the store, so it can be
/// saved (its [`Subscription::next_position`]) and resumed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    filter: Filter,
    next_position: u64,
    batch_max: usize,
}

impl Subscription {
    /// Subscribes to `filter` from global position `from` (inclusive; 1 for everything).
    pub fn new(filter: Filter, from: u64, batch_max: usize) -> Self {
        Self {
            filter,
            next_position: from.max(1),
            batch_max: batch_max.max(1),
        }
    }

    /// The global position the next event will be read from: a checkpoint to resume at.
    pub fn next_position(&self) -> u64 {
        self.next_position
    }

    /// The next events, up to the batch size, without waiting; empty when caught up.
    pub fn poll(&mut self, store: &EventStore) -> Result<Vec<RecordedEvent>, StoreError> {
        let slice = store.read(
            &self.filter,
            self.next_position,
            Direction::Forward,
            self.batch_max,
        )?;
        // A page that ends early (hidden events skipped, or the end) still moves the cursor
        // past everything the read looked at, up to the head it saw.
        let next = slice.next.unwrap_or(slice.head_position + 1);
        debug_assert!(slice.events.iter().all(|event| event.position < next));
        self.next_position = self.next_position.max(next);
        Ok(slice.events)
    }

    /// The next events; when caught up, waits up to `timeout` for new ones.
    pub fn next_batch(
        &mut self,
        store: &EventStore,
        timeout: Duration,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let events = self.poll(store)?;
        if !events.is_empty() {
            return Ok(events);
        }
        store.wait_for_head_after(self.next_position - 1, timeout);
        self.poll(store)
    }
}
