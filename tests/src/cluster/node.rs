//! One real node of the lab cluster: a network namespace joined to the underlay, in which its
//! containerd (CRI), kubelet and kube-proxy (iptables mode) run, entered with setns of the
//! network namespace only, so kubelet's volume mounts are in the mount namespace containerd
//! and runc see. kubelet's pods live under a cgroup root named after the node, so a node's
//! containers are found (and killed) by name. Once kubelet has registered the Node, the lab
//! sets its pod CIDR (`spec.podCIDR`) for CNIs that read it.
//!
//! Teardown ([`ClusterNode::teardown`], also on drop): companions first, then the programs
//! (see [`super::process::stop_all`]), then whatever names the node's directory (containerd
//! shims), the containers (its cgroups), the mounts under its directory, its pod logs, and its
//! namespace.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ipnet::Ipv4Net;

use super::cache::{self, KubeCache};
use super::cni::{ApiAccess, Cni, NodeCompanion, NodeContext};
use super::containerd::{self, ContainerdError, ContainerdPaths};
use super::controlplane::{ControlPlane, ControlPlaneError};
use super::kubectl::{Kubectl, KubectlError};
use super::network::{self, CLUSTER_CIDR, Underlay};
use super::process::{self, Component, ProcessError};
use super::teardown;
use crate::netns::{NetNs, NetnsError};

/// The kubelet's and kube-proxy's local ports, on the node namespace's loopback.
const KUBELET_PORT: u16 = 10250;
const KUBELET_HEALTHZ_PORT: u16 = 10248;
const PROXY_HEALTHZ: &str = "127.0.0.1:10256";
const PROXY_METRICS: &str = "127.0.0.1:10249";
/// Pods get this resolver, which does not answer (the lab has no cluster DNS): it keeps the
/// machine's resolver out of the pods.
const POD_NAMESERVER: &str = "10.96.0.10";
/// Below this much free memory or disk kubelet evicts pods and taints the node.
const EVICTION_FLOOR: &str = "100Mi";
/// How long the cluster's programs get after SIGTERM at teardown (everything is thrown away).
pub const STOP_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    #[error(transparent)]
    ControlPlane(#[from] ControlPlaneError),
    #[error(transparent)]
    Kubectl(#[from] KubectlError),
    #[error("node {node}: {what} {path}: {source}")]
    Io { node: String, what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("node {node}: the {cni} CNI: {message}")]
    Cni { node: String, cni: String, message: String },
    #[error("node {node}: {message}")]
    Died { node: String, message: String },
    #[error("node {node}: creating its cgroup root: {source}")]
    Cgroup { node: String, source: std::io::Error },
}

/// What a node needs from its cluster to start.
#[derive(Debug)]
pub struct NodeStart<'a> {
    pub cluster_dir: &'a Path,
    pub index: u8,
    pub cache: &'a KubeCache,
    pub control_plane: &'a ControlPlane,
    pub underlay: &'a Underlay,
    pub api: &'a ApiAccess,
    pub cni: &'a dyn Cni,
    pub timeout: Duration,
}

/// A running node. See the module docs.
#[derive(Debug)]
pub struct ClusterNode {
    name: String,
    index: u8,
    dir: PathBuf,
    containerd_paths: ContainerdPaths,
    companion: Option<Box<dyn NodeCompanion>>,
    kube_proxy: Option<Component>,
    kubelet: Option<Component>,
    containerd: Option<Component>,
    torn_down: bool,
    netns: NetNs,
}

