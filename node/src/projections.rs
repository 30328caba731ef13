//! Hosted projections: the application's read models, run inside the node on a thread of
//! their own, each folding the events of the node's store from its checkpoint (saved with
//! its state, so a restart resumes where it was and a crash replays a little). Served at
//! `GET /projections/{name}` (state and position); rebuilt from position 0 on an operator's
//! request. A projection folds what its node's store holds: its section's events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::Duration;

use chorus_aggregate::{EventStore, Projection, ProjectionRunner, StoreError};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;
use tracing::warn;

/// How often the projection thread looks for new events when nothing asks it anything.
pub const PROJECTION_POLL: Duration = Duration::from_millis(50);

/// A projection the node runs, whatever its state type.
pub trait HostedProjection: Send {
    /// Its name (the route's `{name}` and its checkpoint's key).
    fn name(&self) -> String;
    /// Folds the events after its position; returns how many.
    fn catch_up(&mut self, store: &EventStore) -> Result<u64, StoreError>;
    /// Forgets its state and folds every event again.
    fn rebuild(&mut self, store: &EventStore) -> Result<u64, StoreError>;
    /// Its state, as JSON.
    fn state(&self) -> Value;
    /// The position of the last event it folded (0 before any).
    fn position(&self) -> u64;
}

struct Hosted<P: Projection>(ProjectionRunner<P>);

impl<P> HostedProjection for Hosted<P>
where
    P: Projection + Send,
    P::State: Send,
{
    fn name(&self) -> String {
        self.0.projection().name().to_owned()
    }

    fn catch_up(&mut self, store: &EventStore) -> Result<u64, StoreError> {
        self.0.catch_up(store)
    }

    fn rebuild(&mut self, store: &EventStore) -> Result<u64, StoreError> {
        self.0.rebuild(store)
    }

    fn state(&self) -> Value {
        serde_json::to_value(self.0.state()).unwrap_or(Value::Null)
    }

    fn position(&self) -> u64 {
        self.0.next_position().saturating_sub(1)
    }
}

/// Starts projection `projection` over `store` from its checkpoint.
pub fn host<P>(store: &EventStore, projection: P) -> Result<Box<dyn HostedProjection>, StoreError>
where
    P: Projection + Send + 'static,
    P::State: Send,
{
    Ok(Box::new(Hosted(ProjectionRunner::start(
        store, projection,
    )?)))
}

/// A projection as `GET /projections/{name}` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProjectionView {
    /// Its name.
    pub name: String,
    /// The position of the last event it folded.
    pub position: u64,
    /// Its state.
    pub state: Value,
}

enum Request {
    State(String, oneshot::Sender<Option<ProjectionView>>),
    Rebuild(String, oneshot::Sender<Result<ProjectionView, String>>),
    Names(oneshot::Sender<Vec<(String, u64)>>),
}

/// The HTTP side: asks the projection thread.
#[derive(Clone, Debug)]
pub struct Projections(Option<Sender<Request>>);

impl Projections {
    /// No projections (for the router's tests).
    #[cfg(test)]
    pub fn none() -> Self {
        Self(None)
    }

    /// A projection's state and position, `None` if there is no such projection (or the
    /// thread stopped).
    pub async fn view(&self, name: &str) -> Option<ProjectionView> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::State(name.to_owned(), reply))?;
        answer.await.ok().flatten()
    }

    /// Rebuilds a projection from position 0, and returns it.
    pub async fn rebuild(&self, name: &str) -> Result<ProjectionView, String> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Rebuild(name.to_owned(), reply))
            .ok_or("the node runs no projections")?;
        answer
            .await
            .map_err(|_| "the projection thread stopped".to_owned())?
    }

    /// Every projection's name and position.
    pub async fn names(&self) -> Vec<(String, u64)> {
        let (reply, answer) = oneshot::channel();
        if self.send(Request::Names(reply)).is_none() {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }

    fn send(&self, request: Request) -> Option<()> {
        self.0.as_ref()?.send(request).ok()
    }
}

/// Starts the projection thread over `store`, with the projections `start` makes there.
/// It ends when every [`Projections`] handle is gone.
pub fn spawn(
    store: Arc<EventStore>,
    start: impl FnOnce(&EventStore) -> Result<Vec<Box<dyn HostedProjection>>, StoreError>
    + Send
    + 'static,
) -> Result<Projections, String> {
    let (sender, requests) = channel();
    let (started, startup) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("projections".into())
        .spawn(move || match start(&store) {
            Ok(projections) if projections.is_empty() => {
                let _ = started.send(Ok(false));
            }
            Ok(projections) => {
                let _ = started.send(Ok(true));
                run(&store, projections, &requests);
            }
            Err(error) => {
                let _ = started.send(Err(format!("projections: {error}")));
            }
        })
        .map_err(|error| format!("cannot start the projection thread: {error}"))?;
    let running = startup
        .recv()
        .map_err(|_| "the projection thread died while starting".to_owned())??;
    Ok(Projections(running.then_some(sender)))
}

