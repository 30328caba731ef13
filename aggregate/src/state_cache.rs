//! Aggregate states kept between decisions, so that deciding a command reads only the events
//! appended since the state was last built, not its whole stream.
//!
//! An entry is an in-memory snapshot and is used under the same rule as a stored one
//! (`Repository::load_over`): only in the epoch it was built in (a correction or soft delete
//! starts a new one) and at a version the stream has. So a decision made over a cached state
//! is the decision a full load would give. Entries belong to one store (`EventStore::instance`):
//! a registry shared by two stores never mixes their states.

use std::sync::Mutex;

use hashlink::LruCache;

use crate::limits::STATE_CACHE_STREAMS_MAX;
use crate::repository::Base;

/// The cached states of one aggregate type, least recently used out first.
pub(crate) struct StateCache<A> {
    entries: Mutex<LruCache<(u64, String), Base<A>>>,
}

impl<A> StateCache<A> {
    pub(crate) fn new() -> Self {
        Self {
            entries: Mutex::new(LruCache::new(STATE_CACHE_STREAMS_MAX)),
        }
    }

    /// Takes the entry of a stream (store instance, qualified name) out; the caller puts
    /// back the state it builds from it.
    pub(crate) fn take(&self, key: &(u64, String)) -> Option<Base<A>> {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|error| error.into_inner());
        entries.remove(key)
    }

    /// Keeps a state built from the store and stream of `key`.
    pub(crate) fn put(&self, key: (u64, String), base: Base<A>) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|error| error.into_inner());
        entries.insert(key, base);
    }
}
