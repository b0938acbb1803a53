//! The network configuration the runtime writes to the plugin's stdin: one plugin's object
//! from the configuration list, with the list's `cniVersion` and `name` inserted (spec 1.1.0,
//! section 3).
//!
//! ```json
//! {"cniVersion":"1.1.0","name":"ward","type":"ward-cni",
//!  "agentSocket":"/run/ward/agent.sock","podCIDRs":["10.244.1.0/24","fd77:1::/64"],
//!  "dataDir":"/var/lib/cni/ward","mtu":1500,"addressQuarantineSeconds":60}
//! ```
//!
//! Addresses come from Ward's own IPAM over `podCIDRs`, or from a delegated IPAM plugin named
//! by an `ipam` section instead (`{"ipam": {"type": "host-local", ...}}`, section 4); one or
//! the other, never both.
//!
//! Parsed field by field from a JSON value (not with a derived deserializer) so that every
//! error names the field at fault, e.g. `podCIDRs[1]: invalid CIDR "x"`. `prevResult` is kept
//! as JSON (`result` reads it); `runtimeConfig`, `args`, `capabilities` and unknown fields are
//! ignored. Pure: no I/O.

use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde_json::{Map, Value};

use crate::api::proto::DEFAULT_SOCKET;
use crate::endpoint::ipam::{PodRange, RangeError};

/// The spec versions this plugin speaks, oldest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    pub const ALL: [Self; 3] = [Self::V0_4_0, Self::V1_0_0, Self::V1_1_0];
    pub const LATEST: Self = Self::V1_1_0;

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::V0_4_0 => "0.4.0",
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }
}

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/ward";
/// How long a released address stays out of use by default (`addressQuarantineSeconds`).
/// Every node maps a pod's address to the pod's identity until its datastore reports the pod
/// gone: the kubelet removes the Pod object only after its DEL, and each agent's watch then
/// delivers the deletion, normally within a few seconds. Handing the address to a new pod
/// before then would let peers that still hold the old identity treat the new pod as the old
/// one (allowing what the old pod was allowed). A minute covers that with room for a slow
/// API server or an agent restart; AWS's VPC CNI keeps a 30 s cooldown for the same reason.
pub const DEFAULT_QUARANTINE: Duration = Duration::from_secs(60);
/// The longest quarantine a configuration may ask for (a day).
const MAX_QUARANTINE_SECS: u64 = 86_400;
/// The key of GC's list of attachments that are still valid. libcni (the reference
/// runtime library, which containerd and podman use) sends this one; the spec's text names
/// [`GC_ATTACHMENTS_SPEC_TEXT`], which is accepted too.
pub const GC_ATTACHMENTS: &str = "cni.dev/valid-attachments";
pub const GC_ATTACHMENTS_SPEC_TEXT: &str = "cni.dev/attachments";
pub const DEFAULT_MTU: u32 = 1500;
const MIN_MTU_IPV4: u32 = 68;
const MIN_MTU_IPV6: u32 = 1280;
/// The largest MTU a veth accepts.
const MAX_MTU: u32 = 65535;

/// Where a pod's addresses come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ipam {
    /// Ward's own store over the node's pod CIDRs.
    Ward {
        /// At most one range per family, in the configured order.
        ranges: Vec<PodRange>,
        /// How long a released address is not handed out again.
        quarantine: Duration,
    },
    /// An IPAM plugin found in `CNI_PATH` under `ipam.type`, given the whole configuration.
    Delegated { plugin: String },
}

#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    pub cni_version: CniVersion,
    /// The network's name: also the state directory's name under `data_dir`.
    pub name: String,
    pub agent_socket: PathBuf,
    pub ipam: Ipam,
    pub data_dir: PathBuf,
    pub mtu: u32,
    /// The result of the previous plugin of the chain (ADD), or of the whole ADD (DEL, CHECK).
    pub prev_result: Option<Value>,
}

impl NetConf {
    /// Ward's own ranges (none when IPAM is delegated).
    pub fn pod_ranges(&self) -> &[PodRange] {
        match &self.ipam {
            Ipam::Ward { ranges, .. } => ranges,
            Ipam::Delegated { .. } => &[],
        }
    }
}

