//! `cargo xtask demo --cluster`: the lab Kubernetes cluster with Ward as its CNI (as `cargo
//! xtask e2e --cni ward` brings it up), a small shop applied with `kubectl` (Deployments,
//! Services, NetworkPolicies) and an intruder in another namespace, then the reachability
//! matrix of the real kubelet-run pods, to each pod directly and through its ClusterIP
//! Service, every cell a real `agnhost connect` run with `kubectl exec` and checked against
//! what the policies say. Ends with the agent's own flow records of one denied Service path,
//! and tears the cluster down unless `--keep`.

use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ward_lab::cluster::{Cluster, ClusterConfig, Kubectl, WardCni, cache};

/// How long the Deployments' pods may take to run (image import, sandbox, CNI ADD).
const POD_TIMEOUT: Duration = Duration::from_secs(180);
/// How long Endpoints, kube-proxy's rules and the servers may take to answer on the paths the
/// policies allow, before the matrix is measured.
const WARMUP_TIMEOUT: Duration = Duration::from_secs(90);
/// One probe's connect timeout; `kubectl exec` itself is bounded by the lab's kubectl deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Probes run at the same time (each is a kubectl exec; the machine has 2 shared cores).
const PARALLEL_PROBES: usize = 4;
const POLL_EVERY: Duration = Duration::from_millis(500);

/// One Deployment of the sample application: its namespace, name (also its `app` label and
/// its Service's name) and the port it serves, if it serves one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Workload {
    namespace: &'static str,
    name: &'static str,
    port: Option<u16>,
}

