//! The CNI commands: parse the environment and the configuration, dispatch to one file per
//! verb (`add`, `del`, `check`, `status`, `gc`; VERSION is answered here), and turn the
//! outcome into what the runtime reads (stdout and exit status). Also what several verbs
//! share: the error type and its CNI codes, the DEL queue's drain, and [`teardown`], which
//! removes one attachment (DEL, GC and the sweep of pods removed without a DEL).
//!
//! Every command but VERSION first sends the queued deregistrations (`records`), so the agent
//! hears of every DEL as soon as any plugin call finds it up again.

use std::path::Path;
use std::time::{Duration, Instant};

use tracing::{debug, info_span, warn};

use super::delegate::{Delegate, DelegateError};
use super::env::{self, Attachment, EnvError, Invocation, Verb};
use super::error::{ErrorCode, ErrorReply};
use super::netconf::{self, CniVersion, Ipam, NetConf, NetConfError};
use super::records::{AttachmentRecord, RecordError, Records, Stage};
use super::result;
use super::{add, check, del, gc, status};
use crate::api::client::{self, ClientError};
use crate::api::proto::{AttachmentKey, Request, Response};
use crate::endpoint::ipam::{IpamError, Owner, Store};
use crate::endpoint::netns::NetnsError;
use crate::endpoint::veth::{self, Netlink, VethError};

