//! Ward as the CNI of the lab's real node, with kube-proxy (iptables mode) translating
//! Services: egress policy holds on the backend a ClusterIP leads to, exactly as on direct
//! pod traffic; a pod reaching itself through its Service is its loopback; the
//! `kubernetes` Service leads to the API server only where an ipBlock allows it; and the
//! flow record of a Service connection's egress drop names the backend pod. Needs root, the
//! workspace's binaries and the Kubernetes cache; under CI=true all are required.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ward_lab::cluster::{Cluster, ClusterConfig, Kubectl, WardCni, network, ward_cni};

const AGNHOST: &str = "k8s.gcr.io/e2e-test-images/agnhost:2.21";
const POD_TIMEOUT: Duration = Duration::from_secs(180);
/// Endpoints, kube-proxy's rules and Ward's compiled policy each follow a change within a few
/// seconds; a verdict is read once it has held.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

fn workloads(ns: &str) -> String {
    let pod = |name: &str, args: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}\n\
             spec:\n  containers:\n  - {{name: c, image: \"{AGNHOST}\", imagePullPolicy: Never, args: {args}}}\n"
        )
    };
    let service = |name: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n\
             spec: {{selector: {{app: {name}}}, ports: [{{port: 80, targetPort: 8080}}]}}\n"
        )
    };
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n{}{}{}{}{}",
        pod("srv", "[netexec, --http-port=8080]"),
        pod("other", "[netexec, --http-port=8080]"),
        pod("cli", "[pause]"),
        service("srv"),
        service("other"),
    )
}

/// cli may reach srv's pods on 8080 and nothing else; srv may reach srv's pods (itself) on
/// 8080, and admits cli and itself.
fn policies(ns: &str, srv_admits_itself: bool) -> String {
    let from_self = if srv_admits_itself { ", {podSelector: {matchLabels: {app: srv}}}" } else { "" };
    format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: cli-egress, namespace: {ns}}}
spec:
  podSelector: {{matchLabels: {{app: cli}}}}
  policyTypes: [Egress]
  egress: [{{to: [{{podSelector: {{matchLabels: {{app: srv}}}}}}], ports: [{{port: 8080, protocol: TCP}}]}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: srv, namespace: {ns}}}
spec:
  podSelector: {{matchLabels: {{app: srv}}}}
  policyTypes: [Ingress, Egress]
  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: cli}}}}}}{from_self}], ports: [{{port: 8080, protocol: TCP}}]}}]
  egress: [{{to: [{{podSelector: {{matchLabels: {{app: srv}}}}}}], ports: [{{port: 8080, protocol: TCP}}]}}]
"#
    )
}

fn api_egress(ns: &str) -> String {
    format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: cli-to-api, namespace: {ns}}}
spec:
  podSelector: {{matchLabels: {{app: cli}}}}
  policyTypes: [Egress]
  egress: [{{to: [{{ipBlock: {{cidr: {}/32}}}}], ports: [{{port: {}, protocol: TCP}}]}}]
"#,
        network::CONTROL_PLANE_IP,
        network::API_PORT
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

#[test]
fn egress_policy_holds_through_services_on_the_backend_they_reach() {
    let test = "egress_policy_holds_through_services_on_the_backend_they_reach";
    let Some(cache) = ward_cni::prerequisites(test) else { return };
    let ward = WardCni::locate().unwrap_or_else(|e| panic!("{e:?}"));
    let cli_bin = ward.bins.cli.clone();
    let cluster = Cluster::start(ClusterConfig { cache: Some(cache), cni: Arc::new(ward), ..ClusterConfig::default() })
        .unwrap_or_else(|e| panic!("starting the cluster: {e}"));
    let k = cluster.kubectl().clone();
    let node_dir = cluster.nodes()[0].dir().to_owned();
    let ns = "svc";
    k.apply(&workloads(ns)).unwrap_or_else(|e| panic!("applying the workloads: {e}"));
    let (srv, other) = (running_pod_ip(&k, ns, "srv"), running_pod_ip(&k, ns, "other"));
    running_pod_ip(&k, ns, "cli");
    let (srv_svc, other_svc) = (cluster_ip(&k, ns, "srv"), cluster_ip(&k, ns, "other"));
    let api_svc = format!("{}:443", network::KUBERNETES_SERVICE_IP);

    // No policy yet: everything connects, through Services too.
    for to in [format!("{srv_svc}:80"), format!("{other_svc}:80"), api_svc.clone()] {
        assert!(settles_to(&k, ns, "cli", &to, true), "before any policy: cli -> {to}");
    }

    k.apply(&policies(ns, true)).unwrap_or_else(|e| panic!("applying the policies: {e}"));
    // The same verdict through the Service as to its backend directly.
    assert!(settles_to(&k, ns, "cli", &format!("{srv}:8080"), true), "cli -> srv directly");
    assert!(settles_to(&k, ns, "cli", &format!("{srv_svc}:80"), true), "cli -> srv through its Service");
    assert!(settles_to(&k, ns, "cli", &format!("{other}:8080"), false), "cli -> other directly is denied");
    assert!(settles_to(&k, ns, "cli", &format!("{other_svc}:80"), false), "cli -> other through its Service is denied");
    // The kubernetes Service: its backend (the API server) is outside the cluster, not allowed.
    assert!(settles_to(&k, ns, "cli", &api_svc, false), "cli -> kubernetes Service without an ipBlock");
    // Hairpin: srv reaches itself through its Service.
    assert!(settles_to(&k, ns, "srv", &format!("{srv_svc}:80"), true), "srv -> itself through its Service");

    // The flow record of the denied Service connection: cli's egress, to the backend pod.
    let out = Command::new(&cli_bin)
        .args(["--socket"])
        .arg(WardCni::socket(&node_dir))
        .args(["observe", "-o", "json", "--last", "1000", "--verdict", "DROPPED", "--from-pod", "svc/cli"])
        .output()
        .expect("run ward observe");
    assert!(out.status.success(), "ward observe: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let to_other = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|f| f["destination"]["pod_name"] == "other" && f["traffic_direction"] == "EGRESS");
    let flow = to_other.unwrap_or_else(|| panic!("no egress drop of cli towards the pod other in:\n{text}"));
    assert_eq!(flow["l4"]["TCP"]["destination_port"], 8080, "the backend's port: {flow}");
    assert_eq!(flow["source"]["pod_name"], "cli", "{flow}");

    // srv no longer admits itself, and may still reach itself through its Service: a pod
    // reaching itself is its own loopback (kube-proxy gives the hairpin a node address; Ward
    // recognises it and never polices it), as the pod's own loopback is never policed.
    k.apply(&policies(ns, false)).unwrap_or_else(|e| panic!("{e}"));
    assert!(settles_to(&k, ns, "cli", &format!("{srv}:8080"), true), "the new policy is in force");
    assert!(settles_to(&k, ns, "srv", &format!("{srv_svc}:80"), true), "srv -> itself as its loopback");
    assert!(settles_to(&k, ns, "srv", &format!("{other_svc}:80"), false), "srv -> other through its Service is denied");

    // An ipBlock for the API server's address and port opens the kubernetes Service.
    k.apply(&api_egress(ns)).unwrap_or_else(|e| panic!("{e}"));
    assert!(settles_to(&k, ns, "cli", &api_svc, true), "cli -> kubernetes Service with the ipBlock");
    assert!(settles_to(&k, ns, "cli", &format!("{other_svc}:80"), false), "and still not other");
    drop(cluster);
}
