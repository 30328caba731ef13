//! The node's admission policy: whom this member votes to admit, as its operator set it.
//!
//! The configuration gives the start: `admission = "allow-list"` (the default) or `"open"`
//! (local experiments only: anyone who reaches the gossip port is admitted), and `admit`, the
//! keys approved beforehand; the founding members (`peers`) are approved too. At run time the
//! operator admits and removes keys through the admin API (`chorus admin admit|remove`);
//! those changes are kept in `admission.json` in the data directory (written whole, then
//! renamed, and synced), so a restart keeps them. The policy in force is: the configuration's
//! keys and the admitted ones, less the removed ones.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chorus_consensus::PeerId;
use chorus_engine::Admission;
use serde::{Deserialize, Serialize};

use crate::config::Checked;

/// The operator's changes since the configuration, as kept on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Changes {
    /// Keys admitted at run time.
    #[serde(with = "hex_keys")]
    pub admitted: BTreeSet<PeerId>,
    /// Keys removed at run time (no longer approved, even if the configuration lists them).
    #[serde(with = "hex_keys")]
    pub removed: BTreeSet<PeerId>,
}

/// Keys as hex strings in `admission.json`, as operators write them everywhere else.
mod hex_keys {
    use std::collections::BTreeSet;

    use chorus_consensus::PeerId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        keys: &BTreeSet<PeerId>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(keys.iter().map(|key| crate::config::hex(&key.0)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeSet<PeerId>, D::Error> {
        let texts = Vec::<String>::deserialize(deserializer)?;
        texts
            .iter()
            .map(|text| {
                crate::config::parse_hex32(text)
                    .map(PeerId)
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

/// The policy in force and where its changes are kept.
#[derive(Clone, Debug)]
pub struct Policy {
    open: bool,
    /// From the configuration: `admit` and the founding members.
    configured: BTreeSet<PeerId>,
    changes: Changes,
    path: PathBuf,
}

/// What the admin API shows of the policy.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyView {
    /// `open` or `allow-list`.
    pub admission: &'static str,
    /// The keys approved now, hex.
    pub approved: Vec<String>,
    /// Keys removed at run time, hex.
    pub removed: Vec<String>,
}

impl Policy {
    /// The policy of `checked`'s node, with the changes its data directory keeps.
    pub fn load(checked: &Checked) -> Result<Self, String> {
        let path = checked.config.data_dir.join("admission.json");
        let changes = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|error| format!("{}: {error}", path.display()))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Changes::default(),
            Err(error) => return Err(format!("{}: {error}", path.display())),
        };
        let mut configured: BTreeSet<PeerId> = checked.admit.iter().copied().collect();
        configured.extend(checked.peers.iter().map(|(peer, _)| *peer));
        Ok(Self {
            open: checked.open_admission,
            configured,
            changes,
            path,
        })
    }

    /// The policy the engine votes by.
    pub fn admission(&self) -> Admission {
        if self.open {
            return Admission::Open;
        }
        let approved = self
            .configured
            .union(&self.changes.admitted)
            .filter(|peer| !self.changes.removed.contains(peer))
            .copied()
            .collect();
        Admission::AllowList(approved)
    }

    /// Approves `node`, durably.
    pub fn admit(&mut self, node: PeerId) -> Result<(), String> {
        let mut changes = self.changes.clone();
        changes.removed.remove(&node);
        if !self.configured.contains(&node) {
            changes.admitted.insert(node);
        }
        self.save(changes)
    }

    /// Withdraws `node`'s approval, durably.
    pub fn remove(&mut self, node: PeerId) -> Result<(), String> {
        let mut changes = self.changes.clone();
        changes.admitted.remove(&node);
        if self.configured.contains(&node) {
            changes.removed.insert(node);
        }
        self.save(changes)
    }

    /// What the admin API shows.
    pub fn view(&self) -> PolicyView {
        let hex_of = |peer: &PeerId| crate::config::hex(&peer.0);
        let approved = match self.admission() {
            Admission::Open => Vec::new(),
            Admission::AllowList(approved) => approved.iter().map(hex_of).collect(),
        };
        PolicyView {
            admission: if self.open { "open" } else { "allow-list" },
            approved,
            removed: self.changes.removed.iter().map(hex_of).collect(),
        }
    }

    /// Writes `changes` whole (a temporary file, synced, renamed over the old one, the
    /// directory synced), then takes them: on an error nothing changed.
    fn save(&mut self, changes: Changes) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(&changes).map_err(|error| error.to_string())?;
        write_whole(&self.path, &bytes)
            .map_err(|error| format!("{}: {error}", self.path.display()))?;
        self.changes = changes;
        Ok(())
    }
}

fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let temporary = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(directory) = path.parent() {
        std::fs::File::open(directory)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(directory: &Path, open: bool, configured: &[u8]) -> Policy {
        Policy {
            open,
            configured: configured.iter().map(|byte| PeerId([*byte; 32])).collect(),
            changes: Changes::default(),
            path: directory.join("admission.json"),
        }
    }

    fn approved(policy: &Policy) -> Vec<u8> {
        match policy.admission() {
            Admission::Open => panic!("an allow-list was expected"),
            Admission::AllowList(keys) => keys.iter().map(|peer| peer.0[0]).collect(),
        }
    }

    #[test]
    fn admitting_and_removing_change_the_allow_list_and_survive_a_reload() {
        let directory = tempfile::tempdir().expect("tempdir");
        let mut policy = policy(directory.path(), false, &[1, 2]);
        assert_eq!(approved(&policy), [1, 2]);
        policy.admit(PeerId([3; 32])).expect("admitted");
        policy.remove(PeerId([1; 32])).expect("removed");
        assert_eq!(approved(&policy), [2, 3]);
        // A configured key removed and admitted again is approved again.
        policy.admit(PeerId([1; 32])).expect("admitted again");
        policy.remove(PeerId([3; 32])).expect("removed");
        assert_eq!(approved(&policy), [1, 2]);
        let bytes = std::fs::read(directory.path().join("admission.json")).expect("saved");
        let saved: Changes = serde_json::from_slice(&bytes).expect("parses");
        assert_eq!(saved, policy.changes);
        assert!(saved.admitted.is_empty() && saved.removed.is_empty());
    }

    #[test]
    fn an_open_policy_approves_anyone_and_a_failed_save_changes_nothing() {
        let directory = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            policy(directory.path(), true, &[]).admission(),
            Admission::Open
        );
        let mut unwritable = policy(&directory.path().join("missing"), false, &[1]);
        assert!(unwritable.admit(PeerId([2; 32])).is_err());
        assert_eq!(approved(&unwritable), [1]);
    }
}