/// How long the agent may take to protect a pod before ADD gives up.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a deregistration may take before it is queued instead: DEL never blocks on a
/// slow agent.
pub const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one plugin call spends sending queued deregistrations.
const DRAIN_BUDGET: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error(transparent)]
    NetConf(#[from] NetConfError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Veth(#[from] VethError),
    #[error(transparent)]
    Delegate(#[from] DelegateError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("registering {endpoint}: {source}")]
    AgentUnreachable {
        endpoint: String,
        #[source]
        source: ClientError,
    },
    #[error("the ward agent refused to protect {endpoint}: {message}")]
    Refused { endpoint: String, message: String },
    #[error("the ward agent answered {request} with {answer}")]
    UnexpectedAnswer { request: &'static str, answer: String },
    #[error("CHECK {endpoint}: {problem}")]
    Check { endpoint: String, problem: check::CheckProblem },
    #[error("STATUS: {reason}")]
    NotReady { reason: String },
    #[error("GC could not finish: {}", problems.join("; "))]
    GcIncomplete { problems: Vec<String>, transient: bool },
    #[error("encoding the result: {0}")]
    Encode(#[source] serde_json::Error),
}

impl CommandError {
    /// The number the runtime sees.
    pub fn code(&self) -> u32 {
        let code = match self {
            Self::Env(_) => ErrorCode::InvalidEnvironment,
            Self::NetConf(e) if e.is_version() => ErrorCode::IncompatibleVersion,
            Self::NetConf(e) if e.is_decode() => ErrorCode::Decode,
            Self::NetConf(_) => ErrorCode::InvalidNetworkConfig,
            Self::Ipam(IpamError::Exhausted { .. }) => ErrorCode::AddressesExhausted,
            Self::Ipam(e) if e.is_transient() => ErrorCode::TryAgainLater,
            Self::Ipam(_) | Self::Encode(_) | Self::Record(_) => ErrorCode::Io,
            Self::Netns(NetnsError::Missing { .. }) => ErrorCode::UnknownContainer,
            Self::Netns(NetnsError::NotANamespace { .. }) => ErrorCode::InvalidEnvironment,
            Self::Netns(NetnsError::Open { .. }) => ErrorCode::Io,
            Self::Netns(_) | Self::Veth(_) => ErrorCode::Interface,
            Self::Delegate(e) => match e {
                DelegateError::Failed { code, .. } => return *code,
                DelegateError::NoPath { .. } => ErrorCode::InvalidEnvironment,
                DelegateError::NotFound { .. } => ErrorCode::InvalidNetworkConfig,
                _ => ErrorCode::Delegate,
            },
            Self::AgentUnreachable { .. } => ErrorCode::TryAgainLater,
            Self::Refused { .. } => ErrorCode::RegistrationRefused,
            Self::UnexpectedAnswer { .. } => ErrorCode::AgentProtocol,
            Self::Check { problem, .. } if problem.is_transient() => ErrorCode::TryAgainLater,
            Self::Check { .. } => ErrorCode::CheckFailed,
            Self::NotReady { .. } => ErrorCode::NotAvailable,
            Self::GcIncomplete { transient: true, .. } => ErrorCode::TryAgainLater,
            Self::GcIncomplete { .. } => ErrorCode::Io,
        };
        code.get()
    }

    /// The root cause (e.g. the kernel's errno text), when the message wraps one; a delegated
    /// plugin's own details.
    fn details(&self) -> Option<String> {
        if let Self::Delegate(DelegateError::Failed { details, .. }) = self {
            return details.clone();
        }
        let mut cause = std::error::Error::source(self)?;
        while let Some(next) = cause.source() {
            cause = next;
        }
        Some(cause.to_string())
    }
}

/// What the binary writes to stdout and exits with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub exit_code: i32,
}

/// Runs one invocation: `var` reads the environment, `stdin` is the network configuration.
pub fn run(var: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    match execute(var, stdin) {
        Ok(stdout) => Outcome { stdout, exit_code: 0 },
        Err(e) => {
            let code = e.code();
            tracing::error!(code, "{e}");
            let version = netconf::peek_version(stdin).unwrap_or(CniVersion::LATEST);
            let reply = ErrorReply::new(version.as_str(), code, e.to_string(), e.details());
            let stdout = serde_json::to_string(&reply).unwrap_or_else(|_| {
                format!(r#"{{"cniVersion":"{}","code":{code},"msg":"unprintable error"}}"#, version.as_str())
            });
            Outcome { stdout, exit_code: 1 }
        }
    }
}

/// What every verb but VERSION works with.
pub(super) struct Ctx<'a> {
    pub conf: NetConf,
    pub stdin: &'a [u8],
    pub inv: &'a Invocation,
    pub records: Records,
}

impl Ctx<'_> {
    pub fn store(&self) -> Store {
        Store::new(&self.conf.data_dir, &self.conf.name)
    }

    /// The delegated IPAM plugin, if the configuration names one.
    pub fn delegate(&self) -> Result<Option<Delegate>, CommandError> {
        match &self.conf.ipam {
            Ipam::Ward { .. } => Ok(None),
            Ipam::Delegated { plugin } => Ok(Some(Delegate::find(plugin, &self.inv.cni_path)?)),
        }
    }

    /// Our environment for a delegated plugin, with `key`'s attachment variables set.
    pub fn delegate_env(&self, key: &AttachmentKey, netns: Option<&str>) -> Vec<(&'static str, String)> {
        let mut env: Vec<(&'static str, String)> = self
            .inv
            .passthrough
            .iter()
            .filter(|(k, _)| !matches!(*k, "CNI_CONTAINERID" | "CNI_IFNAME" | "CNI_NETNS"))
            .cloned()
            .collect();
        env.push(("CNI_CONTAINERID", key.container_id.clone()));
        env.push(("CNI_IFNAME", key.ifname.clone()));
        if let Some(netns) = netns {
            env.push(("CNI_NETNS", netns.to_owned()));
        }
        env
    }

    /// Our environment without attachment variables (STATUS and GC have none).
    pub fn plain_env(&self) -> Vec<(&str, &str)> {
        self.inv
            .passthrough
            .iter()
            .filter(|(k, _)| !matches!(*k, "CNI_CONTAINERID" | "CNI_IFNAME" | "CNI_NETNS"))
            .map(|(k, v)| (*k, v.as_str()))
            .collect()
    }

    /// Runs the delegated plugin's `command` for `key` (its configuration is ours, section 4).
    pub fn run_delegate(
        &self,
        delegate: &Delegate,
        command: &str,
        key: &AttachmentKey,
        netns: Option<&str>,
    ) -> Result<String, DelegateError> {
        let env = self.delegate_env(key, netns);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        delegate.run(command, &env, self.stdin)
    }

    fn call(&self, request: &Request, timeout: Duration) -> Result<Response, ClientError> {
        client::call(&self.conf.agent_socket, request, timeout)
    }

    /// Tells the agent to forget `key`; queues it when the agent does not confirm.
    pub fn deregister_or_queue(&self, key: &AttachmentKey) {
        if self.deregister(key).is_err() {
            if let Err(e) = self.records.queue_deregistration(key) {
                // The agent's sweep still forgets the endpoint once its interface is gone.
                warn!(container = %key.container_id, error = %e, "cannot queue the deregistration");
            } else {
                warn!(container = %key.container_id, ifname = %key.ifname, "the ward agent did not confirm the deregistration; queued");
            }
        }
    }

    fn deregister(&self, key: &AttachmentKey) -> Result<(), ClientError> {
        let request = Request::Deregister { container_id: key.container_id.clone(), ifname: key.ifname.clone() };
        match self.call(&request, DEREGISTER_TIMEOUT) {
            Ok(Response::Deregistered { existed }) => {
                debug!(existed, "deregistered");
                Ok(())
            }
            Ok(other) => {
                // The agent is up and said something else; sending it again will not help.
                warn!("the ward agent answered the deregistration with {other:?}");
                Ok(())
            }
            Err(e) => {
                warn!("deregistration not confirmed: {e}");
                Err(e)
            }
        }
    }

    /// Sends queued deregistrations, within [`DRAIN_BUDGET`]; stops at the first the agent
    /// does not confirm (it is down: the rest would wait too).
    fn drain(&self) {
        let started = Instant::now();
        for key in self.records.pending() {
            if started.elapsed() > DRAIN_BUDGET || self.deregister(&key).is_err() {
                break;
            }
            debug!(container = %key.container_id, ifname = %key.ifname, "queued deregistration delivered");
            if let Err(e) = self.records.deregistered(&key) {
                warn!("{e}");
            }
        }
    }
}

fn execute(var: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<String, CommandError> {
    let inv = env::parse(var)?;
    // VERSION must answer whatever stdin holds; every other command needs the configuration.
    if inv.verb == Verb::Version {
        return version(stdin);
    }
    let conf = netconf::parse(stdin)?;
    let records = Records::new(&conf.data_dir, &conf.name);
    let ctx = Ctx { conf, stdin, inv: &inv, records };
    match &inv.verb {
        Verb::Version => version(stdin),
        Verb::Add(attachment, pod) => {
            let pod_name = format!("{}/{}", pod.namespace, pod.name);
            let _span = info_span!("add", container = %attachment.container_id, pod = %pod_name).entered();
            ctx.drain();
            let result = add::add(&ctx, attachment, pod)?;
            result.to_json(ctx.conf.cni_version, ctx.conf.prev_result.as_ref()).map_err(CommandError::Encode)
        }
        Verb::Del(attachment) => {
            let _span = info_span!("del", container = %attachment.container_id).entered();
            ctx.drain();
            del::del(&ctx, attachment);
            Ok(String::new())
        }
        Verb::Check(attachment) => {
            let _span = info_span!("check", container = %attachment.container_id).entered();
            ctx.drain();
            check::check(&ctx, attachment).map(|()| String::new())
        }
        Verb::Status => {
            netconf::require_1_1(&ctx.conf, "STATUS")?;
            let _span = info_span!("status").entered();
            ctx.drain();
            status::status(&ctx).map(|()| String::new())
        }
        Verb::Gc => {
            netconf::require_1_1(&ctx.conf, "GC")?;
            let valid = netconf::valid_attachments(stdin)?;
            let _span = info_span!("gc", valid = valid.len()).entered();
            ctx.drain();
            gc::gc(&ctx, &valid).map(|()| String::new())
        }
    }
}

/// The VERSION answer, for whatever stdin holds.
fn version(stdin: &[u8]) -> Result<String, CommandError> {
    let input = netconf::object(stdin).ok();
    let version = input.as_ref().and_then(|o| o.get("cniVersion")).and_then(|v| v.as_str());
    result::version_json(version).map_err(CommandError::Encode)
}

pub(super) fn endpoint_name(attachment: &Attachment) -> String {
    match &attachment.pod {
        Some(pod) => {
            format!("pod {}/{} (container {}, {})", pod.namespace, pod.name, attachment.container_id, attachment.ifname)
        }
        None => format!("container {} ({})", attachment.container_id, attachment.ifname),
    }
}

pub(super) fn key_of(attachment: &Attachment) -> AttachmentKey {
    AttachmentKey { container_id: attachment.container_id.clone(), ifname: attachment.ifname.clone() }
}

pub(super) fn owner(key: &AttachmentKey) -> Owner<'_> {
    Owner { container_id: &key.container_id, ifname: &key.ifname }
}

pub(super) fn netns_path(attachment: &Attachment) -> Result<&Path, CommandError> {
    attachment.netns.as_deref().ok_or(CommandError::Env(EnvError::Missing { var: "CNI_NETNS" }))
}

/// Removes one attachment: the agent forgets it (or the deregistration is queued), the veth
/// goes (and with it the pod side and every route through it; if the pod's namespace is
/// gone, so is the pair), the addresses go into quarantine or back to the delegated plugin.
/// Never fails: what could not be undone is recorded (`Stage::Deleting`) and retried by the
/// next sweep. Returns whether everything went.
pub(super) fn teardown(ctx: &Ctx<'_>, key: &AttachmentKey, netns: Option<&str>) -> bool {
    ctx.deregister_or_queue(key);
    let mut complete = true;
    let host_ifname = veth::host_ifname(&key.container_id, &key.ifname);
    match Netlink::open().and_then(|n| n.delete_by_name(&host_ifname)) {
        Ok(deleted) => debug!(interface = %host_ifname, deleted, "host side"),
        Err(e) => {
            warn!(interface = %host_ifname, "cannot delete the host side: {e}");
            complete = false;
        }
    }
    let netns = netns.map(str::to_owned).or_else(|| ctx.records.get(&key.container_id, &key.ifname)?.netns);
    let released = match ctx.delegate() {
        Ok(None) => ctx.store().release(owner(key)).map(|ips| debug!(?ips, "released")).map_err(|e| e.to_string()),
        Ok(Some(delegate)) => {
            ctx.run_delegate(&delegate, "DEL", key, netns.as_deref()).map(drop).map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = released {
        warn!(container = %key.container_id, "cannot release the addresses: {e}");
        complete = false;
    }
    let record = if complete {
        ctx.records.forget(&key.container_id, &key.ifname)
    } else {
        let mut rec = AttachmentRecord::new(&key.container_id, &key.ifname, None, Stage::Deleting);
        rec.netns = netns;
        ctx.records.put(&rec)
    };
    if let Err(e) = record {
        warn!("{e}");
    }
    complete
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    fn reply(outcome: &Outcome) -> serde_json::Value {
        serde_json::from_str(&outcome.stdout).unwrap()
    }

    #[test]
    fn version_answers_without_configuration() {
        let out = run(env(&[("CNI_COMMAND", "VERSION")]), b"");
        assert_eq!(out.exit_code, 0);
        assert_eq!(out.stdout, r#"{"cniVersion":"1.1.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}"#);
        let out = run(env(&[("CNI_COMMAND", "VERSION")]), br#"{"cniVersion":"1.0.0"}"#);
        assert_eq!(out.stdout, r#"{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}"#);
    }

    #[test]
    fn unknown_commands_get_code_4() {
        let out = run(env(&[("CNI_COMMAND", "FROB")]), br#"{"cniVersion":"1.0.0"}"#);
        assert_eq!(out.exit_code, 1);
        let r = reply(&out);
        assert_eq!(r["code"], 4);
        assert_eq!(r["cniVersion"], "1.0.0");
        assert!(r["msg"].as_str().unwrap().contains("FROB"));
    }

    const DEL_ENV: &[(&str, &str)] = &[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")];

    #[test]
    fn bad_configuration_is_reported_with_the_field_and_the_right_code() {
        let out = run(env(DEL_ENV), br#"{"cniVersion":"1.0.0","name":"ward","podCIDRs":["10.0.0.0/24","x"]}"#);
        assert_eq!(out.exit_code, 1);
        let r = reply(&out);
        assert_eq!(r["code"], 7);
        assert_eq!(r["msg"], r#"podCIDRs[1]: invalid CIDR "x""#);

        let r = reply(&run(env(DEL_ENV), br#"{"cniVersion":"0.3.1","name":"ward","podCIDRs":["10.0.0.0/24"]}"#));
        assert_eq!((r["code"].as_u64(), r["cniVersion"].as_str()), (Some(1), Some("1.1.0")));

        let r = reply(&run(env(DEL_ENV), b"\xff not json"));
        assert_eq!(r["code"], 6);
    }

    #[test]
    fn status_and_gc_need_a_1_1_configuration() {
        let conf = br#"{"cniVersion":"1.0.0","name":"ward","podCIDRs":["10.0.0.0/24"]}"#;
        for (command, path) in [("STATUS", None), ("GC", Some("/opt/cni/bin"))] {
            let mut vars = vec![("CNI_COMMAND", command)];
            vars.extend(path.map(|p| ("CNI_PATH", p)));
            let r = reply(&run(env(&vars), conf));
            assert_eq!(r["code"], 1, "{command}: {r}");
            assert_eq!(
                r["msg"],
                format!("cniVersion: {command} needs version 1.1.0 or later (the configuration says 1.0.0)")
            );
        }
    }

    #[test]
    fn codes_follow_the_error_type() {
        let exhausted = CommandError::Ipam(IpamError::Exhausted { cidr: "10.0.0.0/30".parse().unwrap(), allocated: 1 });
        assert_eq!(exhausted.code(), ErrorCode::AddressesExhausted.get());
        let waiting = CommandError::Ipam(IpamError::Quarantined {
            cidr: "10.0.0.0/30".parse().unwrap(),
            quarantined: 1,
            wait: Duration::from_secs(3),
        });
        assert_eq!(waiting.code(), 11);
        let missing = CommandError::Netns(NetnsError::Missing { path: "/x".into() });
        assert_eq!(missing.code(), ErrorCode::UnknownContainer.get());
        let down = CommandError::AgentUnreachable {
            endpoint: "e".into(),
            source: ClientError::NoAnswer { path: "/run/ward/agent.sock".into() },
        };
        assert_eq!(down.code(), ErrorCode::TryAgainLater.get());
        let passed = CommandError::Delegate(DelegateError::Failed {
            plugin: "host-local".into(),
            command: "ADD".into(),
            code: 1,
            msg: "incompatible CNI versions".into(),
            details: None,
        });
        assert_eq!(passed.code(), 1, "a delegated plugin's own code passes through");
        assert_eq!(CommandError::NotReady { reason: "x".into() }.code(), 50);
    }
}
