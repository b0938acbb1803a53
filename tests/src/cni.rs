//! Calling the `ward-cni` plugin exactly as a container runtime does: environment variables
//! per the CNI spec, the network configuration on stdin, the result (or a CNI error object)
//! on stdout, run inside the node's network namespace (`ip netns exec`, which also gives the
//! plugin a matching /sys). [`CniPlugin`] runs Ward alone with a netconf; [`Runtime`] runs a
//! whole configuration list (the agent's `10-ward.conflist`, chained reference plugins
//! included) as section 3 of the 1.1.0 spec describes: ADD in order with each plugin's result
//! as the next one's `prevResult`, DEL in reverse with the final result, `capabilities`
//! turned into `runtimeConfig`, STATUS and GC for 1.1.0 lists.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::cmd::{self, CmdError};

/// The plugin's binary name (its `type`).
pub const PLUGIN: &str = "ward-cni";
/// The conflist the agent writes (`ward_agent::cni::install::CONFLIST_NAME`).
pub const CONFLIST_NAME: &str = "10-ward.conflist";

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
    #[error("configuration list {path}: {why}")]
    Conflist { path: PathBuf, why: String },
}

impl CniError {
    /// The plugin's CNI error code, when it printed an error object.
    pub fn code(&self) -> Option<u64> {
        match self {
            Self::Plugin { code, .. } => Some(*code),
            _ => None,
        }
    }
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
        let bin_dir = self.binary.parent().unwrap_or(Path::new("/"));
        exec(&self.node_netns, &self.binary, command, Some(a), bin_dir, &self.netconf)
    }
}

/// Runs `binary` for `command` in `node_netns` with the attachment's variables (if any) and
/// `conf` on stdin; its stdout on success, its error object otherwise.
fn exec(
    node_netns: &str,
    binary: &Path,
    command: &'static str,
    a: Option<&Attachment>,
    bin_dir: &Path,
    conf: &serde_json::Value,
) -> Result<String, CniError> {
    let pod = a.map(pod_name).unwrap_or_else(|| "(no attachment)".into());
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", node_netns]).arg(binary).env("CNI_COMMAND", command).env("CNI_PATH", bin_dir);
    if let Some(a) = a {
        cmd.env("CNI_CONTAINERID", &a.container_id).env("CNI_NETNS", &a.netns).env("CNI_IFNAME", &a.ifname).env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={}", a.pod_namespace, a.pod_name),
        );
    }
    let stdin = conf.to_string();
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

/// The highest spec version this runtime implements (what libcni 1.2 does with `cniVersions`).
pub const RUNTIME_VERSION: &str = "1.1.0";

/// A container runtime's CNI half for one configuration list.
#[derive(Clone, Debug)]
pub struct Runtime {
    pub conflist: serde_json::Value,
    /// Where plugins are found (`CNI_PATH`).
    pub bin_dir: PathBuf,
    pub node_netns: String,
}

impl Runtime {
    /// Reads a configuration list file.
    pub fn load(path: &Path, bin_dir: &Path, node_netns: &str) -> Result<Self, CniError> {
        let bad = |why: String| CniError::Conflist { path: path.to_owned(), why };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let conflist: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if !conflist["plugins"].is_array() {
            return Err(bad("no plugins list".into()));
        }
        Ok(Self { conflist, bin_dir: bin_dir.to_owned(), node_netns: node_netns.to_owned() })
    }

