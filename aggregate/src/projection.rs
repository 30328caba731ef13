//! Checkpointed projections: read models built by folding events, saved with the position they
//! reflect, and rebuilt from scratch when their version changes or on request.
//!
//! The state and the checkpoint are saved in one record, so after a crash a projection resumes
//! from a consistent (possibly older) point and sees the events after it again: projections are
//! exactly-once in effect as long as `apply` is a pure fold. A projection reads the change feed:
//! it sees every committed event, corrections included (`supersedes` set), and decides itself
//! what a correction means for its read model.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::codec::{decode_record, encode_record};
use crate::envelope::{Filter, RecordedEvent};
use crate::error::StoreError;
use crate::store::EventStore;
use crate::subscription::Subscription;

/// Events a projection reads per step.
pub const PROJECTION_BATCH_EVENTS_MAX: usize = 1_000;

/// A read model folded from events.
pub trait Projection {
    /// The read model.
    type State: Default + Serialize + DeserializeOwned;
    /// A stable name: it keys the checkpoint.
    fn name(&self) -> &str;
    /// Bump it when `apply` changes meaning: a checkpoint of another version is discarded and
    /// the projection rebuilt from the first event.
    fn version(&self) -> u32;
    /// The events it folds.
    fn filter(&self) -> Filter;
    /// Folds one event into the state.
    fn apply(&self, state: &mut Self::State, event: &RecordedEvent);
}

#[derive(Serialize, Deserialize)]
struct Checkpoint {
    version: u32,
    next_position: u64,
    state: Vec<u8>,
}

/// Runs one projection against a store.
pub struct ProjectionRunner<P: Projection> {
    projection: P,
    state: P::State,
    subscription: Subscription,
}

impl<P: Projection> ProjectionRunner<P> {
    /// Starts a projection from its checkpoint, or from scratch if it has none, if the
    /// checkpoint has another version, or if the saved state does not decode.
    pub fn start(store: &EventStore, projection: P) -> Result<Self, StoreError> {
        let mut runner = Self {
            subscription: Subscription::new(projection.filter(), 1, PROJECTION_BATCH_EVENTS_MAX),
            state: P::State::default(),
            projection,
        };
        if let Some(bytes) = store.load_checkpoint(&runner.checkpoint_name())? {
            // The checkpoint is a cache of the log: if it does not decode, rebuild.
            let checkpoint = decode_record::<Checkpoint>("projection checkpoint", &bytes)
                .ok()
                .and_then(|checkpoint| {
                    let state = serde_json::from_slice::<P::State>(&checkpoint.state).ok()?;
                    Some((checkpoint.version, checkpoint.next_position, state))
                });
            match checkpoint {
                Some((version, next_position, state)) if version == runner.projection.version() => {
                    runner.state = state;
                    runner.subscription = Subscription::new(
                        runner.projection.filter(),
                        next_position,
                        PROJECTION_BATCH_EVENTS_MAX,
                    );
                }
                _ => debug!(
                    projection = runner.projection.name(),
                    "checkpoint of another version or undecodable; rebuilding"
                ),
            }
        }
        Ok(runner)
    }

    /// Folds every event not yet seen and saves the checkpoint; returns how many were folded.
    pub fn catch_up(&mut self, store: &EventStore) -> Result<u64, StoreError> {
        let mut folded = 0;
        let start = self.subscription.next_position();
        loop {
            let events = self.subscription.poll(store)?;
            if events.is_empty() {
                break;
            }
            for event in &events {
                self.projection.apply(&mut self.state, event);
            }
            folded += events.len() as u64;
        }
        if self.subscription.next_position() != start {
            self.save(store)?;
        }
        Ok(folded)
    }

    /// Throws the state away and folds everything again from the first event.
    pub fn rebuild(&mut self, store: &EventStore) -> Result<u64, StoreError> {
        self.state = P::State::default();
        self.subscription =
            Subscription::new(self.projection.filter(), 1, PROJECTION_BATCH_EVENTS_MAX);
        self.save(store)?;
        self.catch_up(store)
    }

    /// The projection it runs.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// The read model.
    pub fn state(&self) -> &P::State {
        &self.state
    }

    /// The position the projection reflects everything before.
    pub fn next_position(&self) -> u64 {
        self.subscription.next_position()
    }

    fn save(&self, store: &EventStore) -> Result<(), StoreError> {
        let state = serde_json::to_vec(&self.state)
            .map_err(|error| StoreError::Corrupt(format!("projection state: {error}")))?;
        let record = encode_record(&Checkpoint {
            version: self.projection.version(),
            next_position: self.subscription.next_position(),
            state,
        })?;
        store.save_checkpoint(&self.checkpoint_name(), &record)
    }

    fn checkpoint_name(&self) -> String {
        format!("projection:{}", self.projection.name())
    }
}
