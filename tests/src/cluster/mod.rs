//! A real Kubernetes 1.20.2 cluster in the lab: etcd, kube-apiserver, kube-controller-manager
//! and kube-scheduler in a control-plane network namespace, and real nodes (containerd through
//! the CRI, kubelet, kube-proxy in iptables mode), each in a network namespace of its own, all
//! joined by an underlay bridge in a namespace of its own ([`network`]). Nothing is created in
//! or routed to the machine's own network namespace; clients (kubectl, `e2e.test`) run inside
//! the control plane's namespace. The pod network is the caller's [`Cni`]: the reference
//! [`BridgeCni`] baseline, or Ward's `ward-cni` with a `ward-agent` per node
//! ([`cni::NodeCompanion`]).
//!
//! Binaries and images come from the cache `cargo xtask setup` builds ([`cache`]); the
//! recipe, with every workaround this VM needs, is shared/KUBERNETES.md.
//!
//! Everything is named after the cluster (`ward-<pid>-<n>`: namespaces `-ul`, `-cp`, `-n<i>`,
//! cgroup roots `-n<i>`, the directory `$TMPDIR/ward-<pid>-<n>-cluster`) and removed when the
//! [`Cluster`] drops, also on panic: programs, containers, mounts, cgroups, pod logs,
//! namespaces, and the machine-wide settings kubelet changed ([`sysctl_guard`]). A killed run's
//! leftovers are found by those names (`cargo xtask lab-clean`).

pub mod cache;
pub mod cni;
pub mod containerd;
pub mod controlplane;
pub mod kubectl;
pub mod network;
pub mod node;
pub mod process;
pub mod sysctl_guard;
pub mod teardown;
pub mod ward_cni;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

pub use cache::{IncompleteCache, KubeCache};
pub use cni::{ApiAccess, BridgeCni, Cni, CniConfig, NodeCompanion, NodeContext};
pub use controlplane::ControlPlane;
pub use kubectl::{Kubectl, KubectlError};
pub use node::ClusterNode;
pub use ward_cni::WardCni;

use crate::labdir::LabDir;
use crate::netns::{NetNs, NetnsError, unique_name};
use network::{CONTROL_PLANE_IP, MAX_NODES, Underlay};
use sysctl_guard::{SysctlError, SysctlGuard, SysctlPlaces};

/// How long a cluster may take to come up (API server ready, nodes Ready); the machine has
/// 2 shared cores.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(240);
const POLL_EVERY: Duration = Duration::from_millis(250);
/// Lines of each log shown when the cluster fails.
const DIAGNOSTIC_LINES: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Cache(#[from] IncompleteCache),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
    #[error(transparent)]
    ControlPlane(#[from] controlplane::ControlPlaneError),
    #[error(transparent)]
    Node(#[from] node::NodeError),
    #[error(transparent)]
    Kubectl(#[from] KubectlError),
    #[error("cluster {cluster}: {what} {path}: {source}")]
    Io { cluster: String, what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("cluster {cluster}: torn down already")]
    TornDown { cluster: String },
    #[error("cluster {cluster}: at most {MAX_NODES} nodes")]
    TooManyNodes { cluster: String },
    #[error("cluster {cluster}: while waiting for {what}: {died}\n{diagnostics}")]
    Died { cluster: String, what: String, died: String, diagnostics: String },
    #[error("cluster {cluster}: {what} not within {after:?}; last: {last}\n{diagnostics}")]
    Timeout { cluster: String, what: String, after: Duration, last: String, diagnostics: String },
}

/// How to build a cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// 1..=[`MAX_NODES`].
    pub nodes: u8,
    pub cni: Arc<dyn Cni>,
    /// [`KubeCache::locate`] when `None`.
    pub cache: Option<KubeCache>,
    pub start_timeout: Duration,
    /// More kube-apiserver flags (`--watch-cache=false`, say).
    pub api_server_args: Vec<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nodes: 1,
            cni: Arc::new(BridgeCni::default()),
            cache: None,
            start_timeout: DEFAULT_START_TIMEOUT,
            api_server_args: Vec::new(),
        }
    }
}

