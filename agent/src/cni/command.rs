//! The CNI commands: parse the environment and the configuration, then ADD, DEL, CHECK or
//! VERSION, and turn the outcome into what the runtime reads (stdout and exit status).
//!
//! ADD order, chosen so that no packet can flow before the agent protects the pod:
//! allocate addresses → create the veth (host side down, peer in the pod) → configure the pod
//! side → register with the agent (it answers once programs and maps are in place) → host side
//! up, routes and neighbours towards the pod. A failure at any step undoes the earlier ones.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use tracing::{debug, info_span, warn};

use super::env::{self, Attachment, EnvError, Invocation, PodRef};
use super::error::{ErrorCode, ErrorReply};
use super::netconf::{self, CniVersion, NetConf, NetConfError};
use super::result::{self, AddResult, Interface, IpConfig, Route};
use crate::api::client::{self, ClientError};
use crate::api::proto::{EndpointRegistration, Request, Response};
use crate::endpoint::ipam::{IpamError, Owner, Store};
use crate::endpoint::netns::{NetNs, NetnsError};
use crate::endpoint::veth::{self, Link, Netlink, VethError, VethSpec};

/// How long the agent may take to protect a pod before ADD gives up.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long DEL (and ADD's rollback) waits for the agent to forget an endpoint.
pub const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// What CHECK found wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckProblem {
    #[error("no address is allocated to it")]
    NoAllocation,
    #[error("host interface {name} does not exist")]
    HostLinkMissing { name: String },
    #[error("host interface {name} is down")]
    HostLinkDown { name: String },
    #[error("interface {ifname} does not exist in {netns}")]
    PodLinkMissing { ifname: String, netns: String },
    #[error("interface {ifname} in {netns} lacks its address {ip}")]
    AddressMissing { ifname: String, netns: String, ip: IpAddr },
}

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
    #[error("registering {endpoint}: {source}")]
    AgentUnreachable {
        endpoint: String,
        #[source]
        source: ClientError,
    },
    #[error("the ward agent refused to protect {endpoint}: {message}")]
    Refused { endpoint: String, message: String },
    #[error("the ward agent answered the registration of {endpoint} with {answer}")]
    UnexpectedAnswer { endpoint: String, answer: String },
    #[error("CHECK {endpoint}: {problem}")]
    Check { endpoint: String, problem: CheckProblem },
    #[error("encoding the result: {0}")]
    Encode(#[source] serde_json::Error),
}

impl CommandError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Env(_) => ErrorCode::InvalidEnvironment,
            Self::NetConf(e) if e.is_version() => ErrorCode::IncompatibleVersion,
            Self::NetConf(e) if e.is_decode() => ErrorCode::Decode,
            Self::NetConf(_) => ErrorCode::InvalidNetworkConfig,
            Self::Ipam(IpamError::Exhausted { .. }) => ErrorCode::AddressesExhausted,
            Self::Ipam(_) | Self::Encode(_) => ErrorCode::Io,
            Self::Netns(NetnsError::Missing { .. }) => ErrorCode::UnknownContainer,
            Self::Netns(NetnsError::NotANamespace { .. }) => ErrorCode::InvalidEnvironment,
            Self::Netns(NetnsError::Open { .. }) => ErrorCode::Io,
            Self::Netns(_) | Self::Veth(_) => ErrorCode::Interface,
            Self::AgentUnreachable { .. } => ErrorCode::TryAgainLater,
            Self::Refused { .. } => ErrorCode::RegistrationRefused,
            Self::UnexpectedAnswer { .. } => ErrorCode::AgentProtocol,
            Self::Check { .. } => ErrorCode::CheckFailed,
        }
    }

    /// The root cause (e.g. the kernel's errno text), when the message wraps one.
    fn root_cause(&self) -> Option<String> {
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
            tracing::error!(code = e.code().get(), "{e}");
            let version = netconf::peek_version(stdin).unwrap_or(CniVersion::LATEST);
            let reply = ErrorReply::new(version.as_str(), e.code(), e.to_string(), e.root_cause());
            let stdout = serde_json::to_string(&reply).unwrap_or_else(|_| {
                format!(
                    r#"{{"cniVersion":"{}","code":{},"msg":"unprintable error"}}"#,
                    version.as_str(),
                    e.code().get()
                )
            });
            Outcome { stdout, exit_code: 1 }
        }
    }
}