/// A `(CNI_CONTAINERID, CNI_IFNAME)` pair GC was told is still valid.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ValidAttachment {
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, thiserror::Error)]
pub enum NetConfError {
    #[error("the network configuration is not valid JSON: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("the network configuration must be a JSON object")]
    NotAnObject,
    #[error("{field}: required field is missing")]
    Missing { field: &'static str },
    #[error("{field}: expected {expected}")]
    WrongType { field: String, expected: &'static str },
    #[error("cniVersion: {version:?} is not supported (supported: 0.4.0, 1.0.0, 1.1.0)")]
    UnsupportedVersion { version: String },
    #[error(
        "name: {name:?} is not a valid network name (letters, digits, '_', '.' and '-', starting with a letter or digit)"
    )]
    InvalidName { name: String },
    #[error("{field}: {value:?} must be an absolute path")]
    RelativePath { field: &'static str, value: String },
    #[error("{field}: invalid CIDR {value:?}")]
    InvalidCidr { field: String, value: String },
    #[error("{field}: {source}")]
    Range {
        field: String,
        #[source]
        source: RangeError,
    },
    #[error("{field}: a second {family} CIDR (at most one per family)")]
    SecondOfFamily { field: String, family: &'static str },
    #[error("podCIDRs: must list at least one CIDR")]
    NoCidrs,
    #[error("podCIDRs: required field is missing (or delegate IPAM with an ipam section)")]
    NoIpam,
    #[error("podCIDRs and ipam: give one of them, not both (podCIDRs is Ward's own IPAM, ipam delegates to a plugin)")]
    TwoIpams,
    #[error("ipam.type: {value:?} is not a plugin name (a file name in CNI_PATH, without '/')")]
    IpamType { value: String },
    #[error("addressQuarantineSeconds: {value} is out of range (0 to {MAX_QUARANTINE_SECS})")]
    Quarantine { value: i128 },
    #[error(
        "plugins: this is a configuration list; the runtime runs each of its plugins with that plugin's object (CNI spec, section 3)"
    )]
    ConfigList,
    #[error("cniVersion: {command} needs version 1.1.0 or later (the configuration says {version})")]
    TooOldFor { command: &'static str, version: &'static str },
    #[error("{GC_ATTACHMENTS}: required for GC (the attachments that are still valid)")]
    NoValidAttachments,
    #[error("mtu: {value} is out of range ({min} to {MAX_MTU}{reason})")]
    Mtu { value: i128, min: u32, reason: &'static str },
}

impl NetConfError {
    /// Whether the error is about the version (CNI error code 1) rather than the content.
    pub fn is_version(&self) -> bool {
        matches!(self, Self::UnsupportedVersion { .. } | Self::TooOldFor { .. })
    }

    pub fn is_decode(&self) -> bool {
        matches!(self, Self::Decode(_) | Self::NotAnObject)
    }
}

/// The requested version, if the input says which supported one it is; error replies use it.
pub fn peek_version(stdin: &[u8]) -> Option<CniVersion> {
    let value: Value = serde_json::from_slice(stdin).ok()?;
    CniVersion::parse(value.get("cniVersion")?.as_str()?)
}

pub(crate) fn string<'a>(obj: &'a Map<String, Value>, field: &'static str) -> Result<Option<&'a str>, NetConfError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(NetConfError::WrongType { field: field.to_owned(), expected: "a string" }),
    }
}

pub(crate) fn required<'a>(obj: &'a Map<String, Value>, field: &'static str) -> Result<&'a str, NetConfError> {
    string(obj, field)?.ok_or(NetConfError::Missing { field })
}

fn absolute_path(obj: &Map<String, Value>, field: &'static str, default: &str) -> Result<PathBuf, NetConfError> {
    let value = string(obj, field)?.unwrap_or(default);
    if value.starts_with('/') {
        Ok(PathBuf::from(value))
    } else {
        Err(NetConfError::RelativePath { field, value: value.to_owned() })
    }
}

