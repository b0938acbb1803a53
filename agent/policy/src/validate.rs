//! Turns model objects into the validated forms the rest of the crate reads, applying the
//! API server's defaults, and rejects what the API server would reject with an error that
//! names the object and the field.
//!
//! Sits between `model` (what arrived) and `cluster` (what the compiler and the reference
//! evaluator read). Nothing past this module handles a raw string protocol, an unparsed CIDR
//! or an unknown selector operator.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use ward_common::Direction;

use crate::cluster::{PodKey, PolicyKind, PolicyRef};
use crate::fqdn::FqdnSelector;
use crate::http::HttpRule;
use crate::model::{self, IntOrString, LabelSelector, NetworkPolicyPeer, NetworkPolicyPort};
use crate::selector::{Labels, Operator, Requirement, Selector};

/// The label the API server puts on every namespace (and that cannot be changed).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A rejected object, or a rejected field of one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.file, .object, .field, .message))]
pub struct ObjectError {
    /// Where the object came from (a file name, or e.g. `watch` for the datastore).
    pub file: String,
    /// `NetworkPolicy x/deny-all`, or `document 3` when the object has no usable name.
    pub object: String,
    /// `spec.ingress[0].ports[1].endPort`; empty when the whole object is at fault.
    pub field: String,
    pub message: String,
}

fn render(file: &str, object: &str, field: &str, message: &str) -> String {
    let mut s = String::new();
    if !file.is_empty() {
        s.push_str(file);
        s.push_str(": ");
    }
    s.push_str(object);
    if !field.is_empty() {
        s.push_str(": ");
        s.push_str(field);
    }
    s.push_str(": ");
    s.push_str(message);
    s
}

impl ObjectError {
    pub fn new(file: &str, object: &str, field: &str, message: &str) -> Self {
        ObjectError { file: file.into(), object: object.into(), field: field.into(), message: message.into() }
    }
}

/// L4 protocols a NetworkPolicy can name, with their IP protocol numbers.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp = 6,
    #[serde(rename = "UDP")]
    Udp = 17,
    #[serde(rename = "SCTP")]
    Sctp = 132,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// The IP protocol number, as in packets and in `PolicyKey::proto`.
    pub const fn number(self) -> u8 {
        self as u8
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// The API's spelling (case-sensitive, as the API server is).
    pub fn from_api(s: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.as_str() == s)
    }

    pub fn from_number(n: u8) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.number() == n)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The port part of a `NetworkPolicyPort`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PortRef {
    /// No `port`: every port of the protocol.
    Any,
    Number(u16),
    /// A container-port name, resolved on the destination pod.
    Named(String),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortSpec {
    pub protocol: Protocol,
    pub port: PortRef,
    /// Only with `PortRef::Number`, and never below it.
    pub end_port: Option<u16>,
    /// `WardNetworkPolicy` ingress only (TCP): this port admits only HTTP/1.x requests that
    /// match one of these rules. `None`: plain L4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Vec<HttpRule>>,
    /// `WardNetworkPolicy` egress only, on port 53 (UDP or TCP): the names a pod may query
    /// through this entry; other queries are answered REFUSED by the DNS proxy. `None`: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Vec<FqdnSelector>>,
}

impl PortSpec {
    /// Whether a packet's protocol and port match, given how the destination pod names its
    /// ports (`dst_ports`; empty for a destination that is not a pod). A port with HTTP rules
    /// admits requests, not connections: it never matches at L4 alone.
    pub fn matches(&self, proto: Protocol, port: u16, dst_ports: &[NamedPort]) -> bool {
        self.http.is_none() && self.matches_l4(proto, port, dst_ports)
    }

    /// Whether protocol and port match, whatever HTTP rules the port carries.
    pub fn matches_l4(&self, proto: Protocol, port: u16, dst_ports: &[NamedPort]) -> bool {
        if self.protocol != proto {
            return false;
        }
        match &self.port {
            PortRef::Any => true,
            PortRef::Number(first) => match self.end_port {
                None => port == *first,
                Some(last) => (*first..=last).contains(&port),
            },
            // `any`: containers may share a name, which then stands for each of their ports.
            PortRef::Named(name) => {
                dst_ports.iter().any(|np| np.name == *name && np.protocol == proto && np.port == port)
            }
        }
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.port, self.end_port) {
            (PortRef::Any, _) => write!(f, "{}/*", self.protocol)?,
            (PortRef::Number(p), None) => write!(f, "{}/{p}", self.protocol)?,
            (PortRef::Number(p), Some(e)) => write!(f, "{}/{p}-{e}", self.protocol)?,
            (PortRef::Named(n), _) => write!(f, "{}/{n}", self.protocol)?,
        }
        if let Some(rules) = &self.http {
            let shown: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
            write!(f, " http [{}]", shown.join(", "))?;
        }
        if let Some(names) = &self.dns {
            let shown: Vec<String> = names.iter().map(|r| r.to_string()).collect();
            write!(f, " dns [{}]", shown.join(", "))?;
        }
        Ok(())
    }
}

/// One entry of `from` / `to`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Peer {
    /// Pods chosen by namespace and pod selectors, ANDed. `namespace_selector: None` means
    /// the policy's own namespace; `pod_selector: None` means every pod of those namespaces.
    Pods { namespace_selector: Option<Selector>, pod_selector: Option<Selector> },
    /// Addresses in `cidr` but in no `except` (each strictly inside `cidr`). Canonical:
    /// host bits are cleared and IPv4-mapped IPv6 prefixes are written as IPv4.
    IpBlock { cidr: IpNet, except: Vec<IpNet> },
    /// `WardNetworkPolicy` egress only: the addresses the subject pod resolved for a name that
    /// this selector matches (learned by the DNS proxy, not known to the compiler).
    Fqdn(FqdnSelector),
}

impl Peer {
    /// Whether an address lies in this peer's block (false for pod peers).
    pub fn block_contains(&self, addr: IpAddr) -> bool {
        match self {
            Peer::IpBlock { cidr, except } => {
                let addr = addr.to_canonical();
                cidr.contains(&addr) && !except.iter().any(|e| e.contains(&addr))
            }
            Peer::Pods { .. } | Peer::Fqdn(_) => false,
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Pods { namespace_selector, pod_selector } => {
                let ns = namespace_selector.as_ref().map_or("<own namespace>".to_string(), |s| s.to_string());
                let pods = pod_selector.as_ref().map_or("{}".to_string(), |s| s.to_string());
                write!(f, "pods {pods} in namespaces {ns}")
            }
            Peer::IpBlock { cidr, except } if except.is_empty() => write!(f, "ipBlock {cidr}"),
            Peer::IpBlock { cidr, except } => {
                let ex: Vec<String> = except.iter().map(|e| e.to_string()).collect();
                write!(f, "ipBlock {cidr} except {}", ex.join(", "))
            }
            Peer::Fqdn(sel) => write!(f, "fqdn {sel}"),
        }
    }
}

