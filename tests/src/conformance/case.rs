//! Parsing a case file into steps and checks. Strict: a key or value the harness does not
//! know is an error naming it (its case fails, it is never skipped), because silently
//! ignoring, say, `cluster.dns` or a probe's `http` would report a pass for something never
//! tested.

use std::fmt;

use serde::Deserialize;
use serde_yaml::Value;

use crate::http::HttpRequest;
use crate::spec::{Family, Labels, NamespaceSpec, PodRef, PodSpec, Protocol};

use super::dns::{DnsRecordSpec, ExternalSpec, Target};
use super::matrix::{self, Matrix};
use super::model;

/// The objects `apply` can carry today (apiVersion, kind).
pub const SUPPORTED_OBJECTS: [(&str, &str); 2] =
    [("networking.k8s.io/v1", "NetworkPolicy"), ("policy.ward.dev/v1alpha1", "WardNetworkPolicy")];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CaseError {
    #[error("{0}")]
    Yaml(String),
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

fn invalid(path: impl Into<String>, message: impl Into<String>) -> CaseError {
    CaseError::Invalid { path: path.into(), message: message.into() }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    pub name: String,
    /// `None` for model cases (the 9-pod lab), `Some` for scenario files.
    pub cluster: Option<ClusterSpec>,
    pub steps: Vec<Step>,
}

impl Case {
    pub fn is_model(&self) -> bool {
        self.cluster.is_none()
    }

    /// The cluster the case starts from.
    pub fn initial_cluster(&self) -> ClusterSpec {
        self.cluster.clone().unwrap_or_else(model::cluster)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    #[serde(default)]
    pub namespaces: Vec<NamespaceSpec>,
    #[serde(default)]
    pub pods: Vec<PodSpec>,
    /// The DNS extension (`conformance::dns`): hosts outside the cluster and the lab's
    /// DNS records.
    #[serde(default)]
    pub external: Vec<ExternalSpec>,
    #[serde(default)]
    pub dns: Vec<DnsRecordSpec>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub action: Action,
    pub probes: Vec<ProbeSet>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create or replace each object (placeholders still unresolved).
    Apply(Vec<Value>),
    UpdatePodLabels {
        pod: PodRef,
        labels: Labels,
    },
    UpdateNamespaceLabels {
        namespace: String,
        labels: Labels,
    },
    DeletePolicy {
        namespace: String,
        name: String,
    },
    CreatePod(PodSpec),
    DeletePod(PodRef),
}

impl Action {
    /// The step key, for messages.
    pub fn key(&self) -> &'static str {
        match self {
            Action::Apply(_) => "apply",
            Action::UpdatePodLabels { .. } => "update_pod_labels",
            Action::UpdateNamespaceLabels { .. } => "update_namespace_labels",
            Action::DeletePolicy { .. } => "delete_policy",
            Action::CreatePod(_) => "create_pod",
            Action::DeletePod(_) => "delete_pod",
        }
    }
}

/// What one probe entry of a step checks.
#[derive(Clone, Debug, PartialEq)]
pub enum ProbeSet {
    /// Every ordered pair of model pods on one port (diagonal not checked).
    Matrix { protocol: Protocol, port: u16, family: Family, matrix: Matrix },
    /// One pair.
    Single(Check),
}

impl ProbeSet {
    /// The individual checks, diagonal left out.
    pub fn checks(&self) -> Vec<Check> {
        match self {
            ProbeSet::Single(c) => vec![c.clone()],
            ProbeSet::Matrix { protocol, port, family, matrix } => {
                let pods = model::pods();
                let mut out = Vec::new();
                for (i, from) in pods.iter().enumerate() {
                    for (j, to) in pods.iter().enumerate() {
                        if i != j {
                            out.push(Check {
                                from: from.clone(),
                                to: Target::Pod(to.clone()),
                                port: *port,
                                protocol: *protocol,
                                family: *family,
                                allow: matrix.allowed(i, j),
                                notation: Notation::Matrix,
                                http: None,
                            });
                        }
                    }
                }
                out
            }
        }
    }
}

/// How a check's expectation was written, so failures read like the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notation {
    /// `.` / `X`
    Matrix,
    /// `allow` / `deny`
    Words,
}

/// One expected outcome: a connection from one pod to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub from: PodRef,
    pub to: Target,
    pub port: u16,
    pub protocol: Protocol,
    pub family: Family,
    pub allow: bool,
    pub notation: Notation,
    /// The HTTP extension: the request the probe sends (`allow` = its `200` arrives).
    pub http: Option<HttpRequest>,
}