impl Workload {
    fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

const WORKLOADS: [Workload; 4] = [
    Workload { namespace: "shop", name: "frontend", port: Some(80) },
    Workload { namespace: "shop", name: "api", port: Some(8080) },
    Workload { namespace: "shop", name: "db", port: Some(5432) },
    Workload { namespace: "attacker", name: "intruder", port: None },
];

/// What the policies allow: (from, to, why). Every other path between two different
/// workloads is denied, directly and through the Service alike.
const ALLOWED: [(&str, &str, &str); 3] = [
    ("shop/frontend", "shop/api", "frontend's egress to api:8080, api's ingress from frontend"),
    ("shop/api", "shop/db", "api's egress to db:5432, db's ingress from api"),
    ("attacker/intruder", "shop/frontend", "the storefront admits every namespace on port 80"),
];

/// The denied Service path whose flow records the demo shows.
const OBSERVED_DENIAL: (&str, &str) = ("attacker/intruder", "shop/db");

/// The sample application (every container agnhost, the image setup builds into the cache
/// and the node imports: never pulled): namespaces, Deployments, Services and the shop's
/// NetworkPolicies (default deny in `shop`, then only what the shop needs). The intruder's
/// namespace has no policy: its egress is open, and the shop's ingress rules alone decide.
const APP: &str = r#"apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {name: shop}}
---
apiVersion: v1
kind: Namespace
metadata: {name: attacker, labels: {name: attacker}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: frontend, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: frontend}}
  template:
    metadata: {labels: {app: frontend}}
    spec:
      containers:
      - {name: frontend, image: "k8s.gcr.io/e2e-test-images/agnhost:2.21", imagePullPolicy: Never, args: [netexec, --http-port=80]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      containers:
      - {name: api, image: "k8s.gcr.io/e2e-test-images/agnhost:2.21", imagePullPolicy: Never, args: [netexec, --http-port=8080]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: db, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
      - {name: db, image: "k8s.gcr.io/e2e-test-images/agnhost:2.21", imagePullPolicy: Never, args: [netexec, --http-port=5432]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: intruder, namespace: attacker}
spec:
  replicas: 1
  selector: {matchLabels: {app: intruder}}
  template:
    metadata: {labels: {app: intruder}}
    spec:
      containers:
      - {name: intruder, image: "k8s.gcr.io/e2e-test-images/agnhost:2.21", imagePullPolicy: Never, args: [pause]}
---
apiVersion: v1
kind: Service
metadata: {name: frontend, namespace: shop}
spec: {selector: {app: frontend}, ports: [{port: 80, targetPort: 80, protocol: TCP}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec: {selector: {app: api}, ports: [{port: 8080, targetPort: 8080, protocol: TCP}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {selector: {app: db}, ports: [{port: 5432, targetPort: 5432, protocol: TCP}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: shop}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: frontend, namespace: shop}
spec:
  podSelector: {matchLabels: {app: frontend}}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{namespaceSelector: {}}], ports: [{port: 80, protocol: TCP}]}]
  egress: [{to: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: 8080, protocol: TCP}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{podSelector: {matchLabels: {app: frontend}}}], ports: [{port: 8080, protocol: TCP}]}]
  egress: [{to: [{podSelector: {matchLabels: {app: db}}}], ports: [{port: 5432, protocol: TCP}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
  ingress: [{from: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: 5432, protocol: TCP}]}]
"#;

/// A workload's running pod.
#[derive(Clone, Debug)]
struct RunningPod {
    name: String,
    ip: String,
}

/// One cell of the matrix: a probe from `from` to `to`'s pod directly or through its Service.
#[derive(Clone, Debug)]
struct Cell {
    from: usize,
    to: usize,
    via_service: bool,
    target: String,
}

pub fn demo(keep: bool) -> anyhow::Result<ExitCode> {
    if !ward_lab::privileged::is_root() {
        bail!("the cluster demo needs root (network namespaces, kubelet, containerd, eBPF)");
    }
    let started = Instant::now();
    crate::clean_stale_labs();
    let ward = WardCni::locate().context("locating Ward's binaries")?;
    let cli = ward.bins.cli.clone();
    println!("demo: starting a lab Kubernetes cluster (1 node, CNI ward, kube-proxy in iptables mode)");
    let cluster = Cluster::start(ClusterConfig { cni: Arc::new(ward), ..ClusterConfig::default() })
        .context("starting the lab cluster")?;
    println!(
        "demo: cluster {} up in {:.0}s ({})",
        cluster.name(),
        cluster.startup_time().as_secs_f64(),
        cluster.dir().display()
    );
    let outcome = run(&cluster, &cli);
    if keep {
        print_keep(&cluster, &cli);
        // Its programs, namespaces and directory stay; `cargo xtask lab-clean` finds them by
        // name once this process is gone.
        std::mem::forget(cluster);
    } else {
        drop(cluster);
        println!("demo: cluster removed (use --keep to leave it running)");
    }
    let ok = outcome?;
    println!("demo: {:.0}s in all", started.elapsed().as_secs_f64());
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Everything between the cluster's start and its teardown; true when every cell matched.
fn run(cluster: &Cluster, cli: &std::path::Path) -> anyhow::Result<bool> {
    let k = cluster.kubectl();
    let version = k.run(&["version", "--short"]).context("kubectl version")?;
    for line in version.lines().filter(|l| l.starts_with("Server")) {
        println!("demo: API server: {}", line.trim_start_matches("Server Version:").trim());
    }

    let applied = k.apply(APP).context("kubectl apply of the sample application")?;
    println!("demo: kubectl apply -f - (the sample application):");
    for line in applied.lines() {
        println!("  {line}");
    }
    let pods = WORKLOADS.iter().map(|w| running_pod(k, w)).collect::<anyhow::Result<Vec<_>>>()?;
    let mut service_ips = Vec::new();
    for (w, p) in WORKLOADS.iter().zip(&pods) {
        let svc = match w.port {
            Some(_) => Some(cluster_ip(k, w)?),
            None => None,
        };
        println!(
            "  pod {:<38} {:<12} {}",
            format!("{}/{}", w.namespace, p.name),
            p.ip,
            svc.as_ref().map_or(String::new(), |ip| format!("Service {}/{} {ip}", w.namespace, w.name))
        );
        service_ips.push(svc);
    }

    let cells = cells(&pods, &service_ips);
    // Endpoints, kube-proxy's rules and the servers follow the apply within seconds; the
    // matrix is measured once every allowed path answers, each cell then probed once.
    print!("demo: waiting for the allowed paths to answer ... ");
    let warm = warm_up(k, &pods, &cells)?;
    println!("{:.0}s", warm.as_secs_f64());
    println!(
        "\nReachability ({} cells, each a real connect with a {}s timeout):",
        cells.len(),
        CONNECT_TIMEOUT.as_secs()
    );
    for (from, to, why) in ALLOWED {
        println!("  should connect: {from} -> {to} ({why})");
    }
    println!("  every other path should be denied (directly and through the Service)");
    let measured_at = Instant::now();
    let got = measure(k, &pods, &cells)?;
    let ok = print_matrix(&cells, &got);
    println!("  measured in {:.0}s", measured_at.elapsed().as_secs_f64());

    let observed = observe_denial(cluster, cli, &pods, &service_ips)?;
    println!(
        "\n{}",
        if ok {
            "demo: every path behaved as the policies say"
        } else {
            "demo: some paths did NOT behave as expected (✗)"
        }
    );
    Ok(ok && observed)
}

/// Probes [`OBSERVED_DENIAL`] through the Service once more and prints the node agent's flow
/// records of that one attempt: they name the backend pod kube-proxy translated the ClusterIP
/// to, and the policies that isolate it. False if the agent recorded no drop of it.
fn observe_denial(
    cluster: &Cluster,
    cli: &std::path::Path,
    pods: &[RunningPod],
    service_ips: &[Option<String>],
) -> anyhow::Result<bool> {
    let (from, to) = OBSERVED_DENIAL;
    let (fi, ti) = (index_of(from)?, index_of(to)?);
    let (src, dst) = (&WORKLOADS[fi], &WORKLOADS[ti]);
    let from_pod = format!("{}/{}", src.namespace, pods[fi].name);
    let to_pod = format!("{}/{}", dst.namespace, pods[ti].name);
    let service = format!(
        "{}:{}",
        service_ips[ti].as_deref().context("the observed target has no Service")?,
        dst.port.unwrap_or(0)
    );
    let node_dir = cluster.nodes().first().context("the cluster has no node")?.dir().to_owned();
    let socket = WardCni::socket(&node_dir);
    println!(
        "
The denied path {from} -> Service {to} ({service}), probed once more, seen by the node's agent:"
    );
    let probed_at = Instant::now();
    let connected = connects(cluster.kubectl(), src.namespace, &pods[fi].name, &service)?;
    // Only this probe's records: the age of its start (the CLI's clock reads a little later,
    // and the first SYN leaves well after kubectl exec starts).
    let since = format!("{}ms", probed_at.elapsed().as_millis());
    let args = ["observe", "--since", &since, "--from-pod", &from_pod, "--to-pod", &to_pod, "--verdict", "DROPPED"];
    println!("  $ ward --socket {} {}", socket.display(), args.join(" "));
    let out = Command::new(cli).arg("--socket").arg(&socket).args(args).output().context("running ward observe")?;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        println!("  {line}");
    }
    if !out.status.success() {
        println!("  ✗ ward observe failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        return Ok(false);
    }
    if connected {
        println!("  ✗ {from} connected to {service}");
        return Ok(false);
    }
    if text.trim().is_empty() {
        println!("  ✗ the agent recorded no drop of this attempt");
        return Ok(false);
    }
    Ok(true)
}

fn index_of(id: &str) -> anyhow::Result<usize> {
    WORKLOADS.iter().position(|w| w.id() == id).with_context(|| format!("no workload {id}"))
}

fn expected(from: &Workload, to: &Workload) -> bool {
    let (from, to) = (from.id(), to.id());
    ALLOWED.iter().any(|(f, t, _)| *f == from && *t == to)
}

/// The Deployment's one pod once it runs with an address.
fn running_pod(k: &Kubectl, w: &Workload) -> anyhow::Result<RunningPod> {
    let what = format!("a running pod of Deployment {}", w.id());
    let selector = format!("app={}", w.name);
    let pod = k.wait_for(&what, POD_TIMEOUT, |k| {
        let list = k.run(&[
            "-n",
            w.namespace,
            "get",
            "pods",
            "-l",
            &selector,
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.status.phase} {.status.podIP} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
        ])?;
        let running: Vec<RunningPod> = list
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // A terminating pod (deletionTimestamp set) has a fourth field.
                match f.as_slice() {
                    [name, "Running", ip] => Some(RunningPod { name: (*name).to_owned(), ip: (*ip).to_owned() }),
                    _ => None,
                }
            })
            .collect();
        Ok(match running.as_slice() {
            [one] => Ok(one.clone()),
            _ => Err(format!("pods: {:?}", list.trim())),
        })
    })?;
    Ok(pod)
}

