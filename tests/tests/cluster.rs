//! The lab's real Kubernetes cluster (`ward_lab::cluster`) with the reference bridge CNI:
//! kubelet runs pods through containerd, kube-proxy programs Services, and tearing the
//! cluster down (or `lab-clean` after a killed run) leaves the machine as it was. Needs root
//! and the Kubernetes cache `cargo xtask setup` builds; under CI=true both are required.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ward_lab::cluster::sysctl_guard::SysctlPlaces;
use ward_lab::cluster::{Cluster, ClusterConfig, KubeCache, Kubectl, network, teardown};
use ward_lab::privileged::in_ci;
use ward_lab::require_root;

/// One cluster at a time: each test checks that the machine-wide settings are back after its
/// cluster is gone, which holds only once no other cluster runs.
static ONE_CLUSTER: Mutex<()> = Mutex::new(());

const AGNHOST: &str = "k8s.gcr.io/e2e-test-images/agnhost:2.21";
const POD_TIMEOUT: Duration = Duration::from_secs(180);
/// kube-proxy and the endpoints controller take a few seconds to program a new Service.
const SERVICE_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const POLL_EVERY: Duration = Duration::from_millis(500);
/// The child test of `a_killed_run_is_cleaned_up_by_lab_clean` holds its cluster this long
/// at most if nobody kills it.
const CHILD_LIFETIME: Duration = Duration::from_secs(600);
const CHILD_ENV: &str = "WARD_CLUSTER_CHILD";

/// The cache, or `None` (skip) when it is missing outside CI.
fn cache_or_skip(test: &str) -> Option<KubeCache> {
    if !require_root(test) {
        return None;
    }
    match KubeCache::locate() {
        Ok(c) => Some(c),
        Err(e) if !in_ci() => {
            eprintln!("{test}: skipped: {e}");
            None
        }
        Err(e) => panic!("{test}: {e}; CI=true, so this is a failure, not a skip"),
    }
}

/// What must be the same before a cluster and after it: kubelet's machine-wide settings and
/// the machine's own network namespace (its links and the settings kube-proxy and the bridge
/// plugin would change there).
#[derive(Debug, PartialEq, Eq)]
struct MachineState {
    global_sysctls: BTreeMap<String, String>,
    root_links: BTreeSet<String>,
    root_net_sysctls: BTreeMap<String, String>,
    /// The entries of the machine-wide directories the runtime writes to
    /// (`/run/containerd/s`, `/var/lib/cni/results`, ...) and `$HOME/.kube`.
    machine_dirs: BTreeMap<String, BTreeSet<String>>,
}

const ROOT_NET_SYSCTLS: [&str; 5] = [
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
];

impl MachineState {
    /// Read from this thread, which is in the machine's network namespace.
    fn capture() -> Self {
        let links = Command::new("ip").args(["-o", "link", "show"]).output().expect("ip link");
        let root_links = String::from_utf8_lossy(&links.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n).to_owned()))
            .collect();
        let root_net_sysctls = ROOT_NET_SYSCTLS
            .iter()
            .filter_map(|k| {
                std::fs::read_to_string(Path::new("/proc/sys").join(k)).ok().map(|v| ((*k).into(), v.trim().into()))
            })
            .collect();
        let home_kube = std::env::var("HOME").map(|h| format!("{h}/.kube")).unwrap_or_default();
        let machine_dirs = teardown::MACHINE_DIRS
            .iter()
            .map(|d| (*d).to_owned())
            .chain([home_kube])
            .filter_map(|d| {
                let entries = std::fs::read_dir(&d).ok()?;
                Some((d, entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()))
            })
            .collect();
        MachineState { global_sysctls: SysctlPlaces::default().read(), root_links, root_net_sysctls, machine_dirs }
    }
}

