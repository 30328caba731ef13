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

impl<A: Default> StateCache<A> {
    /// Moves the entry of `key` over a batch of `appended` events just appended to its stream
    /// at version `at` (without a correction: the epoch stays): `apply` builds the state after
    /// them, so the next decision reads nothing back. An entry at another version is left as
    /// it is (still valid, as any older state); one `apply` cannot build is dropped.
    pub(crate) fn advance(
        &self,
        key: &(u64, String),
        at: u64,
        appended: u64,
        apply: impl FnOnce(A) -> Option<A>,
    ) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|error| error.into_inner());
        let Some(base) = entries.get_mut(key) else {
            return;
        };
        if base.version != at {
            return;
        }
        match apply(std::mem::take(&mut base.state)) {
            Some(state) => {
                base.state = state;
                base.version += appended;
            }
            None => {
                entries.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_at(version: u64, state: u64) -> (StateCache<u64>, (u64, String)) {
        let cache = StateCache::new();
        let key = (1, "default/Counter@a".to_owned());
        let base = Base {
            state,
            version,
            epoch: 0,
        };
        cache.put(key.clone(), base);
        (cache, key)
    }

    #[test]
    fn advance_moves_only_an_entry_at_the_batch_version() {
        // At the batch's version: the state after its events, at the version after them.
        let (cache, key) = cache_at(5, 50);
        cache.advance(&key, 5, 2, |state| Some(state + 7));
        let base = cache.take(&key).expect("kept");
        assert_eq!((base.version, base.state), (7, 57));
        // Behind it (events between the entry and the batch it never saw) or past it (the
        // same batch announced again): left as it is.
        for at in [4, 6] {
            let (cache, key) = cache_at(5, 50);
            cache.advance(&key, at, 2, |state| Some(state + 7));
            let base = cache.take(&key).expect("kept");
            assert_eq!((base.version, base.state), (5, 50), "batch at {at}");
        }
        // A batch whose events do not build (an event that does not decode): dropped.
        let (cache, key) = cache_at(5, 50);
        cache.advance(&key, 5, 2, |_| None);
        assert!(cache.take(&key).is_none());
    }
}