/// A running lab cluster. See the module docs.
#[derive(Debug)]
pub struct Cluster {
    name: String,
    cache: KubeCache,
    cni: Arc<dyn Cni>,
    start_timeout: Duration,
    startup: Duration,
    api: ApiAccess,
    // Torn down in this order by `teardown`.
    nodes: Vec<ClusterNode>,
    control_plane: Option<ControlPlane>,
    cp_netns: Option<NetNs>,
    underlay: Option<Underlay>,
    sysctls: Option<SysctlGuard>,
    restored: Vec<String>,
    torn_down: bool,
    dir: LabDir,
}

impl Cluster {
    /// Brings the cluster up and waits until every node is Ready and the controller manager
    /// has minted the `default` ServiceAccount's token (pods cannot be created before).
    pub fn start(config: ClusterConfig) -> Result<Cluster, ClusterError> {
        let started = Instant::now();
        let cache = match config.cache {
            Some(c) => c,
            None => KubeCache::locate()?,
        };
        let name = unique_name("");
        if config.nodes > MAX_NODES {
            return Err(ClusterError::TooManyNodes { cluster: name });
        }
        let dir = LabDir::create_named(&format!("{name}-cluster")).map_err(|source| ClusterError::Io {
            cluster: name.clone(),
            what: "creating",
            path: std::env::temp_dir().join(format!("{name}-cluster")),
            source,
        })?;
        // Guards of their own until the cluster holds them: an early error removes them.
        let underlay = Underlay::create(&format!("{name}-ul"))?;
        let cp_netns = NetNs::create(format!("{name}-cp"))?;
        let cp_dir = dir.path().join("cp");
        let api = ApiAccess {
            server: network::api_server_url(),
            ca_file: ControlPlane::ca_file_in(&cp_dir),
            admin_kubeconfig: ControlPlane::admin_kubeconfig_in(&cp_dir),
            kubectl: Kubectl::new(
                &cache.program(cache::KUBECTL),
                &ControlPlane::admin_kubeconfig_in(&cp_dir),
                cp_netns.name(),
                cp_netns.path(),
            ),
        };
        let mut cluster = Cluster {
            name,
            cache,
            cni: config.cni,
            start_timeout: config.start_timeout,
            startup: Duration::ZERO,
            api,
            nodes: Vec::new(),
            control_plane: None,
            cp_netns: None,
            underlay: None,
            sysctls: None,
            restored: Vec::new(),
            torn_down: false,
            dir,
        };
        // Before any kubelet can change them.
        cluster.sysctls = Some(SysctlGuard::acquire(SysctlPlaces::default(), &cluster.name)?);
        underlay.attach(&cp_netns, "cp", CONTROL_PLANE_IP)?;
        let cp = ControlPlane::start(
            &cluster.name,
            &cluster.cache,
            &cp_netns,
            &cp_dir,
            cluster.start_timeout,
            &config.api_server_args,
        )?;
        cluster.underlay = Some(underlay);
        cluster.cp_netns = Some(cp_netns);
        cluster.control_plane = Some(cp);
        for _ in 0..config.nodes {
            cluster.add_node()?;
        }
        cluster.wait_ready()?;
        cluster.startup = started.elapsed();
        Ok(cluster)
    }

    /// Adds a node (the next index) with the cluster's CNI and routes its pod CIDR from every
    /// other member; does not wait for it to become Ready (see [`Cluster::wait_ready`]).
    pub fn add_node(&mut self) -> Result<&ClusterNode, ClusterError> {
        let index = u8::try_from(self.nodes.len() + 1).unwrap_or(u8::MAX);
        if index > MAX_NODES {
            return Err(ClusterError::TooManyNodes { cluster: self.name.clone() });
        }
        let (Some(cp), Some(underlay), Some(cp_netns)) = (&self.control_plane, &self.underlay, &self.cp_netns) else {
            return Err(ClusterError::TornDown { cluster: self.name.clone() });
        };
        let node = ClusterNode::start(node::NodeStart {
            cluster_dir: self.dir.path(),
            index,
            cache: &self.cache,
            control_plane: cp,
            underlay,
            api: &self.api,
            cni: self.cni.as_ref(),
            timeout: self.start_timeout,
        })?;
        network::route_pods(cp_netns, node.pod_cidr(), node.ip())?;
        for other in &self.nodes {
            network::route_pods(other.netns(), node.pod_cidr(), node.ip())?;
            network::route_pods(node.netns(), other.pod_cidr(), other.ip())?;
        }
        self.nodes.push(node);
        Ok(&self.nodes[self.nodes.len() - 1])
    }

