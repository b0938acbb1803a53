//! Running a delegated IPAM plugin (spec 1.1.0, section 4): found in `CNI_PATH` under the
//! `ipam.type` name, run with the same environment (the command and, for GC's clean-up of
//! one stale attachment, that attachment's variables set), the same configuration on stdin,
//! and its stderr going to ours. Its error objects pass through with their codes.

use std::io::{Read as _, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde_json::Value;

/// How long a delegated plugin may take (host-local answers in milliseconds; a DHCP plugin
/// may need seconds).
pub const DELEGATE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DelegateError {
    #[error("CNI_PATH is not set: it is needed to find the ipam plugin {plugin:?}")]
    NoPath { plugin: String },
    #[error("ipam.type: plugin {plugin:?} not found in CNI_PATH ({searched})")]
    NotFound { plugin: String, searched: String },
    #[error("ipam plugin {plugin} ({path}): {source}")]
    Spawn { plugin: String, path: PathBuf, source: std::io::Error },
    #[error("ipam plugin {plugin} {command}: no answer within {after:?}")]
    Timeout { plugin: String, command: String, after: Duration },
    #[error("ipam plugin {plugin} {command}: {msg}")]
    Failed { plugin: String, command: String, code: u32, msg: String, details: Option<String> },
    #[error("ipam plugin {plugin} {command}: exited with {status} and printed {stdout:?}")]
    Output { plugin: String, command: String, status: String, stdout: String },
    #[error("ipam plugin {plugin}: its result's {field}: {problem}")]
    Result { plugin: String, field: String, problem: String },
}

impl DelegateError {
    /// The CNI code: the plugin's own for its error objects, else which of ours fits.
    pub fn code(&self) -> Option<u32> {
        match self {
            Self::Failed { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A delegated plugin, located.
#[derive(Clone, Debug)]
pub struct Delegate {
    pub plugin: String,
    pub path: PathBuf,
}

impl Delegate {
    /// The first `CNI_PATH` directory holding an executable file called `plugin`.
    pub fn find(plugin: &str, cni_path: &[PathBuf]) -> Result<Self, DelegateError> {
        if cni_path.is_empty() {
            return Err(DelegateError::NoPath { plugin: plugin.to_owned() });
        }
        cni_path
            .iter()
            .map(|dir| dir.join(plugin))
            .find(|p| is_executable(p))
            .map(|path| Self { plugin: plugin.to_owned(), path })
            .ok_or_else(|| DelegateError::NotFound {
                plugin: plugin.to_owned(),
                searched: cni_path.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":"),
            })
    }

    /// Runs the plugin for `command` with our environment plus `env` (which wins), the
    /// configuration on stdin; returns its stdout.
    pub fn run(&self, command: &str, env: &[(&str, &str)], stdin: &[u8]) -> Result<String, DelegateError> {
        let spawn = |source| DelegateError::Spawn { plugin: self.plugin.clone(), path: self.path.clone(), source };
        let mut cmd = Command::new(&self.path);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.env("CNI_COMMAND", command).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().map_err(spawn)?;
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin).map_err(spawn)?;
        }
        let mut out = child.stdout.take();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(out) = out.as_mut() {
                let _ = out.read_to_string(&mut text);
            }
            text
        });
        let deadline = Instant::now() + DELEGATE_TIMEOUT;
        let status = loop {
            match child.try_wait().map_err(spawn)? {
                Some(status) => break status,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(DelegateError::Timeout {
                        plugin: self.plugin.clone(),
                        command: command.to_owned(),
                        after: DELEGATE_TIMEOUT,
                    });
                }
            }
        };
        let stdout = reader.join().unwrap_or_default();
        if status.success() {
            return Ok(stdout);
        }
        match serde_json::from_str::<Value>(&stdout) {
            Ok(v) if v.get("code").and_then(Value::as_u64).is_some() => Err(DelegateError::Failed {
                plugin: self.plugin.clone(),
                command: command.to_owned(),
                code: v["code"].as_u64().and_then(|c| u32::try_from(c).ok()).unwrap_or(u32::MAX),
                msg: v.get("msg").and_then(Value::as_str).unwrap_or_default().to_owned(),
                details: v.get("details").and_then(Value::as_str).map(str::to_owned),
            }),
            _ => Err(DelegateError::Output {
                plugin: self.plugin.clone(),
                command: command.to_owned(),
                status: status.to_string(),
                stdout,
            }),
        }
    }

    /// Which CNI versions the plugin speaks (its VERSION answer); empty if it cannot say.
    pub fn versions(&self) -> Vec<String> {
        match self.run("VERSION", &[], br#"{"cniVersion":"1.0.0"}"#) {
            Ok(out) => serde_json::from_str::<Value>(&out)
                .ok()
                .and_then(|v| v.get("supportedVersions").and_then(Value::as_array).cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            Err(e) => {
                tracing::warn!(plugin = %self.plugin, error = %e, "VERSION of the ipam plugin");
                Vec::new()
            }
        }
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What Ward takes from an IPAM result: one address per family (the subnet, gateway and
/// routes it returns are not applied: Ward gives the pod a /32 or /128 and routes everything
/// through the node, see `endpoint::veth`) and its DNS settings, if any.
#[derive(Clone, Debug, PartialEq)]
pub struct IpamResult {
    pub ips: Vec<IpAddr>,
    pub dns: Option<Value>,
}

/// Reads an abbreviated Success result (section 5: `ips` without `interface`).
pub fn ipam_result(plugin: &str, stdout: &str) -> Result<IpamResult, DelegateError> {
    let bad = |field: String, problem: String| DelegateError::Result { plugin: plugin.to_owned(), field, problem };
    let v: Value = serde_json::from_str(stdout).map_err(|e| bad("(whole)".into(), format!("not JSON: {e}")))?;
    let items = v.get("ips").and_then(Value::as_array).cloned().unwrap_or_default();
    if items.is_empty() {
        return Err(bad("ips".into(), "no address".into()));
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let field = format!("ips[{i}].address");
        let text = item.get("address").and_then(Value::as_str).ok_or_else(|| bad(field.clone(), "missing".into()))?;
        let net: IpNet = text.parse().map_err(|_| bad(field.clone(), format!("invalid CIDR {text:?}")))?;
        let ip = net.addr();
        if let Some(other) = ips.iter().find(|o| o.is_ipv4() == ip.is_ipv4()) {
            return Err(bad(
                field,
                format!("a second address of one family ({other} and {ip}); Ward takes one per family"),
            ));
        }
        ips.push(ip);
    }
    let dns = v.get("dns").filter(|d| d.as_object().is_some_and(|o| !o.is_empty())).cloned();
    Ok(IpamResult { ips, dns })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipam_results_yield_one_address_per_family_and_dns() {
        let out = r#"{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.5/24","gateway":"10.1.0.1"},
            {"address":"fd00::5/64"}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{"nameservers":["10.1.0.1"]}}"#;
        let r = ipam_result("host-local", out).unwrap();
        assert_eq!(r.ips, vec!["10.1.0.5".parse::<IpAddr>().unwrap(), "fd00::5".parse().unwrap()]);
        assert_eq!(r.dns, Some(serde_json::json!({"nameservers": ["10.1.0.1"]})));
        let two = r#"{"ips":[{"address":"10.1.0.5/24"},{"address":"10.2.0.5/24"}]}"#;
        assert!(ipam_result("h", two).unwrap_err().to_string().contains("ips[1].address: a second address"));
        assert!(ipam_result("h", r#"{"ips":[]}"#).unwrap_err().to_string().contains("ips: no address"));
        assert!(ipam_result("h", r#"{"ips":[{"address":"x"}]}"#).is_err());
    }

    #[test]
    fn a_missing_plugin_names_the_field_and_the_path() {
        let e = Delegate::find("nope", &[PathBuf::from("/nonexistent")]).unwrap_err();
        assert_eq!(e.to_string(), r#"ipam.type: plugin "nope" not found in CNI_PATH (/nonexistent)"#);
        assert!(matches!(Delegate::find("nope", &[]), Err(DelegateError::NoPath { .. })));
    }
}
