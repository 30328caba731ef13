//! The durable event store: one redb file per node.
//!
//! Layout (every table is created when the file is created):
//!
//! | table | key | value |
//! |---|---|---|
//! | `events` | global position | the event record ([`crate::codec`]) |
//! | `streams` | qualified stream key | stream record: number, version, metadata, flags |
//! | `stream_names` | stream number | qualified stream key |
//! | `stream_events` | (stream number, sequence) | global position |
//! | `databases` | database | () |
//! | `categories` | (database, category) | category number |
//! | `category_streams` | (category number, stream id) | stream number |
//! | `category_events` | (category number, position) | () |
//! | `types` / `type_names` | type name / type number | type number / type name |
//! | `type_events` | (type number, position) | () |
//! | `write_ids` | id of the first event of each write | its global position |
//! | `commands` | command id | the append's outcome |
//! | `superseded` | position of a superseded event | position of its correction |
//! | `snapshots` | stream number | snapshot record |
//! | `checkpoints` | subscriber name | its checkpoint record |
//! | `meta` | counter name | counter |
//!
//! Architecture invariant: one write transaction per call that writes, so a batch (or a group
//! of batches) is durable whole or not at all, with one fsync however many events it holds.
//! A group may be committed [`Commit::Deferred`]: visible at once, durable at the next durable
//! commit of this store ([`EventStore::make_durable`]), so that a caller committing several
//! groups in a row pays one fsync for all of them. A crash before that commit loses the
//! deferred groups whole (redb keeps the last durable state), never part of one.
//! Architecture invariant: the store reads no clock; "now" for `max_age_ms` is the newest
//! agreed timestamp it holds.

mod checks;
mod node_log;
mod read;
mod reader;
mod write;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

pub use read::{Direction, ReadSlice, ReadView, StreamSlice};
pub use write::GroupOutcome;

use crate::envelope::{AppendOutcome, StreamMetadata};
use crate::error::StoreError;
use crate::names::StreamKey;

pub(crate) const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
pub(crate) const STREAMS: TableDefinition<&str, &[u8]> = TableDefinition::new("streams");
pub(crate) const STREAM_NAMES: TableDefinition<u64, &str> = TableDefinition::new("stream_names");
pub(crate) const STREAM_EVENTS: TableDefinition<(u64, u64), u64> =
    TableDefinition::new("stream_events");
pub(crate) const DATABASES: TableDefinition<&str, ()> = TableDefinition::new("databases");
pub(crate) const CATEGORIES: TableDefinition<(&str, &str), u64> =
    TableDefinition::new("categories");
pub(crate) const CATEGORY_STREAMS: TableDefinition<(u64, &str), u64> =
    TableDefinition::new("category_streams");
pub(crate) const CATEGORY_EVENTS: TableDefinition<(u64, u64), ()> =
    TableDefinition::new("category_events");
pub(crate) const TYPES: TableDefinition<&str, u64> = TableDefinition::new("types");
pub(crate) const TYPE_NAMES: TableDefinition<u64, &str> = TableDefinition::new("type_names");
pub(crate) const TYPE_EVENTS: TableDefinition<(u64, u64), ()> = TableDefinition::new("type_events");
pub(crate) const WRITE_IDS: TableDefinition<[u8; 16], u64> = TableDefinition::new("write_ids");
pub(crate) const COMMANDS: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("commands");
pub(crate) const SUPERSEDED: TableDefinition<u64, u64> = TableDefinition::new("superseded");
pub(crate) const SNAPSHOTS: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshots");
pub(crate) const CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoints");
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Names of the counters in `meta`.
pub(crate) mod counter {
    pub const HEAD_POSITION: &str = "head_position";
    pub const NEXT_STREAM_NO: &str = "next_stream_no";
    pub const NEXT_CATEGORY_NO: &str = "next_category_no";
    pub const NEXT_TYPE_NO: &str = "next_type_no";
    pub const LATEST_TIMESTAMP_MS: &str = "latest_timestamp_ms";
    pub const FORMAT: &str = "format";
}

/// The layout version this code writes; a file of another layout is refused at open.
const FORMAT_VERSION: u64 = 1;

/// What the `streams` table holds per stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StreamRecord {
    pub stream_no: u64,
    pub category_no: u64,
    pub version: u64,
    pub metadata: StreamMetadata,
    /// Soft delete: reads hide events up to this sequence number.
    pub hidden_through: u64,
    pub deleted: bool,
    pub last_timestamp_ms: u64,
    /// Whether any event of the stream was ever superseded; reads look corrections up only then.
    pub corrected: bool,
    /// Changes whenever what the stream's aggregate is built from changes other than by
    /// appending (a correction, a soft delete): a snapshot of another epoch is stale.
    pub epoch: u64,
}