/// The spec's rule for network names; it also makes the name a safe directory name.
fn valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn ipam(obj: &Map<String, Value>) -> Result<Ipam, NetConfError> {
    let has = |field| obj.get(field).is_some_and(|v| !v.is_null());
    match (has("podCIDRs"), has("ipam")) {
        (true, true) => Err(NetConfError::TwoIpams),
        (false, false) => Err(NetConfError::NoIpam),
        (true, false) => {
            let ranges = pod_ranges(obj)?;
            let quarantine = quarantine(obj)?;
            Ok(Ipam::Ward { ranges, quarantine })
        }
        (false, true) => {
            let Some(Value::Object(section)) = obj.get("ipam") else {
                return Err(NetConfError::WrongType { field: "ipam".into(), expected: "an object" });
            };
            let plugin = match section.get("type") {
                None | Some(Value::Null) => return Err(NetConfError::Missing { field: "ipam.type" }),
                Some(Value::String(s)) => s,
                Some(_) => return Err(NetConfError::WrongType { field: "ipam.type".into(), expected: "a string" }),
            };
            // The spec: a file name, without characters paths do not allow in one.
            if plugin.is_empty() || plugin == "." || plugin == ".." || plugin.contains(['/', '\\', '\0']) {
                return Err(NetConfError::IpamType { value: plugin.clone() });
            }
            Ok(Ipam::Delegated { plugin: plugin.clone() })
        }
    }
}

fn quarantine(obj: &Map<String, Value>) -> Result<Duration, NetConfError> {
    const FIELD: &str = "addressQuarantineSeconds";
    let wrong = || NetConfError::WrongType { field: FIELD.to_owned(), expected: "an integer" };
    let value = match obj.get(FIELD) {
        None | Some(Value::Null) => return Ok(DEFAULT_QUARANTINE),
        Some(Value::Number(n)) => {
            n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from)).ok_or_else(wrong)?
        }
        Some(_) => return Err(wrong()),
    };
    u64::try_from(value)
        .ok()
        .filter(|v| *v <= MAX_QUARANTINE_SECS)
        .map(Duration::from_secs)
        .ok_or(NetConfError::Quarantine { value })
}

fn pod_ranges(obj: &Map<String, Value>) -> Result<Vec<PodRange>, NetConfError> {
    const FIELD: &str = "podCIDRs";
    let items = match obj.get(FIELD) {
        None | Some(Value::Null) => return Err(NetConfError::Missing { field: FIELD }),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(NetConfError::WrongType { field: FIELD.to_owned(), expected: "an array of CIDR strings" });
        }
    };
    if items.is_empty() {
        return Err(NetConfError::NoCidrs);
    }
    let mut ranges: Vec<PodRange> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let field = format!("{FIELD}[{i}]");
        let Value::String(text) = item else {
            return Err(NetConfError::WrongType { field, expected: "a CIDR string" });
        };
        let cidr: IpNet =
            text.parse().map_err(|_| NetConfError::InvalidCidr { field: field.clone(), value: text.clone() })?;
        let range = PodRange::new(cidr).map_err(|source| NetConfError::Range { field: field.clone(), source })?;
        if ranges.iter().any(|r| r.is_ipv4() == range.is_ipv4()) {
            let family = if range.is_ipv4() { "IPv4" } else { "IPv6" };
            return Err(NetConfError::SecondOfFamily { field, family });
        }
        ranges.push(range);
    }
    Ok(ranges)
}

fn mtu(obj: &Map<String, Value>, ranges: &[PodRange]) -> Result<u32, NetConfError> {
    let wrong = || NetConfError::WrongType { field: "mtu".to_owned(), expected: "an integer" };
    let value = match obj.get("mtu") {
        None | Some(Value::Null) => return Ok(DEFAULT_MTU),
        Some(Value::Number(n)) => {
            n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from)).ok_or_else(wrong)?
        }
        Some(_) => return Err(wrong()),
    };
    let (min, reason) =
        if ranges.iter().any(|r| !r.is_ipv4()) { (MIN_MTU_IPV6, ", IPv6 needs 1280") } else { (MIN_MTU_IPV4, "") };
    u32::try_from(value).ok().filter(|v| (min..=MAX_MTU).contains(v)).ok_or(NetConfError::Mtu { value, min, reason })
}

/// The configuration as a JSON object.
pub fn object(stdin: &[u8]) -> Result<Map<String, Value>, NetConfError> {
    match serde_json::from_slice(stdin).map_err(NetConfError::Decode)? {
        Value::Object(obj) => Ok(obj),
        _ => Err(NetConfError::NotAnObject),
    }
}

