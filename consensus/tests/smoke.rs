use chorus_consensus::harness::Cluster;
use chorus_consensus::{Config, Observation};
use rand::{Rng, SeedableRng};

#[test]
fn four_members_agree_on_a_few_payloads() {
    let config = Config::default();
    let mut cluster = Cluster::new(4, &config, 1, 0).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for i in 0..20u8 {
        cluster.vote((i % 4) as usize, Observation::payload(vec![i]));
    }
    let mut now = 0;
    for _ in 0..400 {
        now += 1;
        let a = rng.gen_range(0..4);
        let mut b = rng.gen_range(0..3);
        if b >= a {
            b += 1;
        }
        cluster.sync(a, b, now).unwrap();
    }
    for (i, blocks) in cluster.blocks.iter().enumerate() {
        eprintln!(
            "node {i}: {} blocks, stats {:?}",
            blocks.len(),
            cluster.nodes[i].stats()
        );
    }
    let first: Vec<_> = cluster.blocks[0]
        .iter()
        .map(|b| b.observation_hash)
        .collect();
    assert_eq!(first.len(), 20);
    for blocks in &cluster.blocks {
        let hashes: Vec<_> = blocks.iter().map(|b| b.observation_hash).collect();
        assert_eq!(hashes, first);
    }
}
