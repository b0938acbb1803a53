//! How the lab cluster's nodes get their pod network: the caller brings a [`Cni`], which for
//! each node gives containerd's CRI a plugin directory (`bin_dir`) and the files of its
//! configuration directory (`conf_dir`), and may start companions on the node (Ward: its
//! `ward-agent`, following the API server with a ServiceAccount kubeconfig) before kubelet
//! starts. [`BridgeCni`] is the baseline: Debian's reference `bridge` and `host-local`
//! plugins, connectivity and no NetworkPolicy enforcement at all.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use std::time::Duration;

use ipnet::Ipv4Net;

use super::kubectl::KubectlError;
use super::network::{CLUSTER_CIDR, SERVICE_CIDR};
use crate::netns::NetNs;

/// The reference plugins' directory in Debian's containernetworking-plugins.
pub const DEBIAN_CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The bridge the baseline plugin makes in each node namespace.
pub const BRIDGE_NAME: &str = "cni0";

pub type CniSetupError = Box<dyn std::error::Error + Send + Sync>;

/// What a [`Cni`] is told about the node it configures.
#[derive(Debug)]
pub struct NodeContext<'a> {
    /// The Kubernetes node name (`ward-<pid>-<n>-n<index>`).
    pub name: &'a str,
    pub index: u8,
    /// The node's underlay address (its InternalIP).
    pub node_ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    /// The node's network namespace: kubelet, containerd and kube-proxy run in it, and so
    /// should a companion that needs the API server (see [`NetNs::command_inside`]).
    pub netns: &'a NetNs,
    /// The node's scratch directory (a companion keeps its state and logs here).
    pub dir: &'a Path,
    /// containerd's CNI `conf_dir` for this node; a companion may write a conflist here later
    /// (containerd watches it).
    pub cni_conf_dir: &'a Path,
    /// The API server, for companions.
    pub api: &'a ApiAccess,
}

/// The API server as a companion on a node reaches it.
#[derive(Clone, Debug)]
pub struct ApiAccess {
    /// `https://10.250.0.1:6443`, reachable from every namespace of the lab.
    pub server: String,
    /// The CA bundle that verifies the API server's certificate.
    pub ca_file: PathBuf,
    /// A `system:masters` kubeconfig (for setting things up, not for the agent under test).
    pub admin_kubeconfig: PathBuf,
    /// The cluster's kubectl (same release) as the admin.
    pub kubectl: super::kubectl::Kubectl,
}

impl ApiAccess {
    /// The token of ServiceAccount `namespace/name` (waiting up to `timeout` for the
    /// controller manager to mint it).
    pub fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<String, KubectlError> {
        let secret =
            self.kubectl.wait_for(&format!("the token of ServiceAccount {namespace}/{name}"), timeout, |k| {
                let s =
                    k.run(&["-n", namespace, "get", "serviceaccount", name, "-o", "jsonpath={.secrets[0].name}"])?;
                Ok(if s.trim().is_empty() { Err("no token secret yet".into()) } else { Ok(s.trim().to_owned()) })
            })?;
        let template = "go-template={{.data.token | base64decode}}";
        Ok(self.kubectl.run(&["-n", namespace, "get", "secret", &secret, "-o", template])?.trim().to_owned())
    }

    /// Writes to `path` a kubeconfig that authenticates as ServiceAccount `namespace/name`
    /// and verifies the API server: what a node's `ward-agent` (running with the RBAC of
    /// `manifests/`) is given.
    pub fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        path: &Path,
        timeout: Duration,
    ) -> Result<(), KubectlError> {
        let token = self.service_account_token(namespace, name, timeout)?;
        std::fs::write(path, super::controlplane::kubeconfig(&self.ca_file, &token))
            .map_err(|source| KubectlError::Write { path: path.to_owned(), source })
    }
}

/// containerd's CNI configuration for one node.
#[derive(Clone, Debug)]
pub struct CniConfig {
    /// containerd's `bin_dir`: where the plugins named by the conflist are.
    pub bin_dir: PathBuf,
    /// Files written into `conf_dir` before containerd starts (`name`, content). May be empty
    /// when a companion writes the conflist itself once it is ready.
    pub files: Vec<(String, String)>,
}

