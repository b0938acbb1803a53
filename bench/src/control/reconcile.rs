//! The agent's per-change pass, run through the agent's own code
//! (`ward_agent::plan::plan` then `ward_agent::daemon::state::settle_identities`) with the kernel
//! writes replaced by [`MirrorDelta::apply_to`](ward_agent::datapath::MirrorDelta::apply_to).
//! The map writes counted are the ones the kernel would receive.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use ward_agent::api::proto::EndpointRegistration;
use ward_agent::daemon::registry::Registry;
use ward_agent::daemon::state::settle_identities;
use ward_agent::datapath::MirrorContents;
use ward_agent::plan::{Compiled, Source, plan};
use ward_policy::cluster::{Cluster, PodKey};
use ward_policy::identity::Identities;

/// What one pass did and how long each stage took (seconds).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Pass {
    /// Updating the compiler's view of the cluster from the snapshot and the endpoints.
    pub cluster_secs: f64,
    pub compile_secs: f64,
    /// Desired maps and the comparison with the mirror.
    pub diff_secs: f64,
    /// Identity GC and writing the identity state.
    pub persist_secs: f64,
    pub total_secs: f64,
    /// Map entries written or deleted (ipcache, policy, endpoints).
    pub writes: usize,
}

/// One node agent's state between passes.
pub struct Reconciler {
    pub ids: Identities,
    /// What the kernel holds (the agent's mirror).
    pub mirror: MirrorContents,
    /// The last pass's compile, kept as the agent keeps it for status and explain.
    pub compiled: Option<Compiled>,
    /// The cluster as the last compile saw it (the agent keeps it between passes).
    pub view: Cluster,
    registry: Registry,
    ids_saved: Option<u64>,
    state_dir: PathBuf,
    registered: BTreeSet<PodKey>,
}

impl Reconciler {
    /// `state_dir` receives the identity and endpoint files, as the agent's state directory does.
    pub fn new(state_dir: PathBuf) -> anyhow::Result<Self> {
        let registry = Registry::load(&state_dir).context("endpoint registry")?;
        Ok(Reconciler {
            ids: Identities::new(),
            mirror: MirrorContents::default(),
            compiled: None,
            view: Cluster::default(),
            registry,
            ids_saved: None,
            state_dir,
            registered: BTreeSet::new(),
        })
    }

    /// Registers the `local` pods not registered yet, as their CNI ADDs would (untimed).
    fn register(&mut self, snapshot: &Cluster, local: &BTreeSet<PodKey>) -> anyhow::Result<()> {
        for key in local.difference(&self.registered.clone()) {
            let Some(info) = snapshot.pods.get(key) else { continue };
            let n = self.registered.len() as u32;
            self.registry.add(&EndpointRegistration {
                network: String::new(),
                container_id: format!("bench-{}-{}", key.namespace, key.name),
                ifname: "eth0".into(),
                netns: String::new(),
                pod_namespace: key.namespace.clone(),
                pod_name: key.name.clone(),
                host_ifname: format!("wb{n}"),
                host_ifindex: 1000 + n,
                ips: info.ips.clone(),
            })?;
            self.registered.insert(key.clone());
        }
        Ok(())
    }

    /// One reconcile pass of `snapshot` with the `local` pods registered.
    pub fn pass(&mut self, snapshot: &Cluster, local: &BTreeSet<PodKey>) -> anyhow::Result<Pass> {
        self.register(snapshot, local)?;
        let t0 = Instant::now();
        let local = self.registry.to_vec();
        let p = plan(&mut self.view, Source::from(snapshot), &local, &snapshot.host_addrs, &mut self.ids, &self.mirror);
        p.delta.apply_to(&mut self.mirror);
        let t1 = Instant::now();
        settle_identities(&mut self.ids, &p.compiled, true, &self.state_dir, &mut self.ids_saved);
        let t2 = Instant::now();
        self.compiled = Some(p.compiled);
        Ok(Pass {
            cluster_secs: p.timings.cluster.as_secs_f64(),
            compile_secs: p.timings.compile.as_secs_f64(),
            diff_secs: (t1 - t0 - p.timings.cluster - p.timings.compile).as_secs_f64(),
            persist_secs: (t2 - t1).as_secs_f64(),
            total_secs: (t2 - t0).as_secs_f64(),
            writes: p.delta.len(),
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
    use ward_policy::compile::compile;

    #[test]
    fn a_repeated_pass_writes_nothing_and_the_mirror_equals_a_fresh_compile() {
        let s = synth::generate(300, 40, 2);
        let cluster = s.cluster();
        let local = s.pods_on_node(0);
        let dir = ScratchDir::new("test").expect("temp dir");
        let mut r = Reconciler::new(dir.0.clone()).expect("reconciler");
        let first = r.pass(&cluster, &local).expect("pass");
        assert!(first.writes >= cluster.pods.len() + local.len(), "every pod address and endpoint: {first:?}");
        assert_eq!(r.pass(&cluster, &local).expect("pass").writes, 0);
        let fresh = compile(&cluster, &local, &mut r.ids.clone());
        assert_eq!((&r.mirror.ipcache, &r.mirror.policy), (&fresh.ipcache, &fresh.policy));
        assert_eq!(r.mirror.endpoints.len(), local.len(), "one endpoint entry per local pod");
        assert!(dir.0.join("identities.json").exists(), "identities persisted");
    }

    #[test]
    fn an_added_pod_of_an_existing_deployment_is_one_ipcache_write() {
        let s = synth::generate(300, 40, 2);
        let mut cluster = s.cluster();
        let local = s.pods_on_node(0);
        let dir = ScratchDir::new("test").expect("temp dir");
        let mut r = Reconciler::new(dir.0.clone()).expect("reconciler");
        r.pass(&cluster, &local).expect("pass");
        let (key, info) = cluster.pods.iter().next_back().map(|(k, i)| (k.clone(), i.clone())).expect("pods");
        let mut info = info;
        info.ips = vec!["10.0.0.250".parse().expect("ip")];
        cluster.pods.insert(PodKey::new(&key.namespace, "extra"), info);
        assert_eq!(r.pass(&cluster, &local).expect("pass").writes, 1);
    }
}
