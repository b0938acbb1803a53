//! CHECK (spec 1.1.0, section 2): what `prevResult` (the final result of the ADD) says Ward
//! created must still be there and in order: the host side of the veth (up), the pod's
//! interface with the MAC the result names (a later plugin such as tuning may have changed
//! it; the result then carries the new one), every address the result puts on it, the IP
//! reservation (Ward's store, or the delegated plugin's CHECK), and the agent's registration
//! of the endpoint (the daemon the pod's connectivity depends on). Routes are not checked: a
//! later plugin may change them.

use std::net::IpAddr;

use super::command::{CommandError, Ctx, endpoint_name, key_of, netns_path, owner};
use super::env::Attachment;
use super::netconf::NetConfError;
use super::result::PrevResult;
use crate::api::client;
use crate::api::proto::{Request, Response};
use crate::endpoint::netns::NetNs;
use crate::endpoint::veth::{self, Netlink, VethError};

/// How long the agent may take to list its endpoints.
const ENDPOINTS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What CHECK found wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckProblem {
    #[error("prevResult does not list the interface {name} that ADD created")]
    NotInResult { name: String },
    #[error("its address {ip} is not reserved for it")]
    NotReserved { ip: IpAddr },
    #[error("host interface {name} does not exist")]
    HostLinkMissing { name: String },
    #[error("host interface {name} is down")]
    HostLinkDown { name: String },
    #[error("interface {ifname} does not exist in {netns}")]
    PodLinkMissing { ifname: String, netns: String },
    #[error("interface {ifname} in {netns} has MAC {actual}, the result says {expected}")]
    MacChanged { ifname: String, netns: String, expected: String, actual: String },
    #[error("interface {ifname} in {netns} lacks its address {ip}")]
    AddressMissing { ifname: String, netns: String, ip: IpAddr },
    #[error("the ward agent does not protect it (no registered endpoint on {host_ifname})")]
    NotRegistered { host_ifname: String },
    #[error("the ward agent cannot be asked: {reason}")]
    AgentUnreachable { reason: String },
}

impl CheckProblem {
    /// Whether the condition may clear by itself (the runtime should try again, not treat the
    /// container as broken for good).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::AgentUnreachable { .. })
    }
}

pub(super) fn check(ctx: &Ctx<'_>, attachment: &Attachment) -> Result<(), CommandError> {
    let fail = |problem| CommandError::Check { endpoint: endpoint_name(attachment), problem };
    let prev = ctx.conf.prev_result.as_ref().ok_or(NetConfError::Missing { field: "prevResult" })?;
    let prev = PrevResult::read(prev)?;
    let netns = NetNs::open(netns_path(attachment)?)?;
    let sandbox = netns.path().to_string_lossy().into_owned();
    let host_ifname = veth::host_ifname(&attachment.container_id, &attachment.ifname);
    if prev.interface(&host_ifname, None).is_none() {
        return Err(fail(CheckProblem::NotInResult { name: host_ifname }));
    }
    let Some(pod_index) = prev.interface(&attachment.ifname, Some(&sandbox)) else {
        return Err(fail(CheckProblem::NotInResult { name: attachment.ifname.clone() }));
    };
    let expected_ips = prev.addresses_of(pod_index);

    match Netlink::open()?.link(&host_ifname)? {
        None => return Err(fail(CheckProblem::HostLinkMissing { name: host_ifname })),
        Some(link) if !link.up => return Err(fail(CheckProblem::HostLinkDown { name: host_ifname })),
        Some(_) => {}
    }
    let found = netns.run(|| -> Result<Option<(String, Vec<IpAddr>)>, VethError> {
        let netlink = Netlink::open()?;
        match netlink.link(&attachment.ifname)? {
            Some(link) => Ok(Some((veth::format_mac(&link.mac), netlink.addresses(&link)?))),
            None => Ok(None),
        }
    })??;
    let Some((mac, addresses)) = found else {
        return Err(fail(CheckProblem::PodLinkMissing { ifname: attachment.ifname.clone(), netns: sandbox }));
    };
    if let Some(expected) = prev.interfaces[pod_index].mac.as_ref().filter(|m| !m.eq_ignore_ascii_case(&mac)) {
        return Err(fail(CheckProblem::MacChanged {
            ifname: attachment.ifname.clone(),
            netns: sandbox,
            expected: expected.clone(),
            actual: mac,
        }));
    }
    if let Some(&ip) = expected_ips.iter().find(|ip| !addresses.contains(ip)) {
        return Err(fail(CheckProblem::AddressMissing { ifname: attachment.ifname.clone(), netns: sandbox, ip }));
    }

    let key = key_of(attachment);
    match ctx.delegate()? {
        None => {
            let reserved = ctx.store().find(owner(&key))?;
            if let Some(&ip) = expected_ips.iter().find(|ip| !reserved.contains(ip)) {
                return Err(fail(CheckProblem::NotReserved { ip }));
            }
        }
        Some(delegate) => {
            ctx.run_delegate(&delegate, "CHECK", &key, Some(&sandbox))?;
        }
    }

    match client::call(&ctx.conf.agent_socket, &Request::Endpoints, ENDPOINTS_TIMEOUT) {
        Ok(Response::Endpoints { endpoints }) => {
            if !endpoints.iter().any(|e| e.container_id == attachment.container_id && e.host_ifname == host_ifname) {
                return Err(fail(CheckProblem::NotRegistered { host_ifname }));
            }
        }
        Ok(other) => {
            return Err(CommandError::UnexpectedAnswer { request: "the endpoint list", answer: format!("{other:?}") });
        }
        Err(e) => return Err(fail(CheckProblem::AgentUnreachable { reason: e.to_string() })),
    }
    Ok(())
}