impl ClusterNode {
    pub fn start(s: NodeStart<'_>) -> Result<Self, NodeError> {
        let name = super::controlplane::node_name(s.control_plane.cluster_name(), s.index);
        let dir = s.cluster_dir.join(format!("n{}", s.index));
        let io = |what, path: &Path| {
            let node = name.clone();
            let path = path.to_owned();
            move |source| NodeError::Io { node, what, path, source }
        };
        for sub in
            ["logs", "kubelet/root", "kubelet/certs", "kubelet/manifests", "kubelet/volume-plugins", "containerd"]
        {
            let d = dir.join(sub);
            fs::create_dir_all(&d).map_err(io("creating", &d))?;
        }
        let netns = NetNs::create(name.clone())?;
        let mut node = ClusterNode {
            containerd_paths: ContainerdPaths { dir: dir.join("containerd") },
            name,
            index: s.index,
            dir,
            companion: None,
            kube_proxy: None,
            kubelet: None,
            containerd: None,
            torn_down: false,
            netns,
        };
        // Pods reach Services and other nodes through this namespace.
        node.netns.sysctl("net/ipv4/ip_forward", "1")?;
        s.underlay.attach(&node.netns, &format!("n{}", s.index), node.ip())?;
        network::route_services(&node.netns)?;
        teardown::create_cgroup_root(&node.name)
            .map_err(|source| NodeError::Cgroup { node: node.name.clone(), source })?;

        let kubelet_kc = node.dir.join("kubelet.kubeconfig");
        s.control_plane.write_kubeconfig(&kubelet_kc, &s.control_plane.node_identity(s.index)?.token)?;
        let proxy_kc = node.dir.join("kube-proxy.kubeconfig");
        s.control_plane.write_kubeconfig(&proxy_kc, &s.control_plane.proxy().token)?;

        let conf_dir = node.containerd_paths.cni_conf_dir();
        let ctx = NodeContext {
            name: &node.name,
            index: node.index,
            node_ip: node.ip(),
            pod_cidr: node.pod_cidr(),
            netns: &node.netns,
            dir: &node.dir,
            cni_conf_dir: &conf_dir,
            api: s.api,
        };
        let cni_err = |e: super::cni::CniSetupError| NodeError::Cni {
            node: node.name.clone(),
            cni: s.cni.name().to_owned(),
            message: e.to_string(),
        };
        let cni_config = s.cni.node_config(&ctx).map_err(cni_err)?;
        let containerd = containerd::start(
            &node.name,
            &node.containerd_paths,
            &cni_config,
            &node.netns,
            s.cache,
            &node.log("containerd"),
            s.timeout,
        )?;
        let companion = s.cni.start_node(&ctx).map_err(cni_err)?;
        node.containerd = Some(containerd);
        node.companion = companion;

        node.start_kubelet(s.cache, &kubelet_kc)?;
        node.start_kube_proxy(s.cache, &proxy_kc)?;
        node.assign_pod_cidr(s.control_plane.kubectl(), s.timeout)?;
        Ok(node)
    }

    fn start_kubelet(&mut self, cache: &KubeCache, kubeconfig: &Path) -> Result<(), NodeError> {
        let resolv = self.dir.join("kubelet/resolv.conf");
        self.write(&resolv, &format!("nameserver {POD_NAMESERVER}\n"))?;
        let config = self.dir.join("kubelet/config.json");
        self.write(&config, &self.kubelet_config(&resolv).to_string())?;
        let mut cmd = Command::new(cache.program(cache::KUBELET));
        cmd.arg(format!("--config={}", config.display()))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--hostname-override={}", self.name))
            .arg(format!("--node-ip={}", self.ip()))
            .arg(format!("--root-dir={}", self.kubelet_root().display()))
            .arg(format!("--cert-dir={}", self.dir.join("kubelet/certs").display()))
            .arg("--container-runtime=remote")
            .arg(format!("--container-runtime-endpoint={}", self.containerd_paths.endpoint()))
            .arg("--runtime-request-timeout=5m")
            .arg("--v=2");
        self.kubelet =
            Some(Component::spawn(&format!("kubelet of {}", self.name), cmd, &self.netns, &self.log("kubelet"))?);
        Ok(())
    }

    fn start_kube_proxy(&mut self, cache: &KubeCache, kubeconfig: &Path) -> Result<(), NodeError> {
        let config = self.dir.join("kube-proxy.json");
        self.write(&config, &self.kube_proxy_config(kubeconfig).to_string())?;
        let mut cmd = Command::new(cache.program(cache::KUBE_PROXY));
        cmd.arg(format!("--config={}", config.display())).arg("--v=2");
        self.kube_proxy =
            Some(Component::spawn(&format!("kube-proxy of {}", self.name), cmd, &self.netns, &self.log("kube-proxy"))?);
        Ok(())
    }

    /// Sets the Node's `spec.podCIDR(s)` to the lab's CIDR for this node once kubelet has
    /// registered it (the API server allows setting it once, from empty; the controller
    /// manager's allocator is off). A Node created before kubelet registers would crash this
    /// kubelet (a nil capacity map in reconcileHugePageResource).
    fn assign_pod_cidr(&mut self, kubectl: &Kubectl, timeout: Duration) -> Result<(), NodeError> {
        let name = self.name.clone();
        let kubelet = &mut self.kubelet;
        kubectl.wait_for(&format!("node {name} to register"), timeout, |k| {
            if let Some(c) = kubelet.as_mut()
                && let Err(e) = c.check_running()
            {
                return Ok(Err(e.to_string()));
            }
            let (code, out) = k.run_status(&["get", "node", &name, "-o", "name"])?;
            Ok(if code == 0 { Ok(()) } else { Err(out.trim().to_owned()) })
        })?;
        self.check_running().map_err(|message| NodeError::Died { node: name.clone(), message })?;
        let cidr = self.pod_cidr().to_string();
        let patch = serde_json::json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
        kubectl.run(&["patch", "node", &name, "--type=merge", "-p", &patch.to_string()])?;
        Ok(())
    }