/// One ingress or egress rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rule {
    /// `None`: every peer (the field was absent or empty).
    pub peers: Option<Vec<Peer>>,
    /// `None`: every protocol and port (the field was absent or empty).
    pub ports: Option<Vec<PortSpec>>,
}

/// The annotation that puts a NetworkPolicy or WardNetworkPolicy in audit mode, or, on a
/// Namespace, every policy of that namespace.
pub const MODE_ANNOTATION: &str = "policy.ward.dev/mode";
/// How errors name the annotation.
pub const MODE_ANNOTATION_FIELD: &str = "metadata.annotations[policy.ward.dev/mode]";
/// How errors name the WardNetworkPolicy field.
pub const MODE_SPEC_FIELD: &str = "spec.mode";

/// Whether a policy is enforced or only audited: an audited policy changes nothing that
/// passes or drops; what it would deny passes and is recorded with the verdict AUDIT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

impl Mode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }

    pub fn is_enforce(&self) -> bool {
        *self == Mode::Enforce
    }
}

fn parse_mode(ctx: &Ctx, field: &str, value: &str) -> Result<Mode, ObjectError> {
    match value {
        "enforce" => Ok(Mode::Enforce),
        "audit" => Ok(Mode::Audit),
        other => Err(ctx.err(
            field,
            format!("unsupported value {other:?}: expected \"audit\" or \"enforce\"; the policy is enforced"),
        )),
    }
}

/// A policy's own mode (its annotation, and a WardNetworkPolicy's `spec.mode`), and the error
/// when either is wrong. A wrong or contradictory value is an error and the policy is
/// enforced: a typo never turns enforcement off. The object itself stays valid, so the error
/// is reported beside it (`ward status` notices), not as a rejection, whose last valid
/// version could be an audited one.
pub fn policy_mode(
    kind: PolicyKind,
    meta: &model::ObjectMeta,
    spec: &model::NetworkPolicySpec,
    file: &str,
) -> (Mode, Option<ObjectError>) {
    let ctx = Ctx { file, object: model::describe(kind.as_str(), meta), kind };
    let annotated = match meta.annotations.get(MODE_ANNOTATION) {
        None => None,
        Some(v) => match parse_mode(&ctx, MODE_ANNOTATION_FIELD, v) {
            Ok(m) => Some(m),
            Err(e) => return (Mode::Enforce, Some(e)),
        },
    };
    let field = match (&spec.mode, kind) {
        (None, _) => None,
        (Some(_), PolicyKind::NetworkPolicy) => {
            let e = ward_only(&ctx, MODE_SPEC_FIELD.into(), "mode");
            let e = ObjectError {
                message: format!("{} (use the {MODE_ANNOTATION} annotation); the policy is enforced", e.message),
                ..e
            };
            return (Mode::Enforce, Some(e));
        }
        (Some(v), PolicyKind::WardNetworkPolicy) => match parse_mode(&ctx, MODE_SPEC_FIELD, v) {
            Ok(m) => Some(m),
            Err(e) => return (Mode::Enforce, Some(e)),
        },
    };
    match (annotated, field) {
        (Some(a), Some(f)) if a != f => (
            Mode::Enforce,
            Some(ctx.err(
                MODE_SPEC_FIELD,
                format!(
                    "{:?} contradicts the {MODE_ANNOTATION} annotation ({:?}); the policy is enforced",
                    f.as_str(),
                    a.as_str()
                ),
            )),
        ),
        (a, f) => (a.or(f).unwrap_or_default(), None),
    }
}

/// A Namespace's mode (its annotation; audit puts every policy of the namespace in audit
/// mode), and the error when the value is wrong (then: enforced).
pub fn namespace_mode(ns: &model::Namespace, file: &str) -> (Mode, Option<ObjectError>) {
    let ctx = Ctx { file, object: model::describe("Namespace", &ns.metadata), kind: PolicyKind::NetworkPolicy };
    match ns.metadata.annotations.get(MODE_ANNOTATION) {
        None => (Mode::Enforce, None),
        Some(v) => match parse_mode(&ctx, MODE_ANNOTATION_FIELD, v) {
            Ok(m) => (m, None),
            Err(e) => (Mode::Enforce, Some(e)),
        },
    }
}

/// A validated NetworkPolicy (or WardNetworkPolicy) with the API server's defaults applied.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Policy {
    #[serde(default)]
    pub kind: PolicyKind,
    pub namespace: String,
    pub name: String,
    pub pod_selector: Selector,
    /// `None`: not an ingress policy. `Some([])`: deny all ingress.
    pub ingress: Option<Vec<Rule>>,
    /// `None`: not an egress policy. `Some([])`: deny all egress.
    pub egress: Option<Vec<Rule>>,
    /// The policy's own mode ([`policy_mode`]); its namespace may audit it too
    /// (`Cluster::mode`).
    #[serde(default, skip_serializing_if = "Mode::is_enforce")]
    pub mode: Mode,
}

impl Policy {
    pub fn policy_ref(&self) -> PolicyRef {
        PolicyRef::of_kind(self.kind, &self.namespace, &self.name)
    }
}

/// A named container port: what a named policy port resolves to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// What policy needs to know about a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PodInfo {
    pub labels: Labels,
    /// Named container ports, sorted and without repeats. A name can appear more than once:
    /// containers of one pod may share a port name (with other numbers or protocols), and a
    /// named policy port then stands for every one of them with the rule's protocol.
    pub ports: Vec<NamedPort>,
    /// Pod-network addresses (canonical, no duplicates); empty for a pod not running yet,
    /// finished, or on the host network.
    pub ips: Vec<IpAddr>,
}

/// Where an error is reported: the file and the object; and which policy kind is checked.
struct Ctx<'a> {
    file: &'a str,
    object: String,
    kind: PolicyKind,
}

impl Ctx<'_> {
    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> ObjectError {
        ObjectError {
            file: self.file.into(),
            object: self.object.clone(),
            field: field.into(),
            message: message.into(),
        }
    }
}

fn require_name(ctx: &Ctx, meta: &model::ObjectMeta) -> Result<(), ObjectError> {
    if meta.name.is_empty() {
        return Err(ctx.err("metadata.name", "required"));
    }
    Ok(())
}

/// A Namespace's name and labels, with `kubernetes.io/metadata.name` set as the API server
/// sets it.
pub fn namespace(ns: &model::Namespace, file: &str) -> Result<(String, Labels), ObjectError> {
    let ctx = Ctx { file, object: model::describe("Namespace", &ns.metadata), kind: PolicyKind::NetworkPolicy };
    require_name(&ctx, &ns.metadata)?;
    let mut labels = ns.metadata.labels.clone();
    labels.insert(NAMESPACE_NAME_LABEL.into(), ns.metadata.name.clone());
    Ok((ns.metadata.name.clone(), labels))
}