    /// Waits until every node is Ready and the `default` ServiceAccount has its token.
    pub fn wait_ready(&mut self) -> Result<(), ClusterError> {
        let names: Vec<String> = self.nodes.iter().map(|n| n.name().to_owned()).collect();
        self.wait_for("every node Ready", self.start_timeout, |k| {
            let nodes = k.get_json(&["nodes"])?;
            let not_ready: Vec<&String> = names.iter().filter(|n| !node_ready(&nodes, n)).collect();
            Ok(if not_ready.is_empty() { Ok(()) } else { Err(format!("not Ready: {not_ready:?}")) })
        })?;
        self.wait_for("the default ServiceAccount's token", self.start_timeout, |k| {
            let secret =
                k.run(&["-n", "default", "get", "serviceaccount", "default", "-o", "jsonpath={.secrets[0].name}"])?;
            Ok(if secret.trim().is_empty() { Err("no token secret yet".into()) } else { Ok(()) })
        })
    }

    /// Polls `check` with the admin kubectl until it answers `Ok(Ok(_))`; fails at once if a
    /// program of the cluster has died, and after `timeout` with the last answer. Both errors
    /// carry the tails of the cluster's logs.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Kubectl) -> Result<Result<T, String>, KubectlError>,
    ) -> Result<T, ClusterError> {
        let deadline = Instant::now() + timeout;
        let kubectl = self.kubectl().clone();
        loop {
            if let Err(died) = self.check_running() {
                return Err(ClusterError::Died {
                    cluster: self.name.clone(),
                    what: what.to_owned(),
                    died,
                    diagnostics: self.diagnostics(),
                });
            }
            let last = match check(&kubectl) {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(not_yet)) => not_yet,
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    cluster: self.name.clone(),
                    what: what.to_owned(),
                    after: timeout,
                    last,
                    diagnostics: self.diagnostics(),
                });
            }
            thread::sleep(POLL_EVERY);
        }
    }

    /// Errors naming the first program of the cluster that has died.
    pub fn check_running(&mut self) -> Result<(), String> {
        if let Some(cp) = self.control_plane.as_mut() {
            cp.check_running().map_err(|e| e.to_string())?;
        }
        for n in &mut self.nodes {
            n.check_running()?;
        }
        Ok(())
    }

    /// `ward-<pid>-<n>`: the prefix of everything the cluster made.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cluster's scratch directory (configs, logs, data of every component).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn cache(&self) -> &KubeCache {
        &self.cache
    }

    /// How long [`Cluster::start`] took.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// kubectl as the lab's admin.
    pub fn kubectl(&self) -> &Kubectl {
        &self.api.kubectl
    }

    /// How a companion or a client reaches the API server.
    pub fn api(&self) -> &ApiAccess {
        &self.api
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.api.admin_kubeconfig.clone()
    }

    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// The nodes, to act on one (replace its CNI companion, say).
    pub fn nodes_mut(&mut self) -> &mut [ClusterNode] {
        &mut self.nodes
    }

    /// The control plane (to restart the API server, act on etcd, ...).
    pub fn control_plane_mut(&mut self) -> Option<&mut ControlPlane> {
        self.control_plane.as_mut()
    }

    /// A network namespace of the caller's on the underlay at `10.250.0.<100 + index>`,
    /// reaching the API server like a node does (an agent under test without kubelet, say).
    /// The caller's guard: dropping it removes it (and its underlay port).
    pub fn attach_host(&self, index: u8) -> Result<NetNs, ClusterError> {
        let Some(underlay) = &self.underlay else {
            return Err(ClusterError::TornDown { cluster: self.name.clone() });
        };
        let netns = NetNs::create(format!("{}-h{index}", self.name))?;
        underlay.attach(&netns, &format!("h{index}"), network::host_ip(index))?;
        Ok(netns)
    }

    /// The control plane's network namespace, where clients of the API server run.
    pub fn control_plane_netns(&self) -> Option<&NetNs> {
        self.cp_netns.as_ref()
    }

    /// `program` ready to start inside the control plane's namespace (e2e.test, a client).
    pub fn control_plane_command(&self, program: &Path) -> Result<Command, ClusterError> {
        let mut cmd = Command::new(program);
        if let Some(ns) = &self.cp_netns {
            ns.command_inside(&mut cmd)?;
        }
        Ok(cmd)
    }

    /// A kubeconfig (under the cluster's directory) that authenticates as the ServiceAccount
    /// `namespace/name` with its token, verifying the API server: what a `ward-agent` running
    /// with the RBAC of `manifests/` gets (see [`ApiAccess::service_account_kubeconfig`]).
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> Result<PathBuf, ClusterError> {
        let path = self.dir.path().join(format!("sa-{namespace}-{name}.kubeconfig"));
        self.api.service_account_kubeconfig(namespace, name, &path, self.start_timeout)?;
        Ok(path)
    }

    /// The last lines of every component's log, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut logs = self.control_plane.as_ref().map(ControlPlane::logs).unwrap_or_default();
        for n in &self.nodes {
            logs.extend(n.logs());
        }
        let mut out = String::new();
        for (name, path) in logs {
            let _ = writeln!(
                out,
                "---- {name} ({}), last {DIAGNOSTIC_LINES} lines ----\n{}",
                path.display(),
                process::log_tail(&path, DIAGNOSTIC_LINES)
            );
        }
        for n in &self.nodes {
            let d = n.companion_diagnostics();
            if !d.is_empty() {
                let _ = writeln!(out, "---- CNI companion of {} ----\n{d}", n.name());
            }
        }
        out
    }

    /// The machine-wide settings the teardown put back (`kernel.panic=1`, ...), for reports.
    pub fn restored_sysctls(&self) -> &[String] {
        &self.restored
    }

    /// Stops and removes everything (see the module docs); returns the problems it met.
    /// Called by drop; idempotent.
    pub fn teardown(&mut self) -> Vec<String> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        let mut problems = Vec::new();
        // Every program at once: the lab is thrown away, so nothing waits for anything.
        {
            let mut all: Vec<&mut process::Component> = Vec::new();
            for n in &mut self.nodes {
                all.extend(n.components_mut());
            }
            if let Some(cp) = self.control_plane.as_mut() {
                all.extend(cp.components_mut());
            }
            process::stop_all(&mut all, node::STOP_GRACE);
        }
        for n in &mut self.nodes {
            problems.extend(n.teardown());
        }
        self.nodes.clear();
        self.control_plane = None;
        self.cp_netns = None;
        self.underlay = None;
        teardown::kill_processes_mentioning(&format!("{}/", self.dir.path().display()));
        if let Err(e) = teardown::unmount_under(self.dir.path()) {
            problems.push(e);
        }
        teardown::remove_empty_machine_dirs();
        if let Some(mut guard) = self.sysctls.take() {
            match guard.release() {
                Ok(restored) => self.restored = restored,
                Err(e) => problems.push(e.to_string()),
            }
        }
        problems
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if thread::panicking() && !self.torn_down {
            eprintln!("ward-lab: cluster {} failed; its logs end:\n{}", self.name, self.diagnostics());
        }
        for p in self.teardown() {
            eprintln!("ward-lab: cleanup: {p}");
        }
    }
}

/// Whether `nodes` (a `kubectl get nodes -o json` list) has node `name` with Ready=True.
pub fn node_ready(nodes: &serde_json::Value, name: &str) -> bool {
    nodes["items"].as_array().into_iter().flatten().filter(|n| n["metadata"]["name"] == name).any(|n| {
        n["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_ready_only_with_its_ready_condition_true() {
        let nodes = serde_json::json!({"items": [
            {"metadata": {"name": "a"}, "status": {"conditions": [
                {"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}]}},
            {"metadata": {"name": "b"}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}},
            {"metadata": {"name": "c"}, "status": {}},
        ]});
        assert!(node_ready(&nodes, "a"));
        assert!(!node_ready(&nodes, "b"));
        assert!(!node_ready(&nodes, "c"));
        assert!(!node_ready(&nodes, "missing"));
    }
}
