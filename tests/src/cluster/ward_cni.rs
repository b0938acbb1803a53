//! Ward as the lab cluster's CNI, installed as the manifests install it: per node, the init
//! step (`ward-agent install-cni`) puts `ward-cni` into containerd's plugin directory, and a
//! `ward-agent` in cluster mode follows the real API server as the ServiceAccount of
//! `manifests/rbac.yaml` (applied, with the CRD, exactly as they are in the tree). The agent
//! runs as the node's companion, started after containerd and before kubelet, and writes the
//! conflist into containerd's `conf_dir` once it has listed the API and the Node has its pod
//! CIDR, which is what turns the node Ready.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::Cni;
use super::cni::{CniConfig, CniSetupError, DEBIAN_CNI_BIN_DIR, NodeCompanion, NodeContext};
use super::network::SERVICE_CIDR;
use super::process::{self, Component};
use crate::bins::{self, Binaries};

/// The ServiceAccount `manifests/rbac.yaml` makes for the agent.
pub const AGENT_SERVICE_ACCOUNT: (&str, &str) = ("kube-system", "ward-agent");
/// The manifests the lab applies before any agent starts: the agent's RBAC and the CRD.
pub const APPLIED_MANIFESTS: [&str; 2] = ["crd-wardnetworkpolicy.yaml", "rbac.yaml"];
/// The agent's HTTP endpoint inside the node's namespace.
pub const AGENT_METRICS_ADDR: &str = "127.0.0.1:9962";
const TOKEN_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What a test of a cluster with Ward needs: root, the Kubernetes cache and the workspace's
/// binaries. `None` (skip, said on stderr) when one is missing outside CI; under CI=true a
/// missing one is a failure.
pub fn prerequisites(test: &str) -> Option<super::KubeCache> {
    if !crate::require_root(test) {
        return None;
    }
    let found = super::KubeCache::locate().map_err(|e| e.to_string()).and_then(|c| {
        Binaries::locate().map_err(|e| e.to_string())?;
        Ok(c)
    });
    match found {
        Ok(c) => Some(c),
        Err(e) if !crate::privileged::in_ci() => {
            eprintln!("{test}: skipped: {e}");
            None
        }
        Err(e) => panic!("{test}: {e}; CI=true, so this is a failure, not a skip"),
    }
}

/// `ward-cni` plus a `ward-agent` per node.
#[derive(Clone, Debug)]
pub struct WardCni {
    pub bins: Binaries,
    /// The tree's `manifests/`.
    pub manifests: PathBuf,
    /// The agent's `WARD_LOG` filter.
    pub log_filter: String,
    /// Extra agent arguments (tests).
    pub agent_args: Vec<String>,
}

impl WardCni {
    /// The built binaries and the tree's manifests.
    pub fn locate() -> Result<Self, bins::MissingBinary> {
        Ok(WardCni {
            bins: Binaries::locate()?,
            manifests: bins::workspace_root().join("manifests"),
            log_filter: std::env::var("WARD_AGENT_LOG").unwrap_or_else(|_| "info".into()),
            agent_args: Vec::new(),
        })
    }

    /// Where node `dir`'s agent keeps its socket, state, CNI data and log.
    pub fn agent_dir(node_dir: &Path) -> PathBuf {
        node_dir.join("ward")
    }

    pub fn socket(node_dir: &Path) -> PathBuf {
        Self::agent_dir(node_dir).join("agent.sock")
    }

    pub fn log(node_dir: &Path) -> PathBuf {
        Self::agent_dir(node_dir).join("agent.log")
    }

    fn bin_dir(node_dir: &Path) -> PathBuf {
        node_dir.join("cni-bin")
    }

    /// The agent's command line for `node` with the ServiceAccount kubeconfig `kubeconfig`.
    pub fn agent_command(&self, node: &NodeContext<'_>, kubeconfig: &Path) -> Command {
        let dir = Self::agent_dir(node.dir);
        let mut cmd = Command::new(&self.bins.agent);
        cmd.arg("--kubernetes")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--node-name")
            .arg(node.name)
            .arg("--socket")
            .arg(Self::socket(node.dir))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--cni-conf-dir")
            .arg(node.cni_conf_dir)
            .arg("--cni-bin-dir")
            .arg(Self::bin_dir(node.dir))
            .arg("--cni-data-dir")
            .arg(dir.join("cni"))
            .arg("--service-cidr")
            .arg(SERVICE_CIDR)
            .arg("--metrics-addr")
            .arg(AGENT_METRICS_ADDR)
            // No FQDN policy in these clusters; the DNS keeper would be one more process.
            .arg("--dns-proxy-port")
            .arg("0")
            .args(&self.agent_args)
            .env("WARD_LOG", &self.log_filter);
        cmd
    }
}

impl Cni for WardCni {
    fn name(&self) -> &str {
        "ward"
    }

