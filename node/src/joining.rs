//! How a node that is not a founder learns the network: on its first start with
//! `chorus node --join URL`, it reads a running node's `/status` map (sections, members,
//! their libp2p addresses) and keeps the members it can reach as its peers, in
//! `peers.json` in its data directory, so later starts know them too.

use std::path::Path;

use chorus_consensus::PeerId;
use libp2p::Multiaddr;

use crate::client::Client;
use crate::config::{Checked, PeerConfig, parse_public_key, write_private};
use crate::runtime::SectionView;

/// Where the peers learned at join time are kept.
const PEERS_FILE: &str = "peers.json";

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
        Some(url) if first_start => {
            let peers = peers_from(url).await?;
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

/// The members `url`'s node knows, with their addresses.
async fn peers_from(url: &str) -> Result<Vec<(PeerId, Multiaddr)>, String> {
    let answer = Client::new(url)?.get("/status").await?;
    if answer.status != 200 {
        return Err(format!(
            "{url}/status answered {}: {}",
            answer.status, answer.body
        ));
    }
    let map: Vec<SectionView> = serde_json::from_value(answer.body["map"].clone())
        .map_err(|error| format!("{url}/status has no map: {error}"))?;
    let mut peers = Vec::new();
    for member in map.iter().flat_map(|section| &section.members) {
        let key = parse_public_key(&member.key).map_err(|error| format!("{url}: {error}"))?;
        if let Some(address) = member.address.as_deref().and_then(|text| text.parse().ok()) {
            peers.push((key, address));
        }
    }
    if peers.is_empty() {
        return Err(format!("{url} knows no member's address"));
    }
    Ok(peers)
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
