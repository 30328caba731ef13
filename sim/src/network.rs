//! The simulated network: per-link latency, jitter, reordering, loss, duplication and
//! partitions (symmetric or one-way). Every decision draws from the caller's seeded RNG.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// How the network behaves. Probabilities are per message.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkConfig {
    /// Each directed link gets a base latency drawn once from `latency_min_ms..=latency_max_ms`.
    pub latency_min_ms: u64,
    /// Upper end of the base latency range.
    pub latency_max_ms: u64,
    /// Each message adds a uniform delay in `0..=jitter_ms` to its link's base latency, so
    /// messages on one link can overtake each other.
    pub jitter_ms: u64,
    /// Chance that a message is held back by up to ten times its link latency (reordering
    /// well beyond jitter).
    pub reorder_probability: f64,
    /// Chance that a message is lost.
    pub drop_probability: f64,
    /// Chance that a message is delivered twice (the copy with its own delay).
    pub duplicate_probability: f64,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            latency_min_ms: 2,
            latency_max_ms: 20,
            jitter_ms: 5,
            reorder_probability: 0.0,
            drop_probability: 0.0,
            duplicate_probability: 0.0,
        }
    }
}

impl NetworkConfig {
    /// Checks ranges; a bad configuration is an error, not a panic.
    pub fn validate(&self) -> Result<(), String> {
        if self.latency_min_ms > self.latency_max_ms {
            return Err("latency_min_ms must not exceed latency_max_ms".into());
        }
        for (name, value) in [
            ("reorder_probability", self.reorder_probability),
            ("drop_probability", self.drop_probability),
            ("duplicate_probability", self.duplicate_probability),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(format!("{name} must be in 0..=1, got {value}"));
            }
        }
        Ok(())
    }
}

/// What the network does with one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Fate {
    /// Delivered after each delay (two delays: duplicated).
    Delivered(Vec<u64>),
    /// Lost at random.
    Dropped,
    /// Blocked by a partition.
    Partitioned,
}

/// The links between `node_count` nodes.
pub struct Network {
    config: NetworkConfig,
    node_count: usize,
    /// Base latency per directed link, `from * node_count + to`.
    latency_ms: Vec<u64>,
    /// Whether messages from `from` to `to` are blocked, same indexing.
    blocked: Vec<bool>,
}

impl Network {
    /// Draws each link's base latency.
    pub fn new(config: NetworkConfig, node_count: usize, rng: &mut ChaCha8Rng) -> Self {
        let latency_ms = (0..node_count * node_count)
            .map(|_| rng.gen_range(config.latency_min_ms..=config.latency_max_ms))
            .collect();
        Self {
            config,
            node_count,
            latency_ms,
            blocked: vec![false; node_count * node_count],
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// Changes loss, duplication and reordering (latencies stay as drawn).
    pub fn set_rates(&mut self, drop: f64, duplicate: f64, reorder: f64) {
        self.config.drop_probability = drop;
        self.config.duplicate_probability = duplicate;
        self.config.reorder_probability = reorder;
    }

    /// Blocks messages from every node of `from` to every node of `to`.
    pub fn block(&mut self, from: &[usize], to: &[usize]) {
        for &a in from {
            for &b in to {
                if a != b {
                    self.blocked[a * self.node_count + b] = true;
                }
            }
        }
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        self.blocked.fill(false);
    }

    /// True when some link is blocked.
    pub fn is_partitioned(&self) -> bool {
        self.blocked.iter().any(|blocked| *blocked)
    }

    /// True when messages from `from` to `to` get through the partitions.
    pub fn is_open(&self, from: usize, to: usize) -> bool {
        !self.blocked[from * self.node_count + to]
    }

    /// Decides the fate of one message from `from` to `to`.
    pub fn route(&self, from: usize, to: usize, rng: &mut ChaCha8Rng) -> Fate {
        if !self.is_open(from, to) {
            return Fate::Partitioned;
        }
        if self.config.drop_probability > 0.0 && rng.gen_bool(self.config.drop_probability) {
            return Fate::Dropped;
        }
        let copies = if self.config.duplicate_probability > 0.0
            && rng.gen_bool(self.config.duplicate_probability)
        {
            2
        } else {
            1
        };
        let base = self.latency_ms[from * self.node_count + to];
        let delays = (0..copies)
            .map(|_| {
                let mut delay = base + rng.gen_range(0..=self.config.jitter_ms);
                if self.config.reorder_probability > 0.0
                    && rng.gen_bool(self.config.reorder_probability)
                {
                    delay += rng.gen_range(0..=10 * base.max(1));
                }
                delay.max(1)
            })
            .collect();
        Fate::Delivered(delays)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn partitions_block_one_direction_or_both() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut network = Network::new(NetworkConfig::default(), 4, &mut rng);
        network.block(&[0, 1], &[2, 3]);
        assert_eq!(network.route(0, 2, &mut rng), Fate::Partitioned);
        assert!(matches!(network.route(2, 0, &mut rng), Fate::Delivered(_)));
        assert!(matches!(network.route(0, 1, &mut rng), Fate::Delivered(_)));
        network.heal();
        assert!(matches!(network.route(0, 2, &mut rng), Fate::Delivered(_)));
    }

    #[test]
    fn loss_and_duplication_follow_their_rates() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let config = NetworkConfig {
            drop_probability: 0.3,
            duplicate_probability: 0.1,
            ..NetworkConfig::default()
        };
        let network = Network::new(config, 2, &mut rng);
        let (mut dropped, mut duplicated) = (0, 0);
        for _ in 0..10_000 {
            match network.route(0, 1, &mut rng) {
                Fate::Dropped => dropped += 1,
                Fate::Delivered(delays) if delays.len() == 2 => duplicated += 1,
                _ => {}
            }
        }
        assert!((2_700..3_300).contains(&dropped), "{dropped}");
        assert!((500..900).contains(&duplicated), "{duplicated}");
    }

    #[test]
    fn bad_rates_are_refused() {
        let config = NetworkConfig {
            drop_probability: 1.5,
            ..NetworkConfig::default()
        };
        assert!(config.validate().is_err());
    }
}