/// A Pod's key and policy-relevant facts.
pub fn pod(p: &model::Pod, file: &str) -> Result<(PodKey, PodInfo), ObjectError> {
    let ctx = Ctx { file, object: model::describe("Pod", &p.metadata), kind: PolicyKind::NetworkPolicy };
    require_name(&ctx, &p.metadata)?;
    let namespace = p.metadata.namespace_or_default().to_owned();

    let mut ports: Vec<NamedPort> = Vec::new();
    for (ci, c) in p.spec.containers.iter().enumerate() {
        // Names are unique within a container, not across them: the API server's
        // `validateContainerPorts` checks one container's list at a time (and only warns
        // about a name two containers share), so such pods exist and must keep working.
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        for (pi, cp) in c.ports.iter().enumerate() {
            let field = format!("spec.containers[{ci}].ports[{pi}]");
            let port = port_number(&ctx, &format!("{field}.containerPort"), cp.container_port)?;
            let protocol = protocol(&ctx, &format!("{field}.protocol"), cp.protocol.as_deref())?;
            if let Some(name) = &cp.name {
                let nf = format!("{field}.name");
                check_port_name(&ctx, &nf, name)?;
                if !seen.insert(name.as_str()) {
                    return Err(ctx.err(nf, format!("duplicate port name {name:?}")));
                }
                ports.push(NamedPort { name: name.clone(), protocol, port });
            }
        }
    }
    // Sorted and without repeats, so the same ports in another container order give the
    // same label identity.
    ports.sort();
    ports.dedup();

    let mut ips: Vec<IpAddr> = Vec::new();
    if let Some(status) = &p.status {
        let mut push = |field: String, s: &str| -> Result<(), ObjectError> {
            let ip: IpAddr = s.parse().map_err(|_| ctx.err(field, format!("{s:?} is not an IP address")))?;
            let ip = ip.to_canonical();
            if !ips.contains(&ip) {
                ips.push(ip);
            }
            Ok(())
        };
        if let Some(ip) = status.pod_ip.as_deref().filter(|s| !s.is_empty()) {
            push("status.podIP".into(), ip)?;
        }
        for (i, pip) in status.pod_ips.iter().enumerate() {
            push(format!("status.podIPs[{i}].ip"), &pip.ip)?;
        }
        // A finished pod keeps its status addresses, but IPAM may already have given them to
        // a new pod; policy must follow the new pod, not the old one's address.
        let finished = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
        if finished || p.spec.host_network {
            ips.clear();
        }
    }
    let key = PodKey { namespace, name: p.metadata.name.clone() };
    Ok((key, PodInfo { labels: p.metadata.labels.clone(), ports, ips }))
}

/// A NetworkPolicy, with the API server's defaults applied.
pub fn policy(np: &model::NetworkPolicy, file: &str) -> Result<Policy, ObjectError> {
    policy_of_kind(PolicyKind::NetworkPolicy, &np.metadata, &np.spec, file)
}

/// A WardNetworkPolicy: the same checks and defaults, and its extensions allowed.
pub fn ward_policy(wp: &model::WardNetworkPolicy, file: &str) -> Result<Policy, ObjectError> {
    policy_of_kind(PolicyKind::WardNetworkPolicy, &wp.metadata, &wp.spec, file)
}

fn policy_of_kind(
    kind: PolicyKind,
    meta: &model::ObjectMeta,
    spec: &model::NetworkPolicySpec,
    file: &str,
) -> Result<Policy, ObjectError> {
    let ctx = Ctx { file, object: model::describe(kind.as_str(), meta), kind };
    require_name(&ctx, meta)?;
    let namespace = meta.namespace_or_default().to_owned();
    let pod_selector = selector_at(&ctx, "spec.podSelector", &spec.pod_selector)?;

    let mut ingress_type = false;
    let mut egress_type = false;
    match spec.policy_types.as_deref() {
        // Defaulting, as the API server does it: Ingress always, Egress if there are
        // egress rules.
        None | Some([]) => {
            ingress_type = true;
            egress_type = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        }
        Some(types) => {
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => ingress_type = true,
                    "Egress" => egress_type = true,
                    other => {
                        return Err(ctx.err(
                            format!("spec.policyTypes[{i}]"),
                            format!("unsupported value {other:?}: expected \"Ingress\" or \"Egress\""),
                        ));
                    }
                }
            }
        }
    }

    let mut ingress = None;
    if ingress_type {
        let mut rules = Vec::new();
        for (i, r) in spec.ingress.iter().flatten().enumerate() {
            let field = format!("spec.ingress[{i}]");
            rules.push(rule(&ctx, &field, Direction::Ingress, r.from.as_deref(), r.ports.as_deref())?);
        }
        ingress = Some(rules);
    }
    let mut egress = None;
    if egress_type {
        let mut rules = Vec::new();
        for (i, r) in spec.egress.iter().flatten().enumerate() {
            let field = format!("spec.egress[{i}]");
            rules.push(rule(&ctx, &field, Direction::Egress, r.to.as_deref(), r.ports.as_deref())?);
        }
        egress = Some(rules);
    }
    let (mode, _) = policy_mode(kind, meta, spec, file);
    Ok(Policy { kind, namespace, name: meta.name.clone(), pod_selector, ingress, egress, mode })
}

fn rule(
    ctx: &Ctx,
    field: &str,
    dir: Direction,
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
) -> Result<Rule, ObjectError> {
    let peers_name = match dir {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    };
    let peers = match peers {
        None | Some([]) => None,
        Some(list) => {
            let mut out = Vec::new();
            for (i, p) in list.iter().enumerate() {
                out.push(peer(ctx, &format!("{field}.{peers_name}[{i}]"), dir, p)?);
            }
            Some(out)
        }
    };
    let ports = match ports {
        None | Some([]) => None,
        Some(list) => {
            let mut out = Vec::new();
            for (i, p) in list.iter().enumerate() {
                out.push(port_spec(ctx, &format!("{field}.ports[{i}]"), dir, p)?);
            }
            Some(out)
        }
    };
    Ok(Rule { peers, ports })
}

/// The error for an extension field in a plain NetworkPolicy.
fn ward_only(ctx: &Ctx, field: String, what: &str) -> ObjectError {
    ctx.err(
        field,
        format!(
            "{what} is a WardNetworkPolicy extension (apiVersion {}); a NetworkPolicy has none",
            model::WARD_API_VERSION
        ),
    )
}

