//! What the plugin prints on success: the ADD result and the VERSION answer, in the shape of
//! the version the runtime asked for (0.4.0 tags each IP with its family, 1.1.0 adds the
//! interface MTU); and the `prevResult` a chain hands in, which ADD extends (spec 1.1.0,
//! section 5: a plugin given a `prevResult` outputs it with its own changes) and CHECK reads
//! to know what to expect.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;
use serde_json::{Map, Value};

use super::netconf::{CniVersion, NetConfError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    /// The network namespace path, for interfaces inside the container.
    pub sandbox: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNet,
    /// Index into `interfaces`.
    pub interface: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

/// The ADD result, independent of the version it is printed in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    /// DNS settings a delegated IPAM plugin returned (Ward itself sets none: the runtime's,
    /// the kubelet's, apply).
    pub dns: Option<Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireResult<'a> {
    cni_version: &'static str,
    interfaces: Vec<WireInterface<'a>>,
    ips: Vec<WireIp>,
    routes: Vec<WireRoute>,
    dns: WireDns,
}

#[derive(Serialize)]
struct WireInterface<'a> {
    name: &'a str,
    mac: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sandbox: Option<&'a str>,
}

#[derive(Serialize)]
struct WireIp {
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'static str>,
    address: String,
    interface: usize,
}

#[derive(Serialize)]
struct WireRoute {
    dst: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    gw: Option<String>,
}

/// No DNS settings: the runtime's (the kubelet's) apply.
#[derive(Serialize)]
struct WireDns {}

impl AddResult {
    /// The result to print: this plugin's alone, or `prev` (the chain's `prevResult`) with
    /// this plugin's interfaces, addresses and routes appended; the addresses' `interface`
    /// indexes shift by the interfaces already there.
    pub fn to_json(&self, version: CniVersion, prev: Option<&Value>) -> serde_json::Result<String> {
        let ours = serde_json::to_value(self.wire(version))?;
        let Some(Value::Object(prev)) = prev else {
            let mut ours = ours;
            if let Some(dns) = &self.dns {
                ours["dns"] = dns.clone();
            }
            return serde_json::to_string(&ours);
        };
        let mut out = prev.clone();
        out.insert("cniVersion".into(), Value::from(version.as_str()));
        let list = |out: &mut Map<String, Value>, key: &str| -> Vec<Value> {
            match out.remove(key) {
                Some(Value::Array(items)) => items,
                _ => Vec::new(),
            }
        };
        let mut interfaces = list(&mut out, "interfaces");
        let offset = interfaces.len();
        interfaces.extend(ours["interfaces"].as_array().cloned().unwrap_or_default());
        let mut ips = list(&mut out, "ips");
        for mut ip in ours["ips"].as_array().cloned().unwrap_or_default() {
            if let Some(i) = ip["interface"].as_u64() {
                ip["interface"] = Value::from(i + offset as u64);
            }
            ips.push(ip);
        }
        let mut routes = list(&mut out, "routes");
        routes.extend(ours["routes"].as_array().cloned().unwrap_or_default());
        out.insert("interfaces".into(), Value::Array(interfaces));
        out.insert("ips".into(), Value::Array(ips));
        out.insert("routes".into(), Value::Array(routes));
        if let Some(dns) = &self.dns {
            out.insert("dns".into(), dns.clone());
        } else if !out.contains_key("dns") {
            out.insert("dns".into(), Value::Object(Map::new()));
        }
        serde_json::to_string(&Value::Object(out))
    }

    fn wire(&self, version: CniVersion) -> WireResult<'_> {
        WireResult {
            cni_version: version.as_str(),
            interfaces: self
                .interfaces
                .iter()
                .map(|i| WireInterface {
                    name: &i.name,
                    mac: &i.mac,
                    mtu: (version >= CniVersion::V1_1_0).then_some(i.mtu),
                    sandbox: i.sandbox.as_deref(),
                })
                .collect(),
            ips: self
                .ips
                .iter()
                .map(|ip| WireIp {
                    version: (version < CniVersion::V1_0_0).then_some(match ip.address {
                        IpNet::V4(_) => "4",
                        IpNet::V6(_) => "6",
                    }),
                    address: ip.address.to_string(),
                    interface: ip.interface,
                })
                .collect(),
            routes: self
                .routes
                .iter()
                .map(|r| WireRoute { dst: r.dst.to_string(), gw: r.gw.map(|g| g.to_string()) })
                .collect(),
            dns: WireDns {},
        }
    }
}