/// What became of a command id: the append it made, or the refusal recorded for it. Either
/// way, executing the id again returns the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandRecord {
    /// The command's events were appended.
    Appended(AppendOutcome),
    /// The aggregate refused the command.
    Refused {
        /// The stream addressed.
        stream: StreamKey,
        /// The refusal, as text.
        reason: String,
    },
}

/// A snapshot of an aggregate's state at a stream version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// The aggregate's schema version when the snapshot was taken; another schema's snapshot
    /// is ignored.
    pub schema_version: u32,
    /// The stream version the state reflects.
    pub version: u64,
    /// The stream's epoch when the state was built ([`crate::envelope::StreamInfo::epoch`]).
    pub epoch: u64,
    /// The encoded state.
    pub state: Vec<u8>,
}

/// The durable event store. Cheap to share by reference across threads: reads run in parallel,
/// writes are serialised by redb.
pub struct EventStore {
    database: Database,
    path: PathBuf,
    /// The head position as of the last commit, for waking subscribers.
    head: Mutex<u64>,
    head_changed: Condvar,
    /// This open store among those of the process (`instance`).
    instance: u64,
    /// Set by a [`Commit::Deferred`] commit, cleared by a commit that made it durable.
    deferred: AtomicBool,
}

/// When a write becomes durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commit {
    /// Durable when the call returns (one fsync).
    Durable,
    /// Visible when the call returns, durable at the next durable commit of the store
    /// ([`EventStore::make_durable`], or any call that says it makes earlier writes durable).
    /// Whoever acknowledges the write must make it durable first.
    Deferred,
}