fn peer(ctx: &Ctx, field: &str, dir: Direction, p: &NetworkPolicyPeer) -> Result<Peer, ObjectError> {
    if let Some(fqdn) = &p.fqdn {
        let ff = format!("{field}.fqdn");
        if ctx.kind != PolicyKind::WardNetworkPolicy {
            return Err(ward_only(ctx, ff, "fqdn"));
        }
        if dir != Direction::Egress {
            return Err(ctx.err(ff, "fqdn peers are egress destinations: only in egress `to`"));
        }
        if p.ip_block.is_some() || p.pod_selector.is_some() || p.namespace_selector.is_some() {
            return Err(ctx.err(field, "fqdn may not be combined with podSelector, namespaceSelector or ipBlock"));
        }
        return fqdn_selector(ctx, &ff, fqdn).map(Peer::Fqdn);
    }
    match (&p.ip_block, &p.pod_selector, &p.namespace_selector) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            Err(ctx.err(field, "ipBlock may not be combined with podSelector or namespaceSelector"))
        }
        (Some(block), None, None) => ip_block(ctx, &format!("{field}.ipBlock"), block),
        (None, None, None) => Err(ctx.err(field, "must specify podSelector, namespaceSelector or ipBlock")),
        (None, pods, nss) => {
            let pod_selector = match pods {
                Some(s) => Some(selector_at(ctx, &format!("{field}.podSelector"), s)?),
                None => None,
            };
            let namespace_selector = match nss {
                Some(s) => Some(selector_at(ctx, &format!("{field}.namespaceSelector"), s)?),
                None => None,
            };
            Ok(Peer::Pods { namespace_selector, pod_selector })
        }
    }
}

/// `{matchName: ...}` or `{matchPattern: ...}` (an fqdn peer or a `dns` rule entry).
fn fqdn_selector(ctx: &Ctx, field: &str, f: &model::FqdnPeer) -> Result<FqdnSelector, ObjectError> {
    match (&f.match_name, &f.match_pattern) {
        (Some(name), None) => {
            FqdnSelector::name(name).map_err(|e| ctx.err(format!("{field}.matchName"), e.to_string()))
        }
        (None, Some(pattern)) => {
            FqdnSelector::pattern(pattern).map_err(|e| ctx.err(format!("{field}.matchPattern"), e.to_string()))
        }
        _ => Err(ctx.err(field, "exactly one of matchName and matchPattern")),
    }
}

fn ip_block(ctx: &Ctx, field: &str, block: &model::IpBlock) -> Result<Peer, ObjectError> {
    let cidr = parse_cidr(ctx, &format!("{field}.cidr"), &block.cidr)?;
    let mut except = Vec::new();
    for (i, e) in block.except.iter().enumerate() {
        let ef = format!("{field}.except[{i}]");
        let e = parse_cidr(ctx, &ef, e)?;
        let inside = e.prefix_len() > cidr.prefix_len() && cidr.contains(&e.network());
        if !inside || !same_family(&cidr, &e) {
            return Err(ctx.err(ef, format!("{e} must be strictly within cidr {cidr}")));
        }
        if !except.contains(&e) {
            except.push(e);
        }
    }
    except.sort();
    Ok(Peer::IpBlock { cidr, except })
}

fn same_family(a: &IpNet, b: &IpNet) -> bool {
    matches!((a, b), (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_)))
}

/// Parses a CIDR, clearing host bits (upstream conformance writes `10.1.2.3/4`) and writing
/// IPv4-mapped IPv6 prefixes as IPv4, which is how Go's `net.IPNet` matches them.
fn parse_cidr(ctx: &Ctx, field: &str, s: &str) -> Result<IpNet, ObjectError> {
    let net: IpNet =
        s.trim().parse().map_err(|_| ctx.err(field, format!("{s:?} is not a CIDR (address/prefix-length)")))?;
    Ok(canonical_net(net))
}

pub(crate) fn canonical_net(net: IpNet) -> IpNet {
    let net = net.trunc();
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.network().to_ipv4_mapped()
        && let Ok(n) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(n.trunc());
    }
    net
}

fn port_spec(ctx: &Ctx, field: &str, dir: Direction, p: &NetworkPolicyPort) -> Result<PortSpec, ObjectError> {
    let protocol = protocol(ctx, &format!("{field}.protocol"), p.protocol.as_deref())?;
    let port = match &p.port {
        None => PortRef::Any,
        Some(IntOrString::Int(n)) => PortRef::Number(port_number(ctx, &format!("{field}.port"), *n)?),
        Some(IntOrString::String(name)) => {
            check_port_name(ctx, &format!("{field}.port"), name)?;
            PortRef::Named(name.clone())
        }
    };
    let end_port = match p.end_port {
        None => None,
        Some(end) => {
            let ef = format!("{field}.endPort");
            match &port {
                PortRef::Any => return Err(ctx.err(ef, "may only be used with a numeric port")),
                PortRef::Named(_) => return Err(ctx.err(ef, "may not be used with a named port")),
                PortRef::Number(first) => {
                    let end = port_number(ctx, &ef, end)?;
                    if end < *first {
                        return Err(ctx.err(ef, format!("{end} is below port {first}")));
                    }
                    Some(end)
                }
            }
        }
    };
    let http = match &p.http {
        None => None,
        Some(rules) => {
            let hf = format!("{field}.http");
            if ctx.kind != PolicyKind::WardNetworkPolicy {
                return Err(ward_only(ctx, hf, "http"));
            }
            if dir != Direction::Ingress {
                return Err(ctx.err(hf, "http rules apply to a server's ingress ports only"));
            }
            if protocol != Protocol::Tcp {
                return Err(ctx.err(hf, format!("http rules need protocol TCP, not {protocol}")));
            }
            if rules.is_empty() {
                return Err(ctx.err(hf, "must list at least one request (omit http for plain L4)"));
            }
            let mut out = Vec::new();
            for (i, r) in rules.iter().enumerate() {
                out.push(HttpRule::from_spec(r).map_err(|(sub, e)| ctx.err(format!("{hf}[{i}]{sub}"), e))?);
            }
            Some(out)
        }
    };
    let dns = match &p.dns {
        None => None,
        Some(names) => {
            let df = format!("{field}.dns");
            if ctx.kind != PolicyKind::WardNetworkPolicy {
                return Err(ward_only(ctx, df, "dns"));
            }
            if dir != Direction::Egress {
                return Err(ctx.err(df, "dns rules say which names a pod may query: egress ports only"));
            }
            if port != PortRef::Number(ward_common::fqdn::DNS_PORT) || end_port.is_some() {
                return Err(ctx.err(df, "dns rules need port 53 (a single port, UDP or TCP)"));
            }
            if protocol == Protocol::Sctp {
                return Err(ctx.err(df, "dns rules need protocol UDP or TCP, not SCTP"));
            }
            if names.is_empty() {
                return Err(ctx.err(df, "must list at least one name (omit dns to allow every name)"));
            }
            let mut out = Vec::new();
            for (i, n) in names.iter().enumerate() {
                out.push(fqdn_selector(ctx, &format!("{df}[{i}]"), n)?);
            }
            Some(out)
        }
    };
    Ok(PortSpec { protocol, port, end_port, http, dns })
}