fn cluster_ip(k: &Kubectl, w: &Workload) -> anyhow::Result<String> {
    let ip = k.run(&["-n", w.namespace, "get", "service", w.name, "-o", "jsonpath={.spec.clusterIP}"])?;
    let ip = ip.trim();
    if ip.parse::<std::net::Ipv4Addr>().is_err() {
        bail!("Service {}: clusterIP {ip:?} is not an IPv4 address", w.id());
    }
    Ok(ip.to_owned())
}

/// Every path between two different workloads to a served port: the pod's IP, then its
/// Service's ClusterIP (the Service's port is the pod's).
fn cells(pods: &[RunningPod], service_ips: &[Option<String>]) -> Vec<Cell> {
    let mut cells = Vec::new();
    for from in 0..WORKLOADS.len() {
        for (to, w) in WORKLOADS.iter().enumerate() {
            let (Some(port), Some(svc)) = (w.port, &service_ips[to]) else { continue };
            if from == to {
                continue;
            }
            cells.push(Cell { from, to, via_service: false, target: format!("{}:{port}", pods[to].ip) });
            cells.push(Cell { from, to, via_service: true, target: format!("{svc}:{port}") });
        }
    }
    cells
}

/// `kubectl exec` of `/agnhost connect` (the lab's helper): whether it connected. An exec
/// that fails for another reason than the probe's verdict is an error, not a denial.
fn connects(k: &Kubectl, ns: &str, pod: &str, to: &str) -> anyhow::Result<bool> {
    Ok(k.agnhost_connects(ns, pod, to, CONNECT_TIMEOUT)?)
}