    fn node_config(&self, node: &NodeContext<'_>) -> Result<CniConfig, CniSetupError> {
        let bin_dir = Self::bin_dir(node.dir);
        fs::create_dir_all(&bin_dir)?;
        // The DaemonSet's init step.
        let out = Command::new(&self.bins.agent).arg("install-cni").arg("--bin-dir").arg(&bin_dir).output()?;
        if !out.status.success() {
            return Err(format!("ward-agent install-cni: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        // containerd's CRI brings up every sandbox's `lo` with the reference `loopback`
        // plugin from the same directory; a node has it from its distribution.
        let loopback = Path::new(DEBIAN_CNI_BIN_DIR).join("loopback");
        if !loopback.is_file() {
            return Err(format!("{} is missing (containernetworking-plugins)", loopback.display()).into());
        }
        let link = bin_dir.join("loopback");
        if fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(&loopback, &link)?;
        }
        // The agent writes the conflist itself once ready.
        Ok(CniConfig { bin_dir, files: Vec::new() })
    }

    fn start_node(&self, node: &NodeContext<'_>) -> Result<Option<Box<dyn NodeCompanion>>, CniSetupError> {
        for file in APPLIED_MANIFESTS {
            let path = self.manifests.join(file);
            let yaml = fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            node.api.kubectl.apply(&yaml)?;
        }
        let dir = Self::agent_dir(node.dir);
        fs::create_dir_all(&dir)?;
        let kubeconfig = dir.join("agent.kubeconfig");
        let (ns, sa) = AGENT_SERVICE_ACCOUNT;
        node.api.service_account_kubeconfig(ns, sa, &kubeconfig, TOKEN_TIMEOUT)?;
        let agent = WardAgent::spawn(self.agent_command(node, &kubeconfig), node)?;
        Ok(Some(Box::new(agent)))
    }
}

/// A node's running agent; stopped (SIGTERM, then SIGKILL) and its pins removed on drop.
/// [`NodeCompanion::replace`] swaps the program and keeps the pins: an upgrade.
#[derive(Debug)]
pub struct WardAgent {
    agent: Option<Component>,
    /// What started it, kept to start a replacement the same way.
    launch: Launch,
    log: PathBuf,
    pins: PathBuf,
    command: String,
}

/// An agent's command line and environment, and the namespace it runs in (a [`Command`]
/// cannot be cloned or re-run).
#[derive(Debug)]
struct Launch {
    component: String,
    args: Vec<OsString>,
    envs: Vec<(OsString, Option<OsString>)>,
    netns_name: String,
    netns_path: PathBuf,
}

impl Launch {
    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(&self.args);
        for (key, value) in &self.envs {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        cmd
    }
}

impl WardAgent {
    /// Starts `cmd` inside the node's network namespace, its output in the node's agent log.
    pub fn spawn(cmd: Command, node: &NodeContext<'_>) -> Result<Self, CniSetupError> {
        let log = WardCni::log(node.dir);
        let command = format!("{cmd:?}");
        let launch = Launch {
            component: format!("ward-agent of {}", node.name),
            args: cmd.get_args().map(ToOwned::to_owned).collect(),
            envs: cmd.get_envs().map(|(k, v)| (k.to_owned(), v.map(ToOwned::to_owned))).collect(),
            netns_name: node.netns.name().to_owned(),
            netns_path: node.netns.path().to_owned(),
        };
        let agent = Component::spawn(&launch.component, cmd, node.netns, &log)?;
        let pins = Path::new("/sys/fs/bpf").join(crate::node::layout_dir()).join(node.name);
        Ok(WardAgent { agent: Some(agent), launch, log, pins, command })
    }

    pub fn pid(&self) -> Option<u32> {
        self.agent.as_ref().and_then(Component::pid)
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Stops the agent (enforcement stays pinned, as it does between agent runs).
    pub fn stop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            process::stop_all(&mut [&mut agent], STOP_GRACE);
        }
    }
}

impl NodeCompanion for WardAgent {
    fn check(&mut self) -> Result<(), String> {
        match self.agent.as_mut() {
            Some(a) => a.check_running().map_err(|e| e.to_string()),
            None => Err("ward-agent stopped".into()),
        }
    }

    fn diagnostics(&self) -> String {
        format!("{}\n{}", self.command, process::log_tail(&self.log, 30))
    }

    /// The old agent is gone (reaped) before the new one starts, as with the DaemonSet's
    /// `maxSurge: 0`: never two agents writing one node's maps. The pins stay (only `Drop`
    /// removes them), so the new agent adopts them; its output goes on in the same log.
    fn replace(&mut self, program: &Path) -> Result<(), String> {
        self.stop();
        let cmd = self.launch.command(program);
        self.command = format!("{cmd:?}");
        let l = &self.launch;
        let agent = Component::spawn_in(&l.component, cmd, &l.netns_name, &l.netns_path, &self.log)
            .map_err(|e| e.to_string())?;
        self.agent = Some(agent);
        Ok(())
    }
}

impl Drop for WardAgent {
    fn drop(&mut self) {
        self.stop();
        match fs::remove_dir_all(&self.pins) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("ward-lab: cleanup: removing {}: {e}", self.pins.display()),
        }
    }
}
