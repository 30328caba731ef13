//! What a simulated node runs: its application, as a rolling upgrade replaces it.

use chorus_aggregate::{Aggregate, AggregateRegistry, CommandContext, DomainEvent};
use serde::{Deserialize, Serialize};

/// A node's program: its domain version, the versions it stands in for
/// (`EngineConfig::upgrades_from`), and its aggregates. A node runs the binary installed when
/// it (re)starts ([`super::ClusterSim::install`]).
#[derive(Clone, Debug)]
pub struct Binary {
    /// The application's domain version.
    pub domain_version: String,
    /// Domain versions this code decides exactly as their own code did.
    pub upgrades_from: Vec<String>,
    /// The application's aggregates.
    pub registry: fn() -> AggregateRegistry,
}

impl Default for Binary {
    /// The demo domain at version 1.
    fn default() -> Self {
        Self {
            domain_version: "1".to_owned(),
            upgrades_from: Vec::new(),
            registry: chorus_demo::registry,
        }
    }
}

impl Binary {
    /// The demo domain with `Stamp` at version 1: what the sweep's upgrade runs start on.
    pub fn stamped() -> Self {
        Self {
            domain_version: "1".to_owned(),
            upgrades_from: Vec::new(),
            registry: || chorus_demo::registry().register::<Stamp<1>>(),
        }
    }

    /// Its next release: version 2, standing in for 1. Its `Stamp` decides as the old one
    /// under version 1 and differently under 2, so a member that applied a block of the new
    /// domain with the old code would hold another store.
    pub fn upgraded() -> Self {
        Self {
            domain_version: "2".to_owned(),
            upgrades_from: vec!["1".to_owned()],
            registry: || chorus_demo::registry().register::<Stamp<2>>(),
        }
    }
}

/// A test aggregate whose decision depends on the code and on the agreed domain version:
/// release `CODE` stamps the code that decided and the version it decided under (release 2
/// standing in for version 1 stamps as release 1 did).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stamp<const CODE: u8>;

/// `Stamp`'s one command.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum StampCommand {
    /// Stamp the stream.
    Stamp,
}

/// `Stamp`'s one event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StampEvent {
    /// Stamped by this code under this agreed version.
    Stamped {
        /// The release whose rules decided.
        code: u8,
        /// The agreed domain version.
        under: String,
    },
}

impl DomainEvent for StampEvent {}

impl<const CODE: u8> Aggregate for Stamp<CODE> {
    const CATEGORY: &'static str = "Stamp";
    const SCHEMA_VERSION: u32 = 1;
    type Command = StampCommand;
    type Event = StampEvent;
    type Error = std::convert::Infallible;

    fn handle(
        &self,
        _command: &StampCommand,
        context: &CommandContext,
    ) -> Result<Vec<StampEvent>, Self::Error> {
        // A later release decides as release 1 while the section runs version 1.
        let code = if context.domain_version == "1" {
            1
        } else {
            CODE
        };
        Ok(vec![StampEvent::Stamped {
            code,
            under: context.domain_version.clone(),
        }])
    }

    fn apply(self, _event: &StampEvent) -> Self {
        self
    }
}
