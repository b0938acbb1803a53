//! ADD, in an order chosen so that no packet can flow before the agent protects the pod:
//! addresses (Ward's store, or the delegated IPAM plugin) → the veth (host side down, peer in
//! the pod) → the pod side configured → registration with the agent (it answers once programs
//! and maps are in place) → host side up, routes and neighbours towards the pod. A failure at
//! any step undoes the earlier ones, so an agent that is down fails ADD with code 11 and
//! leaves nothing behind: never an unprotected pod.
//!
//! Before allocating, ADD sweeps attachments whose pods went without a DEL (`sweep`), so
//! their addresses come back (through quarantine) when they are needed.

use std::net::IpAddr;

use ipnet::IpNet;
use tracing::{debug, warn};

use super::command::{self, CommandError, Ctx, REGISTER_TIMEOUT, endpoint_name, key_of, owner};
use super::delegate::{self, Delegate};
use super::env::{Attachment, PodRef};
use super::netconf::Ipam;
use super::records::{AttachmentRecord, Stage};
use super::result::{AddResult, Interface, IpConfig, Route};
use super::sweep;
use crate::api::client::{self, ClientError};
use crate::api::proto::{AttachmentKey, EndpointRegistration, Request, Response};
use crate::endpoint::netns::NetNs;
use crate::endpoint::veth::{self, Link, Netlink, VethSpec};

/// What ADD has done so far, to undo on failure (in reverse order).
struct Progress<'a> {
    ctx: &'a Ctx<'a>,
    attachment: &'a Attachment,
    key: AttachmentKey,
    delegate: Option<Delegate>,
    netlink: &'a Netlink,
    host: Option<Link>,
    /// The agent may hold the endpoint (a registration was sent and not plainly refused).
    maybe_registered: bool,
}

impl Progress<'_> {
    fn undo(&self) {
        if self.maybe_registered {
            self.ctx.deregister_or_queue(&self.key);
        }
        if let Some(host) = &self.host
            && let Err(e) = self.netlink.delete(host)
        {
            warn!(interface = %host.name, "rollback: {e}");
        }
        self.release();
        if let Err(e) = self.ctx.records.forget(&self.key.container_id, &self.key.ifname) {
            warn!("rollback: {e}");
        }
    }

    fn release(&self) {
        let released = match &self.delegate {
            // Section 4: a failed ADD runs the delegated plugin's DEL before returning.
            Some(d) => {
                let netns = self.attachment.netns.as_deref().map(|p| p.to_string_lossy().into_owned());
                self.ctx.run_delegate(d, "DEL", &self.key, netns.as_deref()).map(drop).map_err(|e| e.to_string())
            }
            None => self.ctx.store().release(owner(&self.key)).map(drop).map_err(|e| e.to_string()),
        };
        if let Err(e) = released {
            warn!("rollback: releasing the addresses: {e}");
        }
    }
}

pub(super) fn add(ctx: &Ctx<'_>, attachment: &Attachment, pod: &PodRef) -> Result<AddResult, CommandError> {
    let netns = NetNs::open(command::netns_path(attachment)?)?;
    let netlink = Netlink::open()?;
    sweep::sweep(ctx, &netlink);
    let key = key_of(attachment);
    let delegate = ctx.delegate()?;
    ctx.records.put(&AttachmentRecord::new(
        &key.container_id,
        &key.ifname,
        attachment.netns.as_deref(),
        Stage::Adding,
    ))?;
    let mut progress =
        Progress { ctx, attachment, key, delegate, netlink: &netlink, host: None, maybe_registered: false };
    let allocated = match allocate(&progress) {
        Ok(a) => a,
        Err(e) => {
            progress.undo();
            return Err(e);
        }
    };
    debug!(ips = ?allocated.0, "allocated");
    match wire(&mut progress, &netns, pod, &allocated.0) {
        Ok(mut result) => {
            result.dns = allocated.1;
            let record = AttachmentRecord::new(
                &progress.key.container_id,
                &progress.key.ifname,
                attachment.netns.as_deref(),
                Stage::Added,
            );
            if let Err(e) = ctx.records.put(&record) {
                // The attachment works; GC and the sweep just know it as still being added.
                warn!("{e}");
            }
            Ok(result)
        }
        Err(e) => {
            progress.undo();
            Err(e)
        }
    }
}

/// The pod's addresses and the DNS settings a delegated plugin returned.
fn allocate(progress: &Progress<'_>) -> Result<(Vec<IpAddr>, Option<serde_json::Value>), CommandError> {
    let ctx = progress.ctx;
    match (&ctx.conf.ipam, &progress.delegate) {
        (Ipam::Ward { ranges, quarantine }, _) => {
            Ok((ctx.store().allocate(owner(&progress.key), ranges, *quarantine)?, None))
        }
        (Ipam::Delegated { .. }, Some(d)) => {
            let netns = progress.attachment.netns.as_deref().map(|p| p.to_string_lossy().into_owned());
            let out = ctx.run_delegate(d, "ADD", &progress.key, netns.as_deref())?;
            let r = delegate::ipam_result(&d.plugin, &out)?;
            Ok((r.ips, r.dns))
        }
        (Ipam::Delegated { plugin }, None) => Err(CommandError::Delegate(delegate::DelegateError::NotFound {
            plugin: plugin.clone(),
            searched: String::new(),
        })),
    }
}

/// ADD after the addresses are allocated; records its progress for the rollback.
fn wire(progress: &mut Progress<'_>, netns: &NetNs, pod: &PodRef, ips: &[IpAddr]) -> Result<AddResult, CommandError> {
    let (conf, attachment, netlink) = (&progress.ctx.conf, progress.attachment, progress.netlink);
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
        network: conf.name.clone(),
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
        Ok(other) => {
            return Err(CommandError::UnexpectedAnswer { request: "the registration", answer: format!("{other:?}") });
        }
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
            routes.push(Route { dst: IpNet::from(gateway), gw: None });
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
        // `ip` as a single-address network (/32, /128).
        ips: ips.iter().map(|&ip| IpConfig { address: IpNet::from(ip), interface: 1 }).collect(),
        routes,
        dns: None,
    })
}

fn default_net(like: IpAddr) -> IpNet {
    match like {
        IpAddr::V4(_) => IpNet::V4(Default::default()),
        IpAddr::V6(_) => IpNet::V6(Default::default()),
    }
}