/// An interface as a `prevResult` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrevInterface {
    pub name: String,
    pub mac: Option<String>,
    pub sandbox: Option<String>,
}

/// An address as a `prevResult` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrevIp {
    pub address: IpNet,
    pub interface: Option<usize>,
}

/// What CHECK needs from `prevResult`: the interfaces and addresses the chain reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrevResult {
    pub interfaces: Vec<PrevInterface>,
    pub ips: Vec<PrevIp>,
}

impl PrevResult {
    /// Reads `prevResult`; every error names the field (`prevResult.ips[1].address`).
    pub fn read(value: &Value) -> Result<Self, NetConfError> {
        let wrong = |field: String, expected| NetConfError::WrongType { field, expected };
        let array = |key: &str| -> Result<Vec<Value>, NetConfError> {
            match value.get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(items)) => Ok(items.clone()),
                Some(_) => Err(wrong(format!("prevResult.{key}"), "an array")),
            }
        };
        let text = |item: &Value, field: String, required: bool| -> Result<Option<String>, NetConfError> {
            match item.get(field.rsplit('.').next().unwrap_or_default()) {
                Some(Value::String(s)) => Ok(Some(s.clone())),
                None | Some(Value::Null) if !required => Ok(None),
                _ => Err(wrong(field, "a string")),
            }
        };
        let mut interfaces = Vec::new();
        for (i, item) in array("interfaces")?.iter().enumerate() {
            let at = format!("prevResult.interfaces[{i}]");
            let name = text(item, format!("{at}.name"), true)?.unwrap_or_default();
            let mac = text(item, format!("{at}.mac"), false)?;
            let sandbox = text(item, format!("{at}.sandbox"), false)?.filter(|s| !s.is_empty());
            interfaces.push(PrevInterface { name, mac, sandbox });
        }
        let mut ips = Vec::new();
        for (i, item) in array("ips")?.iter().enumerate() {
            let at = format!("prevResult.ips[{i}]");
            let raw = text(item, format!("{at}.address"), true)?.unwrap_or_default();
            let address = raw
                .parse::<IpNet>()
                .map_err(|_| NetConfError::InvalidCidr { field: format!("{at}.address"), value: raw.clone() })?;
            let interface = match item.get("interface") {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    v.as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| wrong(format!("{at}.interface"), "an index into interfaces"))?,
                ),
            };
            ips.push(PrevIp { address, interface });
        }
        Ok(Self { interfaces, ips })
    }

    /// The index of the interface called `name` in `sandbox` (`None`: on the host).
    pub fn interface(&self, name: &str, sandbox: Option<&str>) -> Option<usize> {
        self.interfaces.iter().position(|i| i.name == name && i.sandbox.as_deref() == sandbox)
    }

    /// The addresses the result puts on interface `index`.
    pub fn addresses_of(&self, index: usize) -> Vec<IpAddr> {
        self.ips.iter().filter(|ip| ip.interface == Some(index)).map(|ip| ip.address.addr()).collect()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VersionReply<'a> {
    cni_version: &'a str,
    supported_versions: [&'static str; CniVersion::ALL.len()],
}

/// The VERSION answer. Its `cniVersion` is the one on input (spec, section 5), or the latest
/// when the input names none.
pub fn version_json(input_version: Option<&str>) -> serde_json::Result<String> {
    serde_json::to_string(&VersionReply {
        cni_version: input_version.unwrap_or(CniVersion::LATEST.as_str()),
        supported_versions: CniVersion::ALL.map(CniVersion::as_str),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn sample() -> AddResult {
        AddResult {
            interfaces: vec![
                Interface { name: "wd0123456789a".into(), mac: "ee:ee:ee:ee:ee:ee".into(), mtu: 1500, sandbox: None },
                Interface {
                    name: "eth0".into(),
                    mac: "02:00:00:00:00:01".into(),
                    mtu: 1500,
                    sandbox: Some("/var/run/netns/p".into()),
                },
            ],
            ips: vec![IpConfig { address: "10.244.1.2/32".parse().unwrap(), interface: 1 }],
            routes: vec![Route { dst: "0.0.0.0/0".parse().unwrap(), gw: Some("169.254.1.1".parse().unwrap()) }],
            dns: None,
        }
    }

    #[test]
    fn result_1_0_0_has_the_spec_shape() {
        let v: Value = serde_json::from_str(&sample().to_json(CniVersion::V1_0_0, None).unwrap()).unwrap();
        assert_eq!(
            v,
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "wd0123456789a", "mac": "ee:ee:ee:ee:ee:ee"},
                    {"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/var/run/netns/p"}
                ],
                "ips": [{"address": "10.244.1.2/32", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
                "dns": {}
            })
        );
    }

    #[test]
    fn older_and_newer_versions_differ_where_the_spec_does() {
        let v: Value = serde_json::from_str(&sample().to_json(CniVersion::V0_4_0, None).unwrap()).unwrap();
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["cniVersion"], "0.4.0");
        let v: Value = serde_json::from_str(&sample().to_json(CniVersion::V1_1_0, None).unwrap()).unwrap();
        assert_eq!(v["interfaces"][1]["mtu"], 1500);
        assert!(v["ips"][0].get("version").is_none());
    }

    #[test]
    fn version_reply_lists_every_supported_version_under_the_input_version() {
        assert_eq!(
            version_json(None).unwrap(),
            r#"{"cniVersion":"1.1.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}"#
        );
        assert_eq!(
            version_json(Some("1.0.0")).unwrap(),
            r#"{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}"#
        );
    }

    #[test]
    fn a_prev_result_is_extended_with_shifted_interface_indexes() {
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "lo", "sandbox": "/var/run/netns/p"}],
            "ips": [{"address": "127.0.0.1/8", "interface": 0}],
            "dns": {"nameservers": ["10.96.0.10"]},
            "custom": 1
        });
        let v: Value = serde_json::from_str(&sample().to_json(CniVersion::V1_0_0, Some(&prev)).unwrap()).unwrap();
        assert_eq!(v["interfaces"].as_array().map(Vec::len), Some(3));
        assert_eq!(v["interfaces"][0]["name"], "lo");
        assert_eq!(v["ips"][0], json!({"address": "127.0.0.1/8", "interface": 0}));
        assert_eq!(
            v["ips"][1],
            json!({"address": "10.244.1.2/32", "interface": 2}),
            "ours points at eth0, now index 2"
        );
        assert_eq!(v["routes"][0]["gw"], "169.254.1.1");
        assert_eq!(v["dns"], json!({"nameservers": ["10.96.0.10"]}), "the chain's DNS settings stay");
        assert_eq!(v["custom"], 1, "fields Ward does not know pass through");
    }

    #[test]
    fn prev_results_are_read_with_field_names_in_errors() {
        let prev = json!({
            "interfaces": [{"name": "wd1", "mac": "ee:ee:ee:ee:ee:ee"}, {"name": "eth0", "sandbox": "/run/netns/p"}],
            "ips": [{"address": "10.0.0.2/32", "interface": 1}, {"address": "fd00::2/128", "interface": 1}]
        });
        let r = PrevResult::read(&prev).unwrap();
        assert_eq!(r.interface("eth0", Some("/run/netns/p")), Some(1));
        assert_eq!(r.interface("wd1", None), Some(0));
        assert_eq!(r.addresses_of(1), vec!["10.0.0.2".parse::<IpAddr>().unwrap(), "fd00::2".parse().unwrap()]);
        let bad = json!({"ips": [{"address": "10.0.0.2/32"}, {"address": "nope"}]});
        assert_eq!(
            PrevResult::read(&bad).unwrap_err().to_string(),
            r#"prevResult.ips[1].address: invalid CIDR "nope""#
        );
        let bad = json!({"interfaces": [{"mac": "x"}]});
        assert_eq!(PrevResult::read(&bad).unwrap_err().to_string(), "prevResult.interfaces[0].name: expected a string");
        let bad = json!({"ips": [{"address": "10.0.0.2/32", "interface": -1}]});
        assert_eq!(
            PrevResult::read(&bad).unwrap_err().to_string(),
            "prevResult.ips[0].interface: expected an index into interfaces"
        );
        assert!(PrevResult::read(&json!({"ips": {}})).is_err());
    }
}
