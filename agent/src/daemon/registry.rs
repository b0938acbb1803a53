//! Local endpoints: the pods on this node that `ward-cni` registered. The datastore knows a
//! pod's labels; only the CNI plugin knows its interface and addresses, so this registry is
//! persisted (`<state-dir>/endpoints.json`, written atomically) and a restarted agent knows
//! exactly which interfaces to keep protecting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::api::proto::EndpointRegistration;

/// A registration as the CNI plugin sent it, with the id the agent gave it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub ep_id: u32,
    #[serde(flatten)]
    pub reg: EndpointRegistration,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    next_ep_id: u32,
    endpoints: Vec<LocalEndpoint>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("reading endpoint state {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("endpoint state {path} is corrupt: {source}")]
    Corrupt { path: PathBuf, source: serde_json::Error },
    #[error("writing endpoint state {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

pub struct Registry {
    path: PathBuf,
    next_ep_id: u32,
    /// Keyed by (container id, interface name), as CNI identifies an attachment.
    endpoints: BTreeMap<(String, String), LocalEndpoint>,
}

impl Registry {
    pub fn load(state_dir: &Path) -> Result<Self, RegistryError> {
        let path = state_dir.join("endpoints.json");
        let persisted: Persisted = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| RegistryError::Corrupt { path: path.clone(), source })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted::default(),
            Err(source) => return Err(RegistryError::Read { path, source }),
        };
        let endpoints =
            persisted.endpoints.into_iter().map(|e| ((e.reg.container_id.clone(), e.reg.ifname.clone()), e)).collect();
        Ok(Registry { path, next_ep_id: persisted.next_ep_id.max(1), endpoints })
    }

    fn save(&self) -> Result<(), RegistryError> {
        let p = Persisted { next_ep_id: self.next_ep_id, endpoints: self.endpoints.values().cloned().collect() };
        let bytes =
            serde_json::to_vec(&p).map_err(|source| RegistryError::Corrupt { path: self.path.clone(), source })?;
        write_atomic(&self.path, &bytes).map_err(|source| RegistryError::Write { path: self.path.clone(), source })
    }

    /// Adds (or replaces, for a repeated ADD) an endpoint; returns it with its id.
    pub fn add(&mut self, r: &EndpointRegistration) -> Result<LocalEndpoint, RegistryError> {
        let mut added = self.add_many(std::slice::from_ref(r))?;
        Ok(added.remove(0))
    }

    /// Adds many endpoints with one write of the state file (adding them one by one writes
    /// it once each). Used to prepare an agent's state in bulk, e.g. by the benchmarks.
    pub fn add_many(&mut self, regs: &[EndpointRegistration]) -> Result<Vec<LocalEndpoint>, RegistryError> {
        let mut added = Vec::with_capacity(regs.len());
        for r in regs {
            let key = (r.container_id.clone(), r.ifname.clone());
            let ep_id = match self.endpoints.get(&key) {
                Some(old) => old.ep_id,
                None => {
                    let id = self.next_ep_id;
                    self.next_ep_id = self.next_ep_id.checked_add(1).unwrap_or(1);
                    id
                }
            };
            let ep = LocalEndpoint { ep_id, reg: r.clone() };
            self.endpoints.insert(key, ep.clone());
            added.push(ep);
        }
        self.save()?;
        Ok(added)
    }

    pub fn remove(&mut self, container_id: &str, ifname: &str) -> Result<Option<LocalEndpoint>, RegistryError> {
        let old = self.endpoints.remove(&(container_id.to_owned(), ifname.to_owned()));
        if old.is_some() {
            self.save()?;
        }
        Ok(old)
    }

    /// Every endpoint, for a planning pass (`crate::plan` takes a slice).
    pub fn to_vec(&self) -> Vec<LocalEndpoint> {
        self.endpoints.values().cloned().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &LocalEndpoint> {
        self.endpoints.values()
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
}

/// Writes through a temporary file and a rename, so a crash leaves the old or the new file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(id: &str, ip: &str) -> EndpointRegistration {
        EndpointRegistration {
            network: String::new(),
            container_id: id.into(),
            ifname: "eth0".into(),
            netns: "/run/netns/x".into(),
            pod_namespace: "ns".into(),
            pod_name: id.into(),
            host_ifname: format!("wd{id}"),
            host_ifindex: 42,
            ips: vec![ip.parse().unwrap()],
        }
    }

    #[test]
    fn endpoints_survive_a_reload_and_ids_are_never_reused() {
        let dir = std::env::temp_dir().join(format!("ward-registry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut r = Registry::load(&dir).unwrap();
        let a = r.add(&reg("a", "10.0.0.2")).unwrap();
        let b = r.add(&reg("b", "10.0.0.3")).unwrap();
        assert_ne!(a.ep_id, b.ep_id);
        assert_eq!(r.add(&reg("a", "10.0.0.2")).unwrap().ep_id, a.ep_id, "a repeated ADD keeps the id");
        r.remove("a", "eth0").unwrap();
        let r2 = Registry::load(&dir).unwrap();
        assert_eq!(r2.len(), 1);
        assert_eq!(r2.iter().next().unwrap(), &b);
        let mut r2 = r2;
        let c = r2.add(&reg("c", "10.0.0.4")).unwrap();
        assert!(c.ep_id > b.ep_id, "a new endpoint never gets an old id");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn many_added_at_once_persist_with_distinct_ids() {
        let dir = std::env::temp_dir().join(format!("ward-registry-many-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut r = Registry::load(&dir).unwrap();
        let first = r.add(&reg("a", "10.0.0.2")).unwrap();
        let added = r.add_many(&[reg("a", "10.0.0.2"), reg("b", "10.0.0.3"), reg("c", "10.0.0.4")]).unwrap();
        assert_eq!(added[0].ep_id, first.ep_id, "an endpoint already there keeps its id");
        let ids: std::collections::BTreeSet<u32> = added.iter().map(|e| e.ep_id).collect();
        assert_eq!(ids.len(), 3);
        let again = Registry::load(&dir).unwrap();
        assert_eq!(again.iter().cloned().collect::<Vec<_>>(), r.iter().cloned().collect::<Vec<_>>());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
