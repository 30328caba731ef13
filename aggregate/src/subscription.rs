//! Catch-up subscriptions: a consumer starts from a global position, receives the history after
//! it, then new events as they are committed, without gap or duplicate.
//!
//! A subscription reads the change feed ([`crate::store::ReadView::read_log`]): every committed
//! event matching its filter, including events that client reads hide (truncated, soft-deleted,
//! superseded), so that what it delivers depends only on the log and never on when it reads.
//! A correction arrives as an event with `supersedes` set; consumers apply it.
//!
//! Why no gap: positions are assigned inside the one write transaction that commits them, so
//! every read sees a prefix of the global order; a subscription that has delivered everything
//! up to position p reads next from p + 1. Why no duplicate: the cursor only moves forward.
//! Catch-up and live are the same loop; "live" is only waiting on the store's head.

use std::time::Duration;

use crate::envelope::{Filter, RecordedEvent};
use crate::error::StoreError;
use crate::store::EventStore;

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

    /// The events it delivers.
    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// The global position the next event will be read from: a checkpoint to resume at.
    pub fn next_position(&self) -> u64 {
        self.next_position
    }

    /// The next events, up to the batch size, without waiting; empty only when caught up.
    pub fn poll(&mut self, store: &EventStore) -> Result<Vec<RecordedEvent>, StoreError> {
        loop {
            let slice = store.read_log(&self.filter, self.next_position, self.batch_max)?;
            // The cursor moves past everything the read looked at, up to the head it saw.
            let next = slice.next.unwrap_or(slice.head_position.saturating_add(1));
            debug_assert!(slice.events.iter().all(|event| event.position < next));
            self.next_position = self.next_position.max(next);
            // A page can be empty without being the end when the read stopped at its scan
            // limit (a long stretch of other categories' events): read on.
            if !slice.events.is_empty() || slice.next.is_none() {
                return Ok(slice.events);
            }
        }
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
