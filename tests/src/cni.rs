//! Calling the `ward-cni` plugin exactly as a container runtime does: environment variables
//! per the CNI 1.0 spec, the network configuration on stdin, the result (or a CNI error
//! object) on stdout, run inside the node's network namespace (`ip netns exec`, which also
//! gives the plugin a matching /sys).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::cmd::{self, CmdError};

/// How long one plugin call may take.
const CNI_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("CNI {command} {pod}: {source}")]
    Run { command: &'static str, pod: String, source: CmdError },
    #[error("CNI {command} {pod}: plugin error {code}: {msg} {details}")]
    Plugin { command: &'static str, pod: String, code: u64, msg: String, details: String },
    #[error("CNI {command} {pod}: exit {status}, unreadable output {stdout:?}, stderr {stderr:?}")]
    Output { command: &'static str, pod: String, status: String, stdout: String, stderr: String },
    #[error("CNI ADD {pod}: the result has no IP address: {stdout}")]
    NoAddress { pod: String, stdout: String },
}

/// What the lab passes to every call for one node.
#[derive(Clone, Debug)]
pub struct CniPlugin {
    pub binary: PathBuf,
    /// The node's network namespace name (the runtime runs there).
    pub node_netns: String,
    /// The network configuration (stdin).
    pub netconf: serde_json::Value,
}

/// One attachment: which container, which netns, which pod.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub pod_namespace: String,
    pub pod_name: String,
}

/// The parts of a CNI result the lab uses.
#[derive(Clone, Debug)]
pub struct AddResult {
    pub ips: Vec<IpAddr>,
    pub raw: serde_json::Value,
}

#[derive(Deserialize)]
struct ResultIps {
    #[serde(default)]
    ips: Vec<ResultIp>,
}

#[derive(Deserialize)]
struct ResultIp {
    address: String,
}

#[derive(Deserialize)]
struct ErrorObject {
    code: u64,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

/// The network configuration Ward's plugin takes.
pub fn netconf(agent_socket: &Path, pod_cidrs: &[IpNet], data_dir: &Path, mtu: u32) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "ward",
        "type": "ward-cni",
        "agentSocket": agent_socket,
        "podCIDRs": pod_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "dataDir": data_dir,
        "mtu": mtu,
    })
}

impl CniPlugin {
    pub fn add(&self, a: &Attachment) -> Result<AddResult, CniError> {
        let stdout = self.call("ADD", a)?;
        let pod = pod_name(a);
        parse_add(&pod, &stdout)
    }

    /// DEL is idempotent per the spec; the lab calls it on pod deletion.
    pub fn del(&self, a: &Attachment) -> Result<(), CniError> {
        self.call("DEL", a).map(drop)
    }

    fn call(&self, command: &'static str, a: &Attachment) -> Result<String, CniError> {
        let pod = pod_name(a);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node_netns])
            .arg(&self.binary)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &a.container_id)
            .env("CNI_NETNS", &a.netns)
            .env("CNI_IFNAME", &a.ifname)
            .env("CNI_PATH", self.binary.parent().unwrap_or(Path::new("/")))
            .env("CNI_ARGS", format!("K8S_POD_NAMESPACE={};K8S_POD_NAME={}", a.pod_namespace, a.pod_name));
        let stdin = self.netconf.to_string();
        let out = cmd::run(cmd, Some(stdin.as_bytes()), CNI_TIMEOUT).map_err(|source| CniError::Run {
            command,
            pod: pod.clone(),
            source,
        })?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        match serde_json::from_str::<ErrorObject>(&out.stdout) {
            Ok(e) => Err(CniError::Plugin { command, pod, code: e.code, msg: e.msg, details: e.details }),
            Err(_) => Err(CniError::Output {
                command,
                pod,
                status: out.status.to_string(),
                stdout: out.stdout,
                stderr: out.stderr,
            }),
        }
    }
}

fn pod_name(a: &Attachment) -> String {
    format!("{}/{}", a.pod_namespace, a.pod_name)
}

fn parse_add(pod: &str, stdout: &str) -> Result<AddResult, CniError> {
    let output = || CniError::Output {
        command: "ADD",
        pod: pod.to_owned(),
        status: "0".into(),
        stdout: stdout.to_owned(),
        stderr: String::new(),
    };
    let raw: serde_json::Value = serde_json::from_str(stdout).map_err(|_| output())?;
    let parsed: ResultIps = serde_json::from_value(raw.clone()).map_err(|_| output())?;
    let mut ips = Vec::new();
    for ip in parsed.ips {
        let net: IpNet = ip.address.parse().map_err(|_| output())?;
        ips.push(net.addr());
    }
    if ips.is_empty() {
        return Err(CniError::NoAddress { pod: pod.to_owned(), stdout: stdout.to_owned() });
    }
    Ok(AddResult { ips, raw })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_results_yield_the_pod_addresses_without_prefix() {
        let out = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],
            "ips":[{"address":"10.1.0.5/32","gateway":"169.254.1.1","interface":0},
                   {"address":"fd77:0:0:1::5/128","interface":0}]}"#;
        let r = parse_add("x/a", out).unwrap();
        assert_eq!(r.ips, vec!["10.1.0.5".parse::<IpAddr>().unwrap(), "fd77:0:0:1::5".parse().unwrap()]);
    }

    #[test]
    fn add_results_without_addresses_are_errors() {
        assert!(matches!(parse_add("x/a", r#"{"cniVersion":"1.0.0"}"#), Err(CniError::NoAddress { .. })));
        assert!(matches!(parse_add("x/a", "garbage"), Err(CniError::Output { .. })));
    }

    #[test]
    fn netconf_carries_the_socket_cidrs_and_data_dir() {
        let cidrs: Vec<IpNet> = vec!["10.1.0.0/16".parse().unwrap(), "fd77:0:0:1::/64".parse().unwrap()];
        let c = netconf(Path::new("/s.sock"), &cidrs, Path::new("/d"), 1500);
        assert_eq!(c["type"], "ward-cni");
        assert_eq!(c["agentSocket"], "/s.sock");
        assert_eq!(c["podCIDRs"][1], "fd77:0:0:1::/64");
        assert_eq!(c["dataDir"], "/d");
    }
}
