//! What a node runs: an application's aggregates and process managers, gathered by a builder.
//!
//! ```no_run
//! # use chorus_node::Application;
//! # fn application() -> Application { Application::new("shop") }
//! fn main() -> std::process::ExitCode {
//!     // `shop up --nodes 4` runs a local cluster of this program; `shop node --config FILE`
//!     // one node of a real one; `shop client ...` talks to it.
//!     application().main()
//! }
//! ```
//!
//! The framework names no domain: the `chorus` binary is the demo domain (`chorus-demo`)
//! built with this same API.

use std::process::ExitCode;
use std::sync::Arc;

use chorus_aggregate::{
    Aggregate, AggregateRegistry, Emitter, EventStore, ProcessManager, Projection, StoreError,
    StreamProjection,
};

use crate::projections::{HostedProjection, host};

/// Builds the process managers of one kind, on the engine thread (a manager need not be
/// `Send`).
type ManagerFactory = Arc<dyn Fn() -> Box<dyn ProcessManager> + Send + Sync>;

/// Starts one hosted projection over the node's store, from its checkpoint.
type ProjectionFactory =
    Arc<dyn Fn(&EventStore) -> Result<Box<dyn HostedProjection>, StoreError> + Send + Sync>;

/// An event-sourced application to run on Chorus: its name, its domain version, its
/// aggregates and its process managers. Every member of a section runs the same code on the
/// same agreed commands.
#[derive(Clone)]
pub struct Application {
    name: String,
    version: String,
    upgrades_from: Vec<String>,
    registrations: Vec<fn(AggregateRegistry) -> AggregateRegistry>,
    managers: Vec<ManagerFactory>,
    projections: Vec<ProjectionFactory>,
}

impl Application {
    /// An application with no aggregates yet. `name` names the program in its help and logs;
    /// its domain version is `"1"` until [`Application::version`] sets another.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            version: "1".to_owned(),
            upgrades_from: Vec::new(),
            registrations: Vec::new(),
            managers: Vec::new(),
            projections: Vec::new(),
        }
    }

    /// Sets the domain version: a string the application changes when its aggregates'
    /// decisions change meaning, even where their types stay the same.
    #[must_use]
    pub fn version(mut self, version: &str) -> Self {
        version.clone_into(&mut self.version);
        self
    }

    /// Declares that this code stands in for domain version `version` during a rolling
    /// upgrade: it decides every command exactly as that version's code did while the
    /// section runs it (branch on `CommandContext::domain_version` for what is new). A node
    /// of this program then starts and joins a section that runs `version`, votes to
    /// upgrade it, and the section switches when more than two thirds of its members voted,
    /// at one point of its order; members still on the old program halt there.
    #[must_use]
    pub fn upgrades_from(mut self, version: &str) -> Self {
        self.upgrades_from.push(version.to_owned());
        self
    }

    /// Runs aggregate `A` for the streams of its category.
    #[must_use]
    pub fn aggregate<A: Aggregate + 'static>(mut self) -> Self {
        self.registrations.push(|registry| registry.register::<A>());
        self
    }

    /// Runs a process manager, built by `make` when the node starts; it resumes from its
    /// checkpoint (kept under its name).
    #[must_use]
    pub fn process_manager<M, F>(mut self, make: F) -> Self
    where
        M: ProcessManager + 'static,
        F: Fn() -> M + Send + Sync + 'static,
    {
        self.managers.push(Arc::new(move || Box::new(make())));
        self
    }

    /// Runs a projection whose output is streams of its own category (`P::CATEGORY`): what
    /// it emits for each event is agreed by the section like a process manager's commands,
    /// so every member holds the same output streams, which clients read and subscribe to
    /// like any stream (and cannot write). Built by `make` when the node starts; it resumes
    /// from its checkpoint.
    #[must_use]
    pub fn stream_projection<P, F>(mut self, make: F) -> Self
    where
        P: StreamProjection + 'static,
        F: Fn() -> P + Send + Sync + 'static,
    {
        self.registrations
            .push(|registry| registry.emitted_category(P::CATEGORY));
        self.managers
            .push(Arc::new(move || Box::new(Emitter(make()))));
        self
    }

    /// Hosts a projection, built by `make` when the node starts: it folds the node's events
    /// from its checkpoint on a thread of its own and is served at `GET
    /// /projections/{name}` (its state and position); `POST
    /// /admin/projections/{name}/rebuild` folds everything again from position 0.
    #[must_use]
    pub fn projection<P, F>(mut self, make: F) -> Self
    where
        P: Projection + Send + 'static,
        P::State: Send,
        F: Fn() -> P + Send + Sync + 'static,
    {
        self.projections
            .push(Arc::new(move |store: &EventStore| host(store, make())));
        self
    }

    /// Its hosted projections, started over `store`.
    pub(crate) fn start_projections(
        &self,
        store: &EventStore,
    ) -> Result<Vec<Box<dyn HostedProjection>>, StoreError> {
        self.projections.iter().map(|start| start(store)).collect()
    }

    /// The application's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its domain version.
    pub fn domain_version(&self) -> &str {
        &self.version
    }

    /// The domain versions it stands in for ([`Application::upgrades_from`]).
    pub fn upgrades_from_versions(&self) -> &[String] {
        &self.upgrades_from
    }

    /// Its aggregates, registered for the engine.
    pub fn registry(&self) -> AggregateRegistry {
        self.registrations
            .iter()
            .fold(AggregateRegistry::new(), |registry, register| {
                register(registry)
            })
    }

    /// Its process managers, new.
    pub fn process_managers(&self) -> Vec<Box<dyn ProcessManager>> {
        self.managers.iter().map(|make| make()).collect()
    }

    /// Runs the command line of this application (`node`, `init`, `up`, `client`, `admin`;
    /// `--help` lists them) from the process's arguments, and returns its exit code.
    pub fn main(self) -> ExitCode {
        crate::cli::main(&self)
    }

    /// Runs one node of this application from a configuration file until Ctrl-C or SIGTERM;
    /// with `join`, on its first start it joins the running network there (see `node
    /// --join`).
    pub fn run_node(&self, config: &std::path::Path, join: Option<&str>) -> Result<(), String> {
        crate::serve::run_node(self, config, join)
    }
}

impl std::fmt::Debug for Application {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Application")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("aggregates", &self.registrations.len())
            .field("process_managers", &self.managers.len())
            .field("projections", &self.projections.len())
            .finish()
    }
}
