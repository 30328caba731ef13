//! The node's consensus replay log, kept in the same redb file as its events: one row per
//! record, keyed by a sequence number, holding the record's generation and its bytes (the
//! caller's encoding). Each append is one durable transaction, so a record is on disk whole or
//! not at all (no torn last record), and records keep their order.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::EventStore;
use crate::error::StoreError;

pub(crate) const LOG_RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("log_records");

impl EventStore {
    /// Appends replay-log records (generation, bytes) in order, durably, in one transaction,
    /// which makes every deferred write before it durable too ([`crate::Commit::Deferred`]).
    pub fn append_log_records(&self, records: &[(u64, Vec<u8>)]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let transaction = self.database.begin_write()?;
        {
            let mut table = transaction.open_table(LOG_RECORDS)?;
            let first = match table.last()? {
                Some((key, _)) => key.value() + 1,
                None => 0,
            };
            for (key, (generation, bytes)) in (first..).zip(records) {
                let mut row = Vec::with_capacity(8 + bytes.len());
                row.extend_from_slice(&generation.to_le_bytes());
                row.extend_from_slice(bytes);
                table.insert(key, row.as_slice())?;
            }
        }
        self.commit_durably(transaction)
    }

    /// Every replay-log record (generation, bytes), in the order appended.
    pub fn log_records(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let transaction = self.database.begin_read()?;
        let table = transaction.open_table(LOG_RECORDS)?;
        let mut records = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let row = value.value();
            let Some((generation, bytes)) = row.split_first_chunk::<8>() else {
                return Err(StoreError::Corrupt(format!(
                    "replay-log record {} has {} bytes, fewer than its generation",
                    key.value(),
                    row.len()
                )));
            };
            records.push((u64::from_le_bytes(*generation), bytes.to_vec()));
        }
        Ok(records)
    }

    /// Drops the records of generations below `generation` (a section's earlier generations
    /// are never replayed again once a later one is saved). Returns how many were dropped.
    pub fn drop_log_records_below(&self, generation: u64) -> Result<usize, StoreError> {
        let transaction = self.database.begin_write()?;
        let dropped = {
            let mut table = transaction.open_table(LOG_RECORDS)?;
            let mut old = Vec::new();
            for entry in table.iter()? {
                let (key, value) = entry?;
                let row = value.value();
                let record_generation = row
                    .first_chunk::<8>()
                    .map_or(0, |bytes| u64::from_le_bytes(*bytes));
                if record_generation < generation {
                    old.push(key.value());
                }
            }
            for key in &old {
                table.remove(key)?;
            }
            old.len()
        };
        transaction.commit()?;
        Ok(dropped)
    }
}
