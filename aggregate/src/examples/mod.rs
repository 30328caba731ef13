//! Example domains, used by the tests, the benchmarks and the simulator's workload:
//!
//! - [`notebook`]: `Notebook` (initiate, add notes), with an upcaster for an old event version;
//! - [`bank_account`]: `BankAccount` (open, deposit, withdraw, never overdrawn);
//! - [`transfer`]: a `Transfer` aggregate and the process manager (saga) that moves money
//!   between two accounts, refunding when the deposit side refuses.

pub mod bank_account;
pub mod notebook;
pub mod transfer;