/// Everything of cluster `name` (directory `dir`) still on the machine.
fn leftovers(name: &str, dir: &Path) -> Vec<String> {
    let mut left = Vec::new();
    let fragment = dir.display().to_string();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let pid = entry.file_name().to_string_lossy().into_owned();
        if pid != std::process::id().to_string() && String::from_utf8_lossy(&cmdline).contains(&fragment) {
            left.push(format!("process {pid}: {}", String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    left.extend(teardown::mounts_under(dir).into_iter().map(|m| format!("mount {}", m.display())));
    for e in std::fs::read_dir(ward_lab::netns::NETNS_DIR).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&format!("{name}-")) {
            left.push(format!("network namespace {n}"));
        }
    }
    for h in teardown::cgroup_hierarchies() {
        for e in std::fs::read_dir(&h).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(&format!("{name}-")) {
                left.push(format!("cgroup {}", e.path().display()));
            }
        }
    }
    if dir.exists() {
        left.push(format!("directory {}", dir.display()));
    }
    left
}

/// The pod log directories (`<ns>_<pod>_<uid>`) of the pods with these uids.
fn pod_logs(uids: &BTreeSet<String>) -> Vec<PathBuf> {
    std::fs::read_dir(teardown::POD_LOGS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().rsplit('_').next().is_some_and(|uid| uids.contains(uid)))
        .map(|e| e.path())
        .collect()
}

fn manifests(ns: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: srv, namespace: {ns}, labels: {{app: srv}}}}
spec:
  containers:
  - {{name: srv, image: "{AGNHOST}", imagePullPolicy: Never, args: [netexec, --http-port=8080], ports: [{{containerPort: 8080}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: cli, namespace: {ns}, labels: {{app: cli}}}}
spec:
  containers:
  - {{name: cli, image: "{AGNHOST}", imagePullPolicy: Never, args: [pause]}}
---
apiVersion: v1
kind: Service
metadata: {{name: srv, namespace: {ns}}}
spec:
  selector: {{app: srv}}
  ports: [{{port: 80, targetPort: 8080}}]
"#
    )
}