/// Waits until every allowed cell connects (bounded by [`WARMUP_TIMEOUT`]); returns how long.
fn warm_up(k: &Kubectl, pods: &[RunningPod], cells: &[Cell]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let deadline = started + WARMUP_TIMEOUT;
    let mut pending: Vec<&Cell> = cells.iter().filter(|c| expected(&WORKLOADS[c.from], &WORKLOADS[c.to])).collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for c in pending {
            let w = &WORKLOADS[c.from];
            // A failed exec (the container just started) is "not yet" here.
            if !connects(k, w.namespace, &pods[c.from].name, &c.target).unwrap_or(false) {
                still.push(c);
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let names: Vec<String> =
                pending.iter().map(|c| format!("{} -> {}", WORKLOADS[c.from].id(), c.target)).collect();
            println!("not all within {WARMUP_TIMEOUT:?}; measuring anyway (still failing: {})", names.join(", "));
            break;
        }
        std::thread::sleep(POLL_EVERY);
    }
    Ok(started.elapsed())
}

/// Probes every cell once, [`PARALLEL_PROBES`] at a time.
fn measure(k: &Kubectl, pods: &[RunningPod], cells: &[Cell]) -> anyhow::Result<Vec<bool>> {
    let next = AtomicUsize::new(0);
    let results: Vec<anyhow::Result<(usize, bool)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..PARALLEL_PROBES.min(cells.len()))
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(c) = cells.get(i) else { break };
                        let w = &WORKLOADS[c.from];
                        mine.push(connects(k, w.namespace, &pods[c.from].name, &c.target).map(|got| (i, got)));
                    }
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|_| vec![Err(anyhow::anyhow!("a probe thread panicked"))]))
            .collect()
    });
    let mut got = vec![false; cells.len()];
    for r in results {
        let (i, connected) = r?;
        got[i] = connected;
    }
    Ok(got)
}

/// Prints the matrix, rows the sources, columns each served workload directly and through
/// its Service, each cell marked against [`ALLOWED`]; true if every cell matched.
fn print_matrix(cells: &[Cell], got: &[bool]) -> bool {
    let width = 20;
    let targets: Vec<(usize, bool)> = WORKLOADS
        .iter()
        .enumerate()
        .filter(|(_, w)| w.port.is_some())
        .flat_map(|(i, _)| [(i, false), (i, true)])
        .collect();
    let column = |(i, svc): (usize, bool)| {
        let w = &WORKLOADS[i];
        format!("{}{}:{}", if svc { "svc " } else { "pod " }, w.name, w.port.unwrap_or(0))
    };
    let mut line = format!("  {:<width$}", "from \\ to");
    for t in &targets {
        line.push_str(&format!("{:<width$}", column(*t)));
    }
    println!("{}", line.trim_end());
    let mut all_ok = true;
    let mut notes = Vec::new();
    for (from, w) in WORKLOADS.iter().enumerate() {
        let mut line = format!("  {:<width$}", w.id());
        for &(to, svc) in &targets {
            let found = cells.iter().position(|c| c.from == from && c.to == to && c.via_service == svc);
            let cell = match found {
                None => "-".to_owned(),
                Some(i) => {
                    let want = expected(w, &WORKLOADS[to]);
                    let word = if got[i] { "allowed" } else { "denied" };
                    if got[i] == want {
                        format!("{word} ✓")
                    } else {
                        all_ok = false;
                        notes.push(format!(
                            "{} -> {} ({}): {word}, expected {}",
                            w.id(),
                            column((to, svc)),
                            cells[i].target,
                            if want { "allowed" } else { "denied" }
                        ));
                        format!("{word} ✗")
                    }
                }
            };
            line.push_str(&format!("{cell:<width$}"));
        }
        println!("{}", line.trim_end());
    }
    for n in notes {
        println!("  ✗ {n}");
    }
    all_ok
}

