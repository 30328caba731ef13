//! Applying agreed proposals: exactly once, in order, the same on every member whatever
//! batches the blocks arrive in, and forged or stale decisions never applied.

use chorus_aggregate::{
    AggregateRegistry, CommandId, CommandRequest, EventId, EventStore, ExpectedVersion, NewEvent,
    Repository, StreamKey, TypeName,
};
use chorus_demo::bank_account::{BankAccount, BankAccountCommand, BankAccountEvent};
use chorus_demo::notebook::{Notebook, NotebookCommand};
use chorus_engine::proposal::{PROPOSAL_VERSION, PROPOSAL_VERSION_JSON};
use chorus_engine::{AgreedProposal, Applied, Proposal, apply_agreed};
use proptest::prelude::*;

fn registry() -> AggregateRegistry {
    AggregateRegistry::new()
        .register::<BankAccount>()
        .register::<Notebook>()
}

fn store() -> (tempfile::TempDir, EventStore) {
    let directory = tempfile::tempdir().expect("temp dir");
    let store = EventStore::open(directory.path().join("events.redb")).expect("open");
    (directory, store)
}

fn request(id: &str, stream: &str, command: serde_json::Value) -> CommandRequest {
    CommandRequest::new(
        CommandId::derive(&[id.as_bytes()]),
        StreamKey::parse(stream).expect("stream key"),
        command,
    )
}

fn bank(command: BankAccountCommand) -> serde_json::Value {
    serde_json::to_value(command).expect("json")
}

fn agreed(timestamp_ms: u64, request: CommandRequest) -> AgreedProposal {
    AgreedProposal {
        timestamp_ms,
        proposal: Proposal::Command(request),
    }
}

fn open(id: &str, account: &str) -> AgreedProposal {
    agreed(
        1,
        request(
            id,
            &format!("BankAccount@{account}"),
            bank(BankAccountCommand::OpenAccount {
                owner: account.to_owned(),
            }),
        ),
    )
}

fn deposit(id: &str, account: &str, amount: u64) -> AgreedProposal {
    agreed(
        2,
        request(
            id,
            &format!("BankAccount@{account}"),
            bank(BankAccountCommand::Deposit {
                amount,
                transfer: None,
            }),
        ),
    )
}

fn withdraw(id: &str, account: &str, amount: u64) -> AgreedProposal {
    agreed(
        3,
        request(
            id,
            &format!("BankAccount@{account}"),
            bank(BankAccountCommand::Withdraw {
                amount,
                transfer: None,
            }),
        ),
    )
}

fn balance(store: &EventStore, account: &str) -> u64 {
    Repository::<BankAccount>::new(store)
        .load(&StreamKey::parse(&format!("BankAccount@{account}")).expect("key"))
        .expect("load")
        .state
        .balance
}

#[test]
fn commands_on_one_stream_in_one_block_apply_in_order_exactly_once() {
    let (_directory, store) = store();
    let sequence = [
        open("o", "a"),
        deposit("d1", "a", 10),
        deposit("d2", "a", 5),
        withdraw("w1", "a", 12),
        withdraw("w2", "a", 12), // only 3 left: refused
        deposit("d1", "a", 10),  // a repeat of d1: applied once
    ];
    let results = apply_agreed(&registry(), &store, "", &sequence).expect("apply");
    let versions: Vec<Option<u64>> = results
        .iter()
        .map(|result| match result {
            Applied::Appended(outcome) => Some(outcome.streams[0].version),
            _ => None,
        })
        .collect();
    assert_eq!(versions, [Some(1), Some(2), Some(3), Some(4), None, None]);
    assert!(
        matches!(&results[4], Applied::Refused(reason) if reason.contains("insufficient funds"))
    );
    assert!(matches!(&results[5], Applied::Duplicate(outcome) if outcome.streams[0].version == 2));
    assert_eq!(balance(&store, "a"), 3);
    // The same again (a member re-applying after a crash): every fate is the same.
    let again = apply_agreed(&registry(), &store, "", &sequence).expect("apply");
    assert!(
        again
            .iter()
            .all(|result| matches!(result, Applied::Duplicate(_) | Applied::Refused(_)))
    );
    assert_eq!(balance(&store, "a"), 3);
}

