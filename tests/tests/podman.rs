//! `ward-cni` under a real container runtime: podman (CNI backend) runs busybox containers
//! on a Ward network inside a lab node, and the agent enforces NetworkPolicy on them. Needs
//! root, podman, runc and busybox-static (`cargo xtask setup` installs them).
//!
//! Podman runs in the node's network namespace (entered with `nsenter`, which unlike
//! `ip netns exec` leaves /sys and its cgroup mounts alone), with its own storage and config
//! under the lab's scratch directory, so nothing of the machine's podman setup is used or
//! changed. Its CNI configuration is the conflist the node's agent wrote (ward-cni with
//! Debian's portmap chained) and its plugin directory the node's, as on a real node.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ward_lab::{Labels, Node, NodeConfig, require_root};

/// A podman confined to one scratch directory; removes its containers and storage on drop.
struct Podman {
    dir: PathBuf,
    node_netns: PathBuf,
}

impl Podman {
    fn new(node: &Node) -> Podman {
        let dir = node.dir().join("podman");
        for d in ["storage", "run", "rootfs/bin"] {
            std::fs::create_dir_all(dir.join(d)).unwrap_or_else(|e| panic!("{d}: {e}"));
        }
        let conflist = node.cni_conf_dir().join(ward_lab::cni::CONFLIST_NAME);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !conflist.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(conflist.exists(), "the agent wrote {}", conflist.display());
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\"]\nnetwork_config_dir = \"{}\"\n",
                node.cni_bin_dir().display(),
                node.cni_conf_dir().display()
            ),
        )
        .expect("containers.conf");
        let p = Podman { dir, node_netns: node.netns().path().to_owned() };
        // An image from a busybox root filesystem: no registry involved.
        let busybox = which("busybox");
        std::fs::copy(&busybox, p.dir.join("rootfs/bin/busybox")).expect("copying busybox");
        for applet in ["sh", "httpd", "nc", "echo", "head", "sleep"] {
            std::os::unix::fs::symlink("busybox", p.dir.join("rootfs/bin").join(applet)).expect("applet link");
        }
        let tar = p.dir.join("rootfs.tar");
        run_ok(Command::new("tar").arg("-C").arg(p.dir.join("rootfs")).arg("-cf").arg(&tar).arg("."));
        p.podman(&["import", tar.to_str().expect("path"), "ward-busybox"], true);
        p
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.node_netns.display()))
            .arg("podman")
            .arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args(["--storage-driver", "vfs", "--runtime", "/usr/sbin/runc", "--cgroup-manager", "cgroupfs"])
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"));
        c
    }

    fn podman(&self, args: &[&str], must: bool) -> Output {
        let out = self.command(args).output().unwrap_or_else(|e| panic!("running podman: {e}"));
        if must {
            assert!(out.status.success(), "podman {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        out
    }

    fn run(&self, name: &str, cmd: &[&str], detach: bool) -> Output {
        self.run_with(name, &[], cmd, detach)
    }

    fn run_with(&self, name: &str, extra: &[&str], cmd: &[&str], detach: bool) -> Output {
        let mut args = vec!["run", "--name", name, "--network", "ward"];
        args.extend(extra);
        args.extend(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]);
        if detach {
            args.push("-d");
        } else {
            args.push("--rm");
        }
        args.push("ward-busybox");
        args.extend(cmd);
        self.podman(&args, detach)
    }

    fn ip(&self, name: &str) -> String {
        let out = self.podman(&["inspect", name, "--format", "{{.NetworkSettings.Networks.ward.IPAddress}}"], true);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// From a fresh client container: the first line of an HTTP answer from `ip:port`, or
    /// what failed.
    fn fetch(&self, client: &str, ip: &str) -> String {
        self.fetch_port(client, ip, 8080)
    }

    fn fetch_port(&self, client: &str, ip: &str, port: u16) -> String {
        let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {ip} {port} | head -1");
        let out = self.run(client, &["sh", "-c", &script], false);
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)).trim().to_owned()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.command(&["rm", "-a", "-f", "-t", "0"]).output();
        let _ = self.command(&["rmi", "-a", "-f"]).output();
    }
}

fn which(program: &str) -> PathBuf {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(program))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{program} is not installed (cargo xtask setup installs it)"))
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn pod_yaml(name: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: {app}}}}}\n\
         spec: {{containers: [{{name: c, ports: [{{containerPort: 8080, name: http}}]}}]}}\n"
    )
}

#[test]
fn podman_containers_on_a_ward_network_are_wired_registered_and_policed() {
    if !require_root("podman_containers_on_a_ward_network_are_wired_registered_and_policed") {
        return;
    }
    which("podman");
    let portmap = serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}});
    let mut node = Node::start(NodeConfig { cni_chain: vec![portmap], ..NodeConfig::default() })
        .unwrap_or_else(|e| panic!("lab node: {e}"));
    node.set_namespace("default", &Labels::new()).unwrap_or_else(|e| panic!("{e}"));
    // Podman names the pod after the container (K8S_POD_NAME) in the default namespace.
    node.write_manifest("web.yaml", &pod_yaml("web", "web")).expect("pod");
    node.write_manifest("client.yaml", &pod_yaml("client", "client")).expect("pod");
    node.write_manifest("other.yaml", &pod_yaml("other", "other")).expect("pod");
    node.sync().unwrap_or_else(|e| panic!("{e}"));
    let podman = Podman::new(&node);

    // `-p`: podman hands the mapping to portmap, chained after ward-cni in the conflist.
    podman.run_with("web", &["-p", "18080:8080"], &["httpd", "-f", "-p", "8080", "-h", "/"], true);
    let ip = podman.ip("web");
    assert!(ip.parse::<std::net::Ipv4Addr>().is_ok(), "web got no address: {ip:?}");
    let status = node.status().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.raw["endpoints"], 1, "the container registered as an endpoint: {}", status.raw);

    assert!(podman.fetch("client", &ip).contains("HTTP/1.1"), "before any policy the client reaches web");

    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                  metadata: {name: web-from-client, namespace: default}\n\
                  spec: {podSelector: {matchLabels: {app: web}}, ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: http}]}]}\n";
    node.write_manifest("policy.yaml", policy).expect("policy");
    node.sync().unwrap_or_else(|e| panic!("{e}"));
    assert!(podman.fetch("client", &ip).contains("HTTP/1.1"), "the allowed client still reaches web");
    let denied = podman.fetch("other", &ip);
    assert!(!denied.contains("HTTP/1.1"), "a container the policy does not allow is blocked: {denied}");
    // Through the node's mapped port the policy holds the same way.
    let node_ip = node.config().host_addrs()[0].to_string();
    assert!(podman.fetch_port("client", &node_ip, 18080).contains("HTTP/1.1"), "client through portmap");
    let denied = podman.fetch_port("other", &node_ip, 18080);
    assert!(!denied.contains("HTTP/1.1"), "other through portmap is blocked: {denied}");

    podman.podman(&["rm", "-f", "-t", "0", "web"], true);
    let status = node.status().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.raw["endpoints"], 0, "podman's CNI DEL deregistered the endpoint: {}", status.raw);
}