/// Parses and validates the configuration.
pub fn parse(stdin: &[u8]) -> Result<NetConf, NetConfError> {
    parse_object(object(stdin)?)
}

/// For STATUS and GC, which exist from 1.1.0 on (older configurations cannot ask for them).
pub fn require_1_1(conf: &NetConf, command: &'static str) -> Result<(), NetConfError> {
    if conf.cni_version >= CniVersion::V1_1_0 {
        Ok(())
    } else {
        Err(NetConfError::TooOldFor { command, version: conf.cni_version.as_str() })
    }
}

/// GC's still-valid attachments, from [`GC_ATTACHMENTS`] (or the spec text's
/// [`GC_ATTACHMENTS_SPEC_TEXT`]). A missing list is an error rather than "none": taking it
/// for none would release every pod of the node. `null` is how libcni encodes an empty list.
pub fn valid_attachments(stdin: &[u8]) -> Result<Vec<ValidAttachment>, NetConfError> {
    let obj = object(stdin)?;
    let (key, value) = [GC_ATTACHMENTS, GC_ATTACHMENTS_SPEC_TEXT]
        .into_iter()
        .find_map(|k| obj.get(k).map(|v| (k, v)))
        .ok_or(NetConfError::NoValidAttachments)?;
    let items = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        _ => return Err(NetConfError::WrongType { field: key.to_owned(), expected: "an array of attachments" }),
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(a) = item else {
            return Err(NetConfError::WrongType {
                field: format!("{key}[{i}]"),
                expected: "an object with containerID and ifname",
            });
        };
        let field = |name: &str| -> Result<String, NetConfError> {
            let field = format!("{key}[{i}].{name}");
            match a.get(name) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                None | Some(Value::Null) => Err(NetConfError::WrongType { field, expected: "a string (required)" }),
                Some(_) => Err(NetConfError::WrongType { field, expected: "a non-empty string" }),
            }
        };
        out.push(ValidAttachment { container_id: field("containerID")?, ifname: field("ifname")? });
    }
    Ok(out)
}

