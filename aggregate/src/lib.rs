//! Event sourcing for Chorus.
//!
//! - **Domain model** ([`domain`]): the [`Aggregate`] trait (deterministic `handle` and
//!   `apply`), typed events with stable type names and schema versions, upcasters.
//! - **Envelopes** ([`envelope`], [`ids`], [`names`]): stream keys `Category@id` in databases,
//!   event and command envelopes with causation and correlation ids.
//! - **Event store** ([`store`]): one redb file; atomic multi-stream appends with expected
//!   versions, idempotency by command id and event id, group commit, reads of streams,
//!   categories, event types and `$all`, listings, stream metadata, corrections.
//! - **On top of the store**: repositories with snapshots ([`repository`]), catch-up
//!   subscriptions ([`subscription`]), checkpointed projections ([`projection`]), process
//!   managers and an event router ([`process`]), a given/when/then test kit (`testkit`,
//!   behind the feature of that name: for tests, not part of the production API).
//!
//! Architecture invariant: aggregate code is deterministic. Time and ids come from the command
//! or the agreed block, never from the machine; nothing here reads a clock or draws randomness.

pub mod codec;
pub mod domain;
pub mod emit;
pub mod envelope;
pub mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod ids;
pub mod limits;
pub mod names;
pub mod process;
pub mod projection;
pub mod repository;
pub mod shape;
mod state_cache;
pub mod store;
pub mod subscription;
mod system;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use domain::{Aggregate, CommandContext, DomainEvent, Upcaster};
pub use emit::{Emit, Emitted, Emitter, StreamProjection};
pub use envelope::{
    AppendBatch, AppendOutcome, CommandEnvelope, ExpectedVersion, Filter, NewEvent, RecordedEvent,
    StreamInfo, StreamMetadata, StreamOutcome, StreamWrite,
};
pub use error::{CommandError, EventDecodeError, NameError, StoreError};
pub use ids::{CommandId, EventId, MessageId};
pub use names::{CategoryName, DatabaseName, StreamKey, TypeName};
pub use process::{
    AggregateRegistry, CommandRequest, Decision, DispatchError, EventRouter, ProcessManager,
};
pub use projection::{Projection, ProjectionRunner};
pub use repository::{Loaded, Repository, decide};
pub use shape::{AggregateShape, EventShape};
pub use store::{
    CommandRecord, Commit, Direction, EventStore, ReadSlice, ReadView, SnapshotRecord, StreamSlice,
};
pub use subscription::Subscription;