    pub fn kubelet_config(&self, resolv_conf: &Path) -> serde_json::Value {
        kubelet_config(&self.name, self.ip(), &self.dir, resolv_conf)
    }

    pub fn kube_proxy_config(&self, kubeconfig: &Path) -> serde_json::Value {
        kube_proxy_config(&self.name, self.ip(), kubeconfig)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn index(&self) -> u8 {
        self.index
    }

    pub fn ip(&self) -> Ipv4Addr {
        network::node_ip(self.index)
    }

    pub fn pod_cidr(&self) -> Ipv4Net {
        network::node_pod_cidr(self.index)
    }

    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn kubelet_root(&self) -> PathBuf {
        Self::kubelet_root_in(&self.dir)
    }

    /// kubelet's `--root-dir` of the node whose directory is `dir`.
    pub fn kubelet_root_in(dir: &Path) -> PathBuf {
        dir.join("kubelet/root")
    }

    /// The log of `component` (`kubelet`, `containerd`, `kube-proxy`) of the node whose
    /// directory is `dir`.
    pub fn log_in(dir: &Path, component: &str) -> PathBuf {
        dir.join("logs").join(format!("{component}.log"))
    }

    pub fn containerd(&self) -> &ContainerdPaths {
        &self.containerd_paths
    }

    fn log(&self, component: &str) -> PathBuf {
        Self::log_in(&self.dir, component)
    }

    fn write(&self, path: &Path, content: &str) -> Result<(), NodeError> {
        fs::write(path, content).map_err(|source| NodeError::Io {
            node: self.name.clone(),
            what: "writing",
            path: path.to_owned(),
            source,
        })
    }

    /// Errors naming the first program (or companion) of the node that has died.
    pub fn check_running(&mut self) -> Result<(), String> {
        for c in [&mut self.containerd, &mut self.kubelet, &mut self.kube_proxy].into_iter().flatten() {
            c.check_running().map_err(|e| e.to_string())?;
        }
        if let Some(c) = self.companion.as_mut() {
            c.check().map_err(|e| format!("node {}: CNI companion: {e}", self.name))?;
        }
        Ok(())
    }

    /// The node's programs, for stopping them together with the rest of the cluster.
    pub fn components_mut(&mut self) -> impl Iterator<Item = &mut Component> {
        [&mut self.kube_proxy, &mut self.kubelet, &mut self.containerd].into_iter().flatten()
    }

    /// (component, log path) of every program, plus the companion's diagnostics.
    pub fn logs(&self) -> Vec<(String, PathBuf)> {
        [&self.containerd, &self.kubelet, &self.kube_proxy]
            .into_iter()
            .flatten()
            .map(|c| (c.name().to_owned(), c.log().to_owned()))
            .collect()
    }

    /// Replaces the node's CNI companion with `program` (see [`NodeCompanion::replace`]):
    /// an agent upgrade, one node of a rollout.
    pub fn replace_companion(&mut self, program: &Path) -> Result<(), String> {
        match self.companion.as_mut() {
            Some(c) => c.replace(program).map_err(|e| format!("node {}: CNI companion: {e}", self.name)),
            None => Err(format!("node {}: no CNI companion to replace", self.name)),
        }
    }

    pub fn companion_diagnostics(&self) -> String {
        self.companion.as_ref().map(|c| c.diagnostics()).unwrap_or_default()
    }

    /// Stops the companion and every program, then removes what they left outside the
    /// namespace (see the module docs). Returns the problems it met; the namespace itself goes
    /// when the node drops.
    pub fn teardown(&mut self) -> Vec<String> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        self.companion = None;
        let mut running: Vec<&mut Component> =
            [&mut self.kube_proxy, &mut self.kubelet, &mut self.containerd].into_iter().flatten().collect();
        process::stop_all(&mut running, STOP_GRACE);
        let mut problems = Vec::new();
        // Shims outlive containerd; they (and anything else of the node) name its directory.
        teardown::kill_processes_mentioning(&format!("{}/", self.dir.display()));
        if let Err(e) = teardown::remove_cgroups(&self.name) {
            problems.push(format!("node {}: {e}", self.name));
        }
        if let Err(e) = teardown::unmount_under(&self.dir) {
            problems.push(format!("node {}: {e}", self.name));
        }
        teardown::remove_pod_logs(&self.kubelet_root(), &self.log("kubelet"));
        teardown::remove_runtime_leftovers(&self.containerd_paths.state(), &self.containerd_paths.root());
        problems
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        for p in self.teardown() {
            eprintln!("ward-lab: cleanup: {p}");
        }
    }
}

