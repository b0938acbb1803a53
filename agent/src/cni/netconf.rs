//! The network configuration the runtime writes to the plugin's stdin.
//!
//! ```json
//! {"cniVersion":"1.0.0","name":"ward","type":"ward-cni",
//!  "agentSocket":"/run/ward/agent.sock","podCIDRs":["10.244.1.0/24","fd77:1::/64"],
//!  "dataDir":"/var/lib/ward/ipam","mtu":1500}
//! ```
//!
//! Parsed field by field from a JSON value (not with a derived deserializer) so that every
//! error names the field at fault, e.g. `podCIDRs[1]: invalid CIDR "x"`. Fields the spec adds
//! (`prevResult`, `runtimeConfig`, `args`, ...) and unknown ones are ignored. Pure: no I/O.

use std::path::PathBuf;

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
pub const DEFAULT_MTU: u32 = 1500;
const MIN_MTU_IPV4: u32 = 68;
const MIN_MTU_IPV6: u32 = 1280;
/// The largest MTU a veth accepts.
const MAX_MTU: u32 = 65535;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConf {
    pub cni_version: CniVersion,
    /// The network's name: also the IPAM state directory's name under `data_dir`.
    pub name: String,
    pub agent_socket: PathBuf,
    /// At most one range per family, in the configured order.
    pub pod_ranges: Vec<PodRange>,
    pub data_dir: PathBuf,
    pub mtu: u32,
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
    #[error("mtu: {value} is out of range ({min} to {MAX_MTU}{reason})")]
    Mtu { value: i128, min: u32, reason: &'static str },
}

impl NetConfError {
    /// Whether the error is about the version (CNI error code 1) rather than the content.
    pub fn is_version(&self) -> bool {
        matches!(self, Self::UnsupportedVersion { .. })
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

fn string<'a>(obj: &'a Map<String, Value>, field: &'static str) -> Result<Option<&'a str>, NetConfError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(NetConfError::WrongType { field: field.to_owned(), expected: "a string" }),
    }
}

fn required<'a>(obj: &'a Map<String, Value>, field: &'static str) -> Result<&'a str, NetConfError> {
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

/// Parses and validates the configuration.
pub fn parse(stdin: &[u8]) -> Result<NetConf, NetConfError> {
    let value: Value = serde_json::from_slice(stdin).map_err(NetConfError::Decode)?;
    let Value::Object(obj) = value else {
        return Err(NetConfError::NotAnObject);
    };
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
    let pod_ranges = pod_ranges(&obj)?;
    let mtu = mtu(&obj, &pod_ranges)?;
    Ok(NetConf { cni_version, name: name.to_owned(), agent_socket, pod_ranges, data_dir, mtu })
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
        let cidrs: Vec<String> = c.pod_ranges.iter().map(|r| r.cidr().to_string()).collect();
        assert_eq!(cidrs, ["10.244.1.0/24", "fd77:1::/64"]);
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
        assert_eq!(err("podCIDRs", Value::Null), "podCIDRs: required field is missing");
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
