//! Reads of data other sections hold, so that any node answers any read: a stream another
//! section is responsible for is read from one of its members (`peer_reads`), and `$all` or a
//! category is gathered from every section.
//!
//! The order of a gathered read: each section's events keep their section's order (its
//! members' store positions); sections interleave by agreed timestamp (`timestamp_ms`), ties
//! broken by section prefix, then position. A gathered page's `next` is a cursor with one
//! position per section, `PREFIX:POSITION,...` (for example `0:17,1:9`), that a client passes
//! back as `from`; a number as `from` starts every section there. A cursor made before a
//! split still works: a section reads from the entry of its nearest ancestor. The gathering
//! is not a snapshot: sections are read one after another, each at its own head, so a later
//! read may place a late event of one section before events of another already returned;
//! within a section nothing is skipped or repeated. In a network of one section the read is
//! the section's own, with numeric positions, as before.
//!
//! Every section must answer: when none of a section's members does, the read fails (503,
//! naming the section), never a partial answer.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chorus_consensus::PeerId;
use chorus_routing::Prefix;
use serde_json::{Value, json};

use crate::config::hex;
use crate::peer_reads::{PeerPage, PeerRead, PeerReads};

/// Where a gathered read starts in each section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cursor {
    /// Every section from this position.
    Everywhere(u64),
    /// One position per section (by prefix).
    Sections(Vec<(Prefix, u64)>),
}

impl Cursor {
    /// A `from` query parameter: a number, or `PREFIX:POSITION,...` from a gathered page.
    pub fn parse(text: Option<&str>) -> Result<Self, String> {
        let Some(text) = text else {
            return Ok(Self::Everywhere(1));
        };
        if let Ok(position) = text.parse::<u64>() {
            return Ok(Self::Everywhere(position.max(1)));
        }
        let bad = |why: String| {
            format!(
                "query parameter from is {text:?}: {why}; it is a position or a cursor \
                 PREFIX:POSITION,... from a page's next"
            )
        };
        let mut entries = Vec::new();
        for entry in text.split(',') {
            let (prefix, position) = entry
                .split_once(':')
                .ok_or_else(|| bad(format!("{entry:?} has no ':'")))?;
            let prefix: Prefix = prefix
                .parse()
                .map_err(|error| bad(format!("prefix {prefix:?}: {error}")))?;
            let position: u64 = position
                .parse()
                .map_err(|_| bad(format!("position {position:?} is not a number")))?;
            entries.push((prefix, position.max(1)));
        }
        if entries.len() > 256 {
            return Err(bad("more than 256 sections".into()));
        }
        Ok(Self::Sections(entries))
    }

    /// Where `section` starts: its own entry or its nearest ancestor's (a split); else where
    /// its descendants' earliest is (a merge); else the start.
    pub fn start_of(&self, section: &Prefix) -> u64 {
        let entries = match self {
            Self::Everywhere(position) => return *position,
            Self::Sections(entries) => entries,
        };
        let ancestor = entries
            .iter()
            .filter(|(prefix, _)| prefix.is_ancestor_of(section))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, position)| *position);
        let descendants = || {
            entries
                .iter()
                .filter(|(prefix, _)| section.is_ancestor_of(prefix))
                .map(|(_, position)| *position)
                .min()
        };
        ancestor.or_else(descendants).unwrap_or(1)
    }
}

/// One section's page of a gathered read.
#[derive(Clone, Debug)]
pub struct SectionPage {
    /// The section.
    pub prefix: Prefix,
    /// Where it was read from.
    pub from: u64,
    /// Its events (JSON, with `position` and `timestamp_ms`), in position order.
    pub events: Vec<Value>,
    /// Where its next page starts; `None` at its end.
    pub next: Option<u64>,
}

fn position(event: &Value) -> u64 {
    event["position"].as_u64().unwrap_or(0)
}

/// Merges the sections' pages into one of at most `count` events (the order in the module
/// doc) and the cursor of the page after it (`None` when every section is at its end).
pub fn merge(pages: &[SectionPage], count: usize) -> (Vec<Value>, Option<String>) {
    let mut taken = vec![0usize; pages.len()];
    let mut events = Vec::new();
    while events.len() < count {
        let head = pages
            .iter()
            .enumerate()
            .filter_map(|(index, page)| page.events.get(taken[index]).map(|event| (index, event)))
            .min_by_key(|(index, event)| {
                let timestamp = event["timestamp_ms"].as_u64().unwrap_or(0);
                (timestamp, pages[*index].prefix.to_string(), position(event))
            });
        let Some((index, event)) = head else {
            break;
        };
        events.push(event.clone());
        taken[index] += 1;
    }
    let mut at_end = true;
    let entries: Vec<String> = pages
        .iter()
        .zip(&taken)
        .map(|(page, &taken)| {
            let next = match page.events.get(taken) {
                Some(untaken) => Some(position(untaken)),
                None => page.next,
            };
            at_end &= next.is_none();
            let resume = next.unwrap_or_else(|| {
                page.events
                    .last()
                    .map_or(page.from, |last| position(last).saturating_add(1))
            });
            format!("{}:{resume}", page.prefix)
        })
        .collect();
    (events, (!at_end).then(|| entries.join(",")))
}

