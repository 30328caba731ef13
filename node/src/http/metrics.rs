//! `/metrics` in Prometheus text format: the node's section, store, queues, refusals,
//! answers and consensus figures.

use axum::response::{IntoResponse, Response};

use super::extract::QueryParams;
use super::{Engine, NoQuery, ask};
use crate::queues::Drops;
use crate::runtime::{Input, Status};
use axum::extract::State;

/// The exposition being written.
#[derive(Default)]
struct Text(String);

impl Text {
    /// One metric: its help and type lines, then a sample per label set.
    fn add(&mut self, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
        self.0.push_str(&format!(
            "# HELP chorus_{name} {help}\n# TYPE chorus_{name} {kind}\n"
        ));
        for (labels, value) in samples {
            self.0.push_str(&format!("chorus_{name}{labels} {value}\n"));
        }
    }
}

/// Prometheus text format: the node's section, store, consensus and command figures.
pub async fn metrics(
    State(engine): Engine,
    QueryParams(NoQuery {}): QueryParams<NoQuery>,
) -> Response {
    let status = match ask(&engine, Input::Status).await {
        Ok(status) => status,
        Err(response) => return response,
    };
    let mut text = Text::default();
    section_metrics(&mut text, &status);
    queue_metrics(&mut text, &engine.drops);
    refusal_metrics(&mut text, &status);
    answer_metrics(&mut text, &status);
    consensus_metrics(&mut text, &status);
    let text = text.0;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn section_metrics(text: &mut Text, status: &Status) {
    text.add(
        "generation",
        "gauge",
        "The node's section generation.",
        &[("", status.generation)],
    );
    text.add(
        "section_members",
        "gauge",
        "Members of the node's section.",
        &[("", status.members.len() as u64)],
    );
    text.add(
        "sections",
        "gauge",
        "Sections in the node's map.",
        &[("", status.sections as u64)],
    );
    text.add(
        "active_member",
        "gauge",
        "1 if the node is an active member of its section.",
        &[("", u64::from(status.active))],
    );
    text.add(
        "store_head_position",
        "gauge",
        "Global position of the last event in the node's store.",
        &[("", status.head_position)],
    );
}

fn queue_metrics(text: &mut Text, drops: &Drops) {
    text.add(
        "dropped_total",
        "counter",
        "Requests and messages the node's bounded queues refused or dropped, by queue.",
        &[
            (
                "{queue=\"client_requests\"}",
                Drops::read(&drops.client_requests),
            ),
            (
                "{queue=\"peer_messages\"}",
                Drops::read(&drops.peer_messages),
            ),
            (
                "{queue=\"outbound_messages\"}",
                Drops::read(&drops.outbound_messages),
            ),
            (
                "{queue=\"unacknowledged_messages\"}",
                Drops::read(&drops.unacknowledged_messages),
            ),
        ],
    );
}

fn refusal_metrics(text: &mut Text, status: &Status) {
    let refusals = &status.engine.refusals;
    text.add(
        "peer_refusals_total",
        "counter",
        "Peer messages the engine refused or dropped, by reason: strangers' messages other \
         than a join request, strangers' join requests over the throttle, joins this member \
         did not vote for, members' sync requests over their byte budget, sync requests \
         naming another domain.",
        &[
            ("{reason=\"stranger_message\"}", refusals.stranger_messages),
            (
                "{reason=\"join_request_throttled\"}",
                refusals.join_requests_throttled,
            ),
            ("{reason=\"join_refused\"}", refusals.joins_refused),
            ("{reason=\"sync_over_budget\"}", refusals.sync_over_budget),
            ("{reason=\"other_domain\"}", refusals.other_domain),
        ],
    );
}

fn answer_metrics(text: &mut Text, status: &Status) {
    let answered = &status.answered;
    text.add(
        "commands_answered_total",
        "counter",
        "Commands answered by this node since it started, by outcome.",
        &[
            ("{outcome=\"committed\"}", answered.committed),
            (
                "{outcome=\"already_committed\"}",
                answered.already_committed,
            ),
            ("{outcome=\"refused\"}", answered.refused),
            ("{outcome=\"invalid\"}", answered.invalid),
            ("{outcome=\"failed\"}", answered.failed),
        ],
    );
}

fn consensus_metrics(text: &mut Text, status: &Status) {
    if let Some(stats) = &status.consensus {
        let figures: [(&str, &str, &str, u64); 8] = [
            (
                "consensus_events_held",
                "gauge",
                "Events in the gossip graph of the current generation.",
                stats.events_held as u64,
            ),
            (
                "consensus_events_retired",
                "gauge",
                "Pruned events kept one more window for late events built on them.",
                stats.events_retired as u64,
            ),
            (
                "consensus_events_on_pruned_parents_total",
                "counter",
                "Events inserted whose other-parent this node had pruned.",
                stats.events_on_pruned_parents,
            ),
            (
                "consensus_events_created_total",
                "counter",
                "Events this node created in the current generation.",
                stats.events_created,
            ),
            (
                "consensus_events_rejected_total",
                "counter",
                "Events rejected in the current generation.",
                stats.events_rejected,
            ),
            (
                "consensus_blocks_total",
                "counter",
                "Blocks agreed in the current generation.",
                stats.blocks,
            ),
            (
                "consensus_max_round",
                "gauge",
                "Highest round seen in the current generation.",
                stats.max_round,
            ),
            (
                "consensus_undecided_round",
                "gauge",
                "First round whose fame is undecided.",
                stats.undecided_round,
            ),
        ];
        for (name, kind, help, value) in figures {
            text.add(name, kind, help, &[("", value)]);
        }
    }
}