fn protocol(ctx: &Ctx, field: &str, p: Option<&str>) -> Result<Protocol, ObjectError> {
    match p {
        None => Ok(Protocol::Tcp),
        Some(s) => Protocol::from_api(s).ok_or_else(|| {
            ctx.err(field, format!("unsupported protocol {s:?}: expected \"TCP\", \"UDP\" or \"SCTP\""))
        }),
    }
}

fn port_number(ctx: &Ctx, field: &str, n: i64) -> Result<u16, ObjectError> {
    match u16::try_from(n) {
        Ok(p) if p >= 1 => Ok(p),
        _ => Err(ctx.err(field, format!("{n} is not a port number (1-65535)"))),
    }
}

/// IANA_SVC_NAME (RFC 6335): 1-15 characters of lowercase letters, digits and '-', at least
/// one letter, no '-' at either end and no "--".
pub fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn check_port_name(ctx: &Ctx, field: &str, name: &str) -> Result<(), ObjectError> {
    if is_port_name(name) {
        Ok(())
    } else {
        Err(ctx.err(
            field,
            format!(
                "{name:?} is not a valid port name (1-15 lowercase letters, digits and '-', \
                 at least one letter, no '-' at either end or twice in a row)"
            ),
        ))
    }
}

/// Validates a `LabelSelector` on its own (the CLI uses it for `--selector`-like input).
pub fn selector(sel: &LabelSelector, file: &str, object: &str, field: &str) -> Result<Selector, ObjectError> {
    selector_at(&Ctx { file, object: object.into(), kind: PolicyKind::NetworkPolicy }, field, sel)
}

fn selector_at(ctx: &Ctx, field: &str, sel: &LabelSelector) -> Result<Selector, ObjectError> {
    let mut requirements = Vec::new();
    for (i, e) in sel.match_expressions.iter().enumerate() {
        let ef = format!("{field}.matchExpressions[{i}]");
        if e.key.is_empty() {
            return Err(ctx.err(format!("{ef}.key"), "required"));
        }
        let values: BTreeSet<String> = e.values.iter().cloned().collect();
        let op = match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(ctx.err(format!("{ef}.values"), format!("must be non-empty for operator {}", e.operator)));
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(ctx.err(format!("{ef}.values"), format!("must be empty for operator {}", e.operator)));
            }
            "In" => Operator::In(values),
            "NotIn" => Operator::NotIn(values),
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => {
                return Err(ctx.err(
                    format!("{ef}.operator"),
                    format!("unsupported operator {other:?}: expected In, NotIn, Exists or DoesNotExist"),
                ));
            }
        };
        requirements.push(Requirement { key: e.key.clone(), op });
    }
    Ok(Selector { match_labels: sel.match_labels.clone(), requirements })
}