fn execute(var: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<String, CommandError> {
    // VERSION must answer whatever stdin holds; every other command needs the configuration.
    match env::parse(var)? {
        Invocation::Version => result::version_json().map_err(CommandError::Encode),
        Invocation::Add(attachment, pod) => {
            let conf = netconf::parse(stdin)?;
            let pod_name = format!("{}/{}", pod.namespace, pod.name);
            let _span = info_span!("add", container = %attachment.container_id, pod = %pod_name).entered();
            add(&conf, &attachment, &pod)?.to_json(conf.cni_version).map_err(CommandError::Encode)
        }
        Invocation::Del(attachment) => {
            let conf = netconf::parse(stdin)?;
            let _span = info_span!("del", container = %attachment.container_id).entered();
            del(&conf, &attachment).map(|()| String::new())
        }
        Invocation::Check(attachment) => {
            let conf = netconf::parse(stdin)?;
            let _span = info_span!("check", container = %attachment.container_id).entered();
            check(&conf, &attachment).map(|()| String::new())
        }
    }
}

fn endpoint_name(attachment: &Attachment) -> String {
    match &attachment.pod {
        Some(pod) => {
            format!("pod {}/{} (container {}, {})", pod.namespace, pod.name, attachment.container_id, attachment.ifname)
        }
        None => format!("container {} ({})", attachment.container_id, attachment.ifname),
    }
}

fn owner(attachment: &Attachment) -> Owner<'_> {
    Owner { container_id: &attachment.container_id, ifname: &attachment.ifname }
}

fn netns_path(attachment: &Attachment) -> Result<&Path, CommandError> {
    attachment.netns.as_deref().ok_or(CommandError::Env(EnvError::Missing { var: "CNI_NETNS" }))
}

/// What ADD has done so far, to undo on failure (in reverse order).
struct Progress<'a> {
    conf: &'a NetConf,
    attachment: &'a Attachment,
    store: &'a Store,
    netlink: &'a Netlink,
    host: Option<Link>,
    /// The agent may hold the endpoint (a registration was sent and not plainly refused).
    maybe_registered: bool,
}

impl Progress<'_> {
    fn undo(&self) {
        if self.maybe_registered {
            deregister(self.conf, self.attachment);
        }
        if let Some(host) = &self.host
            && let Err(e) = self.netlink.delete(host)
        {
            warn!(interface = %host.name, "rollback: {e}");
        }
        if let Err(e) = self.store.release(owner(self.attachment)) {
            warn!("rollback: {e}");
        }
    }
}

fn add(conf: &NetConf, attachment: &Attachment, pod: &PodRef) -> Result<AddResult, CommandError> {
    let netns = NetNs::open(netns_path(attachment)?)?;
    let netlink = Netlink::open()?;
    let store = Store::new(&conf.data_dir, &conf.name);
    let ips = store.allocate(owner(attachment), &conf.pod_ranges)?;
    debug!(?ips, "allocated");
    let mut progress =
        Progress { conf, attachment, store: &store, netlink: &netlink, host: None, maybe_registered: false };
    match wire(&mut progress, &netns, pod, &ips) {
        Ok(result) => Ok(result),
        Err(e) => {
            progress.undo();
            Err(e)
        }
    }
}

/// ADD after the addresses are allocated; records its progress for the rollback.
fn wire(progress: &mut Progress<'_>, netns: &NetNs, pod: &PodRef, ips: &[IpAddr]) -> Result<AddResult, CommandError> {
    let (conf, attachment, netlink) = (progress.conf, progress.attachment, progress.netlink);
    let host_ifname = veth::host_ifname(&attachment.container_id, &attachment.ifname);
    let spec = VethSpec { host_ifname: &host_ifname, pod_ifname: &attachment.ifname, mtu: conf.mtu };
    let host = match netlink.create_veth(spec, netns) {
        Err(e) if e.already_exists() && netlink.delete_by_name(&host_ifname)? => {
            // Left over from an ADD that was killed before it could roll back (the name is
            // derived from this very attachment).
            warn!(interface = %host_ifname, "replaced a stale host interface");
            netlink.create_veth(spec, netns)?
        }
        other => other?,
    };
    progress.host = Some(host.clone());

    let pod_link = netns.run(|| Netlink::open()?.configure_pod_side(&attachment.ifname, ips))??;

    let endpoint = endpoint_name(attachment);
    let registration = EndpointRegistration {
        container_id: attachment.container_id.clone(),
        ifname: attachment.ifname.clone(),
        netns: netns.path().to_string_lossy().into_owned(),
        pod_namespace: pod.namespace.clone(),
        pod_name: pod.name.clone(),
        host_ifname: host.name.clone(),
        host_ifindex: host.index,
        ips: ips.to_vec(),
    };
    progress.maybe_registered = true;
    match client::call(&conf.agent_socket, &Request::Register(registration), REGISTER_TIMEOUT) {
        Ok(Response::Registered { endpoint_id, identity }) => debug!(endpoint_id, identity, "registered"),
        Ok(Response::Error { message }) => {
            progress.maybe_registered = false;
            return Err(CommandError::Refused { endpoint, message });
        }
        Ok(other) => return Err(CommandError::UnexpectedAnswer { endpoint, answer: format!("{other:?}") }),
        Err(source) => {
            progress.maybe_registered = !matches!(source, ClientError::Connect { .. });
            return Err(CommandError::AgentUnreachable { endpoint, source });
        }
    }

    netlink.activate_host_side(&host, &pod_link.mac, ips)?;

    let sandbox = netns.path().to_string_lossy().into_owned();
    let mut routes = Vec::new();
    for &ip in ips {
        let gateway = veth::gateway_for(ip);
        if ip.is_ipv4() {
            routes.push(Route { dst: host_net(gateway), gw: None });
        }
        routes.push(Route { dst: default_net(ip), gw: Some(gateway) });
    }
    Ok(AddResult {
        interfaces: vec![
            Interface { name: host.name.clone(), mac: veth::format_mac(&host.mac), mtu: conf.mtu, sandbox: None },
            Interface {
                name: pod_link.name.clone(),
                mac: veth::format_mac(&pod_link.mac),
                mtu: conf.mtu,
                sandbox: Some(sandbox),
            },
        ],
        ips: ips.iter().map(|&ip| IpConfig { address: host_net(ip), interface: 1 }).collect(),
        routes,
    })
}

