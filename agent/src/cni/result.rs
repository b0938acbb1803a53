//! What the plugin prints on success: the ADD result and the VERSION answer, in the shape of
//! the version the runtime asked for (0.4.0 tags each IP with its family, 1.1.0 adds the
//! interface MTU).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use super::netconf::CniVersion;

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
    pub fn to_json(&self, version: CniVersion) -> serde_json::Result<String> {
        let wire = WireResult {
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
        };
        serde_json::to_string(&wire)
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VersionReply {
    cni_version: &'static str,
    supported_versions: [&'static str; CniVersion::ALL.len()],
}

/// The VERSION answer.
pub fn version_json() -> serde_json::Result<String> {
    serde_json::to_string(&VersionReply {
        cni_version: CniVersion::LATEST.as_str(),
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
        }
    }

    #[test]
    fn result_1_0_0_has_the_spec_shape() {
        let v: Value = serde_json::from_str(&sample().to_json(CniVersion::V1_0_0).unwrap()).unwrap();
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
        let v: Value = serde_json::from_str(&sample().to_json(CniVersion::V0_4_0).unwrap()).unwrap();
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["cniVersion"], "0.4.0");
        let v: Value = serde_json::from_str(&sample().to_json(CniVersion::V1_1_0).unwrap()).unwrap();
        assert_eq!(v["interfaces"][1]["mtu"], 1500);
        assert!(v["ips"][0].get("version").is_none());
    }

    #[test]
    fn version_reply_lists_every_supported_version() {
        assert_eq!(version_json().unwrap(), r#"{"cniVersion":"1.1.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}"#);
    }
}