impl Check {
    pub fn word(&self, allowed: bool) -> &'static str {
        match (self.notation, allowed) {
            (Notation::Matrix, true) => ".",
            (Notation::Matrix, false) => "X",
            (Notation::Words, true) => "allow",
            (Notation::Words, false) => "deny",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "from {} to {} {}/{}", self.from, self.to, self.protocol, self.port)?;
        if self.family != Family::IPv4 {
            write!(f, " ({})", self.family)?;
        }
        if let Some(h) = &self.http {
            write!(f, " {} {}", h.method, h.path)?;
        }
        Ok(())
    }
}

// ---- the file's shape ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: String,
    // Provenance only.
    #[serde(default)]
    #[expect(dead_code, reason = "documentation in the file, accepted and not used")]
    upstream: Option<String>,
    #[serde(default)]
    #[expect(dead_code, reason = "documentation in the file, accepted and not used")]
    origin: Option<String>,
    #[serde(default)]
    cluster: Option<ClusterSpec>,
    steps: Vec<RawStep>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    apply: Option<Vec<Value>>,
    update_pod_labels: Option<RawPodLabels>,
    update_namespace_labels: Option<RawNamespaceLabels>,
    delete_policy: Option<RawObjectRef>,
    create_pod: Option<PodSpec>,
    delete_pod: Option<RawObjectRef>,
    #[serde(default)]
    probes: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPodLabels {
    pod: PodRef,
    labels: Labels,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNamespaceLabels {
    namespace: String,
    labels: Labels,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawObjectRef {
    namespace: String,
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatrixProbe {
    protocol: Protocol,
    port: u16,
    #[serde(default)]
    family: Family,
    matrix: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSingleProbe {
    from: PodRef,
    to: String,
    port: u16,
    protocol: Protocol,
    #[serde(default)]
    family: Family,
    expect: Expect,
    #[serde(default)]
    http: Option<HttpRequest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Allow,
    Deny,
}

/// Parses and validates one case file.
pub fn parse(text: &str) -> Result<Case, CaseError> {
    let raw: RawCase = serde_yaml::from_str(text).map_err(|e| CaseError::Yaml(e.to_string()))?;
    if let Some(c) = &raw.cluster {
        validate_cluster(c)?;
    }
    let model = raw.cluster.is_none();
    let mut steps = Vec::new();
    for (i, s) in raw.steps.into_iter().enumerate() {
        steps.push(parse_step(i, s, model, raw.cluster.as_ref())?);
    }
    Ok(Case { name: raw.name, cluster: raw.cluster, steps })
}

fn validate_cluster(c: &ClusterSpec) -> Result<(), CaseError> {
    for (i, p) in c.pods.iter().enumerate() {
        if !c.namespaces.iter().any(|n| n.name == p.namespace) {
            return Err(invalid(
                format!("cluster.pods[{i}]"),
                format!("pod {} is in namespace {}, which cluster.namespaces does not list", p.pod_ref(), p.namespace),
            ));
        }
        if c.pods[..i].iter().any(|q| q.pod_ref() == p.pod_ref()) {
            return Err(invalid(format!("cluster.pods[{i}]"), format!("pod {} is listed twice", p.pod_ref())));
        }
    }
    super::dns::validate(&c.external, &c.dns).map_err(|(path, message)| invalid(path, message))
}

fn parse_step(i: usize, s: RawStep, model: bool, cluster: Option<&ClusterSpec>) -> Result<Step, CaseError> {
    let path = format!("steps[{i}]");
    let mut actions = Vec::new();
    if let Some(objs) = s.apply {
        for (j, obj) in objs.iter().enumerate() {
            check_supported(&format!("{path}.apply[{j}]"), obj)?;
        }
        actions.push(Action::Apply(objs));
    }
    if let Some(u) = s.update_pod_labels {
        actions.push(Action::UpdatePodLabels { pod: u.pod, labels: u.labels });
    }
    if let Some(u) = s.update_namespace_labels {
        actions.push(Action::UpdateNamespaceLabels { namespace: u.namespace, labels: u.labels });
    }
    if let Some(d) = s.delete_policy {
        actions.push(Action::DeletePolicy { namespace: d.namespace, name: d.name });
    }
    if let Some(p) = s.create_pod {
        actions.push(Action::CreatePod(p));
    }
    if let Some(d) = s.delete_pod {
        actions.push(Action::DeletePod(PodRef { namespace: d.namespace, name: d.name }));
    }
    if actions.len() != 1 {
        let keys: Vec<&str> = actions.iter().map(Action::key).collect();
        return Err(invalid(path, format!("a step needs exactly one action key, found {keys:?}")));
    }
    let action = actions.remove(0);
    let mut probes = Vec::new();
    for (j, v) in s.probes.into_iter().enumerate() {
        let ppath = format!("{path}.probes[{j}]");
        let err = |e: serde_yaml::Error| invalid(ppath.clone(), e.to_string());
        let set = if model {
            let p: RawMatrixProbe = serde_yaml::from_value(v).map_err(err)?;
            let matrix = matrix::parse(&p.matrix).map_err(|m| invalid(format!("{ppath}.matrix"), m))?;
            ProbeSet::Matrix { protocol: p.protocol, port: p.port, family: p.family, matrix }
        } else {
            let p: RawSingleProbe = serde_yaml::from_value(v).map_err(err)?;
            if p.http.is_some() && p.protocol != Protocol::Tcp {
                return Err(invalid(format!("{ppath}.http"), "an HTTP probe needs protocol TCP"));
            }
            // `ns/pod`, `external/<host>` (a `cluster.external` host) or `dns:<name>`.
            let to = Target::parse(&p.to).ok_or_else(|| {
                invalid(
                    format!("{ppath}.to"),
                    format!("probe target `{}` is not namespace/pod, external/HOST or dns:NAME", p.to),
                )
            })?;
            if let Target::External(host) = &to
                && !cluster.is_some_and(|c| c.external.iter().any(|h| &h.name == host))
            {
                return Err(invalid(
                    format!("{ppath}.to"),
                    format!("probe target `{}`: no such host in cluster.external", p.to),
                ));
            }
            ProbeSet::Single(Check {
                from: p.from,
                to,
                port: p.port,
                protocol: p.protocol,
                family: p.family,
                allow: matches!(p.expect, Expect::Allow),
                notation: Notation::Words,
                http: p.http,
            })
        };
        probes.push(set);
    }
    Ok(Step { action, probes })
}

fn check_supported(path: &str, obj: &Value) -> Result<(), CaseError> {
    let api = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    if SUPPORTED_OBJECTS.contains(&(api, kind)) {
        Ok(())
    } else {
        Err(invalid(path, format!("objects of kind `{kind}` (apiVersion `{api}`) are not supported by the harness")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = r#"
name: deny
upstream: somewhere
# comment
steps:
  - apply:
      - apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: deny-ingress, namespace: x}
        spec: {podSelector: {}, policyTypes: [Ingress]}
    probes:
      - protocol: TCP
        port: 80
        matrix:
          - "XXX......"
          - "XXX......"
          - "XXX......"
          - "XXX......"
          - "XXX......"
          - "XXX......"
          - "XXX......"
          - "XXX......"
          - "XXX......"
  - update_pod_labels: {pod: x/b, labels: {pod: b, pod2: updated}}
  - update_namespace_labels: {namespace: y, labels: {ns2: updated}}
  - delete_policy: {namespace: x, name: deny-ingress}
"#;

    const SCENARIO: &str = r#"
name: s
origin: here
cluster:
  namespaces:
    - {name: shop, labels: {team: a}}
  pods:
    - {namespace: shop, name: db, labels: {app: db}, serves: [{port: 5432, protocol: TCP, name: pg}]}
steps:
  - apply: []
    probes:
      - {from: shop/db, to: shop/db, port: 5432, protocol: TCP, expect: allow}
  - create_pod: {namespace: shop, name: web, labels: {app: web}, serves: [{port: 80, protocol: UDP}]}
    probes:
      - {from: shop/web, to: shop/db, port: 5432, protocol: TCP, expect: deny, family: IPv6}
  - delete_pod: {namespace: shop, name: web}
"#;

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn model_cases_parse_into_actions_and_matrix_checks() {
        let c = parse(MODEL).unwrap();
        assert!(c.is_model());
        assert_eq!(c.steps.len(), 4);
        assert_eq!(c.steps[0].action.key(), "apply");
        let checks = c.steps[0].probes[0].checks();
        assert_eq!(checks.len(), 72, "the diagonal is left out");
        let first = &checks[0];
        assert_eq!(first.to_string(), "from x/a to x/b TCP/80");
        assert!(!first.allow);
        assert!(checks.iter().any(|c| c.from.to_string() == "y/a" && c.to.to_string() == "y/b" && c.allow));
        assert_eq!(
            c.steps[1].action,
            Action::UpdatePodLabels {
                pod: PodRef::new("x", "b"),
                labels: [("pod".into(), "b".into()), ("pod2".into(), "updated".into())].into()
            }
        );
        assert_eq!(c.steps[3].action, Action::DeletePolicy { namespace: "x".into(), name: "deny-ingress".into() });
    }

    #[test]
    fn scenario_cases_parse_their_cluster_and_single_probes() {
        let c = parse(SCENARIO).unwrap();
        assert!(!c.is_model());
        assert_eq!(c.initial_cluster().pods[0].serves[0].name.as_deref(), Some("pg"));
        let ProbeSet::Single(check) = &c.steps[1].probes[0] else { panic!("single probe expected") };
        assert!(!check.allow);
        assert_eq!(check.family, Family::IPv6);
        assert_eq!(check.to_string(), "from shop/web to shop/db TCP/5432 (IPv6)");
        assert!(matches!(&c.steps[1].action, Action::CreatePod(p) if p.serves[0].protocol == Protocol::Udp));
        assert_eq!(c.steps[2].action, Action::DeletePod(PodRef::new("shop", "web")));
    }

    #[test]
    fn unknown_cluster_keys_fail_naming_the_key() {
        let text = SCENARIO.replace("cluster:\n", "cluster:\n  gateways: [{name: bank}]\n");
        let e = err(&text);
        assert!(e.contains("gateways"), "{e}");
        let text = SCENARIO.replace("cluster:\n", "cluster:\n  external: [{name: bank, region: eu}]\n");
        assert!(err(&text).contains("region"));
        let text = SCENARIO.replace("cluster:\n", "cluster:\n  dns: [{name: a.example, mx: [x]}]\n");
        assert!(err(&text).contains("mx"));
    }

    #[test]
    fn the_dns_extension_parses_hosts_records_and_name_targets() {
        let text = SCENARIO
            .replace(
                "cluster:\n",
                "cluster:\n  external: [{name: bank, serves: [{port: 443, protocol: TCP}]}]\n  dns: [{name: api.bank.example, a: [external/bank], ttl: 5}, {name: www.bank.example, cname: api.bank.example}]\n",
            )
            .replace(
                "to: shop/db, port: 5432, protocol: TCP, expect: allow",
                "to: dns:api.bank.example, port: 443, protocol: TCP, expect: allow",
            );
        let c = parse(&text).unwrap();
        let cluster = c.initial_cluster();
        assert_eq!(cluster.external[0].name, "bank");
        assert_eq!(cluster.dns[1].cname.as_deref(), Some("api.bank.example"));
        assert_eq!(cluster.dns[1].ttl, 30, "the default TTL");
        let ProbeSet::Single(check) = &c.steps[0].probes[0] else { panic!("single probe expected") };
        assert_eq!(check.to, Target::Dns("api.bank.example".into()));
        let with_host = text.replace("to: dns:api.bank.example", "to: external/bank");
        assert!(parse(&with_host).is_ok());
    }

    #[test]
    fn unknown_probe_keys_and_targets_fail_naming_them() {
        let text = SCENARIO.replace("expect: allow}", "expect: allow, grpc: {method: Get}}");
        let e = err(&text);
        assert!(e.contains("steps[0].probes[0]") && e.contains("grpc"), "{e}");
        let text = SCENARIO.replace("expect: allow}", "expect: allow, http: {method: GET, path: /, body: x}}");
        let e = err(&text);
        assert!(e.contains("steps[0].probes[0]") && e.contains("body"), "{e}");
        let text = SCENARIO.replace(
            "to: shop/db, port: 5432, protocol: TCP, expect: allow",
            "to: ftp:api.bank.example, port: 443, protocol: TCP, expect: allow",
        );
        let e = err(&text);
        assert!(e.contains("ftp:api.bank.example"), "{e}");
        let text = SCENARIO.replace(
            "to: shop/db, port: 5432, protocol: TCP, expect: allow",
            "to: external/bank, port: 443, protocol: TCP, expect: allow",
        );
        let e = err(&text);
        assert!(e.contains("external/bank") && e.contains("cluster.external"), "{e}");
    }

    #[test]
    fn unknown_values_fail_naming_them() {
        let e = err(&SCENARIO.replace("family: IPv6", "family: IPv5"));
        assert!(e.contains("IPv5"), "{e}");
        let e = err(&SCENARIO.replace("expect: deny", "expect: maybe"));
        assert!(e.contains("maybe"), "{e}");
        let e = err(&MODEL.replace("protocol: TCP", "protocol: SCTP"));
        assert!(e.contains("SCTP"), "{e}");
    }

    #[test]
    fn the_http_extension_parses_servers_and_requests_byte_for_byte() {
        let text = SCENARIO
            .replace("name: pg}", "name: pg, http: true}")
            .replace("expect: allow}", "expect: allow, http: {method: GET, path: \"/v1/items/../admin?x=%2e\"}}");
        let c = parse(&text).unwrap();
        assert!(c.initial_cluster().pods[0].serves[0].http);
        let ProbeSet::Single(check) = &c.steps[0].probes[0] else { panic!("single probe expected") };
        assert_eq!(check.http, Some(HttpRequest::new("GET", "/v1/items/../admin?x=%2e")));
        assert_eq!(check.to_string(), "from shop/db to shop/db TCP/5432 GET /v1/items/../admin?x=%2e");
        let udp = text.replace("port: 5432, protocol: TCP, expect: allow", "port: 53, protocol: UDP, expect: allow");
        assert!(err(&udp).contains("steps[0].probes[0].http"), "{}", err(&udp));
    }

    #[test]
    fn the_shared_http_scenario_parses() {
        let path = crate::bins::workspace_root().join("../shared/conformance/scenarios/003-http-method-and-path.yaml");
        let Ok(text) = std::fs::read_to_string(&path) else { return };
        let c = parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let http: Vec<&Check> = c
            .steps
            .iter()
            .flat_map(|s| &s.probes)
            .filter_map(|p| match p {
                ProbeSet::Single(c) if c.http.is_some() => Some(c),
                _ => None,
            })
            .collect();
        assert!(http.len() >= 8);
    }

    #[test]
    fn ward_policies_are_accepted_and_other_kinds_fail_naming_the_kind() {
        let ward = MODEL
            .replace("apiVersion: networking.k8s.io/v1", "apiVersion: policy.ward.dev/v1alpha1")
            .replace("kind: NetworkPolicy", "kind: WardNetworkPolicy");
        assert!(parse(&ward).is_ok());
        let text = MODEL.replace("kind: NetworkPolicy", "kind: AdminNetworkPolicy");
        let e = err(&text);
        assert!(e.contains("steps[0].apply[0]") && e.contains("AdminNetworkPolicy"), "{e}");
    }

    #[test]
    fn unknown_top_level_and_step_keys_fail_naming_them() {
        assert!(err(&format!("{MODEL}timeout: 3\n")).contains("timeout"));
        let e = err(&MODEL.replace("  - delete_policy:", "  - restart_agent: {}\n    delete_policy:"));
        assert!(e.contains("restart_agent"), "{e}");
    }

    #[test]
    fn a_step_needs_exactly_one_action() {
        let e = err(&MODEL.replace("  - delete_policy: {namespace: x, name: deny-ingress}", "  - probes: []"));
        assert!(e.contains("exactly one action"), "{e}");
        let e = err(&MODEL.replace(
            "  - delete_policy: {namespace: x, name: deny-ingress}",
            "  - delete_policy: {namespace: x, name: deny-ingress}\n    delete_pod: {namespace: x, name: a}",
        ));
        assert!(e.contains("delete_policy") && e.contains("delete_pod"), "{e}");
    }

    #[test]
    fn model_probes_need_a_valid_matrix_and_scenarios_single_probes() {
        let e = err(&MODEL.replacen("\"XXX......\"", "\"XXX.....\"", 1));
        assert!(e.contains("steps[0].probes[0].matrix"), "{e}");
        let e = err(&SCENARIO.replace(
            "- {from: shop/db, to: shop/db, port: 5432, protocol: TCP, expect: allow}",
            "- {protocol: TCP, port: 80, matrix: []}",
        ));
        assert!(e.contains("steps[0].probes[0]"), "{e}");
    }

    #[test]
    fn scenario_pods_must_be_in_listed_namespaces() {
        let e = err(&SCENARIO.replace("{namespace: shop, name: db", "{namespace: other, name: db"));
        assert!(e.contains("cluster.pods[0]") && e.contains("other"), "{e}");
    }

    #[test]
    fn every_shared_model_case_parses() {
        let dir = crate::bins::workspace_root().join("../shared/conformance/netpol");
        let Ok(files) = super::super::runner::discover(&dir) else {
            return;
        };
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            if let Err(e) = parse(&text) {
                panic!("{}: {e}", f.display());
            }
        }
    }
}
