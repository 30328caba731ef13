//! What a simulated node runs: its application, as a rolling upgrade replaces it.

use chorus_aggregate::AggregateRegistry;

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
    /// The demo domain's next release: version 2, standing in for 1 (the same aggregates:
    /// the new code decides as the old did).
    pub fn upgraded() -> Self {
        Self {
            domain_version: "2".to_owned(),
            upgrades_from: vec!["1".to_owned()],
            registry: chorus_demo::registry,
        }
    }
}
