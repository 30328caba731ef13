//! How a node that is not a founder learns the network: on its first start with
//! `chorus node --join URL[,URL...]`, it reads running nodes' `/status` maps (sections,
//! members, their libp2p addresses) and keeps the members it can reach as its peers, in
//! `peers.json` in its data directory, so later starts know them too.
//!
//! Trust: the map decides which section the joiner asks and whose welcomes it believes
//! (more than two thirds of that section's members), so a node that lies about the map
//! could have the joiner welcomed by members of its own invention. Given several nodes,
//! the joiner takes the map only if every one of them answers with the same members, so one
//! honest node among them is enough to expose a lie; given one, it trusts that node (the
//! operator's choice, say one of its own).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use chorus_consensus::PeerId;
use libp2p::Multiaddr;
use tracing::warn;

use crate::client::Client;
use crate::config::{Checked, PeerConfig, parse_public_key, write_private};
use crate::runtime::SectionView;

/// Where the peers learned at join time are kept.
const PEERS_FILE: &str = "peers.json";
/// How many times the nodes given to learn the network from are asked before their
/// disagreement is final, and the pause between.
const AGREEMENT_ATTEMPTS: u32 = 5;
const AGREEMENT_PAUSE: Duration = Duration::from_secs(1);

/// Fills `checked.peers` for a node that joins: from `join` (a running node's HTTP address)
/// on the first start, else from what the first start kept. A node with peers in its
/// configuration, or that is no joiner, is left as it is.
pub async fn learn_peers(checked: &mut Checked, join: Option<&str>) -> Result<(), String> {
    let data_dir = checked.config.data_dir.clone();
    let join_from = checked.config.join_from.clone();
    let join = join.or(join_from.as_deref());
    let kept = data_dir.join(PEERS_FILE);
    let first_start = !data_dir.join("node.redb").exists();
    match join {
        Some(urls) if first_start => {
            let trust = join_trust(checked)?;
            let peers = agreed_peers(urls, trust.as_deref()).await?;
            save(&kept, &peers)?;
            checked.peers = peers;
            checked.config.join = true;
        }
        _ if checked.peers.is_empty() && kept.exists() => checked.peers = load(&kept)?,
        _ if checked.config.join && checked.peers.is_empty() => {
            return Err(
                "a node that joins needs a running node to learn the network from: \
                 `chorus node --config FILE --join http://HOST:PORT`"
                    .to_owned(),
            );
        }
        _ => {}
    }
    Ok(())
}

/// The members every node of `urls` (one, or several separated by commas) knows, with
/// the addresses known; an error if one does not answer, if they disagree on the members,
/// or if no member's address is known.
async fn agreed_peers(
    urls: &str,
    trust: Option<&[u8]>,
) -> Result<Vec<(PeerId, Multiaddr)>, String> {
    let mut attempt = 1;
    let agreed = loop {
        let mut answers = Vec::new();
        for url in crate::config::join_urls(urls)? {
            answers.push((url, members_at(url, trust).await?));
        }
        match agree(&answers) {
            Ok(agreed) => break agreed,
            // A node may be a block behind the others on a membership change: ask again.
            Err(problem) if attempt < AGREEMENT_ATTEMPTS => {
                warn!("{problem}; asking again in {AGREEMENT_PAUSE:?}");
                tokio::time::sleep(AGREEMENT_PAUSE).await;
                attempt += 1;
            }
            Err(problem) => return Err(problem),
        }
    };
    let peers: Vec<(PeerId, Multiaddr)> = agreed
        .into_iter()
        .filter_map(|(peer, address)| Some((peer, address?)))
        .collect();
    if peers.is_empty() {
        return Err(format!("{urls}: no member's address is known"));
    }
    Ok(peers)
}

/// A member and its libp2p address, if the answering node knows it.
type Listed = (PeerId, Option<Multiaddr>);

/// The members of the first answer, if every answer names the same members, each with an
/// address if any answer knows one (a node may not know them all yet); else which answers
/// disagree, and on whom.
fn agree(answers: &[(&str, Vec<Listed>)]) -> Result<Vec<Listed>, String> {
    let Some((first_url, first)) = answers.first() else {
        return Err("no node to learn the network from".to_owned());
    };
    let members =
        |listed: &[Listed]| -> BTreeSet<PeerId> { listed.iter().map(|(peer, _)| *peer).collect() };
    let expected = members(first);
    let mut agreed = first.clone();
    for (url, theirs) in &answers[1..] {
        let named = members(theirs);
        if named != expected {
            let only = |a: &BTreeSet<PeerId>, b: &BTreeSet<PeerId>| -> Vec<String> {
                a.difference(b).map(|peer| peer.to_string()).collect()
            };
            return Err(format!(
                "the nodes given to learn the network from disagree on its members: {url} \
                 names {:?} that {first_url} does not, and {first_url} names {:?} that {url} \
                 does not; one of them may be lying: join through nodes you trust",
                only(&named, &expected),
                only(&expected, &named),
            ));
        }
        for (peer, address) in theirs {
            if let Some((_, known @ None)) = agreed.iter_mut().find(|(member, _)| member == peer) {
                known.clone_from(address);
            }
        }
    }
    Ok(agreed)
}