fn run(
    store: &EventStore,
    mut projections: Vec<Box<dyn HostedProjection>>,
    requests: &Receiver<Request>,
) {
    let mut by_name: BTreeMap<String, usize> = BTreeMap::new();
    for (index, projection) in projections.iter().enumerate() {
        by_name.insert(projection.name(), index);
    }
    let mut seen_head = 0;
    loop {
        let head = store.committed_head();
        if head != seen_head {
            seen_head = head;
            for projection in &mut projections {
                if let Err(error) = projection.catch_up(store) {
                    warn!(projection = %projection.name(), %error, "a projection could not catch up");
                }
            }
        }
        match requests.recv_timeout(PROJECTION_POLL) {
            Ok(request) => answer(store, &mut projections, &by_name, request),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn answer(
    store: &EventStore,
    projections: &mut [Box<dyn HostedProjection>],
    by_name: &BTreeMap<String, usize>,
    request: Request,
) {
    let view = |projection: &dyn HostedProjection| ProjectionView {
        name: projection.name(),
        position: projection.position(),
        state: projection.state(),
    };
    match request {
        Request::State(name, reply) => {
            let found = by_name
                .get(&name)
                .map(|index| view(projections[*index].as_ref()));
            let _ = reply.send(found);
        }
        Request::Rebuild(name, reply) => {
            let result = match by_name.get(&name) {
                None => Err(format!("no projection named {name:?}")),
                Some(index) => {
                    let projection = &mut projections[*index];
                    projection
                        .rebuild(store)
                        .map(|_| view(projection.as_ref()))
                        .map_err(|error| error.to_string())
                }
            };
            let _ = reply.send(result);
        }
        Request::Names(reply) => {
            let names = projections
                .iter()
                .map(|projection| (projection.name(), projection.position()))
                .collect();
            let _ = reply.send(names);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use chorus_aggregate::{
        AppendBatch, CommandId, EventId, ExpectedVersion, Filter, NewEvent, RecordedEvent,
        StreamKey, TypeName,
    };

    use super::*;

    /// Counts events per stream.
    struct Counter;

    impl Projection for Counter {
        type State = BTreeMap<String, u64>;

        fn name(&self) -> &str {
            "counter"
        }

        fn version(&self) -> u32 {
            1
        }

        fn filter(&self) -> Filter {
            Filter::All
        }

        fn apply(&self, state: &mut Self::State, event: &RecordedEvent) {
            *state.entry(event.stream.to_string()).or_default() += 1;
        }
    }

    fn append(store: &EventStore, tag: &str) {
        let command = CommandId::derive(&[tag.as_bytes()]);
        let event = NewEvent {
            event_id: EventId::for_command(command, 0),
            event_type: TypeName::new("Noted").expect("a type"),
            event_version: 1,
            payload: b"{}".to_vec(),
            supersedes: None,
        };
        let stream = StreamKey::parse("Notebook@a").expect("a key");
        let batch = AppendBatch::single(command, stream, ExpectedVersion::Any, vec![event], 1);
        store.append(&batch).expect("appended");
    }

    async fn wait_for(projections: &Projections, count: u64) -> ProjectionView {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let view = projections.view("counter").await.expect("hosted");
            if view.state["Notebook@a"] == count {
                return view;
            }
            assert!(Instant::now() < deadline, "{view:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_hosted_projection_follows_the_store_resumes_from_its_checkpoint_and_rebuilds() {
        let directory = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(EventStore::open(directory.path().join("node.redb")).expect("store"));
        let start = |store: &EventStore| Ok(vec![host(store, Counter)?]);
        let projections = spawn(Arc::clone(&store), start).expect("started");
        append(&store, "one");
        append(&store, "two");
        let view = wait_for(&projections, 2).await;
        assert_eq!(view.position, 2);
        assert_eq!(projections.names().await, [("counter".to_owned(), 2)]);
        assert!(projections.view("nothing").await.is_none());
        assert!(projections.rebuild("nothing").await.is_err());

        // A restart resumes from the checkpoint: it starts at position 2 with its state.
        drop(projections);
        let again = spawn(Arc::clone(&store), start).expect("started again");
        append(&store, "three");
        let view = wait_for(&again, 3).await;
        assert_eq!(view.position, 3);
        // A rebuild folds everything again, to the same state.
        let rebuilt = again.rebuild("counter").await.expect("rebuilt");
        assert_eq!(rebuilt, view);
    }
}