#[test]
fn agreed_time_comes_from_the_block() {
    let (_directory, store) = store();
    let initiate = request(
        "n",
        "Notebook@1",
        serde_json::to_value(NotebookCommand::InitiateNotebook { title: "t".into() })
            .expect("json"),
    );
    let results = apply_agreed(&registry(), &store, "", &[agreed(777, initiate)]).expect("apply");
    assert!(matches!(results[0], Applied::Appended(_)));
    let notebook = Repository::<Notebook>::new(&store)
        .load(&StreamKey::parse("Notebook@1").expect("key"))
        .expect("load");
    assert_eq!(notebook.state.initiated_at_ms, 777);
}

#[test]
fn a_pinned_version_that_passed_is_refused_the_same_way_everywhere() {
    let (_directory, store) = store();
    let mut late = deposit("late", "a", 1);
    if let Proposal::Command(request) = &mut late.proposal {
        request.expected = ExpectedVersion::Exact(0);
    }
    let results =
        apply_agreed(&registry(), &store, "", &[open("o", "a"), late.clone()]).expect("apply");
    assert!(matches!(&results[1], Applied::Invalid(reason) if reason.contains("expected")));
    // Recorded: the id keeps that fate.
    let again = apply_agreed(&registry(), &store, "", &[late]).expect("apply");
    assert!(matches!(&again[0], Applied::Refused(_)));
}

/// A Supermajority proposal of `request` as an honest member decides it on `store`.
fn decided(store: &EventStore, request: CommandRequest) -> Proposal {
    let decision = registry().decide(store, &request).expect("decide");
    let mut request = request;
    request.timestamp_ms = decision.stream_timestamp_ms;
    let decision = registry().decide(store, &request).expect("decide");
    Proposal::Decided {
        request,
        version: decision.version,
        events: decision.batch.writes[0].events.clone(),
    }
}

#[test]
fn forged_and_stale_decisions_are_never_applied() {
    let (_directory, store) = store();
    apply_agreed(
        &registry(),
        &store,
        "",
        &[open("o", "a"), deposit("d", "a", 10)],
    )
    .expect("apply");
    let honest = decided(
        &store,
        request(
            "w",
            "BankAccount@a",
            bank(BankAccountCommand::Withdraw {
                amount: 4,
                transfer: None,
            }),
        ),
    );
    // A Byzantine proposer claims an overdraft went through: a withdrawal of 50 leaving 0.
    let mut forged = honest.clone();
    if let Proposal::Decided {
        events, request, ..
    } = &mut forged
    {
        request.command_id = CommandId::derive(&[b"forged"]);
        let lie = chorus_aggregate::domain::encode_event(&BankAccountEvent::Withdrawn {
            amount: 50,
            balance: 0,
            transfer: None,
        })
        .expect("encode");
        events[0] = NewEvent {
            event_id: events[0].event_id,
            event_type: lie.event_type,
            event_version: lie.event_version,
            payload: lie.payload,
            supersedes: None,
        };
    }
    let results = apply_agreed(
        &registry(),
        &store,
        "",
        &[
            AgreedProposal {
                timestamp_ms: 9,
                proposal: forged,
            },
            AgreedProposal {
                timestamp_ms: 9,
                proposal: honest.clone(),
            },
            // Decided at version 2 too, but the honest withdrawal moved the stream to 3.
            AgreedProposal {
                timestamp_ms: 9,
                proposal: decided_at_version_two(&honest),
            },
        ],
    )
    .expect("apply");
    assert!(
        matches!(&results[0], Applied::Forged(_)),
        "{:?}",
        results[0]
    );
    assert!(
        matches!(&results[1], Applied::Appended(_)),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(
            results[2],
            Applied::Stale {
                decided_at: 2,
                actual: 3
            }
        ),
        "{:?}",
        results[2]
    );
    assert_eq!(balance(&store, "a"), 6);
}

/// Another command decided on the same version as `honest`.
fn decided_at_version_two(honest: &Proposal) -> Proposal {
    let Proposal::Decided {
        request,
        version,
        events,
    } = honest
    else {
        unreachable!("a decided proposal");
    };
    let mut request = request.clone();
    request.command_id = CommandId::derive(&[b"second"]);
    Proposal::Decided {
        request,
        version: *version,
        events: events.clone(),
    }
}