/// kubelet's configuration (shared/KUBERNETES.md, section 7), with everything it writes kept
/// under the node's directory `dir` and its pods under the node's own cgroup root.
pub fn kubelet_config(name: &str, ip: Ipv4Addr, dir: &Path, resolv_conf: &Path) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": ip.to_string(),
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": KUBELET_HEALTHZ_PORT,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": format!("/{}", name),
        "cgroupsPerQOS": true,
        "failSwapOn": false,
        // The API server has no kubelet client certificate; the port is on the lab's
        // underlay only.
        "authentication": {"anonymous": {"enabled": true}, "webhook": {"enabled": false}},
        "authorization": {"mode": "AlwaysAllow"},
        "clusterDomain": "cluster.local",
        "clusterDNS": [],
        "resolvConf": resolv_conf,
        "staticPodPath": dir.join("kubelet/manifests"),
        "volumePluginDir": dir.join("kubelet/volume-plugins"),
        // Absolute floors, not percentages: the lab throws its pods away anyway, and a shared
        // machine's disk may hold less free space than 1% of its size while still working.
        "evictionHard": {"memory.available": EVICTION_FLOOR, "nodefs.available": EVICTION_FLOOR, "imagefs.available": EVICTION_FLOOR},
        // Never collect the imported images: there is no registry to pull them again from.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        // The device manager's socket is a fixed machine-wide path
        // (/var/lib/kubelet/device-plugins/kubelet.sock) that nodes would fight over.
        "featureGates": {"DevicePlugins": false},
    })
}

/// kube-proxy's configuration: iptables mode, bound to the node's address, and leaving the
/// conntrack settings alone (nf_conntrack_max is machine-wide).
pub fn kube_proxy_config(name: &str, ip: Ipv4Addr, kubeconfig: &Path) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": kubeconfig},
        "mode": "iptables",
        "bindAddress": ip.to_string(),
        "healthzBindAddress": PROXY_HEALTHZ,
        "metricsBindAddress": PROXY_METRICS,
        "hostnameOverride": name,
        "clusterCIDR": CLUSTER_CIDR,
        "nodePortAddresses": [format!("{}/32", ip)],
        "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path in `v` (strings starting with `/`), with where it was found.
    fn paths(v: &serde_json::Value, at: &str, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::String(s) if s.starts_with('/') => out.push((at.to_owned(), s.clone())),
            serde_json::Value::Object(m) => m.iter().for_each(|(k, v)| paths(v, &format!("{at}.{k}"), out)),
            serde_json::Value::Array(a) => a.iter().for_each(|v| paths(v, at, out)),
            _ => {}
        }
    }

    #[test]
    fn kubelet_writes_only_under_the_node_directory_and_its_own_cgroup_root() {
        let dir = Path::new("/lab/n1");
        let c = kubelet_config("ward-1-2-n1", network::node_ip(1), dir, &dir.join("kubelet/resolv.conf"));
        let mut found = Vec::new();
        paths(&c, "", &mut found);
        for (field, path) in &found {
            if field == ".cgroupRoot" {
                assert_eq!(path, "/ward-1-2-n1", "pods under a cgroup root named after the node");
            } else {
                assert!(path.starts_with("/lab/n1/"), "{field} = {path} is outside the node's directory");
            }
        }
        assert!(found.iter().any(|(f, _)| f == ".volumePluginDir"), "else kubelet uses /usr/libexec/kubernetes");
        assert_eq!(c["address"], "10.250.0.11");
        assert_eq!(c["featureGates"]["DevicePlugins"], false);
    }

    #[test]
    fn kube_proxy_leaves_machine_wide_conntrack_settings_alone() {
        let c = kube_proxy_config("n", network::node_ip(2), Path::new("/lab/kc"));
        assert_eq!(c["conntrack"]["maxPerCore"], 0);
        assert_eq!(c["mode"], "iptables");
        assert_eq!(c["nodePortAddresses"][0], "10.250.0.12/32");
    }
}