fn parse_object(obj: Map<String, Value>) -> Result<NetConf, NetConfError> {
    if obj.contains_key("plugins") {
        return Err(NetConfError::ConfigList);
    }
    let version = required(&obj, "cniVersion")?;
    let cni_version =
        CniVersion::parse(version).ok_or_else(|| NetConfError::UnsupportedVersion { version: version.to_owned() })?;
    let name = required(&obj, "name")?;
    if !valid_network_name(name) {
        return Err(NetConfError::InvalidName { name: name.to_owned() });
    }
    // `type` names this plugin; the runtime already used it to find us.
    string(&obj, "type")?;
    let agent_socket = absolute_path(&obj, "agentSocket", DEFAULT_SOCKET)?;
    let data_dir = absolute_path(&obj, "dataDir", DEFAULT_DATA_DIR)?;
    let ipam = ipam(&obj)?;
    let ranges = match &ipam {
        Ipam::Ward { ranges, .. } => ranges.as_slice(),
        Ipam::Delegated { .. } => &[],
    };
    let mtu = mtu(&obj, ranges)?;
    let prev_result = match obj.get("prevResult") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(_) => return Err(NetConfError::WrongType { field: "prevResult".into(), expected: "an object" }),
    };
    Ok(NetConf { cni_version, name: name.to_owned(), agent_socket, ipam, data_dir, mtu, prev_result })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"cniVersion":"1.0.0","name":"ward","type":"ward-cni",
        "agentSocket":"/run/ward/agent.sock","podCIDRs":["10.244.1.0/24","fd77:1::/64"],
        "dataDir":"/var/lib/ward/ipam","mtu":1500,"prevResult":{"ips":[]}}"#;

    fn with(field: &str, value: Value) -> Vec<u8> {
        let mut v: Value = serde_json::from_str(GOOD).unwrap();
        match value {
            Value::Null => v.as_object_mut().unwrap().remove(field),
            value => v.as_object_mut().unwrap().insert(field.to_owned(), value),
        };
        serde_json::to_vec(&v).unwrap()
    }

    fn err(field: &str, value: Value) -> String {
        parse(&with(field, value)).unwrap_err().to_string()
    }

    #[test]
    fn the_documented_example_parses() {
        let c = parse(GOOD.as_bytes()).unwrap();
        assert_eq!(c.cni_version, CniVersion::V1_0_0);
        assert_eq!(c.name, "ward");
        assert_eq!(c.agent_socket, PathBuf::from("/run/ward/agent.sock"));
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/ward/ipam"));
        assert_eq!(c.mtu, 1500);
        let cidrs: Vec<String> = c.pod_ranges().iter().map(|r| r.cidr().to_string()).collect();
        assert_eq!(cidrs, ["10.244.1.0/24", "fd77:1::/64"]);
        assert!(matches!(c.ipam, Ipam::Ward { quarantine, .. } if quarantine == DEFAULT_QUARANTINE));
        assert_eq!(c.prev_result, Some(serde_json::json!({"ips": []})));
    }

    #[test]
    fn an_ipam_section_delegates_and_excludes_pod_cidrs() {
        let delegated = with("podCIDRs", Value::Null);
        let mut v: Value = serde_json::from_slice(&delegated).unwrap();
        v["ipam"] = serde_json::json!({"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}]]});
        let c = parse(v.to_string().as_bytes()).unwrap();
        assert_eq!(c.ipam, Ipam::Delegated { plugin: "host-local".into() });
        assert!(c.pod_ranges().is_empty());
        let both = {
            let mut v: Value = serde_json::from_str(GOOD).unwrap();
            v["ipam"] = serde_json::json!({"type": "host-local"});
            v.to_string()
        };
        assert!(parse(both.as_bytes()).unwrap_err().to_string().starts_with("podCIDRs and ipam: give one"));
        let ipam_err = |ipam: Value| {
            let mut v: Value = serde_json::from_slice(&with("podCIDRs", Value::Null)).unwrap();
            v["ipam"] = ipam;
            parse(v.to_string().as_bytes()).unwrap_err().to_string()
        };
        assert_eq!(
            ipam_err(serde_json::json!({"type": "../bin/sh"})),
            r#"ipam.type: "../bin/sh" is not a plugin name (a file name in CNI_PATH, without '/')"#
        );
        assert_eq!(ipam_err(serde_json::json!({"subnet": "x"})), "ipam.type: required field is missing");
        assert_eq!(ipam_err(serde_json::json!("host-local")), "ipam: expected an object");
        assert_eq!(ipam_err(serde_json::json!({"type": 3})), "ipam.type: expected a string");
        let neither = with("podCIDRs", Value::Null);
        assert!(parse(&neither).unwrap_err().to_string().starts_with("podCIDRs: required field is missing (or"));
    }

    #[test]
    fn quarantine_prev_result_and_config_lists_are_checked() {
        let c = parse(&with("addressQuarantineSeconds", serde_json::json!(5))).unwrap();
        assert!(matches!(c.ipam, Ipam::Ward { quarantine, .. } if quarantine == Duration::from_secs(5)));
        assert_eq!(
            err("addressQuarantineSeconds", serde_json::json!(-1)),
            "addressQuarantineSeconds: -1 is out of range (0 to 86400)"
        );
        assert_eq!(
            err("addressQuarantineSeconds", serde_json::json!("1m")),
            "addressQuarantineSeconds: expected an integer"
        );
        assert_eq!(err("prevResult", serde_json::json!([1])), "prevResult: expected an object");
        assert!(
            err("plugins", serde_json::json!([{"type": "ward-cni"}]))
                .starts_with("plugins: this is a configuration list")
        );
    }

    #[test]
    fn gc_reads_the_valid_attachments_under_either_key() {
        let list = serde_json::json!([{"containerID": "a", "ifname": "eth0"}]);
        let libcni = with(GC_ATTACHMENTS, list.clone());
        let expected = vec![ValidAttachment { container_id: "a".into(), ifname: "eth0".into() }];
        assert_eq!(valid_attachments(&libcni).unwrap(), expected);
        assert_eq!(valid_attachments(&with(GC_ATTACHMENTS_SPEC_TEXT, list)).unwrap(), expected);
        let null =
            br#"{"cniVersion":"1.1.0","name":"ward","podCIDRs":["10.0.0.0/24"],"cni.dev/valid-attachments":null}"#;
        assert_eq!(valid_attachments(null).unwrap(), Vec::new(), "libcni's null is an empty list");
        assert_eq!(
            valid_attachments(GOOD.as_bytes()).unwrap_err().to_string(),
            "cni.dev/valid-attachments: required for GC (the attachments that are still valid)"
        );
        let bad = with(GC_ATTACHMENTS, serde_json::json!([{"containerID": "a"}]));
        assert_eq!(
            valid_attachments(&bad).unwrap_err().to_string(),
            "cni.dev/valid-attachments[0].ifname: expected a string (required)"
        );
        let bad = with(GC_ATTACHMENTS, serde_json::json!(["a"]));
        assert!(
            valid_attachments(&bad)
                .unwrap_err()
                .to_string()
                .starts_with("cni.dev/valid-attachments[0]: expected an object")
        );
        let bad = with(GC_ATTACHMENTS, serde_json::json!({}));
        assert_eq!(
            valid_attachments(&bad).unwrap_err().to_string(),
            "cni.dev/valid-attachments: expected an array of attachments"
        );
    }

    #[test]
    fn optional_fields_have_defaults() {
        let c = parse(br#"{"cniVersion":"0.4.0","name":"n","podCIDRs":["10.0.0.0/24"]}"#).unwrap();
        assert_eq!(c.agent_socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.mtu, DEFAULT_MTU);
    }

    #[test]
    fn errors_name_the_field_at_fault() {
        assert_eq!(err("podCIDRs", serde_json::json!(["10.0.0.0/24", "x"])), r#"podCIDRs[1]: invalid CIDR "x""#);
        assert_eq!(err("podCIDRs", serde_json::json!([1])), "podCIDRs[0]: expected a CIDR string");
        assert!(
            err("podCIDRs", serde_json::json!(["10.0.0.0/24", "10.1.0.0/24"]))
                .starts_with("podCIDRs[1]: a second IPv4")
        );
        assert!(
            err("podCIDRs", serde_json::json!(["10.0.0.1/24"]))
                .starts_with("podCIDRs[0]: 10.0.0.1/24 has host bits set")
        );
        assert!(
            err("podCIDRs", serde_json::json!(["10.0.0.0/31"]))
                .starts_with("podCIDRs[0]: 10.0.0.0/31 leaves no address")
        );
        assert_eq!(err("podCIDRs", serde_json::json!([])), "podCIDRs: must list at least one CIDR");
        assert!(err("podCIDRs", Value::Null).starts_with("podCIDRs: required field is missing"));
        assert_eq!(err("name", Value::Null), "name: required field is missing");
        assert!(err("name", serde_json::json!("../etc")).starts_with("name: \"../etc\" is not a valid network name"));
        assert_eq!(err("dataDir", serde_json::json!("ipam")), r#"dataDir: "ipam" must be an absolute path"#);
        assert_eq!(err("agentSocket", serde_json::json!(5)), "agentSocket: expected a string");
        assert!(err("mtu", serde_json::json!(1000)).starts_with("mtu: 1000 is out of range (1280"));
        assert!(err("mtu", serde_json::json!(-1)).starts_with("mtu: -1 is out of range"));
        assert_eq!(err("mtu", serde_json::json!("big")), "mtu: expected an integer");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = parse(&bytes);
            let _ = peek_version(&bytes);
        }

        #[test]
        fn arbitrary_cidr_strings_are_accepted_or_named(cidrs in proptest::collection::vec("[0-9a-f:./]{0,24}", 1..4), mtu in proptest::num::i64::ANY) {
            let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "n", "podCIDRs": cidrs, "mtu": mtu});
            if let Err(e) = parse(conf.to_string().as_bytes()) {
                let msg = e.to_string();
                proptest::prop_assert!(msg.starts_with("podCIDRs") || msg.starts_with("mtu: "), "{}", msg);
            }
        }
    }

    #[test]
    fn versions_and_garbage_are_classified() {
        let e = parse(&with("cniVersion", serde_json::json!("0.3.1"))).unwrap_err();
        assert!(e.is_version(), "{e}");
        assert!(parse(b"{").unwrap_err().is_decode());
        assert!(parse(b"[]").unwrap_err().is_decode());
        assert_eq!(peek_version(GOOD.as_bytes()), Some(CniVersion::V1_0_0));
        assert_eq!(peek_version(b"nope"), None);
    }
}