#[test]
fn proposals_round_trip_and_bad_bytes_are_errors() {
    let proposal = Proposal::Command(request("x", "Notebook@1", serde_json::json!({"a": [1, 2]})));
    let bytes = proposal.encode().expect("encode");
    assert_eq!(Proposal::decode(&bytes).expect("decode"), proposal);
    assert!(Proposal::decode(&[]).is_err());
    assert!(Proposal::decode(&[9, b'{']).is_err());
    assert!(Proposal::decode(&[1, b'{']).is_err());
    assert!(Proposal::decode(&[PROPOSAL_VERSION, 7]).is_err());
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(Proposal::decode(&trailing).is_err());
    let mut other_version = bytes;
    other_version[0] = PROPOSAL_VERSION + 1;
    assert!(Proposal::decode(&other_version).is_err());
}

/// Replay logs written by earlier releases hold JSON proposals (version 1): they still decode,
/// to the same proposal the binary encoding carries, in about a third of the bytes when the
/// events carry payloads (JSON wrote each payload byte as a decimal number).
#[test]
fn json_proposals_still_decode_and_the_binary_encoding_is_smaller() {
    let request = request("x", "Notebook@1", serde_json::json!({"a": [1, 2]}));
    let event = |index: u8| NewEvent {
        event_id: EventId::derive(&[&[index]]),
        event_type: TypeName::new("NoteAdded").expect("type name"),
        event_version: 1,
        payload: (0..=255).map(|byte: u8| byte.wrapping_mul(index)).collect(),
        supersedes: (index == 2).then_some(1),
    };
    let mut with_metadata = request.clone();
    with_metadata.metadata = Some(serde_json::json!({"user": "x", "n": 1.5}));
    with_metadata.not_before_ms = Some(9);
    let proposal = Proposal::Decided {
        request: with_metadata,
        version: 4,
        events: vec![event(1), event(2)],
    };
    let mut json = vec![PROPOSAL_VERSION_JSON];
    serde_json::to_writer(&mut json, &proposal).expect("json");
    assert_eq!(Proposal::decode(&json).expect("v1 decodes"), proposal);
    let binary = proposal.encode().expect("encode");
    assert_eq!(binary[0], PROPOSAL_VERSION);
    assert_eq!(Proposal::decode(&binary).expect("v2 decodes"), proposal);
    assert!(
        binary.len() * 2 < json.len(),
        "{} vs {}",
        binary.len(),
        json.len()
    );
}

#[derive(Clone, Debug)]
enum Op {
    Open(u8),
    Deposit(u8, u8),
    Withdraw(u8, u8),
    Repeat(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0u8..4).prop_map(Op::Open),
        3 => (0u8..4, 1u8..50).prop_map(|(a, n)| Op::Deposit(a, n)),
        3 => (0u8..4, 1u8..80).prop_map(|(a, n)| Op::Withdraw(a, n)),
        1 => (0usize..10).prop_map(Op::Repeat),
    ]
}

fn sequence(ops: &[Op]) -> Vec<AgreedProposal> {
    let mut sequence: Vec<AgreedProposal> = Vec::new();
    for (index, op) in ops.iter().enumerate() {
        let id = format!("c{index}");
        let next = match op {
            Op::Open(account) => open(&id, &format!("x{account}")),
            Op::Deposit(account, amount) => {
                deposit(&id, &format!("x{account}"), u64::from(*amount))
            }
            Op::Withdraw(account, amount) => {
                withdraw(&id, &format!("x{account}"), u64::from(*amount))
            }
            Op::Repeat(back) => match sequence.len().checked_sub(back + 1) {
                Some(earlier) => sequence[earlier].clone(),
                None => continue,
            },
        };
        sequence.push(next);
    }
    sequence
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Members receive the same agreed order in different batches (blocks arrive as they
    /// arrive); their stores and the fates of the commands must not differ.
    #[test]
    fn members_end_identical_whatever_batches_the_blocks_come_in(
        ops in proptest::collection::vec(op(), 1..40),
        cuts in proptest::collection::vec(1usize..6, 1..40),
    ) {
        let sequence = sequence(&ops);
        let (_one, all_at_once) = store();
        let whole = apply_agreed(&registry(), &all_at_once, "", &sequence).expect("apply");
        let (_two, piecemeal) = store();
        let mut pieces = Vec::new();
        let mut rest = sequence.as_slice();
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (head, tail) = rest.split_at((*cut).min(rest.len()));
            pieces.extend(apply_agreed(&registry(), &piecemeal, "", head).expect("apply"));
            rest = tail;
        }
        prop_assert_eq!(&whole, &pieces);
        prop_assert_eq!(all_at_once.digest().expect("digest"), piecemeal.digest().expect("digest"));
        // No command id was applied twice, no appended withdrawal overdrew its account, and
        // every balance is what the appended deposits and withdrawals add up to.
        let mut applied_ids = std::collections::BTreeSet::new();
        let mut balances = std::collections::BTreeMap::<String, u64>::new();
        for (proposal, result) in sequence.iter().zip(&whole) {
            if !matches!(result, Applied::Appended(_)) {
                continue;
            }
            let request = proposal.proposal.request();
            prop_assert!(applied_ids.insert(request.command_id), "applied twice");
            let account = request.stream.id().to_owned();
            let balance = balances.entry(account).or_default();
            match serde_json::from_value::<BankAccountCommand>(request.command.clone()).expect("command") {
                BankAccountCommand::OpenAccount { .. } => {}
                BankAccountCommand::Deposit { amount, .. } => *balance += amount,
                BankAccountCommand::Withdraw { amount, .. } => {
                    *balance = balance.checked_sub(amount).expect("an appended withdrawal never overdraws");
                }
            }
        }
        for (account, expected) in &balances {
            prop_assert_eq!(balance(&all_at_once, account), *expected);
        }
    }
}

