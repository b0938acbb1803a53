//! `kubectl` against the lab cluster: the client built with the cluster (same release), run
//! inside the control plane's network namespace (the API server is reachable from the lab's
//! namespaces only; nothing of the lab is routed to the machine's own), with a kubeconfig of
//! the lab, a deadline per call, and polling helpers for state that takes time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::cmd::{self, CmdError};
use crate::netns::{NetnsError, command_in};

/// How long one kubectl call may take (an exec of a probe in a pod included).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum KubectlError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Command(Box<CmdError>),
    #[error("kubectl {args}: unreadable JSON: {source}")]
    Json { args: String, source: serde_json::Error },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("waiting for {what}: not within {after:?}; last: {last}")]
    Timeout { what: String, after: Duration, last: String },
    #[error("{what}: the exec failed without the probe's verdict: {output}")]
    Exec { what: String, output: String },
}

impl From<CmdError> for KubectlError {
    fn from(e: CmdError) -> Self {
        KubectlError::Command(Box::new(e))
    }
}

/// A kubectl bound to one kubeconfig, running in one network namespace.
#[derive(Clone, Debug)]
pub struct Kubectl {
    binary: PathBuf,
    kubeconfig: PathBuf,
    netns_name: String,
    netns_path: PathBuf,
}

impl Kubectl {
    pub fn new(binary: &Path, kubeconfig: &Path, netns_name: &str, netns_path: &Path) -> Self {
        Kubectl {
            binary: binary.to_owned(),
            kubeconfig: kubeconfig.to_owned(),
            netns_name: netns_name.to_owned(),
            netns_path: netns_path.to_owned(),
        }
    }

    /// The same client with another identity (a ServiceAccount's kubeconfig, say).
    pub fn with_kubeconfig(&self, kubeconfig: &Path) -> Self {
        Kubectl { kubeconfig: kubeconfig.to_owned(), ..self.clone() }
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Beside the kubeconfig (else kubectl writes its discovery cache to `$HOME/.kube`).
    pub fn cache_dir(&self) -> PathBuf {
        self.kubeconfig.parent().unwrap_or(Path::new(".")).join("kubectl-cache")
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The command, ready to spawn, for callers that stream its output.
    pub fn command(&self, args: &[&str]) -> Result<Command, KubectlError> {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).arg("--cache-dir").arg(self.cache_dir()).args(args);
        command_in(&mut cmd, &self.netns_name, &self.netns_path)?;
        Ok(cmd)
    }

    /// Runs kubectl; its stdout, or an error with the command line and stderr.
    pub fn run(&self, args: &[&str]) -> Result<String, KubectlError> {
        Ok(cmd::run_ok(self.command(args)?, None, CALL_TIMEOUT)?)
    }

    /// Runs kubectl and returns its exit code and combined output, failing only when it could
    /// not run (for probes, where a non-zero exit is the answer).
    pub fn run_status(&self, args: &[&str]) -> Result<(i32, String), KubectlError> {
        self.run_status_with(args, None)
    }

    /// [`Kubectl::run_status`] with `stdin` fed to kubectl (`-f -`).
    pub fn run_status_with(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<(i32, String), KubectlError> {
        let out = cmd::run(self.command(args)?, stdin, CALL_TIMEOUT)?;
        Ok((out.status.code().unwrap_or(-1), format!("{}{}", out.stdout, out.stderr)))
    }

    /// `kubectl apply -f -` with `yaml`.
    pub fn apply(&self, yaml: &str) -> Result<String, KubectlError> {
        Ok(cmd::run_ok(self.command(&["apply", "-f", "-"])?, Some(yaml.as_bytes()), CALL_TIMEOUT)?)
    }

    /// `kubectl get <args> -o json`, parsed.
    pub fn get_json(&self, args: &[&str]) -> Result<serde_json::Value, KubectlError> {
        let mut full = vec!["get"];
        full.extend_from_slice(args);
        full.extend(["-o", "json"]);
        let out = self.run(&full)?;
        serde_json::from_str(&out).map_err(|source| KubectlError::Json { args: full.join(" "), source })
    }

    /// Waits until pod `ns/name` is Running with an IPv4 address; returns it.
    pub fn running_pod_ip(&self, ns: &str, name: &str, timeout: Duration) -> Result<std::net::Ipv4Addr, KubectlError> {
        self.wait_for(&format!("pod {ns}/{name} Running"), timeout, |k| {
            let pod = k.get_json(&["-n", ns, "pod", name])?;
            let phase = pod["status"]["phase"].as_str().unwrap_or("");
            match pod["status"]["podIP"].as_str().and_then(|ip| ip.parse().ok()) {
                Some(ip) if phase == "Running" => Ok(Ok(ip)),
                _ => Ok(Err(format!("phase {phase:?}, status {}", pod["status"]))),
            }
        })
    }

    /// `kubectl exec` of agnhost's `connect` from `pod` to `to` (`ip:port`): whether it
    /// connected. An exec that fails for any other reason than the probe's own verdict
    /// (REFUSED, TIMEOUT, OTHER) is an error, never "blocked".
    pub fn agnhost_connects(&self, ns: &str, pod: &str, to: &str, timeout: Duration) -> Result<bool, KubectlError> {
        let timeout = format!("--timeout={}s", timeout.as_secs().max(1));
        let (code, out) = self.run_status(&["-n", ns, "exec", pod, "--", "/agnhost", "connect", to, &timeout])?;
        if code == 0 {
            return Ok(true);
        }
        if out.contains("REFUSED") || out.contains("TIMEOUT") || out.contains("OTHER") {
            return Ok(false);
        }
        Err(KubectlError::Timeout {
            what: format!("kubectl exec {ns}/{pod} connect {to}"),
            after: Duration::ZERO,
            last: out,
        })
    }

    /// The ClusterIP of Service `ns/name`.
    pub fn cluster_ip(&self, ns: &str, name: &str) -> Result<std::net::Ipv4Addr, KubectlError> {
        let svc = self.get_json(&["-n", ns, "service", name])?;
        svc["spec"]["clusterIP"].as_str().and_then(|s| s.parse().ok()).ok_or_else(|| KubectlError::Timeout {
            what: format!("service {ns}/{name} has a ClusterIP"),
            after: Duration::ZERO,
            last: svc["spec"].to_string(),
        })
    }

    /// Polls [`agnhost_connects`](Self::agnhost_connects) until it answers `want` twice in a
    /// row (policy, endpoints and kube-proxy settle): true; false if it never does within
    /// `settle`.
    pub fn settles_to(
        &self,
        ns: &str,
        pod: &str,
        to: &str,
        want: bool,
        connect: Duration,
        settle: Duration,
    ) -> Result<bool, KubectlError> {
        let deadline = Instant::now() + settle;
        let mut streak = 0;
        while Instant::now() < deadline {
            if self.agnhost_connects(ns, pod, to, connect)? == want {
                streak += 1;
                if streak == 2 {
                    return Ok(true);
                }
            } else {
                streak = 0;
                thread::sleep(Duration::from_millis(500));
            }
        }
        Ok(false)
    }

    /// Polls `check` until it returns `Some`, or fails after `timeout` with the last thing it
    /// said (`Err` of a call counts as "not yet": the API may be starting).
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Kubectl) -> Result<Result<T, String>, KubectlError>,
    ) -> Result<T, KubectlError> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match check(self) {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(not_yet)) => not_yet,
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(KubectlError::Timeout { what: what.to_owned(), after: timeout, last });
            }
            thread::sleep(POLL_EVERY);
        }
    }
}
