//! The control plane: etcd, kube-apiserver, kube-controller-manager and kube-scheduler in the
//! control plane's network namespace, and the lab's identities.
//!
//! Identities are static tokens (`--token-auth-file`, random per run), as in
//! shared/KUBERNETES.md: an admin in `system:masters`; `system:node:<node>` in `system:nodes`
//! for every node the cluster may have (the file is read once, so all
//! [`super::network::MAX_NODES`] are made up front); `system:kube-controller-manager`,
//! `system:kube-scheduler` and `system:kube-proxy`, which the API server's bootstrap RBAC
//! already grants what they need. Workloads (a `ward-agent` with the RBAC of `manifests/`)
//! use ServiceAccount tokens, minted by the controller manager. The API server serves a
//! self-signed certificate for its advertise address, the `kubernetes` Service IP and its
//! names; every kubeconfig of the lab verifies it against that file.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::cache::{self, KubeCache};
use super::kubectl::{Kubectl, KubectlError};
use super::network::{API_PORT, CONTROL_PLANE_IP, MAX_NODES, SERVICE_CIDR, api_server_url};
use super::process::{Component, ProcessError};
use crate::cmd::{self, CmdError};
use crate::netns::NetNs;

/// etcd's ports, on the control plane namespace's loopback.
const ETCD_CLIENT: &str = "http://127.0.0.1:2379";
const ETCD_PEER: &str = "http://127.0.0.1:2380";
/// The controller manager's and the scheduler's secure ports (health, metrics), on the
/// control plane namespace's loopback.
const CONTROLLER_MANAGER_PORT: u16 = 10257;
const SCHEDULER_PORT: u16 = 10259;
const TOKEN_BYTES: usize = 16;
const SA_KEY_BITS: &str = "2048";
/// The API server's self-signed certificate (it writes it into its `--cert-dir`).
const SERVING_CERT: &str = "apiserver.crt";

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Command(Box<CmdError>),
    #[error(transparent)]
    Kubectl(#[from] KubectlError),
    #[error("control plane: {what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("control plane: node index {index} is outside 1..={MAX_NODES}")]
    NodeIndex { index: u8 },
}

impl From<CmdError> for ControlPlaneError {
    fn from(e: CmdError) -> Self {
        ControlPlaneError::Command(Box::new(e))
    }
}

/// A token identity of the lab.
#[derive(Clone, Debug)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
    pub token: String,
}

/// The running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    cluster: String,
    admin: Identity,
    nodes: Vec<Identity>,
    controller_manager: Identity,
    scheduler: Identity,
    proxy: Identity,
    /// Started in this order and stopped together.
    components: Vec<Component>,
    kubectl: Kubectl,
}

impl ControlPlane {
    /// Writes keys, tokens and kubeconfigs under `dir`, starts etcd and the API server in
    /// `netns` and waits until it is ready, then starts the controller manager and the
    /// scheduler.
    pub fn start(
        cluster: &str,
        cache: &KubeCache,
        netns: &NetNs,
        dir: &Path,
        ready_timeout: Duration,
    ) -> Result<Self, ControlPlaneError> {
        for sub in ["certs", "etcd", "logs"] {
            create_dir(&dir.join(sub))?;
        }
        let ident = |user: String, groups: &[&str]| -> Result<Identity, ControlPlaneError> {
            Ok(Identity { user, groups: groups.iter().map(|g| (*g).to_owned()).collect(), token: random_token()? })
        };
        let admin = ident("lab-admin".into(), &["system:masters"])?;
        let mut nodes = Vec::new();
        for i in 1..=MAX_NODES {
            nodes.push(ident(format!("system:node:{}", node_name(cluster, i)), &["system:nodes"])?);
        }
        let controller_manager = ident("system:kube-controller-manager".into(), &[])?;
        let scheduler = ident("system:kube-scheduler".into(), &[])?;
        let proxy = ident("system:kube-proxy".into(), &[])?;
        let mut csv = String::new();
        for (n, id) in [&admin, &controller_manager, &scheduler, &proxy].into_iter().chain(&nodes).enumerate() {
            csv.push_str(&token_line(id, n));
        }
        write(&dir.join("tokens.csv"), &csv)?;
        let sa_key = dir.join("sa.key");
        let sa_pub = dir.join("sa.pub");
        let mut genrsa = Command::new("openssl");
        genrsa.args(["genrsa", "-out"]).arg(&sa_key).arg(SA_KEY_BITS);
        cmd::run_ok(genrsa, None, cmd::DEFAULT_TIMEOUT)?;
        let mut public = Command::new("openssl");
        public.arg("rsa").arg("-in").arg(&sa_key).arg("-pubout").arg("-out").arg(&sa_pub);
        cmd::run_ok(public, None, cmd::DEFAULT_TIMEOUT)?;

        let ca = Self::ca_file_in(dir);
        let admin_kc = Self::admin_kubeconfig_in(dir);
        write_kubeconfig(&admin_kc, &ca, &admin.token)?;
        let kcm_kc = dir.join("controller-manager.kubeconfig");
        write_kubeconfig(&kcm_kc, &ca, &controller_manager.token)?;
        let sched_kc = dir.join("scheduler.kubeconfig");
        write_kubeconfig(&sched_kc, &ca, &scheduler.token)?;
        let kubectl = Kubectl::new(&cache.program(cache::KUBECTL), &admin_kc, netns.name(), netns.path());
        let mut cp = ControlPlane {
            dir: dir.to_owned(),
            cluster: cluster.to_owned(),
            admin,
            nodes,
            controller_manager,
            scheduler,
            proxy,
            components: Vec::new(),
            kubectl,
        };

        let log = |name: &str| dir.join("logs").join(format!("{name}.log"));
        let mut etcd = Command::new("etcd");
        etcd.args(["--name", "lab", "--data-dir"])
            .arg(dir.join("etcd"))
            .args(["--listen-client-urls", ETCD_CLIENT, "--advertise-client-urls", ETCD_CLIENT])
            .args(["--listen-peer-urls", ETCD_PEER, "--initial-advertise-peer-urls", ETCD_PEER])
            .arg(format!("--initial-cluster=lab={ETCD_PEER}"));
        cp.components.push(Component::spawn("etcd", etcd, netns, &log("etcd"))?);

        let mut api = Command::new(cache.program(cache::KUBE_APISERVER));
        api.arg(format!("--etcd-servers={ETCD_CLIENT}"))
            .arg(format!("--bind-address={CONTROL_PLANE_IP}"))
            .arg(format!("--advertise-address={CONTROL_PLANE_IP}"))
            .arg(format!("--secure-port={API_PORT}"))
            .arg("--insecure-port=0")
            .arg(format!("--cert-dir={}", dir.join("certs").display()))
            .arg(format!("--token-auth-file={}", dir.join("tokens.csv").display()))
            .args(["--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction"])
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!("--service-account-key-file={}", sa_pub.display()))
            .arg(format!("--service-account-signing-key-file={}", sa_key.display()))
            .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
            .arg("--allow-privileged=true")
            // Else `kubectl exec`/`logs` make the API server resolve node names through the
            // machine's resolver (an outside DNS query, and it fails).
            .arg("--kubelet-preferred-address-types=InternalIP")
            .arg("--profiling=false");
        cp.components.push(Component::spawn("kube-apiserver", api, netns, &log("kube-apiserver"))?);
        cp.wait_ready(ready_timeout)?;

