//! Ward as the CNI of a two-node lab cluster (real kubelets, containerd and kube-proxy on
//! each node, direct routing over the lab's underlay): policy holds between pods on
//! different nodes in both directions, directly and through Services, with every remote
//! pod's identity learned from the API server; and the flow records of cross-node drops name
//! the remote pod. Needs root, the workspace's binaries and the Kubernetes cache; under
//! CI=true all are required.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ward_lab::cluster::{Cluster, ClusterConfig, Kubectl, WardCni, ward_cni};

const AGNHOST: &str = "k8s.gcr.io/e2e-test-images/agnhost:2.21";
const POD_TIMEOUT: Duration = Duration::from_secs(180);
/// Endpoints, kube-proxy's rules and every node's compiled policy each follow a change
/// within a few seconds; a verdict is read once it has held.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// On n1: web (serves 8080) and intruder; on n2: db and other (serve 8080) and cli. Services
/// for web and db.
fn workloads(ns: &str, n1: &str, n2: &str) -> String {
    let pod = |name: &str, node: &str, args: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}\n\
             spec:\n  nodeName: {node}\n  containers:\n  - {{name: c, image: \"{AGNHOST}\", imagePullPolicy: Never, args: {args}}}\n"
        )
    };
    let service = |name: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n\
             spec: {{selector: {{app: {name}}}, ports: [{{port: 80, targetPort: 8080}}]}}\n"
        )
    };
    let serve = "[netexec, --http-port=8080]";
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n{}{}{}{}{}{}{}",
        pod("web", n1, serve),
        pod("intruder", n1, "[pause]"),
        pod("db", n2, serve),
        pod("other", n2, serve),
        pod("cli", n2, "[pause]"),
        service("web"),
        service("db"),
    )
}

/// db admits web on 8080; web admits cli on 8080 and may reach only db on 8080.
fn policies(ns: &str) -> String {
    format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: db, namespace: {ns}}}
spec:
  podSelector: {{matchLabels: {{app: db}}}}
  policyTypes: [Ingress]
  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: web}}}}}}], ports: [{{port: 8080, protocol: TCP}}]}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: web, namespace: {ns}}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  policyTypes: [Ingress, Egress]
  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: cli}}}}}}], ports: [{{port: 8080, protocol: TCP}}]}}]
  egress: [{{to: [{{podSelector: {{matchLabels: {{app: db}}}}}}], ports: [{{port: 8080, protocol: TCP}}]}}]
"#
    )
}