    /// The version the runtime runs the list at: the highest of `cniVersion` and
    /// `cniVersions` it implements (spec 1.1.0, "Version considerations").
    pub fn version(&self) -> String {
        let parse = |v: &str| -> Option<(u64, u64, u64)> {
            let mut it = v.split('.').map(|p| p.parse::<u64>().ok());
            Some((it.next()??, it.next()??, it.next()??))
        };
        let limit = parse(RUNTIME_VERSION);
        let mut all: Vec<String> = self.conflist["cniVersions"]
            .as_array()
            .map(|vs| vs.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        all.extend(self.conflist["cniVersion"].as_str().map(str::to_owned));
        all.into_iter().filter(|v| parse(v).is_some() && parse(v) <= limit).max_by_key(|v| parse(v)).unwrap_or_default()
    }

    fn plugins(&self) -> Vec<serde_json::Value> {
        self.conflist["plugins"].as_array().cloned().unwrap_or_default()
    }

    /// Section 3's request configuration for one plugin.
    fn request(
        &self,
        plugin: &serde_json::Value,
        caps: &serde_json::Value,
        prev: Option<&serde_json::Value>,
    ) -> serde_json::Value {
        let mut conf = plugin.clone();
        conf["cniVersion"] = serde_json::Value::from(self.version());
        conf["name"] = self.conflist["name"].clone();
        let mut runtime_config = serde_json::Map::new();
        if let Some(capabilities) = conf.as_object_mut().and_then(|o| o.remove("capabilities")) {
            for (cap, on) in capabilities.as_object().into_iter().flatten() {
                if on.as_bool() == Some(true)
                    && let Some(arg) = caps.get(cap)
                {
                    runtime_config.insert(cap.clone(), arg.clone());
                }
            }
        }
        if !runtime_config.is_empty() {
            conf["runtimeConfig"] = serde_json::Value::Object(runtime_config);
        }
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        conf
    }

    fn binary(&self, plugin: &serde_json::Value) -> PathBuf {
        self.bin_dir.join(plugin["type"].as_str().unwrap_or_default())
    }

    /// ADD through every plugin in order; returns the final result.
    pub fn add(&self, a: &Attachment, caps: &serde_json::Value) -> Result<serde_json::Value, CniError> {
        let mut prev: Option<serde_json::Value> = None;
        for plugin in self.plugins() {
            let conf = self.request(&plugin, caps, prev.as_ref());
            let out = exec(&self.node_netns, &self.binary(&plugin), "ADD", Some(a), &self.bin_dir, &conf)?;
            prev = Some(serde_json::from_str(&out).map_err(|_| CniError::Output {
                command: "ADD",
                pod: pod_name(a),
                status: "0".into(),
                stdout: out.clone(),
                stderr: String::new(),
            })?);
        }
        prev.ok_or_else(|| CniError::NoAddress { pod: pod_name(a), stdout: "(no plugins)".into() })
    }

    /// DEL through every plugin in reverse, each given the final ADD result.
    pub fn del(&self, a: &Attachment, caps: &serde_json::Value, result: &serde_json::Value) -> Result<(), CniError> {
        for plugin in self.plugins().iter().rev() {
            let conf = self.request(plugin, caps, Some(result));
            exec(&self.node_netns, &self.binary(plugin), "DEL", Some(a), &self.bin_dir, &conf)?;
        }
        Ok(())
    }

    /// CHECK through every plugin in order, each given the final ADD result; plugins whose
    /// `type` is in `skip` are left out (a plugin known to fail CHECK spuriously).
    pub fn check(
        &self,
        a: &Attachment,
        caps: &serde_json::Value,
        result: &serde_json::Value,
        skip: &[&str],
    ) -> Result<(), CniError> {
        for plugin in self.plugins().into_iter().filter(|p| !skip.iter().any(|t| p["type"] == *t)) {
            let conf = self.request(&plugin, caps, Some(result));
            exec(&self.node_netns, &self.binary(&plugin), "CHECK", Some(a), &self.bin_dir, &conf)?;
        }
        Ok(())
    }

    /// STATUS of every plugin (1.1.0 lists only, as libcni does).
    pub fn status(&self) -> Result<(), CniError> {
        for plugin in self.plugins() {
            let conf = self.request(&plugin, &serde_json::Value::Null, None);
            exec(&self.node_netns, &self.binary(&plugin), "STATUS", None, &self.bin_dir, &conf)?;
        }
        Ok(())
    }

    /// GC of every plugin with the attachments still valid, `(container id, ifname)`.
    pub fn gc(&self, valid: &[(String, String)]) -> Result<(), CniError> {
        let list: Vec<serde_json::Value> =
            valid.iter().map(|(c, i)| serde_json::json!({"containerID": c, "ifname": i})).collect();
        for plugin in self.plugins() {
            let mut conf = self.request(&plugin, &serde_json::Value::Null, None);
            conf["cni.dev/valid-attachments"] = serde_json::Value::from(list.clone());
            exec(&self.node_netns, &self.binary(&plugin), "GC", None, &self.bin_dir, &conf)?;
        }
        Ok(())
    }
}

fn pod_name(a: &Attachment) -> String {
    format!("{}/{}", a.pod_namespace, a.pod_name)
}

/// The pod's addresses in an ADD result.
pub fn result_ips(pod: &str, result: &serde_json::Value) -> Result<Vec<IpAddr>, CniError> {
    parse_add(pod, &result.to_string()).map(|r| r.ips)
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
    fn the_runtime_derives_each_plugins_request_as_section_3_says() {
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0", "cniVersions": ["1.0.0", "1.1.0", "9.0.0"], "name": "ward",
            "plugins": [{"type": "ward-cni", "podCIDRs": []},
                        {"type": "portmap", "capabilities": {"portMappings": true, "bandwidth": false}}]
        });
        let rt = Runtime { conflist, bin_dir: "/b".into(), node_netns: "n".into() };
        assert_eq!(rt.version(), "1.1.0", "the highest this runtime implements");
        let caps = serde_json::json!({"portMappings": [{"hostPort": 1}], "bandwidth": {"ingressRate": 1}});
        let plugins = rt.plugins();
        let first = rt.request(&plugins[0], &caps, None);
        assert_eq!(
            first,
            serde_json::json!({"type": "ward-cni", "podCIDRs": [], "cniVersion": "1.1.0", "name": "ward"})
        );
        let prev = serde_json::json!({"ips": []});
        let second = rt.request(&plugins[1], &caps, Some(&prev));
        assert_eq!(second["runtimeConfig"], serde_json::json!({"portMappings": [{"hostPort": 1}]}));
        assert!(second.get("capabilities").is_none());
        assert_eq!(second["prevResult"], prev);
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