/// Reads `read` from the first of `members` that answers (starting at a random one, so the
/// load spreads); the reasons of those that did not.
pub async fn ask_section(
    reads: &PeerReads,
    members: &[PeerId],
    read: PeerRead,
) -> Result<(Vec<Value>, Option<u64>), Vec<String>> {
    let mut problems = Vec::new();
    let start = if members.is_empty() {
        0
    } else {
        rand::random::<u64>() as usize % members.len()
    };
    for index in 0..members.len() {
        let member = members[(start + index) % members.len()];
        match reads.ask(member, read.clone()).await {
            Ok(PeerPage::Events { events, next }) => return Ok((events, next)),
            Ok(PeerPage::Refused(problem)) | Err(problem) => {
                problems.push(format!("{}: {problem}", hex(&member.0)));
            }
        }
    }
    Err(problems)
}

/// A stream read another section answers: its page, or 421 naming the section and its
/// members when none of them answered.
pub async fn stream_elsewhere(
    reads: &PeerReads,
    prefix: &str,
    members: &[PeerId],
    read: PeerRead,
) -> Response {
    match ask_section(reads, members, read).await {
        Ok((events, next)) => Json(json!({ "events": events, "next": next })).into_response(),
        // 421 Misdirected Request: the reader can ask the section's members itself.
        Err(problems) => (
            StatusCode::MISDIRECTED_REQUEST,
            Json(json!({
                "error": format!(
                    "this node's section does not hold the stream and none of the members of \
                     section {prefix:?}, which does, answered: {}",
                    problems.join("; ")
                ),
                "section": prefix,
                "members": members.iter().map(|member| hex(&member.0)).collect::<Vec<_>>(),
            })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(position: u64, timestamp: u64) -> Value {
        json!({ "position": position, "timestamp_ms": timestamp })
    }

    fn page(prefix: &str, events: Vec<Value>, next: Option<u64>) -> SectionPage {
        SectionPage {
            prefix: prefix.parse().expect("a prefix"),
            from: 1,
            events,
            next,
        }
    }

    #[test]
    fn cursors_parse_and_a_split_section_resumes_from_its_parent() {
        assert_eq!(Cursor::parse(None), Ok(Cursor::Everywhere(1)));
        assert_eq!(Cursor::parse(Some("0")), Ok(Cursor::Everywhere(1)));
        let cursor = Cursor::parse(Some("0:17,1:9")).expect("a cursor");
        let prefix = |text: &str| text.parse::<Prefix>().expect("a prefix");
        assert_eq!(cursor.start_of(&prefix("0")), 17);
        assert_eq!(cursor.start_of(&prefix("1")), 9);
        assert_eq!(cursor.start_of(&prefix("10")), 9, "a half of section 1");
        assert_eq!(cursor.start_of(&prefix("")), 9, "merged: the earliest");
        for bad in ["0:x", "2:1", "0-1", "0:1,,1:2"] {
            let error = Cursor::parse(Some(bad)).expect_err(bad);
            assert!(error.contains("query parameter from"), "{error}");
        }
    }

    #[test]
    fn sections_interleave_by_timestamp_and_the_cursor_resumes_each_where_it_stopped() {
        let pages = [
            page("0", vec![event(1, 10), event(2, 30), event(3, 50)], None),
            page("1", vec![event(1, 20), event(2, 40)], Some(3)),
        ];
        let (events, next) = merge(&pages, 3);
        let order: Vec<(u64, u64)> = events
            .iter()
            .map(|event| {
                (
                    position(event),
                    event["timestamp_ms"].as_u64().expect("a timestamp"),
                )
            })
            .collect();
        assert_eq!(order, [(1, 10), (1, 20), (2, 30)]);
        assert_eq!(next.as_deref(), Some("0:3,1:2"));
        let (events, next) = merge(&pages, 100);
        assert_eq!(events.len(), 5);
        assert_eq!(next.as_deref(), Some("0:4,1:3"), "section 1 has more");
        let ended = [page("0", vec![event(4, 60)], None), page("1", vec![], None)];
        assert_eq!(merge(&ended, 100).1, None, "every section at its end");
    }
}
