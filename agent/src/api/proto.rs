//! Request and response types of the local API, shared by the agent (server), the CNI
//! plugin and the CLI (clients).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use crate::datastore::{Duplicate, Health, Notice, Rejection, Revision, file_hash};

/// Where the agent listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/ward/agent.sock";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// CNI ADD: a pod's interface exists; protect it before it carries traffic. The agent
    /// answers only once the endpoint's maps are written and its programs attached.
    Register(EndpointRegistration),
    /// CNI DEL: forget the endpoint (idempotent).
    Deregister {
        container_id: String,
        ifname: String,
    },
    /// CNI STATUS: can the agent protect a new pod now? Cheap (no map walks).
    Readiness,
    /// CNI GC: forget every endpoint of `network` that is not one of `valid` (attachments the
    /// runtime still has). Endpoints registered without a network name count as any network's.
    Gc {
        network: String,
        valid: Vec<AttachmentKey>,
    },
    Status,
    Endpoints,
    /// Why would traffic from `from` to `to` on `protocol`/`port` be allowed or denied?
    /// `from`/`to` are `namespace/pod` or an IP address.
    Explain {
        from: String,
        to: String,
        protocol: String,
        port: u16,
        /// An HTTP request to judge against the destination's HTTP rules (TCP only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        http_method: Option<String>,
        /// Its request target, as a client would send it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        http_path: Option<String>,
    },
    /// `ward trace`: sends one real probe from `from` (`namespace/pod`, a pod of this node) to
    /// `to` (`namespace/pod` or an IP address) on `protocol` (TCP or UDP) `port`, and reports
    /// what each program did to it (`Response::Trace`).
    Trace {
        from: String,
        to: String,
        protocol: String,
        port: u16,
    },
    /// The DNS proxy's latest flow records.
    DnsFlows,
    /// The datastore's objects as the agent holds them (validated), for checking that it
    /// converged to its source.
    Datastore,
    /// What `/metrics` renders: counters, every compiled rule's hits, map fill, latency.
    Metrics,
    /// Flow records from the node's history (`Response::Flows`); with `follow`, the
    /// connection stays open and each later matching flow follows as its own line
    /// (`Response::Flow`, or `Response::FlowsLost` when this reader fell behind).
    Flows {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last: Option<usize>,
        #[serde(default)]
        follow: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<crate::flows::record::FlowTime>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<crate::flows::record::FlowTime>,
        #[serde(default)]
        filter: crate::flows::filter::Filter,
    },
}

/// A CNI attachment: `(CNI_CONTAINERID, CNI_IFNAME)`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct AttachmentKey {
    pub container_id: String,
    pub ifname: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointRegistration {
    /// The CNI network (netconf `name`) the pod was added to; empty from plugins older than
    /// this field.
    #[serde(default)]
    pub network: String,
    pub container_id: String,
    /// Interface name inside the pod (CNI_IFNAME).
    pub ifname: String,
    /// Path of the pod's network namespace (CNI_NETNS).
    pub netns: String,
    pub pod_namespace: String,
    pub pod_name: String,
    /// The veth's host-side name and ifindex, in the agent's network namespace.
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub ips: Vec<IpAddr>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Registered {
        endpoint_id: u32,
        identity: u32,
    },
    Deregistered {
        existed: bool,
    },
    Readiness(Readiness),
    /// The endpoints GC forgot, as `container_id/ifname`.
    Collected {
        forgotten: Vec<AttachmentKey>,
    },
    Status(Box<StatusReport>),
    Endpoints {
        endpoints: Vec<EndpointStatus>,
    },
    Explanation {
        allowed: bool,
        text: String,
    },
    DnsFlows {
        flows: Vec<crate::dns::flow::DnsFlow>,
    },
    Datastore {
        snapshot: Box<crate::datastore::Snapshot>,
    },
    /// The matching flows of the history, oldest first; `not_seen`: flows that had already
    /// fallen out of the history and might have matched.
    Flows {
        flows: Vec<crate::flows::record::Flow>,
        not_seen: u64,
        /// Flow events the kernel could not deliver (ring buffer full) since the agent started.
        #[serde(default)]
        lost_events: u64,
    },
    /// One live flow (after `Flows`, when following).
    Flow {
        flow: Box<crate::flows::record::Flow>,
    },
    /// Flows this follower will not see: it fell behind the live stream (`reader`), or the
    /// kernel's ring buffer was full (`kernel`).
    FlowsLost {
        missed: u64,
        #[serde(default)]
        source: crate::flows::history::LostSource,
    },
    Error {
        message: String,
    },
    Metrics(Box<crate::metrics::Report>),
    /// What each program did to a traced probe (`Request::Trace`).
    Trace(Box<crate::daemon::trace::TraceReport>),
}