fn running_pod_ip(k: &Kubectl, ns: &str, name: &str) -> Ipv4Addr {
    k.running_pod_ip(ns, name, POD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}

fn cluster_ip(k: &Kubectl, ns: &str, name: &str) -> Ipv4Addr {
    k.cluster_ip(ns, name).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether `pod`'s connections to `to` settle to `want` (see `Kubectl::settles_to`).
fn settles_to(k: &Kubectl, ns: &str, pod: &str, to: &str, want: bool) -> bool {
    k.settles_to(ns, pod, to, want, CONNECT_TIMEOUT, SETTLE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}

/// The dropped flows node `node_dir`'s agent recorded, as JSON records.
fn drops(cli: &Path, node_dir: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(cli)
        .arg("--socket")
        .arg(WardCni::socket(node_dir))
        .args(["observe", "-o", "json", "--last", "2000", "--verdict", "DROPPED"])
        .output()
        .expect("run ward observe");
    assert!(out.status.success(), "ward observe: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn is_flow(f: &serde_json::Value, ns: &str, from: &str, to: &str, direction: &str) -> bool {
    f["source"]["namespace"] == ns
        && f["source"]["pod_name"] == from
        && f["destination"]["namespace"] == ns
        && f["destination"]["pod_name"] == to
        && f["traffic_direction"] == direction
}

#[test]
fn policy_holds_between_pods_on_different_nodes_in_both_directions_and_through_services() {
    let test = "policy_holds_between_pods_on_different_nodes_in_both_directions_and_through_services";
    let Some(cache) = ward_cni::prerequisites(test) else { return };
    let ward = WardCni::locate().unwrap_or_else(|e| panic!("{e:?}"));
    let cli_bin = ward.bins.cli.clone();
    let cluster =
        Cluster::start(ClusterConfig { nodes: 2, cache: Some(cache), cni: Arc::new(ward), ..ClusterConfig::default() })
            .unwrap_or_else(|e| panic!("starting a two-node cluster: {e}"));
    eprintln!("{test}: cluster {} with 2 nodes up in {:.1}s", cluster.name(), cluster.startup_time().as_secs_f64());
    let k = cluster.kubectl().clone();
    let (n1, n2) = (&cluster.nodes()[0], &cluster.nodes()[1]);
    let ns = "mn";
    k.apply(&workloads(ns, n1.name(), n2.name())).unwrap_or_else(|e| panic!("applying the workloads: {e}"));
    let web = running_pod_ip(&k, ns, "web");
    let db = running_pod_ip(&k, ns, "db");
    let other = running_pod_ip(&k, ns, "other");
    running_pod_ip(&k, ns, "intruder");
    running_pod_ip(&k, ns, "cli");
    assert!(n1.pod_cidr().contains(&web) && n2.pod_cidr().contains(&db), "web {web} on n1, db {db} on n2");
    let (web_svc, db_svc) = (format!("{}:80", cluster_ip(&k, ns, "web")), format!("{}:80", cluster_ip(&k, ns, "db")));
    let (web, db, other) = (format!("{web}:8080"), format!("{db}:8080"), format!("{other}:8080"));

    // No policy: every path connects, across nodes and through Services.
    for (from, to) in [("intruder", &db), ("intruder", &db_svc), ("db", &web), ("web", &other), ("cli", &web_svc)] {
        assert!(settles_to(&k, ns, from, to, true), "before any policy: {from} -> {to}");
    }

    k.apply(&policies(ns)).unwrap_or_else(|e| panic!("applying the policies: {e}"));
    // (from, to, allowed, which node decides what)
    let expected: [(&str, &String, bool, &str); 12] = [
        ("web", &db, true, "n1 egress to a remote pod, n2 ingress from a remote pod"),
        ("web", &db_svc, true, "n1 egress decided on the remote backend"),
        ("intruder", &db, false, "n2 ingress: a remote pod no rule admits"),
        ("intruder", &db_svc, false, "n2 ingress through the Service"),
        ("cli", &web, true, "n1 ingress from a remote pod"),
        ("cli", &web_svc, true, "n1 ingress from a remote pod through the Service"),
        ("db", &web, false, "n1 ingress: the remote db is not cli"),
        ("intruder", &web, false, "n1 ingress, same node"),
        ("web", &other, false, "n1 egress: the remote other is not db"),
        ("cli", &other, true, "not isolated, same node"),
        ("intruder", &other, true, "not isolated, across nodes"),
        ("cli", &db, false, "n2 ingress, same node"),
    ];
    let mut wrong = Vec::new();
    for (from, to, allow, why) in expected {
        if !settles_to(&k, ns, from, to, allow) {
            wrong.push(format!("{from} -> {to}: expected {} ({why})", if allow { "allowed" } else { "denied" }));
        }
    }
    assert!(wrong.is_empty(), "cross-node verdicts differ:\n{}", wrong.join("\n"));

    // Each node names the remote pod in its flow records: the identity came from the API.
    let (n1_dir, n2_dir) = (n1.dir().to_owned(), n2.dir().to_owned());
    let on_n2 = drops(&cli_bin, &n2_dir);
    let ingress = on_n2.iter().find(|f| is_flow(f, ns, "intruder", "db", "INGRESS"));
    let ingress = ingress.unwrap_or_else(|| panic!("n2 recorded no ingress drop intruder -> db: {on_n2:#?}"));
    assert_eq!(
        ingress["source"]["labels"],
        serde_json::json!(["app=intruder"]),
        "the remote source's labels: {ingress}"
    );
    assert!(ingress["node_name"] == n2.name(), "{ingress}");
    let on_n1 = drops(&cli_bin, &n1_dir);
    let egress = on_n1.iter().find(|f| is_flow(f, ns, "web", "other", "EGRESS"));
    let egress = egress.unwrap_or_else(|| panic!("n1 recorded no egress drop web -> other: {on_n1:#?}"));
    assert_eq!(egress["l4"]["TCP"]["destination_port"], 8080, "{egress}");
    let reverse = on_n1.iter().find(|f| is_flow(f, ns, "db", "web", "INGRESS"));
    assert!(reverse.is_some(), "n1 recorded no ingress drop db -> web: {on_n1:#?}");
    drop(cluster);
}
