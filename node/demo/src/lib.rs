//! The demo domain the `chorus` binary runs, and the tests, the benchmarks and the
//! simulator's workload use. It is written only against the public API of
//! `chorus-aggregate`, as any application's domain would be:
//!
//! - [`notebook`]: `Notebook` (initiate, add notes), with an upcaster for an old event version;
//! - [`bank_account`]: `BankAccount` (open, deposit, withdraw, never overdrawn);
//! - [`transfer`]: a `Transfer` aggregate and the process manager (saga) that moves money
//!   between two accounts, refunding when the deposit side refuses.

pub mod bank_account;
pub mod notebook;
pub mod transfer;

use chorus_aggregate::{AggregateRegistry, ProcessManager};

/// The demo domain's aggregates, registered for the engine.
pub fn registry() -> AggregateRegistry {
    AggregateRegistry::new()
        .register::<bank_account::BankAccount>()
        .register::<notebook::Notebook>()
        .register::<transfer::Transfer>()
}

/// The demo domain's process managers: the transfer saga.
pub fn process_managers() -> Vec<Box<dyn ProcessManager>> {
    vec![Box::new(transfer::TransferSaga)]
}

/// The demo domain's version: part of its domain fingerprint, changed when a decision
/// changes meaning while the types stay the same.
pub const DOMAIN_VERSION: &str = "1";
