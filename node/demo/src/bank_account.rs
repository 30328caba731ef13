//! `BankAccount@<id>`: a balance that is never overdrawn.

use serde::{Deserialize, Serialize};

use chorus_aggregate::{Aggregate, CommandContext, DomainEvent};

/// An account's state. Amounts are in the smallest unit (cents).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankAccount {
    /// The owner, once opened.
    pub owner: Option<String>,
    /// The balance; never negative, by construction of the commands.
    pub balance: u64,
}

/// Marks a deposit or withdrawal as one leg of a transfer, so the transfer saga can follow it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferLeg {
    /// The transfer's stream id (`Transfer@<id>`).
    pub transfer_id: String,
    /// The other account's stream id.
    pub counterparty: String,
    /// Whether this leg returns money after the transfer failed.
    pub refund: bool,
}

/// Account commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BankAccountCommand {
    /// Opens the account.
    OpenAccount {
        /// The owner.
        owner: String,
    },
    /// Adds money.
    Deposit {
        /// How much.
        amount: u64,
        /// The transfer it belongs to, if any.
        transfer: Option<TransferLeg>,
    },
    /// Takes money out, if the balance covers it.
    Withdraw {
        /// How much.
        amount: u64,
        /// The transfer it belongs to, if any.
        transfer: Option<TransferLeg>,
    },
}

/// Account events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BankAccountEvent {
    /// The account exists.
    AccountOpened {
        /// The owner.
        owner: String,
    },
    /// Money came in.
    Deposited {
        /// How much.
        amount: u64,
        /// The balance after.
        balance: u64,
        /// The transfer it belongs to, if any.
        transfer: Option<TransferLeg>,
    },
    /// Money went out.
    Withdrawn {
        /// How much.
        amount: u64,
        /// The balance after.
        balance: u64,
        /// The transfer it belongs to, if any.
        transfer: Option<TransferLeg>,
    },
}

impl DomainEvent for BankAccountEvent {}

/// Why an account refuses a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BankAccountError {
    /// Opened twice.
    #[error("the account is already open")]
    AlreadyOpen,
    /// Used before opening.
    #[error("the account is not open")]
    NotOpen,
    /// An amount of zero.
    #[error("the amount must be positive")]
    ZeroAmount,
    /// A withdrawal over the balance: no overdraft.
    #[error("insufficient funds: balance {balance}, asked {amount}")]
    InsufficientFunds {
        /// The balance.
        balance: u64,
        /// The amount asked.
        amount: u64,
    },
    /// A deposit that would overflow the balance.
    #[error("the balance would overflow")]
    Overflow,
}

impl Aggregate for BankAccount {
    const CATEGORY: &'static str = "BankAccount";
    const SCHEMA_VERSION: u32 = 1;
    type Command = BankAccountCommand;
    type Event = BankAccountEvent;
    type Error = BankAccountError;

    fn handle(
        &self,
        command: &BankAccountCommand,
        _context: &CommandContext,
    ) -> Result<Vec<BankAccountEvent>, BankAccountError> {
        match command {
            BankAccountCommand::OpenAccount { owner } => {
                if self.owner.is_some() {
                    return Err(BankAccountError::AlreadyOpen);
                }
                Ok(vec![BankAccountEvent::AccountOpened {
                    owner: owner.clone(),
                }])
            }
            BankAccountCommand::Deposit { amount, transfer } => {
                self.check_open(*amount)?;
                let balance = self
                    .balance
                    .checked_add(*amount)
                    .ok_or(BankAccountError::Overflow)?;
                Ok(vec![BankAccountEvent::Deposited {
                    amount: *amount,
                    balance,
                    transfer: transfer.clone(),
                }])
            }
            BankAccountCommand::Withdraw { amount, transfer } => {
                self.check_open(*amount)?;
                let balance = self.balance.checked_sub(*amount).ok_or(
                    BankAccountError::InsufficientFunds {
                        balance: self.balance,
                        amount: *amount,
                    },
                )?;
                Ok(vec![BankAccountEvent::Withdrawn {
                    amount: *amount,
                    balance,
                    transfer: transfer.clone(),
                }])
            }
        }
    }

    fn apply(mut self, event: &BankAccountEvent) -> Self {
        match event {
            BankAccountEvent::AccountOpened { owner } => self.owner = Some(owner.clone()),
            BankAccountEvent::Deposited { balance, .. }
            | BankAccountEvent::Withdrawn { balance, .. } => self.balance = *balance,
        }
        self
    }
}

impl BankAccount {
    fn check_open(&self, amount: u64) -> Result<(), BankAccountError> {
        if self.owner.is_none() {
            return Err(BankAccountError::NotOpen);
        }
        if amount == 0 {
            return Err(BankAccountError::ZeroAmount);
        }
        Ok(())
    }
}
