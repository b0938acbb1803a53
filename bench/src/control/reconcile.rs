//! The agent's per-change work, as `agent/src/daemon/reconcile.rs` does it, minus the bpf
//! syscalls: clone the datastore snapshot into a `Cluster` (`build_cluster`), compile it for
//! the local pods, build the desired maps (`desired_maps` clones the compiled ipcache and
//! policy maps and adds one endpoint entry per local pod), compare them with the mirror of
//! what is loaded (`Maps::apply` walks desired and current), collect identity garbage, and
//! persist the identities (JSON, written and renamed). The benchmark times exactly this, so a
//! change to the agent's pass should be mirrored here; the map writes it counts are the ones
//! the kernel would receive.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Instant;

use ward_policy::cluster::{Cluster, PodKey};
use ward_policy::compile::{Compiled, compile, diff};
use ward_policy::identity::Identities;

/// What one pass did and how long each stage took (seconds).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Pass {
    pub clone_secs: f64,
    pub compile_secs: f64,
    /// Desired maps, the comparison with the mirror and identity GC.
    pub diff_secs: f64,
    /// Encoding and writing the identity state.
    pub persist_secs: f64,
    pub total_secs: f64,
    /// Map entries written or deleted (ipcache, policy, endpoints).
    pub writes: usize,
}

/// One node agent's state between passes.
pub struct Reconciler {
    pub ids: Identities,
    /// What the kernel holds (the agent's mirror), as compiled maps.
    pub mirror: Compiled,
    /// Endpoint flags as loaded: local pod → (identity, isolation bits).
    endpoints: BTreeMap<PodKey, (u32, u32)>,
    state_file: PathBuf,
}

impl Reconciler {
    /// `state_dir` receives the identity file, as the agent's state directory does.
    pub fn new(state_dir: PathBuf) -> Self {
        Reconciler {
            ids: Identities::new(),
            mirror: Compiled::default(),
            endpoints: BTreeMap::new(),
            state_file: state_dir.join("identities.json"),
        }
    }

    /// One reconcile pass of `snapshot` for the `local` pods.
    pub fn pass(&mut self, snapshot: &Cluster, local: &BTreeSet<PodKey>) -> std::io::Result<Pass> {
        let t0 = Instant::now();
        let cluster = snapshot.clone();
        let t1 = Instant::now();
        let compiled = compile(&cluster, local, &mut self.ids);
        let t2 = Instant::now();
        // desired_maps: copies of the two big maps plus the endpoint entries.
        let desired =
            Compiled { ipcache: compiled.ipcache.clone(), policy: compiled.policy.clone(), ..Compiled::default() };
        let endpoints: BTreeMap<PodKey, (u32, u32)> = local
            .iter()
            .filter_map(|k| compiled.pod_identity.get(k).map(|id| (k.clone(), (*id, compiled.isolation_of(k)))))
            .collect();
        let delta = diff(&self.mirror, &desired);
        let endpoint_writes = endpoints.iter().filter(|(k, v)| self.endpoints.get(*k) != Some(*v)).count()
            + self.endpoints.keys().filter(|k| !endpoints.contains_key(*k)).count();
        let writes = delta.ipcache_upserts.len()
            + delta.ipcache_deletes.len()
            + delta.policy_upserts.len()
            + delta.policy_deletes.len()
            + endpoint_writes;
        delta.apply_to(&mut self.mirror);
        self.endpoints = endpoints;
        self.ids.gc(&compiled.live());
        let t3 = Instant::now();
        let bytes = serde_json::to_vec(&self.ids).map_err(std::io::Error::other)?;
        let tmp = self.state_file.with_extension("tmp");
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, &self.state_file)?;
        let t4 = Instant::now();
        // The agent keeps the compile for `explain` and status; so does this.
        self.mirror.pod_identity = compiled.pod_identity;
        self.mirror.isolation = compiled.isolation;
        self.mirror.rules = compiled.rules;
        self.mirror.cidr_identity = compiled.cidr_identity;
        Ok(Pass {
            clone_secs: (t1 - t0).as_secs_f64(),
            compile_secs: (t2 - t1).as_secs_f64(),
            diff_secs: (t3 - t2).as_secs_f64(),
            persist_secs: (t4 - t3).as_secs_f64(),
            total_secs: (t4 - t0).as_secs_f64(),
            writes,
        })
    }
}

/// A scratch directory removed on drop (also on panic).
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new(tag: &str) -> std::io::Result<Self> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ward-bench-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth;

    #[test]
    fn a_repeated_pass_writes_nothing_and_the_mirror_equals_a_fresh_compile() {
        let s = synth::generate(300, 40, 2);
        let cluster = s.cluster();
        let local = s.pods_on_node(0);
        let dir = ScratchDir::new("test").expect("temp dir");
        let mut r = Reconciler::new(dir.0.clone());
        let first = r.pass(&cluster, &local).expect("pass");
        assert!(first.writes >= cluster.pods.len(), "every pod address is written: {first:?}");
        assert_eq!(r.pass(&cluster, &local).expect("pass").writes, 0);
        let fresh = compile(&cluster, &local, &mut r.ids.clone());
        assert_eq!((&r.mirror.ipcache, &r.mirror.policy), (&fresh.ipcache, &fresh.policy));
        assert!(dir.0.join("identities.json").exists(), "identities persisted");
    }

    #[test]
    fn an_added_pod_of_an_existing_deployment_is_one_ipcache_write() {
        let s = synth::generate(300, 40, 2);
        let mut cluster = s.cluster();
        let local = s.pods_on_node(0);
        let dir = ScratchDir::new("test").expect("temp dir");
        let mut r = Reconciler::new(dir.0.clone());
        r.pass(&cluster, &local).expect("pass");
        let (key, info) = cluster.pods.iter().next_back().map(|(k, i)| (k.clone(), i.clone())).expect("pods");
        let mut info = info;
        info.ips = vec!["10.0.0.250".parse().expect("ip")];
        cluster.pods.insert(PodKey::new(&key.namespace, "extra"), info);
        assert_eq!(r.pass(&cluster, &local).expect("pass").writes, 1);
    }
}
