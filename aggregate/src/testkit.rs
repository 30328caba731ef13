//! Given / when / then tests for aggregates, for users of the crate:
//!
//! ```
//! use chorus_demo::bank_account::*;
//! use chorus_aggregate::testkit::AggregateTest;
//!
//! AggregateTest::<BankAccount>::given([BankAccountEvent::AccountOpened { owner: "ada".into() }])
//!     .when(BankAccountCommand::Withdraw { amount: 5, transfer: None })
//!     .then_error(BankAccountError::InsufficientFunds { balance: 0, amount: 5 });
//! ```
//!
//! Every produced event is also encoded and decoded, so a test fails when an event does not
//! survive the store.

use crate::domain::{Aggregate, CommandContext, decode_event, encode_event};
use crate::ids::CommandId;
use crate::names::StreamKey;

/// The history an aggregate test starts from.
pub struct AggregateTest<A: Aggregate> {
    state: A,
    context: CommandContext,
}

/// The result of `when`, to check with `then`, `then_error` and `and_state`.
pub struct AggregateOutcome<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> AggregateTest<A> {
    /// Starts from these events, applied to the empty state.
    pub fn given(events: impl IntoIterator<Item = A::Event>) -> Self {
        let state = events
            .into_iter()
            .fold(A::default(), |state, event| state.apply(&event));
        let stream = StreamKey::new(A::CATEGORY, "test")
            .unwrap_or_else(|error| panic!("category {:?}: {error}", A::CATEGORY));
        Self {
            state,
            context: CommandContext {
                stream,
                command_id: CommandId::derive(&[b"testkit"]),
                timestamp_ms: 0,
                domain_version: String::new(),
            },
        }
    }

    /// Starts from the empty state.
    pub fn given_no_events() -> Self {
        Self::given([])
    }

    /// Sets the agreed timestamp the command executes at.
    pub fn at(mut self, timestamp_ms: u64) -> Self {
        self.context.timestamp_ms = timestamp_ms;
        self
    }

    /// Sets the domain version the section agreed on (what `CommandContext::domain_version`
    /// says): to test behaviour that changes with a domain upgrade.
    pub fn under_domain(mut self, version: &str) -> Self {
        self.context.domain_version = version.to_owned();
        self
    }

    /// Executes the command.
    pub fn when(self, command: A::Command) -> AggregateOutcome<A> {
        let result = self.state.handle(&command, &self.context);
        AggregateOutcome {
            state: self.state,
            result,
        }
    }
}

impl<A: Aggregate> AggregateOutcome<A>
where
    A::Error: PartialEq,
{
    /// Asserts the command was refused with exactly this error.
    pub fn then_error(self, expected: A::Error) -> Self {
        match &self.result {
            Err(error) => assert_eq!(error, &expected, "the command was refused differently"),
            Ok(events) => {
                panic!("expected the error {expected:?}, but the command produced {events:?}")
            }
        }
        self
    }
}

impl<A: Aggregate> AggregateOutcome<A> {
    /// Asserts the command produced exactly these events, each surviving encode and decode.
    pub fn then(self, expected: impl IntoIterator<Item = A::Event>) -> Self {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match &self.result {
            Ok(events) => {
                assert_eq!(events, &expected, "the command produced other events");
                for event in events {
                    let encoded = encode_event(event)
                        .unwrap_or_else(|error| panic!("{event:?} does not encode: {error}"));
                    let decoded: A::Event = decode_event(
                        encoded.event_type.as_str(),
                        encoded.event_version,
                        &encoded.payload,
                    )
                    .unwrap_or_else(|error| panic!("{event:?} does not decode: {error}"));
                    assert_eq!(
                        &decoded, event,
                        "the event changed through the store's codec"
                    );
                }
            }
            Err(error) => {
                panic!("expected events {expected:?}, but the command was refused: {error}")
            }
        }
        self
    }

    /// Asserts the command was refused, with an error the predicate accepts.
    pub fn then_error_matching(self, predicate: impl FnOnce(&A::Error) -> bool) -> Self {
        match &self.result {
            Err(error) => assert!(predicate(error), "the command was refused with {error:?}"),
            Ok(events) => panic!("expected a refusal, but the command produced {events:?}"),
        }
        self
    }

    /// Runs checks on the state after the produced events (or the unchanged state after a
    /// refusal).
    pub fn and_state(self, check: impl FnOnce(&A)) -> Self {
        let state = match &self.result {
            Ok(events) => events
                .iter()
                .fold(self.state.clone(), |state, event| state.apply(event)),
            Err(_) => self.state.clone(),
        };
        check(&state);
        self
    }
}