/// Whether the agent can protect new pods: it is up (it answered) and its datastore has
/// synced, i.e. it has read its whole source once and applied it to the kernel.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub datastore_synced: bool,
    /// Why not, when not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusReport {
    pub node: String,
    pub version: String,
    /// Datastore kind and location, e.g. `directory:/etc/ward/manifests` or
    /// `kubernetes:https://10.96.0.1:443`.
    pub datastore: String,
    /// `WARD_CONFIG.policy_rev` after the last applied change.
    pub policy_revision: u32,
    /// How far the datastore's changes are applied to the kernel maps. For a directory,
    /// every manifest file whose content the agent has processed: file name (relative to the
    /// directory) to the FNV-1a 64 hash of its bytes, 16 lowercase hex digits; a client that
    /// wrote a file knows its change is enforced once its hash shows here (objects of that
    /// content that were rejected are listed in `rejected`; their last valid versions stay in
    /// force). For the API, the highest resourceVersion applied per kind.
    pub applied: Revision,
    /// Whether the datastore has been read in full, and reaches its source (since when not).
    #[serde(default)]
    pub datastore_health: Health,
    /// The Service ranges the agent was told (`--service-cidr`): traffic to them is decided
    /// after kube-proxy's translation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_cidrs: Vec<String>,
    /// The cluster pod ranges (every Node's `spec.podCIDRs`, `--pod-cidr`): an address in one
    /// that no known pod holds is a pod not known yet, its drops `identity_unknown`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_cidrs: Vec<String>,
    /// The interfaces that decide Service traffic leaving the node (`to_netdev`).
    #[serde(default)]
    pub uplinks: Vec<String>,
    /// How same-node pod traffic is delivered (`--local-delivery`: `peer` or `route`).
    #[serde(default)]
    pub local_delivery: String,
    pub namespaces: usize,
    pub pods: usize,
    pub policies: usize,
    pub endpoints: usize,
    pub identities: usize,
    pub map_entries: BTreeMap<String, usize>,
    /// Objects rejected as invalid; the last valid version of each stays in force.
    pub rejected: Vec<Rejection>,
    /// Addresses claimed by more than one owner (the node, a pod this node's CNI placed,
    /// other Pod objects) and how each was settled; the refused claims are not in force.
    #[serde(default)]
    pub address_conflicts: Vec<String>,
    /// Objects declared more than once (in two files, or twice in one): which files, and
    /// whose version is in force (the last file in name order that has a valid one).
    #[serde(default)]
    pub duplicates: Vec<Duplicate>,
    /// What the agent filled in that a manifest left out (e.g. a namespace defaulted to
    /// `default`), per file and object.
    #[serde(default)]
    pub notices: Vec<Notice>,
    /// The last failure to apply state to the kernel, if the latest attempt failed.
    pub last_error: Option<String>,
    /// Packets per reason code name, summed over CPUs.
    pub reason_counters: BTreeMap<String, u64>,
    /// New flows each policy rule allowed, summed over CPUs (rules that allowed none are
    /// left out).
    pub rule_counters: Vec<RuleCounter>,
    /// The DNS proxy's counters (`None` when it does not run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<crate::dns::flow::DnsStatus>,
    /// HTTP requests (and dropped packets of HTTP-policed connections) per reason.
    #[serde(default)]
    pub http_counters: BTreeMap<String, u64>,
    /// The newest HTTP decisions, oldest first.
    #[serde(default)]
    pub http_recent: Vec<HttpDecision>,
    /// HTTP rules that do not act as written (moot under an L4 allow, or too many).
    #[serde(default)]
    pub http_warnings: Vec<String>,
}

/// The flow record of one HTTP decision (`l7.http`), as `ward status` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HttpDecision {
    pub from: String,
    pub to: String,
    pub method: String,
    /// The path as the client wrote it, without the query.
    pub path: String,
    /// The path as normalised, the form rules are compared with.
    pub normalized: String,
    /// `allowed` or `denied`.
    pub verdict: String,
    /// `http_allowed`, `http_no_rule`, `http_refused`, ...
    pub reason: String,
    /// For a refused request, why (`encoded_slash_or_backslash`, `content_length_and_chunked`, ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// The rule that allowed it: `namespace/policy ingress rule N port P http[H]`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rule: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuleCounter {
    pub rule_id: u32,
    /// `namespace/name` of the policy.
    pub policy: String,
    pub direction: String,
    /// Index into the policy's `ingress` or `egress` list.
    pub index: usize,
    pub flows: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointStatus {
    pub endpoint_id: u32,
    pub container_id: String,
    pub pod: String,
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub ips: Vec<IpAddr>,
    pub identity: u32,
    pub labels: BTreeMap<String, String>,
    pub ingress_isolated: bool,
    pub egress_isolated: bool,
    /// Flows conntrack holds for this endpoint (its share of `WARD_CT` is the agent's
    /// `--ct-quota`).
    #[serde(default)]
    pub tracked_flows: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_hash_is_sixteen_hex_digits() {
        assert_eq!(file_hash(b"a"), "af63dc4c8601ec8c");
        assert_eq!(file_hash(b""), "cbf29ce484222325");
    }

    #[test]
    fn requests_serialise_with_an_op_tag() {
        let j = serde_json::to_string(&Request::Status).unwrap();
        assert_eq!(j, r#"{"op":"status"}"#);
        let back: Request = serde_json::from_str(&j).unwrap();
        assert_eq!(back, Request::Status);
        let gc = Request::Gc {
            network: "ward".into(),
            valid: vec![AttachmentKey { container_id: "c".into(), ifname: "eth0".into() }],
        };
        let j = serde_json::to_string(&gc).unwrap();
        assert_eq!(j, r#"{"op":"gc","network":"ward","valid":[{"container_id":"c","ifname":"eth0"}]}"#);
        assert_eq!(serde_json::from_str::<Request>(&j).unwrap(), gc);
    }

    #[test]
    fn registrations_from_older_plugins_have_no_network() {
        let old = r#"{"container_id":"c","ifname":"eth0","netns":"/n","pod_namespace":"a","pod_name":"b",
            "host_ifname":"wd1","host_ifindex":3,"ips":[]}"#;
        let r: EndpointRegistration = serde_json::from_str(old).unwrap();
        assert_eq!(r.network, "");
    }
}