/// How to reach the kept cluster: kubectl runs inside the control plane's namespace, the only
/// place the API server is reachable from.
fn print_keep(cluster: &Cluster, cli: &std::path::Path) {
    let kubectl = cluster.cache().program(cache::KUBECTL);
    let netns = cluster.control_plane_netns().map_or("?", |n| n.name()).to_owned();
    let kubeconfig = cluster.admin_kubeconfig();
    println!("\nThe cluster is still running ({}). Use it:", cluster.name());
    println!("  kubeconfig: {}", kubeconfig.display());
    println!("  network namespace to run kubectl in: {netns}");
    println!("  ip netns exec {netns} {} --kubeconfig {} get pods -A -o wide", kubectl.display(), kubeconfig.display());
    println!(
        "  ip netns exec {netns} {} --kubeconfig {} -n shop get deploy,svc,networkpolicy",
        kubectl.display(),
        kubeconfig.display()
    );
    if let Some(node) = cluster.nodes().first() {
        println!("  {} --socket {} status", cli.display(), WardCni::socket(node.dir()).display());
        println!("  agent log: {}", WardCni::log(node.dir()).display());
    }
    println!("Tear it down: cargo xtask lab-clean");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table the matrix is judged by names exactly the app's Deployments, Services and
    /// ports.
    #[test]
    fn the_workload_table_matches_the_applied_manifests() {
        for w in WORKLOADS {
            let deployment = format!("kind: Deployment\nmetadata: {{name: {}, namespace: {}}}", w.name, w.namespace);
            assert!(APP.contains(&deployment), "no Deployment {}", w.id());
            let service = format!("kind: Service\nmetadata: {{name: {}, namespace: {}}}", w.name, w.namespace);
            assert_eq!(APP.contains(&service), w.port.is_some(), "Service {}", w.id());
            if let Some(port) = w.port {
                assert!(APP.contains(&format!("ports: [{{port: {port}, targetPort: {port}, protocol: TCP}}]")));
                let container = format!(
                    "name: {}, image: \"{}\", imagePullPolicy: Never, args: [netexec, --http-port={port}]",
                    w.name,
                    cache::AGNHOST_IMAGE.reference
                );
                assert!(APP.contains(&container), "{} serves {port} with agnhost", w.id());
            }
        }
        for (from, to, _) in ALLOWED {
            index_of(from).unwrap_or_else(|e| panic!("{e}"));
            index_of(to).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// Both paths to every served workload from every other, none to itself or to the
    /// intruder (it serves nothing).
    #[test]
    fn the_matrix_has_a_direct_and_a_service_cell_per_path() {
        let pods: Vec<RunningPod> = (0..WORKLOADS.len())
            .map(|i| RunningPod { name: format!("p{i}"), ip: format!("10.244.1.{}", i + 10) })
            .collect();
        let svcs: Vec<Option<String>> =
            WORKLOADS.iter().enumerate().map(|(i, w)| w.port.map(|_| format!("10.96.0.{}", i + 10))).collect();
        let cells = cells(&pods, &svcs);
        // 4 sources x 3 served targets, less the 3 workloads to themselves, twice.
        assert_eq!(cells.len(), (4 * 3 - 3) * 2);
        assert!(cells.iter().all(|c| c.from != c.to && WORKLOADS[c.to].port.is_some()));
        let api = index_of("shop/api").unwrap();
        let frontend = index_of("shop/frontend").unwrap();
        let to_api: Vec<&str> =
            cells.iter().filter(|c| c.from == frontend && c.to == api).map(|c| c.target.as_str()).collect();
        assert_eq!(to_api, ["10.244.1.11:8080", "10.96.0.11:8080"]);
    }

    #[test]
    fn only_the_listed_paths_are_expected_to_connect() {
        let w = |id: &str| WORKLOADS[index_of(id).unwrap()];
        assert!(expected(&w("shop/frontend"), &w("shop/api")));
        assert!(!expected(&w("shop/api"), &w("shop/frontend")), "allowed paths are one-way");
        assert!(!expected(&w("shop/frontend"), &w("shop/db")));
        assert!(!expected(&w("attacker/intruder"), &w("shop/db")));
        assert!(expected(&w("attacker/intruder"), &w("shop/frontend")));
    }
}