/// Waits until pod `ns/name` is Running with an IP; returns the IP.
fn running_pod_ip(k: &Kubectl, ns: &str, name: &str) -> Ipv4Addr {
    k.running_pod_ip(ns, name, POD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}

/// `kubectl exec` of `/agnhost connect` from `pod` to `to`: true when it connected.
fn connects(k: &Kubectl, ns: &str, pod: &str, to: &str) -> bool {
    k.agnhost_connects(ns, pod, to, CONNECT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}

/// Retries `connects` until it succeeds within [`SERVICE_TIMEOUT`].
fn eventually_connects(k: &Kubectl, ns: &str, pod: &str, to: &str) -> bool {
    let deadline = Instant::now() + SERVICE_TIMEOUT;
    loop {
        if connects(k, ns, pod, to) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// An HTTP GET of agnhost netexec's `/hostname` from inside `netns` (the node's own
/// namespace, where kube-proxy's rules are): the answer's body.
fn http_hostname_from(netns: &ward_lab::NetNs, to: SocketAddr) -> Result<String, String> {
    netns
        .run_in(|| -> Result<String, String> {
            let mut s = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT).map_err(|e| format!("connect {to}: {e}"))?;
            s.set_read_timeout(Some(CONNECT_TIMEOUT)).map_err(|e| e.to_string())?;
            s.write_all(b"GET /hostname HTTP/1.0\r\n\r\n").map_err(|e| e.to_string())?;
            let mut answer = String::new();
            s.read_to_string(&mut answer).map_err(|e| format!("reading from {to}: {e}"))?;
            Ok(answer.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_owned())
        })
        .map_err(|e| e.to_string())?
}

#[test]
fn a_real_node_runs_pods_serves_services_and_leaves_nothing_behind() {
    let test = "a_real_node_runs_pods_serves_services_and_leaves_nothing_behind";
    let Some(cache) = cache_or_skip(test) else { return };
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let before = MachineState::capture();
    let cluster = Cluster::start(ClusterConfig { cache: Some(cache), ..ClusterConfig::default() })
        .unwrap_or_else(|e| panic!("starting the cluster: {e}"));
    eprintln!("{test}: cluster {} up in {:.1}s", cluster.name(), cluster.startup_time().as_secs_f64());
    let (name, dir) = (cluster.name().to_owned(), cluster.dir().to_owned());
    let k = cluster.kubectl().clone();
    let node = &cluster.nodes()[0];

    // The node registered itself, Ready, with its underlay address, through containerd.
    let n = k.get_json(&["node", node.name()]).unwrap_or_else(|e| panic!("{e}"));
    assert!(ward_lab::cluster::node_ready(&serde_json::json!({"items": [n.clone()]}), node.name()), "{}", n["status"]);
    let addrs = &n["status"]["addresses"];
    assert!(
        addrs
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["type"] == "InternalIP" && a["address"] == node.ip().to_string()),
        "InternalIP {} in {addrs}",
        node.ip()
    );
    assert_eq!(n["status"]["nodeInfo"]["kubeletVersion"], "v1.20.2");
    assert!(
        n["status"]["nodeInfo"]["containerRuntimeVersion"].as_str().is_some_and(|v| v.starts_with("containerd://"))
    );
    assert_eq!(n["spec"]["podCIDR"], node.pod_cidr().to_string(), "the lab's pod CIDR on the Node object");

    // kubelet did change the machine-wide settings: the guard has something to restore.
    let during = SysctlPlaces::default().read();
    assert_eq!(during["vm/overcommit_memory"], "1", "kubelet sets vm.overcommit_memory=1");
    assert_eq!(during["kernel/panic_on_oops"], "1", "kubelet sets kernel.panic_on_oops=1");

    let ns = "lab";
    k.apply(&manifests(ns)).unwrap_or_else(|e| panic!("applying the pods: {e}"));
    let srv = running_pod_ip(&k, ns, "srv");
    let cli = running_pod_ip(&k, ns, "cli");
    for ip in [srv, cli] {
        assert!(node.pod_cidr().contains(&ip), "pod IP {ip} from the node's pod CIDR {}", node.pod_cidr());
    }
    assert_ne!(srv, cli);

    // kubectl exec (API server -> kubelet over the underlay -> containerd).
    let (code, hostname) = k.run_status(&["-n", ns, "exec", "cli", "--", "hostname"]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((code, hostname.trim()), (0, "cli"), "kubectl exec runs in the pod");

    // Pod to pod, and a closed port that must not connect (the probe can say no).
    assert!(connects(&k, ns, "cli", &format!("{srv}:8080")), "cli reaches srv directly");
    assert!(!connects(&k, ns, "cli", &format!("{srv}:8089")), "nothing listens on 8089");

    // Pod to ClusterIP through kube-proxy, host (node namespace) to ClusterIP, and hairpin.
    let svc = k.get_json(&["-n", ns, "service", "srv"]).unwrap_or_else(|e| panic!("{e}"));
    let cluster_ip: Ipv4Addr = svc["spec"]["clusterIP"].as_str().and_then(|s| s.parse().ok()).expect("a ClusterIP");
    assert!(network::SERVICE_CIDR.parse::<ipnet::Ipv4Net>().unwrap().contains(&cluster_ip));
    assert!(eventually_connects(&k, ns, "cli", &format!("{cluster_ip}:80")), "cli reaches srv through its ClusterIP");
    let deadline = Instant::now() + SERVICE_TIMEOUT;
    let host_answer = loop {
        match http_hostname_from(node.netns(), SocketAddr::new(cluster_ip.into(), 80)) {
            Ok(body) => break body,
            Err(e) if Instant::now() >= deadline => panic!("node -> ClusterIP: {e}"),
            Err(_) => std::thread::sleep(POLL_EVERY),
        }
    };
    assert_eq!(host_answer, "srv", "the node's namespace reaches srv through the ClusterIP");
    assert!(eventually_connects(&k, ns, "srv", &format!("{cluster_ip}:80")), "srv reaches itself through its Service");
    // The `kubernetes` Service leads pods to the API server (what an in-cluster agent needs).
    let api = format!("{}:443", network::KUBERNETES_SERVICE_IP);
    assert!(eventually_connects(&k, ns, "cli", &api), "a pod reaches the API server through the kubernetes Service");

    // A ServiceAccount kubeconfig authenticates (verifying the server) and has only its RBAC.
    let sa = cluster.service_account_kubeconfig("default", "default").unwrap_or_else(|e| panic!("{e}"));
    let as_sa = k.with_kubeconfig(&sa);
    let (code, out) = as_sa.run_status(&["auth", "can-i", "list", "pods"]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((code, out.trim()), (1, "no"), "the default ServiceAccount may not list pods");
    let (code, out) = as_sa.run_status(&["get", "--raw", "/version"]).unwrap_or_else(|e| panic!("{e}"));
    assert!(code == 0 && out.contains("v1.20.2"), "the ServiceAccount reaches the API server: {out}");

    let uids: BTreeSet<String> = ["srv", "cli"]
        .iter()
        .map(|p| k.get_json(&["-n", ns, "pod", p]).unwrap_or_else(|e| panic!("{e}"))["metadata"]["uid"].to_string())
        .map(|u| u.trim_matches('"').to_owned())
        .collect();
    assert_eq!(pod_logs(&uids).len(), 2, "kubelet keeps pod logs in {}", teardown::POD_LOGS_DIR);
    drop(cluster);
    assert_eq!(leftovers(&name, &dir), Vec::<String>::new(), "the teardown left things behind");
    assert_eq!(pod_logs(&uids), Vec::<PathBuf>::new(), "pod logs of the cluster's pods");
    assert_eq!(MachineState::capture(), before, "the machine's settings and namespace are as before the cluster");
}

/// A pod pinned to node `node` (no scheduler decision involved).
fn pinned_pod(ns: &str, name: &str, node: &str, args: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}\n\
         spec:\n  nodeName: {node}\n  containers:\n  - {{name: c, image: \"{AGNHOST}\", imagePullPolicy: Never, args: {args}}}\n"
    )
}

#[test]
fn pods_on_two_nodes_reach_each_other_across_the_underlay() {
    let test = "pods_on_two_nodes_reach_each_other_across_the_underlay";
    let Some(cache) = cache_or_skip(test) else { return };
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let before = MachineState::capture();
    let cluster = Cluster::start(ClusterConfig { nodes: 2, cache: Some(cache), ..ClusterConfig::default() })
        .unwrap_or_else(|e| panic!("starting a two-node cluster: {e}"));
    eprintln!("{test}: cluster {} with 2 nodes up in {:.1}s", cluster.name(), cluster.startup_time().as_secs_f64());
    let k = cluster.kubectl();
    let (n1, n2) = (&cluster.nodes()[0], &cluster.nodes()[1]);
    assert_ne!(n1.pod_cidr(), n2.pod_cidr());
    let ns = "two";
    let mut yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n");
    yaml.push_str("---\n");
    yaml.push_str(&pinned_pod(ns, "srv", n2.name(), "[netexec, --http-port=8080]"));
    yaml.push_str("---\n");
    yaml.push_str(&pinned_pod(ns, "cli", n1.name(), "[pause]"));
    k.apply(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let srv = running_pod_ip(k, ns, "srv");
    let cli = running_pod_ip(k, ns, "cli");
    assert!(n2.pod_cidr().contains(&srv) && n1.pod_cidr().contains(&cli), "srv {srv} on n2, cli {cli} on n1");
    assert!(connects(k, ns, "cli", &format!("{srv}:8080")), "a pod on n1 reaches a pod on n2");
    assert!(!connects(k, ns, "cli", &format!("{srv}:8089")), "nothing listens on 8089");
    let (name, dir) = (cluster.name().to_owned(), cluster.dir().to_owned());
    drop(cluster);
    assert_eq!(leftovers(&name, &dir), Vec::<String>::new(), "the teardown of both nodes left things behind");
    assert_eq!(MachineState::capture(), before, "the machine's settings and namespace are as before the cluster");
}

/// Run by `a_killed_run_is_cleaned_up_by_lab_clean` in a child process, which it then kills.
/// The child writes `<name> <dir>` to the file named by [`CHILD_ENV`] once its cluster runs
/// pods (a file, as libtest may hold a child's stdout back).
#[test]
#[ignore = "a helper process of a_killed_run_is_cleaned_up_by_lab_clean"]
fn cluster_child_for_the_killed_run_test() {
    let Some(ready_file) = std::env::var_os(CHILD_ENV) else { return };
    let cluster = Cluster::start(ClusterConfig::default()).unwrap_or_else(|e| panic!("child cluster: {e}"));
    let k = cluster.kubectl();
    k.apply(&manifests("killed")).unwrap_or_else(|e| panic!("{e}"));
    running_pod_ip(k, "killed", "srv");
    let tmp = PathBuf::from(&ready_file).with_extension("partial");
    std::fs::write(&tmp, format!("{} {}", cluster.name(), cluster.dir().display())).expect("ready file");
    std::fs::rename(&tmp, &ready_file).expect("ready file");
    std::thread::sleep(CHILD_LIFETIME);
}

#[test]
fn a_killed_run_is_cleaned_up_by_lab_clean() {
    let test = "a_killed_run_is_cleaned_up_by_lab_clean";
    if cache_or_skip(test).is_none() {
        return;
    }
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let before = MachineState::capture();
    let ready_file = std::env::temp_dir().join(ward_lab::netns::unique_name("child-ready"));
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "cluster_child_for_the_killed_run_test", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &ready_file)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the child");
    let deadline = Instant::now() + POD_TIMEOUT + ward_lab::cluster::DEFAULT_START_TIMEOUT;
    let ready = loop {
        if let Ok(text) = std::fs::read_to_string(&ready_file) {
            break text;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the child exited ({status}) before its cluster was up");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("the child's cluster was not up within {:?}", deadline.elapsed());
        }
        std::thread::sleep(POLL_EVERY);
    };
    let _ = std::fs::remove_file(&ready_file);
    // SIGKILL, as a timeout or the OOM killer would: no Drop runs.
    child.kill().expect("killing the child");
    child.wait().expect("reaping the child");
    let (name, dir) = ready.split_once(' ').expect("<name> <dir>");
    let dir = PathBuf::from(dir);
    assert!(!leftovers(name, &dir).is_empty(), "a killed run leaves its cluster behind");
    let uids: BTreeSet<String> =
        std::fs::read_dir(ward_lab::cluster::ClusterNode::kubelet_root_in(&dir.join("n1")).join("pods"))
            .expect("the killed kubelet's pods")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
    assert!(!pod_logs(&uids).is_empty(), "and pod logs");
    assert_eq!(SysctlPlaces::default().read()["vm/overcommit_memory"], "1", "and kubelet's settings");

    let removed = ward_lab::cleanup::stale_labs(Path::new("/sys/fs/bpf"));
    eprintln!("{test}: lab-clean: {removed:#?}");
    assert_eq!(leftovers(name, &dir), Vec::<String>::new(), "lab-clean left things of the killed cluster");
    assert_eq!(pod_logs(&uids), Vec::<PathBuf>::new(), "pod logs of the killed cluster");
    assert_eq!(MachineState::capture(), before, "lab-clean put the machine's settings back");
}