/// Something running on a node for the CNI (an agent); dropped when the node is torn down,
/// before its namespace goes.
pub trait NodeCompanion: fmt::Debug + Send {
    /// An error if it has died (checked while the cluster waits for nodes to become Ready).
    fn check(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// What to show when the cluster fails to come up (a log tail).
    fn diagnostics(&self) -> String {
        String::new()
    }
    /// Replaces the companion's program as a DaemonSet rollout replaces its pod: stops the
    /// running one (SIGTERM, then SIGKILL after a grace) and starts `program` with the same
    /// arguments and environment, leaving what it keeps on the node (pinned maps, state) in
    /// place. Returns once the new process runs; whether it is ready is the caller's to check.
    fn replace(&mut self, program: &Path) -> Result<(), String> {
        Err(format!("this CNI companion cannot be replaced (by {})", program.display()))
    }
}

/// A pod network for the lab cluster.
pub trait Cni: fmt::Debug + Send + Sync {
    /// For messages and `cargo xtask e2e --cni`.
    fn name(&self) -> &str;
    /// containerd's CNI directories for `node`.
    fn node_config(&self, node: &NodeContext<'_>) -> Result<CniConfig, CniSetupError>;
    /// Started after containerd and before kubelet, with the API server up.
    fn start_node(&self, _node: &NodeContext<'_>) -> Result<Option<Box<dyn NodeCompanion>>, CniSetupError> {
        Ok(None)
    }
}

/// Debian's reference `bridge` + `host-local` plugins: each node's pods on a bridge
/// [`BRIDGE_NAME`] in the node's namespace, with the bridge as their gateway for the cluster's
/// pod network and the Service range only (no default route, no masquerading), hairpin on so a
/// pod reaches itself through its Service.
#[derive(Clone, Debug)]
pub struct BridgeCni {
    pub bin_dir: PathBuf,
}

impl Default for BridgeCni {
    fn default() -> Self {
        BridgeCni { bin_dir: DEBIAN_CNI_BIN_DIR.into() }
    }
}

impl BridgeCni {
    /// The conflist for a node with `pod_cidr`, host-local's data under `ipam_dir`.
    pub fn conflist(pod_cidr: Ipv4Net, ipam_dir: &Path) -> serde_json::Value {
        let gateway = pod_cidr.hosts().next().unwrap_or(pod_cidr.network());
        serde_json::json!({
            "cniVersion": "0.4.0",
            "name": "lab-bridge",
            "plugins": [{
                "type": "bridge",
                "bridge": BRIDGE_NAME,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": pod_cidr.to_string(), "gateway": gateway.to_string()}]],
                    "routes": [{"dst": CLUSTER_CIDR}, {"dst": SERVICE_CIDR}],
                    "dataDir": ipam_dir,
                },
            }],
        })
    }
}

impl Cni for BridgeCni {
    fn name(&self) -> &str {
        "bridge"
    }

    fn node_config(&self, node: &NodeContext<'_>) -> Result<CniConfig, CniSetupError> {
        for plugin in ["bridge", "host-local"] {
            if !self.bin_dir.join(plugin).is_file() {
                return Err(format!(
                    "the reference CNI plugin {plugin} is not in {} (Debian's containernetworking-plugins; \
                     `cargo xtask setup` installs it)",
                    self.bin_dir.display()
                )
                .into());
            }
        }
        let conflist = Self::conflist(node.pod_cidr, &node.dir.join("cni-ipam"));
        Ok(CniConfig {
            bin_dir: self.bin_dir.clone(),
            files: vec![("10-lab-bridge.conflist".into(), conflist.to_string())],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bridge_conflist_routes_only_the_cluster_and_service_ranges_through_the_node() {
        let c = BridgeCni::conflist("10.244.3.0/24".parse().unwrap(), Path::new("/lab/ipam"));
        let p = &c["plugins"][0];
        assert_eq!(p["type"], "bridge");
        assert_eq!(p["hairpinMode"], true, "a pod reaching itself through its Service needs hairpin");
        assert_eq!(p["ipMasq"], false);
        let range = &p["ipam"]["ranges"][0][0];
        assert_eq!((range["subnet"].as_str(), range["gateway"].as_str()), (Some("10.244.3.0/24"), Some("10.244.3.1")));
        let routes: Vec<&str> =
            p["ipam"]["routes"].as_array().unwrap().iter().map(|r| r["dst"].as_str().unwrap()).collect();
        assert_eq!(routes, [CLUSTER_CIDR, SERVICE_CIDR], "no default route out of the lab");
    }
}
