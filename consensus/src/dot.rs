//! Graphviz export of the gossip graph, with rounds, witnesses and fame marked.
//!
//! Legend: one column per member (left to right in member order), time flows upward.
//! Boxes are ordinary events, ellipses witnesses: green = famous, red = not famous, yellow =
//! fame undecided. Solid edges point to self-parents, dashed edges to other-parents. Each
//! label reads `creator.index`, `r<round>` and, once ordered, `rr<round received>`.

use std::fmt::Write;

use crate::graph::{EventNode, Graph};
use crate::ids::PeerId;

/// Renders the events of the last `rounds` rounds (all held events if `None`).
pub(crate) fn render(graph: &Graph, members: &[PeerId], rounds: Option<u64>) -> String {
    let lowest = match rounds {
        Some(rounds) => graph.max_round().saturating_sub(rounds.saturating_sub(1)),
        None => 0,
    };
    let mut out = String::new();
    let _ = writeln!(out, "digraph chorus {{");
    let _ = writeln!(out, "  rankdir=BT;");
    let _ = writeln!(
        out,
        "  node [fontname=\"monospace\", fontsize=10, style=filled, fillcolor=white];"
    );
    for (creator, member) in members.iter().enumerate() {
        let _ = writeln!(out, "  // member {creator} = {}", member.to_hex());
    }
    let shown: Vec<&EventNode> = graph
        .slots()
        .map(|slot| graph.get(slot))
        .filter(|node| node.round >= lowest)
        .collect();
    for node in &shown {
        let (shape, color) = match (node.is_witness, node.famous) {
            (false, _) => ("box", "white"),
            (true, Some(true)) => ("ellipse", "palegreen"),
            (true, Some(false)) => ("ellipse", "lightcoral"),
            (true, None) => ("ellipse", "khaki"),
        };
        let received = node
            .round_received
            .map(|round| format!("\\nrr{round}"))
            .unwrap_or_default();
        let votes = if node.event.votes.is_empty() {
            String::new()
        } else {
            format!("\\n{}v", node.event.votes.len())
        };
        let _ = writeln!(
            out,
            "  \"{}\" [label=\"{}.{}\\nr{}{}{}\", shape={}, fillcolor={}, group=m{}];",
            node.hash,
            node.creator,
            node.index,
            node.round,
            received,
            votes,
            shape,
            color,
            node.creator
        );
    }
    for node in &shown {
        for (parent, style) in [(node.self_parent, "solid"), (node.other_parent, "dashed")] {
            if let Some(parent) = parent.and_then(|slot| graph.node(slot)) {
                if parent.round >= lowest {
                    let _ = writeln!(
                        out,
                        "  \"{}\" -> \"{}\" [style={}];",
                        node.hash, parent.hash, style
                    );
                }
            }
        }
    }
    let _ = writeln!(out, "}}");
    out
}
