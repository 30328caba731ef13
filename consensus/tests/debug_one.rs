mod common;
use common::*;
#[test]
fn one() {
    let members: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let seed: u64 = std::env::var("SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut s = Scenario::new(members, seed);
    s.settle_steps_max = 2000;
    match std::env::var("KIND").as_deref() {
        Ok("fork") => {
            s.byzantine = Byzantine::Fork;
            s.byzantine_count = chorus_consensus::faulty_max(members);
        }
        Ok("silent") => {
            s.byzantine = Byzantine::Silent;
            s.byzantine_count = chorus_consensus::faulty_max(members);
        }
        Ok("single") => {
            s.mode = chorus_consensus::BlockMode::Single;
        }
        _ => {}
    }
    let t = std::time::Instant::now();
    let o = s.run();
    eprintln!("steps {} in {:?}", o.steps, t.elapsed());
    for &m in &o.honest {
        eprintln!(
            "{m}: blocks {} quiet {} {:?}",
            o.cluster.blocks[m].len(),
            o.cluster.nodes[m].is_quiet(),
            o.cluster.nodes[m].stats()
        );
    }
}
#[test]
fn dot() {
    let mut s = Scenario::new(4, 1);
    s.settle_steps_max = 2000;
    s.byzantine = Byzantine::Fork;
    s.byzantine_count = 1;
    let o = s.run();
    std::fs::write("/tmp/n1.dot", o.cluster.nodes[1].to_dot(Some(12))).unwrap();
}
#[test]
fn repro() {
    let mut s = Scenario::new(9, 3129146972772668388);
    s.byzantine = Byzantine::Fork;
    s.byzantine_count = 1;
    let o = s.run();
    eprintln!("{}", o.steps);
}