/// The implicit labels of a namespace that has no Namespace object.
pub fn implicit_namespace_labels(name: &str) -> Labels {
    BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), name.to_string())])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Object, parse_documents};

    fn one(yaml: &str) -> Object {
        let mut got = parse_documents(yaml, "t.yaml");
        assert_eq!(got.len(), 1, "{got:?}");
        got.remove(0).unwrap_or_else(|e| panic!("fixture parses: {e}"))
    }

    fn np(spec: &str) -> Result<Policy, ObjectError> {
        let o = one(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec: {spec}\n"
        ));
        match o {
            Object::NetworkPolicy(p) => policy(&p, "t.yaml"),
            other => panic!("not a policy: {other:?}"),
        }
    }

    fn ok(spec: &str) -> Policy {
        np(spec).unwrap_or_else(|e| panic!("{spec} should validate: {e}"))
    }

    /// Each invalid spec is rejected with an error naming the object and the exact field.
    #[test]
    fn every_policy_error_names_the_object_and_the_field() {
        let cases = [
            (
                "{podSelector: {matchExpressions: [{key: a, operator: Equals, values: [b]}]}}",
                "spec.podSelector.matchExpressions[0].operator",
            ),
            (
                "{podSelector: {matchExpressions: [{key: a, operator: In}]}}",
                "spec.podSelector.matchExpressions[0].values",
            ),
            (
                "{podSelector: {matchExpressions: [{key: a, operator: NotIn, values: []}]}}",
                "spec.podSelector.matchExpressions[0].values",
            ),
            (
                "{podSelector: {matchExpressions: [{key: a, operator: Exists, values: [b]}]}}",
                "spec.podSelector.matchExpressions[0].values",
            ),
            (
                "{podSelector: {matchExpressions: [{key: a, operator: DoesNotExist, values: [b]}]}}",
                "spec.podSelector.matchExpressions[0].values",
            ),
            ("{podSelector: {matchExpressions: [{operator: Exists}]}}", "spec.podSelector.matchExpressions[0].key"),
            ("{podSelector: {}, ingress: [{ports: [{port: 0}]}]}", "spec.ingress[0].ports[0].port"),
            ("{podSelector: {}, ingress: [{ports: [{port: 80}, {port: 65536}]}]}", "spec.ingress[0].ports[1].port"),
            ("{podSelector: {}, ingress: [{ports: [{port: -1}]}]}", "spec.ingress[0].ports[0].port"),
            ("{podSelector: {}, ingress: [{ports: [{port: Http}]}]}", "spec.ingress[0].ports[0].port"),
            ("{podSelector: {}, ingress: [{ports: [{port: '80'}]}]}", "spec.ingress[0].ports[0].port"),
            ("{podSelector: {}, ingress: [{ports: [{port: a--b}]}]}", "spec.ingress[0].ports[0].port"),
            ("{podSelector: {}, ingress: [{ports: [{port: -ab}]}]}", "spec.ingress[0].ports[0].port"),
            ("{podSelector: {}, ingress: [{ports: [{port: ab-}]}]}", "spec.ingress[0].ports[0].port"),
            ("{podSelector: {}, ingress: [{ports: [{port: abcdefghijklmnop}]}]}", "spec.ingress[0].ports[0].port"),
            ("{podSelector: {}, ingress: [{ports: [{port: a_b}]}]}", "spec.ingress[0].ports[0].port"),
            ("{podSelector: {}, ingress: [{ports: [{endPort: 90}]}]}", "spec.ingress[0].ports[0].endPort"),
            ("{podSelector: {}, ingress: [{ports: [{port: 90, endPort: 80}]}]}", "spec.ingress[0].ports[0].endPort"),
            ("{podSelector: {}, ingress: [{ports: [{port: 90, endPort: 65536}]}]}", "spec.ingress[0].ports[0].endPort"),
            ("{podSelector: {}, ingress: [{ports: [{port: http, endPort: 90}]}]}", "spec.ingress[0].ports[0].endPort"),
            ("{podSelector: {}, ingress: [{ports: [{port: 80, protocol: tcp}]}]}", "spec.ingress[0].ports[0].protocol"),
            ("{podSelector: {}, egress: [{}, {ports: [{protocol: ICMP}]}]}", "spec.egress[1].ports[0].protocol"),
            (
                "{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}",
                "spec.egress[0].to[0].ipBlock.cidr",
            ),
            ("{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.1}}]}]}", "spec.egress[0].to[0].ipBlock.cidr"),
            (
                "{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]}",
                "spec.egress[0].to[0].ipBlock.except[0]",
            ),
            (
                "{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/24, 10.0.0.0/8]}}]}]}",
                "spec.egress[0].to[0].ipBlock.except[1]",
            ),
            (
                "{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/4]}}]}]}",
                "spec.egress[0].to[0].ipBlock.except[0]",
            ),
            (
                "{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: ['fd00::/64']}}]}]}",
                "spec.egress[0].to[0].ipBlock.except[0]",
            ),
            (
                "{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [bogus]}}]}]}",
                "spec.egress[0].to[0].ipBlock.except[0]",
            ),
            (
                "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}",
                "spec.ingress[0].from[0]",
            ),
            (
                "{podSelector: {}, ingress: [{from: [{podSelector: {}}, {ipBlock: {cidr: 10.0.0.0/8}, namespaceSelector: {}}]}]}",
                "spec.ingress[0].from[1]",
            ),
            ("{podSelector: {}, ingress: [{from: [{}]}]}", "spec.ingress[0].from[0]"),
            (
                "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: k, operator: In}]}}]}]}",
                "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values",
            ),
            (
                "{podSelector: {}, egress: [{to: [{podSelector: {matchExpressions: [{key: k, operator: Foo}]}}]}]}",
                "spec.egress[0].to[0].podSelector.matchExpressions[0].operator",
            ),
            ("{podSelector: {}, policyTypes: [Ingress, egress]}", "spec.policyTypes[1]"),
        ];
        for (spec, field) in cases {
            let e = np(spec).expect_err(spec);
            assert_eq!(e.object, "NetworkPolicy x/p", "{spec}");
            assert_eq!(e.field, field, "{spec}: {e}");
            assert_eq!(e.file, "t.yaml");
            let shown = e.to_string();
            assert!(shown.starts_with(&format!("t.yaml: NetworkPolicy x/p: {field}: ")), "{shown}");
        }
    }

    fn wnp(spec: &str) -> Result<Policy, ObjectError> {
        let o = one(&format!(
            "apiVersion: policy.ward.dev/v1alpha1\nkind: WardNetworkPolicy\nmetadata: {{name: w, namespace: x}}\nspec: {spec}\n"
        ));
        match o {
            Object::WardNetworkPolicy(p) => ward_policy(&p, "t.yaml"),
            other => panic!("not a WardNetworkPolicy: {other:?}"),
        }
    }

    #[test]
    fn dns_rules_take_names_on_egress_port_53_only_with_the_field_named() {
        let p = wnp("{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{protocol: UDP, port: 53, \
                     dns: [{matchName: API.bank.example}, {matchPattern: '*.s3.example'}]}]}]}")
        .expect("valid");
        let spec = &p.egress.as_ref().expect("egress")[0].ports.as_ref().expect("ports")[0];
        let names: Vec<String> = spec.dns.iter().flatten().map(|s| s.to_string()).collect();
        assert_eq!(names, ["api.bank.example", "*.s3.example"]);
        assert!(spec.to_string().ends_with("dns [api.bank.example, *.s3.example]"), "{spec}");
        for (spec, field) in [
            (
                "{podSelector: {}, egress: [{ports: [{protocol: UDP, port: 80, dns: [{matchName: a.example}]}]}]}",
                "spec.egress[0].ports[0].dns",
            ),
            (
                "{podSelector: {}, egress: [{ports: [{protocol: SCTP, port: 53, dns: [{matchName: a.example}]}]}]}",
                "spec.egress[0].ports[0].dns",
            ),
            (
                "{podSelector: {}, egress: [{ports: [{protocol: UDP, port: 53, dns: []}]}]}",
                "spec.egress[0].ports[0].dns",
            ),
            (
                "{podSelector: {}, egress: [{ports: [{protocol: UDP, port: 53, dns: [{matchName: '*.a'}]}]}]}",
                "spec.egress[0].ports[0].dns[0].matchName",
            ),
            (
                "{podSelector: {}, egress: [{ports: [{protocol: UDP, port: 53, dns: [{}]}]}]}",
                "spec.egress[0].ports[0].dns[0]",
            ),
            (
                "{podSelector: {}, ingress: [{ports: [{protocol: UDP, port: 53, dns: [{matchName: a.example}]}]}]}",
                "spec.ingress[0].ports[0].dns",
            ),
        ] {
            let e = wnp(spec).expect_err(spec);
            assert_eq!(e.field, field, "{spec}: {e}");
        }
        let e = np("{podSelector: {}, egress: [{ports: [{protocol: UDP, port: 53, dns: [{matchName: a.example}]}]}]}")
            .expect_err("a NetworkPolicy has no dns rules");
        assert_eq!(e.field, "spec.egress[0].ports[0].dns");
        assert!(e.message.contains("WardNetworkPolicy"), "{e}");
    }

    #[test]
    fn ward_network_policy_takes_fqdn_peers_and_http_rules() {
        let p = wnp("{podSelector: {}, policyTypes: [Ingress, Egress], \
             egress: [{to: [{fqdn: {matchName: API.bank.example.}}, {fqdn: {matchPattern: '*.s3.example'}}], ports: [{port: 443}]}], \
             ingress: [{ports: [{port: 8080, http: [{method: GET, path: /api/v1/products}, {pathPrefix: /api/v1/orders/}]}]}]}")
        .expect("valid WardNetworkPolicy");
        assert_eq!(p.kind, PolicyKind::WardNetworkPolicy);
        assert_eq!(p.policy_ref().to_string(), "x/w (WardNetworkPolicy)");
        let peers = p.egress.as_ref().expect("egress")[0].peers.clone().expect("peers");
        assert_eq!(
            peers.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            ["fqdn api.bank.example", "fqdn *.s3.example"]
        );
        let port = &p.ingress.as_ref().expect("ingress")[0].ports.as_ref().expect("ports")[0];
        assert_eq!(port.to_string(), "TCP/8080 http [GET /api/v1/products, * /api/v1/orders/*]");
        assert!(!port.matches(Protocol::Tcp, 8080, &[]), "an HTTP port never matches at L4 alone");
        assert!(port.matches_l4(Protocol::Tcp, 8080, &[]));
    }

    #[test]
    fn extension_fields_are_rejected_where_they_do_not_belong() {
        let np_fqdn = np("{podSelector: {}, egress: [{to: [{fqdn: {matchName: a.example}}]}]}").expect_err("NP fqdn");
        assert_eq!(np_fqdn.field, "spec.egress[0].to[0].fqdn");
        assert!(np_fqdn.message.contains("WardNetworkPolicy"), "{np_fqdn}");
        let np_http =
            np("{podSelector: {}, ingress: [{ports: [{port: 80, http: [{path: /}]}]}]}").expect_err("NP http");
        assert_eq!(np_http.field, "spec.ingress[0].ports[0].http");
        let cases = [
            ("{podSelector: {}, ingress: [{from: [{fqdn: {matchName: a.example}}]}]}", "spec.ingress[0].from[0].fqdn"),
            (
                "{podSelector: {}, egress: [{to: [{fqdn: {matchName: a.example, matchPattern: '*.a'}}]}]}",
                "spec.egress[0].to[0].fqdn",
            ),
            ("{podSelector: {}, egress: [{to: [{fqdn: {}}]}]}", "spec.egress[0].to[0].fqdn"),
            (
                "{podSelector: {}, egress: [{to: [{fqdn: {matchPattern: 'api.*.example'}}]}]}",
                "spec.egress[0].to[0].fqdn.matchPattern",
            ),
            (
                "{podSelector: {}, egress: [{to: [{fqdn: {matchName: '*.example'}}]}]}",
                "spec.egress[0].to[0].fqdn.matchName",
            ),
            (
                "{podSelector: {}, egress: [{to: [{fqdn: {matchName: a.example}, podSelector: {}}]}]}",
                "spec.egress[0].to[0]",
            ),
            ("{podSelector: {}, egress: [{ports: [{port: 80, http: [{path: /}]}]}]}", "spec.egress[0].ports[0].http"),
            (
                "{podSelector: {}, ingress: [{ports: [{port: 80, protocol: UDP, http: [{path: /}]}]}]}",
                "spec.ingress[0].ports[0].http",
            ),
            ("{podSelector: {}, ingress: [{ports: [{port: 80, http: []}]}]}", "spec.ingress[0].ports[0].http"),
            (
                "{podSelector: {}, ingress: [{ports: [{port: 80, http: [{path: /a, method: 'G T'}]}]}]}",
                "spec.ingress[0].ports[0].http[0].method",
            ),
            (
                "{podSelector: {}, ingress: [{ports: [{port: 80, http: [{path: /a/../b}]}]}]}",
                "spec.ingress[0].ports[0].http[0].path",
            ),
        ];
        for (spec, field) in cases {
            let e = wnp(spec).expect_err(spec);
            assert_eq!(e.object, "WardNetworkPolicy x/w", "{spec}");
            assert_eq!(e.field, field, "{spec}: {e}");
        }
    }

    #[test]
    fn a_missing_name_is_an_error() {
        let o = one("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: x}\nspec: {}\n");
        let Object::NetworkPolicy(p) = o else { panic!("policy") };
        let e = policy(&p, "f").expect_err("no name");
        assert_eq!((e.object.as_str(), e.field.as_str()), ("NetworkPolicy x/<unnamed>", "metadata.name"));
        let o = one("apiVersion: v1\nkind: Namespace\nmetadata: {labels: {a: b}}\n");
        let Object::Namespace(n) = o else { panic!("namespace") };
        assert_eq!(namespace(&n, "f").expect_err("no name").field, "metadata.name");
    }

    /// The upstream docs' default-deny example has no namespace: kubectl puts it in
    /// `default`, and so does Ward (it was rejected, so the example silently did nothing).
    #[test]
    fn a_missing_or_empty_namespace_defaults_to_default_for_namespaced_kinds() {
        let docs_example = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: default-deny-ingress\nspec:\n  podSelector: {}\n  policyTypes:\n  - Ingress\n";
        let Object::NetworkPolicy(np) = one(docs_example) else { panic!("policy") };
        assert!(np.metadata.namespace_defaulted());
        let p = policy(&np, "f").expect("the docs' example validates");
        assert_eq!((p.namespace.as_str(), p.name.as_str()), ("default", "default-deny-ingress"));
        assert_eq!(p.ingress, Some(vec![]), "deny all ingress");
        let Object::Pod(p) = one("apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: ''}\n") else {
            panic!("pod")
        };
        assert!(p.metadata.namespace_defaulted());
        assert_eq!(pod(&p, "f").expect("valid").0, PodKey::new("default", "a"));
        // Errors name the object in the namespace it defaulted to.
        let Object::Pod(p) = one("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nstatus: {podIP: nope}\n") else {
            panic!("pod")
        };
        assert_eq!(pod(&p, "f").expect_err("bad address").object, "Pod default/a");
        // A namespace given is kept, and cluster-scoped kinds get none.
        let Object::Pod(p) = one("apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\n") else {
            panic!("pod")
        };
        assert!(!p.metadata.namespace_defaulted());
        assert_eq!(pod(&p, "f").expect("valid").0, PodKey::new("x", "a"));
        let Object::Namespace(n) = one("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n") else {
            panic!("namespace")
        };
        assert_eq!(namespace(&n, "f").expect("valid").0, "x");
        assert_eq!(Object::Namespace(n).describe(), "Namespace x");
    }

    #[test]
    fn policy_types_default_like_the_api_server() {
        // No policyTypes, no egress: ingress only, and no ingress rules means deny all.
        let p = ok("{podSelector: {}}");
        assert_eq!((p.ingress, p.egress), (Some(vec![]), None));
        // Egress rules make it an egress policy too.
        let p = ok("{podSelector: {}, egress: [{}]}");
        assert_eq!((p.ingress, p.egress), (Some(vec![]), Some(vec![Rule { peers: None, ports: None }])));
        // ... but an empty egress list does not.
        let p = ok("{podSelector: {}, egress: []}");
        assert_eq!(p.egress, None);
        // `policyTypes: []` is the same as omitting it.
        let p = ok("{podSelector: {}, policyTypes: [], egress: [{}]}");
        assert!(p.ingress.is_some() && p.egress.is_some());
        // Explicit types win: rules of a missing type are ignored.
        let p = ok("{podSelector: {}, policyTypes: [Egress], ingress: [{}]}");
        assert_eq!((p.ingress, p.egress), (None, Some(vec![])));
        let p = ok("{podSelector: {}, policyTypes: [Ingress], egress: [{}]}");
        assert_eq!((p.ingress, p.egress), (Some(vec![]), None));
    }

    #[test]
    fn empty_lists_mean_everything_and_protocol_defaults_to_tcp() {
        let p = ok("{podSelector: {}, ingress: [{from: [], ports: []}, {ports: [{port: 80}, {protocol: UDP}]}]}");
        let rules = p.ingress.expect("ingress policy");
        assert_eq!(rules[0], Rule { peers: None, ports: None });
        assert_eq!(
            rules[1].ports,
            Some(vec![
                PortSpec { protocol: Protocol::Tcp, port: PortRef::Number(80), end_port: None, http: None, dns: None },
                PortSpec { protocol: Protocol::Udp, port: PortRef::Any, end_port: None, http: None, dns: None },
            ])
        );
    }

    #[test]
    fn cidrs_are_masked_and_ipv4_mapped_prefixes_become_ipv4() {
        let p = ok(
            "{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.1.2.3/4, except: [10.1.2.3/16]}}, {ipBlock: {cidr: '::ffff:10.0.0.0/104'}}]}]}",
        );
        let peers = p.egress.expect("egress")[0].peers.clone().expect("peers");
        assert_eq!(
            peers[0],
            Peer::IpBlock {
                cidr: "0.0.0.0/4".parse().expect("net"),
                except: vec!["10.1.0.0/16".parse().expect("net")]
            }
        );
        assert_eq!(peers[1], Peer::IpBlock { cidr: "10.0.0.0/8".parse().expect("net"), except: vec![] });
        assert!(peers[0].block_contains("10.2.0.1".parse().expect("ip")));
        assert!(!peers[0].block_contains("10.1.0.1".parse().expect("ip")));
        assert!(peers[1].block_contains("::ffff:10.9.9.9".parse().expect("ip")), "mapped addresses are IPv4");
    }

    #[test]
    fn valid_port_names_pass() {
        for name in ["http", "serve-80-tcp", "a", "h2c", "abcdefghijklmno", "1a"] {
            assert!(is_port_name(name), "{name}");
        }
        for name in ["", "80", "Http", "a--b", "-a", "a-", "abcdefghijklmnop", "a.b"] {
            assert!(!is_port_name(name), "{name}");
        }
    }

    fn pod_of(yaml: &str) -> Result<(PodKey, PodInfo), ObjectError> {
        let Object::Pod(p) = one(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: a, namespace: x, labels: {{app: web}}}}\n{yaml}"
        )) else {
            panic!("pod")
        };
        pod(&p, "t.yaml")
    }

    #[test]
    fn pods_keep_named_ports_and_canonical_addresses() {
        let (key, info) = pod_of(
            "spec:\n  containers:\n  - {name: c1, ports: [{name: http, containerPort: 8080}, {containerPort: 9090}]}\n  - {name: c2, ports: [{name: dns, containerPort: 53, protocol: UDP}]}\nstatus: {podIP: 10.0.0.5, podIPs: [{ip: 10.0.0.5}, {ip: 'fd00::5'}]}\n",
        )
        .expect("valid pod");
        assert_eq!(key, PodKey::new("x", "a"));
        assert_eq!(
            info.ports,
            vec![
                NamedPort { name: "dns".into(), protocol: Protocol::Udp, port: 53 },
                NamedPort { name: "http".into(), protocol: Protocol::Tcp, port: 8080 },
            ]
        );
        let want: Vec<IpAddr> = vec!["10.0.0.5".parse().expect("ip"), "fd00::5".parse().expect("ip")];
        assert_eq!(info.ips, want);
        assert_eq!(info.labels["app"], "web");
    }

    /// The API server accepts a port name shared by two containers (upstream
    /// `validateContainerPorts` checks names per container): so does Ward, keeping every
    /// port of the name, each once, in an order that does not depend on the containers'.
    #[test]
    fn containers_may_share_a_port_name_and_the_ports_do_not_depend_on_container_order() {
        let web = "{name: web, ports: [{name: http, containerPort: 8080}, {name: metrics, containerPort: 9100}]}";
        let sidecar =
            "{name: sidecar, ports: [{name: http, containerPort: 9090}, {name: http-alt, containerPort: 8080}]}";
        let dns = "{name: dns, ports: [{name: http, containerPort: 8080, protocol: UDP}]}";
        let twin = "{name: twin, ports: [{name: http, containerPort: 8080}]}";
        let (_, info) = pod_of(&format!("spec: {{containers: [{web}, {sidecar}, {dns}, {twin}]}}\n")).expect("valid");
        let np = |name: &str, protocol, port| NamedPort { name: name.into(), protocol, port };
        assert_eq!(
            info.ports,
            vec![
                np("http", Protocol::Tcp, 8080),
                np("http", Protocol::Tcp, 9090),
                np("http", Protocol::Udp, 8080),
                np("http-alt", Protocol::Tcp, 8080),
                np("metrics", Protocol::Tcp, 9100),
            ]
        );
        let (_, reordered) =
            pod_of(&format!("spec: {{containers: [{twin}, {dns}, {sidecar}, {web}]}}\n")).expect("valid");
        assert_eq!(reordered, info, "the same ports in another container order");
        let key = crate::identity::LabelKey::of(&PodKey::new("x", "a"), &info);
        assert_eq!(key, crate::identity::LabelKey::of(&PodKey::new("x", "b"), &reordered));
    }

    #[test]
    fn finished_and_host_network_pods_have_no_pod_addresses() {
        let (_, info) = pod_of("status: {phase: Succeeded, podIP: 10.0.0.5}\n").expect("valid");
        assert!(info.ips.is_empty());
        let (_, info) = pod_of("spec: {hostNetwork: true}\nstatus: {podIP: 192.168.0.10}\n").expect("valid");
        assert!(info.ips.is_empty());
    }

    #[test]
    fn every_pod_error_names_the_field() {
        let cases = [
            (
                "spec: {containers: [{name: c, ports: [{name: dns, containerPort: 53}]}, {name: d, ports: [{name: http, containerPort: 80}, {name: http, containerPort: 81, protocol: UDP}]}]}\n",
                "spec.containers[1].ports[1].name",
            ),
            (
                "spec: {containers: [{name: c, ports: [{containerPort: 0}]}]}\n",
                "spec.containers[0].ports[0].containerPort",
            ),
            (
                "spec: {containers: [{name: c, ports: [{containerPort: 70000}]}]}\n",
                "spec.containers[0].ports[0].containerPort",
            ),
            (
                "spec: {containers: [{name: c, ports: [{containerPort: 80, name: HTTP}]}]}\n",
                "spec.containers[0].ports[0].name",
            ),
            (
                "spec: {containers: [{name: c, ports: [{containerPort: 80, protocol: ICMP}]}]}\n",
                "spec.containers[0].ports[0].protocol",
            ),
            ("status: {podIP: 10.0.0.300}\n", "status.podIP"),
            ("status: {podIPs: [{ip: 10.0.0.1}, {ip: nope}]}\n", "status.podIPs[1].ip"),
        ];
        for (yaml, field) in cases {
            let e = pod_of(yaml).expect_err(yaml);
            assert_eq!((e.object.as_str(), e.field.as_str()), ("Pod x/a", field), "{yaml}: {e}");
        }
    }
}
