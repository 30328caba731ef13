//! `Transfer@<id>` and the saga that carries it out across two `BankAccount` streams, which may
//! live in different sections of the cluster:
//!
//! 1. `TransferStarted {from, to, amount}` → `Withdraw` from `from`, marked as this transfer's leg.
//! 2. `Withdrawn` of the leg → `Deposit` to `to`.
//! 3. `Deposited` of the leg → `CompleteTransfer`.
//!
//! Compensation: a refused withdrawal fails the transfer; a refused deposit sends the money back
//! (a refund leg), and the refund's `Deposited` fails the transfer; a refused refund fails it
//! too, saying the money is withheld. Corrections (events with `supersedes`) are ignored. The saga keeps no state of
//! its own: each event carries what the next step needs, so it resumes anywhere after a crash.

use serde::{Deserialize, Serialize};

use crate::bank_account::{BankAccountCommand, BankAccountEvent, TransferLeg};
use chorus_aggregate::StreamKey;
use chorus_aggregate::{Aggregate, CommandContext, DomainEvent};
use chorus_aggregate::{CommandRequest, ProcessManager};
use chorus_aggregate::{Filter, RecordedEvent};

/// A transfer's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Source account id, once started.
    pub from: Option<String>,
    /// Destination account id.
    pub to: String,
    /// Amount.
    pub amount: u64,
    /// Where it stands.
    pub status: TransferStatus,
}

/// Where a transfer stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferStatus {
    /// Not started.
    #[default]
    New,
    /// Money is on its way.
    Started,
    /// The money arrived.
    Completed,
    /// It failed; any money taken was refunded.
    Failed {
        /// Why.
        reason: String,
    },
}

/// Transfer commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferCommand {
    /// Starts moving `amount` from account `from` to account `to` (account ids, not keys).
    StartTransfer {
        /// Source account id.
        from: String,
        /// Destination account id.
        to: String,
        /// Amount.
        amount: u64,
    },
    /// Marks the transfer done (sent by the saga).
    CompleteTransfer,
    /// Marks the transfer failed (sent by the saga).
    FailTransfer {
        /// Why.
        reason: String,
    },
}

/// Transfer events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferEvent {
    /// The transfer began.
    TransferStarted {
        /// Source account id.
        from: String,
        /// Destination account id.
        to: String,
        /// Amount.
        amount: u64,
    },
    /// The money arrived.
    TransferCompleted,
    /// It failed.
    TransferFailed {
        /// Why.
        reason: String,
    },
}

impl DomainEvent for TransferEvent {}

/// Why a transfer refuses a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// Started twice.
    #[error("the transfer was already started")]
    AlreadyStarted,
    /// Finished before it started, or twice.
    #[error("the transfer is not in progress")]
    NotInProgress,
    /// A transfer to the same account, of nothing, or with a bad account id.
    #[error("invalid transfer: {0}")]
    Invalid(String),
}

impl Aggregate for Transfer {
    const CATEGORY: &'static str = "Transfer";
    const SCHEMA_VERSION: u32 = 1;
    type Command = TransferCommand;
    type Event = TransferEvent;
    type Error = TransferError;

    fn handle(
        &self,
        command: &TransferCommand,
        _context: &CommandContext,
    ) -> Result<Vec<TransferEvent>, TransferError> {
        match command {
            TransferCommand::StartTransfer { from, to, amount } => {
                if self.status != TransferStatus::New {
                    return Err(TransferError::AlreadyStarted);
                }
                if from == to || *amount == 0 {
                    return Err(TransferError::Invalid(
                        "two different accounts and a positive amount are needed".to_owned(),
                    ));
                }
                for id in [from, to] {
                    account(id).map_err(TransferError::Invalid)?;
                }
                Ok(vec![TransferEvent::TransferStarted {
                    from: from.clone(),
                    to: to.clone(),
                    amount: *amount,
                }])
            }
            TransferCommand::CompleteTransfer | TransferCommand::FailTransfer { .. }
                if self.status != TransferStatus::Started =>
            {
                Err(TransferError::NotInProgress)
            }
            TransferCommand::CompleteTransfer => Ok(vec![TransferEvent::TransferCompleted]),
            TransferCommand::FailTransfer { reason } => Ok(vec![TransferEvent::TransferFailed {
                reason: reason.clone(),
            }]),
        }
    }

    fn apply(mut self, event: &TransferEvent) -> Self {
        match event {
            TransferEvent::TransferStarted { from, to, amount } => {
                self.from = Some(from.clone());
                self.to = to.clone();
                self.amount = *amount;
                self.status = TransferStatus::Started;
            }
            TransferEvent::TransferCompleted => self.status = TransferStatus::Completed,
            TransferEvent::TransferFailed { reason } => {
                self.status = TransferStatus::Failed {
                    reason: reason.clone(),
                }
            }
        }
        self
    }
}