/// `ip` as a single-address network (/32, /128).
fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

fn default_net(like: IpAddr) -> IpNet {
    match like {
        IpAddr::V4(_) => IpNet::V4(Default::default()),
        IpAddr::V6(_) => IpNet::V6(Default::default()),
    }
}

/// Tells the agent to forget the endpoint; failures are logged, never fatal: the agent also
/// garbage-collects endpoints whose interface is gone.
fn deregister(conf: &NetConf, attachment: &Attachment) {
    let request =
        Request::Deregister { container_id: attachment.container_id.clone(), ifname: attachment.ifname.clone() };
    match client::call(&conf.agent_socket, &request, DEREGISTER_TIMEOUT) {
        Ok(Response::Deregistered { existed }) => debug!(existed, "deregistered"),
        Ok(Response::Error { message }) => warn!("the ward agent could not deregister the endpoint: {message}"),
        Ok(other) => warn!("the ward agent answered the deregistration with {other:?}"),
        Err(e) => warn!("deregistration skipped: {e}"),
    }
}

fn del(conf: &NetConf, attachment: &Attachment) -> Result<(), CommandError> {
    deregister(conf, attachment);
    let host_ifname = veth::host_ifname(&attachment.container_id, &attachment.ifname);
    // Removing the host side removes the pod side and every route through it; if the pod's
    // namespace is already gone, so is the pair.
    let deleted = Netlink::open()?.delete_by_name(&host_ifname)?;
    let released = Store::new(&conf.data_dir, &conf.name).release(owner(attachment))?;
    debug!(interface = %host_ifname, deleted, ?released, "deleted");
    Ok(())
}

fn check(conf: &NetConf, attachment: &Attachment) -> Result<(), CommandError> {
    let fail = |problem| CommandError::Check { endpoint: endpoint_name(attachment), problem };
    let ips = Store::new(&conf.data_dir, &conf.name).find(owner(attachment))?;
    if ips.is_empty() {
        return Err(fail(CheckProblem::NoAllocation));
    }
    let host_ifname = veth::host_ifname(&attachment.container_id, &attachment.ifname);
    match Netlink::open()?.link(&host_ifname)? {
        None => return Err(fail(CheckProblem::HostLinkMissing { name: host_ifname })),
        Some(link) if !link.up => return Err(fail(CheckProblem::HostLinkDown { name: host_ifname })),
        Some(_) => {}
    }
    let netns = NetNs::open(netns_path(attachment)?)?;
    let netns_name = netns.path().display().to_string();
    let addresses = netns.run(|| -> Result<Option<Vec<IpAddr>>, VethError> {
        let netlink = Netlink::open()?;
        match netlink.link(&attachment.ifname)? {
            Some(link) => netlink.addresses(&link).map(Some),
            None => Ok(None),
        }
    })??;
    let Some(addresses) = addresses else {
        return Err(fail(CheckProblem::PodLinkMissing { ifname: attachment.ifname.clone(), netns: netns_name }));
    };
    if let Some(&ip) = ips.iter().find(|ip| !addresses.contains(ip)) {
        return Err(fail(CheckProblem::AddressMissing { ifname: attachment.ifname.clone(), netns: netns_name, ip }));
    }
    Ok(())
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
    }

    #[test]
    fn unknown_commands_get_code_4() {
        let out = run(env(&[("CNI_COMMAND", "GC")]), br#"{"cniVersion":"1.0.0"}"#);
        assert_eq!(out.exit_code, 1);
        let r = reply(&out);
        assert_eq!(r["code"], 4);
        assert_eq!(r["cniVersion"], "1.0.0");
        assert!(r["msg"].as_str().unwrap().contains("GC"));
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
    fn codes_follow_the_error_type() {
        let exhausted = CommandError::Ipam(IpamError::Exhausted { cidr: "10.0.0.0/30".parse().unwrap(), allocated: 1 });
        assert_eq!(exhausted.code(), ErrorCode::AddressesExhausted);
        let missing = CommandError::Netns(NetnsError::Missing { path: "/x".into() });
        assert_eq!(missing.code(), ErrorCode::UnknownContainer);
        let down = CommandError::AgentUnreachable {
            endpoint: "e".into(),
            source: ClientError::NoAnswer { path: "/run/ward/agent.sock".into() },
        };
        assert_eq!(down.code(), ErrorCode::TryAgainLater);
    }
}