#[test]
fn applying_the_same_blocks_again_gives_every_proposal_the_same_fate() {
    // What a restored member does: consensus hands out every agreed block again from the
    // first, and the store already holds their effects.
    let (_directory, store) = store();
    let setup = [open("o", "a"), deposit("d", "a", 10)];
    apply_agreed(&registry(), &store, "", &setup).expect("apply");
    // Decided at version 1, agreed at version 2: stale. Then another withdrawal lands.
    let stale = Proposal::Decided {
        request: request(
            "w8",
            "BankAccount@a",
            bank(BankAccountCommand::Withdraw {
                amount: 8,
                transfer: None,
            }),
        ),
        version: 1,
        events: Vec::new(),
    };
    let sequence = vec![
        setup[0].clone(),
        setup[1].clone(),
        AgreedProposal {
            timestamp_ms: 4,
            proposal: stale,
        },
        withdraw("w5", "a", 5),
    ];
    let first = apply_agreed(&registry(), &store, "", &sequence[2..]).expect("apply");
    assert!(
        matches!(
            first[0],
            Applied::Stale {
                decided_at: 1,
                actual: 2
            }
        ),
        "{:?}",
        first[0]
    );
    assert!(matches!(first[1], Applied::Appended(_)));
    // Replayed from the start on a balance of 5, the stale withdrawal of 8 would be refused
    // if it were decided: it must stay stale, and record nothing.
    let digest = store.digest().expect("digest");
    let again = apply_agreed(&registry(), &store, "", &sequence).expect("apply");
    assert!(matches!(again[2], Applied::Stale { .. }), "{:?}", again[2]);
    assert!(matches!(again[3], Applied::Duplicate(_)));
    assert_eq!(
        store
            .command_record(CommandId::derive(&[b"w8"]))
            .expect("read"),
        None,
        "a replay recorded a fate the first apply did not"
    );
    assert_eq!(store.digest().expect("digest"), digest);
}

proptest! {
    /// Whatever a proposal carries (payload bytes, text in the command and metadata, numbers
    /// at their limits), version 2 gives it back exactly, and encodes it to one set of bytes.
    #[test]
    fn any_proposal_round_trips_through_the_binary_encoding(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..4),
        text in ".{0,40}",
        version in any::<u64>(),
        event_version in any::<u16>(),
        supersedes in proptest::option::of(any::<u64>()),
        not_before_ms in proptest::option::of(any::<u64>()),
        number in any::<i64>(),
    ) {
        let mut request = request("p", "db1/Notebook@a-1", serde_json::json!({"text": text, "n": number}));
        request.metadata = (number % 2 == 0).then(|| serde_json::json!({"note": text}));
        request.not_before_ms = not_before_ms;
        request.domain_version = text.clone();
        let events = payloads
            .into_iter()
            .enumerate()
            .map(|(index, payload)| NewEvent {
                event_id: EventId::derive(&[&index.to_le_bytes()]),
                event_type: TypeName::new(format!("Type{index}")).expect("type name"),
                event_version,
                payload,
                supersedes,
            })
            .collect();
        for proposal in [
            Proposal::Command(request.clone()),
            Proposal::Decided { request, version, events },
        ] {
            let bytes = proposal.encode().expect("encode");
            let decoded = Proposal::decode(&bytes).expect("decode");
            prop_assert_eq!(decoded.encode().expect("encode again"), bytes);
            prop_assert_eq!(decoded, proposal);
        }
    }
}
