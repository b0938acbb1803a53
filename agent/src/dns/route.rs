//! The routing that delivers steered DNS packets to the proxy's socket: `from_pod` marks them
//! and assigns the socket, but the stack still routes a packet before delivering it, and a
//! packet for the resolver's address would be forwarded (and dropped, as it carries a
//! socket). So, in the agent's network namespace, for both families:
//!
//! ```text
//! ip rule add fwmark DNS_PROXY_MARK/DNS_PROXY_MARK_MASK lookup DNS_PROXY_TABLE priority 1053
//! ip route add local default dev lo table DNS_PROXY_TABLE
//! ```
//!
//! (as for TPROXY). Idempotent: an existing rule or route is left as it is.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt as _;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::route::{RouteAttribute, RouteMessage, RouteScope, RouteType};
use netlink_packet_route::rule::{RuleAction, RuleAttribute};
use rtnetlink::RouteMessageBuilder;
use ward_common::fqdn::{DNS_PROXY_MARK, DNS_PROXY_MARK_MASK, DNS_PROXY_TABLE};

/// Before the main table (32766), after the local one (0).
const RULE_PRIORITY: u32 = 1053;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("opening a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("{what}: {source}")]
    Netlink { what: String, source: rtnetlink::Error },
}

fn exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.code.map(|c| -c.get()) == Some(libc::EEXIST))
}

/// Installs the rule and the local routes (both families), unless present.
pub async fn install() -> Result<(), RouteError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(RouteError::Socket)?;
    let task = tokio::spawn(connection);
    let result = async {
        let have = existing_rules(&handle).await?;
        for v6 in [false, true] {
            if !have.contains(&v6) {
                let mut msg = if v6 {
                    handle
                        .rule()
                        .add()
                        .v6()
                        .table_id(DNS_PROXY_TABLE)
                        .priority(RULE_PRIORITY)
                        .fw_mark(DNS_PROXY_MARK)
                        .action(RuleAction::ToTable)
                        .message_mut()
                        .clone()
                } else {
                    handle
                        .rule()
                        .add()
                        .v4()
                        .table_id(DNS_PROXY_TABLE)
                        .priority(RULE_PRIORITY)
                        .fw_mark(DNS_PROXY_MARK)
                        .action(RuleAction::ToTable)
                        .message_mut()
                        .clone()
                };
                msg.attributes.push(RuleAttribute::FwMask(DNS_PROXY_MARK_MASK));
                let mut req = handle.rule().add();
                *req.message_mut() = msg;
                match req.execute().await {
                    Ok(()) => {}
                    Err(e) if exists(&e) => {}
                    Err(source) => {
                        return Err(RouteError::Netlink {
                            what: format!("adding the fwmark rule (IPv6: {v6})"),
                            source,
                        });
                    }
                }
            }
            let dst: IpAddr = if v6 { Ipv6Addr::UNSPECIFIED.into() } else { Ipv4Addr::UNSPECIFIED.into() };
            let mut builder = RouteMessageBuilder::<IpAddr>::new()
                .output_interface(1)
                .table_id(DNS_PROXY_TABLE)
                .kind(RouteType::Local)
                .scope(RouteScope::Host);
            let message: &mut RouteMessage = builder.get_mut();
            message.header.address_family = if v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
            message.header.destination_prefix_length = 0;
            message.attributes.push(RouteAttribute::Destination(dst.into()));
            match handle.route().add(builder.build()).execute().await {
                Ok(()) => {}
                Err(e) if exists(&e) => {}
                Err(source) => {
                    return Err(RouteError::Netlink { what: format!("adding the local route (IPv6: {v6})"), source });
                }
            }
        }
        Ok(())
    }
    .await;
    task.abort();
    result
}

/// Which families already have Ward's fwmark rule.
async fn existing_rules(handle: &rtnetlink::Handle) -> Result<Vec<bool>, RouteError> {
    let mut out = Vec::new();
    for v6 in [false, true] {
        let version = if v6 { rtnetlink::IpVersion::V6 } else { rtnetlink::IpVersion::V4 };
        let mut rules = handle.rule().get(version).execute();
        while let Some(rule) =
            rules.try_next().await.map_err(|source| RouteError::Netlink { what: "listing rules".into(), source })?
        {
            let ours = rule.attributes.iter().any(|a| matches!(a, RuleAttribute::FwMark(m) if *m == DNS_PROXY_MARK))
                && rule.attributes.iter().any(|a| matches!(a, RuleAttribute::Table(t) if *t == DNS_PROXY_TABLE));
            if ours {
                out.push(v6);
                break;
            }
        }
    }
    Ok(out)
}
