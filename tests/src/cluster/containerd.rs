//! One node's containerd: Debian's containerd 1.6 with its own root, state, socket and CNI
//! directories under the node's scratch directory (nothing shared with a system containerd),
//! the CRI settings this VM needs, and the lab's images imported from the cache's archives.
//!
//! `restrict_oom_score_adj = true` is required here: root lacks CAP_SYS_RESOURCE, so runc
//! cannot lower a sandbox's `oom_score_adj` and every sandbox would fail with "can't get
//! final child's PID from pipe: EOF". `netns_mounts_under_state_dir` keeps the pods' network
//! namespaces out of the machine's `/run/netns`, and runc's `Root` its state out of
//! `/run/containerd/runc`. What containerd cannot be told to keep elsewhere (shim sockets in
//! `/run/containerd/s`, CNI result caches in `/var/lib/cni/results`) is removed at teardown
//! ([`super::teardown::remove_runtime_leftovers`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::cache::{self, KubeCache};
use super::cni::CniConfig;
use super::process::{Component, ProcessError};
use crate::cmd::{self, CmdError};
use crate::netns::NetNs;

/// The CRI's Kubernetes namespace in containerd.
pub const K8S_NAMESPACE: &str = "k8s.io";
/// How long importing one image archive may take (agnhost is ~50 MB, unpacked to overlayfs).
const IMPORT_TIMEOUT: Duration = Duration::from_secs(120);
const POLL_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("containerd of {node}: {what} {path}: {source}")]
    Io { node: String, what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("containerd of {node}: importing {image}: {source}")]
    Import { node: String, image: String, source: Box<CmdError> },
    #[error("containerd of {node} did not answer on {socket} within {after:?}: {last}")]
    NotReady { node: String, socket: PathBuf, after: Duration, last: String },
}

/// The paths of one node's containerd.
#[derive(Clone, Debug)]
pub struct ContainerdPaths {
    pub dir: PathBuf,
}

impl ContainerdPaths {
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    /// runc's state (else `/run/containerd/runc/<namespace>`).
    pub fn runc_root(&self) -> PathBuf {
        self.dir.join("runc")
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }
    /// kubelet's `--container-runtime-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("cni-net.d")
    }
}

/// containerd's config for one node (TOML).
pub fn config_toml(paths: &ContainerdPaths, cni: &CniConfig) -> String {
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{pause}"
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
          Root = "{runc_root}"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{bin_dir}"
      conf_dir = "{conf_dir}"
      max_conf_num = 1
  [plugins."io.containerd.internal.v1.opt"]
    path = "{opt}"
"#,
        root = paths.root().display(),
        state = paths.state().display(),
        socket = paths.socket().display(),
        pause = cache::PAUSE_IMAGE.reference,
        bin_dir = cni.bin_dir.display(),
        conf_dir = paths.cni_conf_dir().display(),
        opt = paths.dir.join("opt").display(),
        runc_root = paths.runc_root().display(),
    )
}

/// Writes the config and the CNI files, starts containerd in `netns`, waits until it answers,
/// and imports the lab's images.
pub fn start(
    node: &str,
    paths: &ContainerdPaths,
    cni: &CniConfig,
    netns: &NetNs,
    cache: &KubeCache,
    log: &Path,
    timeout: Duration,
) -> Result<Component, ContainerdError> {
    let io = |what, path: &Path| {
        let node = node.to_owned();
        let path = path.to_owned();
        move |source| ContainerdError::Io { node, what, path, source }
    };
    let conf_dir = paths.cni_conf_dir();
    std::fs::create_dir_all(&conf_dir).map_err(io("creating", &conf_dir))?;
    for (name, content) in &cni.files {
        let path = conf_dir.join(name);
        std::fs::write(&path, content).map_err(io("writing", &path))?;
    }
    let config = paths.config();
    std::fs::write(&config, config_toml(paths, cni)).map_err(io("writing", &config))?;
    let mut cmd = Command::new("containerd");
    cmd.arg("--config").arg(&config);
    let mut component = Component::spawn(&format!("containerd of {node}"), cmd, netns, log)?;
    wait_ready(node, paths, &mut component, timeout)?;
    for image in cache::IMAGES {
        let archive = cache.image_archive(image);
        let mut import = ctr(paths);
        import.args(["-n", K8S_NAMESPACE, "images", "import"]).arg(&archive);
        cmd::run_ok(import, None, IMPORT_TIMEOUT).map_err(|source| ContainerdError::Import {
            node: node.to_owned(),
            image: image.reference.to_owned(),
            source: Box::new(source),
        })?;
    }
    Ok(component)
}

fn wait_ready(
    node: &str,
    paths: &ContainerdPaths,
    component: &mut Component,
    timeout: Duration,
) -> Result<(), ContainerdError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        component.check_running()?;
        let mut version = ctr(paths);
        version.arg("version");
        let last = match cmd::run_ok(version, None, cmd::DEFAULT_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(e) => e.to_string(),
        };
        if std::time::Instant::now() >= deadline {
            return Err(ContainerdError::NotReady {
                node: node.to_owned(),
                socket: paths.socket(),
                after: timeout,
                last,
            });
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// `ctr --address <socket>`: the socket is a path, so no namespace needs entering.
pub fn ctr(paths: &ContainerdPaths) -> Command {
    let mut c = Command::new("ctr");
    c.arg("--address").arg(paths.socket());
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_keeps_everything_under_the_node_and_restricts_oom_score_adj() {
        let paths = ContainerdPaths { dir: "/lab/n1/containerd".into() };
        let cni = CniConfig { bin_dir: "/usr/lib/cni".into(), files: vec![] };
        let t = config_toml(&paths, &cni);
        for line in [
            "root = \"/lab/n1/containerd/root\"",
            "state = \"/lab/n1/containerd/state\"",
            "address = \"/lab/n1/containerd/containerd.sock\"",
            "restrict_oom_score_adj = true",
            "netns_mounts_under_state_dir = true",
            "bin_dir = \"/usr/lib/cni\"",
            "conf_dir = \"/lab/n1/containerd/cni-net.d\"",
            "sandbox_image = \"k8s.gcr.io/pause:3.2\"",
            "path = \"/lab/n1/containerd/opt\"",
            "Root = \"/lab/n1/containerd/runc\"",
        ] {
            assert!(t.contains(line), "missing {line:?} in\n{t}");
        }
        assert!(!t.contains("/var/lib/containerd") && !t.contains("/run/containerd"), "{t}");
    }
}