        let mut kcm = Command::new(cache.program(cache::KUBE_CONTROLLER_MANAGER));
        kcm.arg(format!("--kubeconfig={}", kcm_kc.display()))
            .arg(format!("--authentication-kubeconfig={}", kcm_kc.display()))
            .arg(format!("--authorization-kubeconfig={}", kcm_kc.display()))
            .arg(format!("--secure-port={CONTROLLER_MANAGER_PORT}"))
            .args(["--bind-address=127.0.0.1", "--port=0", "--leader-elect=false"])
            .arg("--use-service-account-credentials=true")
            .arg(format!("--service-account-private-key-file={}", sa_key.display()))
            .arg(format!("--root-ca-file={}", ca.display()))
            // Pod CIDRs are the lab's (set on the Node objects it creates), not allocated.
            .arg("--controllers=*,-nodeipam")
            .arg("--profiling=false");
        cp.components.push(Component::spawn("kube-controller-manager", kcm, netns, &log("kube-controller-manager"))?);

        let mut sched = Command::new(cache.program(cache::KUBE_SCHEDULER));
        sched
            .arg(format!("--kubeconfig={}", sched_kc.display()))
            .arg(format!("--authentication-kubeconfig={}", sched_kc.display()))
            .arg(format!("--authorization-kubeconfig={}", sched_kc.display()))
            .arg(format!("--secure-port={SCHEDULER_PORT}"))
            .args(["--bind-address=127.0.0.1", "--port=0", "--leader-elect=false"])
            .arg("--profiling=false");
        cp.components.push(Component::spawn("kube-scheduler", sched, netns, &log("kube-scheduler"))?);
        Ok(cp)
    }

    /// Polls `/readyz` until the API server answers ok (and its certificate file exists).
    fn wait_ready(&mut self, timeout: Duration) -> Result<(), ControlPlaneError> {
        let ca = self.ca_file();
        let components = &mut self.components;
        self.kubectl.wait_for("the API server to be ready", timeout, |k| {
            for c in components.iter_mut() {
                if let Err(e) = c.check_running() {
                    return Ok(Err(e.to_string()));
                }
            }
            if !ca.is_file() {
                return Ok(Err(format!("no certificate at {} yet", ca.display())));
            }
            let (code, out) = k.run_status(&["get", "--raw", "/readyz"])?;
            Ok(if code == 0 && out.trim() == "ok" { Ok(()) } else { Err(out.trim().to_owned()) })
        })?;
        // A component that died while we waited explains more than the timeout.
        self.check_running()
    }

    /// Errors naming the first component that has exited.
    pub fn check_running(&mut self) -> Result<(), ControlPlaneError> {
        for c in &mut self.components {
            c.check_running()?;
        }
        Ok(())
    }

    pub fn kubectl(&self) -> &Kubectl {
        &self.kubectl
    }

    /// The CA bundle that verifies the API server.
    pub fn ca_file(&self) -> PathBuf {
        Self::ca_file_in(&self.dir)
    }

    /// Where a control plane with directory `dir` keeps its CA bundle (known before it starts).
    pub fn ca_file_in(dir: &Path) -> PathBuf {
        dir.join("certs").join(SERVING_CERT)
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        Self::admin_kubeconfig_in(&self.dir)
    }

    pub fn admin_kubeconfig_in(dir: &Path) -> PathBuf {
        dir.join("admin.kubeconfig")
    }

    pub fn admin(&self) -> &Identity {
        &self.admin
    }

    pub fn controller_manager(&self) -> &Identity {
        &self.controller_manager
    }

    pub fn scheduler(&self) -> &Identity {
        &self.scheduler
    }

    pub fn proxy(&self) -> &Identity {
        &self.proxy
    }

    /// The kubelet identity of node `index` (1-based).
    pub fn node_identity(&self, index: u8) -> Result<&Identity, ControlPlaneError> {
        index.checked_sub(1).and_then(|i| self.nodes.get(usize::from(i))).ok_or(ControlPlaneError::NodeIndex { index })
    }

    /// Writes a kubeconfig for `token` at `path`, verifying the API server.
    pub fn write_kubeconfig(&self, path: &Path, token: &str) -> Result<(), ControlPlaneError> {
        write_kubeconfig(path, &self.ca_file(), token)
    }

    pub fn cluster_name(&self) -> &str {
        &self.cluster
    }

    pub fn components_mut(&mut self) -> impl Iterator<Item = &mut Component> {
        self.components.iter_mut()
    }

    /// (component, log path) of every component.
    pub fn logs(&self) -> Vec<(String, PathBuf)> {
        self.components.iter().map(|c| (c.name().to_owned(), c.log().to_owned())).collect()
    }
}