/// The certificates a joining node trusts over HTTPS: `join_trust`, else its own
/// `tls_certificate`, else none (the system's roots are not used: nodes of a cluster
/// present its own certificate).
fn join_trust(checked: &Checked) -> Result<Option<Vec<u8>>, String> {
    let config = &checked.config;
    let Some(path) = config
        .join_trust
        .as_ref()
        .or(config.tls_certificate.as_ref())
    else {
        return Ok(None);
    };
    std::fs::read(path)
        .map(Some)
        .map_err(|error| format!("join_trust {}: {error}", path.display()))
}

/// The members `url`'s node knows, with their addresses where it knows them.
async fn members_at(url: &str, trust: Option<&[u8]>) -> Result<Vec<Listed>, String> {
    let mut client = Client::new(url)?;
    if let Some(pem) = trust {
        client = client.trusting(pem)?;
    }
    let answer = client.get("/status").await?;
    if answer.status != 200 {
        return Err(format!(
            "{url}/status answered {}: {}",
            answer.status, answer.body
        ));
    }
    let map: Vec<SectionView> = serde_json::from_value(answer.body["map"].clone())
        .map_err(|error| format!("{url}/status has no map: {error}"))?;
    map.iter()
        .flat_map(|section| &section.members)
        .map(|member| {
            let key = parse_public_key(&member.key).map_err(|error| format!("{url}: {error}"))?;
            let address = member.address.as_deref().and_then(|text| text.parse().ok());
            Ok((key, address))
        })
        .collect()
}

fn save(path: &Path, peers: &[(PeerId, Multiaddr)]) -> Result<(), String> {
    let listed: Vec<PeerConfig> = peers
        .iter()
        .map(|(peer, address)| PeerConfig {
            public_key: crate::config::hex(&peer.0),
            address: address.to_string(),
        })
        .collect();
    let bytes = serde_json::to_vec_pretty(&listed).map_err(|error| error.to_string())?;
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))
        .map_err(|error| format!("{}: {error}", path.display()))?;
    write_private(path, &bytes).map_err(|error| format!("{}: {error}", path.display()))
}

fn load(path: &Path) -> Result<Vec<(PeerId, Multiaddr)>, String> {
    let bytes = std::fs::read(path).map_err(|error| format!("{}: {error}", path.display()))?;
    let listed: Vec<PeerConfig> =
        serde_json::from_slice(&bytes).map_err(|error| format!("{}: {error}", path.display()))?;
    listed
        .iter()
        .map(|peer| {
            let key = parse_public_key(&peer.public_key)
                .map_err(|error| format!("{}: {error}", path.display()))?;
            let address = peer
                .address
                .parse()
                .map_err(|error| format!("{}: {}: {error}", path.display(), peer.address))?;
            Ok((key, address))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(byte: u8) -> PeerId {
        let key = ed25519_dalek::SigningKey::from_bytes(&[byte; 32]);
        PeerId(key.verifying_key().to_bytes())
    }

    fn address(port: u16) -> Option<Multiaddr> {
        Some(
            format!("/ip4/127.0.0.1/tcp/{port}")
                .parse()
                .expect("address"),
        )
    }

    #[test]
    fn nodes_given_to_join_through_must_agree_on_the_members() {
        let honest = vec![(member(1), address(1)), (member(2), None)];
        // Another honest node knows member 2's address: it fills the gap.
        let other = vec![(member(2), address(2)), (member(1), address(1))];
        let agreed = agree(&[("http://a", honest.clone()), ("http://b", other)]).expect("agree");
        assert_eq!(
            agreed,
            vec![(member(1), address(1)), (member(2), address(2))]
        );
        // A node that makes up a member, or hides one, is exposed by the honest one.
        let liar = vec![(member(1), address(1)), (member(9), address(9))];
        let problem =
            agree(&[("http://a", honest.clone()), ("http://liar", liar)]).expect_err("disagree");
        assert!(problem.contains("http://liar") && problem.contains(&member(9).to_string()));
        assert!(problem.contains(&member(2).to_string()), "{problem}");
        // One node given: it is trusted.
        assert_eq!(agree(&[("http://a", honest.clone())]).expect("one"), honest);
        assert!(agree(&[]).is_err());
    }
}