/// The next `EventStore::instance`.
static NEXT_INSTANCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl EventStore {
    /// A number no other store opened by this process has: what keeps in-memory state
    /// caches (`state_cache`) of different stores apart.
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// Opens the store at `path`, creating the file and its tables if it does not exist.
    ///
    /// A new store is built in a temporary file beside `path` and linked into place once
    /// durable: redb writes a new file's magic number last and refuses a file without it, so a
    /// crash while creating the file in place would leave a file that never opens again.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if !path.exists() {
            create_atomically(&path)?;
        }
        let database = Database::create(&path)?;
        initialize(&database, &path)?;
        let store = Self {
            database,
            path,
            head: Mutex::new(0),
            head_changed: Condvar::new(),
            instance: NEXT_INSTANCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            deferred: AtomicBool::new(false),
        };
        let head = store.head_position()?;
        *store.head.lock().unwrap_or_else(PoisonError::into_inner) = head;
        Ok(store)
    }

    /// The file the store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The global position of the newest event (0 when the store is empty).
    pub fn head_position(&self) -> Result<u64, StoreError> {
        let transaction = self.database.begin_read()?;
        let meta = transaction.open_table(META)?;
        Ok(read_counter(&meta, counter::HEAD_POSITION)?)
    }

    /// The newest agreed timestamp in the store: the "now" of `max_age_ms`.
    pub fn latest_timestamp_ms(&self) -> Result<u64, StoreError> {
        let transaction = self.database.begin_read()?;
        let meta = transaction.open_table(META)?;
        Ok(read_counter(&meta, counter::LATEST_TIMESTAMP_MS)?)
    }

    /// The head as of the last commit through this handle, from memory (no read
    /// transaction): what a waiter on new events compares against.
    pub fn committed_head(&self) -> u64 {
        *self.head.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Blocks until the head moves past `position` or `timeout` passes; returns the head.
    /// Subscriptions use this to go from catch-up to live without polling.
    pub fn wait_for_head_after(&self, position: u64, timeout: Duration) -> u64 {
        // A timeout too large for an Instant (Duration::MAX) means "no deadline".
        let deadline = Instant::now().checked_add(timeout);
        let mut head = self.head.lock().unwrap_or_else(PoisonError::into_inner);
        while *head <= position {
            let wait = match deadline {
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => break,
                },
                None => Duration::from_secs(3600),
            };
            head = self
                .head_changed
                .wait_timeout(head, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *head
    }

    /// Whether a [`Commit::Deferred`] write is not durable yet.
    pub fn has_deferred_writes(&self) -> bool {
        self.deferred.load(Ordering::Acquire)
    }

    /// Makes every write committed so far durable, with one fsync, if any was deferred;
    /// otherwise does nothing.
    pub fn make_durable(&self) -> Result<(), StoreError> {
        if !self.has_deferred_writes() {
            return Ok(());
        }
        let transaction = self.database.begin_write()?;
        self.commit_durably(transaction)
    }

    /// Commits `transaction` durably, which makes every earlier commit durable too (redb
    /// persists its whole state), so the deferred flag is cleared. It is cleared before the
    /// commit: a deferred commit by another thread lands either before this transaction began
    /// (and is made durable by it) or after it (and sets the flag again).
    fn commit_durably(&self, transaction: redb::WriteTransaction) -> Result<(), StoreError> {
        let was_deferred = self.deferred.swap(false, Ordering::AcqRel);
        transaction.commit().inspect_err(|_| {
            if was_deferred {
                self.deferred.store(true, Ordering::Release);
            }
        })?;
        Ok(())
    }

    /// Commits `transaction` as `commit` says.
    fn commit_as(
        &self,
        mut transaction: redb::WriteTransaction,
        commit: Commit,
    ) -> Result<(), StoreError> {
        match commit {
            Commit::Durable => self.commit_durably(transaction),
            Commit::Deferred => {
                transaction.set_durability(redb::Durability::None)?;
                transaction.commit()?;
                self.deferred.store(true, Ordering::Release);
                Ok(())
            }
        }
    }

    /// Records a new head after a commit and wakes waiting subscribers.
    fn publish_head(&self, head: u64) {
        let mut current = self.head.lock().unwrap_or_else(PoisonError::into_inner);
        if head > *current {
            *current = head;
            self.head_changed.notify_all();
        }
    }
}

/// Creates the store's tables and layout version, or checks the layout version of an
/// existing file.
fn initialize(database: &Database, path: &Path) -> Result<(), StoreError> {
    let transaction = database.begin_write()?;
    {
        let mut meta = transaction.open_table(META)?;
        let format = meta.get(counter::FORMAT)?.map(|guard| guard.value());
        match format {
            None => {
                meta.insert(counter::FORMAT, FORMAT_VERSION)?;
            }
            Some(FORMAT_VERSION) => {}
            Some(other) => {
                return Err(StoreError::Corrupt(format!(
                    "{} has layout version {other}; this build reads {FORMAT_VERSION}",
                    path.display()
                )));
            }
        }
        transaction.open_table(EVENTS)?;
        transaction.open_table(STREAMS)?;
        transaction.open_table(STREAM_NAMES)?;
        transaction.open_table(STREAM_EVENTS)?;
        transaction.open_table(DATABASES)?;
        transaction.open_table(CATEGORIES)?;
        transaction.open_table(CATEGORY_STREAMS)?;
        transaction.open_table(CATEGORY_EVENTS)?;
        transaction.open_table(TYPES)?;
        transaction.open_table(TYPE_NAMES)?;
        transaction.open_table(TYPE_EVENTS)?;
        transaction.open_table(WRITE_IDS)?;
        transaction.open_table(COMMANDS)?;
        transaction.open_table(SUPERSEDED)?;
        transaction.open_table(SNAPSHOTS)?;
        transaction.open_table(CHECKPOINTS)?;
        transaction.open_table(node_log::LOG_RECORDS)?;
    }
    transaction.commit()?;
    Ok(())
}

/// Builds an empty store in a temporary file beside `path` (`.<name>.creating.<pid>.<n>`,
/// unique per process and call), makes it durable, and installs it under `path` with a hard
/// link, which fails rather than replace a file another opener installed first (that file is
/// then used). A crash leaves at most a temporary file behind, never a half-built store
/// under `path`.
fn create_atomically(path: &Path) -> Result<(), StoreError> {
    static CREATIONS: AtomicU64 = AtomicU64::new(0);
    let io = |error: std::io::Error| StoreError::Storage(Box::new(redb::Error::Io(error)));
    let Some(name) = path.file_name() else {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )));
    };
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut temporary_name = std::ffi::OsString::from(".");
    temporary_name.push(name);
    temporary_name.push(format!(
        ".creating.{}.{}",
        std::process::id(),
        CREATIONS.fetch_add(1, Ordering::Relaxed)
    ));
    let temporary = directory.join(temporary_name);
    let built = (|| {
        {
            let database = Database::create(&temporary)?;
            initialize(&database, &temporary)?;
        }
        std::fs::File::open(&temporary)
            .and_then(|file| file.sync_all())
            .map_err(io)?;
        match std::fs::hard_link(&temporary, path) {
            Ok(()) => Ok(()),
            // Another opener installed its store first: use that one.
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(error) => Err(io(error)),
        }
    })();
    // The temporary name goes whatever happened; the store, if installed, lives on under
    // `path`.
    let removed = std::fs::remove_file(&temporary);
    built?;
    removed.map_err(io)?;
    std::fs::File::open(&directory)
        .and_then(|directory| directory.sync_all())
        .map_err(io)?;
    Ok(())
}

pub(crate) fn read_counter(
    table: &impl ReadableTable<&'static str, u64>,
    name: &str,
) -> Result<u64, redb::StorageError> {
    Ok(table.get(name)?.map(|guard| guard.value()).unwrap_or(0))
}