/// The saga: listens to transfers and accounts of one database (the default one).
#[derive(Debug, Default)]
pub struct TransferSaga;

const SAGA_NAME: &str = "transfer-saga";

fn account(id: &str) -> Result<StreamKey, String> {
    StreamKey::new("BankAccount", id).map_err(|error| error.to_string())
}

fn transfer(id: &str) -> Result<StreamKey, String> {
    StreamKey::new("Transfer", id).map_err(|error| error.to_string())
}

impl TransferSaga {
    fn command(
        event: &RecordedEvent,
        index: usize,
        stream: Result<StreamKey, String>,
        command: &impl Serialize,
    ) -> Vec<CommandRequest> {
        // Stream ids in these events were checked when the transfer started; a malformed one
        // here means a forged or corrupt event, and the saga does nothing with it.
        let Ok(stream) = stream else {
            return Vec::new();
        };
        CommandRequest::caused_by(SAGA_NAME, event, index, stream, command)
            .map(|request| vec![request])
            .unwrap_or_default()
    }
}

impl ProcessManager for TransferSaga {
    fn name(&self) -> &str {
        SAGA_NAME
    }

    fn filter(&self) -> Filter {
        Filter::All
    }

    fn handle(&mut self, event: &RecordedEvent) -> Vec<CommandRequest> {
        // A correction restates an earlier event; the saga acted on the original already, and
        // acting again would move the money twice. Corrections of money movements are an
        // operator's business.
        if event.supersedes.is_some() {
            return Vec::new();
        }
        let category = event.stream.category().as_str();
        if category == Transfer::CATEGORY {
            let Ok(TransferEvent::TransferStarted { from, to, amount }) =
                chorus_aggregate::domain::decode_event::<TransferEvent>(
                    event.event_type.as_str(),
                    event.event_version,
                    &event.payload,
                )
            else {
                return Vec::new();
            };
            let leg = TransferLeg {
                transfer_id: event.stream.id().to_owned(),
                counterparty: to,
                refund: false,
            };
            let withdraw = BankAccountCommand::Withdraw {
                amount,
                transfer: Some(leg),
            };
            return Self::command(event, 0, account(&from), &withdraw);
        }
        if category != <crate::bank_account::BankAccount as Aggregate>::CATEGORY {
            return Vec::new();
        }
        match chorus_aggregate::domain::decode_event::<BankAccountEvent>(
            event.event_type.as_str(),
            event.event_version,
            &event.payload,
        ) {
            Ok(BankAccountEvent::Withdrawn {
                amount,
                transfer: Some(leg),
                ..
            }) if !leg.refund => {
                let deposit = BankAccountCommand::Deposit {
                    amount,
                    transfer: Some(TransferLeg {
                        transfer_id: leg.transfer_id,
                        counterparty: event.stream.id().to_owned(),
                        refund: false,
                    }),
                };
                Self::command(event, 0, account(&leg.counterparty), &deposit)
            }
            Ok(BankAccountEvent::Deposited {
                transfer: Some(leg),
                ..
            }) => {
                let command = if leg.refund {
                    TransferCommand::FailTransfer {
                        reason: "the destination refused the deposit; refunded".to_owned(),
                    }
                } else {
                    TransferCommand::CompleteTransfer
                };
                Self::command(event, 0, transfer(&leg.transfer_id), &command)
            }
            _ => Vec::new(),
        }
    }

    fn on_rejected(
        &mut self,
        event: &RecordedEvent,
        request: &CommandRequest,
        reason: &str,
    ) -> Vec<CommandRequest> {
        let Ok(command) = serde_json::from_value::<BankAccountCommand>(request.command.clone())
        else {
            return Vec::new();
        };
        match command {
            BankAccountCommand::Withdraw {
                transfer: Some(leg),
                ..
            } => {
                let fail = TransferCommand::FailTransfer {
                    reason: format!("withdrawal refused: {reason}"),
                };
                Self::command(event, 1, transfer(&leg.transfer_id), &fail)
            }
            BankAccountCommand::Deposit {
                amount,
                transfer: Some(leg),
            } if !leg.refund => {
                let refund = BankAccountCommand::Deposit {
                    amount,
                    transfer: Some(TransferLeg {
                        transfer_id: leg.transfer_id,
                        counterparty: request.stream.id().to_owned(),
                        refund: true,
                    }),
                };
                Self::command(event, 1, account(&leg.counterparty), &refund)
            }
            // The refund itself was refused (the source account was deleted, or its balance
            // would overflow): the money is withheld, and the transfer must say so.
            BankAccountCommand::Deposit {
                amount,
                transfer: Some(leg),
            } => {
                let fail = TransferCommand::FailTransfer {
                    reason: format!("refund of {amount} refused, money withheld: {reason}"),
                };
                Self::command(event, 2, transfer(&leg.transfer_id), &fail)
            }
            _ => Vec::new(),
        }
    }
}