/// A `--token-auth-file` line: `token,user,uid[,"group,group"]` (no groups column when there
/// are none: an empty one would be a group named "").
fn token_line(id: &Identity, n: usize) -> String {
    if id.groups.is_empty() {
        format!("{},{},uid-{n}\n", id.token, id.user)
    } else {
        format!("{},{},uid-{n},\"{}\"\n", id.token, id.user, id.groups.join(","))
    }
}

/// Node `index`'s name in cluster `cluster`.
pub fn node_name(cluster: &str, index: u8) -> String {
    format!("{cluster}-n{index}")
}

/// A kubeconfig for one token against the lab's API server.
pub fn kubeconfig(ca_file: &Path, token: &str) -> String {
    let cfg = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "lab", "cluster": {"server": api_server_url(), "certificate-authority": ca_file}}],
        "users": [{"name": "lab", "user": {"token": token}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab"}}],
        "current-context": "lab",
    });
    // JSON is YAML; kubectl and client-go read it as a kubeconfig.
    cfg.to_string()
}

fn write_kubeconfig(path: &Path, ca_file: &Path, token: &str) -> Result<(), ControlPlaneError> {
    write(path, &kubeconfig(ca_file, token))
}

fn random_token() -> Result<String, ControlPlaneError> {
    let path = Path::new("/dev/urandom");
    let mut bytes = [0u8; TOKEN_BYTES];
    fs::File::open(path).and_then(|mut f| f.read_exact(&mut bytes)).map_err(|source| ControlPlaneError::Io {
        what: "reading",
        path: path.to_owned(),
        source,
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn create_dir(path: &Path) -> Result<(), ControlPlaneError> {
    fs::create_dir_all(path).map_err(|source| ControlPlaneError::Io { what: "creating", path: path.to_owned(), source })
}

fn write(path: &Path, content: &str) -> Result<(), ControlPlaneError> {
    fs::write(path, content).map_err(|source| ControlPlaneError::Io { what: "writing", path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kubeconfig_names_the_lab_server_its_ca_and_the_token() {
        let k: serde_json::Value = serde_json::from_str(&kubeconfig(Path::new("/lab/ca.crt"), "t0k")).unwrap();
        assert_eq!(k["clusters"][0]["cluster"]["server"], "https://10.250.0.1:6443");
        assert_eq!(k["clusters"][0]["cluster"]["certificate-authority"], "/lab/ca.crt");
        assert_eq!(k["users"][0]["user"]["token"], "t0k");
        assert_eq!(k["current-context"], "lab");
    }

    #[test]
    fn token_lines_quote_groups_and_leave_out_an_empty_group_column() {
        let id = |groups: &[&str]| Identity {
            user: "system:node:n1".into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            token: "t".into(),
        };
        assert_eq!(token_line(&id(&["system:nodes"]), 3), "t,system:node:n1,uid-3,\"system:nodes\"\n");
        assert_eq!(token_line(&id(&["a", "b"]), 0), "t,system:node:n1,uid-0,\"a,b\"\n");
        assert_eq!(token_line(&id(&[]), 1), "t,system:node:n1,uid-1\n");
    }

    #[test]
    fn tokens_are_random_hex() {
        let (a, b) = (random_token().unwrap(), random_token().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 2 * TOKEN_BYTES);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
